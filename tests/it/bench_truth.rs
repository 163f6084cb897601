//! The `weir bench` command tells the truth about failures: it exits non-zero naming the
//! cause (a dead port, the backend's own 404 message, `--max-error-rate`), counts errors by
//! cause in its table and JSON, finds the model itself, sums up a sweep, shows its progress
//! on a terminal (tmux) and keeps a hostile backend's answers short and printable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::hostile::{self, Step};
use crate::common::ops::{TempDir, free_port, root, tool_from};
use crate::common::*;
use weir_sim::SimConfig;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// The longest a program run by these tests may take before it is killed.
const LIMIT: Duration = Duration::from_secs(90);

/// How a program run to its end ended, and what it printed.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The program's last line on stderr: `weir: <why>` when it failed.
    pub fn last_error_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }
}

/// Runs `program args` in `dir` (its output in files there) and waits for it, polling, for
/// at most [`LIMIT`]; killed past that, which fails the test.
pub fn run_bounded(program: &Path, args: &[String], dir: &TempDir) -> Outcome {
    let (out, err) = (dir.path("stdout"), dir.path("stderr"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let outcome = Outcome {
        code: status.and_then(|s| s.code()),
        stdout: read(&out),
        stderr: read(&err),
    };
    assert!(
        status.is_some(),
        "{} {args:?} ran over {LIMIT:?}: {outcome:?}",
        program.display()
    );
    outcome
}

/// `weir bench args`, run off the test's runtime (which serves the simulator meanwhile).
pub async fn bench(args: &[&str]) -> Outcome {
    let mut all = vec!["bench".to_owned()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let dir = TempDir::new("bench-cli");
        run_bounded(Path::new(WEIR), &all, &dir)
    })
    .await
    .unwrap()
}

/// The JSON that `--json` wrote.
fn json_of(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The message of one of the vLLM captures.
fn captured_message(name: &str) -> String {
    let body = std::fs::read(root().join("tests/fixtures/vllm-0.32.0").join(name)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["error"]["message"].as_str().unwrap().to_owned()
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[tokio::test]
async fn a_dead_port_exits_non_zero_naming_the_refused_connection() {
    let dead = format!("127.0.0.1:{}", free_port());
    let u = format!("http://{dead}");
    let o = bench(&["--url", &u, "--model", "tiny-llama", "--requests", "3"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.last_error_line(),
        format!("weir: all 3 requests failed: connection refused ({dead})"),
        "{o:?}"
    );
    assert!(o.stdout.contains("errors by cause:"), "{o:?}");
    // Without --model the model list is asked first, and the same cause is named.
    let o = bench(&["--url", &u, "--requests", "3"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.last_error_line(),
        format!(
            "weir: no --model given, and {u}/v1/models could not be read: \
             connection refused ({dead})"
        ),
        "{o:?}"
    );
}

#[tokio::test]
async fn an_unknown_model_exits_non_zero_with_the_backends_404_message() {
    let sim = start_sim(SimConfig::fast()).await;
    let o = bench(&[
        "--url",
        &url(sim),
        "--model",
        "no-such-model",
        "--requests",
        "2",
    ])
    .await;
    assert_eq!(o.code, Some(1), "{o:?}");
    // The same words as vLLM's answer in the capture.
    let message = captured_message("err_unknown_model.body");
    assert_eq!(
        o.last_error_line(),
        format!("weir: all 2 requests failed: HTTP 404: {message}"),
        "{o:?}"
    );
}

#[tokio::test]
async fn errors_by_cause_are_in_the_table_and_the_json_and_the_error_rate_decides() {
    let sim = start_sim(SimConfig {
        error_rate: 0.5,
        ..SimConfig::fast()
    })
    .await;
    let dir = TempDir::new("bench-causes");
    let json = dir.path("run.json");
    let (u, j) = (url(sim), json.to_str().unwrap().to_owned());
    let load = ["--url", &u, "--model", "tiny-llama", "--requests", "40"];
    // Some failed, not all: the run passes without --max-error-rate.
    let o = bench(&[&load[..], &["--concurrency", "4", "--json", &j]].concat()).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let run = &json_of(&json)["runs"][0];
    let errors = run["errors"].as_u64().unwrap();
    assert!((1..40).contains(&errors), "{run}");
    let causes = run["errors_by_cause"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{run}");
    assert_eq!(causes[0]["kind"], "http");
    assert_eq!(causes[0]["count"].as_u64(), Some(errors));
    let cause = causes[0]["cause"].as_str().unwrap();
    assert!(
        cause.starts_with("HTTP 500: EngineCore encountered an issue."),
        "{cause}"
    );
    let table_line = format!("{errors:>10}  {cause}");
    assert!(o.stdout.contains("errors by cause:\n"), "{}", o.stdout);
    assert!(o.stdout.contains(&table_line), "{}", o.stdout);

    let o = bench(&[&load[..], &["--max-error-rate", "0.01"]].concat()).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    let line = o.last_error_line();
    assert!(
        line.starts_with("weir: ") && line.contains(" of 40 requests failed ("),
        "{o:?}"
    );
    assert!(
        line.ends_with(&format!(
            "more than --max-error-rate 0.01; most often: {cause}"
        )),
        "{o:?}"
    );

    // Every request failing fails the run, unless --max-error-rate 1 allows it.
    let all_fail = [&load[..], &["--header", "x-sim-fault:http=503"]].concat();
    let o = bench(&all_fail).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.last_error_line(),
        "weir: all 40 requests failed: HTTP 503: weir sim: injected HTTP 503 fault"
    );
    let o = bench(&[&all_fail[..], &["--max-error-rate", "1"]].concat()).await;
    assert_eq!(o.code, Some(0), "{o:?}");
}

#[tokio::test]
async fn without_a_model_the_first_of_v1_models_is_loaded() {
    let sim = start_sim(SimConfig {
        model: "weir-probe-model".into(),
        ..SimConfig::fast()
    })
    .await;
    let dir = TempDir::new("bench-model");
    let json = dir.path("run.json");
    let u = url(sim);
    let o = bench(&[
        "--url",
        &u,
        "--requests",
        "4",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stderr
            .contains("weir bench: model weir-probe-model (from /v1/models)"),
        "{o:?}"
    );
    let doc = json_of(&json);
    assert_eq!(doc["model"], "weir-probe-model");
    assert_eq!(
        (
            doc["runs"][0]["requests"].as_u64(),
            doc["runs"][0]["errors"].as_u64()
        ),
        (Some(4), Some(0))
    );
}

#[tokio::test]
async fn a_sweep_ends_with_a_summary_table_of_its_levels() {
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(1),
        ..SimConfig::fast()
    })
    .await;
    let dir = TempDir::new("bench-sweep");
    let json = dir.path("sweep.json");
    let u = url(sim);
    let args = [
        "--url",
        &u,
        "--model",
        "tiny-llama",
        "--requests",
        "6",
        "--max-tokens",
        "5",
    ];
    let o = bench(
        &[
            &args[..],
            &["--sweep", "1,3", "--json", json.to_str().unwrap()],
        ]
        .concat(),
    )
    .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let summary = o
        .stdout
        .split("\nsweep summary\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary: {}", o.stdout));
    let lines: Vec<Vec<&str>> = summary
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][0], "concurrency", "{summary}");
    let rows = &json_of(&json)["sweep"];
    for (i, level) in ["1", "3"].into_iter().enumerate() {
        let (line, row) = (&lines[i + 1], &rows[i]);
        assert_eq!(line[0], level, "{summary}");
        assert_eq!(row["concurrency"].as_u64(), level.parse().ok(), "{rows}");
        assert_eq!(
            (row["requests"].as_u64(), row["errors"].as_u64()),
            (Some(6), Some(0))
        );
        // Its throughput as the JSON has it, and no errors.
        let rps = row["request_throughput"].as_f64().unwrap();
        assert_eq!(line[1], format!("{rps:.1}"), "{summary}");
        assert_eq!(line.last(), Some(&"0"), "{summary}");
    }
    assert_eq!(
        lines[3],
        ["(latencies", "in", "ms,", "goodput", "in", "req/s)"]
    );
}

#[tokio::test]
async fn a_hostile_backends_answers_stay_short_and_printable() {
    let mut junk = b"\x1b]0;pwned\x07\x1b[2J".to_vec();
    junk.extend(b"<garbage \xff\x00 body>".iter().cycle().take(1 << 20));
    let mut answer = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\
         content-length: {}\r\n\r\n",
        junk.len()
    )
    .into_bytes();
    answer.extend_from_slice(&junk);
    let backend = hostile::start(vec![Step::Raw(answer)]).await;
    let u = url(backend);
    let o = bench(&["--url", &u, "--model", "m", "--requests", "2"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    let line = o.last_error_line();
    assert!(
        line.starts_with("weir: all 2 requests failed: HTTP 500: "),
        "{line}"
    );
    assert!(line.chars().count() < 240, "{line}");
    assert!(
        !o.stderr.contains('\x1b') && !o.stdout.contains('\x1b'),
        "{o:?}"
    );
    // Its model list (an empty 200) is no list: said so, not guessed.
    let o = bench(&["--url", &u, "--requests", "2"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.last_error_line().starts_with(&format!(
            "weir: no --model given, and {u}/v1/models could not be read: not a model list"
        )),
        "{o:?}"
    );
}

/// A tmux server of its own, killed (with what runs in it) when dropped.
struct Tmux {
    program: PathBuf,
    socket: PathBuf,
}

impl Tmux {
    /// Starts `command` in a detached 160×12 terminal.
    fn start(program: PathBuf, command: &str) -> Tmux {
        let t = Tmux {
            program,
            // A socket of its own, never a user's server, removed at the end.
            socket: std::env::temp_dir().join(format!("weir-bench-tmux-{}", std::process::id())),
        };
        let size = ["-x", "160", "-y", "12"];
        let new = [
            &["-f", "/dev/null", "new-session", "-d"][..],
            &size,
            &[command],
        ]
        .concat();
        assert!(t.tmux(&new).status.success(), "tmux did not start");
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.program)
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// What the terminal shows.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A progress line with requests done and a current rate above zero, e.g.
/// `3.5 s  340 done  0 errors  97.2 req/s  486 output tok/s`: (done, errors, req/s).
fn progress_of(screen: &str) -> Option<(u64, u64, f64)> {
    screen.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w[..] {
            [
                _,
                "s",
                done,
                "done",
                errors,
                "errors",
                rps,
                "req/s",
                _,
                "output",
                "tok/s",
            ] => {
                let p = (done.parse().ok()?, errors.parse().ok()?, rps.parse().ok()?);
                (p.0 > 0 && p.2 > 0.0).then_some(p)
            }
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_progress_shows_while_it_runs_and_in_a_pipe_it_is_quiet() {
    let Some(tmux) = tool_from("tmux", "tmux") else {
        return;
    };
    let sim = start_sim(SimConfig {
        itl: Duration::from_millis(2),
        ..SimConfig::fast()
    })
    .await;
    let u = url(sim);
    let load = ["--url", &u, "--model", "tiny-llama", "--max-tokens", "4"];
    let command = format!(
        "{WEIR} bench {} --concurrency 2 --duration 90s",
        load.join(" ")
    );
    let term = Tmux::start(tmux, &command);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (screen, shown) = loop {
        let screen = term.screen();
        let shown = progress_of(&screen);
        if shown.is_some() || Instant::now() >= deadline {
            break (screen, shown);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, errors, _) = shown.unwrap_or_else(|| panic!("no progress line:\n{screen}"));
    assert_eq!(errors, 0, "{screen}");
    drop(term);
    // Piped, only the tables: no progress line, no terminal codes.
    let o = bench(&[&load[..], &["--requests", "20"]].concat()).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        !o.stderr.contains(" done ") && !o.stderr.contains('\x1b'),
        "{o:?}"
    );
    assert!(o.stdout.contains("20 requests in"), "{o:?}");
}
