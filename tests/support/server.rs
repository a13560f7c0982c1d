//! A control-plane double on `127.0.0.1:0`: HTTP/1.1 by hand, one thread per connection. It
//! answers from a script (per path: queued one-shot replies, then a default) and records every
//! request, so tests wait on requests instead of sleeping. It also holds the notify websocket
//! (`GET /luban/notify_server` with `Upgrade: websocket`): kicks are pushed to every connected
//! agent and each reply is recorded as an event. Shared by the tests and by the examples
//! (`dev-server`, `bench-remote`); it never contacts anything itself.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

pub const TASK_LIST: &str = "/luban/api/v1/task/list";
pub const HEARTBEAT: &str = "/luban/api/heart-beat";
pub const UPDATE_CHECK: &str = "/luban/api/v1/update/update_check";
/// Where `update_offer` points the agent for the new binary (served with `Reply::Bytes`).
pub const DOWNLOAD: &str = "/download/assistd";
/// The notify websocket. An upgrade request is answered with `101` unless a reply is scripted
/// for this path (`refuse_kicks` sets one), and is recorded like any request.
pub const NOTIFY: &str = "/luban/notify_server";
pub const REGISTER: &str = "/luban/api/instance/register";
/// The session list (E3), fetched on `kick_vm session start <id>`.
pub const SESSION_LIST: &str = "/luban/api/v1/session/list";
/// The session status report (E15).
pub const SESSION_STATUS: &str = "/luban/api/v1/session/status";
/// The session websocket: an upgrade is answered with `101` unless a reply is scripted for
/// this path; each connection becomes a `SessionPeer` the test drives (`wait_session`).
pub const SESSION_BACKEND: &str = "/luban/session/backend";
pub const DEREGISTER: &str = "/luban/api/instance/deregister";
/// The certificate endpoint of task signatures. Its real path is unknown (spec §7), so the
/// double follows the agent's guess rather than repeating it.
pub const SIGN_CERT: &str = assistd::remote::signature::DEFAULT_CERT_PATH;
/// What `register` answers by default: the instance id a registration gets.
pub const REGISTERED_ID: &str = "mi-test";
/// The RSA test vector of `src/remote/testdata` (see its README): the public key, and the signature of
/// `userId # instanceId # commandContent` for these values.
pub const RSA_PUB_PEM: &str = include_str!("../../src/remote/testdata/sign_rsa_pub.pem");
pub const RSA_SIG_B64: &str = include_str!("../../src/remote/testdata/sign_rsa.sig.b64");
pub const VECTOR_USER_ID: &str = "1234567890";
pub const VECTOR_INSTANCE_ID: &str = "i-test0001";
/// `echo hello` and a newline, base64.
pub const VECTOR_CONTENT: &str = "ZWNobyBoZWxsbwo=";

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wall-clock time when the whole request had been read.
    pub received: SystemTime,
    /// The status of the answer once all of it was written; `None` while unanswered and for
    /// the replies that never complete (`Hang`, `Reset`, `Truncated`). A report the double
    /// answered `500` to has `Some(500)`: only `accepted` reports count as taken.
    pub answered: Option<u16>,
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

    /// Whether the double gave this request a whole answer with a success status (< 400, and
    /// 400 itself, which the agent counts as success, spec §11.1).
    pub fn accepted(&self) -> bool {
        self.answered.is_some_and(|code| code <= 400)
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
    /// Read the request, then close the connection with a TCP reset (`SO_LINGER` 0): the
    /// agent sees "connection reset by peer", whether it is still sending or already reading.
    Reset,
    /// A status line and headers announcing the whole body, then only its first `usize`
    /// bytes, then the connection is closed: a body cut short.
    Truncated(u16, String, usize),
    /// A status and a body sent in `usize` pieces with the pause before each: a slow body.
    /// Longer in all than the agent's request timeout, the agent gives up mid-body.
    Slow(u16, String, usize, Duration),
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply::Answer(200, body.into())
    }

    pub fn status(code: u16) -> Reply {
        Reply::Answer(code, format!("status {code}"))
    }

    /// `Slow` with a plain `200 success`: `pieces` pieces, `pause` before each.
    pub fn slow_ok(pieces: usize, pause: Duration) -> Reply {
        Reply::Slow(200, "success".to_string(), pieces, pause)
    }
}

#[derive(Default)]
struct State {
    queued: HashMap<String, VecDeque<Reply>>,
    defaults: HashMap<String, Reply>,
    log: Vec<Request>,
    kicks: KickLog,
    /// `set_faults`: per path, every how many requests a fault replaces the reply, the faults
    /// taken in turn, and the requests counted so far.
    faults: HashMap<String, (u64, Vec<Reply>, u64)>,
}

/// What happened on the notify websocket, for `Server::wait_kicks`.
#[derive(Clone, Debug, Default)]
pub struct KickLog {
    /// Connections open now.
    pub live: usize,
    /// Connections ever upgraded.
    pub opened: usize,
    /// Every text message the agents sent back (`accept:…`, `unknow:…`), in order.
    pub replies: Vec<String>,
}

/// One upgraded connection, as the pushing side sees it.
struct KickConn {
    id: u64,
    /// Writes server frames. The connection's thread reads through its own `WebSocket` over a
    /// clone of the socket and answers pings there; every frame is one small `write`, which the
    /// kernel does not interleave with another on the same TCP socket.
    writer: WebSocket<TcpStream>,
    /// To end the connection's thread (`close_kicks`).
    tcp: TcpStream,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Apart from `state` so that a slow write never holds up the request log.
    kick_conns: Mutex<Vec<KickConn>>,
    next_kick_id: Mutex<u64>,
    /// Session websockets by channel id, newest last, until a test takes them.
    sessions: Mutex<Vec<(String, SessionPeer)>>,
    /// Set by `down`: the listener is closed (connections are refused) and a request read on a
    /// connection opened before is dropped unanswered and unrecorded.
    down: AtomicBool,
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
            kick_conns: Mutex::new(Vec::new()),
            next_kick_id: Mutex::new(0),
            sessions: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
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
            s.defaults.insert(
                REGISTER.to_string(),
                Reply::ok(format!(r#"{{"code":200,"instanceId":"{REGISTERED_ID}"}}"#)),
            );
            s.defaults
                .insert(DEREGISTER.to_string(), Reply::ok(r#"{"code":200}"#));
            s.defaults
                .insert(SIGN_CERT.to_string(), Reply::ok(rsa_cert_json(2, 1)));
        }
        spawn_acceptor(listener, shared.clone())?;
        Ok(Server { addr, shared })
    }

    /// Takes the server down: the listening socket is closed, so connecting is refused, and a
    /// request that arrives on an open keep-alive connection is dropped with the connection,
    /// unrecorded (a server that is gone sees nothing). `up` brings it back on the same port.
    pub fn down(&self) {
        if self.shared.down.swap(true, Ordering::SeqCst) {
            return;
        }
        // The acceptor blocks in `accept`; one connection wakes it, it sees the flag and ends,
        // dropping the listener. The connect completes before that: the socket still listens.
        let _ = TcpStream::connect(self.addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_ok() && Instant::now() < deadline {
            // Waiting for the acceptor thread to drop the listener; nothing signals that.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Listens again on the same port after `down`, with the same script and request log.
    pub fn up(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr)?;
        self.shared.down.store(false, Ordering::SeqCst);
        spawn_acceptor(listener, self.shared.clone())
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

    /// Of the requests to `path`, every `every`th gets the next of `faults` (in turn) instead
    /// of its default (a queued reply still wins): a fixed share of injected failures, the
    /// same on every run. An empty `faults` turns injection off for `path`.
    pub fn set_faults(&self, path: &str, every: u64, faults: Vec<Reply>) {
        let mut s = self.shared.state.lock().expect("server lock");
        if faults.is_empty() || every == 0 {
            s.faults.remove(path);
        } else {
            s.faults.insert(path.to_string(), (every, faults, 0));
        }
    }

    /// Forgets the default reply of `path` (the built-in one too).
    pub fn clear_default(&self, path: &str) {
        let mut s = self.shared.state.lock().expect("server lock");
        s.defaults.remove(path);
    }

    /// Sends `msg` as a text frame to every agent on the notify websocket; returns how many got
    /// it. A connection whose write fails is shut down (its thread then forgets it).
    pub fn push_kick(&self, msg: &str) -> usize {
        let mut conns = self.shared.kick_conns.lock().expect("kick lock");
        let mut sent = 0;
        for c in conns.iter_mut() {
            match c.writer.send(Message::Text(msg.to_string())) {
                Ok(()) => sent += 1,
                Err(_) => {
                    let _ = c.tcp.shutdown(Shutdown::Both);
                }
            }
        }
        sent
    }

    /// Closes every notify websocket (a close frame, then the socket). Upgrades are still
    /// accepted afterwards unless `refuse_kicks` is in force.
    pub fn close_kicks(&self) {
        let mut conns = self.shared.kick_conns.lock().expect("kick lock");
        for c in conns.iter_mut() {
            let _ = c.writer.close(None);
            let _ = c.writer.flush();
            let _ = c.tcp.shutdown(Shutdown::Both);
        }
    }

    /// Answers upgrade requests with `503` until `accept_kicks`.
    pub fn refuse_kicks(&self) {
        self.set_default(NOTIFY, Reply::status(503));
    }

    pub fn accept_kicks(&self) {
        self.clear_default(NOTIFY);
    }

    /// The websocket events so far.
    pub fn kicks(&self) -> KickLog {
        self.shared.state.lock().expect("server lock").kicks.clone()
    }

    /// Waits until `f` over the websocket events gives `Some`.
    pub fn wait_kicks<T>(&self, deadline: Instant, f: impl Fn(&KickLog) -> Option<T>) -> Option<T> {
        self.wait_state(deadline, |s| f(&s.kicks))
    }

    /// Waits on the server's condvar until `f` over its state gives `Some`, or `deadline`.
    fn wait_state<T>(&self, deadline: Instant, f: impl Fn(&State) -> Option<T>) -> Option<T> {
        let mut s = self.shared.state.lock().expect("server lock");
        loop {
            if let Some(found) = f(&s) {
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

    /// Waits until the agent has opened the session websocket of `channel_id` and hands it to
    /// the test (once per connection).
    pub fn wait_session(&self, deadline: Instant, channel_id: &str) -> Option<SessionPeer> {
        self.wait_state(deadline, |_| {
            let mut peers = self.shared.sessions.lock().expect("session lock");
            let i = peers.iter().position(|(id, _)| id == channel_id)?;
            Some(peers.remove(i).1)
        })
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state.lock().expect("server lock").log.clone()
    }

    /// Every request so far as `METHOD target` lines, for failure messages.
    pub fn listing(&self) -> String {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target()))
            .collect::<Vec<_>>()
            .join("\n")
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
        self.wait_state(deadline, |s| f(&s.log))
    }
}

/// Accepts connections until `down` is set (then the listener is dropped).
fn spawn_acceptor(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("fake-server".to_string())
        .spawn(move || {
            for conn in listener.incoming() {
                if shared.down.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                let _ = thread::Builder::new()
                    .name("fake-conn".to_string())
                    .spawn(move || serve(conn, &shared));
            }
        })?;
    Ok(())
}

/// Records that request `index` of the log got all of an answer with status `code`.
fn mark_answered(shared: &Shared, index: usize, code: u16) {
    let mut s = shared.state.lock().expect("server lock");
    if let Some(r) = s.log.get_mut(index) {
        r.answered = Some(code);
    }
    shared.changed.notify_all();
}

/// Closes `conn` with a reset: `SO_LINGER` on with a zero timeout makes `close` send RST.
fn reset(conn: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live `linger` and its size.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

fn serve(conn: TcpStream, shared: &Shared) {
    // Idle keep-alive connections end on their own.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    // Each answer goes out in one write; with Nagle on, a second small write would wait for the
    // agent's delayed ACK (~40 ms on Linux), a stall no real server adds.
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        let upgrade = (req.path == NOTIFY || req.path == SESSION_BACKEND)
            && req
                .header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let key = req.header("sec-websocket-key").map(str::to_string);
        let req_path = req.path.clone();
        let channel_id = req.param("channelId").unwrap_or("").to_string();
        if shared.down.load(Ordering::SeqCst) {
            return;
        }
        let (reply, index) = {
            let mut s = shared.state.lock().expect("server lock");
            let fault = s.faults.get_mut(&req.path).and_then(|(every, faults, n)| {
                *n += 1;
                (*n % *every == 0)
                    .then(|| faults[((*n / *every) as usize - 1) % faults.len()].clone())
            });
            let scripted = match s.queued.get_mut(&req.path).and_then(|q| q.pop_front()) {
                Some(r) => Some(r),
                None => fault.or_else(|| s.defaults.get(&req.path).cloned()),
            };
            s.log.push(req);
            let index = s.log.len() - 1;
            shared.changed.notify_all();
            let reply = match scripted {
                Some(r) => r,
                None if upgrade && req_path == SESSION_BACKEND => {
                    drop(s);
                    if let Some(key) = key {
                        serve_session(reader, writer, &key, shared, channel_id);
                    }
                    return;
                }
                None if upgrade => {
                    drop(s);
                    if let Some(key) = key {
                        serve_websocket(reader, writer, &key, shared);
                    }
                    return;
                }
                None => Reply::ok("success"),
            };
            (reply, index)
        };
        match reply {
            Reply::Answer(code, body) => {
                let content_type = if body.starts_with('{') || body.starts_with('[') {
                    "application/json"
                } else {
                    "text/plain"
                };
                let answer = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                mark_answered(shared, index, code);
            }
            Reply::Bytes(code, body) => {
                let mut answer = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(&body);
                if writer.write_all(&answer).is_err() {
                    return;
                }
                mark_answered(shared, index, code);
            }
            Reply::Hang(d) => {
                // Scripted silence: the agent under test must give up on its own.
                thread::sleep(d);
                return;
            }
            Reply::Reset => {
                drop(reader);
                reset(writer);
                return;
            }
            Reply::Truncated(code, body, keep) => {
                let head = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let cut = &body.as_bytes()[..keep.min(body.len().saturating_sub(1))];
                let _ = writer.write_all(head.as_bytes());
                let _ = writer.write_all(cut);
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Reply::Slow(code, body, pieces, pause) => {
                let head = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if writer.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let bytes = body.as_bytes();
                let size = bytes.len().div_ceil(pieces.max(1)).max(1);
                for piece in bytes.chunks(size) {
                    // Scripted slowness: the pause is the fault being injected.
                    thread::sleep(pause);
                    if writer.write_all(piece).is_err() {
                        return;
                    }
                }
                mark_answered(shared, index, code);
            }
        }
    }
}

/// Answers the upgrade, then reads the agent's messages until the connection ends. Nothing
/// bounds the read on purpose: the agent pings an idle channel, and `close_kicks` (or the agent
/// leaving) ends it.
fn serve_websocket(
    reader: BufReader<TcpStream>,
    mut writer: TcpStream,
    key: &str,
    shared: &Shared,
) {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if writer.write_all(head.as_bytes()).is_err() {
        return;
    }
    // Bytes the agent sent after its request (none, normally) belong to the websocket.
    let early = reader.buffer().to_vec();
    let stream = reader.into_inner();
    let (Ok(()), Ok(tcp)) = (stream.set_read_timeout(None), stream.try_clone()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut ws = WebSocket::from_partially_read(stream, early, Role::Server, None);
    let id = {
        let mut next = shared.next_kick_id.lock().expect("kick id lock");
        *next += 1;
        *next
    };
    shared.kick_conns.lock().expect("kick lock").push(KickConn {
        id,
        writer: WebSocket::from_raw_socket(writer, Role::Server, None),
        tcp,
    });
    {
        let mut s = shared.state.lock().expect("server lock");
        s.kicks.live += 1;
        s.kicks.opened += 1;
        shared.changed.notify_all();
    }
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let mut s = shared.state.lock().expect("server lock");
                s.kicks.replies.push(text);
                shared.changed.notify_all();
            }
            Ok(Message::Close(_)) | Err(_) => break,
            // Pings are answered by tungstenite; pongs and binary frames mean nothing here.
            Ok(_) => {}
        }
    }
    let _ = ws.flush();
    shared
        .kick_conns
        .lock()
        .expect("kick lock")
        .retain(|c| c.id != id);
    let mut s = shared.state.lock().expect("server lock");
    s.kicks.live -= 1;
    shared.changed.notify_all();
}

/// The frame type of keystrokes (type 0), for `SessionPeer::send_frame`.
pub const INPUT_FRAME: u32 = assistd::remote::session::frame::INPUT_STREAM_DATA;

/// What the agent sent on a session websocket.
#[derive(Debug)]
pub enum SessionEvent {
    /// One output frame as decoded by the agent's own decoder (the codec's vectors are its
    /// unit tests), or the frame's error.
    Frame(Result<assistd::remote::session::frame::Frame, String>),
    /// A ping and its payload.
    Ping(Vec<u8>),
    /// A close frame, or the connection ended.
    Closed,
}

/// The server end of one session websocket, driven by a test: it sends input, resize and
/// status frames and reads what the agent sends.
pub struct SessionPeer {
    writer: WebSocket<TcpStream>,
    tcp: TcpStream,
    events: crossbeam_channel::Receiver<SessionEvent>,
    seq: i64,
    /// Output payloads read so far, for `expect_output`.
    pub output: Vec<u8>,
    /// Sequence numbers of the output frames so far, in order.
    pub seqs: Vec<i64>,
    pub pings: Vec<Vec<u8>>,
    pub closed: bool,
}

impl SessionPeer {
    /// Sends one frame of `msg_type` with `payload`, framed as the server does.
    pub fn send_frame(&mut self, msg_type: u32, payload: &[u8]) {
        use assistd::remote::session::frame;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        // The agent's encoder refuses empty payloads; the server may send them (keepalive).
        let mut bytes = frame::encode(msg_type, "1.01", "", now, self.seq, b"x").expect("frame");
        bytes.truncate(frame::HEADER_LEN);
        bytes[56..60].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        self.seq += 1;
        self.writer
            .send(Message::Binary(bytes))
            .expect("session frame sent");
    }

    /// What the agent sends, for a program that reads it on one thread while another writes
    /// through this peer (the dev-server's terminal session). Events taken there are not
    /// seen by `wait_output` and the other waits.
    pub fn events(&self) -> crossbeam_channel::Receiver<SessionEvent> {
        self.events.clone()
    }

    /// Keystrokes (type 0).
    pub fn input(&mut self, text: &str) {
        self.send_frame(
            assistd::remote::session::frame::INPUT_STREAM_DATA,
            text.as_bytes(),
        );
    }

    /// A window size (type 2).
    pub fn resize(&mut self, cols: u32, rows: u32) {
        let json = format!(r#"{{"cols":{cols},"rows":{rows}}}"#);
        self.send_frame(assistd::remote::session::frame::SET_SIZE, json.as_bytes());
    }

    /// Takes what the agent sent until `deadline`, or until `done` over the output so far is
    /// true; returns whether it became true.
    pub fn wait_output(&mut self, deadline: Instant, done: impl Fn(&[u8]) -> bool) -> bool {
        while !done(&self.output) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed {
                return false;
            }
            match self.events.recv_timeout(left) {
                Ok(event) => self.take(event),
                Err(_) => return done(&self.output),
            }
        }
        true
    }

    /// Waits until the output holds `needle`.
    pub fn expect_output(&mut self, deadline: Instant, needle: &str) -> bool {
        self.wait_output(deadline, |out| {
            String::from_utf8_lossy(out).contains(needle)
        })
    }

    /// Waits until the agent closes the websocket.
    pub fn wait_closed(&mut self, deadline: Instant) -> bool {
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => self.take(event),
                Err(_) => return false,
            }
        }
        true
    }

    /// Waits for the agent's first ping.
    pub fn wait_ping(&mut self, deadline: Instant) -> bool {
        while self.pings.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed {
                return false;
            }
            match self.events.recv_timeout(left) {
                Ok(event) => self.take(event),
                Err(_) => return false,
            }
        }
        true
    }

    fn take(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Frame(Ok(f)) => {
                assert_eq!(f.msg_type, 1, "the agent sends output frames only");
                assert_eq!(f.version, "1.01");
                self.seqs.push(f.seq);
                self.output.extend_from_slice(&f.payload);
            }
            SessionEvent::Frame(Err(e)) => panic!("the agent sent a bad frame: {e}"),
            SessionEvent::Ping(p) => self.pings.push(p),
            SessionEvent::Closed => self.closed = true,
        }
    }

    /// Ends the connection from the server's side (a close frame, then the socket).
    pub fn close(&mut self) {
        let _ = self.writer.close(None);
        let _ = self.writer.flush();
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

/// Answers a session upgrade, registers the peer, and reads the agent's frames into its
/// event channel until the connection ends.
fn serve_session(
    reader: BufReader<TcpStream>,
    mut writer: TcpStream,
    key: &str,
    shared: &Shared,
    channel_id: String,
) {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if writer.write_all(head.as_bytes()).is_err() {
        return;
    }
    let early = reader.buffer().to_vec();
    let stream = reader.into_inner();
    let (Ok(()), Ok(tcp)) = (stream.set_read_timeout(None), stream.try_clone()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut ws = WebSocket::from_partially_read(stream, early, Role::Server, None);
    let (tx, events) = crossbeam_channel::unbounded();
    let peer = SessionPeer {
        writer: WebSocket::from_raw_socket(writer, Role::Server, None),
        tcp,
        events,
        seq: 0,
        output: Vec::new(),
        seqs: Vec::new(),
        pings: Vec::new(),
        closed: false,
    };
    shared
        .sessions
        .lock()
        .expect("session lock")
        .push((channel_id, peer));
    {
        let _s = shared.state.lock().expect("server lock");
        shared.changed.notify_all();
    }
    loop {
        let event = match ws.read() {
            Ok(Message::Binary(b)) => SessionEvent::Frame(
                assistd::remote::session::frame::decode(&b).map_err(|e| e.to_string()),
            ),
            Ok(Message::Ping(p)) => SessionEvent::Ping(p),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if tx.send(event).is_err() {
            break;
        }
    }
    let _ = ws.flush();
    let _ = tx.send(SessionEvent::Closed);
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
        received: SystemTime::now(),
        answered: None,
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

/// The certificate (spec §7 `Cert`) of the RSA test vector under versions `s`-`k`.
pub fn rsa_cert_json(s: i64, k: i64) -> String {
    serde_json::json!({
        "keypairVersion": k,
        "signatureVersion": s,
        "publicKey": RSA_PUB_PEM,
        "algorithm": "SHA256WithRSA",
        "signatureFields": ["userId", "instanceId", "commandContent"],
    })
    .to_string()
}

/// The `taskSignature` of the RSA test vector (versions 2-1).
pub fn rsa_task_signature() -> String {
    format!("2#1#{}", RSA_SIG_B64.trim())
}

/// A task list answer with these run, stop, test and file entries.
pub fn task_list(run: &[String], stop: &[String], test: &[String], file: &[String]) -> Reply {
    Reply::ok(format!(
        r#"{{"code":200,"instanceId":"i-test","run":[{}],"stop":[{}],"test":[{}],"file":[{}]}}"#,
        run.join(","),
        stop.join(","),
        test.join(","),
        file.join(",")
    ))
}

/// Output settings: running reports every second, empty ticks skipped.
pub const OUTPUT: &str = r#"{"interval":1000,"logQuota":12000,"skipEmpty":true,"sendStart":false}"#;
