//! Tenants: per-key limits (requests and tokens per minute, concurrency, budgets), the 429
//! and the rate-limit headers OpenAI's SDKs read, what each request costs — held in this
//! process, or in a real Redis shared by several replicas, and what happens when that Redis
//! goes away and comes back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::ops::RedisServer;
use crate::common::prom::{sum, value};
use crate::common::*;
use http::{HeaderMap, StatusCode};
use weir::config::{Config, OnStoreError, Price, RedisConfig, TenantLimits};
use weir::gateway;
use weir_sim::SimConfig;

const KEY: &str = "sk-tenant-a";

/// A gateway config with one key, `team-a`, limited by `limits`.
fn config(sim: SocketAddr, limits: TenantLimits) -> Config {
    tenant_config(sim, "team-a", KEY, limits)
}

fn with_redis(mut c: Config, redis: &RedisServer, on_error: OnStoreError) -> Config {
    c.limits.redis = Some(RedisConfig {
        url: redis.url(),
        timeout: Duration::from_millis(200),
        on_error,
        ..RedisConfig::default()
    });
    c
}

/// A request of team-a.
fn keyed(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = post(addr, path, body);
    req.headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    req
}

fn header(h: &HeaderMap, name: &str) -> u64 {
    h[name].to_str().unwrap().parse().unwrap()
}

/// The tokens weir charges at admission for this body (its bytes / 4 and `max_tokens`).
fn estimate(body: &serde_json::Value) -> u64 {
    (body.to_string().len() as u64).div_ceil(4) + body["max_tokens"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn requests_per_minute_answer_429_with_the_headers_openai_sends() {
    let log = AccessLog::capture();
    let sim = start_sim(SimConfig::fast()).await;
    let limits = TenantLimits {
        requests_per_minute: Some(3),
        ..Default::default()
    };
    let gw = gateway::start(config(sim, limits)).await.unwrap();
    let client = client();
    for left in [2, 1, 0] {
        let (status, h, _) = send(
            &client,
            keyed(gw.addr, "/v1/chat/completions", &chat(false, 2)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-ratelimit-limit-requests"), 3);
        assert_eq!(header(&h, "x-ratelimit-remaining-requests"), left);
        assert!(
            h["x-ratelimit-reset-requests"]
                .to_str()
                .unwrap()
                .ends_with('s')
        );
    }
    let mut req = keyed(gw.addr, "/v1/chat/completions", &chat(true, 2));
    req.headers_mut()
        .insert("x-request-id", "limited-1".parse().unwrap());
    let (status, h, body) = send(&client, req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry = header(&h, "retry-after");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(header(&h, "retry-after-ms") <= 60_000);
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), 0);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["error"]["type"], "RateLimitError");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests per minute")
    );
    // Anthropic-shaped on /v1/messages.
    let msg = serde_json::json!({"model": "tiny-llama", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = send(&client, keyed(gw.addr, "/v1/messages", &msg)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "RateLimitError");
    let m = wait_for_metrics(gw.admin_addr, "five requests of team-a", |m| {
        sum(m, "weir_tenant_requests_total", &[("tenant", "team-a")]) == Some(5.0)
    })
    .await;
    let limited = [("tenant", "team-a"), ("limit", "requests")];
    assert_eq!(value(&m, "weir_rate_limited_total", &limited), 2.0);
    let refused = [("tenant", "team-a"), ("outcome", "client_error")];
    assert_eq!(value(&m, "weir_tenant_requests_total", &refused), 2.0);
    let line = &log.of("limited-1")[0];
    assert_eq!(line["status"], 429);
    assert_eq!(line["reason"], "rate_limited");
    assert_eq!(line["tenant"], "team-a");
}

/// Sends `body`; the response's headers and the tokens it really used (from its JSON body
/// or its stream's usage chunk).
async fn send_usage(
    client: &HttpClient,
    addr: SocketAddr,
    body: &serde_json::Value,
) -> (HeaderMap, u64) {
    send_usage_as(client, addr, body, None).await
}

/// [`send_usage`] with a request id: the simulator draws the answer's length from it.
async fn send_usage_as(
    client: &HttpClient,
    addr: SocketAddr,
    body: &serde_json::Value,
    request_id: Option<&str>,
) -> (HeaderMap, u64) {
    let mut req = keyed(addr, "/v1/chat/completions", body);
    if let Some(id) = request_id {
        req.headers_mut()
            .insert("x-request-id", id.parse().expect("a request id"));
    }
    let (status, h, bytes) = send(client, req).await;
    assert_eq!(status, StatusCode::OK);
    let usage = if body["stream"] == true {
        let events = sse_data(&bytes);
        let last = events
            .iter()
            .rev()
            .find(|e| e.contains("\"usage\""))
            .expect("a usage chunk");
        serde_json::from_str::<serde_json::Value>(last).unwrap()["usage"].clone()
    } else {
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["usage"].clone()
    };
    (h, usage["total_tokens"].as_u64().unwrap())
}

const TPM: u64 = 100_000;

/// A tokens-per-minute limit charges an estimate at admission (prompt bytes / 4 and
/// `max_tokens`) and the real usage once the response ends: a request asking for up to 200
/// tokens that gets a few is charged a few. Sent to `addrs.0`, seen on `addrs.1` (another
/// replica when they share Redis).
async fn tokens_are_corrected(addrs: (SocketAddr, SocketAddr), client: &HttpClient) {
    let probe = chat(false, 1);
    let mut charged = 0;
    for stream in [false, true] {
        let mut body = serde_json::json!({
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "a short answer please"}],
            "max_tokens": 200,
            "stream": stream,
        });
        if stream {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        // The simulator's answer stops at a length drawn from the request id: try ids until
        // one stops well short of max_tokens (three in four do), every try charged.
        let mut short = None;
        for i in 0..32 {
            let id = format!("tpm-{stream}-{i}");
            let (_, used) = send_usage_as(client, addrs.0, &body, Some(&id)).await;
            charged += used;
            if used < 150 {
                short = Some(used);
                break;
            }
        }
        assert!(
            short.is_some(),
            "no answer shorter than 150 tokens in 32 tries"
        );
        // The correction lands when the request is recorded, as its body ends: poll for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (h, probe_used) = send_usage(client, addrs.1, &probe).await;
            let remaining = header(&h, "x-ratelimit-remaining-tokens");
            let want = TPM - charged - estimate(&probe);
            charged += probe_used;
            if remaining == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "remaining {remaining}, want {want} once the real usage is charged (stream: {stream})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn tokens_per_minute_are_charged_by_real_usage() {
    let sim = start_sim(SimConfig::fast()).await;
    let limits = TenantLimits {
        tokens_per_minute: Some(TPM),
        ..Default::default()
    };
    let gw = gateway::start(config(sim, limits)).await.unwrap();
    tokens_are_corrected((gw.addr, gw.addr), &client()).await;
    // A request larger than the whole limit is refused, and says so.
    let limits = TenantLimits {
        tokens_per_minute: Some(100),
        ..Default::default()
    };
    let gw = gateway::start(config(sim, limits)).await.unwrap();
    let (status, h, _) = send(
        &client(),
        keyed(gw.addr, "/v1/chat/completions", &chat(false, 500)),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "x-ratelimit-limit-tokens"), 100);
}

/// Each request of 2 prompt-priced tokens... priced so that a few requests cross the budget.
fn priced(mut c: Config) -> Config {
    c.costs.models.insert(
        "tiny-llama".into(),
        Price {
            input: 100.0,
            cached_input: None,
            output: 1000.0,
        },
    );
    c
}

/// Sends requests until one is refused; the costs of those admitted, from the access log.
async fn spend_until_refused(
    addrs: &[SocketAddr],
    log: &AccessLog,
) -> (Vec<f64>, HeaderMap, bytes::Bytes) {
    let client = client();
    let mut costs = Vec::new();
    for i in 0..50 {
        let id = format!("spend-{i}");
        let mut req = keyed(
            addrs[i % addrs.len()],
            "/v1/chat/completions",
            &chat(false, 10),
        );
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        let (status, h, body) = send(&client, req).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            return (costs, h, body);
        }
        assert_eq!(status, StatusCode::OK);
        // Recorded as the body ends; the next check must see this spend.
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            if let Some(l) = log.of(&id).pop() {
                break l;
            }
            assert!(Instant::now() < deadline, "no access line for {id}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        costs.push(
            line["cost_usd"]
                .as_f64()
                .expect("cost_usd in the access line"),
        );
    }
    panic!("the budget never stopped the tenant: {costs:?}");
}

#[tokio::test]
async fn a_budget_stops_a_tenant_at_its_price() {
    let log = AccessLog::capture();
    let sim = start_sim(SimConfig::fast()).await;
    let limits = TenantLimits {
        budget_usd_per_day: Some(0.05),
        ..Default::default()
    };
    let gw = gateway::start(priced(config(sim, limits))).await.unwrap();
    let (costs, h, body) = spend_until_refused(&[gw.addr], &log).await;
    // 10 output tokens at $1000/M and the prompt at $100/M: a little over a cent each.
    let each = costs[0];
    assert!(each > 0.01 && each < 0.0125, "{each}");
    let total: f64 = costs.iter().sum();
    assert!(
        total >= 0.05 && total - costs[costs.len() - 1] < 0.05,
        "stopped once the spend reached the budget: {costs:?}"
    );
    assert!(header(&h, "retry-after") <= 86_400);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily spend budget")
    );
    let m = scrape(gw.admin_addr).await;
    let cost = value(
        &m,
        "weir_cost_usd_total",
        &[("gen_ai_request_model", "tiny-llama"), ("tenant", "team-a")],
    );
    assert!((cost - total).abs() < 1e-9, "{cost} vs {total}");
    assert_eq!(
        value(
            &m,
            "weir_rate_limited_total",
            &[("tenant", "team-a"), ("limit", "budget")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "weir_tenant_budget_usd",
            &[("tenant", "team-a"), ("period", "day")]
        ),
        0.05
    );
}

#[tokio::test]
async fn concurrent_requests_are_held_to_the_limit() {
    let sim = start_sim(SimConfig::fast()).await;
    let limits = TenantLimits {
        max_concurrent: Some(1),
        ..Default::default()
    };
    let gw = gateway::start(config(sim, limits)).await.unwrap();
    let client = client();
    let mut slow = keyed(gw.addr, "/v1/chat/completions", &chat(true, 50));
    slow.headers_mut()
        .insert("x-sim-itl-ms", "20".parse().unwrap());
    let mut first = open(&client, slow).await;
    assert_eq!(first.status(), StatusCode::OK);
    let (status, h, _) = send(
        &client,
        keyed(gw.addr, "/v1/chat/completions", &chat(false, 2)),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "retry-after"), 1);
    read_until(first.body_mut(), |b| b.ends_with(b"data: [DONE]\n\n")).await;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = send(
            &client,
            keyed(gw.addr, "/v1/chat/completions", &chat(false, 2)),
        )
        .await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` replicas of one config sharing one Redis.
async fn replicas(c: &Config, n: usize) -> Vec<gateway::Gateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(gateway::start(c.clone()).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_redis_hold_100_requests_per_minute() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(SimConfig::fast()).await;
    let limits = TenantLimits {
        requests_per_minute: Some(100),
        ..Default::default()
    };
    let c = with_redis(config(sim, limits), &redis, OnStoreError::Open);
    let gws = replicas(&c, 3).await;
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr).collect();
    // 300 requests, 30 at a time, spread over the three.
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(30));
    for i in 0..300 {
        let (client, addr, sem) = (client.clone(), addrs[i % 3], sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            send(
                &client,
                keyed(addr, "/v1/chat/completions", &chat(false, 2)),
            )
            .await
            .0
        });
    }
    let mut ok = 0;
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        (98..=102).contains(&ok),
        "{ok} of 300 admitted against 100 per minute"
    );
    let mut limited = 0.0;
    for g in &gws {
        let m = scrape(g.admin_addr).await;
        limited += value(
            &m,
            "weir_rate_limited_total",
            &[("tenant", "team-a"), ("limit", "requests")],
        );
        assert_eq!(sum(&m, "weir_limit_store_errors_total", &[]), Some(0.0));
    }
    assert_eq!(limited as usize, 300 - ok);
}

#[tokio::test]
async fn tokens_and_budgets_are_shared_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let log = AccessLog::capture();
    let sim = start_sim(SimConfig::fast()).await;
    let limits = TenantLimits {
        tokens_per_minute: Some(TPM),
        ..Default::default()
    };
    let c = with_redis(config(sim, limits), &redis, OnStoreError::Closed);
    let gws = replicas(&c, 2).await;
    tokens_are_corrected((gws[0].addr, gws[1].addr), &client()).await;
    // A budget spent on one replica stops the tenant on the other.
    let limits = TenantLimits {
        budget_usd_per_day: Some(0.05),
        ..Default::default()
    };
    let c = with_redis(priced(config(sim, limits)), &redis, OnStoreError::Closed);
    let gws = replicas(&c, 2).await;
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr).collect();
    let (costs, _, _) = spend_until_refused(&addrs, &log).await;
    // The charge goes to Redis just after the access line: one more request may slip in.
    let total: f64 = costs.iter().sum();
    assert!(total >= 0.05 && total - costs[0] * 2.0 < 0.05, "{costs:?}");
}

/// Sends one request of team-a; its status, and how long it took.
async fn timed(client: &HttpClient, addr: SocketAddr) -> (StatusCode, Duration) {
    let t = Instant::now();
    let (status, _, _) = send(client, keyed(addr, "/v1/chat/completions", &chat(false, 2))).await;
    (status, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_fails_open_or_closed_then_enforces_again() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(SimConfig::fast()).await;
    let limits = TenantLimits {
        requests_per_minute: Some(20),
        ..Default::default()
    };
    let open_gw = gateway::start(with_redis(config(sim, limits), &redis, OnStoreError::Open))
        .await
        .unwrap();
    let closed_gw = gateway::start(with_redis(
        config(sim, limits),
        &redis,
        OnStoreError::Closed,
    ))
    .await
    .unwrap();
    let client = client();
    for gw in [&open_gw, &closed_gw] {
        assert_eq!(timed(&client, gw.addr).await.0, StatusCode::OK);
    }
    redis.kill();
    // Never longer than the 200 ms timeout (and a loaded machine's margin); never a hang.
    for _ in 0..5 {
        let (status, took) = timed(&client, open_gw.addr).await;
        assert_eq!(status, StatusCode::OK, "fail-open serves");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let (status, took) = timed(&client, closed_gw.addr).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "fail-closed refuses"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    let m = scrape(open_gw.admin_addr).await;
    // Refused or timed out, as Redis went: both are the store failing.
    assert!(sum(&m, "weir_limit_store_errors_total", &[]).is_some_and(|n| n >= 5.0));
    let m = scrape(closed_gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            "weir_requests_total",
            &[
                ("outcome", "unavailable"),
                ("code", "5xx"),
                ("backend", "none"),
                ("gen_ai_request_model", "tiny-llama"),
                ("gen_ai_operation_name", "chat")
            ]
        ),
        5.0
    );
    redis.restart().expect("redis-server installed");
    // Both recover by themselves: the closed one serves again, then the limit holds again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while timed(&client, closed_gw.addr).await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "never recovered after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut statuses = Vec::new();
    for i in 0..25 {
        let gw = if i % 2 == 0 { &open_gw } else { &closed_gw };
        statuses.push(timed(&client, gw.addr).await.0);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    // The fresh Redis counts from zero: 20 per minute, one of them the recovery probe.
    assert_eq!(ok, 19, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS)
    );
}
