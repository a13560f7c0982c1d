//! The control socket, `<state-dir>/control.sock`: how `assistd run ID` asks a running local
//! agent to run a task now. A source of the local agent's poll thread (`pollthread`): it
//! accepts when the socket is readable (an idle agent never wakes for it), checks who
//! connected (`SO_PEERCRED`: root or the agent's own uid only), reads one request line,
//! hands it to the control loop as a `Request` and writes the answer back as one JSON line.
//! Every socket is non-blocking, so no client holds the poll thread. It never decides
//! anything about a task; the engine does.
//!
//! Protocol (one connection, one request): the client writes `run <task id>\n`; the agent
//! answers `{"answer":"started"|"running"|"unknown"|"stopping"|"refused"|"bad-request",
//! "task":ID,"invoke_version":N}` and closes.

use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::pollthread::{pollfd, Keep, Source, Wake};

/// A request line is a command and a task id: anything longer is refused.
const MAX_REQUEST: usize = 1024;
/// How long a client may take to send its line, and the engine to answer: the only
/// deadlines of the source, and only while a client is connected.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; more wait in the listen backlog. Bounds the descriptors held
/// and the requests queued for the control loop.
const MAX_CLIENTS: usize = 16;

/// What the control loop is asked.
#[derive(Debug)]
pub enum Request {
    /// Run this task now, once, under the non-overlap rule.
    Run { task_id: String, reply: Reply },
}

/// The control loop's answer to `Request::Run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAnswer {
    /// An invocation of this version was queued.
    Started { invoke_version: i64 },
    /// An invocation of the task is queued or running: no second one starts.
    Running { invoke_version: i64 },
    /// The agent has no task of this id.
    Unknown,
    /// The agent is shutting down.
    Stopping,
}

impl RunAnswer {
    fn word(&self) -> &'static str {
        match self {
            RunAnswer::Started { .. } => "started",
            RunAnswer::Running { .. } => "running",
            RunAnswer::Unknown => "unknown",
            RunAnswer::Stopping => "stopping",
        }
    }

    fn version(&self) -> Option<i64> {
        match self {
            RunAnswer::Started { invoke_version } | RunAnswer::Running { invoke_version } => {
                Some(*invoke_version)
            }
            _ => None,
        }
    }
}

/// How the control loop answers a `Request`: `send` hands the answer back to the control
/// socket's source, and wakes it. Dropped unanswered (the agent is stopping), it wakes it too,
/// and the client is told `stopping`.
#[derive(Debug)]
pub struct Reply {
    answer: Sender<RunAnswer>,
    wake: Wake,
}

impl Reply {
    /// A reply whose answer arrives on the returned receiver, for askers other than the
    /// socket (the engine's tests).
    pub fn channel() -> io::Result<(Reply, Receiver<RunAnswer>)> {
        let (answer, rx) = bounded(1);
        let wake = Wake::new()?;
        Ok((Reply { answer, wake }, rx))
    }

    pub fn send(self, answer: RunAnswer) -> Result<(), crossbeam_channel::SendError<RunAnswer>> {
        self.answer.send(answer)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.wake.wake();
    }
}

/// The listening socket and its clients, a source for a poll thread (owned by it for the
/// agent's lifetime). Dropping it removes the socket file.
pub struct Listener {
    path: PathBuf,
    listener: UnixListener,
    owner: u32,
    requests: Sender<Request>,
    /// Made readable by each `Reply`.
    wake: Wake,
    /// Clients whose request line is not complete yet.
    reading: Vec<Reading>,
    /// Clients whose request is with the control loop.
    asked: Vec<Asked>,
}

struct Reading {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

struct Asked {
    stream: UnixStream,
    task_id: String,
    answer: Receiver<RunAnswer>,
    deadline: Instant,
}

/// Binds `<state_dir>/control.sock` (a stale one from a dead agent is removed first: the
/// caller holds the state dir's lock) with mode 0600. Requests go to the returned receiver
/// once the `Listener` is polled; `owner` is the uid besides root that may ask.
pub fn listen(state_dir: &Path, owner: u32) -> io::Result<(Listener, Receiver<Request>)> {
    let path = crate::fsutil::StateDir::new(state_dir).control_socket();
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    // Never full: a request is sent only for a client in `asked`, at most `MAX_CLIENTS`.
    let (tx, rx) = bounded(MAX_CLIENTS);
    Ok((
        Listener {
            path,
            listener,
            owner,
            requests: tx,
            wake: Wake::new()?,
            reading: Vec::new(),
            asked: Vec::new(),
        },
        rx,
    ))
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Source for Listener {
    fn fds(&self, fds: &mut Vec<libc::pollfd>) {
        fds.push(pollfd(self.wake.fd(), libc::POLLIN));
        // Full: new clients wait in the backlog until one is done.
        let listen = if self.clients() < MAX_CLIENTS {
            self.listener.as_raw_fd()
        } else {
            -1
        };
        fds.push(pollfd(listen, libc::POLLIN));
        for r in &self.reading {
            fds.push(pollfd(r.stream.as_raw_fd(), libc::POLLIN));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let reading = self.reading.iter().map(|r| r.deadline);
        reading.chain(self.asked.iter().map(|a| a.deadline)).min()
    }

    fn ready(&mut self, fds: &[libc::pollfd], now: Instant) -> Keep {
        if fds[0].revents != 0 {
            self.wake.clear();
        }
        self.answer_asked(now);
        // The clients `fds` listed, before new ones join.
        let mut i = 2;
        let mut reading = std::mem::take(&mut self.reading);
        reading.retain_mut(|r| {
            let revents = fds[i].revents;
            i += 1;
            if revents == 0 && r.deadline > now {
                return true;
            }
            self.read_request(r, now)
        });
        self.reading = reading;
        if fds[1].revents != 0 && self.accept(now) == Keep::Done {
            return Keep::Done;
        }
        Keep::Polling
    }
}

impl Listener {
    fn clients(&self) -> usize {
        self.reading.len() + self.asked.len()
    }

    fn accept(&mut self, now: Instant) -> Keep {
        while self.clients() < MAX_CLIENTS {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // A client that hung up before it was accepted.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of descriptors or memory: the socket stays readable, so the next
                    // turn tries again (only while the host is in that state).
                    log::warn!("phase=control cannot accept a connection: {e}");
                    break;
                }
                Err(e) => {
                    log::warn!(
                        "phase=control the control socket failed ({e}); `assistd run` is off"
                    );
                    return Keep::Done;
                }
            };
            if let Err(e) = self.admit(stream, now) {
                log::debug!("phase=control request ended early: {e}");
            }
        }
        Keep::Polling
    }

    /// A new client: refused unless root or the owner, else read from when readable.
    fn admit(&mut self, mut stream: UnixStream, now: Instant) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let uid = peer_uid(&stream)?;
        if uid != 0 && uid != self.owner {
            log::warn!("phase=control refused a request from uid {uid}");
            return answer(&mut stream, "refused", None, None);
        }
        self.reading.push(Reading {
            stream,
            line: Vec::new(),
            deadline: now + CLIENT_TIMEOUT,
        });
        Ok(())
    }

    /// Reads what the client sent; false when it is done with (answered, asked, or gone).
    fn read_request(&mut self, r: &mut Reading, now: Instant) -> bool {
        let mut buf = [0u8; 256];
        let complete = loop {
            if r.line.contains(&b'\n') || r.line.len() >= MAX_REQUEST {
                break true;
            }
            let want = buf.len().min(MAX_REQUEST - r.line.len());
            match r.stream.read(&mut buf[..want]) {
                Ok(0) => break true, // the client's end: what it sent is all
                Ok(n) => r.line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) => {
                    log::debug!("phase=control request ended early: {e}");
                    return false;
                }
            }
        };
        if !complete {
            if r.deadline <= now {
                log::debug!("phase=control request ended early: the client sent no line");
                return false;
            }
            return true;
        }
        // One line: what follows its newline is not read, as `read_line` would not.
        let end = r
            .line
            .iter()
            .position(|&b| b == b'\n')
            .map_or(r.line.len(), |i| i + 1);
        let line = String::from_utf8_lossy(&r.line[..end]).into_owned();
        let Some(task_id) = parse_request(&line) else {
            let _ = answer(&mut r.stream, "bad-request", None, None);
            return false;
        };
        let (tx, rx) = bounded(1);
        let request = Request::Run {
            task_id: task_id.clone(),
            reply: Reply {
                answer: tx,
                wake: self.wake.clone(),
            },
        };
        let stream = r.stream.try_clone();
        match (self.requests.try_send(request), stream) {
            (Ok(()), Ok(stream)) => self.asked.push(Asked {
                stream,
                task_id,
                answer: rx,
                deadline: now + ENGINE_TIMEOUT,
            }),
            _ => {
                let a = RunAnswer::Stopping;
                let _ = answer(&mut r.stream, a.word(), Some(&task_id), a.version());
            }
        }
        false
    }

    /// Writes the answers the control loop gave, and `stopping` where it gave none in time.
    fn answer_asked(&mut self, now: Instant) {
        self.asked.retain_mut(|a| {
            let reply = match a.answer.try_recv() {
                Ok(reply) => reply,
                Err(TryRecvError::Disconnected) => RunAnswer::Stopping,
                Err(TryRecvError::Empty) if a.deadline <= now => RunAnswer::Stopping,
                Err(TryRecvError::Empty) => return true,
            };
            if let Err(e) = answer(
                &mut a.stream,
                reply.word(),
                Some(&a.task_id),
                reply.version(),
            ) {
                log::debug!("phase=control request ended early: {e}");
            }
            false
        });
    }
}

/// The uid of the process at the other end.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a `ucred` of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// `run <id>` (the id as the agent spells it: printable ASCII without spaces).
fn parse_request(line: &str) -> Option<String> {
    let line = line.strip_suffix('\n')?;
    let id = line.strip_prefix("run ")?;
    let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic());
    plain.then(|| id.to_string())
}

fn answer(
    w: &mut UnixStream,
    word: &str,
    task: Option<&str>,
    version: Option<i64>,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "answer": word,
        "task": task,
        "invoke_version": version,
    }))
    .map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// The client side (`assistd run`): sends `run <id>` and returns the answer's fields
/// (`answer`, `invoke_version`).
pub fn ask_run(state_dir: &Path, task_id: &str) -> io::Result<(String, Option<i64>)> {
    let mut stream = UnixStream::connect(crate::fsutil::StateDir::new(state_dir).control_socket())?;
    stream.set_read_timeout(Some(ENGINE_TIMEOUT + CLIENT_TIMEOUT))?;
    stream.write_all(format!("run {task_id}\n").as_bytes())?;
    let mut text = String::new();
    stream.take(64 * 1024).read_to_string(&mut text)?;
    let value: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the agent's answer is not JSON: {e}"),
        )
    })?;
    let word = value["answer"].as_str().unwrap_or("").to_string();
    Ok((word, value["invoke_version"].as_i64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;

    #[test]
    fn requests_are_one_plain_line() {
        assert_eq!(parse_request("run backup\n"), Some("backup".to_string()));
        assert_eq!(parse_request("run backup"), None, "no newline: cut short");
        assert_eq!(parse_request("run \n"), None);
        assert_eq!(parse_request("run a b\n"), None);
        assert_eq!(parse_request("stop a\n"), None);
    }

    #[test]
    fn a_request_reaches_the_engine_and_its_answer_the_client() {
        let dir = TempDir::new("control");
        let (listener, requests) = listen(dir.path(), crate::fsutil::euid()).expect("listen");
        let poll = crate::pollthread::PollThread::spawn("controltest", vec![Box::new(listener)])
            .expect("poll thread");
        let engine = std::thread::spawn(move || {
            for _ in 0..2 {
                let Ok(Request::Run { task_id, reply }) = requests.recv() else {
                    panic!("no request")
                };
                match task_id.as_str() {
                    "t" => reply
                        .send(RunAnswer::Started { invoke_version: 3 })
                        .expect("reply"),
                    // Dropped unanswered, as at shutdown.
                    _ => drop(reply),
                }
            }
            requests
        });
        assert_eq!(
            ask_run(dir.path(), "t").expect("asked"),
            ("started".to_string(), Some(3))
        );
        assert_eq!(
            ask_run(dir.path(), "u").expect("asked"),
            ("stopping".to_string(), None)
        );
        let mut bad = UnixStream::connect(dir.path().join("control.sock")).expect("connect");
        bad.write_all(b"stop t\n").expect("write");
        let mut text = String::new();
        bad.read_to_string(&mut text).expect("answer");
        assert!(text.contains("\"bad-request\""), "{text}");
        let _requests = engine.join().expect("engine");
        drop(poll);
        assert!(!dir.path().join("control.sock").exists(), "removed on drop");
        assert!(ask_run(dir.path(), "t").is_err(), "nobody listens");
    }
}
