//! Kicks over the notify websocket, end to end: the real binary connects to the double's
//! `/luban/notify_server`, answers each kick, fetches what a kick names, stops on
//! `kick_vm agent stop`, and polls the task list only while the channel is down.

mod support;
mod util;

use std::time::{Duration, Instant};

use support::server::{shell_entry, task_list, Request, Server, NOTIFY, OUTPUT, TASK_LIST};
use support::{
    about, expect, expect_kick_channel, expect_kick_reply, expect_n, start_remote, wait_exit,
};
use util::{TestDir, DEADLINE};

const FINISH: &str = "/luban/api/v1/task/finish";
const STOPPED: &str = "/luban/api/v1/task/stopped";

fn once(task: &str, script: &str) -> String {
    shell_entry(task, script, "", "Once", OUTPUT)
}

/// A `kick_vm task run <id>` fetch.
fn kick_fetch(r: &Request, task: &str) -> bool {
    r.path == TASK_LIST
        && r.query
            .starts_with(&format!("reason=kickoff&taskId={task}&"))
}

/// A fetch with no task id after startup: a poll (or a plain `kick_vm`).
fn plain_fetch(r: &Request) -> bool {
    r.path == TASK_LIST && r.query.starts_with("reason=kickoff&currentTime=")
}

/// Waits until `n` requests from index `from` on match `pred`.
fn expect_n_after(
    agent: &util::Agent,
    server: &Server,
    what: &str,
    from: usize,
    n: usize,
    pred: impl Fn(&Request) -> bool,
) {
    let found = server.wait_until(Instant::now() + DEADLINE, |log| {
        (log.get(from..)
            .unwrap_or(&[])
            .iter()
            .filter(|r| pred(r))
            .count()
            >= n)
            .then_some(())
    });
    if found.is_none() {
        agent.fail(&format!(
            "fewer than {n} requests {what} after #{from}; requests:\n{}",
            server.listing()
        ));
    }
}

/// The index of the first request matching `pred`.
fn index_of(server: &Server, pred: impl Fn(&Request) -> bool) -> usize {
    server
        .requests()
        .iter()
        .position(pred)
        .expect("request was seen")
}

#[test]
fn a_task_kick_fetches_that_task_and_an_unknown_kick_is_answered_unknow() {
    let dir = TestDir::new("kick-run");
    let server = Server::start();
    let agent = start_remote(&dir, &server, &[]);
    expect_kick_channel(&agent, &server, 1);
    // The startup fetch must not take the list queued for the kick.
    agent.expect_line("startup fetch done");

    server.push(
        TASK_LIST,
        task_list(&[once("t-1", "echo kicked")], &[], &[], &[]),
    );
    assert_eq!(server.push_kick("kick_vm task run t-1"), 1);
    expect_kick_reply(&agent, &server, "accept:kick_vm task run t-1");
    let fetch = expect(&agent, &server, "kick fetch of t-1", |r| {
        kick_fetch(r, "t-1")
    });
    assert_eq!(fetch.method, "POST");
    let fin = expect(&agent, &server, "finish of t-1", |r| {
        about(r, FINISH, "t-1")
    });
    assert_eq!(fin.body_text(), "kicked\n");

    // Unknown kinds and incomplete kicks are answered `unknow:` (the reference's spelling)
    // and fetch nothing.
    server.push_kick("kick_vm agent1 stop");
    expect_kick_reply(&agent, &server, "unknow:kick_vm agent1 stop");
    server.push_kick("kick_vm task run");
    expect_kick_reply(&agent, &server, "unknow:kick_vm task run");
    server.push_kick("kick_vm noop");
    expect_kick_reply(&agent, &server, "accept:kick_vm noop");
    // A plain kick is a barrier: kicks are handled in order, so any fetch the ones above caused
    // would come before this one.
    let before = server.requests().len();
    server.push_kick("kick_vm");
    expect_kick_reply(&agent, &server, "accept:kick_vm");
    expect_n_after(&agent, &server, "plain kick fetch", before, 1, plain_fetch);
    // Up to that fetch: 3 s after an empty answer the agent tries once more (spec §1.3),
    // which a test thread slowed that long would count too.
    let requests = server.requests();
    let end = before
        + requests[before..]
            .iter()
            .position(plain_fetch)
            .expect("the plain kick fetch");
    let kick_fetches: Vec<String> = requests[..=end]
        .iter()
        .filter(|r| r.path == TASK_LIST && r.query.starts_with("reason=kickoff"))
        .map(|r| r.target())
        .collect();
    assert_eq!(kick_fetches.len(), 2, "{kick_fetches:#?}");
    // The upgrade request itself: a GET to the notify path.
    let upgrade = expect(&agent, &server, "upgrade", |r| r.path == NOTIFY);
    assert_eq!(upgrade.method, "GET");
}

#[test]
fn agent_stop_kick_stops_the_agent_cleanly() {
    let dir = TestDir::new("kick-stop");
    let server = Server::start();
    let config = dir.path("config.json");
    std::fs::write(&config, r#"{"shutdown_grace_secs": 1}"#).expect("write config");
    let pidfile = dir.path("pid");
    let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    server.push(
        TASK_LIST,
        task_list(&[once("t-long", &script)], &[], &[], &[]),
    );
    let mut agent = start_remote(&dir, &server, &["--config", &config.display().to_string()]);
    expect_kick_channel(&agent, &server, 1);
    let pid = util::read_pid(&agent, &pidfile);

    server.push_kick("kick_vm agent stop");
    expect_kick_reply(&agent, &server, "accept:kick_vm agent stop");
    let status = wait_exit(&mut agent);
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The running task was stopped by the ordinary shutdown and reported, and its process is
    // gone; the websocket was closed on the way out.
    let stopped = expect(&agent, &server, "stopped t-long", |r| {
        about(r, STOPPED, "t-long")
    });
    assert!(
        stopped.query.contains("&result=killed") || stopped.query.contains("&result=stopped"),
        "{}",
        stopped.query
    );
    assert!(!util::alive(pid), "task process {pid} survived the agent");
    // The double lowers `live` on its own thread when it reads the close: wait for it.
    let closed = server.wait_kicks(Instant::now() + DEADLINE, |k| (k.live == 0).then_some(()));
    assert!(
        closed.is_some(),
        "the kick websocket stayed open: {:?}",
        server.kicks()
    );
}

#[test]
fn polls_while_the_kick_channel_is_down_and_stops_once_it_is_back() {
    let dir = TestDir::new("kick-poll");
    let server = Server::start();
    let agent = start_remote(&dir, &server, &["--poll-interval", "1"]);
    expect_kick_channel(&agent, &server, 1);
    agent.expect_line("startup fetch done");
    // A kick that carried a message makes the connection "good": the first reconnect comes
    // after the initial backoff (1 s), not a grown one.
    server.push_kick("kick_vm task run t-a");
    expect(&agent, &server, "kick fetch of t-a", |r| {
        kick_fetch(r, "t-a")
    });

    // The server drops the channel and refuses new upgrades.
    server.refuse_kicks();
    server.close_kicks();
    let down = server.wait_kicks(Instant::now() + DEADLINE, |k| (k.live == 0).then_some(()));
    assert!(down.is_some(), "websocket did not close");
    let closed_at = server.requests().len();
    // A task queued now arrives through polling alone.
    server.push(
        TASK_LIST,
        task_list(&[once("t-polled", "echo polled")], &[], &[], &[]),
    );
    expect_n_after(&agent, &server, "polls", closed_at, 2, plain_fetch);
    expect_n_after(&agent, &server, "refused upgrade", closed_at, 1, |r| {
        r.path == NOTIFY
    });
    let fin = expect(&agent, &server, "finish of t-polled", |r| {
        about(r, FINISH, "t-polled")
    });
    assert_eq!(fin.body_text(), "polled\n");

    // The channel comes back: the kick that follows is a barrier (the listener reports the
    // channel up before it reads any message), after which no poll may be sent.
    server.accept_kicks();
    expect_kick_channel(&agent, &server, 2);
    server.push_kick("kick_vm task run t-b");
    expect_kick_reply(&agent, &server, "accept:kick_vm task run t-b");
    expect(&agent, &server, "kick fetch of t-b", |r| {
        kick_fetch(r, "t-b")
    });
    let back_at = index_of(&server, |r| kick_fetch(r, "t-b"));
    // Three poll intervals. There is no event for "no poll happened": this bounded wait is the
    // check itself (a poll would come every second while the bridge thought it was down).
    std::thread::sleep(Duration::from_secs(3));
    let late: Vec<String> = server.requests()[back_at..]
        .iter()
        .filter(|r| plain_fetch(r))
        .map(|r| r.target())
        .collect();
    assert!(late.is_empty(), "polled with the channel up: {late:#?}");
}

#[test]
fn the_kick_upgrade_carries_the_same_headers_as_http() {
    // Spec §2.5: the kick websocket is opened with the same headers as HTTP requests.
    let dir = TestDir::new("kick-headers");
    let server = Server::start();
    let agent = start_remote(&dir, &server, &[]);
    let list = expect(&agent, &server, "startup fetch", |r| r.path == TASK_LIST);
    let upgrade = expect(&agent, &server, "upgrade", |r| r.path == NOTIFY);
    assert_eq!(upgrade.header("X-Client-Instance-ID"), Some("i-test"));
    assert_eq!(upgrade.header("User-Agent"), list.header("User-Agent"));
}

#[test]
fn a_flood_of_child_exits_leaves_the_kick_channel_up_and_answering() {
    let dir = TestDir::new("kick-flood");
    let server = Server::start();
    let agent = start_remote(&dir, &server, &["--workers", "16"]);
    expect_kick_channel(&agent, &server, 1);
    agent.expect_line("startup fetch done");
    let tasks: Vec<String> = (0..2000).map(|i| once(&format!("f-{i}"), "true")).collect();
    server.push(TASK_LIST, task_list(&tasks, &[], &[], &[]));
    assert_eq!(server.push_kick("kick_vm"), 1);
    expect_kick_reply(&agent, &server, "accept:kick_vm");
    expect_n(&agent, &server, "2000 finish reports", 2000, |r| {
        r.path == FINISH
    });
    // Still the first connection: no read on it failed while children exited.
    server.push_kick("kick_vm noop");
    expect_kick_reply(&agent, &server, "accept:kick_vm noop");
    let kicks = server.kicks();
    assert_eq!(kicks.opened, 1, "the kick channel reconnected: {kicks:?}");
    let log = agent.log.lock().map(|l| l.join("\n")).unwrap_or_default();
    assert!(
        !log.contains("Interrupted system call") && !log.contains("os error 4"),
        "a read failed with EINTR"
    );
}
