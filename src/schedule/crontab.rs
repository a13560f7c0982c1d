//! The crontab(5) time forms, five fields (`min hour dom mon dow`) and the nicknames
//! (`@daily`, `@reboot`, …), rewritten as text in the seconds-first grammar of `cron.rs`.
//! Pure text to text: it never computes a fire time and never reads the clock.
//!
//! Only local task files, `assistd next` and `import-crontab` use it; the wire grammar stays
//! seconds-first.
//!
//! Day of week: crontab and `cron.rs` number days alike (0 and 7 are Sunday, `1-7` and
//! `MON-SUN` include Sunday, `*/2` is Sunday, Tuesday, Thursday, Saturday), so the field is
//! copied as it is.
//!
//! Day of month and day of week: cron runs a job on a day that matches EITHER field when both
//! are restricted, and on a day that matches BOTH when either field starts with `*`
//! (`*/2` counts as a star: crontab(5) "If both fields are restricted (ie, aren't *)").
//! `cron.rs` has the union only, with `*` and `?` as the unrestricted texts. So a plain `*`
//! (or `*/1`) beside anything translates as it is, two restricted fields translate as they
//! are (union in both), and a starred step such as `*/2` beside a restricted other field is
//! refused: its intersection cannot be written in the seconds-first grammar.

use std::fmt;

/// What a crontab time becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrontabTime {
    /// A seconds-first cron expression (6 fields, seconds 0).
    Cron(String),
    /// `@reboot`: no fire times; the task runs once at every boot.
    Reboot,
}

/// A crontab time that cannot be rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrontabError {
    /// Not five fields (and not a nickname).
    FieldCount(usize),
    UnknownNickname(String),
    /// A field with syntax crontab(5) does not have (`?`, `L`, `W`, `#`, a bad step …).
    Field {
        field: &'static str,
        text: String,
    },
    /// A starred day field beside a restricted one: cron intersects them, the seconds-first
    /// grammar only unites.
    DayIntersection {
        dom: String,
        dow: String,
    },
}

impl fmt::Display for CrontabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrontabError::FieldCount(n) => {
                write!(f, "a crontab time has 5 fields or is a @nickname, not {n} fields")
            }
            CrontabError::UnknownNickname(n) => write!(
                f,
                "unknown nickname {n:?} (use @reboot @yearly @annually @monthly @weekly @daily @midnight @hourly)"
            ),
            CrontabError::Field { field, text } => {
                write!(f, "{field} field {text:?} is not crontab(5) syntax")
            }
            CrontabError::DayIntersection { dom, dow } => write!(
                f,
                "day-of-month {dom:?} with day-of-week {dow:?} means days matching both in cron \
                 (a field starting with '*' is not a restriction there), which the seconds-first \
                 grammar cannot express; list the days instead of a '*/' step"
            ),
        }
    }
}

impl std::error::Error for CrontabError {}

/// True when `text` is meant as a crontab time: a `@` nickname or exactly five fields. A
/// seconds-first cron has six to eight fields, `rate(…)` and `at(…)` fewer than five.
pub fn is_crontab_form(text: &str) -> bool {
    let text = text.trim();
    text.starts_with('@') || text.split_whitespace().count() == 5
}

/// Rewrites a crontab time in the seconds-first grammar. The result still has to be parsed by
/// `cron.rs`, which checks the ranges of the values.
pub fn to_seconds_first(text: &str) -> Result<CrontabTime, CrontabError> {
    let text = text.trim();
    if text.starts_with('@') {
        return nickname(text);
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = words.as_slice() else {
        return Err(CrontabError::FieldCount(words.len()));
    };
    check_field("minute", minute, false)?;
    check_field("hour", hour, false)?;
    check_field("day-of-month", dom, false)?;
    check_field("month", month, true)?;
    check_field("day-of-week", dow, true)?;
    let day = |text: &str| {
        if text == "*" || text == "*/1" {
            Day::Any
        } else if text.starts_with('*') {
            Day::Starred
        } else {
            Day::Restricted
        }
    };
    let (dom_kind, dow_kind) = (day(dom), day(dow));
    let intersects = matches!(
        (dom_kind, dow_kind),
        (Day::Starred, Day::Restricted | Day::Starred) | (Day::Restricted, Day::Starred)
    );
    if intersects {
        return Err(CrontabError::DayIntersection {
            dom: dom.to_string(),
            dow: dow.to_string(),
        });
    }
    let plain = |kind: Day, text: &str| match kind {
        Day::Any => "*".to_string(),
        _ => text.to_string(),
    };
    Ok(CrontabTime::Cron(format!(
        "0 {minute} {hour} {} {month} {}",
        plain(dom_kind, dom),
        plain(dow_kind, dow)
    )))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Day {
    /// `*` or `*/1`: every day.
    Any,
    /// Starts with `*` but restricts (`*/2`): cron intersects it with the other day field.
    Starred,
    Restricted,
}

fn nickname(text: &str) -> Result<CrontabTime, CrontabError> {
    let cron = match text.to_ascii_lowercase().as_str() {
        "@reboot" => return Ok(CrontabTime::Reboot),
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        _ => return Err(CrontabError::UnknownNickname(text.to_string())),
    };
    Ok(CrontabTime::Cron(cron.to_string()))
}

/// Lists of `*`, `a`, `a-b`, each with an optional `/step`; `names` allows three-letter (or
/// whole) English names for months and weekdays. Anything else (`?`, `L`, `W`, `#`) is a
/// seconds-first extension that crontab(5) does not have, refused rather than passed on.
fn check_field(field: &'static str, text: &str, names: bool) -> Result<(), CrontabError> {
    let bad = || CrontabError::Field {
        field,
        text: text.to_string(),
    };
    for entry in text.split(',') {
        let (span, step) = match entry.split_once('/') {
            Some((span, step)) => (span, Some(step)),
            None => (entry, None),
        };
        if step.is_some_and(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit())) {
            return Err(bad());
        }
        let atom_ok = |a: &str| {
            !a.is_empty()
                && (a.bytes().all(|b| b.is_ascii_digit())
                    || (names && a.bytes().all(|b| b.is_ascii_alphabetic())))
        };
        let ok = match span.split_once('-') {
            _ if span == "*" => true,
            Some((a, b)) => atom_ok(a) && atom_ok(b),
            None => atom_ok(span),
        };
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::cron::CronSchedule;
    use crate::schedule::testing::{fixture_db, utc};
    use crate::schedule::Zone;

    fn check(crontab: &str, expect: &str) {
        let got = match to_seconds_first(crontab) {
            Ok(CrontabTime::Cron(text)) => text,
            Ok(CrontabTime::Reboot) => "reboot".to_string(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "{crontab:?}");
    }

    /// The first `n` fire times of the translation of `crontab` after `from`.
    fn check_runs(crontab: &str, from: &str, expect: &[&str]) {
        let Ok(CrontabTime::Cron(text)) = to_seconds_first(crontab) else {
            panic!("{crontab:?} does not translate");
        };
        let cron = CronSchedule::parse_in(&text, &Zone::utc(), &fixture_db())
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        let mut at = utc(from);
        let mut got = Vec::new();
        for _ in expect {
            match cron.next_after(at) {
                Some(t) => {
                    got.push(t.to_rfc3339());
                    at = t;
                }
                None => break,
            }
        }
        let want: Vec<String> = expect.iter().map(|t| utc(t).to_rfc3339()).collect();
        assert_eq!(got, want, "{crontab:?} read as {text:?}");
    }

    #[test]
    fn every_quarter_hour() {
        check("*/15 * * * *", "0 */15 * * * *");
    }
    #[test]
    fn debian_hourly() {
        check("17 * * * *", "0 17 * * * *");
    }
    #[test]
    fn tabs_and_spaces() {
        check(" 25 6\t* * *\t", "0 25 6 * * *");
    }
    #[test]
    fn star_step_one_is_a_star() {
        check("0 0 */1 * 1-5", "0 0 0 * * 1-5");
    }
    #[test]
    fn names_pass_through() {
        check("0 9 * jan-mar MON-FRI", "0 0 9 * jan-mar MON-FRI");
    }
    #[test]
    fn both_days_restricted_unite() {
        check("30 4 1,15 * 5", "0 30 4 1,15 * 5");
    }
    #[test]
    fn starred_dom_beside_dow_is_refused() {
        check(
            "0 0 */2 * 1",
            "error: day-of-month \"*/2\" with day-of-week \"1\" means days matching both in cron (a field starting with '*' is not a restriction there), which the seconds-first grammar cannot express; list the days instead of a '*/' step",
        );
    }
    #[test]
    fn starred_dow_beside_dom_is_refused() {
        assert!(matches!(
            to_seconds_first("0 0 13 * */2"),
            Err(CrontabError::DayIntersection { .. })
        ));
    }
    #[test]
    fn starred_dow_alone_is_fine() {
        check("0 0 * * */2", "0 0 0 * * */2");
    }
    #[test]
    fn quartz_extensions_are_refused() {
        check(
            "0 0 ? * MON",
            "error: day-of-month field \"?\" is not crontab(5) syntax",
        );
        check(
            "0 0 L * *",
            "error: day-of-month field \"L\" is not crontab(5) syntax",
        );
        check(
            "0 0 * * 5L",
            "error: day-of-week field \"5L\" is not crontab(5) syntax",
        );
        check(
            "0 0 * * 1#2",
            "error: day-of-week field \"1#2\" is not crontab(5) syntax",
        );
        check(
            "*/ * * * *",
            "error: minute field \"*/\" is not crontab(5) syntax",
        );
        check(
            "jan * * * *",
            "error: minute field \"jan\" is not crontab(5) syntax",
        );
    }
    #[test]
    fn field_counts() {
        check(
            "* * * *",
            "error: a crontab time has 5 fields or is a @nickname, not 4 fields",
        );
        check(
            "0 * * * * *",
            "error: a crontab time has 5 fields or is a @nickname, not 6 fields",
        );
    }
    #[test]
    fn nicknames() {
        check("@hourly", "0 0 * * * *");
        check("@daily", "0 0 0 * * *");
        check("@midnight", "0 0 0 * * *");
        check("@weekly", "0 0 0 * * 0");
        check("@monthly", "0 0 0 1 * *");
        check("@yearly", "0 0 0 1 1 *");
        check("@annually", "0 0 0 1 1 *");
        check("@reboot", "reboot");
        check("@Daily", "0 0 0 * * *");
        check(
            "@fortnightly",
            "error: unknown nickname \"@fortnightly\" (use @reboot @yearly @annually @monthly @weekly @daily @midnight @hourly)",
        );
    }
    #[test]
    fn crontab_form_is_recognised() {
        assert!(is_crontab_form("*/15 * * * *"));
        assert!(is_crontab_form(" @daily"));
        assert!(!is_crontab_form("0 */15 * * * *"));
        assert!(!is_crontab_form("0 0 8 * * ? Asia/Shanghai"));
        assert!(!is_crontab_form("rate(5m)"));
        assert!(!is_crontab_form("at(2030-01-01T00:00:00)"));
    }

    // Day-of-week numbering, checked by fire times. 2024-01-01 is a Monday.
    #[test]
    fn dow_zero_to_six_is_every_day() {
        check_runs(
            "0 12 * * 0-6",
            "2024-01-06T13:00:00Z",
            &["2024-01-07T12:00:00Z", "2024-01-08T12:00:00Z"],
        );
    }
    #[test]
    fn dow_one_to_five_is_monday_to_friday() {
        check_runs(
            "0 12 * * 1-5",
            "2024-01-04T13:00:00Z",
            &["2024-01-05T12:00:00Z", "2024-01-08T12:00:00Z"],
        );
    }
    #[test]
    fn dow_seven_is_sunday() {
        check_runs(
            "0 12 * * 7",
            "2024-01-01T00:00:00Z",
            &["2024-01-07T12:00:00Z", "2024-01-14T12:00:00Z"],
        );
    }
    #[test]
    fn dow_zero_is_sunday() {
        check_runs(
            "0 12 * * 0",
            "2024-01-01T00:00:00Z",
            &["2024-01-07T12:00:00Z"],
        );
    }
    #[test]
    fn dow_step_two_is_sun_tue_thu_sat() {
        check_runs(
            "0 12 * * */2",
            "2024-01-01T00:00:00Z",
            &[
                "2024-01-02T12:00:00Z",
                "2024-01-04T12:00:00Z",
                "2024-01-06T12:00:00Z",
                "2024-01-07T12:00:00Z",
            ],
        );
    }
    #[test]
    fn dow_names_mon_fri() {
        check_runs(
            "0 12 * * MON-FRI",
            "2024-01-05T13:00:00Z",
            &["2024-01-08T12:00:00Z", "2024-01-09T12:00:00Z"],
        );
    }
    #[test]
    fn dow_range_ending_in_seven_includes_sunday() {
        check_runs(
            "0 12 * * 5-7",
            "2024-01-05T13:00:00Z",
            &[
                "2024-01-06T12:00:00Z",
                "2024-01-07T12:00:00Z",
                "2024-01-12T12:00:00Z",
            ],
        );
    }
    #[test]
    fn dom_or_dow_as_crontab5_example() {
        // "30 4 1,15 * 5": the 1st and the 15th, plus every Friday. 2024-03-01 is a Friday.
        check_runs(
            "30 4 1,15 * 5",
            "2024-02-29T00:00:00Z",
            &[
                "2024-03-01T04:30:00Z",
                "2024-03-08T04:30:00Z",
                "2024-03-15T04:30:00Z",
                "2024-03-22T04:30:00Z",
            ],
        );
    }
    #[test]
    fn weekly_is_sunday_midnight() {
        check_runs("@weekly", "2024-01-01T00:00:00Z", &["2024-01-07T00:00:00Z"]);
    }
}
