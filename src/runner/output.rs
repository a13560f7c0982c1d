//! `OutputRing` (the first bytes of a child's output plus a ring of its last bytes, spec §4.8) and
//! the reader thread that fills it from a pipe; it must never hold more than its quota in memory.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

/// Bytes kept from the start of the output and sent as running output (`defaultQuotoPre`).
pub const PRE_QUOTA: usize = 6000;
/// The smallest total quota (`defaultQuoto`); a task's `logQuota` can only raise it.
pub const MIN_TOTAL_QUOTA: usize = 12000;
/// Size of one `read()` from the pipe.
const CHUNK: usize = 32 * 1024;

/// The captured output of one invocation: a head of `pre_quota` bytes, then a ring of the last
/// `post_quota` bytes; everything in between is only counted (`dropped`).
#[derive(Debug)]
pub struct OutputRing {
    pre_quota: usize,
    pre: Vec<u8>,
    /// How much of `pre` `read_pre`/`read_all` already returned.
    pre_read: usize,
    post: Tail,
    /// Every byte ever put.
    total: u64,
}

impl OutputRing {
    pub fn new(pre_quota: usize, post_quota: usize) -> OutputRing {
        OutputRing {
            pre_quota,
            pre: Vec::new(),
            pre_read: 0,
            post: Tail::new(post_quota),
            total: 0,
        }
    }

    /// The quotas of spec §4.8: pre 6000, post `max(log_quota, 12000) - 6000`, with the total
    /// clamped to `max_total` (the reference has no upper bound: a `logQuota` of 4e9 held
    /// gigabytes of output in memory).
    pub fn for_log_quota(log_quota: i64, max_total: usize) -> OutputRing {
        let total = usize::try_from(log_quota)
            .unwrap_or(0)
            .min(max_total)
            .max(MIN_TOTAL_QUOTA);
        OutputRing::new(PRE_QUOTA, total - PRE_QUOTA)
    }

    pub fn put(&mut self, mut data: &[u8]) {
        self.total = self.total.saturating_add(data.len() as u64);
        if self.pre.len() < self.pre_quota {
            let n = (self.pre_quota - self.pre.len()).min(data.len());
            self.pre.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        self.post.put(data);
    }

    /// The part of the head not returned yet; each byte is returned at most once.
    pub fn read_pre(&mut self) -> Vec<u8> {
        let out = self.pre[self.pre_read..].to_vec();
        self.pre_read = self.pre.len();
        out
    }

    /// The unread head followed by the ring's content; each byte is returned at most once.
    pub fn read_all(&mut self) -> Vec<u8> {
        let mut out = self.read_pre();
        self.post.take_into(&mut out);
        out
    }

    /// Bytes neither in the head nor in the ring: `max(0, total - pre - post)`.
    pub fn dropped(&self) -> u64 {
        let kept = (self.pre_quota as u64).saturating_add(self.post.cap as u64);
        self.total.saturating_sub(kept)
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

/// A ring keeping the last `cap` bytes put. Invariant: while `buf` is not full, `start == 0`.
#[derive(Debug)]
struct Tail {
    cap: usize,
    buf: Vec<u8>,
    /// Index of the oldest byte once `buf` is full.
    start: usize,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail {
            cap,
            buf: Vec::new(),
            start: 0,
        }
    }

    fn put(&mut self, mut data: &[u8]) {
        if self.cap == 0 || data.is_empty() {
            return;
        }
        if data.len() > self.cap {
            data = &data[data.len() - self.cap..];
        }
        if self.buf.len() < self.cap {
            let n = (self.cap - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let n = (self.cap - self.start).min(data.len());
            self.buf[self.start..self.start + n].copy_from_slice(&data[..n]);
            self.start = (self.start + n) % self.cap;
            data = &data[n..];
        }
    }

    /// Appends the content, oldest first, to `out` and empties the ring.
    fn take_into(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf[self.start..]);
        out.extend_from_slice(&self.buf[..self.start]);
        self.buf.clear();
        self.start = 0;
    }
}

/// The thread that copies a pipe into a shared `OutputRing` until EOF, or until `finish` gives
/// up on it.
pub struct Reader {
    /// Disconnected when the thread ends (it never sends).
    done: Receiver<()>,
    handle: JoinHandle<()>,
    /// Closing it (dropping) wakes the thread's `poll` and ends it.
    stop: OwnedFd,
}

impl Reader {
    /// Starts the reader. The thread ends at EOF, i.e. when every write end of the pipe is
    /// closed (the child and anything it left behind), on a read error, or when `finish`
    /// stops it. `log_tag` prefixes the thread's log lines (task, invoke version, phase).
    /// With `lines_to_log` (the prefix of each line, e.g. `task=t invoke_version=1`), every
    /// line the task prints also goes to the agent's log as it arrives (`logOutput`).
    pub fn spawn(
        pipe: File,
        ring: Arc<Mutex<OutputRing>>,
        log_tag: String,
        lines_to_log: Option<String>,
    ) -> io::Result<Reader> {
        let (stop_read, stop) = crate::runner::spawn::output_pipe()?;
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let handle = thread::Builder::new()
            .name("runner-output".into())
            .spawn(move || {
                let _done = done_tx;
                let mut lines = lines_to_log.map(LineLog::new);
                copy_until_eof_or_stop(pipe, &stop_read, &ring, &log_tag, lines.as_mut());
                if let Some(lines) = lines.as_mut() {
                    lines.finish();
                }
            })?;
        Ok(Reader { done, handle, stop })
    }

    /// Waits for EOF until `deadline`. Returns true when the whole output was read; false when
    /// something (a background process the task left) still holds the pipe open: the thread is
    /// then stopped and joined, so no reader outlives its invocation, and whatever the
    /// lingering process writes next finds the pipe closed.
    pub fn finish(self, deadline: Instant) -> bool {
        let complete = match self.done.recv_deadline(deadline) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        // Closing the stop pipe wakes the thread's poll; it ends at once.
        drop(self.stop);
        let _ = self.handle.join();
        complete
    }
}

/// What woke a reader blocked on its data and its stop pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The data descriptor is readable or hung up: read it.
    Data,
    /// The stop pipe is closed (or readable): end now, even if data is waiting.
    Stop,
}

/// Blocks until `data` can be read or `stop` is closed, retrying EINTR. Shared by the task
/// output reader and the session shell's pty pump.
pub fn wait_data_or_stop(data: RawFd, stop: RawFd) -> io::Result<Wake> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: data,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the call's duration.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Stop);
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Data);
        }
    }
}

fn copy_until_eof_or_stop(
    mut pipe: File,
    stop: &File,
    ring: &Mutex<OutputRing>,
    log_tag: &str,
    mut lines: Option<&mut LineLog>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match wait_data_or_stop(pipe.as_raw_fd(), stop.as_raw_fd()) {
            Ok(Wake::Data) => {}
            Ok(Wake::Stop) => return,
            Err(e) => {
                log::warn!("{log_tag} output pipe poll failed: {e}");
                return;
            }
        }
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                ring.lock().put(&buf[..n]);
                if let Some(lines) = lines.as_deref_mut() {
                    lines.feed(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("{log_tag} output pipe read failed: {e}");
                return;
            }
        }
    }
}

/// A task's output line is logged up to this many bytes, then marked ` [cut]`; the rest of
/// the line is skipped. So a task printing a gigabyte on one line costs this much memory.
pub const MAX_LOGGED_LINE: usize = 1024;

/// Splits output into lines for the agent's log (`logOutput`), like supercronic does: each
/// line as one record, prefixed with the task and invoke version. Bounded by
/// `MAX_LOGGED_LINE`; the logger escapes control characters.
pub struct LineLog {
    prefix: String,
    line: Vec<u8>,
    /// The current line passed the limit: the rest of it is dropped.
    cut: bool,
}

impl LineLog {
    pub fn new(prefix: String) -> LineLog {
        LineLog {
            prefix,
            line: Vec::new(),
            cut: false,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.take(&data[..i]);
                    self.emit();
                    data = &data[i + 1..];
                }
                None => {
                    self.take(data);
                    return;
                }
            }
        }
    }

    /// The last line, when the output did not end in a newline.
    pub fn finish(&mut self) {
        if !self.line.is_empty() || self.cut {
            self.emit();
        }
    }

    fn take(&mut self, part: &[u8]) {
        if self.cut {
            return;
        }
        let room = MAX_LOGGED_LINE - self.line.len();
        if part.len() > room {
            self.line.extend_from_slice(&part[..room]);
            self.cut = true;
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let cut = if self.cut { " [cut]" } else { "" };
        log::info!("{} phase=output | {text}{cut}", self.prefix);
        self.line.clear();
        self.cut = false;
    }

    #[cfg(test)]
    fn pending(&self) -> usize {
        self.line.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// Spec §10.6 TestOutputBuffer: (pre, post, written) -> dropped, and the content rules.
    fn check(pre: usize, post: usize, written: usize, dropped: u64, read_pre_first: bool) {
        let data = pattern(written);
        let mut ring = OutputRing::new(pre, post);
        assert!(ring.read_pre().is_empty());
        assert!(ring.read_all().is_empty());
        assert_eq!(ring.dropped(), 0);
        // Several puts of uneven sizes, like pipe reads.
        for chunk in data.chunks(7) {
            ring.put(chunk);
        }
        assert_eq!(
            ring.dropped(),
            dropped,
            "pre={pre} post={post} written={written}"
        );
        let head = if read_pre_first {
            ring.read_pre()
        } else {
            Vec::new()
        };
        let rest = ring.read_all();
        let mut got = head.clone();
        got.extend_from_slice(&rest);
        if read_pre_first {
            assert_eq!(head, data[..written.min(pre)].to_vec());
        }
        let mut want = data[..written.min(pre)].to_vec();
        if written > pre {
            let after = &data[pre..];
            if written <= pre + post {
                want.extend_from_slice(after);
            } else {
                want.extend_from_slice(&data[written - post..]);
            }
        }
        assert_eq!(got, want, "pre={pre} post={post} written={written}");
        assert!(ring.read_pre().is_empty());
        assert!(ring.read_all().is_empty());
    }

    #[test]
    fn output_buffer_table() {
        let table: &[(usize, usize, usize, u64)] = &[
            (0, 0, 300, 300),
            (600, 0, 300, 0),
            (600, 0, 600, 0),
            (600, 0, 1200, 600),
            (0, 600, 300, 0),
            (0, 600, 600, 0),
            (0, 600, 1200, 600),
            (600, 1200, 300, 0),
            (600, 1200, 600, 0),
            (600, 1200, 800, 0),
            (600, 1200, 1800, 0),
            (600, 1200, 3000, 1200),
        ];
        for &(pre, post, written, dropped) in table {
            check(pre, post, written, dropped, true);
            check(pre, post, written, dropped, false);
        }
    }

    #[test]
    fn ring_keeps_last_bytes_for_every_quota() {
        // A small deterministic generator stands in for random sizes 0..99.
        let mut seed: u32 = 12345;
        let mut next = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as usize % 100
        };
        for cap in 1..1000 {
            let mut tail = Tail::new(cap);
            let mut all = Vec::new();
            for round in 0..12 {
                let n = if round % 4 == 3 { cap + next() } else { next() };
                let chunk: Vec<u8> = (0..n).map(|i| (all.len() + i) as u8).collect();
                tail.put(&chunk);
                all.extend_from_slice(&chunk);
                if round == 6 {
                    // Taking empties the ring; the rule then restarts from the next byte.
                    let mut got = Vec::new();
                    tail.take_into(&mut got);
                    assert_eq!(
                        got,
                        all[all.len() - all.len().min(cap)..].to_vec(),
                        "cap={cap}"
                    );
                    all.clear();
                }
            }
            let mut got = Vec::new();
            tail.take_into(&mut got);
            assert_eq!(
                got,
                all[all.len() - all.len().min(cap)..].to_vec(),
                "cap={cap}"
            );
            assert!(tail.buf.len() <= cap);
        }
    }

    #[test]
    fn quotas_follow_log_quota() {
        let mut ring = OutputRing::for_log_quota(0, usize::MAX);
        ring.put(&pattern(20_000));
        assert_eq!(ring.dropped(), 8000);
        let mut ring = OutputRing::for_log_quota(20_000, usize::MAX);
        ring.put(&pattern(20_000));
        assert_eq!(ring.dropped(), 0);
        let mut ring = OutputRing::for_log_quota(-5, usize::MAX);
        ring.put(&pattern(12_001));
        assert_eq!(ring.dropped(), 1);
    }

    #[test]
    fn a_huge_log_quota_is_clamped_to_the_maximum() {
        let mut ring = OutputRing::for_log_quota(4_000_000_000, 100_000);
        ring.put(&pattern(300_000));
        assert_eq!(ring.dropped(), 200_000);
        assert_eq!(ring.read_all().len(), 100_000);
        // The minimum of the spec holds even under a smaller maximum.
        let mut ring = OutputRing::for_log_quota(4_000_000_000, 10);
        ring.put(&pattern(12_000));
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn memory_is_bounded_by_the_quota() {
        let mut ring = OutputRing::new(10, 20);
        let block = vec![7u8; 4096];
        for _ in 0..1000 {
            ring.put(&block);
        }
        assert!(ring.pre.capacity() <= 4096 && ring.post.buf.capacity() <= 4096);
        assert_eq!(ring.total(), 4_096_000);
        assert_eq!(ring.read_all().len(), 30);
    }

    #[test]
    fn reader_copies_pipe_until_eof() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors were just created and are owned here.
        let (r, mut w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let ring = Arc::new(Mutex::new(OutputRing::new(5, 5)));
        let reader =
            Reader::spawn(r, ring.clone(), "test-reader".into(), None).expect("spawn reader");
        use std::io::Write;
        w.write_all(b"hello, world").expect("write");
        drop(w);
        assert!(reader.finish(Instant::now() + std::time::Duration::from_secs(30)));
        let mut ring = ring.lock();
        assert_eq!(ring.read_all(), b"helloworld".to_vec());
        assert_eq!(ring.dropped(), 2);
    }

    #[test]
    fn finish_stops_a_reader_whose_pipe_a_lingering_process_holds() {
        let (read, write) = crate::runner::spawn::output_pipe().expect("pipe");
        let mut write = File::from(write);
        let ring = Arc::new(Mutex::new(OutputRing::new(100, 100)));
        let reader = Reader::spawn(read, ring, "test".into(), None).expect("spawn");
        // The write end stays open (as a background child would keep it): no EOF comes.
        let complete = reader.finish(Instant::now() + std::time::Duration::from_millis(200));
        assert!(!complete);
        // The reader is gone and its end closed: a lingering writer finds a broken pipe.
        let err = std::io::Write::write_all(&mut write, b"after").expect_err("pipe closed");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn logged_lines_are_bounded_and_cut_lines_marked() {
        let mut l = LineLog::new("task=t invoke_version=1".into());
        l.feed(b"one\ntw");
        assert_eq!(l.pending(), 2);
        l.feed(b"o\n");
        assert_eq!(l.pending(), 0);
        // A line far past the limit keeps only MAX_LOGGED_LINE bytes in memory.
        let long = vec![b'x'; MAX_LOGGED_LINE * 50];
        l.feed(&long);
        assert_eq!(l.pending(), MAX_LOGGED_LINE);
        assert!(l.cut);
        l.feed(b"tail\nnext");
        assert!(!l.cut);
        assert_eq!(l.pending(), 4);
        l.finish();
        assert_eq!(l.pending(), 0);
    }
}
