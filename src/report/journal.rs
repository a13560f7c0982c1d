//! The local journal: one JSON line per report in `journal.jsonl`, size-capped with rotation,
//! and the reader behind `assistd journal`.
//!
//! This module records reports and prints them back; it must never decide what to report or
//! retry anything.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde_json::Value;

use super::{Report, ReportError, Reporter, Verdict};
use crate::escape::for_terminal;

/// Name of the live journal file; rotations append `.1`, `.2`, … (`.1` is the newest).
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// Size cap and rotation count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalLimits {
    /// The live file is rotated before a line would take it past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept; 0 means the live file is simply started over.
    pub keep: usize,
}

impl Default for JournalLimits {
    fn default() -> JournalLimits {
        JournalLimits {
            max_bytes: 10 * 1024 * 1024,
            keep: 3,
        }
    }
}

/// The journal writer; cheap to share behind an `Arc`.
pub struct Journal {
    dir: PathBuf,
    limits: JournalLimits,
    live: Mutex<Live>,
}

struct Live {
    file: File,
    size: u64,
    /// The last write was cut short (disk full): the next line starts with a newline so the
    /// fragment stays on a line of its own, which readers skip.
    torn: bool,
}

impl Journal {
    /// Opens (creating if needed) `dir/journal.jsonl` for appending.
    pub fn open(dir: &Path, limits: JournalLimits) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let file = open_live(dir)?;
        let size = file.metadata()?.len();
        Ok(Journal {
            dir: dir.to_path_buf(),
            limits,
            live: Mutex::new(Live {
                file,
                size,
                torn: false,
            }),
        })
    }

    /// Flushes the live file to disk (shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.live.lock().file.sync_data()
    }

    fn append(&self, line: &[u8]) -> io::Result<()> {
        let mut live = self.live.lock();
        let extra = u64::from(live.torn);
        if live.size > 0 && live.size + extra + line.len() as u64 > self.limits.max_bytes {
            self.rotate(&mut live)?;
        }
        let mut buf;
        let bytes = if live.torn {
            buf = Vec::with_capacity(line.len() + 1);
            buf.push(b'\n');
            buf.extend_from_slice(line);
            &buf[..]
        } else {
            line
        };
        // One write call per line on an O_APPEND file: a crash leaves whole lines only.
        let n = live.file.write(bytes)?;
        live.size += n as u64;
        if n < bytes.len() {
            if n > 0 {
                live.torn = true;
            }
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to the journal",
            ));
        }
        live.torn = false;
        Ok(())
    }

    fn rotate(&self, live: &mut Live) -> io::Result<()> {
        let live_path = self.dir.join(JOURNAL_FILE);
        if self.limits.keep == 0 {
            remove_if_exists(&live_path)?;
        } else {
            remove_if_exists(&rotated(&self.dir, self.limits.keep))?;
            for i in (1..self.limits.keep).rev() {
                match fs::rename(rotated(&self.dir, i), rotated(&self.dir, i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&live_path, rotated(&self.dir, 1))?;
        }
        live.file = open_live(&self.dir)?;
        live.size = 0;
        live.torn = false;
        File::open(&self.dir)?.sync_all()
    }
}

impl Reporter for Journal {
    fn send(&self, report: &Report) -> Result<Verdict, ReportError> {
        let head = report.head();
        let line = record_line(report, Utc::now());
        self.append(&line).map_err(ReportError::Journal)?;
        // Logged after the write, so a reader that sees the line finds the record.
        log::info!(
            "task={} invoke_version={} phase=report {} journaled",
            head.task_id,
            head.invoke_version,
            report.event()
        );
        Ok(Verdict::Accepted)
    }
}

fn open_live(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(JOURNAL_FILE))
}

fn rotated(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{JOURNAL_FILE}.{i}"))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One journal line (with its newline) for `report` at `now`; absent fields are omitted.
pub fn record_line(report: &Report, now: DateTime<Utc>) -> Vec<u8> {
    let head = report.head();
    let mut line = JsonLine::default();
    line.field("time", now.to_rfc3339_opts(SecondsFormat::Secs, true));
    line.field("task", head.task_id.as_str());
    line.field("invoke_version", head.invoke_version);
    line.field("event", report.event());
    if report.event() == "removed" {
        // Nothing ran: no times, no exit code, no output.
        return line.finish();
    }
    match report {
        Report::Running { start_ms, .. } => line.field("start", *start_ms),
        _ => {
            if let Some(span) = report.span() {
                line.field("start", span.start_ms);
                line.field("end", span.end_ms);
                line.field("exit_code", span.exit_code);
                line.field("dropped", span.dropped);
            }
        }
    }
    match report {
        Report::Stopped {
            result,
            err_desc,
            signal,
            ..
        } => {
            line.field("result", result.as_wire());
            if let Some(desc) = err_desc {
                line.field("err_desc", desc.as_str());
            }
            if let Some(sig) = signal {
                line.field("signal", signal_name(*sig));
            }
        }
        Report::Invalid { param, value, .. } => {
            line.field("param", param.as_str());
            line.field("value", value.as_str());
        }
        Report::Error {
            err_code, err_desc, ..
        } => {
            line.field("err_code", err_code.as_str());
            line.field("err_desc", err_desc.as_str());
        }
        _ => {}
    }
    if !matches!(report, Report::Invalid { .. } | Report::Verified { .. }) {
        line.field("output", String::from_utf8_lossy(report.output()).as_ref());
    }
    line.finish()
}

/// A JSON object written key by key, so the keys keep a readable order.
#[derive(Default)]
struct JsonLine(String);

impl JsonLine {
    fn field(&mut self, key: &str, value: impl Into<Value>) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push_str(&Value::from(key).to_string());
        self.0.push(':');
        self.0.push_str(&value.into().to_string());
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.push_str("}\n");
        self.0.into_bytes()
    }
}

/// The journal files of `dir`, oldest first: the rotations from the highest number down,
/// then the live file (only the files that exist).
fn journal_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut numbered: Vec<(usize, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix(JOURNAL_FILE)
            .and_then(|s| s.strip_prefix('.'))
        {
            if let Ok(n) = n.parse::<usize>() {
                numbered.push((n, entry.path()));
            }
        }
    }
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    let live = dir.join(JOURNAL_FILE);
    if live.exists() {
        files.push(live);
    }
    Ok(files)
}

/// Every readable record of the journal in `dir`, oldest first; unreadable lines are skipped.
pub fn read_records(dir: &Path) -> io::Result<Vec<Value>> {
    let mut records = Vec::new();
    for path in journal_files(dir)? {
        for line in io::BufReader::new(File::open(&path)?).split(b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(&line?) {
                if v.is_object() {
                    records.push(v);
                }
            }
        }
    }
    Ok(records)
}

/// Which invocations `assistd journal` prints.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only this task's records.
    pub task: Option<String>,
    /// Only invocations whose record is at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only the invocations that did not succeed (`is_failure`).
    pub failed: bool,
    /// Only the last N invocations (before following, with `--follow`).
    pub last: Option<usize>,
    /// The most output bytes joined for one invocation: the agent's largest output limit
    /// (`max_log_quota`), so a journal edited by hand cannot make the reader hold more.
    pub max_output: usize,
}

/// True for an invocation that did not succeed: an exit code other than 0, a timeout, an
/// error, a failure, an invalid task, a kill. A removal, a completed cron and a passed test
/// are not failures.
pub fn is_failure(r: &Value) -> bool {
    match r.get("event").and_then(Value::as_str).unwrap_or("") {
        "finished" => r.get("exit_code").and_then(Value::as_i64) != Some(0),
        "stopped" => r.get("result").and_then(Value::as_str) != Some("completed"),
        "timeout" | "failed" | "error" | "invalid" => true,
        _ => false,
    }
}

/// `1h`, `30m`, `2d`, `45s` (a whole number and one unit), or an RFC 3339 time.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "--since {text:?} is neither an RFC 3339 time (2031-01-02T17:30:00Z) nor a relative time such as 30s, 15m, 1h or 2d"
        )
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs)
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(bad)
}

/// Prints the journal in `dir` for people, oldest first, the invocations `query` selects.
/// An invocation's `running` chunks are joined into its final record, which shows its output
/// whole. With `follow` it then keeps printing records as they are appended (running chunks
/// too, as they come), across rotations, until writing to `out` fails (e.g. a closed pipe) or
/// the process is killed; a journal that does not exist yet is waited for.
pub fn print(dir: &Path, query: &Query, follow: bool, out: &mut dyn Write) -> io::Result<()> {
    // Polling is acceptable here and only here: `assistd journal --follow` is an interactive
    // command a person runs and stops; the agent itself never polls.
    let mut poll = || {
        std::thread::sleep(Duration::from_millis(500));
        true
    };
    print_with(dir, query, if follow { Some(&mut poll) } else { None }, out)
}

/// `print`, with the wait between follow polls supplied by the caller: `wait` returns false
/// to stop following.
fn print_with(
    dir: &Path,
    query: &Query,
    wait: Option<&mut dyn FnMut() -> bool>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut printer = Printer::new(query, out);
    let live = dir.join(JOURNAL_FILE);
    let files = match journal_files(dir) {
        Ok(files) => files,
        // A fresh state dir: nothing to print yet, and with --follow something to wait for.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    for path in files {
        if path == live {
            break;
        }
        let mut tail = Tail::open(&path)?;
        tail.drain(&mut printer, true)?;
    }
    let mut tail = match Tail::open(&live) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let Some(wait) = wait else {
        if let Some(t) = tail.as_mut() {
            t.drain(&mut printer, true)?;
        }
        printer.unfinished()?;
        printer.flush_backlog()?;
        return printer.out.flush();
    };
    if let Some(t) = tail.as_mut() {
        t.drain(&mut printer, false)?;
    }
    printer.flush_backlog()?;
    printer.live = true;
    loop {
        // Stat the path before reading: once a new inode sits at the path, the writer has
        // finished with the old file, so reading it to the end misses nothing.
        let now_ino = fs::metadata(&live).ok().map(|m| m.ino());
        if let Some(t) = tail.as_mut() {
            let rotated = now_ino.is_some_and(|ino| ino != t.ino);
            t.drain(&mut printer, rotated)?;
            if rotated {
                tail = None;
            }
        }
        if tail.is_none() && now_ino.is_some() {
            tail = match Tail::open(&live) {
                Ok(mut t) => {
                    t.drain(&mut printer, false)?;
                    Some(t)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
        }
        printer.out.flush()?;
        if !wait() {
            return Ok(());
        }
    }
}

/// An open journal file read incrementally, with the bytes of an unfinished line.
struct Tail {
    path: PathBuf,
    file: File,
    ino: u64,
    pending: Vec<u8>,
    line_no: usize,
}

impl Tail {
    fn open(path: &Path) -> io::Result<Tail> {
        let file = File::open(path)?;
        let ino = file.metadata()?.ino();
        Ok(Tail {
            path: path.to_path_buf(),
            file,
            ino,
            pending: Vec::new(),
            line_no: 0,
        })
    }

    /// Prints every complete line appended since the last call; with `last`, also the
    /// unfinished one (the file will not grow any more).
    fn drain(&mut self, printer: &mut Printer<'_, '_>, last: bool) -> io::Result<()> {
        self.file.read_to_end(&mut self.pending)?;
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n') {
            self.line_no += 1;
            printer.line(&self.pending[start..start + end], &self.path, self.line_no)?;
            start += end + 1;
        }
        self.pending.drain(..start);
        if last && !self.pending.is_empty() {
            self.line_no += 1;
            let rest = std::mem::take(&mut self.pending);
            printer.line(&rest, &self.path, self.line_no)?;
        }
        Ok(())
    }
}

/// One invocation: task, invoke version, start time (a periodic task's firings share the
/// version, not the start).
type InvocationKey = (String, i64, i64);

/// The running chunks of an invocation whose final record has not been read yet.
struct Pending {
    /// The newest running record (its time and fields stand for the invocation if it never
    /// ends).
    last: Value,
    output: String,
    /// Bytes left out because `max_output` was reached.
    cut: usize,
}

struct Printer<'a, 'w> {
    query: &'a Query,
    out: &'w mut dyn Write,
    pending: std::collections::HashMap<InvocationKey, Pending>,
    /// With `query.last`: the newest entries, printed at the end of the backlog.
    backlog: std::collections::VecDeque<String>,
    /// Following: running chunks are printed as they arrive, and nothing is held back.
    live: bool,
}

fn key_of(r: &Value) -> InvocationKey {
    (
        r.get("task")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        r.get("invoke_version").and_then(Value::as_i64).unwrap_or(0),
        r.get("start").and_then(Value::as_i64).unwrap_or(0),
    )
}

impl<'a, 'w> Printer<'a, 'w> {
    fn new(query: &'a Query, out: &'w mut dyn Write) -> Printer<'a, 'w> {
        Printer {
            query,
            out,
            pending: std::collections::HashMap::new(),
            backlog: std::collections::VecDeque::new(),
            live: false,
        }
    }

    fn line(&mut self, bytes: &[u8], path: &Path, line_no: usize) -> io::Result<()> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let mut record = match serde_json::from_slice::<Value>(bytes) {
            Ok(v) if v.is_object() => v,
            _ => {
                let note = format!(
                    "(skipped an unreadable line {line_no} of {})\n",
                    for_terminal(&path.display().to_string())
                );
                return self.emit(note);
            }
        };
        if let Some(task) = &self.query.task {
            if record.get("task").and_then(Value::as_str) != Some(task) {
                return Ok(());
            }
        }
        let key = key_of(&record);
        let output = record
            .get("output")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if record.get("event").and_then(Value::as_str) == Some("running") {
            let max = self.query.max_output;
            let p = self.pending.entry(key).or_insert_with(|| Pending {
                last: Value::Null,
                output: String::new(),
                cut: 0,
            });
            append_bounded(&mut p.output, &mut p.cut, &output, max);
            p.last = record.clone();
            if self.live && !output.is_empty() && self.selected(&record) {
                let text = format_record(&record);
                self.emit(text)?;
            }
            return Ok(());
        }
        if let Some(mut p) = self.pending.remove(&key) {
            append_bounded(&mut p.output, &mut p.cut, &output, self.query.max_output);
            set_output(&mut record, p.output, p.cut);
        }
        if self.selected(&record) {
            let text = format_record(&record);
            self.emit(text)?;
        }
        Ok(())
    }

    fn selected(&self, r: &Value) -> bool {
        if self.query.failed && !is_failure(r) {
            return false;
        }
        if let Some(since) = self.query.since {
            let at = r
                .get("time")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if !at.is_some_and(|t| t.with_timezone(&Utc) >= since) {
                return false;
            }
        }
        true
    }

    fn emit(&mut self, text: String) -> io::Result<()> {
        match self.query.last {
            Some(n) if !self.live => {
                self.backlog.push_back(text);
                while self.backlog.len() > n {
                    self.backlog.pop_front();
                }
                Ok(())
            }
            _ => self.out.write_all(text.as_bytes()),
        }
    }

    /// Invocations with running chunks and no final record (still running, or the agent
    /// died): shown as their newest running record with every chunk joined.
    fn unfinished(&mut self) -> io::Result<()> {
        let mut left: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        left.sort_by(|a, b| {
            let time = |p: &Pending| {
                p.last
                    .get("time")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            time(a).cmp(&time(b))
        });
        for p in left {
            let mut record = p.last;
            set_output(&mut record, p.output, p.cut);
            if self.selected(&record) {
                let text = format_record(&record);
                self.emit(text)?;
            }
        }
        Ok(())
    }

    fn flush_backlog(&mut self) -> io::Result<()> {
        for text in std::mem::take(&mut self.backlog) {
            self.out.write_all(text.as_bytes())?;
        }
        Ok(())
    }
}

/// Appends `more` to `joined` up to `max` bytes (on a character boundary), counting the rest.
fn append_bounded(joined: &mut String, cut: &mut usize, more: &str, max: usize) {
    let room = max.saturating_sub(joined.len());
    if more.len() <= room {
        joined.push_str(more);
        return;
    }
    let mut end = room;
    while !more.is_char_boundary(end) {
        end -= 1;
    }
    joined.push_str(&more[..end]);
    *cut += more.len() - end;
}

fn set_output(record: &mut Value, output: String, cut: usize) {
    if let Value::Object(map) = record {
        map.insert("output".to_string(), Value::from(output));
        if cut > 0 {
            map.insert("output_cut".to_string(), Value::from(cut));
        }
    }
}

/// One record for people: a header line, then the output indented by four spaces.
/// Everything from a task or the server is escaped (`escape::for_terminal`): an escape
/// sequence in the output must not re-title or clear the reader's terminal, nor a newline in a
/// field forge a record line.
pub fn format_record(r: &Value) -> String {
    let text = |k: &str| for_terminal(r.get(k).and_then(Value::as_str).unwrap_or("")).into_owned();
    let mut s = format!(
        "{} {} v{} {}",
        text("time"),
        text("task"),
        r.get("invoke_version").unwrap_or(&Value::Null),
        text("event")
    );
    if let (Some(exit), Some(dropped)) = (r.get("exit_code"), r.get("dropped")) {
        s.push_str(&format!(" exit={exit} dropped={dropped}"));
    }
    for key in ["result", "signal", "param", "value", "err_code", "err_desc"] {
        if let Some(v) = r.get(key).and_then(Value::as_str) {
            s.push_str(&format!(" {key}={}", for_terminal(v)));
        }
    }
    let output = r.get("output").and_then(Value::as_str);
    if let Some(output) = output {
        s.push_str(&format!(" ({} bytes)", output.len()));
    }
    if let Some(cut) = r.get("output_cut").and_then(Value::as_u64) {
        s.push_str(&format!(" ({cut} more bytes not shown)"));
    }
    s.push('\n');
    for line in output.unwrap_or("").lines() {
        s.push_str("    ");
        s.push_str(&for_terminal(line));
        s.push('\n');
    }
    s
}

/// The name of a signal the agent sends a task (`SIGTERM`, `SIGKILL`), else its number.
fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".to_string(),
        libc::SIGKILL => "SIGKILL".to_string(),
        libc::SIGINT => "SIGINT".to_string(),
        libc::SIGHUP => "SIGHUP".to_string(),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;
    use crate::model::RepeatType;
    use crate::report::{ReportHead, Span, StopResult, WallClock};

    fn head(task: &str, v: i64) -> ReportHead {
        ReportHead {
            task_id: task.to_string(),
            invoke_version: v,
            repeat: RepeatType::Once,
            wall_clock: WallClock::None,
        }
    }

    fn finished(task: &str, output: &str) -> Report {
        let span = Span {
            start_ms: 1000,
            end_ms: 2000,
            exit_code: 0,
            dropped: 0,
        };
        Report::Finished {
            head: head(task, 1),
            span,
            output: output.as_bytes().to_vec(),
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2031-01-02T17:30:00Z")
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn line(report: &Report) -> String {
        String::from_utf8(record_line(report, at())).expect("utf-8")
    }

    fn printed(dir: &Path, task: Option<&str>) -> String {
        let query = Query {
            task: task.map(str::to_string),
            ..query()
        };
        printed_with(dir, &query)
    }

    fn query() -> Query {
        Query {
            max_output: 1 << 20,
            ..Query::default()
        }
    }

    fn printed_with(dir: &Path, query: &Query) -> String {
        let mut out = Vec::new();
        print(dir, query, false, &mut out).expect("print");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn record_lines() {
        assert_eq!(
            line(&finished("backup", "hello\n")),
            "{\"time\":\"2031-01-02T17:30:00Z\",\"task\":\"backup\",\"invoke_version\":1,\"event\":\"finished\",\"start\":1000,\"end\":2000,\"exit_code\":0,\"dropped\":0,\"output\":\"hello\\n\"}\n"
        );
        let running = Report::Running {
            head: head("t", 2),
            start_ms: 5,
            output: vec![0xff, b'a'],
        };
        assert_eq!(
            line(&running),
            "{\"time\":\"2031-01-02T17:30:00Z\",\"task\":\"t\",\"invoke_version\":2,\"event\":\"running\",\"start\":5,\"output\":\"\u{fffd}a\"}\n"
        );
        let stopped = Report::Stopped {
            head: head("t", 1),
            span: Span::default(),
            result: StopResult::Killed,
            err_desc: None,
            signal: None,
            output: Vec::new(),
        };
        assert!(line(&stopped).contains(",\"result\":\"killed\",\"output\":\"\"}"));
        let invalid = Report::Invalid {
            head: head("t", 1),
            param: "TypeInvalid".into(),
            value: "X".into(),
        };
        assert!(line(&invalid)
            .ends_with("\"event\":\"invalid\",\"param\":\"TypeInvalid\",\"value\":\"X\"}\n"));
        let error = Report::Error {
            head: head("t", 1),
            span: Span::default(),
            err_code: "E1".into(),
            err_desc: "bad \"quote\"".into(),
            output: Vec::new(),
        };
        let l = line(&error);
        assert!(
            l.contains("\"err_code\":\"E1\",\"err_desc\":\"bad \\\"quote\\\"\""),
            "{l}"
        );
        assert!(
            line(&Report::Verified { head: head("t", 1) }).ends_with("\"event\":\"verified\"}\n")
        );
    }

    #[test]
    fn send_appends_and_prints() {
        let dir = TempDir::new("journal-send");
        let journal = Journal::open(dir.path(), JournalLimits::default()).expect("open");
        assert_eq!(
            journal
                .send(&finished("backup", "hello world\n"))
                .expect("send"),
            Verdict::Accepted
        );
        assert_eq!(
            journal.send(&finished("other", "")).expect("send"),
            Verdict::Accepted
        );
        journal.sync().expect("sync");
        let records = read_records(dir.path()).expect("read");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["task"], "backup");
        assert_eq!(records[0]["output"], "hello world\n");
        let text = printed(dir.path(), Some("backup"));
        let (first, rest) = text.split_once('\n').expect("two lines");
        assert!(
            first.ends_with(" backup v1 finished exit=0 dropped=0 (12 bytes)"),
            "{first}"
        );
        assert_eq!(rest, "    hello world\n");
        assert_eq!(printed(dir.path(), None).lines().count(), 3);
        assert_eq!(printed(dir.path(), Some("nobody")), "");
    }

    #[test]
    fn format_for_people() {
        let r: Value =
            serde_json::from_slice(&record_line(&finished("backup", "line 1\nline 2"), at()))
                .expect("json");
        assert_eq!(
            format_record(&r),
            "2031-01-02T17:30:00Z backup v1 finished exit=0 dropped=0 (13 bytes)\n    line 1\n    line 2\n"
        );
        let r: Value = serde_json::from_str(r#"{"time":"T","task":"t","invoke_version":3,"event":"invalid","param":"p","value":"v"}"#)
            .expect("json");
        assert_eq!(format_record(&r), "T t v3 invalid param=p value=v\n");
    }

    #[test]
    fn rotation_keeps_n_files() {
        let dir = TempDir::new("journal-rotate");
        let one = record_line(&finished("t0", ""), at()).len() as u64;
        let journal = Journal::open(
            dir.path(),
            JournalLimits {
                max_bytes: one * 2,
                keep: 2,
            },
        )
        .expect("open");
        for i in 0..7 {
            journal.send(&finished(&format!("t{i}"), "")).expect("send");
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2"]
        );
        for name in &names {
            assert!(fs::metadata(dir.path().join(name)).expect("meta").len() <= one * 2);
        }
        let tasks: Vec<String> = read_records(dir.path())
            .expect("read")
            .iter()
            .map(|r| r["task"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            tasks,
            ["t2", "t3", "t4", "t5", "t6"],
            "two lines per file, three files"
        );
    }

    #[test]
    fn rotation_with_keep_zero_starts_over() {
        let dir = TempDir::new("journal-keep0");
        let journal = Journal::open(
            dir.path(),
            JournalLimits {
                max_bytes: 1,
                keep: 0,
            },
        )
        .expect("open");
        journal.send(&finished("a", "")).expect("send");
        journal.send(&finished("b", "")).expect("send");
        let records = read_records(dir.path()).expect("read");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["task"], "b");
    }

    #[test]
    fn torn_lines_are_skipped_with_a_note() {
        let dir = TempDir::new("journal-torn");
        let good = String::from_utf8(record_line(&finished("a", "x"), at())).expect("utf-8");
        fs::write(
            dir.path().join("journal.jsonl.1"),
            format!("{{\"task\":\"a\",\"ev\n{good}not json\n"),
        )
        .expect("write");
        fs::write(dir.path().join("journal.jsonl"), format!("{good}{{\"cut")).expect("write");
        let text = printed(dir.path(), None);
        let rotated = dir.path().join("journal.jsonl.1");
        let live = dir.path().join("journal.jsonl");
        let expected = format!(
            "(skipped an unreadable line 1 of {r})\n{rec}(skipped an unreadable line 3 of {r})\n{rec}(skipped an unreadable line 2 of {l})\n",
            r = rotated.display(),
            l = live.display(),
            rec = "2031-01-02T17:30:00Z a v1 finished exit=0 dropped=0 (1 bytes)\n    x\n",
        );
        assert_eq!(text, expected);
        assert_eq!(read_records(dir.path()).expect("read").len(), 2);
    }

    #[test]
    fn follow_survives_rotation_and_partial_lines() {
        let dir = TempDir::new("journal-follow");
        let one = record_line(&finished("t0", ""), at()).len() as u64;
        let journal = Journal::open(
            dir.path(),
            JournalLimits {
                max_bytes: one,
                keep: 3,
            },
        )
        .expect("open");
        journal.send(&finished("r0", "")).expect("send");
        let live = dir.path().join(JOURNAL_FILE);
        let raw = String::from_utf8(record_line(&finished("raw", ""), at())).expect("utf-8");
        let (raw_a, raw_b) = raw.split_at(10);
        let mut step = 0;
        let mut wait = || {
            step += 1;
            let append = |text: &str| {
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&live)
                    .expect("open live");
                f.write_all(text.as_bytes()).expect("append");
            };
            match step {
                1 => drop(journal.send(&finished("a", "")).expect("send")),
                2 => drop(journal.send(&finished("b", "")).expect("send")),
                3 => append(raw_a),
                4 => append(raw_b),
                _ => return false,
            }
            true
        };
        let mut out = Vec::new();
        print_with(dir.path(), &query(), Some(&mut wait), &mut out).expect("follow");
        let text = String::from_utf8(out).expect("utf-8");
        let tasks: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or(""))
            .collect();
        assert_eq!(tasks, ["r0", "a", "b", "raw"], "{text}");
    }

    fn running(task: &str, start_ms: i64, output: &str) -> Report {
        Report::Running {
            head: head(task, 1),
            start_ms,
            output: output.as_bytes().to_vec(),
        }
    }

    fn finished_at(task: &str, start_ms: i64, exit_code: i32, output: &str) -> Report {
        Report::Finished {
            head: head(task, 1),
            span: Span {
                start_ms,
                end_ms: start_ms + 1,
                exit_code,
                dropped: 0,
            },
            output: output.as_bytes().to_vec(),
        }
    }

    /// Writes `reports` as journal lines, the i-th at minute i of 2031-01-02 17:xx.
    fn journal_of(name: &str, reports: &[Report]) -> TempDir {
        let dir = TempDir::new(name);
        let mut text = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            text.extend(record_line(r, at() + chrono::TimeDelta::minutes(i as i64)));
        }
        fs::write(dir.path().join(JOURNAL_FILE), text).expect("write");
        dir
    }

    #[test]
    fn an_invocation_shows_its_output_whole_in_its_final_record() {
        // Two firings of one periodic task (same version, other starts), interleaved.
        let dir = journal_of(
            "journal-join",
            &[
                running("t", 10, "one\n"),
                running("t", 20, "A\n"),
                running("t", 10, "two\n"),
                finished_at("t", 10, 0, "three\n"),
                finished_at("t", 20, 0, "B\n"),
            ],
        );
        let text = printed(dir.path(), None);
        assert_eq!(
            text,
            "2031-01-02T17:33:00Z t v1 finished exit=0 dropped=0 (14 bytes)\n    one\n    two\n    three\n\
             2031-01-02T17:34:00Z t v1 finished exit=0 dropped=0 (4 bytes)\n    A\n    B\n"
        );
    }

    #[test]
    fn joined_output_is_bounded_and_says_what_it_left_out() {
        let dir = journal_of(
            "journal-bound",
            &[running("t", 1, "12345"), finished_at("t", 1, 0, "6789é")],
        );
        let text = printed_with(
            dir.path(),
            &Query {
                max_output: 9,
                ..query()
            },
        );
        assert!(
            text.starts_with("2031-01-02T17:31:00Z t v1 finished exit=0 dropped=0 (9 bytes) (2 more bytes not shown)\n    123456789\n"),
            "{text}"
        );
    }

    #[test]
    fn an_unfinished_invocation_is_shown_last_with_its_chunks() {
        let dir = journal_of(
            "journal-unfinished",
            &[
                running("slow", 1, "a\n"),
                running("slow", 1, "b\n"),
                finished_at("t", 2, 0, ""),
            ],
        );
        let text = printed(dir.path(), None);
        assert_eq!(
            text,
            "2031-01-02T17:32:00Z t v1 finished exit=0 dropped=0 (0 bytes)\n\
             2031-01-02T17:31:00Z slow v1 running (4 bytes)\n    a\n    b\n"
        );
    }

    #[test]
    fn failed_since_and_last_select_invocations() {
        let dir = journal_of(
            "journal-select",
            &[
                finished_at("ok", 1, 0, ""),
                finished_at("bad", 2, 3, ""),
                finished_at("ok", 3, 0, ""),
                finished_at("bad", 4, 1, ""),
                Report::Stopped {
                    head: head("gone", 1),
                    span: Span::default(),
                    result: StopResult::Removed,
                    err_desc: None,
                    signal: None,
                    output: Vec::new(),
                },
            ],
        );
        let tasks = |q: Query| -> Vec<String> {
            printed_with(dir.path(), &q)
                .lines()
                .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(
            tasks(Query {
                failed: true,
                ..query()
            }),
            ["bad", "bad"],
            "a removal is not a failure"
        );
        assert_eq!(
            tasks(Query {
                last: Some(2),
                ..query()
            }),
            ["bad", "gone"]
        );
        assert_eq!(
            tasks(Query {
                since: Some(at() + chrono::TimeDelta::minutes(2)),
                ..query()
            }),
            ["ok", "bad", "gone"]
        );
        assert_eq!(
            tasks(Query {
                failed: true,
                last: Some(1),
                ..query()
            }),
            ["bad"]
        );
        assert!(printed(dir.path(), None).ends_with(" gone v1 removed\n"));
    }

    #[test]
    fn since_takes_rfc3339_and_relative_times() {
        let now = at();
        let ok = |t: &str| parse_since(t, now).expect(t);
        assert_eq!(
            ok("2031-01-02T16:00:00Z"),
            now - chrono::TimeDelta::minutes(90)
        );
        assert_eq!(
            ok("2031-01-02T18:00:00+01:00"),
            now - chrono::TimeDelta::minutes(30)
        );
        assert_eq!(ok("45s"), now - chrono::TimeDelta::seconds(45));
        assert_eq!(ok("30m"), now - chrono::TimeDelta::minutes(30));
        assert_eq!(ok("1h"), now - chrono::TimeDelta::hours(1));
        assert_eq!(ok("2d"), now - chrono::TimeDelta::days(2));
        for bad in [
            "",
            "1",
            "h",
            "1w",
            "-1h",
            "1.5h",
            "yesterday",
            "99999999999999999d",
        ] {
            let e = parse_since(bad, now).expect_err(bad);
            assert!(
                e.contains("RFC 3339") && e.contains("30s, 15m, 1h or 2d"),
                "{e}"
            );
        }
    }

    #[test]
    fn follow_on_a_missing_journal_waits_for_it() {
        let dir = TempDir::new("journal-fresh");
        let jdir = dir.path().join("journal");
        let mut step = 0;
        let mut wait = || {
            step += 1;
            match step {
                1 => {}
                2 => {
                    let journal = Journal::open(&jdir, JournalLimits::default()).expect("open");
                    journal.send(&finished("late", "x")).expect("send");
                }
                _ => return false,
            }
            true
        };
        let mut out = Vec::new();
        print_with(&jdir, &query(), Some(&mut wait), &mut out).expect("follow waits");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains(" late v1 finished"), "{text}");
    }

    #[test]
    fn full_disk_is_a_journal_error() {
        if !Path::new("/dev/full").exists() {
            eprintln!("SKIPPED full_disk_is_a_journal_error: no /dev/full on this system");
            return;
        }
        let dir = TempDir::new("journal-full");
        std::os::unix::fs::symlink("/dev/full", dir.path().join(JOURNAL_FILE)).expect("symlink");
        let journal = Journal::open(dir.path(), JournalLimits::default()).expect("open");
        match journal.send(&finished("a", "x")) {
            Err(ReportError::Journal(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC)),
            other => panic!("expected a journal error, got {other:?}"),
        }
    }
}
