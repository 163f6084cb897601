//! The table model's rows as text cells with the values they sort by, and the plain-text
//! table `weir top --once` prints: what both the terminal view and a script read.

use std::cmp::Ordering;

use crate::table::{BackendRow, ErrorRow, ModelRow, Quantiles, Tables, View};

/// One row as shown: a cell per column, and per column the number it sorts by (`None`
/// for text, and for a value not known, which sorts last either way).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub cells: Vec<String>,
    keys: Vec<Option<f64>>,
}

impl Tables {
    /// The rows of `view`, sorted on column `col`, descending or not.
    pub fn rows(&self, view: View, col: usize, descending: bool) -> Vec<Row> {
        let mut rows: Vec<Row> = match view {
            View::Models => self.models.iter().map(model).collect(),
            View::Backends => self.backends.iter().map(backend).collect(),
            View::Errors => self.errors.iter().map(error).collect(),
        };
        sort(&mut rows, col, descending);
        rows
    }
}

/// Sorts on column `col`: numbers (unknown ones last), else text; ties by the text cells
/// left to right, so that rows keep their places from one refresh to the next.
pub fn sort(rows: &mut [Row], col: usize, descending: bool) {
    rows.sort_by(|a, b| {
        let by_key = match (
            a.keys.get(col).copied().flatten(),
            b.keys.get(col).copied().flatten(),
        ) {
            (Some(x), Some(y)) => {
                let o = x.total_cmp(&y);
                if descending { o.reverse() } else { o }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => {
                let o = a.cells.get(col).cmp(&b.cells.get(col));
                if descending { o.reverse() } else { o }
            }
        };
        by_key.then_with(|| a.cells.cmp(&b.cells))
    });
}

/// `x` with `decimals` places, or in exponent form from ten million on: a number a
/// gateway did not write (a hostile or broken exporter) keeps its column narrow.
fn fixed(x: f64, decimals: usize) -> String {
    if x.abs() < 1e7 {
        format!("{x:.decimals$}")
    } else {
        format!("{x:.2e}")
    }
}

fn rate(x: f64) -> (String, Option<f64>) {
    let text = if x == 0.0 {
        "0".to_owned()
    } else if x < 10.0 {
        fixed(x, 2)
    } else if x < 100.0 {
        fixed(x, 1)
    } else {
        fixed(x, 0)
    };
    (text, Some(x))
}

/// Seconds in the unit that reads best: µs, ms or s.
pub fn secs(x: Option<f64>) -> (String, Option<f64>) {
    let text = match x {
        None => "-".to_owned(),
        Some(x) if x < 1e-3 => format!("{}µs", fixed(x * 1e6, 0)),
        Some(x) if x < 0.01 => format!("{}ms", fixed(x * 1e3, 2)),
        Some(x) if x < 1.0 => format!("{}ms", fixed(x * 1e3, 1)),
        Some(x) => format!("{}s", fixed(x, 2)),
    };
    (text, x)
}

fn pct(x: Option<f64>) -> (String, Option<f64>) {
    (
        x.map_or("-".to_owned(), |x| format!("{}%", fixed(x * 100.0, 1))),
        x,
    )
}

fn count(x: Option<u64>) -> (String, Option<f64>) {
    (
        x.map_or("-".to_owned(), |x| x.to_string()),
        x.map(|x| x as f64),
    )
}

/// The most characters of a name shown: a longer one is cut, with `…`.
const MAX_TEXT: usize = 48;

/// A name from a gateway (a model, a backend, a kind) as a cell: control characters,
/// which would move the cursor or recolour the terminal, shown as `?`, and cut to
/// `MAX_TEXT` characters.
fn text(s: &str) -> (String, Option<f64>) {
    let mut cell: String = s
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(MAX_TEXT).is_some() {
        cell.pop();
        cell.push('…');
    }
    (cell, None)
}

fn quantiles(q: &Quantiles) -> [(String, Option<f64>); 2] {
    [secs(q.p50), secs(q.p99)]
}

fn row(cells: impl IntoIterator<Item = (String, Option<f64>)>) -> Row {
    let (cells, keys) = cells.into_iter().unzip();
    Row { cells, keys }
}

fn model(m: &ModelRow) -> Row {
    let [t50, t99] = quantiles(&m.ttft);
    let [i50, i99] = quantiles(&m.itl);
    row([
        text(&m.model),
        rate(m.req_s),
        rate(m.conc),
        t50,
        t99,
        i50,
        i99,
        rate(m.tok_s),
        pct(m.good),
        pct(m.err),
    ])
}

fn backend(b: &BackendRow) -> Row {
    let [t50, t99] = quantiles(&b.ttft);
    let [i50, i99] = quantiles(&b.itl);
    row([
        text(&b.backend),
        text(&b.state),
        rate(b.req_s),
        count(b.in_flight),
        t50,
        t99,
        i50,
        i99,
        rate(b.tok_s),
        pct(b.err),
        count(b.waiting),
        count(b.running),
        pct(b.kv),
    ])
}

fn error(e: &ErrorRow) -> Row {
    let total = (fixed(e.total, 0), Some(e.total));
    row([
        text(e.what),
        text(&e.kind),
        text(&e.model),
        rate(e.per_s),
        total,
    ])
}

/// The width of each column: its widest cell or its title.
pub fn widths(view: View, rows: &[Row]) -> Vec<usize> {
    view.columns()
        .iter()
        .enumerate()
        .map(|(i, title)| {
            rows.iter()
                .filter_map(|r| r.cells.get(i))
                .map(|c| c.chars().count())
                .fold(title.len(), usize::max)
        })
        .collect()
}

/// The rows of `view` as a plain-text table: text to the left, numbers to the right,
/// columns two spaces apart.
pub fn plain(view: View, rows: &[Row]) -> String {
    let widths = widths(view, rows);
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let gap = if i == 0 { "" } else { "  " };
            if i < view.text_columns() {
                out.push_str(&format!("{gap}{cell:<w$}"));
            } else {
                out.push_str(&format!("{gap}{cell:>w$}"));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(view.columns().to_vec());
    for r in rows {
        out.push_str(&line(r.cells.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(names_and_rates: &[(&str, Option<f64>)]) -> Vec<Row> {
        names_and_rates
            .iter()
            .map(|(n, r)| row([text(n), r.map_or(secs(None), rate)]))
            .collect()
    }

    fn names(rows: &[Row]) -> Vec<&str> {
        rows.iter().map(|r| r.cells[0].as_str()).collect()
    }

    #[test]
    fn sorts_on_numbers_unknown_last_ties_by_name() {
        let mut r = rows(&[
            ("b", Some(1.0)),
            ("x", None),
            ("a", Some(1.0)),
            ("c", Some(5.0)),
        ]);
        sort(&mut r, 1, true);
        assert_eq!(names(&r), ["c", "a", "b", "x"]);
        sort(&mut r, 1, false);
        assert_eq!(names(&r), ["a", "b", "c", "x"]);
        sort(&mut r, 0, false);
        assert_eq!(names(&r), ["a", "b", "c", "x"]);
        sort(&mut r, 0, true);
        assert_eq!(names(&r), ["x", "c", "b", "a"]);
    }

    #[test]
    fn values_read_in_their_unit() {
        assert_eq!(secs(Some(0.000_25)).0, "250µs");
        assert_eq!(secs(Some(0.0042)).0, "4.20ms");
        assert_eq!(secs(Some(0.125)).0, "125.0ms");
        assert_eq!(secs(Some(2.5)).0, "2.50s");
        assert_eq!(secs(None).0, "-");
        assert_eq!(rate(0.0).0, "0");
        assert_eq!(rate(4.5678).0, "4.57");
        assert_eq!(rate(42.42).0, "42.4");
        assert_eq!(rate(1234.5).0, "1234");
        assert_eq!(pct(Some(0.995)).0, "99.5%");
    }

    #[test]
    fn names_lose_control_characters_and_are_cut() {
        assert_eq!(text("a\u{1b}[2Jb\n").0, "a?[2Jb?");
        let long = "m".repeat(MAX_TEXT + 1);
        let cut = text(&long).0;
        assert_eq!(cut.chars().count(), MAX_TEXT);
        assert!(cut.ends_with('…'));
        assert_eq!(text(&long[..MAX_TEXT]).0, long[..MAX_TEXT]);
    }

    #[test]
    fn numbers_no_gateway_writes_stay_narrow() {
        assert_eq!(rate(1e300).0, "1.00e300");
        assert_eq!(rate(f64::NAN).0, "NaN");
        assert_eq!(rate(f64::INFINITY).0, "inf");
        assert_eq!(secs(Some(1e300)).0, "1.00e300s");
        assert_eq!(secs(Some(-1e300)).0, "-1.00e306µs");
        assert_eq!(pct(Some(1e300)).0, "1.00e302%");
    }

    #[test]
    fn plain_tables_align_their_columns() {
        let t = Tables {
            errors: vec![ErrorRow {
                what: "timeout",
                kind: "first_token".into(),
                model: "-".into(),
                per_s: 0.5,
                total: 12.0,
            }],
            ..Tables::default()
        };
        let text = plain(View::Errors, &t.rows(View::Errors, 3, true));
        assert_eq!(
            text,
            "WHAT     KIND         MODEL  PER S  TOTAL\n\
             timeout  first_token  -       0.50     12\n"
        );
    }
}
