//! Records of running invocations, so that nothing a crashed agent started keeps running
//! unowned or goes unreported. Right after a child is spawned the runner writes one record in
//! `<state-dir>/running/` (task id, invoke version, repeat, wall-clock kind, the process group,
//! the leader's start time from `/proc/<pid>/stat`, the start in ms) and removes it once the
//! final report was sent (delivered, spooled, or journalled). A record still there at startup
//! belongs to an agent that died while its child ran: `recover` kills that process group, if it
//! still runs, and reports the invocation as an `error`.
//!
//! The leader's start time tells our process group from a later one that reused the number:
//! a pid whose `/proc` start time differs is someone else's, and is never signalled.
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
use crate::report::{Report, ReportHead, Reporter, Span, WallClock};

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
    pub pgid: i32,
    /// Field 22 of `/proc/<pgid>/stat` (clock ticks since boot) when the leader was spawned.
    pub leader_start: u64,
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

/// `<task id, filename-safe>.<invoke version>.<pgid>.json`.
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
    format!("{safe}.{}.{}.json", record.head.invoke_version, record.pgid)
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
        "pgid": record.pgid,
        "leader_start": record.leader_start,
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
        pgid: i32::try_from(v.get("pgid")?.as_i64()?)
            .ok()
            .filter(|p| *p > 1)?,
        leader_start: v.get("leader_start")?.as_u64()?,
        start_ms: v.get("start_ms")?.as_i64()?,
        reported: v.get("reported")?.as_bool()?,
    })
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` text. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; starttime is field 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Field 5 (`pgrp`) of a `/proc/<pid>/stat` text.
fn stat_pgrp(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(5 - 3)?.parse().ok()
}

/// The leader's start time, read right after spawn.
pub fn leader_start_time(proc_root: &Path, pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    stat_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))
}

/// True when the process group of `record` still has a member that is ours: its leader with
/// the recorded start time, or (the leader gone) any process in that group while no other
/// process holds the number as its pid. A number held by a process with another start time is
/// a reuse: not ours.
fn group_is_ours(proc_root: &Path, record: &RunRecord) -> bool {
    match fs::read_to_string(proc_root.join(record.pgid.to_string()).join("stat")) {
        Ok(stat) => stat_start_time(&stat) == Some(record.leader_start),
        Err(_) => {
            let Ok(entries) = fs::read_dir(proc_root) else {
                return false;
            };
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().parse::<u32>().is_ok()
                    && fs::read_to_string(e.path().join("stat"))
                        .ok()
                        .and_then(|s| stat_pgrp(&s))
                        == Some(record.pgid)
            })
        }
    }
}

/// What `recover` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// (task id, invoke version) of once-invocations that were interrupted, now or in an
    /// earlier recovery within `REMEMBER_MS`: the engine never runs them again.
    pub interrupted: HashSet<(String, i64)>,
    /// Process groups killed.
    pub killed: usize,
    /// Error reports sent.
    pub reported: usize,
}

/// Startup, before any invocation runs: kills every process group a crashed agent left
/// (checked by start time), reports each interrupted invocation as `error` with
/// `ERR_AGENT_RESTARTED`, and returns which once-invocations must not run again.
pub fn recover(
    records: &RecordDir,
    proc_root: &Path,
    reporter: &dyn Reporter,
    now_ms: i64,
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
        let mut killed = false;
        if group_is_ours(proc_root, &record) {
            // SAFETY: plain syscall; the group was checked to be the one we started.
            if unsafe { libc::kill(-record.pgid, libc::SIGKILL) } == 0 {
                killed = true;
                out.killed += 1;
            }
        }
        log::warn!(
            "task={id} invoke_version={version} phase=recover the agent stopped while this invocation ran (pgid {}): {}; reporting it as error {ERR_AGENT_RESTARTED}",
            record.pgid,
            if killed { "killed its process group" } else { "its process group had ended" }
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
                "{ERR_AGENT_RESTARTED}: the agent stopped while this invocation ran; at its restart the process group {} was {}; its output is lost",
                record.pgid,
                if killed { "killed" } else { "already gone" }
            ),
            output: Vec::new(),
        };
        if let Err(e) = reporter.send(&report) {
            log::error!(
                "task={id} invoke_version={version} phase=recover cannot send the error report ({e})"
            );
        }
        out.reported += 1;
        if once {
            // Kept, marked, so a re-delivery within REMEMBER_MS is refused by the engine.
            record.reported = true;
            if let Err(e) = fsutil::write_atomic(&path, encode(&record).as_bytes(), 0o600) {
                log::warn!(
                    "phase=recover cannot mark {} reported ({e})",
                    path.display()
                );
            }
            out.interrupted.insert((id, version));
        } else if let Err(e) = fs::remove_file(&path) {
            log::warn!("phase=recover cannot remove {} ({e})", path.display());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;
    use crate::report::MemoryReporter;

    fn record(task: &str, repeat: RepeatType, pgid: i32, leader_start: u64) -> RunRecord {
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
            pgid,
            leader_start,
            start_ms: 1_700_000_000_000,
            reported: false,
        }
    }

    #[test]
    fn a_record_round_trips() {
        let r = record("t/1 \"x\"", RepeatType::Period, 4242, 99);
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
        let bad_pgid = encode(&record("t", RepeatType::Once, 1, 1));
        assert_eq!(decode(bad_pgid.as_bytes()), None, "pgid 1 is never ours");
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5678 1000 10";
        assert_eq!(stat_start_time(stat), Some(5678));
        assert_eq!(stat_pgrp(stat), Some(1234));
        assert_eq!(stat_start_time("1 (x) S 1"), None);
        assert_eq!(stat_start_time("no parens"), None);
    }

    /// A fake `/proc` with one process: `pid` with `pgrp` and start time `start`.
    fn fake_proc(dir: &Path, pid: i32, pgrp: i32, start: u64) {
        let p = dir.join(pid.to_string());
        fs::create_dir_all(&p).expect("mkdir");
        fs::write(
            p.join("stat"),
            format!("{pid} (sh) S 1 {pgrp} {pgrp} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1 1"),
        )
        .expect("write stat");
    }

    #[test]
    fn a_reused_pid_is_not_ours_and_a_leaderless_group_is() {
        let proc_dir = TempDir::new("record-proc");
        fake_proc(proc_dir.path(), 500, 500, 111);
        assert!(group_is_ours(
            proc_dir.path(),
            &record("t", RepeatType::Once, 500, 111)
        ));
        assert!(
            !group_is_ours(proc_dir.path(), &record("t", RepeatType::Once, 500, 222)),
            "same pid, another start time: a reuse"
        );
        // The leader 600 is gone, a member of its group lives on.
        fake_proc(proc_dir.path(), 601, 600, 300);
        assert!(group_is_ours(
            proc_dir.path(),
            &record("t", RepeatType::Once, 600, 1)
        ));
        assert!(!group_is_ours(
            proc_dir.path(),
            &record("t", RepeatType::Once, 700, 1)
        ));
    }

    #[test]
    fn recovery_reports_each_record_once_and_remembers_once_invocations() {
        let state = TempDir::new("record-recover");
        let proc_dir = TempDir::new("record-recover-proc");
        let dir = RecordDir::new(state.path());
        // Neither group runs (the fake /proc is empty), so nothing is signalled.
        let once = dir
            .write(&record("once", RepeatType::Once, 100_001, 5))
            .expect("write");
        let periodic = dir
            .write(&record("cron", RepeatType::Period, 100_002, 5))
            .expect("write");
        // As after a SIGKILL: the guards never ran.
        std::mem::forget(once);
        std::mem::forget(periodic);
        fs::write(state.path().join("junk.json"), b"{").expect("write junk");
        let reporter = MemoryReporter::default();
        let now = 1_700_000_005_000;
        let got = recover(&dir, proc_dir.path(), &reporter, now);
        assert_eq!(got.reported, 2);
        assert_eq!(got.killed, 0);
        assert_eq!(
            got.interrupted,
            HashSet::from([("once".to_string(), 3)]),
            "a periodic task runs again at its next firing"
        );
        let reports = reporter.reports();
        assert_eq!(reports.len(), 2);
        for r in &reports {
            let Report::Error { err_code, span, .. } = r else {
                panic!("not an error report: {r:?}");
            };
            assert_eq!(err_code, ERR_AGENT_RESTARTED);
            assert_eq!(span.start_ms, 1_700_000_000_000);
            assert_eq!(span.end_ms, now);
        }
        assert!(state.path().join("junk.json.bad").exists());
        // A second start reports nothing again and still remembers the once-invocation.
        let again = MemoryReporter::default();
        let got = recover(&dir, proc_dir.path(), &again, now + 1000);
        assert_eq!(got.reported, 0);
        assert_eq!(got.interrupted, HashSet::from([("once".to_string(), 3)]));
        assert!(again.reports().is_empty());
        // After REMEMBER_MS the mark goes.
        let got = recover(&dir, proc_dir.path(), &again, now + REMEMBER_MS + 1);
        assert!(got.interrupted.is_empty());
        assert_eq!(
            fs::read_dir(state.path()).expect("list").count(),
            1,
            "only junk.json.bad is left"
        );
    }

    #[test]
    fn dropping_the_guard_removes_the_record() {
        let state = TempDir::new("record-guard");
        let dir = RecordDir::new(state.path());
        let guard = dir
            .write(&record("t", RepeatType::Once, 4242, 1))
            .expect("write");
        assert_eq!(fs::read_dir(state.path()).expect("list").count(), 1);
        drop(guard);
        assert_eq!(fs::read_dir(state.path()).expect("list").count(), 0);
    }
}
