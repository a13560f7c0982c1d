//! The agent refuses a start it cannot honour with one line on stderr and exit code 2, before
//! it creates anything (no state dir), instead of running on.

mod util;

use util::{assistd, TestDir};

fn refused(dir: &TestDir, env: &[(&str, &str)], args: &[&str]) -> String {
    let state = dir.path("state-new");
    let out = assistd()
        .envs(env.iter().copied())
        .arg("agent")
        .args(args)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run assistd agent");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!state.exists(), "{args:?} created the state dir");
    err
}

#[test]
fn bad_starts_are_refused_with_one_line() {
    let dir = TestDir::new("start-refused");
    let tasks = dir.tasks().display().to_string();
    let err = refused(&dir, &[], &["--local", &tasks, "--server", "not a url"]);
    assert!(err.contains("exclude each other"), "{err}");
    let err = refused(&dir, &[], &["--server", "not a url"]);
    assert!(err.contains("is not a server address"), "{err}");
    let missing = dir.path("nonexistent").display().to_string();
    let err = refused(&dir, &[], &["--local", &missing]);
    assert!(err.contains("does not exist"), "{err}");
    let err = refused(&dir, &[("TZ", "Mars/Olympus")], &["--local", &tasks]);
    assert!(err.contains("names no time zone"), "{err}");
    let log = dir.path("nolog/agent.log").display().to_string();
    let err = refused(&dir, &[], &["--local", &tasks, "--log-file", &log]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.path("nolog").exists(), "the log directory was created");
}

#[test]
fn a_posix_tz_runs_crons_in_its_zone() {
    let dir = TestDir::new("start-posix-tz");
    // 00:00 every day in JST (UTC+9) is 15:00 UTC.
    dir.task(
        "jst",
        &serde_json::json!({"command": "true", "cron": "0 0 0 * * ?"}),
    );
    let mut cmd = assistd();
    cmd.env("TZ", "JST-9")
        .arg("agent")
        .arg("--local")
        .arg(dir.tasks())
        .arg("--state-dir")
        .arg(dir.state());
    let agent = util::Agent::from_command(cmd, vec!["agent (TZ=JST-9)".to_string()]);
    let line = agent.expect_line("phase=schedule");
    assert!(line.contains("T15:00:00+00:00"), "{line}");
}
