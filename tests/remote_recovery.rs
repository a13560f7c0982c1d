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
