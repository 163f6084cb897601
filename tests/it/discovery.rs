//! Backends found by DNS: an authoritative DNS server in the test process (hickory-server)
//! serves a zone the test rewrites; the backend's name resolves to 127.0.0.1 and ::1, each
//! with its own simulator on the same port. Endpoints come and go with the records, open
//! streams on a removed endpoint finish whole, and a server that stops answering keeps the
//! endpoints known.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::UdpSocket;
use weir::config::{Config, DiscoveryKind};
use weir::gateway::{self, Gateway};
use weir_sim::SimConfig;

use crate::common::prom::{sum, value};
use crate::common::*;

const ZONE: &str = "weir.test.";
const HOST: &str = "vllm.weir.test";

/// An authoritative server for `weir.test.` on a free UDP port of 127.0.0.1, whose A and
/// AAAA records of `vllm.weir.test.` the test sets.
struct Dns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    server: Server<Catalog>,
}

impl Dns {
    async fn start() -> Dns {
        let origin = Name::from_ascii(ZONE).unwrap();
        let mut zone =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_ascii("ns.weir.test.").unwrap(),
            Name::from_ascii("admin.weir.test.").unwrap(),
            1,
            60,
            60,
            60,
            0,
        );
        assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 0, RData::SOA(soa)), 1));
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        Dns { addr, zone, server }
    }

    /// The name's records become `ips` (TTL 0: the resolver asks again every time).
    async fn set(&self, ips: &[IpAddr]) {
        let name = Name::from_ascii(format!("{HOST}.")).unwrap();
        let mut records = self.zone.records_mut().await;
        for (kind, pick) in [
            (
                RecordType::A,
                (|ip: &IpAddr| ip.is_ipv4()) as fn(&IpAddr) -> bool,
            ),
            (RecordType::AAAA, |ip: &IpAddr| ip.is_ipv6()),
        ] {
            let key = RrKey::new(LowerName::new(&name), kind);
            let list: Vec<Record> = ips
                .iter()
                .filter(|ip| pick(ip))
                .map(|ip| {
                    let rdata = match ip {
                        IpAddr::V4(v4) => RData::A(A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                    };
                    Record::from_rdata(name.clone(), 0, rdata)
                })
                .collect();
            if list.is_empty() {
                records.remove(&key);
                continue;
            }
            let mut set = RecordSet::with_ttl(name.clone(), kind, 0);
            set.set_records(list);
            records.insert(key, Arc::new(set));
        }
    }

    /// Stops answering: the port is closed.
    async fn stop(mut self) {
        self.server.shutdown_gracefully().await.unwrap();
    }
}

/// Simulators on 127.0.0.1:P and [::1]:P (one port, two addresses).
async fn sims(config: SimConfig) -> (StoppableSim, StoppableSim) {
    for _ in 0..20 {
        let v4 = StoppableSim::any_port(config.clone()).await;
        let v6_addr = SocketAddr::new("::1".parse().unwrap(), v4.addr.port());
        if tokio::net::TcpListener::bind(v6_addr).await.is_ok() {
            let v6 = StoppableSim::start(config, v6_addr).await;
            return (v4, v6);
        }
        v4.shutdown().await;
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

fn config(dns: SocketAddr, port: u16) -> Config {
    let mut c = gateway_config(&[]);
    let mut b = weir::config::BackendConfig::new(format!("http://{HOST}:{port}"));
    b.discovery = DiscoveryKind::Dns;
    b.models = vec!["tiny-llama".into()];
    c.backends = vec![b];
    c.normalise();
    c.discovery.nameservers = vec![dns.to_string()];
    c.discovery.interval = Duration::from_millis(200);
    c.health.interval = Duration::from_millis(200);
    c.health.timeout = Duration::from_millis(500);
    c.validate().unwrap();
    c
}

async fn backends(gw: &Gateway) -> Value {
    let (status, text) = get_text(gw.admin_addr, "/backends").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_str(&text).unwrap()
}

/// Polls `/backends` until `cond` holds of the one backend (at most 10 s).
async fn wait_for(gw: &Gateway, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = backends(gw).await;
        if cond(&v["backends"][0]) {
            return v["backends"][0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The endpoints' addresses, with whether each is up.
fn endpoints(b: &Value) -> Vec<(String, bool)> {
    b["endpoints"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| {
                    let addr = e["address"].as_str().unwrap_or_default().to_owned();
                    (addr, e["up"] == true)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Series in a `/metrics` text, the endpoint gauge left out.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter(|l| !l.starts_with("weir_backend_endpoint_up"))
        .count()
}

async fn completed(sim: &StoppableSim) -> f64 {
    sum(&scrape(sim.addr).await, "vllm:request_success_total", &[]).unwrap_or(0.0)
}

#[tokio::test]
async fn endpoints_follow_the_records_and_removed_ones_drain() {
    let (v4, v6) = sims(SimConfig {
        itl: Duration::from_millis(20),
        ..SimConfig::fast()
    })
    .await;
    let port = v4.addr.port();
    let (a4, a6) = (v4.addr.to_string(), v6.addr.to_string());
    let dns = Dns::start().await;
    dns.set(&[v4.addr.ip()]).await;
    let gw = gateway::start(config(dns.addr, port)).await.unwrap();
    let name = format!("{HOST}:{port}");

    // One record: one endpoint, checked, then up.
    let b = wait_for(&gw, "the first endpoint up", |b| {
        endpoints(b) == [(a4.clone(), true)]
    })
    .await;
    assert_eq!(b["name"], name.as_str());
    assert_eq!(b["discovery"], "dns");
    let client = client();
    let (status, _, _) = send(
        &client,
        post(gw.addr, "/v1/chat/completions", &chat(false, 2)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A second record: the endpoint appears, is checked, then takes traffic too.
    dns.set(&[v4.addr.ip(), v6.addr.ip()]).await;
    wait_for(&gw, "two endpoints up", |b| {
        let e = endpoints(b);
        e.len() == 2 && e.iter().all(|(_, up)| *up)
    })
    .await;
    let mut sent = 0;
    while completed(&v6).await == 0.0 || completed(&v4).await < 2.0 {
        assert!(sent < 200, "both endpoints should get requests");
        // Streamed, so that the series of streamed generations (SLO) exist from here on.
        let req = post(gw.addr, "/v1/chat/completions", &chat(true, 2));
        assert_eq!(send(&client, req).await.0, StatusCode::OK);
        sent += 1;
    }
    let m = scrape(gw.admin_addr).await;
    for a in [&a4, &a6] {
        let labels = [("backend", name.as_str()), ("endpoint", a.as_str())];
        assert_eq!(value(&m, "weir_backend_endpoint_up", &labels), 1.0, "{m}");
    }
    assert_eq!(value(&m, "weir_backend_up", &[("backend", &name)]), 1.0);
    // The latency histograms keep the configured name, never an address.
    assert!(
        m.lines()
            .filter(|l| l.starts_with("gen_ai_server_request_duration_seconds_count"))
            .all(|l| l.contains(&format!("backend=\"{name}\""))),
        "{m}"
    );

    // Two long streams: with p2c, one on each endpoint.
    let tokens = 250;
    let mut streams = Vec::new();
    for _ in 0..2 {
        // The client asks for the usage chunk (weir would otherwise take off the one it asked for).
        let mut body = chat(true, tokens);
        body["stream_options"] = serde_json::json!({ "include_usage": true });
        let mut res = open(&client, post(gw.addr, "/v1/chat/completions", &body)).await;
        assert_eq!(res.status(), StatusCode::OK);
        let first = read_until(res.body_mut(), |seen| !sse_data(seen).is_empty()).await;
        streams.push((res, first));
    }
    let running = |text: &str| value(text, "vllm:num_requests_running", &[]);
    assert_eq!(
        running(&scrape(v4.addr).await),
        1.0,
        "a stream runs on 127.0.0.1"
    );
    let before = series(&scrape(gw.admin_addr).await);

    // The first record goes: its endpoint leaves the pool while its stream runs on.
    dns.set(&[v6.addr.ip()]).await;
    wait_for(&gw, "the 127.0.0.1 endpoint gone", |b| {
        endpoints(b) == [(a6.clone(), true)]
    })
    .await;
    let m = scrape(gw.admin_addr).await;
    assert!(
        !m.contains(&format!("endpoint=\"{a4}\"")),
        "the removed endpoint's gauge goes: {m}"
    );
    assert_eq!(
        running(&scrape(v4.addr).await),
        1.0,
        "the stream is still running on the removed endpoint"
    );
    for (res, first) in streams {
        let mut body = first;
        body.extend_from_slice(&res.into_body().collect().await.unwrap().to_bytes());
        let events = sse_data(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let deltas = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter(|v| {
                let content = v["choices"][0]["delta"]["content"].as_str();
                content.is_some_and(|c| !c.is_empty())
            })
            .count();
        assert_eq!(deltas, tokens as usize, "every token arrived");
        let usage = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .find(|v| v["usage"].is_object())
            .expect("a usage chunk");
        assert_eq!(usage["usage"]["completion_tokens"], tokens);
    }
    // Both streams were measured whole: the output tokens of the backend's histogram.
    let m = wait_for_metrics(gw.admin_addr, "both streams recorded", |m| {
        value(m, "weir_requests_in_flight", &[]) == 0.0
    })
    .await;
    let out = sum(
        &m,
        "gen_ai_client_token_usage_sum",
        &[("backend", &name), ("gen_ai_token_type", "output")],
    )
    .unwrap();
    assert!(out >= f64::from(2 * tokens), "{out}");
    assert_eq!(series(&m), before, "the swap adds or drops no series");

    // No address at all: the endpoint known is kept (and counted).
    dns.set(&[]).await;
    let m = wait_for_metrics(gw.admin_addr, "an empty answer counted", |m| {
        value(
            m,
            "weir_discovery_errors_total",
            &[("backend", &name), ("kind", "empty")],
        ) > 0.0
    })
    .await;
    assert_eq!(value(&m, "weir_backend_up", &[("backend", &name)]), 1.0);
    assert_eq!(
        endpoints(&backends(&gw).await["backends"][0]),
        [(a6.clone(), true)]
    );

    // A server that stops answering: the endpoints are kept, requests still served.
    dns.stop().await;
    wait_for_metrics(gw.admin_addr, "a failed lookup counted", |m| {
        value(
            m,
            "weir_discovery_errors_total",
            &[("backend", &name), ("kind", "error")],
        ) > 0.0
    })
    .await;
    assert_eq!(
        endpoints(&backends(&gw).await["backends"][0]),
        [(a6.clone(), true)]
    );
    let req = post(gw.addr, "/v1/chat/completions", &chat(false, 2));
    assert_eq!(send(&client, req).await.0, StatusCode::OK);

    gw.shutdown().await;
    v4.shutdown().await;
    v6.shutdown().await;
}

#[tokio::test]
async fn reload_follows_discovery_changes() {
    let sim = StoppableSim::any_port(SimConfig::fast()).await;
    let port = sim.addr.port();
    let dns = Dns::start().await;
    dns.set(&[sim.addr.ip()]).await;
    let dir = crate::common::ops::TempDir::new("discovery-reload");
    let path = dir.path("weir.toml");
    let file = |backend: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodels = [\"tiny-llama\"]\n\
             [health]\ninterval = \"200ms\"\n\
             [discovery]\ninterval = \"200ms\"\nnameservers = [\"{}\"]\n{backend}",
            dns.addr
        )
    };
    let by_dns = |weight: u32| {
        file(&format!(
            "[[backends]]\nurl = \"http://{HOST}:{port}\"\ndiscovery = \"dns\"\nweight = {weight}\nmodels = [\"tiny-llama\"]\n"
        ))
    };
    std::fs::write(&path, by_dns(1)).unwrap();
    let gw = gateway::start(Config::load(&path).unwrap()).await.unwrap();
    let a4 = sim.addr.to_string();
    let name = format!("{HOST}:{port}");
    let up = |b: &Value| endpoints(b) == [(a4.clone(), true)];
    wait_for(&gw, "the endpoint up", up).await;

    // New settings: the endpoint stays, up.
    std::fs::write(&path, by_dns(3)).unwrap();
    gw.reload_from(&path, |_| {}).unwrap();
    let b = backends(&gw).await["backends"][0].clone();
    assert_eq!(b["weight"], 3);
    assert!(up(&b), "{b}");
    let client = client();
    let req = post(gw.addr, "/v1/chat/completions", &chat(false, 2));
    assert_eq!(send(&client, req).await.0, StatusCode::OK);

    // Static now: the endpoint's series and the discovery counters go.
    let static_file = file(&format!(
        "[[backends]]\nname = \"{name}\"\nurl = \"http://{}\"\n",
        sim.addr
    ));
    std::fs::write(&path, static_file).unwrap();
    gw.reload_from(&path, |_| {}).unwrap();
    let b = backends(&gw).await["backends"][0].clone();
    assert_eq!(b["discovery"], "static", "{b}");
    let m = scrape(gw.admin_addr).await;
    assert!(!m.contains("weir_backend_endpoint_up{"), "{m}");
    assert!(!m.contains("weir_discovery_errors_total{"), "{m}");
    assert_eq!(value(&m, "weir_backend_up", &[("backend", &name)]), 1.0);

    // DNS again: discovery follows at once (the reload wakes it), the endpoint is checked.
    std::fs::write(&path, by_dns(1)).unwrap();
    gw.reload_from(&path, |_| {}).unwrap();
    wait_for(&gw, "the endpoint back", up).await;
    let m = scrape(gw.admin_addr).await;
    let labels = [("backend", name.as_str()), ("endpoint", a4.as_str())];
    assert_eq!(value(&m, "weir_backend_endpoint_up", &labels), 1.0);
    let req = post(gw.addr, "/v1/chat/completions", &chat(false, 2));
    assert_eq!(send(&client, req).await.0, StatusCode::OK);

    gw.shutdown().await;
    dns.stop().await;
    sim.shutdown().await;
}

/// An answer with more addresses than `[discovery] max_endpoints` is cut, in address order:
/// a DNS server cannot grow the pool (and the endpoint series) past the bound.
#[tokio::test]
async fn an_answer_beyond_max_endpoints_is_cut_in_address_order() {
    let (v4, v6) = sims(SimConfig::fast()).await;
    let dns = Dns::start().await;
    dns.set(&[v6.addr.ip(), v4.addr.ip()]).await;
    let mut c = config(dns.addr, v4.addr.port());
    c.discovery.max_endpoints = 1;
    c.validate().unwrap();
    let gw = gateway::start(c).await.unwrap();
    // IPv4 addresses sort before IPv6 ones: 127.0.0.1 is kept, ::1 cut.
    let a4 = v4.addr.to_string();
    wait_for(&gw, "one endpoint up", |b| {
        endpoints(b) == [(a4.clone(), true)]
    })
    .await;
    let m = wait_for_metrics(gw.admin_addr, "the endpoint's gauge", |m| {
        m.contains("weir_backend_endpoint_up{")
    })
    .await;
    let gauges = m
        .lines()
        .filter(|l| l.starts_with("weir_backend_endpoint_up{"));
    assert_eq!(gauges.count(), 1, "{m}");
    let client = client();
    for _ in 0..4 {
        let req = post(gw.addr, "/v1/chat/completions", &chat(false, 2));
        assert_eq!(send(&client, req).await.0, StatusCode::OK);
    }
    // Every request went to the one endpoint kept; the one cut got none.
    assert_eq!(completed(&v4).await, 4.0);
    assert_eq!(completed(&v6).await, 0.0);
    assert_eq!(
        endpoints(&backends(&gw).await["backends"][0]),
        [(a4.clone(), true)]
    );

    gw.shutdown().await;
    dns.stop().await;
    v4.shutdown().await;
    v6.shutdown().await;
}
