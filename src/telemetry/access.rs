//! The access log's line, at the end of the flow: one JSON object per finished request on
//! target `weir::access`, written by the JSON log subscriber like any other event (so
//! `RUST_LOG` filters it and it shares stdout's one writer), but serialized by serde from
//! one struct instead of field by field through `tracing`'s visitors: a quarter of the
//! instructions for a line of some 25 fields.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use std::io::IsTerminal as _;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};

use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::LogStyle;

/// The target of the access log.
pub const TARGET: &str = "weir::access";

/// The access log's fields, in the order they appear; absent values are left out. The line
/// around them (timestamp, level, message, target) is the same for every request: see
/// [`AccessLine::write_json`]. The derived serialization is what the line is held to.
#[derive(Serialize)]
pub struct AccessLine<'a> {
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    pub model: &'a str,
    pub model_label: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_model: Option<&'a str>,
    pub operation: &'a str,
    pub api: &'a str,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    pub backend: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<&'a str>,
    /// Why the gateway answered itself (`unauthorized`, `body_too_large`, `panic`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// What it told the client then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Time to the first answer (not reasoning) token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfat_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itl_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itl_max_ms: Option<f64>,
    pub e2e_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    pub tokens_estimated: bool,
    /// What the request cost in USD, when its model has a price (`[costs]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    pub finish_reasons: &'a str,
    pub degraded: bool,
    /// The body came compressed and was not read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unmeasured: bool,
}

impl AccessLine<'_> {
    /// Emits the line as the event `line` on the access target (built only if it is enabled).
    pub fn emit(&self) {
        tracing::info!(target: TARGET, line = %self);
    }
}

/// The line as one JSON object.
impl fmt::Display for AccessLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Into this thread's buffer, sized for a whole line and kept from line to line: no
        // allocation per request, and no growing (and copying) on the way.
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(LINE_CAPACITY));
        }
        let stamp = rfc3339_micros(SystemTime::now());
        LINE.with(|buffer| {
            let mut fresh = String::new();
            let mut kept = buffer.try_borrow_mut();
            let json = match kept.as_deref_mut() {
                Ok(json) => json,
                Err(_) => &mut fresh,
            };
            json.clear();
            self.write_json(json, stamp.as_str());
            let written = f.write_str(json);
            if json.capacity() > MAX_KEPT_CAPACITY {
                *json = String::with_capacity(LINE_CAPACITY);
            }
            written
        })
    }
}

/// `time` in RFC 3339 with microseconds, as `humantime::format_rfc3339_micros` writes it
/// (`2026-12-03T10:04:30.123456Z`); the date and the time to the second are formatted once a
/// second on each thread, the microseconds each time.
fn rfc3339_micros(time: SystemTime) -> Stamp {
    thread_local! {
        /// The second last formatted here, and its text up to the seconds' digits.
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let whole = || Stamp::Other(humantime::format_rfc3339_micros(time).to_string());
    let Ok(since) = time.duration_since(UNIX_EPOCH) else {
        return whole();
    };
    let secs = since.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        let text = text.to_string();
        // `YYYY-MM-DDTHH:MM:SSZ`; any other form (a year past 9999) is written whole.
        let Some(text) = text.as_bytes().get(..19).filter(|_| text.len() == 20) else {
            return whole();
        };
        prefix.copy_from_slice(text);
        SECOND.set((secs, prefix));
    }
    let mut out = [0u8; 27];
    out[..19].copy_from_slice(&prefix);
    out[19] = b'.';
    let micros = since.subsec_micros();
    for (i, div) in [100_000, 10_000, 1_000, 100, 10, 1].into_iter().enumerate() {
        out[20 + i] = b'0' + (micros / div % 10) as u8;
    }
    out[26] = b'Z';
    Stamp::Micros(out)
}

/// A timestamp's text.
enum Stamp {
    /// The usual form, ASCII.
    Micros([u8; 27]),
    Other(String),
}

impl Stamp {
    fn as_str(&self) -> &str {
        match self {
            Stamp::Micros(b) => std::str::from_utf8(b).unwrap_or_default(),
            Stamp::Other(s) => s,
        }
    }
}

/// `,"key":` for a key that needs no escaping, as one piece of static text.
macro_rules! key {
    ($k:literal) => {
        concat!(",\"", $k, "\":")
    };
}

impl AccessLine<'_> {
    /// The line: this line's fields, serialized as derived, inside the fields every log line
    /// of the subscriber has (timestamp, level, message; target at the end), with
    /// `timestamp` (RFC 3339, nothing to escape) written as it is: the keys as static text,
    /// each value written as serde_json writes it (a string with an escape by serde_json
    /// itself), and no map of fields in between (serde's `flatten` writes each key through
    /// its escaping serializer and each value through a map's machinery: some 11k
    /// instructions per line, about a third of it that way). The tests hold it to the
    /// derived serialization byte for byte.
    fn write_json(&self, out: &mut String, timestamp: &str) {
        out.push_str("{\"timestamp\":\"");
        out.push_str(timestamp);
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request finished\"");
        let mut w = Fields(out);
        w.text(key!("trace_id"), self.trace_id);
        w.text(key!("span_id"), self.span_id);
        w.text(key!("request_id"), self.request_id);
        w.text(key!("method"), self.method);
        w.text(key!("path"), self.path);
        w.some_text(key!("tenant"), self.tenant);
        w.text(key!("model"), self.model);
        w.text(key!("model_label"), self.model_label);
        w.some_text(key!("response_model"), self.response_model);
        w.text(key!("operation"), self.operation);
        w.text(key!("api"), self.api);
        w.value(key!("stream"), self.stream);
        w.some(key!("max_tokens"), self.max_tokens);
        w.text(key!("backend"), self.backend);
        w.value(key!("status"), u64::from(self.status));
        w.text(key!("outcome"), self.outcome);
        w.some_text(key!("timeout"), self.timeout);
        w.some_text(key!("reason"), self.reason);
        w.some_text(key!("error"), self.error);
        w.some(key!("ttft_ms"), self.ttft_ms);
        w.some(key!("ttfat_ms"), self.ttfat_ms);
        w.some(key!("tpot_ms"), self.tpot_ms);
        w.some(key!("itl_p50_ms"), self.itl_p50_ms);
        w.some(key!("itl_max_ms"), self.itl_max_ms);
        w.value(key!("e2e_ms"), self.e2e_ms);
        w.some(key!("input_tokens"), self.input_tokens);
        w.some(key!("output_tokens"), self.output_tokens);
        w.some(key!("cache_read_tokens"), self.cache_read_tokens);
        w.some(key!("reasoning_tokens"), self.reasoning_tokens);
        w.value(key!("tokens_estimated"), self.tokens_estimated);
        w.some(key!("cost_usd"), self.cost_usd);
        w.text(key!("finish_reasons"), self.finish_reasons);
        w.value(key!("degraded"), self.degraded);
        w.some(key!("unmeasured"), self.unmeasured.then_some(true));
        out.push_str(",\"target\":\"weir::access\"}");
    }
}

/// Writes `,"key":value` pairs into a line.
struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    fn value(&mut self, key: &str, value: impl Scalar) {
        self.0.push_str(key);
        value.write(self.0);
    }

    /// Left out when absent, as `skip_serializing_if` leaves it out.
    fn some(&mut self, key: &str, value: Option<impl Scalar>) {
        if let Some(v) = value {
            self.value(key, v);
        }
    }

    /// A string: copied between quotes when it has nothing to escape (ids, names, paths:
    /// nearly always), else escaped by serde_json.
    fn text(&mut self, key: &str, value: &str) {
        self.0.push_str(key);
        if needs_escape(value.as_bytes()) {
            // A string always serializes.
            self.0
                .push_str(&serde_json::to_string(value).unwrap_or_default());
            return;
        }
        self.0.push('"');
        self.0.push_str(value);
        self.0.push('"');
    }

    fn some_text(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.text(key, v);
        }
    }
}

/// A number or a boolean of the line, written as serde_json writes it: integers by `itoa`,
/// finite floats by `zmij` (serde_json's own formatters), any other float as `null`.
trait Scalar {
    fn write(self, out: &mut String);
}

impl Scalar for u64 {
    fn write(self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(self));
    }
}

impl Scalar for f64 {
    fn write(self, out: &mut String) {
        if self.is_finite() {
            out.push_str(zmij::Buffer::new().format_finite(self));
        } else {
            out.push_str("null");
        }
    }
}

impl Scalar for bool {
    fn write(self, out: &mut String) {
        out.push_str(if self { "true" } else { "false" });
    }
}

/// Whether JSON needs any of these bytes escaped: a control character, `"` or `\\`.
fn needs_escape(s: &[u8]) -> bool {
    !weir_sse::scan::plain(s)
}

/// Room for a typical access line (about 700 bytes) without growing.
const LINE_CAPACITY: usize = 1024;

/// A thread's line buffer grown past this (by a line with a long error text) is not kept.
const MAX_KEPT_CAPACITY: usize = 64 * 1024;

/// The log format: JSON lines, with the access line written as it was serialized, or
/// readable lines (the access line's fields as `key=value`).
pub struct LogFormat {
    json: Format<Json>,
    /// Set for readable lines.
    pretty: Option<Format<Full>>,
}

/// Fields whose value is JSON (a list, written with [`crate::telemetry::Json`]): a JSON line
/// carries them as JSON, not as a string holding JSON.
const JSON_FIELDS: [&str; 1] = ["models"];

impl LogFormat {
    /// One flat JSON object a line, without span context.
    pub fn new() -> LogFormat {
        let json = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        LogFormat { json, pretty: None }
    }

    /// JSON lines, or readable ones for [`LogStyle::Pretty`] (coloured on a terminal).
    pub fn styled(style: LogStyle) -> LogFormat {
        let pretty = (style == LogStyle::Pretty).then(|| {
            tracing_subscriber::fmt::format()
                .with_ansi(std::io::stdout().is_terminal())
                .with_target(true)
        });
        LogFormat {
            pretty,
            ..LogFormat::new()
        }
    }

    /// A JSON line with the [`JSON_FIELDS`] it has written as JSON.
    fn json_with_values<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: &mut Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let mut line = String::new();
        self.json.format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) else {
            return writer.write_str(&line);
        };
        for key in JSON_FIELDS {
            let parsed = v[key].as_str().and_then(|s| serde_json::from_str(s).ok());
            if let Some(parsed) = parsed {
                v[key] = parsed;
            }
        }
        writeln!(writer, "{v}")
    }
}

impl Default for LogFormat {
    fn default() -> Self {
        LogFormat::new()
    }
}

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() == TARGET {
            if self.pretty.is_some() {
                if let Some(json) = line_of(event) {
                    return writeln!(writer, "{}", readable(&json));
                }
            } else {
                // Serialized straight into the writer: no copy of the line per request.
                let mut line = WriteLine {
                    writer: &mut writer,
                    written: None,
                };
                event.record(&mut line);
                if let Some(written) = line.written {
                    written?;
                    return writeln!(writer);
                }
            }
        }
        if let Some(pretty) = &self.pretty {
            return pretty.format_event(ctx, writer, event);
        }
        if JSON_FIELDS.iter().any(|f| meta.fields().field(f).is_some()) {
            return self.json_with_values(ctx, &mut writer, event);
        }
        self.json.format_event(ctx, writer, event)
    }
}

/// The access event's line (its JSON), if it is one.
fn line_of(event: &Event<'_>) -> Option<String> {
    let mut line = LineField(None);
    event.record(&mut line);
    line.0
}

/// Writes the `line` field of an access event as it is.
struct WriteLine<'a, 'w> {
    writer: &'a mut Writer<'w>,
    written: Option<fmt::Result>,
}

impl Visit for WriteLine<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "line" && self.written.is_none() {
            self.written = Some(write!(self.writer, "{value:?}"));
        }
    }
}

/// Takes the `line` field of an access event.
struct LineField(Option<String>);

impl Visit for LineField {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "line" && self.0.is_none() {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// An access line for a person: `time LEVEL target: message` and the request's fields as
/// `key=value`, in the JSON line's order (a value with spaces or quotes is quoted).
pub fn readable(json: &str) -> String {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str(json) else {
        return json.to_owned();
    };
    let text = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let mut out = format!(
        "{}  {:>5} {}: {}",
        text("timestamp"),
        text("level"),
        text("target"),
        text("message")
    );
    for (k, v) in &m {
        if matches!(k.as_str(), "timestamp" | "level" | "target" | "message") {
            continue;
        }
        let v = match v {
            serde_json::Value::String(s) if s.is_empty() || s.contains([' ', '"', '=']) => {
                format!("{s:?}")
            }
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push(' ');
        out.push_str(k);
        out.push('=');
        out.push_str(&v);
    }
    out
}

/// A layer that keeps the first access line in its slot, in the log's style, and then does
/// nothing more than look at the slot.
pub struct KeepFirst {
    slot: &'static OnceLock<String>,
    pretty: bool,
}

impl KeepFirst {
    pub fn new(slot: &'static OnceLock<String>, style: LogStyle) -> KeepFirst {
        KeepFirst {
            slot,
            pretty: style == LogStyle::Pretty,
        }
    }
}

impl<S: Subscriber> Layer<S> for KeepFirst {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if self.slot.get().is_some() || event.metadata().target() != TARGET {
            return;
        }
        if let Some(json) = line_of(event) {
            let line = if self.pretty { readable(&json) } else { json };
            let _ = self.slot.set(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// What the log subscriber writes, in `style`, for the access line and for two other
    /// events.
    fn text(line: &AccessLine<'_>, style: LogStyle) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(LogFormat::styled(style))
            .with_writer(move || Sink(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            line.emit();
            tracing::info!(target: "weir::gateway", addr = "127.0.0.1:1", "weir is serving");
            let models = ["tiny-llama", "lora \"a\""];
            let models = crate::telemetry::Json(&models);
            tracing::info!(target: "weir::health", %models, "models discovered");
        });
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    fn written(line: &AccessLine<'_>) -> Vec<serde_json::Value> {
        text(line, LogStyle::Json)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The whole line as serde derives it, flattened: what `write_json` must write.
    #[derive(Serialize)]
    struct Line<'a> {
        timestamp: &'a str,
        level: &'static str,
        message: &'static str,
        #[serde(flatten)]
        fields: &'a AccessLine<'a>,
        target: &'static str,
    }

    fn derived(line: &AccessLine<'_>, timestamp: &str) -> String {
        serde_json::to_string(&Line {
            timestamp,
            level: "INFO",
            message: "request finished",
            fields: line,
            target: TARGET,
        })
        .unwrap()
    }

    fn written_by_hand(line: &AccessLine<'_>, timestamp: &str) -> String {
        let mut out = String::new();
        line.write_json(&mut out, timestamp);
        out
    }

    fn example() -> AccessLine<'static> {
        AccessLine {
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            span_id: "b7ad6b7169203331",
            request_id: "r-\"1\"",
            method: "POST",
            path: "/v1/chat/completions",
            tenant: None,
            model: "tiny-llama",
            model_label: "tiny-llama",
            response_model: Some("modèle \"ü\"\n"),
            operation: "chat",
            api: "chat_completions",
            stream: true,
            max_tokens: Some(32),
            backend: "sim",
            status: 200,
            outcome: "ok",
            timeout: None,
            reason: None,
            error: None,
            ttft_ms: Some(21.5),
            ttfat_ms: None,
            tpot_ms: None,
            itl_p50_ms: None,
            itl_max_ms: None,
            e2e_ms: 650.25,
            input_tokens: Some(94),
            output_tokens: Some(32),
            cache_read_tokens: None,
            reasoning_tokens: None,
            tokens_estimated: false,
            cost_usd: None,
            finish_reasons: "length",
            degraded: false,
            unmeasured: false,
        }
    }

    #[test]
    fn a_readable_line_has_the_fields_as_key_value_pairs() {
        let text = text(&example(), LogStyle::Pretty);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let access = lines[0];
        assert!(
            access.contains(
                "  INFO weir::access: request finished trace_id=0af7651916cd43dd8448eb211c80319c "
            ),
            "{access}"
        );
        for kv in [
            " request_id=\"r-\\\"1\\\"\"",
            " status=200 ",
            " ttft_ms=21.5 ",
            " finish_reasons=length ",
        ] {
            assert!(access.contains(kv), "{kv} in {access}");
        }
        assert!(!access.contains('{'), "{access}");
        // The other events in tracing's own readable format.
        assert!(
            lines[1].contains("weir::gateway: weir is serving"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("models=[\"tiny-llama\""), "{}", lines[2]);
    }

    #[test]
    fn the_access_line_is_one_flat_object_like_the_other_lines() {
        let line = example();

        let lines = written(&line);
        assert_eq!(lines.len(), 3);
        let (access, other) = (&lines[0], &lines[1]);
        // A list stays a list.
        assert_eq!(
            lines[2]["models"],
            serde_json::json!(["tiny-llama", "lora \"a\""])
        );
        let keys: Vec<&str> = access
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys[..4], ["timestamp", "level", "message", "trace_id"]);
        assert_eq!(keys.last(), Some(&"target"));
        // Absent values are left out, as tracing leaves out a `None`.
        for gone in [
            "tenant",
            "timeout",
            "reason",
            "error",
            "tpot_ms",
            "itl_p50_ms",
        ] {
            assert!(access.get(gone).is_none(), "{gone}");
        }
        assert_eq!(access["level"], "INFO");
        assert_eq!(access["request_id"], "r-\"1\"");
        assert_eq!(access["ttft_ms"], 21.5);
        // Escapes and text beyond ASCII come through whole.
        assert_eq!(access["response_model"], "modèle \"ü\"\n");
        assert_eq!(access["target"], "weir::access");
        // Every other event keeps the usual format, and both timestamps look alike.
        assert_eq!(other["message"], "weir is serving");
        assert_eq!(other["addr"], "127.0.0.1:1");
        let (a, o) = (
            access["timestamp"].as_str().unwrap(),
            other["timestamp"].as_str().unwrap(),
        );
        assert_eq!(a.len(), o.len(), "{a} / {o}");
        assert!(a.ends_with('Z') && a.as_bytes()[10] == b'T', "{a}");
    }

    #[test]
    fn bytes_to_escape_are_found_anywhere_in_a_string() {
        let plain = "abcdefghijklmnopqrstuvwxyz0123456789-é😀\u{7f}";
        assert!(!needs_escape(plain.as_bytes()));
        for bad in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..=plain.len() {
                if !plain.is_char_boundary(at) {
                    continue;
                }
                let s = format!("{}{bad}{}", &plain[..at], &plain[at..]);
                assert!(needs_escape(s.as_bytes()), "{s:?}");
            }
        }
        for b in 0..=255u8 {
            let s = [b'a', b'b', b'c', b'd', b'e', b'f', b'g', b, b'x'];
            assert_eq!(
                needs_escape(&s),
                b < 0x20 || b == b'"' || b == b'\\',
                "{b:#x}"
            );
            assert_eq!(needs_escape(&[b]), b < 0x20 || b == b'"' || b == b'\\');
        }
    }

    #[test]
    fn the_timestamp_is_humantimes() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let times = [
            at(0, 0),
            at(1_796_280_662, 999_999_999),
            at(1_796_280_662, 1_000),
            // The same second again (its text kept), then the next, then an earlier one.
            at(1_796_280_662, 123_456_789),
            at(1_796_280_663, 7),
            at(951_782_400, 500_000_000),
            at(253_402_300_799, 999_999_000),
            // Past year 9999 and before 1970: humantime's own text.
            at(253_402_300_800, 0),
            UNIX_EPOCH - Duration::from_secs(1),
        ];
        for t in times {
            let hand = std::panic::catch_unwind(|| rfc3339_micros(t).as_str().to_owned());
            let theirs =
                std::panic::catch_unwind(|| humantime::format_rfc3339_micros(t).to_string());
            match (hand, theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{t:?}"),
                (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "{t:?}: {a:?} / {b:?}"),
            }
        }
    }

    #[test]
    fn the_line_written_by_hand_is_the_derived_one() {
        let mut line = example();
        let ts = "2026-12-02T10:11:12.123456Z";
        assert_eq!(written_by_hand(&line, ts), derived(&line, ts));
        // Every optional field present, and floats with nothing to show after the point.
        (line.tenant, line.timeout, line.reason, line.error) =
            (Some("t\u{1}"), Some("idle"), Some("panic"), Some("a \\ b"));
        (
            line.ttfat_ms,
            line.tpot_ms,
            line.itl_p50_ms,
            line.itl_max_ms,
        ) = (Some(0.0), Some(1e-7), Some(123456789.125), Some(f64::NAN));
        (line.cache_read_tokens, line.reasoning_tokens, line.cost_usd) =
            (Some(0), Some(u64::MAX), Some(f64::INFINITY));
        line.unmeasured = true;
        assert_eq!(written_by_hand(&line, ts), derived(&line, ts));
    }

    fn text_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-z0-9/._-]{0,16}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é😀a]{0,8}",
        ]
    }

    fn float() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            any::<f64>(),
            (0u64..10_000_000).prop_map(|us| (us as f64).round() / 1e3),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_line_written_by_hand_is_the_derived_one(
            texts in proptest::collection::vec(text_value(), 14),
            opt_texts in proptest::collection::vec(proptest::option::of(text_value()), 5),
            floats in proptest::collection::vec(proptest::option::of(float()), 6),
            e2e in float(),
            ints in proptest::collection::vec(proptest::option::of(proptest::prelude::any::<u64>()), 5),
            status in proptest::prelude::any::<u16>(),
            flags in proptest::collection::vec(proptest::prelude::any::<bool>(), 4),
        ) {
            let line = AccessLine {
                trace_id: &texts[0],
                span_id: &texts[1],
                request_id: &texts[2],
                method: &texts[3],
                path: &texts[4],
                tenant: opt_texts[0].as_deref(),
                model: &texts[5],
                model_label: &texts[6],
                response_model: opt_texts[1].as_deref(),
                operation: &texts[7],
                api: &texts[8],
                stream: flags[0],
                max_tokens: ints[0],
                backend: &texts[9],
                status,
                outcome: &texts[10],
                timeout: opt_texts[2].as_deref(),
                reason: opt_texts[3].as_deref(),
                error: opt_texts[4].as_deref(),
                ttft_ms: floats[0],
                ttfat_ms: floats[1],
                tpot_ms: floats[2],
                itl_p50_ms: floats[3],
                itl_max_ms: floats[4],
                e2e_ms: e2e,
                input_tokens: ints[1],
                output_tokens: ints[2],
                cache_read_tokens: ints[3],
                reasoning_tokens: ints[4],
                tokens_estimated: flags[1],
                cost_usd: floats[5],
                finish_reasons: &texts[11],
                degraded: flags[2],
                unmeasured: flags[3],
            };
            let ts = &texts[12];
            // The timestamp is written as it is: RFC 3339 needs no escaping.
            let ts = if ts.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') { ts.as_str() } else { "2026-12-02T10:11:12.123456Z" };
            proptest::prop_assert_eq!(written_by_hand(&line, ts), derived(&line, ts));
        }
    }
}
