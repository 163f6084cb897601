//! The structure of docker-compose.yml, checked without a Docker engine: every service's
//! config is under config/ and the ports, targets and URLs between the services agree.

use std::collections::BTreeSet;
use std::path::Path;

use serde_norway::Value;
use weir::config::Config;

use super::{root, yaml};

fn strings(v: &Value) -> Vec<String> {
    let seq = v.as_sequence().into_iter().flatten();
    seq.filter_map(|s| s.as_str().map(str::to_string)).collect()
}

/// Host and port of `http://host:port/...` or `host:port`.
fn host_port(s: &str) -> (String, u16) {
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let authority = s.split('/').next().unwrap();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {s}"));
    (
        host.to_string(),
        port.parse().unwrap_or_else(|_| panic!("bad port in {s}")),
    )
}

/// The value after `flag` in a command list.
fn arg<'a>(cmd: &'a [String], flag: &str) -> &'a str {
    let i = cmd
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {cmd:?}"));
    &cmd[i + 1]
}

pub fn check() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let names: BTreeSet<String> = services
        .as_mapping()
        .expect("services")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for s in [
        "weir",
        "sim",
        "prometheus",
        "alertmanager",
        "alert-log",
        "jaeger",
        "grafana",
        "vllm",
        "dcgm-exporter",
    ] {
        assert!(names.contains(s), "no service {s}");
    }
    let published = |svc: &str| -> Vec<u16> {
        strings(&services[svc]["ports"])
            .iter()
            .map(|p| p.rsplit(':').next().unwrap().parse().unwrap())
            .collect()
    };
    // Every file a service mounts is in the repository, under config/.
    let mut mounts = Vec::new();
    for name in &names {
        for v in strings(&services[name.as_str()]["volumes"]) {
            if let Some(rest) = v.strip_prefix("./") {
                let mut parts = rest.split(':');
                let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
                assert!(
                    src.starts_with("config/"),
                    "{name} mounts {src}, not under config/"
                );
                assert!(
                    root().join(src).exists(),
                    "{name} mounts {src}, which does not exist"
                );
                mounts.push((name.clone(), src.to_string(), dst.to_string()));
            }
        }
        for dep in strings(&services[name.as_str()]["depends_on"]) {
            assert!(names.contains(&dep), "{name} depends on unknown {dep}");
        }
    }
    let mounted = |svc: &str, dst: &str| -> String {
        let m = mounts
            .iter()
            .find(|(s, _, d)| s == svc && dst.starts_with(d.as_str()));
        let (_, src, d) = m.unwrap_or_else(|| panic!("{svc} does not mount {dst}"));
        format!("{src}{}", &dst[d.len()..])
    };

    // weir: its config file, listeners and default backend.
    let weir = &services["weir"];
    assert_eq!(weir["build"].as_str(), Some("."));
    assert!(root().join("Dockerfile").is_file());
    let cmd = strings(&weir["command"]);
    let config = Config::load(&root().join(mounted("weir", arg(&cmd, "--config"))))
        .expect("weir's compose config validates");
    assert!(
        config.admin_listen.ip().is_unspecified(),
        "Prometheus reaches weir's admin listener from another container"
    );
    let ports = published("weir");
    assert!(
        ports.contains(&config.listen.port()) && ports.contains(&config.admin_listen.port()),
        "{ports:?}"
    );
    let backend = arg(&cmd, "--backend");
    let default = backend
        .strip_prefix("${WEIR_BACKEND:-")
        .and_then(|b| b.strip_suffix('}'))
        .expect(backend);
    assert_eq!(config.backends[0].url, default);
    let (host, backend_port) = host_port(default);
    assert_eq!(host, "sim");
    let sim_listen = arg(&strings(&services["sim"]["command"]), "--listen").to_string();
    assert_eq!(host_port(&sim_listen).1, backend_port);
    let vllm_port: u16 = arg(&strings(&services["vllm"]["command"]), "--port")
        .parse()
        .unwrap();
    assert_eq!(
        vllm_port, backend_port,
        "WEIR_BACKEND=http://vllm:{backend_port} works"
    );

    // Prometheus scrapes services of the stack, on the ports they listen on.
    let prom_file = mounted("prometheus", "/etc/prometheus/prometheus.yml");
    assert_eq!(prom_file, "config/prometheus/prometheus.yml");
    let prom = yaml(&prom_file);
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        let name = job["job_name"].as_str().unwrap();
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for t in strings(&sc["targets"]) {
                let (host, port) = host_port(&t);
                assert!(
                    names.contains(&host) || host == "localhost",
                    "job {name}: {host} is no service"
                );
                if host == "weir" {
                    assert_eq!(port, config.admin_listen.port(), "job {name}");
                }
            }
        }
        for dns in job["dns_sd_configs"].as_sequence().into_iter().flatten() {
            for host in strings(&dns["names"]) {
                assert!(names.contains(&host), "job {name}: {host} is no service");
            }
            let port = dns["port"].as_u64().unwrap() as u16;
            match name {
                "vllm" => assert_eq!(port, backend_port),
                "dcgm" => assert!(published("dcgm-exporter").contains(&port)),
                _ => {}
            }
        }
    }
    let am_targets = strings(&prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]);
    assert_eq!(am_targets.len(), 1);
    let (host, port) = host_port(&am_targets[0]);
    assert!(
        host == "alertmanager" && published("alertmanager").contains(&port),
        "{host}:{port}"
    );

    // Alertmanager's receivers are in the stack; alert-log listens where they send.
    let am_file = mounted("alertmanager", "/etc/alertmanager/alertmanager.yml");
    let script =
        std::fs::read_to_string(root().join(mounted("alert-log", "/etc/alert-log/alert-log.py")))
            .unwrap();
    for r in yaml(&am_file)["receivers"].as_sequence().unwrap() {
        for w in r["webhook_configs"].as_sequence().into_iter().flatten() {
            let (host, port) = host_port(w["url"].as_str().unwrap());
            assert_eq!(host, "alert-log");
            assert!(
                script.contains(&format!("\"0.0.0.0\", {port})")),
                "alert-log listens on {port}"
            );
        }
    }

    // Traces go to Jaeger's OTLP port.
    let otlp = weir["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        .as_str()
        .unwrap();
    let (host, port) = host_port(otlp);
    assert!(
        host == "jaeger" && [4317, 4318].contains(&port) && published("jaeger").contains(&port)
    );
    assert_eq!(
        services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"].as_str(),
        Some("true")
    );

    // Grafana: its data sources are services of the stack; it loads the dashboard mounted.
    let ds = yaml(&mounted(
        "grafana",
        "/etc/grafana/provisioning/datasources/datasources.yml",
    ));
    for d in ds["datasources"].as_sequence().unwrap() {
        let (host, port) = host_port(d["url"].as_str().unwrap());
        assert!(
            published(&host).contains(&port),
            "data source {host}:{port}"
        );
    }
    let providers = yaml(&mounted(
        "grafana",
        "/etc/grafana/provisioning/dashboards/dashboards.yml",
    ));
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    assert!(home.starts_with(path));
    assert!(root().join(mounted("grafana", home)).is_file(), "{home}");

    // The gpu profile: vLLM's official image and dcgm-exporter, each with the GPUs.
    for (svc, image) in [
        ("vllm", "vllm/vllm-openai:"),
        ("dcgm-exporter", "/dcgm-exporter:"),
    ] {
        let s = &services[svc];
        assert_eq!(strings(&s["profiles"]), ["gpu"], "{svc}");
        assert!(s["image"].as_str().unwrap().contains(image), "{svc}");
        let dev = &s["deploy"]["resources"]["reservations"]["devices"][0];
        assert_eq!(dev["driver"].as_str(), Some("nvidia"));
        assert!(strings(&dev["capabilities"]).contains(&"gpu".to_string()));
    }
    for name in [
        "weir",
        "sim",
        "prometheus",
        "alertmanager",
        "alert-log",
        "jaeger",
        "grafana",
    ] {
        assert!(
            services[name]["profiles"].is_null(),
            "{name} runs without a profile"
        );
    }

    // Where the compose plugin is installed, it validates the file too.
    let docker = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output();
    if docker.is_ok_and(|o| o.status.success()) {
        for args in [
            &["compose", "config", "-q"][..],
            &[
                "compose",
                "--profile",
                "gpu",
                "--profile",
                "load",
                "config",
                "-q",
            ],
        ] {
            super::run(Path::new("docker"), args);
        }
    }
}
