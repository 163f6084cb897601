//! Several backends: routing by model, balancing, health, retries, timeouts and reload, with
//! several `weir sim` instances on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::ops::echo_backend;
use crate::common::prom::{sum, value};
use crate::common::*;
use http::StatusCode;
use serde_json::{Value, json};
use weir::config::{Config, Strategy};
use weir::gateway::{self, Gateway};
use weir_sim::SimConfig;

/// A config with quick health checks whose backends all serve `tiny-llama` from the start.
fn serving(backends: &[SocketAddr]) -> Config {
    let mut c = quick(backends);
    for b in &mut c.backends {
        b.models = vec!["tiny-llama".into()];
    }
    c
}

/// A config with quick health checks for tests (models discovered).
fn quick(backends: &[SocketAddr]) -> Config {
    let mut c = gateway_config(backends);
    c.models.clear();
    c.health.interval = Duration::from_millis(100);
    c.health.timeout = Duration::from_millis(500);
    c.health.healthy_threshold = 1;
    c.health.ejection_base = Duration::from_millis(200);
    c
}

fn sim(ttft_ms: u64, itl_ms: u64) -> SimConfig {
    SimConfig {
        ttft: Duration::from_millis(ttft_ms),
        itl: Duration::from_millis(itl_ms),
        ..SimConfig::fast()
    }
}

async fn backends(gw: &Gateway) -> Value {
    let (status, text) = get_text(gw.admin_addr, "/backends").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_str(&text).unwrap()
}

/// Polls `/backends` until `cond` holds (at most 10 s).
async fn wait_for_backends(gw: &Gateway, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = backends(gw).await;
        if cond(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn served(metrics: &str, backend: SocketAddr) -> f64 {
    sum(
        metrics,
        "weir_requests_total",
        &[("backend", backend.to_string().as_str())],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn traffic_spreads_by_weight() {
    let sims = [
        start_sim(SimConfig::fast()).await,
        start_sim(SimConfig::fast()).await,
    ];
    let mut c = serving(&sims);
    c.backends[0].weight = 3;
    let gw = gateway::start(c).await.unwrap();
    let client = client();
    for _ in 0..400 {
        let (status, _, _) = send(
            &client,
            post(gw.addr, "/v1/chat/completions", &chat(false, 1)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let m = scrape(gw.admin_addr).await;
    let heavy = served(&m, sims[0]);
    assert_eq!(heavy + served(&m, sims[1]), 400.0);
    // 3:1 → 300 expected; the bounds are seven standard deviations wide.
    assert!(
        (240.0..=360.0).contains(&heavy),
        "weight 3 backend served {heavy} of 400"
    );
}

#[tokio::test]
async fn least_outstanding_counts_a_stream_until_its_body_ends() {
    let sims = [start_sim(sim(0, 50)).await, start_sim(sim(0, 50)).await];
    let gw = gateway::start(serving(&sims)).await.unwrap();
    let client = client();
    // Ten long streams, opened one after another: each goes to the backend holding fewer.
    let mut open_streams = Vec::new();
    for _ in 0..10 {
        let res = open(
            &client,
            post(gw.addr, "/v1/chat/completions", &chat(true, 400)),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        open_streams.push(res);
    }
    for s in sims {
        let m = scrape(s).await;
        assert_eq!(value(&m, "vllm:num_requests_running", &[]), 5.0, "{s}");
    }
    let v = backends(&gw).await;
    let outstanding: Vec<u64> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["outstanding"].as_u64().unwrap())
        .collect();
    assert_eq!(outstanding, [5, 5]);
    drop(open_streams);
    wait_for_backends(&gw, "load to drain", |v| {
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["outstanding"] == 0)
    })
    .await;
}

#[tokio::test]
async fn queue_aware_follows_the_backends_queues() {
    let busy = SimConfig {
        max_num_seqs: 1,
        ..sim(0, 50)
    };
    let sims = [start_sim(busy.clone()).await, start_sim(busy).await];
    // Three long streams straight at the first simulator: one runs, two wait.
    let client = client();
    let mut direct = Vec::new();
    for _ in 0..3 {
        direct.push(
            open(
                &client,
                post(sims[0], "/v1/chat/completions", &chat(true, 400)),
            )
            .await,
        );
    }
    let mut c = serving(&sims);
    c.balance = Strategy::QueueAware;
    let gw = gateway::start(c).await.unwrap();
    wait_for_backends(&gw, "the scraped queues", |v| {
        v["backends"][0]["queue"]["waiting"] == 2 && v["backends"][1]["queue"]["waiting"] == 0
    })
    .await;
    for _ in 0..6 {
        let (status, _, _) = send(
            &client,
            post(gw.addr, "/v1/chat/completions", &chat(false, 2)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(served(&m, sims[1]), 6.0);
    assert_eq!(served(&m, sims[0]), 0.0);
    drop(direct);
}

#[tokio::test]
async fn a_killed_backend_is_ejected_its_requests_succeed_elsewhere_and_it_comes_back() {
    let mut a = StoppableSim::start(SimConfig::fast(), "127.0.0.1:0".parse().unwrap()).await;
    let b = start_sim(SimConfig::fast()).await;
    let mut c = serving(&[a.addr, b]);
    // This is about passive ejection and retries: the active checks would otherwise be free
    // to take the dead backend down before any request reached it (killing the simulator
    // waits for its open connections). They still bring it back below.
    c.health.unhealthy_threshold = 1000;
    c.health.ejection_base = Duration::from_secs(1);
    let gw = gateway::start(c).await.unwrap();
    let client = client();
    a.kill().await;
    for _ in 0..20 {
        let (status, _, body) = send(
            &client,
            post(gw.addr, "/v1/chat/completions", &chat(true, 3)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    let name = a.addr.to_string();
    let down = [("backend", name.as_str())];
    let m = wait_for_metrics(gw.admin_addr, "the dead backend down", |m| {
        sum(m, "weir_backend_up", &down) == Some(0.0)
    })
    .await;
    assert!(value(&m, "weir_retries_total", &[("reason", "connect")]) >= 1.0);
    assert_eq!(
        sum(&m, "weir_requests_total", &[("code", "5xx")]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(value(&m, "weir_requests_total", &[("outcome", "ok")]), 20.0);
    let v = backends(&gw).await;
    assert_ne!(v["backends"][0]["state"], "up");
    // Back on the same address: the health checks bring it back.
    let a = StoppableSim::start(SimConfig::fast(), a.addr).await;
    wait_for_metrics(gw.admin_addr, "the backend back up", |m| {
        sum(m, "weir_backend_up", &down) == Some(1.0)
    })
    .await;
    for _ in 0..20 {
        let (status, _, _) = send(
            &client,
            post(gw.addr, "/v1/chat/completions", &chat(false, 1)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let m = scrape(gw.admin_addr).await;
    assert!(served(&m, a.addr) >= 1.0, "traffic returns to the backend");
}

#[tokio::test]
async fn a_503_before_the_first_byte_is_retried_on_another_backend() {
    let sick = SimConfig {
        fault: Some("http=503".parse().unwrap()),
        ..SimConfig::fast()
    };
    let sims = [start_sim(sick).await, start_sim(SimConfig::fast()).await];
    let mut c = serving(&sims);
    c.balance = Strategy::RoundRobin;
    c.health.passive_failures = 0;
    let gw = gateway::start(c).await.unwrap();
    let client = client();
    for _ in 0..4 {
        let (status, _, _) = send(
            &client,
            post(gw.addr, "/v1/chat/completions", &chat(true, 2)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_retries_total", &[("reason", "unavailable")]),
        2.0
    );
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "upstream_5xx")]),
        2.0
    );
    assert_eq!(value(&m, "weir_requests_total", &[("outcome", "ok")]), 4.0);
}

#[tokio::test]
async fn a_stalled_backend_hits_the_first_token_idle_and_total_timeouts() {
    let s = start_sim(SimConfig::fast()).await;
    let mut c = quick(&[s]);
    c.timeouts.first_token = Duration::from_millis(300);
    c.timeouts.idle = Duration::from_millis(300);
    c.timeouts.total = Duration::from_millis(1500);
    let gw = gateway::start(c).await.unwrap();
    let client = client();
    let stalled = |fault: &str, stream: bool| {
        let mut r = post(gw.addr, "/v1/chat/completions", &chat(stream, 10));
        r.headers_mut()
            .insert("x-sim-fault", fault.parse().unwrap());
        r
    };
    // Streamed, nothing after the role chunk: an error event after the first-token timeout.
    let started = tokio::time::Instant::now();
    let (status, _, body) = send(&client, stalled("stall=0", true)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, StatusCode::OK);
    let events = sse_data(&body);
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], 504, "{events:?}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first_token")
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // Streamed, stalls after three tokens: the idle timeout.
    let (_, _, body) = send(&client, stalled("stall=3", true)).await;
    let events = sse_data(&body);
    assert!(events[events.len() - 2].contains("idle"), "{events:?}");
    // Not streamed, no answer at all: 504 once the total timeout passes.
    let (status, _, body) = send(&client, stalled("stall=0", false)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"]["code"], 504);

    let m = scrape(gw.admin_addr).await;
    for kind in ["first_token", "idle", "total"] {
        assert_eq!(
            value(&m, "weir_timeouts_total", &[("kind", kind)]),
            1.0,
            "{kind}"
        );
    }
    assert_eq!(
        value(&m, "weir_requests_total", &[("outcome", "timeout")]),
        3.0
    );
    // The upstream requests were dropped: the simulator aborted all three.
    let abort = [("finished_reason", "abort")];
    wait_for_metrics(s, "the aborts", |m| {
        sum(m, "vllm:request_success_total", &abort) == Some(3.0)
    })
    .await;
}

#[tokio::test]
async fn model_discovery_sends_the_backends_key() {
    let sim = start_sim(SimConfig {
        model: "keyed".into(),
        api_key: Some("sk-backend".into()),
        ..SimConfig::fast()
    })
    .await;
    // Without the key the backend refuses its model list, as vLLM with --api-key does.
    let (status, _) = get_text(sim, "/v1/models").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let var = "WEIR_TEST_DISCOVERY_KEY";
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var(var, "sk-backend") };
    let mut c = quick(&[sim]);
    c.backends[0].api_key_env = Some(var.into());
    let gw = gateway::start(c).await.unwrap();
    wait_for_backends(&gw, "discovered models", |v| {
        v["backends"][0]["models"] == json!(["keyed"])
    })
    .await;
}

#[tokio::test]
async fn models_are_routed_discovered_and_unknown_ones_refused() {
    let llama = start_sim(SimConfig {
        model: "llama".into(),
        ..SimConfig::fast()
    })
    .await;
    let qwen = start_sim(SimConfig {
        model: "qwen".into(),
        ..SimConfig::fast()
    })
    .await;
    let gw = gateway::start(quick(&[llama, qwen])).await.unwrap();
    wait_for_backends(&gw, "discovered models", |v| {
        v["backends"][0]["models"] == json!(["llama"])
            && v["backends"][1]["models"] == json!(["qwen"])
    })
    .await;
    let client = client();
    for model in ["qwen", "llama", "qwen"] {
        let mut body = chat(true, 2);
        body["model"] = json!(model);
        let (status, _, _) = send(&client, post(gw.addr, "/v1/chat/completions", &body)).await;
        assert_eq!(status, StatusCode::OK, "{model}");
    }
    let mut body = chat(true, 2);
    body["model"] = json!("mistral");
    let (status, _, got) = send(&client, post(gw.addr, "/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let err: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(
        err["error"]["message"],
        "The model `mistral` does not exist."
    );
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[
                ("gen_ai_request_model", "qwen"),
                ("backend", qwen.to_string().as_str())
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[
                ("gen_ai_request_model", "llama"),
                ("backend", llama.to_string().as_str())
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[("gen_ai_request_model", "other"), ("backend", "none")]
        ),
        1.0
    );
    // The simulators never saw the unknown model.
    for s in [llama, qwen] {
        assert_eq!(
            value(
                &scrape(s).await,
                "vllm:request_success_total",
                &[("finished_reason", "error")]
            ),
            0.0
        );
    }
}

#[tokio::test]
async fn reload_adds_and_removes_backends_while_streams_continue() {
    let a = start_sim(sim(0, 20)).await;
    let b = start_sim(SimConfig::fast()).await;
    let dir = std::env::temp_dir().join(format!("weir-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weir.toml");
    let file = |backend: SocketAddr, name: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[backends]]\nname = \"{name}\"\nurl = \"http://{backend}\"\n"
        )
    };
    std::fs::write(&path, file(a, "a")).unwrap();
    let gw = gateway::start(Config::load(&path).unwrap()).await.unwrap();
    let client = client();
    let res = open(
        &client,
        post(gw.addr, "/v1/chat/completions", &chat(true, 40)),
    )
    .await;
    let mut stream = res.into_body();
    let first = read_until(&mut stream, |b| sse_data(b).len() >= 2).await;

    std::fs::write(&path, file(b, "b")).unwrap();
    gw.reload_from(&path, |_| {}).unwrap();
    let v = backends(&gw).await;
    assert_eq!(v["backends"].as_array().unwrap().len(), 1);
    assert_eq!(v["backends"][0]["name"], "b");
    let (status, _, _) = send(
        &client,
        post(gw.addr, "/v1/chat/completions", &chat(true, 2)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        value(&scrape(b).await, "vllm:request_success_total", &[]),
        1.0
    );

    // The stream that began on the removed backend runs to its end.
    let rest = http_body_util::BodyExt::collect(stream)
        .await
        .unwrap()
        .to_bytes();
    let mut all = first;
    all.extend_from_slice(&rest);
    assert!(all.ends_with(b"data: [DONE]\n\n"));

    // A bad file is refused and the running config kept.
    std::fs::write(&path, "[[backends]]\nurl = \"nope\"\n").unwrap();
    let err = gw.reload_from(&path, |_| {}).unwrap_err().to_string();
    assert!(err.contains("backends[0].url"), "{err}");
    assert_eq!(backends(&gw).await["backends"][0]["name"], "b");
    let m = scrape(gw.admin_addr).await;
    assert!(
        !m.contains("weir_backend_up{backend=\"a\"}"),
        "removed backend's gauge is gone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_backend_url_with_a_path_puts_it_before_each_request_path() {
    let echo = echo_backend().await;
    let asked = "/v1/models?limit=2&after=a%20b";
    for (url, want) in [
        (format!("http://{echo}"), asked.to_string()),
        (format!("http://{echo}/"), asked.to_string()),
        (
            format!("http://{echo}/serving/llama/"),
            format!("/serving/llama{asked}"),
        ),
    ] {
        let mut c = serving(&[echo]);
        c.backends[0].url = url.clone();
        let gw = gateway::start(c).await.unwrap();
        let (status, body) = get_text(gw.addr, asked).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        let got: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got["target"], want.as_str(), "{url}");
        // In origin form, with the backend's authority as Host (the client's goes in
        // x-forwarded-host).
        assert_eq!(got["host"], echo.to_string(), "{url}");
        gw.shutdown().await;
    }
}
