//! Errors that say what to do: the `weir` binary's messages for a taken port, bad values in
//! the file or on the command line, `weir check` with the gateway's flags, and a reload that
//! cannot apply everything. Each message is quoted whole where it is weir's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use weir_sim::SimConfig;

use crate::common::*;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A folder of config files, removed when the test ends.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("weir-errors-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Writes `text` to `name` in the folder and gives its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn weir(args: &[&str]) -> Output {
    Command::new(WEIR)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn check(path: &Path, flags: &[&str]) -> Output {
    let mut args = vec!["check", "--config", path.to_str().unwrap()];
    args.extend_from_slice(flags);
    weir(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim_end().to_owned()
}

#[test]
fn a_taken_port_names_the_listener_its_address_and_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let backend = ["--backend", "http://127.0.0.1:9"];
    let out = weir(
        &[
            &["--listen", &addr, "--admin-listen", "127.0.0.1:0"],
            &backend[..],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "weir: cannot listen on {addr} (listen): Address already in use (os error 98): another process is listening there; stop it or choose another port with --listen or `listen =` in the config file"
        )
    );
    let out = weir(
        &[
            &["--listen", "127.0.0.1:0", "--admin-listen", &addr],
            &backend[..],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!(
            "weir: cannot listen on {addr} (admin_listen): Address already in use"
        )) && stderr(&out).contains("with --admin-listen or `admin_listen =`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_values_in_the_file_name_the_file_the_field_the_value_and_a_good_one() {
    let dir = Dir::new("values");
    let path = dir.file("weir.toml", "[[backends]]\nurl = \"127.0.0.1:8000\"\n");
    let out = check(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "{}: invalid backends[0].url = \"127.0.0.1:8000\": must start with http:// (for example url = \"http://127.0.0.1:8000\")",
            path.display()
        )
    );

    // Two backends given the same URL and no names: they are named after it.
    let path = dir.file(
        "twice.toml",
        "[[backends]]\nurl = \"http://10.0.0.7:8000\"\n[[backends]]\nurl = \"http://10.0.0.7:8000\"\n",
    );
    assert_eq!(
        stderr(&check(&path, &[])),
        format!(
            "{}: invalid backends[1].name = \"10.0.0.7:8000\": backends[0] has the same URL: list each backend once, or name them apart if they are meant to be two (for example name = \"10.0.0.7:8000-2\")",
            path.display()
        )
    );

    let path = dir.file(
        "zero.toml",
        "[[backends]]\nurl = \"http://127.0.0.1:8000\"\n[timeouts]\ntotal = \"0s\"\n",
    );
    assert_eq!(
        stderr(&check(&path, &[])),
        format!(
            "{}: invalid timeouts.total = \"0s\": must be greater than 0 (for example total = \"10m\")",
            path.display()
        )
    );
}

#[test]
fn unreadable_values_show_their_syntax_where_the_file_has_them() {
    let dir = Dir::new("syntax");
    let path = dir.file(
        "host.toml",
        "listen = \"localhost:8080\"\n[[backends]]\nurl = \"http://127.0.0.1:8000\"\n",
    );
    let err = stderr(&check(&path, &[]));
    assert!(
        err.starts_with(&format!("{}: TOML parse error at line 1", path.display())),
        "{err}"
    );
    assert!(
        err.contains(
            "\"localhost:8080\" is not an IP address and port: use 127.0.0.1:8080 (or [::1]:8080)"
        ),
        "{err}"
    );

    let path = dir.file(
        "duration.toml",
        "[[backends]]\nurl = \"http://127.0.0.1:8000\"\n[timeouts]\nfirst_token = \"5\"\n",
    );
    let err = stderr(&check(&path, &[]));
    assert!(err.contains("at line 4"), "{err}");
    assert!(
        err.contains("\"5\" is not a duration (time unit needed, for example 5sec or 5ms): write a number and a unit, such as \"500ms\", \"30s\", \"2m\" or \"1h 30m\""),
        "{err}"
    );
}

#[test]
fn bad_flags_are_named_as_flags() {
    let out = weir(&["check", "--backend", "127.0.0.1:8000"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "--backend: invalid backends[0].url = \"127.0.0.1:8000\": must start with http:// (for example url = \"http://127.0.0.1:8000\")"
    );
    let out = weir(&[
        "check",
        "--backend",
        "http://127.0.0.1:8000",
        "--listen",
        "localhost:8080",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value 'localhost:8080' for '--listen <LISTEN>': \"localhost:8080\" is not an IP address and port: use 127.0.0.1:8080 (or [::1]:8080)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_takes_the_flags_the_gateway_runs_with() {
    let dir = Dir::new("check");
    // A file that leaves the backends to the command line, as a deployment's flags do.
    let path = dir.file(
        "weir.toml",
        "listen = \"127.0.0.1:8081\"\n[slo]\nttft = \"2s\"\n",
    );
    let out = check(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "{}: invalid backends: at least one backend is required (a [[backends]] table or --backend URL) (for example [[backends]] url = \"http://127.0.0.1:8000\")",
            path.display()
        )
    );
    let out = check(
        &path,
        &[
            "--backend",
            "http://10.0.0.7:8000",
            "--admin-listen",
            "127.0.0.1:9999",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        format!(
            "{}: ok (1 backend(s), 0 model label(s), listening on 127.0.0.1:8081, admin on 127.0.0.1:9999)",
            path.display()
        )
    );
}

#[tokio::test]
async fn a_reload_names_the_fields_that_need_a_restart() {
    let sim = start_sim(SimConfig {
        model: "b".into(),
        ..SimConfig::fast()
    })
    .await;
    let dir = Dir::new("reload");
    let file = |listen: &str, ttft: &str, model: &str| {
        format!(
            "listen = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\nmodels = [\"{model}\"]\n[slo]\nttft = \"{ttft}\"\n[[backends]]\nurl = \"http://{sim}\"\n"
        )
    };
    let path = dir.file("weir.toml", &file("127.0.0.1:0", "1s", "a"));
    let (child, mut rx, serving) = weir_with_config(&path, &[]).await;
    let admin: std::net::SocketAddr = serving["admin_addr"].as_str().unwrap().parse().unwrap();
    // A new listener and SLO threshold cannot be applied; a new model label can.
    dir.file("weir.toml", &file("127.0.0.1:1", "2s", "b"));
    let hup = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let line = line_where(&mut rx, "restart_needed", "listen, slo").await;
    assert_eq!(
        line["message"],
        "config reloaded, except listen, slo: changed in the file, kept at their running values until a restart"
    );
    assert_eq!(line["level"], "WARN");
    // The running listener, not the file's new one, takes a request for the new label.
    let addr: std::net::SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();
    let mut body = chat(false, 2);
    body["model"] = "b".into();
    let (status, _, _) = send(&client(), post(addr, "/v1/chat/completions", &body)).await;
    assert_eq!(status, 200);
    let (_, metrics) = get_text(admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_requests_total{")
                && l.contains("gen_ai_request_model=\"b\"")),
        "the new model label was applied: {metrics}"
    );
}
