//! The status file, `<state-dir>/status.json`: what a local agent has scheduled and how each
//! task's last run went, for `assistd list`, and the last run times that `catchUp` reads at
//! the next start. It records; it never decides whether a task runs.
//!
//! The running agent rewrites the file atomically (temp + fsync + rename, mode 0644: it holds
//! ids, schedules, times and exit codes, never a command, an environment or output) on
//! events only: at start, after the task set changed, when an invocation starts and when it
//! ends, and at a clean stop. Nothing writes it on a timer, so an idle agent never wakes for
//! it. The file names the agent by pid and by the start time the kernel gives that process
//! (`/proc/<pid>/stat`, field 22), so a reader can tell a running agent from a dead one even
//! when the pid has been reused.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::model::{ById, CompactTask};
use crate::pollthread::{pollfd, Keep, Source, Wake};
use crate::report::{Report, ReportError, Reporter, StopResult, Verdict};

/// The file's format; a reader refuses a file of another one.
pub const FORMAT: u32 = 1;
/// Tasks beyond this many are left out of the file (and counted in `left_out`).
pub const MAX_TASKS: usize = 10_000;
/// Schedule texts are cut at this many bytes in the file.
const MAX_TEXT: usize = 256;
/// The writer writes at most once per this long, however many tasks fire: the file
/// lags an event by this much at most, and a host with thousands of tasks does not rewrite
/// it (fsync and all) for each of them. Only events start the pause: an idle agent never
/// wakes for it.
const MIN_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// A file larger than this is refused by readers: `MAX_TASKS` entries fit easily.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The agent that writes (or wrote) the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot): with the pid and the boot
    /// id, it names one process.
    pub start_ticks: u64,
    #[serde(default)]
    pub boot_id: String,
    /// Unix milliseconds.
    pub started_ms: i64,
    /// Set when the agent stopped cleanly.
    #[serde(default)]
    pub stopped_ms: Option<i64>,
}

/// How one invocation went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub invoke_version: i64,
    pub started_ms: i64,
    /// 0 while it runs.
    pub ended_ms: i64,
    /// The journal's event of the final report (`finished`, `timeout`, `failed`, `error`,
    /// `stopped`), or `running`.
    pub result: String,
    /// The exit code, for `finished` (and `timeout`, which is 1).
    pub exit_code: Option<i32>,
}

/// One task as the agent holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub id: String,
    /// `cron` as the task file wrote it (a crontab time before it was rewritten).
    pub schedule: String,
    /// The schedule the agent runs (seconds-first, rate or at); empty for other repeats.
    pub cron: String,
    pub repeat: String,
    /// Milliseconds; the origin of a rate.
    pub creation_time: i64,
    pub invoke_version: i64,
    #[serde(default)]
    pub catch_up: bool,
    #[serde(default)]
    pub random_delay_secs: u32,
    /// When an agent first had this task (Unix ms); kept across restarts.
    pub seen_ms: i64,
    /// The invocation under way, or the last one that ended.
    #[serde(default)]
    pub last: Option<LastRun>,
    /// The last invocation that ended, while `last` is one that runs.
    #[serde(default)]
    pub previous: Option<LastRun>,
}

impl TaskStatus {
    /// When this task last started, or when it was first seen: what `catchUp` counts missed
    /// runs from.
    pub fn reference_ms(&self) -> i64 {
        self.last
            .as_ref()
            .map(|l| l.started_ms)
            .unwrap_or(self.seen_ms)
    }

    /// The last invocation that ended, if any.
    pub fn ended(&self) -> Option<&LastRun> {
        match &self.last {
            Some(l) if l.ended_ms > 0 => Some(l),
            _ => self.previous.as_ref(),
        }
    }

    /// The invocation under way, if any.
    pub fn running(&self) -> Option<&LastRun> {
        self.last.as_ref().filter(|l| l.ended_ms == 0)
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    pub format: u32,
    pub agent: AgentInfo,
    /// Unix milliseconds of this write.
    pub updated_ms: i64,
    pub tasks: Vec<TaskStatus>,
    /// Tasks the agent has that did not fit (`MAX_TASKS`).
    #[serde(default)]
    pub left_out: usize,
}

/// Why a status file could not be read.
#[derive(Debug)]
pub enum StatusError {
    Missing(PathBuf),
    Read(PathBuf, io::Error),
    Untrusted(fsutil::Distrust),
    TooLarge(PathBuf, u64),
    Format(PathBuf, String),
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusError::Missing(p) => write!(
                f,
                "no status file {} (no local agent has run with this state dir)",
                p.display()
            ),
            StatusError::Read(p, _) => write!(f, "cannot read {}", p.display()),
            StatusError::Untrusted(d) => write!(f, "refusing the status file: {d}"),
            StatusError::TooLarge(p, n) => write!(
                f,
                "{} is too large ({n} bytes, limit {MAX_FILE_BYTES})",
                p.display()
            ),
            StatusError::Format(p, why) => write!(f, "{} is not a status file: {why}", p.display()),
        }
    }
}

impl std::error::Error for StatusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StatusError::Read(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Reads a status file written by an agent whose uid is root or `uid`: a symlink, a file
/// others could write, a file too large or of another format is refused.
pub fn read(path: &Path, uid: u32) -> Result<StatusFile, StatusError> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StatusError::Missing(path.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StatusError::Untrusted(fsutil::Distrust::Symlink {
                path: path.to_path_buf(),
            }))
        }
        Err(e) => return Err(StatusError::Read(path.to_path_buf(), e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| StatusError::Read(path.to_path_buf(), e))?;
    fsutil::trusted_meta(path, &meta, uid, false).map_err(StatusError::Untrusted)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StatusError::Read(path.to_path_buf(), e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(StatusError::TooLarge(
            path.to_path_buf(),
            bytes.len() as u64,
        ));
    }
    parse(&bytes).map_err(|why| StatusError::Format(path.to_path_buf(), why))
}

/// The file's bytes as a `StatusFile`.
pub fn parse(bytes: &[u8]) -> Result<StatusFile, String> {
    let file: StatusFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.format != FORMAT {
        return Err(format!(
            "format {} (this assistd reads {FORMAT})",
            file.format
        ));
    }
    Ok(file)
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` text. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after the last `)`.
pub fn stat_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The start time of process `pid` under `proc` (normally `/proc`), or `None` if there is no
/// such process.
pub fn process_start_ticks(proc: &Path, pid: u32) -> Option<u64> {
    let text = fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    stat_start_ticks(&text)
}

/// Whether the agent a status file names is running, as far as `proc` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// It wrote its clean stop into the file.
    Stopped,
    /// It did not stop cleanly, and no process with its pid and start time exists.
    Gone,
}

pub fn liveness(agent: &AgentInfo, proc: &Path, boot_id: Option<&str>) -> Liveness {
    if agent.stopped_ms.is_some() {
        return Liveness::Stopped;
    }
    let same_boot = match boot_id {
        Some(b) => agent.boot_id.is_empty() || agent.boot_id == b,
        None => true,
    };
    if same_boot && process_start_ticks(proc, agent.pid) == Some(agent.start_ticks) {
        Liveness::Running
    } else {
        Liveness::Gone
    }
}

/// This process, as a status file names it.
pub fn this_agent(now_ms: i64) -> AgentInfo {
    let pid = std::process::id();
    AgentInfo {
        pid,
        start_ticks: process_start_ticks(Path::new("/proc"), pid).unwrap_or(0),
        boot_id: fsutil::boot_id().unwrap_or_default(),
        started_ms: now_ms,
        stopped_ms: None,
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The running agent's side: the table it keeps and writes. Shared by the control loop
/// (tasks added and removed), the workers (an invocation starts) and the reporter wrapper
/// (an invocation ends).
pub struct Status {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// The generation last written: writers serialise here, outside the table's lock, and
    /// skip a snapshot older than one already on disk.
    written: Mutex<u64>,
    /// With a writer (`writer`, polled by a poll thread): `save` only wakes it, so that no
    /// worker waits for an fsync and a burst of events becomes one write. `None`: `save`
    /// writes itself.
    kick: Mutex<Option<Wake>>,
}

struct Inner {
    agent: AgentInfo,
    /// The engine's own packed tasks (shared, not copied: the key is the task) and what
    /// happened to each; a `TaskStatus` is made of them only when the file is written.
    tasks: BTreeMap<ById, Entry>,
    /// What the previous agent's file said, by id: seen times and last runs carry over, and
    /// `catchUp` reads them.
    previous: BTreeMap<String, TaskStatus>,
    generation: u64,
}

/// What the table adds to a task.
struct Entry {
    /// When an agent first had this task (Unix ms); kept across restarts.
    seen_ms: i64,
    /// Boxed: a task that never ran (or ran under no earlier agent) costs one pointer.
    runs: Option<Box<Runs>>,
}

/// `TaskStatus::last` and `TaskStatus::previous`.
#[derive(Default)]
struct Runs {
    last: Option<Run>,
    previous: Option<Run>,
}

/// A `LastRun` as the table keeps it: its result one of the names the agent writes, not a
/// `String` of its own (a daily task has a run from its first day on).
#[derive(Clone, Copy)]
struct Run {
    invoke_version: i64,
    started_ms: i64,
    ended_ms: i64,
    exit_code: Option<i32>,
    result: &'static str,
}

/// The results an agent writes: `running` and the final reports' events.
const RESULTS: [&str; 9] = [
    "running", "finished", "timeout", "failed", "error", "removed", "stopped", "invalid",
    "verified",
];

impl Run {
    /// A run an earlier agent wrote. A result this agent never writes (a newer agent's) reads
    /// as `unknown` until the task runs again.
    fn from_file(run: &LastRun) -> Run {
        Run {
            invoke_version: run.invoke_version,
            started_ms: run.started_ms,
            ended_ms: run.ended_ms,
            exit_code: run.exit_code,
            result: RESULTS
                .into_iter()
                .find(|r| *r == run.result)
                .unwrap_or("unknown"),
        }
    }

    fn to_file(self) -> LastRun {
        LastRun {
            invoke_version: self.invoke_version,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            result: self.result.to_string(),
            exit_code: self.exit_code,
        }
    }
}

impl Entry {
    fn status(&self, task: &CompactTask) -> TaskStatus {
        let (catch_up, random_delay_secs, written) = match task.local() {
            Some(l) => (l.catch_up, l.random_delay_secs, l.cron_written.as_str()),
            None => (false, 0, ""),
        };
        let schedule = if written.is_empty() {
            task.cron()
        } else {
            written
        };
        let runs = self.runs.as_deref();
        TaskStatus {
            id: task.task_id().to_string(),
            schedule: cut(schedule),
            cron: cut(task.cron()),
            repeat: task.repeat().as_wire().to_string(),
            creation_time: task.creation_time(),
            invoke_version: task.invoke_version(),
            catch_up,
            random_delay_secs,
            seen_ms: self.seen_ms,
            last: runs.and_then(|r| r.last).map(Run::to_file),
            previous: runs.and_then(|r| r.previous).map(Run::to_file),
        }
    }

    fn runs(&mut self) -> &mut Runs {
        self.runs.get_or_insert_with(Box::default)
    }
}

impl Status {
    /// The status of an agent starting now, with what an earlier agent left in `path` (a
    /// missing or unusable file is logged and means nothing is known).
    pub fn open(path: PathBuf, agent: AgentInfo) -> Status {
        let previous = match read(&path, fsutil::euid()) {
            Ok(file) => file.tasks.into_iter().map(|t| (t.id.clone(), t)).collect(),
            Err(StatusError::Missing(_)) => BTreeMap::new(),
            Err(e) => {
                log::warn!(
                    "phase=startup {}; last runs are unknown (catchUp runs nothing this time)",
                    crate::error_chain::error_chain(&e)
                );
                BTreeMap::new()
            }
        };
        Status {
            path,
            inner: Mutex::new(Inner {
                agent,
                tasks: BTreeMap::new(),
                previous,
                generation: 0,
            }),
            written: Mutex::new(0),
            kick: Mutex::new(None),
        }
    }

    /// The start is over: what the previous agent's file said is no longer needed (a task
    /// added later starts with no history).
    pub fn start_done(&self) {
        self.inner.lock().previous.clear();
    }

    /// What the previous agent's file said about `task_id`.
    pub fn previous(&self, task_id: &str) -> Option<TaskStatus> {
        self.inner.lock().previous.get(task_id).cloned()
    }

    /// A task the engine took (a new one, or a new version). Not written until `save`.
    pub fn task_added(&self, task: &std::sync::Arc<CompactTask>) {
        let mut inner = self.inner.lock();
        let id = task.task_id();
        // Removed, not replaced: `insert` would keep the old key, the old version.
        let entry = inner.tasks.remove(id).unwrap_or_else(|| {
            let old = inner.previous.get(id);
            let runs = old
                .filter(|o| o.last.is_some() || o.previous.is_some())
                .map(|o| {
                    Box::new(Runs {
                        last: o.last.as_ref().map(Run::from_file),
                        previous: o.previous.as_ref().map(Run::from_file),
                    })
                });
            Entry {
                seen_ms: old.map(|o| o.seen_ms).unwrap_or_else(now_ms),
                runs,
            }
        });
        inner.tasks.insert(ById(task.clone()), entry);
    }

    /// A task the engine dropped (its file went away). Not written until `save`.
    pub fn task_removed(&self, task_id: &str) {
        self.inner.lock().tasks.remove(task_id);
    }

    /// An invocation started; written at once.
    pub fn started(&self, task_id: &str, invoke_version: i64) {
        {
            let mut inner = self.inner.lock();
            let Some(entry) = inner.tasks.get_mut(task_id) else {
                return;
            };
            let task = entry.runs();
            let run = Run {
                invoke_version,
                started_ms: now_ms(),
                ended_ms: 0,
                result: "running",
                exit_code: None,
            };
            if let Some(done) = task.last.take().filter(|l| l.ended_ms > 0) {
                task.previous = Some(done);
            }
            task.last = Some(run);
        }
        self.save();
    }

    /// A final report of an invocation that `started`; written at once. Reports of
    /// invocations that never started (a stop of an idle task, `invalid`) and a cron's
    /// `completed` change nothing.
    pub fn ended(&self, report: &Report) {
        if !report.is_final() {
            return;
        }
        if let Report::Stopped {
            result: StopResult::Completed,
            ..
        } = report
        {
            return;
        }
        let Some(span) = report.span() else { return };
        let head = report.head();
        {
            let mut inner = self.inner.lock();
            let Some(entry) = inner.tasks.get_mut(head.task_id.as_str()) else {
                return;
            };
            let Some(run) = entry
                .runs
                .as_mut()
                .and_then(|r| r.last.as_mut())
                .filter(|l| l.ended_ms == 0 && l.invoke_version == head.invoke_version)
            else {
                return;
            };
            run.ended_ms = if span.end_ms > 0 {
                span.end_ms
            } else {
                now_ms()
            };
            if span.start_ms > 0 {
                run.started_ms = span.start_ms;
            }
            run.result = report.event();
            run.exit_code = match report {
                Report::Finished { .. } | Report::Timeout { .. } => Some(span.exit_code),
                _ => None,
            };
        }
        self.save();
    }

    /// The writer that does the writes `save` asks for, a source for a poll thread: it
    /// waits on a `Wake` (an idle agent never wakes it), writes at once, and wakes that come
    /// while it pauses (`MIN_WRITE_INTERVAL`) become one more write of the newest table. It
    /// ends at `agent_stopped`.
    pub fn writer(self: &std::sync::Arc<Self>) -> io::Result<StatusWriter> {
        let wake = Wake::new()?;
        *self.kick.lock() = Some(wake.clone());
        Ok(StatusWriter {
            status: self.clone(),
            wake,
            due: false,
            paused_until: None,
        })
    }

    /// The agent stops cleanly: the writer ends (it writes no more) and the last table, with
    /// the stop, is written before this returns. An invocation still marked running never
    /// ends.
    pub fn agent_stopped(&self) {
        {
            let mut inner = self.inner.lock();
            inner.agent.stopped_ms = Some(now_ms());
        }
        drop(self.kick.lock().take());
        self.write_now();
    }

    /// Asks for the table to be written: by the writer if there is one, else now.
    pub fn save(&self) {
        if let Some(kick) = &*self.kick.lock() {
            // Already woken: a write is due, and it will take the newest table.
            kick.wake();
            return;
        }
        self.write_now();
    }

    /// Writes the table now (atomically). A failure is logged; the next event tries again.
    fn write_now(&self) {
        let (generation, bytes) = {
            let mut inner = self.inner.lock();
            inner.generation += 1;
            let left_out = inner.tasks.len().saturating_sub(MAX_TASKS);
            let file = StatusFile {
                format: FORMAT,
                agent: inner.agent.clone(),
                updated_ms: now_ms(),
                tasks: inner
                    .tasks
                    .iter()
                    .take(MAX_TASKS)
                    .map(|(task, entry)| entry.status(&task.0))
                    .collect(),
                left_out,
            };
            let mut bytes = serde_json::to_vec(&file).unwrap_or_default();
            bytes.push(b'\n');
            (inner.generation, bytes)
        };
        let mut written = self.written.lock();
        if *written > generation {
            return;
        }
        match fsutil::write_atomic(&self.path, &bytes, 0o644) {
            Ok(()) => *written = generation,
            Err(e) => log::warn!("phase=status cannot write {}: {e}", self.path.display()),
        }
    }
}

/// `Status::writer`'s source: the writes `save` asks for, on the poll thread.
pub struct StatusWriter {
    status: std::sync::Arc<Status>,
    wake: Wake,
    /// A `save` came since the last write.
    due: bool,
    /// No write before this (the pause after the last one).
    paused_until: Option<Instant>,
}

impl Source for StatusWriter {
    fn fds(&self, fds: &mut Vec<libc::pollfd>) {
        fds.push(pollfd(self.wake.fd(), libc::POLLIN));
    }

    fn deadline(&self) -> Option<Instant> {
        self.paused_until.filter(|_| self.due)
    }

    fn ready(&mut self, fds: &[libc::pollfd], now: Instant) -> Keep {
        if fds[0].revents != 0 {
            self.wake.clear();
            self.due = true;
        }
        if self.status.kick.lock().is_none() {
            return Keep::Done; // stopped: `agent_stopped` wrote the last table
        }
        if self.due && !matches!(self.paused_until, Some(t) if t > now) {
            self.due = false;
            self.status.write_now();
            self.paused_until = Some(Instant::now() + MIN_WRITE_INTERVAL);
        }
        Keep::Polling
    }
}

/// A `Reporter` that tells the status about every report it passes on.
pub struct StatusReporter {
    pub inner: std::sync::Arc<dyn Reporter>,
    pub status: std::sync::Arc<Status>,
}

impl Reporter for StatusReporter {
    fn send(&self, report: &Report) -> Result<Verdict, ReportError> {
        let verdict = self.inner.send(report);
        self.status.ended(report);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;
    use crate::model::{RepeatType, RunTaskInfo};
    use crate::report::{ReportHead, Span, WallClock};

    fn kept(info: RunTaskInfo) -> std::sync::Arc<CompactTask> {
        std::sync::Arc::new(info.into())
    }

    fn task(id: &str, cron: &str) -> RunTaskInfo {
        RunTaskInfo {
            task_id: id.to_string(),
            cron: cron.to_string(),
            repeat: RepeatType::Period,
            invoke_version: 1,
            ..RunTaskInfo::default()
        }
    }

    fn finished(id: &str, version: i64, exit: i32) -> Report {
        Report::Finished {
            head: ReportHead {
                task_id: id.to_string(),
                invoke_version: version,
                repeat: RepeatType::Period,
                wall_clock: WallClock::None,
            },
            span: Span {
                start_ms: 1_000,
                end_ms: 3_500,
                exit_code: exit,
                dropped: 0,
            },
            output: Vec::new(),
        }
    }

    #[test]
    fn runs_from_a_file_keep_their_result_name() {
        let run = |result: &str| LastRun {
            invoke_version: 2,
            started_ms: 10,
            ended_ms: 20,
            result: result.to_string(),
            exit_code: Some(1),
        };
        for result in RESULTS {
            assert_eq!(Run::from_file(&run(result)).to_file(), run(result));
        }
        assert_eq!(Run::from_file(&run("paused")).to_file(), run("unknown"));
        // Every task that ran keeps one, boxed (musl's 112-byte class).
        assert!(std::mem::size_of::<Runs>() <= 96);
    }

    #[test]
    fn start_ticks_are_counted_after_the_command_name() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(stat_start_ticks(stat), Some(98765));
        assert_eq!(stat_start_ticks("42 (x) S 1"), None);
        let own = process_start_ticks(Path::new("/proc"), std::process::id());
        assert!(own.is_some_and(|t| t > 0), "{own:?}");
    }

    #[test]
    fn a_run_is_recorded_from_start_to_end_and_survives_a_restart() {
        let dir = TempDir::new("status");
        let path = dir.path().join("status.json");
        let status = Status::open(path.clone(), this_agent(5));
        status.task_added(&kept(task("a", "0 * * * * *")));
        status.save();
        status.started("a", 1);
        let file = read(&path, fsutil::euid()).expect("readable");
        let a = &file.tasks[0];
        assert_eq!(a.running().map(|r| r.result.as_str()), Some("running"));
        assert!(a.ended().is_none());
        assert_eq!(
            liveness(&file.agent, Path::new("/proc"), None),
            Liveness::Running
        );
        status.ended(&finished("a", 2, 0)); // another version: ignored
        status.ended(&finished("a", 1, 3));
        status.agent_stopped();
        let file = read(&path, fsutil::euid()).expect("readable");
        let last = file.tasks[0].ended().expect("ended").clone();
        assert_eq!(
            (last.result.as_str(), last.exit_code),
            ("finished", Some(3))
        );
        assert_eq!((last.started_ms, last.ended_ms), (1_000, 3_500));
        assert_eq!(
            liveness(&file.agent, Path::new("/proc"), None),
            Liveness::Stopped
        );

        // The next agent knows the last run and keeps the first-seen time.
        let again = Status::open(path.clone(), this_agent(9));
        let prev = again.previous("a").expect("known");
        assert_eq!(prev.reference_ms(), 1_000);
        again.task_added(&kept(task("a", "0 * * * * *")));
        again.save();
        let file = read(&path, fsutil::euid()).expect("readable");
        assert_eq!(file.tasks[0].seen_ms, prev.seen_ms);
        assert_eq!(file.tasks[0].ended().map(|l| l.exit_code), Some(Some(3)));
    }

    #[test]
    fn a_dead_agent_is_gone_and_bad_files_are_refused() {
        let agent = AgentInfo {
            pid: u32::MAX - 1,
            start_ticks: 1,
            ..AgentInfo::default()
        };
        assert_eq!(liveness(&agent, Path::new("/proc"), None), Liveness::Gone);
        let mut me = this_agent(0);
        assert_eq!(liveness(&me, Path::new("/proc"), None), Liveness::Running);
        me.start_ticks += 1;
        assert_eq!(
            liveness(&me, Path::new("/proc"), None),
            Liveness::Gone,
            "pid reused"
        );

        let dir = TempDir::new("status");
        let path = dir.path().join("status.json");
        assert!(matches!(read(&path, 0), Err(StatusError::Missing(_))));
        crate::fsutil::write_atomic(&path, b"{\"format\":2,\"agent\":{\"pid\":1,\"start_ticks\":1,\"started_ms\":0},\"updated_ms\":0,\"tasks\":[]}", 0o644).expect("write");
        assert!(matches!(
            read(&path, fsutil::euid()),
            Err(StatusError::Format(..))
        ));
        crate::fsutil::write_atomic(&path, b"{}", 0o666).expect("write");
        assert!(matches!(
            read(&path, fsutil::euid()),
            Err(StatusError::Untrusted(_))
        ));
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(matches!(
            read(&link, fsutil::euid()),
            Err(StatusError::Untrusted(_))
        ));
    }

    #[test]
    fn the_writer_writes_what_was_saved_and_the_stop_last() {
        let dir = TempDir::new("status-writer");
        let path = dir.path().join("status.json");
        let status = std::sync::Arc::new(Status::open(path.clone(), this_agent(0)));
        let writer = status.writer().expect("writer");
        let poll = crate::pollthread::PollThread::spawn("statustest", vec![Box::new(writer)])
            .expect("poll thread");
        for i in 0..50 {
            status.task_added(&kept(task(&format!("t{i}"), "0 * * * * *")));
            status.save();
        }
        status.agent_stopped();
        let file = read(&path, fsutil::euid()).expect("readable");
        assert_eq!(file.tasks.len(), 50);
        assert!(file.agent.stopped_ms.is_some());
        assert!(status.kick.lock().is_none(), "detached");
        drop(poll);
        assert_eq!(
            std::sync::Arc::strong_count(&status),
            1,
            "the poll thread let go"
        );
        let again = read(&path, fsutil::euid()).expect("readable");
        assert!(
            again.agent.stopped_ms.is_some(),
            "nothing written after the stop"
        );
    }

    #[test]
    fn long_schedules_are_cut_and_the_written_text_is_kept() {
        let dir = TempDir::new("status");
        let status = Status::open(dir.path().join("status.json"), this_agent(0));
        let mut info = task("a", "0 */15 * * * *");
        info.local = Some(Box::new(crate::model::LocalExtras {
            cron_written: "*/15 * * * *".to_string(),
            ..Default::default()
        }));
        status.task_added(&kept(info));
        status.task_added(&kept(task("b", &"1,".repeat(300))));
        status.save();
        let file = read(&dir.path().join("status.json"), fsutil::euid()).expect("readable");
        assert_eq!(file.tasks[0].schedule, "*/15 * * * *");
        assert_eq!(file.tasks[0].cron, "0 */15 * * * *");
        assert_eq!(file.tasks[1].schedule.len(), MAX_TEXT);
    }
}
