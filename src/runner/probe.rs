//! Runs a program for its answer (the updater's trial of a downloaded binary): its own process
//! group, a deadline after which the group is killed, and the first bytes of its output. It
//! never runs a task and never reports anything.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::select;

use super::spawn::{output_pipe, spawn_program, ChildExit};

/// How long the output reader is waited for after the group was killed: only a process that
/// left the group (`setsid`) can hold the pipe longer, and its reader is then left behind.
const READER_GRACE: Duration = Duration::from_secs(2);

/// How a probe ended.
#[derive(Debug)]
pub struct Probed {
    /// `None`: the deadline passed and the group was killed.
    pub exit: Option<ChildExit>,
    /// Stdout and stderr together, at most `max_output` bytes.
    pub output: Vec<u8>,
}

/// Runs `program args`, waits for it until `timeout`, then kills its process group (also when
/// it exited, so nothing it started lives on) and reaps it.
pub fn probe(
    program: &Path,
    args: &[&OsStr],
    timeout: Duration,
    max_output: usize,
) -> io::Result<Probed> {
    let (read_end, write_end) = output_pipe()?;
    let mut running = spawn_program(program, args, write_end)?;
    let (tx, output) = crossbeam_channel::bounded(1);
    // Ends at EOF, which comes when the group is dead (or after `max_output` bytes).
    let reader = thread::Builder::new()
        .name("probe-output".to_string())
        .spawn(move || {
            let mut buf = Vec::new();
            let _ = read_end.take(max_output as u64).read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    let deadline = crossbeam_channel::at(Instant::now() + timeout);
    let exited = select! {
        recv(running.exited()) -> _ => true,
        recv(deadline) -> _ => false,
    };
    if exited {
        running.saw_exit();
    }
    running.kill_group();
    let exit = running.reap()?;
    let output = match reader {
        Ok(_) => output.recv_timeout(READER_GRACE).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Ok(Probed {
        exit: exited.then_some(exit),
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Probed {
        probe(
            Path::new("/bin/sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            timeout,
            64,
        )
        .expect("probe runs")
    }

    #[test]
    fn a_probe_returns_the_exit_and_the_first_output() {
        let p = sh("echo hello; echo err >&2; exit 3", Duration::from_secs(30));
        assert!(matches!(p.exit, Some(ChildExit::Code(3))), "{p:?}");
        assert_eq!(p.output, b"hello\nerr\n");
        let p = sh("yes | head -c 1000", Duration::from_secs(30));
        assert_eq!(p.output.len(), 64);
    }

    #[test]
    fn a_probe_that_does_not_end_is_killed_at_the_deadline() {
        let p = sh("echo started; exec sleep 600", Duration::from_millis(200));
        assert!(p.exit.is_none(), "{p:?}");
        // A slow machine may kill it before the echo.
        assert!(b"started\n".starts_with(&p.output), "{p:?}");
    }

    #[test]
    fn a_missing_program_is_an_error() {
        assert!(probe(
            Path::new("/nonexistent/assistd"),
            &[],
            Duration::from_secs(1),
            64
        )
        .is_err());
    }
}
