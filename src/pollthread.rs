//! One thread blocked in `poll` on the descriptors of several sources (the signal fd, the
//! task-directory watcher, the control socket, the status writer's wake, the clock watch),
//! which hands each source its readiness. It never reads a descriptor and never decides what
//! a source does: each source's `ready` does that, and must not block.
//!
//! The thread waits without a timeout unless a source asks for a deadline (a settling
//! directory, a client that has not sent its line yet, a status write held back): an agent
//! with nothing pending never wakes.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

/// Whether a source wants to be polled again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Polling,
    /// The source is finished (its receiver hung up, its descriptor failed): it is dropped.
    Done,
}

/// One user of the poll thread.
pub trait Source: Send {
    /// Adds the descriptors to wait on, with their `events` (`revents` 0). Called before
    /// every `poll`; a source may add none for a while.
    fn fds(&self, fds: &mut Vec<libc::pollfd>);

    /// When the source needs `ready` even with nothing readable. `None`: only readiness.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The entries `fds` added, with their `revents` (all 0 when only the deadline passed).
    /// It must not block: read what is there, send on channels, and return.
    fn ready(&mut self, fds: &[libc::pollfd], now: Instant) -> Keep;
}

/// The running thread. Dropping it ends the thread: closing the pipe's write end wakes its
/// `poll` with a hang-up on the read end, the thread drops its sources and returns, and
/// `drop` joins it.
pub struct PollThread {
    wake: Option<File>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PollThread {
    /// Starts a thread named `name` that polls `sources` until the handle is dropped or every
    /// source is done.
    pub fn spawn(name: &str, sources: Vec<Box<dyn Source>>) -> io::Result<PollThread> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned here from now on.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(read_end, sources))?;
        Ok(PollThread {
            wake: Some(write_end),
            thread: Some(thread),
        })
    }
}

impl Drop for PollThread {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(stop: OwnedFd, mut sources: Vec<Box<dyn Source>>) {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    // Where each source's entries start in `fds`; the stop pipe is entry 0.
    let mut starts: Vec<usize> = Vec::new();
    while !sources.is_empty() {
        fds.clear();
        starts.clear();
        fds.push(pollfd(stop.as_raw_fd(), libc::POLLIN));
        for s in &sources {
            starts.push(fds.len());
            s.fds(&mut fds);
        }
        starts.push(fds.len());
        let deadline = sources.iter().filter_map(|s| s.deadline()).min();
        let timeout_ms = match deadline {
            None => -1,
            // Rounded up, so a deadline less than a millisecond away is not a busy loop.
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ms = left.as_micros().div_ceil(1000);
                ms.min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: `fds` holds `fds.len()` valid pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::warn!(
                "phase=poll poll failed ({}); its sources are no longer watched",
                io::Error::last_os_error()
            );
            return;
        }
        if fds[0].revents != 0 {
            return; // the handle was dropped
        }
        let now = Instant::now();
        let mut i = 0;
        sources.retain_mut(|s| {
            let mine = &fds[starts[i]..starts[i + 1]];
            i += 1;
            let readable = mine.iter().any(|p| p.revents != 0);
            let due = s.deadline().is_some_and(|d| d <= now);
            !(readable || due) || s.ready(mine, now) == Keep::Polling
        });
    }
}

/// A pollfd entry waiting for `events`.
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// A descriptor other threads make readable to get a source called (an `eventfd`): `wake`
/// never blocks, and any number of wakes before the source runs are one readiness.
#[derive(Clone, Debug)]
pub struct Wake(Arc<OwnedFd>);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Wake(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Makes the descriptor readable. (A full counter, EAGAIN, is readable already.)
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 to an eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Makes it unreadable again (the source's side, before it looks at what woke it).
    pub fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a u64 from a non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, Sender};
    use std::time::Duration;

    /// Sends a message each time its wake fires or its deadline passes; done after `left`.
    struct Counter {
        wake: Wake,
        deadline: Option<Instant>,
        tx: Sender<&'static str>,
        left: usize,
    }

    impl Source for Counter {
        fn fds(&self, fds: &mut Vec<libc::pollfd>) {
            fds.push(pollfd(self.wake.fd(), libc::POLLIN));
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn ready(&mut self, fds: &[libc::pollfd], now: Instant) -> Keep {
            if fds[0].revents != 0 {
                self.wake.clear();
                self.tx.send("woken").expect("send");
            }
            if self.deadline.is_some_and(|d| d <= now) {
                self.deadline = None;
                self.tx.send("due").expect("send");
            }
            self.left -= 1;
            if self.left == 0 {
                Keep::Done
            } else {
                Keep::Polling
            }
        }
    }

    #[test]
    fn sources_are_called_on_readiness_and_deadlines_and_dropped_when_done() {
        let (tx, rx) = bounded(8);
        let wake = Wake::new().expect("eventfd");
        let source = Counter {
            wake: wake.clone(),
            deadline: Some(Instant::now() + Duration::from_millis(1)),
            tx,
            left: 2,
        };
        let t = PollThread::spawn("polltest", vec![Box::new(source)]).expect("spawn");
        assert_eq!(rx.recv(), Ok("due"));
        wake.wake();
        wake.wake();
        assert_eq!(rx.recv(), Ok("woken"), "two wakes, one call");
        assert!(rx.recv().is_err(), "done: dropped with its sender");
        drop(t);
    }

    #[test]
    fn dropping_the_handle_ends_and_joins_the_thread() {
        let (tx, rx) = bounded(8);
        let source = Counter {
            wake: Wake::new().expect("eventfd"),
            deadline: None,
            tx,
            left: 1,
        };
        let t = PollThread::spawn("polltest", vec![Box::new(source)]).expect("spawn");
        drop(t); // joins: hangs here if the hang-up did not end the thread
        assert!(
            rx.try_recv().is_err(),
            "never called, and its sender is gone"
        );
    }
}
