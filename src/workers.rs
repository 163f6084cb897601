//! The proxy listener served per core (`scheduler = "per-core"`, the default): one thread per
//! CPU weir may use, each running a single-threaded tokio runtime with an accept loop of its
//! own. A connection is served from its first byte to its last by
//! the thread that accepted it, and the backend connections a thread opens stay with it (the
//! pool keeps one idle list per worker, `upstream.rs`): no task, socket or buffer moves
//! between cores, and the cores share no run queue and no pool lock. What they still share
//! is read-mostly (the config and the routes) or a counter (the metrics).
//!
//! Each worker has a listening socket of its own on the one address (`SO_REUSEPORT`, bound
//! in `gateway.rs`): the kernel hands each new connection to one worker by its addresses'
//! hash. One socket shared by every worker was tried first: the worker that woke first took
//! the whole backlog of a burst of new connections (24 of 24 in `tests/it/workers.rs` on a
//! loaded machine, even when it yielded after each accept), and kept-alive clients then
//! stayed on that one core. With a socket each, a burst is spread whichever threads are
//! running, and no connection wakes a worker that does not get it.
//!
//! Everything else (the admin listener, health checks, discovery, telemetry export, signals)
//! runs on the runtime the gateway was started on.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::server::{self, Served, ServedBody};

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The number of threads weir runs its work on: `TOKIO_WORKER_THREADS` if set (tokio's own
/// variable), else the cores this process may run on (its CPU affinity, e.g. `taskset`, or a
/// container's CPU quota).
pub fn threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// The most workers a gateway of this process has asked for.
static MOST: AtomicUsize = AtomicUsize::new(0);

/// Notes that `n` workers will serve: pools made from now on keep an idle list for each.
pub fn expect(n: usize) {
    MOST.fetch_max(n, Ordering::Relaxed);
}

/// How many idle lists a backend's pool keeps: one per worker, and one for every other
/// thread.
pub fn lists() -> usize {
    threads().max(MOST.load(Ordering::Relaxed)) + 1
}

/// This thread's worker number: 1, 2, … on a per-core worker, 0 on any other thread.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Serves each of `listeners` (one address, `SO_REUSEPORT`) on a worker thread of its own
/// until `stop` turns true; each thread's result comes back through a task on the calling
/// runtime.
pub fn spawn<S, B>(
    listeners: Vec<TcpListener>,
    service: S,
    stop: watch::Receiver<bool>,
    opts: server::Options,
) -> io::Result<Vec<JoinHandle<io::Result<()>>>>
where
    S: Served<B>,
    B: ServedBody,
{
    let mut done = Vec::with_capacity(listeners.len());
    for (i, listener) in (1..).zip(listeners) {
        // Registered again on the worker's own event loop.
        let listener = listener.into_std()?;
        let (service, mut stop, opts) = (service.clone(), stop.clone(), opts.clone());
        let (result, outcome) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("weir-worker-{i}"))
            .spawn(move || {
                WORKER.with(|w| w.set(i));
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let listener = TcpListener::from_std(listener)?;
                            let stopped = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            server::run(listener, service, stopped, opts).await
                        })
                        // The runtime is dropped here: connections still open after the
                        // grace period end with it.
                    });
                let _ = result.send(served);
            })?;
        done.push(tokio::spawn(async move {
            outcome
                .await
                .unwrap_or_else(|_| Err(io::Error::other("a proxy worker thread panicked")))
        }));
    }
    Ok(done)
}
