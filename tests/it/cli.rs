//! The `weir` binary: the access log on stdout, `weir check`, and `weir demo`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use http::StatusCode;
use weir_sim::SimConfig;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

#[tokio::test]
async fn one_json_access_log_line_per_request() {
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(2),
        ..SimConfig::fast()
    })
    .await;
    let mut child = Child(
        Command::new(WEIR)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--model",
                "tiny-llama",
            ])
            .args(["--backend", &format!("http://{sim}")])
            .env("RUST_LOG", "info")
            // One thread: the single-threaded runtime serves (the SIGHUP test runs two).
            .env("TOKIO_WORKER_THREADS", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir starts"),
    );
    let mut rx = json_lines(child.0.stdout.take().unwrap());
    let serving = line_where(&mut rx, "message", "weir is serving").await;
    assert_eq!(serving["runtime"], "current_thread", "{serving}");
    assert_eq!(serving["workers"], 1, "{serving}");
    let addr: std::net::SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();

    let mut req = post(addr, "/v1/chat/completions", &chat(true, 9));
    req.headers_mut()
        .insert("x-request-id", "log-test-1".parse().unwrap());
    req.headers_mut()
        .insert("authorization", "Bearer sk-secret-key".parse().unwrap());
    req.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);

    let line = line_where(&mut rx, "target", "weir::access").await;
    assert_eq!(line["request_id"], "log-test-1");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
    assert_eq!(line["model"], "tiny-llama");
    assert_eq!(line["backend"], sim.to_string());
    assert_eq!(line["status"], 200);
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["output_tokens"], 9);
    assert_eq!(line["tokens_estimated"], false);
    assert_eq!(line["finish_reasons"], "length");
    for f in [
        "ttft_ms",
        "tpot_ms",
        "itl_p50_ms",
        "itl_max_ms",
        "e2e_ms",
        "input_tokens",
    ] {
        assert!(line[f].is_number(), "{f} in {line}");
    }
    assert!(line["itl_max_ms"].as_f64() >= line["itl_p50_ms"].as_f64());
    assert!(!line.to_string().contains("sk-secret-key"));
}

#[test]
fn check_accepts_the_shipped_config_and_names_a_bad_field() {
    let ok = Command::new(WEIR)
        .args(["check", "--config", "config/weir.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok"));

    let dir = std::env::temp_dir().join(format!("weir-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[backends]]\nurl = \"http://127.0.0.1:8000\"\n[timeouts]\nconect = \"3s\"\n",
    )
    .unwrap();
    let out = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&bad, "[[backends]]\nurl = \"ftp://vllm:8000\"\n").unwrap();
    let out = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("backends[0].url"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_a_load_and_prints_the_summary() {
    let out = Command::new(WEIR)
        .args([
            "demo",
            "--requests",
            "40",
            "--concurrency",
            "8",
            "--ttft",
            "20ms",
            "--itl",
            "2ms",
            "--max-tokens",
            "16",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("tiny-llama"))
        .unwrap_or_else(|| panic!("no summary row:\n{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "40", "{row}");
    assert!(row.contains("ok="), "{row}");
    // The goodput column: a share of the streamed requests, and its SLOs said below.
    let goodput: f64 = cols[cols.len() - 1]
        .strip_suffix('%')
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no goodput column: {row}"));
    assert!(goodput > 0.0 && goodput <= 100.0, "{row}");
    assert!(stdout.contains("goodput: the streamed requests that met both SLOs"));
    // One access-log line, as the gateway writes it (JSON: stdout is not a terminal).
    let mut lines = stdout.lines();
    lines
        .find(|l| l.starts_with("The access-log line of the first request"))
        .unwrap_or_else(|| panic!("no access line:\n{stdout}"));
    let access: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(access["message"], "request finished");
    assert_eq!(access["model"], "tiny-llama");
    assert_eq!(
        access["trace_id"].as_str().map(str::len),
        Some(32),
        "{access}"
    );
    assert!(access["e2e_ms"].as_f64().is_some(), "{access}");
    // Stopped: no link to a /metrics that is gone, but the way to keep it and watch it.
    assert!(!stdout.contains("/metrics\n") && !stdout.contains("metrics: http"));
    assert!(stdout.contains("--keep-serving") && stdout.contains("weir top"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("40/40"));
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let a = start_sim(SimConfig::fast()).await;
    let b = start_sim(SimConfig::fast()).await;
    let dir = std::env::temp_dir().join(format!("weir-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weir.toml");
    let file = |backend: std::net::SocketAddr| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[backends]]\nurl = \"http://{backend}\"\n"
        )
    };
    std::fs::write(&path, file(a)).unwrap();
    let (child, mut rx, serving) = weir_with_config(&path, &[("TOKIO_WORKER_THREADS", "2")]).await;
    assert_eq!(serving["runtime"], "per_core", "{serving}");
    assert_eq!(serving["workers"], 2, "{serving}");
    let admin: std::net::SocketAddr = serving["admin_addr"].as_str().unwrap().parse().unwrap();
    let addr: std::net::SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();
    std::fs::write(&path, file(b)).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    line_where(&mut rx, "message", "config reloaded").await;
    let (_, backends) = get_text(admin, "/backends").await;
    assert!(
        backends.contains(&b.to_string()) && !backends.contains(&a.to_string()),
        "{backends}"
    );
    let (status, _, body) = send(
        &client(),
        post(addr, "/v1/chat/completions", &chat(true, 5)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_gateway_raises_its_open_file_limit_and_sizes_its_descriptor_table() {
    let sim = start_sim(SimConfig::fast()).await;
    // Started with a soft limit of 256 under a hard one of 8192.
    let mut child = Child(
        Command::new("prlimit")
            .args(["--nofile=256:8192", WEIR])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args([
                "--model",
                "tiny-llama",
                "--backend",
                &format!("http://{sim}"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("prlimit (util-linux) runs weir"),
    );
    let mut rx = json_lines(child.0.stdout.take().unwrap());
    line_where(&mut rx, "message", "weir is serving").await;
    let pid = child.0.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["8192", "8192"], "{open_files}");
    // Room for max_connections (10,000 by default) clients and their backend connections,
    // within the limit: the table does not have to grow while connections come in.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let fd_size: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(fd_size >= 8192, "FDSize {fd_size}");
}

#[test]
fn log_lines_are_readable_when_asked() {
    let mut child = Child(
        Command::new(WEIR)
            .args(["sim", "--listen", "127.0.0.1:0", "--log-format", "pretty"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("weir sim starts"),
    );
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(
        first.contains(" INFO weir: simulator serving addr=127.0.0.1:") && !first.starts_with('{'),
        "{first}"
    );
}

/// Every help page: a description for each option, and examples.
#[test]
fn every_help_page_describes_each_option_and_shows_examples() {
    for sub in [
        &[][..],
        &["check"],
        &["sim"],
        &["demo"],
        &["bench"],
        &["top"],
    ] {
        let out = Command::new(WEIR).args(sub).arg("-h").output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("\nExamples:\n  weir"),
            "{sub:?}: no examples\n{help}"
        );
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with('-') {
                continue;
            }
            // `  -c, --config <CONFIG>   TOML config file ...`: the flag, then its description,
            // on the same line or (when clap lays the page out so) indented on the next.
            let inline = line.trim().split_once("  ").map(|(_, d)| d.trim());
            let next = lines
                .get(i + 1)
                .map(|l| l.trim())
                .filter(|l| !l.starts_with('-'));
            assert!(
                inline.or(next).is_some_and(|d| d.len() > 10),
                "{sub:?}: an option without a description: {line}"
            );
        }
    }
    let top = Command::new(WEIR).arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.contains("`weir` with no subcommand runs the gateway"),
        "{top}"
    );
}

/// A tenant's limit changed in the config file holds once weir has had a SIGHUP; what the
/// tenant used before the reload still counts (the counts carry on).
#[tokio::test]
async fn sighup_changes_a_tenants_limit() {
    use sha2::Digest;
    const KEY: &str = "sk-hup-tenant";
    let sim = start_sim(SimConfig::fast()).await;
    let dir = std::env::temp_dir().join(format!("weir-hup-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weir.toml");
    let sha = hex::encode(sha2::Sha256::digest(KEY.as_bytes()));
    let file = |rpm: u32| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmodels = [\"tiny-llama\"]\n\
             [[backends]]\nurl = \"http://{sim}\"\n[auth]\n\
             keys = [{{ name = \"team-a\", sha256 = \"{sha}\", limits = {{ requests_per_minute = {rpm} }} }}]\n"
        )
    };
    std::fs::write(&path, file(1)).unwrap();
    let (child, mut rx, serving) = weir_with_config(&path, &[("TOKIO_WORKER_THREADS", "1")]).await;
    let addr: std::net::SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();
    let client = client();
    // (status, x-ratelimit-limit-requests, x-ratelimit-remaining-requests)
    let call = || async {
        let mut req = post(addr, "/v1/chat/completions", &chat(false, 2));
        req.headers_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        let (status, h, _) = send(&client, req).await;
        let n = |name: &str| h[name].to_str().unwrap().parse::<u64>().unwrap();
        (
            status,
            n("x-ratelimit-limit-requests"),
            n("x-ratelimit-remaining-requests"),
        )
    };
    assert_eq!(call().await, (StatusCode::OK, 1, 0));
    assert_eq!(call().await, (StatusCode::TOO_MANY_REQUESTS, 1, 0));
    std::fs::write(&path, file(3)).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    line_where(&mut rx, "message", "config reloaded").await;
    // Three a minute now, one of them already used before the reload.
    assert_eq!(call().await, (StatusCode::OK, 3, 1));
    assert_eq!(call().await, (StatusCode::OK, 3, 0));
    assert_eq!(call().await, (StatusCode::TOO_MANY_REQUESTS, 3, 0));
    let _ = std::fs::remove_dir_all(&dir);
}
