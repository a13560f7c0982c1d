//! `assistd journal` against the journal of a real local agent: output shown whole,
//! `--failed`, `-n`, `--since`, and `--follow` on a state dir no agent has used yet.

mod util;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use serde_json::json;
use util::{assistd, record, Agent, TestDir, DEADLINE};

fn journal(dir: &TestDir, extra: &[&str]) -> String {
    let out = assistd()
        .arg("journal")
        .arg("--state-dir")
        .arg(dir.state())
        .args(extra)
        .output()
        .expect("run assistd journal");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_final_record_shows_the_output_whole_and_filters_select_invocations() {
    let dir = TestDir::new("journal-whole");
    let gate = dir.path("gate");
    dir.task(
        "chatty",
        &json!({
            "command": format!("echo one; while [ ! -e {} ]; do sleep 0.1; done; echo two", gate.display()),
            "output": {"interval": 100}
        }),
    );
    dir.task("bad", &json!({"command": "echo nope; exit 4"}));
    let agent = Agent::start(&dir, &[]);
    // The first line went out in a running chunk before the second was printed.
    agent.wait_journal(&dir, "a running chunk with `one`", |r| {
        r.iter()
            .any(|r| r["task"] == "chatty" && r["event"] == "running" && r["output"] == "one\n")
    });
    std::fs::write(&gate, "").expect("open the gate");
    let records = agent.wait_journal(&dir, "chatty and bad finished", |r| {
        ["chatty", "bad"].iter().all(|t| {
            r.iter()
                .any(|r| r["task"] == *t && r["event"] == "finished")
        })
    });
    let fin = record(&records, "chatty", "finished");
    // The final line holds only the rest: what no running chunk carried. That is `two`,
    // unless a chunk tick fell between its echo and the exit (then it is empty).
    let chunks: String = records
        .iter()
        .filter(|r| r["task"] == "chatty" && r["event"] == "running")
        .filter_map(|r| r["output"].as_str())
        .collect();
    let rest = fin["output"].as_str().expect("final output");
    assert_eq!(
        format!("{chunks}{rest}"),
        "one\ntwo\n",
        "the journal line holds only the rest"
    );
    assert!(!rest.contains("one"), "{fin}");

    let text = journal(&dir, &["--task", "chatty"]);
    assert!(
        text.contains(" chatty v1 finished exit=0 dropped=0 (8 bytes)\n    one\n    two\n"),
        "{text}"
    );
    assert!(!text.contains(" running"), "chunks are folded in: {text}");

    let failed = journal(&dir, &["--failed"]);
    assert!(failed.contains(" bad v1 finished exit=4"), "{failed}");
    assert!(!failed.contains("chatty"), "{failed}");

    let last = journal(&dir, &["-n", "1"]);
    assert_eq!(
        last.lines().filter(|l| !l.starts_with("    ")).count(),
        1,
        "{last}"
    );

    assert!(journal(&dir, &["--since", "1h"]).contains(" bad v1 finished"));
    assert_eq!(journal(&dir, &["--since", "2099-01-01T00:00:00Z"]), "");

    let out = assistd()
        .args(["journal", "-n", "-1", "--state-dir"])
        .arg(dir.state())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: -n takes"), "{err}");
}

#[test]
fn follow_on_a_fresh_state_dir_waits_for_the_journal() {
    let dir = TestDir::new("journal-follow-fresh");
    std::fs::remove_dir(dir.state()).expect("no state dir yet");
    let mut follow = assistd()
        .arg("journal")
        .arg("--follow")
        .arg("--state-dir")
        .arg(dir.state())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start journal --follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    dir.task("hello", &json!({"command": "echo hello"}));
    let _agent = Agent::start(&dir, &[]);
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_deadline(deadline) {
            Ok(line) if line.contains(" hello v1 finished") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = follow.kill();
    let exit = follow.wait().expect("wait");
    assert!(
        found,
        "journal --follow never showed the run (exit {exit:?}): {seen:?}"
    );
}
