//! Where the agent's log lines go: stderr (journald, runit, a terminal) or a file that it
//! rotates by size. It formats each record as `<RFC 3339 UTC time> [LEVEL] message` and must
//! never read config files or decide what gets logged; it only carries finished lines to
//! their sink.
//!
//! A record reaches the sink in one `write` (stderr) or one `O_APPEND` write (file), after
//! the whole record is formatted, so two threads never interleave inside a line and a
//! rotation never splits a record across two files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{LevelFilter, Log, Metadata, Record};

/// Where the packaged init scripts (OpenRC, SysV, busybox) put the log file.
pub const DEFAULT_LOG_FILE: &str = "/var/log/assistd/assistd.log";
/// Default size at which the log file is rotated (`log_max_bytes`).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated files kept beside the live one (`log_keep`).
pub const DEFAULT_LOG_KEEP: usize = 3;

/// A record that never ends in a newline is written out anyway once it reaches this size, cut
/// at its last newline, so a misbehaving caller cannot grow the buffer without bound.
const MAX_PENDING: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error: what systemd (journald), runit (svlogd) and a terminal read.
    Stderr,
    /// A file rotated by size: `path` → `path.1` → … → `path.keep`. `max_bytes == 0` never
    /// rotates (leave it to logrotate); `keep == 0` truncates instead of keeping old files.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub level: LevelFilter,
    pub target: LogTarget,
}

/// Installs the process-wide logger. Opening the log file is the only thing that can fail.
///
/// A process has one logger. If one is set already (a second agent in one test process),
/// that one is kept and this returns `Ok(())` without changing the level.
pub fn init(cfg: &LogConfig) -> io::Result<()> {
    let logger = build(cfg)?;
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(cfg.level);
    }
    Ok(())
}

/// The logger `init` installs, without installing it: tests and tools can log through it
/// directly.
pub fn build(cfg: &LogConfig) -> io::Result<Box<dyn Log>> {
    Ok(match &cfg.target {
        LogTarget::Stderr => Box::new(Logger::new(cfg.level, io::stderr())),
        LogTarget::File {
            path,
            max_bytes,
            keep,
        } => Box::new(Logger::new(
            cfg.level,
            RotatingFile::open(path, *max_bytes, *keep)?,
        )),
    })
}

/// Formats a record whole under its lock (`<time> [LEVEL] message`, the time in UTC with
/// microseconds), then flushes it: the flush is the record boundary for `RecordWriter`.
/// (simplelog did this before, with the `time` crate for the stamp; chrono, already linked,
/// writes the same RFC 3339 form, and the binary is about 30 KiB smaller without both.)
struct Logger<S: LineSink> {
    level: LevelFilter,
    writer: parking_lot::Mutex<RecordWriter<S>>,
}

impl<S: LineSink> Logger<S> {
    fn new(level: LevelFilter, sink: S) -> Logger<S> {
        Logger {
            level,
            writer: parking_lot::Mutex::new(RecordWriter::new(sink)),
        }
    }
}

impl<S: LineSink + Send> Log for Logger<S> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut w = self.writer.lock();
        // A failed write cannot be logged; the record is dropped, as every logger does.
        let _ = writeln!(w, "{now} [{}] {}", record.level(), record.args());
        let _ = w.flush();
    }

    fn flush(&self) {
        let _ = self.writer.lock().flush();
    }
}

/// A sink that takes a whole chunk of complete lines in one call.
pub trait LineSink {
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()>;
}

impl LineSink for io::Stderr {
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
        self.write_all(lines)
    }
}

/// Collects the pieces of a record and hands the sink only complete lines: on `flush`, or
/// once `MAX_PENDING` bytes are waiting. A trailing partial line waits for its newline.
pub struct RecordWriter<S: LineSink> {
    sink: S,
    pending: Vec<u8>,
}

impl<S: LineSink> RecordWriter<S> {
    pub fn new(sink: S) -> Self {
        RecordWriter {
            sink,
            pending: Vec::new(),
        }
    }

    /// Writes every complete line that is waiting.
    fn emit(&mut self) -> io::Result<()> {
        let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let rest = self.pending.split_off(last_newline + 1);
        let lines = std::mem::replace(&mut self.pending, rest);
        self.sink.write_lines(&lines)
    }
}

impl<S: LineSink> Write for RecordWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= MAX_PENDING {
            self.emit()?;
        }
        Ok(buf.len())
    }

    /// The record boundary: what is pending is one record. Control characters in it are made
    /// visible (`escape`), except its final newline, so a task id or message from outside can
    /// neither forge a log line nor send escape sequences to whoever reads the log.
    fn flush(&mut self) -> io::Result<()> {
        if let Some((last, body)) = self.pending.split_last() {
            if *last == b'\n' {
                if let std::borrow::Cow::Owned(mut clean) = crate::escape::bytes_for_terminal(body)
                {
                    clean.push(b'\n');
                    self.pending = clean;
                }
            }
        }
        self.emit()
    }
}

impl<S: LineSink> Drop for RecordWriter<S> {
    fn drop(&mut self) {
        if !self.pending.is_empty() && self.pending.last() != Some(&b'\n') {
            self.pending.push(b'\n');
        }
        let _ = self.emit();
    }
}

/// An append-only log file that rotates itself by size. Each `write_lines` call is one
/// `O_APPEND` write into one file: rotation happens between calls, never inside one.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    /// Bytes in the live file as far as this writer knows; re-read from the file before a
    /// rotation, because `logrotate --copytruncate` may have emptied it behind our back.
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingFile {
    /// Opens (or creates, mode 0640) `path` for appending; creates its directory (mode 0750)
    /// if missing. An existing file's size counts toward the first rotation.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            keep,
        })
    }

    /// `path.n`: the n-th newest rotated file.
    pub fn rotated(&self, n: usize) -> PathBuf {
        rotated_path(&self.path, n)
    }

    fn must_rotate(&mut self, incoming: u64) -> bool {
        if self.max_bytes == 0 || self.size == 0 || self.size + incoming <= self.max_bytes {
            return false;
        }
        // Trust the file over our count once it matters (copytruncate, a manual `> file`).
        if let Ok(meta) = self.file.metadata() {
            self.size = meta.len();
        }
        self.size > 0 && self.size + incoming > self.max_bytes
    }

    /// `path.(keep-1)` → `path.keep`, …, `path` → `path.1`, then a fresh `path`.
    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.keep).rev() {
                match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
            self.file = open_append(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

impl LineSink for RotatingFile {
    fn write_lines(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.must_rotate(lines.len() as u64) {
            if let Err(e) = self.rotate() {
                // The logger cannot log its own failure; stderr is the one place left. Keep
                // writing to the file we have and try again after another `max_bytes`.
                eprintln!(
                    "assistd: cannot rotate log file {} ({e}); writing on",
                    self.path.display()
                );
                self.size = 0;
            }
        }
        self.file.write_all(lines)?;
        self.size += lines.len() as u64;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A fresh directory per test.
    fn temp_dir(name: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("assistd-logging-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    /// Writes `lines` (each one record, flushed), returns the contents of the live file and
    /// of `.1`, `.2`, … as far as they exist.
    fn check(max_bytes: u64, keep: usize, lines: &[&str]) -> Vec<String> {
        let dir = temp_dir("check");
        let path = dir.join("assistd.log");
        let mut w = RecordWriter::new(RotatingFile::open(&path, max_bytes, keep).expect("open"));
        for line in lines {
            w.write_all(line.as_bytes()).expect("write");
            w.write_all(b"\n").expect("write");
            w.flush().expect("flush");
        }
        drop(w);
        let mut files = vec![read(&path)];
        let mut n = 1;
        while rotated_path(&path, n).exists() {
            files.push(read(&rotated_path(&path, n)));
            n += 1;
        }
        let _ = fs::remove_dir_all(&dir);
        files
    }

    #[test]
    fn below_the_limit_nothing_rotates() {
        assert_eq!(check(100, 3, &["aaaa", "bbbb"]), vec!["aaaa\nbbbb\n"]);
    }

    #[test]
    fn rotates_before_the_line_that_would_pass_the_limit() {
        // 5 + 5 = 10 fits; the third line would make 15 > 12.
        assert_eq!(
            check(12, 3, &["aaaa", "bbbb", "cccc"]),
            vec!["cccc\n", "aaaa\nbbbb\n"]
        );
    }

    #[test]
    fn keeps_only_keep_old_files_newest_first() {
        assert_eq!(
            check(5, 2, &["1111", "2222", "3333", "4444"]),
            vec!["4444\n", "3333\n", "2222\n"]
        );
    }

    #[test]
    fn a_line_longer_than_the_limit_is_written_whole_in_its_own_file() {
        assert_eq!(
            check(4, 3, &["a", "0123456789", "b"]),
            vec!["b\n", "0123456789\n", "a\n"]
        );
    }

    #[test]
    fn zero_max_bytes_never_rotates() {
        assert_eq!(
            check(0, 3, &["aaaa", "bbbb", "cccc"]),
            vec!["aaaa\nbbbb\ncccc\n"]
        );
    }

    #[test]
    fn zero_keep_truncates_in_place() {
        assert_eq!(check(6, 0, &["aaaa", "bbbb", "cccc"]), vec!["cccc\n"]);
    }

    #[test]
    fn a_record_written_in_pieces_is_never_split() {
        let dir = temp_dir("pieces");
        let path = dir.join("assistd.log");
        let mut w = RecordWriter::new(RotatingFile::open(&path, 10, 3).expect("open"));
        w.write_all(b"first\n").expect("write");
        w.flush().expect("flush");
        // One record, three writes, with a newline inside: it passes the limit in the middle,
        // yet the whole record goes to the new file, as one line (the inner newline escaped, so
        // no record can forge another).
        w.write_all(b"sec").expect("write");
        w.write_all(b"ond\nthi").expect("write");
        w.write_all(b"rd\n").expect("write");
        w.flush().expect("flush");
        assert_eq!(read(&path), "second\\nthird\n");
        assert_eq!(read(&rotated_path(&path, 1)), "first\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let dir = temp_dir("partial");
        let path = dir.join("assistd.log");
        let mut w = RecordWriter::new(RotatingFile::open(&path, 0, 3).expect("open"));
        w.write_all(b"half").expect("write");
        w.flush().expect("flush");
        assert_eq!(read(&path), "");
        w.write_all(b" done\n").expect("write");
        w.flush().expect("flush");
        assert_eq!(read(&path), "half done\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restart_appends_and_counts_the_existing_file() {
        let dir = temp_dir("restart");
        let path = dir.join("assistd.log");
        fs::write(&path, "old line\n").expect("seed");
        let mut w = RecordWriter::new(RotatingFile::open(&path, 12, 3).expect("open"));
        w.write_all(b"new line\n").expect("write");
        w.flush().expect("flush");
        assert_eq!(read(&path), "new line\n");
        assert_eq!(read(&rotated_path(&path, 1)), "old line\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn copytruncate_behind_our_back_does_not_rotate_early() {
        let dir = temp_dir("copytruncate");
        let path = dir.join("assistd.log");
        let mut w = RecordWriter::new(RotatingFile::open(&path, 12, 3).expect("open"));
        w.write_all(b"aaaaaaaa\n").expect("write");
        w.flush().expect("flush");
        // What `logrotate copytruncate` does after copying.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(0)
            .expect("truncate");
        w.write_all(b"bbbbbbbb\n").expect("write");
        w.flush().expect("flush");
        assert_eq!(read(&path), "bbbbbbbb\n");
        assert!(!rotated_path(&path, 1).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_and_its_directory_are_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("modes");
        let path = dir.join("sub").join("assistd.log");
        drop(RotatingFile::open(&path, 0, 3).expect("open"));
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        // The process umask can only take bits away.
        assert_eq!(mode(&path) & !0o640, 0);
        assert_eq!(mode(&dir.join("sub")) & !0o750, 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_built_logger_writes_whole_formatted_lines() {
        let dir = temp_dir("logger");
        let path = dir.join("assistd.log");
        let logger = build(&LogConfig {
            level: LevelFilter::Info,
            target: LogTarget::File {
                path: path.clone(),
                max_bytes: 0,
                keep: 3,
            },
        })
        .expect("build");
        let record = |level, text| {
            logger.log(
                &Record::builder()
                    .level(level)
                    .args(format_args!("{text}"))
                    .build(),
            )
        };
        record(log::Level::Info, "phase=startup hello");
        record(log::Level::Debug, "below the level");
        record(log::Level::Warn, "task=a\n[INFO] forged");
        let text = read(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        // `2026-12-01T16:28:16.589504Z [INFO] …`: RFC 3339, UTC, microseconds.
        let (stamp, rest) = lines[0].split_once(' ').expect("stamp");
        assert_eq!(rest, "[INFO] phase=startup hello");
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok()
                && stamp.ends_with('Z')
                && stamp.len() == "2026-12-01T16:28:16.589504Z".len(),
            "{stamp}"
        );
        assert!(
            lines[1].ends_with(" [WARN] task=a\\n[INFO] forged"),
            "{text:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn init_twice_keeps_the_first_logger_and_does_not_panic() {
        let cfg = LogConfig {
            level: LevelFilter::Off,
            target: LogTarget::Stderr,
        };
        init(&cfg).expect("first init");
        init(&cfg).expect("second init");
    }
}
