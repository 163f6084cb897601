//! The `weir` command line: parses arguments and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::config::{BackendConfig, Config};

/// jemalloc with background purging: memory freed after a burst of streams goes back to
/// the system instead of staying in the allocator's arenas.
#[cfg(all(feature = "jemalloc", unix, not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read before `main`): pages freed after a burst go back to the system
/// within about a second, from jemalloc's background thread rather than the request path.
#[cfg(all(feature = "jemalloc", unix, not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "A reverse proxy for vLLM that measures TTFT, ITL, TPOT and usage in-band",
    long_about = "A reverse proxy for vLLM that measures TTFT, ITL, TPOT and usage in-band.\n\n\
        `weir` with no subcommand runs the gateway: it serves the proxy listener (--listen) and \
        the admin listener (--admin-listen: /metrics, /healthz, /readyz, /backends) until \
        SIGTERM or Ctrl-C; SIGHUP reloads --config.",
    after_help = "Examples:\n  \
        weir --backend http://127.0.0.1:8000 --model meta-llama/Llama-3.1-8B-Instruct\n  \
        weir --config config/weir.toml\n  \
        weir check --config config/weir.toml --backend http://10.0.0.7:8000\n  \
        weir demo\n  \
        weir bench --url http://127.0.0.1:8080 --concurrency 16 --duration 60s"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log lines on stdout: json, pretty, or auto (pretty when stdout is a terminal, JSON
    /// lines otherwise).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "WEIR_LOG_FORMAT"
    )]
    log_format: weir::telemetry::LogStyle,
    #[command(flatten)]
    gateway: GatewayArgs,
}

#[derive(clap::Args, Debug, Default)]
struct GatewayArgs {
    /// TOML config file (see config/weir.toml); flags override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Proxy listener address: an IP and a port, e.g. 0.0.0.0:8080.
    #[arg(long, value_parser = weir::config::de::parse_listen)]
    listen: Option<SocketAddr>,
    /// Admin listener address (/metrics, /healthz, /readyz, /backends), e.g. 127.0.0.1:9464.
    #[arg(long, value_parser = weir::config::de::parse_listen)]
    admin_listen: Option<SocketAddr>,
    /// Backend base URL; repeat for several (replaces the file's backends).
    #[arg(long = "backend", value_name = "URL")]
    backends: Vec<String>,
    /// Model name to label metrics with; repeat for several (added to the file's).
    #[arg(long = "model", value_name = "NAME")]
    models: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the vLLM simulator.
    #[command(after_help = "Examples:\n  \
        weir sim --listen 127.0.0.1:8000\n  \
        weir sim --listen 127.0.0.1:8000 --ttft 200ms --itl 20ms --model meta-llama/Llama-3.1-8B-Instruct")]
    Sim(weir_sim::SimConfig),
    /// Run the simulator and the gateway in one process with a short load, then summarise.
    #[command(after_help = "Examples:\n  \
        weir demo\n  \
        weir demo --requests 1000 --concurrency 64 --keep-serving")]
    Demo(weir::demo::DemoArgs),
    /// Load-test an OpenAI-compatible endpoint and report TTFT, ITL, TPOT, e2e and goodput.
    #[command(after_help = "Examples:\n  \
        weir bench --url http://127.0.0.1:8080 --concurrency 16 --duration 60s\n  \
        weir bench --url http://127.0.0.1:8080 --sweep 16,64,256 --slo ttft=200ms,itl=50ms --report report.html\n  \
        weir bench --url http://127.0.0.1:8080 --rate 20 --no-stream --max-error-rate 0.01 --json run.json")]
    Bench(weir_bench::BenchArgs),
    /// Watch running gateways: per model and backend rates, latencies, errors, live.
    #[command(after_help = "Examples:\n  \
        weir top\n  \
        weir top --admin http://10.0.0.7:9464 --admin http://10.0.0.8:9464\n  \
        weir top --admin http://127.0.0.1:9464 --once")]
    Top(weir_top::TopArgs),
    /// Validate a config file with the flags the gateway will run with, without starting it.
    #[command(after_help = "Examples:\n  \
        weir check --config config/weir.toml\n  \
        weir check --config config/weir.toml --backend http://10.0.0.7:8000 --listen 0.0.0.0:8080")]
    Check(GatewayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(args)) => check(&args),
        Some(Command::Sim(sim)) => {
            weir::telemetry::init_logging("info", cli.log_format);
            prepare_fds(None);
            run(async move {
                let listener = tokio::net::TcpListener::bind(sim.listen).await?;
                tracing::info!(addr = %listener.local_addr()?, model = %sim.model, "simulator serving");
                weir_sim::serve(listener, sim, weir::gateway::shutdown_signal()).await
            })
        }
        Some(Command::Bench(args)) => {
            weir::telemetry::init_logging("warn", cli.log_format);
            prepare_fds(None);
            run(weir_bench::run(args))
        }
        // No logging: a log line would garble the screen the view draws on.
        Some(Command::Top(args)) => run(weir_top::run(args)),
        Some(Command::Demo(args)) => {
            weir::telemetry::init_demo_logging("warn", cli.log_format);
            run(weir::demo::run(args))
        }
        None => {
            let args = cli.gateway;
            let config = match gateway_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            weir::telemetry::init_logging("info", cli.log_format);
            prepare_fds(weir::fds::for_gateway(config.limits.max_connections));
            run(async move {
                #[cfg(unix)]
                let signals = Signals::install()?;
                let gw = weir::gateway::start(config).await?;
                #[cfg(unix)]
                signals.serve_until_stopped(&gw, &args).await;
                #[cfg(not(unix))]
                weir::gateway::shutdown_signal().await;
                gw.shutdown().await;
                Ok(())
            })
        }
    }
}

/// `weir check`: the config the gateway would run with, validated, or what is wrong with it.
fn check(args: &GatewayArgs) -> ExitCode {
    match gateway_config(args) {
        Ok(c) => {
            let source = args
                .config
                .as_ref()
                .map_or("the command line".to_owned(), |p| p.display().to_string());
            println!(
                "{source}: ok ({} backend(s), {} model label(s), listening on {}, admin on {})",
                c.backends.len(),
                c.known_models().len(),
                c.listen,
                c.admin_listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// SIGHUP and SIGTERM, listened for from before the gateway says it is serving: a signal
/// sent right after that line must not meet the default action (ending the process).
#[cfg(unix)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for SIGTERM / Ctrl-C; SIGHUP reloads the config file in the meantime.
    async fn serve_until_stopped(mut self, gw: &weir::gateway::Gateway, args: &GatewayArgs) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = self.hup.recv() => match &args.config {
                    Some(path) => {
                        if let Err(e) = gw.reload_from(path, |c| apply_flags(args, c)) {
                            tracing::error!(error = %e, "reload refused: keeping the running config");
                        }
                    }
                    None => tracing::warn!("SIGHUP: there is no --config file to reload"),
                },
            }
        }
        tracing::info!("shutdown requested");
    }
}

/// The config file (or defaults) with the command line's flags applied. An invalid value's
/// error names where it came from: the flag that set it, or the file.
fn gateway_config(args: &GatewayArgs) -> Result<Config, weir::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    apply_flags(args, &mut config);
    // OTEL_* variables win over the [telemetry] table, as flags win over the file.
    config.telemetry.apply_env(|k| std::env::var(k).ok())?;
    config.normalise();
    config.validate().map_err(|e| {
        let field = e.field().unwrap_or_default();
        if field.starts_with("backends[") && !args.backends.is_empty() {
            e.origin("--backend")
        } else if field.starts_with("models[") && args.config.is_none() {
            e.origin("--model")
        } else if let Some(path) = &args.config {
            e.origin(path.display().to_string())
        } else {
            e
        }
    })?;
    Ok(config)
}

fn apply_flags(args: &GatewayArgs, config: &mut Config) {
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(l) = args.admin_listen {
        config.admin_listen = l;
    }
    if !args.backends.is_empty() {
        config.backends = args.backends.iter().map(BackendConfig::new).collect();
    }
    config.models.extend(args.models.iter().cloned());
}

/// Raises the open-file limit and sizes the descriptor table before any connection.
fn prepare_fds(wanted: Option<u64>) {
    match weir::fds::prepare(wanted) {
        Ok(p) => {
            tracing::debug!(
                limit = p.soft,
                was = p.soft_before,
                table = p.table,
                "file descriptors"
            );
            if let Some(w) = wanted.filter(|&w| w > p.soft) {
                tracing::warn!(
                    limit = p.soft,
                    wanted = w,
                    "the open-file limit allows fewer connections than limits.max_connections"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Runs `fut` on a multi-threaded runtime, or, with one thread, on tokio's single-threaded
/// one: on one core the work-stealing scheduler only adds bookkeeping to every wake-up
/// (3–7 % less CPU per token in interleaved runs, BENCHMARKS.md).
fn run(fut: impl std::future::Future<Output = std::io::Result<()>>) -> ExitCode {
    let threads = weir::workers::threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e}");
            ExitCode::FAILURE
        }
    }
}
