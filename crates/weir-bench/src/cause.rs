//! Why a request failed, in words a person can act on (`connection refused (host:port)`,
//! `HTTP 404: The model `x` does not exist. ...`, a timeout, a broken stream), and the bounded
//! tally of those causes that a run reports.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::time::Duration;

use serde::Serialize;

/// The causes a run reports by name; rarer ones are summed under one `other` entry, so that
/// a backend answering a different message to every request cannot flood the report.
pub const MAX_CAUSES: usize = 20;
/// The longest message quoted from a backend's answer, in characters.
const MAX_MESSAGE: usize = 160;

/// The family a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No connection: refused, timed out, no such host.
    Connect,
    /// The answer's status was not 2xx.
    Http,
    /// No end within `--timeout`.
    Timeout,
    /// A 2xx answer whose body failed: an error event, a broken or unfinished stream.
    Stream,
    /// The request failed otherwise (e.g. the connection closed before an answer).
    Request,
    /// The causes beyond [`MAX_CAUSES`].
    Other,
}

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    /// One short line: what went wrong, with the backend's own message when it gave one.
    pub cause: String,
}

impl Failure {
    fn new(kind: Kind, cause: impl Into<String>) -> Failure {
        Failure {
            kind,
            cause: cause.into(),
        }
    }

    /// The client could not get an answer head from `authority` (`host:port`).
    pub fn client(e: &hyper_util::client::legacy::Error, authority: &str) -> Failure {
        let io = io_cause(e);
        if e.is_connect() {
            let what = match io.map(std::io::Error::kind) {
                Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
                Some(std::io::ErrorKind::TimedOut) => "connect timed out".to_owned(),
                _ => chain(e),
            };
            return Failure::new(Kind::Connect, format!("{what} ({authority})"));
        }
        Failure::new(Kind::Request, format!("request failed: {}", chain(e)))
    }

    /// A non-2xx answer, quoting the message of its body when it has one.
    pub fn status(status: http::StatusCode, body: &[u8]) -> Failure {
        let cause = match error_message(body) {
            Some(m) => format!("HTTP {}: {m}", status.as_u16()),
            None => format!("HTTP {status}"),
        };
        Failure::new(Kind::Http, cause)
    }

    /// No end within `limit`; `phase` says where the request was (e.g. `mid-stream`).
    pub fn timeout(limit: Duration, phase: &str) -> Failure {
        let limit = humantime::format_duration(limit);
        Failure::new(Kind::Timeout, format!("timeout after {limit} {phase}"))
    }

    /// A 2xx answer whose body failed or reported an error.
    pub fn stream(cause: impl Into<String>) -> Failure {
        Failure::new(Kind::Stream, cause)
    }

    /// An error event (or a JSON body reporting an error) inside a 2xx answer.
    pub fn error_event(what: &str, data: &[u8]) -> Failure {
        match error_message(data) {
            Some(m) => Failure::stream(format!("{what}: {m}")),
            None => Failure::stream(what),
        }
    }

    /// The body broke while being read.
    pub fn body(e: &(dyn StdError + 'static)) -> Failure {
        Failure::stream(format!("body read error: {}", chain(e)))
    }
}

/// The first I/O error among `e`'s causes.
fn io_cause<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// `e` and its causes, `: `-joined (hyper's own messages are terse: `client error (Connect)`).
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = e.source();
    }
    shorten(&parts.join(": "))
}

/// The error message of an answer's body: OpenAI's `{"error":{"message":..}}`, Anthropic's
/// `{"type":"error","error":{"message":..}}`, vLLM's `{"error":"Unauthorized"}` and
/// Responses `error` event (`{"type":"error","message":..}`), `response.failed`
/// (`response.error.message`), FastAPI's `{"detail":..}`, or the first line of a text body.
pub fn error_message(body: &[u8]) -> Option<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return text.lines().map(shorten).find(|l| !l.is_empty());
    };
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(shorten);
    let detail = |v: &serde_json::Value| match v {
        serde_json::Value::Array(items) => items.first().and_then(|i| text(&i["msg"])),
        other => text(other),
    };
    text(&v["error"]["message"])
        .or_else(|| text(&v["error"]))
        .or_else(|| text(&v["response"]["error"]["message"]))
        .or_else(|| text(&v["message"]))
        .or_else(|| detail(&v["detail"]))
}

/// One line of at most [`MAX_MESSAGE`] characters, with no control characters: a hostile
/// answer's bytes end up on a terminal, where an escape sequence would act.
fn shorten(s: &str) -> String {
    let printable: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = printable.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// How often one cause was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CauseCount {
    pub kind: Kind,
    pub cause: String,
    pub count: usize,
}

/// The causes of `failures`, most frequent first, at most [`MAX_CAUSES`] of them plus one
/// `other` entry summing the rest.
pub fn tally<'a>(failures: impl Iterator<Item = &'a Failure>) -> Vec<CauseCount> {
    let mut counts: HashMap<(Kind, &str), usize> = HashMap::new();
    for f in failures {
        *counts.entry((f.kind, f.cause.as_str())).or_default() += 1;
    }
    let mut all: Vec<CauseCount> = counts
        .into_iter()
        .map(|((kind, cause), count)| CauseCount {
            kind,
            cause: cause.to_owned(),
            count,
        })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
    if all.len() > MAX_CAUSES {
        let rest = all.split_off(MAX_CAUSES);
        all.push(CauseCount {
            kind: Kind::Other,
            cause: format!("{} other causes", rest.len()),
            count: rest.iter().map(|c| c.count).sum(),
        });
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vllm-0.32.0"
    );

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    #[test]
    fn messages_of_every_error_shape_vllm_answers() {
        let cases = [
            (
                "err_unknown_model.body",
                "The model `no-such-model` does not exist. Valid aliases: tiny-llama.",
            ),
            (
                "err_messages_unknown_model.body",
                "The model `nope` does not exist. Valid aliases: tiny-llama.",
            ),
            ("err_not_found_route.body", "Not Found"),
            ("err_wrong_method.body", "Method Not Allowed"),
        ];
        for (file, message) in cases {
            assert_eq!(
                error_message(&fixture(file)).as_deref(),
                Some(message),
                "{file}"
            );
        }
        // Pydantic's multi-line message becomes one line.
        let m = error_message(&fixture("err_missing_messages.body")).unwrap();
        assert!(
            m.starts_with("1 validation error: {'type': 'missing'"),
            "{m}"
        );
        for (body, message) in [
            (&br#"{"error":"Unauthorized"}"#[..], "Unauthorized"),
            (
                br#"{"type":"error","code":null,"message":"EngineCore failed","param":null}"#,
                "EngineCore failed",
            ),
            (
                br#"{"type":"response.failed","response":{"error":{"message":"out of blocks"}}}"#,
                "out of blocks",
            ),
            (
                br#"{"detail":[{"loc":["body"],"msg":"field required"}]}"#,
                "field required",
            ),
            (
                b"\n  upstream connect error\nmore",
                "upstream connect error",
            ),
        ] {
            assert_eq!(error_message(body).as_deref(), Some(message));
        }
        assert_eq!(error_message(b""), None);
        assert_eq!(error_message(br#"{"choices":[]}"#), None);
    }

    #[test]
    fn a_status_quotes_its_message_cut_short() {
        let f = Failure::status(
            http::StatusCode::NOT_FOUND,
            &fixture("err_unknown_model.body"),
        );
        assert_eq!(f.kind, Kind::Http);
        assert_eq!(
            f.cause,
            "HTTP 404: The model `no-such-model` does not exist. Valid aliases: tiny-llama."
        );
        let f = Failure::status(http::StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(f.cause, "HTTP 503 Service Unavailable");
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "é".repeat(500));
        let f = Failure::status(http::StatusCode::BAD_REQUEST, long.as_bytes());
        assert_eq!(f.cause, format!("HTTP 400: {}…", "é".repeat(MAX_MESSAGE)));
        let f = Failure::timeout(Duration::from_millis(300), "mid-stream");
        assert_eq!(
            (f.kind, f.cause.as_str()),
            (Kind::Timeout, "timeout after 300ms mid-stream")
        );
    }

    #[test]
    fn hostile_bodies_give_one_short_printable_line() {
        let bodies: [Vec<u8>; 4] = [
            vec![b'x'; 64 * 1024],
            (0..=255u8).cycle().take(64 * 1024).collect(),
            b"\x1b]0;owned\x07\x1b[2Jcleared\r\nsecond line".to_vec(),
            format!(
                r#"{{"error":{{"message":"{}\u001b[31m"}}}}"#,
                "ü".repeat(70_000)
            )
            .into_bytes(),
        ];
        for body in &bodies {
            let f = Failure::status(http::StatusCode::INTERNAL_SERVER_ERROR, body);
            let quoted = f.cause.strip_prefix("HTTP 500: ").unwrap_or(&f.cause);
            assert!(quoted.chars().count() <= MAX_MESSAGE + 1, "{}", f.cause);
            assert!(!f.cause.chars().any(char::is_control), "{:?}", f.cause);
        }
        let f = Failure::status(http::StatusCode::BAD_GATEWAY, &bodies[2]);
        assert_eq!(f.cause, "HTTP 502: ]0;owned [2Jcleared");
    }

    #[tokio::test]
    async fn a_refused_connect_names_the_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let authority = format!("127.0.0.1:{port}");
        let e = client
            .get(format!("http://{authority}/").parse().unwrap())
            .await
            .unwrap_err();
        let f = Failure::client(&e, &authority);
        assert_eq!(f.kind, Kind::Connect);
        assert_eq!(f.cause, format!("connection refused ({authority})"));
    }

    #[test]
    fn the_tally_is_bounded_and_most_frequent_first() {
        let mut failures = vec![Failure::stream("stream ended without its end event"); 3];
        failures.extend((0..30).map(|i| {
            Failure::status(http::StatusCode::BAD_REQUEST, format!("bad {i}").as_bytes())
        }));
        failures.push(Failure::stream("stream ended without its end event"));
        let t = tally(failures.iter());
        assert_eq!(t.len(), MAX_CAUSES + 1);
        assert_eq!(
            t[0],
            CauseCount {
                kind: Kind::Stream,
                cause: "stream ended without its end event".into(),
                count: 4
            }
        );
        let other = &t[MAX_CAUSES];
        assert_eq!((other.kind, other.count), (Kind::Other, 11));
        assert_eq!(other.cause, "11 other causes");
        assert_eq!(t.iter().map(|c| c.count).sum::<usize>(), failures.len());
        assert!(tally([].iter()).is_empty());
    }
}
