//! Where tasks come from. The engine receives `SourceEvent`s and never knows whether they
//! came from a task directory or a server.

pub mod crontab;
pub mod local;
pub mod watch;

use crate::model::RunTaskInfo;

/// One thing a task source asks the engine to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// Run (or schedule) a task (spec §6.1).
    Run(RunTaskInfo),
    /// Stop a task (spec §6.2).
    Stop(RunTaskInfo),
    /// Pre-check a task without running it (spec §6.3).
    Test(RunTaskInfo),
    /// Local mode: the task's file went away (or was refused); stop it like `Stop`, but an
    /// idle task journals `removed` and a running one says its file went.
    Removed(RunTaskInfo),
}
