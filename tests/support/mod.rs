//! Remote-mode test support: the control-plane double (`server`) and the real binary started
//! against it, in the harness style of `tests/util.rs`.

#![allow(dead_code)]

pub mod server;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crossbeam_channel::unbounded;

use crate::util::{bin, Agent, TestDir, DEADLINE};
use server::{Request, Server};

/// `assistd agent --server <double> --state-dir <dir>/state` with a cold-start flag inside the
/// test dir, polling off (tests kick with SIGHUP), and `extra` flags.
pub fn start_remote(dir: &TestDir, server: &Server, extra: &[&str]) -> Agent {
    let mut args = vec![
        "agent".to_string(),
        "--server".to_string(),
        server.url(),
        "--instance-id".to_string(),
        "i-test".to_string(),
        "--state-dir".to_string(),
        dir.state().display().to_string(),
        "--coldstart-flag".to_string(),
        dir.path("coldstart-flag").display().to_string(),
        "--poll-interval".to_string(),
        "0".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut child = Command::new(bin())
        .args(&args)
        .env("TZ", "UTC")
        .env_remove("ALIYUN_ASSIST_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start assistd");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = unbounded();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log2.lock().expect("log lock").push(line.clone());
            let _ = tx.send(line);
        }
    });
    Agent {
        child: Some(child),
        lines: rx,
        log,
        args,
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
            server
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.target()))
                .collect::<Vec<_>>()
                .join("\n")
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
            server
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.target()))
                .collect::<Vec<_>>()
                .join("\n")
        )),
    }
}

/// True for a request to `path` about `task`.
pub fn about(r: &Request, path: &str, task: &str) -> bool {
    r.path == path && r.param("taskId") == Some(task)
}
