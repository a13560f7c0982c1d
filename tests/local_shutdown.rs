//! Agent shutdown with tasks running (issue 11): each running task's process group gets
//! SIGTERM first, so its `trap … TERM` runs, and SIGKILL only after `shutdown_grace_secs`;
//! the journal says which signal ended it.

mod util;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{Agent, TestDir};

/// Waits (bounded) until `path` exists: the task is under way.
fn wait_file(agent: &Agent, path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if Instant::now() > deadline {
            agent.fail(&format!("{} never appeared", path.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stopped(dir: &TestDir, task: &str) -> Value {
    dir.journal()
        .into_iter()
        .find(|r| r["task"] == task && r["event"] == "stopped")
        .unwrap_or_else(|| panic!("no stopped record for {task}: {:#?}", dir.journal()))
}

fn start_with_grace(dir: &TestDir, secs: u64) -> Agent {
    let config = dir.path("config.json");
    std::fs::write(&config, json!({ "shutdown_grace_secs": secs }).to_string())
        .expect("write config");
    Agent::start(dir, &["--config", &config.display().to_string()])
}

#[test]
fn a_running_task_gets_sigterm_at_shutdown_and_its_trap_runs() {
    let dir = TestDir::new("shutdown-term");
    let ready = dir.path("ready");
    dir.task(
        "trapper",
        &json!({
            "command": format!(
                "trap 'echo got TERM; exit 7' TERM; touch {}; sleep 300 & wait",
                ready.display()
            ),
            "timeout": 0
        }),
    );
    let mut agent = start_with_grace(&dir, 30);
    wait_file(&agent, &ready);
    agent.stop();
    let rec = stopped(&dir, "trapper");
    assert_eq!(rec["signal"], "SIGTERM", "{rec:#}");
    assert_eq!(rec["exit_code"], 7, "the trap chose the exit: {rec:#}");
    assert_eq!(rec["output"], "got TERM\n", "{rec:#}");
    assert_eq!(rec["result"], "killed");
}

#[test]
fn a_task_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = TestDir::new("shutdown-kill");
    let ready = dir.path("ready");
    dir.task(
        "stubborn",
        &json!({
            "command": format!("trap '' TERM; touch {}; while :; do sleep 1; done", ready.display()),
            "timeout": 0
        }),
    );
    let mut agent = start_with_grace(&dir, 1);
    wait_file(&agent, &ready);
    agent.stop();
    let rec = stopped(&dir, "stubborn");
    assert_eq!(rec["signal"], "SIGKILL", "{rec:#}");
    assert_eq!(rec["exit_code"], -1, "killed by a signal: {rec:#}");
}
