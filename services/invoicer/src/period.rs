//! Billing periods: calendar months, days or hours in UTC, or a fixed length aligned on the Unix
//! epoch (short periods for tests and demos). Times are microseconds since the epoch, UTC, as in
//! the envelope.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Deserialize;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// How usage is cut into billing periods (`[billing] period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Period {
    /// Calendar month, UTC: the 1st 00:00 to the next 1st.
    Month,
    Day,
    Hour,
    /// A fixed length in microseconds, periods aligned on the epoch (`60s`, `15m`, `2h`).
    Fixed(i64),
}

impl TryFrom<String> for Period {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl std::str::FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        match text {
            "month" => return Ok(Self::Month),
            "day" => return Ok(Self::Day),
            "hour" => return Ok(Self::Hour),
            _ => {}
        }
        let bad =
            || format!("period `{text}`: expected month, day, hour or a length like 60s, 15m, 2h");
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = text.split_at(split);
        let number: i64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        match number.checked_mul(seconds * MICROS_PER_SECOND) {
            Some(micros) if micros > 0 => Ok(Self::Fixed(micros)),
            _ => Err(bad()),
        }
    }
}

fn utc(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn month_start(year: i32, month: u32) -> i64 {
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t).timestamp_micros())
        .unwrap_or_default()
}

impl Period {
    /// Start of the period containing `micros`.
    pub fn start_of(self, micros: i64) -> i64 {
        match self {
            Self::Month => {
                let t = utc(micros);
                month_start(t.year(), t.month())
            }
            Self::Day => micros.div_euclid(86_400 * MICROS_PER_SECOND) * 86_400 * MICROS_PER_SECOND,
            Self::Hour => micros.div_euclid(3600 * MICROS_PER_SECOND) * 3600 * MICROS_PER_SECOND,
            Self::Fixed(length) => micros.div_euclid(length) * length,
        }
    }

    /// End (exclusive) of the period starting at `start`: the next period's start.
    pub fn end_of(self, start: i64) -> i64 {
        match self {
            Self::Month => {
                let t = utc(start);
                if t.month() == 12 {
                    month_start(t.year() + 1, 1)
                } else {
                    month_start(t.year(), t.month() + 1)
                }
            }
            Self::Day => start + 86_400 * MICROS_PER_SECOND,
            Self::Hour => start + 3600 * MICROS_PER_SECOND,
            Self::Fixed(length) => start + length,
        }
    }

    /// Start of the period before the one starting at `start`.
    pub fn previous(self, start: i64) -> i64 {
        self.start_of(start - 1)
    }

    /// Whether `start` is the start of a period (a request naming a period must name its start).
    pub fn is_start(self, start: i64) -> bool {
        self.start_of(start) == start
    }

    /// Compact UTC label of the period starting at `start`, used in invoice ids: `202611`,
    /// `20261122`, `2026112213`, or `20261122T130500` for fixed lengths.
    pub fn label(self, start: i64) -> String {
        let t = utc(start);
        let format = match self {
            Self::Month => "%Y%m",
            Self::Day => "%Y%m%d",
            Self::Hour => "%Y%m%d%H",
            Self::Fixed(_) => "%Y%m%dT%H%M%S",
        };
        t.format(format).to_string()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Month => f.write_str("month"),
            Self::Day => f.write_str("day"),
            Self::Hour => f.write_str("hour"),
            Self::Fixed(micros) => write!(f, "{}s", micros / MICROS_PER_SECOND),
        }
    }
}

/// RFC 3339 form of a time in micros, for descriptions and the API.
pub fn rfc3339(micros: i64) -> String {
    utc(micros).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("valid time")
            .timestamp_micros()
    }

    #[test]
    fn parses_names_and_lengths() {
        assert_eq!("month".parse(), Ok(Period::Month));
        assert_eq!("60s".parse(), Ok(Period::Fixed(60_000_000)));
        assert_eq!("15m".parse(), Ok(Period::Fixed(900_000_000)));
        assert_eq!("2h".parse(), Ok(Period::Fixed(7_200_000_000)));
        for bad in ["", "0s", "10", "5d", "week", "-5s", "s"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn calendar_months_in_utc() {
        let start = Period::Month.start_of(at("2026-11-22T13:05:07Z"));
        assert_eq!(start, at("2026-11-01T00:00:00Z"));
        assert_eq!(Period::Month.end_of(start), at("2026-12-01T00:00:00Z"));
        let december = at("2026-12-01T00:00:00Z");
        assert_eq!(Period::Month.end_of(december), at("2027-01-01T00:00:00Z"));
        assert_eq!(Period::Month.previous(start), at("2026-10-01T00:00:00Z"));
        // February of a leap year, and the last microsecond of a month.
        let feb = Period::Month.start_of(at("2028-02-29T23:59:59Z"));
        assert_eq!(Period::Month.end_of(feb), at("2028-03-01T00:00:00Z"));
        assert_eq!(Period::Month.start_of(december - 1), start);
        assert_eq!(Period::Month.label(start), "202611");
    }

    #[test]
    fn fixed_periods_align_on_the_epoch_and_tile_time() {
        let p = Period::Fixed(60_000_000);
        let t = at("2026-11-22T13:05:07Z");
        assert_eq!(p.start_of(t), at("2026-11-22T13:05:00Z"));
        assert_eq!(p.end_of(p.start_of(t)), at("2026-11-22T13:06:00Z"));
        assert_eq!(p.label(p.start_of(t)), "20261122T130500");
        assert_eq!(p.start_of(-1), -60_000_000, "before the epoch rounds down");
        assert!(p.is_start(at("2026-11-22T13:05:00Z")));
        assert!(!p.is_start(t));
    }

    #[test]
    fn every_instant_is_in_exactly_the_period_start_of_names() {
        for period in [
            Period::Month,
            Period::Day,
            Period::Hour,
            Period::Fixed(7_000_000),
        ] {
            let mut t = at("2024-12-30T22:00:00Z");
            while t < at("2025-03-02T00:00:00Z") {
                let start = period.start_of(t);
                assert!(start <= t && t < period.end_of(start), "{period} {t}");
                assert_eq!(period.start_of(period.end_of(start)), period.end_of(start));
                t += 3_599_999_999;
            }
        }
        assert_eq!(Period::Day.label(at("2026-11-22T00:00:00Z")), "20261122");
        assert_eq!(Period::Hour.label(at("2026-11-22T13:00:00Z")), "2026112213");
    }
}
