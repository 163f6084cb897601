//! Many replicas on one machine: three `weir` processes behind haproxy (run from
//! config/haproxy/haproxy.cfg) in front of one simulator, scraped by the real Prometheus with
//! the shipped rules and alerting through the real Alertmanager with the shipped grouping.
//! And `shutdown_delay` on its own: not ready, `Connection: close`, still serving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::common::ops::{self, Proc, TempDir, free_port, stack, tool, tool_from};
use crate::common::*;
use weir_sim::SimConfig;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Each replica's `shutdown_delay`: longer than haproxy.cfg's checks take to mark a replica
/// down (fall 2 x fastinter 250ms, each check up to 1s), with room for a loaded machine.
const DELAY: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(30);

/// One `weir` process with its own listeners; killed when dropped.
struct Replica {
    child: std::process::Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// Its stdout: the access log and its other log lines.
    log: UnboundedReceiver<serde_json::Value>,
}

impl Replica {
    async fn start(dir: &TempDir, i: usize, sim: SocketAddr) -> Replica {
        let path = dir.path(&format!("weir-{i}.toml"));
        let config = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             shutdown_grace = \"{}s\"\nshutdown_delay = \"{}s\"\n\
             [[backends]]\nurl = \"http://{sim}\"\nmodels = [\"tiny-llama\"]\n",
            GRACE.as_secs(),
            DELAY.as_secs()
        );
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(WEIR)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("TOKIO_WORKER_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir starts");
        let mut log = json_lines(child.stdout.take().unwrap());
        let serving = line_where(&mut log, "message", "weir is serving").await;
        let at = |k: &str| -> SocketAddr { serving[k].as_str().unwrap().parse().unwrap() };
        Replica {
            addr: at("addr"),
            admin: at("admin_addr"),
            child,
            log,
        }
    }

    fn terminate(&self) {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
    }

    /// Waits at most `limit` for the process to end.
    async fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        ops::poll(limit, || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    /// Every line it wrote until its stdout closed (the process has ended).
    async fn rest_of_log(&mut self) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        let drain = async {
            while let Some(l) = self.log.recv().await {
                lines.push(l);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        lines
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// config/haproxy/haproxy.cfg as shipped, listening on `listen` and balancing over
/// `replicas`: each `server` line gets a replica's proxy address and its admin port as the
/// check port.
fn haproxy_config(listen: SocketAddr, replicas: &[Replica]) -> String {
    let text = std::fs::read_to_string(ops::root().join("config/haproxy/haproxy.cfg")).unwrap();
    let mut servers = 0;
    let mut binds = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first() {
                Some(&"bind") => {
                    binds += 1;
                    format!("    bind {listen}")
                }
                Some(&"server") => {
                    let r = replicas
                        .get(servers)
                        .expect("as many servers in haproxy.cfg as replicas started");
                    servers += 1;
                    let mut words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
                    words[2] = r.addr.to_string();
                    let port = words
                        .iter()
                        .position(|w| w == "port")
                        .expect("each server is checked on its admin port");
                    words[port + 1] = r.admin.port().to_string();
                    format!("    {}", words.join(" "))
                }
                _ => line.to_string(),
            }
        })
        .collect();
    assert_eq!((binds, servers), (1, replicas.len()), "{text}");
    lines.join("\n") + "\n"
}

/// How one generation is asked for.
#[derive(Clone, Copy)]
struct Ask {
    stream: bool,
    max_tokens: u32,
    ttft_ms: Option<u32>,
    itl_ms: Option<u32>,
}

/// Sends one chat request with `id` as its `x-request-id` and checks that it succeeded whole:
/// a 200, every token asked for, and a streamed answer's `[DONE]`. An error says what went
/// wrong.
async fn generate(client: &HttpClient, to: SocketAddr, ask: Ask, id: &str) -> Result<(), String> {
    let mut body = chat(ask.stream, ask.max_tokens);
    if ask.stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut req = post(to, "/v1/chat/completions", &body);
    req.headers_mut()
        .insert("x-request-id", id.parse().unwrap());
    for (name, v) in [("x-sim-ttft-ms", ask.ttft_ms), ("x-sim-itl-ms", ask.itl_ms)] {
        if let Some(ms) = v {
            req.headers_mut().insert(name, ms.into());
        }
    }
    let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{status}, body cut: {e:?}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let usage = if ask.stream {
        let data = sse_data(&body);
        if data.last().map(String::as_str) != Some("[DONE]") {
            return Err(format!("no [DONE]: {text}"));
        }
        let tokens = data
            .iter()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
            .count();
        if tokens != ask.max_tokens as usize {
            return Err(format!("{tokens} of {} tokens: {text}", ask.max_tokens));
        }
        data.iter()
            .rev()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .find(|c| c["usage"].is_object())
            .map(|c| c["usage"].clone())
    } else {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .map(|v| v["usage"].clone())
    };
    let completion = usage.as_ref().and_then(|u| u["completion_tokens"].as_u64());
    if completion != Some(u64::from(ask.max_tokens)) {
        return Err(format!("usage {usage:?}, {} tokens asked", ask.max_tokens));
    }
    Ok(())
}

/// Sends `n` requests from `workers` concurrent clients, `ask(i)` for the i-th; the errors.
async fn send_all(to: SocketAddr, n: usize, workers: usize, ask: fn(usize) -> Ask) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let client = client();
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return errors;
                    }
                    if let Err(e) = generate(&client, to, ask(i), &format!("batch-{i}")).await {
                        errors.push(format!("batch-{i}: {e}"));
                    }
                }
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    errors
}

/// Clients that send requests in a loop until stopped (for each `(n, ask)`, n clients sending
/// `ask`), noting when each request that succeeded was sent and what it asked for (by its
/// request id), and keeping what failed.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    sent: Arc<Mutex<HashMap<String, (Instant, Ask)>>>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(to: SocketAddr, clients: &[(usize, Ask)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let tasks = clients
            .iter()
            .flat_map(|&(n, ask)| std::iter::repeat_n(ask, n))
            .enumerate()
            .map(|(w, ask)| {
                let (stop, done) = (stop.clone(), done.clone());
                let (sent, failed) = (sent.clone(), failed.clone());
                tokio::spawn(async move {
                    let client = client();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("load-{w}-{n}");
                        let at = Instant::now();
                        match generate(&client, to, ask, &id).await {
                            Ok(()) => {
                                sent.lock().unwrap().insert(id, (at, ask));
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failed.lock().unwrap().push(format!("{id}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            sent,
            failed,
            tasks,
        }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Lets every request in flight finish: when each that succeeded was sent, and the
    /// failures.
    async fn stop(self) -> (HashMap<String, (Instant, Ask)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let sent = std::mem::take(&mut *self.sent.lock().unwrap());
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (sent, failed)
    }
}

/// An instant query's one value (the first series), None when there is none yet.
async fn prom_value(prom: SocketAddr, expr: &str) -> Option<f64> {
    let result = ops::prom_query(prom, expr)
        .await
        .unwrap_or_else(|e| panic!("`{expr}` is refused: {e}"));
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Three replicas behind haproxy, one simulator behind them, Prometheus scraping the three
/// with the shipped rules, Alertmanager with the shipped routing:
/// 1. the requests the clients sent are counted once across the replicas, each replica
///    served some, and the recording rules give one series per model;
/// 2. slow first tokens fire WeirTTFTP99High once, and the webhook hears of it once;
/// 3. a replica stopped with SIGTERM under load loses no request: its open streams end
///    whole, the balancer sends the rest elsewhere, and it exits within its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_add_up_alert_once_and_stop_without_losing_a_request() {
    let (Some(prometheus), Some(alertmanager), Some(haproxy)) = (
        tool("prometheus"),
        tool("prometheus-alertmanager"),
        tool_from("haproxy", "haproxy"),
    ) else {
        return;
    };
    let started = Instant::now();
    let sim = start_sim(SimConfig {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(2),
        ..SimConfig::default()
    })
    .await;
    let dir = TempDir::new("replicas");
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Replica::start(&dir, i, sim).await);
    }
    let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.path("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(lb, &replicas)).unwrap();
    let balancer = Proc::spawn(
        &haproxy,
        &["-f".into(), cfg.display().to_string(), "-db".into()],
        dir.path("haproxy.log"),
    );
    // Listening is all it takes: its servers start up. (No request: each one would count.)
    let listening = ops::poll(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(lb).await.ok()
    });
    assert!(
        listening.await.is_some(),
        "haproxy does not listen on {lb}\n{}",
        balancer.log_tail()
    );
    let mut webhook = ops::webhook().await;
    let dcgm = ops::fake_dcgm().await;
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin).collect();
    let stack =
        stack::Stack::start(&prometheus, &alertmanager, &admins, sim, dcgm, webhook.addr).await;
    let prom = stack.prometheus;
    let context = |what: &str| format!("{what}\n{}---\n{}", stack.logs(), balancer.log_tail());

    // 1. N requests, streamed and not: each counted once, across the three.
    const N: usize = 300;
    let errors = send_all(lb, N, 8, |i| Ask {
        stream: i % 2 == 0,
        max_tokens: 4,
        ttft_ms: None,
        itl_ms: None,
    })
    .await;
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
    let total = ops::poll(Duration::from_secs(30), || async {
        let v = prom_value(prom, "sum(weir_requests_total)").await?;
        assert!(v <= N as f64, "{v} requests counted, {N} sent");
        (v == N as f64).then_some(v)
    })
    .await;
    assert!(total.is_some(), "{}", context("the sum never reached N"));
    let per_replica = ops::prom_query(prom, "sum by (instance) (weir_requests_total)")
        .await
        .unwrap();
    let counts: Vec<f64> = per_replica
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 3, "{per_replica:?}");
    assert!(
        counts.iter().all(|&c| c > 0.0),
        "each replica served some: {counts:?}"
    );
    eprintln!("{N} requests: {counts:?} per replica");
    // The raw histograms come from three instances; the recording rule is one series.
    let instances = ops::poll(Duration::from_secs(30), || async {
        let v = prom_value(
            prom,
            "count(count by (instance) (gen_ai_server_time_to_first_token_seconds_count))",
        )
        .await?;
        (v == 3.0).then_some(v)
    });
    assert!(
        instances.await.is_some(),
        "{}",
        context("three instances of TTFT")
    );
    let recorded = ops::poll(Duration::from_secs(30), || async {
        let r = ops::prom_query(prom, "model:ttft_seconds:p99_5m")
            .await
            .unwrap();
        (!r.is_empty()).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("{}", context("no model:ttft_seconds:p99_5m")));
    assert_eq!(recorded.len(), 1, "one series per model: {recorded:?}");
    let labels = recorded[0]["metric"].as_object().unwrap();
    let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["__name__", "gen_ai_request_model"], "{labels:?}");
    assert_eq!(labels["gen_ai_request_model"], "tiny-llama");

    // 2. Slow first tokens on every replica: one alert, one notification.
    let errors = send_all(lb, 60, 12, |_| Ask {
        stream: true,
        max_tokens: 2,
        ttft_ms: Some(1000),
        itl_ms: None,
    })
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    let is_ours = |a: &serde_json::Value| a["labels"]["alertname"] == "WeirTTFTP99High";
    let first = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let (path, payload) = webhook.rx.recv().await?;
            let ours: Vec<_> = payload["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| is_ours(a))
                .cloned()
                .collect();
            if !ours.is_empty() {
                return Some((path, ours));
            }
        }
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("{}", context("no WeirTTFTP99High notification within 90s")));
    let (path, alerts) = first;
    assert_eq!(path, "/ticket");
    assert_eq!(
        alerts.len(),
        1,
        "one alert for the model, not one per replica: {alerts:?}"
    );
    assert_eq!(alerts[0]["status"], "firing");
    assert_eq!(alerts[0]["labels"]["gen_ai_request_model"], "tiny-llama");
    assert!(alerts[0]["labels"]["instance"].is_null(), "{}", alerts[0]);
    let firing = prom_value(
        prom,
        "count(ALERTS{alertname=\"WeirTTFTP99High\",alertstate=\"firing\"})",
    )
    .await;
    assert_eq!(firing, Some(1.0));
    // No second notification: watched for five of the test's group intervals (1s), while
    // Prometheus keeps evaluating (1s) and sending the alert to Alertmanager.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut again = Vec::new();
    while let Ok(Some((path, payload))) =
        tokio::time::timeout_at(watch_until, webhook.rx.recv()).await
    {
        if payload["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(is_ours)
        {
            again.push((path, payload));
        }
    }
    assert!(again.is_empty(), "notified again: {again:?}");
    eprintln!("alert notified once after {:?}", started.elapsed());

    // 3. SIGTERM to one replica under load: nothing lost. Long streams (6 s, longer than
    // the delay: they outlive the listener) and short ones arriving all the time.
    let long = Ask {
        stream: true,
        max_tokens: 80,
        ttft_ms: Some(20),
        itl_ms: Some(75),
    };
    let short = Ask {
        stream: true,
        max_tokens: 8,
        ttft_ms: Some(20),
        itl_ms: Some(10),
    };
    let load = Load::start(lb, &[(9, long), (6, short)]);
    let mut stopping = replicas.remove(0);
    let open = ops::poll(Duration::from_secs(30), || async {
        let text = scrape(stopping.admin).await;
        let n = crate::common::prom::value(&text, "weir_requests_in_flight", &[]);
        (n >= 3.0).then_some(n)
    })
    .await
    .unwrap_or_else(|| panic!("{}", context("replica 0 never had three streams open")));
    stopping.terminate();
    let term = Instant::now();
    let status = stopping
        .exited(DELAY + GRACE + Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("{}", context("the stopped replica did not exit")));
    let took = term.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < DELAY + GRACE, "exited after {took:?}");
    assert!(
        took >= DELAY,
        "its listener stayed open {DELAY:?}: exited after {took:?}"
    );
    // The other two carry on: 24 more streams end after it is gone.
    let after = load.done();
    let more = ops::poll(Duration::from_secs(60), || async {
        (load.done() >= after + 24).then_some(())
    });
    assert!(more.await.is_some(), "{}", context("the load stalled"));
    let (sent, failed) = load.stop().await;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\n{}",
        failed.len(),
        sent.len() + failed.len(),
        context("")
    );
    // What the stopped replica finished after SIGTERM, all whole; among them streams the
    // clients had sent before it (the ones open at SIGTERM).
    let lines = stopping.rest_of_log().await;
    let term_at = lines
        .iter()
        .position(|l| l["message"] == "shutdown requested")
        .expect("the replica logged the SIGTERM");
    let finished: Vec<&serde_json::Value> = lines[term_at..]
        .iter()
        .filter(|l| l["target"] == "weir::access")
        .collect();
    let sent_as = |l: &serde_json::Value| sent.get(l["request_id"].as_str().unwrap_or_default());
    for l in &finished {
        assert_eq!(l["outcome"], "ok", "{l}");
        let (_, ask) = sent_as(l).unwrap_or_else(|| panic!("not a request of the load: {l}"));
        assert_eq!(l["output_tokens"], ask.max_tokens, "{l}");
    }
    let open_at_term = finished
        .iter()
        .filter(|l| {
            sent_as(l).is_some_and(|&(at, ask)| at < term && ask.max_tokens == long.max_tokens)
        })
        .count();
    assert!(
        open_at_term >= 1,
        "{open} streams open just before SIGTERM; no long one among the {} it finished after",
        finished.len()
    );
    assert!(
        lines.iter().any(|l| l["message"] == "weir stopped"),
        "{lines:?}"
    );
    eprintln!(
        "SIGTERM under load: {} streams, none failed; the stopped replica finished {} after \
         SIGTERM ({open_at_term} long ones open at SIGTERM) and exited after {took:?}; whole \
         run {:?}",
        sent.len(),
        finished.len(),
        started.elapsed()
    );
}

/// `shutdown_delay`: after shutdown begins, `/readyz` answers 503 and responses carry
/// `Connection: close` (the connection does close) while requests are still served; then the
/// listener closes, and a stream opened before finishes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_reports_not_ready_and_closes_connections_while_still_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let delay = Duration::from_secs(3);
    let parsed = weir::config::Config::parse("shutdown_delay = \"3s\"").unwrap();
    assert_eq!(parsed.shutdown_delay, delay);
    let sim = start_sim(SimConfig::fast()).await;
    let mut config = gateway_config(&[sim]);
    config.shutdown_delay = delay;
    let gw = weir::gateway::start(config).await.unwrap();
    let (addr, admin) = (gw.addr, gw.admin_addr);
    let client = client();
    assert_eq!(get_text(admin, "/readyz").await.0, 200);
    let (_, headers, _) = send(&client, post(addr, "/v1/chat/completions", &chat(false, 2))).await;
    assert!(headers.get("connection").is_none(), "{headers:?}");
    // A stream longer than the delay, open before shutdown.
    let mut long = post(addr, "/v1/chat/completions", &chat(true, 100));
    long.headers_mut()
        .insert("x-sim-itl-ms", "50".parse().unwrap());
    let mut stream = open(&client, long).await;
    read_until(stream.body_mut(), |b| b.starts_with(b"data: ")).await;

    let begun = Instant::now();
    let stopping = tokio::spawn(gw.shutdown());
    let not_ready = ops::poll(Duration::from_secs(10), || async {
        let (status, body) = get_text(admin, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await
    .expect("/readyz turns 503");
    assert_eq!(not_ready, "shutting down\n");
    // Still served, on a connection of its own that closes after the response.
    let body = chat(false, 3).to_string();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("weir closes the connection after the response")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    // Then the listener closes.
    let closed = ops::poll(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.err()
    });
    assert!(
        closed.await.is_some(),
        "the listener closes after the delay"
    );
    assert!(
        begun.elapsed() >= delay,
        "closed after {:?}",
        begun.elapsed()
    );
    let rest = stream.into_body().collect().await.unwrap().to_bytes();
    let data = sse_data(&rest);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown ends once the stream is done")
        .unwrap();
}
