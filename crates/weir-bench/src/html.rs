//! `weir bench --report FILE`: the run as one self-contained HTML page (inline CSS and SVG,
//! no script, nothing fetched), to open in a browser or attach to a ticket: the tables, the
//! TTFT and ITL distributions and TTFT over time of each run, and for a sweep the
//! throughput-against-latency curves with the SLO lines and the goodput of each level.

use std::fmt::Write;

use super::report::{Report, Stats};
use super::summary::{Document, Row};
use super::svg::{self, Chart, colour, esc};

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px}\
table{border-collapse:collapse;margin:8px 0}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td.text,th.text{text-align:left}\
.charts{display:flex;flex-wrap:wrap;gap:12px}\
svg{background:#fff;border:1px solid #ddd}\
svg text{font-size:12px;fill:#333}svg text.title{font-size:14px;font-weight:bold}\
svg text.no-data{font-size:18px;fill:#999}";

/// The whole page.
pub fn page(doc: &Document) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>weir bench: {model}</title><style>{STYLE}</style></head><body>\
         <h1>weir bench</h1><p class=\"target\">{api} API of <code>{url}</code>, \
         model <code>{model}</code></p>",
        model = esc(&doc.model),
        url = esc(&doc.url),
        api = format!("{:?}", doc.api).to_lowercase(),
    );
    let slo = doc.runs.first().and_then(|r| r.slo.as_ref());
    if let Some(rows) = &doc.sweep {
        s += &sweep_section(rows, slo.and_then(|s| s.ttft), slo.and_then(|s| s.itl));
    }
    for (i, r) in doc.runs.iter().enumerate() {
        s += &run_section(i, r);
    }
    s + "</body></html>\n"
}

/// Milliseconds with two decimals.
fn ms(v: f64) -> String {
    format!("{:.2}", v * 1e3)
}

/// A table row of cells (`text` cells are left-aligned).
fn row(cells: &[(&str, bool)], tag: &str) -> String {
    let mut s = String::from("<tr>");
    for (c, text) in cells {
        let class = if *text { " class=\"text\"" } else { "" };
        let _ = write!(s, "<{tag}{class}>{}</{tag}>", esc(c));
    }
    s + "</tr>"
}

/// The sweep's table and curves.
fn sweep_section(rows: &[Row], ttft_slo: Option<f64>, itl_slo: Option<f64>) -> String {
    let mut s = String::from("<h2>Sweep</h2><table class=\"sweep\">");
    let head = [
        "level",
        "req/s",
        "output tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "goodput req/s",
        "errors",
    ];
    s += &row(&head.map(|h| (h, false)), "th");
    for r in rows {
        let cells = [
            level(r),
            format!("{:.1}", r.request_throughput),
            format!("{:.0}", r.output_token_throughput),
            ms(r.ttft_p50),
            ms(r.ttft_p99),
            ms(r.itl_p50),
            ms(r.itl_p99),
            r.goodput.map_or_else(|| "-".into(), |g| format!("{g:.1}")),
            r.errors.to_string(),
        ];
        s += &row(&cells.each_ref().map(|c| (c.as_str(), false)), "td");
    }
    s += "</table><div class=\"charts\">";
    for (latency, slo) in [(Latency::Ttft, ttft_slo), (Latency::Itl, itl_slo)] {
        s += &sweep_curve(rows, latency, slo);
    }
    s += &goodput_bars(rows);
    s + "</div>"
}

/// A level's short name: its concurrency, or its load.
fn level(r: &Row) -> String {
    r.concurrency
        .map_or_else(|| r.load.clone(), |c| c.to_string())
}

/// The latencies a sweep draws against its throughput.
#[derive(Clone, Copy)]
enum Latency {
    Ttft,
    Itl,
}

impl Latency {
    /// The chart's id and class, the latency's name and the series colour.
    fn names(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Latency::Ttft => ("sweep-ttft", "ttft-p99", "TTFT p99", colour::SWEEP_TTFT),
            Latency::Itl => ("sweep-itl", "itl-p99", "ITL p99", colour::SWEEP_ITL),
        }
    }

    /// The level's value, in seconds.
    fn of(self, r: &Row) -> f64 {
        match self {
            Latency::Ttft => r.ttft_p99,
            Latency::Itl => r.itl_p99,
        }
    }
}

/// Output tokens per second against one latency, a point per level.
fn sweep_curve(rows: &[Row], latency: Latency, slo: Option<f64>) -> String {
    let (id, class, what, colour) = latency.names();
    let title = format!("Throughput against {what}");
    let y_label = format!("{what} (ms)");
    let chart = Chart {
        id,
        class: &format!("throughput-latency {class}"),
        title: &title,
        x_label: "output tokens/s",
        y_label: &y_label,
    };
    let points: Vec<(f64, f64, String)> = rows
        .iter()
        .filter(|r| r.requests > r.errors)
        .map(|r| (r.output_token_throughput, latency.of(r) * 1e3, level(r)))
        .collect();
    svg::curve(&chart, &points, colour, slo.map(|v| v * 1e3))
}

/// Goodput of each level, with `--slo`.
fn goodput_bars(rows: &[Row]) -> String {
    let chart = Chart {
        id: "sweep-goodput",
        class: "goodput",
        title: "Goodput per level",
        x_label: "level",
        y_label: "good requests/s",
    };
    let bars: Option<Vec<(String, f64)>> = rows
        .iter()
        .map(|r| r.goodput.map(|g| (level(r), g)))
        .collect();
    match bars {
        Some(bars) => svg::bars(&chart, &bars, colour::GOODPUT),
        None => svg::no_data(&chart, "no --slo given"),
    }
}

/// One run's tables and charts; `i` makes its charts' ids unique.
fn run_section(i: usize, r: &Report) -> String {
    let mut s = format!(
        "<h2>{}</h2><p>{} requests in {:.1} s, {} errors; {:.1} req/s, {:.0} output tok/s</p>",
        esc(&r.load),
        r.requests,
        r.duration_s,
        r.errors,
        r.request_throughput,
        r.output_token_throughput
    );
    s += &stats_table(r);
    s += &causes_table(r);
    s += "<div class=\"charts\">";
    let ms_of = |v: &[f64]| v.iter().map(|x| x * 1e3).collect::<Vec<_>>();
    let (ttft_id, itl_id, time_id) = (
        format!("ttft-histogram-{i}"),
        format!("itl-histogram-{i}"),
        format!("ttft-over-time-{i}"),
    );
    s += &svg::histogram(
        &Chart {
            id: &ttft_id,
            class: "ttft-histogram",
            title: "TTFT distribution",
            x_label: "TTFT (ms)",
            y_label: "requests",
        },
        &ms_of(&r.points.ttft),
        colour::TTFT,
    );
    s += &svg::histogram(
        &Chart {
            id: &itl_id,
            class: "itl-histogram",
            title: "ITL distribution",
            x_label: "gap between tokens (ms)",
            y_label: "gaps",
        },
        &ms_of(&r.points.itl),
        colour::ITL,
    );
    s += &ttft_over_time(&time_id, r);
    s + "</div>"
}

/// Each request's TTFT at its start time; failed requests as crosses on the time axis.
fn ttft_over_time(id: &str, r: &Report) -> String {
    let chart = Chart {
        id,
        class: "ttft-over-time",
        title: "TTFT over time (x: failed)",
        x_label: "request start (s into the run)",
        y_label: "TTFT (ms)",
    };
    let requests = &r.points.requests;
    let ok: Vec<(f64, f64)> = requests
        .iter()
        .filter(|p| p.ok)
        .filter_map(|p| p.ttft.map(|t| (p.start, t * 1e3)))
        .collect();
    let failed: Vec<f64> = requests.iter().filter(|p| !p.ok).map(|p| p.start).collect();
    svg::scatter(&chart, &ok, &failed, colour::TTFT_TIME)
}

/// Mean and percentiles of the run's latencies.
fn stats_table(r: &Report) -> String {
    let mut s = String::from("<table class=\"stats\">");
    let head = ["ms", "count", "mean", "p50", "p90", "p99", "max"];
    s += &row(&head.map(|h| (h, h == "ms")), "th");
    let quantities: [(&str, &Stats); 4] = [
        ("TTFT", &r.ttft),
        ("TPOT", &r.tpot),
        ("ITL", &r.itl),
        ("e2e", &r.e2e),
    ];
    for (name, st) in quantities {
        let cells = [
            name.to_owned(),
            st.count.to_string(),
            ms(st.mean),
            ms(st.p50),
            ms(st.p90),
            ms(st.p99),
            ms(st.max),
        ];
        let cells = cells.each_ref().map(|c| (c.as_str(), false));
        s += &row(&[[(name, true)].as_slice(), &cells[1..]].concat(), "td");
    }
    if let (Some(g), Some(n)) = (r.goodput, r.good_requests) {
        let _ = write!(
            s,
            "</table><p>goodput: {g:.1} req/s ({n} of {} requests met the SLOs)</p>",
            r.requests
        );
        return s;
    }
    s + "</table>"
}

/// The errors by cause, when there were any.
fn causes_table(r: &Report) -> String {
    if r.errors_by_cause.is_empty() {
        return String::new();
    }
    let mut s = String::from("<table class=\"causes\">");
    s += &row(&[("count", false), ("kind", true), ("cause", true)], "th");
    for c in &r.errors_by_cause {
        let (count, kind) = (c.count.to_string(), format!("{:?}", c.kind).to_lowercase());
        s += &row(&[(&count, false), (&kind, true), (&c.cause, true)], "td");
    }
    s + "</table>"
}
