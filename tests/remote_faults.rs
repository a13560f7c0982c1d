//! Fault injection against the control-plane double: the server down at start and in the
//! middle of a task, 500s, a hang past the request timeout, connection resets, truncated and
//! slow bodies, 408 storms, and task-signature certificates that cannot be had or do not
//! verify. In every case the agent keeps running (a task sent after the faults still runs and
//! reports) and every invocation gets exactly one final report that the server accepted, once
//! duplicates of the same report (retries the agent made because it never saw the answer) are
//! counted once. A final the double answered 500 to, or never answered in full, is not accepted.

mod support;
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use support::server::{
    rsa_task_signature, shell_entry, task_list, Reply, Request, Server, HEARTBEAT, OUTPUT,
    SIGN_CERT, TASK_LIST, VECTOR_INSTANCE_ID, VECTOR_USER_ID,
};
use support::{about, expect, start_remote};
use util::{Agent, TestDir, DEADLINE};

const FINISH: &str = "/luban/api/v1/task/finish";
const RUNNING: &str = "/luban/api/v1/task/running";
const INVALID: &str = "/luban/api/v1/task/invalid";
/// Every endpoint of a final report (spec §2.3).
const FINALS: [&str; 5] = [
    FINISH,
    "/luban/api/v1/task/timeout",
    "/luban/api/v1/task/error",
    "/luban/api/v1/task/stopped",
    INVALID,
];

fn once(task: &str, script: &str) -> String {
    shell_entry(task, script, "", "Once", OUTPUT)
}

fn list(run: &[String]) -> Reply {
    task_list(run, &[], &[], &[])
}

/// Task id, invoke version, start.
type Invocation = (String, String, String);
/// Endpoint, query without `currentTime`, body.
type ReportIdentity = (String, String, Vec<u8>);

/// What identifies an invocation in its final report: task id, invoke version and start time
/// (an `invalid` report has no start; a task id has one invocation per version then).
fn invocation(r: &Request) -> Invocation {
    let p = |k| r.param(k).unwrap_or("").to_string();
    (p("taskId"), p("invokeVersion"), p("start"))
}

/// A report as it stays across the attempts of one burst and its spooled re-send: endpoint,
/// query without the attempt's `currentTime`, and body.
fn report_identity(r: &Request) -> ReportIdentity {
    let query: Vec<&str> = r
        .query
        .split('&')
        .filter(|kv| !kv.starts_with("currentTime="))
        .collect();
    (r.path.clone(), query.join("&"), r.body.clone())
}

/// Accepted final reports about `task`: per invocation, the distinct reports.
fn accepted_finals(log: &[Request], task: &str) -> BTreeMap<Invocation, BTreeSet<ReportIdentity>> {
    let mut out: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
    for r in log {
        if FINALS.contains(&r.path.as_str()) && r.param("taskId") == Some(task) && r.accepted() {
            out.entry(invocation(r))
                .or_default()
                .insert(report_identity(r));
        }
    }
    out
}

/// Waits until the server has accepted a final report about `task` on `path`.
fn expect_accepted(agent: &Agent, server: &Server, path: &str, task: &str) -> Request {
    match server.wait_for(Instant::now() + DEADLINE, |r| {
        about(r, path, task) && r.accepted()
    }) {
        Some(r) => r,
        None => agent.fail(&format!(
            "the server never accepted {path} about {task}; requests:\n{}",
            answered_listing(server)
        )),
    }
}

/// Every request with what it was answered, for failure messages.
fn answered_listing(server: &Server) -> String {
    server
        .requests()
        .iter()
        .map(|r| format!("{} {} -> {:?}", r.method, r.target(), r.answered))
        .collect::<Vec<_>>()
        .join("\n")
}

fn spool_files(dir: &TestDir) -> Vec<String> {
    std::fs::read_dir(dir.state().join("spool"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The end of every test: once the faults are over, a new task (`follow_up`, with id
/// `follow_id`) still runs and is reported; the agent then stops cleanly with nothing left in
/// its spool (after its exit nothing more can reach the server), and each of `tasks` and the
/// follow-up has exactly one accepted final report for exactly one invocation.
fn still_serves_then_exactly_once(
    mut agent: Agent,
    dir: &TestDir,
    server: &Server,
    follow_up: String,
    follow_id: &str,
    tasks: &[&str],
) {
    server.push(TASK_LIST, list(&[follow_up]));
    agent.signal(libc::SIGHUP);
    expect_accepted(&agent, server, FINISH, follow_id);
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    assert!(spool_files(dir).is_empty(), "left: {:?}", spool_files(dir));
    let log = server.requests();
    for task in tasks.iter().chain([&follow_id]) {
        let finals = accepted_finals(&log, task);
        assert_eq!(
            finals.len(),
            1,
            "{task}: accepted finals for {} invocations; requests:\n{}",
            finals.len(),
            answered_listing(server)
        );
        let reports = finals.values().next().expect("one invocation");
        assert_eq!(
            reports.len(),
            1,
            "{task}: {} different accepted final reports; requests:\n{}",
            reports.len(),
            answered_listing(server)
        );
    }
}

/// Makes a named pipe; a script that reads it blocks until the test writes.
fn fifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Writes a line into the fifo a running script reads. Opening blocks until the script has
/// the fifo open, so it runs on a thread and the wait is bounded.
fn release(agent: &Agent, path: &Path) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let r = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"go\n"));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => agent.fail(&format!("cannot write the fifo: {e}")),
        Err(_) => agent.fail("the script never opened its fifo"),
    }
}

#[test]
fn a_server_down_at_start_gets_every_report_once_it_is_up() {
    let dir = TestDir::new("faults-down-at-start");
    let server = Server::start();
    server.push(TASK_LIST, list(&[once("t-early", "echo early")]));
    // Nothing listens on the port while the agent starts: every connect is refused.
    server.down();
    let agent = start_remote(&dir, &server, &[]);
    agent.expect_line("startup fetch failed");
    server.up().expect("listen again on the same port");
    let fin = expect_accepted(&agent, &server, FINISH, "t-early");
    assert_eq!(fin.body_text(), "early\n");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-early"],
    );
}

#[test]
fn a_server_down_mid_task_and_past_the_first_resend_gets_the_report_from_the_spool() {
    let dir = TestDir::new("faults-down-mid-task");
    let server = Server::start();
    let gate = dir.path("gate");
    fifo(&gate);
    let entry = shell_entry(
        "t-mid",
        &format!("read line < {}; echo got $line", gate.display()),
        "",
        "Once",
        r#"{"interval":1000,"logQuota":12000,"skipEmpty":true,"sendStart":true}"#,
    );
    server.push(TASK_LIST, list(&[entry]));
    let agent = start_remote(&dir, &server, &[]);
    expect(&agent, &server, "start event", |r| {
        about(r, RUNNING, "t-mid")
    });
    server.down();
    release(&agent, &gate);
    // The burst fails (connections refused), the report is spooled, and the first re-send
    // fails too before the server comes back.
    agent.expect_line("spooled as");
    agent.expect_line("re-send failed");
    assert_eq!(spool_files(&dir).len(), 1, "{:?}", spool_files(&dir));
    server.up().expect("listen again on the same port");
    agent.expect_line("delivered from the spool");
    let fin = expect_accepted(&agent, &server, FINISH, "t-mid");
    assert_eq!(fin.body_text(), "got go\n");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-mid"],
    );
}

#[test]
fn five_hundreds_everywhere_delay_reports_but_lose_none() {
    let dir = TestDir::new("faults-500");
    let server = Server::start();
    server.push(HEARTBEAT, Reply::status(500));
    // The first startup fetch fails all four attempts; the 3 s retry gets the list.
    for _ in 0..4 {
        server.push(TASK_LIST, Reply::status(500));
    }
    server.push(
        TASK_LIST,
        list(&[
            once("t-a", "echo a"),
            once("t-b", "echo b; exit 3"),
            shell_entry("t-c", "sleep 30", r#","timeOut":"1""#, "Once", OUTPUT),
        ]),
    );
    server.push(RUNNING, Reply::status(500));
    // Six refusals shared by the two finish bursts (which task gets how many depends on which
    // finishes first): each burst may lose up to all four attempts and go through the spool.
    for _ in 0..6 {
        server.push(FINISH, Reply::status(500));
    }
    server.push("/luban/api/v1/task/timeout", Reply::status(502));
    server.push("/luban/api/v1/task/timeout", Reply::status(503));
    let agent = start_remote(&dir, &server, &[]);
    let b = expect_accepted(&agent, &server, FINISH, "t-b");
    assert!(b.query.contains("&exitCode=3&"), "{}", b.query);
    expect_accepted(&agent, &server, "/luban/api/v1/task/timeout", "t-c");
    expect_accepted(&agent, &server, FINISH, "t-a");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-a", "t-b", "t-c"],
    );
}

#[test]
fn a_server_that_hangs_past_the_request_timeouts_gets_every_report() {
    let dir = TestDir::new("faults-hang");
    let server = Server::start();
    // Longer than the task list's 8 s and the reports' 5 s request timeouts.
    server.push(TASK_LIST, Reply::Hang(Duration::from_secs(10)));
    server.push(TASK_LIST, list(&[once("t-hang", "echo hung")]));
    server.push(FINISH, Reply::Hang(Duration::from_secs(7)));
    server.push(FINISH, Reply::Hang(Duration::from_secs(7)));
    let agent = start_remote(&dir, &server, &[]);
    let fin = expect_accepted(&agent, &server, FINISH, "t-hang");
    assert_eq!(fin.body_text(), "hung\n");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-hang"],
    );
}

#[test]
fn connection_resets_are_retried_and_lose_no_report() {
    let dir = TestDir::new("faults-reset");
    let server = Server::start();
    server.push(HEARTBEAT, Reply::Reset);
    server.push(TASK_LIST, Reply::Reset);
    server.push(TASK_LIST, Reply::Reset);
    server.push(TASK_LIST, list(&[once("t-reset", "echo reset")]));
    for _ in 0..3 {
        server.push(FINISH, Reply::Reset);
    }
    let agent = start_remote(&dir, &server, &[]);
    let fin = expect_accepted(&agent, &server, FINISH, "t-reset");
    assert_eq!(fin.body_text(), "reset\n");
    let resets = server
        .requests()
        .iter()
        .filter(|r| about(r, FINISH, "t-reset"))
        .count();
    assert_eq!(resets, 4, "three resets, then the accepted attempt");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-reset"],
    );
}

#[test]
fn truncated_bodies_are_not_taken_for_answers() {
    let dir = TestDir::new("faults-truncated");
    let server = Server::start();
    let Reply::Answer(_, body) = list(&[once("t-cut", "echo cut")]) else {
        unreachable!("task_list answers with a body")
    };
    // A task list cut in the middle of its first entry: not a list, and nothing of it runs.
    server.push(
        TASK_LIST,
        Reply::Truncated(200, body.clone(), body.len() / 2),
    );
    server.push(TASK_LIST, Reply::Answer(200, body));
    server.push(FINISH, Reply::Truncated(200, "success".to_string(), 3));
    server.push(FINISH, Reply::Truncated(200, "success".to_string(), 0));
    let agent = start_remote(&dir, &server, &[]);
    let fin = expect_accepted(&agent, &server, FINISH, "t-cut");
    assert_eq!(fin.body_text(), "cut\n");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-cut"],
    );
}

#[test]
fn a_slow_body_is_read_within_the_timeout_and_given_up_on_past_it() {
    let dir = TestDir::new("faults-slow");
    let server = Server::start();
    let Reply::Answer(_, body) = list(&[once("t-slow", "echo slow")]) else {
        unreachable!("task_list answers with a body")
    };
    // 2 s in all: within the task list's 8 s timeout.
    server.push(
        TASK_LIST,
        Reply::Slow(200, body, 4, Duration::from_millis(500)),
    );
    // 7 s in all: past the report's 5 s timeout, so the burst tries again; the second answer
    // takes 1 s and is read.
    server.push(FINISH, Reply::slow_ok(7, Duration::from_secs(1)));
    server.push(FINISH, Reply::slow_ok(4, Duration::from_millis(250)));
    let agent = start_remote(&dir, &server, &[]);
    let fin = expect_accepted(&agent, &server, FINISH, "t-slow");
    assert_eq!(fin.body_text(), "slow\n");
    let attempts = server
        .requests()
        .iter()
        .filter(|r| about(r, FINISH, "t-slow"))
        .count();
    assert_eq!(attempts, 2, "{}", answered_listing(&server));
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-slow"],
    );
}

#[test]
fn a_408_storm_is_asked_again_four_rounds_then_taken_and_reports_survive_408s() {
    let dir = TestDir::new("faults-408");
    let server = Server::start();
    // A storm longer than one fetch's four rounds: the startup fetch takes the fourth answer
    // as it is (no tasks); the next kick's fetch rides out the rest and gets the list.
    for _ in 0..6 {
        server.push(
            TASK_LIST,
            Reply::ok(r#"{"code":408,"instanceId":"i-test"}"#),
        );
    }
    server.push(TASK_LIST, list(&[once("t-408", "echo storm")]));
    // HTTP 408 on a report is a failed attempt like any status above 400.
    for _ in 0..3 {
        server.push(FINISH, Reply::status(408));
    }
    let agent = start_remote(&dir, &server, &[]);
    agent.expect_line("startup fetch done: 0 task(s)");
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.path == TASK_LIST)
        .count();
    assert_eq!(lists, 4, "the startup fetch asks four rounds, no more");
    agent.signal(libc::SIGHUP);
    let fin = expect_accepted(&agent, &server, FINISH, "t-408");
    assert_eq!(fin.body_text(), "storm\n");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-408"],
    );
}

/// A shell entry signed with the RSA test vector (its script must be `echo hello\n`).
fn signed(task: &str) -> String {
    let extra = format!(
        r#","taskSignature":"{}","userId":"{VECTOR_USER_ID}""#,
        rsa_task_signature()
    );
    shell_entry(task, "echo hello\n", &extra, "Once", OUTPUT)
}

/// Same signature, other content: the signature does not verify.
fn tampered(task: &str) -> String {
    let extra = format!(
        r#","taskSignature":"{}","userId":"{VECTOR_USER_ID}""#,
        rsa_task_signature()
    );
    shell_entry(task, "echo bye\n", &extra, "Once", OUTPUT)
}

fn start_signed(dir: &TestDir, server: &Server, strict: bool) -> Agent {
    let config = dir.path("config.json");
    std::fs::write(&config, format!(r#"{{"strict_signatures": {strict}}}"#)).expect("config");
    start_remote(
        dir,
        server,
        &[
            "--instance-id",
            VECTOR_INSTANCE_ID,
            "--config",
            &config.display().to_string(),
        ],
    )
}

#[test]
fn soft_mode_runs_tasks_whose_certificate_cannot_be_had_or_whose_signature_fails() {
    let dir = TestDir::new("faults-cert-soft");
    let server = Server::start();
    server.push(SIGN_CERT, Reply::Reset);
    server.push(TASK_LIST, list(&[signed("t-nocert")]));
    let agent = start_signed(&dir, &server, false);
    let fin = expect_accepted(&agent, &server, FINISH, "t-nocert");
    assert_eq!(fin.body_text(), "hello\n");
    // The download failure is remembered for a minute; a signature that does not match runs
    // anyway in soft mode (the reference's RSA quirk, `signature::verify`).
    server.push(TASK_LIST, list(&[tampered("t-tampered")]));
    agent.signal(libc::SIGHUP);
    let fin = expect_accepted(&agent, &server, FINISH, "t-tampered");
    assert_eq!(fin.body_text(), "bye\n");
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        once("t-after", "echo after"),
        "t-after",
        &["t-nocert", "t-tampered"],
    );
}

#[test]
fn strict_mode_refuses_with_one_invalid_report_when_the_certificate_fails() {
    let dir = TestDir::new("faults-cert-strict");
    let server = Server::start();
    server.push(SIGN_CERT, Reply::status(500));
    server.push(
        TASK_LIST,
        list(&[signed("t-nocert"), tampered("t-tampered")]),
    );
    // The refusals are final reports too: retried past a 500 and a reset.
    server.push(INVALID, Reply::status(500));
    server.push(INVALID, Reply::Reset);
    let agent = start_signed(&dir, &server, true);
    let inv = expect_accepted(&agent, &server, INVALID, "t-nocert");
    assert!(
        inv.query
            .starts_with("taskId=t-nocert&invokeVersion=1&param=invalidSignature&value="),
        "{}",
        inv.query
    );
    let inv = expect_accepted(&agent, &server, INVALID, "t-tampered");
    assert!(inv.query.starts_with("taskId=t-tampered&"), "{}", inv.query);
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.path == FINISH || r.path == RUNNING),
        "a refused task ran"
    );
    // The failed download is not asked again for a minute (`CERT_RETRY_AFTER`), so the
    // follow-up uses a certificate under other versions: it downloads, verifies and runs.
    let follow_up = signed("t-signed").replace(
        &rsa_task_signature(),
        &rsa_task_signature().replacen("2#1#", "3#1#", 1),
    );
    server.set_default(SIGN_CERT, Reply::ok(support::server::rsa_cert_json(3, 1)));
    still_serves_then_exactly_once(
        agent,
        &dir,
        &server,
        follow_up,
        "t-signed",
        &["t-nocert", "t-tampered"],
    );
}
