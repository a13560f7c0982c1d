//! A control-plane double to run by hand: serves task lists to a local `assistd agent` and
//! prints every report it receives, output included. It never runs tasks itself.
//!
//! ```text
//! cargo run --example dev-server -- --port 8080
//! assistd agent --server http://127.0.0.1:8080 --state-dir /tmp/assistd --poll-interval 2
//! curl --data-binary 'uname -a; echo done' http://127.0.0.1:8080/dev/submit   # prints t-dev-1
//! curl --data-binary t-dev-1 http://127.0.0.1:8080/dev/stop
//! ```
//!
//! `POST /dev/submit` takes a shell script as its body, queues it as a Once task for the next
//! task-list fetch and kicks every agent connected to the notify websocket
//! (`kick_vm task run <id>`), so it runs at once; an agent without the channel picks it up at
//! its next poll (or `kill -HUP <agent>`). It answers with the id it queued (`t-dev-1`, one
//! line). `POST /dev/stop` takes such an id as its body and queues a task list whose `stop`
//! entry is that task (the agent kills it if it runs, and reports `stopped`).
//! `POST /dev/submit-list` queues a whole task-list JSON body as is. Both send a plain
//! `kick_vm`. The agents' kick replies are printed with the requests that follow them.
//!
//! `--shell USER` opens a shell session (Session Manager) on this terminal as soon as an agent
//! has its notify websocket up: the dev-server queues a session entry for `USER`, kicks
//! `kick_vm session start s-dev-1`, and relays the session websocket to the terminal (raw
//! mode; the window size is sent once at the start). The session ends when the shell exits,
//! or with Ctrl-] (a `kick_vm session stop`); the terminal is restored and the dev-server goes
//! on serving and printing reports, the session's status report first.

#[path = "../tests/support/server.rs"]
mod server;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use server::{
    shell_entry, Reply, Server, SessionEvent, HEARTBEAT, OUTPUT, SESSION_LIST, TASK_LIST,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port = 8080;
    let mut shell_user = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shell" => match args.next() {
                Some(u) => shell_user = Some(u),
                None => {
                    eprintln!("error: --shell needs a user name (not root: the agent refuses it)");
                    std::process::exit(2);
                }
            },
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => {
                    eprintln!("error: --port needs a number");
                    std::process::exit(2);
                }
            },
            "--help" | "-h" => {
                println!("usage: dev-server [--port PORT] [--shell USER]   (0 picks a free port)");
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
        "submit: curl --data-binary 'echo hello' {}/dev/submit   (answers with the task id)",
        server.url()
    );
    println!(
        "stop:   curl --data-binary t-dev-1 {}/dev/stop",
        server.url()
    );
    if let Some(user) = shell_user {
        shell_session(&server, &user);
    }
    let mut seen = 0;
    let mut replies_seen = 0;
    let mut next_id = 1;
    // A submit is answered (by the server's threads) before this loop sees it, so the answers
    // holding the ids are queued ahead: the k-th submit gets `t-dev-k`, the id this loop gives
    // the k-th submit it reads. SUBMIT_AHEAD submits at once before the loop catches up would
    // get the default answer instead.
    for id in 1..=SUBMIT_AHEAD {
        server.push(SUBMIT, Reply::ok(format!("t-dev-{id}\n")));
    }
    let mut submitted: HashMap<String, String> = HashMap::new();
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
                SUBMIT => {
                    let id = format!("t-dev-{next_id}");
                    server.push(
                        SUBMIT,
                        Reply::ok(format!("t-dev-{}\n", next_id + SUBMIT_AHEAD)),
                    );
                    next_id += 1;
                    let entry = shell_entry(&id, &r.body_text(), "", "Once", OUTPUT);
                    submitted.insert(id.clone(), entry.clone());
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
                STOP => {
                    let id = r.body_text().trim().to_string();
                    let Some(entry) = submitted.get(&id) else {
                        println!("stop {id:?}: no such submitted task (ids are t-dev-N)");
                        continue;
                    };
                    server.push(
                        TASK_LIST,
                        Reply::ok(format!(
                            r#"{{"code":200,"instanceId":"i-dev","stop":[{entry}]}}"#
                        )),
                    );
                    match server.push_kick("kick_vm") {
                        0 => {
                            println!("queued a stop of {id}; it applies at the agent's next fetch")
                        }
                        n => println!("queued a stop of {id}; kicked {n} agent(s)"),
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

const SUBMIT: &str = "/dev/submit";
const STOP: &str = "/dev/stop";
/// How many `/dev/submit` answers (each with its id) are queued ahead.
const SUBMIT_AHEAD: u32 = 16;

/// The detach key: Ctrl-].
const DETACH: u8 = 0x1d;

/// One shell session on this terminal (see the module docs).
fn shell_session(server: &Server, user: &str) {
    println!("--shell: waiting for an agent's notify websocket...");
    while server
        .wait_kicks(Instant::now() + Duration::from_secs(3600), |k| {
            (k.live >= 1).then_some(())
        })
        .is_none()
    {}
    let id = "s-dev-1";
    let user = user.replace(['"', '\\'], "");
    server.push(
        SESSION_LIST,
        Reply::ok(format!(
            r#"{{"code":200,"instanceId":"i-dev","session":[{{"channelId":"{id}","username":"{user}"}}]}}"#
        )),
    );
    // The agent drops kicks until its startup fetch is done (as the reference does): wait for
    // that fetch, then kick until the session list is asked for.
    let _ = server.wait_for(Instant::now() + Duration::from_secs(3600), |r| {
        r.path == TASK_LIST
    });
    for _ in 0..10 {
        server.push_kick(&format!("kick_vm session start {id}"));
        let asked = server.wait_for(Instant::now() + Duration::from_secs(2), |r| {
            r.path == SESSION_LIST
        });
        if asked.is_some() {
            break;
        }
    }
    let Some(peer) = server.wait_session(Instant::now() + Duration::from_secs(60), id) else {
        println!("--shell: the agent opened no session websocket within 60 s; see its log");
        return;
    };
    println!("--shell: session {id} as {user}; Ctrl-] ends it\r");
    let events = peer.events();
    let peer = Arc::new(Mutex::new(peer));
    if let Some((cols, rows)) = window_size() {
        peer.lock().expect("peer").resize(cols, rows);
    }
    let done = Arc::new(AtomicBool::new(false));
    let raw = RawTerminal::enter();
    {
        // Keystrokes as they come. This thread stays blocked in `read` after the session;
        // the next key it gets is dropped (the flag), and it ends.
        let (peer, done, server) = (peer.clone(), done.clone(), server.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                if buf[..n].contains(&DETACH) {
                    server.push_kick(&format!("kick_vm session stop {id}"));
                    return;
                }
                peer.lock()
                    .expect("peer")
                    .send_frame(server::INPUT_FRAME, &buf[..n]);
            }
        });
    }
    {
        // The agent ends a session after 180 s without a frame from the server: an empty
        // input frame (a no-op) every minute keeps an idle terminal's session open.
        let (peer, done) = (peer.clone(), done.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(60));
            if done.load(Ordering::SeqCst) {
                return;
            }
            peer.lock()
                .expect("peer")
                .send_frame(server::INPUT_FRAME, b"");
        });
    }
    let mut out = std::io::stdout();
    for event in events.iter() {
        match event {
            SessionEvent::Frame(Ok(f)) => {
                let _ = out.write_all(&f.payload);
                let _ = out.flush();
            }
            SessionEvent::Frame(Err(e)) => {
                let _ = write!(out, "\r\n[dev-server: bad frame from the agent: {e}]\r\n");
            }
            SessionEvent::Ping(_) => {}
            SessionEvent::Closed => break,
        }
    }
    done.store(true, Ordering::SeqCst);
    drop(raw);
    println!("\n--shell: session {id} closed by the agent");
}

/// The terminal's size, when stdout is one.
fn window_size() -> Option<(u32, u32)> {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then(|| (u32::from(ws.ws_col), u32::from(ws.ws_row)))
}

/// Raw mode on stdin while it lives (when stdin is a terminal), so keys go to the remote
/// shell as typed (Ctrl-C included); the old settings come back on drop.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            let mut old: libc::termios = std::mem::zeroed();
            if libc::isatty(0) != 1 || libc::tcgetattr(0, &mut old) != 0 {
                return RawTerminal(None);
            }
            let mut raw = old;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return RawTerminal(None);
            }
            RawTerminal(Some(old))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, old) };
        }
    }
}
