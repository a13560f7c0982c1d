//! The real binary in local mode with real child processes.

mod util;

use serde_json::json;
use util::{count, read_pid, record, wait_gone, Agent, TestDir};

#[test]
fn a_once_task_runs_and_its_result_is_journaled() {
    let dir = TestDir::new("once");
    dir.task(
        "hello",
        &json!({"command": "echo hello; echo oops >&2; exit 3"}),
    );
    let agent = Agent::start(&dir, &[]);
    let records = agent.wait_journal(&dir, "hello finished", |r| {
        count(r, "hello", "finished") == 1
    });
    let rec = record(&records, "hello", "finished");
    assert_eq!(rec["exit_code"], 3);
    assert_eq!(rec["invoke_version"], 1);
    assert_eq!(rec["output"], "hello\noops\n");
    assert_eq!(rec["dropped"], 0);
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let dir = TestDir::new("timeout");
    let pidfile = dir.path("bg.pid");
    dir.task(
        "slow",
        &json!({"command": format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display()), "timeout": 1}),
    );
    let agent = Agent::start(&dir, &[]);
    let bg = read_pid(&agent, &pidfile);
    let records = agent.wait_journal(&dir, "slow timeout", |r| count(r, "slow", "timeout") == 1);
    let rec = records
        .iter()
        .find(|r| r["event"] == "timeout")
        .expect("timeout record");
    assert_eq!(rec["exit_code"], 1);
    wait_gone(&agent, bg);
}

#[test]
fn removing_a_running_task_and_reloading_stops_it() {
    let dir = TestDir::new("cancel");
    let pidfile = dir.path("bg.pid");
    dir.task(
        "long",
        &json!({"command": format!("sleep 300 & echo $! > {}; wait", pidfile.display())}),
    );
    let agent = Agent::start(&dir, &[]);
    let bg = read_pid(&agent, &pidfile);
    dir.remove_task("long");
    agent.signal(libc::SIGHUP);
    let records = agent.wait_journal(&dir, "long stopped", |r| count(r, "long", "stopped") == 1);
    let rec = records
        .iter()
        .find(|r| r["event"] == "stopped")
        .expect("stopped record");
    assert_eq!(rec["result"], "killed");
    wait_gone(&agent, bg);
}

#[test]
fn huge_output_keeps_the_head_and_the_tail_and_counts_the_rest() {
    let dir = TestDir::new("flood");
    // 50 MB: 'a' for the first 6000 bytes, 'b' in the middle, 'z' in the last 6000.
    let script = "head -c 6000 /dev/zero | tr '\\0' a; head -c 49988000 /dev/zero | tr '\\0' b; head -c 6000 /dev/zero | tr '\\0' z";
    dir.task("flood", &json!({"command": script}));
    let agent = Agent::start(&dir, &[]);
    let records = agent.wait_journal(&dir, "flood finished", |r| {
        count(r, "flood", "finished") == 1
    });
    let running: String = records
        .iter()
        .filter(|r| r["task"] == "flood" && r["event"] == "running")
        .map(|r| r["output"].as_str().unwrap_or_default().to_string())
        .collect();
    let rec = records
        .iter()
        .find(|r| r["event"] == "finished")
        .expect("finished");
    let all = running + rec["output"].as_str().expect("output");
    assert_eq!(rec["dropped"], 50_000_000 - 12_000);
    assert_eq!(all.len(), 12_000);
    assert_eq!(all, format!("{}{}", "a".repeat(6000), "z".repeat(6000)));
}

#[test]
fn a_periodic_task_never_overlaps_itself() {
    let dir = TestDir::new("overlap");
    let lock = dir.path("lock");
    let script = format!(
        "mkdir {0} 2>/dev/null || echo OVERLAP; sleep 2; rmdir {0}",
        lock.display()
    );
    dir.task("tick", &json!({"command": script, "cron": "rate(1s)"}));
    let agent = Agent::start(&dir, &[]);
    agent.expect_line("skip invocation");
    let records = agent.wait_journal(&dir, "two finished ticks", |r| {
        count(r, "tick", "finished") >= 2
    });
    for rec in records.iter().filter(|r| r["task"] == "tick") {
        assert!(
            !rec["output"]
                .as_str()
                .unwrap_or_default()
                .contains("OVERLAP"),
            "overlapping run: {rec}"
        );
    }
}

#[test]
fn sighup_schedules_new_files_and_gives_changed_files_a_new_version() {
    let dir = TestDir::new("reload");
    dir.task("a", &json!({"command": "echo one"}));
    let agent = Agent::start(&dir, &[]);
    agent.wait_journal(&dir, "a v1 finished", |r| count(r, "a", "finished") == 1);
    dir.task("a", &json!({"command": "echo two"}));
    dir.task("b", &json!({"command": "echo bee"}));
    agent.signal(libc::SIGHUP);
    let records = agent.wait_journal(&dir, "a v2 and b finished", |r| {
        count(r, "a", "finished") == 2 && count(r, "b", "finished") == 1
    });
    let a2 = records
        .iter()
        .filter(|r| r["task"] == "a" && r["event"] == "finished")
        .nth(1)
        .expect("second run of a");
    assert_eq!(a2["invoke_version"], 2);
    assert_eq!(a2["output"], "two\n");
}

#[test]
fn malformed_files_are_reported_and_the_others_still_run() {
    let dir = TestDir::new("malformed");
    std::fs::write(
        dir.tasks().join("broken.json"),
        "{\"command\": \"echo hi\",,}",
    )
    .expect("write");
    dir.task(
        "badcron",
        &json!({"command": "echo x", "cron": "0 0 25 * * ?"}),
    );
    dir.task("good", &json!({"command": "echo fine"}));
    let agent = Agent::start(&dir, &[]);
    agent.expect_line("broken.json");
    let records = agent.wait_journal(&dir, "good finished and badcron invalid", |r| {
        count(r, "good", "finished") == 1 && count(r, "badcron", "invalid") == 1
    });
    let invalid = records
        .iter()
        .find(|r| r["task"] == "badcron")
        .expect("invalid record");
    assert_eq!(invalid["param"], "cron");
    // The reference's wire value (spec §5.5, §10.9): a cron syntax error alone.
    assert_eq!(invalid["value"], "syntax error in hour field: '25'");
}

#[test]
fn sigterm_kills_running_tasks_after_the_grace_period_and_reports_them() {
    let dir = TestDir::new("shutdown");
    let pidfile = dir.path("bg.pid");
    dir.task(
        "long",
        &json!({"command": format!("echo $$ > {}; sleep 300", pidfile.display())}),
    );
    std::fs::write(dir.path("config.json"), r#"{"shutdown_grace_secs": 1}"#).expect("write config");
    let mut agent = Agent::start(
        &dir,
        &["--config", dir.path("config.json").to_str().expect("utf-8")],
    );
    let pid = read_pid(&agent, &pidfile);
    let status = agent.stop();
    assert!(status.success(), "agent exit status {status:?}");
    assert_eq!(
        dir.records("long", "stopped").len(),
        1,
        "journal: {:#?}",
        dir.journal()
    );
    assert!(!util::alive(pid));
}

#[test]
fn a_second_agent_on_the_same_state_dir_refuses_to_start() {
    let dir = TestDir::new("lock");
    let agent = Agent::start(&dir, &[]);
    agent.expect_line("local mode");
    let out = util::run(&[
        "agent",
        "--local",
        dir.tasks().to_str().expect("utf-8"),
        "--state-dir",
        dir.state().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_cron_reports_completed_after_its_last_run() {
    let dir = TestDir::new("completed");
    // The one run's time is taken once the agent watches its directory, so a slow start on
    // a loaded machine cannot put it in the past (it would be reported invalid).
    let agent = Agent::start(&dir, &[]);
    agent.expect_line("bad file(s)");
    let when = chrono::Utc::now() + chrono::Duration::seconds(4);
    let expr = when.format("%S %M %H %d %m ? %Y UTC").to_string();
    dir.task_by_rename("last", &json!({"command": "echo done", "cron": expr}));
    let records = agent.wait_journal(&dir, "last stopped completed", |r| {
        count(r, "last", "stopped") == 1
    });
    let events: Vec<&str> = records
        .iter()
        .filter(|r| r["task"] == "last")
        .filter_map(|r| r["event"].as_str())
        .collect();
    assert_eq!(events, vec!["finished", "stopped"]);
    let stopped = record(&records, "last", "stopped");
    assert_eq!(stopped["result"], "completed");
}

#[test]
fn relative_task_and_state_dirs_work() {
    let dir = TestDir::new("relative");
    dir.task(
        "rel",
        &json!({"command": "echo relative", "workingDirectory": "/"}),
    );
    let args = ["agent", "--local", "tasks", "--state-dir", "state"]
        .map(String::from)
        .to_vec();
    let agent = Agent::spawn(args, &dir.root);
    let records = agent.wait_journal(&dir, "rel finished", |r| count(r, "rel", "finished") == 1);
    let rec = records.iter().find(|r| r["task"] == "rel").expect("record");
    assert_eq!(
        (rec["exit_code"].as_i64(), rec["output"].as_str()),
        (Some(0), Some("relative\n"))
    );
}

#[test]
fn reboot_tasks_run_once_per_boot_and_next_reboot_only_waits_for_a_reboot() {
    let dir = TestDir::new("reboot");
    dir.task(
        "every",
        &json!({"command": "echo booted", "repeat": "EveryReboot"}),
    );
    dir.task(
        "next",
        &json!({"command": "echo next boot", "repeat": "NextRebootOnly"}),
    );
    dir.task("marker", &json!({"command": "echo marker"}));
    {
        let mut agent = Agent::start(&dir, &[]);
        agent.wait_journal(&dir, "every and marker finished", |r| {
            count(r, "every", "finished") == 1 && count(r, "marker", "finished") == 1
        });
        assert!(agent.stop().success());
    }
    // Same boot, new agent: neither the reboot tasks nor the once task that already ran are run
    // again; a new once task is.
    dir.task("marker2", &json!({"command": "echo marker2"}));
    let mut agent = Agent::start(&dir, &[]);
    let records = agent.wait_journal(&dir, "marker2 finished", |r| {
        count(r, "marker2", "finished") == 1
    });
    assert!(agent.stop().success());
    assert_eq!(
        count(&records, "every", "finished"),
        1,
        "EveryReboot ran twice in one boot"
    );
    assert_eq!(
        count(&records, "next", "finished"),
        0,
        "NextRebootOnly ran before a reboot"
    );
    assert_eq!(
        count(&records, "marker", "finished"),
        1,
        "a Once task ran again after an agent restart"
    );
}

#[test]
fn log_file_receives_the_log_instead_of_stderr() {
    let dir = TestDir::new("logfile");
    dir.task("hello", &json!({"command": "echo hi"}));
    let log = dir.path("logs/assistd.log");
    // The agent refuses a log file whose directory does not exist (tests/local_start.rs).
    std::fs::create_dir(dir.path("logs")).expect("mkdir logs");
    let mut agent = Agent::start(&dir, &["--log-file", log.to_str().expect("utf-8")]);
    // Nothing reaches stderr, so wait on the journal file itself (bounded poll in wait_journal).
    agent.wait_journal(&dir, "hello finished", |r| {
        count(r, "hello", "finished") == 1
    });
    assert!(agent.stop().success());
    let text = std::fs::read_to_string(&log).expect("log file written");
    assert!(
        text.contains("task=hello invoke_version=1 phase=start"),
        "{text}"
    );
    assert!(
        agent.log.lock().expect("log").is_empty(),
        "stderr got log lines"
    );
}

#[test]
fn sighup_rereads_the_config_file() {
    let dir = TestDir::new("config-reload");
    let config = dir.path("config.json");
    std::fs::write(&config, r#"{"log_level": "info"}"#).expect("write config");
    let agent = Agent::start(&dir, &["--config", config.to_str().expect("utf-8")]);
    agent.expect_line("phase=load");
    std::fs::write(&config, r#"{"log_level": "debug", "workers": 3}"#).expect("write config");
    agent.signal(libc::SIGHUP);
    agent.expect_line("log_level is now DEBUG");
    agent.expect_line("\"workers\" changed; it takes effect when the agent restarts");
    std::fs::write(&config, r#"{"log_level": "debug",,}"#).expect("write config");
    agent.signal(libc::SIGHUP);
    agent.expect_line("keeping the running configuration");
}

#[test]
fn a_task_left_by_a_killed_agent_is_killed_and_journaled_as_an_error_at_restart() {
    let dir = TestDir::new("recover-local");
    let pidfile = dir.path("bg.pid");
    dir.task(
        "orphan",
        &json!({"command": format!("sleep 300 & echo $! > {}; wait", pidfile.display())}),
    );
    let mut first = Agent::start(&dir, &[]);
    let bg = read_pid(&first, &pidfile);
    util::wait_run_record(&first, &dir);
    first.signal(libc::SIGKILL);
    first.wait_exit("the agent did not die of SIGKILL");
    assert!(
        util::alive(bg),
        "SIGKILL of the agent alone must not end the task"
    );

    let second = Agent::start(&dir, &[]);
    let records = second.wait_journal(&dir, "orphan error", |r| count(r, "orphan", "error") == 1);
    let rec = record(&records, "orphan", "error");
    assert_eq!(rec["err_code"], "AgentRestarted");
    assert_eq!(rec["exit_code"], -1);
    wait_gone(&second, bg);
}

#[test]
fn a_task_gets_its_env_and_its_output_lines_reach_the_log() {
    let dir = TestDir::new("env-logoutput");
    dir.task(
        "envt",
        &json!({
            "command": "echo \"greeting=$GREETING id=$ASSISTD_TASK_ID v=$ASSISTD_INVOKE_VERSION user=$USER\"; printf 'second'",
            "env": {"GREETING": "hello world"},
            "logOutput": true
        }),
    );
    let agent = Agent::start(&dir, &[]);
    agent.expect_line(
        "task=envt invoke_version=1 phase=output | greeting=hello world id=envt v=1 user=",
    );
    agent.expect_line("task=envt invoke_version=1 phase=output | second");
    let records = agent.wait_journal(&dir, "envt finished", |r| count(r, "envt", "finished") == 1);
    let rec = record(&records, "envt", "finished");
    assert!(
        rec["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("greeting=hello world id=envt v=1 user=")),
        "{rec}"
    );
}

#[test]
fn a_task_file_may_not_set_the_agents_own_variables() {
    let dir = TestDir::new("env-bad");
    dir.task(
        "badenv",
        &json!({"command": "true", "env": {"ASSISTD_TASK_ID": "x"}}),
    );
    let check = util::run(&["check", dir.tasks().to_str().expect("utf-8")]);
    assert_eq!(check.status.code(), Some(1));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("env: \"ASSISTD_TASK_ID\" is set by the agent"),
        "{said}"
    );
}
