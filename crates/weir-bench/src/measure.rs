//! One request, measured with the gateway's definitions: TTFT at the first event that
//! carries output, ITL between such events, TPOT = (e2e − TTFT) / (output tokens − 1), e2e
//! to the end of the body; tokens from the usage the server reports. A request that fails
//! says why ([`Failure`]).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, timeout_at};
use weir_sse::SseParser;

use super::cause::Failure;
use super::events::{self, Info};
use super::{Api, HttpClient, Sample};

/// The most of a failed answer's body read for its error message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The largest non-streamed answer measured: it is held whole to read its usage, and a
/// backend that never ends its body must not take the client's memory.
const WHOLE_BODY_LIMIT: usize = 64 << 20;

/// What every request of a run shares.
#[derive(Clone)]
pub(crate) struct Target {
    pub client: HttpClient,
    pub api: Api,
    pub uri: http::Uri,
    pub body: Bytes,
    pub headers: http::HeaderMap,
    /// Each request's limit, from its start to the end of its body.
    pub timeout: Duration,
    /// The start of the run's measured part: each sample's `start` counts from it.
    pub origin: Instant,
}

/// What the events of one stream said so far.
#[derive(Default)]
struct Meter {
    first: Option<Instant>,
    last: Option<Instant>,
    itl: Vec<f32>,
    content: u64,
    end: bool,
    /// The first error event, told as a failure.
    error: Option<Failure>,
    input: Option<u64>,
    output: Option<u64>,
}

impl Meter {
    fn seen(&mut self, now: Instant, info: Info, data: &[u8]) {
        self.end |= info.end;
        if info.error && self.error.is_none() {
            self.error = Some(Failure::error_event("error event", data));
        }
        if info.content {
            self.content += 1;
            match self.last {
                None => self.first = Some(now),
                Some(l) => self.itl.push((now - l).as_secs_f32()),
            }
            self.last = Some(now);
        }
        self.input = info.input.or(self.input);
        self.output = info.output.or(self.output);
    }

    /// Where a request that runs out of time stood.
    fn phase(&self) -> &'static str {
        if self.first.is_none() {
            "before the first token"
        } else {
            "mid-stream"
        }
    }
}

/// Sends one request of the run and measures it.
pub(crate) async fn measure(t: &Target) -> Sample {
    let t0 = Instant::now();
    let mut s = Sample {
        start: t0.saturating_duration_since(t.origin).as_secs_f64(),
        ..Sample::default()
    };
    s.error = exchange(t, t0, &mut s).await.err();
    s.e2e = t0.elapsed().as_secs_f64();
    if let Some(ttft) = s.ttft
        && s.output_tokens > 1
    {
        s.tpot = Some((s.e2e - ttft) / (s.output_tokens - 1) as f64);
    }
    s
}

async fn exchange(t: &Target, t0: Instant, s: &mut Sample) -> Result<(), Failure> {
    let deadline = t0 + t.timeout;
    let res = head(t, deadline).await?;
    let status = res.status();
    let is_sse = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = res.into_body();
    if !status.is_success() {
        let whole = read(&mut body, deadline, ERROR_BODY_LIMIT).await;
        return Err(Failure::status(status, &whole.unwrap_or_default()));
    }
    if is_sse {
        stream(t, t0, deadline, body, s).await
    } else {
        whole(t, deadline, body, s).await
    }
}

/// Sends the request; its answer's head.
async fn head(t: &Target, deadline: Instant) -> Result<Response<Incoming>, Failure> {
    let mut req = Request::new(Full::new(t.body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = t.uri.clone();
    let headers = req.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.extend(t.headers.clone());
    match timeout_at(deadline, t.client.request(req)).await {
        Err(_) => Err(Failure::timeout(t.timeout, "waiting for the answer")),
        Ok(Err(e)) => {
            let authority = t.uri.authority().map_or("", |a| a.as_str());
            Err(Failure::client(&e, authority))
        }
        Ok(Ok(res)) => Ok(res),
    }
}

/// A streamed answer, measured event by event.
async fn stream(
    t: &Target,
    t0: Instant,
    deadline: Instant,
    mut body: Incoming,
    s: &mut Sample,
) -> Result<(), Failure> {
    let (mut parser, mut meter) = (SseParser::default(), Meter::default());
    let read = loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => break Err(Failure::timeout(t.timeout, meter.phase())),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(Failure::body(&e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        parser.feed(&data, |e| {
            meter.seen(now, events::event(t.api, e.name, e.data), e.data)
        });
    };
    s.input_tokens = meter.input.unwrap_or(0);
    s.output_tokens = meter.output.filter(|&n| n > 0).unwrap_or(meter.content);
    s.ttft = meter.first.map(|f| (f - t0).as_secs_f64());
    s.itl = std::mem::take(&mut meter.itl);
    read?;
    match meter.error {
        Some(f) => Err(f),
        None if !meter.end => Err(Failure::stream("stream ended without its end event")),
        None => Ok(()),
    }
}

/// A whole (not streamed) answer: usage from the JSON body; no TTFT.
async fn whole(
    t: &Target,
    deadline: Instant,
    mut body: Incoming,
    s: &mut Sample,
) -> Result<(), Failure> {
    let whole = match read(&mut body, deadline, WHOLE_BODY_LIMIT + 1).await {
        Ok(b) if b.len() > WHOLE_BODY_LIMIT => {
            return Err(Failure::stream(format!(
                "body larger than {} MiB",
                WHOLE_BODY_LIMIT >> 20
            )));
        }
        Ok(b) => b,
        Err(ReadError::Timeout) => return Err(Failure::timeout(t.timeout, "reading the body")),
        Err(ReadError::Body(f)) => return Err(f),
    };
    let info = events::body(t.api, &whole);
    s.input_tokens = info.input.unwrap_or(0);
    s.output_tokens = info.output.unwrap_or(0);
    if whole.is_empty() {
        Err(Failure::stream("empty body"))
    } else if info.error {
        Err(Failure::error_event("error in the body", &whole))
    } else {
        Ok(())
    }
}

enum ReadError {
    Timeout,
    Body(Failure),
}

/// The body's bytes, up to `limit` (the rest is left unread).
async fn read(body: &mut Incoming, deadline: Instant, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while out.len() < limit {
        match timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ReadError::Body(Failure::body(&e))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data[..data.len().min(limit - out.len())]);
                }
            }
        }
    }
    Ok(out)
}
