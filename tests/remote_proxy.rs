//! The proxy rule end to end (issue 9): with `ALIYUN_ASSIST_PROXY` set, a loopback server is
//! reached directly by every kind of request (HTTP, the notify websocket, a session
//! websocket), and a server with a name goes through the proxy for all of them, as CONNECT
//! tunnels to that name, which only the proxy double can resolve.

mod support;
mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Instant;

use support::proxy::{Asked, Proxy};
use support::server::{Reply, Server, HEARTBEAT, SESSION_LIST, SESSION_STATUS, TASK_LIST};
use support::{expect, expect_kick_channel, expect_kick_reply, remote_args, spawn_remote};
use util::{Agent, TestDir, DEADLINE};

/// A name no resolver knows (RFC 6761 reserves `.test`); only the proxy double maps it.
const NAME: &str = "server.test";

/// The agent against `server_url`, with the proxy double as `ALIYUN_ASSIST_PROXY`.
fn agent_via(dir: &TestDir, server: &Server, server_url: &str, proxy: &Proxy) -> Agent {
    let mut args = remote_args(dir, server);
    let at = args.iter().position(|a| a == "--server").expect("--server") + 1;
    args[at] = server_url.to_string();
    spawn_remote(args, &[("ALIYUN_ASSIST_PROXY", &proxy.url())])
}

/// A loopback echo server for one connection.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        // Bounded by the agent: it closes the connection when the session ends.
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    port
}

/// Every kind of request once: the heartbeat and the startup fetch (HTTP), the notify
/// websocket, then a port-forwarding session (list fetch, session websocket, data through it,
/// a stop kick and its status report).
fn exercise(agent: &Agent, server: &Server, id: &str) {
    expect(agent, server, "heart-beat", |r| r.path == HEARTBEAT);
    expect(agent, server, "startup fetch", |r| r.path == TASK_LIST);
    expect_kick_channel(agent, server, 1);
    agent.expect_line("startup fetch done");
    let port = echo_server();
    server.push(
        SESSION_LIST,
        Reply::ok(format!(
            r#"{{"code":200,"instanceId":"i-test","session":[{{"channelId":"{id}","portNumber":"{port}","targetHost":"127.0.0.1"}}]}}"#
        )),
    );
    let kick = format!("kick_vm session start {id}");
    assert_eq!(server.push_kick(&kick), 1);
    expect_kick_reply(agent, server, &format!("accept:{kick}"));
    let Some(mut peer) = server.wait_session(Instant::now() + DEADLINE, id) else {
        agent.fail(&format!(
            "no session websocket; requests:\n{}",
            server.listing()
        ));
    };
    peer.input("through\n");
    if !peer.expect_output(Instant::now() + DEADLINE, "through\n") {
        agent.fail("no echo through the session");
    }
    server.push_kick(&format!("kick_vm session stop {id}"));
    let status = expect(agent, server, "session status", |r| {
        r.path == SESSION_STATUS && r.param("channelId") == Some(id)
    });
    assert_eq!(
        status.query,
        format!("channelId={id}&status=Success&errorcode=Notified")
    );
}

#[test]
fn a_loopback_server_is_reached_directly_with_a_proxy_set() {
    let dir = TestDir::new("proxy-loopback");
    let server = Server::start();
    // The proxy double would tunnel to the server too: only its log tells the paths apart.
    let proxy = Proxy::start(&[("127.0.0.1", server.port()), ("localhost", server.port())]);
    let agent = agent_via(&dir, &server, &server.url(), &proxy);
    exercise(&agent, &server, "px-direct");
    assert_eq!(proxy.asked(), Vec::<Asked>::new(), "the proxy was used");
}

#[test]
fn a_named_server_is_reached_through_the_proxy_which_resolves_the_name() {
    let dir = TestDir::new("proxy-named");
    let server = Server::start();
    let proxy = Proxy::start(&[(NAME, server.port())]);
    let url = format!("http://{NAME}:{}", server.port());
    let agent = agent_via(&dir, &server, &url, &proxy);
    exercise(&agent, &server, "px-named");
    // The requests reached the server with the name the agent was given.
    let hb = expect(&agent, &server, "heart-beat", |r| r.path == HEARTBEAT);
    assert_eq!(
        hb.header("host"),
        Some(format!("{NAME}:{}", server.port()).as_str())
    );
    let target = format!("{NAME}:{}", server.port());
    let through = |what: &str, first: &str| {
        let found = proxy.wait_for(Instant::now() + DEADLINE, |a| {
            a.first_line.starts_with(first)
        });
        match found {
            Some(a) => assert_eq!(a.target, target, "{what}"),
            None => agent.fail(&format!(
                "no {what} through the proxy; it was asked: {:?}",
                proxy.asked()
            )),
        }
    };
    through("HTTP request", "GET /luban/api/heart-beat?");
    through("notify websocket", "GET /luban/notify_server");
    through(
        "session websocket",
        "GET /luban/session/backend?channelId=px-named ",
    );
    // Every tunnel was to the server's name: nothing asked for an address.
    for a in proxy.asked() {
        assert_eq!(a.target, target, "{a:?}");
    }
}
