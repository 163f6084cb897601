//! What `[metrics] histogram_backend` costs per request: the series lookup when the backend
//! is picked and every observation `record.rs` makes for a streamed generation (TTFT, upstream
//! TTFT, overhead, first answer token, TPOT, one ITL per gap, e2e by outcome, the request and
//! token counters), with the backend label on the histograms (the default, the baseline) and
//! without, in alternating rounds in one run. Prints each round and the medians' ratio.
//!
//!     cargo run --release --example series_cost -- [requests per round] [rounds]

use std::sync::Arc;
use std::time::Instant;

use weir::config::{MetricsConfig, SloConfig};
use weir::labels::{Operation, Outcome};
use weir::metrics::Metrics;

const BACKENDS: usize = 8;
const GAPS: usize = 16;

/// Nanoseconds per request over `n` requests spread over the backends of one model.
fn per_request(m: &Metrics, backends: &[Arc<str>], n: usize) -> f64 {
    let model = m.model_label(Some("model"));
    let start = Instant::now();
    for i in 0..n {
        let s = m.series(&model, Operation::Chat, &backends[i % backends.len()]);
        let x = (i % 100) as f64 * 1e-3;
        s.ttft.observe(0.05 + x);
        s.upstream_ttft.observe(0.049 + x);
        s.overhead.observe(0.0001);
        s.ttfat.observe(0.05 + x);
        for g in 0..GAPS {
            s.itl.observe(0.01 + g as f64 * 1e-4);
        }
        s.tpot.observe(0.01);
        s.observe_duration(Outcome::Ok, 0.3 + x);
        s.count_request(Outcome::Ok, http::StatusCode::OK);
        s.input_tokens.observe(20.0);
        s.output_tokens.observe(GAPS as f64 + 1.0);
        s.input_tokens_total.inc_by(20);
        s.output_tokens_total.inc_by(GAPS as u64 + 1);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(9);
    let backends: Vec<Arc<str>> = (0..BACKENDS).map(|i| format!("b{i}").into()).collect();
    let slo = SloConfig::default();
    let build = |histogram_backend| {
        Metrics::with_config(
            vec!["model".into()],
            &slo,
            &MetricsConfig { histogram_backend },
        )
    };
    let (on, off) = (build(true), build(false));
    // Warm-up: every series created, caches warm.
    per_request(&on, &backends, n / 10);
    per_request(&off, &backends, n / 10);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first, so that neither always follows the other.
        let (x, y) = if r % 2 == 0 {
            let x = per_request(&on, &backends, n);
            (x, per_request(&off, &backends, n))
        } else {
            let y = per_request(&off, &backends, n);
            (per_request(&on, &backends, n), y)
        };
        println!("round {r}: histogram_backend=true {x:.1} ns/request, false {y:.1} ns/request");
        a.push(x);
        b.push(y);
    }
    let (ma, mb) = (median(&mut a), median(&mut b));
    println!(
        "median ns/request over {rounds} rounds of {n} ({BACKENDS} backends, {GAPS} gaps): \
         histogram_backend=true {ma:.1}, false {mb:.1}; false/true = {:.3}",
        mb / ma
    );
}
