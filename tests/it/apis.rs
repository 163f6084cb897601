//! Every API vLLM serves, through the gateway to the simulator: Responses, Messages and the
//! pooling APIs measured as DESIGN.md defines them — TTFT at the first content-bearing
//! event, the first answer token after reasoning, ITL per gap, usage with cached and
//! reasoning tokens, the end event, failures and cancellations — and the bytes unchanged.

use std::time::Duration;

use crate::common::prom::{sum, value};
use crate::common::*;
use http::StatusCode;
use serde_json::json;
use weir::gateway::Gateway;
use weir_bench::{Api, BenchArgs, Load, run_load};
use weir_sim::SimConfig;

const CHAT_LABELS: [(&str, &str); 2] = [
    ("gen_ai_request_model", "tiny-llama"),
    ("gen_ai_operation_name", "chat"),
];

fn responses(stream: bool, max: u32) -> serde_json::Value {
    json!({"model": "tiny-llama", "input": "How high is the weir?", "max_output_tokens": max,
           "stream": stream, "ignore_eos": true})
}

fn messages(stream: bool, max: u32) -> serde_json::Value {
    json!({"model": "tiny-llama", "max_tokens": max, "stream": stream, "ignore_eos": true,
           "messages": [{"role": "user", "content": "How high is the weir?"}]})
}

async fn gateway_in_front_of(sim: SimConfig) -> (std::net::SocketAddr, Gateway) {
    let sim = start_sim(sim).await;
    (sim, start_gateway(&[sim]).await)
}

fn tokens(m: &str, kind: &str) -> f64 {
    sum(
        m,
        "weir_tokens_total",
        &[CHAT_LABELS[0], ("gen_ai_token_type", kind)],
    )
    .unwrap_or(0.0)
}

async fn recorded(gw: &Gateway, n: f64) -> String {
    wait_for_metrics(gw.admin_addr, "the requests recorded", |m| {
        sum(m, "weir_requests_total", &[]) == Some(n)
            && sum(m, "weir_requests_in_flight", &[]) == Some(0.0)
    })
    .await
}

#[tokio::test]
async fn responses_and_messages_are_measured_streamed_and_not() {
    let (sim, gw) = gateway_in_front_of(SimConfig {
        ttft: Duration::from_millis(30),
        itl: Duration::from_millis(2),
        ..SimConfig::fast()
    })
    .await;
    let client = client();
    for (path, body) in [
        ("/v1/responses", responses(true, 9)),
        ("/v1/messages", messages(true, 9)),
        ("/v1/responses", responses(false, 9)),
        ("/v1/messages", messages(false, 9)),
    ] {
        let (status, _, got) = send(&client, post(gw.addr, path, &body)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    let m = recorded(&gw, 4.0).await;
    let ok = [CHAT_LABELS[0], CHAT_LABELS[1], ("outcome", "ok")];
    assert_eq!(
        value(&m, "weir_requests_total", &ok),
        4.0,
        "ended well: {m}"
    );
    // Two streams: a TTFT each, at least the simulator's 30 ms; 9 tokens each, counted from
    // the usage of their final events; the bodies' usage too.
    let ttft = [CHAT_LABELS[0], CHAT_LABELS[1]];
    assert_eq!(
        value(&m, "gen_ai_server_time_to_first_token_seconds_count", &ttft),
        2.0
    );
    assert!(value(&m, "gen_ai_server_time_to_first_token_seconds_sum", &ttft) >= 0.06);
    assert_eq!(
        value(&m, "weir_inter_token_latency_seconds_count", &ttft),
        2.0 * 8.0
    );
    assert_eq!(tokens(&m, "output"), 4.0 * 9.0);
    let served = sum(&scrape(sim).await, "vllm:prompt_tokens_total", &[]).unwrap();
    assert_eq!(
        tokens(&m, "input"),
        served,
        "input tokens as the backend counted them"
    );
    assert_eq!(sum(&m, "weir_errors_total", &[]), Some(0.0));
}

#[tokio::test]
async fn reasoning_comes_before_the_first_answer_token() {
    let (_, gw) = gateway_in_front_of(SimConfig {
        itl: Duration::from_millis(5),
        ..SimConfig::fast()
    })
    .await;
    let client = client();
    for (path, body) in [
        ("/v1/chat/completions", chat(true, 12)),
        ("/v1/responses", responses(true, 12)),
        ("/v1/messages", messages(true, 12)),
    ] {
        let mut req = post(gw.addr, path, &body);
        req.headers_mut()
            .insert("x-sim-reasoning", "6".parse().unwrap());
        let (status, _, _) = send(&client, req).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let m = recorded(&gw, 3.0).await;
    let l = [CHAT_LABELS[0], CHAT_LABELS[1]];
    // The first token is reasoning; the first answer token comes six tokens later. The
    // simulator's deadlines count from the request's admission, so the seventh token is no
    // earlier than six gaps in however late the first one was (on a loaded machine a late
    // first token can arrive together with those after it).
    let ttft = value(&m, "gen_ai_server_time_to_first_token_seconds_sum", &l);
    let ttfat = value(&m, "weir_time_to_first_answer_token_seconds_sum", &l);
    assert_eq!(
        value(&m, "weir_time_to_first_answer_token_seconds_count", &l),
        3.0
    );
    assert!(
        ttfat >= 3.0 * 6.0 * 0.005 && ttfat >= ttft,
        "TTFT {ttft} first answer {ttfat}"
    );
    // Reasoning tokens where the API reports them (chat and Responses).
    assert_eq!(tokens(&m, "reasoning"), 2.0 * 6.0);
    assert_eq!(tokens(&m, "output"), 3.0 * 12.0);
}

#[tokio::test]
async fn prefix_cache_hits_are_counted_as_cache_reads_on_every_api() {
    let (_, gw) = gateway_in_front_of(SimConfig {
        enable_prompt_tokens_details: true,
        ..SimConfig::fast()
    })
    .await;
    let client = client();
    let long = "The weir holds the river back and lets it through. ".repeat(12);
    let mut chat_body = chat(false, 2);
    chat_body["messages"][0]["content"] = long.clone().into();
    let mut msg = messages(false, 2);
    msg["messages"][0]["content"] = long.clone().into();
    let mut resp = responses(false, 2);
    resp["input"] = long.into();
    for (path, body) in [
        ("/v1/chat/completions", &chat_body),
        ("/v1/chat/completions", &chat_body),
        ("/v1/messages", &msg),
        ("/v1/responses", &resp),
    ] {
        let (status, _, _) = send(&client, post(gw.addr, path, body)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let m = recorded(&gw, 4.0).await;
    let cached = tokens(&m, "cache_read");
    assert!(cached > 0.0, "the repeated prompts hit the cache");
    assert!(cached < tokens(&m, "input"), "a subset of the input");
}

#[tokio::test]
async fn pooling_apis_are_timed_and_their_input_counted() {
    let (sim, gw) = gateway_in_front_of(SimConfig::fast()).await;
    let client = client();
    let calls = [
        (
            "/v1/embeddings",
            json!({"model": "tiny-llama", "input": "a weir"}),
            "embeddings",
        ),
        (
            "/pooling",
            json!({"model": "tiny-llama", "input": "a weir"}),
            "pooling",
        ),
        (
            "/classify",
            json!({"model": "tiny-llama", "input": "a weir"}),
            "classify",
        ),
        (
            "/score",
            json!({"model": "tiny-llama", "text_1": "a", "text_2": "b"}),
            "score",
        ),
        (
            "/v1/rerank",
            json!({"model": "tiny-llama", "query": "a", "documents": ["b", "c"]}),
            "rerank",
        ),
    ];
    for (path, body, _) in &calls {
        let (status, _, got) = send(&client, post(gw.addr, path, body)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    let m = recorded(&gw, 5.0).await;
    for (path, _, op) in &calls {
        let l = [("gen_ai_operation_name", *op), ("outcome", "ok")];
        assert_eq!(sum(&m, "weir_requests_total", &l), Some(1.0), "{path}");
        let input = [
            ("gen_ai_operation_name", *op),
            ("gen_ai_token_type", "input"),
        ];
        assert!(
            sum(&m, "weir_tokens_total", &input).unwrap_or(0.0) > 0.0,
            "{path}"
        );
        let ttft = [("gen_ai_operation_name", *op)];
        let ttfts = sum(&m, "gen_ai_server_time_to_first_token_seconds_count", &ttft);
        assert_eq!(ttfts.unwrap_or(0.0), 0.0, "{path}: no TTFT");
    }
    let served = sum(&scrape(sim).await, "vllm:prompt_tokens_total", &[]).unwrap();
    let input = sum(&m, "weir_tokens_total", &[("gen_ai_token_type", "input")]).unwrap();
    assert!(input > 0.0 && input <= served, "{input} of {served}");
}

#[tokio::test]
async fn failed_and_cancelled_streams_of_the_new_apis_are_recorded_so() {
    let (_, gw) = gateway_in_front_of(SimConfig {
        itl: Duration::from_millis(20),
        ..SimConfig::fast()
    })
    .await;
    // A stream the client leaves mid-way: cancelled, with what it showed so far.
    for (path, body) in [
        ("/v1/responses", responses(true, 200)),
        ("/v1/messages", messages(true, 200)),
    ] {
        let c = client();
        let res = open(&c, post(gw.addr, path, &body)).await;
        let mut body = res.into_body();
        read_until(&mut body, |b| {
            b.windows(5).filter(|w| w == b"delta").count() >= 3
        })
        .await;
        drop(body);
    }
    let m = recorded(&gw, 2.0).await;
    let cancelled = [CHAT_LABELS[0], ("outcome", "cancelled")];
    assert_eq!(value(&m, "weir_requests_total", &cancelled), 2.0);
    let l = [CHAT_LABELS[0], CHAT_LABELS[1]];
    assert_eq!(
        value(&m, "gen_ai_server_time_to_first_token_seconds_count", &l),
        2.0
    );
}

#[tokio::test]
async fn weir_bench_agrees_with_the_gateway_on_responses_and_messages() {
    let (_, gw) = gateway_in_front_of(SimConfig {
        ttft: Duration::from_millis(50),
        itl: Duration::from_millis(5),
        ..SimConfig::fast()
    })
    .await;
    let l = [CHAT_LABELS[0], CHAT_LABELS[1]];
    let ttft_of = |m: &str| {
        let count = value(m, "gen_ai_server_time_to_first_token_seconds_count", &l);
        (
            count,
            value(m, "gen_ai_server_time_to_first_token_seconds_sum", &l),
        )
    };
    let mut before = (0.0, 0.0);
    for (api, n) in [(Api::Responses, 12.0), (Api::Messages, 24.0)] {
        let args = BenchArgs {
            url: format!("http://{}", gw.addr),
            model: Some("tiny-llama".into()),
            api,
            prompt_tokens: 16,
            max_tokens: 7,
            requests: Some(12),
            ..BenchArgs::default()
        };
        let r = run_load(&args, Load::Closed(4)).await.unwrap();
        assert_eq!((r.requests, r.errors), (12, 0), "{api:?}");
        let m = recorded(&gw, n).await;
        let after = ttft_of(&m);
        let ttft_mean = (after.1 - before.1) / (after.0 - before.0);
        before = after;
        // The client sees the gateway's TTFT plus loopback: close, never less (as for chat).
        assert!(
            r.ttft.mean >= ttft_mean - 0.001 && r.ttft.mean - ttft_mean < 0.05,
            "{api:?}: bench {} gateway {}",
            r.ttft.mean,
            ttft_mean
        );
        assert_eq!(tokens(&m, "output"), n * 7.0, "{api:?}");
        assert_eq!(r.output_tokens as f64, 12.0 * 7.0, "{api:?}");
    }
}
