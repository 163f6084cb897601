//! The rows computed from two scrapes written as a gateway writes them.

use tokio::time::Instant;

use super::*;
use crate::expo::parse;
use crate::rates::Window;
use crate::scrape::{BackendState, Queue};

const LABELS: &str = "backend=\"a\",gen_ai_operation_name=\"chat\",gen_ai_request_model=\"m\"";

/// A histogram whose observations all fall in the bucket `(0.1, 0.2]`, `n` of them.
fn hist(name: &str, n: u32) -> String {
    let mut out = String::new();
    for (le, c) in [("0.1", 0), ("0.2", n), ("+Inf", n)] {
        out += &format!("{name}_bucket{{{LABELS},le=\"{le}\"}} {c}\n");
    }
    out + &format!(
        "{name}_sum{{{LABELS}}} {}\n{name}_count{{{LABELS}}} {n}\n",
        0.15 * n as f64
    )
}

/// A scrape after `ok` good and `failed` timed-out requests of model `m` on backend `a`,
/// each 2 s long with 10 output tokens, every good one meeting its SLO.
fn scrape(ok: u32, failed: u32) -> Scrape {
    let n = ok + failed;
    let text = format!(
        "weir_requests_total{{{LABELS},code=\"2xx\",outcome=\"ok\"}} {ok}\n\
         weir_requests_total{{{LABELS},code=\"5xx\",outcome=\"timeout\"}} {failed}\n\
         weir_tokens_total{{{LABELS},gen_ai_token_type=\"output\"}} {}\n\
         weir_tokens_total{{{LABELS},gen_ai_token_type=\"input\"}} 999999\n\
         gen_ai_server_request_duration_seconds_sum{{{LABELS},outcome=\"ok\"}} {}\n\
         weir_slo_requests_total{{gen_ai_request_model=\"m\",met=\"true\",slo=\"all\"}} {ok}\n\
         weir_slo_requests_total{{gen_ai_request_model=\"m\",met=\"false\",slo=\"all\"}} {failed}\n\
         weir_slo_requests_total{{gen_ai_request_model=\"m\",met=\"true\",slo=\"ttft\"}} 777\n\
         weir_timeouts_total{{kind=\"first_token\"}} {failed}\n\
         weir_timeouts_total{{kind=\"idle\"}} 0\n\
         weir_backend_up{{backend=\"a\"}} 1\n{}{}",
        10 * n,
        2.0 * n as f64,
        hist("gen_ai_server_time_to_first_token_seconds", n),
        hist("weir_inter_token_latency_seconds", 9 * n),
    );
    Scrape {
        at: Instant::now(),
        samples: parse(&text).unwrap(),
        backends: None,
    }
}

fn compute(prev: &Scrape, cur: &Scrape, secs: f64) -> Tables {
    let w = Windows::new([Window {
        prev: &prev.samples,
        cur: &cur.samples,
        secs,
    }]);
    Tables::compute(&w, &[cur])
}

#[test]
fn model_rows_are_rates_and_quantiles_over_the_interval() {
    // 20 requests in 2 s, 4 of them timed out.
    let t = compute(&scrape(100, 0), &scrape(116, 4), 2.0);
    let m = &t.models[0];
    assert_eq!(m.model, "m");
    assert_eq!(m.req_s, 10.0);
    assert_eq!(m.tok_s, 100.0);
    // 20 requests of 2 s each finished in 2 s: 20 being served on average.
    assert_eq!(m.conc, 20.0);
    // Every observation in (0.1, 0.2]: p50 half-way, p99 near the top.
    assert!((m.ttft.p50.unwrap() - 0.15).abs() < 1e-9, "{:?}", m.ttft);
    assert!((m.ttft.p99.unwrap() - 0.199).abs() < 1e-9, "{:?}", m.ttft);
    assert!(m.itl.p50.is_some());
    assert_eq!(m.good, Some(0.8));
    assert_eq!(m.err, Some(0.2));
}

#[test]
fn an_idle_interval_has_rows_without_latencies() {
    let t = compute(&scrape(5, 1), &scrape(5, 1), 1.0);
    let m = &t.models[0];
    assert_eq!((m.req_s, m.tok_s), (0.0, 0.0));
    assert_eq!(m.ttft, Quantiles::default());
    assert_eq!((m.good, m.err), (None, None));
}

#[test]
fn backend_rows_take_state_and_queue_from_backends() {
    let prev = scrape(0, 0);
    let mut cur = scrape(10, 0);
    let t = compute(&prev, &cur, 1.0);
    assert_eq!(t.backends[0].state, "up", "from weir_backend_up");
    assert_eq!(t.backends[0].in_flight, None);
    cur.backends = Some(vec![
        BackendState {
            name: "a".into(),
            state: "ejected".into(),
            outstanding: 3,
            queue: Some(Queue {
                waiting: 4,
                running: 7,
                kv_cache_usage: 0.5,
            }),
        },
        BackendState {
            name: "idle".into(),
            state: "up".into(),
            outstanding: 0,
            queue: None,
        },
    ]);
    let t = compute(&prev, &cur, 1.0);
    let a = &t.backends[0];
    assert_eq!((a.backend.as_str(), a.state.as_str()), ("a", "ejected"));
    assert_eq!(
        (a.req_s, a.in_flight, a.waiting, a.running),
        (10.0, Some(3), Some(4), Some(7))
    );
    assert_eq!(a.kv, Some(0.5));
    let idle = &t.backends[1];
    assert_eq!(
        (idle.backend.as_str(), idle.req_s, idle.waiting),
        ("idle", 0.0, None)
    );
}

#[test]
fn the_worst_state_of_several_gateways_shows() {
    let mut h = Health::default();
    for s in ["up", "down", "ejected", "up"] {
        h.state(s);
    }
    assert_eq!(h.state, Some("down"));
}

#[test]
fn error_rows_count_failed_outcomes_and_kinds() {
    let t = compute(&scrape(10, 2), &scrape(10, 5), 1.0);
    let find = |what: &str, kind: &str| {
        t.errors
            .iter()
            .find(|e| e.what == what && e.kind == kind)
            .unwrap_or_else(|| panic!("no {what} {kind} in {:?}", t.errors))
    };
    let o = find("outcome", "timeout");
    assert_eq!((o.model.as_str(), o.per_s, o.total), ("m", 3.0, 5.0));
    let first = find("timeout", "first_token");
    assert_eq!((first.per_s, first.total), (3.0, 5.0));
    assert_eq!(find("timeout", "idle").total, 0.0);
    assert!(!t.errors.iter().any(|e| e.kind == "ok"));
}

#[test]
fn rows_show_from_the_first_scrape() {
    let cur = scrape(3, 0);
    let t = Tables::compute(&Windows::default(), &[&cur]);
    assert_eq!(t.models.len(), 1);
    assert_eq!(t.models[0].req_s, 0.0);
}

#[test]
fn several_gateways_add_up() {
    // Two gateways in front of the same backend: 10 req/s through one, 5 through the other.
    let (a0, a1, b0, b1) = (scrape(0, 0), scrape(20, 0), scrape(100, 0), scrape(105, 0));
    let w = Windows::new([
        Window {
            prev: &a0.samples,
            cur: &a1.samples,
            secs: 2.0,
        },
        Window {
            prev: &b0.samples,
            cur: &b1.samples,
            secs: 1.0,
        },
    ]);
    let t = Tables::compute(&w, &[&a1, &b1]);
    assert_eq!(
        t.models.len(),
        1,
        "one row per model, whatever the gateways"
    );
    assert_eq!((t.models[0].req_s, t.models[0].tok_s), (15.0, 150.0));
    assert_eq!(t.backends[0].req_s, 15.0);
    // Every observation of both in (0.1, 0.2]: the merged quantile stays there.
    assert!((t.models[0].ttft.p50.unwrap() - 0.15).abs() < 1e-9);
}
