//! At expressions (spec §5.4): one moment, `at(YYYY-MM-DDTHH:MM:SS)` in UTC. Pure: never reads
//! the clock; expiry is judged against the `from` the caller passes.

use chrono::{DateTime, NaiveDate, Utc};

use super::{ErrorCode, ScheduleError};

/// A parsed at expression: a single run at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtSchedule {
    at: DateTime<Utc>,
}

impl AtSchedule {
    /// Parses `at(2024-03-15T12:00:00)` or the bare time; the `at(` prefix and `)` suffix are
    /// stripped only when both are present (case-insensitive), as in the reference.
    pub fn parse(expr: &str) -> Result<AtSchedule, ScheduleError> {
        if expr.len() < 4 {
            return Err(ScheduleError::new(ErrorCode::InvalidAtExpression));
        }
        let has_prefix = expr.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("at("));
        let text = match (has_prefix, expr.strip_suffix(')')) {
            (true, Some(inner)) => inner.get(3..).unwrap_or(""),
            _ => expr,
        };
        parse_utc(text).map(|at| AtSchedule { at }).ok_or_else(|| {
            ScheduleError::with_detail(
                ErrorCode::InvalidAtExpression,
                format!("cannot parse {text:?} as YYYY-MM-DDTHH:MM:SS"),
            )
        })
    }

    /// The moment of the single run.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// The moment if it is strictly after `from`, else `None`: the run after a run at `from`
    /// (there is none once the moment has fired).
    pub fn next_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.at > from).then_some(self.at)
    }

    /// The first run of a schedule that starts at `now`: the moment unless it is before `now`
    /// to the millisecond. An `at()` whose instant is exactly now fires (the reference expires
    /// it only when `now` is after it); one already past, even by 1 ms, is expired (`None`).
    pub fn first_from(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.at.timestamp_millis() >= now.timestamp_millis()).then_some(self.at)
    }
}

/// Exactly `YYYY-MM-DDTHH:MM:SS`, read as UTC.
fn parse_utc(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let num = |from: usize, to: usize| text.get(from..to).and_then(|s| s.parse::<u32>().ok());
    let year = i32::try_from(num(0, 4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, num(5, 7)?, num(8, 10)?)?;
    let time = date.and_hms_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?)?;
    Some(time.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::testing::utc;

    fn check(expr: &str, from: &str, expected: Option<&str>) {
        let at = AtSchedule::parse(expr).expect("valid at");
        assert_eq!(
            at.next_after(utc(from)),
            expected.map(utc),
            "{expr} from {from}"
        );
    }

    /// `first_from(now)`: what a newly scheduled `at()` does at `now`.
    fn check_first(expr: &str, now: &str, expected: Option<&str>) {
        let at = AtSchedule::parse(expr).expect("valid at");
        assert_eq!(
            at.first_from(utc(now)),
            expected.map(utc),
            "{expr} at {now}"
        );
    }

    fn check_err(expr: &str, expected: &str) {
        let got = AtSchedule::parse(expr).map_err(|e| e.to_string());
        assert_eq!(got, Err(expected.to_string()), "{expr:?}");
    }

    #[test]
    fn wrapped() {
        check(
            "at(2024-03-15T12:00:00)",
            "2024-03-15T10:00:00Z",
            Some("2024-03-15T12:00:00Z"),
        );
    }
    #[test]
    fn upper_case() {
        check(
            "AT(2024-03-15T12:00:00)",
            "2024-03-15T10:00:00Z",
            Some("2024-03-15T12:00:00Z"),
        );
    }
    #[test]
    fn bare() {
        check(
            "2024-03-15T12:00:00",
            "2024-03-15T10:00:00Z",
            Some("2024-03-15T12:00:00Z"),
        );
    }
    #[test]
    fn expired() {
        check("at(2024-03-15T12:00:00)", "2024-03-15T13:00:00Z", None);
    }
    #[test]
    fn after_it_fired_nothing_is_left() {
        check("at(2024-03-15T12:00:00)", "2024-03-15T12:00:00Z", None);
    }
    #[test]
    fn scheduled_exactly_at_its_moment_it_fires() {
        check_first(
            "at(2024-03-15T12:00:00)",
            "2024-03-15T12:00:00Z",
            Some("2024-03-15T12:00:00Z"),
        );
    }
    #[test]
    fn scheduled_within_the_same_millisecond_it_fires() {
        check_first(
            "at(2024-03-15T12:00:00)",
            "2024-03-15T12:00:00.000900Z",
            Some("2024-03-15T12:00:00Z"),
        );
    }
    #[test]
    fn scheduled_before_its_moment_it_fires() {
        check_first(
            "at(2024-03-15T12:00:00)",
            "2024-03-15T11:59:59.999Z",
            Some("2024-03-15T12:00:00Z"),
        );
    }
    #[test]
    fn scheduled_a_millisecond_late_it_is_expired() {
        check_first("at(2024-03-15T12:00:00)", "2024-03-15T12:00:00.001Z", None);
        check_first("at(2024-03-15T12:00:00)", "2024-03-15T13:00:00Z", None);
    }
    #[test]
    fn space_instead_of_t() {
        check_err(
            "at(2024-03-15 12:00:00)",
            "InvalidAtExpression: cannot parse \"2024-03-15 12:00:00\" as YYYY-MM-DDTHH:MM:SS",
        );
    }
    #[test]
    fn trailing_zone() {
        check_err(
            "at(2024-03-15T12:00:00Z)",
            "InvalidAtExpression: cannot parse \"2024-03-15T12:00:00Z\" as YYYY-MM-DDTHH:MM:SS",
        );
    }
    #[test]
    fn too_short() {
        check_err("at(", "InvalidAtExpression");
        check_err("", "InvalidAtExpression");
    }
    #[test]
    fn no_closing_paren() {
        check_err(
            "at(2024-03-15T12:00:00",
            "InvalidAtExpression: cannot parse \"at(2024-03-15T12:00:00\" as YYYY-MM-DDTHH:MM:SS",
        );
    }
    #[test]
    fn impossible_date() {
        check_err(
            "at(2024-02-30T12:00:00)",
            "InvalidAtExpression: cannot parse \"2024-02-30T12:00:00\" as YYYY-MM-DDTHH:MM:SS",
        );
        check_err(
            "at()",
            "InvalidAtExpression: cannot parse \"\" as YYYY-MM-DDTHH:MM:SS",
        );
        check_err(
            "at(é€)",
            "InvalidAtExpression: cannot parse \"é€\" as YYYY-MM-DDTHH:MM:SS",
        );
    }
}
