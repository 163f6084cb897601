//! The UTC day and month a spend is counted in, and how long until each ends (a budget's
//! Retry-After). Days and months are numbered from the Unix epoch so that every replica,
//! whatever its time zone, names the same period the same way.

use std::time::Duration;

/// The periods a spend falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Days since 1970-01-01.
    pub day: u64,
    /// `year * 12 + month - 1`.
    pub month: u64,
    pub until_day_end: Duration,
    pub until_month_end: Duration,
}

impl Period {
    /// The periods of `now_ms` (milliseconds since the epoch).
    pub fn at(now_ms: u64) -> Period {
        const DAY_MS: u64 = 86_400_000;
        let day = now_ms / DAY_MS;
        let (y, m, _) = civil_from_days(day as i64);
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let next_month = days_from_civil(ny, nm, 1) as u64;
        Period {
            day,
            month: (y as u64) * 12 + (m as u64) - 1,
            until_day_end: Duration::from_millis((day + 1) * DAY_MS - now_ms),
            until_month_end: Duration::from_millis(next_month * DAY_MS - now_ms),
        }
    }
}

/// Howard Hinnant's `civil_from_days`: (year, month 1..=12, day 1..=31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Its inverse: days since the epoch of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_end_at_utc_midnight() {
        // 2024-02-29T23:00:00Z: a leap day, one hour before March.
        let now_ms = 1_709_247_600_000;
        let p = Period::at(now_ms);
        assert_eq!(civil_from_days(p.day as i64), (2024, 2, 29));
        assert_eq!(p.month, 2024 * 12 + 1);
        assert_eq!(p.until_day_end, Duration::from_secs(3600));
        assert_eq!(p.until_month_end, Duration::from_secs(3600));
        // December rolls into the next year.
        let p = Period::at(days_from_civil(2025, 12, 31) as u64 * 86_400_000);
        assert_eq!(p.until_month_end, Duration::from_secs(86_400));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
