//! The real binary in local mode: the task directory is watched (inotify), so changes apply
//! without SIGHUP; a file that breaks keeps its last good version; a removal is journaled as
//! one. No test sends SIGHUP here: each change must reach the agent through the watcher.

mod util;

use serde_json::json;
use util::{count, read_pid, record, set_mode, wait_gone, Agent, TestDir};

/// Starts the agent and waits for its first scan of the task directory: from then on the
/// watcher is running (it starts before that scan).
fn start(dir: &TestDir) -> Agent {
    let agent = Agent::start(dir, &[]);
    agent.expect_line("bad file(s)");
    agent
}

#[test]
fn a_new_file_written_by_rename_runs_without_sighup() {
    let dir = TestDir::new("reload-new");
    let agent = start(&dir);
    dir.task_by_rename("hello", &json!({"command": "echo hello"}));
    agent.expect_line("the task directory changed");
    let records = agent.wait_journal(&dir, "hello finished", |r| {
        count(r, "hello", "finished") == 1
    });
    let rec = record(&records, "hello", "finished");
    assert_eq!(rec["output"], "hello\n");
}

#[test]
fn an_edit_that_breaks_a_file_keeps_the_last_good_version_running() {
    let dir = TestDir::new("reload-broken");
    dir.task(
        "tick",
        &json!({"command": "echo tick", "cron": "* * * * * ?"}),
    );
    let agent = start(&dir);
    agent.wait_journal(&dir, "a first tick", |r| count(r, "tick", "finished") >= 1);
    // A typo saved in place, as an editor without a temp file does it.
    std::fs::write(
        dir.tasks().join("tick.json"),
        r#"{"command": "echo tick", "cron": "* * * * * ?", "timeot": 5}"#,
    )
    .expect("write");
    agent.expect_line("no longer loads; the last good version stays");
    let before = count(&dir.journal(), "tick", "finished");
    agent.wait_journal(&dir, "ticks after the bad edit", |r| {
        count(r, "tick", "finished") >= before + 2
    });
    let records = dir.journal();
    assert_eq!(count(&records, "tick", "stopped"), 0, "{records:#?}");
    assert_eq!(count(&records, "tick", "removed"), 0, "{records:#?}");
    assert!(
        records
            .iter()
            .filter(|r| r["task"] == "tick")
            .all(|r| r["invoke_version"] == 1),
        "the first version went on: {records:#?}"
    );
    // Fixed: a new version replaces it.
    dir.task_by_rename(
        "tick",
        &json!({"command": "echo tock", "cron": "* * * * * ?"}),
    );
    agent.wait_journal(&dir, "the fixed version runs", |r| {
        r.iter()
            .any(|r| r["task"] == "tick" && r["event"] == "finished" && r["invoke_version"] == 2)
    });
}

#[test]
fn removing_an_idle_task_journals_a_removal_not_a_kill() {
    let dir = TestDir::new("reload-remove-idle");
    // Never due while the test runs.
    dir.task(
        "yearly",
        &json!({"command": "echo never", "cron": "0 0 0 1 1 ? 2099"}),
    );
    let agent = start(&dir);
    dir.remove_task("yearly");
    let records = agent.wait_journal(&dir, "yearly removed", |r| {
        count(r, "yearly", "removed") == 1
    });
    let rec = records
        .iter()
        .find(|r| r["event"] == "removed")
        .expect("removed record");
    assert_eq!(rec["invoke_version"], 1);
    assert_eq!(count(&records, "yearly", "stopped"), 0, "{records:#?}");
}

#[test]
fn removing_a_running_task_kills_it_and_says_its_file_went() {
    let dir = TestDir::new("reload-remove-running");
    let pidfile = dir.path("bg.pid");
    dir.task(
        "long",
        &json!({"command": format!("sleep 300 & echo $! > {}; wait", pidfile.display())}),
    );
    let agent = start(&dir);
    let bg = read_pid(&agent, &pidfile);
    dir.remove_task("long");
    let records = agent.wait_journal(&dir, "long stopped", |r| count(r, "long", "stopped") == 1);
    let rec = records
        .iter()
        .find(|r| r["event"] == "stopped")
        .expect("stopped record");
    assert_eq!(rec["result"], "killed");
    assert!(
        rec["err_desc"]
            .as_str()
            .is_some_and(|d| d.contains("task file was removed")),
        "{rec:#}"
    );
    wait_gone(&agent, bg);
}

#[test]
fn a_replaced_directory_is_read_and_watched_again() {
    let dir = TestDir::new("reload-replace");
    let agent = start(&dir);
    let fresh = dir.path("tasks.new");
    std::fs::create_dir(&fresh).expect("mkdir");
    set_mode(&fresh, 0o755);
    let file = fresh.join("swapped.json");
    std::fs::write(&file, r#"{"command": "echo swapped"}"#).expect("write");
    set_mode(&file, 0o644);
    std::fs::rename(dir.tasks(), dir.path("tasks.old")).expect("move the old directory away");
    std::fs::rename(&fresh, dir.tasks()).expect("move the new one in");
    agent.wait_journal(&dir, "swapped finished", |r| {
        count(r, "swapped", "finished") == 1
    });
    // The new directory is watched, not the old one.
    dir.task("later", &json!({"command": "echo later"}));
    agent.wait_journal(&dir, "later finished", |r| {
        count(r, "later", "finished") == 1
    });
}

#[test]
fn a_file_made_writable_by_others_is_refused_on_reload() {
    let dir = TestDir::new("reload-trust");
    dir.task(
        "yearly",
        &json!({"command": "echo never", "cron": "0 0 0 1 1 ? 2099"}),
    );
    let agent = start(&dir);
    set_mode(&dir.tasks().join("yearly.json"), 0o666);
    agent.expect_line("refused");
    agent.wait_journal(&dir, "yearly removed", |r| {
        count(r, "yearly", "removed") == 1
    });
}
