//! Remote mode over TLS, end to end: the real binary talks HTTPS and wss:// to the double's
//! TLS front (`support/tls_relay.rs`, the test CA of `tests/fixtures/tls/`), trusting it only
//! through `ca_file`; without it the bundled roots do not vouch for that server, and nothing
//! reaches it.

mod support;
mod util;

use support::server::{shell_entry, task_list, Server, OUTPUT, TASK_LIST};
use support::tls_relay::{write_agent_config, TlsRelay};
use support::{about, expect, expect_kick_channel, expect_kick_reply, remote_args, spawn_remote};
use util::TestDir;

const FINISH: &str = "/luban/api/v1/task/finish";

/// `assistd agent` with the usual test flags (`remote_args`), but against `url` (the TLS
/// front) and with `config` when given.
fn start(dir: &TestDir, server: &Server, url: &str, config: Option<&str>) -> util::Agent {
    let mut args = remote_args(dir, server);
    let at = args
        .iter()
        .position(|a| a == "--server")
        .expect("remote_args names the server")
        + 1;
    args[at] = url.to_string();
    if let Some(c) = config {
        args.extend(["--config".to_string(), c.to_string()]);
    }
    spawn_remote(args, &[])
}

fn tls_front(server: &Server) -> TlsRelay {
    TlsRelay::start(server.port()).expect("start the TLS front")
}

#[test]
fn fetches_runs_and_reports_over_https_and_wss_with_ca_file() {
    let dir = TestDir::new("tls-ok");
    let server = Server::start();
    let front = tls_front(&server);
    let config = dir.path("config.json");
    write_agent_config(&config).expect("write config");
    let agent = start(
        &dir,
        &server,
        &front.url(),
        Some(&config.display().to_string()),
    );
    // The websocket came through the TLS front too: the double saw its upgrade.
    expect_kick_channel(&agent, &server, 1);
    agent.expect_line("startup fetch done");
    server.push(
        TASK_LIST,
        task_list(
            &[shell_entry("t-tls", "echo over tls", "", "Once", OUTPUT)],
            &[],
            &[],
            &[],
        ),
    );
    assert_eq!(server.push_kick("kick_vm task run t-tls"), 1);
    expect_kick_reply(&agent, &server, "accept:kick_vm task run t-tls");
    let fin = expect(&agent, &server, "finish of t-tls", |r| {
        about(r, FINISH, "t-tls")
    });
    assert_eq!(fin.body_text(), "over tls\n");
}

#[test]
fn a_server_no_root_vouches_for_gets_nothing() {
    let dir = TestDir::new("tls-untrusted");
    let server = Server::start();
    let front = tls_front(&server);
    // No ca_file: the bundled Mozilla roots, which do not hold the test CA.
    let agent = start(&dir, &server, &front.url(), None);
    let line = agent.expect_line("startup fetch failed");
    assert!(
        line.to_ascii_lowercase().contains("certificate"),
        "the failure names the certificate: {line}"
    );
    assert!(
        server.requests().is_empty(),
        "a request reached the server through an untrusted TLS front:\n{}",
        server.listing()
    );
}
