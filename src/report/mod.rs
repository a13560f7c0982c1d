//! What the engine tells the outside world about an invocation, and the one interface it goes through.
//!
//! `Report` is the closed set of events of spec §2.3; `Reporter` is implemented by the local
//! journal, the server client and the in-memory test double. This module never decides *when*
//! to report; the runner and the engine do.

pub mod journal;

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::RepeatType;

/// Identity of the invocation a report is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportHead {
    pub task_id: String,
    pub invoke_version: i64,
    pub repeat: RepeatType,
    /// Wall-clock parameters of periodic invocations (spec §5.8).
    pub wall_clock: WallClock,
}

/// The wall-clock query parameters a periodic invocation's reports carry (spec §5.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WallClock {
    None,
    /// `&currentTime={ms}`.
    Rate,
    /// `&currentTime={ms}&offset=<sec>&timeZone=<name>` in the cron's zone.
    Cron {
        zone_name: String,
        offset_secs: i32,
    },
}

/// Times and counters shared by every final report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Milliseconds since the epoch; 0 when the invocation never started.
    pub start_ms: i64,
    pub end_ms: i64,
    pub exit_code: i32,
    pub dropped: u64,
}

/// How a stopped invocation ended (`result=` of the stopped report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopResult {
    Killed,
    Completed,
    Failed,
    /// Local mode: the task was idle when its file went away; nothing was killed.
    Removed,
}

impl StopResult {
    pub fn as_wire(self) -> &'static str {
        match self {
            StopResult::Killed => "killed",
            StopResult::Completed => "completed",
            StopResult::Failed => "failed",
            StopResult::Removed => "removed",
        }
    }
}

/// One report, as in spec §2.3 (E4–E12).
#[derive(Clone, PartialEq, Eq)]
pub enum Report {
    /// E4 (empty output, before the process starts) and E5 (a running-output chunk).
    Running {
        head: ReportHead,
        start_ms: i64,
        output: Vec<u8>,
    },
    /// E6: the process exited (any exit code).
    Finished {
        head: ReportHead,
        span: Span,
        output: Vec<u8>,
    },
    /// E7: the timeout killed the process group; exit code 1.
    Timeout {
        head: ReportHead,
        span: Span,
        output: Vec<u8>,
    },
    /// E8: the process failed with no error object.
    Failed {
        head: ReportHead,
        span: Span,
        output: Vec<u8>,
    },
    /// E9: the invocation failed before or while starting, with a code and a description.
    Error {
        head: ReportHead,
        span: Span,
        err_code: String,
        err_desc: String,
        output: Vec<u8>,
    },
    /// E10: stopped by a stop task, a cancel, or a cron that has no further run.
    Stopped {
        head: ReportHead,
        span: Span,
        result: StopResult,
        err_desc: Option<String>,
        /// The signal the agent sent the process group (SIGTERM at shutdown, SIGKILL for a
        /// stop); `None` when nothing ran. Journaled; not on the wire (the reference has no
        /// such parameter).
        signal: Option<i32>,
        output: Vec<u8>,
    },
    /// E11: the task cannot run; `param` names what is wrong.
    Invalid {
        head: ReportHead,
        param: String,
        value: String,
    },
    /// E12: a test task passed its pre-check.
    Verified { head: ReportHead },
}

impl Report {
    pub fn head(&self) -> &ReportHead {
        match self {
            Report::Running { head, .. }
            | Report::Finished { head, .. }
            | Report::Timeout { head, .. }
            | Report::Failed { head, .. }
            | Report::Error { head, .. }
            | Report::Stopped { head, .. }
            | Report::Invalid { head, .. }
            | Report::Verified { head } => head,
        }
    }

    /// The event name used in logs and in the journal.
    pub fn event(&self) -> &'static str {
        match self {
            Report::Running { .. } => "running",
            Report::Finished { .. } => "finished",
            Report::Timeout { .. } => "timeout",
            Report::Failed { .. } => "failed",
            Report::Error { .. } => "error",
            Report::Stopped {
                result: StopResult::Removed,
                ..
            } => "removed",
            Report::Stopped { .. } => "stopped",
            Report::Invalid { .. } => "invalid",
            Report::Verified { .. } => "verified",
        }
    }

    pub fn span(&self) -> Option<&Span> {
        match self {
            Report::Finished { span, .. }
            | Report::Timeout { span, .. }
            | Report::Failed { span, .. }
            | Report::Error { span, .. }
            | Report::Stopped { span, .. } => Some(span),
            _ => None,
        }
    }

    pub fn output(&self) -> &[u8] {
        match self {
            Report::Running { output, .. }
            | Report::Finished { output, .. }
            | Report::Timeout { output, .. }
            | Report::Failed { output, .. }
            | Report::Error { output, .. }
            | Report::Stopped { output, .. } => output,
            Report::Invalid { .. } | Report::Verified { .. } => &[],
        }
    }

    /// True for the reports that end an invocation (everything but `Running`).
    pub fn is_final(&self) -> bool {
        !matches!(self, Report::Running { .. })
    }
}

impl fmt::Debug for Report {
    // Output bytes stay out of logs; their length is enough to follow a task.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.head();
        write!(
            f,
            "{} task={} invoke_version={} output_len={}",
            self.event(),
            head.task_id,
            head.invoke_version,
            self.output().len()
        )?;
        if let Some(span) = self.span() {
            write!(f, " exit_code={} dropped={}", span.exit_code, span.dropped)?;
        }
        match self {
            Report::Invalid { param, value, .. } => write!(f, " param={param} value={value}"),
            Report::Error {
                err_code, err_desc, ..
            } => write!(f, " err_code={err_code} err_desc={err_desc}"),
            Report::Stopped { result, .. } => write!(f, " result={}", result.as_wire()),
            _ => Ok(()),
        }
    }
}

/// What the receiver said about a delivered report (spec §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// The server answered with an `errorCode`.
    TaskError {
        code: String,
        status: String,
    },
}

impl Verdict {
    /// `TaskNotFound` or `TaskStatusInvalid`: the invocation must stop quietly (spec §9).
    pub fn is_task_error(&self) -> bool {
        matches!(self, Verdict::TaskError { code, .. } if code == "TaskNotFound" || code == "TaskStatusInvalid")
    }

    /// `TaskNotFound`, or `TaskStatusInvalid` with `Terminated`: drop the periodic registration.
    pub fn drops_periodic(&self) -> bool {
        match self {
            Verdict::TaskError { code, status } => {
                code == "TaskNotFound" || (code == "TaskStatusInvalid" && status == "Terminated")
            }
            Verdict::Accepted => false,
        }
    }
}

/// A report that could not be delivered.
#[derive(Debug)]
pub enum ReportError {
    /// No answer from the receiver (connection, timeout); the report may be retried.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    /// The receiver answered with an HTTP status above 400.
    Status(u16),
    /// The local journal could not be written.
    Journal(std::io::Error),
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::Unreachable(_) => f.write_str("report receiver unreachable"),
            ReportError::Status(code) => write!(f, "report rejected with HTTP {code}"),
            ReportError::Journal(_) => f.write_str("cannot write the journal"),
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReportError::Unreachable(e) => Some(e.as_ref()),
            ReportError::Journal(e) => Some(e),
            ReportError::Status(_) => None,
        }
    }
}

/// The one way reports leave the engine. Implementations are called from worker threads
/// and must be cheap to share; they do their own retries and return the final outcome.
pub trait Reporter: Send + Sync {
    fn send(&self, report: &Report) -> Result<Verdict, ReportError>;

    /// `send` for an invocation's final report, calling `durable` as soon as the report can no
    /// longer be lost to a crash of the agent: the runner then removes the invocation's run
    /// record, so a restart neither loses the report nor makes a second one. By default that
    /// is once `send` returned; a reporter that writes the report down before it is delivered
    /// (the remote one's spool) calls it earlier.
    fn send_final(
        &self,
        report: &Report,
        durable: &mut dyn FnMut(),
    ) -> Result<Verdict, ReportError> {
        let result = self.send(report);
        durable();
        result
    }
}

impl<R: Reporter + ?Sized> Reporter for Arc<R> {
    fn send(&self, report: &Report) -> Result<Verdict, ReportError> {
        (**self).send(report)
    }

    fn send_final(
        &self,
        report: &Report,
        durable: &mut dyn FnMut(),
    ) -> Result<Verdict, ReportError> {
        (**self).send_final(report, durable)
    }
}

/// In-memory reporter for tests: records every report and answers from a script.
#[derive(Default)]
pub struct MemoryReporter {
    state: Mutex<MemoryState>,
    changed: parking_lot::Condvar,
}

#[derive(Default)]
struct MemoryState {
    reports: Vec<Report>,
    /// Answers used in order for the next sends; `Accepted` once exhausted.
    script: std::collections::VecDeque<Result<Verdict, u16>>,
}

impl MemoryReporter {
    pub fn new() -> Arc<MemoryReporter> {
        Arc::new(MemoryReporter::default())
    }

    /// Queues the answer of a future send: `Ok(verdict)` or `Err(http_status)`.
    pub fn push_answer(&self, answer: Result<Verdict, u16>) {
        self.state.lock().script.push_back(answer);
    }

    /// Every report received so far, delivered or not, in order.
    pub fn reports(&self) -> Vec<Report> {
        self.state.lock().reports.clone()
    }

    /// Waits until `pred` holds for the received reports, or the deadline passes.
    pub fn wait_for(
        &self,
        timeout: std::time::Duration,
        pred: impl Fn(&[Report]) -> bool,
    ) -> Vec<Report> {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.state.lock();
        while !pred(&state.reports) {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
        state.reports.clone()
    }
}

impl Reporter for MemoryReporter {
    fn send(&self, report: &Report) -> Result<Verdict, ReportError> {
        let mut state = self.state.lock();
        state.reports.push(report.clone());
        let answer = state.script.pop_front().unwrap_or(Ok(Verdict::Accepted));
        self.changed.notify_all();
        answer.map_err(ReportError::Status)
    }
}
