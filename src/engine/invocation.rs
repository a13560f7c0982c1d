//! One invocation as a pool job: the wrapper around `runner::run` that guarantees a final
//! report and a `Done` event on every path, panics included, and sends a cron's `completed`.
//! It never decides whether an invocation should start; dispatch and the timer do.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::model::RunTaskInfo;
use crate::report::{Report, ReportHead, Reporter, Span, StopResult};
use crate::runner::{self, Cancel, Ending, Outcome, RunnerConfig};

use super::registry::Registry;

/// Sent to the control loop when an invocation's worker is done with it.
#[derive(Debug)]
pub struct Done {
    pub task_id: String,
    pub invoke_version: i64,
    pub outcome: Outcome,
}

/// What every job needs; cheap to clone (handles only).
#[derive(Clone)]
pub struct JobContext {
    pub registry: Arc<Registry>,
    pub reporter: Arc<dyn Reporter>,
    pub runner: Arc<RunnerConfig>,
    pub done: Sender<Done>,
}

impl JobContext {
    /// Sends a report and logs a failure; used where nothing else can be done about it.
    pub fn send(&self, report: &Report) {
        if let Err(e) = self.reporter.send(report) {
            let head = report.head();
            log::error!(
                "task={} invoke_version={} phase=report cannot send {} report: {}",
                head.task_id,
                head.invoke_version,
                report.event(),
                crate::error_chain::error_chain(&e)
            );
        }
    }
}

/// The `stopped` report of an invocation that never ran (spec §6.2: zeros, empty body).
pub fn stopped_without_run(head: ReportHead, result: StopResult) -> Report {
    Report::Stopped {
        head,
        span: Span::default(),
        result,
        err_desc: None,
        output: Vec::new(),
    }
}

/// Runs one invocation on a pool thread. `completes_cron` is set on the last firing of a cron.
pub fn run_job(
    ctx: JobContext,
    info: Arc<RunTaskInfo>,
    head: ReportHead,
    cancel: Receiver<Cancel>,
    completes_cron: bool,
) {
    let mut guard = DoneGuard {
        ctx: ctx.clone(),
        head: head.clone(),
        outcome: None,
        completes_cron,
    };
    ctx.registry
        .mark_started(&head.task_id, head.invoke_version);

    // A cancel that arrived while the job was queued: nothing ran, so nothing to kill.
    if let Ok(how) = cancel.try_recv() {
        let ending = match how {
            Cancel::Stop => {
                ctx.send(&stopped_without_run(head.clone(), StopResult::Killed));
                Ending::Stopped
            }
            Cancel::Removed => {
                ctx.send(&stopped_without_run(head.clone(), StopResult::Removed));
                Ending::Stopped
            }
            Cancel::Quiet => Ending::Silent,
        };
        guard.outcome = Some(Outcome {
            ending,
            task_error: None,
        });
        return;
    }

    log::info!(
        "task={} invoke_version={} phase=start repeat={}",
        head.task_id,
        head.invoke_version,
        info.repeat
    );
    let outcome = runner::run(&info, head.clone(), &ctx.runner, &cancel, &*ctx.reporter);
    log::info!(
        "task={} invoke_version={} phase=end ending={:?}",
        head.task_id,
        head.invoke_version,
        outcome.ending
    );
    guard.outcome = Some(outcome);
}

/// Removes the invocation from the registry and tells the control loop, on every exit path.
/// If the job panicked before it had an outcome, it also sends the final report the
/// invocation still owes, so the server never waits for a task that is gone.
struct DoneGuard {
    ctx: JobContext,
    head: ReportHead,
    outcome: Option<Outcome>,
    /// This invocation is the cron's last run.
    completes_cron: bool,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let outcome = match self.outcome.take() {
            Some(outcome) => outcome,
            None => {
                log::error!(
                    "task={} invoke_version={} phase=run invocation ended without an outcome (panic)",
                    self.head.task_id,
                    self.head.invoke_version
                );
                self.ctx.send(&Report::Error {
                    head: self.head.clone(),
                    span: Span::default(),
                    err_code: "-13".to_string(),
                    err_desc: "GeneralError: the agent failed while running this invocation"
                        .to_string(),
                    output: Vec::new(),
                });
                Outcome {
                    ending: Ending::Error,
                    task_error: None,
                }
            }
        };
        // A last cron firing skipped because this invocation was still running asks it to
        // complete the cron instead (the removal and the check are one step under the lock).
        let requested = self
            .ctx
            .registry
            .remove_live(&self.head.task_id, self.head.invoke_version);
        // Spec §5.9: after the run that leaves a cron without a next run, report `completed`,
        // but only after finish/timeout/failed (not after an error report).
        if (self.completes_cron || requested)
            && matches!(
                outcome.ending,
                Ending::Finished | Ending::Timeout | Ending::Failed
            )
        {
            self.ctx.send(&stopped_without_run(
                self.head.clone(),
                StopResult::Completed,
            ));
        }
        // The control loop may already be gone at the very end of a shutdown.
        let _ = self.ctx.done.send(Done {
            task_id: self.head.task_id.clone(),
            invoke_version: self.head.invoke_version,
            outcome,
        });
    }
}
