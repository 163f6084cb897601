//! What happened between two scrapes: per-second rates of counters and quantiles of the
//! observations a histogram took in between, summed over every gateway watched.

use std::collections::{BTreeMap, HashMap};

use crate::expo::Sample;

/// How much a counter grew between two scrapes. One that went down was reset (its gateway
/// restarted), so all of its present value is new, as Prometheus's `rate()` takes it; a
/// series missing from the first scrape was made since, from zero.
pub fn increase(prev: Option<f64>, cur: f64) -> f64 {
    match prev {
        Some(p) if cur >= p => cur - p,
        _ => cur,
    }
}

/// The values of one scrape by series: its name and labels.
type Values<'a> = HashMap<(&'a str, &'a [(String, String)]), f64>;

/// Whether a cumulative series went down between the scrapes: the gateway restarted in
/// between, and every series of the latest scrape counts from zero. Taken for the whole
/// scrape rather than series by series (as `increase` alone would), so that a histogram's
/// buckets, of which some happen to stand higher after the restart than before, stay
/// consistent with each other and with its `+Inf`.
fn restarted(prev: &Values, cur: &[Sample]) -> bool {
    cur.iter().filter(|s| cumulative(&s.name)).any(|s| {
        prev.get(&(s.name.as_str(), s.labels.as_slice()))
            .is_some_and(|p| s.value < *p)
    })
}

/// Whether series `name` only ever grows while its process lives: a counter, or a
/// histogram's buckets, count or sum of non-negative observations.
fn cumulative(name: &str) -> bool {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// One gateway's two latest scrapes.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub prev: &'a [Sample],
    pub cur: &'a [Sample],
    /// Seconds between the two.
    pub secs: f64,
}

/// The windows of every gateway scraped twice in a row, read together.
#[derive(Debug, Default)]
pub struct Windows<'a> {
    parts: Vec<(Window<'a>, Values<'a>)>,
}

/// Cumulative bucket counts by upper bound (`le`), ascending, `+Inf` last.
pub type Buckets = Vec<(f64, f64)>;

impl<'a> Windows<'a> {
    pub fn new(windows: impl IntoIterator<Item = Window<'a>>) -> Windows<'a> {
        let parts = windows
            .into_iter()
            .map(|w| {
                let mut prev: Values = w
                    .prev
                    .iter()
                    .map(|s| ((s.name.as_str(), s.labels.as_slice()), s.value))
                    .collect();
                if restarted(&prev, w.cur) {
                    prev.clear();
                }
                (w, prev)
            })
            .collect();
        Windows { parts }
    }

    /// Every series of `name` with its increase and its window's length, over all windows.
    fn increases(&self, name: &'a str) -> impl Iterator<Item = (&'a Sample, f64, f64)> + '_ {
        self.parts.iter().flat_map(move |(w, prev)| {
            w.cur.iter().filter(move |s| s.name == name).map(move |s| {
                let p = prev.get(&(s.name.as_str(), s.labels.as_slice())).copied();
                (s, increase(p, s.value), w.secs)
            })
        })
    }

    /// Per-second increase of the series of `name`, summed by the key `by` gives each
    /// series (`None`: left out).
    pub fn rate_by<K: Ord>(
        &self,
        name: &'a str,
        by: impl Fn(&Sample) -> Option<K>,
    ) -> BTreeMap<K, f64> {
        let mut out = BTreeMap::new();
        for (s, inc, secs) in self.increases(name) {
            if let Some(k) = by(s) {
                *out.entry(k).or_insert(0.0) += if secs > 0.0 { inc / secs } else { 0.0 };
            }
        }
        out
    }

    /// The buckets of histogram `base` filled between the scrapes, merged by `by`.
    ///
    /// Series merge bound by bound. Gateways with other SLO thresholds have other bounds;
    /// a bound not every merged series has is left out, so the merge stays exact, coarser.
    pub fn buckets_by<K: Ord + Clone>(
        &self,
        bucket_name: &'a str,
        by: impl Fn(&Sample) -> Option<K>,
    ) -> BTreeMap<K, Buckets> {
        // Per key and bound (its bits: f64 is not Ord): the sum and how many series had it.
        let mut merged: BTreeMap<K, HashMap<u64, (f64, u32)>> = BTreeMap::new();
        for (s, inc, _) in self.increases(bucket_name) {
            let (Some(k), Some(le)) = (by(s), s.label("le").and_then(|v| v.parse::<f64>().ok()))
            else {
                continue;
            };
            let e = merged
                .entry(k)
                .or_default()
                .entry(le.to_bits())
                .or_default();
            e.0 += inc;
            e.1 += 1;
        }
        merged
            .into_iter()
            .map(|(k, bounds)| {
                let series = bounds.get(&f64::INFINITY.to_bits()).map_or(0, |e| e.1);
                let mut b: Buckets = bounds
                    .into_iter()
                    .filter(|(_, (_, n))| *n == series)
                    .map(|(le, (c, _))| (f64::from_bits(le), c))
                    .collect();
                b.sort_by(|x, y| x.0.total_cmp(&y.0));
                (k, b)
            })
            .collect()
    }
}

/// The `q`-quantile of cumulative `buckets`, as Prometheus's `histogram_quantile`
/// computes it: the bucket holding the rank is found and the value interpolated linearly
/// within it (from 0 for the first bucket); a rank in `+Inf` gives the highest finite
/// bound. `None` when the buckets hold no observation.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last().filter(|b| b.0.is_infinite())?.1;
    if total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        // Cumulative counts taken at slightly different moments may dip: keep them rising.
        let count = count.max(below);
        if count >= rank && count > below {
            if le.is_infinite() {
                return Some(lower);
            }
            if lower == 0.0 && le <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expo::parse;

    #[test]
    fn a_reset_counter_counts_its_whole_value() {
        assert_eq!(increase(Some(5.0), 8.0), 3.0);
        assert_eq!(increase(Some(5.0), 2.0), 2.0);
        assert_eq!(increase(None, 4.0), 4.0);
    }

    #[test]
    fn a_restarted_gateway_counts_every_series_from_zero() {
        // Before: 100 observations, 3 of them up to 0.1. After the restart: 6, 5 up to 0.1.
        // The 0.1 bucket stands higher than before, yet all 5 are new.
        let prev =
            parse(&(h("x", &[("0.1", 3.0), ("+Inf", 100.0)]) + "r_total{m=\"x\"} 50\n")).unwrap();
        let cur =
            parse(&(h("x", &[("0.1", 5.0), ("+Inf", 6.0)]) + "r_total{m=\"x\"} 60\n")).unwrap();
        let w = Windows::new([Window {
            prev: &prev,
            cur: &cur,
            secs: 2.0,
        }]);
        let model = |s: &Sample| s.label("m").map(str::to_owned);
        assert_eq!(
            w.buckets_by("t_bucket", model)["x"],
            vec![(0.1, 5.0), (f64::INFINITY, 6.0)]
        );
        assert_eq!(
            w.rate_by("r_total", model)["x"],
            30.0,
            "60 since the restart, in 2 s"
        );
    }

    #[test]
    fn gauges_going_down_are_no_restart() {
        let prev = parse("g{m=\"x\"} 9\nr_total{m=\"x\"} 10\n").unwrap();
        let cur = parse("g{m=\"x\"} 1\nr_total{m=\"x\"} 14\n").unwrap();
        let w = Windows::new([Window {
            prev: &prev,
            cur: &cur,
            secs: 1.0,
        }]);
        let model = |s: &Sample| s.label("m").map(str::to_owned);
        assert_eq!(w.rate_by("r_total", model)["x"], 4.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 10 observations: 4 up to 0.1, 4 more up to 0.2, 2 more up to 0.4.
        let b = [(0.1, 4.0), (0.2, 8.0), (0.4, 10.0), (f64::INFINITY, 10.0)];
        // rank 5 is the first of the 4 in (0.1, 0.2]: 0.1 + 0.1 * 1/4.
        assert!((quantile(&b, 0.5).unwrap() - 0.125).abs() < 1e-12);
        // rank 9.9 in (0.2, 0.4]: 0.2 + 0.2 * 1.9/2.
        assert!((quantile(&b, 0.99).unwrap() - 0.39).abs() < 1e-12);
        // rank 2 in the first bucket interpolates from zero.
        assert!((quantile(&b, 0.2).unwrap() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_rank_in_the_inf_bucket_is_the_highest_finite_bound() {
        let b = [(0.1, 1.0), (0.2, 2.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.99), Some(0.2));
    }

    #[test]
    fn no_observations_no_quantile() {
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
        // Without +Inf the buckets are not a histogram.
        assert_eq!(quantile(&[(0.1, 3.0)], 0.5), None);
    }

    #[test]
    fn a_dip_in_cumulative_counts_does_not_go_backwards() {
        let b = [(0.1, 4.0), (0.2, 3.0), (0.4, 8.0), (f64::INFINITY, 8.0)];
        let q = quantile(&b, 0.75).unwrap();
        assert!((0.2..=0.4).contains(&q), "{q}");
    }

    fn h(model: &str, bounds: &[(&str, f64)]) -> String {
        bounds
            .iter()
            .map(|(le, c)| format!("t_bucket{{m=\"{model}\",le=\"{le}\"}} {c}\n"))
            .collect()
    }

    #[test]
    fn rates_and_buckets_sum_over_gateways_per_key() {
        let a0 =
            parse(&(h("x", &[("0.1", 1.0), ("+Inf", 2.0)]) + "r_total{m=\"x\"} 10\n")).unwrap();
        let a1 =
            parse(&(h("x", &[("0.1", 3.0), ("+Inf", 6.0)]) + "r_total{m=\"x\"} 14\n")).unwrap();
        // The second gateway has one more bound (another SLO threshold): it is left out.
        let b0 = parse("").unwrap();
        let b1 = parse(
            &(h("x", &[("0.05", 1.0), ("0.1", 2.0), ("+Inf", 2.0)]) + "r_total{m=\"x\"} 3\n"),
        )
        .unwrap();
        let w = Windows::new([
            Window {
                prev: &a0,
                cur: &a1,
                secs: 2.0,
            },
            Window {
                prev: &b0,
                cur: &b1,
                secs: 1.0,
            },
        ]);
        let model = |s: &Sample| s.label("m").map(str::to_owned);
        // 4 in 2 s, plus 3 (a series new since the first scrape) in 1 s.
        assert_eq!(w.rate_by("r_total", model)["x"], 5.0);
        let b = &w.buckets_by("t_bucket", model)["x"];
        assert_eq!(b, &vec![(0.1, 4.0), (f64::INFINITY, 6.0)]);
    }
}
