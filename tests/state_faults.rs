//! A state dir that fills up or turns read-only while the agent runs (issue 8): the agent keeps
//! running its tasks, says in the log what it could not write and why, and writes again once
//! it can. The file systems are real: a small tmpfs, and a read-only bind mount over the state
//! dir. Both need root (CAP_SYS_ADMIN); without it the tests say so and pass.

mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use util::{Agent, TestDir};

/// A mount made by a test, lazily unmounted when dropped (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    /// `mount <args…> <at>`; `None` (with a note) where this process may not mount.
    fn new(args: &[&str], at: &Path) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(args)
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount here (needs root with CAP_SYS_ADMIN)");
            return None;
        }
        Some(Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Keeps the (small) file system holding `path` full while it lives: appends 4 KiB blocks to
/// `path` until one does not fit, and again every 50 ms. Once is not enough: the agent frees blocks
/// too (a script removed after its run, a status file replaced), and a block freed after the
/// fill lets the next run's script be saved after all. Dropped, it stops and removes `path`,
/// so the space comes back.
struct Filler {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Filler {
    fn start(path: PathBuf) -> Filler {
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let block = [0u8; 4096];
            // The tmpfs holds 256 KiB: a filler past 1 MiB means it is not under that mount,
            // and it stops rather than fill whatever disk it is on.
            let mut written = 0;
            while !stopped.load(Ordering::Relaxed) {
                while written < 1024 * 1024 && file.write_all(&block).is_ok() {
                    written += block.len();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Filler {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits (bounded) until the task's side file has `n` more lines than `from`: the task ran.
fn wait_runs(agent: &Agent, ticks: &Path, from: usize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(ticks) < from + n {
        if Instant::now() > deadline {
            agent.fail(&format!("the task did not run {n} more time(s)"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A task every second that leaves a line outside the state dir.
fn ticking(dir: &TestDir) -> PathBuf {
    let ticks = dir.path("ticks");
    dir.task(
        "tick",
        &json!({
            "command": format!("echo run >> {}; echo hello", ticks.display()),
            "cron": "* * * * * ?",
            "timeout": 10
        }),
    );
    ticks
}

fn finished(dir: &TestDir) -> usize {
    dir.journal()
        .iter()
        .filter(|r| r["task"] == "tick" && r["event"] == "finished")
        .count()
}

#[test]
fn a_full_state_dir_keeps_tasks_running_and_says_what_was_not_written() {
    let dir = TestDir::new("state-full");
    let Some(_mount) = Mount::new(
        &["-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs"],
        &dir.state(),
    ) else {
        return;
    };
    let ticks = ticking(&dir);
    let agent = Agent::start(&dir, &[]);
    agent.wait_journal(&dir, "a first run", |_| finished(&dir) >= 1);

    // Fill what is left, and keep it full; a file system that is full takes no new block
    // (appends still fit in the journal's last page for a while, then fail).
    let filler = Filler::start(dir.state().join("filler"));
    let at = lines(&ticks);
    wait_runs(&agent, &ticks, at, 3);
    agent.expect_line("cannot save script");
    agent.expect_line("No space left on device");
    agent.expect_line_where("the lost journal record named", |l| {
        l.contains("task=tick") && l.contains("cannot write the journal: No space left on device")
    });

    // Space again: the next runs are journaled.
    drop(filler);
    let after = finished(&dir);
    agent.wait_journal(&dir, "a run journaled after space came back", |_| {
        finished(&dir) > after
    });
}

#[test]
fn a_state_dir_that_turns_read_only_keeps_tasks_running() {
    let dir = TestDir::new("state-ro");
    let ticks = ticking(&dir);
    let agent = Agent::start(&dir, &[]);
    agent.wait_journal(&dir, "a first run", |_| finished(&dir) >= 1);

    // From here on, whatever the agent opens by name under the state dir is read-only (as
    // after an ext4 error with errors=remount-ro).
    let state = dir.state();
    let state_arg = state.display().to_string();
    let Some(bind) = Mount::new(&["--bind", &state_arg], &state) else {
        return;
    };
    let remounted = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "remount read-only");
    let at = lines(&ticks);
    wait_runs(&agent, &ticks, at, 3);
    agent.expect_line("Read-only file system");

    drop(bind);
    let after = finished(&dir);
    agent.wait_journal(&dir, "a run journaled once writable again", |_| {
        finished(&dir) > after
    });
}
