//! At expressions (spec §5.4). STUB: replaced by the schedule work.
use super::{ErrorCode, ScheduleError};
use chrono::{DateTime, Utc};

#[derive(Clone, Debug)]
pub struct AtSchedule {}

impl AtSchedule {
    pub fn parse(_expr: &str) -> Result<AtSchedule, ScheduleError> {
        Err(ScheduleError::new(ErrorCode::InvalidAtExpression))
    }
    pub fn next_after(&self, _from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        None
    }
}
