//! Self-update end to end: the real binary, copied into the test's directory (so replacing it
//! touches nothing else), against the control-plane double's `update_check` and download.

mod support;
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use assistd::remote::update::sha256_hex;
use support::server::{
    shell_entry, update_offer, Reply, Server, DOWNLOAD, OUTPUT, TASK_LIST, UPDATE_CHECK,
};
use support::{about, expect, expect_n};
use util::{Agent, TestDir};

const FINISH: &str = "/luban/api/v1/task/finish";

/// Copies the assistd build to `<dir>/bin/assistd`.
fn install_copy(dir: &TestDir) -> PathBuf {
    let bin_dir = dir.path("bin");
    std::fs::create_dir_all(&bin_dir).expect("create bin dir");
    let exe = bin_dir.join("assistd");
    std::fs::copy(util::bin(), &exe).expect("copy assistd");
    exe
}

/// The bytes the double serves as "the new version": the build with a marker appended (an
/// ELF file does not mind trailing bytes).
fn new_build() -> Vec<u8> {
    let mut bytes = std::fs::read(util::bin()).expect("read assistd");
    bytes.extend_from_slice(b"\nassistd-update-test-marker\n");
    bytes
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `support::start_remote`, but running `exe` and checking for updates every second.
fn start(dir: &TestDir, server: &Server, exe: &Path) -> Agent {
    let config = dir.path("config.json");
    std::fs::write(&config, r#"{"update_check_interval_secs": 1}"#).expect("write config");
    let mut args = support::remote_args(dir, server);
    args.extend(["--config".to_string(), config.display().to_string()]);
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .env("TZ", "UTC")
        .env_remove("ALIYUN_ASSIST_PROXY")
        .env_remove("ASSISTD_UPDATE_PENDING");
    Agent::from_command(cmd, args)
}

fn list_with(entry: &str) -> Reply {
    Reply::ok(format!(
        r#"{{"code":200,"instanceId":"i-test","run":[{entry}],"stop":[],"test":[]}}"#
    ))
}

#[test]
fn an_offer_waits_for_a_running_once_task() {
    let dir = TestDir::new("update-waits");
    let server = Server::start();
    let exe = install_copy(&dir);
    let go = dir.path("go");
    let script = format!(
        "while [ ! -f {} ]; do sleep 0.1; done; echo released",
        go.display()
    );
    server.push(
        TASK_LIST,
        list_with(&shell_entry("t-busy", &script, "", "Once", OUTPUT)),
    );
    // A download that will be refused: this test is about when it is asked for.
    let url = format!("{}{DOWNLOAD}", server.url());
    server.push(UPDATE_CHECK, update_offer(&url, &"0".repeat(64), "v2"));
    server.set_default(DOWNLOAD, Reply::Bytes(200, new_build()));
    let agent = start(&dir, &server, &exe);
    agent.expect_line("phase=update waiting: a task is queued or running");
    assert!(
        !server.requests().iter().any(|r| r.path == DOWNLOAD),
        "downloaded while a task ran"
    );
    std::fs::write(&go, "").expect("release the task");
    expect(&agent, &server, "finish", |r| about(r, FINISH, "t-busy"));
    expect(&agent, &server, "download", |r| r.path == DOWNLOAD);
    let log = server.requests();
    let finish_at = log.iter().position(|r| about(r, FINISH, "t-busy"));
    let download_at = log.iter().position(|r| r.path == DOWNLOAD);
    assert!(finish_at < download_at, "{finish_at:?} {download_at:?}");
    agent.expect_line("download refused: sha256");
}

#[test]
fn a_corrupt_download_is_refused_and_changes_nothing() {
    let dir = TestDir::new("update-corrupt");
    let server = Server::start();
    let exe = install_copy(&dir);
    let before = std::fs::read(&exe).expect("read copy");
    let served = new_build();
    // The offer names the checksum of other bytes than those served.
    let url = format!("{}{DOWNLOAD}", server.url());
    server.push(UPDATE_CHECK, update_offer(&url, &sha256_hex(&before), "v2"));
    server.set_default(DOWNLOAD, Reply::Bytes(200, served));
    let mut agent = start(&dir, &server, &exe);
    expect(&agent, &server, "download", |r| r.path == DOWNLOAD);
    agent.expect_line("download refused: sha256");
    assert!(
        std::fs::read(&exe).expect("read copy") == before,
        "binary changed"
    );
    assert_eq!(listing(&dir.path("bin")), ["assistd"]);
    // Still the same agent, still serving: a kick is fetched.
    agent.signal(libc::SIGHUP);
    expect(&agent, &server, "kickoff", |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=kickoff")
    });
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    let startups = server
        .requests()
        .iter()
        .filter(|r| r.path == TASK_LIST && r.query.starts_with("reason=startup"))
        .count();
    assert_eq!(startups, 1, "the agent did not restart");
}

#[test]
fn a_good_download_is_installed_and_the_agent_comes_back_on_it() {
    let dir = TestDir::new("update-good");
    let server = Server::start();
    let exe = install_copy(&dir);
    let served = new_build();
    let url = format!("{}{DOWNLOAD}", server.url());
    // Offered once; the restarted agent's own checks are then answered "no update".
    server.push(UPDATE_CHECK, update_offer(&url, &sha256_hex(&served), "v2"));
    server.set_default(DOWNLOAD, Reply::Bytes(200, served.clone()));
    let mut agent = start(&dir, &server, &exe);
    let check = expect(&agent, &server, "update check", |r| r.path == UPDATE_CHECK);
    assert_eq!(check.method, "POST");
    let body: serde_json::Value = serde_json::from_slice(&check.body).expect("json body");
    assert_eq!(body["app_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["os"], "linux");
    let startups = expect_n(&agent, &server, "a second startup fetch", 2, |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=startup")
    });
    assert!(
        startups[0].query.contains("cold_start=true"),
        "{}",
        startups[0].query
    );
    assert!(
        startups[1].query.contains("cold_start=false"),
        "{}",
        startups[1].query
    );
    // The new process deletes the kept binary once its startup fetch worked.
    agent.expect_line("update confirmed; removed the previous binary");
    assert!(
        std::fs::read(&exe).expect("read") == served,
        "not installed"
    );
    assert_eq!(listing(&dir.path("bin")), ["assistd"]);
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn update_check_prints_the_offer_and_apply_installs_it() {
    let dir = TestDir::new("update-cli");
    let server = Server::start();
    let exe = install_copy(&dir);
    let served = new_build();
    let sha = sha256_hex(&served);
    let url = format!("{}{DOWNLOAD}", server.url());
    server.set_default(DOWNLOAD, Reply::Bytes(200, served.clone()));
    let run = |args: &[&str]| {
        Command::new(&exe)
            .args(args)
            .env_remove("ALIYUN_ASSIST_PROXY")
            .output()
            .expect("run assistd update")
    };
    let server_url = server.url();
    let none = run(&["update", "--check", "--server", &server_url]);
    assert!(none.status.success(), "{none:?}");
    assert_eq!(String::from_utf8_lossy(&none.stdout), "no update offered\n");

    server.push(UPDATE_CHECK, update_offer(&url, &sha, "v2"));
    let offered = run(&["update", "--check", "--server", &server_url]);
    assert!(offered.status.success(), "{offered:?}");
    assert_eq!(
        String::from_utf8_lossy(&offered.stdout),
        format!("update offered: v2 from {url} (sha256 {sha})\n")
    );
    assert!(!server.requests().iter().any(|r| r.path == DOWNLOAD));

    server.push(UPDATE_CHECK, update_offer(&url, &sha, "v2"));
    let before = std::fs::read(&exe).expect("read copy");
    let applied = run(&["update", "--apply", "--server", &server_url]);
    assert!(applied.status.success(), "{applied:?}");
    let text = String::from_utf8_lossy(&applied.stdout);
    assert!(
        text.contains("restart the running assistd service"),
        "{text}"
    );
    assert!(
        std::fs::read(&exe).expect("read") == served,
        "not installed"
    );
    assert!(std::fs::read(dir.path("bin/assistd.old")).expect("old kept") == before);
}

#[test]
fn a_binary_that_cannot_be_executed_is_rolled_back() {
    let dir = TestDir::new("update-rollback");
    let server = Server::start();
    let exe = install_copy(&dir);
    let before = std::fs::read(&exe).expect("read copy");
    // A real ELF header of this machine and nothing else: it passes the checks before the
    // install, and the kernel refuses to exec it (its program headers are missing).
    let served = before[..64].to_vec();
    let url = format!("{}{DOWNLOAD}", server.url());
    server.push(UPDATE_CHECK, update_offer(&url, &sha256_hex(&served), "v2"));
    server.set_default(DOWNLOAD, Reply::Bytes(200, served));
    let mut agent = start(&dir, &server, &exe);
    agent.expect_line("cannot execute the new binary");
    let startups = expect_n(&agent, &server, "a second startup fetch", 2, |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=startup")
    });
    assert!(
        startups[1].query.contains("cold_start=false"),
        "{}",
        startups[1].query
    );
    assert!(
        std::fs::read(&exe).expect("read") == before,
        "not rolled back"
    );
    assert_eq!(listing(&dir.path("bin")), ["assistd"]);
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}
