//! SLOs and goodput, after `observe::record()`: per-model TTFT and ITL thresholds from the
//! `[slo]` table judge each finished streamed generation once, counted in
//! `weir_slo_requests_total{gen_ai_request_model, slo, met}`. The thresholds are exported too
//! (`weir_slo_threshold_seconds`, for the P99 alerts) and are exact histogram bucket
//! boundaries (`merge_buckets`), so ratios read from the histograms are exact as well.
//!
//! Goodput is meant as in DistServe and `vllm bench serve --goodput`: a request is good when
//! its TTFT and its TPOT (the mean time per output token after the first, which is what the
//! `itl` threshold is compared with) are both within their thresholds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{SloConfig, Targets};
use crate::labels::Outcome;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

/// `base` with the `extra` boundaries added where they are not boundaries already.
pub fn merge_buckets(base: &[f64], extra: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = base
        .iter()
        .chain(extra)
        .copied()
        .filter(|b| b.is_finite() && *b > 0.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// What `observe::record()` knows of a finished request that the SLO judges.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// A streamed chat or completions request: the only kind with a TTFT and an ITL.
    pub streamed_generation: bool,
    pub outcome: Outcome,
    pub ttft: Option<Duration>,
    pub tpot: Option<Duration>,
    pub e2e: Duration,
}

/// The verdicts for `ttft`, `itl` and `all`; `None`: not counted (not the service's doing,
/// or not known).
pub fn judge(t: Targets, r: &Finished) -> [Option<bool>; 3] {
    if !r.streamed_generation || r.outcome == Outcome::ClientError {
        return [None; 3];
    }
    let failed = matches!(
        r.outcome,
        Outcome::UpstreamError | Outcome::Timeout(_) | Outcome::Unavailable
    );
    let ttft = match r.ttft {
        Some(v) => Some(v <= t.ttft),
        // A stream that ended well with no content: the client had its answer at e2e.
        None if r.outcome == Outcome::Ok => Some(r.e2e <= t.ttft),
        // The client left before the threshold: not known whether it would have been met.
        None if r.outcome == Outcome::Cancelled && r.e2e <= t.ttft => None,
        None => Some(false),
    };
    let itl = match r.outcome {
        // A single token has no inter-token latency to miss.
        Outcome::Ok => Some(r.tpot.is_none_or(|v| v <= t.itl)),
        _ if failed => Some(false),
        _ => None,
    };
    let all = match (ttft, itl) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    };
    [ttft, itl, all]
}

const SLOS: [&str; 3] = ["ttft", "itl", "all"];

/// One model's counters, `[slo][met]` with `met` = true at index 0.
struct ModelSlo {
    targets: Targets,
    counters: [[IntCounter; 2]; 3],
}

/// The SLO series, in the gateway's registry.
pub struct Slo {
    config: SloConfig,
    requests: IntCounterVec,
    thresholds: GaugeVec,
    models: RwLock<HashMap<Arc<str>, Arc<ModelSlo>>>,
}

impl std::fmt::Debug for Slo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slo").field("config", &self.config).finish()
    }
}

impl Slo {
    /// The SLO series of `config`, registered in `registry` when the SLO is on.
    pub fn new(config: &SloConfig, registry: &Registry) -> Slo {
        let labels = ["gen_ai_request_model", "slo"];
        let requests = IntCounterVec::new(
            Opts::new(
                "weir_slo_requests_total",
                "Streamed generations judged against the model's SLO (slo: ttft, itl, all).",
            ),
            &["gen_ai_request_model", "slo", "met"],
        )
        .expect("static counter definition");
        let thresholds = GaugeVec::new(
            Opts::new(
                "weir_slo_threshold_seconds",
                "The model's SLO thresholds from the [slo] config (slo: ttft, itl).",
            ),
            &labels,
        )
        .expect("static gauge definition");
        if config.enabled {
            registry
                .register(Box::new(requests.clone()))
                .expect("unique metric names");
            registry
                .register(Box::new(thresholds.clone()))
                .expect("unique metric names");
        }
        Slo {
            config: config.clone(),
            requests,
            thresholds,
            models: RwLock::new(HashMap::new()),
        }
    }

    /// Judges one finished request of the model with this label value, and counts it.
    pub fn record(&self, model: &str, r: &Finished) {
        if !self.config.enabled || !r.streamed_generation {
            return;
        }
        let m = self.model(model);
        for (verdict, counters) in judge(m.targets, r).iter().zip(&m.counters) {
            if let Some(met) = verdict {
                counters[usize::from(!met)].inc();
            }
        }
    }

    /// The counters of a model label value (a bounded set), created with all their series.
    fn model(&self, model: &str) -> Arc<ModelSlo> {
        if let Some(m) = self.models.read().ok().and_then(|m| m.get(model).cloned()) {
            return m;
        }
        let targets = self.config.targets(model);
        let counter = |slo: &str, met: &str| self.requests.with_label_values(&[model, slo, met]);
        let m = Arc::new(ModelSlo {
            targets,
            counters: SLOS.map(|slo| [counter(slo, "true"), counter(slo, "false")]),
        });
        for (slo, d) in [("ttft", targets.ttft), ("itl", targets.itl)] {
            self.thresholds
                .with_label_values(&[model, slo])
                .set(d.as_secs_f64());
        }
        if let Ok(mut map) = self.models.write() {
            map.entry(model.into()).or_insert_with(|| m.clone());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SloOverride;

    const T: Targets = Targets {
        ttft: Duration::from_millis(200),
        itl: Duration::from_millis(50),
    };

    fn req(outcome: Outcome, ttft: Option<u64>, tpot: Option<u64>, e2e: u64) -> Finished {
        Finished {
            streamed_generation: true,
            outcome,
            ttft: ttft.map(Duration::from_millis),
            tpot: tpot.map(Duration::from_millis),
            e2e: Duration::from_millis(e2e),
        }
    }

    #[test]
    fn verdicts() {
        let y = Some(true);
        let n = Some(false);
        let ok = Outcome::Ok;
        assert_eq!(judge(T, &req(ok, Some(200), Some(50), 900)), [y, y, y]);
        assert_eq!(judge(T, &req(ok, Some(201), Some(10), 900)), [n, y, n]);
        assert_eq!(judge(T, &req(ok, Some(10), Some(51), 900)), [y, n, n]);
        assert_eq!(judge(T, &req(ok, Some(10), None, 20)), [y, y, y]);
        assert_eq!(judge(T, &req(ok, None, None, 300)), [n, y, n]);
        let err = Outcome::UpstreamError;
        assert_eq!(judge(T, &req(err, Some(10), None, 300)), [y, n, n]);
        let timeout = Outcome::Timeout("first_token");
        assert_eq!(judge(T, &req(timeout, None, None, 9000)), [n, n, n]);
        let gone = Outcome::Cancelled;
        assert_eq!(judge(T, &req(gone, None, None, 100)), [None; 3]);
        assert_eq!(judge(T, &req(gone, None, None, 300)), [n, None, n]);
        assert_eq!(judge(T, &req(gone, Some(10), None, 300)), [y, None, None]);
        let bad = Outcome::ClientError;
        assert_eq!(judge(T, &req(bad, None, None, 1)), [None; 3]);
        let mut plain = req(ok, None, None, 5000);
        plain.streamed_generation = false;
        assert_eq!(judge(T, &plain), [None; 3]);
    }

    #[test]
    fn thresholds_become_bucket_boundaries() {
        let mut c = SloConfig::default();
        c.models.insert(
            "big".into(),
            SloOverride {
                ttft: Some(Duration::from_millis(350)),
                itl: None,
            },
        );
        let b = merge_buckets(&[0.1, 0.2, 0.5], &c.ttft_bounds());
        assert_eq!(b, vec![0.1, 0.2, 0.35, 0.5]);
        assert_eq!(
            merge_buckets(&[0.01, 0.05], &c.itl_bounds()),
            vec![0.01, 0.05]
        );
        c.enabled = false;
        assert!(c.ttft_bounds().is_empty());
        assert_eq!(c.targets("big").ttft, Duration::from_millis(350));
        assert_eq!(c.targets("small"), T);
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = SloConfig::default();
        c.validate().unwrap();
        c.models.insert(
            "m".into(),
            SloOverride {
                ttft: None,
                itl: Some(Duration::ZERO),
            },
        );
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("slo.models.\"m\".itl"), "{err}");
        c.models.clear();
        c.ttft = Duration::from_secs(7200);
        assert!(c.validate().unwrap_err().to_string().contains("slo.ttft"));
    }

    #[test]
    fn counts_per_model_with_all_series() {
        let registry = Registry::new();
        let slo = Slo::new(&SloConfig::default(), &registry);
        slo.record("m", &req(Outcome::Ok, Some(500), Some(10), 900));
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        for line in [
            r#"weir_slo_requests_total{gen_ai_request_model="m",met="false",slo="ttft"} 1"#,
            r#"weir_slo_requests_total{gen_ai_request_model="m",met="true",slo="ttft"} 0"#,
            r#"weir_slo_requests_total{gen_ai_request_model="m",met="true",slo="itl"} 1"#,
            r#"weir_slo_requests_total{gen_ai_request_model="m",met="false",slo="all"} 1"#,
            r#"weir_slo_threshold_seconds{gen_ai_request_model="m",slo="ttft"} 0.2"#,
            r#"weir_slo_threshold_seconds{gen_ai_request_model="m",slo="itl"} 0.05"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        let off = Registry::new();
        let slo = Slo::new(
            &SloConfig {
                enabled: false,
                ..SloConfig::default()
            },
            &off,
        );
        slo.record("m", &req(Outcome::Ok, Some(500), Some(10), 900));
        assert!(off.gather().is_empty());
    }
}
