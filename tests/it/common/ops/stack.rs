//! What tests/ops.rs knows of the stack's files: the promtool test files, the dashboard's
//! structure and PromQL, a Prometheus and an Alertmanager started on 127.0.0.1 from the
//! shipped configs, and a small load.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_norway::Value;

use super::{Proc, TempDir, free_port, poll, root, try_get, yaml};

/// The promtool unit-test files, relative to the root.
pub fn rule_tests() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("config/prometheus/tests"))
        .unwrap()
        .map(|e| {
            format!(
                "config/prometheus/tests/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .filter(|p| p.ends_with(".yml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("config/grafana/dashboards/weir.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

pub fn check_dashboard() {
    let dash = dashboard();
    let ds = yaml("config/grafana/provisioning/datasources/datasources.yml");
    let uids: BTreeSet<&str> = ds["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|d| d["uid"].as_str())
        .collect();
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut titles = String::new();
    let mut jaeger_panel = false;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        titles.push_str(p["title"].as_str().unwrap());
        titles.push('\n');
        if p["type"] == "row" {
            continue;
        }
        for t in p["targets"].as_array().unwrap() {
            let uid = t["datasource"]["uid"].as_str().unwrap();
            assert!(
                uids.contains(uid),
                "{}: data source {uid} is not provisioned",
                p["title"]
            );
            jaeger_panel |= uid == "jaeger";
        }
    }
    for want in [
        "Time to first token",
        "Inter-token latency",
        "Time per output token",
        "End-to-end",
        "Requests by outcome",
        "Tokens",
        "In flight",
        "Errors by kind",
        "Timeouts by kind",
        "Backend state",
        "Load per backend",
        "Goodput",
        "overhead",
        "GPU memory",
        "vLLM queue",
        "traces",
        "Spend per tenant",
        "Spend per model",
        "Rate-limited requests per tenant",
    ] {
        assert!(titles.contains(want), "no panel about {want:?}");
    }
    assert!(jaeger_panel, "a panel lists Jaeger traces");
    let links = dash["links"].as_array().unwrap();
    assert!(
        links
            .iter()
            .any(|l| l["url"].as_str().unwrap_or_default().contains(":16686/")),
        "a Jaeger link"
    );
}

/// Every PromQL expression of the dashboard (panels and annotations), with Grafana's
/// variables replaced as the stack would have them: (where, expression).
pub fn dashboard_exprs() -> Vec<(String, String)> {
    let dash = dashboard();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["type"] == "prometheus" {
                out.push((
                    p["title"].as_str().unwrap().to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        out.push((
            format!("annotation {}", a["name"]),
            a["expr"].as_str().unwrap().to_string(),
        ));
    }
    for (title, e) in &mut out {
        *e = e.replace("$__rate_interval", "10s").replace("$model", ".*");
        assert!(
            !e.contains('$'),
            "{title}: a variable the test does not know in {e}"
        );
    }
    out
}

/// Prometheus and Alertmanager from the shipped configs, pointed at the test's servers
/// (every weir in `weirs` a target of the `weir` job), with the waits cut short and the P99
/// TTFT alert's `for` cut to 1s.
pub struct Stack {
    pub prometheus: SocketAddr,
    pub alertmanager: SocketAddr,
    procs: Vec<Proc>,
    _dir: TempDir,
}

impl Stack {
    pub async fn start(
        prometheus: &Path,
        alertmanager: &Path,
        weirs: &[SocketAddr],
        sim: SocketAddr,
        dcgm: SocketAddr,
        webhook: SocketAddr,
    ) -> Stack {
        let dir = TempDir::new("stack");
        let path = |name: &str| dir.path(name).display().to_string();
        let write = |name: &str, v: &Value| {
            std::fs::write(dir.path(name), serde_norway::to_string(v).unwrap()).unwrap()
        };

        let mut am = yaml("config/alertmanager/alertmanager.yml");
        fn shorten(route: &mut Value) {
            route["group_wait"] = "1s".into();
            route["group_interval"] = "1s".into();
            for r in route["routes"].as_sequence_mut().into_iter().flatten() {
                shorten(r);
            }
        }
        shorten(&mut am["route"]);
        for r in am["receivers"].as_sequence_mut().unwrap() {
            let name = r["name"].as_str().unwrap().to_string();
            for w in r["webhook_configs"].as_sequence_mut().into_iter().flatten() {
                w["url"] = format!("http://{webhook}/{name}").into();
            }
        }
        write("alertmanager.yml", &am);
        let am_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let am_args = [
            format!("--config.file={}", path("alertmanager.yml")),
            format!("--storage.path={}", path("am-data")),
            format!("--web.listen-address={am_addr}"),
            "--cluster.listen-address=".to_string(),
        ];
        let mut procs = vec![Proc::spawn(
            alertmanager,
            &am_args,
            dir.path("alertmanager.log"),
        )];

        std::fs::create_dir(dir.path("rules")).unwrap();
        let mut variants = 0;
        for file in std::fs::read_dir(root().join("config/prometheus/rules")).unwrap() {
            let name = file.unwrap().file_name().to_string_lossy().into_owned();
            let mut rules = yaml(&format!("config/prometheus/rules/{name}"));
            for g in rules["groups"].as_sequence_mut().unwrap() {
                for r in g["rules"].as_sequence_mut().unwrap() {
                    if r["alert"].as_str() == Some("WeirTTFTP99High") {
                        r["for"] = "1s".into();
                        variants += 1;
                    }
                }
            }
            write(&format!("rules/{name}"), &rules);
        }
        assert_eq!(variants, 1);

        let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut prom = yaml("config/prometheus/prometheus.yml");
        prom["global"]["scrape_interval"] = "1s".into();
        prom["global"]["evaluation_interval"] = "1s".into();
        prom["rule_files"] = vec![Value::from(format!("{}/*.yml", path("rules")))].into();
        prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] =
            vec![Value::from(am_addr.to_string())].into();
        for job in prom["scrape_configs"].as_sequence_mut().unwrap() {
            let targets: Vec<String> = match job["job_name"].as_str().unwrap() {
                "weir" => weirs.iter().map(|a| format!("'{a}'")).collect(),
                "vllm" => vec![format!("'{sim}'")],
                "dcgm" => vec![format!("'{dcgm}'")],
                "prometheus" => vec![format!("'{prom_addr}'")],
                other => panic!("the test has no stand-in for scrape job {other}"),
            };
            let map = job.as_mapping_mut().unwrap();
            map.remove("dns_sd_configs");
            map.remove("relabel_configs");
            let static_configs: Value =
                serde_norway::from_str(&format!("[{{targets: [{}]}}]", targets.join(", ")))
                    .unwrap();
            map.insert("static_configs".into(), static_configs);
        }
        write("prometheus.yml", &prom);
        let prom_args = [
            format!("--config.file={}", path("prometheus.yml")),
            format!("--storage.tsdb.path={}", path("prom-data")),
            format!("--web.listen-address={prom_addr}"),
            "--enable-feature=exemplar-storage".to_string(),
        ];
        procs.push(Proc::spawn(
            prometheus,
            &prom_args,
            dir.path("prometheus.log"),
        ));
        let stack = Stack {
            prometheus: prom_addr,
            alertmanager: am_addr,
            procs,
            _dir: dir,
        };
        for addr in [am_addr, prom_addr] {
            let ready = poll(Duration::from_secs(30), || async {
                try_get(addr, "/-/ready")
                    .await
                    .filter(|(s, _)| s.is_success())
            });
            assert!(
                ready.await.is_some(),
                "{addr} not ready within 30s\n{}",
                stack.logs()
            );
        }
        stack
    }

    /// The end of each process's output.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("---\n{}\n", p.log_tail()))
            .collect()
    }
}

/// Streamed chat requests through the gateway from `n` tasks until stopped, with `key` as
/// their bearer token when given.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(gateway: SocketAddr, n: usize, key: Option<&str>) -> Load {
        let auth: Option<http::HeaderValue> = key.map(|k| format!("Bearer {k}").parse().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|_| {
                let (stop, auth) = (stop.clone(), auth.clone());
                tokio::spawn(async move {
                    let client = super::super::client();
                    while !stop.load(Ordering::Relaxed) {
                        let mut req = super::super::post(
                            gateway,
                            "/v1/chat/completions",
                            &super::super::chat(true, 8),
                        );
                        if let Some(a) = &auth {
                            req.headers_mut()
                                .insert(http::header::AUTHORIZATION, a.clone());
                        }
                        if let Ok(res) = client.request(req).await {
                            let _ = res.into_body().collect().await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
