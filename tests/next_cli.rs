//! `assistd next` and `assistd check` as people run them.

mod util;

use util::run;

fn next(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["next"];
    all.extend_from_slice(args);
    let out = run(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn prints_the_next_runs_in_utc() {
    let (code, out, _) = next(&[
        "0 0 8 * * ? Asia/Shanghai",
        "--from",
        "2024-03-15T10:20:30Z",
        "--count",
        "2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, "2024-03-16T00:00:00Z\n2024-03-17T00:00:00Z\n");
}

#[test]
fn accepts_any_rfc3339_offset_for_from() {
    let (code, out, _) = next(&[
        "*/20 * * * * ?",
        "--from",
        "2024-03-15T18:20:30+08:00",
        "--count",
        "1",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, "2024-03-15T10:20:40Z\n");
}

#[test]
fn rate_is_anchored_to_the_creation_time() {
    // creation 2024-03-15T10:00:00Z
    let (code, out, _) = next(&[
        "rate(5m)",
        "--from",
        "2024-03-15T10:07:00Z",
        "--creation-time",
        "1710496800000",
        "--count",
        "2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, "2024-03-15T10:10:00Z\n2024-03-15T10:15:00Z\n");
}

#[test]
fn fewer_runs_than_asked_is_not_an_error() {
    let (code, out, _) = next(&[
        "0 0 12 1 1 ? 2031,2033",
        "--from",
        "2030-03-08T10:20:30Z",
        "--count",
        "5",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, "2031-01-01T12:00:00Z\n2033-01-01T12:00:00Z\n");
}

#[test]
fn errors_are_one_line_with_the_spec_code_and_exit_2() {
    let (code, out, err) = next(&["0 0 25 * * ?"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        "error: InvalidCronExpression: syntax error in hour field: '25'\n"
    );
    let (code, _, err) = next(&["0 0 0 1 1 ? 2023", "--from", "2024-01-01T00:00:00Z"]);
    assert_eq!(code, 2);
    assert_eq!(err, "error: CronExpressionExpired\n");
    let (code, _, err) = next(&["rate(1001d)"]);
    assert_eq!(code, 2);
    assert_eq!(err, "error: RateFrequencyTooLarge\n");
    let (code, _, err) = next(&["0 0 22-2 * * ?"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: InvalidCronExpression"), "{err}");
}

#[test]
fn a_day_of_week_range_ending_in_7_includes_sunday() {
    // 2024-03-17 is a Sunday.
    let (code, out, _) = next(&[
        "0 0 12 ? * 1-7",
        "--from",
        "2024-03-16T13:00:00Z",
        "--count",
        "1",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, "2024-03-17T12:00:00Z\n");
}

#[test]
fn check_lists_every_problem_and_exits_1() {
    let dir = util::TestDir::new("check");
    std::fs::write(dir.tasks().join("ok.json"), r#"{"command": "true"}"#).expect("write");
    std::fs::write(
        dir.tasks().join("cron.json"),
        r#"{"command": "true", "cron": "0 0 25 * * ?"}"#,
    )
    .expect("write");
    std::fs::write(
        dir.tasks().join("dir.json"),
        r#"{"command": "true", "workingDirectory": "/nonexistent/x"}"#,
    )
    .expect("write");
    let out = run(&["check", dir.tasks().to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("cron.json: cron: InvalidCronExpression"),
        "{text}"
    );
    assert!(
        text.contains("dir.json: workingDirectory: WorkingDirectoryNotExist"),
        "{text}"
    );
    std::fs::remove_file(dir.tasks().join("cron.json")).expect("rm");
    std::fs::remove_file(dir.tasks().join("dir.json")).expect("rm");
    let out = run(&["check", dir.tasks().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_crontab_time_is_read_seconds_first_and_says_so() {
    let (code, out, err) = next(&[
        "*/15 * * * 1-5",
        "--from",
        "2024-01-05T23:40:00Z",
        "--count",
        "2",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "2024-01-05T23:45:00Z\n2024-01-08T00:00:00Z\n")
    );
    assert_eq!(
        err,
        "crontab form \"*/15 * * * 1-5\", read as seconds-first \"0 */15 * * * 1-5\"\n"
    );
    let (code, out, _) = next(&["@weekly", "--from", "2024-01-01T00:00:00Z", "--count", "1"]);
    assert_eq!((code, out.as_str()), (0, "2024-01-07T00:00:00Z\n"));
    let (code, _, err) = next(&["--crontab", "0 0 17 * * ?"]);
    assert_eq!(code, 2);
    assert!(err.contains("not 6 fields"), "{err}");
    let (code, _, err) = next(&["0 0 */2 * 1"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot express"), "{err}");
}
