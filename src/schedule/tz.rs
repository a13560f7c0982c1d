//! Time zones of cron expressions (IANA names, `GMT±H:MM`, `GMT`, `UTC`), local-time arithmetic
//! in them, and the host's zone. Never reads the clock; reads files only to load an IANA zone
//! from the host's zoneinfo database and, in `system_zone`, to find the host's zone.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};

use super::tzif::{self, TzData, TzifError};
use super::{ErrorCode, ScheduleError};

/// The zone a cron expression is evaluated in.
#[derive(Clone, Debug, PartialEq)]
pub enum Zone {
    /// `UTC` or `GMT`, keeping the spelling the expression used.
    Utc { label: String },
    /// `GMT±H:MM`; `label` is the text as written, e.g. `GMT+8:00`.
    Fixed { offset_secs: i32, label: String },
    /// An IANA zone such as `Asia/Shanghai`, loaded from the host's zoneinfo database.
    Named(Arc<NamedZone>),
}

/// A zone loaded from a TZif file, and the name it is reported under. Two are equal when their
/// names are.
pub struct NamedZone {
    name: String,
    data: TzData,
}

/// Where a local wall-clock time falls on the instant line of a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalInstant {
    /// The usual case: exactly one instant shows this local time.
    Single(DateTime<Utc>),
    /// The clocks went back: the local time happened twice (`earliest < latest`).
    Ambiguous {
        earliest: DateTime<Utc>,
        latest: DateTime<Utc>,
    },
    /// The clocks went forward over this local time; `next_valid` is the first instant after the gap.
    Gap { next_valid: DateTime<Utc> },
}

impl Zone {
    pub fn utc() -> Zone {
        Zone::Utc {
            label: "UTC".to_string(),
        }
    }

    /// Parses the zone field of a cron expression (spec §5.2 step 2).
    ///
    /// An IANA name is loaded from the host's zoneinfo database (`ZoneDb::host`) on every call,
    /// like Go's `time.LoadLocation`; there is no cache (zone files are a few KiB and zoned
    /// tasks few). On a host without the database (some embedded systems) every IANA name
    /// fails with `TimezoneInformationCorrupt: unknown time zone <name>`, as the Go agent does
    /// there; `UTC`, `GMT` and `GMT±H:MM` never need the database.
    pub fn parse(text: &str) -> Result<Zone, ScheduleError> {
        Zone::parse_in(text, &ZoneDb::host())
    }

    /// `parse`, loading IANA names from `db`.
    pub fn parse_in(text: &str, db: &ZoneDb) -> Result<Zone, ScheduleError> {
        if text.contains('/') {
            return db.load(text).map_err(|e| e.to_schedule_error(text));
        }
        if text.contains('+') || text.contains('-') {
            // Go accepts the offset anywhere inside the field (a substring match); we require the
            // whole field to be `GMT±H:MM`, so a stray prefix or suffix is not silently ignored.
            return parse_gmt_offset(text)
                .map(|offset_secs| Zone::Fixed {
                    offset_secs,
                    label: text.to_string(),
                })
                .ok_or_else(|| {
                    ScheduleError::new(ErrorCode::InvalidGMTOffsetForTimezone)
                        .with_hint(gmt_hint(text))
                });
        }
        if text == "GMT" || text == "UTC" {
            return Ok(Zone::Utc {
                label: text.to_string(),
            });
        }
        Err(ScheduleError::new(ErrorCode::TimezoneInformationCorrupt))
    }

    /// The name sent as `timeZone=` (e.g. `Asia/Shanghai`, `GMT+8:00`, `UTC`, or `Local` for a
    /// host zone known only from the contents of `/etc/localtime`).
    pub fn name(&self) -> String {
        match self {
            Zone::Utc { label } | Zone::Fixed { label, .. } => label.clone(),
            Zone::Named(zone) => zone.name.clone(),
        }
    }

    /// Seconds east of UTC at `at`.
    pub fn offset_secs_at(&self, at: DateTime<Utc>) -> i32 {
        match self {
            Zone::Utc { .. } => 0,
            Zone::Fixed { offset_secs, .. } => *offset_secs,
            Zone::Named(zone) => zone.data.offset_at(at.timestamp()),
        }
    }

    /// The wall-clock time at `at`; `None` only at the far ends of chrono's range.
    pub fn to_local(&self, at: DateTime<Utc>) -> Option<NaiveDateTime> {
        at.naive_utc()
            .checked_add_signed(Duration::seconds(i64::from(self.offset_secs_at(at))))
    }

    /// The instant(s) showing the wall-clock time `local`; `None` only at the far ends of
    /// chrono's range.
    pub fn resolve_local(&self, local: NaiveDateTime) -> Option<LocalInstant> {
        let zone = match self {
            Zone::Utc { .. } => return Some(LocalInstant::Single(local.and_utc())),
            Zone::Fixed { offset_secs, .. } => {
                let utc = local.checked_sub_signed(Duration::seconds(i64::from(*offset_secs)))?;
                return Some(LocalInstant::Single(utc.and_utc()));
            }
            Zone::Named(zone) => zone,
        };
        // Every instant showing `local` lies within 26 hours of it (offsets are bounded by the
        // TZif parser), so the offsets in force there are those at both ends of that window
        // and in its middle. An offset `o` gives a real instant when `local - o` shows `o`.
        let as_utc = local.and_utc().timestamp();
        let candidates =
            [as_utc - 26 * 3600, as_utc, as_utc + 26 * 3600].map(|at| zone.data.offset_at(at));
        let mut found: Vec<DateTime<Utc>> = Vec::with_capacity(3);
        for offset in candidates {
            let at = local
                .checked_sub_signed(Duration::seconds(i64::from(offset)))?
                .and_utc();
            if zone.data.offset_at(at.timestamp()) == offset && !found.contains(&at) {
                found.push(at);
            }
        }
        match (found.iter().min(), found.iter().max()) {
            (Some(&earliest), Some(&latest)) if earliest != latest => {
                Some(LocalInstant::Ambiguous { earliest, latest })
            }
            (Some(&at), _) => Some(LocalInstant::Single(at)),
            _ => self
                .gap_end(local)
                .map(|next_valid| LocalInstant::Gap { next_valid }),
        }
    }

    /// The first instant whose wall-clock time is at or after `local` (which lies in a gap):
    /// a binary search over the 54 hours around it. That covers every offset the TZif parser
    /// accepts (−25 h to +26 h), not only those of real zones (−12 h to +14 h): with the 16
    /// hours once used, a file with an offset of −18 h made the search end before the gap.
    fn gap_end(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let reach = Duration::hours(27);
        let mut lo = local.checked_sub_signed(reach)?.and_utc().timestamp();
        let mut hi = local.checked_add_signed(reach)?.and_utc().timestamp();
        // Invariant: the wall clock at `lo` is before `local`, at `hi` it is not.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let at = DateTime::from_timestamp(mid, 0)?;
            if self.to_local(at)? < local {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        DateTime::from_timestamp(hi, 0)
    }
}

impl NamedZone {
    /// A zone named `name` with the offsets of `data`.
    pub fn new(name: impl Into<String>, data: TzData) -> NamedZone {
        NamedZone {
            name: name.into(),
            data,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data(&self) -> &TzData {
        &self.data
    }
}

impl PartialEq for NamedZone {
    fn eq(&self, other: &NamedZone) -> bool {
        self.name == other.name
    }
}

impl fmt::Debug for NamedZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NamedZone").field(&self.name).finish()
    }
}

/// The zoneinfo directories IANA names are looked up in, first hit wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneDb {
    dirs: Vec<PathBuf>,
}

/// Why an IANA name could not be loaded.
#[derive(Debug)]
pub enum ZoneLoadError {
    /// The name is empty, has a `.` component or a character outside `[A-Za-z0-9/_+-]`, and
    /// so could reach outside the database.
    BadName,
    /// No directory has a file of that name.
    NotFound,
    /// A file of that name exists but could not be read.
    Io(std::io::Error),
    /// The file is larger than any zone file (`ZoneDb::MAX_FILE_LEN`).
    TooLarge,
    /// The file is not valid TZif data.
    Corrupt(TzifError),
}

impl fmt::Display for ZoneLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadName => f.write_str("time zone name is not a zoneinfo file name"),
            Self::NotFound => f.write_str("no zoneinfo file of that name"),
            Self::Io(_) => f.write_str("zoneinfo file could not be read"),
            Self::TooLarge => f.write_str("zoneinfo file is too large"),
            Self::Corrupt(_) => f.write_str("zoneinfo file is malformed"),
        }
    }
}

impl std::error::Error for ZoneLoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Corrupt(e) => Some(e),
            Self::BadName | Self::NotFound | Self::TooLarge => None,
        }
    }
}

impl ZoneLoadError {
    /// The spec §5.5 error for a cron whose zone field is `name`.
    fn to_schedule_error(&self, name: &str) -> ScheduleError {
        let detail = match self {
            Self::BadName | Self::NotFound => format!("unknown time zone {name}"),
            Self::Io(e) => format!("time zone {name}: {self}: {e}"),
            Self::TooLarge => format!("time zone {name}: {self}"),
            Self::Corrupt(e) => format!("time zone {name}: {self}: {e}"),
        };
        ScheduleError::with_detail(ErrorCode::TimezoneInformationCorrupt, detail)
    }
}

impl ZoneDb {
    /// Where Go looks after `$ZONEINFO` (`time/zoneinfo_unix.go`).
    pub const SYSTEM_DIRS: [&'static str; 4] = [
        "/usr/share/zoneinfo",
        "/usr/share/lib/zoneinfo",
        "/usr/lib/locale/TZ",
        "/etc/zoneinfo",
    ];

    /// The largest file accepted: real zone files are under 4 KiB.
    pub const MAX_FILE_LEN: u64 = 256 * 1024;

    /// The host's database, in Go's order: `$ZONEINFO` when set and not empty (a directory;
    /// Go's zip form is not supported), then `SYSTEM_DIRS`. Reads the environment.
    pub fn host() -> ZoneDb {
        let from_env = std::env::var_os("ZONEINFO").filter(|v| !v.is_empty());
        ZoneDb {
            dirs: from_env
                .map(PathBuf::from)
                .into_iter()
                .chain(Self::SYSTEM_DIRS.iter().map(PathBuf::from))
                .collect(),
        }
    }

    /// A database searched in `dirs`, in order.
    pub fn in_dirs(dirs: impl IntoIterator<Item = PathBuf>) -> ZoneDb {
        ZoneDb {
            dirs: dirs.into_iter().collect(),
        }
    }

    /// Loads the zone `name` (e.g. `Asia/Shanghai`): the first directory with a valid file of
    /// that name wins; failing that, the first error other than "not found" is returned (Go's
    /// rule).
    pub fn load(&self, name: &str) -> Result<Zone, ZoneLoadError> {
        if !is_safe_zone_name(name) {
            return Err(ZoneLoadError::BadName);
        }
        let mut first_error = None;
        for dir in &self.dirs {
            match read_zone_file(&dir.join(name)) {
                Ok(data) => return Ok(Zone::Named(Arc::new(NamedZone::new(name, data)))),
                Err(ZoneLoadError::NotFound) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(ZoneLoadError::NotFound))
    }
}

/// Letters, digits and `/_+-`, with no empty component and not starting with `/`: a relative
/// path that stays inside the database (`.` is refused outright, so `..` is too).
fn is_safe_zone_name(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'+' | b'-');
    !name.is_empty() && name.bytes().all(allowed) && name.split('/').all(|part| !part.is_empty())
}

/// Reads and parses one TZif file, reading at most `MAX_FILE_LEN + 1` bytes.
fn read_zone_file(path: &Path) -> Result<TzData, ZoneLoadError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ZoneLoadError::NotFound,
        _ => ZoneLoadError::Io(e),
    })?;
    let mut bytes = Vec::new();
    file.take(ZoneDb::MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(ZoneLoadError::Io)?;
    if bytes.len() as u64 > ZoneDb::MAX_FILE_LEN {
        return Err(ZoneLoadError::TooLarge);
    }
    tzif::parse(&bytes).map_err(ZoneLoadError::Corrupt)
}

/// What to write instead of an offset zone that does not parse.
fn gmt_hint(text: &str) -> String {
    let form = "an offset is written GMT, a sign, the hour 0 to 14 without a leading zero, a colon and two minute digits";
    let rest = text
        .strip_prefix("GMT")
        .or_else(|| text.strip_prefix("UTC"))
        .unwrap_or("");
    let sign = rest.chars().next().filter(|c| matches!(c, '+' | '-'));
    let hour = rest
        .get(1..)
        .map(|r| r.split(':').next().unwrap_or(""))
        .and_then(|h| h.parse::<u8>().ok())
        .filter(|h| *h <= 14);
    let minutes = rest.split_once(':').map(|(_, m)| m).unwrap_or("00");
    match (sign, hour) {
        (Some(sign), Some(hour))
            if minutes.len() == 2
                && minutes < "60"
                && minutes.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("write GMT{sign}{hour}:{minutes}; {form}")
        }
        _ => format!("{form}, e.g. GMT+8:00 or GMT-5:30"),
    }
}

/// `GMT([+-])([0-9]|1[0-4]):([0-5][0-9])` over the whole text, as seconds east of UTC.
fn parse_gmt_offset(text: &str) -> Option<i32> {
    let rest = text.strip_prefix("GMT")?;
    let sign = match rest.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = rest.get(1..)?.split_once(':')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(hours) || !all_digits(minutes) || minutes.len() != 2 {
        return None;
    }
    // No leading zero on the hour: `GMT+08:00` is invalid, as in the reference.
    if hours.len() > 2 || (hours.len() == 2 && hours.starts_with('0')) {
        return None;
    }
    let hours: i32 = hours.parse().ok()?;
    let minutes: i32 = minutes.parse().ok()?;
    if hours > 14 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

/// What the host says about its zone; each source is `None` when absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostZoneSources<'a> {
    /// `$TZ`.
    pub tz_env: Option<&'a str>,
    /// The target of `/etc/localtime` when it is a symbolic link.
    pub localtime_link: Option<&'a Path>,
    /// The contents of `/etc/timezone`.
    pub etc_timezone: Option<&'a str>,
    /// The contents of `/etc/localtime` (followed if a link).
    pub localtime_bytes: Option<&'a [u8]>,
}

/// The zone of this host: `TZ`, else the `/etc/localtime` link, else `/etc/timezone`, else the
/// contents of `/etc/localtime` (named `Local`), else UTC. Reads the environment, `/etc` and the
/// zoneinfo database; call it once at startup and pass the result down.
///
/// A name is preferred to `Local` because it is sent to the server as `timeZone=`: when
/// `/etc/localtime` is a plain copy (common on embedded hosts) `/etc/timezone` still gives the
/// name if it exists, and only then is the copied file used directly.
pub fn system_zone() -> Zone {
    let tz_env = std::env::var("TZ").ok();
    let link = std::fs::read_link("/etc/localtime").ok();
    let etc_timezone = std::fs::read_to_string("/etc/timezone").ok();
    let localtime = std::fs::File::open("/etc/localtime").and_then(|f| {
        let mut bytes = Vec::new();
        f.take(ZoneDb::MAX_FILE_LEN).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    let sources = HostZoneSources {
        tz_env: tz_env.as_deref(),
        localtime_link: link.as_deref(),
        etc_timezone: etc_timezone.as_deref(),
        localtime_bytes: localtime.as_deref().ok(),
    };
    system_zone_in(&ZoneDb::host(), &sources)
}

/// `system_zone` from `TZ`, the `/etc/localtime` link and `/etc/timezone` only, loading names
/// from the host's database: each source that is absent or names no known zone is skipped.
pub fn system_zone_from(
    tz_env: Option<&str>,
    localtime_link: Option<&Path>,
    etc_timezone: Option<&str>,
) -> Zone {
    let sources = HostZoneSources {
        tz_env,
        localtime_link,
        etc_timezone,
        localtime_bytes: None,
    };
    system_zone_in(&ZoneDb::host(), &sources)
}

/// The zone a `TZ` value names: empty is UTC (as to the C library); a zone name or a
/// zoneinfo path (a leading `:` allowed), loaded from `db`; else a POSIX rule such as `JST-9`
/// or `EST5EDT,M3.2.0,M11.1.0`. `None` when it is none of these: the agent refuses to start
/// on such a `TZ` rather than run in a zone nobody asked for.
pub fn zone_from_tz(db: &ZoneDb, value: &str) -> Option<Zone> {
    let v = value.trim();
    let v = v.strip_prefix(':').unwrap_or(v);
    if v.is_empty() {
        return Some(Zone::utc());
    }
    let name = after_zoneinfo(v).unwrap_or(v);
    let by_name = match name {
        "UTC" | "GMT" => Some(Zone::Utc {
            label: name.to_string(),
        }),
        _ => db.load(name).ok(),
    };
    by_name.or_else(|| {
        let rule = tzif::PosixTz::parse(v.as_bytes()).ok()?;
        Some(Zone::Named(Arc::new(NamedZone::new(
            v,
            TzData::from_rule(rule),
        ))))
    })
}

/// `system_zone` without the host: names are loaded from `db`.
pub fn system_zone_in(db: &ZoneDb, host: &HostZoneSources<'_>) -> Zone {
    let by_name = |name: &str| match name {
        "UTC" | "GMT" => Some(Zone::Utc {
            label: name.to_string(),
        }),
        _ => db.load(name).ok(),
    };
    let from_env = host.tz_env.and_then(|v| zone_from_tz(db, v));
    let from_link = || {
        host.localtime_link
            .and_then(|p| p.to_str())
            .and_then(after_zoneinfo)
            .and_then(by_name)
    };
    let from_file = || host.etc_timezone.map(str::trim).and_then(by_name);
    let from_contents = || {
        let data = tzif::parse(host.localtime_bytes?).ok()?;
        Some(Zone::Named(Arc::new(NamedZone::new("Local", data))))
    };
    from_env
        .or_else(from_link)
        .or_else(from_file)
        .or_else(from_contents)
        .unwrap_or_else(Zone::utc)
}

/// `Asia/Shanghai` out of `/usr/share/zoneinfo/Asia/Shanghai` (also under `posix/` or `right/`).
fn after_zoneinfo(path: &str) -> Option<&str> {
    let (_, name) = path.split_once("zoneinfo/")?;
    Some(
        name.strip_prefix("posix/")
            .or_else(|| name.strip_prefix("right/"))
            .unwrap_or(name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::testing::{self, fixture_db, utc};

    fn check_parse(text: &str, expected: Result<(&str, i32), &str>) {
        let at = DateTime::parse_from_rfc3339("2024-03-15T00:00:00Z")
            .expect("test time")
            .with_timezone(&Utc);
        let got = Zone::parse_in(text, &fixture_db())
            .map(|z| (z.name(), z.offset_secs_at(at)))
            .map_err(|e| ScheduleError { hint: None, ..e }.to_string());
        assert_eq!(
            got,
            expected
                .map(|(n, o)| (n.to_string(), o))
                .map_err(str::to_string),
            "zone {text:?}"
        );
    }

    #[test]
    fn iana() {
        check_parse("Asia/Shanghai", Ok(("Asia/Shanghai", 8 * 3600)));
    }
    #[test]
    fn iana_unknown() {
        check_parse(
            "Asia/Nowhere",
            Err("TimezoneInformationCorrupt: unknown time zone Asia/Nowhere"),
        );
    }
    #[test]
    fn gmt_plus() {
        check_parse("GMT+8:00", Ok(("GMT+8:00", 8 * 3600)));
    }
    #[test]
    fn gmt_minus_14() {
        check_parse("GMT-14:00", Ok(("GMT-14:00", -14 * 3600)));
    }
    #[test]
    fn gmt_half_hour() {
        check_parse("GMT+5:30", Ok(("GMT+5:30", 5 * 3600 + 1800)));
    }
    #[test]
    fn gmt_leading_zero() {
        check_parse("GMT+08:00", Err("InvalidGMTOffsetForTimezone"));
    }
    #[test]
    fn gmt_hour_15() {
        check_parse("GMT+15:00", Err("InvalidGMTOffsetForTimezone"));
    }
    #[test]
    fn gmt_minute_60() {
        check_parse("GMT+8:60", Err("InvalidGMTOffsetForTimezone"));
    }
    #[test]
    fn utc_offset() {
        check_parse("UTC+8:00", Err("InvalidGMTOffsetForTimezone"));
    }
    #[test]
    fn bare_utc_gmt() {
        check_parse("UTC", Ok(("UTC", 0)));
        check_parse("GMT", Ok(("GMT", 0)));
    }
    #[test]
    fn abbreviation() {
        check_parse("CST", Err("TimezoneInformationCorrupt"));
        check_parse("2100", Err("TimezoneInformationCorrupt"));
    }

    fn check_system(tz_env: Option<&str>, link: Option<&str>, file: Option<&str>, expected: &str) {
        let sources = HostZoneSources {
            tz_env,
            localtime_link: link.map(Path::new),
            etc_timezone: file,
            localtime_bytes: None,
        };
        assert_eq!(system_zone_in(&fixture_db(), &sources).name(), expected);
    }

    #[test]
    fn system_from_env() {
        check_system(
            Some("Asia/Tokyo"),
            Some("/usr/share/zoneinfo/Europe/Paris"),
            None,
            "Asia/Tokyo",
        );
        check_system(Some(":America/New_York"), None, None, "America/New_York");
        check_system(
            Some(":/usr/share/zoneinfo/Asia/Tokyo"),
            None,
            None,
            "Asia/Tokyo",
        );
        check_system(Some("UTC"), None, None, "UTC");
        check_system(Some(""), None, None, "UTC");
    }

    #[test]
    fn a_posix_tz_rule_is_a_zone() {
        let at = |s: &str| utc(s);
        let jst = zone_from_tz(&fixture_db(), "JST-9").expect("JST-9");
        assert_eq!(jst.name(), "JST-9");
        assert_eq!(jst.offset_secs_at(at("2030-01-01T00:00:00Z")), 9 * 3600);
        let ny = zone_from_tz(&fixture_db(), "EST5EDT,M3.2.0,M11.1.0").expect("EST5EDT");
        assert_eq!(ny.offset_secs_at(at("2030-01-15T12:00:00Z")), -5 * 3600);
        assert_eq!(ny.offset_secs_at(at("2030-07-15T12:00:00Z")), -4 * 3600);
        check_system(
            Some("JST-9"),
            Some("/usr/share/zoneinfo/Europe/Paris"),
            None,
            "JST-9",
        );
        for unknown in ["Mars/Olympus", "JST", "not a zone", "+9"] {
            assert!(zone_from_tz(&fixture_db(), unknown).is_none(), "{unknown}");
        }
    }
    #[test]
    fn system_from_link() {
        check_system(
            None,
            Some("/usr/share/zoneinfo/Europe/Paris"),
            Some("Asia/Tokyo"),
            "Europe/Paris",
        );
        check_system(
            Some("Not/AZone"),
            Some("../usr/share/zoneinfo/posix/Europe/Paris"),
            None,
            "Europe/Paris",
        );
    }
    #[test]
    fn system_from_file() {
        check_system(
            None,
            Some("/etc/elsewhere"),
            Some("Asia/Tokyo\n"),
            "Asia/Tokyo",
        );
    }
    #[test]
    fn system_default() {
        check_system(None, None, None, "UTC");
        check_system(None, None, Some("garbage"), "UTC");
    }

    fn naive(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").expect("test time")
    }
    #[test]
    fn resolve_gap() {
        let ny = testing::zone("America/New_York");
        let got = ny.resolve_local(naive("2030-03-10T02:30:00"));
        assert_eq!(
            got,
            Some(LocalInstant::Gap {
                next_valid: utc("2030-03-10T07:00:00Z")
            })
        );
    }
    #[test]
    fn resolve_ambiguous() {
        let ny = testing::zone("America/New_York");
        let got = ny.resolve_local(naive("2030-11-03T01:30:00"));
        let expected = LocalInstant::Ambiguous {
            earliest: utc("2030-11-03T05:30:00Z"),
            latest: utc("2030-11-03T06:30:00Z"),
        };
        assert_eq!(got, Some(expected));
    }
    /// A version-1 TZif file: `types` are UTC offsets, `transitions` `(utc_secs, type)`.
    fn tzif_v1(types: &[i32], transitions: &[(i32, u8)]) -> TzData {
        let mut out = b"TZif".to_vec();
        out.extend([0; 16]);
        for count in [0, 0, 0, transitions.len(), types.len(), 1] {
            out.extend((count as u32).to_be_bytes());
        }
        out.extend(transitions.iter().flat_map(|&(at, _)| at.to_be_bytes()));
        out.extend(transitions.iter().map(|&(_, ty)| ty));
        for &offset in types {
            out.extend(offset.to_be_bytes());
            out.extend([0, 0]);
        }
        out.push(0);
        tzif::parse(&out).expect("valid TZif")
    }

    /// Found by the tzif fuzz target: offsets beyond ±16 h (valid TZif, no real zone) put the
    /// gap's end outside the search window, and the "next valid" instant came before the gap.
    #[test]
    fn gap_end_is_found_for_offsets_beyond_16_hours() {
        let data = tzif_v1(&[-65_536, -42_392], &[(65_457, 1)]);
        let zone = Zone::Named(Arc::new(NamedZone::new("Test/Far", data)));
        // Local times from 65457 - 65536 = -79 up to 65457 - 42392 = 23065 are skipped.
        let local = DateTime::from_timestamp(-1, 0)
            .expect("in range")
            .naive_utc();
        assert_eq!(
            zone.resolve_local(local),
            Some(LocalInstant::Gap {
                next_valid: DateTime::from_timestamp(65_457, 0).expect("in range")
            })
        );
        // The far ends of the accepted range, both ways.
        for (before, after) in [
            (-89_999, 93_599),
            (93_599 - 7200, 93_599),
            (-89_999, -89_999 + 3600),
        ] {
            let data = tzif_v1(&[before, after], &[(1_000_000, 1)]);
            let zone = Zone::Named(Arc::new(NamedZone::new("Test/Far", data)));
            let local = DateTime::from_timestamp(1_000_000 + i64::from(before) + 1, 0)
                .expect("in range")
                .naive_utc();
            let got = zone.resolve_local(local);
            assert_eq!(
                got,
                Some(LocalInstant::Gap {
                    next_valid: DateTime::from_timestamp(1_000_000, 0).expect("in range")
                }),
                "{before} -> {after}"
            );
        }
    }

    #[test]
    fn resolve_fixed() {
        let zone = Zone::parse("GMT-14:00").expect("valid zone");
        let got = zone.resolve_local(naive("2030-03-09T08:00:00"));
        assert_eq!(got, Some(LocalInstant::Single(utc("2030-03-09T22:00:00Z"))));
    }

    /// Our offsets against glibc's (`testdata/transitions.txt`, from zdump on the same files):
    /// at every change, the second before the next one, and every 13 hours in between.
    #[test]
    fn offsets_match_zdump() {
        for want in testing::expected_offsets() {
            let zone = testing::zone(&want.zone);
            let offset = |secs: i64| {
                zone.offset_secs_at(DateTime::from_timestamp(secs, 0).expect("in range"))
            };
            let mut ends: Vec<i64> = want.changes.iter().skip(1).map(|&(at, _)| at).collect();
            ends.push(testing::EXPECTED_END);
            for (&(at, expected), end) in want.changes.iter().zip(ends) {
                for secs in [at, end - 1, at + (end - at) / 2] {
                    assert_eq!(offset(secs), expected, "{} at {secs}", want.zone);
                }
            }
            let mut secs = want.start();
            while secs < testing::EXPECTED_END {
                assert_eq!(
                    Some(offset(secs)),
                    want.offset_at(secs),
                    "{} at {secs}",
                    want.zone
                );
                secs += 13 * 3600;
            }
        }
    }

    /// `resolve_local` against a brute-force answer from the expected offsets: an offset `o`
    /// gives an instant showing `local` when the expected offset at `local - o` is `o`.
    #[test]
    fn resolve_local_matches_zdump() {
        for want in testing::expected_offsets() {
            let zone = testing::zone(&want.zone);
            let mut offsets: Vec<i32> = want.changes.iter().map(|&(_, o)| o).collect();
            offsets.sort_unstable();
            offsets.dedup();
            // Local times every 97 hours (each hour of the day in turn), plus every 15 minutes
            // for 3 hours around each change, kept a day clear of the covered span's ends.
            let mut locals: Vec<i64> = (0..11_800).map(|i| i * 97 * 3600).collect();
            for &(at, offset) in &want.changes {
                let local = at + i64::from(offset);
                locals.extend((-12..=12).map(|q| local + q * 900));
            }
            let day = 86_400;
            locals.retain(|&l| l > want.start() + 2 * day && l < testing::EXPECTED_END - 2 * day);
            for secs in locals {
                let local = DateTime::from_timestamp(secs, 0)
                    .expect("in range")
                    .naive_utc();
                let mut found: Vec<i64> = offsets
                    .iter()
                    .filter(|&&o| want.offset_at(secs - i64::from(o)) == Some(o))
                    .map(|&o| secs - i64::from(o))
                    .collect();
                found.sort_unstable();
                found.dedup();
                let instant = |at: i64| DateTime::from_timestamp(at, 0).expect("in range");
                let got = zone.resolve_local(local).expect("in range");
                match (got, found.as_slice()) {
                    (LocalInstant::Gap { next_valid }, []) => {
                        assert!(
                            zone.to_local(next_valid) >= Some(local),
                            "{} {local}",
                            want.zone
                        );
                        let before = next_valid - Duration::seconds(1);
                        assert!(zone.to_local(before) < Some(local), "{} {local}", want.zone);
                    }
                    (got, [one]) => {
                        assert_eq!(
                            got,
                            LocalInstant::Single(instant(*one)),
                            "{} {local}",
                            want.zone
                        )
                    }
                    (got, [first, .., last]) => assert_eq!(
                        got,
                        LocalInstant::Ambiguous {
                            earliest: instant(*first),
                            latest: instant(*last),
                        },
                        "{} at local {local}",
                        want.zone
                    ),
                    (got, []) => panic!("{} at local {local}: {got:?}, expected a gap", want.zone),
                }
            }
        }
    }

    #[test]
    fn unsafe_names_are_unknown() {
        for name in [
            "../etc/passwd",
            "/etc/passwd",
            "Asia/../UTC",
            "Asia//Tokyo",
            "Asia/Tokyo/",
            "Asia/To kyo",
            "Asia/Tōkyō",
            "Asia/.hidden",
        ] {
            let got = Zone::parse_in(name, &fixture_db()).map_err(|e| e.to_string());
            assert_eq!(
                got,
                Err(format!(
                    "TimezoneInformationCorrupt: unknown time zone {name}"
                )),
            );
        }
    }

    #[test]
    fn missing_database_is_unknown_zone() {
        let db = ZoneDb::in_dirs([PathBuf::from("/nonexistent/zoneinfo")]);
        let got = Zone::parse_in("Asia/Shanghai", &db).map_err(|e| e.to_string());
        assert_eq!(
            got,
            Err("TimezoneInformationCorrupt: unknown time zone Asia/Shanghai".to_string())
        );
        // UTC, GMT and fixed offsets never need the database.
        for text in ["UTC", "GMT", "GMT+8:00"] {
            assert!(Zone::parse_in(text, &db).is_ok(), "{text}");
        }
    }

    #[test]
    fn corrupt_zone_file_and_search_order() {
        let dir = std::env::temp_dir().join(format!("assistd-tz-{}", std::process::id()));
        let (first, second) = (dir.join("first"), dir.join("second"));
        std::fs::create_dir_all(first.join("Test")).expect("temp dir");
        std::fs::create_dir_all(second.join("Test")).expect("temp dir");
        std::fs::write(first.join("Test/Bad"), b"TZif2 garbage").expect("write");
        let mut utc_plus_2 = b"TZif2".to_vec();
        utc_plus_2.extend([0; 15]);
        let header = |out: &mut Vec<u8>| {
            for count in [0u32, 0, 0, 0, 1, 4] {
                out.extend(count.to_be_bytes());
            }
            out.extend(7200i32.to_be_bytes());
            out.extend([0, 0]);
            out.extend(b"ABC\0");
        };
        header(&mut utc_plus_2);
        let v1_len = utc_plus_2.len();
        utc_plus_2.extend_from_within(..v1_len);
        utc_plus_2.extend(b"\n<+02>-2\n");
        std::fs::write(second.join("Test/Bad"), &utc_plus_2).expect("write");
        std::fs::write(second.join("Test/Good"), &utc_plus_2).expect("write");

        let db = ZoneDb::in_dirs([first.clone(), second.clone()]);
        let at = utc("2024-03-15T00:00:00Z");
        // A bad file in the first directory does not hide a good one in the second.
        let bad = Zone::parse_in("Test/Bad", &db).expect("found in second dir");
        assert_eq!(
            (bad.name(), bad.offset_secs_at(at)),
            ("Test/Bad".to_string(), 7200)
        );
        let good = Zone::parse_in("Test/Good", &db).expect("found in second dir");
        assert_eq!(good.offset_secs_at(at), 7200);
        // Only a bad file: its error, not "unknown".
        let only_first = ZoneDb::in_dirs([first]);
        let err = Zone::parse_in("Test/Bad", &only_first).expect_err("corrupt file");
        assert_eq!(err.code, ErrorCode::TimezoneInformationCorrupt);
        assert_eq!(
            err.detail.as_deref(),
            Some("time zone Test/Bad: zoneinfo file is malformed: TZif data is truncated")
        );
        // Named zones compare by name.
        assert_eq!(bad, Zone::parse_in("Test/Bad", &db).expect("found"));
        assert_ne!(bad, good);

        // A plain copy in /etc/localtime is used, as `Local`, when nothing names the zone.
        let local = HostZoneSources {
            localtime_bytes: Some(&utc_plus_2),
            ..HostZoneSources::default()
        };
        let zone = system_zone_in(&db, &local);
        assert_eq!(
            (zone.name(), zone.offset_secs_at(at)),
            ("Local".to_string(), 7200)
        );
        let named = HostZoneSources {
            etc_timezone: Some("Test/Good\n"),
            ..local
        };
        assert_eq!(system_zone_in(&db, &named).name(), "Test/Good");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
