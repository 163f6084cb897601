//! `weir top` as a person uses it: in a terminal (tmux, driven with `send-keys` and read
//! with `capture-pane`) against a gateway with streamed traffic, and as plain text when
//! its stdout is a pipe, against that gateway and against an admin port nothing serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_sim::SimConfig;

use crate::common::ops::{TempDir, free_port, tool_from};
use crate::common::*;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const MODEL: &str = "tiny-llama";
/// How long anything the tests wait for may take on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// A simulator, a gateway in front of it, and streamed chat requests sent through it one
/// after another until the test ends (at most `DEADLINE` and 100 000 requests).
struct Traffic {
    gateway: weir::gateway::Gateway,
    task: JoinHandle<()>,
}

impl Traffic {
    async fn start() -> Traffic {
        let sim = start_sim(SimConfig {
            ttft: Duration::from_millis(5),
            itl: Duration::from_millis(2),
            ..SimConfig::fast()
        })
        .await;
        let gateway = start_gateway(&[sim]).await;
        let addr = gateway.addr;
        let task = tokio::spawn(async move {
            let client = client();
            let until = Instant::now() + DEADLINE * 2;
            for _ in 0..100_000 {
                if Instant::now() > until {
                    return;
                }
                send(&client, post(addr, "/v1/chat/completions", &chat(true, 16))).await;
            }
        });
        let t = Traffic { gateway, task };
        wait_for_metrics(t.gateway.admin_addr, "a finished request", |m| {
            m.contains("weir_requests_total{")
        })
        .await;
        t
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.gateway.admin_addr)
    }

    /// The name of the gateway's one backend, as `/backends` gives it.
    async fn backend_name(&self) -> String {
        let (_, text) = get_text(self.gateway.admin_addr, "/backends").await;
        let doc: serde_json::Value = serde_json::from_str(&text).expect("/backends is JSON");
        doc["backends"][0]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("no backend name in {doc}"))
            .to_owned()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tmux server of the test's own, on a socket in a directory of its own (so that a
/// user's server is never touched and nothing stays behind), with `remain-on-exit` on so
/// that a program's end can be seen; killed when dropped.
struct Tmux {
    program: PathBuf,
    socket: PathBuf,
    conf: PathBuf,
    _dir: TempDir,
}

impl Tmux {
    fn new(program: PathBuf) -> Tmux {
        let dir = TempDir::new("top-tmux");
        let conf = dir.path("tmux.conf");
        // From the server's start: a pane that dies at once still stays to be read.
        std::fs::write(&conf, "set-option -g remain-on-exit on\n").unwrap();
        Tmux {
            program,
            socket: dir.path("socket"),
            conf,
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.conf)
            .args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs one tmux command off the runtime's threads; its stdout, or a panic with why.
    async fn run(&self, args: &[&str]) -> String {
        let mut cmd = self.command(args);
        let what = format!("tmux {args:?}");
        let out: Output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the pane shows now, a line per row.
    async fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"]).await
    }

    /// Polls the screen until `found` picks something out of it; the last screen in the
    /// panic when it never does.
    async fn wait_for<T>(&self, what: &str, mut found: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen().await;
            if let Some(t) = found(&screen) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen within {DEADLINE:?}:\n{screen}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the pane's program to end: `exit N` or `signal N`. tmux marks the pane
    /// dead when the terminal closes, and knows how it ended a moment later, once reaped.
    async fn ended(&self) -> String {
        let format = "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}";
        let deadline = Instant::now() + DEADLINE;
        loop {
            let state = self.run(&["list-panes", "-t", "top", "-F", format]).await;
            match state.trim().split(':').collect::<Vec<_>>()[..] {
                ["1", "", ""] => self.nudge().await,
                ["1", status, ""] => return format!("exit {status}"),
                ["1", "", signal] => return format!("signal {signal}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "still running after {DEADLINE:?}: {state}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends the server a SIGCHLD. Debian's tmux writes utmp through libutempter, which
    /// holds SIGCHLD for itself while it runs; a program ending just then is never reaped
    /// and its pane shows dead with no status (tmux issue #311). Another SIGCHLD makes the
    /// server reap it.
    async fn nudge(&self) {
        let text = self.run(&["display-message", "-p", "#{pid}"]).await;
        let pid = text.trim().parse().ok().and_then(Pid::from_raw);
        let pid = pid.unwrap_or_else(|| panic!("no pid of the tmux server in {text:?}"));
        kill_process(pid, Signal::CHILD).expect("the tmux server takes a signal");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]).output();
    }
}

/// The row of a table whose first cell is `name`, as its whitespace-separated cells.
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

/// Whether a table's header, starting with the titles `first`, shows.
fn has_header(screen: &str, first: &[&str]) -> bool {
    screen.lines().any(|l| {
        l.split_whitespace()
            .take(first.len())
            .eq(first.iter().copied())
    })
}

/// The REQ/S of the models view's row of `MODEL` (its second cell), when it shows.
fn model_req_s(screen: &str) -> Option<f64> {
    let cells = row(screen, MODEL)?;
    has_header(screen, &["MODEL", "REQ/S"]).then(|| cells.get(1)?.parse().ok())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_in_tmux_shows_the_model_switches_views_and_quits_on_q() {
    let Some(program) = tool_from("tmux", "tmux") else {
        return;
    };
    let traffic = Traffic::start().await;
    let backend = traffic.backend_name().await;
    let tmux = Tmux::new(program);
    let admin = traffic.admin_url();
    tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        "-s",
        "top",
        WEIR,
        "top",
        "--admin",
        &admin,
    ])
    .await;

    let req_s = tmux
        .wait_for("models row with requests per second above 0", |s| {
            model_req_s(s).filter(|r| *r > 0.0)
        })
        .await;
    assert!(req_s > 0.0, "{req_s}");

    tmux.run(&["send-keys", "-t", "top", "b"]).await;
    let screen = tmux
        .wait_for("backends view", |s| {
            let header = has_header(s, &["BACKEND", "STATE", "REQ/S"]);
            (header && row(s, &backend)?.get(1) == Some(&"up")).then(|| s.to_owned())
        })
        .await;
    assert!(
        row(&screen, MODEL).is_none(),
        "the models view is gone:\n{screen}"
    );

    tmux.run(&["send-keys", "-t", "top", "q"]).await;
    assert_eq!(tmux.ended().await, "exit 0", "how weir top ended after q");
    // The terminal is given back: the alternate screen with the table is gone.
    let screen = tmux.screen().await;
    assert!(
        !screen.contains("REQ/S") && !screen.contains("BACKEND"),
        "{screen}"
    );
}

/// Runs `weir top` with `args` and stdout a pipe, to its end (within `DEADLINE`).
async fn top_piped(args: Vec<String>) -> Output {
    let mut cmd = Command::new(WEIR);
    cmd.arg("top").args(args).stdin(Stdio::null());
    let run = tokio::task::spawn_blocking(move || cmd.output());
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("weir top ends on its own when stdout is not a terminal")
        .unwrap()
        .expect("weir top starts")
}

/// An admin URL where nothing listens.
fn dead_admin() -> String {
    format!("http://{}", SocketAddr::from(([127, 0, 0, 1], free_port())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_prints_the_tables_as_plain_text_and_names_a_dead_gateway() {
    let traffic = Traffic::start().await;
    let backend = traffic.backend_name().await;
    let (live, dead) = (traffic.admin_url(), dead_admin());
    let args = [
        "--once",
        "--admin",
        &live,
        "--admin",
        &dead,
        "--interval",
        "1s",
    ];
    let out = top_piped(args.map(str::to_owned).to_vec()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{text}\n{err}", out.status);
    assert!(
        !text.contains('\u{1b}'),
        "plain text, no terminal codes:\n{text}"
    );
    let req_s = model_req_s(&text).unwrap_or_else(|| panic!("no {MODEL} row:\n{text}"));
    assert!(req_s > 0.0, "{req_s}\n{text}");
    let b = row(&text, &backend).unwrap_or_else(|| panic!("no {backend} row:\n{text}"));
    assert_eq!(b.get(1), Some(&"up"), "{text}");
    let down = format!("{dead}  DOWN");
    assert!(
        text.lines().any(|l| l.starts_with(&down)),
        "the dead gateway is named:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{live}  up"))),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_against_a_dead_admin_port_says_which_url_and_fails() {
    let dead = dead_admin();
    let out = top_piped(vec![
        "--admin".into(),
        dead.clone(),
        "--interval".into(),
        "200ms".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(&format!("{dead}: ")) && err.contains("onnection refused"),
        "stderr names the URL and why:\n{err}"
    );
    assert!(text.contains(&format!("{dead}  DOWN")), "{text}");
}
