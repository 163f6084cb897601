//! The total deadline, kept even when nobody polls the body: a client that stops reading
//! (a full HTTP/1 socket, an h2 stream with a zero window) stops the server from polling
//! the response body, so the body's own timers never run. A second timer, armed when the
//! body is wrapped and woken straight into a closure rather than into the connection's
//! task, closes the upstream connection when the request's total time is up: the backend
//! sees the request abandoned and stops generating for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use tokio::time::{Instant, Sleep};

/// Closes a response's upstream connection.
pub type Close = Arc<dyn Fn() + Send + Sync>;

/// How the total deadline closes a response's upstream connection: the closer, and a timer
/// to run on (the one the response head was awaited with, set again; a new one when none).
pub struct Closer {
    pub close: Close,
    pub timer: Option<Pin<Box<Sleep>>>,
}

/// What the timer's waker does: close the upstream, once, unless disarmed first.
struct Cell {
    close: Mutex<Option<Close>>,
    fired: AtomicBool,
}

impl Wake for Cell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Under the lock: once `disarm` has returned, the connection is not closed any more.
        if let Ok(mut close) = self.close.lock() {
            if let Some(close) = close.take() {
                close();
                self.fired.store(true, Ordering::Release);
            }
        }
    }
}

/// An armed total deadline.
pub(super) struct Cut {
    cell: Arc<Cell>,
    _sleep: Pin<Box<Sleep>>,
}

impl Cut {
    /// Arms the timer for `at`; None when it has passed already (the body's own deadline
    /// handles that at its first poll).
    pub(super) fn arm(at: Instant, closer: Closer) -> Option<Cut> {
        let cell = Arc::new(Cell {
            close: Mutex::new(Some(closer.close)),
            fired: AtomicBool::new(false),
        });
        let mut sleep = match closer.timer {
            Some(mut timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        };
        let waker = Waker::from(cell.clone());
        if sleep
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            return None;
        }
        Some(Cut {
            cell,
            _sleep: sleep,
        })
    }

    /// The connection was closed by the deadline.
    pub(super) fn fired(&self) -> bool {
        self.cell.fired.load(Ordering::Acquire)
    }

    /// The body ended: the connection must not be closed any more (it may go back to the
    /// pool and carry another request).
    pub(super) fn disarm(&self) {
        if let Ok(mut close) = self.cell.close.lock() {
            close.take();
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;
    use std::time::Duration;

    fn counter() -> (Arc<AtomicUsize>, Closer) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let close: Close = Arc::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        });
        (n, Closer { close, timer: None })
    }

    #[tokio::test(start_paused = true)]
    async fn closes_once_when_the_time_is_up_though_nothing_polls_it() {
        let (n, close) = counter();
        let cut = Cut::arm(Instant::now() + Duration::from_secs(5), close).expect("armed");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(n.load(Ordering::SeqCst), 0);
        assert!(!cut.fired());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(cut.fired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_disarmed_or_dropped_cut_closes_nothing() {
        let (n, close) = counter();
        let other = Closer {
            close: close.close.clone(),
            timer: None,
        };
        let cut = Cut::arm(Instant::now() + Duration::from_secs(1), close).unwrap();
        cut.disarm();
        drop(Cut::arm(Instant::now() + Duration::from_secs(1), other));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(n.load(Ordering::SeqCst), 0);
        assert!(!cut.fired());
        let (_, close) = counter();
        let past = Instant::now() - Duration::from_secs(1);
        assert!(Cut::arm(past, close).is_none(), "passed already");
    }

    /// The timer the response head was awaited with (registered by the request's task, due
    /// sooner) is set to the total deadline: nothing closes at its old time, and the
    /// connection closes once at the new one.
    #[tokio::test(start_paused = true)]
    async fn a_timer_handed_on_keeps_the_total_deadline_not_its_own() {
        let (n, mut closer) = counter();
        let mut timer = Box::pin(tokio::time::sleep_until(
            Instant::now() + Duration::from_secs(1),
        ));
        let pending = std::future::poll_fn(|cx| Poll::Ready(timer.as_mut().poll(cx).is_pending()));
        assert!(pending.await, "registered, not due yet");
        closer.timer = Some(timer);
        let cut = Cut::arm(Instant::now() + Duration::from_secs(5), closer).expect("armed");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(n.load(Ordering::SeqCst), 0, "not at the head's deadline");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(cut.fired());
    }
}
