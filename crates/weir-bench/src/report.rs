//! `weir bench` results: percentiles, throughput, goodput and the causes of errors, as a
//! table and as JSON.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::cause::{CauseCount, tally};
use super::points::Points;
use super::{Load, Sample};

/// Goodput thresholds: a request is "good" when it meets every one that is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    /// The request's largest gap between tokens (the stall a user sees).
    pub itl: Option<f64>,
    pub e2e: Option<f64>,
}

impl FromStr for Slo {
    type Err = String;

    /// `ttft=200ms,itl=50ms`
    fn from_str(s: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=duration"))?;
            let d = humantime::parse_duration(v.trim()).map_err(|e| format!("`{part}`: {e}"))?;
            let secs = Some(d.as_secs_f64());
            match k.trim() {
                "ttft" => slo.ttft = secs,
                "tpot" => slo.tpot = secs,
                "itl" => slo.itl = secs,
                "e2e" => slo.e2e = secs,
                other => return Err(format!("unknown SLO `{other}` (ttft, tpot, itl, e2e)")),
            }
        }
        Ok(slo)
    }
}

impl Slo {
    fn met(&self, s: &Sample) -> bool {
        let under =
            |limit: Option<f64>, v: Option<f64>| limit.is_none_or(|l| v.is_some_and(|v| v <= l));
        let worst_gap = s.itl.iter().copied().fold(None, |m: Option<f64>, g| {
            Some(m.map_or(g as f64, |m| m.max(g as f64)))
        });
        s.ok()
            && under(self.ttft, s.ttft)
            && under(self.tpot, s.tpot.or(Some(0.0)))
            && under(self.itl, worst_gap.or(Some(0.0)))
            && under(self.e2e, Some(s.e2e))
    }
}

/// Mean and percentiles of one quantity, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut v: Vec<f64>) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub load: String,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub requests: usize,
    pub errors: usize,
    /// The errors by cause, most frequent first (bounded: see [`tally`]).
    pub errors_by_cause: Vec<CauseCount>,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub ttft: Stats,
    pub tpot: Stats,
    pub itl: Stats,
    pub e2e: Stats,
    pub slo: Option<Slo>,
    pub goodput: Option<f64>,
    pub good_requests: Option<usize>,
    /// What the charts of `--report` draw (not in the JSON).
    #[serde(skip)]
    pub points: Points,
}

/// Token counts as the server reports them, summed: a usage of `u64::MAX` must not wrap.
fn saturating_sum(counts: impl Iterator<Item = u64>) -> u64 {
    counts.fold(0, u64::saturating_add)
}

pub fn describe(load: Load) -> String {
    match load {
        Load::Closed(n) => format!("{n} concurrent"),
        Load::Poisson(r) => format!("Poisson {r} req/s"),
    }
}

impl Report {
    pub fn new(load: Load, samples: &[Sample], elapsed: Duration, slo: Option<&Slo>) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok()).collect();
        let output_tokens = saturating_sum(ok.iter().map(|s| s.output_tokens));
        let good = slo.map(|slo| samples.iter().filter(|s| slo.met(s)).count());
        Report {
            load: describe(load),
            concurrency: match load {
                Load::Closed(n) => Some(n),
                Load::Poisson(_) => None,
            },
            rate: match load {
                Load::Poisson(r) => Some(r),
                Load::Closed(_) => None,
            },
            duration_s: secs,
            requests: samples.len(),
            errors: samples.len() - ok.len(),
            errors_by_cause: tally(samples.iter().filter_map(|s| s.error.as_ref())),
            request_throughput: ok.len() as f64 / secs,
            output_token_throughput: output_tokens as f64 / secs,
            input_tokens: saturating_sum(ok.iter().map(|s| s.input_tokens)),
            output_tokens,
            ttft: Stats::of(ok.iter().filter_map(|s| s.ttft).collect()),
            tpot: Stats::of(ok.iter().filter_map(|s| s.tpot).collect()),
            itl: Stats::of(
                ok.iter()
                    .flat_map(|s| s.itl.iter().map(|&g| f64::from(g)))
                    .collect(),
            ),
            e2e: Stats::of(ok.iter().map(|s| s.e2e).collect()),
            slo: slo.cloned(),
            goodput: good.map(|g| g as f64 / secs),
            good_requests: good,
            points: Points::of(samples),
        }
    }

    /// The cause of most errors, if any.
    pub fn top_cause(&self) -> Option<&str> {
        self.errors_by_cause.first().map(|c| c.cause.as_str())
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let ms = |v: f64| format!("{:.2}", v * 1e3);
        let mut out = format!(
            "\n{}: {} requests in {:.1} s, {} errors; {:.1} req/s, {:.0} output tok/s\n",
            self.load,
            self.requests,
            self.duration_s,
            self.errors,
            self.request_throughput,
            self.output_token_throughput
        );
        out.push_str(&format!(
            "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "ms", "mean", "p50", "p90", "p99", "max"
        ));
        for (name, s) in [
            ("TTFT", &self.ttft),
            ("TPOT", &self.tpot),
            ("ITL", &self.itl),
            ("e2e", &self.e2e),
        ] {
            out.push_str(&format!(
                "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
                name,
                ms(s.mean),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            ));
        }
        if let (Some(g), Some(n)) = (self.goodput, self.good_requests) {
            out.push_str(&format!(
                "goodput: {g:.1} req/s ({n} of {} requests met the SLOs)\n",
                self.requests
            ));
        }
        if !self.errors_by_cause.is_empty() {
            out.push_str("errors by cause:\n");
            for c in &self.errors_by_cause {
                out.push_str(&format!("{:>10}  {}\n", c.count, c.cause));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slo_parses_and_judges() {
        let slo: Slo = "ttft=200ms, itl=50ms".parse().unwrap();
        assert_eq!(slo.ttft, Some(0.2));
        assert_eq!(slo.itl, Some(0.05));
        assert!("ttft=fast".parse::<Slo>().is_err());
        assert!("queue=1s".parse::<Slo>().is_err());
        let good = Sample {
            ttft: Some(0.1),
            itl: vec![0.01, 0.04],
            e2e: 1.0,
            ..Sample::default()
        };
        assert!(slo.met(&good));
        let stall = Sample {
            itl: vec![0.01, 0.06],
            ..good.clone()
        };
        assert!(!slo.met(&stall));
        let failed = Sample {
            error: Some(crate::cause::Failure::stream(
                "stream ended without its end event",
            )),
            ..good
        };
        assert!(!slo.met(&failed));
    }

    #[test]
    fn absurd_usage_saturates() {
        let huge = Sample {
            output_tokens: u64::MAX,
            input_tokens: u64::MAX,
            ..Sample::default()
        };
        let r = Report::new(
            Load::Closed(1),
            &[huge.clone(), huge],
            Duration::from_secs(1),
            None,
        );
        assert_eq!((r.output_tokens, r.input_tokens), (u64::MAX, u64::MAX));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = Stats::of((1..=100).map(f64::from).collect());
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(s.mean, 50.5);
        assert_eq!(Stats::of(vec![]).count, 0);
    }
}
