//! Time zones of cron expressions: IANA names, `GMT±H:MM`, `GMT`, `UTC`, and the system zone.
//! STUB: replaced by the schedule work.

use chrono::{DateTime, Utc};

#[derive(Clone, Debug, PartialEq)]
pub enum Zone {
    Utc { label: String },
    Fixed { offset_secs: i32, label: String },
    Named(chrono_tz::Tz),
}

impl Zone {
    pub fn utc() -> Zone {
        Zone::Utc { label: "UTC".to_string() }
    }
    /// The name sent as `timeZone=` (e.g. `Asia/Shanghai`, `GMT+8:00`, `UTC`).
    pub fn name(&self) -> String {
        match self {
            Zone::Utc { label } | Zone::Fixed { label, .. } => label.clone(),
            Zone::Named(tz) => tz.name().to_string(),
        }
    }
    /// Seconds east of UTC at `at`.
    pub fn offset_secs_at(&self, _at: DateTime<Utc>) -> i32 {
        0
    }
}

/// The zone of this host: `TZ`, else the `/etc/localtime` link, else UTC.
pub fn system_zone() -> Zone {
    Zone::utc()
}
