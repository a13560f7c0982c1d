//! The signal thread: blocks TERM, INT and HUP in every thread and turns them into typed
//! `Signal` messages with `sigwait`. It never handles a signal asynchronously.

use std::io;
use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: shut down.
    Terminate,
    /// SIGHUP: re-read the local tasks.
    Reload,
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset only adds valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the signals in the calling thread. Call it in `main` before any thread is spawned,
/// so every thread inherits the mask and only the signal thread receives them. (std resets the
/// mask in spawned children.)
pub fn block() -> io::Result<()> {
    let set = signal_set();
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
