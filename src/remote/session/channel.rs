//! One session's websocket once it is open: the `poll` loop over the socket and a wake pipe,
//! the keepalive ping, the idle and maximum time limits, inbound frames handed to the plugin,
//! and the plugin's output framed and sent. It never starts or kills a process and never
//! opens a target connection: the plugin does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::frame::{self, WindowSize};
use super::{Code, Pace};
use crate::remote::websocket::Stream;
use crate::remote::ws_conn::{self, Message, WebSocket};

/// The time limits of a session (spec §2.2, §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A `keepalive` ping this often (60 s).
    pub ping_every: Duration,
    /// Ended as `Timeout` after this long without a valid inbound frame (180 s).
    pub idle: Duration,
    /// Ended as `Timeout` this long after it started (3 h).
    pub max: Duration,
    /// Bound on opening the websocket (45 s).
    pub dial_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ping_every: Duration::from_secs(60),
            idle: Duration::from_secs(180),
            max: Duration::from_secs(3 * 60 * 60),
            dial_timeout: Duration::from_secs(45),
        }
    }
}

/// From the session table (a stop kick, the shutdown) to one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// `kick_vm session stop`: ends as `Notified`.
    Stop,
    /// The agent is shutting down: ends as `Notified` too (the reference has no code for it;
    /// it simply dies without a report).
    Shutdown,
}

/// From a plugin's output pump to the session thread.
pub enum Pumped {
    Data(Vec<u8>),
    /// The output side ended (the pty hung up, the target closed).
    Ended,
}

/// What a plugin's pump sends through.
#[derive(Clone)]
pub struct Outputs {
    pub tx: Sender<Pumped>,
    pub waker: Arc<Waker>,
    pub pace: Arc<Pace>,
}

impl Outputs {
    /// Blocks while the session thread is behind (the channel holds 4 chunks); false when the
    /// session has stopped listening.
    pub fn send(&self, p: Pumped) -> bool {
        let ok = self.tx.send(p).is_ok();
        self.waker.wake();
        ok
    }
}

/// What the loop needs from a shell or port plugin.
pub trait Plugin: Send {
    /// A type-0 payload (never empty).
    fn input(&mut self, data: &[u8]);
    /// A type-2 window size.
    fn resize(&mut self, size: WindowSize);
    /// Called before every valid type-0, -2 or -5 frame; an error ends the session.
    fn before_frame(&mut self) -> Result<(), Code>;
    /// The output pump ended; `Some` ends the session with that code.
    fn output_ended(&mut self) -> Option<Code>;
    /// The code when an output frame cannot be built (the channel id is over 32 bytes).
    fn frame_error(&self) -> Code;
    /// Stops everything the plugin started and waits for its threads and processes.
    fn finish(&mut self);
}

/// The write end of a session's wake pipe: the pump, and the session table for a stop,
/// write one byte after each message so the loop's `poll` returns.
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn wake(&self) {
        // Non-blocking: a full pipe already holds a wake-up.
        // SAFETY: a one-byte write from a valid buffer to our own descriptor.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

/// A close-on-exec, non-blocking pipe: the read end for the loop, the write end as a `Waker`.
pub fn wake_pipe() -> io::Result<(OwnedFd, Arc<Waker>)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds` on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((r, Arc::new(Waker { fd: w })))
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a valid buffer from our own non-blocking descriptor.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// What is due next in a session, from its three clocks. Pure, so the limits are tested
/// without waiting for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clocks {
    pub started: Instant,
    pub last_inbound: Instant,
    pub next_ping: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// The session is over: idle or maximum time.
    End,
    Ping,
    /// Nothing until this long from now.
    Wait(Duration),
}

impl Clocks {
    /// The first ping goes out at once after the open (spec §2.2).
    pub fn new(now: Instant) -> Clocks {
        Clocks {
            started: now,
            last_inbound: now,
            next_ping: now,
        }
    }

    pub fn due(&self, now: Instant, limits: &Limits) -> Due {
        let end = (self.started + limits.max).min(self.last_inbound + limits.idle);
        if now >= end {
            return Due::End;
        }
        if now >= self.next_ping {
            return Due::Ping;
        }
        Due::Wait(end.min(self.next_ping) - now)
    }
}

/// How `serve` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The session is over, with this code.
    End(Code),
    /// The connection was lost (a read or write error, or a Close frame from the server):
    /// the caller reconnects (spec §2.3) and serves again with the same `Progress`.
    Lost,
}

/// What carries over from one connection of a session to the next (spec §2.3): the output
/// sequence counter and the clocks; the idle and maximum limits keep counting while the
/// agent reconnects.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub seq: i64,
    pub clocks: Clocks,
}

impl Progress {
    pub fn new(now: Instant) -> Progress {
        Progress {
            seq: 0,
            clocks: Clocks::new(now),
        }
    }

    /// A new connection is open: its first ping goes out at once (spec §2.2).
    pub fn reopened(&mut self, now: Instant) {
        self.clocks.next_ping = now;
    }
}

/// The pauses between the reconnect attempts of spec §2.3: 11 attempts, 100 ms doubling to
/// a cap of 2 s, no jitter (13.1 s in all, plus the dials).
pub const RECONNECT_PAUSES_MS: [u64; 10] = [100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000];

/// The loop's inputs besides the websocket and the plugin.
pub struct Serve<'a> {
    pub session_id: &'a str,
    /// The caller drops it once the session is over, so a pump blocked on a full channel
    /// ends; across a reconnect it is kept, and the pump waits.
    pub pumped: &'a Receiver<Pumped>,
    pub control: &'a Receiver<Control>,
    pub wake_rx: &'a OwnedFd,
    pub pace: &'a Pace,
    pub limits: &'a Limits,
    pub progress: &'a mut Progress,
}

/// Runs the session on one connection until it ends or the connection is lost. The socket
/// is non-blocking.
pub fn serve(ws: &mut WebSocket<Stream>, s: Serve<'_>, plugin: &mut dyn Plugin) -> Outcome {
    let id = s.session_id;
    let Progress { seq, clocks } = s.progress;
    // A flush that could not finish: poll for POLLOUT, and take no more output meanwhile.
    let mut flushing = false;
    loop {
        match clocks.due(Instant::now(), s.limits) {
            Due::End => {
                let which = if Instant::now() >= clocks.started + s.limits.max {
                    "maximum session time"
                } else {
                    "idle limit (no frame from the server)"
                };
                log::info!("task={id} invoke_version=0 phase=session {which} reached");
                return Outcome::End(Code::Timeout);
            }
            Due::Ping => {
                clocks.next_ping = Instant::now() + s.limits.ping_every;
                match ws.write(Message::Ping(b"keepalive".to_vec())) {
                    Ok(()) => flushing = true,
                    Err(e) if e.is_would_block() => flushing = true,
                    Err(e) => return lost(id, &e),
                }
            }
            Due::Wait(_) => {}
        }
        if flushing {
            match ws.flush() {
                Ok(()) => flushing = false,
                Err(e) if e.is_would_block() => {}
                Err(e) => return lost(id, &e),
            }
        }
        // Output: frame what the pump has, unless the socket is still behind.
        while !flushing {
            match s.pumped.try_recv() {
                Ok(Pumped::Data(data)) => {
                    if data.is_empty() {
                        continue;
                    }
                    let created = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                        .unwrap_or(1);
                    let bytes = match frame::encode_output(id, created, *seq, &data) {
                        Ok(b) => b,
                        Err(e) => {
                            log::warn!(
                                "task={id} invoke_version=0 phase=session cannot frame output: {e}"
                            );
                            return Outcome::End(plugin.frame_error());
                        }
                    };
                    *seq += 1;
                    match ws.write(Message::Binary(bytes)) {
                        Ok(()) => {}
                        Err(e) if e.is_would_block() => {}
                        Err(e) => return lost(id, &e),
                    }
                    match ws.flush() {
                        Ok(()) => {}
                        Err(e) if e.is_would_block() => flushing = true,
                        Err(e) => return lost(id, &e),
                    }
                }
                Ok(Pumped::Ended) => {
                    if let Some(code) = plugin.output_ended() {
                        return Outcome::End(code);
                    }
                }
                Err(TryRecvError::Empty) => break,
                // The pump is gone without saying so (it panicked): as if it had ended.
                Err(TryRecvError::Disconnected) => {
                    return Outcome::End(plugin.output_ended().unwrap_or(Code::UnknownError))
                }
            }
        }
        // Inbound: read until the socket has nothing more.
        loop {
            match ws.read() {
                Ok(Message::Binary(b)) => {
                    if let Some(code) = inbound(&b, clocks, s.pace, plugin) {
                        return Outcome::End(code);
                    }
                }
                Ok(Message::Text(t)) => {
                    if let Some(code) = inbound(t.as_bytes(), clocks, s.pace, plugin) {
                        return Outcome::End(code);
                    }
                }
                Ok(Message::Close) => {
                    // As in the reference, a server's Close does not end the session by
                    // itself: the agent reconnects (spec §2.5, §2.3).
                    log::info!(
                        "task={id} invoke_version=0 phase=session the server closed the channel"
                    );
                    return Outcome::Lost;
                }
                // Pings are answered already; pongs mean nothing.
                Ok(_) => {}
                Err(e) if e.is_would_block() => {
                    // A pong or close reply may be queued behind a full socket.
                    flushing = true;
                    break;
                }
                Err(ws_conn::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return lost(id, &e),
            }
        }
        match s.control.try_recv() {
            Ok(Control::Stop) | Ok(Control::Shutdown) => return Outcome::End(Code::Notified),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return Outcome::End(Code::Notified),
        }
        if !flushing && !s.pumped.is_empty() {
            continue;
        }
        let wait = match clocks.due(Instant::now(), s.limits) {
            Due::Wait(d) => d,
            _ => Duration::ZERO,
        };
        if let Err(e) = wait_ready(ws.get_ref().tcp().as_raw_fd(), s.wake_rx, flushing, wait) {
            log::warn!("task={id} invoke_version=0 phase=session poll failed: {e}");
            return Outcome::End(Code::Timeout);
        }
        drain(s.wake_rx);
    }
}

/// One inbound websocket message (spec §3.4, §3.5); `Some` ends the session.
fn inbound(msg: &[u8], clocks: &mut Clocks, pace: &Pace, plugin: &mut dyn Plugin) -> Option<Code> {
    let f = match frame::decode(msg) {
        Ok(f) => f,
        Err(e) => {
            log::debug!("phase=session dropping an inbound frame: {e}");
            return None;
        }
    };
    clocks.last_inbound = Instant::now();
    match f.msg_type {
        frame::INPUT_STREAM_DATA | frame::SET_SIZE | frame::STATUS => {
            if let Err(code) = plugin.before_frame() {
                return Some(code);
            }
        }
        _ => {}
    }
    match f.msg_type {
        frame::INPUT_STREAM_DATA if !f.payload.is_empty() => plugin.input(&f.payload),
        frame::INPUT_STREAM_DATA => {}
        frame::SET_SIZE => match frame::decode_window_size(&f.payload) {
            Some(size) => plugin.resize(size),
            None => log::debug!("phase=session ignoring a window size that is not valid"),
        },
        frame::STATUS => {
            if let Some(speed) = frame::decode_set_speed(&f.payload) {
                pace.set_speed(speed);
            }
        }
        other => log::debug!("phase=session ignoring a frame of type {other}"),
    }
    None
}

fn lost(id: &str, e: &ws_conn::Error) -> Outcome {
    log::info!("task={id} invoke_version=0 phase=session channel lost: {e}");
    Outcome::Lost
}

/// Blocks until the socket is readable (or writable, while `flushing`), the wake pipe has a
/// byte, or `wait` passes.
fn wait_ready(sock: i32, wake: &OwnedFd, flushing: bool, wait: Duration) -> io::Result<()> {
    let mut events = libc::POLLIN;
    if flushing {
        events |= libc::POLLOUT;
    }
    let mut fds = [
        libc::pollfd {
            fd: sock,
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Rounded up, so a wait of 0.4 ms does not spin at 0.
    let ms = wait.as_micros().div_ceil(1000);
    let timeout = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of two pollfd.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Sends what the websocket still buffers, blocking at most `bound` per write.
pub fn flush_blocking(ws: &mut WebSocket<Stream>, bound: Duration) {
    let tcp = ws.get_ref().tcp();
    if tcp.set_nonblocking(false).is_err() || tcp.set_write_timeout(Some(bound)).is_err() {
        return;
    }
    let _ = ws.flush();
}

/// Waits up to `wait` for `fd` to become readable or hang up; true when it did. A sleep the
/// stop pipe can cut short.
pub fn wait_readable(fd: i32, wait: Option<Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = match wait {
        Some(w) => libc::c_int::try_from(w.as_millis()).unwrap_or(libc::c_int::MAX),
        None => -1,
    };
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if rc >= 0 {
            return rc > 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            ping_every: Duration::from_secs(60),
            idle: Duration::from_secs(180),
            max: Duration::from_secs(3 * 3600),
            dial_timeout: Duration::from_secs(45),
        }
    }

    #[test]
    fn pings_at_once_then_every_minute() {
        let l = limits();
        let t0 = Instant::now();
        let mut c = Clocks::new(t0);
        assert_eq!(c.due(t0, &l), Due::Ping);
        c.next_ping = t0 + l.ping_every;
        assert_eq!(c.due(t0, &l), Due::Wait(Duration::from_secs(60)));
        assert_eq!(c.due(t0 + Duration::from_secs(60), &l), Due::Ping);
    }

    #[test]
    fn idle_for_180_s_ends_and_inbound_frames_reset_it() {
        let l = limits();
        let t0 = Instant::now();
        let mut c = Clocks::new(t0);
        c.next_ping = t0 + Duration::from_secs(10_000);
        assert_eq!(
            c.due(t0 + Duration::from_secs(179), &l),
            Due::Wait(Duration::from_secs(1))
        );
        assert_eq!(c.due(t0 + Duration::from_secs(180), &l), Due::End);
        c.last_inbound = t0 + Duration::from_secs(170);
        assert_eq!(
            c.due(t0 + Duration::from_secs(180), &l),
            Due::Wait(Duration::from_secs(170))
        );
    }

    #[test]
    fn reconnects_are_eleven_dials_over_thirteen_point_one_seconds() {
        assert_eq!(RECONNECT_PAUSES_MS.len() + 1, 11);
        assert_eq!(RECONNECT_PAUSES_MS.iter().sum::<u64>(), 13_100);
        let mut p = Progress::new(Instant::now());
        p.seq = 7;
        let later = p.clocks.started + Duration::from_secs(5);
        p.reopened(later);
        assert_eq!((p.seq, p.clocks.next_ping), (7, later));
    }

    #[test]
    fn three_hours_end_a_busy_session() {
        let l = limits();
        let t0 = Instant::now();
        let mut c = Clocks::new(t0);
        let late = t0 + l.max;
        c.last_inbound = late;
        c.next_ping = late + Duration::from_secs(1);
        assert_eq!(c.due(late, &l), Due::End);
    }
}
