//! Notices when the wall clock is set (NTP stepping the clock of a board with no RTC, an
//! operator's `date -s`): a Linux `timerfd` armed with `TFD_TIMER_CANCEL_ON_SET`, a source of
//! the agent's poll thread, becomes readable only at such a step, and the timer is told to
//! recompute its sleep. It never reads or changes the clock's value and costs no wakeup while
//! the clock runs normally.

use crate::pollthread::{pollfd, Keep, Source};
use std::io;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

/// The watch as a source for a poll thread; each message on the returned channel means "the
/// wall clock was set" (give it to `timer::spawn`). Fails where `timerfd` is missing (not
/// Linux, old kernels); the timer then falls back to capped sleeps.
#[cfg(target_os = "linux")]
pub fn source() -> io::Result<(ClockSource, Receiver<()>)> {
    use std::os::unix::io::{FromRawFd, OwnedFd};

    // SAFETY: timerfd_create with valid flags; the result is checked.
    let tfd = unsafe {
        libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
    };
    if tfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tfd` is a fresh descriptor that nothing else owns.
    let tfd = unsafe { OwnedFd::from_raw_fd(tfd) };
    arm(&tfd)?;
    let (tx, rx) = bounded(1);
    Ok((ClockSource { tfd, tx }, rx))
}

/// The timerfd and where its notices go.
#[cfg(target_os = "linux")]
pub struct ClockSource {
    tfd: std::os::unix::io::OwnedFd,
    tx: Sender<()>,
}

#[cfg(target_os = "linux")]
impl Source for ClockSource {
    fn fds(&self, fds: &mut Vec<libc::pollfd>) {
        use std::os::unix::io::AsRawFd;
        fds.push(pollfd(self.tfd.as_raw_fd(), libc::POLLIN));
    }

    fn ready(&mut self, _: &[libc::pollfd], _: Instant) -> Keep {
        use std::os::unix::io::AsRawFd;
        let mut buf = [0u8; 8];
        // SAFETY: reading at most 8 bytes into an 8-byte buffer (non-blocking).
        let n = unsafe { libc::read(self.tfd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECANCELED) {
            log::info!("phase=clock the wall clock was set; re-arming the schedules");
            // Full means a notice is already pending: one is enough.
            if let Err(crossbeam_channel::TrySendError::Disconnected(())) = self.tx.try_send(()) {
                return Keep::Done; // the timer is gone
            }
        }
        if arm(&self.tfd).is_err() {
            log::warn!("phase=clock cannot re-arm the clock watch");
            return Keep::Done;
        }
        Keep::Polling
    }
}

#[cfg(not(target_os = "linux"))]
pub fn source() -> io::Result<(std::convert::Infallible, Receiver<()>)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "timerfd is Linux only",
    ))
}

/// Arms the timer at an absolute time far in the future: it never expires, it only reports
/// clock changes (`ECANCELED`).
#[cfg(target_os = "linux")]
fn arm(tfd: &std::os::unix::io::OwnedFd) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        // 2^40 s: tens of thousands of years ahead, well inside time_t.
        it_value: libc::timespec {
            tv_sec: 1 << 40,
            tv_nsec: 0,
        },
    };
    let flags = libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET;
    // SAFETY: valid descriptor and spec; the old value is not wanted.
    let rc = unsafe { libc::timerfd_settime(tfd.as_raw_fd(), flags, &spec, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pollthread::PollThread;

    #[test]
    fn the_watcher_ends_when_dropped_and_is_silent_meanwhile() {
        let (source, notices) = source().expect("timerfd on Linux");
        let watch = PollThread::spawn("clockwatch-test", vec![Box::new(source)]).expect("thread");
        // Nobody sets the clock in a test (that would need CAP_SYS_TIME and disturb the host),
        // so no notice may be pending.
        assert!(notices.try_recv().is_err());
        drop(watch); // joins: hangs here if the hang-up did not end the thread
        assert!(
            notices.recv().is_err(),
            "the sender went away with the thread"
        );
    }
}
