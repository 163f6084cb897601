//! `[slo]`: per-model TTFT and ITL thresholds (judged in `slo.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::error::{duration, positive};

/// The `[slo]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    /// Off: no SLO series are exported and the buckets are DESIGN.md's.
    pub enabled: bool,
    /// Time to first token a request must not exceed.
    #[serde(deserialize_with = "super::de::duration")]
    pub ttft: Duration,
    /// Mean inter-token latency (the request's TPOT) it must not exceed.
    #[serde(deserialize_with = "super::de::duration")]
    pub itl: Duration,
    /// Per-model thresholds, keyed by the `gen_ai_request_model` label value (`other`
    /// included); unset fields take the values above.
    pub models: BTreeMap<String, SloOverride>,
}

/// One model's thresholds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloOverride {
    #[serde(default, deserialize_with = "super::de::opt_duration")]
    pub ttft: Option<Duration>,
    #[serde(default, deserialize_with = "super::de::opt_duration")]
    pub itl: Option<Duration>,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            enabled: true,
            ttft: Duration::from_millis(200),
            itl: Duration::from_millis(50),
            models: BTreeMap::new(),
        }
    }
}

/// The thresholds that apply to one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub ttft: Duration,
    pub itl: Duration,
}

/// Longest threshold accepted: beyond every timeout a request can live.
const MAX_THRESHOLD: Duration = Duration::from_secs(3600);

impl SloConfig {
    /// The thresholds for a model label value.
    pub fn targets(&self, model: &str) -> Targets {
        let o = self.models.get(model);
        Targets {
            ttft: o.and_then(|o| o.ttft).unwrap_or(self.ttft),
            itl: o.and_then(|o| o.itl).unwrap_or(self.itl),
        }
    }

    /// Checks the thresholds and model keys; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |field: String, d: Duration, example: &str| {
            positive(field.clone(), d, example)?;
            if d > MAX_THRESHOLD {
                return Err(ConfigError::invalid(field, "must be at most 1h")
                    .value(duration(d))
                    .example(example));
            }
            Ok(())
        };
        check("slo.ttft".into(), self.ttft, "ttft = \"500ms\"")?;
        check("slo.itl".into(), self.itl, "itl = \"50ms\"")?;
        for (model, o) in &self.models {
            if model.is_empty() || model.len() > 256 {
                return Err(ConfigError::invalid(
                    format!("slo.models.{model:?}"),
                    "a model name of 1 to 256 bytes",
                )
                .example("[slo.models.\"meta-llama/Llama-3.1-8B-Instruct\"]"));
            }
            if let Some(d) = o.ttft {
                check(format!("slo.models.{model:?}.ttft"), d, "ttft = \"2s\"")?;
            }
            if let Some(d) = o.itl {
                check(format!("slo.models.{model:?}.itl"), d, "itl = \"80ms\"")?;
            }
        }
        Ok(())
    }

    /// Every TTFT threshold in seconds (none when off): extra TTFT bucket boundaries.
    pub fn ttft_bounds(&self) -> Vec<f64> {
        self.bounds(|t| t.ttft)
    }

    /// Every ITL threshold in seconds (none when off): extra ITL and TPOT bucket boundaries.
    pub fn itl_bounds(&self) -> Vec<f64> {
        self.bounds(|t| t.itl)
    }

    fn bounds(&self, pick: impl Fn(&Targets) -> Duration) -> Vec<f64> {
        if !self.enabled {
            return Vec::new();
        }
        let all =
            std::iter::once(self.targets("")).chain(self.models.keys().map(|m| self.targets(m)));
        all.map(|t| pick(&t).as_secs_f64()).collect()
    }
}
