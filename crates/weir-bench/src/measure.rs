//! One request, measured with the gateway's definitions: TTFT at the first event that
//! carries output, ITL between such events, TPOT = (e2e − TTFT) / (output tokens − 1), e2e
//! to the end of the body; tokens from the usage the server reports.

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use weir_sse::SseParser;

use super::events::{self, Info};
use super::{Api, HttpClient, Sample};

/// What the events of one stream said so far.
#[derive(Default)]
struct Meter {
    first: Option<Instant>,
    last: Option<Instant>,
    itl: Vec<f32>,
    content: u64,
    end: bool,
    error: bool,
    input: Option<u64>,
    output: Option<u64>,
}

impl Meter {
    fn seen(&mut self, now: Instant, info: Info) {
        self.end |= info.end;
        self.error |= info.error;
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
}

/// Sends one request of `api` and measures it.
pub(crate) async fn measure(
    client: &HttpClient,
    api: Api,
    uri: http::Uri,
    body: Bytes,
    headers: http::HeaderMap,
) -> Sample {
    let t0 = Instant::now();
    let mut s = Sample::default();
    let Ok(mut req) = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
    else {
        return s;
    };
    req.headers_mut().extend(headers);
    let res = match client.request(req).await {
        Ok(r) => r,
        Err(_) => {
            s.e2e = t0.elapsed().as_secs_f64();
            return s;
        }
    };
    let status_ok = res.status().is_success();
    let is_sse = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = res.into_body();
    let (mut parser, mut meter) = (SseParser::default(), Meter::default());
    let mut whole = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            meter.error = true;
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !is_sse {
            whole.extend_from_slice(&data);
            continue;
        }
        let now = Instant::now();
        parser.feed(&data, |e| {
            meter.seen(now, events::event(api, e.name, e.data))
        });
    }
    s.e2e = t0.elapsed().as_secs_f64();
    if !is_sse {
        // Not a stream: usage from the JSON body; no TTFT.
        let info = events::body(api, &whole);
        s.input_tokens = info.input.unwrap_or(0);
        s.output_tokens = info.output.unwrap_or(0);
        s.ok = status_ok && !whole.is_empty() && !info.error && !meter.error;
        return s;
    }
    s.input_tokens = meter.input.unwrap_or(0);
    s.output_tokens = meter.output.filter(|&n| n > 0).unwrap_or(meter.content);
    s.itl = meter.itl;
    s.ttft = meter.first.map(|f| (f - t0).as_secs_f64());
    if let Some(ttft) = s.ttft
        && s.output_tokens > 1
    {
        s.tpot = Some((s.e2e - ttft) / (s.output_tokens - 1) as f64);
    }
    s.ok = status_ok && meter.end && !meter.error;
    s
}
