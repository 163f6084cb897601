//! `weir top`: a live terminal view of running weir gateways, read from their admin
//! listeners (`/metrics`, `/backends`) every interval. Per model and per backend: requests
//! per second, requests in flight, TTFT and ITL p50/p99 over the last interval (from the
//! histograms' bucket deltas between two scrapes), output tokens per second, goodput and
//! failures; the errors, timeouts, refusals and retries by kind; backend health and the
//! vLLM queue the gateway scraped.
//!
//! The computation (`rates`, `table`, `rows`) knows nothing of the terminal; `ui` draws its
//! rows with ratatui, or prints them as plain text when stdout is not a terminal.

mod app;
mod expo;
mod rates;
mod rows;
mod scrape;
mod table;
mod ui;

#[cfg(test)]
mod hostile_tests;

use std::io::{self, IsTerminal};
use std::time::Duration;

use tokio::sync::mpsc;

use app::App;
use scrape::{HttpClient, Scrape, Target};

/// Arguments of `weir top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// A gateway's admin listener (`http://host:port`); repeat for several, whose traffic
    /// adds up in the rows.
    #[arg(
        long = "admin",
        value_name = "URL",
        default_value = "http://127.0.0.1:9464"
    )]
    pub admin: Vec<String>,
    /// Time between scrapes: rates and quantiles are over the last one.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print every view once as plain text, over one interval, and exit. The same happens
    /// when stdout is not a terminal (a pipe, a file).
    #[arg(long)]
    pub once: bool,
    /// Bearer token of an admin listener that wants one (`[admin] token_sha256`).
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The shortest interval: a gateway's `/metrics` takes milliseconds to render, and a
/// quantile over less than this holds too few requests to mean anything.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl TopArgs {
    fn targets(&self) -> io::Result<Vec<Target>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        if self.interval < MIN_INTERVAL {
            return Err(invalid(format!(
                "--interval {} is shorter than {}",
                humantime::format_duration(self.interval),
                humantime::format_duration(MIN_INTERVAL)
            )));
        }
        self.admin
            .iter()
            .map(|url| Target::parse(url, self.token.as_deref()).map_err(invalid))
            .collect()
    }

    /// How long one scrape may take: the interval, but no less than 2 s, so that a gateway
    /// busy rendering a large `/metrics` is not called down at a short interval.
    fn timeout(&self) -> Duration {
        self.interval.max(Duration::from_secs(2))
    }
}

/// Runs `weir top` until `q` (or, with `--once` or stdout not a terminal, after one
/// interval). A bad argument is an `InvalidInput` error naming it.
pub async fn run(args: TopArgs) -> io::Result<()> {
    let targets = args.targets()?;
    if args.once || !io::stdout().is_terminal() {
        return once(&args, targets).await;
    }
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(scrape_rounds(
        targets.clone(),
        args.interval,
        args.timeout(),
        tx,
    ));
    let result = ui::run(App::new(targets, args.interval), rx).await;
    task.abort();
    result
}

/// Scrapes every gateway each interval and sends each round, until the view is gone.
async fn scrape_rounds(
    targets: Vec<Target>,
    interval: Duration,
    timeout: Duration,
    tx: mpsc::Sender<Vec<Result<Scrape, String>>>,
) {
    let client = scrape::client();
    let mut tick = tokio::time::interval(interval);
    // A round that took longer than the interval delays the next; rates divide by the
    // time between the scrapes as measured, so they stay right.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let round = scrape_all(&client, &targets, timeout).await;
        if tx.send(round).await.is_err() {
            return;
        }
    }
}

/// One scrape of every gateway, at once; the results in the order of `targets`.
async fn scrape_all(
    client: &HttpClient,
    targets: &[Target],
    timeout: Duration,
) -> Vec<Result<Scrape, String>> {
    let tasks: Vec<_> = targets
        .iter()
        .map(|t| {
            let (client, t) = (client.clone(), t.clone());
            tokio::spawn(async move { scrape::scrape(&client, &t, timeout).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

/// Two scrapes one interval apart, printed as plain text. Fails when no gateway answered
/// both, so that a script sees it in the exit status.
async fn once(args: &TopArgs, targets: Vec<Target>) -> io::Result<()> {
    let client = scrape::client();
    let mut app = App::new(targets.clone(), args.interval);
    app.update(scrape_all(&client, &targets, args.timeout()).await);
    tokio::time::sleep(args.interval).await;
    app.update(scrape_all(&client, &targets, args.timeout()).await);
    print!("{}", ui::snapshot(&app));
    if app.has_rates() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "no gateway could be scraped twice: {}",
            app.failures().join("; ")
        )))
    }
}
