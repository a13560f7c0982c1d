//! A thread that blocks in `poll` on descriptors of its own and on the read end of a wake
//! pipe, for the watchers that must sleep without a timeout (`clockwatch`, the task-directory
//! watcher). It never decides what the thread does; it only starts it and ends it.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::thread;

/// The running thread. Dropping it ends the thread: closing the pipe's write end wakes the
/// thread's `poll` with a hang-up on the read end (the body must then return), and `drop`
/// joins it.
pub struct PollThread {
    wake: Option<File>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PollThread {
    /// Starts `body` on a thread named `name`, handing it the wake pipe's read end (close on
    /// exec, like the write end the handle keeps).
    pub fn spawn(
        name: &str,
        body: impl FnOnce(OwnedFd) + Send + 'static,
    ) -> io::Result<PollThread> {
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
            .spawn(move || body(read_end))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn dropping_the_handle_wakes_and_joins_the_thread() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let t = PollThread::spawn("polltest", move |wake| {
            let mut pfd = libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; no timeout: only the hang-up ends the wait.
            unsafe { libc::poll(&mut pfd, 1, -1) };
            tx.send(pfd.revents & libc::POLLHUP != 0).expect("send");
        })
        .expect("spawn");
        drop(t);
        assert_eq!(rx.try_recv(), Ok(true), "ended by the hang-up, and joined");
    }
}
