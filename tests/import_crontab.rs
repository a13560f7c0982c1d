//! `assistd import-crontab` on real Debian crontabs (tests/fixtures/crontab/README.md): the
//! task files it writes pass `assistd check`, and their seconds-first times fire when the
//! crontab times do, as `assistd next` computes both.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use util::{run, TestDir};

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crontab")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `*.json` files of `dir`, sorted, with their parsed content.
fn task_files(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read out dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).expect("read task file"))
                .expect("task file is JSON");
            (p, v)
        })
        .collect()
}

/// The first ten fire times of `expr` from a fixed instant, as `assistd next` prints them.
fn fire_times(expr: &str) -> String {
    let out = run(&[
        "next",
        expr,
        "--from",
        "2024-02-27T12:34:56Z",
        "--count",
        "10",
    ]);
    assert!(out.status.success(), "next {expr:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn system_crontabs_import_into_checked_task_files() {
    let dir = TestDir::new("import-system");
    let out_dir = dir.tasks();
    for file in ["etc/crontab", "etc/cron.d/e2scrub_all"] {
        let out = run(&[
            "import-crontab",
            &fixture(file),
            "--out",
            &out_dir.to_string_lossy(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let tasks = task_files(&out_dir);
    assert_eq!(tasks.len(), 4 + 2, "{tasks:?}");
    for (path, _) in &tasks {
        let mode = std::fs::metadata(path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let check = run(&["check", &out_dir.to_string_lossy()]);
    assert_eq!(
        (check.status.code(), text(&check.stdout).as_str()),
        (Some(0), "6 task file(s) OK\n"),
        "{}",
        text(&check.stderr)
    );

    // Each task's time, against the crontab line it came from.
    let crontab_times = [
        ("17 * * * *", "root", "run-parts --report /etc/cron.hourly"),
        ("25 6 * * *", "root", "/etc/cron.daily"),
        ("47 6 * * 7", "root", "/etc/cron.weekly"),
        ("52 6 1 * *", "root", "/etc/cron.monthly"),
        ("30 3 * * 0", "root", "e2scrub_all_cron"),
        ("10 3 * * *", "root", "/sbin/e2scrub_all -A -r"),
    ];
    for (crontab, user, needle) in crontab_times {
        let (path, task) = tasks
            .iter()
            .find(|(_, t)| t["command"].as_str().is_some_and(|c| c.contains(needle)))
            .unwrap_or_else(|| panic!("no task runs {needle:?}: {tasks:?}"));
        assert_eq!(task["user"], user, "{}", path.display());
        let cron = task["cron"].as_str().expect("cron");
        assert_eq!(
            fire_times(cron),
            fire_times(crontab),
            "{} ({cron}) against {crontab}",
            path.display()
        );
    }
    let hourly = tasks
        .iter()
        .find(|(_, t)| t["cron"] == "0 17 * * * *")
        .expect("17 * * * * is 0 17 * * * *");
    assert!(hourly.1["command"]
        .as_str()
        .is_some_and(|c| c.starts_with("export PATH='/usr/local/sbin:")));

    // Importing again writes the same files under the same ids.
    let again = run(&[
        "import-crontab",
        &fixture("etc/crontab"),
        "--out",
        &out_dir.to_string_lossy(),
    ]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(task_files(&out_dir).len(), 6, "ids are stable");
}

#[test]
fn a_user_crontab_reports_what_it_cannot_convert() {
    let dir = TestDir::new("import-user");
    let out_dir = dir.path("out");
    let out = run(&[
        "import-crontab",
        &fixture("crontab.5-example"),
        "--user",
        "root",
        "--out",
        &out_dir.to_string_lossy(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("crontab.5-example: line 4: MAILTO=paul is not supported"),
        "{stderr}"
    );
    let tasks = task_files(&out_dir);
    assert_eq!(tasks.len(), 6);
    let check = run(&["check", &out_dir.to_string_lossy()]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
    let joe = tasks
        .iter()
        .find(|(_, t)| t["cron"] == "0 0 22 * * 1-5")
        .expect("the weekday mail");
    assert_eq!(
        joe.1["command"],
        "{\nmail -s \"It's 10pm\" joe\n} <<'CRONTAB_STDIN'\nJoe,\n\nWhere are your kids?\nCRONTAB_STDIN\n"
    );
    let sunday = tasks
        .iter()
        .find(|(_, t)| t["cron"] == "0 5 4 * * sun")
        .expect("sun");
    assert_eq!(fire_times("0 5 4 * * sun"), fire_times("5 4 * * 0"));
    assert_eq!(sunday.1["user"], "root");
}

#[test]
fn without_out_it_prints_the_task_files() {
    let out = run(&["import-crontab", &fixture("etc/cron.d/e2scrub_all")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("# e2scrub_all-").count(), 2, "{stdout}");
    assert!(stdout.contains("\"cron\": \"0 30 3 * * 0\""), "{stdout}");
    let usage = run(&["import-crontab", "x", "--system", "--user", "a"]);
    assert_eq!(usage.status.code(), Some(2));
}
