//! Command-line interface: subcommands `agent`, `next`, `check`, `journal`, `update`, hand-parsed flags,
//! and how errors become one line on stderr and an exit code. It wires handles together and
//! holds no agent logic of its own.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::{Config, ConfigError, ConfigWatch, DEFAULT_CONFIG};
use crate::engine::{Engine, EngineConfig, Reload};
use crate::fsutil::StateDir;
use crate::report::journal::{self, Journal, JournalLimits};
use crate::report::remote::RemoteReporter;
use crate::runner::{self, RunnerConfig};
use crate::schedule::{self, Schedule, ScheduleKind};
use crate::source::local::{self, LocalSource, RebootState};
use crate::source::remote::{self, FetchRequest};
use crate::source::SourceEvent;
use crate::transport::{self, Http, TransportConfig, UreqHttp};
use crate::update::{self, Restart};
use crate::{heartbeat, identity, kick, signals, signature, timer};

pub const USAGE: &str = "\
assistd: runs commands for a cloud control plane, or from a local task directory

USAGE:
    assistd agent --local DIR [--state-dir DIR] [--config FILE] [--workers N] [--log-level LEVEL]
    assistd agent [--server URL] [--instance-id ID] [--poll-interval SECS] [--coldstart-flag FILE]
                  [--state-dir DIR] [--config FILE] [--workers N] [--log-level LEVEL]
                  [--log-file FILE | --log-stderr]
    assistd next EXPR [--from RFC3339] [--count N] [--repeat Period|Rate|At] [--creation-time MS]
    assistd check DIR|FILE
    assistd journal [--task ID] [--follow] [--state-dir DIR] [--config FILE]
    assistd register --server URL --activation-id ID [--region ID] [--name NAME] [--state-dir DIR]
                     (the activation code is read from ASSISTD_ACTIVATION_CODE, never from argv)
    assistd deregister --server URL [--state-dir DIR]
    assistd update --check | --apply [--server URL] [--instance-id ID] [--config FILE]
    assistd --version | --help

COMMANDS:
    agent     run in the foreground; with --local, tasks are the *.json files of DIR and
              results go to the journal in the state dir (default /var/lib/assistd).
              SIGHUP re-reads the config file and DIR; SIGTERM/SIGINT stop cleanly.
              Without --local: remote mode. Tasks come from the Cloud Assistant server
              (--server host or URL, else $ALIYUN_ASSIST_SERVER_HOST, else metadata
              discovery); results are reported to it. Kicks arrive on its notify
              websocket; while that is down the task list is polled every
              --poll-interval seconds (default 60, 0 = off). SIGHUP fetches it at once.
    next      print the next fire times of a cron, rate or at expression, in UTC
    check     validate task files; one line per problem
    journal   print the local journal for people
    register  register this machine as a hybrid (non-ECS) instance; keys go to
              <state-dir>/hybrid with mode 0600
    deregister  undo `register` at the server and remove the keys
    update    --check: ask the server whether a newer agent is offered and print the answer.
              --apply: download, verify and install it over this executable (the previous
              one is kept as <exe>.old); a running agent must then be restarted.
              A remote agent does this on its own (update_check_interval_secs, default
              1800; allow_self_update) and restarts itself into the new binary.

EXIT CODES:
    0 ok, 1 `check` found problems, 2 error
";

/// An error that ends a command: printed as one line, exit code 2.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Config(ConfigError),
    Schedule(schedule::ScheduleError),
    Io {
        what: String,
        source: io::Error,
    },
    Engine(crate::engine::EngineError),
    Load(local::LoadError),
    Transport(transport::SetupError),
    Identity {
        what: &'static str,
        source: identity::IdentityError,
    },
    Update(update::UpdateError),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(msg) => write!(f, "{msg} (see assistd --help)"),
            CliError::Config(e) => e.fmt(f),
            CliError::Schedule(e) => e.fmt(f),
            CliError::Io { what, .. } => f.write_str(what),
            CliError::Engine(e) => e.fmt(f),
            CliError::Load(e) => e.fmt(f),
            CliError::Transport(e) => e.fmt(f),
            CliError::Identity { what, .. } => f.write_str(what),
            CliError::Update(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Config(e) => e.source(),
            CliError::Io { source, .. } => Some(source),
            CliError::Load(e) => e.source(),
            CliError::Identity { source, .. } => Some(source),
            CliError::Transport(e) => e.source(),
            CliError::Update(e) => e.source(),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

/// `error: a: b: c` — the error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// True when the error is a closed stdout (`assistd journal | head`), which is not a failure.
fn is_broken_pipe(e: &CliError) -> bool {
    matches!(e, CliError::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// Hand-written flag parsing: `--name value` or `--name=value`, positionals in order.
struct Args {
    items: Vec<String>,
    positionals: Vec<String>,
}

impl Args {
    fn new(raw: Vec<OsString>) -> Result<Args, CliError> {
        let mut items = Vec::new();
        for a in raw {
            items.push(
                a.into_string()
                    .map_err(|a| CliError::Usage(format!("argument is not UTF-8: {a:?}")))?,
            );
        }
        Ok(Args {
            items,
            positionals: Vec::new(),
        })
    }

    /// Takes `--name VALUE` (or `--name=VALUE`) out of the arguments.
    fn value(&mut self, name: &str) -> Result<Option<String>, CliError> {
        let prefix = format!("{name}=");
        for i in 0..self.items.len() {
            if self.items[i] == name {
                if i + 1 >= self.items.len() {
                    return Err(CliError::Usage(format!("{name} needs a value")));
                }
                let v = self.items.remove(i + 1);
                self.items.remove(i);
                return Ok(Some(v));
            }
            if let Some(v) = self.items[i].strip_prefix(&prefix) {
                let v = v.to_string();
                self.items.remove(i);
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.items.iter().position(|a| a == name) {
            Some(i) => {
                self.items.remove(i);
                true
            }
            None => false,
        }
    }

    /// After all flags are taken: the rest are positionals; anything starting with `--` is unknown.
    /// A lone `--` ends the flags (so `assistd next -- "-5 ..."` style values stay possible).
    fn finish(&mut self) -> Result<(), CliError> {
        let mut rest = std::mem::take(&mut self.items).into_iter();
        while let Some(a) = rest.next() {
            if a == "--" {
                self.positionals.extend(rest.by_ref());
                break;
            }
            if a.starts_with("--") {
                return Err(CliError::Usage(format!("unknown option {a}")));
            }
            self.positionals.push(a);
        }
        Ok(())
    }
}

pub fn run(raw: Vec<OsString>) -> Result<ExitCode, CliError> {
    let mut args = Args::new(raw)?;
    if args.items.is_empty() || args.flag("--help") || args.flag("-h") {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if args.flag("--version") || args.flag("-V") {
        println!("assistd {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    let command = args.items.remove(0);
    match command.as_str() {
        "agent" => cmd_agent(args),
        "next" => cmd_next(args),
        "check" => cmd_check(args),
        "journal" => cmd_journal(args),
        "register" => cmd_register(args),
        "deregister" => cmd_deregister(args),
        "update" => cmd_update(args),
        other => Err(CliError::Usage(format!("unknown command {other:?}"))),
    }
}

/// The config file (from `--config`, else the default location if present) with the flags
/// every command shares applied on top.
fn load_config(args: &mut Args) -> Result<Config, CliError> {
    load_config_watched(args).map(|(cfg, _)| cfg)
}

/// Like `load_config`, also returning a watch of the file for SIGHUP.
fn load_config_watched(args: &mut Args) -> Result<(Config, ConfigWatch), CliError> {
    let (path, required) = match args.value("--config")? {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = Config::load(&path, required).map_err(CliError::Config)?;
    let mut cfg = file.clone();
    if let Some(dir) = args.value("--state-dir")? {
        cfg.state_dir = PathBuf::from(dir);
    }
    Ok((cfg, ConfigWatch::new(path, required, file)))
}

fn cmd_agent(mut args: Args) -> Result<ExitCode, CliError> {
    // First, while this is the only thread: the previous binary, if an update started us.
    let pending_old = update::take_pending();
    let (mut cfg, watch) = load_config_watched(&mut args)?;
    if let Some(dir) = args.value("--local")? {
        cfg.local_dir = Some(PathBuf::from(dir));
    }
    if let Some(n) = args.value("--workers")? {
        cfg.workers = n
            .parse()
            .ok()
            .filter(|n| (1..=crate::engine::MAX_WORKERS).contains(n))
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
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    if cfg.local_dir.is_some() && cfg.server.is_some() {
        return Err(CliError::Usage(
            "--local and --server exclude each other".to_string(),
        ));
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
    if let Some(local_dir) = cfg.local_dir.clone() {
        return run_local(&cfg, &state, local_dir, watch);
    }
    let Some(restart) = run_remote(&cfg, &state, pending_old, watch)? else {
        return Ok(ExitCode::SUCCESS);
    };
    // Every thread but the signal thread has ended. The lock is closed here (it is
    // O_CLOEXEC as well), so the new image takes it as any fresh start would.
    drop(lock);
    let source = restart.exec();
    Err(CliError::Io {
        what: "cannot restart into the updated agent".to_string(),
        source,
    })
}

/// The state dir of `cfg`, created with its layout and modes.
fn create_state_dir(cfg: &Config) -> Result<StateDir, CliError> {
    let state = StateDir::new(cfg.state_dir.clone());
    state.create().map_err(io_err(format!(
        "cannot create state dir {}",
        cfg.state_dir.display()
    )))?;
    Ok(state)
}

fn engine_config(cfg: &Config, state: &StateDir) -> EngineConfig {
    EngineConfig {
        workers: cfg.workers,
        runner: RunnerConfig {
            script_dir: state.script_dir(),
            allow_power_actions: cfg.allow_power_actions,
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

    let signals = signals::spawn().map_err(io_err("cannot start the signal thread"))?;
    let (timer, timer_join) = timer::spawn(timer::SystemClock);
    let engine = Engine::new(engine_config(cfg, state), Arc::new(journal), timer);
    let mut source = ConfigReload::new(watch, LocalReload(LocalSource::new(local_dir, reboot)));
    let result = engine.run(&mut source, crossbeam_channel::never(), signals);
    // The engine dropped its timer handle during shutdown; the timer thread has ended or is ending.
    let _ = timer_join.join();
    result.map_err(CliError::Engine)?;
    Ok(ExitCode::SUCCESS)
}

/// The server base URL and instance id: `--server`/config, else `ALIYUN_ASSIST_SERVER_HOST`,
/// else metadata discovery, retried 3 s, doubling, capped at 180 s (spec §1.1 step 4) until
/// it works or a signal ends the agent. `None` when a signal came first.
fn resolve_server(
    cfg: &Config,
    probe: &UreqHttp,
    signals: &crossbeam_channel::Receiver<signals::Signal>,
) -> Option<(String, String)> {
    let instance_id = cfg.instance_id.clone().unwrap_or_default();
    if let Some(base) = configured_server(cfg) {
        return Some((base, instance_id));
    }
    let mut pause = Duration::from_secs(3);
    loop {
        match transport::discover_server(&cfg.metadata_url, probe) {
            Ok((base, found_id)) => {
                let id = if instance_id.is_empty() {
                    found_id
                } else {
                    instance_id
                };
                return Some((base, id));
            }
            Err(e) => log::warn!(
                "phase=startup cannot find the server through {} ({}); retrying in {} s",
                cfg.metadata_url,
                error_chain(&e),
                pause.as_secs()
            ),
        }
        match signals.recv_timeout(pause) {
            Ok(signals::Signal::Reload) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(180));
    }
}

/// Remote mode until shutdown. `Some(Restart)` when the updater installed a new binary and
/// the caller should exec it.
/// The server from `--server`/config, else `ALIYUN_ASSIST_SERVER_HOST`, as a base URL.
fn configured_server(cfg: &Config) -> Option<String> {
    let host = cfg.server.clone().or_else(|| {
        std::env::var("ALIYUN_ASSIST_SERVER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
    })?;
    Some(transport::server_base_url(&host))
}

/// The transport settings of remote mode, without the server yet.
fn transport_config(cfg: &Config) -> TransportConfig {
    let proxy = cfg.proxy.clone().or_else(|| {
        std::env::var("ALIYUN_ASSIST_PROXY")
            .ok()
            .filter(|p| !p.trim().is_empty())
    });
    TransportConfig {
        base_url: String::new(),
        instance_id: String::new(),
        ca_file: cfg.ca_file.clone(),
        proxy,
    }
}

fn run_remote(
    cfg: &Config,
    state: &StateDir,
    pending_old: Option<PathBuf>,
    watch: ConfigWatch,
) -> Result<Option<Restart>, CliError> {
    // One signal channel: the signal thread and the server's `kick_vm agent stop` feed it.
    let (signal_tx, signals) = crossbeam_channel::unbounded();
    signals::spawn_into(signal_tx.clone()).map_err(io_err("cannot start the signal thread"))?;
    let mut tcfg = transport_config(cfg);
    let probe = UreqHttp::new(&tcfg).map_err(CliError::Transport)?;
    let Some((base_url, instance_id)) = resolve_server(cfg, &probe, &signals) else {
        log::info!("phase=shutdown stopped before a server was found");
        return Ok(None);
    };
    tcfg.base_url = base_url;
    tcfg.instance_id = instance_id;
    // A hybrid (non-ECS) instance signs every request with its registered key (spec §2.2),
    // and its instance id is the one the server gave at registration.
    let hybrid = identity::HybridDir::new(state.root.join("hybrid"));
    let identity =
        identity::Identity::load(&hybrid, Some(tcfg.instance_id.clone())).map_err(|source| {
            CliError::Identity {
                what: "cannot load the hybrid identity",
                source,
            }
        })?;
    if let identity::Identity::Hybrid(h) = &identity {
        if tcfg.instance_id.is_empty() {
            tcfg.instance_id = h.instance_id().to_string();
        }
    }
    let mut http = UreqHttp::new(&tcfg).map_err(CliError::Transport)?;
    let header_hook: Option<kick::HeaderHook> = match identity {
        identity::Identity::Hybrid(_) => {
            log::info!("phase=startup hybrid instance: requests carry signed x-acs-* headers");
            let hook = Arc::new(identity::identity_headers(identity));
            let for_http = hook.clone();
            http.set_identity_headers(Box::new(move |m: &str, p: &str| for_http(m, p)));
            Some(hook)
        }
        identity::Identity::Ecs { .. } => None,
    };
    // The updater downloads from absolute URLs through the same agent (one pool).
    let download = http.clone();
    let http: Arc<dyn Http> = Arc::new(http);
    log::info!(
        "phase=startup assistd {} remote mode, server {}",
        env!("CARGO_PKG_VERSION"),
        tcfg.base_url
    );
    let cold_start = remote::detect_cold_start(&cfg.coldstart_flag);

    let (timer, timer_join) = timer::spawn(timer::SystemClock);
    let reporter = Arc::new(RemoteReporter::new(http.clone()));
    let mut engine = Engine::new(engine_config(cfg, state), reporter, timer);
    // Task signatures (spec §7): soft by default, as the reference; `strict_signatures` refuses
    // unsigned or unverifiable tasks. A certificate download blocks dispatch for at most one
    // request timeout, once per certificate.
    let verifier = signature::SignatureVerifier::new(
        http.clone(),
        state.root.join(signature::CACHE_FILE_NAME),
        tcfg.instance_id.clone(),
        cfg.strict_signatures,
    );
    engine.set_verifier(verifier.into_engine_verifier());
    let gate = Arc::new(remote::UpdateGate::new());
    let startup = Arc::new(remote::StartupDone::new());
    let facts = heartbeat::HostFacts::read(cold_start);

    // Shutdown: dropping `stop_tx` disconnects `stop`, which every wait of the fetch and
    // heartbeat threads watches; they end within one HTTP timeout.
    let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
    let (enable_tx, enable) = crossbeam_channel::bounded::<()>(0);
    let (events_tx, events) = crossbeam_channel::unbounded();
    let (kick_tx, kicks) = crossbeam_channel::bounded(16);
    let heartbeat = heartbeat::spawn(http.clone(), facts.clone(), stop.clone(), enable_tx)
        .map_err(io_err("cannot start the heartbeat thread"))?;
    // Kicks arrive on the notify websocket; while it is down, the bridge polls instead.
    let poll = (cfg.poll_interval_secs > 0).then(|| Duration::from_secs(cfg.poll_interval_secs));
    let (action_tx, actions) = crossbeam_channel::unbounded();
    // Set by the updater while it installs (spec §1.6); kicks are answered `reject:` meanwhile.
    let critical = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = match kick_config(&tcfg, header_hook, critical.clone()) {
        Ok(kcfg) => match kick::spawn_listener(kcfg, action_tx) {
            Ok(listener) => Some(listener),
            Err(e) => {
                log::warn!("phase=kick cannot start the kick listener ({e}); polling only");
                None
            }
        },
        Err(e) => {
            log::warn!(
                "phase=kick no kick channel ({}); polling only",
                error_chain(&e)
            );
            None
        }
    };
    let bridge = crate::source::kicks::spawn(crate::source::kicks::BridgeParts {
        actions,
        fetch: kick_tx.clone(),
        signals: signal_tx,
        poll,
        stop: stop.clone(),
    })
    .map_err(io_err("cannot start the kick bridge"))?;
    let fetch = remote::spawn(
        remote::FetcherParts {
            http: http.clone(),
            gate: gate.clone(),
            startup: startup.clone(),
            events: events_tx,
            extra: Box::new(remote::HostExtras {
                http: http.clone(),
                send_file: crate::sendfile::SendFileConfig::default(),
            }),
            // Polling is the kick bridge's job (only while the kick channel is down).
            cfg: remote::FetchConfig::new(cold_start, None, schedule::tz::system_zone()),
            stop: stop.clone(),
            requests: kicks,
        },
        enable,
    )
    .map_err(io_err("cannot start the fetch thread"))?;
    let interval = (cfg.update_check_interval_secs > 0)
        .then(|| Duration::from_secs(cfg.update_check_interval_secs));
    let updater = if interval.is_some() || pending_old.is_some() {
        // Resolved now: once the file is replaced, /proc/self/exe names a deleted file.
        let exe = std::env::current_exe().map_err(io_err("cannot find the agent executable"))?;
        Some(
            update::spawn(update::UpdaterParts {
                http: http.clone(),
                download,
                gate,
                registry: engine.registry(),
                startup,
                stop,
                critical,
                cfg: update::UpdaterConfig {
                    interval,
                    apply: cfg.allow_self_update,
                    exe,
                    os_version: facts.os_version,
                    pending_old,
                },
            })
            .map_err(io_err("cannot start the updater thread"))?,
        )
    } else {
        None
    };

    let mut reload = ConfigReload::new(
        watch,
        KickOnReload {
            kicks: kick_tx,
            started: false,
        },
    );
    // The fetch and heartbeat threads stop as soon as shutdown begins, not after the grace
    // period: no new work is fetched while running invocations drain.
    engine.on_shutdown(move || drop(stop_tx));
    let result = engine.run(&mut reload, events, signals);
    if let Some(listener) = listener {
        listener.shutdown();
    }
    let _ = timer_join.join();
    let _ = fetch.join();
    let _ = heartbeat.join();
    let _ = bridge.join();
    let restart = updater.and_then(|u| u.join().ok().flatten());
    result.map_err(CliError::Engine)?;
    Ok(restart)
}

/// Remote mode's reload hook: SIGHUP asks the fetch thread for a kickoff fetch, as a
/// `kick_vm` would. The engine's first call, at start, is skipped: the fetch thread does the
/// startup fetch on its own.
/// The kick channel's settings: the notify URL of the server, its TLS roots and identity.
fn kick_config(
    tcfg: &TransportConfig,
    hybrid: Option<kick::HeaderHook>,
    critical: Arc<std::sync::atomic::AtomicBool>,
) -> Result<kick::KickConfig, CliError> {
    let url = kick::notify_url(&tcfg.base_url).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut kcfg = kick::KickConfig::new(url);
    // The upgrade carries the same identity as every HTTP request (spec §2.5): the instance id
    // and User-Agent, plus the signed x-acs-* headers of a hybrid instance.
    let instance_id = tcfg.instance_id.clone();
    let user_agent = transport::user_agent();
    kcfg.headers = Some(Arc::new(move |method: &str, path: &str| {
        let mut headers = vec![
            ("X-Client-Instance-ID".to_string(), instance_id.clone()),
            ("User-Agent".to_string(), user_agent.clone()),
        ];
        if let Some(hybrid) = &hybrid {
            headers.extend(hybrid(method, path));
        }
        headers
    }));
    kcfg.critical_action = Some(critical);
    if kcfg.url.starts_with("wss://") {
        kcfg.tls = Some(
            crate::transport::kick_tls_config(tcfg.ca_file.as_deref())
                .map_err(CliError::Transport)?,
        );
    }
    Ok(kcfg)
}

/// SIGHUP: re-read the configuration file, then do the mode's own reload. The engine's first
/// call, at start, only reaches the mode's hook.
struct ConfigReload<R> {
    watch: ConfigWatch,
    inner: R,
    started: bool,
}

impl<R> ConfigReload<R> {
    fn new(watch: ConfigWatch, inner: R) -> ConfigReload<R> {
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
}

struct KickOnReload {
    kicks: crossbeam_channel::Sender<FetchRequest>,
    started: bool,
}

impl Reload for KickOnReload {
    fn reload(&mut self) -> Vec<SourceEvent> {
        if std::mem::replace(&mut self.started, true) {
            log::info!("phase=fetch SIGHUP: asking for the task list");
            if self.kicks.try_send(FetchRequest::kick()).is_err() {
                log::warn!("phase=fetch SIGHUP: a fetch is already queued");
            }
        }
        Vec::new()
    }
}

/// The local task directory as the engine's reload hook: logs every bad file and goes on.
struct LocalReload(LocalSource);

impl Reload for LocalReload {
    fn reload(&mut self) -> Vec<SourceEvent> {
        let scan = self.0.scan();
        for error in &scan.errors {
            log::error!("phase=load skipping task file: {}", error_chain(error));
        }
        log::info!(
            "phase=load {} change(s), {} bad file(s)",
            scan.events.len(),
            scan.errors.len()
        );
        scan.events
    }
}

/// The grammar an expression looks like: `rate(`, `at(`, else cron.
fn guess_kind(expr: &str) -> ScheduleKind {
    let lower = expr.trim_start().to_ascii_lowercase();
    if lower.starts_with("rate") {
        ScheduleKind::Rate
    } else if lower.starts_with("at(") {
        ScheduleKind::At
    } else {
        ScheduleKind::Cron
    }
}

fn cmd_next(mut args: Args) -> Result<ExitCode, CliError> {
    let from = match args.value("--from")? {
        Some(text) => DateTime::parse_from_rfc3339(&text)
            .map_err(|e| CliError::Usage(format!("--from {text:?} is not an RFC 3339 time ({e})")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let count: usize = match args.value("--count")? {
        Some(n) => n
            .parse()
            .map_err(|_| CliError::Usage(format!("--count must be a number, not {n:?}")))?,
        None => 5,
    };
    let kind = match args.value("--repeat")?.as_deref() {
        None => None,
        Some("Period") => Some(ScheduleKind::Cron),
        Some("Rate") => Some(ScheduleKind::Rate),
        Some("At") => Some(ScheduleKind::At),
        Some(other) => {
            return Err(CliError::Usage(format!(
                "--repeat must be Period, Rate or At, not {other:?}"
            )))
        }
    };
    let creation_ms: i64 = match args.value("--creation-time")? {
        Some(n) => n.parse().map_err(|_| {
            CliError::Usage(format!("--creation-time must be milliseconds, not {n:?}"))
        })?,
        None => 0,
    };
    args.finish()?;
    let [expr] = args.positionals.as_slice() else {
        return Err(CliError::Usage(
            "next takes exactly one expression (quote it)".to_string(),
        ));
    };
    let kind = kind.unwrap_or_else(|| guess_kind(expr));
    let zone = schedule::tz::system_zone();
    let schedule = Schedule::parse(expr, kind, creation_ms, &zone).map_err(CliError::Schedule)?;
    let mut next = schedule.first_after(from).map_err(CliError::Schedule)?;
    let mut out = io::stdout().lock();
    for i in 0..count {
        writeln!(out, "{}", next.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .map_err(io_err("cannot write"))?;
        if i + 1 == count {
            break;
        }
        match schedule.next_after(next) {
            Some(n) => next = n,
            None => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(mut args: Args) -> Result<ExitCode, CliError> {
    args.finish()?;
    let [target] = args.positionals.as_slice() else {
        return Err(CliError::Usage(
            "check takes one task file or directory".to_string(),
        ));
    };
    let target = PathBuf::from(target);
    let files = if target.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&target)
            .map_err(io_err(format!("cannot read {}", target.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        files
    } else {
        vec![target]
    };
    let zone = schedule::tz::system_zone();
    let mut problems = 0;
    let mut out = io::stdout().lock();
    for file in &files {
        for problem in check_file(file, &zone) {
            problems += 1;
            writeln!(out, "{problem}").map_err(io_err("cannot write"))?;
        }
    }
    if problems > 0 {
        return Ok(ExitCode::from(1));
    }
    writeln!(out, "{} task file(s) OK", files.len()).map_err(io_err("cannot write"))?;
    Ok(ExitCode::SUCCESS)
}

/// Every problem of one task file, each as one line naming the file.
fn check_file(path: &Path, zone: &schedule::Zone) -> Vec<String> {
    let info = match local::load_file(path) {
        Ok(info) => info,
        Err(e) => return vec![error_chain(&e)],
    };
    let mut problems = Vec::new();
    if info.repeat.is_periodic() {
        let kind = match info.repeat {
            crate::model::RepeatType::Rate => ScheduleKind::Rate,
            crate::model::RepeatType::At => ScheduleKind::At,
            _ => ScheduleKind::Cron,
        };
        if let Err(e) = Schedule::parse(&info.cron, kind, info.creation_time, zone)
            .and_then(|s| s.first_after(Utc::now()))
        {
            problems.push(format!("{}: cron: {e}", path.display()));
        }
    }
    if let Err(invalid) = runner::precheck(&info) {
        problems.push(format!(
            "{}: {}: {}",
            path.display(),
            invalid.param,
            invalid.value
        ));
    }
    problems
}

/// `assistd update --check | --apply`: the updater's check and install, by hand. It never
/// touches a running agent: after `--apply` the service must be restarted.
fn cmd_update(mut args: Args) -> Result<ExitCode, CliError> {
    let mut cfg = load_config(&mut args)?;
    if let Some(server) = args.value("--server")? {
        cfg.server = Some(server);
    }
    if let Some(id) = args.value("--instance-id")? {
        cfg.instance_id = Some(id);
    }
    let check = args.flag("--check");
    let apply = args.flag("--apply");
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    if check == apply {
        return Err(CliError::Usage(
            "update takes one of --check and --apply".to_string(),
        ));
    }
    let mut tcfg = transport_config(&cfg);
    let (base_url, instance_id) = match configured_server(&cfg) {
        Some(base) => (base, cfg.instance_id.clone().unwrap_or_default()),
        None => {
            let probe = UreqHttp::new(&tcfg).map_err(CliError::Transport)?;
            let (base, found) = transport::discover_server(&cfg.metadata_url, &probe)
                .map_err(|e| CliError::Update(update::UpdateError::Check(e)))?;
            (base, cfg.instance_id.clone().unwrap_or(found))
        }
    };
    tcfg.base_url = base_url;
    tcfg.instance_id = instance_id;
    let http = UreqHttp::new(&tcfg).map_err(CliError::Transport)?;
    let os_version = heartbeat::HostFacts::read(false).os_version;
    let offer = update::check(&http, &os_version, None).map_err(CliError::Update)?;
    let mut out = io::stdout().lock();
    let Some(offer) = offer else {
        writeln!(out, "no update offered").map_err(io_err("cannot write"))?;
        return Ok(ExitCode::SUCCESS);
    };
    writeln!(
        out,
        "update offered: {} from {} (sha256 {})",
        offer.version,
        offer.url,
        update::hex(&offer.sha256)
    )
    .map_err(io_err("cannot write"))?;
    if apply {
        let exe = std::env::current_exe().map_err(io_err("cannot find this executable"))?;
        let old =
            update::download_and_install(&http, &offer, &exe, None).map_err(CliError::Update)?;
        writeln!(
            out,
            "installed at {} (previous binary kept as {}); restart the running assistd service to use it",
            exe.display(),
            old.display()
        )
        .map_err(io_err("cannot write"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_journal(mut args: Args) -> Result<ExitCode, CliError> {
    let cfg = load_config(&mut args)?;
    let task = args.value("--task")?;
    let follow = args.flag("--follow") || args.flag("-f");
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    let dir = StateDir::new(cfg.state_dir.clone()).journal_dir();
    let mut out = io::stdout().lock();
    journal::print(&dir, task.as_deref(), follow, &mut out).map_err(io_err(format!(
        "cannot print the journal in {}",
        dir.display()
    )))?;
    Ok(ExitCode::SUCCESS)
}

/// The server client for `register`/`deregister`: `--server` (or the config's `server`).
fn hybrid_http(args: &mut Args, cfg: &Config) -> Result<UreqHttp, CliError> {
    let server = args
        .value("--server")?
        .or_else(|| cfg.server.clone())
        .ok_or_else(|| CliError::Usage("--server URL is required".to_string()))?;
    let tcfg = TransportConfig {
        base_url: transport::server_base_url(&server),
        ..transport_config(cfg)
    };
    UreqHttp::new(&tcfg).map_err(CliError::Transport)
}

fn cmd_register(mut args: Args) -> Result<ExitCode, CliError> {
    let cfg = load_config(&mut args)?;
    let http = hybrid_http(&mut args, &cfg)?;
    let activation_id = args
        .value("--activation-id")?
        .ok_or_else(|| CliError::Usage("--activation-id is required".to_string()))?;
    let region_id = args.value("--region")?.unwrap_or_default();
    let instance_name = args.value("--name")?.unwrap_or_default();
    args.finish()?;
    // A secret on the command line is visible to every user in `ps`: the environment only.
    let activation_code = std::env::var("ASSISTD_ACTIVATION_CODE")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            CliError::Usage("set ASSISTD_ACTIVATION_CODE to the activation code".to_string())
        })?;
    let state = create_state_dir(&cfg)?;
    let dir = identity::HybridDir::new(state.root.join("hybrid"));
    let req = identity::RegisterRequest {
        activation_code,
        activation_id,
        region_id,
        instance_name,
        machine_id: identity::default_machine_id(),
        hostname: read_first_line("/proc/sys/kernel/hostname"),
        intranet_ip: String::new(),
        os_version: format!("Linux_{}", read_first_line("/proc/sys/kernel/osrelease")),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        network_mode: String::new(),
    };
    let instance_id =
        identity::register(&http, &req, &dir).map_err(|source| CliError::Identity {
            what: "registration failed",
            source,
        })?;
    println!(
        "registered as {instance_id}; keys in {}",
        state.root.join("hybrid").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_deregister(mut args: Args) -> Result<ExitCode, CliError> {
    let cfg = load_config(&mut args)?;
    let mut http = hybrid_http(&mut args, &cfg)?;
    args.finish()?;
    let dir = identity::HybridDir::new(StateDir::new(cfg.state_dir.clone()).root.join("hybrid"));
    match identity::Identity::load(&dir, None).map_err(|source| CliError::Identity {
        what: "cannot load the hybrid identity",
        source,
    })? {
        identity::Identity::Hybrid(h) => {
            let instance_id = h.instance_id().to_string();
            let hook = identity::identity_headers(identity::Identity::Hybrid(h));
            http.set_identity_headers(Box::new(hook));
            identity::deregister(&http, &dir).map_err(|source| CliError::Identity {
                what: "deregistration failed",
                source,
            })?;
            println!("deregistered {instance_id}");
            Ok(ExitCode::SUCCESS)
        }
        identity::Identity::Ecs { .. } => Err(CliError::Usage(format!(
            "this machine is not registered (no keys in {})",
            dir.instance_id()
                .parent()
                .unwrap_or(Path::new(""))
                .display()
        ))),
    }
}

/// The first line of a small system file, or empty.
fn read_first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_recognised_by_their_look() {
        assert_eq!(guess_kind("rate(5m)"), ScheduleKind::Rate);
        assert_eq!(guess_kind("RATE (5m)"), ScheduleKind::Rate);
        assert_eq!(guess_kind("at(2030-01-01T00:00:00)"), ScheduleKind::At);
        assert_eq!(guess_kind("0 0 * * * ?"), ScheduleKind::Cron);
    }

    #[test]
    fn flags_take_values_in_both_forms_and_unknown_ones_are_refused() {
        let mut args = Args::new(vec![
            "--count".into(),
            "3".into(),
            "x".into(),
            "--from=2030-01-01T00:00:00Z".into(),
        ])
        .expect("utf-8");
        assert_eq!(args.value("--count").expect("ok"), Some("3".to_string()));
        assert_eq!(
            args.value("--from").expect("ok"),
            Some("2030-01-01T00:00:00Z".to_string())
        );
        args.finish().expect("no unknown flags");
        assert_eq!(args.positionals, vec!["x".to_string()]);
        let mut bad = Args::new(vec!["--nope".into()]).expect("utf-8");
        assert!(bad.finish().is_err());
    }
}
