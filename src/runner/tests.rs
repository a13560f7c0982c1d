//! End-to-end tests of `run` with real `/bin/sh` children and the in-memory reporter.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Sender};

use super::*;
use crate::model::{OutputInfo, RepeatType};
use crate::report::{MemoryReporter, WallClock};

/// Bounds how long a failing test takes; never used to synchronise.
const GENEROUS: Duration = Duration::from_secs(60);

fn b64(s: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fresh directory per test.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let dir =
            std::env::temp_dir().join(format!("assistd-runner-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }

    fn cfg(&self) -> RunnerConfig {
        RunnerConfig::for_tests(self.0.join("scripts"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn task(id: &str, script: &str) -> RunTaskInfo {
    RunTaskInfo {
        command_type: "RunShellScript".into(),
        task_id: id.into(),
        invoke_version: 1,
        content: b64(script.as_bytes()),
        timeout: "120".into(),
        working_dir: "/tmp".into(),
        output: OutputInfo {
            interval_ms: 1000,
            log_quota: 0,
            skip_empty: false,
            send_start: false,
            need_export: false,
        },
        ..RunTaskInfo::default()
    }
}

fn head(t: &RunTaskInfo) -> ReportHead {
    ReportHead {
        task_id: t.task_id.clone(),
        invoke_version: t.invoke_version,
        repeat: t.repeat,
        wall_clock: WallClock::None,
    }
}

/// Runs `t` to the end with a cancel channel nobody uses.
fn run_task(dir: &TestDir, t: &RunTaskInfo) -> (Outcome, Vec<Report>) {
    let rep = MemoryReporter::new();
    let (_keep, cancel) = unbounded::<Cancel>();
    let out = run(t, head(t), &dir.cfg(), &cancel, &rep);
    (out, rep.reports())
}

/// Runs `t` on a scoped thread; `act` gets the reporter and the cancel sender meanwhile.
fn run_with(
    dir: &TestDir,
    t: &RunTaskInfo,
    rep: &Arc<MemoryReporter>,
    act: impl FnOnce(&Sender<Cancel>),
) -> Outcome {
    let (tx, cancel) = unbounded::<Cancel>();
    let cfg = dir.cfg();
    std::thread::scope(|s| {
        let h = s.spawn(|| run(t, head(t), &cfg, &cancel, rep));
        act(&tx);
        h.join().expect("run panicked")
    })
}

fn finals(reports: &[Report]) -> Vec<&Report> {
    reports.iter().filter(|r| r.is_final()).collect()
}

/// Everything the server saw as output, assuming every send was accepted.
fn all_output(reports: &[Report]) -> Vec<u8> {
    reports.iter().flat_map(|r| r.output().to_vec()).collect()
}

fn read_pid(path: &Path) -> libc::pid_t {
    let deadline = Instant::now() + GENEROUS;
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        // No event exists for "the shell wrote its pid file"; poll the file.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True once `pid` is gone, or a zombie left to PID 1 (which may not reap in a container).
fn is_dead(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn wait_dead(pid: libc::pid_t) -> bool {
    let deadline = Instant::now() + GENEROUS;
    while !is_dead(pid) {
        if Instant::now() > deadline {
            return false;
        }
        // Orphans are reaped by PID 1 asynchronously; nothing to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn finished_with_exit_code_and_merged_output() {
    let dir = TestDir::new("finished");
    let t = task("t-fin", "echo out; echo err >&2; pwd; exit 3");
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(
        out,
        Outcome {
            ending: Ending::Finished,
            task_error: None
        }
    );
    let f = finals(&reports);
    assert_eq!(f.len(), 1);
    let Report::Finished { span, .. } = f[0] else {
        panic!("not finished: {:?}", f[0])
    };
    assert_eq!(span.exit_code, 3);
    assert_eq!(span.dropped, 0);
    assert!(span.end_ms >= span.start_ms);
    assert_eq!(all_output(&reports), b"out\nerr\n/tmp\n".to_vec());
    assert_eq!(scripts_left(&dir), Vec::<String>::new());
}

/// The files left in the script directory.
fn scripts_left(dir: &TestDir) -> Vec<String> {
    match fs::read_dir(dir.cfg().script_dir) {
        Ok(list) => list
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn timeout_kills_the_whole_group() {
    let dir = TestDir::new("timeout");
    let pidfile = dir.path("pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let t = RunTaskInfo {
        timeout: "1".into(),
        ..task("t-timeout", &script)
    };
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(out.ending, Ending::Timeout);
    let f = finals(&reports);
    assert_eq!(f.len(), 1);
    let Report::Timeout { span, .. } = f[0] else {
        panic!("not timeout: {:?}", f[0])
    };
    assert_eq!(span.exit_code, 1);
    assert_eq!(scripts_left(&dir), Vec::<String>::new());
    let pid = read_pid(&pidfile);
    assert!(wait_dead(pid), "grandchild {pid} survived the timeout");
}

fn wait_for_output(rep: &MemoryReporter, needle: &[u8]) {
    let got = rep.wait_for(GENEROUS, |r| {
        all_output(r).windows(needle.len()).any(|w| w == needle)
    });
    assert!(
        all_output(&got).windows(needle.len()).any(|w| w == needle),
        "never saw the output"
    );
}

#[test]
fn stop_kills_and_reports_stopped() {
    let dir = TestDir::new("stop");
    let t = task("t-stop", "echo started; sleep 300");
    let rep = MemoryReporter::new();
    let out = run_with(&dir, &t, &rep, |tx| {
        wait_for_output(&rep, b"started");
        tx.send(Cancel::Stop).expect("send cancel");
    });
    assert_eq!(out.ending, Ending::Stopped);
    let reports = rep.reports();
    let f = finals(&reports);
    assert_eq!(f.len(), 1);
    assert!(
        matches!(
            f[0],
            Report::Stopped {
                result: StopResult::Killed,
                err_desc: None,
                ..
            }
        ),
        "{:?}",
        f[0]
    );
    assert_eq!(all_output(&reports), b"started\n".to_vec());
    assert_eq!(scripts_left(&dir), Vec::<String>::new());
}

#[test]
fn quiet_cancel_sends_no_final_report() {
    let dir = TestDir::new("quiet");
    let t = task("t-quiet", "echo started; sleep 300");
    let rep = MemoryReporter::new();
    let out = run_with(&dir, &t, &rep, |tx| {
        wait_for_output(&rep, b"started");
        tx.send(Cancel::Quiet).expect("send cancel");
    });
    assert_eq!(out.ending, Ending::Silent);
    assert!(finals(&rep.reports()).is_empty());
}

#[test]
fn huge_output_keeps_head_and_tail() {
    let dir = TestDir::new("huge");
    let script = "head -c 6000 /dev/zero | tr '\\0' a; head -c 19988000 /dev/zero; head -c 6000 /dev/zero | tr '\\0' z";
    let t = task("t-huge", script);
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(out.ending, Ending::Finished);
    let f = finals(&reports);
    let span = f[0].span().expect("span");
    assert_eq!(span.exit_code, 0);
    assert_eq!(span.dropped, 20_000_000 - 12_000);
    let mut want = vec![b'a'; 6000];
    want.extend(vec![b'z'; 6000]);
    assert_eq!(all_output(&reports), want);
}

#[test]
fn periodic_invocations_send_no_running_output() {
    let dir = TestDir::new("periodic");
    let t = RunTaskInfo {
        repeat: RepeatType::Rate,
        ..task("t-rate", "echo hi")
    };
    let (_, reports) = run_task(&dir, &t);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].output(), b"hi\n");
}

fn assert_one_invalid(t: &RunTaskInfo, param: &str, value: &str) {
    let dir = TestDir::new(&format!("invalid-{}", t.task_id));
    let (out, reports) = run_task(&dir, t);
    assert_eq!(out.ending, Ending::Invalid);
    assert_eq!(reports.len(), 1, "{reports:?}");
    match &reports[0] {
        Report::Invalid {
            param: p, value: v, ..
        } => assert_eq!((p.as_str(), v.as_str()), (param, value)),
        other => panic!("not invalid: {other:?}"),
    }
    assert!(
        !dir.cfg().script_dir.exists(),
        "nothing may be written for an invalid task"
    );
}

#[test]
fn invalid_tasks_send_exactly_one_invalid_report() {
    let t = RunTaskInfo {
        command_type: "RunFooScript".into(),
        ..task("t-type", "true")
    };
    assert_one_invalid(&t, "TypeInvalid", "TypeInvalid_RunFooScript");
    let t = RunTaskInfo {
        content: "YWJj1".into(),
        ..task("t-b64", "true")
    };
    assert_one_invalid(
        &t,
        "CommandContentInvalid",
        "illegal base64 data at input byte 4",
    );
    let t = RunTaskInfo {
        username: "no-such-user-assistd".into(),
        ..task("t-user", "true")
    };
    assert_one_invalid(
        &t,
        "UsernameOrPasswordInvalid",
        "UserInvalid_no-such-user-assistd: unknown user",
    );
    let t = RunTaskInfo {
        working_dir: "/no/such/dir/assistd".into(),
        ..task("t-wd", "true")
    };
    assert_one_invalid(
        &t,
        "workingDirectory",
        "WorkingDirectoryNotExist: /no/such/dir/assistd does not exist",
    );
    let t = RunTaskInfo {
        enable_parameter: true,
        ..task("t-param", "echo {{ACS::Nope}}")
    };
    assert_one_invalid(
        &t,
        "InvalidEnvironmentParameter",
        "The environment parameter Nope is invalid",
    );
}

#[test]
fn parameters_are_substituted_when_enabled() {
    let dir = TestDir::new("params");
    let mut params = BTreeMap::new();
    params.insert("InstanceId".to_string(), "i-123".to_string());
    let script = "echo {{ ACS::InstanceId }}";
    let t = RunTaskInfo {
        enable_parameter: true,
        builtin_params: params.clone(),
        ..task("t-p1", script)
    };
    let (_, reports) = run_task(&dir, &t);
    assert_eq!(all_output(&reports), b"i-123\n".to_vec());
    let t = RunTaskInfo {
        enable_parameter: false,
        builtin_params: params,
        ..task("t-p2", "echo '{{ACS::InstanceId}}'")
    };
    let (_, reports) = run_task(&dir, &t);
    assert_eq!(all_output(&reports), b"{{ACS::InstanceId}}\n".to_vec());
}

#[test]
fn script_names_stay_inside_the_script_dir() {
    let dir = TestDir::new("sanitise");
    // Periodic, so that the file is kept for the listing below.
    let t = RunTaskInfo {
        command_name: "../up".into(),
        repeat: RepeatType::Rate,
        ..task("../../escape", "echo ok")
    };
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(out.ending, Ending::Finished);
    assert_eq!(all_output(&reports), b"ok\n".to_vec());
    let names: Vec<String> = fs::read_dir(dir.cfg().script_dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![".._up-.._.._escape.iv1.sh".to_string()]);
    assert!(!dir
        .0
        .parent()
        .expect("parent")
        .join("escape.iv1.sh")
        .exists());
}

#[test]
fn once_script_that_exists_is_an_error() {
    let dir = TestDir::new("existed");
    let t = task("t-again", "true");
    let planted = dir.cfg().script_dir.join("t-again.iv1.sh");
    fs::create_dir_all(dir.cfg().script_dir).expect("mkdir");
    fs::write(&planted, b"echo not ours").expect("plant");
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(out.ending, Ending::Error);
    assert_eq!(reports.len(), 1);
    let Report::Error {
        err_code, err_desc, ..
    } = &reports[0]
    else {
        panic!("not error: {:?}", reports[0])
    };
    assert_eq!(err_code, "-9");
    assert!(
        err_desc.starts_with("ScriptFileExisted: Saving script to ")
            && err_desc.ends_with("failed: script file existed")
    );
    assert_eq!(
        fs::read(&planted).expect("a file we did not write is kept"),
        b"echo not ours"
    );
}

#[test]
fn a_once_task_can_run_again_after_it_ended() {
    // Before a restart's versions were persisted, an edited task came back as version 1 and
    // hit the previous run's file; now every non-periodic run removes its own file.
    let dir = TestDir::new("again");
    for repeat in [
        RepeatType::Once,
        RepeatType::NextRebootOnly,
        RepeatType::EveryReboot,
    ] {
        let t = RunTaskInfo {
            repeat,
            ..task("t-again", "echo hi")
        };
        for _ in 0..2 {
            let (out, reports) = run_task(&dir, &t);
            assert_eq!(out.ending, Ending::Finished, "{repeat}: {reports:?}");
            assert_eq!(scripts_left(&dir), Vec::<String>::new(), "{repeat}");
        }
    }
}

#[test]
fn grandchild_holding_the_pipe_does_not_hang_the_run() {
    let dir = TestDir::new("grandchild");
    let pidfile = dir.path("pid");
    let script = format!("sleep 300 & echo $! > {}; echo done", pidfile.display());
    let t = task("t-gc", &script);
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(out.ending, Ending::Finished);
    assert_eq!(finals(&reports)[0].span().expect("span").exit_code, 0);
    assert_eq!(all_output(&reports), b"done\n".to_vec());
    // A normal exit leaves background processes alone; clean up after the test.
    let pid = read_pid(&pidfile);
    assert!(!is_dead(pid), "a normal exit must not kill the group");
    // SAFETY: plain syscall on the test's own grandchild.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn running_output_that_fails_is_resent_once_in_order() {
    let script = "for i in 1 2 3 4; do echo line$i; sleep 1; done; echo end";
    let want = b"line1\nline2\nline3\nline4\nend\n".to_vec();
    for mode in ["alternate", "all-fail"] {
        let dir = TestDir::new(&format!("mayfail-{mode}"));
        let t = task("t-mayfail", script);
        let rep = MemoryReporter::new();
        for i in 0..100 {
            let fail = mode == "all-fail" || i % 2 == 0;
            rep.push_answer(if fail {
                Err(500)
            } else {
                Ok(Verdict::Accepted)
            });
        }
        let (_keep, cancel) = unbounded::<Cancel>();
        let out = run(&t, head(&t), &dir.cfg(), &cancel, &rep);
        assert_eq!(out.ending, Ending::Finished);
        let reports = rep.reports();
        // What the server kept: running bodies answered 200, then the final body (the
        // reporter's own retries deliver it).
        let mut got = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            let accepted = mode != "all-fail" && i % 2 == 1;
            if r.is_final() || accepted {
                got.extend_from_slice(r.output());
            }
        }
        assert_eq!(got, want, "mode {mode}");
    }
}

#[test]
fn task_error_on_running_report_kills_quietly() {
    let dir = TestDir::new("taskerror");
    let t = RunTaskInfo {
        output: OutputInfo {
            send_start: false,
            interval_ms: 1000,
            ..OutputInfo::default()
        },
        ..task("t-te", "echo x; sleep 300")
    };
    let rep = MemoryReporter::new();
    let refuse = Verdict::TaskError {
        code: "TaskNotFound".into(),
        status: String::new(),
    };
    rep.push_answer(Ok(refuse.clone()));
    let (_keep, cancel) = unbounded::<Cancel>();
    let out = run(&t, head(&t), &dir.cfg(), &cancel, &rep);
    assert_eq!(
        out,
        Outcome {
            ending: Ending::Silent,
            task_error: Some(refuse)
        }
    );
    assert!(finals(&rep.reports()).is_empty());
}

#[test]
fn refused_start_does_not_run() {
    let dir = TestDir::new("refused");
    let marker = dir.path("ran");
    let mut t = task("t-refused", &format!("touch {}", marker.display()));
    t.output.send_start = true;
    let rep = MemoryReporter::new();
    rep.push_answer(Ok(Verdict::TaskError {
        code: "TaskStatusInvalid".into(),
        status: "Terminated".into(),
    }));
    let (_keep, cancel) = unbounded::<Cancel>();
    let out = run(&t, head(&t), &dir.cfg(), &cancel, &rep);
    assert_eq!(out.ending, Ending::Silent);
    assert!(out.task_error.is_some());
    assert_eq!(rep.reports().len(), 1);
    assert!(!marker.exists());
}

#[test]
fn power_exit_codes_are_only_logged_when_not_allowed() {
    let dir = TestDir::new("power");
    let (out, reports) = run_task(&dir, &task("t-power", "exit 194"));
    assert_eq!(out.ending, Ending::Finished);
    assert_eq!(finals(&reports)[0].span().expect("span").exit_code, 194);
}

#[test]
fn runs_as_another_user() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED runs_as_another_user: needs root");
        return;
    }
    let Ok(nobody) = precheck::lookup_user("nobody") else {
        eprintln!("SKIPPED runs_as_another_user: no user nobody");
        return;
    };
    let dir = TestDir::new("user");
    let t = RunTaskInfo {
        username: "nobody".into(),
        ..task("t-user", "id -u; id -G; pwd; echo $HOME")
    };
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(out.ending, Ending::Finished, "{reports:?}");
    let text = String::from_utf8(all_output(&reports)).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string());
    let mut groups: Vec<String> = nobody.groups.iter().map(|g| g.to_string()).collect();
    groups.sort();
    let mut got: Vec<String> = lines[1].split(' ').map(str::to_string).collect();
    got.sort();
    assert_eq!(got, groups);
    assert_eq!(lines[2], "/tmp");
    assert_eq!(lines[3], nobody.home.display().to_string());
}

#[test]
fn another_user_runs_a_script_file_in_the_state_dir() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || precheck::lookup_user("nobody").is_err() {
        eprintln!(
            "SKIPPED another_user_runs_a_script_file_in_the_state_dir: needs root and user nobody"
        );
        return;
    }
    let dir = TestDir::new("statedir-user");
    let state = crate::fsutil::StateDir::new(dir.path("state"));
    state.create().expect("state dir");
    let cfg = RunnerConfig::for_tests(state.script_dir());
    let t = RunTaskInfo {
        username: "nobody".into(),
        ..task("t-nobody", "echo \"$0\"")
    };
    let rep = MemoryReporter::new();
    let (_keep, cancel) = unbounded::<Cancel>();
    let out = run(&t, head(&t), &cfg, &cancel, &rep);
    assert_eq!(out.ending, Ending::Finished, "{:?}", rep.reports());
    // `/bin/sh <file>` sets $0 to the file; inline (`/bin/sh -c`, visible in ps) to the shell.
    let want = format!("{}\n", state.script_dir().join("t-nobody.iv1.sh").display());
    assert_eq!(
        String::from_utf8(all_output(&rep.reports())).expect("utf8"),
        want
    );
}

#[test]
fn a_closed_state_dir_runs_another_user_inline() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || precheck::lookup_user("nobody").is_err() {
        eprintln!(
            "SKIPPED a_closed_state_dir_runs_another_user_inline: needs root and user nobody"
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("statedir-closed");
    let state = crate::fsutil::StateDir::new(dir.path("state"));
    state.create().expect("state dir");
    // As systemd's StateDirectoryMode=0700 leaves it: the scripts are 0711, their parent not.
    fs::set_permissions(&state.root, fs::Permissions::from_mode(0o700)).expect("chmod");
    let cfg = RunnerConfig::for_tests(state.script_dir());
    let t = RunTaskInfo {
        username: "nobody".into(),
        ..task("t-nobody", "echo hi")
    };
    let rep = MemoryReporter::new();
    let (_keep, cancel) = unbounded::<Cancel>();
    let out = run(&t, head(&t), &cfg, &cancel, &rep);
    assert_eq!(out.ending, Ending::Finished);
    assert_eq!(all_output(&rep.reports()), b"hi\n".to_vec());
}

#[test]
fn timeouts_parse_like_the_reference() {
    assert_eq!(parse_timeout("5"), Some(Duration::from_secs(5)));
    assert_eq!(parse_timeout("0"), None);
    assert_eq!(parse_timeout("-3"), None);
    assert_eq!(parse_timeout("abc"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_timeout(""), Some(Duration::from_secs(3600)));
    assert_eq!(
        parse_timeout("9223372036854775807"),
        Some(Duration::from_secs(i64::MAX.unsigned_abs()))
    );
    assert_eq!(parse_timeout("-9223372036854775808"), None);
}

#[test]
fn a_timeout_too_large_for_a_deadline_is_no_deadline() {
    let dir = TestDir::new("hugetimeout");
    for timeout in ["9223372036854775807", "18446744073709551"] {
        let t = RunTaskInfo {
            timeout: timeout.into(),
            ..task("t-huge-timeout", "echo ok")
        };
        let (out, reports) = run_task(&dir, &t);
        assert_eq!(out.ending, Ending::Finished, "{timeout}");
        assert_eq!(all_output(&reports), b"ok\n".to_vec());
    }
}

#[test]
fn closed_script_dir_runs_another_user_inline() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || precheck::lookup_user("nobody").is_err() {
        eprintln!("SKIPPED closed_script_dir_runs_another_user_inline: needs root and user nobody");
        return;
    }
    use std::os::unix::fs::DirBuilderExt;
    let dir = TestDir::new("closed");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.cfg().script_dir)
        .expect("closed dir");
    let t = RunTaskInfo {
        username: "nobody".into(),
        ..task("t-closed", "echo hi")
    };
    let (out, reports) = run_task(&dir, &t);
    assert_eq!(out.ending, Ending::Finished);
    assert_eq!(all_output(&reports), b"hi\n".to_vec());
    assert_eq!(fs::read_dir(dir.cfg().script_dir).expect("list").count(), 0);
}
