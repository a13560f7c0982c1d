//! Cron expressions (spec §5.2): the 6/7/8-field grammar with seconds, year and zone, and the
//! search for the next matching instant. Pure: never reads the clock, never panics on input.
//!
//! The grammar is written by hand rather than taken from the `cron` crate: that crate numbers
//! weekdays differently (1 = Sunday) and lacks `L`, `W`, `#` and the day-of-month OR
//! day-of-week union rule that the reference (gorhill/cronexpr) implements.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};

use super::tz::{LocalInstant, ZoneDb};
use super::{ErrorCode, ScheduleError, Zone};

const FIRST_YEAR: i32 = 1970;
const LAST_YEAR: i32 = 2099;
/// `d#1` to `d#5`.
const NTH_WEEKS: u32 = 5;

/// A parsed cron expression and the zone it is evaluated in.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    /// Not boxed: every registered cron keeps one, and one allocation (`Arc<Schedule>`)
    /// instead of two saves 48 bytes a task; 104 bytes are cheap to move.
    fields: Fields,
    zone: Zone,
}

impl CronSchedule {
    /// Parses 6 fields (`sec min hour dom month dow`), 7 (plus a year or a zone) or 8 (plus a
    /// year and a zone). A cron without a zone runs in `system_zone`; a named zone is loaded
    /// from the host's zoneinfo database (`ZoneDb::host`).
    pub fn parse(expr: &str, system_zone: &Zone) -> Result<CronSchedule, ScheduleError> {
        CronSchedule::parse_in(expr, system_zone, &ZoneDb::host())
    }

    /// `parse`, loading a named zone from `db`.
    pub fn parse_in(
        expr: &str,
        system_zone: &Zone,
        db: &ZoneDb,
    ) -> Result<CronSchedule, ScheduleError> {
        let words: Vec<&str> = expr.split_whitespace().collect();
        let (exprs, zone) = match words.as_slice() {
            [_, _, _, _, _, _] => (field_array(&words, "*"), system_zone.clone()),
            [_, _, _, _, _, _, last] if is_year_field(last) => {
                (field_array(&words, last), system_zone.clone())
            }
            [_, _, _, _, _, _, last] => (
                field_array(&words, "*"),
                Zone::parse_in(last, db).map_err(|e| year_hint(e, last))?,
            ),
            [_, _, _, _, _, _, year, zone] => {
                (field_array(&words, year), Zone::parse_in(zone, db)?)
            }
            // A bare code, as the reference reports it; the hint is for people.
            _ => {
                return Err(ScheduleError::new(ErrorCode::InvalidCronExpression)
                    .with_hint(field_count_hint(expr, words.len())))
            }
        };
        Ok(CronSchedule {
            fields: Fields::parse(&exprs)?,
            zone,
        })
    }

    /// The zone the expression is evaluated in.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The first matching whole second strictly after `from`, or `None` when nothing matches up
    /// to the end of 2099.
    ///
    /// DST: a local time the clocks skip fires once, at the first instant after the gap; a local
    /// time that happens twice fires once, at its earliest instant after `from`.
    pub fn next_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let floor = DateTime::from_timestamp(from.timestamp(), 0)?;
        let mut start = self
            .zone
            .to_local(floor)?
            .checked_add_signed(Duration::seconds(1))?;
        loop {
            let local = self.fields.next_local_at_or_after(start)?;
            let candidate = match self.zone.resolve_local(local)? {
                LocalInstant::Single(t) => Some(t),
                LocalInstant::Ambiguous { earliest, latest } => {
                    [earliest, latest].into_iter().find(|t| *t > from)
                }
                LocalInstant::Gap { next_valid } => Some(next_valid),
            };
            match candidate {
                Some(t) if t > from => return Some(t),
                _ => start = local.checked_add_signed(Duration::seconds(1))?,
            }
        }
    }
}

/// The seven field texts, with `year` appended after the first six words.
fn field_array<'a>(words: &[&'a str], year: &'a str) -> [&'a str; 7] {
    let word = |i: usize| words.get(i).copied().unwrap_or("");
    [word(0), word(1), word(2), word(3), word(4), word(5), year]
}

/// What to write instead of a cron with the wrong number of fields.
fn field_count_hint(expr: &str, fields: usize) -> String {
    const GRAMMAR: &str = "a cron has 6 to 8 fields, seconds first: second minute hour day-of-month month day-of-week [year] [zone], e.g. \"0 30 3 * * ?\"";
    match crate::schedule::crontab::to_seconds_first(expr) {
        Ok(crate::schedule::crontab::CrontabTime::Cron(text)) if fields <= 5 => {
            format!(
                "seconds come first here: the crontab(5) time {:?} is {text:?}; {GRAMMAR}",
                expr.trim()
            )
        }
        Ok(crate::schedule::crontab::CrontabTime::Reboot) => {
            "@reboot is not a time: in a task file it means repeat EveryReboot".to_string()
        }
        _ => format!("{GRAMMAR}; found {fields} field(s)"),
    }
}

/// A seventh field that looks like a year out of range is read as a zone, as the reference
/// does; say so.
fn year_hint(e: ScheduleError, field: &str) -> ScheduleError {
    let yearish = !field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b',' | b'/' | b'*'))
        && field.bytes().any(|b| b.is_ascii_digit());
    if yearish {
        return e.with_hint(format!(
            "{field:?} is read as a time zone because it is not a year from {FIRST_YEAR} to {LAST_YEAR}, the years a cron can name"
        ));
    }
    e
}

/// The reference's `CronYearFieldRegexp`, ``^\*$|^\?$|19[789][0-9]|20[0-9]{2}|^\*/(\d+)$``.
/// The middle alternatives are unanchored, so any text containing such digits counts as a year
/// (and then fails as a year if it is not one); `2100` does not, and is read as a zone.
fn is_year_field(text: &str) -> bool {
    if text == "*" || text == "?" {
        return true;
    }
    if let Some(step) = text.strip_prefix("*/") {
        if !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()) {
            return true;
        }
    }
    text.as_bytes().windows(4).any(|w| match w {
        [b'1', b'9', c, d] => matches!(c, b'7'..=b'9') && d.is_ascii_digit(),
        [b'2', b'0', c, d] => c.is_ascii_digit() && d.is_ascii_digit(),
        _ => false,
    })
}

/// A set of small numbers below `64 * W`, one bit each. Every field but the year fits one
/// word; the year (`year - 1970`, up to 2099) takes three. Each registered cron keeps one set
/// per field, so the words count: with three words everywhere a schedule was 344 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bits<const W: usize = 1>([u64; W]);

impl<const W: usize> Default for Bits<W> {
    fn default() -> Self {
        Bits([0; W])
    }
}

impl<const W: usize> Bits<W> {
    fn set(&mut self, i: u32) {
        if let Some(word) = self.0.get_mut((i / 64) as usize) {
            *word |= 1 << (i % 64);
        }
    }

    fn has(&self, i: u32) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// The smallest member in `from..=to`.
    fn next_in(&self, from: u32, to: u32) -> Option<u32> {
        (from..=to).find(|&i| self.has(i))
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; W]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldKind {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

impl FieldKind {
    const ALL: [FieldKind; 7] = [
        FieldKind::Second,
        FieldKind::Minute,
        FieldKind::Hour,
        FieldKind::DayOfMonth,
        FieldKind::Month,
        FieldKind::DayOfWeek,
        FieldKind::Year,
    ];

    fn name(self) -> &'static str {
        match self {
            FieldKind::Second => "second",
            FieldKind::Minute => "minute",
            FieldKind::Hour => "hour",
            FieldKind::DayOfMonth => "day-of-month",
            FieldKind::Month => "month",
            FieldKind::DayOfWeek => "day-of-week",
            FieldKind::Year => "year",
        }
    }

    /// The range of `*`; also the largest step (`*/60` in seconds is an error).
    fn bounds(self) -> (u32, u32) {
        match self {
            FieldKind::Second | FieldKind::Minute => (0, 59),
            FieldKind::Hour => (0, 23),
            FieldKind::DayOfMonth => (1, 31),
            FieldKind::Month => (1, 12),
            FieldKind::DayOfWeek => (0, 6),
            FieldKind::Year => (FIRST_YEAR as u32, LAST_YEAR as u32),
        }
    }

    /// One value: a number (one optional leading zero, years exactly four digits) or, for
    /// months and weekdays, a 3-letter or full English name in any case. Day-of-week accepts 7.
    fn value(self, text: &str) -> Option<u32> {
        let names: &[&str] = match self {
            FieldKind::Month => &MONTHS,
            FieldKind::DayOfWeek => &WEEKDAYS,
            _ => &[],
        };
        let lower = text.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| lower == n[..3] || lower == *n) {
            let i = i as u32;
            return Some(if self == FieldKind::Month { i + 1 } else { i });
        }
        let (min, max) = self.bounds();
        let max = if self == FieldKind::DayOfWeek { 7 } else { max };
        // `0?[0-9]`-like: one or two digits for most fields (so `05` but not `005`), four for years.
        let width_ok = if self == FieldKind::Year {
            text.len() == 4
        } else {
            (1..=2).contains(&text.len())
        };
        let digits = Some(text).filter(|_| width_ok)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits
            .parse::<u32>()
            .ok()
            .filter(|v| (min..=max).contains(v))
    }
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

/// The seven parsed fields. Day bits: day-of-month 1..=31, weekday 0 (Sunday)..=6, year as
/// `year - 1970`.
#[derive(Clone, Debug, Default)]
struct Fields {
    seconds: Bits,
    minutes: Bits,
    hours: Bits,
    months: Bits,
    years: Bits<3>,
    /// False for `*` and `?`; when both day fields are restricted a day matches either (union).
    dom_restricted: bool,
    days_of_month: Bits,
    /// `L`.
    last_day: bool,
    /// `LW`.
    last_weekday: bool,
    /// `15W`: the weekday nearest the 15th, without leaving the month.
    nearest_weekdays: Bits,
    dow_restricted: bool,
    weekdays: Bits,
    /// `5L`: the last Friday of the month.
    last_weekdays: Bits,
    /// Bit `8 * (k - 1) + d` stands for `d#k` (`d` from 0 to 7, like the other weekday
    /// sets): one word for all five instead of one each.
    nth_weekdays: Bits,
}

fn syntax_error(kind: FieldKind, text: &str) -> ScheduleError {
    ScheduleError::with_detail(
        ErrorCode::InvalidCronExpression,
        format!("syntax error in {} field: '{text}'", kind.name()),
    )
}

impl Fields {
    fn parse(texts: &[&str; 7]) -> Result<Fields, ScheduleError> {
        let mut fields = Fields::default();
        for (kind, text) in FieldKind::ALL.into_iter().zip(texts.iter()) {
            for entry in text.split(',') {
                fields.parse_entry(kind, entry)?;
            }
        }
        fields.dom_restricted = texts[3] != "*" && texts[3] != "?";
        fields.dow_restricted = texts[5] != "*" && texts[5] != "?";
        // Sunday is both 0 and 7.
        for bits in [&mut fields.weekdays, &mut fields.last_weekdays] {
            if bits.has(7) {
                bits.set(0);
            }
        }
        for k in 0..NTH_WEEKS {
            if fields.nth_weekdays.has(8 * k + 7) {
                fields.nth_weekdays.set(8 * k);
            }
        }
        Ok(fields)
    }

    fn parse_entry(&mut self, kind: FieldKind, entry: &str) -> Result<(), ScheduleError> {
        let lower = entry.to_ascii_lowercase();
        match kind {
            FieldKind::DayOfMonth => {
                if lower == "l" {
                    self.last_day = true;
                    return Ok(());
                }
                if lower == "lw" {
                    self.last_weekday = true;
                    return Ok(());
                }
                if let Some(day) = lower.strip_suffix('w') {
                    let day = kind.value(day).ok_or_else(|| syntax_error(kind, entry))?;
                    self.nearest_weekdays.set(day);
                    return Ok(());
                }
            }
            FieldKind::DayOfWeek => {
                if let Some(day) = lower.strip_suffix('l') {
                    let day = kind.value(day).ok_or_else(|| syntax_error(kind, entry))?;
                    self.last_weekdays.set(day);
                    return Ok(());
                }
                if let Some((day, nth)) = lower.split_once('#') {
                    let day = kind.value(day).ok_or_else(|| syntax_error(kind, entry))?;
                    let k = match nth {
                        "1" | "2" | "3" | "4" | "5" => nth.parse::<u32>().ok(),
                        _ => None,
                    }
                    .ok_or_else(|| syntax_error(kind, entry))?;
                    self.nth_weekdays.set(8 * (k - 1) + day);
                    return Ok(());
                }
            }
            _ => {}
        }
        let (first, last, step) = parse_range(kind, entry)?;
        let values = (first..=last).step_by(step as usize);
        let bits = match kind {
            FieldKind::Second => &mut self.seconds,
            FieldKind::Minute => &mut self.minutes,
            FieldKind::Hour => &mut self.hours,
            FieldKind::DayOfMonth => &mut self.days_of_month,
            FieldKind::Month => &mut self.months,
            FieldKind::DayOfWeek => &mut self.weekdays,
            FieldKind::Year => {
                values.for_each(|v| self.years.set(v - FIRST_YEAR as u32));
                return Ok(());
            }
        };
        values.for_each(|v| bits.set(v));
        Ok(())
    }

    /// The first local time at or after `start` that matches every field, up to the end of 2099.
    /// Skips whole years, months, days, hours and minutes that cannot match.
    fn next_local_at_or_after(&self, start: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut c = if start.year() < FIRST_YEAR {
            Cursor {
                year: FIRST_YEAR,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
            }
        } else {
            Cursor {
                year: start.year(),
                month: start.month(),
                day: start.day(),
                hour: start.hour(),
                minute: start.minute(),
                second: start.second(),
            }
        };
        // Each turn either returns or moves the cursor forward to the start of a later unit;
        // the year bound ends the loop.
        while c.year <= LAST_YEAR {
            let year_index = (c.year - FIRST_YEAR) as u32;
            match self
                .years
                .next_in(year_index, (LAST_YEAR - FIRST_YEAR) as u32)
            {
                None => return None,
                Some(y) if y != year_index => {
                    c = Cursor::year_start(FIRST_YEAR + y as i32);
                    continue;
                }
                Some(_) => {}
            }
            match self.months.next_in(c.month, 12) {
                None => {
                    c = Cursor::year_start(c.year + 1);
                    continue;
                }
                Some(m) if m != c.month => c = Cursor::month_start(c.year, m),
                Some(_) => {}
            }
            let last = days_in_month(c.year, c.month);
            match (c.day..=last).find(|&d| self.day_matches(c.year, c.month, d, last)) {
                None => {
                    c = c.next_month();
                    continue;
                }
                Some(d) if d != c.day => {
                    c = Cursor {
                        day: d,
                        hour: 0,
                        minute: 0,
                        second: 0,
                        ..c
                    }
                }
                Some(_) => {}
            }
            match self.hours.next_in(c.hour, 23) {
                None => {
                    c = c.next_day();
                    continue;
                }
                Some(h) if h != c.hour => {
                    c = Cursor {
                        hour: h,
                        minute: 0,
                        second: 0,
                        ..c
                    }
                }
                Some(_) => {}
            }
            match self.minutes.next_in(c.minute, 59) {
                None => {
                    c = c.next_hour();
                    continue;
                }
                Some(m) if m != c.minute => {
                    c = Cursor {
                        minute: m,
                        second: 0,
                        ..c
                    }
                }
                Some(_) => {}
            }
            match self.seconds.next_in(c.second, 59) {
                None => c = c.next_minute(),
                Some(s) => return c.to_naive(s),
            }
        }
        None
    }

    fn day_matches(&self, year: i32, month: u32, day: u32, last: u32) -> bool {
        if !self.dom_restricted && !self.dow_restricted {
            return true;
        }
        (self.dom_restricted && self.dom_matches(year, month, day, last))
            || (self.dow_restricted && self.dow_matches(year, month, day, last))
    }

    fn dom_matches(&self, year: i32, month: u32, day: u32, last: u32) -> bool {
        self.days_of_month.has(day)
            || (self.last_day && day == last)
            || (self.last_weekday && day == last_weekday_of_month(year, month, last))
            || (!self.nearest_weekdays.is_empty()
                && (1..=last).any(|w| {
                    self.nearest_weekdays.has(w) && nearest_weekday(year, month, w, last) == day
                }))
    }

    fn dow_matches(&self, year: i32, month: u32, day: u32, last: u32) -> bool {
        let Some(weekday) = weekday(year, month, day) else {
            return false;
        };
        let nth = (day - 1) / 7;
        self.weekdays.has(weekday)
            || (self.last_weekdays.has(weekday) && day + 7 > last)
            || (nth < NTH_WEEKS && self.nth_weekdays.has(8 * nth + weekday))
    }
}

/// `*`, `?`, `*/s`, `a`, `a-b`, `a/s`, `a-b/s` as `(first, last, step)`.
fn parse_range(kind: FieldKind, entry: &str) -> Result<(u32, u32, u32), ScheduleError> {
    let (min, max) = kind.bounds();
    let (span, step) = match entry.split_once('/') {
        None => (entry, None),
        Some((span, step)) => {
            if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax_error(kind, entry));
            }
            // Any step over the field's maximum is an error, so saturating is exact.
            let step = step.parse::<u32>().unwrap_or(u32::MAX);
            if step < 1 || step > max {
                return Err(ScheduleError::with_detail(
                    ErrorCode::InvalidCronExpression,
                    format!("invalid interval {entry}"),
                ));
            }
            (span, Some(step))
        }
    };
    if span == "*" || span == "?" {
        // `?/5` is not in the reference grammar.
        if span == "?" && step.is_some() {
            return Err(syntax_error(kind, entry));
        }
        return Ok((min, max, step.unwrap_or(1)));
    }
    let value = |text: &str| kind.value(text).ok_or_else(|| syntax_error(kind, entry));
    match span.split_once('-') {
        None => {
            let first = value(span)?;
            // `a/s` runs from a to the field's maximum; a plain `a` is just a.
            let last = if step.is_some() {
                max.max(first)
            } else {
                first
            };
            Ok((first, last, step.unwrap_or(1)))
        }
        Some((a, b)) => {
            let first = value(a)?;
            let mut last = value(b)?;
            // The reference drops Sunday from `1-7`, `MON-SUN` and `5-7`; a day-of-week range
            // ending in Sunday (7 or 0) here runs up to 7, which is folded into Sunday.
            if kind == FieldKind::DayOfWeek && last == 0 && first > 0 {
                last = 7;
            }
            // The reference yields an empty set for `22-2` or `FRI-MON`; we reject them.
            if first > last {
                return Err(syntax_error(kind, entry));
            }
            Ok((first, last, step.unwrap_or(1)))
        }
    }
}

/// A position in local time while searching; fields may point past the end of a unit only
/// transiently, and the `next_*` steps carry into the larger units.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Cursor {
    fn year_start(year: i32) -> Cursor {
        Cursor {
            year,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        }
    }

    fn month_start(year: i32, month: u32) -> Cursor {
        Cursor {
            year,
            month,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        }
    }

    fn next_month(self) -> Cursor {
        if self.month >= 12 {
            Cursor::year_start(self.year + 1)
        } else {
            Cursor::month_start(self.year, self.month + 1)
        }
    }

    fn next_day(self) -> Cursor {
        if self.day >= days_in_month(self.year, self.month) {
            self.next_month()
        } else {
            Cursor {
                day: self.day + 1,
                hour: 0,
                minute: 0,
                second: 0,
                ..self
            }
        }
    }

    fn next_hour(self) -> Cursor {
        if self.hour >= 23 {
            self.next_day()
        } else {
            Cursor {
                hour: self.hour + 1,
                minute: 0,
                second: 0,
                ..self
            }
        }
    }

    fn next_minute(self) -> Cursor {
        if self.minute >= 59 {
            self.next_hour()
        } else {
            Cursor {
                minute: self.minute + 1,
                second: 0,
                ..self
            }
        }
    }

    fn to_naive(self, second: u32) -> Option<NaiveDateTime> {
        NaiveDate::from_ymd_opt(self.year, self.month, self.day)?.and_hms_opt(
            self.hour,
            self.minute,
            second,
        )
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// 0 = Sunday .. 6 = Saturday.
fn weekday(year: i32, month: u32, day: u32) -> Option<u32> {
    NaiveDate::from_ymd_opt(year, month, day).map(|d| d.weekday().num_days_from_sunday())
}

/// `LW`: the last Monday-to-Friday day of the month.
fn last_weekday_of_month(year: i32, month: u32, last: u32) -> u32 {
    match weekday(year, month, last) {
        Some(6) => last - 1,
        Some(0) => last - 2,
        _ => last,
    }
}

/// `dW`: the weekday nearest day `d`, staying inside the month (Quartz rules).
fn nearest_weekday(year: i32, month: u32, day: u32, last: u32) -> u32 {
    match weekday(year, month, day) {
        Some(6) if day > 1 => day - 1,
        Some(6) => day + 2,
        Some(0) if day < last => day + 1,
        Some(0) => day - 2,
        _ => day,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Schedule, ScheduleKind};
    use super::*;
    use crate::schedule::testing::{self, fixture_db, utc};

    fn parse(expr: &str) -> CronSchedule {
        CronSchedule::parse_in(expr, &Zone::utc(), &fixture_db())
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// The next run after `from` (RFC 3339), compared as instants.
    fn check(expr: &str, from: &str, expected: Option<&str>) {
        assert_eq!(
            parse(expr).next_after(utc(from)),
            expected.map(utc),
            "{expr} after {from}"
        );
    }

    /// Successive runs: each one is the `from` of the next.
    fn check_runs(expr: &str, from: &str, expected: &[&str]) {
        let cron = parse(expr);
        let mut at = utc(from);
        for want in expected {
            let got = cron.next_after(at);
            assert_eq!(got, Some(utc(want)), "{expr} after {at}");
            at = got.unwrap_or(at);
        }
    }

    /// The code and detail (the reference's text); hints are checked by `check_hint`.
    fn check_err(expr: &str, expected: &str) {
        let got = CronSchedule::parse_in(expr, &Zone::utc(), &fixture_db())
            .map(|_| ())
            .map_err(|e| ScheduleError { hint: None, ..e }.to_string());
        assert_eq!(got, Err(expected.to_string()), "{expr:?}");
    }

    /// The whole message people see, hint included.
    fn check_hint(expr: &str, expected: &str) {
        let got = CronSchedule::parse_in(expr, &Zone::utc(), &fixture_db())
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(got, Err(expected.to_string()), "{expr:?}");
    }

    #[test]
    fn a_crontab_time_is_told_that_seconds_come_first() {
        check_hint(
            "*/15 * * * *",
            "InvalidCronExpression (seconds come first here: the crontab(5) time \"*/15 * * * *\" is \"0 */15 * * * *\"; a cron has 6 to 8 fields, seconds first: second minute hour day-of-month month day-of-week [year] [zone], e.g. \"0 30 3 * * ?\")",
        );
        check_hint(
            "@daily",
            "InvalidCronExpression (seconds come first here: the crontab(5) time \"@daily\" is \"0 0 0 * * *\"; a cron has 6 to 8 fields, seconds first: second minute hour day-of-month month day-of-week [year] [zone], e.g. \"0 30 3 * * ?\")",
        );
        check_hint(
            "@reboot",
            "InvalidCronExpression (@reboot is not a time: in a task file it means repeat EveryReboot)",
        );
    }

    #[test]
    fn garbage_is_told_the_grammar() {
        check_hint(
            "every day",
            "InvalidCronExpression (a cron has 6 to 8 fields, seconds first: second minute hour day-of-month month day-of-week [year] [zone], e.g. \"0 30 3 * * ?\"; found 2 field(s))",
        );
    }

    #[test]
    fn a_year_out_of_range_is_said_to_be_the_year() {
        for (year, code) in [
            ("2100", "TimezoneInformationCorrupt"),
            ("1969", "TimezoneInformationCorrupt"),
            ("20", "TimezoneInformationCorrupt"),
            ("2100-2101", "InvalidGMTOffsetForTimezone"),
        ] {
            check_hint(
                &format!("0 0 0 1 1 ? {year}"),
                &format!("{} (\"{year}\" is read as a time zone because it is not a year from 1970 to 2099, the years a cron can name)", code),
            );
        }
        check_err("0 0 0 1 1 ? Mars", "TimezoneInformationCorrupt");
        check_hint("0 0 0 1 1 ? Mars", "TimezoneInformationCorrupt");
    }

    #[test]
    fn an_offset_without_minutes_is_shown_the_accepted_form() {
        let form = "an offset is written GMT, a sign, the hour 0 to 14 without a leading zero, a colon and two minute digits";
        check_hint(
            "0 0 8 * * ? GMT+8",
            &format!("InvalidGMTOffsetForTimezone (write GMT+8:00; {form})"),
        );
        check_hint(
            "0 0 8 * * ? UTC+8",
            &format!("InvalidGMTOffsetForTimezone (write GMT+8:00; {form})"),
        );
        check_hint(
            "0 0 8 * * ? GMT-05:30",
            &format!("InvalidGMTOffsetForTimezone (write GMT-5:30; {form})"),
        );
        check_hint(
            "0 0 8 * * ? GMT+15",
            &format!("InvalidGMTOffsetForTimezone ({form}, e.g. GMT+8:00 or GMT-5:30)"),
        );
    }

    #[test]
    fn hints_never_reach_the_wire() {
        for expr in ["@daily", "0 0 0 1 1 ? 2100", "0 0 8 * * ? GMT+8"] {
            let e = CronSchedule::parse_in(expr, &Zone::utc(), &fixture_db()).expect_err("invalid");
            assert!(e.hint.is_some(), "{expr}");
            assert_eq!(e.wire_value(), e.code.as_str(), "{expr}");
        }
    }

    // Spec §10.8 (library vectors, given a seconds field and a year where they lacked one).
    #[test]
    fn lib_every_second() {
        check(
            "* * * * * * *",
            "2013-01-01T00:00:59Z",
            Some("2013-01-01T00:01:00Z"),
        );
    }
    #[test]
    fn lib_every_five_seconds() {
        check(
            "*/5 * * * * * *",
            "2013-01-01T00:00:00Z",
            Some("2013-01-01T00:00:05Z"),
        );
    }
    #[test]
    fn lib_minute_range_step() {
        check(
            "0 17-43/5 * * * ?",
            "2013-01-01T00:30:00Z",
            Some("2013-01-01T00:32:00Z"),
        );
    }
    #[test]
    fn lib_minute_range_step_list() {
        check(
            "0 15-30/4,55 * * * ?",
            "2013-01-01T00:16:00Z",
            Some("2013-01-01T00:19:00Z"),
        );
    }
    #[test]
    fn lib_monday() {
        check(
            "0 0 0 ? * MON",
            "2013-01-28T00:00:00Z",
            Some("2013-02-04T00:00:00Z"),
        );
    }
    #[test]
    fn lib_saturday_sunday() {
        check(
            "0 0 0 ? * 6,7",
            "2013-01-01T00:00:00Z",
            Some("2013-01-05T00:00:00Z"),
        );
    }
    #[test]
    fn lib_fifth_saturday() {
        let runs = [
            "2013-11-30T00:00:00Z",
            "2014-03-29T00:00:00Z",
            "2014-05-31T00:00:00Z",
            "2014-08-30T00:00:00Z",
            "2014-11-29T00:00:00Z",
        ];
        check_runs("0 0 0 ? * 6#5", "2013-09-02T00:00:00Z", &runs);
    }
    #[test]
    fn lib_nearest_weekday() {
        check(
            "0 0 0 14W * ?",
            "2013-03-31T00:00:00Z",
            Some("2013-04-15T00:00:00Z"),
        );
        check(
            "0 0 0 14W * ?",
            "2013-08-31T00:00:00Z",
            Some("2013-09-13T00:00:00Z"),
        );
        check(
            "0 0 0 30W * ?",
            "2013-09-02T00:00:00Z",
            Some("2013-09-30T00:00:00Z"),
        );
    }
    #[test]
    fn lib_last_day() {
        check(
            "0 0 0 L * ?",
            "2016-02-15T00:00:00Z",
            Some("2016-02-29T00:00:00Z"),
        );
    }
    #[test]
    fn lib_last_weekday() {
        check(
            "0 0 0 LW * ?",
            "2013-11-02T00:00:00Z",
            Some("2013-11-29T00:00:00Z"),
        );
    }
    #[test]
    fn lib_past_year() {
        check("* * * * * ? 1980", "2013-08-31T00:00:00Z", None);
    }
    #[test]
    fn lib_bad_intervals() {
        check_err(
            "*/60 * * * * ?",
            "InvalidCronExpression: invalid interval */60",
        );
        check_err(
            "2/60 * * * * ?",
            "InvalidCronExpression: invalid interval 2/60",
        );
        check_err(
            "2-20/61 * * * * ?",
            "InvalidCronExpression: invalid interval 2-20/61",
        );
    }

    // Spec §10.9, from 2024-03-15 10:20:30 in the schedule's zone.
    const FROM: &str = "2024-03-15T10:20:30Z";
    #[test]
    fn every_five_minutes() {
        check("0 */5 * * * ?", FROM, Some("2024-03-15T10:25:00Z"));
    }
    #[test]
    fn every_twenty_seconds() {
        check("*/20 * * * * ?", FROM, Some("2024-03-15T10:20:40Z"));
    }
    #[test]
    fn monday_noon() {
        check("0 0 12 ? * MON", FROM, Some("2024-03-18T12:00:00Z"));
    }
    #[test]
    fn union_of_day_fields() {
        check("0 0 12 1 * MON", FROM, Some("2024-03-18T12:00:00Z"));
    }
    #[test]
    fn last_friday() {
        check("0 15 10 ? * 6L", FROM, Some("2024-03-30T10:15:00Z"));
    }
    #[test]
    fn last_day() {
        check("0 15 10 L * ?", FROM, Some("2024-03-31T10:15:00Z"));
    }
    #[test]
    fn last_weekday() {
        check("0 15 10 LW * ?", FROM, Some("2024-03-29T10:15:00Z"));
    }
    #[test]
    fn nearest_weekday_15() {
        check("0 15 10 15W * ?", FROM, Some("2024-04-15T10:15:00Z"));
    }
    #[test]
    fn third_saturday() {
        check("0 15 10 ? * 6#3", FROM, Some("2024-03-16T10:15:00Z"));
    }
    #[test]
    fn new_year_or_january_monday() {
        check("0 0 0 1 1 1", FROM, Some("2025-01-01T00:00:00Z"));
    }
    #[test]
    fn year_range() {
        check("0 0 0 1 1 ? 2020-2030", FROM, Some("2025-01-01T00:00:00Z"));
    }
    #[test]
    fn seven_is_sunday() {
        check("0 0 12 * * 7", FROM, Some("2024-03-17T12:00:00Z"));
    }
    #[test]
    fn leap_day() {
        check("0 0 0 29 2 ?", FROM, Some("2028-02-29T00:00:00Z"));
    }
    #[test]
    fn first_tuesday() {
        check("0 30 9 ? * 2#1", FROM, Some("2024-04-02T09:30:00Z"));
    }
    #[test]
    fn iana_zone() {
        check(
            "0 0 8 * * ? Asia/Shanghai",
            "2024-03-15T10:20:30+08:00",
            Some("2024-03-16T08:00:00+08:00"),
        );
        check(
            "0 0 8 * * ? * Asia/Shanghai",
            "2024-03-15T10:20:30+08:00",
            Some("2024-03-16T00:00:00Z"),
        );
        assert_eq!(
            parse("0 0 8 * * ? Asia/Shanghai").zone().name(),
            "Asia/Shanghai"
        );
    }
    #[test]
    fn gmt_offset_zone() {
        check(
            "0 0 8 * * ? GMT+8:00",
            "2024-03-15T10:20:30+08:00",
            Some("2024-03-16T08:00:00+08:00"),
        );
        assert_eq!(parse("0 0 8 * * ? GMT+8:00").zone().name(), "GMT+8:00");
    }
    #[test]
    fn utc_and_gmt_zones() {
        check("0 0 8 * * ? UTC", FROM, Some("2024-03-16T08:00:00Z"));
        check("0 0 8 * * ? GMT", FROM, Some("2024-03-16T08:00:00Z"));
        assert_eq!(parse("0 0 8 * * ? GMT").zone().name(), "GMT");
    }

    // Spec §10.9, three successive runs from 2030-03-08 10:20:30.
    const FROM_2030: &str = "2030-03-08T10:20:30Z";
    #[test]
    fn year_list() {
        check_runs(
            "0 0 12 1 1 ? 2031,2033",
            FROM_2030,
            &["2031-01-01T12:00:00Z", "2033-01-01T12:00:00Z"],
        );
        check("0 0 12 1 1 ? 2031,2033", "2033-01-01T12:00:00Z", None);
    }
    #[test]
    fn year_range_runs() {
        check_runs(
            "0 0 12 1 6 ? 2030-2032",
            FROM_2030,
            &[
                "2030-06-01T12:00:00Z",
                "2031-06-01T12:00:00Z",
                "2032-06-01T12:00:00Z",
            ],
        );
    }
    #[test]
    fn every_other_year() {
        check_runs(
            "0 0 0 1 1 ? */2",
            FROM_2030,
            &[
                "2032-01-01T00:00:00Z",
                "2034-01-01T00:00:00Z",
                "2036-01-01T00:00:00Z",
            ],
        );
    }
    #[test]
    fn new_york_mondays() {
        let runs = [
            "2030-03-11T09:00:00-04:00",
            "2030-03-18T09:00:00-04:00",
            "2030-03-25T09:00:00-04:00",
        ];
        check_runs(
            "0 0 9 ? * MON America/New_York",
            "2030-03-08T10:20:30-05:00",
            &runs,
        );
    }
    #[test]
    fn gmt_minus_14() {
        check_runs(
            "0 0 8 * * ? GMT-14:00",
            "2030-03-08T10:20:30-14:00",
            &["2030-03-09T22:00:00Z", "2030-03-10T22:00:00Z"],
        );
    }
    #[test]
    fn year_and_zone() {
        let runs = [
            "2030-12-31T23:00:00Z",
            "2031-01-01T23:00:00Z",
            "2031-01-02T23:00:00Z",
        ];
        check_runs(
            "0 0 8 * * ? 2031 Asia/Tokyo",
            "2030-03-08T10:20:30+09:00",
            &runs,
        );
    }
    #[test]
    fn last_thursday() {
        check_runs(
            "0 0 12 ? * 5L",
            FROM_2030,
            &[
                "2030-03-29T12:00:00Z",
                "2030-04-26T12:00:00Z",
                "2030-05-31T12:00:00Z",
            ],
        );
    }
    #[test]
    fn fifth_friday() {
        check_runs(
            "0 0 12 ? * FRI#5",
            FROM_2030,
            &[
                "2030-03-29T12:00:00Z",
                "2030-05-31T12:00:00Z",
                "2030-08-30T12:00:00Z",
            ],
        );
    }
    #[test]
    fn seconds_from_five() {
        check_runs(
            "5/15 * * * * ?",
            FROM_2030,
            &[
                "2030-03-08T10:20:35Z",
                "2030-03-08T10:20:50Z",
                "2030-03-08T10:21:05Z",
            ],
        );
    }
    #[test]
    fn minute_range_step() {
        check_runs(
            "0 5-20/5 * * * ?",
            FROM_2030,
            &[
                "2030-03-08T11:05:00Z",
                "2030-03-08T11:10:00Z",
                "2030-03-08T11:15:00Z",
            ],
        );
    }
    #[test]
    fn every_six_hours() {
        check_runs(
            "0 0 */6 * * ?",
            FROM_2030,
            &[
                "2030-03-08T12:00:00Z",
                "2030-03-08T18:00:00Z",
                "2030-03-09T00:00:00Z",
            ],
        );
    }
    #[test]
    fn two_days_of_month() {
        check_runs(
            "0 0 12 1,15 * ?",
            FROM_2030,
            &[
                "2030-03-15T12:00:00Z",
                "2030-04-01T12:00:00Z",
                "2030-04-15T12:00:00Z",
            ],
        );
    }
    #[test]
    fn weekend_names() {
        check_runs(
            "0 0 12 ? * sun,sat",
            FROM_2030,
            &[
                "2030-03-09T12:00:00Z",
                "2030-03-10T12:00:00Z",
                "2030-03-16T12:00:00Z",
            ],
        );
    }
    #[test]
    fn last_year() {
        check_runs("0 0 0 1 1 ? 2099", FROM_2030, &["2099-01-01T00:00:00Z"]);
        check("0 0 0 1 1 ? 2099", "2099-01-01T00:00:00Z", None);
    }

    // Spec §10.9 errors.
    #[test]
    fn field_counts() {
        check_err("0 0 8 * *", "InvalidCronExpression");
        check_err("0 0 8 * * ? * * extra", "InvalidCronExpression");
        check_err("", "InvalidCronExpression");
    }
    #[test]
    fn zone_errors() {
        check_err("0 0 8 * * ? CST", "TimezoneInformationCorrupt");
        check_err(
            "0 0 8 * * ? Asia/Nowhere",
            "TimezoneInformationCorrupt: unknown time zone Asia/Nowhere",
        );
        check_err("0 0 8 * * ? GMT+15:00", "InvalidGMTOffsetForTimezone");
        check_err("0 0 8 * * ? GMT+08:00", "InvalidGMTOffsetForTimezone");
        check_err("0 0 8 * * ? GMT+8:60", "InvalidGMTOffsetForTimezone");
        check_err("0 0 8 * * ? UTC+8:00", "InvalidGMTOffsetForTimezone");
        check_err("0 0 0 1 1 ? 2100", "TimezoneInformationCorrupt");
    }
    #[test]
    fn expired() {
        let first = |expr: &str, now: &str| {
            let schedule =
                Schedule::parse(expr, ScheduleKind::Cron, 0, &Zone::utc()).expect("valid cron");
            schedule.first_after(utc(now)).map_err(|e| e.to_string())
        };
        assert_eq!(
            first("0 0 0 1 1 ? 2023", "2026-11-24T00:00:00Z"),
            Err("CronExpressionExpired".to_string())
        );
        assert_eq!(
            first("0 0 0 31 2 ?", "2026-11-24T00:00:00Z"),
            Err("CronExpressionExpired".to_string())
        );
        assert_eq!(
            first("0 0 0 1 1 ? 2023", "2022-06-01T00:00:00Z"),
            Ok(utc("2023-01-01T00:00:00Z"))
        );
    }
    #[test]
    fn bad_interval() {
        check_err(
            "*/60 * * * * ?",
            "InvalidCronExpression: invalid interval */60",
        );
        check_err(
            "0 0 */24 * * ?",
            "InvalidCronExpression: invalid interval */24",
        );
        check_err(
            "0 0 */0 * * ?",
            "InvalidCronExpression: invalid interval */0",
        );
        check_err(
            "0 0 0/99999999999999999999 * * ?",
            "InvalidCronExpression: invalid interval 0/99999999999999999999",
        );
    }
    #[test]
    fn out_of_range() {
        check_err(
            "0 0 25 * * ?",
            "InvalidCronExpression: syntax error in hour field: '25'",
        );
        check_err(
            "60 0 0 * * ?",
            "InvalidCronExpression: syntax error in second field: '60'",
        );
        check_err(
            "0 0 0 32 * ?",
            "InvalidCronExpression: syntax error in day-of-month field: '32'",
        );
        check_err(
            "0 0 0 0 * ?",
            "InvalidCronExpression: syntax error in day-of-month field: '0'",
        );
        check_err(
            "0 0 0 * 13 ?",
            "InvalidCronExpression: syntax error in month field: '13'",
        );
        check_err(
            "0 0 0 ? * 8",
            "InvalidCronExpression: syntax error in day-of-week field: '8'",
        );
        check_err(
            "0 0 0 1 1 ? 1969 UTC",
            "InvalidCronExpression: syntax error in year field: '1969'",
        );
        // Not year-like by the reference's rule, so read as a zone.
        check_err("0 0 0 1 1 ? 1969", "TimezoneInformationCorrupt");
        check_err(
            "0 0 0 1 1 ? 1980-2100",
            "InvalidCronExpression: syntax error in year field: '1980-2100'",
        );
    }
    #[test]
    fn malformed_entries() {
        check_err(
            "0 0 005 * * ?",
            "InvalidCronExpression: syntax error in hour field: '005'",
        );
        check_err(
            "0 0 1,,2 * * ?",
            "InvalidCronExpression: syntax error in hour field: ''",
        );
        check_err(
            "0 0 - * * ?",
            "InvalidCronExpression: syntax error in hour field: '-'",
        );
        check_err(
            "0 0 1/x * * ?",
            "InvalidCronExpression: syntax error in hour field: '1/x'",
        );
        check_err(
            "0 0 0 ? * 1#6",
            "InvalidCronExpression: syntax error in day-of-week field: '1#6'",
        );
        check_err(
            "0 0 0 ? * L",
            "InvalidCronExpression: syntax error in day-of-week field: 'L'",
        );
        check_err(
            "0 0 0 32W * ?",
            "InvalidCronExpression: syntax error in day-of-month field: '32W'",
        );
        check_err(
            "0 0 0 ? FOO *",
            "InvalidCronExpression: syntax error in month field: 'FOO'",
        );
        check_err(
            "0 0 0 ? * é",
            "InvalidCronExpression: syntax error in day-of-week field: 'é'",
        );
        check_err("0 0 0 1 1 ? 20", "TimezoneInformationCorrupt");
        check_err("@daily", "InvalidCronExpression");
    }

    // Where the reference is wrong.
    #[test]
    fn wrap_around_ranges_are_errors() {
        check_err(
            "0 0 22-2 * * ?",
            "InvalidCronExpression: syntax error in hour field: '22-2'",
        );
        check_err(
            "0 0 0 ? * FRI-MON",
            "InvalidCronExpression: syntax error in day-of-week field: 'FRI-MON'",
        );
    }
    #[test]
    fn weekday_ranges_ending_in_seven_include_sunday() {
        // 2024-03-17 is a Sunday.
        check(
            "0 0 12 ? * 1-7",
            "2024-03-16T13:00:00Z",
            Some("2024-03-17T12:00:00Z"),
        );
        check(
            "0 0 12 ? * MON-SUN",
            "2024-03-16T13:00:00Z",
            Some("2024-03-17T12:00:00Z"),
        );
        check(
            "0 0 12 ? * 5-7",
            "2024-03-16T13:00:00Z",
            Some("2024-03-17T12:00:00Z"),
        );
        check(
            "0 0 12 ? * 0",
            "2024-03-16T13:00:00Z",
            Some("2024-03-17T12:00:00Z"),
        );
        check(
            "0 0 12 ? * 7#3",
            "2024-03-16T13:00:00Z",
            Some("2024-03-17T12:00:00Z"),
        );
        check(
            "0 0 12 ? * 1-5",
            "2024-03-16T13:00:00Z",
            Some("2024-03-18T12:00:00Z"),
        );
    }

    // Grammar details.
    #[test]
    fn names_any_case_and_full() {
        check("0 0 12 ? * monday", FROM, Some("2024-03-18T12:00:00Z"));
        check("0 0 12 1 aPr ?", FROM, Some("2024-04-01T12:00:00Z"));
        check("0 0 12 1 December ?", FROM, Some("2024-12-01T12:00:00Z"));
        check("0 0 12 1 JAN-MAR/2 ?", FROM, Some("2025-01-01T12:00:00Z"));
    }
    #[test]
    fn leading_zero() {
        check("00 05 09 ? * 01", FROM, Some("2024-03-18T09:05:00Z"));
    }
    #[test]
    fn six_fields_use_system_zone() {
        let tokyo = testing::zone("Asia/Tokyo");
        let cron =
            CronSchedule::parse_in("0 0 8 * * ?", &tokyo, &fixture_db()).expect("valid cron");
        assert_eq!(cron.zone().name(), "Asia/Tokyo");
        assert_eq!(
            cron.next_after(utc(FROM)),
            Some(utc("2024-03-15T23:00:00Z"))
        );
    }
    #[test]
    fn sub_second_from() {
        check(
            "* * * * * ?",
            "2024-03-15T10:20:30.250Z",
            Some("2024-03-15T10:20:31Z"),
        );
        check(
            "*/20 * * * * ?",
            "2024-03-15T10:20:39.999Z",
            Some("2024-03-15T10:20:40Z"),
        );
    }
    #[test]
    fn before_1970_and_after_2099() {
        check(
            "0 0 0 1 1 ?",
            "1900-06-01T00:00:00Z",
            Some("1970-01-01T00:00:00Z"),
        );
        check("0 0 0 1 1 ?", "2099-06-01T00:00:00Z", None);
        assert_eq!(
            parse("* * * * * ?").next_after(DateTime::<Utc>::MAX_UTC),
            None
        );
        assert_eq!(
            parse("* * * * * ?").next_after(DateTime::<Utc>::MIN_UTC),
            Some(utc("1970-01-01T00:00:00Z"))
        );
    }
    #[test]
    fn never_matching_is_quick() {
        check("0 0 0 31 2 ?", FROM, None);
        check("0 0 0 30 2 ? *", FROM, None);
        check("0 0 0 31 4,6,9,11 ?", FROM, None);
    }

    // DST in America/New_York: spring forward 2030-03-10 02:00 EST -> 03:00 EDT (07:00Z), fall
    // back 2030-11-03 02:00 EDT -> 01:00 EST (06:00Z).
    #[test]
    fn spring_gap_fires_after_the_gap() {
        check(
            "0 30 2 * * ? America/New_York",
            "2030-03-09T12:00:00Z",
            Some("2030-03-10T07:00:00Z"),
        );
        check(
            "0 30 2 * * ? America/New_York",
            "2030-03-10T07:00:00Z",
            Some("2030-03-11T06:30:00Z"),
        );
    }
    #[test]
    fn spring_gap_every_minute_fires_once() {
        let runs = [
            "2030-03-10T06:59:00Z",
            "2030-03-10T07:00:00Z",
            "2030-03-10T07:01:00Z",
            "2030-03-10T07:02:00Z",
        ];
        check_runs(
            "0 * * * * ? America/New_York",
            "2030-03-10T06:58:30Z",
            &runs,
        );
    }
    #[test]
    fn spring_gap_every_minute_in_the_gap_hour() {
        // Only the 02:xx minutes: they all collapse into one run at 03:00 EDT.
        let runs = ["2030-03-10T07:00:00Z", "2030-03-11T06:00:00Z"];
        check_runs(
            "0 * 2 * * ? America/New_York",
            "2030-03-10T05:00:00Z",
            &runs,
        );
    }
    #[test]
    fn fall_back_fires_once() {
        let runs = ["2030-11-03T05:30:00Z", "2030-11-04T06:30:00Z"];
        check_runs(
            "0 30 1 * * ? America/New_York",
            "2030-11-02T12:00:00Z",
            &runs,
        );
    }
    #[test]
    fn fall_back_started_in_repeated_hour() {
        check(
            "0 45 1 * * ? America/New_York",
            "2030-11-03T06:30:00Z",
            Some("2030-11-03T06:45:00Z"),
        );
    }
    #[test]
    fn fall_back_every_minute_continues() {
        let runs = [
            "2030-11-03T05:59:00Z",
            "2030-11-03T07:00:00Z",
            "2030-11-03T07:01:00Z",
        ];
        check_runs(
            "0 * * * * ? America/New_York",
            "2030-11-03T05:58:30Z",
            &runs,
        );
    }
    #[test]
    fn successive_runs_increase_over_a_year() {
        let exprs = [
            "0 */10 * * * ? America/New_York",
            "0 30 1,2 * * ? America/New_York",
            "0 0 */3 * * ? America/New_York",
            "*/7 0-10 2 ? * SUN America/New_York",
            "0 0 0 L * ? America/New_York",
        ];
        for expr in exprs {
            let cron = parse(expr);
            let end = utc("2031-01-01T00:00:00Z");
            let mut at = utc("2030-01-01T00:00:00Z");
            let mut runs = 0;
            while at < end {
                let next = cron
                    .next_after(at)
                    .unwrap_or_else(|| panic!("{expr} stopped after {at}"));
                assert!(next > at, "{expr}: {next} after {at}");
                at = next;
                runs += 1;
            }
            assert!(runs > 10, "{expr}: only {runs} runs");
        }
    }
}

#[cfg(test)]
mod odd_input_tests {
    use super::*;
    use crate::schedule::testing::{self, fixture_db};

    /// Every odd token in every day and time position parses or fails cleanly, and whatever
    /// parses can be searched without panicking.
    #[test]
    fn odd_tokens_never_panic() {
        let tokens = [
            "*",
            "?",
            "L",
            "W",
            "LW",
            "l",
            "0",
            "7",
            "59",
            "1-7",
            "7-1",
            "*/0",
            "1/0",
            "#",
            "1#",
            "#1",
            "0L",
            "7L",
            "L-1",
            "-",
            "/",
            ",",
            "31W",
            "0W",
            "é",
            "５",
            "99999999999999999999",
            "1-",
            "-1",
            "*/",
            "?/2",
            "a-b/c",
            "5#5",
            "7#5",
            "SUN-SAT/7",
            "1-7/7",
            "2099",
            "1970-2099/2099",
        ];
        let from = DateTime::from_timestamp(1_900_000_000, 0).expect("valid time");
        let zone = testing::zone("America/New_York");
        let db = fixture_db();
        for a in tokens {
            for b in tokens {
                for expr in [
                    format!("{a} {a} {a} {a} * {b}"),
                    format!("0 0 0 {a} {b} {b} {b}"),
                ] {
                    if let Ok(cron) = CronSchedule::parse_in(&expr, &zone, &db) {
                        let _ = cron.next_after(from);
                    }
                }
            }
        }
    }
}
