//! Restart recovery end to end: an agent SIGKILLed while its task runs leaves a run record;
//! the next agent on the same state dir kills the task's whole process group, reports the
//! invocation as `error` with `errCode=AgentRestarted`, and never runs it again when the
//! server delivers it once more.

mod support;
mod util;

use support::server::{shell_entry, Reply, Server, OUTPUT, TASK_LIST};
use support::{about, expect, start_remote};
use util::{alive, read_pid, wait_gone, TestDir};

const ERROR: &str = "/luban/api/v1/task/error";
const RUNNING: &str = "/luban/api/v1/task/running";

fn list(run: &[String]) -> Reply {
    Reply::ok(format!(
        r#"{{"code":200,"instanceId":"i-test","run":[{}],"stop":[],"test":[]}}"#,
        run.join(",")
    ))
}

#[test]
fn a_task_left_by_a_killed_agent_is_killed_reported_and_never_run_again() {
    let dir = TestDir::new("recover-sigkill");
    let server = Server::start();
    let pid_file = dir.path("bg.pid");
    let runs = dir.path("runs");
    let script = format!(
        "echo run >> {}; sleep 300 & echo $! > {}; wait",
        runs.display(),
        pid_file.display()
    );
    let task = shell_entry("t-orphan", &script, "", "Once", OUTPUT);
    // Both agents get the task on their startup fetch, as a server that never heard a final
    // report re-delivers it.
    server.set_default(TASK_LIST, list(&[task]));
    let mut first = start_remote(&dir, &server, &[]);
    let bg = read_pid(&first, &pid_file);
    util::wait_run_record(&first, &dir);
    assert!(alive(bg));
    first.signal(libc::SIGKILL);
    first.wait_exit("the agent did not die of SIGKILL");
    assert!(
        alive(bg),
        "SIGKILL of the agent alone must not end the task"
    );
    let records: Vec<_> = std::fs::read_dir(dir.state().join("running"))
        .expect("running dir")
        .flatten()
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");

    let second = start_remote(&dir, &server, &[]);
    let err = expect(&second, &server, "the error report", |r| {
        about(r, ERROR, "t-orphan")
    });
    assert!(
        err.query
            .contains("&errCode=AgentRestarted&errDesc=AgentRestarted"),
        "{}",
        err.query
    );
    assert!(
        err.query.contains("&exitCode=-1&dropped=0"),
        "{}",
        err.query
    );
    wait_gone(&second, bg);
    second.expect_line("it never runs twice");
    let ran = std::fs::read_to_string(&runs).expect("runs file");
    assert_eq!(ran, "run\n", "the interrupted invocation ran again");
    let errors = server
        .requests()
        .iter()
        .filter(|r| about(r, ERROR, "t-orphan"))
        .count();
    assert_eq!(errors, 1);
    assert!(
        !server
            .requests()
            .iter()
            .filter(|r| about(r, RUNNING, "t-orphan"))
            .any(|r| r.received > err.received),
        "the second agent started the task"
    );
}

/// The soak found it: an agent killed while a final report's burst runs (the server not
/// answering, or answering too late) lost the report, or left a run record that the next
/// agent reported as a second, different final. Now the final is written to the spool before
/// its first attempt: the next agent sends exactly that report, once, and makes no
/// `AgentRestarted` error for the invocation.
#[test]
fn a_final_report_whose_burst_a_kill_cut_short_arrives_once_from_the_next_agent() {
    const FINISH: &str = "/luban/api/v1/task/finish";
    let dir = TestDir::new("recover-burst");
    let server = Server::start();
    server.set_default(FINISH, Reply::status(503));
    let runs = dir.path("runs");
    let script = format!("echo run >> {}; echo done", runs.display());
    // Both agents get the task on their startup fetch: the server has not heard of its end.
    server.set_default(
        TASK_LIST,
        list(&[shell_entry("t-burst", &script, "", "Once", OUTPUT)]),
    );
    let mut first = start_remote(&dir, &server, &[]);
    // The first attempt was refused; the next comes 2 s later. Kill the agent in between.
    let refused = expect(&first, &server, "the first finish attempt", |r| {
        about(r, FINISH, "t-burst")
    });
    first.signal(libc::SIGKILL);
    first.wait_exit("the agent did not die of SIGKILL");
    let spooled: Vec<String> = std::fs::read_dir(dir.state().join("spool"))
        .expect("spool dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        spooled.len() == 1 && spooled[0].ends_with(".sending"),
        "{spooled:?}"
    );

    server.set_default(FINISH, Reply::ok("success"));
    let before = server.requests().len();
    let second = start_remote(&dir, &server, &[]);
    // The refused attempt, then the one the second agent sends.
    let sent = support::expect_n(&second, &server, "the finish from the spool", 2, |r| {
        about(r, FINISH, "t-burst")
    })
    .pop()
    .expect("two");
    assert_eq!(sent.query, refused.query, "the same request, byte for byte");
    assert_eq!(sent.body_text(), "done\n");
    // The record went when the report was written ahead, before its first attempt.
    assert_eq!(
        std::fs::read_dir(dir.state().join("running"))
            .expect("running dir")
            .count(),
        0
    );
    // Give a wrong second report the time to show up: the spool's startup pass is done once
    // the startup fetch went out.
    support::expect_n(&second, &server, "the startup fetch", 2, |r| {
        r.path == TASK_LIST
    });
    let after: Vec<_> = server.requests().into_iter().skip(before).collect();
    let finals = after
        .iter()
        .filter(|r| r.param("taskId") == Some("t-burst") && r.path != TASK_LIST)
        .count();
    assert_eq!(finals, 1, "{after:#?}");
    // Delivered again, it did not run again: its final was waiting in the spool.
    second.expect_line("it never runs twice");
    assert_eq!(std::fs::read_to_string(&runs).expect("runs"), "run\n");
}
