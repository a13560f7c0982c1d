//! Watches the local task directory with inotify and says, once the changes have settled,
//! that it should be read again. It never reads a task file and never decides what changed:
//! the control loop re-reads the directory (`LocalSource::scan`) when told.
//!
//! It is a source of the local agent's poll thread (`pollthread`), which waits on the inotify
//! descriptor with no timeout, so an agent whose task directory does not change never wakes.
//! After an event that may concern a task file it asks for a deadline until `SETTLE` has
//! passed without another one (at most `MAX_SETTLE` after the first), then calls its `notify`
//! once: an editor's temp file, rename and chmod become one re-read, and a half-written file
//! is not read in between.
//!
//! Watched: the directory's entries (created, deleted, written and closed, renamed in or out,
//! permissions changed) for names ending in `.json`, the directory itself (its permissions,
//! its deletion or rename), and the parent directory for entries of the directory's own name,
//! so a directory that is replaced (`mv tasks.new tasks`, a symlink swapped) is watched again
//! and re-read. Changes further up (an ancestor's permissions) are not seen: SIGHUP re-reads.

use crate::pollthread::{pollfd, Keep, Source};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Quiet time after the last event before the directory is re-read.
pub const SETTLE: Duration = Duration::from_millis(500);

/// A directory that never stays quiet is still re-read this long after the first event.
pub const MAX_SETTLE: Duration = Duration::from_secs(5);

/// The watcher, a source for a poll thread.
pub struct DirWatch {
    watcher: Watcher,
    notify: Box<dyn FnMut() -> bool + Send>,
    /// The first unsettled event; `None` while nothing is pending.
    first: Option<Instant>,
    last: Instant,
}

const DIR_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

const PARENT_MASK: u32 =
    libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO | libc::IN_ONLYDIR;

struct Watcher {
    fd: OwnedFd,
    dir: PathBuf,
    /// The directory's own name in its parent, to pick the parent's events about it.
    name: Option<Vec<u8>>,
    dir_wd: Option<i32>,
    parent_wd: Option<i32>,
}

/// Starts watching `dir`. `notify` is called (on the poll thread) each time changes have
/// settled; when it returns false the watch ends. Fails where inotify is missing or the
/// watch cannot be set (a missing directory); the caller then relies on SIGHUP.
pub fn watch(dir: &Path, notify: impl FnMut() -> bool + Send + 'static) -> io::Result<DirWatch> {
    // SAFETY: inotify_init1 with valid flags; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        other => other.map(Path::to_path_buf),
    };
    let mut w = Watcher {
        fd,
        dir: dir.to_path_buf(),
        name: dir.file_name().map(|n| n.as_bytes().to_vec()),
        dir_wd: None,
        parent_wd: None,
    };
    w.dir_wd = Some(add_watch(&w.fd, &w.dir, DIR_MASK)?);
    if let (Some(parent), Some(_)) = (&parent, &w.name) {
        // Without it a replaced directory is not followed; the directory itself still is.
        match add_watch(&w.fd, parent, PARENT_MASK) {
            Ok(wd) => w.parent_wd = Some(wd),
            Err(e) => log::warn!(
                "phase=watch cannot watch {} ({e}); a replaced task directory needs SIGHUP",
                parent.display()
            ),
        }
    }
    Ok(DirWatch {
        watcher: w,
        notify: Box::new(notify),
        first: None,
        last: Instant::now(),
    })
}

impl Source for DirWatch {
    fn fds(&self, fds: &mut Vec<libc::pollfd>) {
        fds.push(pollfd(self.watcher.fd.as_raw_fd(), libc::POLLIN));
    }

    fn deadline(&self) -> Option<Instant> {
        self.first
            .map(|first| (self.last + SETTLE).min(first + MAX_SETTLE))
    }

    fn ready(&mut self, fds: &[libc::pollfd], now: Instant) -> Keep {
        if fds[0].revents != 0 && self.watcher.drain() {
            self.last = now;
            self.first.get_or_insert(now);
        }
        if self.deadline().is_some_and(|d| d <= now) {
            self.first = None;
            if !(self.notify)() {
                return Keep::Done;
            }
        }
        Keep::Polling
    }
}

fn add_watch(fd: &OwnedFd, path: &Path, mask: u32) -> io::Result<i32> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `fd` is an inotify descriptor and `c` a valid C string.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// One inotify event, as far as the watcher cares.
#[derive(Debug, PartialEq, Eq)]
struct RawEvent {
    wd: i32,
    mask: u32,
    name: Vec<u8>,
}

/// Splits a buffer `read` from an inotify descriptor into its events.
fn parse_events(buf: &[u8]) -> Vec<RawEvent> {
    const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
    let mut events = Vec::new();
    let mut at = 0;
    while at + HEAD <= buf.len() {
        let field = |i: usize| {
            let b = &buf[at + 4 * i..at + 4 * i + 4];
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        };
        let (wd, mask, len) = (field(0) as i32, field(1), field(3) as usize);
        let end = (at + HEAD + len).min(buf.len());
        let raw = &buf[at + HEAD..end];
        // The name is NUL-padded to an alignment boundary.
        let name = raw.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        events.push(RawEvent { wd, mask, name });
        at = end;
    }
    events
}

/// Whether a name in the task directory may be (or have been) a task file.
fn task_file_name(name: &[u8]) -> bool {
    name.ends_with(b".json")
}

impl Watcher {
    /// Reads every queued event; true when one of them may change what the directory holds.
    fn drain(&mut self) -> bool {
        let mut relevant = false;
        // Aligned for `inotify_event`; room for many events with names.
        let mut buf = vec![0u32; 4096];
        loop {
            let bytes = buf.len() * 4;
            // SAFETY: `buf` is a valid, writable buffer of `bytes` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => {
                        log::warn!("phase=watch cannot read inotify events: {e}");
                        break;
                    }
                }
            }
            if n == 0 {
                break;
            }
            // SAFETY: the kernel wrote `n` bytes into `buf`.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            for event in parse_events(bytes) {
                relevant |= self.handle(&event);
            }
        }
        relevant
    }

    fn handle(&mut self, e: &RawEvent) -> bool {
        if e.mask & libc::IN_Q_OVERFLOW != 0 {
            return true;
        }
        if Some(e.wd) == self.parent_wd {
            if Some(&e.name) != self.name.as_ref() {
                return false;
            }
            if e.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                self.rewatch();
            }
            return true;
        }
        if Some(e.wd) != self.dir_wd {
            return false;
        }
        if e.mask & libc::IN_IGNORED != 0 {
            // The directory went (deleted, or its file system unmounted): the watch is gone.
            self.dir_wd = None;
            self.rewatch();
            return true;
        }
        if e.mask & libc::IN_MOVE_SELF != 0 {
            // Renamed away: what now sits at the path, if anything, is another directory.
            if let Some(wd) = self.dir_wd.take() {
                // SAFETY: `wd` is a watch of this inotify descriptor.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
            }
            self.rewatch();
            return true;
        }
        if e.name.is_empty() {
            // The directory itself: its permissions, its deletion.
            return true;
        }
        task_file_name(&e.name)
    }

    /// Watches whatever directory is now at the path; if none, the parent's watch will tell
    /// when one appears.
    fn rewatch(&mut self) {
        match add_watch(&self.fd, &self.dir, DIR_MASK) {
            Ok(wd) => {
                if self.dir_wd != Some(wd) {
                    log::info!(
                        "phase=watch watching {} again",
                        crate::escape::for_terminal(&self.dir.display().to_string())
                    );
                }
                self.dir_wd = Some(wd);
            }
            Err(e) => {
                self.dir_wd = None;
                log::warn!(
                    "phase=watch task directory {} is gone ({e}); watching for it to come back",
                    crate::escape::for_terminal(&self.dir.display().to_string())
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn name(s: &str) -> Vec<u8> {
        OsStr::new(s).as_bytes().to_vec()
    }

    fn raw(wd: i32, mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        if !padded.is_empty() {
            padded.push(0);
            while padded.len() % 16 != 0 {
                padded.push(0);
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(&wd.to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(padded.len() as u32).to_ne_bytes());
        b.extend_from_slice(&padded);
        b
    }

    #[test]
    fn events_are_split_and_names_lose_their_padding() {
        let mut buf = raw(1, libc::IN_CREATE, "a.json");
        buf.extend(raw(2, libc::IN_ATTRIB, ""));
        buf.extend(raw(1, libc::IN_MOVED_TO, "a-much-longer-name.json"));
        let events = parse_events(&buf);
        assert_eq!(
            events,
            vec![
                RawEvent {
                    wd: 1,
                    mask: libc::IN_CREATE,
                    name: name("a.json")
                },
                RawEvent {
                    wd: 2,
                    mask: libc::IN_ATTRIB,
                    name: Vec::new()
                },
                RawEvent {
                    wd: 1,
                    mask: libc::IN_MOVED_TO,
                    name: name("a-much-longer-name.json")
                },
            ]
        );
        // A cut-off tail is not read past the buffer.
        assert_eq!(parse_events(&buf[..10]), Vec::new());
    }

    #[test]
    fn only_json_names_count() {
        assert!(task_file_name(b"backup.json"));
        assert!(task_file_name(b".backup.json"));
        assert!(!task_file_name(b".backup.json.swp"));
        assert!(!task_file_name(b"backup.json~"));
        assert!(!task_file_name(b"4913"));
    }
}
