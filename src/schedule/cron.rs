//! Cron expressions (spec §5.2). STUB: replaced by the schedule work.
use super::{ErrorCode, ScheduleError, Zone};
use chrono::{DateTime, Utc};

#[derive(Clone, Debug)]
pub struct CronSchedule {
    zone: Zone,
}

impl CronSchedule {
    pub fn parse(_expr: &str, system_zone: &Zone) -> Result<CronSchedule, ScheduleError> {
        let _ = system_zone;
        Err(ScheduleError::new(ErrorCode::InvalidCronExpression))
    }
    pub fn next_after(&self, _from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        None
    }
    pub fn zone(&self) -> &Zone {
        &self.zone
    }
}
