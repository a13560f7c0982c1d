//! One invocation end to end: pre-check, script file, spawn, output capture, wait with timeout
//! and cancel, process-group kill, and exactly one final report. STUB: replaced by the runner work.

pub mod output;
pub mod params;
pub mod precheck;
pub mod script;
pub mod spawn;

use std::path::PathBuf;

use crossbeam_channel::Receiver;

use crate::model::RunTaskInfo;
use crate::report::{ReportHead, Reporter, Verdict};

/// Settings the runner needs from the agent's configuration.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Where script files are written (`<state>/scripts`).
    pub script_dir: PathBuf,
    /// Act on exit codes 193 (power off) and 194 (reboot); otherwise only log them.
    pub allow_power_actions: bool,
}

/// A request to end a running invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Kill the process group and report `stopped` with `result=killed`.
    Stop,
    /// Kill the process group and send no final report (spec §9 report errors, version change).
    Quiet,
}

/// Why a task cannot run: the `param`/`value` of its invalid report (spec §4.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub param: String,
    pub value: String,
}

/// Which final report an invocation sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Finished,
    Timeout,
    Failed,
    Error,
    Stopped,
    Invalid,
    /// No final report: a quiet cancel, or the server refused the start event.
    Silent,
}

/// What the engine needs to know after an invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub ending: Ending,
    /// The first report answer that named a task error (spec §9), if any.
    pub task_error: Option<Verdict>,
}

/// Checks what can be checked without running (spec §4.4): command type, base64 content,
/// user, working directory.
pub fn precheck(_task: &RunTaskInfo) -> Result<(), Invalid> {
    Ok(())
}

/// Runs one invocation of `task` and sends its reports through `reporter`.
pub fn run(
    _task: &RunTaskInfo,
    _head: ReportHead,
    _cfg: &RunnerConfig,
    _cancel: &Receiver<Cancel>,
    _reporter: &dyn Reporter,
) -> Outcome {
    Outcome {
        ending: Ending::Silent,
        task_error: None,
    }
}
