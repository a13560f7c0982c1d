//! Self-update end to end: the real binary, copied into the test's directory (so replacing it
//! touches nothing else), against the control-plane double's `update_check` and download. The
//! double serves plain http on loopback, which only `update_allow_insecure_loopback` admits.

mod support;
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use assistd::remote::trust::signed_message;
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

/// The update config the tests run with: checks every second, loopback http allowed, plus
/// `extra` (JSON members, comma-led); returns its path.
fn write_config(dir: &TestDir, extra: &str) -> PathBuf {
    let config = dir.path("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"update_check_interval_secs": 1, "update_allow_insecure_loopback": true{extra}}}"#
        ),
    )
    .expect("write config");
    config
}

/// `support::start_remote`, but running `exe` and checking for updates every second.
fn start(dir: &TestDir, server: &Server, exe: &Path) -> Agent {
    let config = dir.path("config.json");
    if !config.exists() {
        write_config(dir, "");
    }
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
    server.set_default(DOWNLOAD, Reply::Bytes(200, new_build()));
    let agent = start(&dir, &server, &exe);
    // Offered once the task runs: the updater checks every second from its start, and a
    // check that came before a slow startup fetch had brought the task would rightly find
    // the agent idle and download.
    agent.expect_line("task=t-busy invoke_version=1 phase=start");
    server.push(UPDATE_CHECK, update_offer(&url, &"0".repeat(64), "0.2.0"));
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
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&before), "0.2.0"),
    );
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
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.2.0"),
    );
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
    let config = write_config(&dir, "");
    let run = |args: &[&str]| run_update(&exe, &config, args);
    let server_url = server.url();
    let none = run(&["update", "--check", "--server", &server_url]);
    assert!(none.status.success(), "{none:?}");
    assert_eq!(String::from_utf8_lossy(&none.stdout), "no update offered\n");

    server.push(UPDATE_CHECK, update_offer(&url, &sha, "0.2.0"));
    let offered = run(&["update", "--check", "--server", &server_url]);
    assert!(offered.status.success(), "{offered:?}");
    assert_eq!(
        String::from_utf8_lossy(&offered.stdout),
        format!("update offered: 0.2.0 from {url} (sha256 {sha})\n")
    );
    assert!(!server.requests().iter().any(|r| r.path == DOWNLOAD));

    server.push(UPDATE_CHECK, update_offer(&url, &sha, "0.2.0"));
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
    // The service's next start is the trial of the new binary.
    assert!(dir.path("bin/assistd.trial").exists());
}

/// `exe update <args> --config <config>`, to completion.
fn run_update(exe: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(exe)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("ALIYUN_ASSIST_PROXY")
        .env_remove("ASSISTD_UPDATE_PENDING")
        .output()
        .expect("run assistd update")
}

#[test]
fn a_binary_that_cannot_be_executed_is_never_installed() {
    let dir = TestDir::new("update-noexec");
    let server = Server::start();
    let exe = install_copy(&dir);
    let before = std::fs::read(&exe).expect("read copy");
    // A real ELF header of this machine and nothing else: it passes the checks of the
    // download, and the kernel refuses to exec it (its program headers are missing). The
    // trial run finds that out before the install.
    let served = before[..64].to_vec();
    let url = format!("{}{DOWNLOAD}", server.url());
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.2.0"),
    );
    server.set_default(DOWNLOAD, Reply::Bytes(200, served));
    let mut agent = start(&dir, &server, &exe);
    agent.expect_line("the new binary cannot be started");
    assert!(std::fs::read(&exe).expect("read") == before, "installed");
    assert_eq!(listing(&dir.path("bin")), ["assistd"]);
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    let startups = server
        .requests()
        .iter()
        .filter(|r| r.path == TASK_LIST && r.query.starts_with("reason=startup"))
        .count();
    assert_eq!(startups, 1, "the agent restarted");
}

#[test]
fn a_binary_that_exits_at_once_is_never_installed_nor_tried_again() {
    let dir = TestDir::new("update-exits");
    let server = Server::start();
    let exe = install_copy(&dir);
    let before = std::fs::read(&exe).expect("read copy");
    // An executable of this machine that exits 1 at once, whatever its arguments.
    let served = std::fs::read("/bin/false").expect("read /bin/false");
    let url = format!("{}{DOWNLOAD}", server.url());
    let offer = update_offer(&url, &sha256_hex(&served), "0.2.0");
    server.push(UPDATE_CHECK, offer.clone());
    server.push(UPDATE_CHECK, offer);
    server.set_default(DOWNLOAD, Reply::Bytes(200, served));
    let mut agent = start(&dir, &server, &exe);
    agent.expect_line("--version exited with status 1");
    agent.expect_line("0.2.0 failed on this host before");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.path == DOWNLOAD)
            .count(),
        1,
        "downloaded again"
    );
    assert!(std::fs::read(&exe).expect("read") == before, "installed");
    assert_eq!(listing(&dir.path("bin")), ["assistd"]);
    // Still the same agent, still serving.
    agent.signal(libc::SIGHUP);
    expect(&agent, &server, "kickoff", |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=kickoff")
    });
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_new_binary_that_dies_before_its_startup_fetch_is_rolled_back() {
    let dir = TestDir::new("update-dies");
    let server = Server::start();
    let exe = install_copy(&dir);
    let before = std::fs::read(&exe).expect("read copy");
    let served = new_build();
    let url = format!("{}{DOWNLOAD}", server.url());
    server.set_default(DOWNLOAD, Reply::Bytes(200, served.clone()));
    let mut agent = start(&dir, &server, &exe);
    expect(&agent, &server, "the first startup fetch", |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=startup")
    });
    // From now on the new binary's startup fetch fails, so it is never confirmed.
    server.set_default(TASK_LIST, Reply::status(503));
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.2.0"),
    );
    agent.expect_line("trial start of 0.2.0");
    assert!(
        std::fs::read(&exe).expect("read") == served,
        "not installed"
    );
    // The new binary dies (as a crash would), and the service manager starts it again.
    agent.signal(libc::SIGKILL);
    let status = agent.wait_exit("the killed agent did not exit");
    assert!(!status.success(), "{status:?}");
    server.clear_default(TASK_LIST);
    let mut agent = start(&dir, &server, &exe);
    agent.expect_line("the update from 0.1.0 to 0.2.0 failed");
    assert!(
        std::fs::read(&exe).expect("read") == before,
        "not rolled back"
    );
    assert_eq!(listing(&dir.path("bin")), ["assistd"]);
    assert!(dir.state().join("update-refused").exists());
    // The restored agent serves, and is not offered into the same failure again.
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.2.0"),
    );
    agent.expect_line("0.2.0 failed on this host before");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.path == DOWNLOAD)
            .count(),
        1,
        "downloaded again"
    );
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_http_offer_from_another_host_is_refused() {
    let dir = TestDir::new("update-http");
    let server = Server::start();
    let exe = install_copy(&dir);
    let served = new_build();
    // Never connected to: the URL is refused before any download.
    server.push(
        UPDATE_CHECK,
        update_offer(
            "http://user:secret@10.255.255.1/assistd?token=t0k",
            &sha256_hex(&served),
            "0.2.0",
        ),
    );
    let mut agent = start(&dir, &server, &exe);
    let line = agent.expect_line("is not https");
    assert!(line.contains("phase=update"), "{line}");
    assert!(line.contains("scheme http, host 10.255.255.1"), "{line}");
    let log = agent.log.lock().expect("log").join("\n");
    assert!(!log.contains("secret") && !log.contains("t0k"), "{log}");
    assert!(!server.requests().iter().any(|r| r.path == DOWNLOAD));
    let status = agent.stop();
    assert!(status.success(), "{status:?}");

    // Without the escape hatch even the loopback double is refused.
    let url = format!("{}{DOWNLOAD}", server.url());
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.2.0"),
    );
    let strict = dir.path("strict.json");
    std::fs::write(&strict, "{}").expect("write config");
    let out = run_update(
        &exe,
        &strict,
        &["update", "--check", "--server", &server.url()],
    );
    // Said on stderr like every other command's error; exit 1: the offer has a problem.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: not installable here") && err.contains("only https"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("update offered"));
}

#[test]
fn an_older_version_is_refused_by_the_agent() {
    let dir = TestDir::new("update-older-agent");
    let server = Server::start();
    let exe = install_copy(&dir);
    let served = new_build();
    let url = format!("{}{DOWNLOAD}", server.url());
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.0.1"),
    );
    server.set_default(DOWNLOAD, Reply::Bytes(200, served));
    let mut agent = start(&dir, &server, &exe);
    agent.expect_line(&format!(
        "the offered version 0.0.1 is not newer than this agent's {}",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(!server.requests().iter().any(|r| r.path == DOWNLOAD));
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn update_apply_refuses_an_older_version_unless_allowed_to_downgrade() {
    let dir = TestDir::new("update-older-cli");
    let server = Server::start();
    let exe = install_copy(&dir);
    let before = std::fs::read(&exe).expect("read copy");
    let served = new_build();
    let url = format!("{}{DOWNLOAD}", server.url());
    server.set_default(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.0.1"),
    );
    server.set_default(DOWNLOAD, Reply::Bytes(200, served.clone()));
    let config = write_config(&dir, "");
    let server_url = server.url();
    let refused = run_update(
        &exe,
        &config,
        &["update", "--apply", "--server", &server_url],
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("0.0.1 is not newer"), "{err}");
    assert!(std::fs::read(&exe).expect("read") == before, "installed");
    assert!(!server.requests().iter().any(|r| r.path == DOWNLOAD));

    let check = run_update(
        &exe,
        &config,
        &[
            "update",
            "--check",
            "--allow-downgrade",
            "--server",
            &server_url,
        ],
    );
    assert_eq!(check.status.code(), Some(2), "only with --apply: {check:?}");

    let applied = run_update(
        &exe,
        &config,
        &[
            "update",
            "--apply",
            "--allow-downgrade",
            "--server",
            &server_url,
        ],
    );
    assert!(applied.status.success(), "{applied:?}");
    assert!(
        std::fs::read(&exe).expect("read") == served,
        "not installed"
    );
}

/// A fresh Ed25519 key pair: the config value (base64 of the public key) and the pair.
fn release_key() -> (String, ring::signature::Ed25519KeyPair) {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
    (support::server::base64(pair.public_key().as_ref()), pair)
}

/// The signature file of `binary` offered as `version`.
fn signature(pair: &ring::signature::Ed25519KeyPair, version: &str, binary: &[u8]) -> Reply {
    let mut sha = [0u8; 32];
    let hex = sha256_hex(binary);
    for (i, byte) in sha.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    let sig = pair.sign(&signed_message(version, &sha));
    Reply::ok(format!("{}\n", support::server::base64(sig.as_ref())))
}

#[test]
fn with_a_release_key_only_a_good_signature_installs() {
    let dir = TestDir::new("update-signed");
    let server = Server::start();
    let exe = install_copy(&dir);
    let before = std::fs::read(&exe).expect("read copy");
    let served = new_build();
    let url = format!("{}{DOWNLOAD}", server.url());
    let sig_path = format!("{DOWNLOAD}.sig");
    server.set_default(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.2.0"),
    );
    server.set_default(DOWNLOAD, Reply::Bytes(200, served.clone()));
    let (public, pair) = release_key();
    let config = write_config(
        &dir,
        &format!(r#", "update_public_key": "{public}", "strict_signatures": true"#),
    );
    let server_url = server.url();
    let apply = || {
        run_update(
            &exe,
            &config,
            &["update", "--apply", "--server", &server_url],
        )
    };

    // No signature file beside the download.
    server.set_default(&sig_path, Reply::status(404));
    let missing = apply();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("download of the release signature failed"),
        "{err}"
    );

    // Signed by another key; then signed by ours, but for another version.
    let (_, stranger) = release_key();
    for bad in [
        signature(&stranger, "0.2.0", &served),
        signature(&pair, "0.3.0", &served),
    ] {
        server.set_default(&sig_path, bad);
        let refused = apply();
        assert_eq!(refused.status.code(), Some(2), "{refused:?}");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            err.contains("does not verify with update_public_key"),
            "{err}"
        );
        assert!(std::fs::read(&exe).expect("read") == before, "installed");
    }

    server.set_default(&sig_path, signature(&pair, "0.2.0", &served));
    let applied = apply();
    assert!(applied.status.success(), "{applied:?}");
    assert!(
        std::fs::read(&exe).expect("read") == served,
        "not installed"
    );
}

#[test]
fn strict_signatures_without_a_release_key_refuse_every_update() {
    let dir = TestDir::new("update-strict");
    let server = Server::start();
    let exe = install_copy(&dir);
    let served = new_build();
    let url = format!("{}{DOWNLOAD}", server.url());
    server.push(
        UPDATE_CHECK,
        update_offer(&url, &sha256_hex(&served), "0.2.0"),
    );
    server.set_default(DOWNLOAD, Reply::Bytes(200, served));
    write_config(&dir, r#", "strict_signatures": true"#);
    let mut agent = start(&dir, &server, &exe);
    agent.expect_line("strict_signatures is on and no update_public_key is configured");
    assert!(!server.requests().iter().any(|r| r.path == DOWNLOAD));
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
}
