//! One invocation end to end: pre-check, script file, spawn, output capture, wait with timeout
//! and cancel, process-group kill, and at most one final report; it must never leave a child
//! unreaped nor log script content.

pub mod output;
pub mod params;
pub mod precheck;
pub mod probe;
pub mod record;
pub mod script;
pub mod spawn;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select, tick, Receiver};
use parking_lot::Mutex;

use crate::model::RunTaskInfo;
use crate::report::{Report, ReportHead, Reporter, Span, StopResult, Verdict};

use output::{OutputRing, Reader};
use script::{Owner, Prepared, ScriptCmd, ScriptError};
use spawn::{ChildExit, Launch};

/// Settings the runner needs from the agent's configuration.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Where script files are written (`<state>/scripts`).
    pub script_dir: PathBuf,
    /// Act on exit codes 193 (power off) and 194 (reboot); otherwise only log them.
    pub allow_power_actions: bool,
    /// The programs those exit codes run (`poweroff_command`, `reboot_command`).
    pub power_commands: PowerCommands,
    /// Where each running child is recorded until its final report is sent (`<state>/running`);
    /// `None` keeps no records (tests).
    pub records: Option<record::RecordDir>,
    /// The largest output ring a task's `logQuota` may ask for, in bytes.
    pub max_log_quota: usize,
    /// Give root tasks the clean environment that tasks run as another user always get.
    pub clean_task_env: bool,
    /// Every task's output lines go to the agent's log as they arrive (`log_task_output`);
    /// a local task file can ask for it alone with `logOutput`.
    pub log_task_output: bool,
}

#[cfg(test)]
impl RunnerConfig {
    /// The defaults, with scripts written to `script_dir` and no run records: what unit tests
    /// run with.
    pub(crate) fn for_tests(script_dir: PathBuf) -> RunnerConfig {
        RunnerConfig {
            script_dir,
            allow_power_actions: false,
            power_commands: Default::default(),
            records: None,
            max_log_quota: crate::config::DEFAULT_MAX_LOG_QUOTA,
            clean_task_env: false,
            log_task_output: false,
        }
    }
}

/// What exit codes 193 and 194 run, with no arguments, when power actions are allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerCommands {
    pub poweroff: PathBuf,
    pub reboot: PathBuf,
}

impl Default for PowerCommands {
    fn default() -> PowerCommands {
        PowerCommands {
            poweroff: PathBuf::from(crate::config::DEFAULT_POWEROFF_COMMAND),
            reboot: PathBuf::from(crate::config::DEFAULT_REBOOT_COMMAND),
        }
    }
}

/// A request to end a running invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Kill the process group and report `stopped` with `result=killed`.
    Stop,
    /// Kill the process group and send no final report (spec §9 report errors, version change).
    Quiet,
    /// Local mode, the task's file went away: like `Stop`, and the report says so.
    Removed,
    /// Agent shutdown: SIGTERM to the process group, then wait on (its `trap … TERM` runs);
    /// the engine sends `Stop` (SIGKILL) when `shutdown_grace_secs` is over. The final report
    /// is `stopped`, whatever the exit. An invocation that has not started yet takes it as
    /// `Stop`.
    Terminate,
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
/// container, user, working directory.
pub fn precheck(task: &RunTaskInfo) -> Result<(), Invalid> {
    precheck::check(task).map(|_| ())
}

/// Everything `run` refuses before it starts a process: `precheck`, then the `{{ACS::…}}`
/// parameters. `assistd check` asks this, so it refuses exactly what the agent would.
pub fn validate(task: &RunTaskInfo) -> Result<(), Invalid> {
    let checked = precheck::check(task)?;
    script_content(task, &checked.script).map(|_| ())
}

/// The script with its built-in parameters substituted, if the task enables them.
fn script_content(task: &RunTaskInfo, script: &[u8]) -> Result<Vec<u8>, Invalid> {
    if !task.enable_parameter {
        return Ok(script.to_vec());
    }
    params::resolve_builtin(script, &task.builtin_params).map_err(|e| Invalid {
        param: "InvalidEnvironmentParameter".into(),
        value: e.to_string(),
    })
}

/// Seconds without any running report after which an empty one is sent anyway (spec §4.9).
const EMPTY_REPORT_AFTER: Duration = Duration::from_secs(60);
/// How long output is still read after the child exited or was killed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Used when `timeout` is not a number (spec §4.3).
const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// Exit codes that ask for a power action (spec §4.10).
const EXIT_POWEROFF: i32 = 193;
const EXIT_REBOOT: i32 = 194;

/// The timeout of a task: seconds as a string; not a number is 3600, zero or less is none.
pub fn parse_timeout(s: &str) -> Option<Duration> {
    match s.parse::<i64>() {
        Ok(n) if n > 0 => Some(Duration::from_secs(n.unsigned_abs())),
        Ok(_) => None,
        Err(_) => Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Precheck,
    Spawn,
    Wait,
    Report,
}

/// The prefix of every log line about an invocation.
struct Tag<'a> {
    task: &'a str,
    version: i64,
    phase: Phase,
}

impl fmt::Display for Tag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Precheck => "precheck",
            Phase::Spawn => "spawn",
            Phase::Wait => "wait",
            Phase::Report => "report",
        };
        write!(
            f,
            "task={} invoke_version={} phase={phase}",
            self.task, self.version
        )
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Why the wait loop ended.
enum End {
    Exited,
    Timeout,
    Stopped,
    /// Killed because its local task file went away.
    Removed,
    /// Quiet cancel, or the server answered a running report with a task error.
    Quiet,
}

/// The `err_desc` of an invocation killed because its task file went away.
pub const REMOVED_DESC: &str = "killed: its task file was removed";

/// The state of one invocation shared by its steps.
struct Invocation<'a> {
    task: &'a RunTaskInfo,
    head: ReportHead,
    reporter: &'a dyn Reporter,
    task_error: Option<Verdict>,
}

impl Invocation<'_> {
    fn tag(&self, phase: Phase) -> Tag<'_> {
        Tag {
            task: &self.task.task_id,
            version: self.task.invoke_version,
            phase,
        }
    }

    /// Sends a report; remembers the first task error. `None` when it was not delivered.
    fn send(&mut self, report: &Report) -> Option<Verdict> {
        let sent = self.reporter.send(report);
        self.took(report, sent)
    }

    /// `send` for the final report of a child that ran: its run record goes as soon as the
    /// reporter has the report safe (see `Reporter::send_final`).
    fn send_final(
        &mut self,
        report: &Report,
        record: &mut Option<record::RecordGuard>,
    ) -> Option<Verdict> {
        let sent = self
            .reporter
            .send_final(report, &mut || drop(record.take()));
        self.took(report, sent)
    }

    fn took(
        &mut self,
        report: &Report,
        sent: Result<Verdict, crate::report::ReportError>,
    ) -> Option<Verdict> {
        match sent {
            Ok(verdict) => {
                if verdict.is_task_error() && self.task_error.is_none() {
                    log::warn!(
                        "{} server answered {} with {verdict:?}",
                        self.tag(Phase::Report),
                        report.event()
                    );
                    self.task_error = Some(verdict.clone());
                }
                Some(verdict)
            }
            Err(e) => {
                log::warn!(
                    "{} cannot send {} report: {}",
                    self.tag(Phase::Report),
                    report.event(),
                    crate::error_chain::error_chain(&e)
                );
                None
            }
        }
    }

    fn outcome(self, ending: Ending) -> Outcome {
        Outcome {
            ending,
            task_error: self.task_error,
        }
    }

    fn invalid(mut self, invalid: Invalid) -> Outcome {
        log::info!(
            "{} invalid task: param={} value={}",
            self.tag(Phase::Precheck),
            invalid.param,
            invalid.value
        );
        let report = Report::Invalid {
            head: self.head.clone(),
            param: invalid.param,
            value: invalid.value,
        };
        self.send(&report);
        self.outcome(Ending::Invalid)
    }

    fn error(mut self, span: Span, err_code: String, err_desc: String) -> Outcome {
        log::warn!("{} error {err_code}: {err_desc}", self.tag(Phase::Spawn));
        let report = Report::Error {
            head: self.head.clone(),
            span,
            err_code,
            err_desc,
            output: Vec::new(),
        };
        self.send(&report);
        self.outcome(Ending::Error)
    }
}

/// Runs one invocation of `task` and sends its reports through `reporter`.
pub fn run(
    task: &RunTaskInfo,
    head: ReportHead,
    cfg: &RunnerConfig,
    cancel: &Receiver<Cancel>,
    reporter: &dyn Reporter,
) -> Outcome {
    let mut inv = Invocation {
        task,
        head,
        reporter,
        task_error: None,
    };

    let checked = match precheck::check(task) {
        Ok(c) => c,
        Err(invalid) => return inv.invalid(invalid),
    };
    let content = match script_content(task, &checked.script) {
        Ok(c) => c,
        Err(invalid) => return inv.invalid(invalid),
    };

    let euid = crate::fsutil::euid();
    let owner = checked
        .user
        .as_ref()
        .filter(|u| u.uid != euid)
        .map(|u| Owner {
            uid: u.uid,
            gid: u.gid,
        });
    let warn_tag = inv.tag(Phase::Spawn).to_string();
    let warn = |msg: &str| log::warn!("{warn_tag} {msg}");
    // The child runs in its own working directory, so the script path must not be relative.
    let script_dir =
        std::path::absolute(&cfg.script_dir).unwrap_or_else(|_| cfg.script_dir.clone());
    // `script_file` removes a non-periodic invocation's file when dropped: explicitly before the
    // final report, or on any early return (or panic) with the other locals.
    let (cmd, script_file) = match script::prepare(&script_dir, task, &content, owner, &warn) {
        Ok(Prepared { cmd, cleanup }) => (cmd, cleanup),
        Err(ScriptError::Existed(path)) => {
            let t = now_ms();
            let span = Span {
                start_ms: t,
                end_ms: t,
                exit_code: 0,
                dropped: 0,
            };
            let desc = format!(
                "ScriptFileExisted: Saving script to {} failed: script file existed",
                path.display()
            );
            return inv.error(span, "-9".into(), desc);
        }
    };
    drop(content);

    let start_ms = now_ms();
    let started = Instant::now();
    let span_now = |exit_code: i32, dropped: u64| {
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        Span {
            start_ms,
            end_ms: start_ms.saturating_add(elapsed),
            exit_code,
            dropped,
        }
    };

    if task.output.send_start {
        let report = Report::Running {
            head: inv.head.clone(),
            start_ms,
            output: Vec::new(),
        };
        if inv.send(&report).is_some_and(|v| v.is_task_error()) {
            log::info!(
                "{} start refused by the server; not running",
                inv.tag(Phase::Spawn)
            );
            return inv.outcome(Ending::Silent);
        }
    }

    let ring = Arc::new(Mutex::new(OutputRing::for_log_quota(
        task.output.log_quota,
        cfg.max_log_quota,
    )));
    let (read_end, write_end) = match spawn::output_pipe() {
        Ok(p) => p,
        Err(e) => {
            return inv.error(
                span_now(1, 0),
                "-20".into(),
                format!("CreatePipeFailed: {e}"),
            )
        }
    };
    let log_lines = (cfg.log_task_output || task.local.as_ref().is_some_and(|l| l.log_output))
        .then(|| {
            format!(
                "task={} invoke_version={}",
                task.task_id, task.invoke_version
            )
        });
    let reader = match Reader::spawn(
        read_end,
        ring.clone(),
        inv.tag(Phase::Wait).to_string(),
        log_lines,
    ) {
        Ok(r) => r,
        Err(e) => {
            return inv.error(
                span_now(1, 0),
                "-20".into(),
                format!("CreatePipeFailed: {e}"),
            )
        }
    };
    // Every task learns who it is; a task file's `env` comes last (it cannot change these).
    let mut task_env: Vec<(String, std::ffi::OsString)> = vec![
        ("ASSISTD_TASK_ID".to_string(), task.task_id.clone().into()),
        (
            "ASSISTD_INVOKE_VERSION".to_string(),
            task.invoke_version.to_string().into(),
        ),
    ];
    if let Some(extras) = &task.local {
        task_env.extend(extras.env.iter().map(|(k, v)| (k.clone(), v.into())));
    }
    let launch = Launch {
        cmd: &cmd,
        user: checked.user.as_ref(),
        cwd: checked.cwd.as_deref(),
        home: checked.home.as_deref(),
        clean_env: cfg.clean_task_env,
        env: &task_env,
    };
    // Written before the spawn, so no child ever runs without one; removed (dropped) once the
    // final report is safe (`send_final`), or when this function returns on a path that sends
    // none. Left behind only when the agent dies meanwhile; the next start recovers it.
    let mut record = cfg
        .records
        .as_ref()
        .and_then(|dir| write_record(dir, &inv, start_ms));
    // On failure `write_end` is dropped inside `spawn`, so the reader ends at EOF by itself.
    let mut child = match spawn::spawn(&launch, write_end) {
        Ok(c) => c,
        Err(e) => {
            let code = e
                .raw_os_error()
                .map_or_else(|| "-7".to_string(), |n| n.to_string());
            return inv.error(span_now(1, 0), code, format!("ExecuteScriptFailed: {e}"));
        }
    };
    log::info!(
        "{} started pid={} script={}",
        inv.tag(Phase::Spawn),
        child.pid(),
        match &cmd {
            ScriptCmd::File(p) => p.display().to_string(),
            ScriptCmd::Inline(_) => "inline".to_string(),
        }
    );

    // A timeout past the end of `Instant` (`timeout` "9223372036854775807") is no deadline.
    let deadline = parse_timeout(&task.timeout)
        .and_then(|d| started.checked_add(d))
        .map_or_else(never, at);
    // Periodic invocations never send running output (spec §4.9).
    let ticks = if task.repeat.is_periodic() {
        never()
    } else {
        let ms = u64::try_from(task.output.interval_ms)
            .unwrap_or(0)
            .max(1000);
        tick(Duration::from_millis(ms))
    };
    // Running output read from the ring but not yet delivered; bounded by the pre quota.
    let mut unsent: Vec<u8> = Vec::new();
    let mut last_report = Instant::now();

    // The signal the agent sent the group, for the report: SIGTERM at shutdown, SIGKILL for
    // a stop (or after the grace period).
    let mut sent: Option<i32> = None;
    let end = loop {
        select! {
            recv(child.exited()) -> _ => {
                child.saw_exit();
                break if sent.is_some() { End::Stopped } else { End::Exited };
            }
            recv(cancel) -> msg => {
                if msg == Ok(Cancel::Terminate) {
                    if sent.is_none() {
                        log::info!("{} shutdown: SIGTERM to the process group", inv.tag(Phase::Wait));
                        child.signal_group(libc::SIGTERM);
                        sent = Some(libc::SIGTERM);
                    }
                    continue;
                }
                child.kill_group();
                sent = Some(libc::SIGKILL);
                // A dropped sender is the engine's shutdown: kill and report stopped.
                break match msg {
                    Ok(Cancel::Quiet) => End::Quiet,
                    Ok(Cancel::Removed) => End::Removed,
                    _ => End::Stopped,
                };
            }
            recv(deadline) -> _ => {
                child.kill_group();
                break End::Timeout;
            }
            recv(ticks) -> _ => {
                let chunk = ring.lock().read_pre();
                unsent.extend_from_slice(&chunk);
                if unsent.is_empty() && task.output.skip_empty && last_report.elapsed() < EMPTY_REPORT_AFTER {
                    continue;
                }
                let report = Report::Running { head: inv.head.clone(), start_ms, output: unsent.clone() };
                last_report = Instant::now();
                match inv.send(&report) {
                    Some(v) if v.is_task_error() => {
                        child.kill_group();
                        break End::Quiet;
                    }
                    Some(_) => unsent.clear(),
                    // Kept, and sent before anything newer (spec §4.9 MayFail).
                    None => {}
                }
            }
        }
    };
    let exit = child.reap();
    // The shell is gone; whoever reads the final report finds the script removed already.
    drop(script_file);
    let drained = reader.finish(Instant::now() + DRAIN_AFTER_EXIT);
    if !drained {
        log::warn!(
            "{} output pipe still open {}s after the end (a background process holds it); \
             reporting what was read and closing the pipe",
            inv.tag(Phase::Wait),
            DRAIN_AFTER_EXIT.as_secs()
        );
    }
    let (mut body, dropped) = {
        let mut ring = ring.lock();
        (ring.read_all(), ring.dropped())
    };
    unsent.append(&mut body);
    let output = unsent;

    let exit = match exit {
        Ok(e) => e,
        Err(e) => {
            log::warn!("{} cannot reap the child: {e}", inv.tag(Phase::Wait));
            ChildExit::Code(-1)
        }
    };
    log::info!(
        "{} ended exit={exit:?} dropped={dropped}",
        inv.tag(Phase::Wait)
    );
    let head = inv.head.clone();
    let (report, ending) = match end {
        End::Quiet => return inv.outcome(Ending::Silent),
        End::Exited => (
            Report::Finished {
                head,
                span: span_now(exit.code(), dropped),
                output,
            },
            Ending::Finished,
        ),
        End::Timeout => (
            Report::Timeout {
                head,
                span: span_now(1, dropped),
                output,
            },
            Ending::Timeout,
        ),
        End::Stopped | End::Removed => (
            Report::Stopped {
                head,
                span: span_now(exit.code(), dropped),
                result: StopResult::Killed,
                err_desc: matches!(end, End::Removed).then(|| REMOVED_DESC.to_string()),
                signal: sent,
                output,
            },
            Ending::Stopped,
        ),
    };
    inv.send_final(&report, &mut record);
    if matches!(end, End::Exited) {
        // Only a task that ran as root may ask for a power action: an unprivileged task (or
        // any program it ran) exiting 193 must not power the host off.
        let as_root = !checked.user.as_ref().is_some_and(|u| u.uid != 0);
        power_action(&inv, exit.code(), cfg, as_root);
    }
    inv.outcome(ending)
}

/// The crash record of a child about to be spawned; a failure is logged and the invocation
/// goes on without one.
fn write_record(
    dir: &record::RecordDir,
    inv: &Invocation<'_>,
    start_ms: i64,
) -> Option<record::RecordGuard> {
    let rec = record::RunRecord {
        head: inv.head.clone(),
        start_ms,
        reported: false,
    };
    match dir.write(&rec) {
        Ok(guard) => Some(guard),
        Err(e) => {
            log::warn!(
                "{} cannot write the run record in {} ({e}); a crash of the agent now would leave this child unreported",
                inv.tag(Phase::Spawn),
                dir.dir.display()
            );
            None
        }
    }
}

/// Exit code 193 powers off and 194 reboots, when the configuration allows it (spec §4.10).
fn power_action(inv: &Invocation<'_>, code: i32, cfg: &RunnerConfig, as_root: bool) {
    let (program, what) = match code {
        EXIT_POWEROFF => (&cfg.power_commands.poweroff, "power off"),
        EXIT_REBOOT => (&cfg.power_commands.reboot, "reboot"),
        _ => return,
    };
    let program = program.display();
    let tag = inv.tag(Phase::Report);
    if !cfg.allow_power_actions {
        log::info!("{tag} exit code {code} asks to {what}; ignored by configuration");
        return;
    }
    if !as_root {
        log::warn!("{tag} exit code {code} asks to {what}; ignored: the task did not run as root");
        return;
    }
    log::warn!("{tag} exit code {code}: running {program}");
    match std::process::Command::new(program.to_string()).status() {
        Ok(s) if s.success() => {}
        Ok(s) => log::warn!("{tag} {program} ended with {s}"),
        Err(e) => log::warn!("{tag} cannot run {program}: {e}"),
    }
}

#[cfg(test)]
mod tests;
