//! A running gateway: binds the proxy and admin listeners, serves both, and shuts them
//! down together (used by `weir`, `weir demo` and the tests).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app;
use crate::config::{Config, Scheduler};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::tls::ServerTls;
use crate::{admin, health, server, workers};

/// Handle on a gateway started with [`start`].
pub struct Gateway {
    /// Where the proxy listener is bound (the real port when the config said 0).
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    /// The listeners' TLS (`[tls]`, `[admin.tls]`), whose certificates a reload re-reads.
    tls: Option<Arc<ServerTls>>,
    admin_tls: Option<Arc<ServerTls>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    health: JoinHandle<()>,
    discovery: JoinHandle<()>,
}

/// Binds both listeners of a validated config and starts serving.
pub async fn start(config: Config) -> std::io::Result<Gateway> {
    start_with(config, app::service).await
}

/// As [`start`], with the proxy listener's stack built by `stack` (the tests use
/// [`app::service_with`] to put a service of their own inside it).
pub async fn start_with<S>(
    config: Config,
    stack: impl FnOnce(Arc<AppState>) -> app::Stack<S>,
) -> std::io::Result<Gateway>
where
    app::Stack<S>: server::Served<app::ProxyBody>,
{
    // One thread per core, or the runtime this runs on.
    let workers = match config.scheduler {
        Scheduler::Shared => 1,
        Scheduler::PerCore if config.workers > 0 => config.workers,
        Scheduler::PerCore => workers::threads(),
    };
    let listeners = if workers > 1 {
        bind_each("listen", "--listen", config.listen, workers)?
    } else {
        vec![bind("listen", "--listen", config.listen).await?]
    };
    let admin_listener = bind("admin_listen", "--admin-listen", config.admin_listen).await?;
    let addr = listeners[0].local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let metrics = Metrics::with_config(config.known_models(), &config.slo, &config.metrics);
    let tls = listener_tls("proxy", "tls", config.tls.as_ref(), &metrics)?;
    let admin_tls = listener_tls("admin", "admin.tls", config.admin.tls.as_ref(), &metrics)?;
    let proxy_opts = server::Options {
        grace: config.shutdown_grace,
        header_read_timeout: Some(config.limits.header_read_timeout),
        max_head_bytes: Some(config.limits.max_head_bytes),
        tls: tls.clone(),
        ..server::Options::default()
    }
    .max_connections((config.limits.max_connections > 0).then_some(config.limits.max_connections));
    let admin_opts = server::Options {
        grace: config.shutdown_grace,
        header_read_timeout: Some(config.limits.header_read_timeout),
        tls: admin_tls.clone(),
        ..server::Options::default()
    };
    let proxy_opts = server::Options {
        rejected: Some(metrics.rejected("connections")),
        ..proxy_opts
    };
    // Before the backends' pools are made: one idle list per worker.
    workers::expect(workers);
    let state = Arc::new(AppState::new(config, metrics));
    let (stop, rx) = watch::channel(false);
    let rx2 = rx.clone();
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = if workers > 1 {
        workers::spawn(listeners, stack(state.clone()), rx.clone(), proxy_opts)?
    } else {
        let listener = listeners.into_iter().next().expect("one listener");
        vec![tokio::spawn(server::run(
            listener,
            stack(state.clone()),
            stopped(rx.clone()),
            proxy_opts,
        ))]
    };
    let admin = tokio::spawn(server::run(
        admin_listener,
        admin::service(state.clone()),
        stopped(rx),
        admin_opts,
    ));
    // Before the first health check, so that its span is bridged too.
    state.telemetry.bridge_tracing();
    let health = tokio::spawn(health::run(state.clone(), rx2.clone()));
    let discovery = tokio::spawn(crate::discovery::run(state.clone(), rx2));
    let rt = tokio::runtime::Handle::current();
    let runtime = if workers > 1 {
        "per_core"
    } else {
        match rt.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
            _ => "multi_thread",
        }
    };
    tracing::info!(
        %addr,
        %admin_addr,
        tls = tls.is_some(),
        admin_tls = admin_tls.is_some(),
        backends = state.current().pool.backends.len(),
        runtime,
        workers = if workers > 1 { workers } else { rt.metrics().num_workers() },
        "weir is serving"
    );
    tasks.push(admin);
    Ok(Gateway {
        addr,
        admin_addr,
        state,
        tls,
        admin_tls,
        stop,
        tasks,
        health,
        discovery,
    })
}

/// A listener's TLS from its table (None: plain TCP); a file that cannot be used names the
/// field and the file.
fn listener_tls(
    listener: &'static str,
    at: &'static str,
    cfg: Option<&crate::config::ListenerTls>,
    metrics: &Metrics,
) -> std::io::Result<Option<Arc<ServerTls>>> {
    let Some(cfg) = cfg else { return Ok(None) };
    ServerTls::new(listener, at, cfg, metrics)
        .map(|t| Some(Arc::new(t)))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// Binds one listener; a failure names the listener, its address, and how to pick another.
async fn bind(field: &str, flag: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(field, flag, addr, e))
}

/// `n` listening sockets on one address, one per worker, with `SO_REUSEPORT`: the kernel
/// hands each new connection to one of them by its addresses' hash, whichever threads are
/// running. The address is first bound alone, so that a port in use — even by another weir,
/// which could otherwise join the group and take a share of the connections — is the same
/// error as with one listener (and port 0 becomes a free port).
fn bind_each(
    field: &str,
    flag: &str,
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<Vec<TcpListener>> {
    let failed = |e| bind_error(field, flag, addr, e);
    let alone = std::net::TcpListener::bind(addr).map_err(failed)?;
    let addr = alone.local_addr()?;
    drop(alone);
    (0..n)
        .map(|_| {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| bind_error(field, flag, addr, e))
}

/// A listener that could not be bound, with its field, its address and how to pick another.
fn bind_error(field: &str, flag: &str, addr: SocketAddr, e: std::io::Error) -> std::io::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            ": another process is listening there; stop it or choose another port with {flag} or `{field} =` in the config file"
        ),
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            format!(": ports below 1024 need privileges; choose a port of 1024 or more with {flag}")
        }
        std::io::ErrorKind::AddrNotAvailable => format!(
            ": no interface of this machine has that address; use 0.0.0.0 for every interface or 127.0.0.1 with {flag}"
        ),
        _ => String::new(),
    };
    std::io::Error::new(
        e.kind(),
        format!("cannot listen on {addr} ({field}): {e}{hint}"),
    )
}

impl Gateway {
    /// Stops accepting, waits for open requests up to the configured grace period. With a
    /// `shutdown_delay`, first reports not ready and closes HTTP/1 connections after their
    /// responses for that long, still serving, so that a load balancer stops sending here
    /// before the listener closes.
    pub async fn shutdown(self) {
        let delay = self.state.current().config.shutdown_delay;
        self.state.drain();
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "draining: /readyz answers 503 until the listener closes"
            );
            tokio::time::sleep(delay).await;
        }
        let _ = self.stop.send(true);
        let _ = self.health.await;
        let _ = self.discovery.await;
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "server ended with an error"),
                Err(e) => tracing::error!(error = %e, "server task failed"),
            }
        }
        // Spans of every finished request go out before the process ends.
        self.state.telemetry.shutdown().await;
        tracing::info!("weir stopped");
    }
}

impl Gateway {
    /// Loads and validates `path` and, when it is good, switches to its backends, balancing,
    /// health, timeouts, keys and per-request limits, and the listeners' TLS certificates
    /// (for new handshakes; open connections keep theirs); otherwise keeps the running config
    /// and certificates and says why. The fields read only at start (listeners, connection
    /// limits, whether a listener has TLS, `[slo]`, `[telemetry]`) keep their running values:
    /// the log line and the result name those that changed, which need a restart.
    pub fn reload_from(
        &self,
        path: &std::path::Path,
        overrides: impl Fn(&mut Config),
    ) -> Result<Vec<&'static str>, crate::config::ConfigError> {
        let _span = tracing::info_span!("config_reload", path = %path.display()).entered();
        let origin = || path.display().to_string();
        let mut config = Config::read(path)?;
        overrides(&mut config);
        config.normalise();
        config.validate().map_err(|e| e.origin(origin()))?;
        let not_applied = config.keep_fixed_at_start(&self.state.current().config);
        // Both certificates read before anything changes: one bad file refuses the reload.
        let read = |tls: &Option<Arc<ServerTls>>, cfg: &Option<crate::config::ListenerTls>| match (
            tls, cfg,
        ) {
            (Some(t), Some(c)) => t.read(c).map(|k| Some((t.clone(), k))),
            _ => Ok(None),
        };
        let certs = [
            read(&self.tls, &config.tls).map_err(|e| e.origin(origin()))?,
            read(&self.admin_tls, &config.admin.tls).map_err(|e| e.origin(origin()))?,
        ];
        self.state.reload(config);
        for (tls, key) in certs.into_iter().flatten() {
            tls.install(key);
        }
        let backends = self.state.current().pool.backends.len();
        if not_applied.is_empty() {
            tracing::info!(path = %path.display(), backends, "config reloaded");
        } else {
            let fields = not_applied.join(", ");
            tracing::warn!(
                path = %path.display(),
                backends,
                restart_needed = %fields,
                "config reloaded, except {fields}: changed in the file, kept at their running values until a restart"
            );
        }
        Ok(not_applied)
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
