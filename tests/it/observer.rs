//! The observer against vLLM 0.32's own captures: every fixture stream split at every byte
//! boundary and in random chunkings must give the same bytes to the client and the same
//! measurements.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use proptest::prelude::*;
use weir::labels::{Api, Operation};
use weir::metrics::Metrics;

use crate::common::prom::value;
use weir::observe::{ObservedBody, Watch};
use weir::record::Exchange;
use weir::trace::RequestTrace;
use weir_sse::{SseParser, classify};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vllm-0.32.0")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const STREAMS: [&str; 4] = [
    "chat_stream_usage.sse",
    "chat_stream_continuous_usage.sse",
    "chat_stream_no_usage.sse",
    "completions_stream.sse",
];

/// What the parser makes of a stream, independent of how it was chunked.
#[derive(Debug, PartialEq)]
struct Summary {
    events: usize,
    content: usize,
    usage: Option<(u64, u64)>,
    finished: Vec<String>,
    done: bool,
    invalid: usize,
    data: Vec<Vec<u8>>,
}

fn summarise(chunks: &[&[u8]]) -> Summary {
    let mut p = SseParser::default();
    let mut s = Summary {
        events: 0,
        content: 0,
        usage: None,
        finished: vec![],
        done: false,
        invalid: 0,
        data: vec![],
    };
    for c in chunks {
        p.feed(c, |e| {
            let i = classify(e.data);
            s.events += 1;
            s.content += usize::from(i.content);
            if let Some(u) = i.usage {
                s.usage = Some((u.prompt_tokens, u.completion_tokens));
            }
            s.finished
                .extend(i.finished.iter().map(|f| f.1.to_string()));
            s.done |= i.done;
            s.invalid += usize::from(i.invalid);
            s.data.push(e.data.to_vec());
        });
    }
    assert!(p.at_boundary(), "stream must end on an event boundary");
    s
}

#[test]
fn fixtures_parse_as_vllm_sent_them() {
    let s = summarise(&[&fixture("chat_stream_usage.sse")]);
    assert_eq!(s.usage, Some((18, 32)));
    assert_eq!(s.finished, ["length"]);
    assert!(s.done);
    assert_eq!(s.invalid, 0);
    // Role chunk + 32 tokens (some detokenise to "") + usage chunk + [DONE].
    assert_eq!(s.events, 35);
    assert!(
        s.content <= 32 && s.content >= 28,
        "content events: {}",
        s.content
    );

    let s = summarise(&[&fixture("chat_stream_no_usage.sse")]);
    assert_eq!(s.usage, None);
    assert!(s.done);

    let s = summarise(&[&fixture("chat_stream_continuous_usage.sse")]);
    assert_eq!(s.usage, Some((18, 32)));

    let s = summarise(&[&fixture("completions_stream.sse")]);
    assert_eq!(s.usage, Some((4, 16)));
    assert!(s.content < 16, "empty text chunks are not content");

    for body in ["chat_nonstream.json", "completions_nonstream.json"] {
        let b = fixture(body);
        let i = classify(&b);
        assert!(i.content && !i.invalid, "{body}");
        assert_eq!(i.finished.len(), 1);
        assert!(i.usage.is_some());
    }
}

#[test]
fn every_two_way_split_gives_the_same_summary() {
    for name in STREAMS {
        let bytes = fixture(name);
        let whole = summarise(&[&bytes]);
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(summarise(&[a, b]), whole, "{name} split at {at}");
        }
    }
}

/// Splits `bytes` at the given cut points (sorted, deduplicated).
fn chunk<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        out.push(&bytes[prev..c]);
        prev = c;
    }
    out.push(&bytes[prev..]);
    out
}

proptest! {
    #[test]
    fn random_chunkings_give_the_same_summary(which in 0usize..4, cuts in proptest::collection::vec(any::<usize>(), 0..64)) {
        let bytes = fixture(STREAMS[which]);
        let whole = summarise(&[&bytes]);
        prop_assert_eq!(summarise(&chunk(&bytes, &cuts)), whole);
    }

    #[test]
    fn crlf_and_cr_streams_parse_like_lf(which in 0usize..4, cr_only in any::<bool>(), cuts in proptest::collection::vec(any::<usize>(), 0..32)) {
        let bytes = fixture(STREAMS[which]);
        let eol: &[u8] = if cr_only { b"\r" } else { b"\r\n" };
        let converted: Vec<u8> = bytes.iter().flat_map(|&b| if b == b'\n' { eol.to_vec() } else { vec![b] }).collect();
        prop_assert_eq!(summarise(&chunk(&converted, &cuts)), summarise(&[&bytes]));
    }
}

/// A streamed chat's record, as the proxy leaves it for the observer.
fn exchange(metrics: &Metrics, strip_usage: bool, timeouts: weir::config::Timeouts) -> Exchange {
    exchange_for(metrics, Api::ChatCompletions, strip_usage, timeouts)
}

/// A streamed request's record for `api`, as the proxy leaves it for the observer.
fn exchange_for(
    metrics: &Metrics,
    api: Api,
    strip_usage: bool,
    timeouts: weir::config::Timeouts,
) -> Exchange {
    let backend: Arc<str> = "sim".into();
    let now = tokio::time::Instant::now();
    metrics.in_flight().inc();
    let mut watch = Watch::new(now, api, timeouts, weir_sse::DEFAULT_MAX_LINE);
    (watch.stream, watch.strip_usage) = (true, strip_usage);
    Exchange {
        watch,
        request_id: "r".into(),
        method: http::Method::POST,
        path: Some(http::uri::PathAndQuery::from_static("/v1/chat/completions")),
        trace: RequestTrace::start(None, &http::HeaderMap::new(), Operation::Chat, now),
        model: Some("tiny-llama".into()),
        max_tokens: Some(32),
        backend: backend.clone(),
        series: Some(metrics.series(
            &metrics.model_label(Some("tiny-llama")),
            api.operation(),
            &backend,
        )),
        metrics: metrics.clone(),
        load: None,
        admitted: None,
        tenant: None,
        answer: None,
        otel: None,
        billing: Default::default(),
    }
}

fn sse_headers() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        "text/event-stream; charset=utf-8".parse().unwrap(),
    );
    h
}

/// Runs chunks through the body observer as the gateway does; returns what the client got
/// and the metrics text.
async fn observe(chunks: Vec<Bytes>, strip_usage: bool) -> (Vec<u8>, String) {
    let metrics = Metrics::new(vec!["tiny-llama".into()]);
    let ex = exchange(&metrics, strip_usage, weir::config::Timeouts::default());
    let upstream = Chunks(chunks.into());
    let body = ObservedBody::new(upstream, ex, &sse_headers(), false, None);
    let out = body
        .collect()
        .await
        .expect("infallible")
        .to_bytes()
        .to_vec();
    (out, String::from_utf8(metrics.render()).unwrap())
}

/// An upstream body that always has another frame ready (a backend faster than the
/// gateway): `first`, then `then` again and again.
struct Endless {
    first: Option<Bytes>,
    then: Bytes,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.first.take().unwrap_or_else(|| self.then.clone());
        Poll::Ready(Some(Ok(Frame::data(next))))
    }
}

#[tokio::test]
async fn deadlines_pass_even_when_the_backend_always_has_more() {
    let role = br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

"#;
    let token = br#"data: {"choices":[{"index":0,"delta":{"content":"x"}}]}

"#;
    let cases: [(&[u8], &str); 2] = [(b": busy\n\n", "first_token"), (token, "total")];
    for (event, kind) in cases {
        let metrics = Metrics::new(vec!["tiny-llama".into()]);
        let timeouts = weir::config::Timeouts {
            first_token: std::time::Duration::from_millis(50),
            total: std::time::Duration::from_millis(100),
            ..weir::config::Timeouts::default()
        };
        let ex = exchange(&metrics, false, timeouts);
        let upstream = Endless {
            first: Some(Bytes::from_static(role)),
            then: Bytes::copy_from_slice(event),
        };
        let body = ObservedBody::new(upstream, ex, &sse_headers(), false, None);
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), body.collect())
            .await
            .unwrap_or_else(|_| panic!("{kind}: the body never ended"))
            .expect("infallible")
            .to_bytes();
        let tail = String::from_utf8_lossy(&out[out.len() - 200..]).into_owned();
        assert!(tail.contains(&format!("({kind} timeout)")), "{tail}");
        assert!(tail.ends_with("data: [DONE]\n\n"), "{tail}");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert_eq!(value(&text, "weir_timeouts_total", &[("kind", kind)]), 1.0);
    }
}

/// An upstream body that yields the given chunks, one frame each.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// The bytes a client that did not ask for usage must get from a stream that has it: the
/// usage chunk removed and its `system_fingerprint` on the finish chunk, as vLLM does.
fn without_usage(stream: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(stream).unwrap();
    let mut events: Vec<String> = text.split_terminator("\n\n").map(str::to_string).collect();
    let usage_at = events
        .iter()
        .position(|e| e.contains("\"choices\":[],\"usage\""))
        .expect("usage chunk");
    let usage = events.remove(usage_at);
    let fp = usage
        .split("\"system_fingerprint\":")
        .nth(1)
        .unwrap()
        .trim_end_matches('}')
        .to_string();
    let finish = &mut events[usage_at - 1];
    assert!(finish.ends_with('}'));
    finish.pop();
    finish.push_str(&format!(",\"system_fingerprint\":{fp}}}"));
    events
        .iter()
        .flat_map(|e| [e.as_str(), "\n\n"])
        .collect::<String>()
        .into_bytes()
}

const LABELS: [(&str, &str); 3] = [
    ("backend", "sim"),
    ("gen_ai_operation_name", "chat"),
    ("gen_ai_request_model", "tiny-llama"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    LABELS.iter().chain(extra).copied().collect()
}

#[tokio::test]
async fn stripping_gives_the_client_what_vllm_sends_without_usage_at_every_split() {
    let stream = fixture("chat_stream_usage.sse");
    let expected = without_usage(&stream);
    // The shape matches vLLM's own capture without usage: fingerprint on the finish chunk.
    let no_usage = fixture("chat_stream_no_usage.sse");
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).into_owned();
        s[s.rfind("\"finish_reason\"").unwrap()..].to_string()
    };
    assert_eq!(tail(&expected), tail(&no_usage));

    for at in 0..=stream.len() {
        let (a, b) = stream.split_at(at);
        let chunks = vec![Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
        let (out, metrics) = observe(chunks, true).await;
        assert!(
            out == expected,
            "split at {at}:\n{}",
            String::from_utf8_lossy(&out)
        );
        if at % 61 != 0 {
            continue;
        }
        // The tokens are still counted from the removed chunk.
        assert_eq!(
            value(
                &metrics,
                "weir_tokens_total",
                &with(&[("gen_ai_token_type", "output")])
            ),
            32.0
        );
        assert_eq!(
            value(
                &metrics,
                "weir_requests_total",
                &with(&[("code", "2xx"), ("outcome", "ok")])
            ),
            1.0
        );
    }
}

#[tokio::test]
async fn without_stripping_bytes_pass_unchanged_in_the_same_frames() {
    for name in STREAMS {
        let stream = fixture(name);
        for at in (0..=stream.len()).step_by(7) {
            let (a, b) = stream.split_at(at);
            let chunks = vec![Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
            let (out, metrics) = observe(chunks, false).await;
            assert_eq!(out, stream, "{name} split at {at}");
            let ttft_count = value(
                &metrics,
                "gen_ai_server_time_to_first_token_seconds_count",
                &LABELS,
            );
            assert_eq!(ttft_count, 1.0, "{name}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn stripping_does_not_depend_on_chunking(cuts in proptest::collection::vec(any::<usize>(), 0..48)) {
        let stream = fixture("chat_stream_usage.sse");
        let chunks: Vec<Bytes> = chunk(&stream, &cuts).into_iter().map(Bytes::copy_from_slice).collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (out, _) = rt.block_on(observe(chunks, true));
        prop_assert_eq!(out, without_usage(&stream));
    }
}

/// Bytes a hostile backend might send, in pieces that look like SSE and JSON often enough to
/// reach every state of the parser.
fn hostile_chunk() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"data: "[..]),
        Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}"[..]),
        Just(&b"{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}"[..]),
        Just(&b"[DONE]"[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b"\n\n"[..]),
        Just(&b": keep-alive"[..]),
        Just(&b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"[..]),
    ];
    proptest::collection::vec(piece, 1..64).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn the_observer_holds_a_bounded_amount_for_any_stream(
        chunks in proptest::collection::vec(hostile_chunk(), 1..200),
        strip_usage in any::<bool>(),
    ) {
        const MAX_LINE: usize = 1024;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let worst = rt.block_on(async move {
            let metrics = Metrics::new(vec!["tiny-llama".into()]);
            let mut ex = exchange(&metrics, strip_usage, weir::config::Timeouts::default());
            ex.watch.max_sse_line = MAX_LINE;
            let chunks: Vec<Bytes> = chunks.into_iter().map(Bytes::from).collect();
            let mut body = ObservedBody::new(Chunks(chunks.into()), ex, &sse_headers(), false, None);
            let mut worst = 0;
            while let Some(frame) = body.frame().await {
                frame.expect("infallible");
                worst = worst.max(body.held_bytes());
            }
            worst
        });
        prop_assert!(worst <= 4 * MAX_LINE, "held {worst} bytes");
    }
}

/// Runs a capture through the observer for `api`, cut in the given places; returns what the
/// client got and the metrics text.
fn observe_api(api: Api, stream: &[u8], cuts: &[usize]) -> (Vec<u8>, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = Metrics::new(vec!["tiny-llama".into()]);
        let ex = exchange_for(&metrics, api, false, weir::config::Timeouts::default());
        let chunks: Vec<Bytes> = chunk(stream, cuts)
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect();
        let body = ObservedBody::new(Chunks(chunks.into()), ex, &sse_headers(), false, None);
        let out = body
            .collect()
            .await
            .expect("infallible")
            .to_bytes()
            .to_vec();
        (out, String::from_utf8(metrics.render()).unwrap())
    })
}

/// (content events, input, output, cache read) each capture must give. A token whose text
/// is empty sends no event (or an empty one): 16 tokens come in 15 and 14 deltas here.
const API_CAPTURES: [(Api, &str, f64, f64, f64, f64); 3] = [
    (
        Api::Responses,
        "responses_stream.sse",
        15.0,
        19.0,
        16.0,
        0.0,
    ),
    (Api::Messages, "messages_stream.sse", 14.0, 14.0, 16.0, 0.0),
    (
        Api::ChatCompletions,
        "chat_stream_usage_prompt_details.sse",
        7.0,
        46.0,
        8.0,
        0.0,
    ),
];

fn check_api_metrics(api: Api, name: &str, expect: (f64, f64, f64, f64), text: &str) {
    let (events, input, output, cached) = expect;
    let labels = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_request_model", "tiny-llama"),
    ];
    let with = |t: &'static str| [labels[0], labels[1], ("gen_ai_token_type", t)];
    let v = |metric: &str, l: &[(&str, &str)]| {
        crate::common::prom::sum(text, metric, l).unwrap_or(-1.0)
    };
    assert_eq!(
        v("gen_ai_server_time_to_first_token_seconds_count", &labels),
        1.0,
        "{name}"
    );
    assert_eq!(
        v("weir_time_to_first_answer_token_seconds_count", &labels),
        1.0,
        "{name}"
    );
    assert_eq!(
        v("weir_inter_token_latency_seconds_count", &labels),
        events - 1.0,
        "{name}"
    );
    assert_eq!(v("weir_tokens_total", &with("input")), input, "{name}");
    assert_eq!(v("weir_tokens_total", &with("output")), output, "{name}");
    assert_eq!(
        v("weir_tokens_total", &with("cache_read")),
        cached,
        "{name}"
    );
    let ok = [labels[0], labels[1], ("outcome", "ok")];
    assert_eq!(
        v("weir_requests_total", &ok),
        1.0,
        "{name} ({api:?}) ends well"
    );
}

#[test]
fn every_api_is_measured_from_its_own_events_and_passes_unchanged() {
    for (api, name, events, input, output, cached) in API_CAPTURES {
        let stream = fixture(name);
        let (out, text) = observe_api(api, &stream, &[]);
        assert_eq!(out, stream, "{name}: the bytes go on as they came");
        check_api_metrics(api, name, (events, input, output, cached), &text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_api_is_measured_the_same_however_its_stream_is_cut(
        which in 0usize..3,
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let (api, name, events, input, output, cached) = API_CAPTURES[which];
        let stream = fixture(name);
        let (out, text) = observe_api(api, &stream, &cuts);
        prop_assert_eq!(&out, &stream);
        check_api_metrics(api, name, (events, input, output, cached), &text);
    }
}
