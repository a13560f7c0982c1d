//! Self-update: asks the server whether a newer agent is offered (`update_check`), holds the
//! offer to the trust rules (`trust`), downloads it beside the running executable, verifies its
//! SHA-256, that it is an executable for this machine, its release signature when a key is
//! configured, and that it runs (`trial`), keeps the old binary as `<exe>.old`, renames the new
//! one over `<exe>` and re-execs; the new agent confirms the update or rolls it back. The
//! updater thread waits for the fetch gate and for running tasks first (spec §1.6). It never
//! runs, schedules or stops a task and never touches the registry except to read it.
//!
//! Protocol (field names from the reference's `common/update/api.go`):
//! `POST /luban/api/v1/update/update_check` with the JSON body
//! `{"os":"linux","arch":"amd64","os_version":"Linux_6.1.0","app_id":"assistd","app_version":"0.1.0"}`;
//! the answer is `{"flag":0,"instanceId":"i-…","need_update":1,"next_interval":1800,
//! "update_info":{"file_name":"…","md5":"…","url":"https://…"}}`. The reference's offer is a zip
//! of the Go agent checked with MD5; assistd installs only a bare binary and requires one
//! extension field, `update_info.sha256` (64 hex digits): an offer without it is refused, as
//! is one whose download is not an ELF executable for this machine. `update_info.version` (dotted
//! numbers) is required too: an offer is installed only when it is above ours. `app_id` is
//! `assistd`, so a server can tell our agents from the Go agent.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select_biased, Receiver, RecvTimeoutError, TryRecvError};

use crate::engine::registry::Registry;
use crate::remote::fetch::{StartupDone, UpdateGate};
use crate::remote::transport::{with_retries, Http, TransportError, UreqHttp, DEFAULT_TIMEOUT};
use crate::remote::trial::{self, Marker, TrialError};
use crate::remote::trust::{self, Policy, TrustError, Version};

pub const UPDATE_CHECK_PATH: &str = "/luban/api/v1/update/update_check";
/// Pause between the updater's looks at the gate and the registry (spec §1.6).
pub const BUSY_PAUSE: Duration = Duration::from_secs(5);
/// Periodic invocations are waited for this long at most; after that they get the ordinary
/// shutdown (grace period, then killed and reported) like on SIGTERM.
pub const PERIODIC_WAIT_CAP: Duration = Duration::from_secs(600);
/// The whole download, body included.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// A bigger download is refused (a static assistd is a few MiB).
pub const MAX_BINARY_BYTES: u64 = 64 * 1024 * 1024;
/// Set in the environment of the re-exec'd agent: the path of the previous binary. The new
/// agent deletes that file once its startup fetch succeeded.
pub const PENDING_ENV: &str = "ASSISTD_UPDATE_PENDING";
const APP_ID: &str = "assistd";
const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// Attempts of one check, 5 s apart (the reference's `MaximumCheckUpdateRetries`).
const CHECK_ATTEMPTS: u32 = 3;

/// Why a check or an update did not happen.
#[derive(Debug)]
pub enum UpdateError {
    /// The check request got no usable answer.
    Check(TransportError),
    /// The check answer is not JSON.
    Decode(serde_json::Error),
    /// The offer cannot be installed (no sha256, no URL).
    BadOffer(&'static str),
    Download(TransportError),
    /// The body broke off, or the file could not be written.
    Io {
        what: String,
        source: io::Error,
    },
    TooLarge(u64),
    Checksum {
        expected: String,
        actual: String,
    },
    NotExecutable(&'static str),
    /// The offer breaks a trust rule (URL, version floor, release key, signature).
    Trust(TrustError),
    /// The signature file beside the download could not be fetched.
    SignatureDownload(TransportError),
    /// The downloaded binary does not run (`<new> --version`).
    Trial(TrialError),
    /// This version was installed here before and failed; the updater does not retry it.
    FailedBefore(String),
    /// Shutdown began; nothing was changed.
    Stopped,
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Check(_) => f.write_str("update check request failed"),
            UpdateError::Decode(_) => f.write_str("update check answer is not valid JSON"),
            UpdateError::BadOffer(why) => write!(f, "update offer refused: {why}"),
            UpdateError::Download(_) => f.write_str("download of the new agent failed"),
            UpdateError::Io { what, .. } => f.write_str(what),
            UpdateError::TooLarge(limit) => {
                write!(f, "download is larger than {limit} bytes; refused")
            }
            UpdateError::Checksum { expected, actual } => write!(
                f,
                "download refused: sha256 {actual} does not match the offered {expected}"
            ),
            UpdateError::NotExecutable(why) => {
                write!(
                    f,
                    "download refused: not an executable for this machine ({why})"
                )
            }
            UpdateError::Trust(_) => f.write_str("update offer refused"),
            UpdateError::SignatureDownload(_) => {
                f.write_str("download of the release signature failed")
            }
            UpdateError::Trial(_) => f.write_str("download refused: it failed its trial run"),
            UpdateError::FailedBefore(v) => write!(
                f,
                "update offer refused: {v} failed on this host before (see {})",
                trial::REFUSED_FILE
            ),
            UpdateError::Stopped => f.write_str("update abandoned: the agent is stopping"),
        }
    }
}

impl std::error::Error for UpdateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpdateError::Check(e)
            | UpdateError::Download(e)
            | UpdateError::SignatureDownload(e) => Some(e),
            UpdateError::Trust(e) => Some(e),
            UpdateError::Trial(e) => Some(e),
            UpdateError::Decode(e) => Some(e),
            UpdateError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// An installable offer from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub url: String,
    pub sha256: [u8; 32],
    /// `update_info.version`, or empty (which no policy accepts).
    pub version: String,
}

/// The check request body (the reference's `UpdateCheckReport`).
pub fn check_body(os_version: &str) -> Vec<u8> {
    serde_json::json!({
        "os": std::env::consts::OS,
        "arch": go_arch(),
        "os_version": os_version,
        "app_id": APP_ID,
        "app_version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
    .into_bytes()
}

/// Go's `GOARCH` spelling of this machine, as in the User-Agent.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Reads a check answer: `None` when no update is offered. Lenient like the task list:
/// `need_update` may be a number or a boolean, missing keys are empty.
pub fn parse_offer(body: &[u8]) -> Result<Option<Offer>, UpdateError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(UpdateError::Decode)?;
    let need = match &v["need_update"] {
        serde_json::Value::Bool(b) => *b,
        n => n.as_i64().unwrap_or(0) != 0,
    };
    if !need {
        return Ok(None);
    }
    let info = &v["update_info"];
    let text = |key: &str| info[key].as_str().unwrap_or("").trim().to_string();
    let url = text("url");
    if url.is_empty() {
        return Err(UpdateError::BadOffer("no update_info.url"));
    }
    let sha = text("sha256");
    if sha.is_empty() {
        return Err(UpdateError::BadOffer(
            "no update_info.sha256 (an MD5-only offer is the Go agent's package)",
        ));
    }
    let sha256 = parse_hex32(&sha).ok_or(UpdateError::BadOffer(
        "update_info.sha256 is not 64 hex digits",
    ))?;
    let version = text("version");
    Ok(Some(Offer {
        url,
        sha256,
        version,
    }))
}

/// Asks the server once (3 attempts, 5 s apart, cut short when `stop` disconnects).
pub fn check(
    http: &dyn Http,
    os_version: &str,
    stop: Option<&Receiver<()>>,
) -> Result<Option<Offer>, UpdateError> {
    let body = check_body(os_version);
    let resp = with_retries(CHECK_ATTEMPTS, BUSY_PAUSE, stop, || {
        http.post(UPDATE_CHECK_PATH, &body, JSON_CONTENT_TYPE, DEFAULT_TIMEOUT)
    })
    .map_err(UpdateError::Check)?;
    parse_offer(&resp.body)
}

/// A verified binary in a temp file beside the executable, mode 0755 and fsynced, not yet
/// installed. Dropping it deletes the temp file.
pub struct Staged {
    tmp: PathBuf,
    exe: PathBuf,
    installed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.installed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `<exe>.old`: where the previous binary is kept.
pub fn old_path(exe: &Path) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(".old");
    exe.with_file_name(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Downloads `offer` into a temp file beside `exe` and verifies it: size at most `limit`,
/// the offered SHA-256, an ELF executable of the same class and machine as `exe`. On any
/// failure the temp file is gone and nothing else was touched. `stop` disconnecting
/// abandons the download between reads.
pub fn stage(
    body: &mut dyn Read,
    offer: &Offer,
    exe: &Path,
    limit: u64,
    stop: Option<&Receiver<()>>,
) -> Result<Staged, UpdateError> {
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent_dir(exe).join(format!(".{name}.update.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&tmp)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    // From here on, dropping `staged` removes the temp file.
    let staged = Staged {
        tmp,
        exe: exe.to_path_buf(),
        installed: false,
    };
    let mut hash = Sha256::new();
    let mut head = Vec::with_capacity(ELF_HEAD);
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(stop) = stop {
            if matches!(stop.try_recv(), Err(TryRecvError::Disconnected)) {
                return Err(UpdateError::Stopped);
            }
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(UpdateError::Io {
                    what: "download broke off".to_string(),
                    source,
                })
            }
        };
        total += n as u64;
        if total > limit {
            return Err(UpdateError::TooLarge(limit));
        }
        let chunk = &buf[..n];
        if head.len() < ELF_HEAD {
            let take = (ELF_HEAD - head.len()).min(n);
            head.extend_from_slice(&chunk[..take]);
        }
        hash.update(chunk);
        file.write_all(chunk)
            .map_err(io_err(format!("cannot write {}", staged.tmp.display())))?;
    }
    let actual = hash.finish();
    if actual != offer.sha256 {
        return Err(UpdateError::Checksum {
            expected: hex(&offer.sha256),
            actual: hex(&actual),
        });
    }
    let mut mine = Vec::with_capacity(ELF_HEAD);
    File::open(exe)
        .and_then(|f| f.take(ELF_HEAD as u64).read_to_end(&mut mine))
        .map_err(io_err(format!("cannot read {}", exe.display())))?;
    check_elf(&head, &mine)?;
    file.set_permissions(fs::Permissions::from_mode(0o755))
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("cannot finish {}", staged.tmp.display())))?;
    Ok(staged)
}

impl Staged {
    /// Keeps the running binary as `<exe>.old` (a hard link, else a copy), renames the new one
    /// over `<exe>` and fsyncs the directory. Returns the `.old` path.
    pub fn install(mut self) -> Result<PathBuf, UpdateError> {
        let old = old_path(&self.exe);
        match fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(UpdateError::Io {
                    what: format!("cannot remove {}", old.display()),
                    source,
                })
            }
        }
        if fs::hard_link(&self.exe, &old).is_err() {
            fs::copy(&self.exe, &old)
                .and_then(|_| File::open(&old)?.sync_all())
                .map_err(io_err(format!(
                    "cannot keep the old binary as {}",
                    old.display()
                )))?;
        }
        fs::rename(&self.tmp, &self.exe).map_err(io_err(format!(
            "cannot rename the new binary over {}",
            self.exe.display()
        )))?;
        self.installed = true;
        File::open(parent_dir(&self.exe))
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!(
                "cannot sync {}",
                parent_dir(&self.exe).display()
            )))?;
        Ok(old)
    }
}

/// Bytes of the ELF header that tell class, byte order, type and machine.
const ELF_HEAD: usize = 20;

/// The new binary must be an ELF executable (or PIE) of the same class, byte order and
/// machine as the running one: a download for another architecture is refused here instead
/// of failing at exec.
fn check_elf(new: &[u8], running: &[u8]) -> Result<(), UpdateError> {
    let ident = |h: &[u8]| -> Option<(u8, u8, u16, u16)> {
        if h.len() < ELF_HEAD || &h[..4] != b"\x7fELF" {
            return None;
        }
        let half = |i: usize| match h[5] {
            1 => u16::from_le_bytes([h[i], h[i + 1]]),
            _ => u16::from_be_bytes([h[i], h[i + 1]]),
        };
        Some((h[4], h[5], half(16), half(18)))
    };
    let Some((class, data, kind, machine)) = ident(new) else {
        return Err(UpdateError::NotExecutable("no ELF header"));
    };
    if kind != 2 && kind != 3 {
        return Err(UpdateError::NotExecutable("not an executable ELF file"));
    }
    match ident(running) {
        Some((c, d, _, m)) if (c, d, m) == (class, data, machine) => Ok(()),
        Some(_) => Err(UpdateError::NotExecutable(
            "built for another machine than this agent",
        )),
        // The running binary is not ELF (not Linux?): nothing to compare with.
        None => Ok(()),
    }
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    /// Where the previous binary is kept.
    pub old: PathBuf,
    /// The first line the new binary's `--version` printed.
    pub reports: String,
    /// Whether the download's signature was verified with the release key.
    pub signed: bool,
}

/// Holds `offer` to `policy` (against this build's version), downloads and verifies it,
/// checks its release signature when the policy has a key, runs it once (`--version`), leaves
/// the trial marker for its first start, and installs it over `exe`.
pub fn download_and_install(
    download: &UreqHttp,
    offer: &Offer,
    exe: &Path,
    policy: &Policy,
    stop: Option<&Receiver<()>>,
) -> Result<Installed, UpdateError> {
    let ours = Version::ours();
    let (_, key) = policy
        .vet(&offer.url, &offer.version, &ours)
        .map_err(UpdateError::Trust)?;
    let mut body = download
        .get_url_reader(&offer.url, DOWNLOAD_TIMEOUT)
        .map_err(UpdateError::Download)?;
    let staged = stage(&mut body, offer, exe, MAX_BINARY_BYTES, stop)?;
    drop(body);
    if let Some(key) = key {
        let mut sig = Vec::new();
        download
            .get_url_reader(&trust::signature_url(&offer.url), DEFAULT_TIMEOUT)
            .map_err(UpdateError::SignatureDownload)?
            .take(trust::MAX_SIGNATURE_BYTES)
            .read_to_end(&mut sig)
            .map_err(io_err("the release signature broke off"))?;
        trust::verify_signature(key, &offer.version, &offer.sha256, &sig)
            .map_err(UpdateError::Trust)?;
    }
    let reports = trial::trial_run(&staged.tmp).map_err(UpdateError::Trial)?;
    let marker = Marker {
        version: offer.version.trim().to_string(),
        from: ours.to_string(),
        sha256: offer.sha256,
        attempts: 0,
        failed: None,
    };
    marker.write(exe).map_err(io_err(format!(
        "cannot write {}",
        trial::marker_path(exe).display()
    )))?;
    let old = staged.install().inspect_err(|_| {
        let _ = trial::remove_marker(exe);
    })?;
    Ok(Installed {
        old,
        reports,
        signed: key.is_some(),
    })
}

/// What `main` does after the agent shut down for an update: exec the new binary, or after
/// a rollback, the restored one.
#[derive(Debug)]
pub struct Restart {
    pub exe: PathBuf,
    /// The kept previous binary (an update); `None` after a rollback.
    pub old: Option<PathBuf>,
}

impl Restart {
    /// Replaces this process with `exe`, same argv, with `ASSISTD_UPDATE_PENDING=<old>` added
    /// to the environment after an update. Call it after every thread has
    /// ended and the state-dir lock is closed (its fd is `O_CLOEXEC` anyway). If the exec of a
    /// new binary fails, the old one is renamed back (the trial marker says why) and exec'd
    /// instead. Returns only when that fails too.
    pub fn exec(self) -> io::Error {
        let Some(old) = self.old else {
            log::info!(
                "phase=update re-executing the restored binary {}",
                self.exe.display()
            );
            log::logger().flush();
            return reexec(&self.exe, None);
        };
        log::info!(
            "phase=update re-executing {} (previous binary kept as {})",
            self.exe.display(),
            old.display()
        );
        log::logger().flush();
        let e = reexec(&self.exe, Some(&old));
        log::error!(
            "phase=update cannot execute the new binary {} ({e}); restoring {}",
            self.exe.display(),
            old.display()
        );
        let reason = format!("the new binary cannot be executed ({e})");
        let restored = match Marker::read(&self.exe) {
            Ok(Some(marker)) => trial::roll_back(&self.exe, &marker, &reason),
            _ => fs::rename(&old, &self.exe)
                .and_then(|()| File::open(parent_dir(&self.exe))?.sync_all()),
        };
        if let Err(e) = restored {
            log::error!("phase=update cannot restore the previous binary: {e}");
            return e;
        }
        log::logger().flush();
        reexec(&self.exe, None)
    }
}

/// Execs `exe` with this process's argv and environment, `ASSISTD_UPDATE_PENDING=<old>`
/// added when `pending` is set (and removed otherwise). Returns only on failure.
pub fn reexec(exe: &Path, pending: Option<&Path>) -> io::Error {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != PENDING_ENV)
        .collect();
    if let Some(old) = pending {
        env.push((PENDING_ENV.into(), old.as_os_str().to_os_string()));
    }
    execve(exe, &args, &env)
}

fn execve(path: &Path, args: &[OsString], env: &[(OsString, OsString)]) -> io::Error {
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = cstr(path.as_os_str())?;
        let argv = args.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstr(&kv)
            })
            .collect::<io::Result<_>>()?;
        Ok((path, argv, envp))
    };
    let (path, argv, envp) = match build() {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: every pointer refers to a NUL-terminated CString that outlives the call, and
    // both arrays end with a null pointer. execve only returns on failure.
    unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    io::Error::last_os_error()
}

/// Takes `ASSISTD_UPDATE_PENDING` out of the environment, so that tasks do not inherit it.
/// Call it before any thread exists (it changes the process environment).
pub fn take_pending() -> Option<PathBuf> {
    let old = std::env::var_os(PENDING_ENV)?;
    std::env::remove_var(PENDING_ENV);
    (!old.is_empty()).then(|| PathBuf::from(old))
}

/// Settings of the updater thread.
#[derive(Clone, Debug)]
pub struct UpdaterConfig {
    /// Check this often (first check one interval after start); `None`: never check.
    pub interval: Option<Duration>,
    /// `allow_self_update`: install offers, or only log them.
    pub apply: bool,
    /// The running executable (resolved at start: after the rename `/proc/self/exe` names
    /// a deleted file).
    pub exe: PathBuf,
    /// Sent as `os_version`.
    pub os_version: String,
    /// Set when this process is the result of an update: the previous binary, deleted once
    /// the startup fetch succeeded.
    pub pending_old: Option<PathBuf>,
    /// The trial in progress (`trial::first_start` found this process to be the new binary's
    /// first start) and when it ends: no successful startup fetch by then rolls it back.
    pub trial: Option<(Marker, Instant)>,
    /// The rules offers are held to; the updater never sets `allow_downgrade`.
    pub policy: Policy,
    /// The state dir, where versions that failed here are remembered.
    pub state_root: PathBuf,
}

/// The handles the updater thread needs, built by `cli`.
pub struct UpdaterParts {
    pub http: Arc<dyn Http>,
    pub download: UreqHttp,
    pub gate: Arc<UpdateGate>,
    pub registry: Arc<Registry>,
    pub startup: Arc<StartupDone>,
    /// Disconnects when shutdown begins.
    pub stop: Receiver<()>,
    pub cfg: UpdaterConfig,
    /// Set while an update holds the gate (spec §1.6 `_criticalActionRunning`): the kick
    /// listener answers `reject:` meanwhile.
    pub critical: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts the updater thread. Its result is `Some(Restart)` when it installed an update and
/// started the shutdown that should end in a re-exec.
pub fn spawn(parts: UpdaterParts) -> io::Result<JoinHandle<Option<Restart>>> {
    thread::Builder::new()
        .name("updater".to_string())
        .spawn(move || Updater { p: parts }.run())
}

struct Updater {
    p: UpdaterParts,
}

/// How the wait for the startup fetch ended.
#[derive(Debug, PartialEq, Eq)]
enum Startup {
    Done,
    Stopped,
    /// The deadline passed first.
    Late,
}

/// Blocks until the startup fetch has succeeded, `stop` disconnects, or `deadline` (`None`:
/// none) passes; no wakeups meanwhile, however long the server stays away.
fn wait_startup(startup: &StartupDone, stop: &Receiver<()>, deadline: Option<Instant>) -> Startup {
    let done = startup.channel();
    let deadline = match deadline {
        Some(at) => crossbeam_channel::at(at),
        None => crossbeam_channel::never(),
    };
    let or = |other| {
        if startup.is_done() {
            Startup::Done
        } else {
            other
        }
    };
    // Biased: when both happened, the update is confirmed.
    select_biased! {
        recv(done) -> _ => Startup::Done,
        recv(stop) -> _ => or(Startup::Stopped),
        recv(deadline) -> _ => or(Startup::Late),
    }
}

/// `stop` disconnected (shutdown) while waiting `d`.
fn stopped(stop: &Receiver<()>, d: Duration) -> bool {
    matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Disconnected))
}

impl Updater {
    fn run(self) -> Option<Restart> {
        if let Some(old) = self.p.cfg.pending_old.clone() {
            match self.commit(&old) {
                Commit::Kept => {}
                Commit::Stopped => return None,
                Commit::RolledBack(restart) => return Some(restart),
            }
        }
        let interval = self.p.cfg.interval?;
        let ours = Version::ours();
        loop {
            if stopped(&self.p.stop, interval) {
                return None;
            }
            let offer = match check(
                self.p.http.as_ref(),
                &self.p.cfg.os_version,
                Some(&self.p.stop),
            ) {
                Ok(Some(offer)) => offer,
                Ok(None) => {
                    log::debug!("phase=update no update offered");
                    continue;
                }
                Err(e) => {
                    log::warn!("phase=update {}", crate::error_chain::error_chain(&e));
                    continue;
                }
            };
            log::info!(
                "phase=update update offered: {} from {}",
                offer.version,
                trust::redact_url(&offer.url)
            );
            if !self.p.cfg.apply {
                log::info!("phase=update not installing it: allow_self_update is false");
                continue;
            }
            // Decided before waiting for the gate: an offer that is refused anyway must not
            // hold up fetches.
            let refused =
                if trial::is_refused(&trial::refused(&self.p.cfg.state_root), &offer.version) {
                    Err(UpdateError::FailedBefore(offer.version.clone()))
                } else {
                    self.p
                        .cfg
                        .policy
                        .vet(&offer.url, &offer.version, &ours)
                        .map(|_| ())
                        .map_err(UpdateError::Trust)
                };
            let result = refused.and_then(|()| self.apply(&offer));
            match result {
                Ok(restart) => return Some(restart),
                Err(UpdateError::Stopped) => return None,
                Err(e) => {
                    log::error!(
                        "phase=update not updated, the agent keeps running as it is: {}",
                        crate::error_chain::error_chain(&e)
                    );
                    // A binary that does not even run would fail the same way at every check.
                    if matches!(e, UpdateError::Trial(_)) {
                        if let Err(e) =
                            trial::remember_refused(&self.p.cfg.state_root, &offer.version)
                        {
                            log::warn!("phase=update cannot remember the failed version: {e}");
                        }
                    }
                }
            }
        }
    }

    /// After an update: once the startup fetch worked, the previous binary and the trial
    /// marker are no longer needed. During a trial, no successful startup fetch within the
    /// trial window rolls the update back; a shutdown first leaves the marker, so the next
    /// start rolls it back.
    fn commit(&self, old: &Path) -> Commit {
        let exe = &self.p.cfg.exe;
        // Only ever the file an update of this executable left: the variable comes from the
        // environment, and deleting whatever it names would be a way to delete any file.
        if old != old_path(exe) {
            log::warn!(
                "phase=update ignoring {PENDING_ENV}={}: not the kept binary of {}",
                old.display(),
                exe.display()
            );
            return Commit::Kept;
        }
        if self.p.cfg.trial.is_none() {
            log::info!(
                "phase=update started after an update; {} is kept until the startup fetch succeeds",
                old.display()
            );
        }
        let deadline = self.p.cfg.trial.as_ref().map(|(_, at)| *at);
        match wait_startup(&self.p.startup, &self.p.stop, deadline) {
            Startup::Done => {}
            Startup::Stopped => return Commit::Stopped,
            Startup::Late => return self.roll_back(old),
        }
        // Both removals before the line that says so.
        let removed = fs::remove_file(old);
        let unmarked = trial::remove_marker(exe);
        match removed {
            Ok(()) => log::info!(
                "phase=update update confirmed; removed the previous binary {}",
                old.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("phase=update cannot remove {}: {e}", old.display()),
        }
        if let Err(e) = unmarked {
            log::warn!("phase=update cannot remove the trial marker: {e}");
        }
        Commit::Kept
    }

    /// The trial window passed without a successful startup fetch: put `<exe>.old` back and
    /// restart into it through the ordinary shutdown.
    fn roll_back(&self, old: &Path) -> Commit {
        let exe = &self.p.cfg.exe;
        let Some((marker, _)) = &self.p.cfg.trial else {
            return Commit::Kept;
        };
        let reason = format!(
            "the new agent had no successful startup fetch within {} s",
            trial::TRIAL_WINDOW.as_secs()
        );
        log::error!(
            "phase=update {reason}; restoring {} over {}",
            old.display(),
            exe.display()
        );
        if let Err(e) = trial::roll_back(exe, marker, &reason) {
            log::error!("phase=update cannot restore the previous binary, keeping this one: {e}");
            return Commit::Kept;
        }
        log::info!("phase=update shutting down to restart into the previous binary");
        // SAFETY: kill with our own pid and a valid signal number.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        while self.p.stop.recv().is_ok() {}
        Commit::RolledBack(Restart {
            exe: exe.clone(),
            old: None,
        })
    }

    /// Why the updater must wait now, if it must (spec §1.6, plus periodic invocations for
    /// at most `PERIODIC_WAIT_CAP` from `since`).
    fn busy(&self, since: Instant) -> Option<&'static str> {
        if self.p.gate.fetching() > 0 {
            Some("a task-list fetch is under way")
        } else if self.p.registry.any_non_periodic_live() {
            Some("a task is queued or running")
        } else if self.p.registry.live_count() > 0 && since.elapsed() < PERIODIC_WAIT_CAP {
            Some("a periodic task is running")
        } else {
            None
        }
    }

    /// The gate dance of spec §1.6, then download, verify, install and start the shutdown.
    fn apply(&self, offer: &Offer) -> Result<Restart, UpdateError> {
        let since = Instant::now();
        let gate = self.p.gate.clone();
        let mut said = None;
        let _guard = loop {
            let why = match self.busy(since) {
                Some(why) => Some(why),
                None => match gate.try_lock() {
                    None => Some("a fetch holds the gate"),
                    Some(guard) => {
                        // Held: new fetches now fail after 2 s. Give list entries already
                        // handed to the control loop time to be dispatched, then look again.
                        if stopped(&self.p.stop, BUSY_PAUSE) {
                            return Err(UpdateError::Stopped);
                        }
                        match self.busy(since) {
                            None => break guard,
                            Some(why) => Some(why),
                        }
                    }
                },
            };
            if said != why {
                if let Some(why) = why {
                    log::info!("phase=update waiting: {why}");
                }
                said = why;
            }
            if stopped(&self.p.stop, BUSY_PAUSE) {
                return Err(UpdateError::Stopped);
            }
        };
        // Cleared again on every way out of here but the restart (the process execs then).
        let critical = CriticalGuard::set(&self.p.critical);
        let live = self.p.registry.live_count();
        if live > 0 {
            log::warn!(
                "phase=update {live} periodic invocation(s) still live after {} s; they get the shutdown grace period",
                PERIODIC_WAIT_CAP.as_secs()
            );
        }
        log::info!("phase=update downloading {}", trust::redact_url(&offer.url));
        let installed = download_and_install(
            &self.p.download,
            offer,
            &self.p.cfg.exe,
            &self.p.cfg.policy,
            Some(&self.p.stop),
        )?;
        let exe = self.p.cfg.exe.clone();
        let old = installed.old;
        log::info!(
            "phase=update installed {} at {} ({}; trial run: {}); previous binary kept as {}",
            offer.version,
            exe.display(),
            if installed.signed {
                "signature verified"
            } else {
                "no release key configured"
            },
            installed.reports,
            old.display()
        );
        if matches!(self.p.stop.try_recv(), Err(TryRecvError::Disconnected)) {
            log::info!("phase=update the agent is stopping; the new binary runs at the next start");
            return Err(UpdateError::Stopped);
        }
        // The ordinary shutdown path: the poll thread's signalfd turns this into `Terminate`, the
        // engine drains, `stop` disconnects. The gate stays held until then.
        log::info!("phase=update shutting down to restart into the new binary");
        // SAFETY: kill with our own pid and a valid signal number.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        while self.p.stop.recv().is_ok() {}
        std::mem::forget(critical);
        Ok(Restart {
            exe,
            old: Some(old),
        })
    }
}

/// How the confirmation of an update ended.
enum Commit {
    /// Confirmed, or nothing to confirm: the updater goes on with its checks.
    Kept,
    /// Shutdown came first.
    Stopped,
    /// Rolled back; the caller restarts into the restored binary.
    RolledBack(Restart),
}

/// Holds the critical-action flag for the duration of an install attempt.
struct CriticalGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> CriticalGuard<'a> {
    fn set(flag: &'a std::sync::atomic::AtomicBool) -> CriticalGuard<'a> {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        CriticalGuard(flag)
    }
}

impl Drop for CriticalGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// SHA-256, streaming: ring's (linked for TLS anyway), behind the three calls the download
/// loop makes.
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Sha256 {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// SHA-256 of `data` in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    hex(&h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;

    fn check_sha(input: &[u8], expected: &str) {
        assert_eq!(sha256_hex(input), expected);
    }

    #[test]
    fn the_startup_wait_ends_on_success_shutdown_or_the_trial_deadline() {
        let startup = Arc::new(StartupDone::new());
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| wait_startup(&startup, &stop, None));
            startup.mark_done();
            assert_eq!(waiter.join().expect("no panic"), Startup::Done);
        });
        assert_eq!(
            wait_startup(&startup, &stop, None),
            Startup::Done,
            "already done"
        );
        let past = Some(Instant::now());
        assert_eq!(
            wait_startup(&startup, &stop, past),
            Startup::Done,
            "done beats late"
        );

        let startup = StartupDone::new();
        assert_eq!(wait_startup(&startup, &stop, past), Startup::Late);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| wait_startup(&startup, &stop, None));
            drop(stop_tx);
            assert_eq!(
                waiter.join().expect("no panic"),
                Startup::Stopped,
                "shutdown first"
            );
        });
    }

    #[test]
    fn sha256_known_vectors() {
        check_sha(
            b"",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        check_sha(
            b"abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        );
        check_sha(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        );
        check_sha(
            b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
        );
        check_sha(
            &vec![b'a'; 1_000_000],
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        );
    }

    #[test]
    fn sha256_is_the_same_in_any_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = sha256_hex(&data);
        for step in [1, 3, 55, 56, 63, 64, 65, 999] {
            let mut h = Sha256::new();
            for chunk in data.chunks(step) {
                h.update(chunk);
            }
            assert_eq!(hex(&h.finish()), whole, "chunks of {step}");
        }
    }

    const SHA_A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn offers_are_read_leniently_and_refused_without_a_sha256() {
        assert_eq!(
            parse_offer(br#"{"flag":0,"need_update":0}"#).ok(),
            Some(None)
        );
        assert_eq!(parse_offer(br#"{}"#).ok(), Some(None));
        let offer = parse_offer(
            format!(
                r#"{{"need_update":1,"next_interval":1800,"update_info":{{"file_name":"assistd","md5":"x","url":"http://h/a","sha256":"{}"}}}}"#,
                SHA_A.to_uppercase()
            )
            .as_bytes(),
        )
        .expect("valid")
        .expect("offered");
        assert_eq!(offer.url, "http://h/a");
        assert_eq!(hex(&offer.sha256), SHA_A);
        assert_eq!(offer.version, "", "file_name is not a version");
        let with_version = format!(
            r#"{{"need_update":true,"update_info":{{"url":"u","sha256":"{SHA_A}","version":"0.2.0"}}}}"#
        );
        assert_eq!(
            parse_offer(with_version.as_bytes())
                .expect("valid")
                .expect("offered")
                .version,
            "0.2.0"
        );
        let refused = |body: &str| match parse_offer(body.as_bytes()) {
            Err(UpdateError::BadOffer(_)) => {}
            other => panic!("{body}: {other:?}"),
        };
        refused(r#"{"need_update":1,"update_info":{"url":"u","md5":"abc"}}"#);
        refused(r#"{"need_update":1,"update_info":{"url":"u","sha256":"abc"}}"#);
        refused(&format!(
            r#"{{"need_update":1,"update_info":{{"sha256":"{SHA_A}"}}}}"#
        ));
        assert!(matches!(
            parse_offer(b"success"),
            Err(UpdateError::Decode(_))
        ));
    }

    #[test]
    fn the_check_body_has_the_reference_fields() {
        let v: serde_json::Value = serde_json::from_slice(&check_body("Linux_6.1")).expect("json");
        assert_eq!(v["os"], "linux");
        assert_eq!(v["os_version"], "Linux_6.1");
        assert_eq!(v["app_id"], "assistd");
        assert_eq!(v["app_version"], env!("CARGO_PKG_VERSION"));
        assert!(v["arch"].as_str().is_some_and(|a| !a.is_empty()));
    }

    /// A directory with a fake installed executable: the test binary's own ELF header and a
    /// marker, so the machine check has something real to compare with.
    fn installed(name: &str) -> (TempDir, PathBuf, Vec<u8>) {
        let dir = TempDir::new(name);
        let mut head = Vec::new();
        File::open(std::env::current_exe().expect("exe"))
            .and_then(|f| f.take(64).read_to_end(&mut head))
            .expect("read own header");
        let exe = dir.path().join("assistd");
        let mut old = head.clone();
        old.extend_from_slice(b"old binary");
        fs::write(&exe, &old).expect("write exe");
        (dir, exe, head)
    }

    fn offer_for(bytes: &[u8]) -> Offer {
        let mut h = Sha256::new();
        h.update(bytes);
        Offer {
            url: "http://h/new".to_string(),
            sha256: h.finish(),
            version: "test".to_string(),
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_good_download_is_installed_and_the_old_binary_kept() {
        let (dir, exe, head) = installed("update-good");
        let before = fs::read(&exe).expect("read");
        let mut new = head.clone();
        new.extend_from_slice(b"new binary");
        let staged = stage(&mut &new[..], &offer_for(&new), &exe, 1 << 20, None).expect("staged");
        assert_eq!(
            fs::read(&exe).expect("read"),
            before,
            "staging changes nothing"
        );
        let old = staged.install().expect("installed");
        assert_eq!(old, dir.path().join("assistd.old"));
        assert_eq!(fs::read(&exe).expect("read"), new);
        assert_eq!(fs::read(&old).expect("read"), before);
        let mode = fs::metadata(&exe).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(listing(dir.path()), ["assistd", "assistd.old"]);
    }

    #[test]
    fn bad_downloads_are_refused_and_leave_nothing_behind() {
        let (dir, exe, head) = installed("update-bad");
        let before = fs::read(&exe).expect("read");
        let mut new = head.clone();
        new.extend_from_slice(b"new binary");

        let mut wrong = offer_for(&new);
        wrong.sha256[0] ^= 1;
        let r = stage(&mut &new[..], &wrong, &exe, 1 << 20, None);
        assert!(
            matches!(r, Err(UpdateError::Checksum { .. })),
            "{:?}",
            r.err()
        );

        let r = stage(&mut &new[..], &offer_for(&new), &exe, 16, None);
        assert!(matches!(r, Err(UpdateError::TooLarge(16))), "{:?}", r.err());

        let script = b"#!/bin/sh\necho not elf\n";
        let r = stage(&mut &script[..], &offer_for(script), &exe, 1 << 20, None);
        assert!(
            matches!(r, Err(UpdateError::NotExecutable(_))),
            "{:?}",
            r.err()
        );

        let mut other_machine = new.clone();
        other_machine[18] ^= 0x40;
        let r = stage(
            &mut &other_machine[..],
            &offer_for(&other_machine),
            &exe,
            1 << 20,
            None,
        );
        assert!(
            matches!(r, Err(UpdateError::NotExecutable(_))),
            "{:?}",
            r.err()
        );

        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        let r = stage(&mut &new[..], &offer_for(&new), &exe, 1 << 20, Some(&stop));
        assert!(matches!(r, Err(UpdateError::Stopped)), "{:?}", r.err());

        assert_eq!(fs::read(&exe).expect("read"), before);
        assert_eq!(listing(dir.path()), ["assistd"]);
    }

    #[test]
    fn a_second_update_replaces_the_kept_binary() {
        let (dir, exe, head) = installed("update-twice");
        for marker in [&b"one"[..], b"two"] {
            let mut new = head.clone();
            new.extend_from_slice(marker);
            stage(&mut &new[..], &offer_for(&new), &exe, 1 << 20, None)
                .expect("staged")
                .install()
                .expect("installed");
        }
        assert!(fs::read(&exe).expect("read").ends_with(b"two"));
        assert!(fs::read(old_path(&exe)).expect("read").ends_with(b"one"));
        assert_eq!(listing(dir.path()), ["assistd", "assistd.old"]);
    }
}
