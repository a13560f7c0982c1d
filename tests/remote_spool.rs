//! The report spool end to end: a final report the server refuses reaches it later from
//! `<state-dir>/spool/`, byte-identical to the burst's last attempt, and a report left by an
//! agent that stopped is sent by the next one before its startup fetch's tasks report.

mod support;
mod util;

use support::server::{shell_entry, Reply, Server, OUTPUT, TASK_LIST};
use support::{about, expect, expect_n, start_remote};
use util::TestDir;

const FINISH: &str = "/luban/api/v1/task/finish";

fn list(run: &[String]) -> Reply {
    Reply::ok(format!(
        r#"{{"code":200,"instanceId":"i-test","run":[{}],"stop":[],"test":[]}}"#,
        run.join(",")
    ))
}

fn spool_files(dir: &TestDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.state().join("spool"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The spool once every report the server answered is gone from it: a final report is
/// written ahead before its first attempt and deleted just after the server's answer, so the
/// file may outlive the request the server saw by a moment. Bounded.
fn spool_files_settled(dir: &TestDir) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let names = spool_files(dir);
        if names.is_empty() || std::time::Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_final_report_refused_by_the_burst_arrives_from_the_spool() {
    let dir = TestDir::new("spool-outage");
    let server = Server::start();
    // The whole burst (1 + 3 attempts) is refused; the spool's re-send is accepted.
    for _ in 0..4 {
        server.push(FINISH, Reply::status(500));
    }
    server.push(
        TASK_LIST,
        list(&[shell_entry("t-sp", "echo kept", "", "Once", OUTPUT)]),
    );
    let agent = start_remote(&dir, &server, &[]);
    agent.expect_line("spooled as");
    let finishes = expect_n(&agent, &server, "burst and re-send", 5, |r| {
        about(r, FINISH, "t-sp")
    });
    let (burst_last, resend) = (&finishes[3], &finishes[4]);
    assert_eq!(
        resend.target(),
        burst_last.target(),
        "re-send is byte-identical"
    );
    assert_eq!(resend.body, burst_last.body);
    assert_eq!(resend.body_text(), "kept\n");
    let gap = resend
        .received
        .duration_since(burst_last.received)
        .unwrap_or_default();
    assert!(
        gap.as_secs() >= 9,
        "the first re-send came {gap:?} after the burst (at least 10 s)"
    );
    agent.expect_line("delivered from the spool");
    assert_eq!(spool_files_settled(&dir), Vec::<String>::new());
}

#[test]
fn a_report_left_in_the_spool_is_sent_by_the_next_agent_before_new_work() {
    let dir = TestDir::new("spool-restart");
    let server = Server::start();
    server.set_default(FINISH, Reply::status(503));
    server.push(
        TASK_LIST,
        list(&[shell_entry("t-left", "echo left", "", "Once", OUTPUT)]),
    );
    let mut first = start_remote(&dir, &server, &[]);
    first.expect_line("spooled as");
    first.stop();
    assert_eq!(spool_files(&dir).len(), 1, "{:?}", spool_files(&dir));

    server.set_default(FINISH, Reply::ok("success"));
    let before = server.requests().len();
    server.push(
        TASK_LIST,
        list(&[shell_entry("t-new", "echo new", "", "Once", OUTPUT)]),
    );
    let second = start_remote(&dir, &server, &[]);
    expect(&second, &server, "the new task's finish", |r| {
        about(r, FINISH, "t-new")
    });
    let after: Vec<_> = server.requests().into_iter().skip(before).collect();
    let left = after
        .iter()
        .position(|r| about(r, FINISH, "t-left"))
        .unwrap_or_else(|| second.fail("the spooled report was not sent"));
    let fetch = after
        .iter()
        .position(|r| r.path == TASK_LIST)
        .unwrap_or_else(|| second.fail("no startup fetch"));
    assert!(
        left < fetch,
        "the old report went out after the startup fetch"
    );
    assert_eq!(after[left].body_text(), "left\n");
    assert_eq!(
        after.iter().filter(|r| about(r, FINISH, "t-left")).count(),
        1,
        "sent more than once"
    );
    second.expect_line("delivered from the spool");
    assert_eq!(spool_files_settled(&dir), Vec::<String>::new());
}
