//! `assistd check` refuses what the agent refuses: both read the same directory here, and
//! every file `check` names is one the agent does not run.

mod util;

use serde_json::json;
use util::{assistd, Agent, TestDir};

fn check(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = assistd()
        .arg("check")
        .arg(path)
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_and_the_agent_refuse_the_same_files() {
    let dir = TestDir::new("check-same");
    dir.task("a", &json!({"id": "same", "command": "echo a"}));
    dir.task("b", &json!({"id": "same", "command": "echo b"}));
    dir.task(
        "param",
        &json!({"command": "echo {{ACS::Nope}}", "enableParameter": true}),
    );
    dir.task(
        "typo",
        &json!({"command": "echo typo", "output": {"skipEmty": true}}),
    );
    dir.task("good", &json!({"command": "echo good"}));

    let (code, out, _) = check(&dir.tasks());
    assert_eq!(code, Some(1), "{out}");
    let b = dir.tasks().join("b.json");
    let a = dir.tasks().join("a.json");
    assert!(
        out.contains(&format!(
            "{}: id \"same\" is already used by {}",
            b.display(),
            a.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("param.json: InvalidEnvironmentParameter"),
        "{out}"
    );
    assert!(
        out.contains("typo.json: unknown key \"skipEmty\" in \"output\""),
        "{out}"
    );
    assert!(!out.contains("good.json"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // One file: its duplicate id is found among its siblings.
    let (code, out, _) = check(&b);
    assert_eq!(code, Some(1));
    assert!(out.contains("is already used by"), "{out}");

    let agent = Agent::start(&dir, &[]);
    agent.expect_line("already used by");
    let records = agent.wait_journal(&dir, "good and same finished, param invalid", |r| {
        let has =
            |task: &str, event: &str| r.iter().any(|r| r["task"] == task && r["event"] == event);
        has("good", "finished") && has("same", "finished") && has("param", "invalid")
    });
    let same: Vec<_> = records
        .iter()
        .filter(|r| r["task"] == "same" && r["event"] == "finished")
        .collect();
    assert_eq!(same.len(), 1);
    assert_eq!(
        same[0]["output"], "a\n",
        "the first file in name order wins"
    );
    assert!(!records.iter().any(|r| r["task"] == "typo"), "{records:#?}");
}

#[test]
fn check_of_a_missing_path_is_an_error() {
    let dir = TestDir::new("check-missing");
    let (code, out, err) = check(&dir.path("nonexistent"));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.starts_with("error: cannot check "), "{err}");
}

/// A task that can never run again is worth a warning, not a failure: the file is valid and
/// the agent only notes it.
#[test]
fn check_warns_on_tasks_that_never_run_again() {
    let dir = TestDir::new("check-expired");
    dir.task(
        "past-at",
        &json!({"command": "echo x", "repeat": "At", "cron": "2001-01-01T00:00:00"}),
    );
    dir.task(
        "past-year",
        &json!({"command": "echo x", "cron": "0 0 0 1 1 ? 2001"}),
    );
    dir.task("fine", &json!({"command": "echo x", "cron": "0 0 3 * * ?"}));
    let (code, out, err) = check(&dir.tasks());
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("3 task file(s) OK"), "{out}");
    for name in ["past-at", "past-year"] {
        assert!(
            err.lines().any(|l| l.starts_with("warning: ")
                && l.contains(&format!("{name}.json"))
                && l.contains("never runs again")),
            "{name}: {err}"
        );
    }
    assert!(!err.contains("fine.json"), "{err}");
}
