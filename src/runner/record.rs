//! Records of running invocations, so that nothing a crashed agent started keeps running
//! unowned or goes unreported. Just before a child is spawned the runner writes one record in
//! `<state-dir>/running/` (task id, invoke version, repeat, wall-clock kind, the start in ms)
//! and removes it once the final report was sent (delivered, spooled, or journalled). A record
//! still there at startup belongs to an agent that died while (or just before) its child ran:
//! `recover` kills what is left of it and reports the invocation as an `error`.
//!
//! The record is written before the spawn, so there is no moment when a child runs without
//! one (under load, the time between a fork and a write after it reached seconds). The
//! processes are found by what every task carries: `ASSISTD_TASK_ID` and
//! `ASSISTD_INVOKE_VERSION` in its environment (`/proc/<pid>/environ`), which its children
//! inherit too, wherever they moved in process groups. Non-overlap means no two invocations
//! with the same pair exist at once, and recovery runs before this agent starts any.
//!
//! This module never starts a process and never decides whether a task runs; the engine is
//! told which once-invocations were recovered, and skips them if they come again.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::fsutil;
use crate::model::RepeatType;
use crate::report::{Report, ReportHead, Span, WallClock};

/// The `errCode` of the error report for an invocation that was running when the agent died.
/// A name rather than a number: the reference's numeric codes (-3 … -20) each mean a setup
/// failure of its own, and a new number could collide with one it adds later.
pub const ERR_AGENT_RESTARTED: &str = "AgentRestarted";

/// A recovered once-invocation is remembered this long (its record stays, marked reported),
/// so a server that re-delivers it within that time does not make it run twice.
const REMEMBER_MS: i64 = 7 * 24 * 3600 * 1000;

/// One record, as written and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub head: ReportHead,
    pub start_ms: i64,
    /// Set once `recover` sent the error report of a once-invocation; such a record is kept
    /// for `REMEMBER_MS` only to refuse a re-delivery.
    pub reported: bool,
}

/// Where the records live, and the writing side the runner uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordDir {
    pub dir: PathBuf,
}

/// A written record; dropping it removes the file (on every path out of the runner, a panic
/// included, since the final report has been sent or never will be by this agent).
pub struct RecordGuard {
    path: PathBuf,
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!(
                    "phase=record cannot remove {} ({e}); the next start will report it as interrupted",
                    self.path.display()
                );
            }
        }
    }
}

impl RecordDir {
    pub fn new(dir: impl Into<PathBuf>) -> RecordDir {
        RecordDir { dir: dir.into() }
    }

    /// Writes the record of a child just spawned. An error means the invocation runs without
    /// crash protection; the caller logs it and goes on.
    pub fn write(&self, record: &RunRecord) -> io::Result<RecordGuard> {
        let path = self.dir.join(file_name(record));
        fsutil::write_atomic(&path, encode(record).as_bytes(), 0o600)?;
        Ok(RecordGuard { path })
    }
}

/// `<task id, filename-safe>.<invoke version>.<start ms>.json`.
fn file_name(record: &RunRecord) -> String {
    let safe: String = record
        .head
        .task_id
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{safe}.{}.{}.json",
        record.head.invoke_version, record.start_ms
    )
}

pub fn encode(record: &RunRecord) -> String {
    let wall_clock = match &record.head.wall_clock {
        WallClock::None => json!("none"),
        WallClock::Rate => json!("rate"),
        WallClock::Cron {
            zone_name,
            offset_secs,
        } => json!({"zone": zone_name, "offset": offset_secs}),
    };
    json!({
        "task": record.head.task_id,
        "invoke_version": record.head.invoke_version,
        "repeat": record.head.repeat.as_wire(),
        "wall_clock": wall_clock,
        "start_ms": record.start_ms,
        "reported": record.reported,
    })
    .to_string()
}

pub fn decode(text: &[u8]) -> Option<RunRecord> {
    let v: Value = serde_json::from_slice(text).ok()?;
    let wall_clock = match v.get("wall_clock")? {
        Value::String(s) if s == "none" => WallClock::None,
        Value::String(s) if s == "rate" => WallClock::Rate,
        Value::Object(o) => WallClock::Cron {
            zone_name: o.get("zone")?.as_str()?.to_string(),
            offset_secs: i32::try_from(o.get("offset")?.as_i64()?).ok()?,
        },
        _ => return None,
    };
    Some(RunRecord {
        head: ReportHead {
            task_id: v.get("task")?.as_str()?.to_string(),
            invoke_version: v.get("invoke_version")?.as_i64()?,
            repeat: RepeatType::from_wire(v.get("repeat")?.as_str()?)?,
            wall_clock,
        },
        start_ms: v.get("start_ms")?.as_i64()?,
        reported: v.get("reported")?.as_bool()?,
    })
}

/// Field 5 (`pgrp`) of a `/proc/<pid>/stat` text. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after the
/// last `)`.
fn stat_pgrp(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(5 - 3)?.parse().ok()
}

/// True when a NUL-separated environment holds both variables of the invocation.
fn environ_is(environ: &[u8], id_var: &[u8], version_var: &[u8]) -> bool {
    let mut id = false;
    let mut version = false;
    for entry in environ.split(|b| *b == 0) {
        id |= entry == id_var;
        version |= entry == version_var;
    }
    id && version
}

/// The (pid, pgrp) of every process whose environment says it belongs to the invocation.
fn processes_of(proc_root: &Path, head: &ReportHead) -> Vec<(i32, i32)> {
    let id_var = format!("ASSISTD_TASK_ID={}", head.task_id).into_bytes();
    let version_var = format!("ASSISTD_INVOKE_VERSION={}", head.invoke_version).into_bytes();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let environ = fs::read(e.path().join("environ")).ok()?;
            if !environ_is(&environ, &id_var, &version_var) {
                return None;
            }
            let pgrp = stat_pgrp(&fs::read_to_string(e.path().join("stat")).ok()?)?;
            Some((pid, pgrp))
        })
        .collect()
}

/// Kills every process of the invocation: each group (the task's session leader leads one,
/// its descendants mostly stay in it) and each process on its own, for those that moved.
/// Returns how many processes were found.
fn kill_invocation(proc_root: &Path, head: &ReportHead) -> usize {
    let found = processes_of(proc_root, head);
    let mut groups: Vec<i32> = found.iter().map(|(_, g)| *g).filter(|g| *g > 1).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        // SAFETY: plain syscall; the group holds a process of this invocation.
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
    for (pid, _) in &found {
        // SAFETY: plain syscall on a process whose environment names this invocation.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    found.len()
}

/// What `recover` found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// (task id, invoke version) of once-invocations that were interrupted, now or in an
    /// earlier recovery within `REMEMBER_MS`: the engine never runs them again.
    pub interrupted: HashSet<(String, i64)>,
    /// Invocations whose processes were found and killed.
    pub killed: usize,
    /// The error reports to send; the caller sends them without holding up the start (each
    /// may take a retry burst while the server is away).
    pub reports: Vec<Report>,
}

/// Startup, before any invocation runs: kills every process a crashed agent left (found by
/// its environment), makes an `error` report with `ERR_AGENT_RESTARTED` for each interrupted
/// invocation, and returns which once-invocations must not run again. `already_final(head,
/// start_ms)` tells an invocation whose final report the crashed agent had already written
/// durably (remote mode: into its spool, which sends it): no second, different final is made
/// for it.
pub fn recover(
    records: &RecordDir,
    proc_root: &Path,
    now_ms: i64,
    already_final: &dyn Fn(&ReportHead, i64) -> bool,
) -> Recovery {
    let mut out = Recovery::default();
    let entries = match fs::read_dir(&records.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return out,
        Err(e) => {
            log::error!(
                "phase=recover cannot read {} ({e}); invocations a crashed agent left are not checked",
                records.dir.display()
            );
            return out;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let Some(mut record) = fs::read(&path).ok().and_then(|b| decode(&b)) else {
            let bad = path.with_extension("json.bad");
            let _ = fs::rename(&path, &bad);
            log::error!(
                "phase=recover {} is not a run record; set aside as {}",
                path.display(),
                bad.display()
            );
            continue;
        };
        let id = record.head.task_id.clone();
        let version = record.head.invoke_version;
        let once = !record.head.repeat.is_periodic();
        if record.reported {
            if now_ms.saturating_sub(record.start_ms) > REMEMBER_MS {
                let _ = fs::remove_file(&path);
            } else if once {
                out.interrupted.insert((id, version));
            }
            continue;
        }
        let found = kill_invocation(proc_root, &record.head);
        if already_final(&record.head, record.start_ms) {
            // It ended and its final was written; only the record's removal was lost.
            log::info!(
                "task={id} invoke_version={version} phase=recover its final report is in the spool already; not reported again{}",
                if found > 0 { format!(" ({found} process(es) it left were killed)") } else { String::new() }
            );
            settle(&path, &mut record, &mut out);
            continue;
        }
        let killed = found > 0;
        if killed {
            out.killed += 1;
        }
        log::warn!(
            "task={id} invoke_version={version} phase=recover the agent stopped while this invocation ran: {}; reporting it as error {ERR_AGENT_RESTARTED}",
            if killed {
                format!("killed {found} process(es) it left")
            } else {
                "none of its processes was left".to_string()
            }
        );
        let report = Report::Error {
            head: record.head.clone(),
            span: Span {
                start_ms: record.start_ms,
                end_ms: now_ms.max(record.start_ms),
                exit_code: -1,
                dropped: 0,
            },
            err_code: ERR_AGENT_RESTARTED.to_string(),
            err_desc: format!(
                "{ERR_AGENT_RESTARTED}: the agent stopped while this invocation ran; at its restart {}; its output is lost",
                if killed {
                    format!("{found} process(es) of it were killed")
                } else {
                    "none of its processes was left".to_string()
                }
            ),
            output: Vec::new(),
        };
        out.reports.push(report);
        settle(&path, &mut record, &mut out);
    }
    out
}

/// A recovered record whose invocation now has its final report: a once-invocation's is kept,
/// marked, so a re-delivery within REMEMBER_MS is refused by the engine; a periodic one's goes
/// (the task runs again at its next firing).
fn settle(path: &Path, record: &mut RunRecord, out: &mut Recovery) {
    if record.head.repeat.is_periodic() {
        if let Err(e) = fs::remove_file(path) {
            log::warn!("phase=recover cannot remove {} ({e})", path.display());
        }
        return;
    }
    record.reported = true;
    if let Err(e) = fsutil::write_atomic(path, encode(record).as_bytes(), 0o600) {
        log::warn!(
            "phase=recover cannot mark {} reported ({e})",
            path.display()
        );
    }
    out.interrupted
        .insert((record.head.task_id.clone(), record.head.invoke_version));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;

    fn record(task: &str, repeat: RepeatType, start_ms: i64) -> RunRecord {
        RunRecord {
            head: ReportHead {
                task_id: task.to_string(),
                invoke_version: 3,
                repeat,
                wall_clock: WallClock::Cron {
                    zone_name: "Asia/Shanghai".to_string(),
                    offset_secs: 28800,
                },
            },
            start_ms,
            reported: false,
        }
    }

    #[test]
    fn a_record_round_trips() {
        let r = record("t/1 \"x\"", RepeatType::Period, 1_700_000_000_000);
        assert_eq!(decode(encode(&r).as_bytes()), Some(r.clone()));
        let r = RunRecord {
            head: ReportHead {
                wall_clock: WallClock::Rate,
                ..r.head
            },
            reported: true,
            ..r
        };
        assert_eq!(decode(encode(&r).as_bytes()), Some(r));
        assert_eq!(decode(b"{}"), None);
        assert_eq!(decode(b"garbage"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5678 1000 10";
        assert_eq!(stat_pgrp(stat), Some(1234));
        assert_eq!(stat_pgrp("1 (x) S"), None);
        assert_eq!(stat_pgrp("no parens"), None);
    }

    /// A fake `/proc` entry: `pid` in group `pgrp` with environment `env`.
    fn fake_proc(dir: &Path, pid: i32, pgrp: i32, env: &[&str]) {
        let p = dir.join(pid.to_string());
        fs::create_dir_all(&p).expect("mkdir");
        fs::write(
            p.join("stat"),
            format!("{pid} (sh) S 1 {pgrp} {pgrp} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7 1 1"),
        )
        .expect("write stat");
        let mut environ = Vec::new();
        for e in env {
            environ.extend_from_slice(e.as_bytes());
            environ.push(0);
        }
        fs::write(p.join("environ"), environ).expect("write environ");
    }

    #[test]
    fn the_processes_of_an_invocation_are_found_by_their_environment() {
        let proc_dir = TempDir::new("record-proc");
        let mine = ["PATH=/bin", "ASSISTD_TASK_ID=t", "ASSISTD_INVOKE_VERSION=3"];
        fake_proc(proc_dir.path(), 500, 500, &mine);
        // A background child that left the group keeps the environment.
        fake_proc(proc_dir.path(), 501, 777, &mine);
        fake_proc(
            proc_dir.path(),
            600,
            600,
            &["ASSISTD_TASK_ID=t", "ASSISTD_INVOKE_VERSION=4"],
        );
        fake_proc(
            proc_dir.path(),
            700,
            700,
            &["ASSISTD_TASK_ID=tt", "ASSISTD_INVOKE_VERSION=3"],
        );
        fake_proc(proc_dir.path(), 800, 800, &["PATH=/bin"]);
        let head = record("t", RepeatType::Once, 1).head;
        let mut found = processes_of(proc_dir.path(), &head);
        found.sort_unstable();
        assert_eq!(found, vec![(500, 500), (501, 777)]);
    }

    #[test]
    fn recovery_reports_each_record_once_and_remembers_once_invocations() {
        let state = TempDir::new("record-recover");
        let proc_dir = TempDir::new("record-recover-proc");
        let dir = RecordDir::new(state.path());
        // No process of either is left (the fake /proc is empty), so nothing is signalled.
        let once = dir
            .write(&record("once", RepeatType::Once, 1_700_000_000_000))
            .expect("write");
        let periodic = dir
            .write(&record("cron", RepeatType::Period, 1_700_000_000_000))
            .expect("write");
        // As after a SIGKILL: the guards never ran.
        std::mem::forget(once);
        std::mem::forget(periodic);
        fs::write(state.path().join("junk.json"), b"{").expect("write junk");
        let now = 1_700_000_005_000;
        let got = recover(&dir, proc_dir.path(), now, &|_, _| false);
        assert_eq!(got.reports.len(), 2);
        assert_eq!(got.killed, 0);
        assert_eq!(
            got.interrupted,
            HashSet::from([("once".to_string(), 3)]),
            "a periodic task runs again at its next firing"
        );
        for r in &got.reports {
            let Report::Error { err_code, span, .. } = r else {
                panic!("not an error report: {r:?}");
            };
            assert_eq!(err_code, ERR_AGENT_RESTARTED);
            assert_eq!(span.start_ms, 1_700_000_000_000);
            assert_eq!(span.end_ms, now);
        }
        assert!(state.path().join("junk.json.bad").exists());
        // A second start reports nothing again and still remembers the once-invocation.
        let got = recover(&dir, proc_dir.path(), now + 1000, &|_, _| false);
        assert!(got.reports.is_empty());
        assert_eq!(got.interrupted, HashSet::from([("once".to_string(), 3)]));
        // After REMEMBER_MS the mark goes.
        let got = recover(&dir, proc_dir.path(), now + REMEMBER_MS + 1, &|_, _| false);
        assert!(got.interrupted.is_empty());
        assert_eq!(
            fs::read_dir(state.path()).expect("list").count(),
            1,
            "only junk.json.bad is left"
        );
    }

    #[test]
    fn an_invocation_whose_final_was_written_is_not_reported_again() {
        let state = TempDir::new("record-final");
        let proc_dir = TempDir::new("record-final-proc");
        let dir = RecordDir::new(state.path());
        std::mem::forget(
            dir.write(&record("done", RepeatType::Once, 1_700_000_000_000))
                .expect("write"),
        );
        std::mem::forget(
            dir.write(&record("cut", RepeatType::Period, 1_700_000_000_000))
                .expect("write"),
        );
        // The killed agent had spooled the final of `done` (the server may even have it).
        let got = recover(&dir, proc_dir.path(), 1_700_000_005_000, &|head, start| {
            head.task_id == "done" && start == 1_700_000_000_000
        });
        let reported: Vec<&str> = got
            .reports
            .iter()
            .map(|r| r.head().task_id.as_str())
            .collect();
        assert_eq!(reported, ["cut"]);
        assert_eq!(
            got.interrupted,
            HashSet::from([("done".to_string(), 3)]),
            "a once-invocation that ended is not run again on re-delivery"
        );
    }

    #[test]
    fn dropping_the_guard_removes_the_record() {
        let state = TempDir::new("record-guard");
        let dir = RecordDir::new(state.path());
        let guard = dir.write(&record("t", RepeatType::Once, 1)).expect("write");
        assert_eq!(fs::read_dir(state.path()).expect("list").count(), 1);
        drop(guard);
        assert_eq!(fs::read_dir(state.path()).expect("list").count(), 0);
    }
}
