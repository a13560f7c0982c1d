//! Schedules of periodic tasks: cron, rate and at expressions, parsed from text into a value
//! that answers "when is the next run after this instant". Reads no clock; the only files it
//! reads are the host's zoneinfo database, when a cron names an IANA zone (`tz`), and `/etc`
//! in `tz::system_zone`, which the caller runs once and passes the result in.

pub mod at;
pub mod cron;
pub mod crontab;
pub mod rate;
pub mod tz;
pub mod tzif;

use std::fmt;

use chrono::{DateTime, Utc};

pub use tz::Zone;

/// Which grammar an expression is parsed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Cron,
    Rate,
    At,
}

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    Cron(cron::CronSchedule),
    Rate(rate::RateSchedule),
    At(at::AtSchedule),
}

/// The error codes of spec §5.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidCronExpression,
    TimezoneInformationCorrupt,
    InvalidGMTOffsetForTimezone,
    InvalidGMTOffsetHourForTimezone,
    InvalidGMTOffsetMinuteForTimezone,
    CronExpressionExpired,
    InvalidRateExpression,
    RateFrequencyTooLarge,
    InvalidAtExpression,
    AtExpressionExpired,
}

/// A schedule that cannot be parsed or has no run left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleError {
    pub code: ErrorCode,
    /// What exactly is wrong, e.g. `syntax error in hour field: '25'`.
    pub detail: Option<String>,
    /// What to write instead, for people (`assistd next`, `check`, the log); never part of
    /// the invalid report's value, which keeps the reference's text.
    pub hint: Option<String>,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidCronExpression => "InvalidCronExpression",
            ErrorCode::TimezoneInformationCorrupt => "TimezoneInformationCorrupt",
            ErrorCode::InvalidGMTOffsetForTimezone => "InvalidGMTOffsetForTimezone",
            ErrorCode::InvalidGMTOffsetHourForTimezone => "InvalidGMTOffsetHourForTimezone",
            ErrorCode::InvalidGMTOffsetMinuteForTimezone => "InvalidGMTOffsetMinuteForTimezone",
            ErrorCode::CronExpressionExpired => "CronExpressionExpired",
            ErrorCode::InvalidRateExpression => "InvalidRateExpression",
            ErrorCode::RateFrequencyTooLarge => "RateFrequencyTooLarge",
            ErrorCode::InvalidAtExpression => "InvalidAtExpression",
            ErrorCode::AtExpressionExpired => "AtExpressionExpired",
        }
    }

    /// The message of the code in spec §5.5 (the reference's `CronParameterError`), with the
    /// reference's spelling.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::InvalidCronExpression => "invalid cron expression cannot be parsed",
            ErrorCode::TimezoneInformationCorrupt => {
                "Information of sepcified timezone in cron expression cannot be parsed"
            }
            ErrorCode::InvalidGMTOffsetForTimezone => {
                "invalid GMT+-offset format at timezone field cannot be parsed"
            }
            ErrorCode::InvalidGMTOffsetHourForTimezone => {
                "invalid hour value for GMT+-offset format at timezone field cannot be parsed"
            }
            ErrorCode::InvalidGMTOffsetMinuteForTimezone => {
                "invalid minute value for GMT+-offset format at timezone field cannot be parsed"
            }
            ErrorCode::CronExpressionExpired => {
                "cron expression had expired at the moment of system clock"
            }
            ErrorCode::InvalidRateExpression => "invalid rate expression cannot be parsed",
            ErrorCode::RateFrequencyTooLarge => {
                "specified frequency in rate expression is too large, i.e., larger than 1,000 days"
            }
            ErrorCode::InvalidAtExpression => "invalid at expression cannot be parsed",
            ErrorCode::AtExpressionExpired => {
                "at expression had expired at the moment of system clock"
            }
        }
    }
}

impl ScheduleError {
    pub fn new(code: ErrorCode) -> ScheduleError {
        ScheduleError {
            code,
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(code: ErrorCode, detail: impl Into<String>) -> ScheduleError {
        ScheduleError {
            code,
            detail: Some(detail.into()),
            hint: None,
        }
    }

    /// The same error with a hint for people (see `hint`).
    pub fn with_hint(mut self, hint: impl Into<String>) -> ScheduleError {
        self.hint = Some(hint.into());
        self
    }

    /// The `value` of the invalid report (`param=cron`), as the reference sends it (spec §5.5,
    /// §10.9): the bare code when there is no detail; a cron syntax or interval error alone
    /// (the reference returns the cron parser's error unwrapped); any other detail wrapped as
    /// `<Code>: <message>: <detail>`.
    pub fn wire_value(&self) -> String {
        match (&self.detail, self.code) {
            (None, code) => code.as_str().to_string(),
            (Some(detail), ErrorCode::InvalidCronExpression) => detail.clone(),
            (Some(detail), code) => format!("{}: {}: {detail}", code.as_str(), code.message()),
        }
    }
}

impl fmt::Display for ScheduleError {
    /// `<Code>` or `<Code>: <detail>`: the text of `assistd next` errors (the invalid report's
    /// value is `wire_value`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code.as_str())?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScheduleError {}

impl Schedule {
    /// Parses `expr` with the grammar of `kind`. `creation_ms` anchors rates; `system_zone`
    /// is used by a cron without a zone suffix, and a cron's named zone is loaded from the
    /// host's zoneinfo database. Does not check for expiry (see `first_after`).
    pub fn parse(
        expr: &str,
        kind: ScheduleKind,
        creation_ms: i64,
        system_zone: &Zone,
    ) -> Result<Schedule, ScheduleError> {
        Schedule::parse_in(expr, kind, creation_ms, system_zone, &tz::ZoneDb::host())
    }

    /// `parse`, loading a cron's named zone from `db`.
    pub fn parse_in(
        expr: &str,
        kind: ScheduleKind,
        creation_ms: i64,
        system_zone: &Zone,
        db: &tz::ZoneDb,
    ) -> Result<Schedule, ScheduleError> {
        match kind {
            ScheduleKind::Cron => {
                cron::CronSchedule::parse_in(expr, system_zone, db).map(Schedule::Cron)
            }
            ScheduleKind::Rate => rate::RateSchedule::parse(expr, creation_ms).map(Schedule::Rate),
            ScheduleKind::At => at::AtSchedule::parse(expr).map(Schedule::At),
        }
    }

    /// The first run strictly after `from`, or `None` when the schedule has no run left.
    pub fn next_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(c) => c.next_after(from),
            Schedule::Rate(r) => r.next_after(from),
            Schedule::At(a) => a.next_after(from),
        }
    }

    /// The first run of a schedule that starts at `now`, and where expiry is decided: like
    /// `next_after`, except that an `at()` whose instant is `now` to the millisecond still
    /// runs (`AtSchedule::first_from`). No run at all is an error (`CronExpressionExpired`,
    /// `AtExpressionExpired`).
    pub fn first_after(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        let first = match self {
            Schedule::At(a) => a.first_from(now),
            other => other.next_after(now),
        };
        first.ok_or_else(|| {
            ScheduleError::new(match self {
                Schedule::At(_) => ErrorCode::AtExpressionExpired,
                _ => ErrorCode::CronExpressionExpired,
            })
        })
    }

    /// The zone a cron is evaluated in; `None` for rate and at (they are absolute).
    pub fn zone(&self) -> Option<&Zone> {
        match self {
            Schedule::Cron(c) => Some(c.zone()),
            _ => None,
        }
    }
}

/// Helpers shared by the schedule modules' tests (and the crate's other tests that name a
/// zone): the zone fixtures the repository carries, so no test depends on the host's tzdata.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    use chrono::{DateTime, Utc};

    use super::tz::{Zone, ZoneDb};

    /// An RFC 3339 test time as UTC.
    pub fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    /// The directory of committed TZif files (`testdata/README.md` lists them).
    pub fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/schedule/testdata/zoneinfo")
    }

    /// A zoneinfo database holding only the fixtures.
    pub fn fixture_db() -> ZoneDb {
        ZoneDb::in_dirs([fixture_dir()])
    }

    /// The fixture zone `name`; the tests name only zones the repository carries.
    pub fn zone(name: &str) -> Zone {
        fixture_db()
            .load(name)
            .unwrap_or_else(|e| panic!("fixture zone {name}: {e}"))
    }

    /// One zone of `testdata/transitions.txt`: what glibc's zdump read from the same file.
    pub struct Expected {
        pub zone: String,
        /// `(utc_secs, offset_secs)`, ascending: from `utc_secs` on (up to the next entry)
        /// local time is UTC + `offset_secs`.
        pub changes: Vec<(i64, i32)>,
    }

    /// `transitions.txt` covers changes up to here (2100-01-01T00:00:00Z): zdump's `-c` end
    /// year is exclusive.
    pub const EXPECTED_END: i64 = 4_102_444_800;

    impl Expected {
        /// The offset at `utc_secs` by these changes; `None` outside the span they cover.
        pub fn offset_at(&self, utc_secs: i64) -> Option<i32> {
            if utc_secs >= EXPECTED_END {
                return None;
            }
            let after = self.changes.partition_point(|&(at, _)| at <= utc_secs);
            after.checked_sub(1).map(|i| self.changes[i].1)
        }

        /// Where the covered span starts.
        pub fn start(&self) -> i64 {
            self.changes.first().map_or(EXPECTED_END, |&(at, _)| at)
        }
    }

    /// The expected offsets of every fixture zone, in file order.
    pub fn expected_offsets() -> Vec<Expected> {
        let text = include_str!("testdata/transitions.txt");
        let mut zones: Vec<Expected> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(name) = line.strip_prefix("zone ") {
                zones.push(Expected {
                    zone: name.to_string(),
                    changes: Vec::new(),
                });
                continue;
            }
            let mut fields = line.split(' ');
            let mut number = || fields.next().and_then(|f| f.parse::<i64>().ok());
            let (Some(at), Some(offset)) = (number(), number()) else {
                panic!("transitions.txt: bad line {line:?}");
            };
            let offset = i32::try_from(offset).expect("offset fits i32");
            zones
                .last_mut()
                .expect("a zone line comes first")
                .changes
                .push((at, offset));
        }
        zones
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(expr: &str, kind: ScheduleKind) -> String {
        let zone = Zone::utc();
        match Schedule::parse_in(expr, kind, 0, &zone, &testing::fixture_db()) {
            Err(e) => e.wire_value(),
            Ok(_) => panic!("{expr} parses"),
        }
    }

    #[test]
    fn a_schedule_is_one_small_allocation() {
        // Every registered periodic task keeps one `Arc<Schedule>` (musl's 160-byte class).
        assert!(std::mem::size_of::<Schedule>() <= 136);
    }

    #[test]
    fn wire_values_follow_the_reference() {
        use ScheduleKind::{At, Cron, Rate};
        assert_eq!(wire("0 0 8 * *", Cron), "InvalidCronExpression");
        assert_eq!(
            wire("0 0 25 * * ?", Cron),
            "syntax error in hour field: '25'"
        );
        assert_eq!(wire("*/60 * * * * ?", Cron), "invalid interval */60");
        assert_eq!(wire("0 0 8 * * ? CST", Cron), "TimezoneInformationCorrupt");
        assert_eq!(
            wire("0 0 8 * * ? Asia/Nowhere", Cron),
            "TimezoneInformationCorrupt: Information of sepcified timezone in cron expression \
             cannot be parsed: unknown time zone Asia/Nowhere"
        );
        assert_eq!(
            wire("0 0 8 * * ? GMT+15:00", Cron),
            "InvalidGMTOffsetForTimezone"
        );
        assert_eq!(
            wire("rate(0m)", Rate),
            "InvalidRateExpression: invalid rate expression cannot be parsed: \
             Period value should be positive number"
        );
        assert_eq!(wire("rate(5x)", Rate), "InvalidRateExpression");
        assert_eq!(
            wire("at(2024-13-01T00:00:00)", At),
            "InvalidAtExpression: invalid at expression cannot be parsed: \
             cannot parse \"2024-13-01T00:00:00\" as YYYY-MM-DDTHH:MM:SS"
        );
        assert_eq!(
            ScheduleError::new(ErrorCode::AtExpressionExpired).wire_value(),
            "AtExpressionExpired"
        );
    }

    #[test]
    fn an_at_due_this_millisecond_is_not_expired_and_one_past_is() {
        use testing::utc;
        let at = Schedule::parse("at(2024-03-15T12:00:00)", ScheduleKind::At, 0, &Zone::utc())
            .expect("valid at");
        assert_eq!(
            at.first_after(utc("2024-03-15T12:00:00Z")),
            Ok(utc("2024-03-15T12:00:00Z"))
        );
        assert_eq!(
            at.first_after(utc("2024-03-15T12:00:00.001Z"))
                .map_err(|e| e.code),
            Err(ErrorCode::AtExpressionExpired)
        );
    }

    #[test]
    fn display_keeps_code_and_detail() {
        let e = ScheduleError::with_detail(ErrorCode::InvalidRateExpression, "x");
        assert_eq!(e.to_string(), "InvalidRateExpression: x");
        let e = ScheduleError::with_detail(ErrorCode::InvalidCronExpression, "y");
        assert_eq!(e.to_string(), "InvalidCronExpression: y");
        assert_eq!(e.wire_value(), "y");
    }
}
