//! The table model: the rows of each view, computed from every gateway's two latest scrapes,
//! and how they sort. Nothing here draws: the terminal view and the plain-text snapshot
//! both render these rows.

use std::collections::{BTreeMap, BTreeSet};

use crate::expo::Sample;
use crate::rates::{Windows, quantile};
use crate::scrape::Scrape;

const MODEL: &str = "gen_ai_request_model";
const BACKEND: &str = "backend";

// The gateway's series read (src/metrics.rs, DESIGN.md's contract).
const REQUESTS: &str = "weir_requests_total";
const TOKENS: &str = "weir_tokens_total";
const TTFT: &str = "gen_ai_server_time_to_first_token_seconds_bucket";
const ITL: &str = "weir_inter_token_latency_seconds_bucket";
const DURATION_SUM: &str = "gen_ai_server_request_duration_seconds_sum";
const SLO: &str = "weir_slo_requests_total";
pub const IN_FLIGHT: &str = "weir_requests_in_flight";
pub const BACKEND_UP: &str = "weir_backend_up";

/// Every series name the views read: a scrape keeps only these, so that the memory held
/// follows what is shown, not what else an exposition carries.
pub const READ: [&str; 12] = [
    REQUESTS,
    TOKENS,
    TTFT,
    ITL,
    DURATION_SUM,
    SLO,
    IN_FLIGHT,
    BACKEND_UP,
    ERROR_COUNTERS[0].1,
    ERROR_COUNTERS[1].1,
    ERROR_COUNTERS[2].1,
    ERROR_COUNTERS[3].1,
];
/// Outcomes that count as failed (the gateway or a backend failed the request); client
/// errors and cancellations are the client's doing.
const FAILED: [&str; 4] = ["upstream_error", "timeout", "unavailable", "internal_error"];

/// The views, in the order Tab goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Models,
    Backends,
    Errors,
}

impl View {
    pub const ALL: [View; 3] = [View::Models, View::Backends, View::Errors];

    pub fn title(self) -> &'static str {
        match self {
            View::Models => "models",
            View::Backends => "backends",
            View::Errors => "errors",
        }
    }

    pub fn columns(self) -> &'static [&'static str] {
        match self {
            View::Models => &[
                "MODEL", "REQ/S", "CONC", "TTFT P50", "TTFT P99", "ITL P50", "ITL P99", "TOK/S",
                "GOOD%", "ERR%",
            ],
            View::Backends => &[
                "BACKEND",
                "STATE",
                "REQ/S",
                "IN FLIGHT",
                "TTFT P50",
                "TTFT P99",
                "ITL P50",
                "ITL P99",
                "TOK/S",
                "ERR%",
                "WAITING",
                "RUNNING",
                "KV%",
            ],
            View::Errors => &["WHAT", "KIND", "MODEL", "PER S", "TOTAL"],
        }
    }

    /// How many columns, from the left, hold text rather than numbers.
    pub fn text_columns(self) -> usize {
        match self {
            View::Models => 1,
            View::Backends => 2,
            View::Errors => 3,
        }
    }

    /// The column sorted on first, the first of numbers (requests per second, or errors
    /// per second): the busiest rows on top.
    pub fn default_sort(self) -> usize {
        self.text_columns()
    }
}

/// p50 and p99 of one histogram over the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Quantiles {
    fn of(buckets: Option<&Vec<(f64, f64)>>) -> Quantiles {
        let b = buckets.map_or(&[][..], |b| b.as_slice());
        Quantiles {
            p50: quantile(b, 0.5),
            p99: quantile(b, 0.99),
        }
    }
}

/// A model's traffic over the interval, over every gateway and backend.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    pub model: String,
    pub req_s: f64,
    /// Requests being served on average (Little's law: the request-seconds of the requests
    /// that finished, per second); the gateway exports no in-flight gauge per model.
    pub conc: f64,
    pub ttft: Quantiles,
    pub itl: Quantiles,
    pub tok_s: f64,
    /// Of the requests judged against the model's SLO, the share that met both (goodput).
    pub good: Option<f64>,
    /// The share of finished requests that failed (`FAILED` outcomes).
    pub err: Option<f64>,
}

/// A backend's traffic over the interval, with its state as the gateways see it now.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRow {
    pub backend: String,
    /// The worst any gateway reports: `down`, `ejected`, `up`; `-` when none says.
    pub state: String,
    pub req_s: f64,
    pub in_flight: Option<u64>,
    pub ttft: Quantiles,
    pub itl: Quantiles,
    pub tok_s: f64,
    pub err: Option<f64>,
    pub waiting: Option<u64>,
    pub running: Option<u64>,
    pub kv: Option<f64>,
}

/// A count of something that went wrong: its rate over the interval and its total.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRow {
    /// `outcome` (a failed request, per model), `error`, `timeout`, `rejected` or `retry`.
    pub what: &'static str,
    pub kind: String,
    pub model: String,
    pub per_s: f64,
    pub total: f64,
}

/// Every view's rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    pub models: Vec<ModelRow>,
    pub backends: Vec<BackendRow>,
    pub errors: Vec<ErrorRow>,
}

fn by(label: &'static str) -> impl Fn(&Sample) -> Option<String> {
    move |s| s.label(label).map(str::to_owned)
}

/// Series of `name` with label `label` = `value`, keyed by `key`.
fn by_where(
    key: &'static str,
    label: &'static str,
    value: &'static str,
) -> impl Fn(&Sample) -> Option<String> {
    move |s| (s.label(label) == Some(value)).then(|| s.label(key).map(str::to_owned))?
}

/// The label values of `key` in the current scrapes' series of `name`.
fn names(current: &[&Scrape], name: &str, key: &str) -> BTreeSet<String> {
    current
        .iter()
        .flat_map(|s| &s.samples)
        .filter(|s| s.name == name)
        .filter_map(|s| s.label(key).map(str::to_owned))
        .collect()
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// The rates every row of a model or a backend shows, keyed by the label `key`.
struct Traffic {
    req: BTreeMap<String, f64>,
    failed: BTreeMap<String, f64>,
    tok: BTreeMap<String, f64>,
    ttft: BTreeMap<String, Vec<(f64, f64)>>,
    itl: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Traffic {
    fn by(w: &Windows, key: &'static str) -> Traffic {
        Traffic {
            req: w.rate_by(REQUESTS, by(key)),
            failed: w.rate_by(REQUESTS, |s| {
                FAILED
                    .contains(&s.label("outcome")?)
                    .then(|| s.label(key).map(str::to_owned))?
            }),
            tok: w.rate_by(TOKENS, by_where(key, "gen_ai_token_type", "output")),
            ttft: w.buckets_by(TTFT, by(key)),
            itl: w.buckets_by(ITL, by(key)),
        }
    }

    fn req(&self, k: &str) -> f64 {
        self.req.get(k).copied().unwrap_or(0.0)
    }

    fn err(&self, k: &str) -> Option<f64> {
        ratio(self.failed.get(k).copied().unwrap_or(0.0), self.req(k))
    }
}

impl Tables {
    /// The rows over `w` (every gateway scraped twice in a row); `current` (every gateway's
    /// latest scrape) names the rows, so that they show from the first scrape on.
    pub fn compute(w: &Windows, current: &[&Scrape]) -> Tables {
        Tables {
            models: models(w, current),
            backends: backends(w, current),
            errors: errors(w, current),
        }
    }
}

fn models(w: &Windows, current: &[&Scrape]) -> Vec<ModelRow> {
    let t = Traffic::by(w, MODEL);
    let conc = w.rate_by(DURATION_SUM, by(MODEL));
    let judged = w.rate_by(SLO, by_where(MODEL, "slo", "all"));
    let met = w.rate_by(SLO, |s| {
        (s.label("slo") == Some("all") && s.label("met") == Some("true"))
            .then(|| s.label(MODEL).map(str::to_owned))?
    });
    let mut names = names(current, REQUESTS, MODEL);
    names.extend(t.req.keys().cloned());
    names
        .into_iter()
        .map(|m| ModelRow {
            req_s: t.req(&m),
            conc: conc.get(&m).copied().unwrap_or(0.0),
            ttft: Quantiles::of(t.ttft.get(&m)),
            itl: Quantiles::of(t.itl.get(&m)),
            tok_s: t.tok.get(&m).copied().unwrap_or(0.0),
            good: ratio(
                met.get(&m).copied().unwrap_or(0.0),
                judged.get(&m).copied().unwrap_or(0.0),
            ),
            err: t.err(&m),
            model: m,
        })
        .collect()
}

/// What the gateways say of one backend now: `/backends`, else `weir_backend_up`.
#[derive(Default)]
struct Health {
    state: Option<&'static str>,
    in_flight: Option<u64>,
    waiting: Option<u64>,
    running: Option<u64>,
    kv: Option<f64>,
}

impl Health {
    /// Keeps the worst state of the gateways' views.
    fn state(&mut self, s: &str) {
        let rank = |s: &str| ["up", "ejected", "down"].iter().position(|x| *x == s);
        let s = match s {
            "up" => "up",
            "ejected" => "ejected",
            _ => "down",
        };
        if self.state.is_none_or(|old| rank(s) > rank(old)) {
            self.state = Some(s);
        }
    }
}

fn health(current: &[&Scrape]) -> BTreeMap<String, Health> {
    let mut out: BTreeMap<String, Health> = BTreeMap::new();
    for scrape in current {
        match &scrape.backends {
            Some(list) => {
                for b in list {
                    let h = out.entry(b.name.clone()).or_default();
                    h.state(&b.state);
                    let sum = h.in_flight.unwrap_or(0).saturating_add(b.outstanding);
                    h.in_flight = Some(sum);
                    if let Some(q) = &b.queue {
                        // The same vLLM seen by several gateways: its latest, largest queue.
                        h.waiting = h.waiting.max(Some(q.waiting));
                        h.running = h.running.max(Some(q.running));
                        h.kv = Some(h.kv.unwrap_or(0.0).max(q.kv_cache_usage));
                    }
                }
            }
            None => {
                for s in scrape.samples.iter().filter(|s| s.name == BACKEND_UP) {
                    if let Some(name) = s.label(BACKEND) {
                        let up = if s.value >= 1.0 { "up" } else { "down" };
                        out.entry(name.to_owned()).or_default().state(up);
                    }
                }
            }
        }
    }
    out
}

fn backends(w: &Windows, current: &[&Scrape]) -> Vec<BackendRow> {
    let t = Traffic::by(w, BACKEND);
    let mut health = health(current);
    let mut names = names(current, REQUESTS, BACKEND);
    names.extend(t.req.keys().cloned());
    names.extend(health.keys().cloned());
    names
        .into_iter()
        .map(|b| {
            let h = health.remove(&b).unwrap_or_default();
            BackendRow {
                state: h.state.unwrap_or("-").to_owned(),
                req_s: t.req(&b),
                in_flight: h.in_flight,
                ttft: Quantiles::of(t.ttft.get(&b)),
                itl: Quantiles::of(t.itl.get(&b)),
                tok_s: t.tok.get(&b).copied().unwrap_or(0.0),
                err: t.err(&b),
                waiting: h.waiting,
                running: h.running,
                kv: h.kv,
                backend: b,
            }
        })
        .collect()
}

/// The counters of things gone wrong, with the label that says which kind.
const ERROR_COUNTERS: [(&str, &str, &str); 4] = [
    ("error", "weir_errors_total", "kind"),
    ("timeout", "weir_timeouts_total", "kind"),
    ("rejected", "weir_rejected_total", "reason"),
    ("retry", "weir_retries_total", "reason"),
];

fn errors(w: &Windows, current: &[&Scrape]) -> Vec<ErrorRow> {
    let mut rows = Vec::new();
    // Failed and refused requests per model: every outcome but `ok`.
    let outcome = |s: &Sample| {
        let o = s.label("outcome").filter(|o| *o != "ok")?;
        Some((o.to_owned(), s.label(MODEL)?.to_owned()))
    };
    let rates = w.rate_by(REQUESTS, outcome);
    for ((kind, model), total) in totals(current, REQUESTS, outcome) {
        let per_s = rates
            .get(&(kind.clone(), model.clone()))
            .copied()
            .unwrap_or(0.0);
        rows.push(ErrorRow {
            what: "outcome",
            kind,
            model,
            per_s,
            total,
        });
    }
    for (what, name, label) in ERROR_COUNTERS {
        let rates = w.rate_by(name, by(label));
        for (kind, total) in totals(current, name, by(label)) {
            let per_s = rates.get(&kind).copied().unwrap_or(0.0);
            let model = "-".to_owned();
            rows.push(ErrorRow {
                what,
                kind,
                model,
                per_s,
                total,
            });
        }
    }
    rows
}

/// The current value of the series of `name`, summed over the gateways by `key`.
fn totals<K: Ord>(
    current: &[&Scrape],
    name: &str,
    key: impl Fn(&Sample) -> Option<K>,
) -> BTreeMap<K, f64> {
    let mut out = BTreeMap::new();
    for s in current
        .iter()
        .flat_map(|c| &c.samples)
        .filter(|s| s.name == name)
    {
        if let Some(k) = key(s) {
            *out.entry(k).or_insert(0.0) += s.value;
        }
    }
    out
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
