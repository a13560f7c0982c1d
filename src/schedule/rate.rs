//! Rate expressions (spec §5.3). STUB: replaced by the schedule work.
use super::{ErrorCode, ScheduleError};
use chrono::{DateTime, Utc};

#[derive(Clone, Debug)]
pub struct RateSchedule {}

impl RateSchedule {
    pub fn parse(_expr: &str, _creation_ms: i64) -> Result<RateSchedule, ScheduleError> {
        Err(ScheduleError::new(ErrorCode::InvalidRateExpression))
    }
    pub fn next_after(&self, _from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        None
    }
}
