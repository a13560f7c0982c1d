//! The report spool: final reports that the reference's burst (1 + 3 attempts, 2 s apart) could
//! not deliver are kept in `<state-dir>/spool/`, one file each, and re-sent by one thread until
//! the server takes them, across outages, restarts, SIGKILLs and reboots.
//!
//! A spooled file holds the exact request (path with its query, content type, body), so a
//! re-send is byte-identical to the burst's last attempt. The worker that owns the invocation
//! writes the file itself (atomically: temp + fsync + rename + directory fsync) before it
//! returns, so "spooled" means "on disk"; the spool thread only reads, sends and deletes.
//!
//! This module never builds a report and never decides what a report says; it only carries
//! requests that `reporter` (and send-file) already made.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select_biased, unbounded, Receiver, Sender};

use crate::fsutil;
use crate::remote::transport::{Http, HttpResponse, TransportError, DEFAULT_TIMEOUT};

/// The first re-send of a report comes no sooner than this after its burst's last attempt.
pub const FIRST_RESEND_DELAY: Duration = Duration::from_secs(10);
/// The pause after a failed re-send starts here and doubles up to `MAX_BACKOFF`; any request
/// to the server that succeeds resets it.
pub const MIN_BACKOFF: Duration = Duration::from_secs(10);
/// A re-send that fails right after one that went through is tried again this soon (the
/// reference's retry pause): one refused request in a stream the server takes is no outage.
/// A second failure in a row starts the backoff. (The soak: a server refusing one request in
/// ten drained a spool of 300 at 10 s a refusal.)
pub const QUICK_RETRY: Duration = Duration::from_secs(2);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The first line of every spool file: the format and its version.
const MAGIC: &str = "assistd-spool 1";
/// Spool files end in this; anything else in the directory (temp files of a write that a
/// crash interrupted, files set aside as unreadable) is not a report.
const SUFFIX: &str = ".report";
/// A final report written ahead of its first attempt (`SpoolWriter::write_ahead`): deleted once
/// the server takes it, handed to the thread as a `.report` when the burst fails. One left by
/// an agent that died mid-burst is sent at the next start like any spooled report.
const SENDING_SUFFIX: &str = ".sending";

/// How much the spool may hold (past either bound the oldest report is dropped and counted),
/// and how long a new report waits before its first re-send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    pub max_reports: usize,
    pub max_bytes: u64,
    /// `FIRST_RESEND_DELAY` outside tests.
    pub first_resend_delay: Duration,
}

/// One request to keep: what the burst's last attempt sent.
#[derive(Clone, PartialEq, Eq)]
pub struct SpooledRequest {
    pub path_and_query: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// For log lines: `task=… invoke_version=… finished`. Never part of the request.
    pub label: String,
}

impl fmt::Debug for SpooledRequest {
    // The body is task output: its length is enough in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} body_len={}", self.label, self.body.len())
    }
}

/// A spool file that cannot be read back as a request.
#[derive(Debug)]
pub enum SpoolFileError {
    Io(io::Error),
    Format(&'static str),
}

impl fmt::Display for SpoolFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolFileError::Io(_) => f.write_str("cannot read the spool file"),
            SpoolFileError::Format(what) => write!(f, "not a spool file: {what}"),
        }
    }
}

impl std::error::Error for SpoolFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolFileError::Io(e) => Some(e),
            SpoolFileError::Format(_) => None,
        }
    }
}

/// The file's bytes: the magic line, a JSON header line (path, content type, label), then the
/// body as it is. JSON escapes whatever a path or label holds, so no byte of them can end the
/// header early.
pub fn encode(req: &SpooledRequest) -> Vec<u8> {
    let header = serde_json::json!({
        "path": req.path_and_query,
        "content_type": req.content_type,
        "label": req.label,
    });
    let mut out = Vec::with_capacity(req.body.len() + req.path_and_query.len() + 64);
    out.extend_from_slice(MAGIC.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(header.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&req.body);
    out
}

pub fn decode(bytes: &[u8]) -> Result<SpooledRequest, SpoolFileError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_bytes())
        .and_then(|r| r.strip_prefix(b"\n"))
        .ok_or(SpoolFileError::Format("no spool header"))?;
    let end = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(SpoolFileError::Format("truncated header"))?;
    let header: serde_json::Value = serde_json::from_slice(&rest[..end])
        .map_err(|_| SpoolFileError::Format("header is not JSON"))?;
    let field = |name: &str| {
        header
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or(SpoolFileError::Format("header lacks a field"))
    };
    let path_and_query = field("path")?;
    if !path_and_query.starts_with('/') {
        return Err(SpoolFileError::Format("path is not absolute"));
    }
    Ok(SpooledRequest {
        path_and_query,
        content_type: field("content_type")?,
        label: field("label")?,
        body: rest[end + 1..].to_vec(),
    })
}

/// What the spool thread hears.
enum SpoolMsg {
    /// A worker wrote this file; its first re-send waits until `not_before`.
    Added {
        name: String,
        bytes: u64,
        not_before: Instant,
    },
    /// Some request to the server succeeded: reset the backoff.
    ServerUp,
}

/// The writing side, cloned into every reporter. Writing needs no lock: each file gets a
/// fresh name, and only the thread deletes.
#[derive(Clone)]
pub struct SpoolWriter {
    dir: PathBuf,
    tx: Sender<SpoolMsg>,
    /// Orders the files written within one millisecond.
    seq: Arc<AtomicU64>,
    /// Shared with the thread, which clears it when it takes the notice.
    server_up_queued: Arc<AtomicBool>,
    first_resend_delay: Duration,
}

impl SpoolWriter {
    /// Writes `req` durably and hands it to the spool thread, which re-sends it no sooner than
    /// the first re-send delay; the name it got on success.
    pub fn push(&self, req: &SpooledRequest) -> io::Result<String> {
        self.push_after(req, self.first_resend_delay)
    }

    /// `push` for a report that was never tried (one a restart recovered): the thread sends it
    /// as soon as the reports before it went.
    pub fn push_now(&self, req: &SpooledRequest) -> io::Result<String> {
        self.push_after(req, Duration::ZERO)
    }

    fn push_after(&self, req: &SpooledRequest, delay: Duration) -> io::Result<String> {
        let bytes = encode(req);
        let name = self.next_name(SUFFIX);
        fsutil::write_atomic(&self.dir.join(&name), &bytes, 0o600)?;
        // The thread ends only after every writer is gone, so this send fails only during
        // shutdown; the file stays and the next start sends it.
        let _ = self.tx.send(SpoolMsg::Added {
            name: name.clone(),
            bytes: bytes.len() as u64,
            not_before: Instant::now() + delay,
        });
        Ok(name)
    }

    /// Writes a final report durably before its first attempt, so that an agent killed during
    /// the attempts (a SIGKILL, a power cut) still sends it at its next start. The thread is not
    /// told: the reporter that wrote it either deletes it (`InFlight::delivered`) or hands it
    /// over (`InFlight::spool`).
    pub fn write_ahead(&self, req: &SpooledRequest) -> io::Result<InFlight> {
        let name = self.next_name(SENDING_SUFFIX);
        let path = self.dir.join(&name);
        fsutil::write_atomic(&path, &encode(req), 0o600)?;
        Ok(InFlight { path })
    }

    /// Names sort in the order the reports were written (the pid keeps two agents apart in one
    /// test process; the lock keeps them apart on a host).
    fn next_name(&self, suffix: &str) -> String {
        let ms = chrono::Utc::now().timestamp_millis().max(0);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{ms:015}-{:010}-{seq:010}{suffix}", std::process::id())
    }

    /// Wraps `http` so that every request it gets an answer to (status ≤ 400) tells the spool
    /// thread that the server is back.
    pub fn observe(&self, http: Arc<dyn Http>) -> Arc<dyn Http> {
        Arc::new(ObservedHttp {
            inner: http,
            notice_queued: self.server_up_queued.clone(),
            tx: self.tx.clone(),
        })
    }
}

/// An `Http` that tells the spool thread when a request got an answer.
struct ObservedHttp {
    inner: Arc<dyn Http>,
    /// Set while a `ServerUp` waits in the channel: a burst of successes is one notice.
    notice_queued: Arc<AtomicBool>,
    tx: Sender<SpoolMsg>,
}

impl ObservedHttp {
    fn notice<T>(&self, r: &Result<T, TransportError>) {
        if r.is_ok() && !self.notice_queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(SpoolMsg::ServerUp);
        }
    }
}

impl Http for ObservedHttp {
    fn post(
        &self,
        path_and_query: &str,
        body: &[u8],
        content_type: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError> {
        let r = self.inner.post(path_and_query, body, content_type, timeout);
        self.notice(&r);
        r
    }

    fn get(&self, path_and_query: &str, timeout: Duration) -> Result<HttpResponse, TransportError> {
        let r = self.inner.get(path_and_query, timeout);
        self.notice(&r);
        r
    }
}

/// A final report on disk while its burst runs (see `SpoolWriter::write_ahead`).
#[derive(Debug)]
#[must_use = "an in-flight report is deleted or spooled, else the next start re-sends it"]
pub struct InFlight {
    path: PathBuf,
}

impl InFlight {
    /// The server took it: nothing to re-send. (Not fsynced: should the deletion be lost to a
    /// power cut, the next start sends the same bytes again, which the server has seen.)
    pub fn delivered(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!(
                "phase=spool cannot remove {} ({e}); the next start sends it again",
                self.path.display()
            );
        }
    }

    /// Leaves the file for the next start (the agent is shutting down); its name.
    pub fn keep(self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The burst failed: `req` (its last attempt) goes to the spool thread. If that cannot be
    /// written, this file stays, so the next start still sends the report.
    pub fn spool(self, writer: &SpoolWriter, req: &SpooledRequest) -> io::Result<String> {
        let name = writer.push(req)?;
        self.delivered();
        Ok(name)
    }
}

/// The (task id, invoke version, start) of every final report in the spool dir, written ahead
/// or spooled. Read before the spool thread starts: a restart's recovery must not report again
/// an invocation whose final an earlier agent had written (it may even have been delivered,
/// the answer lost to the kill).
pub fn spooled_finals(dir: &Path) -> HashSet<(String, i64, i64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(SUFFIX) || name.ends_with(SENDING_SUFFIX)
        })
        .filter_map(|e| decode(&fs::read(e.path()).ok()?).ok())
        .filter_map(|req| {
            let (_, query) = req.path_and_query.split_once('?')?;
            let param = |key: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            };
            Some((
                param("taskId")?.to_string(),
                param("invokeVersion")?.parse().ok()?,
                param("start")?.parse().ok()?,
            ))
        })
        .collect()
}

/// The spool thread's handles: the writer for reporters, the join handle.
pub struct SpoolThread {
    pub writer: SpoolWriter,
    pub join: JoinHandle<SpoolStats>,
}

/// What the spool did, for the log line at its end (and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub delivered: u64,
    pub dropped: u64,
    pub left: u64,
}

/// Starts the spool thread on `dir`. It first sends, in order, what an earlier run left (one
/// pass, stopping at the first failure), then drops `startup_gate`: hand it a sender of the
/// fetch thread's enable channel, so the startup fetch's tasks report only after the old
/// reports went out. It ends when `stop` disconnects and every `SpoolWriter` is gone.
pub fn spawn(
    dir: PathBuf,
    limits: SpoolConfig,
    http: Arc<dyn Http>,
    stop: Receiver<()>,
    startup_gate: Sender<()>,
) -> io::Result<SpoolThread> {
    let (tx, rx) = unbounded();
    let server_up_queued = Arc::new(AtomicBool::new(false));
    let writer = SpoolWriter {
        dir: dir.clone(),
        tx,
        seq: Arc::new(AtomicU64::new(0)),
        server_up_queued: server_up_queued.clone(),
        first_resend_delay: limits.first_resend_delay,
    };
    // The directory is read here, before any writer exists: what it holds now is an
    // earlier run's, and every file written from now on reaches the thread as a message.
    // Read on the thread, a report written ahead right after `spawn` could be taken for a
    // leftover and sent by the startup pass while its own attempt was still under way.
    let mut spool = SpoolState::load(dir, limits, http);
    let join = thread::Builder::new()
        .name("spool".to_string())
        .spawn(move || {
            spool.startup_pass();
            drop(startup_gate);
            spool.run(rx, stop, server_up_queued)
        })?;
    Ok(SpoolThread { writer, join })
}

struct Entry {
    name: String,
    bytes: u64,
    not_before: Instant,
}

/// Owned by the spool thread: the queue of files in send order, the backoff, the counters.
struct SpoolState {
    dir: PathBuf,
    limits: SpoolConfig,
    http: Arc<dyn Http>,
    queue: VecDeque<Entry>,
    total_bytes: u64,
    backoff: Duration,
    /// Re-sends that failed since the last one the server took (or since it answered).
    failed_in_row: u32,
    /// After a failed re-send, nothing is tried before this.
    retry_at: Option<Instant>,
    stats: SpoolStats,
}

/// Why one re-send did not delete its file.
enum SendOutcome {
    Delivered,
    /// The server did not take it (no answer or > 400): keep it and back off.
    Failed(TransportError),
    /// The file is gone or unreadable: it was set aside; go on with the next.
    Skipped,
}

impl SpoolState {
    fn load(dir: PathBuf, limits: SpoolConfig, http: Arc<dyn Http>) -> SpoolState {
        let mut state = SpoolState {
            dir,
            limits,
            http,
            queue: VecDeque::new(),
            total_bytes: 0,
            backoff: MIN_BACKOFF,
            failed_in_row: 0,
            retry_at: None,
            stats: SpoolStats::default(),
        };
        let now = Instant::now();
        match fs::read_dir(&state.dir) {
            Ok(entries) => {
                let mut found: Vec<(String, u64)> = Vec::new();
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name.starts_with(".") && name.contains(".tmp.") {
                        // A write that a crash interrupted never reached its rename: the
                        // report it held was not spooled yet, and its invocation's record
                        // still says so (see runner records).
                        let _ = fs::remove_file(entry.path());
                        continue;
                    }
                    if !name.ends_with(SUFFIX) && !name.ends_with(SENDING_SUFFIX) {
                        continue;
                    }
                    let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    found.push((name, bytes));
                }
                found.sort();
                for (name, bytes) in found {
                    state.total_bytes += bytes;
                    state.queue.push_back(Entry {
                        name,
                        bytes,
                        not_before: now,
                    });
                }
                if !state.queue.is_empty() {
                    log::info!(
                        "phase=spool {} report(s) ({} bytes) left by an earlier run; sending them first",
                        state.queue.len(),
                        state.total_bytes
                    );
                }
                state.enforce_limits();
            }
            Err(e) => log::error!(
                "phase=spool cannot read the spool dir {} ({e}); reports spooled by an earlier run stay there",
                state.dir.display()
            ),
        }
        state
    }

    /// One pass over what an earlier run left, in order, before the startup fetch.
    fn startup_pass(&mut self) {
        while self.queue.front().is_some() {
            match self.send_head() {
                SendOutcome::Delivered | SendOutcome::Skipped => {}
                SendOutcome::Failed(e) => {
                    let pause = self.back_off();
                    log::warn!(
                        "phase=spool the server does not take spooled reports yet ({e}); {} left, retrying in {} s",
                        self.queue.len(),
                        pause.as_secs()
                    );
                    return;
                }
            }
        }
    }

    /// Until `stop` disconnects (shutdown) or every writer is gone. Nothing is sent after
    /// that: each attempt could take a request timeout, and what is left stays on disk for the
    /// next start (a worker that spools during shutdown writes its file all the same).
    fn run(
        mut self,
        msgs: Receiver<SpoolMsg>,
        stop: Receiver<()>,
        server_up_queued: Arc<AtomicBool>,
    ) -> SpoolStats {
        loop {
            let wake = match self.next_attempt() {
                Some(when) => at(when),
                None => never(),
            };
            select_biased! {
                recv(stop) -> _ => break,
                recv(msgs) -> msg => match msg {
                    Ok(SpoolMsg::Added { name, bytes, not_before }) => {
                        self.total_bytes += bytes;
                        self.queue.push_back(Entry { name, bytes, not_before });
                        self.enforce_limits();
                    }
                    Ok(SpoolMsg::ServerUp) => {
                        server_up_queued.store(false, Ordering::Release);
                        if self.retry_at.is_some() {
                            log::debug!("phase=spool the server answers again; backoff reset");
                        }
                        self.backoff = MIN_BACKOFF;
                        self.failed_in_row = 0;
                        self.retry_at = None;
                    }
                    Err(_) => break,
                },
                recv(wake) -> _ => self.send_due(),
            }
        }
        self.stats.left = self.queue.len() as u64;
        if self.stats.left > 0 {
            log::info!(
                "phase=spool {} report(s) left in {}; the next start sends them",
                self.stats.left,
                self.dir.display()
            );
        }
        self.stats
    }

    /// When the head of the queue may be tried: its own first-resend time, and the backoff.
    fn next_attempt(&self) -> Option<Instant> {
        let head = self.queue.front()?;
        Some(match self.retry_at {
            Some(t) => t.max(head.not_before),
            None => head.not_before,
        })
    }

    /// Sends every due report in order until one fails.
    fn send_due(&mut self) {
        loop {
            let Some(when) = self.next_attempt() else {
                return;
            };
            if when > Instant::now() {
                return;
            }
            match self.send_head() {
                SendOutcome::Delivered => {
                    self.retry_at = None;
                    self.failed_in_row = 0;
                    self.backoff = MIN_BACKOFF;
                }
                SendOutcome::Skipped => {
                    self.retry_at = None;
                }
                SendOutcome::Failed(e) => {
                    let pause = self.back_off();
                    log::info!(
                        "phase=spool re-send failed ({e}); {} report(s) waiting, next try in {} s",
                        self.queue.len(),
                        pause.as_secs()
                    );
                    return;
                }
            }
        }
    }

    /// Schedules the next try after a failure; returns the pause: `QUICK_RETRY` after the
    /// first failure in a row, then the backoff, doubling up to `MAX_BACKOFF`.
    fn back_off(&mut self) -> Duration {
        let pause = if self.failed_in_row == 0 {
            QUICK_RETRY
        } else {
            let pause = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            pause
        };
        self.failed_in_row += 1;
        self.retry_at = Some(Instant::now() + pause);
        pause
    }

    /// Sends the head of the queue once; deletes it when the server took it.
    fn send_head(&mut self) -> SendOutcome {
        let Some(head) = self.queue.front() else {
            return SendOutcome::Skipped;
        };
        let path = self.dir.join(&head.name);
        let req = match fs::read(&path)
            .map_err(SpoolFileError::Io)
            .and_then(|b| decode(&b))
        {
            Ok(req) => req,
            Err(e) => {
                self.set_aside(&path, &e);
                self.pop_head();
                return SendOutcome::Skipped;
            }
        };
        match self.http.post(
            &req.path_and_query,
            &req.body,
            &req.content_type,
            DEFAULT_TIMEOUT,
        ) {
            Ok(_) => {
                if let Err(e) = fs::remove_file(&path) {
                    // Sent twice at the next start at worst; the server ignores a repeated
                    // final report of a finished invocation.
                    log::error!(
                        "phase=spool {} delivered but {} cannot be removed ({e})",
                        req.label,
                        path.display()
                    );
                }
                self.stats.delivered += 1;
                log::info!("phase=spool {} delivered from the spool", req.label);
                self.pop_head();
                SendOutcome::Delivered
            }
            Err(e) => SendOutcome::Failed(e),
        }
    }

    fn pop_head(&mut self) {
        if let Some(e) = self.queue.pop_front() {
            self.total_bytes = self.total_bytes.saturating_sub(e.bytes);
        }
    }

    /// An unreadable file is renamed `<name>.bad` (kept for a person, never sent).
    fn set_aside(&self, path: &Path, e: &SpoolFileError) {
        let bad = path.with_extension("report.bad");
        let kept = fs::rename(path, &bad).is_ok();
        log::error!(
            "phase=spool {}: {}; {}",
            path.display(),
            crate::error_chain::error_chain(e),
            if kept {
                format!("set aside as {}", bad.display())
            } else {
                "skipped".to_string()
            }
        );
    }

    /// Past either bound, the oldest reports go, each counted and logged.
    fn enforce_limits(&mut self) {
        while self.queue.len() > self.limits.max_reports.max(1)
            || (self.total_bytes > self.limits.max_bytes && self.queue.len() > 1)
        {
            let Some(oldest) = self.queue.pop_front() else {
                return;
            };
            self.total_bytes = self.total_bytes.saturating_sub(oldest.bytes);
            let path = self.dir.join(&oldest.name);
            let label = fs::read(&path)
                .ok()
                .and_then(|b| decode(&b).ok())
                .map(|r| r.label)
                .unwrap_or_else(|| oldest.name.clone());
            let _ = fs::remove_file(&path);
            self.stats.dropped += 1;
            log::error!(
                "phase=spool spool full ({} reports, {} bytes max): dropped the oldest report, {label}; {} dropped since start",
                self.limits.max_reports,
                self.limits.max_bytes,
                self.stats.dropped
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;
    use crate::remote::transport::testing::FakeHttp;
    use crossbeam_channel::bounded;

    fn req(label: &str, body: &[u8]) -> SpooledRequest {
        SpooledRequest {
            path_and_query: format!("/luban/api/v1/task/finish?taskId={label}&invokeVersion=1"),
            content_type: "text/plain; charset=utf-8".to_string(),
            body: body.to_vec(),
            label: format!("task={label} invoke_version=1 finished"),
        }
    }

    #[test]
    fn a_spool_file_round_trips_every_byte() {
        let r = SpooledRequest {
            label: "task=a\nb \"q\" finished".to_string(),
            ..req("t\n1", b"line\n\n\0\xff end")
        };
        assert_eq!(decode(&encode(&r)).expect("decodes"), r);
    }

    #[test]
    fn damaged_spool_files_are_errors() {
        let good = encode(&req("t", b"x"));
        for bad in [
            &b""[..],
            b"assistd-spool 2\n{}\n",
            b"assistd-spool 1\n",
            b"assistd-spool 1\n{\"path\":\"/x\"",
            b"assistd-spool 1\nnot json\nbody",
            b"assistd-spool 1\n{\"path\":\"/x\",\"label\":\"l\"}\n",
            b"assistd-spool 1\n{\"path\":\"x\",\"label\":\"l\",\"content_type\":\"\"}\n",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(
            decode(&good[..good.len() - 1]).is_ok(),
            "an empty body is a body"
        );
    }

    fn limits() -> SpoolConfig {
        SpoolConfig {
            max_reports: 100,
            max_bytes: 1 << 20,
            // Longer than any test runs: nothing pushed is re-sent behind a test's back.
            first_resend_delay: Duration::from_secs(24 * 3600),
        }
    }

    fn write_file(dir: &Path, name: &str, r: &SpooledRequest) {
        fs::write(dir.join(name), encode(r)).expect("write spool file");
    }

    #[test]
    fn the_startup_pass_sends_in_order_and_deletes_what_was_taken() {
        let dir = TempDir::new("spool-startup");
        write_file(
            dir.path(),
            "000000000000002-1-1.report",
            &req("second", b"2"),
        );
        write_file(
            dir.path(),
            "000000000000001-1-1.report",
            &req("first", b"1"),
        );
        fs::write(dir.path().join(".x.tmp.1.2.0"), b"half").expect("write temp");
        let http = Arc::new(FakeHttp::default().with_fallback(b"success"));
        let mut state = SpoolState::load(dir.path().to_path_buf(), limits(), http.clone());
        state.startup_pass();
        let sent = http.paths();
        assert_eq!(
            sent,
            vec![
                "/luban/api/v1/task/finish?taskId=first&invokeVersion=1".to_string(),
                "/luban/api/v1/task/finish?taskId=second&invokeVersion=1".to_string(),
            ]
        );
        assert_eq!(state.stats.delivered, 2);
        let left: Vec<_> = fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn a_failure_keeps_the_report_and_backs_off_doubling_to_the_cap() {
        let dir = TempDir::new("spool-backoff");
        write_file(dir.path(), "000000000000001-1-1.report", &req("a", b"1"));
        let http = Arc::new(FakeHttp::answering(vec![Err(TransportError::Status(500))]));
        let mut state = SpoolState::load(dir.path().to_path_buf(), limits(), http.clone());
        state.startup_pass();
        assert_eq!(state.queue.len(), 1);
        assert!(dir.path().join("000000000000001-1-1.report").exists());
        // One failure: a quick retry; the backoff starts with the second in a row.
        assert_eq!(state.failed_in_row, 1);
        assert_eq!(state.backoff, MIN_BACKOFF);
        assert_eq!(state.back_off(), MIN_BACKOFF);
        assert_eq!(state.back_off(), MIN_BACKOFF * 2);
        for _ in 0..10 {
            state.back_off();
        }
        assert_eq!(state.back_off(), MAX_BACKOFF);
    }

    #[test]
    fn past_its_bounds_the_spool_drops_the_oldest_and_counts_it() {
        let dir = TempDir::new("spool-bounds");
        for i in 0..5 {
            write_file(
                dir.path(),
                &format!("00000000000000{i}-1-1.report"),
                &req(&format!("t{i}"), b"body"),
            );
        }
        let http = Arc::new(FakeHttp::default().with_fallback(b"success"));
        let state = SpoolState::load(
            dir.path().to_path_buf(),
            SpoolConfig {
                max_reports: 3,
                ..limits()
            },
            http,
        );
        assert_eq!(state.stats.dropped, 2);
        let names: Vec<&str> = state.queue.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "000000000000002-1-1.report",
                "000000000000003-1-1.report",
                "000000000000004-1-1.report"
            ]
        );
        assert!(!dir.path().join("000000000000000-1-1.report").exists());
    }

    #[test]
    fn an_unreadable_file_is_set_aside_and_the_rest_still_goes() {
        let dir = TempDir::new("spool-bad");
        fs::write(dir.path().join("000000000000001-1-1.report"), b"garbage").expect("write");
        write_file(dir.path(), "000000000000002-1-1.report", &req("ok", b"1"));
        let http = Arc::new(FakeHttp::default().with_fallback(b"success"));
        let mut state = SpoolState::load(dir.path().to_path_buf(), limits(), http.clone());
        state.startup_pass();
        assert_eq!(http.paths().len(), 1);
        assert!(dir.path().join("000000000000001-1-1.report.bad").exists());
    }

    #[test]
    fn a_pushed_report_is_on_disk_and_waits_for_its_first_resend() {
        let dir = TempDir::new("spool-push");
        let http = Arc::new(FakeHttp::default().with_fallback(b"success"));
        let (stop_tx, stop) = bounded::<()>(0);
        let (gate_tx, gate) = bounded::<()>(0);
        let spool = spawn(
            dir.path().to_path_buf(),
            limits(),
            http.clone(),
            stop,
            gate_tx,
        )
        .expect("spawn spool thread");
        // The startup pass over an empty spool opens the gate.
        assert!(gate.recv_timeout(Duration::from_secs(30)).is_err());
        let name = spool.writer.push(&req("late", b"out")).expect("push");
        assert!(dir.path().join(&name).exists(), "spooled means on disk");
        assert!(
            http.paths().is_empty(),
            "nothing is re-sent before the first-resend delay"
        );
        drop(spool.writer);
        drop(stop_tx);
        let stats = spool.join.join().expect("spool thread ends");
        // Shut down before its first re-send: the report stays for the next start.
        assert_eq!(stats.left, 1);
        assert!(dir.path().join(&name).exists());
    }

    #[test]
    fn a_report_written_ahead_is_deleted_handed_over_or_sent_at_the_next_start() {
        let dir = TempDir::new("spool-ahead");
        let http = Arc::new(FakeHttp::default().with_fallback(b"success"));
        let (stop_tx, stop) = bounded::<()>(0);
        let (gate_tx, gate) = bounded::<()>(0);
        let spool = spawn(
            dir.path().to_path_buf(),
            limits(),
            http.clone(),
            stop,
            gate_tx,
        )
        .expect("spawn spool thread");
        assert!(gate.recv_timeout(Duration::from_secs(30)).is_err());
        let names = || -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir.path())
                .expect("list")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // Delivered: gone.
        spool
            .writer
            .write_ahead(&req("ok", b"1"))
            .expect("ahead")
            .delivered();
        assert!(names().is_empty());
        // The burst failed: the last attempt's request becomes a `.report`.
        let ahead = spool
            .writer
            .write_ahead(&req("refused", b"2"))
            .expect("ahead");
        let name = ahead
            .spool(&spool.writer, &req("refused", b"2"))
            .expect("spool");
        assert_eq!(names(), [name]);
        // The agent dies mid-burst: the `.sending` file stays, and a later start sends it.
        std::mem::forget(spool.writer.write_ahead(&req("cut", b"3")).expect("ahead"));
        let finals = spooled_finals(dir.path());
        assert!(finals.is_empty(), "no start= in these queries: {finals:?}");
        drop(spool.writer);
        drop(stop_tx);
        spool.join.join().expect("spool thread ends");
        assert_eq!(names().len(), 2);
        let mut state = SpoolState::load(dir.path().to_path_buf(), limits(), http.clone());
        state.startup_pass();
        let sent = http.paths();
        assert_eq!(
            sent,
            [
                "/luban/api/v1/task/finish?taskId=refused&invokeVersion=1",
                "/luban/api/v1/task/finish?taskId=cut&invokeVersion=1"
            ]
        );
        assert!(names().is_empty());
    }

    #[test]
    fn spooled_finals_names_each_invocation_and_start() {
        let dir = TempDir::new("spool-finals");
        let mut r = req("t-1", b"x");
        r.path_and_query =
            "/luban/api/v1/task/finish?taskId=t-1&invokeVersion=4&start=1700&end=1800&exitCode=0"
                .to_string();
        write_file(dir.path(), "000000000000001-1-1.sending", &r);
        r.path_and_query =
            "/luban/api/v1/task/stopped?taskId=p&invokeVersion=2&start=0&end=0".to_string();
        write_file(dir.path(), "000000000000002-1-1.report", &r);
        write_file(dir.path(), "000000000000003-1-1.bad", &r);
        assert_eq!(
            spooled_finals(dir.path()),
            HashSet::from([("t-1".to_string(), 4, 1700), ("p".to_string(), 2, 0)])
        );
    }
}
