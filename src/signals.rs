//! The signal thread: blocks TERM, INT and HUP in every thread and turns them into typed
//! `Signal` messages with `sigwait`; blocks SIGCHLD so that no child's exit interrupts a
//! blocking call. It never handles a signal asynchronously.

use std::io;
use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};

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

/// The signals the signal thread waits for.
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

/// Blocks TERM, INT and HUP (taken by the signal thread's `sigwait`) and SIGCHLD (never taken)
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

/// Spawns the signal thread. It lives until the process exits (it is never joined: `sigwait`
/// cannot be interrupted, and the thread holds nothing that needs cleaning up).
pub fn spawn() -> io::Result<Receiver<Signal>> {
    let (tx, rx) = unbounded();
    spawn_into(tx)?;
    Ok(rx)
}

/// Like `spawn`, sending into a channel the caller owns, so that other sources of the same
/// messages (the server's `kick_vm agent stop`) can share it.
pub fn spawn_into(tx: Sender<Signal>) -> io::Result<()> {
    thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let set = signal_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised and `sig` is a valid out pointer.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                let msg = if sig == libc::SIGHUP {
                    Signal::Reload
                } else {
                    Signal::Terminate
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
