//! Auth and limits: API keys and tenants, the admin token, body size, slow clients,
//! connection and in-flight caps — what the client gets and what the operator sees.

use std::time::Duration;

use crate::common::prom::value;
use crate::common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir::config::KeyConfig;
use weir::gateway;
use weir_sim::SimConfig;

#[tokio::test]
async fn api_keys_gate_the_proxy_and_never_reach_the_backend() {
    // The simulator echoes nothing, so a hostile backend shows what arrives upstream.
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.auth.keys = vec![KeyConfig {
        name: "team-a".into(),
        sha256: sha256("sk-team-a"),
        ..Default::default()
    }];
    let gw = gateway::start(c).await.unwrap();
    let client = client();
    // No key, and a wrong key: 401, OpenAI-shaped.
    for key in [None, Some("Bearer sk-wrong")] {
        let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 2));
        if let Some(k) = key {
            req.headers_mut()
                .insert("authorization", k.parse().unwrap());
        }
        let (status, headers, body) = send(&client, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["www-authenticate"], "Bearer");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], 401);
        assert!(!String::from_utf8_lossy(&body).contains("sk-wrong"));
    }
    let mut req = post(gw.addr, "/v1/chat/completions", &chat(true, 2));
    req.headers_mut()
        .insert("authorization", "Bearer sk-team-a".parse().unwrap());
    let (status, _, _) = send(&client, req).await;
    assert_eq!(status, StatusCode::OK);
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "unauthorized")]),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "weir_tenant_requests_total",
            &[("tenant", "team-a"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape(sim).await, "vllm:request_success_total", &[]),
        1.0,
        "refused requests never reach it"
    );
    assert!(!m.contains("sk-team-a"));
}

#[tokio::test]
async fn the_backend_key_replaces_the_clients() {
    // A backend that records the Authorization header it receives.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("-")
                    .to_string();
                rec.lock().unwrap().push(auth);
                let body = br#"{"object":"list","data":[]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body).await;
            });
        }
    });
    // SAFETY of the test: the variable is unique to this test and set before the gateway reads it.
    unsafe { std::env::set_var("WEIR_TEST_BACKEND_KEY", "backend-secret") };
    let mut c = gateway_config(&[addr]);
    c.backends[0].api_key_env = Some("WEIR_TEST_BACKEND_KEY".into());
    c.auth.keys = vec![KeyConfig {
        name: "t".into(),
        sha256: sha256("client-key"),
        ..Default::default()
    }];
    c.health.interval = Duration::from_secs(3600);
    let gw = gateway::start(c).await.unwrap();
    let req = http::Request::get(format!("http://{}/v1/models", gw.addr))
        .header("authorization", "Bearer client-key")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&"bearer backend-secret".to_string()),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|a| a.contains("client-key")), "{seen:?}");
}

#[tokio::test]
async fn the_admin_token_guards_metrics_but_not_probes() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.admin.token_sha256 = sha256("admin-token");
    let gw = gateway::start(c).await.unwrap();
    let (status, _) = get_text(gw.admin_addr, "/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get_text(gw.admin_addr, "/backends").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get_text(gw.admin_addr, probe).await.0, StatusCode::OK);
    }
    let req = http::Request::get(format!("http://{}/metrics", gw.admin_addr))
        .header("authorization", "Bearer admin-token")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.limits.max_request_body = 1024;
    let gw = gateway::start(c).await.unwrap();
    let mut body = chat(true, 2);
    body["messages"][0]["content"] = "x".repeat(4096).into();
    let (status, _, got) = send(&client(), post(gw.addr, "/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["error"]["code"], 413);
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "body_too_large")]),
        1.0
    );
}

#[tokio::test]
async fn a_slow_loris_is_cut_off() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.limits.header_read_timeout = Duration::from_millis(300);
    let gw = gateway::start(c).await.unwrap();
    // Taken before the connection exists: the gateway's clock for it starts later.
    let started = tokio::time::Instant::now();
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Never finish the head: the gateway closes the connection.
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let text = String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).into_owned();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_off() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.limits.header_read_timeout = Duration::from_millis(300);
    let gw = gateway::start(c).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(n.unwrap_or(0), 0, "closed without an answer");
}

#[tokio::test]
async fn connections_and_requests_over_the_limits_get_503() {
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(50),
        ..SimConfig::fast()
    })
    .await;
    let mut c = gateway_config(&[sim]);
    c.limits.max_in_flight = 2;
    c.limits.max_connections = 3;
    let gw = gateway::start(c).await.unwrap();
    // Two long streams hold the in-flight slots, each on its own connection.
    let (a, b) = (client(), client());
    let s1 = open(&a, post(gw.addr, "/v1/chat/completions", &chat(true, 100))).await;
    let s2 = open(&b, post(gw.addr, "/v1/chat/completions", &chat(true, 100))).await;
    let third = client();
    let (status, headers, _) = send(
        &third,
        post(gw.addr, "/v1/chat/completions", &chat(true, 2)),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    // A fourth connection is over the connection limit.
    let fourth = client();
    let (status, headers, _) = send(
        &fourth,
        post(gw.addr, "/v1/chat/completions", &chat(true, 2)),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["connection"], "close");
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_rejected_total", &[("reason", "in_flight")]),
        1.0
    );
    assert_eq!(
        value(&m, "weir_rejected_total", &[("reason", "connections")]),
        1.0
    );
    // Both refusals are recorded like any other request.
    let refused = [("outcome", "unavailable"), ("code", "5xx")];
    wait_for_metrics(gw.admin_addr, "two recorded refusals", |m| {
        crate::common::prom::sum(m, "weir_requests_total", &refused) == Some(2.0)
    })
    .await;
    drop((s1, s2));
}

/// Writes `head` (and `body`) on a fresh connection and reads the answer's status line,
/// within 5 s.
async fn raw_status(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn heads_too_large_slow_bodies_and_declared_huge_bodies_are_refused_and_recorded() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.limits.max_head_bytes = 2048;
    c.limits.body_read_timeout = Duration::from_millis(300);
    let gw = gateway::start(c).await.unwrap();
    // A head over the limit (but within hyper's own buffer): 431.
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    assert_eq!(
        raw_status(gw.addr, &head, b"").await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A body declared at 1 GiB: 413 from the header, before any of it is sent.
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n";
    assert_eq!(
        raw_status(gw.addr, head, b"").await,
        "HTTP/1.1 413 Payload Too Large"
    );
    // A body that stops coming: 408 once the body deadline passes.
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    assert_eq!(
        raw_status(gw.addr, head, b"{\"model\":").await,
        "HTTP/1.1 408 Request Timeout"
    );
    let m = wait_for_metrics(gw.admin_addr, "three refusals", |m| {
        crate::common::prom::sum(
            m,
            "weir_requests_total",
            &[("outcome", "client_error"), ("code", "4xx")],
        ) == Some(3.0)
    })
    .await;
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "body_too_large")]),
        1.0
    );
    assert_eq!(
        value(&m, "weir_errors_total", &[("kind", "bad_request")]),
        2.0
    );
}

/// Opens a connection that sends a request head declaring `len` body bytes, and `sent` of
/// them, then nothing more (the connection is held open while the value lives).
async fn slow_body(addr: std::net::SocketAddr, len: usize, sent: usize) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&vec![b' '; sent]).await.unwrap();
    conn
}

#[tokio::test]
async fn clients_slow_to_send_their_bodies_hold_no_in_flight_slot() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.limits.max_in_flight = 8;
    let gw = gateway::start(c).await.unwrap();
    // Four times as many slow bodies as there are slots: none of them is in flight yet.
    let mut slow = Vec::new();
    for _ in 0..32 {
        slow.push(slow_body(gw.addr, 100, 1).await);
    }
    wait_for_metrics(gw.admin_addr, "the slow bodies arriving", |m| {
        crate::common::prom::sum(m, "weir_requests_in_flight", &[]) == Some(32.0)
    })
    .await;
    let client = client();
    for _ in 0..10 {
        let (status, _, _) = send(
            &client,
            post(gw.addr, "/v1/chat/completions", &chat(true, 2)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "a legitimate request is served");
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_rejected_total", &[("reason", "in_flight")]),
        0.0
    );
    drop(slow);
}

#[tokio::test]
async fn request_bodies_beyond_the_memory_budget_get_503() {
    let sim = start_sim(SimConfig::fast()).await;
    let mut c = gateway_config(&[sim]);
    c.limits.max_request_body = 1 << 20;
    c.limits.max_buffered_bytes = 4 << 20;
    let gw = gateway::start(c).await.unwrap();
    // Four bodies of 1 MiB on their way take the whole budget (reserved from their length).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(slow_body(gw.addr, 1 << 20, 1024).await);
    }
    wait_for_metrics(gw.admin_addr, "four bodies arriving", |m| {
        crate::common::prom::sum(m, "weir_requests_in_flight", &[]) == Some(4.0)
    })
    .await;
    assert_eq!(gw.state.buffered.used(), 4 << 20);
    let mut conn = slow_body(gw.addr, 1 << 20, 0).await;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(&m, "weir_rejected_total", &[("reason", "memory")]),
        1.0
    );
    // Once those clients leave, their bytes are given back.
    drop(held);
    wait_for_metrics(gw.admin_addr, "the held bodies gone", |m| {
        crate::common::prom::sum(m, "weir_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(gw.state.buffered.used(), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_upstream_at_the_total_timeout() {
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(5),
        ..SimConfig::fast()
    })
    .await;
    let mut c = gateway_config(&[sim]);
    c.timeouts.total = Duration::from_millis(800);
    let gw = gateway::start(c).await.unwrap();
    // An h2 client that grants no flow-control window and never reads: the gateway can send
    // the response head and nothing after it, so it is never asked for the body again.
    let stalled = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(0)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let res = open(
        &stalled,
        post(gw.addr, "/v1/chat/completions", &chat(true, 400)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The simulator sees its request abandoned once the total time is up (400 tokens would
    // take it two seconds).
    let abort = [("finished_reason", "abort")];
    wait_for_metrics(sim, "the backend's abort", |m| {
        crate::common::prom::sum(m, "vllm:request_success_total", &abort) == Some(1.0)
    })
    .await;
    drop(res);
    let m = wait_for_metrics(gw.admin_addr, "the request recorded", |m| {
        crate::common::prom::sum(m, "weir_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(value(&m, "weir_timeouts_total", &[("kind", "total")]), 1.0);
}
