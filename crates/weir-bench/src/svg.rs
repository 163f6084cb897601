//! The charts of `weir bench --report`, drawn as inline SVG in Rust: the page needs no script
//! and no network, and the same data always draws the same bytes. Each chart is an `<svg>`
//! with an id and a class naming it, axis labels, and its data as `rect`, `circle` and `path`
//! marks with the class `mark`; a chart with nothing to draw says "no data" instead.

use std::fmt::Write;

/// Series colours, one per kind of chart: a reader tells the charts apart at a glance, and a
/// test finds each chart in a screenshot of the page by its colour.
pub mod colour {
    /// Bars of each run's TTFT distribution.
    pub const TTFT: &str = "#1f77b4";
    /// Bars of each run's ITL distribution.
    pub const ITL: &str = "#ff7f0e";
    /// Points of each run's TTFT over time.
    pub const TTFT_TIME: &str = "#17becf";
    /// The sweep's throughput-against-TTFT curve.
    pub const SWEEP_TTFT: &str = "#8c564b";
    /// The sweep's throughput-against-ITL curve.
    pub const SWEEP_ITL: &str = "#e377c2";
    /// The sweep's goodput bars.
    pub const GOODPUT: &str = "#2ca02c";
    /// Crosses of failed requests.
    pub const FAILED: &str = "#d62728";
    /// Dashed SLO lines.
    pub const SLO: &str = "#9467bd";
}

use colour::{FAILED as FAILED_COLOUR, SLO as SLO_COLOUR};

/// Two charts side by side fit a window 1200 pixels wide.
const WIDTH: f64 = 540.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Bars of a histogram.
const BINS: usize = 40;

/// What names a chart and its axes.
pub struct Chart<'a> {
    pub id: &'a str,
    pub class: &'a str,
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
}

/// A linear map from data values onto pixels, over a domain widened to round ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    step: f64,
    from: f64,
    to: f64,
}

impl Scale {
    /// `lo..hi` onto `from..to`. A domain of one value (or none: `lo`, `hi` not finite) is
    /// widened around it, so that nothing divides by zero.
    pub fn new(lo: f64, hi: f64, from: f64, to: f64) -> Scale {
        let (mut lo, mut hi) = match (lo.is_finite(), hi.is_finite()) {
            (true, true) => (lo.min(hi), lo.max(hi)),
            _ => (0.0, 1.0),
        };
        if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let step = nice_step((hi - lo) / 5.0);
        lo = (lo / step).floor() * step;
        hi = (hi / step).ceil() * step;
        Scale {
            lo,
            hi,
            step,
            from,
            to,
        }
    }

    /// `0..hi` of a count onto `from..to`, in steps of whole numbers: no tick says 1.5 requests.
    pub fn counts(hi: f64, from: f64, to: f64) -> Scale {
        let s = Scale::new(0.0, hi, from, to);
        if s.step >= 1.0 && s.lo == 0.0 {
            return s;
        }
        Scale {
            lo: 0.0,
            hi: s.hi.ceil().max(1.0),
            step: 1.0,
            from,
            to,
        }
    }

    /// Where `v` is drawn.
    pub fn at(&self, v: f64) -> f64 {
        self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }

    /// Round values from `lo` to `hi`.
    pub fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(|i| self.lo + i as f64 * self.step).collect()
    }

    /// A tick's label, with as many decimals as the step needs.
    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!("{:.*}", decimals, v + 0.0)
    }
}

/// 1, 2 or 5 times a power of ten, near `rough`.
fn nice_step(rough: f64) -> f64 {
    let power = 10f64.powf(rough.log10().floor());
    let m = rough / power;
    let nice = if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// `s` as SVG/HTML text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The horizontal and vertical scales of the plot area.
fn plot(x: (f64, f64), y: (f64, f64)) -> (Scale, Scale) {
    (
        Scale::new(x.0, x.1, LEFT, WIDTH - RIGHT),
        Scale::new(y.0, y.1, HEIGHT - BOTTOM, TOP),
    )
}

/// The `<svg>` start tag and the title.
fn open(c: &Chart) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"{id}\" class=\"chart {class}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">\
         <title>{title}</title><text class=\"title\" x=\"{LEFT}\" y=\"22\">{title}</text>",
        id = esc(c.id),
        class = esc(c.class),
        title = esc(c.title),
    )
}

/// Axes with their ticks and labels.
fn axes(c: &Chart, x: &Scale, y: &Scale) -> String {
    let ticks: Vec<(f64, String)> = x.ticks().iter().map(|&t| (x.at(t), x.label(t))).collect();
    frame(c, &ticks, y)
}

/// The axis lines, the labels under the x axis at their positions, the y ticks and the
/// axis labels.
fn frame(c: &Chart, x_ticks: &[(f64, String)], y: &Scale) -> String {
    let (x0, y0) = (LEFT, HEIGHT - BOTTOM);
    let mut s = format!(
        "<g class=\"axes\"><path class=\"axis\" d=\"M{x0},{TOP}V{y0}H{}\" \
         fill=\"none\" stroke=\"#444\"/>",
        WIDTH - RIGHT
    );
    for (px, label) in x_ticks {
        let _ = write!(
            s,
            "<path d=\"M{px:.1},{y0}v5\" stroke=\"#444\"/><text class=\"tick\" \
             x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 18.0,
            esc(label)
        );
    }
    for t in y.ticks() {
        let py = y.at(t);
        let _ = write!(
            s,
            "<path d=\"M{x0},{py:.1}h-5\" stroke=\"#444\"/><path d=\"M{x0},{py:.1}H{}\" \
             stroke=\"#eee\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" \
             text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            x0 - 8.0,
            py + 4.0,
            y.label(t)
        );
    }
    let _ = write!(
        s,
        "<text class=\"axis-label x-label\" x=\"{:.1}\" y=\"{:.1}\" \
         text-anchor=\"middle\">{}</text><text class=\"axis-label y-label\" \
         transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text></g>",
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 10.0,
        esc(c.x_label),
        (TOP + HEIGHT - BOTTOM) / 2.0,
        esc(c.y_label)
    );
    s
}

/// A chart with nothing to draw: its frame and a note.
pub fn no_data(c: &Chart, note: &str) -> String {
    format!(
        "{}<text class=\"no-data\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></svg>",
        open(&Chart {
            class: &format!("{} no-data", c.class),
            ..*c
        }),
        WIDTH / 2.0,
        HEIGHT / 2.0,
        esc(note)
    )
}

/// Finite values only.
fn finite(values: &[f64]) -> Vec<f64> {
    values.iter().copied().filter(|v| v.is_finite()).collect()
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |m, v| match m {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// How many of `values` fall in each of `BINS` equal bins over `x`'s domain.
pub fn bins(values: &[f64], x: &Scale) -> Vec<usize> {
    let width = (x.hi - x.lo) / BINS as f64;
    let mut counts = vec![0; BINS];
    for v in values {
        let i = ((v - x.lo) / width).floor().clamp(0.0, (BINS - 1) as f64) as usize;
        counts[i] += 1;
    }
    counts
}

/// A histogram of `values`, one `rect` per bin that holds any.
pub fn histogram(c: &Chart, values: &[f64], colour: &str) -> String {
    let values = finite(values);
    let Some((lo, hi)) = min_max(values.iter().copied()) else {
        return no_data(c, "no data");
    };
    let x = Scale::new(lo, hi, LEFT, WIDTH - RIGHT);
    let counts = bins(&values, &x);
    let most = counts.iter().copied().max().unwrap_or(0) as f64;
    let y = Scale::counts(most, HEIGHT - BOTTOM, TOP);
    let mut s = open(c) + &axes(c, &x, &y);
    let width = (x.hi - x.lo) / BINS as f64;
    for (i, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
        let (left, right) = (
            x.at(x.lo + i as f64 * width),
            x.at(x.lo + (i + 1) as f64 * width),
        );
        let top = y.at(n as f64);
        let _ = write!(
            s,
            "<rect class=\"mark bar\" x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" \
             height=\"{:.1}\" fill=\"{colour}\" shape-rendering=\"crispEdges\"><title>{n}</title></rect>",
            (right - left - 1.0).max(1.0),
            y.at(0.0) - top
        );
    }
    s + "</svg>"
}

/// Points `(x, y)`; `failed` x positions are drawn as crosses on the x axis.
pub fn scatter(c: &Chart, points: &[(f64, f64)], failed: &[f64], colour: &str) -> String {
    let points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    let failed = finite(failed);
    let xs = points.iter().map(|p| p.0).chain(failed.iter().copied());
    let Some((x_lo, x_hi)) = min_max(xs) else {
        return no_data(c, "no data");
    };
    let y_hi = min_max(points.iter().map(|p| p.1)).map_or(1.0, |m| m.1);
    let (x, y) = plot((x_lo.min(0.0), x_hi), (0.0, y_hi));
    let mut s = open(c) + &axes(c, &x, &y);
    for (a, b) in &points {
        let _ = write!(
            s,
            "<circle class=\"mark point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
            x.at(*a),
            y.at(*b)
        );
    }
    if !failed.is_empty() {
        let mut d = String::new();
        let base = y.at(0.0);
        for a in &failed {
            let px = x.at(*a);
            let _ = write!(d, "M{:.1},{:.1}l8,8m0,-8l-8,8", px - 4.0, base - 4.0);
        }
        let _ = write!(
            s,
            "<path class=\"mark failed\" d=\"{d}\" stroke=\"{FAILED_COLOUR}\" stroke-width=\"2\"/>"
        );
    }
    s + "</svg>"
}

/// A line through labelled points, in their order, with a dashed threshold line when `slo`
/// is given (in the units of y).
pub fn curve(c: &Chart, points: &[(f64, f64, String)], colour: &str, slo: Option<f64>) -> String {
    let points: Vec<&(f64, f64, String)> = points
        .iter()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let Some((x_lo, x_hi)) = min_max(points.iter().map(|p| p.0)) else {
        return no_data(c, "no data");
    };
    let y_hi = min_max(points.iter().map(|p| p.1)).map_or(0.0, |m| m.1);
    let y_hi = slo
        .filter(|v| v.is_finite())
        .map_or(y_hi, |v| y_hi.max(v * 1.1));
    let (x, y) = plot((x_lo.min(0.0), x_hi), (0.0, y_hi));
    let mut s = open(c) + &axes(c, &x, &y);
    let d: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x.at(p.0), y.at(p.1)))
        .collect();
    let _ = write!(
        s,
        "<path class=\"mark line\" d=\"M{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
        d.join("L")
    );
    for p in &points {
        let (px, py) = (x.at(p.0), y.at(p.1));
        let _ = write!(
            s,
            "<circle class=\"mark point\" cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4\" fill=\"{colour}\"/>\
             <text class=\"point-label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            px + 6.0,
            py - 6.0,
            esc(&p.2)
        );
    }
    if let Some(v) = slo.filter(|v| v.is_finite()) {
        let py = y.at(v);
        let _ = write!(
            s,
            "<path class=\"slo\" d=\"M{LEFT},{py:.1}H{}\" stroke=\"{SLO_COLOUR}\" \
             stroke-dasharray=\"6 4\" stroke-width=\"2\"/><text class=\"slo-label\" \
             x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{SLO_COLOUR}\">SLO {}</text>",
            WIDTH - RIGHT,
            WIDTH - RIGHT - 4.0,
            py - 6.0,
            y.label(v)
        );
    }
    s + "</svg>"
}

/// One bar per labelled value.
pub fn bars(c: &Chart, values: &[(String, f64)], colour: &str) -> String {
    if values.is_empty() {
        return no_data(c, "no data");
    }
    let most = values
        .iter()
        .map(|v| v.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (_, y) = plot((0.0, 1.0), (0.0, most));
    let band = (WIDTH - LEFT - RIGHT) / values.len() as f64;
    let labels: Vec<(f64, String)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (LEFT + band * (i as f64 + 0.5), v.0.clone()))
        .collect();
    let mut s = open(c) + &frame(c, &labels, &y);
    for (i, (_, v)) in values.iter().enumerate() {
        let v = if v.is_finite() { *v } else { 0.0 };
        let top = y.at(v);
        let _ = write!(
            s,
            "<rect class=\"mark bar\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" \
             height=\"{:.1}\" fill=\"{colour}\" shape-rendering=\"crispEdges\"><title>{v:.1}</title></rect>",
            LEFT + band * (i as f64 + 0.2),
            band * 0.6,
            y.at(0.0) - top
        );
    }
    s + "</svg>"
}

#[cfg(test)]
mod tests {
    use super::colour::{GOODPUT as GOODPUT_COLOUR, TTFT as TTFT_COLOUR};
    use super::*;

    const C: Chart = Chart {
        id: "t",
        class: "test-chart",
        title: "TTFT <ms>",
        x_label: "ms",
        y_label: "requests",
    };

    #[test]
    fn scales_are_round_and_never_divide_by_zero() {
        let s = Scale::new(3.0, 97.0, 0.0, 100.0);
        assert_eq!((s.lo, s.hi), (0.0, 100.0));
        assert_eq!(s.ticks(), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(s.at(50.0), 50.0);
        let flipped = Scale::new(0.0, 10.0, 270.0, 40.0);
        assert_eq!((flipped.at(0.0), flipped.at(10.0)), (270.0, 40.0));
        for (lo, hi) in [
            (5.0, 5.0),
            (0.0, 0.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
        ] {
            let s = Scale::new(lo, hi, 0.0, 100.0);
            assert!(s.hi > s.lo, "{lo}..{hi}: {s:?}");
            assert!(s.ticks().iter().all(|t| s.at(*t).is_finite()));
        }
        assert_eq!(Scale::new(0.0, 0.5, 0.0, 1.0).label(0.1), "0.1");
        assert_eq!(
            Scale::new(0.0, 0.3, 0.0, 1.0).label(0.1),
            "0.10",
            "steps of 0.05"
        );
        assert_eq!(Scale::new(0.0, 2000.0, 0.0, 1.0).label(400.0), "400");
        assert_eq!(Scale::counts(2.0, 0.0, 1.0).ticks(), vec![0.0, 1.0, 2.0]);
        assert_eq!(Scale::counts(0.0, 0.0, 1.0).ticks(), vec![0.0, 1.0]);
        assert_eq!(
            Scale::counts(37.0, 0.0, 1.0).ticks(),
            (0..=8).map(|i| f64::from(i) * 5.0).collect::<Vec<_>>(),
        );
    }

    #[test]
    fn a_histogram_counts_every_value_once() {
        let values: Vec<f64> = (0..100).map(|i| 100.0 + f64::from(i % 10)).collect();
        let x = Scale::new(100.0, 109.0, 0.0, 1.0);
        assert_eq!(bins(&values, &x).iter().sum::<usize>(), 100);
        let svg = histogram(&C, &values, TTFT_COLOUR);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("id=\"t\" class=\"chart test-chart\""));
        assert!(svg.contains("<title>TTFT &lt;ms&gt;</title>"));
        assert_eq!(svg.matches("class=\"mark bar\"").count(), 10, "{svg}");
        assert!(svg.contains("class=\"axis-label x-label\""));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_or_broken_data_draws_no_data_not_nan() {
        for svg in [
            histogram(&C, &[], TTFT_COLOUR),
            histogram(&C, &[f64::NAN], TTFT_COLOUR),
            scatter(&C, &[], &[], TTFT_COLOUR),
            curve(&C, &[], TTFT_COLOUR, Some(0.2)),
            bars(&C, &[], GOODPUT_COLOUR),
        ] {
            assert!(svg.contains("class=\"chart test-chart no-data\""), "{svg}");
            assert!(svg.contains(">no data</text>"));
            assert!(!svg.contains("mark"));
        }
        // One value, or all zeros: drawn, with a widened scale.
        let one = histogram(&C, &[42.0], TTFT_COLOUR);
        assert_eq!(one.matches("class=\"mark bar\"").count(), 1);
        let zeros = bars(
            &C,
            &[("1".into(), 0.0), ("2".into(), f64::NAN)],
            GOODPUT_COLOUR,
        );
        assert_eq!(zeros.matches("class=\"mark bar\"").count(), 2);
        for svg in [one, zeros] {
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn scatter_curve_and_threshold() {
        let svg = scatter(&C, &[(0.5, 120.0), (1.5, 80.0)], &[1.0], TTFT_COLOUR);
        assert_eq!(svg.matches("<circle class=\"mark point\"").count(), 2);
        assert_eq!(svg.matches("class=\"mark failed\"").count(), 1);
        let points = vec![(100.0, 30.0, "1".to_owned()), (700.0, 90.0, "8".to_owned())];
        let svg = curve(&C, &points, TTFT_COLOUR, Some(200.0));
        assert_eq!(svg.matches("<circle class=\"mark point\"").count(), 2);
        assert!(svg.contains("class=\"mark line\""));
        assert!(svg.contains(">SLO 200</text>"), "{svg}");
        // The threshold is inside the plot: y of 200 is below the top.
        let y = Scale::new(0.0, 220.0, HEIGHT - BOTTOM, TOP);
        assert!(y.at(200.0) > TOP);
    }
}
