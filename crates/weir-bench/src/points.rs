//! The per-request values a run keeps for the charts of `--report`: bounded uniform samples
//! (reservoir sampling with a fixed seed, so the same run draws the same page), not every
//! value of a long run.

use super::Sample;

/// TTFTs and ITL gaps kept for the histograms: enough for their shape at any run length.
pub const MAX_VALUES: usize = 20_000;
/// Requests kept for the TTFT-over-time scatter: more points would only overlap.
pub const MAX_REQUESTS: usize = 4_000;

/// One request on the TTFT-over-time chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestPoint {
    /// Seconds from the start of the measured part.
    pub start: f64,
    pub ttft: Option<f64>,
    pub ok: bool,
}

/// What the charts of one run draw from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Points {
    /// TTFTs of the successful requests, seconds.
    pub ttft: Vec<f64>,
    /// Gaps between tokens of the successful requests, seconds.
    pub itl: Vec<f64>,
    /// Every request, failed ones too.
    pub requests: Vec<RequestPoint>,
}

impl Points {
    pub fn of(samples: &[Sample]) -> Points {
        let ok = || samples.iter().filter(|s| s.ok());
        Points {
            ttft: reservoir(ok().filter_map(|s| s.ttft), MAX_VALUES),
            itl: reservoir(
                ok().flat_map(|s| s.itl.iter().map(|&g| f64::from(g))),
                MAX_VALUES,
            ),
            requests: reservoir(
                samples.iter().map(|s| RequestPoint {
                    start: s.start,
                    ttft: s.ttft,
                    ok: s.ok(),
                }),
                MAX_REQUESTS,
            ),
        }
    }
}

/// A uniform sample of at most `cap` of `items` (Vitter's algorithm R), in their order when
/// they all fit.
pub fn reservoir<T>(items: impl Iterator<Item = T>, cap: usize) -> Vec<T> {
    let mut rng = fastrand::Rng::with_seed(0x7765_6972);
    let mut kept = Vec::new();
    for (seen, item) in items.enumerate() {
        if seen < cap {
            kept.push(item);
        } else {
            let j = rng.usize(..=seen);
            if j < cap {
                kept[j] = item;
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservoir_is_bounded_and_uniform() {
        assert_eq!(reservoir(0..5, 10), vec![0, 1, 2, 3, 4]);
        let kept = reservoir(0..100_000, 1_000);
        assert_eq!(kept.len(), 1_000);
        // A uniform sample of 0..100000 has a mean near 50000 and reaches both ends.
        let mean = kept.iter().sum::<usize>() as f64 / 1_000.0;
        assert!((45_000.0..55_000.0).contains(&mean), "mean {mean}");
        assert!(kept.iter().any(|&v| v < 10_000) && kept.iter().any(|&v| v > 90_000));
        assert_eq!(
            reservoir(0..100_000, 1_000),
            kept,
            "the same run draws the same sample"
        );
    }

    #[test]
    fn failed_requests_are_drawn_but_not_their_latencies() {
        let ok = Sample {
            start: 0.5,
            ttft: Some(0.1),
            itl: vec![0.01, 0.02],
            ..Sample::default()
        };
        let failed = Sample {
            start: 0.7,
            ttft: Some(0.3),
            itl: vec![0.5],
            error: Some(crate::cause::Failure::stream("x")),
            ..Sample::default()
        };
        let p = Points::of(&[ok, failed]);
        assert_eq!(p.ttft, vec![0.1]);
        assert_eq!(p.itl.len(), 2);
        assert_eq!(p.requests.len(), 2);
        assert!(!p.requests[1].ok);
    }
}
