//! Rate expressions (spec §5.3): `rate(<n><s|m|h|d>)`, a fixed period anchored at the task's
//! creation time. Pure: never reads the clock, never overflows on huge numbers.

use chrono::{DateTime, Utc};

use super::{ErrorCode, ScheduleError};

/// The longest accepted period: 1000 days (the reference's `frequencyUpperLimit` of 24000 h).
const MAX_PERIOD_SECS: u64 = 1000 * 86_400;

/// A parsed `rate(...)`: runs every `period` from `creation`, never at `creation` itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSchedule {
    creation_ms: i64,
    period_secs: u64,
}

impl RateSchedule {
    /// Parses `expr` exactly as the reference's `(?i)(rate\s*\((\d+)\s*([smhd])\))` matched against
    /// the whole string: spaces only after `rate` and between the number and the unit.
    pub fn parse(expr: &str, creation_ms: i64) -> Result<RateSchedule, ScheduleError> {
        let invalid = || ScheduleError::new(ErrorCode::InvalidRateExpression);
        let head = expr
            .get(..4)
            .filter(|h| h.eq_ignore_ascii_case("rate"))
            .ok_or_else(invalid)?;
        let rest = expr[head.len()..].trim_start_matches(is_go_space);
        let rest = rest.strip_prefix('(').ok_or_else(invalid)?;
        let rest = rest.strip_suffix(')').ok_or_else(invalid)?;
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, unit) = rest.split_at(digits_end);
        let unit = unit.trim_start_matches(is_go_space);
        let unit_secs: u64 = match unit {
            "s" | "S" => 1,
            "m" | "M" => 60,
            "h" | "H" => 3600,
            "d" | "D" => 86_400,
            _ => return Err(invalid()),
        };
        if digits.is_empty() {
            return Err(invalid());
        }
        let significant = digits.trim_start_matches('0');
        if significant.is_empty() {
            return Err(ScheduleError::with_detail(
                ErrorCode::InvalidRateExpression,
                "Period value should be positive number",
            ));
        }
        // More than 20 significant digits cannot fit a u64 and is far above the limit anyway.
        let period_secs = (significant.len() <= 20)
            .then(|| significant.parse::<u64>().ok())
            .flatten()
            .and_then(|n| n.checked_mul(unit_secs))
            .filter(|&secs| secs <= MAX_PERIOD_SECS)
            .ok_or_else(|| ScheduleError::new(ErrorCode::RateFrequencyTooLarge))?;
        Ok(RateSchedule {
            creation_ms,
            period_secs,
        })
    }

    /// The period in seconds (at most 1000 days).
    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }

    /// `creation + k * period` for the smallest `k >= 1` that lies strictly after `from`.
    pub fn next_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = i128::from(self.creation_ms);
        let period = i128::from(self.period_secs) * 1000;
        let from_ms = i128::from(from.timestamp_millis());
        let periods = if from_ms < start {
            1
        } else {
            (from_ms - start) / period + 1
        };
        let next_ms = i64::try_from(start + periods * period).ok()?;
        DateTime::from_timestamp_millis(next_ms)
    }
}

/// `\s` of Go's regexp: ASCII space, tab, newline, carriage return, form feed.
fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::testing::utc;

    const CREATION: &str = "2024-03-15T10:00:00Z";

    fn check(expr: &str, from: &str, expected: &str) {
        let creation_ms = utc(CREATION).timestamp_millis();
        let rate = RateSchedule::parse(expr, creation_ms).expect("valid rate");
        assert_eq!(
            rate.next_after(utc(from)),
            Some(utc(expected)),
            "{expr} from {from}"
        );
    }

    fn check_err(expr: &str, expected: &str) {
        let got = RateSchedule::parse(expr, 0).map_err(|e| e.to_string());
        assert_eq!(got, Err(expected.to_string()), "{expr:?}");
    }

    #[test]
    fn minutes() {
        check("rate(5m)", "2024-03-15T10:07:00Z", "2024-03-15T10:10:00Z");
    }
    #[test]
    fn strictly_after() {
        check("rate(5m)", "2024-03-15T10:10:00Z", "2024-03-15T10:15:00Z");
    }
    #[test]
    fn sub_second_after_boundary() {
        check(
            "rate(5m)",
            "2024-03-15T10:10:00.500Z",
            "2024-03-15T10:15:00Z",
        );
    }
    #[test]
    fn before_creation() {
        check("rate(5m)", "2024-03-15T09:00:00Z", "2024-03-15T10:05:00Z");
    }
    #[test]
    fn at_creation() {
        check("rate(5m)", "2024-03-15T10:00:00Z", "2024-03-15T10:05:00Z");
    }
    #[test]
    fn hours() {
        check("rate(1h)", "2024-03-16T10:30:00Z", "2024-03-16T11:00:00Z");
    }
    #[test]
    fn upper_case_days() {
        check("RATE(2D)", "2024-03-20T00:00:00Z", "2024-03-21T10:00:00Z");
    }
    #[test]
    fn seconds() {
        check("rate(30s)", "2024-03-15T10:00:45Z", "2024-03-15T10:01:00Z");
    }
    #[test]
    fn inner_spaces() {
        check("rate (5m)", "2024-03-15T10:07:00Z", "2024-03-15T10:10:00Z");
        check("rate(5 m)", "2024-03-15T10:07:00Z", "2024-03-15T10:10:00Z");
    }
    #[test]
    fn leading_zero() {
        check("rate(05m)", "2024-03-15T10:07:00Z", "2024-03-15T10:10:00Z");
    }
    #[test]
    fn thousand_days() {
        check(
            "rate(1000d)",
            "2024-03-15T10:00:00Z",
            "2026-12-10T10:00:00Z",
        );
    }
    #[test]
    fn zero() {
        check_err(
            "rate(0m)",
            "InvalidRateExpression: Period value should be positive number",
        );
    }
    #[test]
    fn too_large() {
        check_err("rate(1001d)", "RateFrequencyTooLarge");
        check_err("rate(24001h)", "RateFrequencyTooLarge");
        check_err("rate(86400001s)", "RateFrequencyTooLarge");
        check_err("rate(99999999999999999999d)", "RateFrequencyTooLarge");
        check_err(
            "rate(123456789012345678901234567890s)",
            "RateFrequencyTooLarge",
        );
    }
    #[test]
    fn invalid() {
        for expr in [
            "rate(5w)",
            " rate(5m)",
            "rate(5m) ",
            "rate(m)",
            "rate(5)",
            "rate()",
            "rat(5m)",
            "",
            "rate(5m",
            "rate( 5m)",
            "rate(5m )",
            "rate(-5m)",
            "rate(5m)rate(5m)",
            "ràte(5m)",
            "rate(５m)",
        ] {
            check_err(expr, "InvalidRateExpression");
        }
    }
    #[test]
    fn far_future_is_none() {
        let rate = RateSchedule::parse("rate(1d)", i64::MAX).expect("valid rate");
        assert_eq!(rate.next_after(utc(CREATION)), None);
    }
}
