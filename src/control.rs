//! The control socket, `<state-dir>/control.sock`: how `assistd run ID` asks a running local
//! agent to run a task now. One thread blocks in `accept` (an idle agent never wakes for it),
//! checks who connected (`SO_PEERCRED`: root or the agent's own uid only), reads one request
//! line, hands it to the control loop as a `Request` and writes the answer back as one JSON
//! line. It never decides anything about a task; the engine does.
//!
//! Protocol (one connection, one request): the client writes `run <task id>\n`; the agent
//! answers `{"answer":"started"|"running"|"unknown"|"stopping"|"refused"|"bad-request",
//! "task":ID,"invoke_version":N}` and closes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

/// A request line is a command and a task id: anything longer is refused.
const MAX_REQUEST: u64 = 1024;
/// How long a client may take to send its line, and the engine to answer: bounds how long
/// one slow client holds the thread, never a poll.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control loop is asked.
#[derive(Debug)]
pub enum Request {
    /// Run this task now, once, under the non-overlap rule.
    Run {
        task_id: String,
        reply: Sender<RunAnswer>,
    },
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

/// The listening side, owned by `cli` for the agent's lifetime. Dropping it shuts the
/// socket down (which ends the thread's `accept`), joins the thread and removes the file.
pub struct Listener {
    path: PathBuf,
    listener: UnixListener,
    join: Option<thread::JoinHandle<()>>,
}

/// Binds `<state_dir>/control.sock` (a stale one from a dead agent is removed first: the
/// caller holds the state dir's lock) with mode 0600, and starts the thread. Requests go to
/// the returned receiver; `owner` is the uid besides root that may ask.
pub fn listen(state_dir: &Path, owner: u32) -> io::Result<(Listener, Receiver<Request>)> {
    let path = crate::fsutil::StateDir::new(state_dir).control_socket();
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let accept = listener.try_clone()?;
    let (tx, rx) = bounded(16);
    let join = thread::Builder::new()
        .name("control".to_string())
        .spawn(move || accept_loop(accept, owner, tx))?;
    Ok((
        Listener {
            path,
            listener,
            join: Some(join),
        },
        rx,
    ))
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: shutdown on our own listening socket; on Linux it makes the blocked
        // `accept` on its clone return EINVAL.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, owner: u32, requests: Sender<Request>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
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
                log::warn!("phase=control cannot accept a connection: {e}");
                // Out of descriptors or memory: waiting for some to be freed is the only way
                // on (only while the host is in that state; an idle agent never gets here).
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            // Shut down (EINVAL), or the socket is unusable: the thread ends.
            Err(_) => return,
        };
        if let Err(e) = serve(stream, owner, &requests) {
            log::debug!("phase=control request ended early: {e}");
        }
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

fn serve(stream: UnixStream, owner: u32, requests: &Sender<Request>) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let uid = peer_uid(&stream)?;
    if uid != 0 && uid != owner {
        log::warn!("phase=control refused a request from uid {uid}");
        return answer(&mut writer, "refused", None, None);
    }
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST)).read_line(&mut line)?;
    let Some(task_id) = parse_request(&line) else {
        return answer(&mut writer, "bad-request", None, None);
    };
    let (tx, rx) = bounded(1);
    let sent = requests.send_timeout(
        Request::Run {
            task_id: task_id.clone(),
            reply: tx,
        },
        ENGINE_TIMEOUT,
    );
    let reply = match sent {
        Ok(()) => rx
            .recv_timeout(ENGINE_TIMEOUT)
            .unwrap_or(RunAnswer::Stopping),
        Err(_) => RunAnswer::Stopping,
    };
    answer(&mut writer, reply.word(), Some(&task_id), reply.version())
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
        let engine = thread::spawn(move || {
            let Ok(Request::Run { task_id, reply }) = requests.recv() else {
                panic!("no request")
            };
            let answer = if task_id == "t" {
                RunAnswer::Started { invoke_version: 3 }
            } else {
                RunAnswer::Unknown
            };
            reply.send(answer).expect("reply");
            requests
        });
        assert_eq!(
            ask_run(dir.path(), "t").expect("asked"),
            ("started".to_string(), Some(3))
        );
        let _requests = engine.join().expect("engine");
        drop(listener);
        assert!(!dir.path().join("control.sock").exists(), "removed on drop");
        assert!(ask_run(dir.path(), "t").is_err(), "nobody listens");
    }
}
