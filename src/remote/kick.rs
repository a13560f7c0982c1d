//! Kicks from the server (spec §1.4): the `kick_vm …` parser, the reply text, and the listener
//! thread that holds the notify websocket and turns kicks into `KickAction` messages.
//!
//! This module never fetches, runs or stops anything itself; it only says what was asked.

use std::fmt;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::remote::ws_conn::{self, Message, WebSocket};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::remote::websocket::{self, server_ws_url, Dial, DialError, Stream, Target};

/// The websocket path of the notify server.
pub const NOTIFY_PATH: &str = "/luban/notify_server";

// ---------------------------------------------------------------------------------------------
// Parser

/// One parsed `kick_vm` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kick {
    /// Plain `kick_vm`: fetch the task list.
    Fetch,
    /// `kick_vm task run|stop <id>` and `kick_vm file create|stop <id>`: fetch with that id
    /// (run and stop are the same to the agent; the server decides what the list holds).
    Task { kind: TaskKick, task_id: String },
    /// `kick_vm session start <channelId>`.
    SessionStart { channel_id: String },
    /// `kick_vm session stop <channelId>`.
    SessionStop { channel_id: String },
    /// `kick_vm agent stop|remove|update|deregister`.
    Agent(AgentKick),
    /// `kick_vm noop`: a health check.
    Noop,
    /// `kick_vm status network [args…]`.
    NetworkStatus { args: Vec<String> },
}

/// Which task kick arrived; all of them mean "fetch this id".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKick {
    Run,
    Stop,
    FileCreate,
    FileStop,
}

/// Agent-level kicks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentKick {
    Stop,
    Remove,
    Update,
    /// `kick_vm agent deregister` (hybrid instances; the reference matches it by substring).
    Deregister,
}

/// Why a message is not a kick we act on. Every variant is answered with `unknow:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KickError {
    /// Empty, or the first word is not `kick_vm`.
    NotAKick,
    /// The second word is not a kick type we know (`kick_vm agent1 stop`).
    UnknownType(String),
    /// The type is known but the action is not (`kick_vm agent stop1`).
    UnknownAction { kind: String, action: String },
    /// The action needs an id and none was given (`kick_vm task run`).
    MissingId { kind: String, action: String },
    /// A kick URL that is neither `http(s)://` nor `ws(s)://`.
    BadUrl(String),
}

impl fmt::Display for KickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KickError::NotAKick => f.write_str("not a kick_vm message"),
            KickError::UnknownType(t) => write!(f, "unknown kick type {t:?}"),
            KickError::UnknownAction { kind, action } => {
                write!(f, "unknown {kind} kick action {action:?}")
            }
            KickError::MissingId { kind, action } => write!(f, "{kind} {action} kick has no id"),
            KickError::BadUrl(u) => write!(f, "cannot build a notify URL from {u:?}"),
        }
    }
}

impl std::error::Error for KickError {}

/// Parses one websocket text message. Words are separated by runs of whitespace (the reference
/// splits on single spaces and so turns a double space into an empty id) and the first word must
/// be `kick_vm` (the reference does not check it). An action that needs an id and has none is
/// an error here; the reference accepts it and then does nothing.
pub fn parse_kick(msg: &str) -> Result<Kick, KickError> {
    let mut words = msg.split_whitespace();
    if words.next() != Some("kick_vm") {
        return Err(KickError::NotAKick);
    }
    let Some(kind) = words.next() else {
        return Ok(Kick::Fetch);
    };
    let action = words.next().unwrap_or("");
    let rest: Vec<&str> = words.collect();
    let unknown = || KickError::UnknownAction {
        kind: kind.to_string(),
        action: action.to_string(),
    };
    let id = || {
        rest.first()
            .map(|s| s.to_string())
            .ok_or_else(|| KickError::MissingId {
                kind: kind.to_string(),
                action: action.to_string(),
            })
    };
    match kind {
        "noop" => Ok(Kick::Noop),
        "task" => {
            let kind = match action {
                "run" => TaskKick::Run,
                "stop" => TaskKick::Stop,
                _ => return Err(unknown()),
            };
            Ok(Kick::Task {
                kind,
                task_id: id()?,
            })
        }
        "file" => {
            let kind = match action {
                "create" => TaskKick::FileCreate,
                "stop" => TaskKick::FileStop,
                _ => return Err(unknown()),
            };
            Ok(Kick::Task {
                kind,
                task_id: id()?,
            })
        }
        "session" => match action {
            "start" => Ok(Kick::SessionStart { channel_id: id()? }),
            "stop" => Ok(Kick::SessionStop { channel_id: id()? }),
            _ => Err(unknown()),
        },
        "agent" => match action {
            "stop" => Ok(Kick::Agent(AgentKick::Stop)),
            "remove" => Ok(Kick::Agent(AgentKick::Remove)),
            "update" => Ok(Kick::Agent(AgentKick::Update)),
            "deregister" => Ok(Kick::Agent(AgentKick::Deregister)),
            _ => Err(unknown()),
        },
        "status" => match action {
            "network" => Ok(Kick::NetworkStatus {
                args: rest.iter().map(|s| s.to_string()).collect(),
            }),
            _ => Err(unknown()),
        },
        other => Err(KickError::UnknownType(other.to_string())),
    }
}

/// How a kick is answered on the websocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// An update is in progress (spec §1.6): the kick is refused.
    Reject,
    /// Not a kick we know.
    Unknown,
}

/// The reply text: the verdict's prefix followed by the message as received
/// (`accept:`, `reject:`, and the reference's spelling `unknow:`).
pub fn reply_text(verdict: Verdict, msg: &str) -> String {
    let prefix = match verdict {
        Verdict::Accept => "accept:",
        Verdict::Reject => "reject:",
        Verdict::Unknown => "unknow:",
    };
    format!("{prefix}{msg}")
}

/// What the rest of the agent is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KickAction {
    /// Fetch the task list (`session: false`) or the session list (`session: true`).
    Fetch {
        task_id: Option<String>,
        session: bool,
    },
    StopSession {
        channel_id: String,
    },
    StopAgent,
    RemoveAgent,
    UpdateAgent,
    Deregister,
    NetworkStatus {
        args: Vec<String>,
    },
    /// The kick channel is open: kicks will arrive (sent by the listener, not by the server).
    ChannelUp,
    /// The kick channel closed or could not be opened; the listener is retrying.
    ChannelDown,
}

impl Kick {
    /// The message this kick becomes; `None` for a health check.
    pub fn action(&self) -> Option<KickAction> {
        Some(match self {
            Kick::Fetch => KickAction::Fetch {
                task_id: None,
                session: false,
            },
            Kick::Task { task_id, .. } => KickAction::Fetch {
                task_id: Some(task_id.clone()),
                session: false,
            },
            Kick::SessionStart { channel_id } => KickAction::Fetch {
                task_id: Some(channel_id.clone()),
                session: true,
            },
            Kick::SessionStop { channel_id } => KickAction::StopSession {
                channel_id: channel_id.clone(),
            },
            Kick::Agent(AgentKick::Stop) => KickAction::StopAgent,
            Kick::Agent(AgentKick::Remove) => KickAction::RemoveAgent,
            Kick::Agent(AgentKick::Update) => KickAction::UpdateAgent,
            Kick::Agent(AgentKick::Deregister) => KickAction::Deregister,
            Kick::Noop => return None,
            Kick::NetworkStatus { args } => KickAction::NetworkStatus { args: args.clone() },
        })
    }
}

/// Decides one message: the reply to send and the action to pass on. While `critical` is set
/// every message is rejected and nothing is passed on (spec §1.6).
pub fn handle_message(msg: &str, critical: bool) -> (String, Option<KickAction>) {
    if critical {
        return (reply_text(Verdict::Reject, msg), None);
    }
    match parse_kick(msg) {
        Ok(kick) => (reply_text(Verdict::Accept, msg), kick.action()),
        Err(_) => (reply_text(Verdict::Unknown, msg), None),
    }
}

/// The notify websocket URL for a server base URL: `https://h` → `wss://h/luban/notify_server`,
/// `http://h:p` → `ws://h:p/luban/notify_server`; a bare host is taken as https.
pub fn notify_url(server: &str) -> Result<String, KickError> {
    server_ws_url(server, NOTIFY_PATH).map_err(|_| KickError::BadUrl(server.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Listener

pub use crate::remote::websocket::HeaderHook;

/// Settings of the listener thread.
#[derive(Clone)]
pub struct KickConfig {
    /// `ws://host:port/path` or `wss://host/path` (see `notify_url`).
    pub url: String,
    /// Headers added to every upgrade request.
    pub headers: Option<HeaderHook>,
    /// TLS settings for `wss://` (the transport's config, so both share one set of roots).
    /// Required for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The proxy every request uses (`ALIYUN_ASSIST_PROXY` or the config's `proxy`); the
    /// dial tunnels through it with CONNECT unless the server is loopback.
    pub proxy: Option<String>,
    /// Bound on connecting, the TLS handshake and the websocket upgrade.
    pub connect_timeout: Duration,
    /// How long a read waits before the thread pings the server; two silent periods in a row
    /// end the connection.
    pub idle_timeout: Duration,
    /// First reconnect delay; doubled per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Set while an update runs (spec §1.6): kicks are answered `reject:`.
    pub critical_action: Option<Arc<AtomicBool>>,
}

impl KickConfig {
    /// Defaults: 10 s connect, 30 s idle, backoff 1 s → 60 s.
    pub fn new(url: String) -> KickConfig {
        KickConfig {
            url,
            headers: None,
            tls: None,
            proxy: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            critical_action: None,
        }
    }
}

impl fmt::Debug for KickConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KickConfig")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            // The proxy URL may hold a password.
            .field("proxy", &self.proxy.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// The running listener. `shutdown` ends it.
pub struct KickListener {
    stop: Option<Sender<()>>,
    socket: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KickListener {
    /// Stops the thread and waits for it. Unblocking: dropping the stop sender wakes a backoff
    /// wait at once (`recv_timeout` sees the disconnect), and shutting down the current socket
    /// (a clone kept in `socket`, the one lock this module holds) ends a blocked read, connect
    /// handshake or write with an error, after which the thread sees the stop and returns.
    /// A connect in progress is bounded by `connect_timeout`.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(sock) = self.socket.lock().as_ref() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for KickListener {
    fn drop(&mut self) {
        if self.thread.is_some() {
            drop(self.stop.take());
            if let Some(sock) = self.socket.lock().as_ref() {
                let _ = sock.shutdown(Shutdown::Both);
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Starts the listener thread. The URL is checked here; connection failures are not errors
/// (the thread retries with backoff and logs each failure).
pub fn spawn_listener(cfg: KickConfig, actions: Sender<KickAction>) -> io::Result<KickListener> {
    let target = Target::parse(&cfg.url)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if target.tls && cfg.tls.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "wss:// kick URL needs a TLS config",
        ));
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let socket = Arc::new(Mutex::new(None));
    let worker = Worker {
        cfg,
        target,
        actions,
        stop: stop_rx,
        socket: socket.clone(),
    };
    let thread = thread::Builder::new()
        .name("kick".into())
        .spawn(move || worker.run())?;
    Ok(KickListener {
        stop: Some(stop_tx),
        socket,
        thread: Some(thread),
    })
}

/// Why one connection ended.
#[derive(Debug)]
enum ConnError {
    Io(io::Error),
    Dial(DialError),
    Websocket(ws_conn::Error),
    /// Two idle periods passed without any frame from the server.
    Silent,
    /// The server closed the websocket.
    Closed,
    /// The action receiver is gone: the agent is shutting down.
    NoReceiver,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "connection failed: {e}"),
            ConnError::Dial(e) => write!(f, "{}", crate::error_chain::error_chain(e)),
            ConnError::Websocket(e) => write!(f, "websocket failed: {e}"),
            ConnError::Silent => f.write_str("server silent for two idle periods"),
            ConnError::Closed => f.write_str("server closed the websocket"),
            ConnError::NoReceiver => f.write_str("nobody takes kick actions any more"),
        }
    }
}

struct Worker {
    cfg: KickConfig,
    target: Target,
    actions: Sender<KickAction>,
    stop: Receiver<()>,
    socket: Arc<Mutex<Option<TcpStream>>>,
}

impl Worker {
    fn stopped(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    fn run(self) {
        let mut backoff = self.cfg.backoff_initial;
        loop {
            if self.stopped() {
                break;
            }
            let started = Instant::now();
            let mut good = false;
            let result = self.connect().and_then(|ws| {
                // The receiver may fall back to polling while the channel is down.
                let _ = self.actions.send(KickAction::ChannelUp);
                let served = self.serve(ws, &mut good);
                let _ = self.actions.send(KickAction::ChannelDown);
                served
            });
            *self.socket.lock() = None;
            if self.stopped() {
                break;
            }
            match result {
                Err(ConnError::NoReceiver) => {
                    log::info!("phase=kick action receiver gone, listener ends");
                    break;
                }
                Err(e) => log::warn!("phase=kick url={} {e}", self.cfg.url),
                Ok(()) => {}
            }
            // A connection that carried a kick or lived a full backoff cap was good: start the
            // next wait from the beginning.
            if good || started.elapsed() >= self.cfg.backoff_max {
                backoff = self.cfg.backoff_initial;
            }
            log::debug!("phase=kick reconnect in {backoff:?}");
            match self.stop.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => {}
                // Disconnected (or an unexpected message): shutdown.
                _ => break,
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
        log::debug!("phase=kick listener stopped");
    }

    fn connect(&self) -> Result<WebSocket<Stream>, ConnError> {
        let dial = Dial {
            target: &self.target,
            headers: self.cfg.headers.as_ref(),
            tls: self.cfg.tls.as_ref(),
            proxy: self.cfg.proxy.as_deref(),
            timeout: self.cfg.connect_timeout,
        };
        let ws = websocket::dial(&dial, |tcp| {
            *self.socket.lock() = Some(tcp.try_clone()?);
            if self.stopped() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
            }
            Ok(())
        })
        .map_err(ConnError::Dial)?;
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(self.cfg.idle_timeout))
            .map_err(ConnError::Io)?;
        log::info!("phase=kick connected to {}", self.cfg.url);
        Ok(ws)
    }

    fn serve(&self, mut ws: WebSocket<Stream>, good: &mut bool) -> Result<(), ConnError> {
        let idle = self.cfg.idle_timeout;
        let mut quiet = Quiet::new(Instant::now());
        // The socket's read timeout as last set; it is re-set only when the next deadline is
        // nearer than a full idle period (after an interrupted read).
        let mut read_timeout = idle;
        loop {
            if self.stopped() {
                let _ = ws.close();
                return Ok(());
            }
            let wanted = quiet.read_timeout(Instant::now(), idle);
            if wanted != read_timeout {
                ws.get_ref()
                    .tcp()
                    .set_read_timeout(Some(wanted))
                    .map_err(ConnError::Io)?;
                read_timeout = wanted;
            }
            match ws.read() {
                Ok(Message::Text(msg)) => {
                    quiet.heard(Instant::now());
                    *good = true;
                    let critical = self
                        .cfg
                        .critical_action
                        .as_ref()
                        .is_some_and(|f| f.load(Ordering::SeqCst));
                    let (reply, action) = handle_message(&msg, critical);
                    log::info!("phase=kick message={msg:?} reply={reply:?}");
                    ws.send(Message::Text(reply))
                        .map_err(ConnError::Websocket)?;
                    if let Some(action) = action {
                        self.actions
                            .send(action)
                            .map_err(|_| ConnError::NoReceiver)?;
                    }
                }
                Ok(Message::Close) => {
                    // The close echo is queued; flush it and finish.
                    let _ = ws.flush();
                    return Err(ConnError::Closed);
                }
                // A ping (answered already), a pong, a binary frame: the peer is there.
                Ok(_) => quiet.heard(Instant::now()),
                Err(e) if e.is_retry() => {
                    // EINTR is a retry, never a failure; the silence is measured by the clock,
                    // not by counting timeouts, so interrupted reads cannot stretch the bound.
                    match quiet.after_empty_read(Instant::now(), idle) {
                        QuietStep::Wait => {}
                        QuietStep::Ping => ws
                            .send(Message::Ping(Vec::new()))
                            .map_err(ConnError::Websocket)?,
                        QuietStep::GiveUp => return Err(ConnError::Silent),
                    }
                }
                Err(ws_conn::Error::Closed) => return Err(ConnError::Closed),
                Err(e) => return Err(ConnError::Websocket(e)),
            }
        }
    }
}

/// The keepalive rule of a connected kick channel: after `idle` with nothing heard, send a
/// ping; after `2 × idle`, the channel is dead (the server stopped reading or answering, or the
/// network dropped the connection silently). Time is passed in, so the rule is tested without
/// a socket or a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quiet {
    last_heard: Instant,
    pinged: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QuietStep {
    /// Read again: nothing is due yet.
    Wait,
    Ping,
    GiveUp,
}

impl Quiet {
    fn new(now: Instant) -> Quiet {
        Quiet {
            last_heard: now,
            pinged: false,
        }
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged = false;
    }

    /// The next thing due: the ping at `idle`, the end at `2 × idle`.
    fn deadline(&self, idle: Duration) -> Instant {
        if self.pinged {
            self.last_heard + idle * 2
        } else {
            self.last_heard + idle
        }
    }

    /// How long the next read may block: until the next deadline, at least 1 ms (a zero
    /// socket timeout means "forever").
    fn read_timeout(&self, now: Instant, idle: Duration) -> Duration {
        self.deadline(idle)
            .saturating_duration_since(now)
            .clamp(Duration::from_millis(1), idle)
    }

    /// A read ended with nothing: timed out, or interrupted by a signal.
    fn after_empty_read(&mut self, now: Instant, idle: Duration) -> QuietStep {
        if now < self.deadline(idle) {
            return QuietStep::Wait;
        }
        if self.pinged {
            return QuietStep::GiveUp;
        }
        self.pinged = true;
        QuietStep::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    // The test server's side: tungstenite, an independent implementation.
    use tungstenite::Message as ServerMessage;

    fn check(input: &str, expect: Result<Kick, KickError>) {
        assert_eq!(parse_kick(input), expect, "input {input:?}");
    }

    fn task(kind: TaskKick, id: &str) -> Result<Kick, KickError> {
        Ok(Kick::Task {
            kind,
            task_id: id.to_string(),
        })
    }

    #[test]
    fn plain_kick() {
        check("kick_vm", Ok(Kick::Fetch));
    }
    #[test]
    fn noop_is_valid() {
        check("kick_vm noop", Ok(Kick::Noop));
    }
    #[test]
    fn agent_stop_is_valid() {
        check("kick_vm agent stop", Ok(Kick::Agent(AgentKick::Stop)));
    }
    #[test]
    fn agent_remove_update() {
        check("kick_vm agent remove", Ok(Kick::Agent(AgentKick::Remove)));
        check("kick_vm agent update", Ok(Kick::Agent(AgentKick::Update)));
    }
    #[test]
    fn task_run_is_valid() {
        check("kick_vm task run t-xx", task(TaskKick::Run, "t-xx"));
    }
    #[test]
    fn task_stop() {
        check("kick_vm task stop t-1", task(TaskKick::Stop, "t-1"));
    }
    #[test]
    fn file_create_and_stop() {
        check("kick_vm file create f-1", task(TaskKick::FileCreate, "f-1"));
        check("kick_vm file stop f-1", task(TaskKick::FileStop, "f-1"));
    }
    #[test]
    fn sessions() {
        check(
            "kick_vm session start c-1",
            Ok(Kick::SessionStart {
                channel_id: "c-1".into(),
            }),
        );
        check(
            "kick_vm session stop c-1",
            Ok(Kick::SessionStop {
                channel_id: "c-1".into(),
            }),
        );
    }
    #[test]
    fn network_status_keeps_args() {
        check(
            "kick_vm status network --refresh --vpc",
            Ok(Kick::NetworkStatus {
                args: vec!["--refresh".into(), "--vpc".into()],
            }),
        );
    }
    #[test]
    fn unknown_type_is_rejected() {
        check(
            "kick_vm agent1 stop",
            Err(KickError::UnknownType("agent1".into())),
        );
    }
    #[test]
    fn unknown_action_is_rejected() {
        check(
            "kick_vm agent stop1",
            Err(KickError::UnknownAction {
                kind: "agent".into(),
                action: "stop1".into(),
            }),
        );
    }
    #[test]
    fn missing_id_is_rejected() {
        check(
            "kick_vm task run",
            Err(KickError::MissingId {
                kind: "task".into(),
                action: "run".into(),
            }),
        );
    }
    #[test]
    fn not_a_kick() {
        check("", Err(KickError::NotAKick));
        check("hello task run t-1", Err(KickError::NotAKick));
    }
    #[test]
    fn extra_spaces_are_one_separator() {
        check("kick_vm  task  run  t-1 ", task(TaskKick::Run, "t-1"));
    }

    #[test]
    fn replies() {
        assert_eq!(
            handle_message("kick_vm task run t-1", false),
            (
                "accept:kick_vm task run t-1".to_string(),
                Some(KickAction::Fetch {
                    task_id: Some("t-1".into()),
                    session: false
                })
            )
        );
        assert_eq!(
            handle_message("kick_vm noop", false),
            ("accept:kick_vm noop".to_string(), None)
        );
        assert_eq!(
            handle_message("kick_vm agent1 stop", false),
            ("unknow:kick_vm agent1 stop".to_string(), None)
        );
        assert_eq!(
            handle_message("kick_vm", true),
            ("reject:kick_vm".to_string(), None)
        );
        assert_eq!(
            handle_message("kick_vm session start c-9", false).1,
            Some(KickAction::Fetch {
                task_id: Some("c-9".into()),
                session: true
            })
        );
    }

    #[test]
    fn notify_urls() {
        assert_eq!(
            notify_url("https://cn-hangzhou.axt.aliyun.com").as_deref(),
            Ok("wss://cn-hangzhou.axt.aliyun.com/luban/notify_server")
        );
        assert_eq!(
            notify_url("http://127.0.0.1:8080/").as_deref(),
            Ok("ws://127.0.0.1:8080/luban/notify_server")
        );
        assert_eq!(
            notify_url("example.com").as_deref(),
            Ok("wss://example.com/luban/notify_server")
        );
        assert!(notify_url("ftp://x").is_err());
        assert!(notify_url("https://").is_err());
    }

    #[test]
    fn wss_without_tls_config_is_refused() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let err = spawn_listener(KickConfig::new("wss://h/x".into()), tx)
            .err()
            .expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// What the in-test server saw.
    #[derive(Debug)]
    enum Seen {
        Connected { header: Option<String> },
        Reply(String),
    }

    /// A websocket server on 127.0.0.1 that, per connection, sends the scripted messages,
    /// reports every text reply and then closes. The handshake callback's error type is
    /// tungstenite's, hence the allow.
    #[allow(clippy::result_large_err)]
    fn server(script: Vec<Vec<&'static str>>) -> (String, Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "ws://{}{}",
            listener.local_addr().expect("addr"),
            NOTIFY_PATH
        );
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for msgs in script {
                let Ok((tcp, _)) = listener.accept() else {
                    return;
                };
                // Bounds every read in the test server, so a broken listener fails the test
                // instead of hanging it.
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                let mut header = None;
                let cb = |req: &tungstenite::handshake::server::Request,
                          resp: tungstenite::handshake::server::Response| {
                    header = req
                        .headers()
                        .get("x-acs-instance-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    Ok(resp)
                };
                let Ok(mut ws) = tungstenite::accept_hdr(tcp, cb) else {
                    return;
                };
                let _ = seen_tx.send(Seen::Connected { header });
                for m in &msgs {
                    if ws.send(ServerMessage::Text(m.to_string())).is_err() {
                        return;
                    }
                    // Wait for the reply to this message.
                    loop {
                        match ws.read() {
                            Ok(ServerMessage::Text(t)) => {
                                let _ = seen_tx.send(Seen::Reply(t));
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => return,
                        }
                    }
                }
                let _ = ws.close(None);
                // Drain until the client answers the close.
                while ws.read().is_ok() {}
            }
        });
        (url, seen_rx)
    }

    fn next_kick(rx: &Receiver<KickAction>) -> KickAction {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("action within 30 s")
    }

    fn recv(rx: &Receiver<Seen>) -> Seen {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("server event within 30 s")
    }

    #[test]
    fn listener_answers_kicks_and_reconnects() {
        let (url, seen) = server(vec![
            vec!["kick_vm task run t-1", "kick_vm agent1 stop"],
            vec!["kick_vm"],
        ]);
        let (tx, actions) = crossbeam_channel::unbounded();
        let mut cfg = KickConfig::new(url);
        cfg.backoff_initial = Duration::from_millis(10);
        cfg.headers = Some(Arc::new(|method, path| {
            assert_eq!((method, path), ("GET", NOTIFY_PATH));
            vec![("x-acs-instance-id".to_string(), "i-test".to_string())]
        }));
        let listener = spawn_listener(cfg, tx).expect("spawn");

        match recv(&seen) {
            Seen::Connected { header } => assert_eq!(header.as_deref(), Some("i-test")),
            other => panic!("expected a connection, got {other:?}"),
        }
        match recv(&seen) {
            Seen::Reply(r) => assert_eq!(r, "accept:kick_vm task run t-1"),
            other => panic!("expected a reply, got {other:?}"),
        }
        assert_eq!(next_kick(&actions), KickAction::ChannelUp);
        assert_eq!(
            next_kick(&actions),
            KickAction::Fetch {
                task_id: Some("t-1".into()),
                session: false
            }
        );
        match recv(&seen) {
            Seen::Reply(r) => assert_eq!(r, "unknow:kick_vm agent1 stop"),
            other => panic!("expected a reply, got {other:?}"),
        }
        // The server closes; the listener comes back.
        match recv(&seen) {
            Seen::Connected { .. } => {}
            other => panic!("expected a reconnection, got {other:?}"),
        }
        match recv(&seen) {
            Seen::Reply(r) => assert_eq!(r, "accept:kick_vm"),
            other => panic!("expected a reply, got {other:?}"),
        }
        assert_eq!(next_kick(&actions), KickAction::ChannelDown);
        assert_eq!(next_kick(&actions), KickAction::ChannelUp);
        assert_eq!(
            next_kick(&actions),
            KickAction::Fetch {
                task_id: None,
                session: false
            }
        );
        listener.shutdown();
        let left: Vec<KickAction> = actions.try_iter().collect();
        assert!(
            left.iter().all(|a| *a == KickAction::ChannelDown),
            "only the channel going down after shutdown: {left:?}"
        );
    }

    #[test]
    fn shutdown_unblocks_a_connected_listener() {
        // One connection that the server holds open after the kick: the listener is blocked in
        // a read with a 30 s idle timeout when shutdown comes.
        let listener_sock = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "ws://{}{}",
            listener_sock.local_addr().expect("addr"),
            NOTIFY_PATH
        );
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let server = thread::spawn(move || {
            let (tcp, _) = listener_sock.accept().expect("accept");
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
            let mut ws = tungstenite::accept(tcp).expect("upgrade");
            ws.send(ServerMessage::Text("kick_vm noop".into()))
                .expect("send");
            let reply = ws.read().expect("reply");
            let _ = seen_tx.send(reply.to_string());
            // Reads until the listener goes away (close frame or EOF).
            while ws.read().is_ok() {}
        });
        let (tx, _actions) = crossbeam_channel::unbounded();
        let listener = spawn_listener(KickConfig::new(url), tx).expect("spawn");
        assert_eq!(
            seen_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("reply"),
            "accept:kick_vm noop"
        );
        listener.shutdown();
        server.join().expect("server thread");
    }

    #[test]
    fn the_keepalive_rule_pings_then_gives_up_by_the_clock() {
        let idle = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut q = Quiet::new(t0);
        // An interrupted read before the idle period is only a retry.
        assert_eq!(
            q.after_empty_read(t0 + Duration::from_secs(1), idle),
            QuietStep::Wait
        );
        assert_eq!(
            q.read_timeout(t0 + Duration::from_secs(1), idle),
            Duration::from_secs(29)
        );
        assert_eq!(q.after_empty_read(t0 + idle, idle), QuietStep::Ping);
        // Interrupted again and again after the ping: still bounded by 2 × idle.
        assert_eq!(
            q.after_empty_read(t0 + idle + Duration::from_secs(5), idle),
            QuietStep::Wait
        );
        assert_eq!(
            q.read_timeout(t0 + idle + Duration::from_secs(5), idle),
            Duration::from_secs(25)
        );
        assert_eq!(q.after_empty_read(t0 + idle * 2, idle), QuietStep::GiveUp);
        // Anything heard starts over.
        q.heard(t0 + idle * 2);
        assert_eq!(
            q.after_empty_read(t0 + idle * 2 + Duration::from_secs(1), idle),
            QuietStep::Wait
        );
        assert_eq!(
            q.read_timeout(t0 + idle * 10, idle),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn a_server_that_stops_reading_is_given_up_and_the_channel_reported_down() {
        let listener_sock = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "ws://{}{}",
            listener_sock.local_addr().expect("addr"),
            NOTIFY_PATH
        );
        let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
        let server = thread::spawn(move || {
            let (tcp, _) = listener_sock.accept().expect("accept");
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
            let mut ws = tungstenite::accept(tcp).expect("upgrade");
            ws.send(ServerMessage::Text("kick_vm noop".into()))
                .expect("send");
            let _ = ws.read();
            // Keeps the socket open and reads nothing more (no pong) until the test ends.
            let _ = hold_rx.recv_timeout(Duration::from_secs(60));
            drop(ws);
        });
        let (tx, actions) = crossbeam_channel::unbounded();
        let mut cfg = KickConfig::new(url);
        cfg.idle_timeout = Duration::from_millis(200);
        cfg.backoff_initial = Duration::from_secs(30);
        let listener = spawn_listener(cfg, tx).expect("spawn");
        assert_eq!(next_kick(&actions), KickAction::ChannelUp);
        assert_eq!(next_kick(&actions), KickAction::ChannelDown);
        listener.shutdown();
        drop(hold_tx);
        server.join().expect("server thread");
    }
}
