//! The real binary in remote mode against the loopback control-plane double: fetches, reports
//! with their exact query strings, and how the agent copes with a failing server.

mod support;
mod util;

use std::time::Duration;

use support::server::{shell_entry, Reply, Server, HEARTBEAT, OUTPUT, TASK_LIST};
use support::{about, expect, expect_n, start_remote};
use util::TestDir;

const FINISH: &str = "/luban/api/v1/task/finish";
const RUNNING: &str = "/luban/api/v1/task/running";
const STOPPED: &str = "/luban/api/v1/task/stopped";

fn list(run: &[String], stop: &[String], test: &[String]) -> Reply {
    Reply::ok(format!(
        r#"{{"code":200,"instanceId":"i-test","run":[{}],"stop":[{}],"test":[{}]}}"#,
        run.join(","),
        stop.join(","),
        test.join(",")
    ))
}

fn once(task: &str, script: &str) -> String {
    shell_entry(task, script, "", "Once", OUTPUT)
}

/// `start=<ms>&end=<ms>` in a query: digits only, end not before start.
fn span_ok(query: &str) -> bool {
    let start: Option<i64> = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("start=")?.parse().ok());
    let end: Option<i64> = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("end=")?.parse().ok());
    matches!((start, end), (Some(s), Some(e)) if s > 0 && e >= s)
}

#[test]
fn startup_fetch_is_retried_until_it_succeeds_then_kicks_fetch_kickoff() {
    let dir = TestDir::new("remote-startup");
    let server = Server::start();
    // The first startup fetch fails all four attempts (1+3).
    for _ in 0..4 {
        server.push(TASK_LIST, Reply::status(500));
    }
    let agent = start_remote(&dir, &server, &[]);
    let lists = expect_n(&agent, &server, "5 task lists", 5, |r| r.path == TASK_LIST);
    for r in &lists {
        assert_eq!(r.method, "POST");
        assert!(
            r.query
                .starts_with("reason=startup&cold_start=true&currentTime="),
            "{}",
            r.query
        );
        assert!(r.query.ends_with("&offset=0&timeZone=UTC"), "{}", r.query);
        assert_eq!(r.header("X-Client-Instance-ID"), Some("i-test"));
        let ua = r.header("User-Agent").unwrap_or("");
        assert!(
            ua.ends_with(&format!("/{}", env!("CARGO_PKG_VERSION"))),
            "{ua}"
        );
    }
    let hb = expect(&agent, &server, "heart-beat", |r| r.path == HEARTBEAT);
    assert_eq!(hb.method, "GET");
    assert!(hb.query.contains("&index=0&seq_no=0&"), "{}", hb.query);
    assert!(hb.query.ends_with("&cold_start=true"), "{}", hb.query);
    agent.expect_line("startup fetch done");

    agent.signal(libc::SIGHUP);
    let kick = expect(&agent, &server, "kickoff", |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=kickoff&currentTime=")
    });
    assert!(!kick.query.contains("cold_start"), "{}", kick.query);
}

#[test]
fn a_once_task_runs_and_reports_finish_with_its_output() {
    let dir = TestDir::new("remote-once");
    let server = Server::start();
    server.push(
        TASK_LIST,
        list(&[once("t-once", "echo hello; echo oops >&2")], &[], &[]),
    );
    let agent = start_remote(&dir, &server, &[]);
    let fin = expect(&agent, &server, "finish", |r| about(r, FINISH, "t-once"));
    assert_eq!(fin.method, "POST");
    assert!(
        fin.query
            .starts_with("taskId=t-once&invokeVersion=1&start="),
        "{}",
        fin.query
    );
    assert!(
        fin.query.ends_with("&exitCode=0&dropped=0"),
        "{}",
        fin.query
    );
    assert!(span_ok(&fin.query), "{}", fin.query);
    assert_eq!(fin.body_text(), "hello\noops\n");
    assert_eq!(
        fin.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn a_timeout_reports_timeout_with_exit_code_1() {
    let dir = TestDir::new("remote-timeout");
    let server = Server::start();
    let entry = shell_entry(
        "t-slow",
        "echo started; sleep 30",
        r#","timeOut":"1""#,
        "Once",
        OUTPUT,
    );
    // `timeOut` appears twice; the later key wins in the decoder, as in Go.
    server.push(TASK_LIST, list(&[entry], &[], &[]));
    let agent = start_remote(&dir, &server, &[]);
    let r = expect(&agent, &server, "timeout", |r| {
        about(r, "/luban/api/v1/task/timeout", "t-slow")
    });
    assert!(r.query.ends_with("&exitCode=1&dropped=0"), "{}", r.query);
    // The output reaches the server once: in a running report when the 1 s output tick came
    // first (the tick and the 1 s timeout are due together), else in the timeout report.
    let mut seen: String = server
        .requests()
        .iter()
        .filter(|q| about(q, RUNNING, "t-slow"))
        .map(|q| q.body_text())
        .collect();
    seen.push_str(&r.body_text());
    assert_eq!(seen.matches("started").count(), 1, "{seen:?}");
}

#[test]
fn stop_kills_a_running_task_and_answers_an_unknown_one_with_zeros() {
    let dir = TestDir::new("remote-stop");
    let server = Server::start();
    let long = shell_entry(
        "t-long",
        "sleep 300",
        "",
        "Once",
        r#"{"interval":1000,"logQuota":12000,"skipEmpty":true,"sendStart":true}"#,
    );
    server.push(TASK_LIST, list(std::slice::from_ref(&long), &[], &[]));
    let agent = start_remote(&dir, &server, &[]);
    // sendStart: the start event says the process is about to run.
    expect(&agent, &server, "start event", |r| {
        about(r, RUNNING, "t-long")
    });
    server.push(
        TASK_LIST,
        list(&[], &[long, once("t-unknown", "true")], &[]),
    );
    agent.signal(libc::SIGHUP);
    let unknown = expect(&agent, &server, "stopped unknown", |r| {
        about(r, STOPPED, "t-unknown")
    });
    assert_eq!(
        unknown.query,
        "taskId=t-unknown&invokeVersion=1&start=0&end=0&exitcode=0&dropped=0&result=killed"
    );
    assert!(unknown.body.is_empty());
    let killed = expect(&agent, &server, "stopped long", |r| {
        about(r, STOPPED, "t-long")
    });
    assert!(
        killed
            .query
            .starts_with("taskId=t-long&invokeVersion=1&start="),
        "{}",
        killed.query
    );
    assert!(killed.query.contains("&exitcode="), "{}", killed.query);
    assert!(
        killed.query.ends_with("&dropped=0&result=killed"),
        "{}",
        killed.query
    );
}

#[test]
fn a_test_task_is_verified_and_an_expired_cron_is_invalid() {
    let dir = TestDir::new("remote-test-invalid");
    let server = Server::start();
    let test = shell_entry("t-test", "echo never", "", "Once", OUTPUT);
    let cron = shell_entry(
        "t-cron",
        "echo never",
        r#","cron":"0 0 0 1 1 ? 1999""#,
        "Period",
        OUTPUT,
    );
    server.push(TASK_LIST, list(&[cron], &[], &[test]));
    let agent = start_remote(&dir, &server, &[]);
    let v = expect(&agent, &server, "verified", |r| {
        about(r, "/luban/api/v1/task/verified", "t-test")
    });
    assert_eq!(v.query, "taskId=t-test&invokeVersion=1");
    let inv = expect(&agent, &server, "invalid", |r| {
        about(r, "/luban/api/v1/task/invalid", "t-cron")
    });
    assert!(
        inv.query
            .starts_with("taskId=t-cron&invokeVersion=1&param=cron&value="),
        "{}",
        inv.query
    );
    // Nothing ran.
    assert!(!server.requests().iter().any(|r| r.path == FINISH));
}

#[test]
fn a_failed_running_report_keeps_every_byte_in_order() {
    let dir = TestDir::new("remote-running-500");
    let server = Server::start();
    // The first running report is refused; running reports are not retried.
    server.push(RUNNING, Reply::status(500));
    let script = "printf one; sleep 1.5; printf two; sleep 1.5; printf three";
    server.push(TASK_LIST, list(&[once("t-chunks", script)], &[], &[]));
    let agent = start_remote(&dir, &server, &[]);
    let fin = expect(&agent, &server, "finish", |r| about(r, FINISH, "t-chunks"));
    let running: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| about(r, RUNNING, "t-chunks"))
        .collect();
    assert!(!running.is_empty(), "at least the refused report was sent");
    // Every accepted running report (all but the refused first) and the final one, in order.
    let mut delivered: String = running[1..].iter().map(|r| r.body_text()).collect();
    delivered.push_str(&fin.body_text());
    assert_eq!(delivered, "onetwothree");
}

#[test]
fn task_not_found_on_a_running_report_kills_the_task_quietly() {
    let dir = TestDir::new("remote-notfound");
    let server = Server::start();
    server.set_default(RUNNING, Reply::ok(r#"{"errorCode":"TaskNotFound"}"#));
    let pidfile = dir.path("pid");
    let script = format!("echo $$ > {}; echo tick; sleep 300", pidfile.display());
    server.push(TASK_LIST, list(&[once("t-gone", &script)], &[], &[]));
    let agent = start_remote(&dir, &server, &[]);
    expect(&agent, &server, "running", |r| about(r, RUNNING, "t-gone"));
    let pid = util::read_pid(&agent, &pidfile);
    util::wait_gone(&agent, pid);
    // The quiet kill is logged by the runner when the invocation ends; after it, a SIGHUP
    // fetch is a barrier: any final report would have been sent before the worker finished.
    agent.expect_line_where("t-gone ended", |l| {
        l.contains("task=t-gone") && l.contains("ended")
    });
    agent.signal(libc::SIGHUP);
    expect(&agent, &server, "kickoff", |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=kickoff")
    });
    let finals: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.param("taskId") == Some("t-gone") && r.path != RUNNING)
        .map(|r| r.target())
        .collect();
    assert!(finals.is_empty(), "{finals:?}");
}

#[test]
fn a_server_that_hangs_does_not_wedge_the_agent() {
    let dir = TestDir::new("remote-hang");
    let server = Server::start();
    // The first finish attempt gets no answer; the 5 s timeout ends it and the retry lands.
    server.push(FINISH, Reply::Hang(Duration::from_secs(8)));
    server.push(TASK_LIST, list(&[once("t-hang", "echo hi")], &[], &[]));
    let agent = start_remote(&dir, &server, &[]);
    let fins = expect_n(&agent, &server, "two finish attempts", 2, |r| {
        about(r, FINISH, "t-hang")
    });
    assert_eq!(fins[0].query, fins[1].query);
    assert_eq!(fins[1].body_text(), "hi\n");
    // Still serving: a kick is fetched and a new task runs.
    server.push(TASK_LIST, list(&[once("t-after", "echo after")], &[], &[]));
    agent.signal(libc::SIGHUP);
    let fin = expect(&agent, &server, "finish after", |r| {
        about(r, FINISH, "t-after")
    });
    assert_eq!(fin.body_text(), "after\n");
}

#[test]
fn a_garbage_task_list_is_logged_and_the_fetch_retried() {
    let dir = TestDir::new("remote-garbage");
    let server = Server::start();
    server.push(TASK_LIST, Reply::ok("<html>not json</html>"));
    server.push(TASK_LIST, list(&[once("t-ok", "echo ok")], &[], &[]));
    let agent = start_remote(&dir, &server, &[]);
    agent.expect_line("task list is not valid");
    let fin = expect(&agent, &server, "finish", |r| about(r, FINISH, "t-ok"));
    assert_eq!(fin.body_text(), "ok\n");
    let lists: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == TASK_LIST)
        .collect();
    assert!(lists.len() >= 2);
    assert!(
        lists[1].query.starts_with("reason=startup&"),
        "{}",
        lists[1].query
    );
}

#[test]
fn sigterm_ends_a_remote_agent_cleanly() {
    let dir = TestDir::new("remote-sigterm");
    let server = Server::start();
    let mut agent = start_remote(&dir, &server, &[]);
    agent.expect_line("startup fetch done");
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}

/// Rate, cron and at tasks from the server: each fires, and each report carries the
/// wall-clock parameters of its kind (spec §5.8): rate `currentTime`, cron `currentTime`,
/// `offset` and `timeZone` of the cron's zone, at none. The last run of a cron is followed by
/// `stopped` with `result=completed` (spec §5.9).
#[test]
fn periodic_tasks_fire_and_report_their_wall_clock() {
    let dir = TestDir::new("remote-periodic");
    let server = Server::start();
    // The times are taken once the agent is up and the list comes by SIGHUP, so a slow start
    // on a loaded machine cannot put the one-shot runs in the past (they would be invalid).
    let agent = start_remote(&dir, &server, &[]);
    agent.expect_line("startup fetch done");
    let now = chrono::Utc::now();
    let creation = now.timestamp_millis();
    let soon = now + chrono::Duration::seconds(4);
    // A cron whose one run is 4 s from now, in a fixed GMT offset zone.
    let local = soon + chrono::Duration::hours(8);
    let cron = local.format("%S %M %H %d %m ? %Y GMT+8:00").to_string();
    let at = soon.format("at(%Y-%m-%dT%H:%M:%S)").to_string();
    let rate = shell_entry(
        "t-rate",
        "echo rate",
        &format!(r#","cron":"rate(1s)","creationTime":{creation}"#),
        "Rate",
        OUTPUT,
    );
    let cron = shell_entry(
        "t-cron",
        "echo cron",
        &format!(r#","cron":"{cron}""#),
        "Period",
        OUTPUT,
    );
    let at = shell_entry(
        "t-at",
        "echo at",
        &format!(r#","cron":"{at}""#),
        "At",
        OUTPUT,
    );
    server.push(TASK_LIST, list(&[rate, cron, at], &[], &[]));
    agent.signal(libc::SIGHUP);

    let r = expect(&agent, &server, "rate finish", |r| {
        r.path == FINISH && r.query.starts_with("taskId=t-rate&")
    });
    assert!(r.query.contains("&currentTime="), "{}", r.query);
    assert!(!r.query.contains("timeZone"), "{}", r.query);

    let c = expect(&agent, &server, "cron finish", |r| {
        r.path == FINISH && r.query.starts_with("taskId=t-cron&")
    });
    assert!(c.query.contains("&currentTime="), "{}", c.query);
    assert!(
        c.query.ends_with("&offset=28800&timeZone=GMT%2B8%3A00"),
        "{}",
        c.query
    );
    assert_eq!(c.body_text(), "cron\n");
    let done = expect(&agent, &server, "cron completed", |r| {
        r.path == STOPPED && r.query.starts_with("taskId=t-cron&")
    });
    assert_eq!(
        done.query,
        "taskId=t-cron&invokeVersion=1&start=0&end=0&exitcode=0&dropped=0&result=completed"
    );

    let a = expect(&agent, &server, "at finish", |r| {
        r.path == FINISH && r.query.starts_with("taskId=t-at&")
    });
    assert!(!a.query.contains("currentTime"), "{}", a.query);
    assert_eq!(a.body_text(), "at\n");
}
