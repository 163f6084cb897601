//! `weir bench` against `weir sim`: its measurements come out as the simulator was told.

use std::time::Duration;

use crate::common::*;
use weir_bench::{BenchArgs, Load, run_load};
use weir_sim::SimConfig;

fn args(url: String) -> BenchArgs {
    BenchArgs {
        url,
        model: Some("tiny-llama".into()),
        concurrency: None,
        rate: None,
        sweep: vec![],
        prompt_tokens: 32,
        max_tokens: 11,
        no_stream: false,
        api: weir_bench::Api::Chat,
        completions: false,
        requests: Some(24),
        duration: Duration::from_secs(30),
        warmup: Duration::ZERO,
        ramp_up: Duration::ZERO,
        headers: vec![],
        timeout: Duration::from_secs(60),
        slo: None,
        max_error_rate: None,
        json: None,
        report: None,
    }
}

#[tokio::test]
async fn closed_loop_measures_what_the_simulator_was_told() {
    let sim = start_sim(SimConfig {
        ttft: Duration::from_millis(100),
        itl: Duration::from_millis(10),
        ..SimConfig::fast()
    })
    .await;
    let mut a = args(format!("http://{sim}"));
    a.slo = Some("ttft=300ms,tpot=30ms".parse().unwrap());
    let r = run_load(&a, Load::Closed(8)).await.unwrap();
    assert_eq!((r.requests, r.errors), (24, 0));
    assert_eq!(r.output_tokens, 24 * 11);
    assert!((0.1..0.2).contains(&r.ttft.p50), "TTFT p50 {}", r.ttft.p50);
    assert!(r.ttft.max >= 0.1);
    assert!(
        (0.009..0.02).contains(&r.tpot.p50),
        "TPOT p50 {}",
        r.tpot.p50
    );
    assert!((0.008..0.02).contains(&r.itl.p50), "ITL p50 {}", r.itl.p50);
    assert_eq!(r.itl.count, 24 * 10, "one ITL sample per gap");
    assert!(r.e2e.p50 >= 0.2, "e2e p50 {}", r.e2e.p50);
    assert_eq!(r.good_requests, Some(24));
    // A stricter SLO than the simulator can meet: no goodput.
    a.slo = Some("ttft=50ms".parse().unwrap());
    a.requests = Some(4);
    let r = run_load(&a, Load::Closed(2)).await.unwrap();
    assert_eq!(r.good_requests, Some(0));
}

#[tokio::test]
async fn through_the_gateway_the_numbers_agree_with_its_metrics() {
    let sim = start_sim(SimConfig {
        ttft: Duration::from_millis(50),
        itl: Duration::from_millis(5),
        ..SimConfig::fast()
    })
    .await;
    let gw = start_gateway(&[sim]).await;
    let r = run_load(&args(format!("http://{}", gw.addr)), Load::Poisson(50.0))
        .await
        .unwrap();
    assert_eq!((r.requests, r.errors), (24, 0));
    let m = scrape(gw.admin_addr).await;
    let ttft_mean =
        crate::common::prom::value(&m, "gen_ai_server_time_to_first_token_seconds_sum", &CHAT)
            / 24.0;
    // The client sees the gateway's TTFT plus loopback: close, never less.
    assert!(
        r.ttft.mean >= ttft_mean - 0.001 && r.ttft.mean - ttft_mean < 0.05,
        "bench {} gateway {}",
        r.ttft.mean,
        ttft_mean
    );
    let tokens = crate::common::prom::value(
        &m,
        "weir_tokens_total",
        &[CHAT[0], ("gen_ai_token_type", "output")],
    );
    assert_eq!(tokens, r.output_tokens as f64);
}

/// A simulator answering in about 50 ms, and a time-bounded load of short requests for it.
async fn short_requests() -> (std::net::SocketAddr, BenchArgs) {
    let sim = start_sim(SimConfig {
        ttft: Duration::from_millis(20),
        itl: Duration::from_millis(10),
        ..SimConfig::fast()
    })
    .await;
    let mut a = args(format!("http://{sim}"));
    a.requests = None;
    a.max_tokens = 4;
    (sim, a)
}

#[tokio::test]
async fn warm_up_requests_are_sent_without_a_pause_and_not_counted() {
    let (sim, mut a) = short_requests().await;
    a.warmup = Duration::from_millis(600);
    a.duration = Duration::from_millis(400);
    let r = run_load(&a, Load::Closed(4)).await.unwrap();
    let served = crate::common::prom::value(&scrape(sim).await, "vllm:request_success_total", &[]);
    assert_eq!(r.errors, 0);
    assert!(r.requests > 0);
    // Each request takes about 50 ms: the warm-up's requests reached the simulator too,
    // but the report counts only those started in the measured 400 ms.
    assert!(
        served >= r.requests as f64 * 1.8,
        "simulator served {served}, report counts {}",
        r.requests
    );
    assert!(
        (r.duration_s - 0.4).abs() < 0.2,
        "measured for {} s",
        r.duration_s
    );
}

#[tokio::test]
async fn clients_start_spread_over_the_ramp() {
    let (_sim, mut a) = short_requests().await;
    a.duration = Duration::from_millis(500);
    // Four clients over 4 s: the second would start at 1 s, after the run, so only the
    // first sends, one request at a time.
    a.ramp_up = Duration::from_secs(4);
    let r = run_load(&a, Load::Closed(4)).await.unwrap();
    assert_eq!(r.errors, 0);
    assert!(r.requests > 0);
    let busy = r.requests as f64 * r.e2e.mean;
    assert!(
        busy <= r.duration_s + 0.01,
        "{} requests of {} s each overlapped in {} s",
        r.requests,
        r.e2e.mean,
        r.duration_s
    );
    // Without the ramp the four run side by side.
    a.ramp_up = Duration::ZERO;
    let r = run_load(&a, Load::Closed(4)).await.unwrap();
    assert!(r.requests as f64 * r.e2e.mean > 2.0 * r.duration_s);
}

#[tokio::test]
async fn non_streamed_requests_and_errors_are_counted() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut a = args(format!("http://{sim}"));
    a.no_stream = true;
    a.requests = Some(5);
    let r = run_load(&a, Load::Closed(2)).await.unwrap();
    assert_eq!((r.requests, r.errors, r.output_tokens), (5, 0, 55));
    assert_eq!(r.ttft.count, 0, "no TTFT without a stream");
    a.headers = vec!["x-sim-fault:http=503".into()];
    let r = run_load(&a, Load::Closed(2)).await.unwrap();
    assert_eq!(r.errors, 5);
    a.headers = vec!["x-sim-fault:error-event=2".into()];
    a.no_stream = false;
    let r = run_load(&a, Load::Closed(2)).await.unwrap();
    assert_eq!(r.errors, 5, "an error event fails the request");
}
