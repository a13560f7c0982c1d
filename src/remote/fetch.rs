//! The fetch thread of remote mode (spec §1.3–§1.6, §2.4): it asks the server for the task list
//! on startup (retrying every 3 s until it succeeds) and on every kick, coalesces bursts of kicks,
//! cooperates with the updater through the `UpdateGate`, and turns the list into `SourceEvent`s.
//! It never runs, schedules or stops a task itself and never touches the registry: the engine does.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{after, at, never, select_biased, Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::model::{decode_task_list, ModelError, SendFileTaskInfo, SessionTaskInfo, TaskList};
use crate::remote::transport::{
    query_escape, with_retries, Http, TransportError, DEFAULT_TIMEOUT, MAX_BODY_LEN,
    RETRY_ATTEMPTS, RETRY_PAUSE, TASK_LIST_TIMEOUT,
};
use crate::schedule::Zone;
use crate::source::SourceEvent;

/// Pause between startup-fetch attempts and before the second kickoff attempt (spec §1.2).
pub const FETCH_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// How long a fetch waits for the updater's lock before giving up (spec §1.3 step 2).
pub const UPDATER_WAIT: Duration = Duration::from_secs(2);
/// Rounds of `code: 408` answers before the last list is taken as it is (spec §2.4).
pub const MAX_408_ROUNDS: u32 = 4;
/// The largest task list decoded (16 MiB); a longer answer is refused unread past this size,
/// since decoding it could take memory far beyond its length. The transport reads no more
/// than this plus one byte (`transport::MAX_BODY_LEN`).
pub const MAX_TASK_LIST_LEN: usize = MAX_BODY_LEN;

const TASK_LIST_PATH: &str = "/luban/api/v1/task/list";
const SESSION_LIST_PATH: &str = "/luban/api/v1/session/list";
const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Which list a fetch asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchKind {
    /// `task/list` (run, stop, test, file, session entries).
    Normal,
    /// `session/list` (spec §2.3 E3), for `kick_vm session start <id>`.
    Session,
}

/// A request for one fetch: what the kick listener, SIGHUP and the poll timer send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub kind: FetchKind,
    /// The task (or channel) id the kick named, sent as `taskId=` (`channelId=` for sessions).
    pub task_id: Option<String>,
}

impl FetchRequest {
    /// A plain `kick_vm`.
    pub fn kick() -> FetchRequest {
        FetchRequest {
            kind: FetchKind::Normal,
            task_id: None,
        }
    }

    /// `kick_vm task run|stop <id>` and `kick_vm file create|stop <id>`.
    pub fn task(task_id: impl Into<String>) -> FetchRequest {
        FetchRequest {
            kind: FetchKind::Normal,
            task_id: Some(task_id.into()),
        }
    }

    /// `kick_vm session start <channelId>`.
    pub fn session(channel_id: impl Into<String>) -> FetchRequest {
        FetchRequest {
            kind: FetchKind::Session,
            task_id: Some(channel_id.into()),
        }
    }
}

/// The gate between fetches and the updater (spec §1.6): the updater holds `lock` while it
/// replaces the agent; a fetch waits for it at most 2 s, releases it at once, and counts itself
/// in `fetching` for its whole duration, which the updater checks before it takes the lock.
#[derive(Default)]
pub struct UpdateGate {
    lock: Mutex<()>,
    fetching: AtomicI32,
}

/// One fetch counted in the gate; the count drops with it.
pub struct Fetching<'a>(&'a UpdateGate);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.0.fetching.fetch_sub(1, Ordering::SeqCst);
    }
}

impl UpdateGate {
    pub fn new() -> UpdateGate {
        UpdateGate::default()
    }

    /// For the updater: the lock, if nobody holds it. Fetches fail with `UpdaterBusy` while
    /// the guard lives.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, ()>> {
        self.lock.try_lock()
    }

    /// For the updater: how many fetches are under way.
    pub fn fetching(&self) -> i32 {
        self.fetching.load(Ordering::SeqCst)
    }

    /// For a fetch: passes the gate within `wait`, or `None` when the updater holds it.
    pub fn enter(&self, wait: Duration) -> Option<Fetching<'_>> {
        // The lock is only a gate: taken and released at once (spec §1.3 steps 2-3).
        drop(self.lock.try_lock_for(wait)?);
        self.fetching.fetch_add(1, Ordering::SeqCst);
        Some(Fetching(self))
    }
}

/// "The startup fetch has succeeded", for whoever needs to wait for it (the Go agent's
/// `_startupFetchedDone` channel): a `Condvar` for plain waits, and a channel that
/// disconnects at that moment, for waits that must also watch another channel (`select!`).
pub struct StartupDone {
    done: Mutex<bool>,
    changed: Condvar,
    /// Dropped (taken) when the startup fetch succeeds, which disconnects `done_rx`.
    done_tx: Mutex<Option<Sender<()>>>,
    done_rx: Receiver<()>,
}

impl Default for StartupDone {
    fn default() -> StartupDone {
        let (tx, rx) = crossbeam_channel::bounded(0);
        StartupDone {
            done: Mutex::new(false),
            changed: Condvar::new(),
            done_tx: Mutex::new(Some(tx)),
            done_rx: rx,
        }
    }
}

impl StartupDone {
    pub fn new() -> StartupDone {
        StartupDone::default()
    }

    pub fn is_done(&self) -> bool {
        *self.done.lock()
    }

    pub(crate) fn mark_done(&self) {
        *self.done.lock() = true;
        self.changed.notify_all();
        // Nothing is ever sent: dropping the only sender is the message.
        drop(self.done_tx.lock().take());
    }

    /// A receiver that never gets a message and disconnects when the startup fetch succeeds
    /// (at once if it has): `recv(startup.channel()) -> _` in a `select!` is "until done".
    pub fn channel(&self) -> Receiver<()> {
        self.done_rx.clone()
    }

    /// Waits until the startup fetch has succeeded or `timeout` passes; true when it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        // A timeout past the end of `Instant` waits without a deadline.
        let deadline = Instant::now().checked_add(timeout);
        let mut done = self.done.lock();
        while !*done {
            match deadline {
                Some(d) => {
                    if self.changed.wait_until(&mut done, d).timed_out() {
                        break;
                    }
                }
                None => self.changed.wait(&mut done),
            }
        }
        *done
    }
}

/// True only for the first agent start since the OS booted (spec §1.5): the flag file lives in
/// RAM (`/dev/shm`) and is created by the first start. Call once per process and keep the answer.
pub fn detect_cold_start(flag: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(flag)
    {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            log::warn!(
                "phase=startup cannot create the cold-start flag {} ({e}); assuming not a cold start",
                flag.display()
            );
            false
        }
    }
}

/// Why a task list could not be had.
#[derive(Debug)]
pub enum FetchError {
    /// No usable answer after the retries (unreachable, or HTTP > 400): retried later.
    Transport(TransportError),
    /// Answered, but not a task list: logged; the next fetch may do better.
    Decode(ModelError),
    /// Answered with more than `MAX_TASK_LIST_LEN` bytes: refused before decoding and
    /// logged, as a decode error is; the next fetch asks again.
    TooLarge,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Transport(_) => f.write_str("task list request failed"),
            FetchError::Decode(_) => f.write_str("task list is not valid"),
            FetchError::TooLarge => write!(
                f,
                "task list is larger than {MAX_TASK_LIST_LEN} bytes; refused without decoding"
            ),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Transport(e) => Some(e),
            FetchError::Decode(e) => Some(e),
            FetchError::TooLarge => None,
        }
    }
}

/// What one fetch came to (the reference's `Fetch` return value, typed).
#[derive(Debug)]
pub enum FetchOutcome {
    /// Entries handed on (run + stop + session + file; test entries are not counted).
    Fetched(usize),
    /// The updater held the gate for 2 s (the reference's -7); no request was made.
    UpdaterBusy,
    Failed(FetchError),
}

/// Which fetch of spec §1.3 this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Startup { cold_start: bool },
    Kickoff,
}

/// The task-list request target (spec §2.3 E1–E3); `now` gives `currentTime` and the offset.
pub fn list_path(reason: Reason, req: &FetchRequest, now: DateTime<Utc>, zone: &Zone) -> String {
    if req.kind == FetchKind::Session {
        return match &req.task_id {
            Some(id) => format!("{SESSION_LIST_PATH}?channelId={id}"),
            None => SESSION_LIST_PATH.to_string(),
        };
    }
    let mut q = match reason {
        Reason::Startup { cold_start } => {
            format!("{TASK_LIST_PATH}?reason=startup&cold_start={cold_start}")
        }
        Reason::Kickoff => format!("{TASK_LIST_PATH}?reason=kickoff"),
    };
    if let Some(id) = &req.task_id {
        q.push_str("&taskId=");
        q.push_str(id);
    }
    q.push_str(&format!(
        "&currentTime={}&offset={}&timeZone={}",
        now.timestamp_millis(),
        zone.offset_secs_at(now),
        query_escape(&zone.name())
    ));
    q
}

/// Send-file and session entries of a task list. The send-file and session work plugs in here;
/// `Unsupported` answers each entry with a failure report.
pub trait ExtraTasks: Send {
    /// Called synchronously, in list order, before any run entry is dispatched (spec §1.3).
    fn send_files(&mut self, files: Vec<SendFileTaskInfo>);
    /// Called after the files; implementations run sessions off this thread (spec §8.2).
    fn sessions(&mut self, sessions: Vec<SessionTaskInfo>);
}

/// The agent's `ExtraTasks`: send-file tasks are written and reported (spec §8.1); sessions
/// go to the session table, or without one are answered as `Unsupported` does.
pub struct HostExtras {
    pub http: Arc<dyn Http>,
    /// Where session entries go; `None` answers each with `Unknown_error`.
    pub sessions: Option<crate::remote::session::SessionHandle>,
    pub send_file: crate::remote::sendfile::SendFileConfig,
    /// Where a send-file report the server did not take goes, to be re-sent.
    pub spool: Option<crate::remote::spool::SpoolWriter>,
    /// The signature check of a send-file entry, before anything is written (strict mode
    /// refuses unsigned entries); `None` checks nothing but the content's MD5.
    pub verify_file: Option<FileVerifier>,
}

/// See `HostExtras::verify_file`.
pub type FileVerifier = Box<dyn Fn(&SendFileTaskInfo) -> Result<(), crate::runner::Invalid> + Send>;

impl ExtraTasks for HostExtras {
    fn send_files(&mut self, files: Vec<SendFileTaskInfo>) {
        for file in files {
            let verdict = self.verify_file.as_ref().map_or(Ok(()), |v| v(&file));
            let result = match verdict {
                Ok(()) => {
                    crate::remote::sendfile::handle_send_file(&*self.http, &file, &self.send_file)
                }
                Err(why) => {
                    log::warn!(
                        "task={} phase=sendfile refused: {}",
                        file.task_id,
                        why.value
                    );
                    crate::remote::sendfile::report_refused(
                        &*self.http,
                        &file,
                        crate::remote::sendfile::SendFileCode::InvalidSignature,
                    )
                }
            };
            if let (Err(_), Some(spool)) = (&result.report, &self.spool) {
                let req = crate::remote::spool::SpooledRequest {
                    path_and_query: crate::remote::sendfile::report_path(&file, result.code),
                    content_type: String::new(),
                    body: Vec::new(),
                    label: format!("task={} invoke_version=0 sendfile", file.task_id),
                };
                match spool.push(&req) {
                    Ok(name) => log::info!(
                        "task={} phase=sendfile report spooled as {name} for re-sending",
                        file.task_id
                    ),
                    Err(e) => log::error!(
                        "task={} phase=sendfile cannot spool the report ({e}); it is lost",
                        file.task_id
                    ),
                }
            }
        }
    }

    fn sessions(&mut self, sessions: Vec<SessionTaskInfo>) {
        match &self.sessions {
            // Never blocks: each session runs on its own thread.
            Some(handle) => sessions.into_iter().for_each(|s| handle.start(s)),
            None => Unsupported {
                http: self.http.clone(),
            }
            .sessions(sessions),
        }
    }
}

/// The default `ExtraTasks`: this build runs neither send-file nor session tasks, and says so
/// to the server instead of leaving the entries without an answer.
pub struct Unsupported {
    pub http: Arc<dyn Http>,
}

impl ExtraTasks for Unsupported {
    fn send_files(&mut self, files: Vec<SendFileTaskInfo>) {
        for file in files {
            log::warn!(
                "task={} invoke_version=0 phase=sendfile send-file tasks are not supported by this build; reporting failure",
                file.task_id
            );
            // errorcode 1 (EFileCreateFail, spec §8.1): the file was not created.
            let target = format!(
                "/luban/api/v1/task/finish?taskId={}&status=Failed&taskType=sendfile&errorcode=1",
                file.task_id
            );
            if let Err(e) =
                self.http
                    .post(&target, b"", "text/plain; charset=utf-8", DEFAULT_TIMEOUT)
            {
                log::warn!("task={} phase=sendfile cannot report: {e}", file.task_id);
            }
        }
    }

    fn sessions(&mut self, sessions: Vec<SessionTaskInfo>) {
        for session in sessions {
            log::warn!(
                "task={} invoke_version=0 phase=session sessions are not supported by this build; reporting failure",
                session.session_id
            );
            let target = format!(
                "/luban/api/v1/session/status?channelId={}&status=Failed&errorcode=Unknown_error",
                session.session_id
            );
            if let Err(e) =
                self.http
                    .post(&target, b"", "text/plain; charset=utf-8", DEFAULT_TIMEOUT)
            {
                log::warn!(
                    "task={} phase=session cannot report: {e}",
                    session.session_id
                );
            }
        }
    }
}

/// Settings of the fetch thread.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// The cold-start flag of this process (spec §1.5), sent on startup fetches.
    pub cold_start: bool,
    /// With no kick channel: fetch (kickoff) this often. `None` when kicks arrive.
    pub poll_interval: Option<Duration>,
    /// The host's zone, for `offset`/`timeZone`.
    pub zone: Zone,
    /// 3 s in production (spec §1.2).
    pub retry_interval: Duration,
    /// Pause between HTTP retries, 2 s in production (spec §2.2).
    pub http_retry_pause: Duration,
}

impl FetchConfig {
    pub fn new(cold_start: bool, poll_interval: Option<Duration>, zone: Zone) -> FetchConfig {
        FetchConfig {
            cold_start,
            poll_interval,
            zone,
            retry_interval: FETCH_RETRY_INTERVAL,
            http_retry_pause: RETRY_PAUSE,
        }
    }
}

/// Kicks waiting for the fetch thread: at most one pending per kind (rust-analyzer's
/// `OpQueue`). The fetch in flight is the thread itself. Two Normal kicks merge into one that
/// covers both: the same id stays, anything else becomes a plain kick, since a server that
/// scopes the list to `taskId=` would not send the other task until the next kick. For
/// sessions the newest wins.
#[derive(Default, Debug)]
pub struct PendingFetches {
    normal: Option<FetchRequest>,
    session: Option<FetchRequest>,
}

impl PendingFetches {
    pub fn push(&mut self, req: FetchRequest) {
        match req.kind {
            FetchKind::Normal => {
                self.normal = Some(match self.normal.take() {
                    Some(pending) if pending.task_id != req.task_id => FetchRequest::kick(),
                    _ => req,
                })
            }
            FetchKind::Session => self.session = Some(req),
        }
    }

    pub fn pop(&mut self) -> Option<FetchRequest> {
        self.normal.take().or_else(|| self.session.take())
    }
}

/// The fetch thread's state. `fetch` is one reference `Fetch` call; `run` is the thread.
pub struct Fetcher {
    http: Arc<dyn Http>,
    gate: Arc<UpdateGate>,
    startup: Arc<StartupDone>,
    events: Sender<SourceEvent>,
    extra: Box<dyn ExtraTasks>,
    cfg: FetchConfig,
    /// Disconnects at shutdown; every wait of this thread also watches it.
    stop: Receiver<()>,
    requests: Receiver<FetchRequest>,
    pending: PendingFetches,
}

/// The handles `Fetcher` needs, built by `cli` (or a test).
pub struct FetcherParts {
    pub http: Arc<dyn Http>,
    pub gate: Arc<UpdateGate>,
    pub startup: Arc<StartupDone>,
    pub events: Sender<SourceEvent>,
    pub extra: Box<dyn ExtraTasks>,
    pub cfg: FetchConfig,
    pub stop: Receiver<()>,
    pub requests: Receiver<FetchRequest>,
}

impl Fetcher {
    pub fn new(parts: FetcherParts) -> Fetcher {
        Fetcher {
            http: parts.http,
            gate: parts.gate,
            startup: parts.startup,
            events: parts.events,
            extra: parts.extra,
            cfg: parts.cfg,
            stop: parts.stop,
            requests: parts.requests,
            pending: PendingFetches::default(),
        }
    }

    /// One fetch, as the reference's `Fetch` once fetching is enabled: a startup fetch until
    /// one has succeeded, then a kickoff fetch with one more try after 3 s when it brought nothing.
    pub fn fetch(&mut self, req: &FetchRequest) -> FetchOutcome {
        let gate = self.gate.clone();
        let Some(_counted) = gate.enter(UPDATER_WAIT) else {
            log::warn!("phase=fetch fetching tasks is canceled: the updater is running");
            return FetchOutcome::UpdaterBusy;
        };
        if !self.startup.is_done() {
            let reason = Reason::Startup {
                cold_start: self.cfg.cold_start,
            };
            return match self.fetch_tasks(reason, req) {
                Ok(n) => {
                    self.startup.mark_done();
                    log::info!("phase=fetch startup fetch done: {n} task(s)");
                    FetchOutcome::Fetched(n)
                }
                Err(e) => {
                    log::warn!(
                        "phase=fetch startup fetch failed: {}",
                        crate::error_chain::error_chain(&e)
                    );
                    FetchOutcome::Failed(e)
                }
            };
        }
        let first = self.fetch_tasks(Reason::Kickoff, req);
        match &first {
            Ok(n) if *n > 0 => return FetchOutcome::Fetched(*n),
            Ok(_) => {}
            Err(e) => log::warn!(
                "phase=fetch kickoff fetch failed: {}",
                crate::error_chain::error_chain(e)
            ),
        }
        // Nothing came: one more try after 3 s (spec §1.3), unless a new kick arrives first,
        // which is a fetch of its own.
        select_biased! {
            recv(self.stop) -> _ => return outcome(first),
            recv(self.requests) -> r => {
                if let Ok(r) = r {
                    self.pending.push(r);
                }
                return outcome(first);
            }
            recv(after(self.cfg.retry_interval)) -> _ => {}
        }
        let second = self.fetch_tasks(Reason::Kickoff, req);
        if let Err(e) = &second {
            log::warn!(
                "phase=fetch kickoff fetch failed: {}",
                crate::error_chain::error_chain(e)
            );
        }
        outcome(second)
    }

    /// Fetches one list and hands every entry on: files, then sessions, then run, stop, test.
    fn fetch_tasks(&mut self, reason: Reason, req: &FetchRequest) -> Result<usize, FetchError> {
        let list = self.fetch_list(reason, req)?;
        for r in &list.rejected {
            log::warn!(
                "task={} invoke_version=? phase=fetch skipping a {} entry: {}",
                r.task_id,
                r.list,
                r.reason
            );
        }
        let TaskList {
            run,
            stop,
            test,
            files,
            sessions,
            ..
        } = list;
        let count = run.len() + stop.len() + files.len() + sessions.len();
        // An empty list is the common answer to a poll: keep it out of the info log.
        let level = if count + test.len() > 0 {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "phase=fetch reason={} {} run, {} stop, {} test, {} file, {} session",
            match reason {
                Reason::Startup { .. } => "startup",
                Reason::Kickoff => "kickoff",
            },
            run.len(),
            stop.len(),
            test.len(),
            files.len(),
            sessions.len()
        );
        if !files.is_empty() {
            self.extra.send_files(files);
        }
        if !sessions.is_empty() {
            self.extra.sessions(sessions);
        }
        let events = run
            .into_iter()
            .map(SourceEvent::Run)
            .chain(stop.into_iter().map(SourceEvent::Stop))
            .chain(test.into_iter().map(SourceEvent::Test));
        for event in events {
            if self.events.send(event).is_err() {
                log::warn!("phase=fetch the engine is gone; dropping the rest of the list");
                break;
            }
        }
        Ok(count)
    }

    /// POSTs the list request with the 1+3 rule; re-asks up to 4 rounds while the server
    /// answers `code: 408` (spec §2.4).
    fn fetch_list(&self, reason: Reason, req: &FetchRequest) -> Result<TaskList, FetchError> {
        let mut round = 1;
        loop {
            let target = list_path(reason, req, Utc::now(), &self.cfg.zone);
            let resp = with_retries(
                RETRY_ATTEMPTS,
                self.cfg.http_retry_pause,
                Some(&self.stop),
                || {
                    self.http
                        .post(&target, b"", JSON_CONTENT_TYPE, TASK_LIST_TIMEOUT)
                },
            )
            .map_err(FetchError::Transport)?;
            if resp.is_cut() || resp.body.len() > MAX_TASK_LIST_LEN {
                return Err(FetchError::TooLarge);
            }
            let list = decode_task_list(&resp.body).map_err(FetchError::Decode)?;
            if list.code != 408 || round >= MAX_408_ROUNDS {
                return Ok(list);
            }
            log::info!("phase=fetch server answered code 408; asking again (round {round})");
            round += 1;
            if matches!(
                self.stop.recv_timeout(self.cfg.http_retry_pause),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            ) {
                return Ok(list);
            }
        }
    }

    /// The thread body. Nothing is fetched before `enable` fires or disconnects (the first
    /// heartbeat, spec §1.1 steps 13-14); then the startup fetch, its 3 s retries, kicks and the
    /// poll timer. Ends when `stop` disconnects.
    pub fn run(mut self, enable: Receiver<()>) {
        let never_req = never();
        loop {
            select_biased! {
                recv(self.stop) -> _ => return,
                recv(enable) -> _ => break,
                recv(self.requests) -> r => match r {
                    Ok(_) => log::info!("phase=fetch fetching tasks is disabled: the network is not ready yet"),
                    Err(_) => self.requests = never_req.clone(),
                },
            }
        }
        if let Some(every) = self.cfg.poll_interval {
            log::info!(
                "phase=fetch no kick channel: polling the task list every {} s",
                every.as_secs()
            );
        }
        let mut retry_at = self.startup_attempt();
        let mut next_poll = self.next_poll();
        loop {
            let retry = retry_at.map(at).unwrap_or_else(never);
            let poll = next_poll.map(at).unwrap_or_else(never);
            select_biased! {
                recv(self.stop) -> _ => return,
                recv(retry) -> _ => {
                    retry_at = self.startup_attempt();
                }
                recv(self.requests) -> r => match r {
                    Ok(r) => self.pending.push(r),
                    Err(_) => self.requests = never_req.clone(),
                },
                recv(poll) -> _ => self.pending.push(FetchRequest::kick()),
            }
            // Kicks that arrived meanwhile become one more fetch, not one each.
            while let Ok(r) = self.requests.try_recv() {
                self.pending.push(r);
            }
            while let Some(req) = self.pending.pop() {
                self.fetch(&req);
                while let Ok(r) = self.requests.try_recv() {
                    self.pending.push(r);
                }
                next_poll = self.next_poll();
            }
            if self.startup.is_done() {
                retry_at = None;
            }
        }
    }

    /// When to poll next; `None` without polling, or when the configured interval
    /// (`poll_interval_secs`) reaches past the end of `Instant`.
    fn next_poll(&self) -> Option<Instant> {
        self.cfg
            .poll_interval
            .and_then(|d| Instant::now().checked_add(d))
    }

    /// One attempt of the startup fetch by the background retry; returns when to try again.
    fn startup_attempt(&mut self) -> Option<Instant> {
        if self.startup.is_done() {
            return None;
        }
        match self.fetch(&FetchRequest::kick()) {
            FetchOutcome::Fetched(_) if self.startup.is_done() => None,
            _ => Instant::now().checked_add(self.cfg.retry_interval),
        }
    }
}

fn outcome(result: Result<usize, FetchError>) -> FetchOutcome {
    match result {
        Ok(n) => FetchOutcome::Fetched(n),
        Err(e) => FetchOutcome::Failed(e),
    }
}

/// Starts the fetch thread. It ends when the `stop` sender of `parts` is dropped; a fetch under
/// way finishes its current HTTP attempt first (bounded by the 8 s request timeout).
pub fn spawn(parts: FetcherParts, enable: Receiver<()>) -> io::Result<JoinHandle<()>> {
    let fetcher = Fetcher::new(parts);
    thread::Builder::new()
        .name("fetch".to_string())
        .spawn(move || fetcher.run(enable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::transport::HttpResponse;
    use chrono::TimeZone;
    use crossbeam_channel::{bounded, unbounded};

    fn at_2024() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
            .single()
            .expect("valid")
    }

    #[test]
    fn list_paths() {
        let shanghai = crate::schedule::testing::zone("Asia/Shanghai");
        assert_eq!(
            list_path(Reason::Startup { cold_start: true }, &FetchRequest::kick(), at_2024(), &shanghai),
            "/luban/api/v1/task/list?reason=startup&cold_start=true&currentTime=1704164645000&offset=28800&timeZone=Asia%2FShanghai"
        );
        let gmt = Zone::parse("GMT+8:00").expect("zone");
        assert_eq!(
            list_path(Reason::Kickoff, &FetchRequest::task("t-1"), at_2024(), &gmt),
            "/luban/api/v1/task/list?reason=kickoff&taskId=t-1&currentTime=1704164645000&offset=28800&timeZone=GMT%2B8%3A00"
        );
        assert_eq!(
            list_path(
                Reason::Kickoff,
                &FetchRequest::session("c-1"),
                at_2024(),
                &gmt
            ),
            "/luban/api/v1/session/list?channelId=c-1"
        );
    }

    #[test]
    fn pending_fetches_keep_one_per_kind() {
        let mut q = PendingFetches::default();
        q.push(FetchRequest::task("a"));
        q.push(FetchRequest::session("s"));
        q.push(FetchRequest::session("t"));
        assert_eq!(q.pop(), Some(FetchRequest::task("a")));
        assert_eq!(
            q.pop(),
            Some(FetchRequest::session("t")),
            "sessions: newest wins"
        );
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn merged_normal_fetches_cover_both_ids() {
        let merged = |first: FetchRequest, second: FetchRequest| {
            let mut q = PendingFetches::default();
            q.push(first);
            q.push(second);
            let got = q.pop();
            assert_eq!(q.pop(), None);
            got
        };
        let (a, b, kick) = (
            || FetchRequest::task("a"),
            || FetchRequest::task("b"),
            FetchRequest::kick,
        );
        assert_eq!(merged(a(), b()), Some(kick()), "two ids: a plain kick");
        assert_eq!(merged(a(), a()), Some(a()));
        assert_eq!(merged(kick(), a()), Some(kick()), "a kick already covers a");
        assert_eq!(merged(a(), kick()), Some(kick()));
        assert_eq!(merged(kick(), kick()), Some(kick()));
        let mut q = PendingFetches::default();
        for r in [a(), b(), FetchRequest::task("c")] {
            q.push(r);
        }
        assert_eq!(q.pop(), Some(kick()), "stays a plain kick");
    }

    #[test]
    fn cold_start_is_true_once_per_flag() {
        let dir = std::env::temp_dir().join(format!("assistd-coldstart-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        assert!(detect_cold_start(&dir));
        assert!(!detect_cold_start(&dir));
        let _ = std::fs::remove_file(&dir);
    }

    use crate::remote::transport::testing::FakeHttp as Scripted;

    fn ok(body: &str) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse {
            status: 200,
            body: body.as_bytes().to_vec(),
        })
    }

    struct Harness {
        http: Arc<Scripted>,
        gate: Arc<UpdateGate>,
        startup: Arc<StartupDone>,
        events: Receiver<SourceEvent>,
        _stop: Sender<()>,
        _requests: Sender<FetchRequest>,
        fetcher: Fetcher,
    }

    fn harness(answers: Vec<Result<HttpResponse, TransportError>>) -> Harness {
        let http = Arc::new(Scripted::answering(answers).with_fallback(br#"{"code":200}"#));
        let gate = Arc::new(UpdateGate::new());
        let startup = Arc::new(StartupDone::new());
        let (events_tx, events) = unbounded();
        let (stop_tx, stop) = bounded(0);
        let (req_tx, requests) = unbounded();
        let mut cfg = FetchConfig::new(false, None, Zone::utc());
        cfg.retry_interval = Duration::ZERO;
        cfg.http_retry_pause = Duration::ZERO;
        let fetcher = Fetcher::new(FetcherParts {
            http: http.clone(),
            gate: gate.clone(),
            startup: startup.clone(),
            events: events_tx,
            extra: Box::new(Unsupported { http: http.clone() }),
            cfg,
            stop,
            requests,
        });
        Harness {
            http,
            gate,
            startup,
            events,
            _stop: stop_tx,
            _requests: req_tx,
            fetcher,
        }
    }

    #[test]
    fn a_fetch_while_the_updater_holds_the_gate_makes_no_request() {
        let mut h = harness(vec![]);
        let gate = h.gate.clone();
        let updater = gate.try_lock().expect("free");
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::UpdaterBusy
        ));
        assert!(h.http.paths().is_empty());
        assert_eq!(gate.fetching(), 0);
        drop(updater);
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Fetched(0)
        ));
        assert!(h.startup.is_done());
    }

    #[test]
    fn a_poll_interval_too_large_for_a_deadline_is_no_poll() {
        let mut h = harness(vec![]);
        h.fetcher.cfg.poll_interval = Some(Duration::from_secs(u64::MAX));
        let (enable_tx, enable) = bounded::<()>(0);
        drop(enable_tx);
        let fetcher = h.fetcher;
        let thread = std::thread::spawn(move || fetcher.run(enable));
        assert!(h.startup.wait_timeout(Duration::from_secs(u64::MAX)));
        drop(h._stop);
        thread.join().expect("the fetch thread did not panic");
    }

    #[test]
    fn the_startup_channel_disconnects_when_done() {
        let startup = StartupDone::new();
        let before = startup.channel();
        assert_eq!(
            before.try_recv(),
            Err(crossbeam_channel::TryRecvError::Empty)
        );
        startup.mark_done();
        assert!(startup.is_done() && startup.wait_timeout(Duration::ZERO));
        for rx in [before, startup.channel()] {
            assert_eq!(
                rx.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            );
        }
    }

    #[test]
    fn the_updater_sees_a_fetch_in_flight() {
        let gate = UpdateGate::new();
        let counted = gate.enter(UPDATER_WAIT).expect("free gate");
        assert_eq!(gate.fetching(), 1);
        drop(counted);
        assert_eq!(gate.fetching(), 0);
    }

    #[test]
    fn startup_until_success_then_kickoff_and_entries_in_order() {
        let list = r#"{"code":200,"instanceId":"i-1",
            "test":[{"task":{"taskID":"c","type":"RunShellScript"}}],
            "stop":[{"task":{"taskID":"b","type":"RunShellScript"}}],
            "run":[{"task":{"taskID":"a","type":"RunShellScript"}}],
            "session":[{"channelId":"s-1"}]}"#;
        let mut answers: Vec<_> = (0..4).map(|_| Err(TransportError::Status(500))).collect();
        answers.push(ok(list));
        let mut h = harness(answers);
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Failed(FetchError::Transport(_))
        ));
        assert!(!h.startup.is_done());
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Fetched(3)
        ));
        let ids: Vec<String> = h
            .events
            .try_iter()
            .map(|e| match e {
                SourceEvent::Run(t) => format!("run {}", t.task_id),
                SourceEvent::Stop(t) => format!("stop {}", t.task_id),
                SourceEvent::Test(t) => format!("test {}", t.task_id),
                SourceEvent::Removed(t) => format!("removed {}", t.task_id),
            })
            .collect();
        assert_eq!(ids, ["run a", "stop b", "test c"]);
        // An empty kickoff list gets one more try.
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Fetched(0)
        ));
        let seen = h.http.paths();
        let reasons: Vec<&str> = seen
            .iter()
            .map(|s| {
                if s.starts_with("/luban/api/v1/session/status") {
                    "session"
                } else if s.contains("reason=startup") {
                    "startup"
                } else {
                    "kickoff"
                }
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "startup", "startup", "startup", "startup", "startup", "session", "kickoff",
                "kickoff"
            ]
        );
        assert!(
            seen[5].ends_with("channelId=s-1&status=Failed&errorcode=Unknown_error"),
            "{}",
            seen[5]
        );
    }

    /// Spec §10.1 `testTrigerNextRetry`: 1 startup fetch and 20 kicks while the server fails
    /// are all `startup` (failed), one more succeeds as `startup`, and 20 kicks after it are
    /// `kickoff`: 42 fetches. Each failed fetch here is 1+3 HTTP attempts (the reference's
    /// test mocks the fetch itself, below the retries).
    #[test]
    fn the_42_fetch_sequence_of_the_reference() {
        let list = r#"{"code":200,"run":[{"task":{"taskID":"t","type":"RunShellScript"}}]}"#;
        let failures = 21 * (1 + 3);
        let mut answers: Vec<_> = (0..failures)
            .map(|_| Err(TransportError::Status(500)))
            .collect();
        answers.extend((0..21).map(|_| ok(list)));
        let mut h = harness(answers);
        let outcomes: Vec<&str> = (0..42)
            .map(|_| match h.fetcher.fetch(&FetchRequest::kick()) {
                FetchOutcome::Failed(_) => "failed",
                FetchOutcome::Fetched(1) => "fetched",
                _ => "other",
            })
            .collect();
        let mut expected = vec!["failed"; 21];
        expected.extend(vec!["fetched"; 21]);
        assert_eq!(outcomes, expected);
        let reasons: Vec<bool> = h
            .http
            .paths()
            .iter()
            .map(|p| p.contains("reason=startup"))
            .collect();
        assert_eq!(reasons.len(), failures + 21);
        let startup = reasons.iter().take_while(|s| **s).count();
        assert_eq!(
            startup,
            failures + 1,
            "every call up to the first success is startup"
        );
        assert!(
            reasons[startup..].iter().all(|s| !s),
            "every later call is kickoff"
        );
    }

    #[test]
    fn code_408_asks_again_up_to_four_rounds() {
        let mut h = harness((0..5).map(|_| ok(r#"{"code":408}"#)).collect());
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Fetched(0)
        ));
        assert_eq!(h.http.paths().len(), 4);
    }

    #[test]
    fn a_task_list_over_16_mib_is_refused_before_decoding() {
        // Valid JSON with one run entry, padded past the limit: decoding it would succeed, so
        // only the size check can refuse it.
        let entry = r#"{"code":200,"run":[{"task":{"taskID":"t-big","commandId":"c","type":"RunShellScript","command":"ZWNobw=="}}]}"#;
        let mut body = entry.as_bytes().to_vec();
        body.resize(MAX_TASK_LIST_LEN + 1, b' ');
        let big = Ok(HttpResponse { status: 200, body });
        let mut h = harness(vec![big]);
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Failed(FetchError::TooLarge)
        ));
        assert!(h.events.try_recv().is_err(), "nothing was handed on");
        assert!(!h.startup.is_done());
        assert_eq!(
            FetchError::TooLarge.to_string(),
            "task list is larger than 16777216 bytes; refused without decoding"
        );

        // Exactly at the limit it is decoded.
        let mut body = entry.as_bytes().to_vec();
        body.resize(MAX_TASK_LIST_LEN, b' ');
        let mut h = harness(vec![Ok(HttpResponse { status: 200, body })]);
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Fetched(1)
        ));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut h = harness(vec![ok("<html>")]);
        assert!(matches!(
            h.fetcher.fetch(&FetchRequest::kick()),
            FetchOutcome::Failed(FetchError::Decode(_))
        ));
        assert!(!h.startup.is_done());
    }
}
