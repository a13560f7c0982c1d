//! Command-line interface: the subcommands, the usage text, and how errors become one line on
//! stderr and an exit code. It wires handles together and holds no agent logic of its own;
//! nothing else in the crate imports it.
//!
//! - `args`: flag parsing. `agent`: `assistd agent` and local mode's wiring.
//! - `tools`: `next`, `check`, `journal`. `crontab`: `import-crontab`. `remote` (feature `remote`): remote mode's wiring,
//!   `update`, `register`, `deregister`.

mod agent;
mod args;
mod crontab;
#[cfg(feature = "remote")]
mod remote;
mod status;
mod tools;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, ConfigWatch, DEFAULT_CONFIG};
use crate::error_chain::error_chain;
use crate::fsutil::StateDir;
use crate::schedule;
use crate::source::local;
use args::Args;

/// `--help`: the usage lines, the commands and the exit codes, each with the remote-mode
/// part when this build has it.
pub fn usage() -> String {
    let mut text = String::from(
        "\
assistd: runs commands for a cloud control plane, or from a local task directory

USAGE:
    assistd agent --local DIR [--state-dir DIR] [--config FILE] [--workers N] [--log-level LEVEL]
                  [--log-file FILE | --log-stderr] [--log-task-output] [--detach-terminal]
",
    );
    #[cfg(feature = "remote")]
    text.push_str(
        "    assistd agent [--server URL] [--instance-id ID] [--poll-interval SECS] [--coldstart-flag FILE]
                  [--state-dir DIR] [--config FILE] [--workers N] [--log-level LEVEL]
                  [--log-file FILE | --log-stderr] [--detach-terminal]
",
    );
    text.push_str(
        "    assistd next EXPR | --task FILE [--from RFC3339] [--count N] [--repeat Period|Rate|At]
                 [--creation-time MS] [--crontab] [--random-delay SECS]
    assistd check DIR|FILE
    assistd import-crontab FILE [--user NAME | --system] [--out DIR]
    assistd journal [--task ID] [--since TIME] [-n N] [--failed] [--follow] [--state-dir DIR]
                    [--config FILE]
    assistd list [--json] [--state-dir DIR] [--config FILE]
    assistd run ID [--state-dir DIR] [--config FILE]
",
    );
    #[cfg(feature = "remote")]
    text.push_str(
        "    assistd register [--server URL] --activation-id ID [--region ID] [--name NAME] [--state-dir DIR]
                     (the activation code is read from ASSISTD_ACTIVATION_CODE, never from argv)
    assistd deregister [--server URL] [--state-dir DIR]
    assistd update --check | --apply [--allow-downgrade] [--server URL] [--instance-id ID]
                   [--config FILE]
",
    );
    text.push_str(
        "    assistd --version | --help

COMMANDS:
    agent     run in the foreground; with --local, tasks are the *.json files of DIR and
              results go to the journal in the state dir (default /var/lib/assistd).
              DIR is watched: changes apply 500 ms after they settle; a file that breaks
              keeps its last good version. SIGHUP re-reads the config file and DIR;
              SIGTERM/SIGINT stop cleanly.
              --log-task-output logs every line tasks print, as it arrives.
              --detach-terminal gives up the starting terminal (init scripts use it).
              Task file keys beyond the server's: id, command, user, workdir, repeat,
              env, logOutput, catchUp (\"none\" | \"last\": run once at start if a run
              was missed) and randomDelay (seconds: each firing waits [0, N) first).
              `list` shows what is scheduled; `run ID` runs a task now.
",
    );
    #[cfg(feature = "remote")]
    text.push_str(
        "              Without --local: remote mode. Tasks come from the Cloud Assistant server
              (--server host or URL, else $ALIYUN_ASSIST_SERVER_HOST, else metadata
              discovery); results are reported to it. Kicks arrive on its notify
              websocket; while that is down the task list is polled every
              --poll-interval seconds (default 60, 0 = off). SIGHUP fetches it at once.
",
    );
    text.push_str(
        "    next      print the next fire times of a cron, rate or at expression, in UTC; a
              crontab(5) time (5 fields, or @daily etc.; --crontab forces it) is read
              as seconds-first cron, and stderr says so. --task FILE: a task file's
              schedule; with its randomDelay (or --random-delay) the times are the
              undelayed ones, and stderr says a delay applies
    check     validate task files as the agent reads them; one line per problem
    import-crontab  turn a crontab's entries into task files: printed, or written
              to --out DIR (mode 0600); /etc/crontab and cron.d files (or --system)
              have a user column, --user NAME runs a user crontab's tasks as NAME.
              Lines that do not carry over go to stderr with their line number
    journal   print the local journal for people, one entry per invocation with its
              output whole. --since TIME (RFC 3339, or 30s/15m/1h/2d ago), -n N (the
              last N), --failed (non-zero exit, timeout, error, kill), --follow
    list      what the local agent has scheduled: one line per task with its schedule,
              next run (local time and UTC, before any randomDelay) and last run (when,
              result, exit code, duration); works while no agent runs (it says so and
              shows the last known state). --json: the stable form (README)
    run       run a task now, once, through the running local agent; if it is already
              queued or running nothing starts (exit 1). Prints the journal command that
              shows its result
",
    );
    #[cfg(feature = "remote")]
    text.push_str(
        "    register  register this machine as a hybrid (non-ECS) instance; keys go to
              <state-dir>/hybrid with mode 0600
    deregister  undo `register` at the server and remove the keys
              (both find the server as `agent` does: --server, the config's server, then
              $ALIYUN_ASSIST_SERVER_HOST; no metadata discovery)
    update    --check: ask the server whether a newer agent is offered and print the answer.
              --apply: download, verify and install it over this executable (the previous
              one is kept as <exe>.old); a running agent must then be restarted. Only a
              version above this one is installed, unless --allow-downgrade is given.
              A remote agent does this on its own (update_check_interval_secs, default
              1800; allow_self_update) and restarts itself into the new binary.
",
    );
    #[cfg(not(feature = "remote"))]
    text.push_str(
        "
This build is local-only (built without the `remote` feature): `agent` needs --local, and
register, deregister and update are not available.
",
    );
    text.push_str(
        "
EXIT CODES:
    0 ok, 1 `check` found problems, `import-crontab` left lines out or `run` found the
    task already running, 2 error
",
    );
    text
}

/// The one-line error of a remote-mode command in a local-only build.
#[cfg(not(feature = "remote"))]
fn no_remote(what: &str) -> CliError {
    CliError::Usage(format!(
        "{what} needs remote mode, which this build does not have (built without the `remote` feature)"
    ))
}

/// An error that ends a command: printed as one line, exit code 2.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Config(ConfigError),
    Schedule(schedule::ScheduleError),
    Crontab(schedule::crontab::CrontabError),
    Io {
        what: String,
        source: io::Error,
    },
    Engine(crate::engine::EngineError),
    /// A state dir (or an ancestor) that someone else could change.
    Untrusted(crate::fsutil::Distrust),
    Load(local::LoadError),
    /// The status file could not be read (`list`).
    Status(crate::status::StatusError),
    /// The running agent said no (`run`).
    Agent(String),
    #[cfg(feature = "remote")]
    Transport(crate::remote::transport::SetupError),
    #[cfg(feature = "remote")]
    Identity {
        what: &'static str,
        source: crate::remote::identity::IdentityError,
    },
    #[cfg(feature = "remote")]
    Update(crate::remote::update::UpdateError),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(msg) => write!(f, "{msg} (see assistd --help)"),
            CliError::Config(e) => e.fmt(f),
            CliError::Schedule(e) => e.fmt(f),
            CliError::Crontab(e) => e.fmt(f),
            CliError::Io { what, .. } => f.write_str(what),
            CliError::Engine(e) => e.fmt(f),
            CliError::Untrusted(e) => write!(f, "refusing the state dir: {e}"),
            CliError::Load(e) => e.fmt(f),
            CliError::Status(e) => e.fmt(f),
            CliError::Agent(msg) => f.write_str(msg),
            #[cfg(feature = "remote")]
            CliError::Transport(e) => e.fmt(f),
            #[cfg(feature = "remote")]
            CliError::Identity { what, .. } => f.write_str(what),
            #[cfg(feature = "remote")]
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
            CliError::Status(e) => e.source(),
            #[cfg(feature = "remote")]
            CliError::Identity { source, .. } => Some(source),
            #[cfg(feature = "remote")]
            CliError::Transport(e) => e.source(),
            #[cfg(feature = "remote")]
            CliError::Update(e) => e.source(),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
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

pub fn run(raw: Vec<OsString>) -> Result<ExitCode, CliError> {
    let mut args = Args::new(raw)?;
    if args.items.is_empty() || args.flag("--help") || args.flag("-h") {
        print!("{}", usage());
        return Ok(ExitCode::SUCCESS);
    }
    if args.flag("--version") || args.flag("-V") {
        println!("assistd {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    let command = args.items.remove(0);
    match command.as_str() {
        "agent" => agent::cmd_agent(args),
        "next" => tools::cmd_next(args),
        "check" => tools::cmd_check(args),
        "journal" => tools::cmd_journal(args),
        "list" => status::cmd_list(args),
        "run" => status::cmd_run(args),
        "import-crontab" => crontab::cmd_import_crontab(args),
        #[cfg(feature = "remote")]
        "register" => remote::cmd_register(args),
        #[cfg(feature = "remote")]
        "deregister" => remote::cmd_deregister(args),
        #[cfg(feature = "remote")]
        "update" => remote::cmd_update(args),
        #[cfg(not(feature = "remote"))]
        "register" | "deregister" | "update" => Err(no_remote(&command)),
        other => Err(CliError::Usage(format!("unknown command {other:?}"))),
    }
}

/// Adds the clock watch to a poll thread's sources; its notices are for `timer::spawn`. `None`
/// (logged) where there is no `timerfd`: the timer then caps its sleeps.
fn watch_clock(
    sources: &mut Vec<Box<dyn crate::pollthread::Source>>,
) -> Option<crossbeam_channel::Receiver<()>> {
    match crate::clockwatch::source() {
        Ok((source, steps)) => {
            sources.push(Box::new(source));
            Some(steps)
        }
        Err(e) => {
            log::info!("phase=clock cannot watch for wall-clock steps: {e}");
            None
        }
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

/// The state dir of `cfg`, created with its layout and modes.
/// The state dir is checked before anything in it is touched (a planted symlink must not be
/// chmodded through) and again after it is created.
fn create_state_dir(cfg: &Config) -> Result<StateDir, CliError> {
    let state = StateDir::new(cfg.state_dir.clone());
    let uid = crate::fsutil::euid();
    if std::fs::symlink_metadata(&state.root).is_ok() {
        state.check_trust(uid).map_err(CliError::Untrusted)?;
    }
    state.create().map_err(io_err(format!(
        "cannot create state dir {}",
        cfg.state_dir.display()
    )))?;
    state.check_trust(uid).map_err(CliError::Untrusted)?;
    Ok(state)
}
