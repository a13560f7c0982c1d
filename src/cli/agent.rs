//! `assistd agent`: its flags, the state dir and its lock, and the local mode's wiring (journal,
//! signal thread, timer, engine, task directory). Remote mode's wiring is in `cli/remote.rs`.
//! It holds no agent logic of its own; it builds handles and passes them down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::args::Args;
use super::{create_state_dir, io_err, load_config_watched, CliError};
use crate::config::{Config, ConfigWatch};
use crate::engine::{Engine, EngineConfig, Reload};
use crate::error_chain::error_chain;
use crate::fsutil::StateDir;
use crate::report::journal::{Journal, JournalLimits};
use crate::runner::RunnerConfig;
use crate::schedule;
use crate::source::local::{LocalSource, RebootState};
use crate::source::SourceEvent;
use crate::{signals, timer};

pub(super) fn cmd_agent(mut args: Args) -> Result<ExitCode, CliError> {
    // First, while this is the only thread and before the config is read (a new binary that
    // rejects it is rolled back too): the update that started us, if any, and its trial.
    #[cfg(feature = "remote")]
    let update_start = super::remote::UpdateStart::take()?;
    let (mut cfg, watch) = load_config_watched(&mut args)?;
    if let Some(dir) = args.value("--local")? {
        cfg.local_dir = Some(PathBuf::from(dir));
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
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    if cfg.local_dir.is_some() && cfg.server.is_some() {
        return Err(CliError::Usage(
            "--local and --server exclude each other".to_string(),
        ));
    }
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

/// What an agent that died left running: killed, reported as errors (on the engine's reports
/// thread, so a server that is away does not hold up the start), and the once-invocations
/// among them never run again. Before any invocation starts.
pub(super) fn recover_interrupted(state: &StateDir, engine: &mut Engine) {
    let recovery = crate::runner::record::recover(
        &crate::runner::record::RecordDir::new(state.running_dir()),
        Path::new("/proc"),
        chrono::Utc::now().timestamp_millis(),
    );
    if !recovery.reports.is_empty() {
        log::warn!(
            "phase=recover {} invocation(s) were running when the last agent stopped; {} had processes left, killed; each is reported as error",
            recovery.reports.len(),
            recovery.killed
        );
    }
    engine.set_interrupted(recovery.interrupted);
    engine.send_later(recovery.reports);
}

pub(super) fn engine_config(cfg: &Config, state: &StateDir) -> EngineConfig {
    EngineConfig {
        workers: cfg.workers,
        runner: RunnerConfig {
            script_dir: state.script_dir(),
            allow_power_actions: cfg.allow_power_actions,
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

    let (signal_tx, signals) = crossbeam_channel::unbounded();
    signals::spawn_into(signal_tx.clone()).map_err(io_err("cannot start the signal thread"))?;
    // Changes to the task directory arrive like a SIGHUP that re-reads only the tasks. Without
    // inotify the agent still runs; SIGHUP then is the only way to reload.
    let watch_tx = signal_tx;
    let dir_watch = crate::source::watch::spawn(&local_dir, move || {
        watch_tx.send(signals::Signal::TasksChanged).is_ok()
    })
    .map_err(|e| {
        log::warn!(
            "phase=startup cannot watch {} ({e}); task file changes apply on SIGHUP only",
            crate::escape::for_terminal(&local_dir.display().to_string())
        )
    })
    .ok();
    let (timer, timer_join) = timer::spawn(timer::SystemClock);
    let journal = Arc::new(journal);
    let mut engine = Engine::new(engine_config(cfg, state), journal, timer);
    recover_interrupted(state, &mut engine);
    let mut source = ConfigReload::new(watch, LocalReload(LocalSource::new(local_dir, reboot)));
    let result = engine.run(&mut source, crossbeam_channel::never(), signals);
    // The watcher holds a sender of the engine's (now dropped) signal channel; ending it here
    // joins its thread.
    drop(dir_watch);
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
