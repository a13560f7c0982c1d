//! TZif time zone files (RFC 8536, versions 1 to 4) and their footer POSIX TZ rule, parsed from
//! bytes into UTC offsets. Pure: takes bytes and answers offsets; never reads a file or the clock
//! and never panics or over-allocates on truncated or hostile input.

use std::fmt;

/// The UTC offsets of one zone: the explicit transitions of a TZif file, then its footer rule.
#[derive(Clone, PartialEq, Eq)]
pub struct TzData {
    /// The offset before the first transition (local time type 0, RFC 8536 §3.2).
    initial_offset: i32,
    /// `(utc_secs, offset_secs)`: from `utc_secs` on, local time is UTC + `offset_secs`.
    /// Strictly ascending in `utc_secs`.
    transitions: Vec<(i64, i32)>,
    /// The footer TZ string, for instants at or after the last transition.
    rule: Option<PosixTz>,
}

/// Why bytes are not a usable TZif file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TzifError {
    /// The input ends inside a header or data block.
    Truncated,
    /// The input does not start with `TZif`.
    BadMagic,
    /// A version byte other than NUL, `2`, `3` or `4`.
    BadVersion(u8),
    /// The header declares no local time type.
    NoTimeTypes,
    /// A transition refers to a local time type that does not exist.
    BadTypeIndex(u8),
    /// A UTC offset outside the range RFC 8536 allows (−25 h to +26 h, exclusive).
    BadOffset(i32),
    /// Transition times are not strictly ascending.
    UnorderedTransitions,
    /// Bytes after the v2+ data block that are not a newline-enclosed footer.
    BadFooter,
    /// The footer TZ string does not parse; the value is the byte position of the fault.
    BadTzString(usize),
}

impl fmt::Display for TzifError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("TZif data is truncated"),
            Self::BadMagic => f.write_str("not a TZif file"),
            Self::BadVersion(v) => write!(f, "unknown TZif version byte {v:#04x}"),
            Self::NoTimeTypes => f.write_str("TZif data has no local time types"),
            Self::BadTypeIndex(i) => write!(f, "TZif transition refers to missing time type {i}"),
            Self::BadOffset(o) => write!(f, "TZif UTC offset {o} s is out of range"),
            Self::UnorderedTransitions => {
                f.write_str("TZif transitions are not in ascending order")
            }
            Self::BadFooter => f.write_str("TZif footer is not enclosed in newlines"),
            Self::BadTzString(at) => write!(f, "TZif footer TZ string is malformed at byte {at}"),
        }
    }
}

impl std::error::Error for TzifError {}

/// Parses a TZif file: the 64-bit block and footer when the version is 2 or later, else the
/// 32-bit block.
pub fn parse(bytes: &[u8]) -> Result<TzData, TzifError> {
    let mut input = Reader { bytes, pos: 0 };
    let first = Header::read(&mut input)?;
    if first.version == 0 {
        return read_block(&mut input, &first, 4).map(|(initial_offset, transitions)| TzData {
            initial_offset,
            transitions,
            rule: None,
        });
    }
    input.take(first.block_len(4).ok_or(TzifError::Truncated)?)?;
    let second = Header::read(&mut input)?;
    let (initial_offset, transitions) = read_block(&mut input, &second, 8)?;
    let rule = read_footer(&mut input)?;
    Ok(TzData {
        initial_offset,
        transitions,
        rule,
    })
}

impl TzData {
    /// A zone given by a POSIX TZ rule alone (`TZ=JST-9`): no transitions, the rule for all time.
    pub fn from_rule(rule: PosixTz) -> TzData {
        TzData {
            initial_offset: rule.offset_at(0),
            transitions: Vec::new(),
            rule: Some(rule),
        }
    }

    /// Seconds east of UTC at `utc_secs` (seconds since the Unix epoch).
    pub fn offset_at(&self, utc_secs: i64) -> i32 {
        let after = self.transitions.partition_point(|&(at, _)| at <= utc_secs);
        match (after, &self.rule) {
            // Past the last transition (or no transition at all): the footer rule, if any.
            (n, Some(rule)) if n == self.transitions.len() => rule.offset_at(utc_secs),
            (0, _) => self.initial_offset,
            (n, _) => self.transitions[n - 1].1,
        }
    }

    /// The explicit transitions, `(utc_secs, offset_secs)`, ascending.
    pub fn transitions(&self) -> &[(i64, i32)] {
        &self.transitions
    }
}

impl fmt::Debug for TzData {
    /// Leaves the transition list out: a zone has up to a few hundred of them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TzData")
            .field("initial_offset", &self.initial_offset)
            .field("transitions", &self.transitions.len())
            .field("rule", &self.rule)
            .finish()
    }
}

/// RFC 8536 §3.2 asks offsets to stay within −89999..=93599; anything beyond is corrupt data
/// (and would break the ±26 h windows of local-time resolution).
const MIN_OFFSET: i32 = -89_999;
const MAX_OFFSET: i32 = 93_599;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TzifError> {
        let end = self.pos.checked_add(n).ok_or(TzifError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(TzifError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }
}

fn be_i32(b: &[u8]) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&b[..4]);
    i32::from_be_bytes(raw)
}

fn be_i64(b: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[..8]);
    i64::from_be_bytes(raw)
}

struct Header {
    version: u8,
    isutcnt: usize,
    isstdcnt: usize,
    leapcnt: usize,
    timecnt: usize,
    typecnt: usize,
    charcnt: usize,
}

impl Header {
    fn read(input: &mut Reader<'_>) -> Result<Header, TzifError> {
        if input.take(4)? != b"TZif" {
            return Err(TzifError::BadMagic);
        }
        let version = match input.take(1)?[0] {
            0 => 0,
            v @ b'2'..=b'4' => v - b'0',
            other => return Err(TzifError::BadVersion(other)),
        };
        input.take(15)?;
        let mut count = || -> Result<usize, TzifError> {
            // A count never exceeds the input length in a well-formed file, so a huge one is
            // caught by the length check in `read_block` before anything is allocated.
            let raw = u32::from_be_bytes(be_i32(input.take(4)?).to_be_bytes());
            Ok(usize::try_from(raw).unwrap_or(usize::MAX))
        };
        let header = Header {
            version,
            isutcnt: count()?,
            isstdcnt: count()?,
            leapcnt: count()?,
            timecnt: count()?,
            typecnt: count()?,
            charcnt: count()?,
        };
        if header.typecnt == 0 {
            return Err(TzifError::NoTimeTypes);
        }
        Ok(header)
    }

    /// The length of the data block after this header, with `time_size`-byte times.
    fn block_len(&self, time_size: usize) -> Option<usize> {
        let parts = [
            self.timecnt.checked_mul(time_size + 1)?,
            self.typecnt.checked_mul(6)?,
            self.charcnt,
            self.leapcnt.checked_mul(time_size + 4)?,
            self.isstdcnt,
            self.isutcnt,
        ];
        parts.iter().try_fold(0usize, |sum, &n| sum.checked_add(n))
    }
}

/// Reads one data block: the offset before the first transition, and the transitions.
fn read_block(
    input: &mut Reader<'_>,
    header: &Header,
    time_size: usize,
) -> Result<(i32, Vec<(i64, i32)>), TzifError> {
    let len = header.block_len(time_size).ok_or(TzifError::Truncated)?;
    // Checks the whole block is there before allocating anything sized by the header.
    let mut block = Reader {
        bytes: input.take(len)?,
        pos: 0,
    };
    let times = block.take(header.timecnt * time_size)?;
    let indices = block.take(header.timecnt)?;
    let types = block.take(header.typecnt * 6)?;
    let offsets = types
        .chunks_exact(6)
        .map(|t| {
            let utoff = be_i32(t);
            if (MIN_OFFSET..=MAX_OFFSET).contains(&utoff) {
                Ok(utoff)
            } else {
                Err(TzifError::BadOffset(utoff))
            }
        })
        .collect::<Result<Vec<i32>, TzifError>>()?;
    let mut transitions = Vec::with_capacity(header.timecnt);
    for (time, &index) in times.chunks_exact(time_size).zip(indices) {
        let at = if time_size == 8 {
            be_i64(time)
        } else {
            i64::from(be_i32(time))
        };
        let offset = *offsets
            .get(usize::from(index))
            .ok_or(TzifError::BadTypeIndex(index))?;
        if transitions.last().is_some_and(|&(prev, _)| prev >= at) {
            return Err(TzifError::UnorderedTransitions);
        }
        transitions.push((at, offset));
    }
    // Designations, leap seconds and the standard/UT indicators are not needed for offsets.
    Ok((offsets[0], transitions))
}

/// The v2+ footer: `\n<TZ string>\n`. No footer at all is tolerated (as Go does); an empty TZ
/// string means "no rule".
fn read_footer(input: &mut Reader<'_>) -> Result<Option<PosixTz>, TzifError> {
    let rest = input.rest();
    if rest.is_empty() {
        return Ok(None);
    }
    let body = rest.strip_prefix(b"\n").ok_or(TzifError::BadFooter)?;
    let end = body
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(TzifError::BadFooter)?;
    let text = &body[..end];
    if text.is_empty() {
        return Ok(None);
    }
    PosixTz::parse(text).map(Some)
}

/// A POSIX TZ rule such as `EST5EDT,M3.2.0,M11.1.0`, with the RFC 8536 extensions (negative
/// DST, rule times from −167 h to +167 h). Offsets are seconds east of UTC (POSIX counts west).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PosixTz {
    std_offset: i32,
    dst: Option<DstRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct DstRule {
    offset: i32,
    /// When DST starts, in standard local time.
    start: (RuleDay, i32),
    /// When DST ends, in daylight local time.
    end: (RuleDay, i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleDay {
    /// `Jn`: 1..=365, February 29 never counted.
    Julian1(u16),
    /// `n`: 0..=365, February 29 counted in leap years.
    Julian0(u16),
    /// `Mm.w.d`: weekday `d` (0 = Sunday) of week `w` (5 = last) of month `m`.
    MonthWeek { month: u8, week: u8, weekday: u8 },
}

/// Beyond ±2^50 s (35 million years) the rule is not evaluated: standard time is returned, so
/// date arithmetic can never overflow.
const RULE_LIMIT: i64 = 1 << 50;

impl PosixTz {
    /// Parses a TZ string; the error carries the byte position of the fault.
    pub fn parse(text: &[u8]) -> Result<PosixTz, TzifError> {
        let mut p = TzParser { text, pos: 0 };
        let tz = p.tz().ok_or(TzifError::BadTzString(p.pos))?;
        if p.pos != text.len() {
            return Err(TzifError::BadTzString(p.pos));
        }
        Ok(tz)
    }

    /// Seconds east of UTC at `utc_secs`.
    pub fn offset_at(&self, utc_secs: i64) -> i32 {
        let Some(dst) = &self.dst else {
            return self.std_offset;
        };
        if !(-RULE_LIMIT..=RULE_LIMIT).contains(&utc_secs) {
            return self.std_offset;
        }
        // The local year, then the rule's changes in the years around it, in order: the last
        // change at or before `utc_secs` decides. Three years cover rule times of ±167 h and
        // rules whose DST spans New Year (southern hemisphere, Europe/Dublin's negative DST).
        let year = civil_from_days((utc_secs + i64::from(self.std_offset)).div_euclid(86_400)).0;
        let mut changes = [(0i64, false); 6];
        for (i, y) in (year - 1..=year + 1).enumerate() {
            let start = rule_instant(y, dst.start, self.std_offset);
            let end = rule_instant(y, dst.end, dst.offset);
            changes[2 * i] = (start, true);
            changes[2 * i + 1] = (end, false);
        }
        // Stable: on a tie, the later year's change wins (e.g. `0/0,J365/25`, DST all year).
        changes.sort_by_key(|&(at, _)| at);
        let in_dst = match changes.iter().rev().find(|&&(at, _)| at <= utc_secs) {
            Some(&(_, is_start)) => is_start,
            None => !changes[0].1,
        };
        if in_dst {
            dst.offset
        } else {
            self.std_offset
        }
    }
}

/// The UTC instant of `day` at local `time` in `year`, local time being UTC + `offset`.
fn rule_instant(year: i64, (day, time): (RuleDay, i32), offset: i32) -> i64 {
    let jan1 = days_from_civil(year, 1, 1);
    let days = match day {
        RuleDay::Julian1(n) => {
            let leap_shift = i64::from(is_leap(year) && n >= 60);
            jan1 + i64::from(n) - 1 + leap_shift
        }
        RuleDay::Julian0(n) => jan1 + i64::from(n),
        RuleDay::MonthWeek {
            month,
            week,
            weekday,
        } => {
            let first = days_from_civil(year, u32::from(month), 1);
            // 1970-01-01 was a Thursday (4).
            let first_weekday = (first + 4).rem_euclid(7);
            let mut day = first + (i64::from(weekday) - first_weekday).rem_euclid(7);
            day += 7 * (i64::from(week) - 1);
            if day >= first + days_in_month(year, month) {
                day -= 7;
            }
            day
        }
    };
    days * 86_400 + i64::from(time) - i64::from(offset)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u8) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month, day)` of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A cursor over a TZ string; each method returns `None` at the first fault, leaving `pos` there.
struct TzParser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl TzParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// `std offset [dst [offset] [,start[/time],end[/time]]]`
    fn tz(&mut self) -> Option<PosixTz> {
        self.name()?;
        // POSIX offsets count west of UTC.
        let std_offset = -self.hms(24)?;
        if self.peek().is_none() {
            return Some(PosixTz {
                std_offset,
                dst: None,
            });
        }
        self.name()?;
        let offset = match self.peek() {
            Some(b'+' | b'-' | b'0'..=b'9') => -self.hms(24)?,
            _ => std_offset + 3600,
        };
        let (start, end) = if self.peek().is_none() {
            // No rule: the US rule, as Go and glibc assume.
            let us = |month| RuleDay::MonthWeek {
                month,
                week: if month == 3 { 2 } else { 1 },
                weekday: 0,
            };
            ((us(3), 7200), (us(11), 7200))
        } else {
            (self.change()?, self.change()?)
        };
        Some(PosixTz {
            std_offset,
            dst: Some(DstRule { offset, start, end }),
        })
    }

    /// A zone abbreviation: three or more letters, or `<...>` of letters, digits and signs.
    fn name(&mut self) -> Option<()> {
        let start = self.pos;
        if self.eat(b'<') {
            while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'+' || b == b'-')
            {
                self.pos += 1;
            }
            let long_enough = self.pos > start + 1;
            return (long_enough && self.eat(b'>')).then_some(());
        }
        while matches!(self.peek(), Some(b) if b.is_ascii_alphabetic()) {
            self.pos += 1;
        }
        (self.pos - start >= 3).then_some(())
    }

    /// `[+-]h[h[h]][:mm[:ss]]` as seconds, hours at most `max_hours`.
    fn hms(&mut self, max_hours: i64) -> Option<i32> {
        let sign = if self.eat(b'-') {
            -1
        } else {
            self.eat(b'+');
            1
        };
        let hours = self.number(3)?;
        if hours > max_hours {
            return None;
        }
        let mut secs = hours * 3600;
        for scale in [60, 1] {
            if !self.eat(b':') {
                break;
            }
            let part = self.number(2)?;
            if part > 59 {
                return None;
            }
            secs += part * scale;
        }
        i32::try_from(sign * secs).ok()
    }

    /// One to `max_digits` decimal digits.
    fn number(&mut self, max_digits: usize) -> Option<i64> {
        let start = self.pos;
        let mut value = 0i64;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            if self.pos - start == max_digits {
                return None;
            }
            value = value * 10 + i64::from(d - b'0');
            self.pos += 1;
        }
        (self.pos > start).then_some(value)
    }

    /// `,date[/time]`; the time defaults to 02:00.
    fn change(&mut self) -> Option<(RuleDay, i32)> {
        if !self.eat(b',') {
            return None;
        }
        let day = if self.eat(b'J') {
            let n = self.number(3)?;
            RuleDay::Julian1(u16::try_from(n).ok().filter(|n| (1..=365).contains(n))?)
        } else if self.eat(b'M') {
            let month = self.number(2)?;
            let week = self.eat(b'.').then(|| self.number(1)).flatten()?;
            let weekday = self.eat(b'.').then(|| self.number(1)).flatten()?;
            if !(1..=12).contains(&month) || !(1..=5).contains(&week) || weekday > 6 {
                return None;
            }
            RuleDay::MonthWeek {
                month: month as u8,
                week: week as u8,
                weekday: weekday as u8,
            }
        } else {
            let n = self.number(3)?;
            RuleDay::Julian0(u16::try_from(n).ok().filter(|&n| n <= 365)?)
        };
        let time = if self.eat(b'/') { self.hms(167)? } else { 7200 };
        Some((day, time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::testing::fixture_dir;
    use std::path::PathBuf;

    /// The bytes of a zone file the repository carries (`testdata/zoneinfo`).
    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    /// A minimal TZif file: `version` 0 gives only a 32-bit block, else both blocks and `footer`.
    fn build(version: u8, offsets: &[i32], transitions: &[(i64, u8)], footer: &str) -> Vec<u8> {
        let block = |time_size: usize| {
            let mut out = b"TZif".to_vec();
            out.push(version);
            out.extend([0; 15]);
            for count in [0, 0, 0, transitions.len(), offsets.len(), 4] {
                out.extend((count as u32).to_be_bytes());
            }
            for &(at, _) in transitions {
                if time_size == 8 {
                    out.extend(at.to_be_bytes());
                } else {
                    out.extend((at as i32).to_be_bytes());
                }
            }
            out.extend(transitions.iter().map(|&(_, index)| index));
            for &offset in offsets {
                out.extend(offset.to_be_bytes());
                out.extend([0, 0]);
            }
            out.extend(b"ABC\0");
            out
        };
        let mut out = block(4);
        if version != 0 {
            out.extend(block(8));
            out.push(b'\n');
            out.extend(footer.bytes());
            out.push(b'\n');
        }
        out
    }

    fn tz(text: &str) -> PosixTz {
        PosixTz::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Seconds since the epoch of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in [-800_000, -1, 0, 59, 11_016, 11_017, 47_540, 3_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn every_fixture_file_parses() {
        let mut stack: Vec<PathBuf> = vec![fixture_dir()];
        let mut parsed = 0;
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                let entries = std::fs::read_dir(&path).expect("readable zoneinfo dir");
                stack.extend(entries.map(|e| e.expect("dir entry").path()));
                continue;
            }
            let bytes = std::fs::read(&path).expect("readable fixture");
            if let Err(e) = parse(&bytes) {
                panic!("{}: {e}", path.display());
            }
            parsed += 1;
        }
        assert!(parsed >= 10, "only {parsed} fixture files");
    }

    #[test]
    fn real_new_york() {
        let bytes = fixture("America/New_York");
        let data = parse(&bytes).expect("valid file");
        assert_eq!(data.rule, Some(tz("EST5EDT,M3.2.0,M11.1.0")));
        assert_eq!(data.offset_at(at(2024, 1, 15, 12, 0)), -5 * 3600);
        assert_eq!(data.offset_at(at(2024, 7, 15, 12, 0)), -4 * 3600);
        // Spring forward 2030-03-10 07:00Z, fall back 2030-11-03 06:00Z (footer years).
        assert_eq!(data.offset_at(at(2030, 3, 10, 7, 0) - 1), -5 * 3600);
        assert_eq!(data.offset_at(at(2030, 3, 10, 7, 0)), -4 * 3600);
        assert_eq!(data.offset_at(at(2030, 11, 3, 6, 0) - 1), -4 * 3600);
        assert_eq!(data.offset_at(at(2030, 11, 3, 6, 0)), -5 * 3600);
        // LMT before 1883.
        assert_eq!(
            data.offset_at(at(1800, 1, 1, 0, 0)),
            -(4 * 3600 + 56 * 60 + 2)
        );
    }

    #[test]
    fn real_file_truncated_at_every_length() {
        let bytes = fixture("Europe/Dublin");
        let footer_start = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("a footer");
        for len in 0..bytes.len() {
            match parse(&bytes[..len]) {
                // Only a file cut exactly before its footer is still whole.
                Ok(_) => assert_eq!(len, footer_start, "prefix of {len} bytes"),
                Err(e) if len < 44 => assert_eq!(e, TzifError::Truncated),
                Err(TzifError::Truncated | TzifError::BadFooter | TzifError::BadTzString(_)) => {}
                Err(e) => panic!("prefix of {len} bytes: {e}"),
            }
        }
        assert!(parse(&bytes).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let template = build(b'2', &[3600, 7200], &[(0, 1), (100, 0)], "CET-1");
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                template.clone()
            } else {
                let len = (next() % 200) as usize;
                let mut b = b"TZif2".to_vec();
                b.extend((0..len).map(|_| next() as u8));
                b
            };
            for _ in 0..(next() % 4) {
                if !bytes.is_empty() {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn huge_counts_are_truncated_not_allocated() {
        let mut bytes = build(b'2', &[0], &[], "UTC0");
        bytes[20..44].copy_from_slice(&[0xff; 24]);
        assert_eq!(parse(&bytes), Err(TzifError::Truncated));
        let mut bytes = build(0, &[0], &[], "");
        bytes[32..36].copy_from_slice(&0x4000_0000u32.to_be_bytes());
        assert_eq!(parse(&bytes), Err(TzifError::Truncated));
    }

    #[test]
    fn malformed_files() {
        assert_eq!(parse(b""), Err(TzifError::Truncated));
        assert_eq!(parse(b"TZjf2"), Err(TzifError::BadMagic));
        let mut bad_version = build(b'2', &[0], &[], "UTC0");
        bad_version[4] = b'5';
        assert_eq!(parse(&bad_version), Err(TzifError::BadVersion(b'5')));
        assert_eq!(
            parse(&build(b'2', &[], &[], "UTC0")),
            Err(TzifError::NoTimeTypes)
        );
        assert_eq!(
            parse(&build(b'2', &[0], &[(10, 1)], "UTC0")),
            Err(TzifError::BadTypeIndex(1))
        );
        assert_eq!(
            parse(&build(b'2', &[0, 3600], &[(10, 1), (10, 0)], "UTC0")),
            Err(TzifError::UnorderedTransitions)
        );
        assert_eq!(
            parse(&build(b'2', &[i32::MIN], &[], "UTC0")),
            Err(TzifError::BadOffset(i32::MIN))
        );
        assert_eq!(
            parse(&build(b'2', &[0], &[], "UTC0,")),
            Err(TzifError::BadTzString(4))
        );
        let mut no_newline = build(b'2', &[0], &[], "UTC0");
        no_newline.pop();
        assert_eq!(parse(&no_newline), Err(TzifError::BadFooter));
    }

    #[test]
    fn version_1_uses_the_32_bit_block() {
        let data = parse(&build(0, &[-18_000, -14_400], &[(1000, 1), (2000, 0)], ""))
            .expect("valid v1 file");
        assert_eq!(data.offset_at(999), -18_000);
        assert_eq!(data.offset_at(1000), -14_400);
        assert_eq!(data.offset_at(2000), -18_000);
        assert_eq!(data.offset_at(i64::MAX), -18_000);
    }

    #[test]
    fn versions_2_to_4_use_the_footer_after_the_last_transition() {
        for version in [b'2', b'3', b'4'] {
            let file = build(version, &[0, 3600], &[(-5000, 1)], "<+02>-2");
            let data = parse(&file).expect("valid file");
            assert_eq!(data.offset_at(-5001), 0);
            assert_eq!(data.offset_at(-5000), 7200);
            assert_eq!(data.offset_at(i64::MIN), 0);
        }
        // No transitions: the footer holds for all time; an empty footer leaves type 0.
        let data = parse(&build(b'2', &[0], &[], "EST5")).expect("valid file");
        assert_eq!(data.offset_at(0), -18_000);
        let data = parse(&build(b'2', &[3600], &[], "")).expect("valid file");
        assert_eq!(data.offset_at(0), 3600);
    }

    #[test]
    fn tz_strings() {
        let new_york = tz("EST5EDT,M3.2.0,M11.1.0");
        assert_eq!(new_york.offset_at(at(2024, 3, 10, 7, 0) - 1), -18_000);
        assert_eq!(new_york.offset_at(at(2024, 3, 10, 7, 0)), -14_400);
        assert_eq!(new_york.offset_at(at(2024, 11, 3, 6, 0) - 1), -14_400);
        assert_eq!(new_york.offset_at(at(2024, 11, 3, 6, 0)), -18_000);
        // A missing rule is the US rule.
        assert_eq!(tz("EST5EDT"), new_york);

        let tehran = tz("<+0330>-3:30");
        assert_eq!(tehran.offset_at(at(2024, 7, 1, 0, 0)), 12_600);

        // Southern hemisphere: DST over New Year.
        let sydney = tz("AEST-10AEDT,M10.1.0,M4.1.0/3");
        assert_eq!(sydney.offset_at(at(2024, 1, 1, 0, 0)), 39_600);
        assert_eq!(sydney.offset_at(at(2024, 7, 1, 0, 0)), 36_000);
        // 2024-04-07 03:00 AEDT = 04-06 16:00Z; 2024-10-06 02:00 AEST = 10-05 16:00Z.
        assert_eq!(sydney.offset_at(at(2024, 4, 6, 16, 0) - 1), 39_600);
        assert_eq!(sydney.offset_at(at(2024, 4, 6, 16, 0)), 36_000);
        assert_eq!(sydney.offset_at(at(2024, 10, 5, 16, 0) - 1), 36_000);
        assert_eq!(sydney.offset_at(at(2024, 10, 5, 16, 0)), 39_600);

        // Negative DST: "standard" IST in summer, "daylight" GMT in winter.
        let dublin = tz("IST-1GMT0,M10.5.0,M3.5.0/1");
        assert_eq!(dublin.offset_at(at(2024, 1, 15, 0, 0)), 0);
        assert_eq!(dublin.offset_at(at(2024, 7, 15, 0, 0)), 3600);
        assert_eq!(dublin.offset_at(at(2024, 3, 31, 1, 0) - 1), 0);
        assert_eq!(dublin.offset_at(at(2024, 3, 31, 1, 0)), 3600);
        assert_eq!(dublin.offset_at(at(2024, 10, 27, 1, 0) - 1), 3600);
        assert_eq!(dublin.offset_at(at(2024, 10, 27, 1, 0)), 0);

        // `Jn` skips February 29; `n` counts it (2024 is a leap year).
        let julian1 = tz("XST0XDT,J60/0,J300/0");
        assert_eq!(julian1.offset_at(at(2024, 3, 1, 0, 0) - 1), 0);
        assert_eq!(julian1.offset_at(at(2024, 3, 1, 0, 0)), 3600);
        let julian0 = tz("XST0XDT,59/0,J300/0");
        assert_eq!(julian0.offset_at(at(2024, 2, 29, 0, 0) - 1), 0);
        assert_eq!(julian0.offset_at(at(2024, 2, 29, 0, 0)), 3600);

        // RFC 8536 rule times: negative (America/Nuuk), past 24 h (Africa/Cairo), DST all year.
        let nuuk = tz("<-02>2<-01>,M3.5.0/-1,M10.5.0/0");
        assert_eq!(nuuk.offset_at(at(2024, 3, 31, 1, 0) - 1), -7200);
        assert_eq!(nuuk.offset_at(at(2024, 3, 31, 1, 0)), -3600);
        let cairo = tz("EET-2EEST,M4.5.5/0,M10.5.4/24");
        assert_eq!(cairo.offset_at(at(2024, 10, 31, 21, 0) - 1), 10_800);
        assert_eq!(cairo.offset_at(at(2024, 10, 31, 21, 0)), 7200);
        let always = tz("EST5EDT4,0/0,J365/25");
        for year in [2023, 2024, 2025] {
            for (mo, d) in [(1, 1), (6, 30), (12, 31)] {
                assert_eq!(always.offset_at(at(year, mo, d, 0, 0)), -14_400);
            }
        }
        let v3 = tz("XST3XDT,M3.2.0/-167,M11.1.0/+167:59:59");
        assert!(matches!(
            v3.dst,
            Some(DstRule {
                start: (_, -601_200),
                ..
            })
        ));

        // Far outside any calendar: standard time, no overflow.
        assert_eq!(new_york.offset_at(i64::MIN), -18_000);
        assert_eq!(new_york.offset_at(i64::MAX), -18_000);
    }

    #[test]
    fn bad_tz_strings() {
        for text in [
            "",
            "E5",
            "EST",
            "EST25",
            "EST5:60",
            "<>5",
            "<+03",
            "EST5EDT,M3.2.0",
            "EST5EDT,M13.1.0,M11.1.0",
            "EST5EDT,M3.6.0,M11.1.0",
            "EST5EDT,M3.2.7,M11.1.0",
            "EST5EDT,J0,J100",
            "EST5EDT,366,J100",
            "EST5EDT,M3.2.0/168,M11.1.0",
            "EST5EDT,M3.2.0,M11.1.0,",
            "EST5 ",
            "EST5EDT,M3.2.0,M11.1.0\n",
            "EST99999999999999999999",
        ] {
            assert!(
                matches!(
                    PosixTz::parse(text.as_bytes()),
                    Err(TzifError::BadTzString(_))
                ),
                "{text:?}"
            );
        }
    }
}
