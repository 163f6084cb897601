//! The OpenMetrics text exposition (what Prometheus asks for when it stores exemplars),
//! written from the registry's families with each histogram bucket's exemplar: the same
//! series and values as the classic format, in OpenMetrics 1.0's syntax (counters typed by
//! their family name without `_total`, exemplars after `#`, `# EOF` at the end).

use std::fmt::Write as _;

use prometheus::proto::{Metric, MetricFamily, MetricType};

use super::exemplars::{Exemplar, Exemplars};

/// Finds the exemplars of one histogram series: the family's name and the metric's labels.
pub trait Lookup {
    fn exemplars(&self, family: &str, metric: &Metric) -> Option<&Exemplars>;
}

/// Writes `families` as OpenMetrics text.
pub fn encode(families: &[MetricFamily], lookup: &impl Lookup) -> String {
    let mut out = String::with_capacity(32 * 1024);
    for f in families {
        let name = f.name();
        let (kind, family) = match f.get_field_type() {
            MetricType::COUNTER => match name.strip_suffix("_total") {
                Some(base) => ("counter", base),
                None => ("unknown", name),
            },
            MetricType::GAUGE => ("gauge", name),
            MetricType::HISTOGRAM => ("histogram", name),
            MetricType::SUMMARY => ("summary", name),
            MetricType::UNTYPED => ("unknown", name),
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        if !f.help().is_empty() {
            let _ = writeln!(out, "# HELP {family} {}", escape(f.help()));
        }
        for m in f.get_metric() {
            match f.get_field_type() {
                MetricType::COUNTER => sample(&mut out, name, m, &[], m.get_counter().value()),
                MetricType::GAUGE => sample(&mut out, name, m, &[], m.get_gauge().value()),
                MetricType::HISTOGRAM => histogram(&mut out, name, m, lookup.exemplars(name, m)),
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        let label = [("quantile", fmt_f64(q.quantile()))];
                        sample(&mut out, name, m, &label, q.value());
                    }
                    sample(&mut out, &format!("{name}_sum"), m, &[], s.sample_sum());
                    let count = s.sample_count() as f64;
                    sample(&mut out, &format!("{name}_count"), m, &[], count);
                }
                MetricType::UNTYPED => sample(&mut out, name, m, &[], m.untyped.value()),
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

fn histogram(out: &mut String, name: &str, m: &Metric, exemplars: Option<&Exemplars>) {
    let h = m.get_histogram();
    let bucket = format!("{name}_bucket");
    let buckets = h.get_bucket();
    for (i, b) in buckets.iter().enumerate() {
        let le = [("le", fmt_f64(b.upper_bound()))];
        labels_line(out, &bucket, m, &le);
        let _ = write!(out, " {}", b.cumulative_count());
        if let Some(e) = exemplars.and_then(|x| x.get(i)) {
            exemplar(out, &e);
        }
        out.push('\n');
    }
    // `+Inf`, whose count is the histogram's, unless the registry listed it already.
    if buckets.last().is_none_or(|b| b.upper_bound().is_finite()) {
        labels_line(out, &bucket, m, &[("le", "+Inf".into())]);
        let _ = write!(out, " {}", h.get_sample_count());
        if let Some(e) = exemplars.and_then(|x| x.get(x.bounds().len())) {
            exemplar(out, &e);
        }
        out.push('\n');
    }
    sample(
        out,
        &format!("{name}_count"),
        m,
        &[],
        h.get_sample_count() as f64,
    );
    sample(out, &format!("{name}_sum"), m, &[], h.get_sample_sum());
}

fn exemplar(out: &mut String, e: &Exemplar) {
    let mut trace = [0u8; 32];
    let mut span = [0u8; 16];
    let _ = hex::encode_to_slice(e.ids.trace_id, &mut trace);
    let _ = hex::encode_to_slice(e.ids.span_id, &mut span);
    let (trace, span) = (
        std::str::from_utf8(&trace).unwrap_or_default(),
        std::str::from_utf8(&span).unwrap_or_default(),
    );
    let _ = write!(
        out,
        " # {{trace_id=\"{trace}\",span_id=\"{span}\"}} {} {:.3}",
        fmt_f64(e.value),
        e.timestamp
    );
}

fn sample(out: &mut String, name: &str, m: &Metric, extra: &[(&str, String)], value: f64) {
    labels_line(out, name, m, extra);
    let _ = writeln!(out, " {}", fmt_f64(value));
}

/// `name{label="value",...}` with the metric's labels and `extra` after them.
fn labels_line(out: &mut String, name: &str, m: &Metric, extra: &[(&str, String)]) {
    out.push_str(name);
    let pairs = m.get_label();
    if pairs.is_empty() && extra.is_empty() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = pairs
        .iter()
        .map(|p| (p.name(), p.value()))
        .chain(extra.iter().map(|(n, v)| (*n, v.as_str())));
    for (n, v) in all {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{n}=\"{}\"", escape(v));
    }
    out.push('}');
}

/// A number as the classic format writes it (`1`, `0.25`, `+Inf`), so that a series is the
/// same whichever format it was scraped in.
fn fmt_f64(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// Escapes `\`, newlines and (in label values and OpenMetrics help text) `"`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}
