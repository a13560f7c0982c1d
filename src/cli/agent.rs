//! `assistd agent`: its flags, the state dir and its lock, and the local mode's wiring (journal,
//! the poll thread's sources, timer, engine, task directory). Remote mode's wiring is in
//! `cli/remote.rs`. It holds no agent logic of its own; it builds handles and passes them down.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::args::Args;
use super::{create_state_dir, io_err, load_config_watched, CliError};
use crate::config::{Config, ConfigWatch};
use crate::engine::{Engine, EngineConfig, Reload};
use crate::error_chain::error_chain;
use crate::fsutil::StateDir;
use crate::pollthread::{PollThread, Source};
use crate::report::journal::{Journal, JournalLimits};
use crate::runner::RunnerConfig;
use crate::schedule;
use crate::source::local::{LocalSource, RebootState};
use crate::source::SourceEvent;
use crate::status::{Status, StatusReporter};
use crate::{signals, timer};

pub(super) fn cmd_agent(mut args: Args) -> Result<ExitCode, CliError> {
    // First, while this is the only thread and before the config is read (a new binary that
    // rejects it is rolled back too): the update that started us, if any, and its trial.
    #[cfg(feature = "remote")]
    let update_start = super::remote::UpdateStart::take()?;
    let (mut cfg, watch) = load_config_watched(&mut args)?;
    let mut origin = Origin::default();
    if let Some(dir) = args.value("--local")? {
        cfg.local_dir = Some(PathBuf::from(dir));
        origin.local_flag = true;
    }
    if let Some(n) = args.value("--workers")? {
        cfg.workers = n
            .parse()
            .ok()
            .filter(|n| (1..=crate::config::MAX_WORKERS).contains(n))
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--workers must be a number from 1 to 500, not {n:?}"
                ))
            })?;
    }
    if let Some(level) = args.value("--log-level")? {
        cfg.log_level = level
            .parse()
            .map_err(|_| CliError::Usage(format!("unknown log level {level:?}")))?;
    }
    if let Some(server) = args.value("--server")? {
        cfg.server = Some(server);
        origin.server_flag = true;
    }
    if let Some(id) = args.value("--instance-id")? {
        cfg.instance_id = Some(id);
    }
    if let Some(flag) = args.value("--coldstart-flag")? {
        cfg.coldstart_flag = PathBuf::from(flag);
    }
    if let Some(n) = args.value("--poll-interval")? {
        cfg.poll_interval_secs = n.parse().map_err(|_| {
            CliError::Usage(format!("--poll-interval must be whole seconds, not {n:?}"))
        })?;
    }
    if let Some(path) = args.value("--log-file")? {
        cfg.log_file = Some(PathBuf::from(path));
    }
    if args.flag("--log-stderr") {
        cfg.log_file = None;
    }
    if args.flag("--log-task-output") {
        cfg.log_task_output = true;
    }
    let detach = args.flag("--detach-terminal");
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    if cfg.local_dir.is_some() && cfg.server.is_some() {
        return Err(CliError::Usage(mode_conflict(origin)));
    }
    check_start(&cfg, origin, std::env::var("TZ").ok().as_deref())?;
    // Said before anything is created or started.
    #[cfg(not(feature = "remote"))]
    if cfg.local_dir.is_none() {
        return Err(super::no_remote("`agent` without --local"));
    }

    // A fixed umask: every file and directory the agent creates gets the mode its code names,
    // whatever the starting shell's umask (000 made the hybrid key dir world-writable).
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    // Descriptors the launcher left open (not close-on-exec) would reach every task.
    crate::fsutil::cloexec_inherited_fds();
    if detach {
        detach_from_terminal();
    }
    // Block the signals before any thread exists, so every thread inherits the mask.
    signals::block().map_err(io_err("cannot block signals"))?;
    // Only opening the log file can fail; stderr is still where the error goes.
    crate::logging::init(&cfg.log_config()).map_err(|source| CliError::Io {
        what: format!(
            "cannot open log file {}",
            cfg.log_file.as_deref().unwrap_or(Path::new("")).display()
        ),
        source,
    })?;

    let state = create_state_dir(&cfg)?;
    let lock =
        crate::fsutil::lock_exclusive(&state.lock_file()).map_err(|source| CliError::Io {
            what: format!(
                "another assistd is already running with state dir {} (lock {})",
                cfg.state_dir.display(),
                state.lock_file().display()
            ),
            source,
        })?;
    match cfg.local_dir.clone() {
        Some(local_dir) => {
            let result = run_local(&cfg, &state, local_dir, watch);
            // Held for the whole run: a second agent on this state dir is refused.
            drop(lock);
            result
        }
        #[cfg(feature = "remote")]
        None => super::remote::run_remote_and_restart(&cfg, &state, update_start, watch, lock),
        #[cfg(not(feature = "remote"))]
        None => Err(super::no_remote("`agent` without --local")),
    }
}

/// Whether the mode's settings came from a flag or from the config file, for the messages.
#[derive(Clone, Copy, Debug, Default)]
struct Origin {
    local_flag: bool,
    server_flag: bool,
}

/// Local and remote mode at once, said where each came from and what to write instead.
fn mode_conflict(origin: Origin) -> String {
    let local = if origin.local_flag {
        "--local"
    } else {
        "the config file's local_dir"
    };
    let server = if origin.server_flag {
        "--server"
    } else {
        "the config file's server"
    };
    format!(
        "{local} and {server} exclude each other: local mode (--local DIR, or local_dir) runs the task files of a directory, remote mode (--server URL, or server) takes tasks from a server; keep one{}",
        if origin.local_flag && origin.server_flag {
            ""
        } else {
            " (remove the other key from the config file)"
        }
    )
}

/// What the agent refuses at start, each with one line instead of running on: a task
/// directory that is not there, a server that is no address, a `TZ` that names no zone, a
/// log file whose directory does not exist. Checked before anything is created or started.
fn check_start(cfg: &Config, origin: Origin, tz: Option<&str>) -> Result<(), CliError> {
    if let Some(dir) = &cfg.local_dir {
        let name = if origin.local_flag {
            "--local"
        } else {
            "local_dir"
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CliError::Usage(format!(
                    "{name} {} is not a directory: give the directory that holds the *.json task files",
                    dir.display()
                )))
            }
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "{name} {}: {} (create it, e.g. mkdir -p {}, or give the directory that holds the *.json task files)",
                    dir.display(),
                    io_reason(&e),
                    dir.display()
                )))
            }
        }
    }
    if let Some(server) = &cfg.server {
        let name = if origin.server_flag {
            "--server"
        } else {
            "server"
        };
        crate::config::check_server(server)
            .map_err(|why| CliError::Usage(format!("{name} {server:?} {why}")))?;
    }
    if let Some(tz) = tz {
        if schedule::tz::zone_from_tz(&schedule::tz::ZoneDb::host(), tz).is_none() {
            return Err(CliError::Usage(format!(
                "TZ={tz:?} names no time zone: use a zoneinfo name such as Asia/Shanghai or UTC, a POSIX rule such as JST-9 or EST5EDT,M3.2.0,M11.1.0, or unset TZ to use /etc/localtime"
            )));
        }
    }
    if let Some(file) = &cfg.log_file {
        let parent = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(CliError::Usage(format!(
                "log file {}: directory {} does not exist (create it, or log to stderr with --log-stderr)",
                file.display(),
                parent.display()
            )));
        }
    }
    Ok(())
}

/// An I/O error's reason without the `(os error N)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

/// What an agent that died left running: killed, reported as errors (on the engine's reports
/// thread, so a server that is away does not hold up the start), and the once-invocations
/// among them never run again. Before any invocation starts.
/// Restart recovery (see `runner::record::recover`): tells the engine which once-invocations
/// must not run again (those recovery found, and `also`: remote mode's invocations whose final
/// report waits in the spool) and returns the error reports to send; `already_final` as there.
pub(super) fn recover_interrupted(
    state: &StateDir,
    engine: &mut Engine,
    already_final: &dyn Fn(&crate::report::ReportHead, i64) -> bool,
    also: std::collections::HashSet<(String, i64)>,
) -> Vec<crate::report::Report> {
    let recovery = crate::runner::record::recover(
        &crate::runner::record::RecordDir::new(state.running_dir()),
        Path::new("/proc"),
        chrono::Utc::now().timestamp_millis(),
        already_final,
    );
    if !recovery.reports.is_empty() {
        log::warn!(
            "phase=recover {} invocation(s) were running when the last agent stopped; {} had processes left, killed; each is reported as error",
            recovery.reports.len(),
            recovery.killed
        );
    }
    let mut interrupted = recovery.interrupted;
    interrupted.extend(also);
    engine.set_interrupted(interrupted);
    recovery.reports
}

pub(super) fn engine_config(cfg: &Config, state: &StateDir) -> EngineConfig {
    EngineConfig {
        workers: cfg.workers,
        runner: RunnerConfig {
            script_dir: state.script_dir(),
            allow_power_actions: cfg.allow_power_actions,
            power_commands: crate::runner::PowerCommands {
                poweroff: cfg.poweroff_command.clone(),
                reboot: cfg.reboot_command.clone(),
            },
            records: Some(crate::runner::record::RecordDir::new(state.running_dir())),
            max_log_quota: cfg.max_log_quota,
            clean_task_env: cfg.clean_task_env,
            log_task_output: cfg.log_task_output,
        },
        system_zone: schedule::tz::system_zone(),
        shutdown_grace: cfg.shutdown_grace,
        // An edited local task file that is still running runs again when it ends; the
        // server's protocol keeps the reference's rule (the newer version is dropped).
        defer_new_versions: cfg.local_dir.is_some(),
    }
}

fn run_local(
    cfg: &Config,
    state: &StateDir,
    local_dir: PathBuf,
    watch: ConfigWatch,
) -> Result<ExitCode, CliError> {
    log::info!(
        "phase=startup assistd {} local mode on {}",
        env!("CARGO_PKG_VERSION"),
        local_dir.display()
    );
    let journal = Journal::open(
        &state.journal_dir(),
        JournalLimits {
            max_bytes: cfg.journal_max_bytes,
            keep: cfg.journal_keep,
        },
    )
    .map_err(io_err(format!(
        "cannot open the journal in {}",
        state.journal_dir().display()
    )))?;
    let boot_id = crate::fsutil::boot_id().unwrap_or_else(|e| {
        log::warn!("phase=startup cannot read the boot id ({e}); reboot tasks treat every start as a new boot");
        format!("unknown-{}", std::process::id())
    });
    let reboot = RebootState::load(state.reboot_file(), boot_id).map_err(CliError::Load)?;

    // One poll thread waits for everything local mode gets from a descriptor: signals, the
    // task directory, wall-clock steps, `assistd run` on the control socket, and the status
    // writer's wake.
    let (signal_tx, signals) = crossbeam_channel::unbounded();
    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(
        signals::source(signal_tx.clone()).map_err(io_err("cannot open a signalfd"))?,
    )];
    // Changes to the task directory arrive like a SIGHUP that re-reads only the tasks. Without
    // inotify the agent still runs; SIGHUP then is the only way to reload.
    let watch_tx = signal_tx;
    match crate::source::watch::watch(&local_dir, move || {
        watch_tx.send(signals::Signal::TasksChanged).is_ok()
    }) {
        Ok(dir_watch) => sources.push(Box::new(dir_watch)),
        Err(e) => log::warn!(
            "phase=startup cannot watch {} ({e}); task file changes apply on SIGHUP only",
            crate::escape::for_terminal(&local_dir.display().to_string())
        ),
    }
    let clock_steps = super::watch_clock(&mut sources);
    let (timer, timer_join) = timer::spawn(timer::SystemClock, clock_steps);
    let status = Arc::new(Status::open(
        state.status_file(),
        crate::status::this_agent(chrono::Utc::now().timestamp_millis()),
    ));
    let reporter = Arc::new(StatusReporter {
        inner: Arc::new(journal),
        status: status.clone(),
    });
    sources.push(Box::new(
        status
            .writer()
            .map_err(io_err("cannot start the status writer"))?,
    ));
    let mut engine = Engine::new(engine_config(cfg, state), reporter, timer);
    engine.set_status(status);
    // Root and the agent's own uid may ask (the socket is 0600 besides).
    let (control, requests) =
        crate::control::listen(&state.root, crate::fsutil::euid()).map_err(io_err(format!(
            "cannot listen on {}",
            state.control_socket().display()
        )))?;
    sources.push(Box::new(control));
    engine.set_control(requests);
    let poll =
        PollThread::spawn("poll", sources).map_err(io_err("cannot start the poll thread"))?;
    // Journaled off the start path, by the engine's reports threads.
    let recovered = recover_interrupted(state, &mut engine, &|_, _| false, Default::default());
    engine.send_later(recovered);
    let mut source = ConfigReload::new(watch, LocalReload(LocalSource::new(local_dir, reboot)));
    let result = engine.run(&mut source, crossbeam_channel::never(), signals);
    // No more requests, signals or directory changes: the thread is joined, and the control
    // socket goes away with it, before the agent ends.
    drop(poll);
    // The engine dropped its timer handle during shutdown; the timer thread has ended or is ending.
    let _ = timer_join.join();
    result.map_err(CliError::Engine)?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: re-read the configuration file, then do the mode's own reload. The engine's first
/// call, at start, only reaches the mode's hook.
pub(super) struct ConfigReload<R> {
    watch: ConfigWatch,
    inner: R,
    started: bool,
}

impl<R> ConfigReload<R> {
    pub(super) fn new(watch: ConfigWatch, inner: R) -> ConfigReload<R> {
        ConfigReload {
            watch,
            inner,
            started: false,
        }
    }
}

impl<R: Reload> Reload for ConfigReload<R> {
    fn reload(&mut self) -> Vec<SourceEvent> {
        if std::mem::replace(&mut self.started, true) {
            self.watch.reload();
        }
        self.inner.reload()
    }

    fn changed(&mut self) -> Vec<SourceEvent> {
        self.inner.changed()
    }
}

/// The local task directory as the engine's reload hook: logs every bad file and goes on.
struct LocalReload(LocalSource);

impl Reload for LocalReload {
    fn reload(&mut self) -> Vec<SourceEvent> {
        let scan = self.0.scan();
        for error in &scan.errors {
            log::error!("phase=load bad task file: {}", error_chain(error));
        }
        log::info!(
            "phase=load {} change(s), {} bad file(s)",
            scan.events.len(),
            scan.errors.len()
        );
        scan.events
    }
}

/// `--detach-terminal` (the SysV and busybox init files use it): gives up the controlling
/// terminal of whoever started the agent, so an admin's shell never shares a terminal with it.
/// Tasks run in sessions of their own anyway; this takes the agent itself out of the
/// starting shell's session: `setsid`, or, for a process-group leader that cannot,
/// `TIOCNOTTY` on the terminal.
fn detach_from_terminal() {
    // SAFETY: setsid has no memory effects; it fails (EPERM) for a process-group leader.
    if unsafe { libc::setsid() } >= 0 {
        return;
    }
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/tty")
    else {
        return; // no controlling terminal to give up
    };
    // SAFETY: TIOCNOTTY takes no argument; the descriptor is open.
    unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&tty), libc::TIOCNOTTY) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(cfg: &Config, origin: Origin, tz: Option<&str>) -> String {
        match check_start(cfg, origin, tz) {
            Err(CliError::Usage(msg)) => msg,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn both_modes_say_where_each_came_from() {
        let flags = Origin {
            local_flag: true,
            server_flag: true,
        };
        assert!(mode_conflict(flags).starts_with("--local and --server exclude each other: "));
        assert!(mode_conflict(flags).ends_with("; keep one"));
        let file = mode_conflict(Origin::default());
        assert!(
            file.starts_with(
                "the config file's local_dir and the config file's server exclude each other: "
            ),
            "{file}"
        );
        assert!(
            file.ends_with("keep one (remove the other key from the config file)"),
            "{file}"
        );
    }

    #[test]
    fn a_missing_task_directory_is_refused() {
        let cfg = Config {
            local_dir: Some(PathBuf::from("/nonexistent/tasks")),
            ..Config::default()
        };
        let flag = Origin {
            local_flag: true,
            ..Origin::default()
        };
        assert_eq!(
            refused(&cfg, flag, None),
            "--local /nonexistent/tasks: does not exist (create it, e.g. mkdir -p /nonexistent/tasks, or give the directory that holds the *.json task files)"
        );
        let file = Config {
            local_dir: Some(PathBuf::from("/dev/null")),
            ..Config::default()
        };
        assert_eq!(
            refused(&file, Origin::default(), None),
            "local_dir /dev/null is not a directory: give the directory that holds the *.json task files"
        );
    }

    #[test]
    fn a_server_that_is_no_address_is_refused() {
        let cfg = Config {
            server: Some("not a url".to_string()),
            ..Config::default()
        };
        let msg = refused(
            &cfg,
            Origin {
                server_flag: true,
                ..Origin::default()
            },
            None,
        );
        assert!(
            msg.starts_with("--server \"not a url\" is not a server address: write a host name"),
            "{msg}"
        );
    }

    #[test]
    fn an_unknown_tz_is_refused_and_a_posix_rule_is_not() {
        let cfg = Config::default();
        assert_eq!(
            refused(&cfg, Origin::default(), Some("Mars/Olympus")),
            "TZ=\"Mars/Olympus\" names no time zone: use a zoneinfo name such as Asia/Shanghai or UTC, a POSIX rule such as JST-9 or EST5EDT,M3.2.0,M11.1.0, or unset TZ to use /etc/localtime"
        );
        assert!(check_start(&cfg, Origin::default(), Some("JST-9")).is_ok());
        assert!(check_start(&cfg, Origin::default(), Some("UTC")).is_ok());
        assert!(check_start(&cfg, Origin::default(), Some("")).is_ok());
    }

    #[test]
    fn a_log_file_in_a_missing_directory_is_refused() {
        let cfg = Config {
            log_file: Some(PathBuf::from("/nonexistent/assistd.log")),
            ..Config::default()
        };
        assert_eq!(
            refused(&cfg, Origin::default(), None),
            "log file /nonexistent/assistd.log: directory /nonexistent does not exist (create it, or log to stderr with --log-stderr)"
        );
    }
}
