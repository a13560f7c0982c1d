//! Session Manager (spec aliyun-sessions): interactive shells and TCP port forwarding over a
//! websocket to the server. `SessionHandle` is the table of live sessions (the reference's
//! SessionFactory), behind a mutex and owned by no thread; each session owns its own threads
//! and removes its entry when it ends. It never touches tasks,
//! the registry or the engine: sessions come from the fetch thread and stop kicks from the
//! kick bridge, and each ends with exactly one status report (E15).
//!
//! - `frame`: the 60-byte binary frame and its payloads.
//! - `channel`: one session's websocket loop (keepalive, limits, inbound dispatch, framing).
//! - `shell`: the pty, the user rules and the output pump of a shell session.
//! - `port`: the target connection of a port-forwarding session.

pub mod channel;
pub mod frame;
pub mod port;
pub mod shell;

use std::collections::HashMap;
use std::fmt;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::model::SessionTaskInfo;
use crate::remote::metrics::{Event, Metrics};
use crate::remote::transport::{Http, DEFAULT_TIMEOUT};
use crate::remote::websocket::{self, Dial, HeaderHook, Stream, Target};
use crate::remote::ws_conn::WebSocket;
use channel::{Control, Limits, Waker};

/// The session websocket's path (spec §2.1); `?channelId=<id>` follows, unescaped.
pub const BACKEND_PATH: &str = "/luban/session/backend";
/// The session status report's path (spec §1.4, E15).
pub const STATUS_PATH: &str = "/luban/api/v1/session/status";

/// How a session ended: the `errorcode` of its status report (spec §1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok,
    Notified,
    Timeout,
    SessionIdDuplicate,
    InitChannelFailed,
    OpenChannelFailed,
    OpenPtyFailed,
    ProcessDataError,
    UnknownError,
    OpenPortFailed,
    ReadPortFailed,
    IoPortFailed,
}

impl Code {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "Ok",
            Code::Notified => "Notified",
            Code::Timeout => "Timeout",
            Code::SessionIdDuplicate => "Session_id_duplicate",
            Code::InitChannelFailed => "Init_channel_failed",
            Code::OpenChannelFailed => "Open_channel_failed",
            Code::OpenPtyFailed => "Open_pty_failed",
            Code::ProcessDataError => "Process_data_error",
            Code::UnknownError => "Unknown_error",
            Code::OpenPortFailed => "Open_port_failed",
            Code::ReadPortFailed => "Read_port_failed",
            // The reference's constant is named IO_socket_error; its value is this.
            Code::IoPortFailed => "IO_port_failed",
        }
    }

    /// `Success` for Ok, Notified and Timeout; `Failed` for every other code.
    pub fn status(self) -> &'static str {
        match self {
            Code::Ok | Code::Notified | Code::Timeout => "Success",
            _ => "Failed",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Code {
    /// Whether the reference attaches an error object to this result, and so sends the
    /// failure metrics (spec §1.6).
    pub fn has_error_object(self) -> bool {
        matches!(
            self,
            Code::SessionIdDuplicate
                | Code::InitChannelFailed
                | Code::OpenChannelFailed
                | Code::OpenPtyFailed
                | Code::UnknownError
                | Code::OpenPortFailed
        )
    }

    /// The `errormsg` of the failure metrics.
    fn describe(self) -> &'static str {
        match self {
            Code::SessionIdDuplicate => "the channel id is already in use by a live session",
            Code::InitChannelFailed => "the session channel could not be set up",
            Code::OpenChannelFailed => "the session websocket could not be opened",
            Code::OpenPtyFailed => "the shell could not be started on a pty",
            Code::OpenPortFailed => "the target port could not be connected",
            _ => "the session failed",
        }
    }
}

/// The two failure events of a session that ended with `code` (spec §1.6), or none.
pub fn failure_events(channel_id: &str, code: Code, ws_url: &str) -> Vec<Event> {
    if !code.has_error_object() {
        return Vec::new();
    }
    let msg = code.describe().to_string();
    vec![
        Event {
            event_id: "agent.task.failed",
            category: "TASK",
            level: "ERROR",
            keywords: vec![
                ("errormsg", msg.clone()),
                ("taskid", channel_id.to_string()),
                ("sessionid", channel_id.to_string()),
                ("code", code.as_str().to_string()),
                ("wsURL", ws_url.to_string()),
            ],
        },
        Event {
            event_id: "agent.session.failed",
            category: "SESSION",
            level: "ERROR",
            keywords: vec![
                ("sessionId", channel_id.to_string()),
                ("errormsg", msg),
                ("taskid", channel_id.to_string()),
                ("code", code.as_str().to_string()),
                ("wsURL", ws_url.to_string()),
            ],
        },
    ]
}

/// The E15 target: keys in this order, values not escaped (spec §1.4).
pub fn status_path(channel_id: &str, code: Code) -> String {
    format!(
        "{STATUS_PATH}?channelId={channel_id}&status={}&errorcode={}",
        code.status(),
        code.as_str()
    )
}

/// Bytes per read of a shell's output (spec §3.8 P).
pub const SHELL_CHUNK: u64 = 1024;
/// Bytes per read of a forwarded connection (spec §3.8 P).
pub const PORT_CHUNK: u64 = 2048;
/// `flowLimit` ≤ 0 means 200 kbit/s.
pub const DEFAULT_FLOW_LIMIT: i64 = 200 * 1024;

/// The pause after each output chunk for a limit of `bits_per_sec` (spec §3.8):
/// `1000 / ((limit / 8) / chunk)` ms in integer arithmetic. Where the reference divides by
/// zero (a limit below 8 × chunk bits/s, which crashes the whole agent), the pause is the
/// slowest the formula yields, 1000 ms.
pub fn send_interval(bits_per_sec: i64, chunk: u64) -> Duration {
    let limit = if bits_per_sec <= 0 {
        DEFAULT_FLOW_LIMIT
    } else {
        bits_per_sec
    };
    // `limit` is positive here, so the conversion cannot fail.
    let bytes_per_chunk = u64::try_from(limit).unwrap_or(0) / 8 / chunk.max(1);
    Duration::from_millis(1000 / bytes_per_chunk.max(1))
}

/// The send pace a session's output pump follows; the session thread changes it when the
/// server sets a new speed (status code 7).
#[derive(Debug)]
pub struct Pace {
    interval_ms: AtomicU64,
    chunk: u64,
}

impl Pace {
    pub fn new(flow_limit: i64, chunk: u64) -> Pace {
        Pace {
            interval_ms: AtomicU64::new(millis(send_interval(flow_limit, chunk))),
            chunk,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    pub fn chunk(&self) -> usize {
        usize::try_from(self.chunk).unwrap_or(1024)
    }

    pub fn set_speed(&self, bits_per_sec: u32) {
        let d = send_interval(i64::from(bits_per_sec), self.chunk);
        self.interval_ms.store(millis(d), Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a session needs from the rest of the agent.
#[derive(Clone)]
pub struct SessionsConfig {
    pub http: Arc<dyn Http>,
    /// The server base URL (`https://host`), for the websocket URL.
    pub base_url: String,
    /// Identity headers of the upgrade request (the same as every other request).
    pub headers: Option<HeaderHook>,
    /// Required for a `wss://` server.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The proxy every request goes through (`ALIYUN_ASSIST_PROXY` or the config's `proxy`).
    pub proxy: Option<String>,
    pub limits: Limits,
    /// Where failed sessions send their metrics (spec §1.6); `None` sends none.
    pub metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for SessionsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The proxy URL may hold a password.
        f.debug_struct("SessionsConfig")
            .field("base_url", &self.base_url)
            .field("proxy", &self.proxy.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Where the fetch thread and the kick bridge start and stop sessions: the table of live
/// sessions (channel id → control sender, wake pipe, join handle), the reference's
/// SessionFactory. No thread owns it: a caller starts a session's thread under the table's
/// lock, and the session removes its own entry as its last act, so while no session is open
/// sessions hold no thread at all. Calls never block on a session.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("live", &self.shared.table.lock().live.len())
            .finish()
    }
}

struct Shared {
    cfg: Arc<SessionsConfig>,
    table: Mutex<Table>,
    /// Signalled when a session removes its entry (shutdown waits on it).
    ended: Condvar,
}

#[derive(Default)]
struct Table {
    live: HashMap<String, Live>,
    next_serial: u64,
    /// Shutdown has begun: nothing new starts.
    closed: bool,
}

struct Live {
    serial: u64,
    control: Sender<Control>,
    waker: Arc<Waker>,
    /// Dropped (the thread detached) when the session removes its entry: that is its last act.
    _join: JoinHandle<()>,
}

/// The session table, empty.
pub fn sessions(cfg: SessionsConfig) -> SessionHandle {
    SessionHandle {
        shared: Arc::new(Shared {
            cfg: Arc::new(cfg),
            table: Mutex::new(Table::default()),
            ended: Condvar::new(),
        }),
    }
}

/// How long shutdown waits for live sessions to end and report (each needs one kill, one
/// 5 s report and one close).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

impl SessionHandle {
    /// One `session[]` entry of a fetched list: its thread starts now.
    pub fn start(&self, info: SessionTaskInfo) {
        let mut table = self.shared.table.lock();
        let id = info.session_id.clone();
        let cfg = self.shared.cfg.clone();
        if table.closed {
            log::warn!(
                "task={id} invoke_version=0 phase=session arrived during shutdown; not started"
            );
            return;
        }
        if table.live.contains_key(&id) {
            // The reference also removes the original's entry here, so a later stop kick
            // cannot find it; the original stays registered and stoppable.
            log::warn!("task={id} invoke_version=0 phase=session duplicate channel id refused");
            let spawned = thread::Builder::new()
                .name("session-dup".to_string())
                .spawn(move || report(&cfg, &id, Code::SessionIdDuplicate));
            if let Err(e) = spawned {
                log::error!("phase=session cannot start a thread to report a duplicate: {e}");
            }
            return;
        }
        let (wake_rx, waker) = match channel::wake_pipe() {
            Ok(pair) => pair,
            Err(e) => {
                log::error!("task={id} invoke_version=0 phase=session cannot create a pipe: {e}");
                let _ = thread::Builder::new()
                    .name("session-fail".to_string())
                    .spawn(move || report(&cfg, &id, Code::InitChannelFailed));
                return;
            }
        };
        table.next_serial += 1;
        let serial = table.next_serial;
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let shared = self.shared.clone();
        let thread_waker = waker.clone();
        let thread_id = id.clone();
        let spawned = thread::Builder::new()
            .name(format!("session-{id}"))
            .spawn(move || {
                // The guard removes the entry (and sends the report, if the body never got to
                // it) even if the session panics, so the table never keeps a dead entry.
                let mut guard = EndGuard {
                    shared: &shared,
                    id: &thread_id,
                    serial,
                    reported: false,
                };
                let session = Session {
                    cfg: &shared.cfg,
                    info: &info,
                    control: control_rx,
                    wake_rx,
                    waker: thread_waker,
                };
                session.run(&mut guard);
            });
        match spawned {
            Ok(join) => {
                table.live.insert(
                    id,
                    Live {
                        serial,
                        control: control_tx,
                        waker,
                        _join: join,
                    },
                );
            }
            Err(e) => {
                log::error!("task={id} invoke_version=0 phase=session cannot start its thread: {e}")
            }
        }
    }

    /// `kick_vm session stop <channelId>`.
    pub fn stop(&self, channel_id: &str) {
        let table = self.shared.table.lock();
        match table.live.get(channel_id) {
            Some(live) => {
                log::info!("task={channel_id} invoke_version=0 phase=session stop kick");
                let _ = live.control.send(Control::Stop);
                live.waker.wake();
            }
            None => log::warn!(
                "task={channel_id} invoke_version=0 phase=session stop session failed: no such session"
            ),
        }
    }

    /// Shutdown, first half (at the start of the agent's shutdown): nothing new starts, and
    /// every live session is asked to end.
    pub fn begin_shutdown(&self) {
        let mut table = self.shared.table.lock();
        table.closed = true;
        if !table.live.is_empty() {
            log::info!("phase=shutdown ending {} session(s)", table.live.len());
        }
        for live in table.live.values() {
            let _ = live.control.send(Control::Shutdown);
            live.waker.wake();
        }
    }

    /// Shutdown, second half: waits (at most `SHUTDOWN_WAIT`) for the sessions to end and
    /// report.
    pub fn wait_ended(&self) {
        self.begin_shutdown();
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let mut table = self.shared.table.lock();
        while !table.live.is_empty() {
            if self
                .shared
                .ended
                .wait_until(&mut table, deadline)
                .timed_out()
            {
                break;
            }
        }
        for id in table.live.keys() {
            log::warn!("task={id} invoke_version=0 phase=shutdown session did not end in time");
        }
    }
}

/// Sends E15 once: one attempt, 5 s, response ignored (spec §1.4); then, for a failure, its
/// metrics (§1.6).
fn report(cfg: &SessionsConfig, id: &str, code: Code) {
    report_status(&*cfg.http, id, code);
    if let Some(metrics) = &cfg.metrics {
        let path = format!("{BACKEND_PATH}?channelId={id}");
        let ws_url = websocket::server_ws_url(&cfg.base_url, &path).unwrap_or_default();
        for event in failure_events(id, code, &ws_url) {
            metrics.send(&*cfg.http, &event);
        }
    }
}

fn report_status(http: &dyn Http, id: &str, code: Code) {
    let target = status_path(id, code);
    match http.post(&target, b"", "text/plain; charset=utf-8", DEFAULT_TIMEOUT) {
        Ok(_) => log::info!(
            "task={id} invoke_version=0 phase=session ended: status={} errorcode={code}",
            code.status()
        ),
        Err(e) => log::warn!(
            "task={id} invoke_version=0 phase=session ended ({code}) but the status report failed: {}",
            crate::error_chain::error_chain(&e)
        ),
    }
}

struct EndGuard<'a> {
    shared: &'a Shared,
    id: &'a str,
    serial: u64,
    reported: bool,
}

impl EndGuard<'_> {
    fn report(&mut self, code: Code) {
        if !std::mem::replace(&mut self.reported, true) {
            report(&self.shared.cfg, self.id, code);
        }
    }
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        // A panic inside the session is the reference's `Unknown_error`.
        self.report(Code::UnknownError);
        let mut table = self.shared.table.lock();
        if table
            .live
            .get(self.id)
            .is_some_and(|l| l.serial == self.serial)
        {
            // Its own join handle: dropping it detaches this thread, which ends right after.
            table.live.remove(self.id);
        }
        self.shared.ended.notify_all();
    }
}

/// One session, on its own thread.
struct Session<'a> {
    cfg: &'a SessionsConfig,
    info: &'a SessionTaskInfo,
    control: Receiver<Control>,
    wake_rx: std::os::fd::OwnedFd,
    waker: Arc<Waker>,
}

impl Session<'_> {
    /// Spec §1.3 steps 4-9: open the channel, start the plugin, serve until the end, then
    /// kill what the plugin started, report, and close the websocket, in that order.
    fn run(self, guard: &mut EndGuard<'_>) {
        let id = self.info.session_id.as_str();
        let kind = if self.info.port_number.is_empty() {
            "shell"
        } else {
            "port"
        };
        log::info!("task={id} invoke_version=0 phase=session starting a {kind} session");
        let ws = match self.open() {
            Ok(ws) => ws,
            Err(code) => return guard.report(code),
        };
        let chunk = if kind == "port" {
            PORT_CHUNK
        } else {
            SHELL_CHUNK
        };
        let pace = Arc::new(Pace::new(self.info.flow_limit, chunk));
        let (pump_tx, pump_rx) = crossbeam_channel::bounded(4);
        let outputs = channel::Outputs {
            tx: pump_tx,
            waker: self.waker.clone(),
            pace: pace.clone(),
        };
        let plugin: Result<Box<dyn channel::Plugin>, Code> = if kind == "port" {
            port::Port::open(self.info, outputs).map(|p| Box::new(p) as Box<dyn channel::Plugin>)
        } else {
            shell::Shell::open(self.info, outputs).map(|s| Box::new(s) as Box<dyn channel::Plugin>)
        };
        let mut ws = Some(ws);
        let code = match plugin {
            Ok(mut plugin) => {
                let mut progress = channel::Progress::new(Instant::now());
                let code = loop {
                    let Some(open) = ws.as_mut() else {
                        break Code::Timeout;
                    };
                    let outcome = channel::serve(
                        open,
                        channel::Serve {
                            session_id: id,
                            pumped: &pump_rx,
                            control: &self.control,
                            wake_rx: &self.wake_rx,
                            pace: &pace,
                            limits: &self.cfg.limits,
                            progress: &mut progress,
                        },
                        plugin.as_mut(),
                    );
                    match outcome {
                        channel::Outcome::End(code) => break code,
                        channel::Outcome::Lost => {
                            // Closed without a Close frame, as the reference does (§2.5).
                            if let Some(old) = ws.take() {
                                let _ = old.get_ref().tcp().shutdown(Shutdown::Both);
                            }
                            match self.reconnect(&progress) {
                                Ok(new) => {
                                    progress.reopened(Instant::now());
                                    ws = Some(new);
                                }
                                Err(code) => break code,
                            }
                        }
                    }
                };
                // A pump blocked on the full channel ends once nobody can receive.
                drop(pump_rx);
                plugin.finish();
                code
            }
            Err(code) => code,
        };
        // Output already framed goes out before the report.
        if let Some(open) = ws.as_mut() {
            channel::flush_blocking(open, Duration::from_secs(5));
        }
        guard.report(code);
        if let Some(open) = ws {
            close(open);
        }
    }

    /// Spec §2.3: up to 11 dials of the same URL (fresh headers each time), 100 ms doubling
    /// to 2 s between them. A stop or shutdown during a pause ends the session as `Notified`;
    /// the idle or maximum limit passing ends it as `Timeout`, and so do 11 failed dials.
    /// Output and sequence numbers carry over: the pump waits meanwhile.
    fn reconnect(&self, progress: &channel::Progress) -> Result<WebSocket<Stream>, Code> {
        let id = self.info.session_id.as_str();
        let attempts = channel::RECONNECT_PAUSES_MS.len() + 1;
        for attempt in 1..=attempts {
            if progress.clocks.due(Instant::now(), &self.cfg.limits) == channel::Due::End {
                log::info!("task={id} invoke_version=0 phase=session time limit reached while reconnecting");
                return Err(Code::Timeout);
            }
            log::info!("task={id} invoke_version=0 phase=session reconnecting (attempt {attempt} of {attempts})");
            match self.open() {
                Ok(ws) => return Ok(ws),
                Err(_) if attempt == attempts => break,
                Err(_) => {}
            }
            let pause = Duration::from_millis(channel::RECONNECT_PAUSES_MS[attempt - 1]);
            match self.control.recv_timeout(pause) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(Code::Notified)
                }
            }
        }
        log::warn!("task={id} invoke_version=0 phase=session the channel could not be reopened");
        Err(Code::Timeout)
    }

    fn open(&self) -> Result<WebSocket<Stream>, Code> {
        let id = self.info.session_id.as_str();
        if self.cfg.base_url.is_empty() {
            return Err(Code::InitChannelFailed);
        }
        let path = format!("{BACKEND_PATH}?channelId={id}");
        let url = websocket::server_ws_url(&self.cfg.base_url, &path).map_err(|e| {
            log::warn!("task={id} invoke_version=0 phase=session {e}");
            Code::InitChannelFailed
        })?;
        let target = Target::parse(&url).map_err(|e| {
            log::warn!("task={id} invoke_version=0 phase=session {e}");
            Code::InitChannelFailed
        })?;
        let dial = Dial {
            target: &target,
            headers: self.cfg.headers.as_ref(),
            tls: self.cfg.tls.as_ref(),
            proxy: self.cfg.proxy.as_deref(),
            timeout: self.cfg.limits.dial_timeout,
        };
        let ws = websocket::dial(&dial, |_| Ok(())).map_err(|e| {
            log::warn!(
                "task={id} invoke_version=0 phase=session cannot open the channel: {}",
                crate::error_chain::error_chain(&e)
            );
            Code::OpenChannelFailed
        })?;
        ws.get_ref().tcp().set_nonblocking(true).map_err(|e| {
            log::warn!("task={id} invoke_version=0 phase=session {e}");
            Code::OpenChannelFailed
        })?;
        log::info!("task={id} invoke_version=0 phase=session channel open");
        Ok(ws)
    }
}

/// Sends a Close frame without waiting for the answer (spec §2.5), then drops the connection.
fn close(mut ws: WebSocket<Stream>) {
    let tcp = ws.get_ref().tcp();
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = ws.close();
    let _ = ws.flush();
    let _ = ws.get_ref().tcp().shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paths() {
        assert_eq!(
            status_path("s-hz0jdfwcnkxxxxxxxx", Code::Notified),
            "/luban/api/v1/session/status?channelId=s-hz0jdfwcnkxxxxxxxx&status=Success&errorcode=Notified"
        );
        assert_eq!(
            status_path("c-1", Code::IoPortFailed),
            "/luban/api/v1/session/status?channelId=c-1&status=Failed&errorcode=IO_port_failed"
        );
        // Not escaped, as the reference.
        assert_eq!(
            status_path("a b", Code::Ok),
            "/luban/api/v1/session/status?channelId=a b&status=Success&errorcode=Ok"
        );
    }

    #[test]
    fn only_failures_with_an_error_object_send_metrics() {
        for code in [
            Code::Ok,
            Code::Notified,
            Code::Timeout,
            Code::ProcessDataError,
        ] {
            assert!(failure_events("c", code, "ws://h/x").is_empty(), "{code}");
        }
        let events = failure_events("c-1", Code::OpenPortFailed, "ws://h/x");
        let ids: Vec<&str> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, ["agent.task.failed", "agent.session.failed"]);
        let keys: Vec<&str> = events[1].keywords.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["sessionId", "errormsg", "taskid", "code", "wsURL"]);
        assert!(events[0]
            .keywords
            .contains(&("code", "Open_port_failed".to_string())));
    }

    #[test]
    fn success_is_ok_notified_and_timeout_only() {
        let all = [
            Code::Ok,
            Code::Notified,
            Code::Timeout,
            Code::SessionIdDuplicate,
            Code::InitChannelFailed,
            Code::OpenChannelFailed,
            Code::OpenPtyFailed,
            Code::ProcessDataError,
            Code::UnknownError,
            Code::OpenPortFailed,
            Code::ReadPortFailed,
            Code::IoPortFailed,
        ];
        let success: Vec<&str> = all
            .iter()
            .filter(|c| c.status() == "Success")
            .map(|c| c.as_str())
            .collect();
        assert_eq!(success, ["Ok", "Notified", "Timeout"]);
    }

    #[test]
    fn send_intervals_follow_the_table_without_dividing_by_zero() {
        let check = |limit: i64, shell_ms: u64, port_ms: u64| {
            assert_eq!(
                (
                    send_interval(limit, SHELL_CHUNK).as_millis(),
                    send_interval(limit, PORT_CHUNK).as_millis()
                ),
                (u128::from(shell_ms), u128::from(port_ms)),
                "flowLimit {limit}"
            );
        };
        check(0, 40, 83);
        check(-5, 40, 83);
        // The reference divides by zero here and crashes; the slowest pace instead.
        check(1, 1000, 1000);
        check(8191, 1000, 1000);
        check(8192, 1000, 1000);
        check(16383, 1000, 1000);
        check(16384, 500, 1000);
        check(32768, 250, 500);
        check(1_048_576, 7, 15);
        check(1_638_400, 5, 10);
        check(8_192_000, 1, 2);
        check(8_200_192, 0, 2);
        check(16_384_000, 0, 1);
        check(16_400_384, 0, 0);
    }

    #[test]
    fn a_set_speed_changes_the_pace() {
        let pace = Pace::new(0, SHELL_CHUNK);
        assert_eq!(pace.interval(), Duration::from_millis(40));
        pace.set_speed(1_048_576);
        assert_eq!(pace.interval(), Duration::from_millis(7));
        pace.set_speed(1);
        assert_eq!(pace.interval(), Duration::from_millis(1000));
    }
}
