//! Wire types of the Cloud Assistant task protocol (spec §3) and their lenient decoding.
//!
//! This module only describes and decodes data; it must never perform I/O or decide
//! what to do with a task. It is the only module that derives serde for the wire.

use std::collections::BTreeMap;
use std::fmt;

/// How a task repeats (spec §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RepeatType {
    #[default]
    Once,
    /// Cron expression in `cron`.
    Period,
    NextRebootOnly,
    EveryReboot,
    /// `rate(...)` expression in `cron`, aligned to `creationTime`.
    Rate,
    /// `at(...)` expression in `cron`.
    At,
}

impl RepeatType {
    /// Parses the wire name exactly as the server sends it.
    pub fn from_wire(s: &str) -> Option<RepeatType> {
        Some(match s {
            "Once" => RepeatType::Once,
            "Period" => RepeatType::Period,
            "NextRebootOnly" => RepeatType::NextRebootOnly,
            "EveryReboot" => RepeatType::EveryReboot,
            "Rate" => RepeatType::Rate,
            "At" => RepeatType::At,
            _ => return None,
        })
    }

    pub fn as_wire(self) -> &'static str {
        match self {
            RepeatType::Once => "Once",
            RepeatType::Period => "Period",
            RepeatType::NextRebootOnly => "NextRebootOnly",
            RepeatType::EveryReboot => "EveryReboot",
            RepeatType::Rate => "Rate",
            RepeatType::At => "At",
        }
    }

    /// Period, Rate and At are driven by the timer; the others run once when received.
    pub fn is_periodic(self) -> bool {
        matches!(self, RepeatType::Period | RepeatType::Rate | RepeatType::At)
    }
}

impl fmt::Display for RepeatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire())
    }
}

/// Output reporting settings of one task (spec §3.3), as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputInfo {
    /// Running-output period in milliseconds (raised to 1000 by the runner).
    pub interval_ms: i64,
    /// Total output quota in bytes (raised to 12000 by the runner).
    pub log_quota: i64,
    pub skip_empty: bool,
    pub send_start: bool,
    pub need_export: bool,
}

/// One run/stop/test task (spec §3.4), after the task-list normalisation of §3.1.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RunTaskInfo {
    pub instance_id: String,
    /// `type`: RunShellScript, RunBatScript, RunPowerShellScript.
    pub command_type: String,
    pub task_id: String,
    pub command_id: String,
    pub enable_parameter: bool,
    /// Seconds, as a string; not a number is 3600, "0" is no timeout.
    pub timeout: String,
    pub command_name: String,
    pub invoke_version: i64,
    /// Standard base64 of the script text, exactly as received (signatures cover this text).
    pub content: String,
    pub working_dir: String,
    pub args: String,
    /// `cron`: a cron, `rate(...)` or `at(...)` expression.
    pub cron: String,
    pub username: String,
    pub password_name: String,
    /// Milliseconds since the epoch; the origin of Rate schedules.
    pub creation_time: i64,
    pub container_id: String,
    pub container_name: String,
    pub builtin_params: BTreeMap<String, String>,
    pub termination_mode: String,
    pub launcher: String,
    pub signature: String,
    pub user_id: String,
    pub output: OutputInfo,
    pub repeat: RepeatType,
}

impl fmt::Debug for RunTaskInfo {
    // The script body and the signature stay out of logs (style: logs are for operators).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunTaskInfo")
            .field("task_id", &self.task_id)
            .field("invoke_version", &self.invoke_version)
            .field("repeat", &self.repeat)
            .field("command_type", &self.command_type)
            .field("cron", &self.cron)
            .field("timeout", &self.timeout)
            .field("username", &self.username)
            .field("working_dir", &self.working_dir)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}
