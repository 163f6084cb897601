//! One HTTP/1.1 connection to a backend, driven from the task of the request using it: the
//! response body polls the connection before it polls itself (`Conn::poll_with`), with a
//! `Relay` waker so that the wake-ups the connection and its body channel give each other
//! inside one poll do not schedule the task again.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::forward::UpstreamBody;

/// The connection state over plain TCP or TLS (an `https://` backend). Told apart once per
/// drive of the state machine, not per read or write: the plaintext connection's I/O is the
/// `TcpStream`'s own. The TLS state is boxed: a plaintext connection stays the size it was,
/// inline, with no allocation more.
#[allow(clippy::large_enum_variant)]
pub(super) enum Connection {
    Plain(http1::Connection<TokioIo<TcpStream>, UpstreamBody>),
    Tls(Box<http1::Connection<TokioIo<TlsStream<TcpStream>>, UpstreamBody>>),
}

impl Connection {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match self {
            Connection::Plain(c) => Pin::new(c).poll(cx),
            Connection::Tls(c) => Pin::new(&mut **c).poll(cx),
        }
    }
}

/// One HTTP/1.1 connection to the backend: the sending half and the connection state.
pub(super) struct Conn {
    pub(super) send: http1::SendRequest<UpstreamBody>,
    pub(super) conn: Connection,
    /// A second handle on the socket, to close it from outside the task that drives it.
    pub(super) socket: Arc<OwnedFd>,
    /// The connection future has finished (closed or failed): never to be reused.
    pub(super) done: bool,
    pub(super) relay: Arc<Relay>,
    /// `relay` as a waker.
    pub(super) waker: Waker,
}

/// The waker the backend connection is polled with. It notes that the connection has
/// something to do (its socket is ready, its body channel has room again); a wake-up while
/// [`Conn::poll_with`] is at work only makes that poll go round once more, one at any other
/// time also wakes the task that polled last.
pub(super) struct Relay {
    pub(super) target: AtomicWaker,
    pub(super) polling: AtomicBool,
    /// Woken since the connection was last polled.
    pub(super) woken: AtomicBool,
}

impl Relay {
    pub(super) fn new() -> Self {
        Relay {
            target: AtomicWaker::new(),
            polling: AtomicBool::new(false),
            woken: AtomicBool::new(true),
        }
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Noted first: a poll that has just ended sees it, or this sees `polling` false.
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.target.wake();
        }
    }
}

/// Rounds of one poll before a wake-up is passed on to the task instead.
const MAX_ROUNDS: usize = 4;

impl Conn {
    /// Polls `f`, which reads what the connection delivers (the response, its body), after
    /// driving the connection if it was woken since last time. `f` gets no waker: only the
    /// connection, driven here, can make it ready.
    pub(super) fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let Conn {
            conn,
            done,
            relay,
            waker,
            ..
        } = self;
        relay.target.register(cx.waker());
        let mut rcx = Context::from_waker(waker);
        let mut quiet = Context::from_waker(Waker::noop());
        for _ in 0..MAX_ROUNDS {
            relay.polling.store(true, Ordering::SeqCst);
            if relay.woken.swap(false, Ordering::SeqCst) {
                drive(conn, done, &mut rcx);
            }
            let polled = f(&mut quiet);
            relay.polling.store(false, Ordering::SeqCst);
            // Ready: whoever gets it polls again for more, and the connection is driven then.
            if polled.is_ready() || !relay.woken.load(Ordering::SeqCst) {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Polled once without a waker: true if it can take a request now.
    pub(super) fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        drive(&mut self.conn, &mut self.done, &mut cx) && self.send.is_ready()
    }
}

/// Advances a connection's state machine unless it has finished; false once it has.
fn drive(conn: &mut Connection, done: &mut bool, cx: &mut Context<'_>) -> bool {
    if !*done && conn.poll(cx).is_ready() {
        *done = true;
    }
    !*done
}
