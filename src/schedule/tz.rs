//! Time zones of cron expressions (IANA names, `GMT±H:MM`, `GMT`, `UTC`), local-time arithmetic
//! in them, and the host's zone. Never reads the clock; only `system_zone` looks at the host.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use super::{ErrorCode, ScheduleError};

/// The zone a cron expression is evaluated in.
#[derive(Clone, Debug, PartialEq)]
pub enum Zone {
    /// `UTC` or `GMT`, keeping the spelling the expression used.
    Utc { label: String },
    /// `GMT±H:MM`; `label` is the text as written, e.g. `GMT+8:00`.
    Fixed { offset_secs: i32, label: String },
    /// An IANA zone such as `Asia/Shanghai`.
    Named(Tz),
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
    pub fn parse(text: &str) -> Result<Zone, ScheduleError> {
        if text.contains('/') {
            return Tz::from_str(text).map(Zone::Named).map_err(|_| {
                ScheduleError::with_detail(
                    ErrorCode::TimezoneInformationCorrupt,
                    format!("unknown time zone {text}"),
                )
            });
        }
        if text.contains('+') || text.contains('-') {
            // Go accepts the offset anywhere inside the field (a substring match); we require the
            // whole field to be `GMT±H:MM`, so a stray prefix or suffix is not silently ignored.
            return parse_gmt_offset(text)
                .map(|offset_secs| Zone::Fixed {
                    offset_secs,
                    label: text.to_string(),
                })
                .ok_or_else(|| ScheduleError::new(ErrorCode::InvalidGMTOffsetForTimezone));
        }
        if text == "GMT" || text == "UTC" {
            return Ok(Zone::Utc {
                label: text.to_string(),
            });
        }
        Err(ScheduleError::new(ErrorCode::TimezoneInformationCorrupt))
    }

    /// The name sent as `timeZone=` (e.g. `Asia/Shanghai`, `GMT+8:00`, `UTC`).
    pub fn name(&self) -> String {
        match self {
            Zone::Utc { label } | Zone::Fixed { label, .. } => label.clone(),
            Zone::Named(tz) => tz.name().to_string(),
        }
    }

    /// Seconds east of UTC at `at`.
    pub fn offset_secs_at(&self, at: DateTime<Utc>) -> i32 {
        match self {
            Zone::Utc { .. } => 0,
            Zone::Fixed { offset_secs, .. } => *offset_secs,
            Zone::Named(tz) => tz
                .offset_from_utc_datetime(&at.naive_utc())
                .fix()
                .local_minus_utc(),
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
        let tz = match self {
            Zone::Utc { .. } => return Some(LocalInstant::Single(local.and_utc())),
            Zone::Fixed { offset_secs, .. } => {
                let utc = local.checked_sub_signed(Duration::seconds(i64::from(*offset_secs)))?;
                return Some(LocalInstant::Single(utc.and_utc()));
            }
            Zone::Named(tz) => tz,
        };
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(LocalInstant::Single(t.with_timezone(&Utc))),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                Some(LocalInstant::Ambiguous {
                    earliest: a.min(b),
                    latest: a.max(b),
                })
            }
            LocalResult::None => self
                .gap_end(local)
                .map(|next_valid| LocalInstant::Gap { next_valid }),
        }
    }

    /// The first instant whose wall-clock time is at or after `local` (which lies in a gap):
    /// a binary search over the 32 hours around it, which covers every UTC offset.
    fn gap_end(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let mut lo = local
            .checked_sub_signed(Duration::hours(16))?
            .and_utc()
            .timestamp();
        let mut hi = local
            .checked_add_signed(Duration::hours(16))?
            .and_utc()
            .timestamp();
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

/// The zone of this host: `TZ`, else the `/etc/localtime` link, else `/etc/timezone`, else UTC.
/// Reads the environment and `/etc`; call it once at startup and pass the result down.
pub fn system_zone() -> Zone {
    let tz_env = std::env::var("TZ").ok();
    let link = std::fs::read_link("/etc/localtime").ok();
    let etc_timezone = std::fs::read_to_string("/etc/timezone").ok();
    system_zone_from(tz_env.as_deref(), link.as_deref(), etc_timezone.as_deref())
}

/// `system_zone` without the host: each source that is absent or names no known zone is skipped.
pub fn system_zone_from(
    tz_env: Option<&str>,
    localtime_link: Option<&Path>,
    etc_timezone: Option<&str>,
) -> Zone {
    let from_env = tz_env.map(|v| v.trim()).and_then(|v| {
        let v = v.strip_prefix(':').unwrap_or(v);
        // An empty `TZ` means UTC to the C library.
        if v.is_empty() {
            return Some(Zone::utc());
        }
        zone_from_name(after_zoneinfo(v).unwrap_or(v))
    });
    let from_link = || {
        localtime_link
            .and_then(|p| p.to_str())
            .and_then(after_zoneinfo)
            .and_then(zone_from_name)
    };
    let from_file = || etc_timezone.map(str::trim).and_then(zone_from_name);
    from_env
        .or_else(from_link)
        .or_else(from_file)
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

fn zone_from_name(name: &str) -> Option<Zone> {
    match name {
        "UTC" | "GMT" => Some(Zone::Utc {
            label: name.to_string(),
        }),
        _ => Tz::from_str(name).ok().map(Zone::Named),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parse(text: &str, expected: Result<(&str, i32), &str>) {
        let at = DateTime::parse_from_rfc3339("2024-03-15T00:00:00Z")
            .expect("test time")
            .with_timezone(&Utc);
        let got = Zone::parse(text)
            .map(|z| (z.name(), z.offset_secs_at(at)))
            .map_err(|e| e.to_string());
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
        let zone = system_zone_from(tz_env, link.map(Path::new), file);
        assert_eq!(zone.name(), expected);
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
    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    #[test]
    fn resolve_gap() {
        let ny = Zone::Named(chrono_tz::America::New_York);
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
        let ny = Zone::Named(chrono_tz::America::New_York);
        let got = ny.resolve_local(naive("2030-11-03T01:30:00"));
        let expected = LocalInstant::Ambiguous {
            earliest: utc("2030-11-03T05:30:00Z"),
            latest: utc("2030-11-03T06:30:00Z"),
        };
        assert_eq!(got, Some(expected));
    }
    #[test]
    fn resolve_fixed() {
        let zone = Zone::parse("GMT-14:00").expect("valid zone");
        let got = zone.resolve_local(naive("2030-03-09T08:00:00"));
        assert_eq!(got, Some(LocalInstant::Single(utc("2030-03-09T22:00:00Z"))));
    }
}
