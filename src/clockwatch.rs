//! Notices when the wall clock is set (NTP stepping the clock of a board with no RTC, an
//! operator's `date -s`): a Linux `timerfd` armed with `TFD_TIMER_CANCEL_ON_SET` wakes one
//! small thread only at such a step, which tells the timer to recompute its sleep. It never
//! reads or changes the clock's value and costs no wakeup while the clock runs normally.

use crate::pollthread::PollThread;
use std::io;

use crossbeam_channel::{bounded, Receiver};

/// A running watcher; dropping it ends the thread (see `PollThread`).
pub struct ClockWatch {
    _thread: PollThread,
}

/// Starts the watcher; each message on the returned channel means "the wall clock was set".
/// Fails where `timerfd` is missing (not Linux, old kernels); the caller then falls back to
/// capped sleeps.
#[cfg(target_os = "linux")]
pub fn spawn() -> io::Result<(ClockWatch, Receiver<()>)> {
    use std::os::unix::io::{FromRawFd, OwnedFd};

    // SAFETY: timerfd_create with valid flags; the result is checked.
    let tfd = unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_CLOEXEC) };
    if tfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tfd` is a fresh descriptor that nothing else owns.
    let tfd = unsafe { OwnedFd::from_raw_fd(tfd) };
    arm(&tfd)?;
    let (tx, rx) = bounded(1);
    let thread = PollThread::spawn("clockwatch", move |read_end| {
        use std::os::unix::io::AsRawFd;
        loop {
            let mut pfd = [
                libc::pollfd {
                    fd: tfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: read_end.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `pfd` holds two valid pollfd entries; -1 waits without a timeout (the
            // pipe's hang-up ends the wait at shutdown).
            let rc = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
            if rc < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::warn!("phase=clock poll failed; wall-clock steps are no longer watched");
                return;
            }
            if pfd[1].revents != 0 {
                return; // the timer is gone
            }
            if pfd[0].revents != 0 {
                let mut buf = [0u8; 8];
                // SAFETY: reading at most 8 bytes into an 8-byte buffer.
                let n = unsafe { libc::read(tfd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECANCELED) {
                    log::info!("phase=clock the wall clock was set; re-arming the schedules");
                    // Full means a notice is already pending: one is enough.
                    let _ = tx.try_send(());
                }
                if arm(&tfd).is_err() {
                    log::warn!("phase=clock cannot re-arm the clock watch");
                    return;
                }
            }
        }
    })?;
    Ok((ClockWatch { _thread: thread }, rx))
}

#[cfg(not(target_os = "linux"))]
pub fn spawn() -> io::Result<(ClockWatch, Receiver<()>)> {
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

    #[test]
    fn the_watcher_ends_when_dropped_and_is_silent_meanwhile() {
        let (watch, notices) = spawn().expect("timerfd on Linux");
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
