//! Test harness: a fresh directory per test, the real `assistd` binary started in it, and
//! waits on events (stderr lines, journal records) with deadlines that only bound failures.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use serde_json::Value;

/// How long a wait may take before the test fails. Only bounds failures; never synchronises.
pub const DEADLINE: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_assistd")
}

/// `assistd` started with the host's zone settings replaced: `TZ=UTC`, and `$ZONEINFO` (searched
/// before the system directories) at the TZif files the repository carries, so a test that
/// names a zone does not depend on the host's tzdata.
pub fn assistd() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("TZ", "UTC").env(
        "ZONEINFO",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/schedule/testdata/zoneinfo"),
    );
    cmd
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .expect("chmod");
}

/// A fresh directory for one test, kept on failure for inspection.
pub struct TestDir {
    pub root: PathBuf,
}

/// Removed when the test passes (tests leave nothing in /tmp); kept when it fails, for
/// inspection. Declared before the `Agent`, it is dropped after it.
impl Drop for TestDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("assistd-it-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("tasks")).expect("create test dir");
        std::fs::create_dir_all(root.join("state")).expect("create test dir");
        // Explicit modes: the agent refuses task files and state dirs others can write, so a
        // test must not depend on the umask it was started with.
        for dir in [root.clone(), root.join("tasks"), root.join("state")] {
            set_mode(&dir, 0o755);
        }
        TestDir { root }
    }

    pub fn tasks(&self) -> PathBuf {
        self.root.join("tasks")
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes a task file `tasks/<name>.json`.
    pub fn task(&self, name: &str, json: &Value) {
        let path = self.tasks().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(json).expect("json"))
            .expect("write task file");
        set_mode(&path, 0o644);
    }

    /// Writes `tasks/<name>.json` the way editors and config tools do: a temp file in the same
    /// directory, then a rename over the name, so a running agent never reads half a file.
    pub fn task_by_rename(&self, name: &str, json: &Value) {
        let tmp = self.tasks().join(format!(".{name}.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(json).expect("json")).expect("write temp");
        set_mode(&tmp, 0o644);
        std::fs::rename(&tmp, self.tasks().join(format!("{name}.json"))).expect("rename");
    }

    pub fn remove_task(&self, name: &str) {
        std::fs::remove_file(self.tasks().join(format!("{name}.json"))).expect("remove task file");
    }

    /// Every journal record, oldest first.
    pub fn journal(&self) -> Vec<Value> {
        let dir = self.state().join("journal");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => return Vec::new(),
        };
        // journal.jsonl.N are older than journal.jsonl; higher N is older.
        files.sort_by_key(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let n: i64 = name
                .rsplit('.')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            -n
        });
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    out.push(v);
                }
            }
        }
        out
    }

    pub fn records(&self, task: &str, event: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|r| r["task"] == task && r["event"] == event)
            .collect()
    }
}

/// How many of `records` (journal records) are `event`s of `task`.
pub fn count(records: &[Value], task: &str, event: &str) -> usize {
    records
        .iter()
        .filter(|r| r["task"] == task && r["event"] == event)
        .count()
}

/// The first `event` record of `task` among `records`; fails the test when there is none.
pub fn record<'a>(records: &'a [Value], task: &str, event: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["task"] == task && r["event"] == event)
        .unwrap_or_else(|| panic!("no {event} record of {task} in {records:#?}"))
}

/// A running agent. Dropping it sends SIGTERM, waits, then SIGKILLs: no test leaks an agent.
pub struct Agent {
    pub child: Option<Child>,
    pub lines: Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub args: Vec<String>,
}

impl Agent {
    /// `assistd agent --local <dir>/tasks --state-dir <dir>/state <extra>`.
    pub fn start(dir: &TestDir, extra: &[&str]) -> Agent {
        let mut args = vec![
            "agent".to_string(),
            "--local".to_string(),
            dir.tasks().display().to_string(),
            "--state-dir".to_string(),
            dir.state().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Agent::spawn(args, &dir.root)
    }

    /// Starts `assistd <args>` in `cwd`.
    pub fn spawn(args: Vec<String>, cwd: &Path) -> Agent {
        let mut cmd = assistd();
        cmd.args(&args).current_dir(cwd);
        Agent::from_command(cmd, args)
    }

    /// Starts a prepared command (its program, arguments and environment set by the caller)
    /// with stdin and stdout closed and stderr read line by line into the `Agent`.
    pub fn from_command(mut cmd: Command, args: Vec<String>) -> Agent {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start assistd");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = unbounded();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        thread::spawn(move || {
            // Bytes, not `lines()`: one line that is not UTF-8 would end `lines()`, and an
            // agent whose stderr nobody reads blocks once the pipe is full.
            let mut reader = BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches('\n')
                    .to_string();
                log2.lock().expect("log lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        Agent {
            child: Some(child),
            lines: rx,
            log,
            args,
        }
    }

    /// Waits for a stderr line containing `needle`; panics with the log on timeout.
    pub fn expect_line(&self, needle: &str) -> String {
        self.expect_line_where(needle, |l| l.contains(needle))
    }

    pub fn expect_line_where(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => continue,
                Err(_) => self.fail(&format!("no stderr line matching {what:?}")),
            }
        }
    }

    /// Waits (on each stderr line) until `pred` holds for the journal.
    pub fn wait_journal(
        &self,
        dir: &TestDir,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let records = dir.journal();
            if pred(&records) {
                return records;
            }
            // Every journal write also logs a line, so a new line is the event to re-check on.
            // The short timeout only covers a line that was read before the journal was.
            match self.lines.recv_timeout(Duration::from_millis(500)) {
                Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    let records = dir.journal();
                    if pred(&records) {
                        return records;
                    }
                    self.fail(&format!("agent exited before the journal showed {what}"));
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "journal never showed {what}; journal: {:#?}",
                    dir.journal()
                ));
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill with a valid pid and signal number.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Sends SIGTERM and waits for the exit status (bounded).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit("agent did not exit after SIGTERM")
    }

    /// Waits for the agent to exit (bounded); on timeout kills it and fails with `why`.
    pub fn wait_exit(&mut self, why: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(why);
            }
            // Polling an exit status in a test harness: std offers no wait with a timeout.
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn fail(&self, why: &str) -> ! {
        let log = self.log.lock().map(|l| l.join("\n")).unwrap_or_default();
        panic!("{why}\ncommand: {} {:?}\nstderr:\n{log}", bin(), self.args);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a valid pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `assistd <args>` to completion.
pub fn run(args: &[&str]) -> Output {
    assistd().args(args).output().expect("run assistd")
}

/// True while a process with this pid exists and is not a zombie. (A killed grandchild is
/// re-parented; in a container whose init does not reap, it stays a zombie, which is dead.)
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Reads a pid a script wrote into `path`, waiting for the file to appear.
pub fn read_pid(agent: &Agent, path: &Path) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        if Instant::now() > deadline {
            agent.fail(&format!("no pid in {}", path.display()));
        }
        // The script writes the file; no event tells us when. Short, bounded poll.
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the agent has recorded a running child in `<state>/running/` (the record is
/// written right after the spawn, so a test that kills the agent must wait for it).
pub fn wait_run_record(agent: &Agent, dir: &TestDir) {
    let deadline = Instant::now() + DEADLINE;
    let running = dir.state().join("running");
    loop {
        let recorded = std::fs::read_dir(&running)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .unwrap_or(false);
        if recorded {
            return;
        }
        if Instant::now() > deadline {
            agent.fail(&format!("no run record in {}", running.display()));
        }
        // The record is a file the agent writes; no event tells the test when. Short poll.
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `pid` is gone (the agent reaps its children; grandchildren are reaped by init).
pub fn wait_gone(agent: &Agent, pid: i32) {
    let deadline = Instant::now() + DEADLINE;
    while alive(pid) {
        if Instant::now() > deadline {
            agent.fail(&format!("process {pid} still alive"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}
