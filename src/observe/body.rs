//! The response body wrapper: passes every frame on as it comes (no copy, no channel), feeds
//! the observer on the way (`observer.rs`), and finishes the measurement exactly once — at
//! the end of the body, on an upstream error or a deadline, or in `Drop` when the client went
//! away (`cancelled`). A response with nothing to send is finished when it is wrapped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::observer::{End, Mode, Observer, join};
use super::{Closer, Recorder};

/// Errors passed to the client's connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A response body under observation.
    pub struct ObservedBody<B, R: Recorder> {
        #[pin]
        inner: B,
        observer: Option<Box<Observer<R>>>,
        // Bytes held back by usage stripping were flushed after the inner body ended.
        ended: bool,
    }

    impl<B, R: Recorder> PinnedDrop for ObservedBody<B, R> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(obs) = this.project().observer.take() {
                let outcome = obs.abandoned();
                (*obs).finish(outcome);
            }
        }
    }
}

impl<B: Body, R: Recorder> ObservedBody<B, R> {
    /// Wraps `inner`; the response's headers decide how it is read. When the client gets no
    /// body (`nothing_to_send`: a HEAD request, a 204 or 304, an empty body), the request is
    /// finished here.
    pub fn new(
        inner: B,
        rec: R,
        headers: &http::HeaderMap,
        nothing_to_send: bool,
        closer: Option<Closer>,
    ) -> Self {
        let ended = nothing_to_send || inner.is_end_stream();
        let obs = Observer::new(rec, headers, closer.filter(|_| !ended));
        let observer = if ended {
            let outcome = obs.final_outcome();
            (*obs).finish(outcome);
            None
        } else {
            Some(obs)
        };
        ObservedBody {
            inner,
            observer,
            ended,
        }
    }
}

impl<B, R: Recorder> ObservedBody<B, R> {
    /// Bytes the observer holds for this response now (SSE: at most four times
    /// `max_sse_line`, whatever the backend sends; JSON: at most 16 MiB, within the budget).
    pub fn held_bytes(&self) -> usize {
        self.observer.as_ref().map_or(0, |o| o.held())
    }

    /// Passes `inner` on without observing it.
    pub fn unobserved(inner: B) -> Self {
        ObservedBody {
            inner,
            observer: None,
            ended: false,
        }
    }
}

impl<B, R> Body for ObservedBody<B, R>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    R: Recorder,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        loop {
            let polled = this.inner.as_mut().poll_frame(cx);
            let Some(obs) = this.observer.as_mut() else {
                return polled.map(|f| f.map(|r| r.map_err(Into::into)));
            };
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    let kind = ready!(obs.poll_deadline(cx));
                    let obs = this.observer.take().expect("observer present");
                    *this.ended = true;
                    return Poll::Ready((*obs).end(End::Timeout(kind)));
                }
            };
            let (out, end) = match frame {
                Some(Ok(frame)) => {
                    let out = match frame.into_data() {
                        Ok(data) => obs.on_data(data),
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    // A deadline is checked on every frame too: a backend that keeps sending
                    // what is not a token must not outlive the first-token or total timeout.
                    // A last frame ends it (hyper may not poll again).
                    match obs.overdue() {
                        Some(kind) => (out, End::Timeout(kind)),
                        None if this.inner.is_end_stream() => (out, End::Clean),
                        None => match out {
                            Some(b) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                            None => continue,
                        },
                    }
                }
                // The upstream body broke mid-way (reset, truncated chunk).
                Some(Err(e)) => (None, End::Broken(e.into())),
                None => (None, End::Clean),
            };
            let obs = this.observer.take().expect("observer present");
            *this.ended = true;
            return Poll::Ready(prepend(out, (*obs).end(end)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || (self.observer.as_ref().is_none_or(|o| !o.holds_bytes())
                && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.observer.as_deref() {
            Some(Observer {
                mode: Mode::Sse { strip: Some(_), .. },
                ..
            }) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

/// What goes out when the body ends: the last data that came, then what the ending adds.
/// A body cut with an error loses that last data (the client sees the body break).
fn prepend(
    out: Option<Bytes>,
    end: Option<Result<Frame<Bytes>, BoxError>>,
) -> Option<Result<Frame<Bytes>, BoxError>> {
    match end {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(tail) => join(out, Some(tail)).map(|b| Ok(Frame::data(b))),
            Err(trailers) => Some(Ok(trailers)),
        },
        Some(Err(e)) => Some(Err(e)),
        None => out.map(|b| Ok(Frame::data(b))),
    }
}
