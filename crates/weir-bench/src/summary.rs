//! What a whole `weir bench` tells beyond each run's table: the summary across `--sweep`
//! levels, the JSON document, and the verdict that decides the exit status.

use serde::Serialize;

use super::Api;
use super::report::Report;

/// One level of a sweep: the numbers a throughput-against-latency comparison needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub load: String,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub ttft_p50: f64,
    pub ttft_p99: f64,
    pub itl_p50: f64,
    pub itl_p99: f64,
    /// Good requests per second, with `--slo`.
    pub goodput: Option<f64>,
    pub requests: usize,
    pub errors: usize,
}

impl Row {
    pub fn of(r: &Report) -> Row {
        Row {
            load: r.load.clone(),
            concurrency: r.concurrency,
            rate: r.rate,
            request_throughput: r.request_throughput,
            output_token_throughput: r.output_token_throughput,
            ttft_p50: r.ttft.p50,
            ttft_p99: r.ttft.p99,
            itl_p50: r.itl.p50,
            itl_p99: r.itl.p99,
            goodput: r.goodput,
            requests: r.requests,
            errors: r.errors,
        }
    }
}

/// The text table of a sweep, one line per level.
pub fn sweep_table(rows: &[Row]) -> String {
    let mut out = format!(
        "\nsweep summary\n{:>11} {:>9} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}\n",
        "concurrency",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "goodput",
        "errors"
    );
    let ms = |v: f64| format!("{:.2}", v * 1e3);
    for r in rows {
        let level = r
            .concurrency
            .map_or_else(|| r.load.clone(), |c| c.to_string());
        let goodput = r
            .goodput
            .map_or_else(|| "-".to_owned(), |g| format!("{g:.1}"));
        out.push_str(&format!(
            "{:>11} {:>9.1} {:>12.0} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}\n",
            level,
            r.request_throughput,
            r.output_token_throughput,
            ms(r.ttft_p50),
            ms(r.ttft_p99),
            ms(r.itl_p50),
            ms(r.itl_p99),
            goodput,
            r.errors
        ));
    }
    out.push_str("(latencies in ms, goodput in req/s)\n");
    out
}

/// Everything `--json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub url: String,
    pub model: String,
    pub api: Api,
    /// One report per run (per level of a sweep).
    pub runs: Vec<Report>,
    /// With `--sweep`: one row per level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Vec<Row>>,
}

/// Why `weir bench` fails, if it does: the first run in which every request failed (unless
/// `--max-error-rate 1` allows it), or in which more than `max_error_rate` of them did.
pub fn verdict(runs: &[Report], max_error_rate: Option<f64>) -> Result<(), String> {
    let several = runs.len() > 1;
    for r in runs.iter().filter(|r| r.requests > 0) {
        let rate = r.errors as f64 / r.requests as f64;
        let cause = r.top_cause().unwrap_or("unknown cause");
        let fault = if r.errors == r.requests && max_error_rate.is_none_or(|m| m < 1.0) {
            format!("all {} requests failed: {cause}", r.requests)
        } else if let Some(max) = max_error_rate.filter(|&m| rate > m) {
            format!(
                "{} of {} requests failed ({:.1} %), more than --max-error-rate {max}; \
                 most often: {cause}",
                r.errors,
                r.requests,
                rate * 100.0
            )
        } else {
            continue;
        };
        return Err(if several {
            format!("at {}: {fault}", r.load)
        } else {
            fault
        });
    }
    Ok(())
}

/// `--max-error-rate`: a fraction from 0 to 1.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "`{s}`: expected a fraction from 0 to 1 (0.01 is 1 %)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cause::Failure;
    use crate::{Load, Sample};

    fn run(ok: usize, failed: usize, load: Load) -> Report {
        let mut samples = vec![
            Sample {
                ttft: Some(0.1),
                itl: vec![0.01],
                output_tokens: 2,
                ..Sample::default()
            };
            ok
        ];
        samples.extend((0..failed).map(|_| Sample {
            error: Some(Failure::status(
                http::StatusCode::NOT_FOUND,
                br#"{"error":{"message":"The model `m` does not exist."}}"#,
            )),
            ..Sample::default()
        }));
        Report::new(load, &samples, Duration::from_secs(1), None)
    }

    #[test]
    fn every_request_failing_fails_unless_allowed() {
        let dead = run(0, 4, Load::Closed(2));
        assert_eq!(
            verdict(std::slice::from_ref(&dead), None),
            Err("all 4 requests failed: HTTP 404: The model `m` does not exist.".into())
        );
        assert!(verdict(std::slice::from_ref(&dead), Some(1.0)).is_ok());
        let some = run(96, 4, Load::Closed(2));
        assert!(verdict(std::slice::from_ref(&some), None).is_ok());
        assert!(verdict(std::slice::from_ref(&some), Some(0.04)).is_ok());
        assert_eq!(
            verdict(&[run(1, 0, Load::Closed(1)), some], Some(0.01)),
            Err(
                "at 2 concurrent: 4 of 100 requests failed (4.0 %), more than \
                 --max-error-rate 0.01; most often: HTTP 404: The model `m` does not exist."
                    .into()
            )
        );
        assert!(
            verdict(&[run(0, 0, Load::Closed(1))], None).is_ok(),
            "nothing ran"
        );
    }

    #[test]
    fn the_sweep_table_has_a_line_per_level() {
        let rows: Vec<Row> = [1, 8].map(|c| Row::of(&run(10, 1, Load::Closed(c)))).into();
        let t = sweep_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "sweep summary");
        assert!(lines[2].trim_start().starts_with("concurrency"));
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "1", "10.0", "20", "100.00", "100.00", "10.00", "10.00", "-", "1"
            ]
        );
        assert!(lines[4].trim_start().starts_with("8 "));
        assert!(parse_fraction("0.01").is_ok() && parse_fraction("1.5").is_err());
    }
}
