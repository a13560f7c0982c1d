//! One invocation as a pool job: the wrapper around `runner::run` that guarantees a final
//! report and a `Done` event on every path, panics included, and sends a cron's `completed`.
//! It never decides whether an invocation should start; dispatch and the timer do.

use std::sync::Arc;

use std::time::Duration;

use crossbeam_channel::{after, select, Receiver, Sender};

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
    /// The local agent's status file: told when an invocation starts.
    pub status: Option<Arc<crate::status::Status>>,
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
        signal: None,
        output: Vec::new(),
    }
}

/// Runs one invocation on a pool thread. `completes_cron` is set on the last firing of a cron;
/// `delay` (a task's `randomDelay`) is waited first, still counted as queued: a stop or a
/// shutdown during it ends the invocation before it starts, and the task's next firing is
/// skipped as an overlap until it has run.
pub fn run_job(
    ctx: JobContext,
    info: Arc<RunTaskInfo>,
    head: ReportHead,
    cancel: Receiver<Cancel>,
    completes_cron: bool,
    delay: Duration,
) {
    let mut guard = DoneGuard {
        ctx: ctx.clone(),
        head: head.clone(),
        outcome: None,
        completes_cron,
    };
    let mut early = None;
    if !delay.is_zero() {
        select! {
            recv(cancel) -> how => early = how.ok(),
            recv(after(delay)) -> _ => {}
        }
    }
    ctx.registry
        .mark_started(&head.task_id, head.invoke_version);

    // A cancel that arrived while the job was queued: nothing ran, so nothing to kill.
    if let Some(how) = early.or_else(|| cancel.try_recv().ok()) {
        let ending = match how {
            Cancel::Stop | Cancel::Terminate => {
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
    if let Some(status) = &ctx.status {
        status.started(&head.task_id, head.invoke_version);
    }
    let outcome = runner::run(&info, head.clone(), &ctx.runner, &cancel, &*ctx.reporter);
    log::info!(
        "task={} invoke_version={} phase=end ending={:?}",
        head.task_id,
        head.invoke_version,
        outcome.ending
    );
    guard.outcome = Some(outcome);
}

/// A random time in [0, `secs`) seconds, in milliseconds: `getrandom(2)` (the kernel's
/// generator; no seed to keep), or the clock's nanoseconds if that fails.
pub fn random_delay(secs: u32) -> Duration {
    if secs == 0 {
        return Duration::ZERO;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let r = if n == bytes.len() as isize {
        u64::from_ne_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    };
    Duration::from_millis(r % (u64::from(secs) * 1000))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RepeatType;
    use crate::report::{MemoryReporter, WallClock};

    #[test]
    fn an_invocation_waiting_out_its_delay_is_queued_and_a_stop_ends_it_unrun() {
        let registry = Arc::new(Registry::new());
        let reporter = MemoryReporter::new();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let ctx = JobContext {
            registry: registry.clone(),
            reporter: reporter.clone(),
            runner: Arc::new(RunnerConfig::for_tests(std::path::PathBuf::from(
                "/nonexistent/never-used",
            ))),
            done: done_tx,
            status: None,
        };
        let info = Arc::new(RunTaskInfo {
            task_id: "d".to_string(),
            invoke_version: 1,
            repeat: RepeatType::Period,
            ..RunTaskInfo::default()
        });
        assert!(registry.register_periodic("d", 1));
        let cancel = registry
            .try_add_periodic_invocation("d", 1)
            .expect("first firing");
        let head = ReportHead {
            task_id: "d".to_string(),
            invoke_version: 1,
            repeat: RepeatType::Period,
            wall_clock: WallClock::None,
        };
        let job = std::thread::spawn(move || {
            run_job(ctx, info, head, cancel, false, Duration::from_secs(3600))
        });
        // While it waits: the next firing overlaps, and the shutdown's cancel of queued
        // invocations reaches it.
        assert!(registry.try_add_periodic_invocation("d", 1).is_none());
        assert_eq!(registry.cancel_all(Cancel::Stop, true), 1);
        let done = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("done long before the delay");
        job.join().expect("job");
        assert_eq!(done.outcome.ending, Ending::Stopped);
        let reports = reporter.reports();
        assert_eq!(reports.len(), 1, "{reports:#?}");
        assert!(
            matches!(&reports[0], Report::Stopped { span, result: StopResult::Killed, .. } if span.start_ms == 0),
            "{reports:#?}"
        );
        assert_eq!(registry.live_count(), 0);
    }

    #[test]
    fn random_delays_stay_below_their_bound_and_vary() {
        assert_eq!(random_delay(0), Duration::ZERO);
        let delays: Vec<Duration> = (0..200).map(|_| random_delay(2)).collect();
        assert!(delays.iter().all(|d| *d < Duration::from_secs(2)));
        assert!(delays.iter().any(|d| *d != delays[0]), "not all the same");
    }
}
