//! A control-plane double on `127.0.0.1:0`: HTTP/1.1 by hand, one thread per connection. It
//! answers from a script (per path: queued one-shot replies, then a default) and records every
//! request, so tests wait on requests instead of sleeping. Shared by the tests and by
//! `examples/dev-server.rs`; it never contacts anything itself.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const TASK_LIST: &str = "/luban/api/v1/task/list";
pub const HEARTBEAT: &str = "/luban/api/heart-beat";
pub const UPDATE_CHECK: &str = "/luban/api/v1/update/update_check";
/// Where `update_offer` points the agent for the new binary (served with `Reply::Bytes`).
pub const DOWNLOAD: &str = "/download/assistd";

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// `path?query`.
    pub fn target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The raw (still escaped) value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the double answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A status and a body.
    Answer(u16, String),
    /// Read the request, say nothing for this long, then close the connection.
    Hang(Duration),
    /// A status and a binary body (a download).
    Bytes(u16, Vec<u8>),
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply::Answer(200, body.into())
    }

    pub fn status(code: u16) -> Reply {
        Reply::Answer(code, format!("status {code}"))
    }
}

#[derive(Default)]
struct State {
    queued: HashMap<String, VecDeque<Reply>>,
    defaults: HashMap<String, Reply>,
    log: Vec<Request>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The running double. Its threads live until the process ends (they block on `accept` or on a
/// socket read with a 60 s timeout).
#[derive(Clone)]
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    /// Listens on `127.0.0.1:port` (0: any free port).
    pub fn start_on(port: u16) -> std::io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        {
            let mut s = shared.state.lock().expect("fresh lock");
            s.defaults.insert(
                TASK_LIST.to_string(),
                Reply::ok(r#"{"code":200,"instanceId":"i-test"}"#),
            );
            s.defaults.insert(
                HEARTBEAT.to_string(),
                Reply::ok(r#"{"code":200,"nextInterval":60000}"#),
            );
            s.defaults.insert(
                UPDATE_CHECK.to_string(),
                Reply::ok(r#"{"flag":0,"instanceId":"i-test","need_update":0}"#),
            );
        }
        let accept_shared = shared.clone();
        thread::Builder::new()
            .name("fake-server".to_string())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let shared = accept_shared.clone();
                    let _ = thread::Builder::new()
                        .name("fake-conn".to_string())
                        .spawn(move || serve(conn, &shared));
                }
            })?;
        Ok(Server { addr, shared })
    }

    pub fn start() -> Server {
        Server::start_on(0).expect("bind 127.0.0.1:0")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answers the next request to `path` with `reply` (once; queued replies go in order).
    pub fn push(&self, path: &str, reply: Reply) {
        let mut s = self.shared.state.lock().expect("server lock");
        s.queued
            .entry(path.to_string())
            .or_default()
            .push_back(reply);
    }

    /// Answers requests to `path` with `reply` once its queue is empty.
    pub fn set_default(&self, path: &str, reply: Reply) {
        let mut s = self.shared.state.lock().expect("server lock");
        s.defaults.insert(path.to_string(), reply);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state.lock().expect("server lock").log.clone()
    }

    /// Waits until some request so far matches `pred`, returning the first that does; `None`
    /// when `deadline` passes first.
    pub fn wait_for(&self, deadline: Instant, pred: impl Fn(&Request) -> bool) -> Option<Request> {
        self.wait_until(deadline, |log| log.iter().find(|r| pred(r)).cloned())
    }

    /// Waits until `f` over all requests so far gives `Some`.
    pub fn wait_until<T>(
        &self,
        deadline: Instant,
        f: impl Fn(&[Request]) -> Option<T>,
    ) -> Option<T> {
        let mut s = self.shared.state.lock().expect("server lock");
        loop {
            if let Some(found) = f(&s.log) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, deadline - now)
                .expect("server lock")
                .0;
        }
    }
}

fn default_reply(s: &State, path: &str) -> Reply {
    s.defaults
        .get(path)
        .cloned()
        .unwrap_or_else(|| Reply::ok("success"))
}

fn serve(conn: TcpStream, shared: &Shared) {
    // Idle keep-alive connections end on their own.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        let reply = {
            let mut s = shared.state.lock().expect("server lock");
            let reply = match s.queued.get_mut(&req.path).and_then(|q| q.pop_front()) {
                Some(r) => r,
                None => default_reply(&s, &req.path),
            };
            s.log.push(req);
            shared.changed.notify_all();
            reply
        };
        match reply {
            Reply::Answer(code, body) => {
                let content_type = if body.starts_with('{') || body.starts_with('[') {
                    "application/json"
                } else {
                    "text/plain"
                };
                let head = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if writer.write_all(head.as_bytes()).is_err()
                    || writer.write_all(body.as_bytes()).is_err()
                {
                    return;
                }
            }
            Reply::Bytes(code, body) => {
                let head = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
                    return;
                }
            }
            Reply::Hang(d) => {
                // Scripted silence: the agent under test must give up on its own.
                thread::sleep(d);
                return;
            }
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body).ok()?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// Standard base64, for `commandContent`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One run/stop/test entry of a task list for a shell script.
pub fn shell_entry(
    task_id: &str,
    script: &str,
    extra_task: &str,
    repeat: &str,
    output: &str,
) -> String {
    format!(
        r#"{{"task":{{"taskID":"{task_id}","type":"RunShellScript","invokeVersion":1,"commandContent":"{}","timeOut":"60"{extra_task}}},"output":{output},"repeat":"{repeat}"}}"#,
        base64(script.as_bytes())
    )
}

/// An `update_check` answer offering the binary at `url` with its SHA-256 (`update_info`
/// field names of the reference; `sha256` and `version` are assistd's extensions).
pub fn update_offer(url: &str, sha256_hex: &str, version: &str) -> Reply {
    Reply::ok(format!(
        r#"{{"flag":0,"instanceId":"i-test","need_update":1,"next_interval":1800,"update_info":{{"file_name":"assistd","md5":"","url":"{url}","sha256":"{sha256_hex}","version":"{version}"}}}}"#
    ))
}

/// Output settings: running reports every second, empty ticks skipped.
pub const OUTPUT: &str = r#"{"interval":1000,"logQuota":12000,"skipEmpty":true,"sendStart":false}"#;
