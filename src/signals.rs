//! Signals as messages: blocks TERM, INT and HUP in every thread and turns them into typed
//! `Signal` messages, read from a `signalfd` by the agent's poll thread (`pollthread`); blocks
//! SIGCHLD so that no child's
//! exit interrupts a blocking call. It never handles a signal asynchronously.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::pollthread::{pollfd, Keep, Source};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: shut down.
    Terminate,
    /// SIGHUP: re-read the local tasks.
    Reload,
    /// Not an OS signal: the task directory watcher (`source/watch.rs`) saw its changes
    /// settle. The local tasks are re-read, the config file is not.
    TasksChanged,
}

/// The signals read from the signalfd.
fn signal_set() -> libc::sigset_t {
    signal_set_with(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
}

fn signal_set_with(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset only adds valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in signals {
            libc::sigaddset(&mut set, *sig);
        }
        set
    }
}

/// Blocks TERM, INT and HUP (read from the signalfd, see `source`) and SIGCHLD (never taken)
/// in the calling thread. Call it in `main` before any thread is spawned, so every thread
/// inherits the mask. (std resets the mask in spawned children.)
///
/// Why SIGCHLD: its default action is to ignore it, but Linux discards an ignored signal only
/// when the thread it is sent to (the one that forked the child) does not block it. A worker
/// that is spawning another child blocks every signal around the fork; a child exiting at that
/// moment leaves SIGCHLD pending on the process, and the kernel wakes some other thread for
/// it. A socket read with a timeout (`SO_RCVTIMEO`, the kick listener's, ureq's) is never
/// restarted: it fails with EINTR. Under a flood of short tasks that happened every few
/// seconds. Blocked in every thread, SIGCHLD wakes none; children are reaped with `waitid`,
/// which needs no signal.
pub fn block() -> io::Result<()> {
    let set = signal_set_with(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    // SAFETY: `set` is a valid, initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// TERM, INT and HUP as a source for a poll thread: each one read becomes a `Signal` on `tx`.
/// Call `block` first: a signal that some thread does not block may go to that thread
/// instead of the descriptor.
pub fn source(tx: Sender<Signal>) -> io::Result<SignalSource> {
    let set = signal_set();
    // SAFETY: a new signalfd (-1) for an initialised set; the result is checked.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(SignalSource { fd, tx })
}

/// The signalfd and where its signals go.
pub struct SignalSource {
    fd: OwnedFd,
    tx: Sender<Signal>,
}

impl Source for SignalSource {
    fn fds(&self, fds: &mut Vec<libc::pollfd>) {
        fds.push(pollfd(self.fd.as_raw_fd(), libc::POLLIN));
    }

    fn ready(&mut self, _: &[libc::pollfd], _: Instant) -> Keep {
        loop {
            // SAFETY: an all-zero signalfd_siginfo is a valid value of the plain C struct.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most one `signalfd_siginfo` into one.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                // EAGAIN: all taken (EINTR cannot happen with these signals blocked).
                return Keep::Polling;
            }
            let msg = if info.ssi_signo == libc::SIGHUP as u32 {
                Signal::Reload
            } else {
                Signal::Terminate
            };
            if self.tx.send(msg).is_err() {
                return Keep::Done;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_descriptor() {
        // Blocked in this test thread only; the signal is sent to this thread, so no other
        // thread of the test process can take it.
        let set = signal_set_with(&[libc::SIGHUP]);
        // SAFETY: `set` is a valid, initialised signal set.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut source = source(tx).expect("signalfd");
        // SAFETY: a signal to the calling thread, which blocks it.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        let mut fds = Vec::new();
        source.fds(&mut fds);
        assert_eq!(source.ready(&fds, Instant::now()), Keep::Polling);
        assert_eq!(rx.try_recv(), Ok(Signal::Reload));
        drop(rx);
        // SAFETY: as above.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        assert_eq!(
            source.ready(&fds, Instant::now()),
            Keep::Done,
            "nobody listens"
        );
        // SAFETY: as above; nothing is pending any more.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}
