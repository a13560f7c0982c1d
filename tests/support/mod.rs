//! Remote-mode test support: the control-plane double (`server`) and the real binary started
//! against it, in the harness style of `tests/util.rs`.

#![allow(dead_code)]

pub mod proxy;
pub mod server;
pub mod tls_relay;

use std::process::ExitStatus;
use std::time::Instant;

use crate::util::{assistd, Agent, TestDir, DEADLINE};
use server::{Request, Server};

/// The arguments of `start_remote` before its extra flags: the double as server, instance id
/// `i-test`, the state dir and a cold-start flag inside the test dir, polling off (tests kick
/// with SIGHUP or the websocket).
pub fn remote_args(dir: &TestDir, server: &Server) -> Vec<String> {
    [
        "agent",
        "--server",
        &server.url(),
        "--instance-id",
        "i-test",
        "--state-dir",
        &dir.state().display().to_string(),
        "--coldstart-flag",
        &dir.path("coldstart-flag").display().to_string(),
        "--poll-interval",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `assistd agent` with `remote_args` and `extra` flags; a flag given in `extra` replaces the
/// default of the same name (`--poll-interval 1`, `--instance-id i-x`).
pub fn start_remote(dir: &TestDir, server: &Server, extra: &[&str]) -> Agent {
    let mut args = Vec::new();
    let mut defaults = remote_args(dir, server).into_iter();
    while let Some(a) = defaults.next() {
        if a.starts_with("--") && extra.contains(&a.as_str()) {
            defaults.next();
            continue;
        }
        args.push(a);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn_remote(args, &[])
}

/// Starts `assistd <args>` with `env` added, reading its stderr into the `Agent`.
pub fn spawn_remote(args: Vec<String>, env: &[(&str, &str)]) -> Agent {
    let mut cmd = assistd();
    cmd.args(&args)
        .env_remove("ALIYUN_ASSIST_PROXY")
        .envs(env.iter().copied());
    Agent::from_command(cmd, args)
}

/// Waits until the agent exits on its own (bounded) and returns its status.
pub fn wait_exit(agent: &mut Agent) -> ExitStatus {
    agent.wait_exit("agent did not exit")
}

/// Waits until the agent has opened its `n`th notify websocket and it is still up.
pub fn expect_kick_channel(agent: &Agent, server: &Server, n: usize) {
    let up = server.wait_kicks(Instant::now() + DEADLINE, |k| {
        (k.opened >= n && k.live >= 1).then_some(())
    });
    if up.is_none() {
        agent.fail(&format!(
            "kick channel {n} never came up; websocket: {:?}",
            server.kicks()
        ));
    }
}

/// Waits for the agent's reply `reply` on the notify websocket.
pub fn expect_kick_reply(agent: &Agent, server: &Server, reply: &str) {
    let found = server.wait_kicks(Instant::now() + DEADLINE, |k| {
        k.replies.iter().any(|r| r == reply).then_some(())
    });
    if found.is_none() {
        agent.fail(&format!(
            "no kick reply {reply:?}; websocket: {:?}",
            server.kicks()
        ));
    }
}

/// Waits for a request matching `pred`; on timeout fails with the agent's log and every request.
pub fn expect(
    agent: &Agent,
    server: &Server,
    what: &str,
    pred: impl Fn(&Request) -> bool,
) -> Request {
    match server.wait_for(Instant::now() + DEADLINE, pred) {
        Some(r) => r,
        None => agent.fail(&format!(
            "no request {what}; requests:\n{}",
            server.listing()
        )),
    }
}

/// Waits until `n` requests match `pred`; returns them in order.
pub fn expect_n(
    agent: &Agent,
    server: &Server,
    what: &str,
    n: usize,
    pred: impl Fn(&Request) -> bool,
) -> Vec<Request> {
    let found = server.wait_until(Instant::now() + DEADLINE, |log| {
        let m: Vec<Request> = log.iter().filter(|r| pred(r)).cloned().collect();
        (m.len() >= n).then_some(m)
    });
    match found {
        Some(r) => r,
        None => agent.fail(&format!(
            "fewer than {n} requests {what}; requests:\n{}",
            server.listing()
        )),
    }
}

/// True for a request to `path` about `task`.
pub fn about(r: &Request, path: &str, task: &str) -> bool {
    r.path == path && r.param("taskId") == Some(task)
}
