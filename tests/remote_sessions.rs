//! Sessions end to end (spec aliyun-sessions): the real binary fetches a session list on
//! `kick_vm session start <id>`, opens the double's session websocket, runs a shell on a pty
//! (input, resize, run-as user, stop, exit) or forwards a port to a loopback echo server, and
//! sends exactly one status report per session.

mod support;
mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Instant;

use support::server::{
    Reply, Request, Server, SessionPeer, SESSION_BACKEND, SESSION_LIST, SESSION_STATUS,
};
use support::{expect, expect_kick_channel, expect_kick_reply, start_remote};
use util::{alive, wait_gone, Agent, TestDir, DEADLINE};

/// The run-as user of shell tests; `None` (after saying so loudly) when the tests cannot
/// switch users because they do not run as root.
fn test_user(test: &str) -> Option<&'static str> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root to run a session as user daemon");
        return None;
    }
    Some("daemon")
}

fn status_of(r: &Request, id: &str) -> bool {
    r.path == SESSION_STATUS && r.param("channelId") == Some(id)
}

/// Starts the agent with its kick channel up and the startup fetch done.
fn agent(dir: &TestDir, server: &Server) -> Agent {
    let agent = start_remote(dir, server, &[]);
    expect_kick_channel(&agent, server, 1);
    agent.expect_line("startup fetch done");
    agent
}

/// Queues `entry` as the next session list and kicks `session start <id>`.
fn start_session(agent: &Agent, server: &Server, id: &str, entry: &str) {
    server.push(
        SESSION_LIST,
        Reply::ok(format!(
            r#"{{"code":200,"instanceId":"i-test","session":[{entry}]}}"#
        )),
    );
    let kick = format!("kick_vm session start {id}");
    assert_eq!(server.push_kick(&kick), 1);
    expect_kick_reply(agent, server, &format!("accept:{kick}"));
}

fn peer(agent: &Agent, server: &Server, id: &str) -> SessionPeer {
    match server.wait_session(Instant::now() + DEADLINE, id) {
        Some(p) => p,
        None => agent.fail(&format!(
            "no session websocket for {id}; requests:\n{}",
            server.listing()
        )),
    }
}

fn expect_output(agent: &Agent, peer: &mut SessionPeer, needle: &str) {
    if !peer.expect_output(Instant::now() + DEADLINE, needle) {
        agent.fail(&format!(
            "no {needle:?} in the session output:\n{}",
            String::from_utf8_lossy(&peer.output)
        ));
    }
}

/// The one status report of `id`, once it came; fails on a second one.
fn expect_status(agent: &Agent, server: &Server, id: &str, status: &str, code: &str) {
    let r = expect(agent, server, &format!("session status of {id}"), |r| {
        status_of(r, id)
    });
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.query,
        format!("channelId={id}&status={status}&errorcode={code}")
    );
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

/// A number the shell printed after `tag=` (which the tty echo of the command cannot match,
/// since the command has `$` there).
fn number_after(output: &[u8], tag: &str) -> Option<i32> {
    let text = String::from_utf8_lossy(output);
    let needle = format!("{tag}=");
    text.match_indices(&needle).find_map(|(at, _)| {
        let digits: String = text[at + needle.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// The agent's session threads (`session-<id>`), by name.
fn session_threads(agent: &Agent) -> Vec<String> {
    let pid = agent.child.as_ref().expect("agent running").id();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("session"))
        .collect()
}

/// Waits (bounded) until no session thread is left: an ended session's last act is to
/// remove its entry from the session table.
fn wait_no_session_thread(agent: &Agent) {
    let deadline = Instant::now() + DEADLINE;
    while !session_threads(agent).is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        session_threads(agent).is_empty(),
        "{:?}",
        session_threads(agent)
    );
}

#[test]
fn a_shell_session_runs_input_resizes_runs_as_the_user_and_stops_on_a_kick() {
    let Some(user) = test_user("a_shell_session_runs_input") else {
        return;
    };
    let dir = TestDir::new("session-shell");
    let server = Server::start();
    let agent = agent(&dir, &server);
    start_session(
        &agent,
        &server,
        "s-shell",
        &format!(r#"{{"channelId":"s-shell","username":"{user}"}}"#),
    );
    let list = expect(&agent, &server, "session list fetch", |r| {
        r.path == SESSION_LIST
    });
    assert_eq!(list.query, "channelId=s-shell");
    let upgrade = expect(&agent, &server, "session upgrade", |r| {
        r.path == "/luban/session/backend"
    });
    assert_eq!(upgrade.query, "channelId=s-shell");
    assert_eq!(upgrade.header("x-client-instance-id"), Some("i-test"));
    let mut peer = peer(&agent, &server, "s-shell");
    if !peer.wait_ping(Instant::now() + DEADLINE) {
        agent.fail("no keepalive ping");
    }
    assert_eq!(peer.pings[0], b"keepalive");

    peer.input("echo sum=$((40+2))\n");
    expect_output(&agent, &mut peer, "sum=42");
    peer.resize(120, 40);
    peer.input("stty size\n");
    expect_output(&agent, &mut peer, "40 120");
    peer.input("echo me=$(id -un) home=$HOME term=$TERM\n");
    expect_output(
        &agent,
        &mut peer,
        &format!("me={user} home=/usr/sbin term=xterm-256color"),
    );
    // A background job runs in a process group of its own; it goes with the session too.
    peer.input("sleep 300 & echo bg=$! shell=$$\n");
    if !peer.wait_output(Instant::now() + DEADLINE, |o| {
        number_after(o, "bg").is_some() && number_after(o, "shell").is_some()
    }) {
        agent.fail(&format!(
            "no pids in the output:\n{}",
            String::from_utf8_lossy(&peer.output)
        ));
    }
    let bg = number_after(&peer.output, "bg").expect("bg pid");
    let shell = number_after(&peer.output, "shell").expect("shell pid");
    assert!(alive(bg) && alive(shell));
    // Sequence numbers start at 0 and have no gaps.
    let n = peer.seqs.len() as i64;
    assert_eq!(peer.seqs, (0..n).collect::<Vec<_>>());

    server.push_kick("kick_vm session stop s-shell");
    expect_kick_reply(&agent, &server, "accept:kick_vm session stop s-shell");
    expect_status(&agent, &server, "s-shell", "Success", "Notified");
    if !peer.wait_closed(Instant::now() + DEADLINE) {
        agent.fail("the session websocket stayed open after the stop");
    }
    wait_gone(&agent, shell);
    wait_gone(&agent, bg);
    // The session's thread removes its table entry after its status report went out; a
    // stop kick sent before that still finds it.
    wait_no_session_thread(&agent);
    // A stop for a session that has ended finds nothing and reports nothing.
    server.push_kick("kick_vm session stop s-shell");
    expect_kick_reply(&agent, &server, "accept:kick_vm session stop s-shell");
    agent.expect_line("stop session failed");
    let reports = server
        .requests()
        .iter()
        .filter(|r| status_of(r, "s-shell"))
        .count();
    assert_eq!(reports, 1, "one status report per session");
}

#[test]
fn a_shell_that_exits_ends_the_session_ok_and_root_is_refused() {
    let Some(user) = test_user("a_shell_that_exits") else {
        return;
    };
    let dir = TestDir::new("session-exit");
    let server = Server::start();
    let agent = agent(&dir, &server);
    // Sessions hold no thread while none is open (issue 9), before the first and after it.
    assert!(
        session_threads(&agent).is_empty(),
        "{:?}",
        session_threads(&agent)
    );
    start_session(
        &agent,
        &server,
        "s-exit",
        &format!(r#"{{"channelId":"s-exit","username":"{user}","cmdContent":"bash --norc"}}"#),
    );
    let mut peer = peer(&agent, &server, "s-exit");
    peer.input("echo bye=$((6*7)); exit\n");
    expect_output(&agent, &mut peer, "bye=42");
    expect_status(&agent, &server, "s-exit", "Success", "Ok");
    if !peer.wait_closed(Instant::now() + DEADLINE) {
        agent.fail("the session websocket stayed open after the shell exited");
    }
    // The session's thread ends with it (its last act removes its entry).
    wait_no_session_thread(&agent);

    // uid 0 is refused before anything starts, as the reference does.
    start_session(
        &agent,
        &server,
        "s-root",
        r#"{"channelId":"s-root","username":"root"}"#,
    );
    expect_status(&agent, &server, "s-root", "Failed", "Open_pty_failed");
}

/// A loopback echo server for one connection; the returned receiver gets `()` when the agent
/// closes the connection.
fn echo_server() -> (u16, crossbeam_channel::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (closed_tx, closed) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        // Bounded by the agent: it closes the connection when the session ends.
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = closed_tx.send(());
    });
    (port, closed)
}

#[test]
fn a_port_session_forwards_both_ways_refuses_a_duplicate_and_stops_promptly() {
    let dir = TestDir::new("session-port");
    let server = Server::start();
    let agent = agent(&dir, &server);
    let (port, closed) = echo_server();
    let entry = format!(r#"{{"channelId":"p-1","portNumber":"{port}","targetHost":"127.0.0.1"}}"#);
    start_session(&agent, &server, "p-1", &entry);
    let mut peer = peer(&agent, &server, "p-1");
    peer.input("ping one\n");
    expect_output(&agent, &mut peer, "ping one\n");

    // The same channel id while it runs: refused, and the original keeps working.
    start_session(&agent, &server, "p-1", &entry);
    expect_status(&agent, &server, "p-1", "Failed", "Session_id_duplicate");
    peer.input("ping two\n");
    expect_output(&agent, &mut peer, "ping two\n");

    // Stopping a healthy forward ends it at once (the reference hangs until the target
    // fails): the target connection is closed and the stop reported.
    server.push_kick("kick_vm session stop p-1");
    let done = server.wait_until(Instant::now() + DEADLINE, |log| {
        (log.iter().filter(|r| status_of(r, "p-1")).count() >= 2).then_some(())
    });
    if done.is_none() {
        agent.fail(&format!("no second report for p-1:\n{}", server.listing()));
    }
    let last = server
        .requests()
        .into_iter()
        .filter(|r| status_of(r, "p-1"))
        .nth(1)
        .expect("second report");
    assert_eq!(
        last.query,
        "channelId=p-1&status=Success&errorcode=Notified"
    );
    if closed.recv_timeout(DEADLINE).is_err() {
        agent.fail("the target connection stayed open after the stop");
    }
}

#[test]
fn a_port_that_refuses_is_open_port_failed() {
    let dir = TestDir::new("session-port-refused");
    let server = Server::start();
    let agent = agent(&dir, &server);
    // A port nobody listens on: bound, then closed again.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    start_session(
        &agent,
        &server,
        "p-refused",
        &format!(r#"{{"channelId":"p-refused","portNumber":"{port}","targetHost":"127.0.0.1"}}"#),
    );
    expect_status(&agent, &server, "p-refused", "Failed", "Open_port_failed");
    // A failure with an error object sends the two metrics of spec §1.6.
    let metrics = support::expect_n(&agent, &server, "failure metrics", 2, |r| {
        r.path == "/luban/api/metrics"
    });
    let events: Vec<serde_json::Value> = metrics
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("metrics JSON"))
        .collect();
    assert_eq!(events[0]["eventId"], "agent.task.failed");
    assert_eq!(events[1]["eventId"], "agent.session.failed");
    assert_eq!(events[1]["category"], "SESSION");
    let keywords: serde_json::Value =
        serde_json::from_str(events[1]["keywords"].as_str().expect("keywords string"))
            .expect("keywords JSON");
    assert_eq!(keywords["sessionId"], "p-refused");
    assert_eq!(keywords["code"], "Open_port_failed");
    assert_eq!(
        keywords["wsURL"],
        format!(
            "{}/luban/session/backend?channelId=p-refused",
            server.url().replacen("http", "ws", 1)
        )
    );
}

/// The agent with the session limits of `config` (a JSON object), kick channel up.
fn agent_with_config(dir: &TestDir, server: &Server, config: &str) -> Agent {
    let path = dir.path("config.json");
    std::fs::write(&path, config).expect("write config");
    let path = path.display().to_string();
    let agent = start_remote(dir, server, &["--config", &path]);
    expect_kick_channel(&agent, server, 1);
    agent.expect_line("startup fetch done");
    agent
}

#[test]
fn a_session_without_frames_from_the_server_ends_at_the_idle_limit() {
    let dir = TestDir::new("session-idle");
    let server = Server::start();
    let agent = agent_with_config(&dir, &server, r#"{"session_idle_timeout_secs": 1}"#);
    let (port, closed) = echo_server();
    start_session(
        &agent,
        &server,
        "p-idle",
        &format!(r#"{{"channelId":"p-idle","portNumber":"{port}","targetHost":"127.0.0.1"}}"#),
    );
    let mut peer = peer(&agent, &server, "p-idle");
    // Nothing is sent: the session must end by itself, reported once as Timeout.
    expect_status(&agent, &server, "p-idle", "Success", "Timeout");
    agent.expect_line("phase=session idle limit");
    if !peer.wait_closed(Instant::now() + DEADLINE) {
        agent.fail("the session websocket stayed open after the idle limit");
    }
    if closed.recv_timeout(DEADLINE).is_err() {
        agent.fail("the target connection stayed open after the idle limit");
    }
}

#[test]
fn a_session_ends_at_its_maximum_time_before_its_idle_limit() {
    let dir = TestDir::new("session-max");
    let server = Server::start();
    let agent = agent_with_config(
        &dir,
        &server,
        r#"{"session_idle_timeout_secs": 3600, "session_max_secs": 2}"#,
    );
    let (port, _closed) = echo_server();
    start_session(
        &agent,
        &server,
        "p-max",
        &format!(r#"{{"channelId":"p-max","portNumber":"{port}","targetHost":"127.0.0.1"}}"#),
    );
    // The idle limit is an hour: only the maximum time can end it (the log says which did).
    let mut peer = peer(&agent, &server, "p-max");
    expect_status(&agent, &server, "p-max", "Success", "Timeout");
    agent.expect_line("phase=session maximum session time reached");
    if !peer.wait_closed(Instant::now() + DEADLINE) {
        agent.fail("the session websocket stayed open after the maximum time");
    }
}

#[test]
fn a_channel_the_server_closes_is_reopened_and_the_session_goes_on() {
    let dir = TestDir::new("session-reconnect");
    let server = Server::start();
    let agent = agent(&dir, &server);
    let (port, _closed) = echo_server();
    let entry = format!(r#"{{"channelId":"p-re","portNumber":"{port}","targetHost":"127.0.0.1"}}"#);
    start_session(&agent, &server, "p-re", &entry);
    let mut first = peer(&agent, &server, "p-re");
    first.input("before\n");
    expect_output(&agent, &mut first, "before\n");
    let sent_before = first.seqs.len() as i64;
    first.close();
    // The same channel id, dialled again (spec §2.3), with fresh identity headers.
    let mut second = peer(&agent, &server, "p-re");
    let upgrades: Vec<Request> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == SESSION_BACKEND)
        .collect();
    assert_eq!(upgrades.len(), 2, "{upgrades:?}");
    assert_eq!(upgrades[1].query, "channelId=p-re");
    assert_eq!(upgrades[1].header("x-client-instance-id"), Some("i-test"));
    if !second.wait_ping(Instant::now() + DEADLINE) {
        agent.fail("no keepalive ping on the new connection");
    }
    second.input("after\n");
    expect_output(&agent, &mut second, "after\n");
    // Sequence numbers continue across the reconnect; the session is still the same one.
    assert!(
        second.seqs.first().is_some_and(|&s| s >= sent_before),
        "{:?} after {sent_before}",
        second.seqs
    );
    assert!(
        !server.requests().iter().any(|r| status_of(r, "p-re")),
        "the reconnect was reported"
    );
    server.push_kick("kick_vm session stop p-re");
    expect_status(&agent, &server, "p-re", "Success", "Notified");
}

#[test]
fn a_channel_that_cannot_be_reopened_ends_as_timeout_after_eleven_dials() {
    let dir = TestDir::new("session-reconnect-fails");
    let server = Server::start();
    let agent = agent(&dir, &server);
    let (port, closed) = echo_server();
    let entry =
        format!(r#"{{"channelId":"p-gone","portNumber":"{port}","targetHost":"127.0.0.1"}}"#);
    start_session(&agent, &server, "p-gone", &entry);
    let mut peer = peer(&agent, &server, "p-gone");
    // From now on every upgrade is refused.
    server.set_default(SESSION_BACKEND, Reply::status(503));
    peer.close();
    expect_status(&agent, &server, "p-gone", "Success", "Timeout");
    let dials = server
        .requests()
        .iter()
        .filter(|r| r.path == SESSION_BACKEND)
        .count();
    assert_eq!(dials, 1 + 11, "the first open and 11 reconnect attempts");
    if closed.recv_timeout(DEADLINE).is_err() {
        agent.fail("the target connection stayed open after the session ended");
    }
}
