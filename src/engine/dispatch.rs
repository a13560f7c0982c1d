//! Run / stop / test decisions (spec §5.6–5.9, §6): duplicates, invoke-version changes,
//! periodic scheduling and the non-overlap rule. It decides and hands work to the pool and the
//! timer; it never runs a process and never blocks on a report (reports go through the pool).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};

use crate::model::{ById, CompactTask, RepeatType, RunTaskInfo};
use crate::report::{Report, ReportHead, WallClock};
use crate::runner::{self, Cancel};
use crate::schedule::{Schedule, ScheduleKind};
use crate::timer::{Callback, Firing, TimerId};

use super::invocation::{random_delay, run_job, stopped_without_run, JobContext};
use super::pool::Pool;
use super::Engine;
use crate::report::StopResult;

/// What a timer callback needs to start an invocation: one per engine, shared by the
/// callbacks of every periodic task.
pub(super) struct Launch {
    pub ctx: JobContext,
    pub pool: Pool,
}

/// The report head of an invocation; periodic ones carry wall-clock parameters (spec §5.8).
pub fn head_for(info: &RunTaskInfo, schedule: Option<&Schedule>) -> ReportHead {
    let wall_clock = match (info.repeat, schedule.and_then(Schedule::zone)) {
        (RepeatType::Rate, _) => WallClock::Rate,
        (RepeatType::Period, Some(zone)) => WallClock::Cron {
            zone_name: zone.name(),
            offset_secs: zone.offset_secs_at(Utc::now()),
        },
        _ => WallClock::None,
    };
    ReportHead {
        task_id: info.task_id.clone(),
        invoke_version: info.invoke_version,
        repeat: info.repeat,
        wall_clock,
    }
}

impl Engine {
    /// Spec §6.1.
    pub fn dispatch_run(&mut self, info: RunTaskInfo) {
        let id = info.task_id.clone();
        let version = info.invoke_version;
        if !info.repeat.is_periodic() && self.interrupted.contains(&(id.clone(), version)) {
            log::info!(
                "task={id} invoke_version={version} phase=dispatch skipped: an earlier agent ran this invocation (it stopped while it ran, or its final report waits in the spool); it never runs twice"
            );
            return;
        }
        let mut replaces = None;
        if let Some(known) = self.ctx.registry.known(&id) {
            if known.invoke_version() == version {
                log::debug!("task={id} invoke_version={version} phase=dispatch ignored duplicately fetched task");
                return;
            }
            if !info.repeat.is_periodic() {
                if self.defer_new_versions && matches!(known, super::registry::Known::Live(_)) {
                    log::info!(
                        "task={id} invoke_version={version} phase=dispatch version {} is still running; this one runs after it",
                        known.invoke_version()
                    );
                    self.pending.insert(id, info);
                    return;
                }
                log::info!(
                    "task={id} invoke_version={version} phase=dispatch existing task (version {}) is not periodic; new version ignored",
                    known.invoke_version()
                );
                return;
            }
            replaces = Some(known.invoke_version());
        }
        // Verified before anything changes: an entry that is refused must not stop the
        // verified version it would have replaced.
        if let Some(verify) = &self.verifier {
            if let Err(invalid) = verify(&info) {
                if let Some(old) = replaces {
                    log::warn!(
                        "task={id} invoke_version={version} phase=verify refused; version {old} keeps running"
                    );
                }
                self.report_async(Report::Invalid {
                    head: head_for(&info, None),
                    param: invalid.param,
                    value: invalid.value,
                });
                return;
            }
        }
        if let Some(old) = replaces {
            log::info!(
                "task={id} invoke_version={version} phase=dispatch new invoke version replaces version {old}"
            );
            self.cancel_periodic_quietly(&id);
        }
        if info.repeat.is_periodic() {
            self.schedule_periodic(info);
        } else {
            self.start_once(info);
        }
    }

    /// Spec §6.2. A queued or running invocation gets `how`; an idle task is reported
    /// `stopped` with `idle` (the reference's `killed`; a removed local file's `removed`).
    pub fn dispatch_stop(&mut self, info: RunTaskInfo, how: Cancel, idle: StopResult) {
        let id = &info.task_id;
        log::info!(
            "task={id} invoke_version={} phase=stop repeat={}",
            info.invoke_version,
            info.repeat
        );
        if self.held.remove(id.as_str()).is_some() {
            if let Some(status) = &self.status {
                status.task_removed(id);
            }
        }
        if info.repeat.is_periodic() {
            if let Some((_, timer_id)) = self.ctx.registry.take_periodic(id) {
                self.disarm(timer_id);
            }
        }
        if !self.ctx.registry.cancel(id, how) {
            // Not queued or running: the reference still answers `killed` with zeros.
            self.report_async(stopped_without_run(head_for(&info, None), idle));
        }
    }

    /// Spec §6.3: pre-check only, one `invalid` or one `verified`; never executed.
    pub fn dispatch_test(&mut self, info: RunTaskInfo) {
        if self.ctx.registry.has_live(&info.task_id) {
            log::debug!(
                "task={} phase=test ignored: an invocation is queued or running",
                info.task_id
            );
            return;
        }
        let ctx = self.ctx.clone();
        self.reports.execute(move || {
            let head = head_for(&info, None);
            let report = match runner::precheck(&info) {
                Ok(()) => Report::Verified { head },
                Err(invalid) => Report::Invalid {
                    head,
                    param: invalid.param,
                    value: invalid.value,
                },
            };
            ctx.send(&report);
        });
    }

    fn start_once(&mut self, info: RunTaskInfo) {
        let Some(cancel) =
            self.ctx
                .registry
                .try_add_live(&info.task_id, info.invoke_version, false)
        else {
            log::debug!(
                "task={} phase=dispatch already queued or running",
                info.task_id
            );
            return;
        };
        let ctx = self.ctx.clone();
        let head = head_for(&info, None);
        if self.status.is_some() {
            self.hold(&Arc::new(CompactTask::from(info.clone())), None);
        }
        let info = Arc::new(info);
        self.pool
            .execute(move || run_job(ctx, info, head, cancel, false, Duration::ZERO));
    }

    /// Keeps a task the engine took for `assistd run` and tells the status (local mode only).
    /// The held task, the status's and the timer callback's are one `Arc`.
    fn hold(&mut self, task: &Arc<CompactTask>, schedule: Option<&Arc<Schedule>>) {
        let Some(status) = &self.status else { return };
        status.task_added(task);
        // Removed first: `insert` would keep the old key, and with it the old version.
        self.held.remove(task.task_id());
        self.held.insert(ById(task.clone()), schedule.cloned());
    }

    /// `catchUp: "last"`, at start only: when the previous agent's status file shows that a
    /// run fell due after the task last started (or was first seen) and before now, one
    /// firing now. The reference time comes from the file, so a clock set back (a reference
    /// in the future) finds nothing due: missed runs are never replayed one by one.
    fn catch_up(&self, task: &Arc<CompactTask>, schedule: &Arc<Schedule>) {
        let wanted = task.local().is_some_and(|l| l.catch_up);
        let (Some(status), true, true) = (&self.status, wanted, self.starting) else {
            return;
        };
        let Some(previous) = status.previous(task.task_id()) else {
            log::info!(
                "task={} invoke_version={} phase=catch-up none: the task is new",
                task.task_id(),
                task.invoke_version()
            );
            return;
        };
        let now = Utc::now();
        let Some(reference) = Utc.timestamp_millis_opt(previous.reference_ms()).single() else {
            return;
        };
        match schedule.next_after(reference) {
            Some(due) if due <= now => {
                log::info!(
                    "task={} invoke_version={} phase=catch-up a run was due at {} while no agent ran (last {}); running once now",
                    task.task_id(),
                    task.invoke_version(),
                    due.to_rfc3339(),
                    reference.to_rfc3339()
                );
                let mut fire = self.periodic_callback(task.clone(), schedule.clone());
                fire(Firing {
                    scheduled: due,
                    last: false,
                });
            }
            _ => log::info!(
                "task={} invoke_version={} phase=catch-up none: no run was due since {}",
                task.task_id(),
                task.invoke_version(),
                reference.to_rfc3339()
            ),
        }
    }

    /// Spec §5.6: parse, check that a run is left, register, arm the timer.
    fn schedule_periodic(&mut self, info: RunTaskInfo) {
        let kind = match info.repeat {
            RepeatType::Rate => ScheduleKind::Rate,
            RepeatType::At => ScheduleKind::At,
            _ => ScheduleKind::Cron,
        };
        let parsed = Schedule::parse(&info.cron, kind, info.creation_time, &self.zone)
            .and_then(|s| s.first_after(Utc::now()).map(|first| (s, first)));
        let (schedule, first) = match parsed {
            Ok(ok) => ok,
            Err(e) => {
                // The version it replaced is gone: `assistd run` and `list` must not show it.
                if self.held.remove(info.task_id.as_str()).is_some() {
                    if let Some(status) = &self.status {
                        status.task_removed(&info.task_id);
                    }
                }
                // Unlike the reference, an expired `at()` is reported too: nothing is dropped silently.
                log::warn!(
                    "task={} invoke_version={} phase=schedule invalid expression: {e}",
                    info.task_id,
                    info.invoke_version
                );
                self.report_async(Report::Invalid {
                    head: head_for(&info, None),
                    param: "cron".to_string(),
                    value: e.wire_value(),
                });
                return;
            }
        };
        let Some(timer) = &self.timer else { return };
        let schedule = Arc::new(schedule);
        let info = Arc::new(CompactTask::from(info));
        if !self
            .ctx
            .registry
            .register_periodic(info.task_id(), info.invoke_version())
        {
            log::debug!("task={} phase=schedule already registered", info.task_id());
            return;
        }
        log::info!(
            "task={} invoke_version={} phase=schedule {} '{}' first run {}",
            info.task_id(),
            info.invoke_version(),
            info.repeat(),
            info.cron(),
            first.to_rfc3339()
        );
        let callback = self.periodic_callback(info.clone(), schedule.clone());
        let timer_id = timer.arm(schedule.clone(), callback);
        log::debug!(
            "task={} invoke_version={} phase=schedule timer={}",
            info.task_id(),
            info.invoke_version(),
            timer_id.get()
        );
        if let Err(timer_id) =
            self.ctx
                .registry
                .attach_timer(info.task_id(), info.invoke_version(), timer_id)
        {
            // Only the control loop registers and unregisters periodic tasks, and it is here.
            timer.disarm(timer_id);
        }
        self.hold(&info, Some(&schedule));
        self.catch_up(&info, &schedule);
    }

    /// What the timer calls on each firing: the non-overlap check, then a pool job. The
    /// closure is kept for every registered task, so it holds one shared `Launch` instead of
    /// a clone of each handle (32 bytes a task instead of about 100), and the task packed: a
    /// firing unpacks the `RunTaskInfo` its run needs.
    fn periodic_callback(&self, task: Arc<CompactTask>, schedule: Arc<Schedule>) -> Callback {
        let launch = self.launch.clone();
        let is_cron = matches!(task.repeat(), RepeatType::Period);
        let delay_secs = task.local().map_or(0, |l| l.random_delay_secs);
        Box::new(move |firing: Firing| {
            if firing.last {
                log::info!(
                    "task={} invoke_version={} phase=schedule last run fired",
                    task.task_id(),
                    task.invoke_version()
                );
            }
            let Launch { ctx, pool } = &*launch;
            let completes_cron = is_cron && firing.last;
            let (id, version) = (task.task_id(), task.invoke_version());
            let Some(cancel) = ctx.registry.try_add_periodic_invocation(id, version) else {
                // The cron's last run is skipped: the running invocation completes it instead.
                if completes_cron && ctx.registry.request_completion(id, version) {
                    log::info!(
                        "task={id} invoke_version={version} phase=fire last run skipped (overlap); the running invocation reports completed"
                    );
                    return;
                }
                log::info!(
                    "task={id} invoke_version={version} phase=fire skip invocation since overlapped with existing invocation"
                );
                return;
            };
            let info = Arc::new(task.unpack());
            let head = head_for(&info, Some(&schedule));
            let ctx = ctx.clone();
            let delay = random_delay(delay_secs);
            if delay_secs > 0 {
                log::info!(
                    "task={} invoke_version={} phase=fire scheduled={} random_delay_ms={} (randomDelay {} s): waiting first",
                    info.task_id,
                    info.invoke_version,
                    firing.scheduled.timestamp_millis(),
                    delay.as_millis(),
                    delay_secs
                );
            }
            pool.execute(move || run_job(ctx, info, head, cancel, completes_cron, delay));
        })
    }

    /// Spec §5.9: stop the timer, unregister, kill a running invocation; no report.
    pub(super) fn cancel_periodic_quietly(&mut self, id: &str) {
        if let Some((_, timer_id)) = self.ctx.registry.take_periodic(id) {
            self.disarm(timer_id);
        }
        self.ctx.registry.cancel(id, Cancel::Quiet);
    }

    /// Stops an unregistered periodic task's timer. After shutdown began the timer is
    /// ending anyway, and the id is just dropped.
    fn disarm(&self, timer_id: Option<TimerId>) {
        if let (Some(timer), Some(timer_id)) = (&self.timer, timer_id) {
            timer.disarm(timer_id);
        }
    }

    /// Spec §9 `deletePeriodicTask`: drop the registration silently; a running invocation continues.
    pub(super) fn delete_periodic(&mut self, id: &str) {
        if let Some((_, timer_id)) = self.ctx.registry.take_periodic(id) {
            log::info!(
                "task={id} phase=report-error periodic task dropped at the server's request"
            );
            self.disarm(timer_id);
        }
    }

    /// Reports from the control loop go through the reports threads: a slow receiver never
    /// blocks the loop, and busy workers never delay them.
    pub(super) fn report_async(&self, report: Report) {
        let ctx = self.ctx.clone();
        self.reports.execute(move || ctx.send(&report));
    }

    /// Reports the engine did not make but must send (the error reports of invocations a
    /// crashed agent left): on the reports threads, without holding up the start.
    pub fn send_later(&self, reports: Vec<Report>) {
        for report in reports {
            self.report_async(report);
        }
    }
}
