//! `assistd list`, `assistd run`, `catchUp` and `randomDelay`, with the real binary in local
//! mode and real children.

mod util;

use std::os::unix::process::CommandExt;
use std::path::Path;

use serde_json::{json, Value};
use util::{assistd, count, Agent, TestDir};

/// `assistd <args> --state-dir <dir>/state`: (exit code, stdout, stderr).
fn tool(dir: &TestDir, args: &[&str]) -> (i32, String, String) {
    let out = assistd()
        .args(args)
        .arg("--state-dir")
        .arg(dir.state())
        .output()
        .expect("run assistd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn list_json(dir: &TestDir) -> Value {
    let (code, out, err) = tool(dir, &["list", "--json"]);
    assert_eq!(code, 0, "list --json: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("list --json is JSON ({e}): {out}"))
}

/// `list --json` once the agent's status file shows what `pred` wants: the agent writes it
/// on its own thread, so it is re-read after each stderr line (or half a second).
fn wait_list(agent: &Agent, dir: &TestDir, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + util::DEADLINE;
    loop {
        // Before the agent's first write there is no file yet (exit 2): wait on.
        let (code, out, err) = tool(dir, &["list", "--json"]);
        let list: Value = if code == 0 {
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
        } else {
            Value::Null
        };
        if code == 0 && pred(&list) {
            return list;
        }
        if std::time::Instant::now() > deadline {
            agent.fail(&format!("list never showed {what}: {list:#} {err}"));
        }
        let _ = agent
            .lines
            .recv_timeout(std::time::Duration::from_millis(500));
    }
}

fn task<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {list:#}"))
}

/// The status file as JSON, to fake an earlier agent's last runs.
fn status_file(dir: &TestDir) -> Value {
    let text = std::fs::read_to_string(dir.state().join("status.json")).expect("status file");
    serde_json::from_str(&text).expect("status JSON")
}

fn write_status(dir: &TestDir, value: &Value) {
    let path = dir.state().join("status.json");
    std::fs::write(&path, serde_json::to_vec(value).expect("json")).expect("write status");
    util::set_mode(&path, 0o644);
}

fn cleanup(dir: TestDir) {
    let _ = std::fs::remove_dir_all(&dir.root);
}

/// Waits until the agent has logged a line containing each needle, in any order.
fn expect_lines(agent: &Agent, needles: &[&str]) {
    let all_logged = || {
        let log = agent.log.lock().expect("log lock");
        needles
            .iter()
            .all(|n| log.iter().any(|line| line.contains(n)))
    };
    if !all_logged() {
        agent.expect_line_where(&format!("{needles:?}"), |_| all_logged());
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

#[test]
fn list_shows_schedules_and_last_results_while_running_and_after_a_stop() {
    let dir = TestDir::new("list");
    dir.task("hello", &json!({"command": "echo hello; exit 3"}));
    dir.task(
        "quarter",
        // Every quarter hour, but only at 03:00-03:45 on 1 January: it has a next run and
        // still cannot fire while the test runs (every day, it could, and `last` would not
        // be null).
        &json!({"command": "true", "cron": "*/15 3 1 1 *", "randomDelay": 30}),
    );
    let mut agent = Agent::start(&dir, &[]);
    agent.wait_journal(&dir, "hello finished", |r| {
        count(r, "hello", "finished") == 1
    });
    let list = wait_list(&agent, &dir, "hello's result", |l| {
        l["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == "hello" && !t["last"].is_null()))
    });
    assert_eq!(list["agent"]["state"], "running", "{list:#}");
    let hello = task(&list, "hello");
    assert_eq!(hello["repeat"], "Once");
    assert_eq!(hello["last"]["result"], "finished");
    assert_eq!(hello["last"]["exit_code"], 3);
    assert!(hello["last"]["duration_ms"].as_i64().is_some(), "{hello:#}");
    assert_eq!(hello["next"], Value::Null);
    let quarter = task(&list, "quarter");
    assert_eq!(quarter["schedule"], "*/15 3 1 1 *", "as written");
    assert_eq!(quarter["cron"], "0 */15 3 1 1 *", "as run");
    assert_eq!(quarter["random_delay"], 30);
    let next = quarter["next"].as_str().expect("a next run");
    assert!(
        next.ends_with(":00:00Z")
            || next.ends_with(":15:00Z")
            || next.ends_with(":30:00Z")
            || next.ends_with(":45:00Z"),
        "{next}"
    );
    assert_eq!(quarter["last"], Value::Null);

    let (code, text, err) = tool(&dir, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with("agent: running (pid "), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("hello "))
        .expect("hello row");
    assert!(row.contains("finished") && row.contains(" 3 "), "{row}");
    let row = text
        .lines()
        .find(|l| l.starts_with("quarter "))
        .expect("quarter row");
    assert!(
        row.contains("*/15 3 1 1 *") && row.contains("<30s"),
        "{row}"
    );

    agent.stop();
    let list = list_json(&dir);
    assert_eq!(list["agent"]["state"], "stopped", "{list:#}");
    assert_eq!(task(&list, "quarter")["next"], Value::Null, "nothing fires");
    assert_eq!(task(&list, "hello")["last"]["exit_code"], 3, "last known");
    let (code, text, _) = tool(&dir, &["list"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("agent: not running (stopped "), "{text}");
    assert!(
        !dir.state().join("control.sock").exists(),
        "the socket goes with the agent"
    );

    // An agent that died without a clean stop: its pid names no process (a child that has
    // been reaped), so it is gone, whatever the file says.
    let mut dead = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = dead.id();
    dead.wait().expect("reap");
    let mut status = status_file(&dir);
    status["agent"]["stopped_ms"] = Value::Null;
    status["agent"]["pid"] = json!(dead_pid);
    write_status(&dir, &status);
    let list = list_json(&dir);
    assert_eq!(list["agent"]["state"], "gone", "{list:#}");
    let (_, text, _) = tool(&dir, &["list"]);
    assert!(text.contains("ended without a clean stop"), "{text}");
    cleanup(dir);
}

#[test]
fn list_says_when_no_agent_ever_ran() {
    let dir = TestDir::new("list-none");
    let (code, _, err) = tool(&dir, &["list"]);
    assert_eq!(code, 2);
    assert!(err.contains("no local agent has run"), "{err}");
    let (code, _, err) = tool(&dir, &["run", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("no agent is running"), "{err}");
    std::fs::remove_dir(dir.state()).expect("remove the empty state dir");
    let (code, _, err) = tool(&dir, &["list"]);
    assert_eq!(code, 2);
    assert!(err.contains("no local agent has run"), "{err}");
    let (code, _, err) = tool(&dir, &["run", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("no agent is running"), "{err}");
    cleanup(dir);
}

#[test]
fn run_starts_a_task_now_once_and_obeys_non_overlap() {
    let dir = TestDir::new("run-now");
    let go = dir.path("go");
    // Never due by itself during the test (1 January 2099).
    dir.task(
        "slow",
        &json!({
            "command": format!("until [ -e '{}' ]; do sleep 0.1; done; echo done", go.display()),
            "cron": "0 0 0 1 1 ? 2099",
        }),
    );
    let agent = Agent::start(&dir, &[]);
    agent.expect_line("task=slow invoke_version=1 phase=schedule");
    // The control socket is bound before the tasks are read.
    let (code, out, err) = tool(&dir, &["run", "slow"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("started task=slow invoke_version=1"), "{out}");
    assert!(out.contains("assistd journal --state-dir"), "{out}");
    agent.expect_line("task=slow invoke_version=1 phase=start");

    let (code, out, err) = tool(&dir, &["run", "slow"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("already queued or running"), "{out}");
    let (code, _, err) = tool(&dir, &["run", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("no task \"nope\""), "{err}");
    let list = wait_list(&agent, &dir, "slow running", |l| {
        l["tasks"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["id"] == "slow" && !t["running"].is_null())
        })
    });
    assert_eq!(
        task(&list, "slow")["running"]["invoke_version"],
        1,
        "{list:#}"
    );
    assert_eq!(task(&list, "slow")["last"], Value::Null, "{list:#}");

    std::fs::write(&go, b"").expect("go");
    let records = agent.wait_journal(&dir, "slow finished", |r| count(r, "slow", "finished") == 1);
    assert_eq!(count(&records, "slow", "finished"), 1, "one run, not two");
    drop(agent);
    cleanup(dir);
}

#[test]
fn run_is_refused_to_other_users() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED run_is_refused_to_other_users: needs root to run `assistd run` as daemon"
        );
        return;
    }
    let dir = TestDir::new("run-refused");
    dir.task("t", &json!({"command": "true", "cron": "0 0 0 1 1 ? 2099"}));
    let agent = Agent::start(&dir, &[]);
    agent.expect_line("task=t invoke_version=1 phase=schedule");
    let bin = Path::new(util::bin());
    let readable = std::process::Command::new(bin)
        .arg("--version")
        .uid(1)
        .output()
        .is_ok_and(|o| o.status.success());
    if !readable {
        eprintln!(
            "SKIPPED run_is_refused_to_other_users: daemon cannot execute {}",
            bin.display()
        );
        drop(agent);
        cleanup(dir);
        return;
    }
    let out = assistd()
        .args(["run", "t", "--state-dir"])
        .arg(dir.state())
        .uid(1)
        .output()
        .expect("run as daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("only root or the state dir's owner"), "{err}");
    assert_eq!(count(&dir.journal(), "t", "finished"), 0);
    drop(agent);
    cleanup(dir);
}

#[test]
fn catch_up_runs_once_after_a_stop_and_start_when_a_run_was_missed() {
    let dir = TestDir::new("catch-up");
    // 1 January, 03:00 UTC: never due by itself while the test runs (TZ=UTC), unless on
    // that very minute.
    let yearly = "0 0 3 1 1 ?";
    for id in ["missed", "ahead", "plain"] {
        let catch_up = if id == "plain" { "none" } else { "last" };
        dir.task(
            id,
            &json!({"command": "echo ran", "cron": yearly, "catchUp": catch_up}),
        );
    }
    let mut agent = Agent::start(&dir, &[]);
    expect_lines(
        &agent,
        &[
            "task=missed invoke_version=1 phase=catch-up none: the task is new",
            "task=ahead invoke_version=1 phase=catch-up none: the task is new",
        ],
    );
    agent.stop();

    // Fake the last runs an earlier agent would have left: two years ago (two 1 January
    // runs missed: still one catch-up run), and a year ahead (the clock went back).
    let mut status = status_file(&dir);
    let year_ms = 366 * 24 * 3600 * 1000_i64;
    for t in status["tasks"].as_array_mut().expect("tasks") {
        let started = match t["id"].as_str() {
            Some("ahead") => now_ms() + year_ms,
            _ => now_ms() - 2 * year_ms,
        };
        t["last"] = json!({
            "invoke_version": 1, "started_ms": started, "ended_ms": started + 1000,
            "result": "finished", "exit_code": 0,
        });
    }
    write_status(&dir, &status);
    // A task this agent never saw does not catch up.
    dir.task(
        "fresh",
        &json!({"command": "echo ran", "cron": yearly, "catchUp": "last"}),
    );

    let mut agent = Agent::start(&dir, &[]);
    expect_lines(
        &agent,
        &[
            "task=missed invoke_version=2 phase=catch-up a run was due",
            "task=fresh invoke_version=1 phase=catch-up none: the task is new",
            "task=ahead invoke_version=2 phase=catch-up none: no run was due since",
        ],
    );
    agent.wait_journal(&dir, "missed finished", |r| {
        count(r, "missed", "finished") == 1
    });
    expect_lines(&agent, &["task=missed invoke_version=2 phase=end"]);
    agent.stop();
    let records = dir.journal();
    assert_eq!(
        count(&records, "missed", "finished"),
        1,
        "one run, not one per missed run"
    );
    for id in ["ahead", "plain", "fresh"] {
        assert_eq!(count(&records, id, "finished"), 0, "{id} ran: {records:#?}");
    }
    let list = list_json(&dir);
    assert_eq!(task(&list, "missed")["catch_up"], "last");
    assert_eq!(task(&list, "plain")["catch_up"], "none");
    assert_eq!(task(&list, "missed")["last"]["result"], "finished");
    cleanup(dir);
}

#[test]
fn random_delay_waits_within_its_bound_before_each_firing() {
    let dir = TestDir::new("random-delay");
    // Every 5 s, each firing first waits [0, 4 s): firings do not overlap on an idle machine,
    // and when they do (a loaded one), the skipped firing logs nothing and runs nothing.
    dir.task(
        "spread",
        &json!({"command": "true", "cron": "*/5 * * * * *", "randomDelay": 4}),
    );
    let agent = Agent::start(&dir, &[]);
    let mut fired = Vec::new();
    for _ in 0..3 {
        let line = agent.expect_line("task=spread invoke_version=1 phase=fire scheduled=");
        let field = |name: &str| -> i64 {
            let at = line.find(name).expect("field") + name.len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .expect("number")
        };
        fired.push((field("scheduled="), field("random_delay_ms=")));
    }
    let records = agent.wait_journal(&dir, "three runs", |r| count(r, "spread", "finished") >= 3);
    drop(agent);
    let starts: Vec<i64> = records
        .iter()
        .filter(|r| r["task"] == "spread" && r["event"] == "finished")
        .map(|r| r["start"].as_i64().expect("start"))
        .collect();
    for (i, (scheduled, delay)) in fired.iter().enumerate() {
        assert!(
            (0..4000).contains(delay),
            "firing {i}: delay {delay} ms outside [0, 4000)"
        );
        assert_eq!(scheduled % 5000, 0, "undelayed times are the cron's");
        // Invocations of one task never overlap, so the i-th firing is the i-th run. It
        // started no earlier than its delay, and (generous slack for a loaded machine) not
        // a minute later.
        let started = starts[i];
        assert!(
            started >= scheduled + delay,
            "firing {i}: started {started} before {scheduled} + {delay}"
        );
        assert!(started - scheduled < 4000 + 60_000, "firing {i}: {started}");
    }
    assert!(
        fired.iter().any(|(_, d)| *d > 0),
        "three delays of 0 ms: {fired:?}"
    );
    cleanup(dir);
}

#[test]
fn next_shows_a_task_files_undelayed_times_and_says_a_delay_applies() {
    let dir = TestDir::new("next-delay");
    dir.task(
        "spread",
        &json!({"command": "true", "cron": "30 3 * * *", "randomDelay": 600}),
    );
    let file = dir.tasks().join("spread.json");
    let out = assistd()
        .args(["next", "--task"])
        .arg(&file)
        .args(["--from", "2031-01-01T00:00:00Z", "--count", "2"])
        .output()
        .expect("next");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "2031-01-01T03:30:00Z\n2031-01-02T03:30:00Z\n");
    assert!(stderr.contains("randomDelay 600"), "{stderr}");
    assert!(stderr.contains("undelayed"), "{stderr}");

    let out = assistd()
        .args(["next", "0 0 * * * ?", "--random-delay", "5", "--count", "1"])
        .output()
        .expect("next");
    assert!(String::from_utf8_lossy(&out.stderr).contains("randomDelay 5"));
    let out = assistd()
        .args(["next", "0 0 * * * ?", "--random-delay", "-5"])
        .output()
        .expect("next");
    assert_eq!(out.status.code(), Some(2));
    cleanup(dir);
}
