//! The remote-mode commands (built with the `remote` feature): the agent's remote wiring
//! (server discovery, transport, identity, reporter, signatures, the fetch, heartbeat, kick
//! and updater threads), and `update`, `register`, `deregister`. It builds handles and passes
//! them down; the protocol itself lives in `src/remote/`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent::{engine_config, recover_interrupted, ConfigReload};
use super::args::Args;
use super::{create_state_dir, io_err, load_config, CliError};
use crate::config::{Config, ConfigWatch};
use crate::engine::{Engine, Reload};
use crate::error_chain::error_chain;
use crate::fsutil::StateDir;
use crate::remote::fetch::{self, FetchRequest};
use crate::remote::reporter::RemoteReporter;
use crate::remote::transport::{self, Http, TransportConfig, UreqHttp};
use crate::remote::trial;
use crate::remote::trust::{Policy, ReleaseKeySetting};
use crate::remote::update::{self, Restart};
use crate::remote::{heartbeat, identity, kick, signature, spool};
use crate::schedule;
use crate::source::SourceEvent;
use crate::{signals, timer};

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

/// What `cmd_agent` found about updates before anything else ran.
pub(super) struct UpdateStart {
    /// `ASSISTD_UPDATE_PENDING`: the previous binary, if an update exec'd us.
    pub pending_old: Option<PathBuf>,
    /// The trial marker's verdict (`trial::first_start`).
    pub first: trial::FirstStart,
    /// This executable, resolved before any rename could make `/proc/self/exe` stale.
    pub exe: Option<PathBuf>,
    /// When the process started: the trial window counts from here.
    pub started: Instant,
}

impl UpdateStart {
    /// Reads the environment and makes the first-start check (which may exec the restored
    /// previous binary). Call it first, while this is the only thread.
    pub(super) fn take() -> Result<UpdateStart, CliError> {
        let started = Instant::now();
        let pending_old = update::take_pending();
        let exe = std::env::current_exe().ok();
        let first = match &exe {
            Some(exe) => trial::first_start(exe),
            None => trial::FirstStart::None,
        };
        if let trial::FirstStart::ExecFailed(source) = first {
            return Err(CliError::Io {
                what: "rolled back the update, but cannot start the previous binary".to_string(),
                source,
            });
        }
        Ok(UpdateStart {
            pending_old,
            first,
            exe,
            started,
        })
    }
}

/// The trust rules of `cfg`; `allow_downgrade` only from `assistd update --apply`.
fn update_policy(cfg: &Config, allow_downgrade: bool) -> Policy {
    Policy {
        allow_insecure_loopback: cfg.update_allow_insecure_loopback,
        key: ReleaseKeySetting::from_config(cfg.update_public_key.as_deref()),
        require_key: cfg.strict_signatures,
        allow_downgrade,
    }
}

/// `assistd agent` in remote mode: runs until shutdown, and when the updater installed a new
/// binary, closes the state-dir lock and execs it (an error only if the exec fails).
pub(super) fn run_remote_and_restart(
    cfg: &Config,
    state: &StateDir,
    start: UpdateStart,
    watch: ConfigWatch,
    lock: std::fs::File,
) -> Result<ExitCode, CliError> {
    let Some(restart) = run_remote(cfg, state, start, watch)? else {
        return Ok(ExitCode::SUCCESS);
    };
    // Every thread has ended (`run_remote` joined the poll thread too). The lock is closed
    // here (it is O_CLOEXEC as well), so the new image takes it as any fresh start would.
    drop(lock);
    let source = restart.exec();
    Err(CliError::Io {
        what: "cannot restart into the updated agent".to_string(),
        source,
    })
}

/// Remote mode until shutdown. `Some(Restart)` when the updater installed a new binary and
/// the caller should exec it.
fn run_remote(
    cfg: &Config,
    state: &StateDir,
    start: UpdateStart,
    watch: ConfigWatch,
) -> Result<Option<Restart>, CliError> {
    let UpdateStart {
        pending_old,
        first,
        exe,
        started,
    } = start;
    let trial = exe
        .as_deref()
        .and_then(|exe| trial::settle(first, exe, &state.root));
    let exe = exe.as_deref();
    // One signal channel: the poll thread and the server's `kick_vm agent stop` feed it.
    let (signal_tx, signals) = crossbeam_channel::unbounded();
    // The poll thread waits on what remote mode gets from a descriptor without a thread of
    // its own: signals and wall-clock steps. Ended (and joined) when `run_remote` returns.
    let mut sources: Vec<Box<dyn crate::pollthread::Source>> = vec![Box::new(
        signals::source(signal_tx.clone()).map_err(io_err("cannot open a signalfd"))?,
    )];
    let clock_steps = super::watch_clock(&mut sources);
    let _poll = crate::pollthread::PollThread::spawn("poll", sources)
        .map_err(io_err("cannot start the poll thread"))?;
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
    let cold_start = fetch::detect_cold_start(&cfg.coldstart_flag);
    if let ReleaseKeySetting::Unusable(e) = &update_policy(cfg, false).key {
        log::error!(
            "phase=update update_public_key cannot be used ({}); every update is refused",
            error_chain(&**e)
        );
    }

    // Shutdown: dropping `stop_tx` disconnects `stop`, which every wait of the fetch,
    // heartbeat and spool threads watches; they end within one HTTP timeout. The fetch thread
    // starts once every `enable` sender is gone: the heartbeat's after the first heartbeat, the
    // spool's after it sent what the last run left.
    let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
    let (enable_tx, enable) = crossbeam_channel::bounded::<()>(0);
    // Read before the spool thread starts deleting what it delivers: the finals a killed agent
    // wrote, so recovery does not report their invocations a second time.
    let spooled_finals = spool::spooled_finals(&state.spool_dir());
    let spool = spool::spawn(
        state.spool_dir(),
        spool::SpoolConfig {
            max_reports: cfg.spool_max_reports,
            max_bytes: cfg.spool_max_bytes,
            first_resend_delay: spool::FIRST_RESEND_DELAY,
        },
        http.clone(),
        stop.clone(),
        enable_tx.clone(),
    )
    .map_err(io_err("cannot start the spool thread"))?;
    // Every request that gets an answer tells the spool the server is back.
    let http = spool.writer.observe(http);

    let (timer, timer_join) = timer::spawn(timer::SystemClock, clock_steps);
    let reporter = Arc::new(RemoteReporter::new(http.clone()).with_spool(spool.writer.clone()));
    let mut engine = Engine::new(engine_config(cfg, state), reporter.clone(), timer);
    // At shutdown, queued reports get one attempt each, and none once the server fails one
    // (they stay in the spool): a backlog never holds the exit up.
    engine.on_shutdown(move || reporter.begin_shutdown());
    // Recovered reports go to the spool at once (durably; its thread sends them in order and
    // leaves what is not sent at shutdown for the next start), so a long recovery list never
    // holds up the start or the shutdown.
    // An invocation whose final waits in the spool ran already: a re-delivery (the server has
    // not heard of its end yet) must not run it again.
    let ran: std::collections::HashSet<(String, i64)> = spooled_finals
        .iter()
        .map(|(id, version, _)| (id.clone(), *version))
        .collect();
    let recovered = recover_interrupted(
        state,
        &mut engine,
        &|head, start| spooled_finals.contains(&(head.task_id.clone(), head.invoke_version, start)),
        ran,
    );
    let mut unspooled = Vec::new();
    for report in recovered {
        if let Err(e) = crate::remote::reporter::spool_recovered(&spool.writer, &report) {
            log::warn!(
                "task={} invoke_version={} phase=recover cannot spool the report ({e}); sending it directly",
                report.head().task_id,
                report.head().invoke_version
            );
            unspooled.push(report);
        }
    }
    engine.send_later(unspooled);
    // Task signatures (spec §7): soft by default, as the reference; `strict_signatures` refuses
    // unsigned or unverifiable tasks. A certificate download blocks dispatch for at most one
    // request timeout, once per certificate.
    // Pinned keys make strict mode independent of the channel that delivers certificates. One
    // verifier (and one certificate cache) serves the engine's run tasks and the fetch thread's
    // send-file entries.
    let pinned =
        signature::load_pinned_keys(&cfg.signature_pinned_keys).map_err(|source| CliError::Io {
            what: "signature_pinned_keys cannot be used".to_string(),
            source,
        })?;
    let verifier = Arc::new(parking_lot::Mutex::new(
        signature::SignatureVerifier::new(
            http.clone(),
            state.root.join(signature::CACHE_FILE_NAME),
            tcfg.instance_id.clone(),
            cfg.strict_signatures,
        )
        .with_pinned_keys(pinned)
        .with_required_fields(cfg.signature_required_fields.clone()),
    ));
    let run_verifier = verifier.clone();
    engine.set_verifier(Box::new(move |task| run_verifier.lock().verify(task)));
    let gate = Arc::new(fetch::UpdateGate::new());
    let startup = Arc::new(fetch::StartupDone::new());
    let facts = heartbeat::HostFacts::read(cold_start);

    let (events_tx, events) = crossbeam_channel::unbounded();
    let (kick_tx, kicks) = crossbeam_channel::bounded(16);
    let heartbeat = heartbeat::spawn(http.clone(), facts.clone(), stop.clone(), enable_tx)
        .map_err(io_err("cannot start the heartbeat thread"))?;
    // Kicks arrive on the notify websocket; while it is down, the bridge polls instead.
    let poll = (cfg.poll_interval_secs > 0).then(|| Duration::from_secs(cfg.poll_interval_secs));
    let (action_tx, actions) = crossbeam_channel::unbounded();
    // Set by the updater while it installs (spec §1.6); kicks are answered `reject:` meanwhile.
    let critical = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The websockets' TLS settings (kicks and sessions), built once: each build holds its own
    // root store (the bundled roots are ~150 anchors).
    let session_tls = if tcfg.base_url.starts_with("https://") {
        Some(transport::kick_tls_config(tcfg.ca_file.as_deref()).map_err(CliError::Transport)?)
    } else {
        None
    };
    let listener = match kick_config(&tcfg, header_hook.clone(), critical.clone(), &session_tls) {
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
    // Sessions (shell, port forwarding): their own thread and one thread per session; the
    // websocket carries the same identity and goes through the same proxy as every request.
    let sessions = crate::remote::session::sessions(crate::remote::session::SessionsConfig {
        http: http.clone(),
        base_url: tcfg.base_url.clone(),
        headers: Some(websocket_headers(&tcfg, header_hook.clone())),
        tls: session_tls,
        proxy: tcfg.proxy.clone(),
        limits: crate::remote::session::channel::Limits {
            idle: Duration::from_secs(cfg.session_idle_timeout_secs),
            max: Duration::from_secs(cfg.session_max_secs),
            ..Default::default()
        },
        metrics: Some(Arc::new(crate::remote::metrics::Metrics::new(
            crate::remote::metrics::Common {
                instance_id: tcfg.instance_id.clone(),
                os_version: facts.os_version.clone(),
            },
        ))),
    });
    let bridge = crate::remote::kick_bridge::spawn(crate::remote::kick_bridge::BridgeParts {
        actions,
        fetch: kick_tx.clone(),
        signals: signal_tx,
        sessions: Some(sessions.clone()),
        poll,
        stop: stop.clone(),
    })
    .map_err(io_err("cannot start the kick bridge"))?;
    let fetch = fetch::spawn(
        fetch::FetcherParts {
            http: http.clone(),
            gate: gate.clone(),
            startup: startup.clone(),
            events: events_tx,
            extra: Box::new(fetch::HostExtras {
                http: http.clone(),
                sessions: Some(sessions.clone()),
                send_file: crate::remote::sendfile::SendFileConfig::default(),
                spool: Some(spool.writer.clone()),
                verify_file: Some(Box::new(move |file| verifier.lock().verify_send_file(file))),
            }),
            // Polling is the kick bridge's job (only while the kick channel is down).
            cfg: fetch::FetchConfig::new(cold_start, None, schedule::tz::system_zone()),
            stop: stop.clone(),
            requests: kicks,
        },
        enable,
    )
    .map_err(io_err("cannot start the fetch thread"))?;
    let interval = (cfg.update_check_interval_secs > 0)
        .then(|| Duration::from_secs(cfg.update_check_interval_secs));
    // A trial in progress means the previous binary is pending, whatever the environment says.
    let trial_marker = trial.map(|m| (m, started + trial::TRIAL_WINDOW));
    let pending_old = match (&trial_marker, exe) {
        (Some(_), Some(exe)) => Some(update::old_path(exe)),
        _ => pending_old,
    };
    let updater = if interval.is_some() || pending_old.is_some() {
        // Resolved at start: once the file is replaced, /proc/self/exe names a deleted file.
        let exe = exe
            .ok_or_else(|| CliError::Usage("cannot find the agent executable".to_string()))?
            .to_path_buf();
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
                    trial: trial_marker,
                    policy: update_policy(cfg, false),
                    state_root: state.root.clone(),
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
    let sessions_at_exit = sessions;
    let sessions_at_shutdown = sessions_at_exit.clone();
    engine.on_shutdown(move || {
        sessions_at_shutdown.begin_shutdown();
        drop(stop_tx)
    });
    let result = engine.run(&mut reload, events, signals);
    if let Some(listener) = listener {
        listener.shutdown();
    }
    let _ = timer_join.join();
    let _ = fetch.join();
    let _ = heartbeat.join();
    let _ = bridge.join();
    sessions_at_exit.wait_ended();
    drop(spool.writer);
    let _ = spool.join.join();
    let restart = updater.and_then(|u| u.join().ok().flatten());
    result.map_err(CliError::Engine)?;
    Ok(restart)
}

/// The kick channel's settings: the notify URL of the server, its TLS roots and identity.
fn kick_config(
    tcfg: &TransportConfig,
    hybrid: Option<kick::HeaderHook>,
    critical: Arc<std::sync::atomic::AtomicBool>,
    tls: &Option<Arc<rustls::ClientConfig>>,
) -> Result<kick::KickConfig, CliError> {
    let url = kick::notify_url(&tcfg.base_url).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut kcfg = kick::KickConfig::new(url);
    kcfg.headers = Some(websocket_headers(tcfg, hybrid));
    kcfg.critical_action = Some(critical);
    kcfg.proxy = tcfg.proxy.clone();
    if kcfg.url.starts_with("wss://") {
        kcfg.tls = Some(match tls {
            Some(tls) => tls.clone(),
            None => crate::remote::transport::kick_tls_config(tcfg.ca_file.as_deref())
                .map_err(CliError::Transport)?,
        });
    }
    Ok(kcfg)
}

/// The headers of a websocket upgrade (kicks and sessions): the same identity as every HTTP
/// request (spec §2.5), the instance id and User-Agent, plus the signed x-acs-* headers of a
/// hybrid instance, fresh at every dial.
fn websocket_headers(tcfg: &TransportConfig, hybrid: Option<kick::HeaderHook>) -> kick::HeaderHook {
    let instance_id = if tcfg.instance_id.is_empty() {
        "unknown".to_string()
    } else {
        tcfg.instance_id.clone()
    };
    let user_agent = transport::user_agent();
    Arc::new(move |method: &str, path: &str| {
        let mut headers = vec![
            ("X-Client-Instance-ID".to_string(), instance_id.clone()),
            ("User-Agent".to_string(), user_agent.clone()),
        ];
        if let Some(hybrid) = &hybrid {
            headers.extend(hybrid(method, path));
        }
        headers
    })
}

/// Remote mode's reload hook: SIGHUP asks the fetch thread for a kickoff fetch, as a
/// `kick_vm` would. The engine's first call, at start, is skipped: the fetch thread does the
/// startup fetch on its own.
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

/// `assistd update --check | --apply`: the updater's check and install, by hand. It never
/// touches a running agent: after `--apply` the service must be restarted.
pub(super) fn cmd_update(mut args: Args) -> Result<ExitCode, CliError> {
    let mut cfg = load_config(&mut args)?;
    if let Some(server) = args.value("--server")? {
        cfg.server = Some(server);
    }
    if let Some(id) = args.value("--instance-id")? {
        cfg.instance_id = Some(id);
    }
    let check = args.flag("--check");
    let apply = args.flag("--apply");
    let allow_downgrade = args.flag("--allow-downgrade");
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    if check == apply {
        return Err(CliError::Usage(
            "update takes one of --check and --apply".to_string(),
        ));
    }
    if allow_downgrade && !apply {
        return Err(CliError::Usage(
            "--allow-downgrade goes with --apply".to_string(),
        ));
    }
    let policy = update_policy(&cfg, allow_downgrade);
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
        crate::remote::trust::redact_url(&offer.url),
        update::hex(&offer.sha256)
    )
    .map_err(io_err("cannot write"))?;
    if check {
        let ours = crate::remote::trust::Version::ours();
        if let Err(e) = policy.vet(&offer.url, &offer.version, &ours) {
            // Said like every other command's error, on stderr; exit 1: the check found a
            // problem with the offer, the command itself worked.
            out.flush().map_err(io_err("cannot write"))?;
            eprintln!("error: not installable here: {}", error_chain(&e));
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // By hand, the versions that failed here before are the operator's call: not checked.
    let exe = std::env::current_exe().map_err(io_err("cannot find this executable"))?;
    let installed = update::download_and_install(&http, &offer, &exe, &policy, None)
        .map_err(CliError::Update)?;
    writeln!(
        out,
        "installed at {} (previous binary kept as {}); restart the running assistd service to use it: its first start is a trial that restores {} if it fails",
        exe.display(),
        installed.old.display(),
        installed.old.display()
    )
    .map_err(io_err("cannot write"))?;
    Ok(ExitCode::SUCCESS)
}

/// The server client for `register`/`deregister`, found as `agent` and `update` find it
/// (`configured_server`: `--server`, the config's `server`, `ALIYUN_ASSIST_SERVER_HOST`). No
/// metadata discovery: a machine that registers is by definition not an ECS instance.
fn hybrid_http(args: &mut Args, cfg: &mut Config) -> Result<UreqHttp, CliError> {
    if let Some(server) = args.value("--server")? {
        cfg.server = Some(server);
    }
    let base_url = configured_server(cfg).ok_or_else(|| {
        CliError::Usage(
            "no server: give --server URL, the config's server or ALIYUN_ASSIST_SERVER_HOST"
                .to_string(),
        )
    })?;
    let tcfg = TransportConfig {
        base_url,
        ..transport_config(cfg)
    };
    UreqHttp::new(&tcfg).map_err(CliError::Transport)
}

pub(super) fn cmd_register(mut args: Args) -> Result<ExitCode, CliError> {
    let mut cfg = load_config(&mut args)?;
    let http = hybrid_http(&mut args, &mut cfg)?;
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

pub(super) fn cmd_deregister(mut args: Args) -> Result<ExitCode, CliError> {
    let mut cfg = load_config(&mut args)?;
    let mut http = hybrid_http(&mut args, &mut cfg)?;
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
