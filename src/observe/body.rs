//! The response body wrapper: passes every frame on as it comes (no copy, no channel), feeds
//! the observer on the way (`observer.rs`), and finishes the measurement exactly once — at
//! the end of the body, on an upstream error or a deadline, or in `Drop` when the client went
//! away (`cancelled`). A response with nothing to send is finished when it is wrapped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Recorder;
use super::observer::{Mode, Observer, join};
use crate::labels::Outcome;

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
                let outcome = if obs.meas.done { obs.final_outcome() } else { Outcome::Cancelled };
                (*obs).finish(outcome);
            }
        }
    }
}

impl<B: Body, R: Recorder> ObservedBody<B, R> {
    /// Wraps `inner`; `content_type` of the response decides how it is parsed. When the
    /// client gets no body (`nothing_to_send`: a HEAD request, a 204 or 304, an empty body),
    /// the request is finished here.
    pub fn new(inner: B, rec: R, content_type: Option<&[u8]>, nothing_to_send: bool) -> Self {
        let obs = Observer::new(rec, content_type);
        let ended = nothing_to_send || inner.is_end_stream();
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
                    return Poll::Ready((*obs).timed_out(kind));
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let frame = match frame.into_data() {
                        Ok(data) => obs.on_data(data),
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    if this.inner.is_end_stream() {
                        // The peer said this was the last frame: hyper may not poll again.
                        let rest = obs.flush();
                        let obs = this.observer.take().expect("observer present");
                        let outcome = obs.final_outcome();
                        (*obs).finish(outcome);
                        *this.ended = true;
                        if let Some(b) = join(frame, rest) {
                            return Poll::Ready(Some(Ok(Frame::data(b))));
                        }
                        return Poll::Ready(None);
                    }
                    if let Some(b) = frame {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                }
                Some(Err(e)) => {
                    // The upstream body broke mid-way (reset, truncated chunk).
                    let e: BoxError = e.into();
                    let mut obs = this.observer.take().expect("observer present");
                    obs.meas.stream_error = true;
                    *this.ended = true;
                    let message = format!("the backend's stream broke: {e}");
                    return Poll::Ready((*obs).end_with_error(
                        Outcome::UpstreamError,
                        &message,
                        StatusCode::BAD_GATEWAY,
                    ));
                }
                None => {
                    let rest = obs.flush();
                    let obs = this.observer.take().expect("observer present");
                    let outcome = obs.final_outcome();
                    (*obs).finish(outcome);
                    *this.ended = true;
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
            }
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
