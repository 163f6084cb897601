//! The Prometheus text exposition format (0.0.4), read into samples.
//!
//! A small parser of our own rather than the `prometheus-parse` crate: `weir top` reads only
//! the samples (name, labels, value) of one exporter whose output it knows, and keys series
//! by their labels itself; that crate would bring `regex`, `chrono` and `lazy_static` and a
//! grouped model (histograms and summaries folded into their own types) that `weir top`
//! would take apart again. The whole grammar of a sample line is below, with its escapes.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Sorted by label name, so that the same series compares equal between scrapes.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The most samples kept from one exposition. A gateway at its 256 models, with a few
/// backends and two operations, writes under 200 000 samples of the series `weir top`
/// reads; beyond this the text is not a weir's, and holding it would only grow the view's
/// memory.
pub const MAX_SAMPLES: usize = 1_000_000;

/// Every sample of an exposition; the first malformed line fails the whole text, as a
/// Prometheus scrape does.
#[cfg(test)]
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    parse_keeping(text, |_| true)
}

/// The samples of an exposition whose metric name `keep` accepts, at most `MAX_SAMPLES`
/// of them. Lines of other metrics are skipped unread; a malformed line of a kept one
/// fails the whole text, as a Prometheus scrape does.
pub fn parse_keeping(text: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || !keep(metric_name(line)) {
            continue;
        }
        if out.len() == MAX_SAMPLES {
            return Err(format!("more than {MAX_SAMPLES} samples"));
        }
        out.push(sample(line).map_err(|e| format!("/metrics line {}: {e}", n + 1))?);
    }
    Ok(out)
}

/// The metric name that starts `line` (empty when it starts with anything else).
fn metric_name(line: &str) -> &str {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    &line[..end]
}

/// At most 40 characters of `s`, to quote in an error: a hostile line may be megabytes.
fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(40).collect();
    if p.len() < s.len() {
        p.push('…');
    }
    format!("{p:?}")
}

fn sample(line: &str) -> Result<Sample, String> {
    let name = metric_name(line);
    let name_end = name.len();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = read_labels(after, &mut labels)?;
    }
    labels.sort();
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = value
        .parse::<f64>()
        .map_err(|_| format!("bad value {}", preview(value)))?;
    // An optional timestamp may follow; anything after it is not the format.
    if fields.nth(1).is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads `name="value",...}` into `labels`; returns what follows the `}`.
fn read_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let (key, after) = s.split_once('=').ok_or("a label without '='")?;
        let key = key.trim();
        if key.is_empty() {
            return Err("an empty label name".into());
        }
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let (value, after) = quoted(after)?;
        labels.push((key.to_owned(), value));
        s = after.trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// The value of a quoted label up to its closing quote, unescaped (`\\`, `\"`, `\n`), and
/// what follows the quote.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, c)) => value.push(c),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("a label value without its closing quote".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_values_and_escapes() {
        let text = "# HELP x help\n# TYPE x counter\n\
            x_total 3\n\
            y{b=\"2\",a=\"q\\\"uote\\\\d\\nl\"} 1.5e3 1700000000000\n\
            h_bucket{le=\"+Inf\",m=\"a,b}c\",} +Inf\n\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].name.as_str(), s[0].value), ("x_total", 3.0));
        assert!(s[0].labels.is_empty());
        assert_eq!(s[1].labels[0], ("a".into(), "q\"uote\\d\nl".into()));
        assert_eq!(s[1].label("b"), Some("2"));
        assert_eq!(s[1].value, 1500.0);
        assert_eq!(s[2].label("m"), Some("a,b}c"));
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!(s[2].value.is_infinite());
    }

    #[test]
    fn only_kept_metrics_are_read_and_their_number_is_bounded() {
        let text = "keep{a=\"1\"} 1\nother{{{ not a sample\nkeep 2\nkeep_more 3\n";
        let s = parse_keeping(text, |n| n == "keep").unwrap();
        assert_eq!(s.iter().map(|s| s.value).collect::<Vec<_>>(), [1.0, 2.0]);
        let e = parse_keeping("keep x\n", |n| n == "keep").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let many = "keep 1\n".repeat(MAX_SAMPLES + 1);
        let e = parse_keeping(&many, |n| n == "keep").unwrap_err();
        assert!(e.contains("more than"), "{e}");
        assert_eq!(parse_keeping(&many, |_| false).unwrap(), []);
    }

    #[test]
    fn errors_quote_a_bounded_preview_of_the_line() {
        let long = format!("x {}", "9".repeat(10_000) + "z");
        let e = parse(&long).unwrap_err();
        assert!(e.len() < 100 && e.contains('…'), "{e}");
    }

    #[test]
    fn nan_is_a_value() {
        assert!(parse("g NaN").unwrap()[0].value.is_nan());
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "x",
            "x{a=\"1\"",
            "x{a=1} 2",
            "x{=\"1\"} 2",
            "x abc",
            "{a=\"1\"} 2",
            "x 1 2 3",
            "x{a=\"1\\",
        ] {
            let e = parse(&format!("ok 1\n{bad}")).unwrap_err();
            assert!(e.starts_with("/metrics line 2:"), "{bad}: {e}");
        }
    }
}
