//! A control-plane double to run by hand: serves task lists to a local `assistd agent` and
//! prints every report it receives, output included. It never runs tasks itself.
//!
//! ```text
//! cargo run --example dev-server -- --port 8080
//! assistd agent --server http://127.0.0.1:8080 --state-dir /tmp/assistd --poll-interval 2
//! curl --data-binary 'uname -a; echo done' http://127.0.0.1:8080/dev/submit
//! ```
//!
//! `POST /dev/submit` takes a shell script as its body, queues it as a Once task for the next
//! task-list fetch and kicks every agent connected to the notify websocket
//! (`kick_vm task run <id>`), so it runs at once; an agent without the channel picks it up at
//! its next poll (or `kill -HUP <agent>`). `POST /dev/submit-list` queues a whole task-list JSON
//! body as is and sends a plain `kick_vm`. The agents' kick replies are printed with the
//! requests that follow them.

#[path = "../tests/support/server.rs"]
mod server;

use std::time::{Duration, Instant};

use server::{shell_entry, Reply, Server, HEARTBEAT, OUTPUT, TASK_LIST};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port = 8080;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => {
                    eprintln!("error: --port needs a number");
                    std::process::exit(2);
                }
            },
            "--help" | "-h" => {
                println!("usage: dev-server [--port PORT]   (0 picks a free port)");
                return;
            }
            other => {
                eprintln!("error: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let server = match Server::start_on(port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(2);
        }
    };
    // The submit endpoints answer like any report; the script is taken from the recorded body.
    println!("dev-server listening on {}", server.url());
    println!(
        "submit: curl --data-binary 'echo hello' {}/dev/submit",
        server.url()
    );
    let mut seen = 0;
    let mut replies_seen = 0;
    let mut next_id = 1;
    loop {
        // Wait for the next request (an hour at most, then wait again).
        let Some(new) = server.wait_until(Instant::now() + Duration::from_secs(3600), |log| {
            (log.len() > seen).then(|| log[seen..].to_vec())
        }) else {
            continue;
        };
        seen += new.len();
        let replies = server.kicks().replies;
        for reply in &replies[replies_seen.min(replies.len())..] {
            println!("kick reply: {reply}");
        }
        replies_seen = replies.len();
        for r in new {
            match r.path.as_str() {
                "/dev/submit" => {
                    let id = format!("t-dev-{next_id}");
                    next_id += 1;
                    let entry = shell_entry(&id, &r.body_text(), "", "Once", OUTPUT);
                    server.push(
                        TASK_LIST,
                        Reply::ok(format!(
                            r#"{{"code":200,"instanceId":"i-dev","run":[{entry}]}}"#
                        )),
                    );
                    match server.push_kick(&format!("kick_vm task run {id}")) {
                        0 => println!("queued {id}; it runs at the agent's next fetch"),
                        n => println!("queued {id}; kicked {n} agent(s)"),
                    }
                }
                "/dev/submit-list" => {
                    server.push(TASK_LIST, Reply::ok(r.body_text()));
                    match server.push_kick("kick_vm") {
                        0 => println!("queued a task list for the agent's next fetch"),
                        n => println!("queued a task list; kicked {n} agent(s)"),
                    }
                }
                HEARTBEAT => {}
                TASK_LIST => println!("{} {}", r.method, r.target()),
                _ => {
                    println!("{} {}", r.method, r.target());
                    if !r.body.is_empty() {
                        let text = r.body_text();
                        for line in text.lines() {
                            println!("    | {line}");
                        }
                    }
                }
            }
        }
    }
}
