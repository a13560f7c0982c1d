//! The control loop: one `Event` enum, one `next_event`, one `handle_event`. It owns the
//! dispatch decisions and the shutdown sequence. It knows nothing of HTTP or files: tasks come
//! in as `SourceEvent`s, reports go out through a `Reporter`.

pub mod dispatch;
pub mod invocation;
pub mod pool;
pub mod registry;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select_biased, unbounded, Receiver};

use crate::model::{ById, RunTaskInfo};
use crate::report::{Reporter, StopResult};
use crate::runner::{Cancel, Invalid, RunnerConfig};
use crate::schedule::Zone;
use crate::signals::Signal;
use crate::source::SourceEvent;
use crate::timer::TimerHandle;

use invocation::{Done, JobContext};
use pool::{Pool, PoolConfig};
use registry::Registry;

use crate::config::MAX_WORKERS;
use crate::control::{Request, RunAnswer};
use crate::schedule::Schedule;
use crate::status::Status;

/// At most this many threads send the reports the control loop owes (stopped reports of idle
/// periodic tasks, invalid reports, recovery's errors in local mode). More than one: a report
/// whose receiver fails holds its thread for a whole retry burst (1 + 3 attempts, 2 s apart),
/// and a stop of 5,000 periodic tasks against a server failing one request in ten took one
/// thread most of an hour, and 8 threads still some minutes. Threads start on demand and end
/// when idle; reports of different invocations need no order among them.
const REPORT_THREADS: usize = 32;

/// How long a worker (or the reports thread) waits for a job before it ends. Workers start
/// on demand, so an idle agent holds none; this only saves restarting threads for tasks that
/// fire every few seconds. Each idle worker wakes once, at this timeout, and ends.
const WORKER_IDLE: Duration = Duration::from_secs(10);

/// What the engine needs from the configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Worker threads running invocations (1..=500).
    pub workers: usize,
    pub runner: RunnerConfig,
    /// The zone of crons without a zone suffix.
    pub system_zone: Zone,
    /// How long running invocations may go on after SIGTERM before they are killed.
    pub shutdown_grace: Duration,
    /// A new invoke version of a non-periodic task that is still running waits for it and
    /// then runs (local mode: an edited task file). Off, it is dropped as the reference does.
    pub defer_new_versions: bool,
}

/// Checks a run task before it is dispatched (signature verification, spec §7).
pub type Verifier = Box<dyn Fn(&RunTaskInfo) -> Result<(), Invalid> + Send>;

/// Something the control loop re-reads on start and on SIGHUP (the local task directory).
/// Sources that push events on their own (the server) return nothing here.
pub trait Reload {
    fn reload(&mut self) -> Vec<SourceEvent>;

    /// The task directory changed (its watcher said so): re-read the tasks only.
    fn changed(&mut self) -> Vec<SourceEvent> {
        self.reload()
    }
}

/// A source with nothing to reload.
pub struct NoReload;

impl Reload for NoReload {
    fn reload(&mut self) -> Vec<SourceEvent> {
        Vec::new()
    }
}

/// Why the control loop ended other than by a signal.
#[derive(Debug)]
pub enum EngineError {
    /// Every task source hung up (the fetch thread died).
    SourceLost,
    /// The signal channel closed (the poll thread died): a bug, since it only ends at exit.
    SignalsLost,
    /// The control socket's requests stopped (the poll thread ended; handled inside the loop,
    /// never returned).
    ControlLost,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::SourceLost => f.write_str("the task source stopped unexpectedly"),
            EngineError::SignalsLost => {
                f.write_str("the poll thread that reads signals stopped unexpectedly")
            }
            EngineError::ControlLost => f.write_str("the control socket stopped taking requests"),
        }
    }
}

impl std::error::Error for EngineError {}

enum Event {
    Signal(Signal),
    Done(Done),
    Source(Box<SourceEvent>),
    Control(Request),
}

/// The tasks the engine holds, kept for `assistd run` when the status is on (local mode):
/// each one the same packed task its timer callback and the status share, and its schedule.
type Held = std::collections::HashMap<ById, Option<Arc<Schedule>>>;

pub struct Engine {
    ctx: JobContext,
    pool: Pool,
    /// The context and the pool again, in one `Arc` that every timer callback shares.
    launch: Arc<dispatch::Launch>,
    /// `None` once shutdown has begun: dropping it lets the timer thread end.
    timer: Option<TimerHandle>,
    zone: Zone,
    grace: Duration,
    done_rx: Receiver<Done>,
    verifier: Option<Verifier>,
    /// Reports the control loop owes (invalid expressions, stop of an idle task, test-task
    /// verdicts) go out on this one thread, so they never wait behind busy workers.
    reports: Pool,
    /// Newer versions of running non-periodic tasks, started when the old one is done.
    pending: std::collections::HashMap<String, RunTaskInfo>,
    defer_new_versions: bool,
    /// Run first thing at shutdown: stops the threads that feed the engine (fetch, heartbeat).
    on_shutdown: Vec<Box<dyn FnOnce() + Send>>,
    /// (task id, invoke version) of once-invocations that were running when an earlier agent
    /// died; they were reported as errors and never run again (`runner::record`).
    interrupted: HashSet<(String, i64)>,
    /// The local agent's status file; `None` in remote mode.
    status: Option<Arc<Status>>,
    /// Tasks the engine holds, by id (only with a status: `assistd run` starts them).
    held: Held,
    /// Requests from the control socket (`assistd run`).
    control: Option<Receiver<Request>>,
    /// True while the first reload at start is handled: the only time `catchUp` applies.
    starting: bool,
}

impl Engine {
    pub fn new(cfg: EngineConfig, reporter: Arc<dyn Reporter>, timer: TimerHandle) -> Engine {
        let workers = cfg.workers.clamp(1, MAX_WORKERS);
        let (done_tx, done_rx) = unbounded();
        let ctx = JobContext {
            registry: Arc::new(Registry::new()),
            reporter,
            runner: Arc::new(cfg.runner),
            done: done_tx,
            status: None,
        };
        let pool = Pool::new(PoolConfig {
            name: "worker",
            max: workers,
            idle_timeout: WORKER_IDLE,
        });
        let launch = Arc::new(dispatch::Launch {
            ctx: ctx.clone(),
            pool: pool.clone(),
        });
        Engine {
            ctx,
            pool,
            launch,
            timer: Some(timer),
            zone: cfg.system_zone,
            grace: cfg.shutdown_grace,
            done_rx,
            verifier: None,
            reports: Pool::new(PoolConfig {
                name: "reports",
                max: REPORT_THREADS,
                idle_timeout: WORKER_IDLE,
            }),
            pending: std::collections::HashMap::new(),
            defer_new_versions: cfg.defer_new_versions,
            on_shutdown: Vec::new(),
            interrupted: HashSet::new(),
            status: None,
            held: Held::new(),
            control: None,
            starting: false,
        }
    }

    /// Keeps the status file current (local mode): tasks added and removed, invocations
    /// started (and, through the `StatusReporter` the caller wrapped the reporter in, ended).
    /// Also turns on `catchUp` and `assistd run`.
    pub fn set_status(&mut self, status: Arc<Status>) {
        self.ctx.status = Some(status.clone());
        self.launch = Arc::new(dispatch::Launch {
            ctx: self.ctx.clone(),
            pool: self.pool.clone(),
        });
        self.status = Some(status);
    }

    /// Requests from the control socket (`assistd run`).
    pub fn set_control(&mut self, requests: Receiver<Request>) {
        self.control = Some(requests);
    }

    fn save_status(&self) {
        if let Some(status) = &self.status {
            status.save();
        }
    }

    /// Registers `f` to run when shutdown begins, before running invocations are waited for,
    /// so that sources stop fetching new work while old work drains.
    pub fn on_shutdown(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_shutdown.push(Box::new(f));
    }

    /// Once-invocations that must not run again: an earlier agent died while they ran, and
    /// they were reported as errors at this start.
    pub fn set_interrupted(&mut self, interrupted: HashSet<(String, i64)>) {
        self.interrupted = interrupted;
    }

    pub fn set_verifier(&mut self, verifier: Verifier) {
        self.verifier = Some(verifier);
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.ctx.registry.clone()
    }

    /// Hands one source event to dispatch.
    pub fn handle_source_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Run(info) => self.dispatch_run(info),
            SourceEvent::Stop(info) => self.dispatch_stop(info, Cancel::Stop, StopResult::Killed),
            SourceEvent::Removed(info) => {
                self.dispatch_stop(info, Cancel::Removed, StopResult::Removed)
            }
            SourceEvent::Test(info) => self.dispatch_test(info),
        }
    }

    /// Runs the control loop until SIGTERM/SIGINT, then shuts down (see ARCHITECTURE.md).
    pub fn run(
        mut self,
        reload: &mut dyn Reload,
        source: Receiver<SourceEvent>,
        signals: Receiver<Signal>,
    ) -> Result<(), EngineError> {
        self.starting = true;
        for event in reload.reload() {
            self.handle_source_event(event);
        }
        self.starting = false;
        if let Some(status) = &self.status {
            status.start_done();
            status.save();
        }
        let mut source = Some(source);
        let result = loop {
            let event = match self.next_event(&signals, source.as_ref()) {
                Ok(event) => event,
                Err(EngineError::ControlLost) => {
                    log::warn!(
                        "phase=control the control socket stopped taking requests; `assistd run` is off"
                    );
                    self.control = None;
                    continue;
                }
                Err(EngineError::SourceLost) => {
                    // A local agent has no pushing source; losing it is only an error when
                    // one was expected. Either way, stop selecting on it.
                    source = None;
                    continue;
                }
                Err(e) => break Err(e),
            };
            let started = Instant::now();
            match event {
                Event::Signal(Signal::Terminate) => break Ok(()),
                Event::Signal(Signal::Reload) => {
                    log::info!("phase=reload re-reading tasks (SIGHUP)");
                    for event in reload.reload() {
                        self.handle_source_event(event);
                    }
                    self.save_status();
                }
                Event::Signal(Signal::TasksChanged) => {
                    log::info!("phase=reload re-reading tasks (the task directory changed)");
                    for event in reload.changed() {
                        self.handle_source_event(event);
                    }
                    self.save_status();
                }
                Event::Done(done) => self.handle_done(done),
                Event::Source(event) => {
                    self.handle_source_event(*event);
                    self.save_status();
                }
                Event::Control(Request::Run { task_id, reply }) => {
                    let answer = self.run_now(&task_id);
                    let _ = reply.send(answer);
                }
            }
            let took = started.elapsed();
            if took > Duration::from_millis(100) {
                log::warn!(
                    "phase=loop one control-loop turn took {} ms",
                    took.as_millis()
                );
            }
        };
        self.shutdown(&signals);
        result
    }

    fn next_event(
        &self,
        signals: &Receiver<Signal>,
        source: Option<&Receiver<SourceEvent>>,
    ) -> Result<Event, EngineError> {
        let never_source = never();
        let source = source.unwrap_or(&never_source);
        let never_control = never();
        let control = self.control.as_ref().unwrap_or(&never_control);
        // Biased: signals first, then completions, then new work.
        select_biased! {
            recv(signals) -> s => s.map(Event::Signal).map_err(|_| EngineError::SignalsLost),
            recv(self.done_rx) -> d => Ok(Event::Done(d.expect("the engine holds a sender of its own done channel"))),
            recv(source) -> e => e.map(|e| Event::Source(Box::new(e))).map_err(|_| EngineError::SourceLost),
            recv(control) -> r => r.map(Event::Control).map_err(|_| EngineError::ControlLost),
        }
    }

    fn handle_done(&mut self, done: Done) {
        if let Some(verdict) = &done.outcome.task_error {
            // Only the version the server refused: a newer registration stays.
            let registered = self.ctx.registry.periodic(&done.task_id);
            if verdict.drops_periodic() && registered == Some(done.invoke_version) {
                self.delete_periodic(&done.task_id);
            }
        }
        if let Some(next) = self.pending.remove(&done.task_id) {
            log::info!(
                "task={} invoke_version={} phase=dispatch the previous version ended; starting this one",
                next.task_id,
                next.invoke_version
            );
            self.dispatch_run(next);
        }
    }
    /// `assistd run ID`: one invocation of a task the engine holds, now, unless one is queued
    /// or running (the non-overlap rule). No `randomDelay`: it was asked for now.
    fn run_now(&mut self, task_id: &str) -> RunAnswer {
        let Some((held, schedule)) = self.held.get_key_value(task_id) else {
            log::info!("task={task_id} phase=run-now refused: no such task");
            return RunAnswer::Unknown;
        };
        let info = Arc::new(held.0.unpack());
        let version = info.invoke_version;
        let cancel = if info.repeat.is_periodic() {
            self.ctx
                .registry
                .try_add_periodic_invocation(task_id, version)
        } else {
            self.ctx.registry.try_add_live(task_id, version, false)
        };
        let Some(cancel) = cancel else {
            if self.timer.is_none() {
                return RunAnswer::Stopping;
            }
            let running = self
                .ctx
                .registry
                .known(task_id)
                .map_or(version, |k| k.invoke_version());
            log::info!(
                "task={task_id} invoke_version={running} phase=run-now not started: an invocation is queued or running"
            );
            return RunAnswer::Running {
                invoke_version: running,
            };
        };
        log::info!("task={task_id} invoke_version={version} phase=run-now started on request");
        let head = dispatch::head_for(&info, schedule.as_deref());
        let ctx = self.ctx.clone();
        self.pool
            .execute(move || invocation::run_job(ctx, info, head, cancel, false, Duration::ZERO));
        RunAnswer::Started {
            invoke_version: version,
        }
    }

    /// Shutdown: stop new work, let running invocations finish within the grace period,
    /// then kill them; every invocation still sends its final report.
    fn shutdown(mut self, signals: &Receiver<Signal>) {
        log::info!(
            "phase=shutdown stopping: no new work; {} invocation(s) live",
            self.ctx.registry.live_count()
        );
        for hook in self.on_shutdown.drain(..) {
            hook();
        }
        // No invocation starts from here on, not even from a timer firing already under way.
        self.ctx.registry.close();
        self.timer = None;
        for (id, info) in self.pending.drain() {
            log::warn!(
                "task={id} invoke_version={} phase=shutdown a deferred version is not started",
                info.invoke_version
            );
        }
        self.ctx.registry.cancel_all(Cancel::Stop, true);
        // Running invocations get SIGTERM now, SIGKILL when the grace period is over.
        self.ctx.registry.cancel_all(Cancel::Terminate, false);
        // A huge configured grace means "wait until they end"; it must not overflow.
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let grace_end = Instant::now().checked_add(self.grace).unwrap_or(far);
        let mut kill_deadline = None;
        let mut killed = false;
        while self.ctx.registry.live_count() > 0 {
            let deadline = if killed {
                *kill_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(30))
            } else {
                grace_end
            };
            select_biased! {
                recv(signals) -> s => {
                    if matches!(s, Ok(Signal::Terminate)) && !killed {
                        log::warn!("phase=shutdown second signal: killing running invocations now");
                        self.ctx.registry.cancel_all(Cancel::Stop, false);
                        killed = true;
                    }
                }
                recv(self.done_rx) -> _ => {}
                recv(at(deadline)) -> _ => {
                    if killed {
                        log::error!("phase=shutdown invocations did not end after being killed; exiting anyway");
                        break;
                    }
                    log::warn!("phase=shutdown grace period over: killing {} invocation(s)", self.ctx.registry.live_count());
                    self.ctx.registry.cancel_all(Cancel::Stop, false);
                    killed = true;
                }
            }
        }
        // Every job has sent its final report; queued report jobs still drain here. A worker
        // whose child would not die (uninterruptible sleep) must not hold the agent: then the
        // pool is left to the process exit instead of joined.
        if self.ctx.registry.live_count() == 0 {
            self.pool.join();
        }
        self.reports.join();
        if let Some(status) = &self.status {
            status.agent_stopped();
        }
        log::info!("phase=shutdown done");
    }
}
