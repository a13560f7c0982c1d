//! `assistd list` (what a local agent has scheduled and how each task last ran, from the
//! status file) and `assistd run ID` (ask the running agent to run a task now, through the
//! control socket). They read files and ask; they never change the state dir.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat, TimeZone, Timelike, Utc};
use serde_json::{json, Value};

use super::args::Args;
use super::{io_err, load_config, CliError};
use crate::fsutil::{self, StateDir};
use crate::schedule::{self, Schedule, ScheduleKind, Zone};
use crate::status::{self, LastRun, Liveness, StatusFile, TaskStatus};

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn local(t: DateTime<Utc>, zone: &Zone) -> DateTime<FixedOffset> {
    let offset = FixedOffset::east_opt(zone.offset_secs_at(t))
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
    t.with_timezone(&offset)
}

/// `2030-01-01 08:00:00 +08:00`: the table's local time, written out by hand because chrono's
/// `format` links its strftime parser for this one line.
fn local_display(t: DateTime<FixedOffset>) -> String {
    let offset = t.offset().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let minutes = offset.unsigned_abs() / 60;
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {sign}{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        minutes / 60,
        minutes % 60
    )
}

/// The next undelayed run of a task after `now`, computed as the agent does.
fn next_run(task: &TaskStatus, zone: &Zone, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let kind = match task.repeat.as_str() {
        "Period" => ScheduleKind::Cron,
        "Rate" => ScheduleKind::Rate,
        "At" => ScheduleKind::At,
        _ => return None,
    };
    Schedule::parse(&task.cron, kind, task.creation_time, zone)
        .ok()?
        .next_after(now)
}

/// `1.2s`, `3m04s`, `2h05m`.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    if s < 60 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn run_json(run: &LastRun) -> Value {
    json!({
        "invoke_version": run.invoke_version,
        "started": utc(run.started_ms).map(rfc3339),
        "ended": (run.ended_ms > 0).then(|| utc(run.ended_ms).map(rfc3339)).flatten(),
        "result": run.result,
        "exit_code": run.exit_code,
        "duration_ms": (run.ended_ms > 0).then(|| (run.ended_ms - run.started_ms).max(0)),
    })
}

/// The `--json` document (README "assistd list --json").
fn list_json(file: &StatusFile, live: Liveness, zone: &Zone, now: DateTime<Utc>) -> Value {
    let running = live == Liveness::Running;
    let tasks: Vec<Value> = file
        .tasks
        .iter()
        .map(|t| {
            let next = running.then(|| next_run(t, zone, now)).flatten();
            json!({
                "id": t.id,
                "schedule": t.schedule,
                "cron": t.cron,
                "repeat": t.repeat,
                "invoke_version": t.invoke_version,
                "catch_up": if t.catch_up { "last" } else { "none" },
                "random_delay": t.random_delay_secs,
                "next": next.map(rfc3339),
                "next_local": next.map(|n| local(n, zone).to_rfc3339_opts(SecondsFormat::Secs, true)),
                "running": t.running().map(run_json),
                "last": t.ended().map(run_json),
            })
        })
        .collect();
    json!({
        "agent": {
            "state": match live {
                Liveness::Running => "running",
                Liveness::Stopped => "stopped",
                Liveness::Gone => "gone",
            },
            "pid": file.agent.pid,
            "started": utc(file.agent.started_ms).map(rfc3339),
            "stopped": file.agent.stopped_ms.and_then(utc).map(rfc3339),
        },
        "updated": utc(file.updated_ms).map(rfc3339),
        "tasks": tasks,
        "left_out": file.left_out,
    })
}

/// The table for people.
fn list_text(file: &StatusFile, live: Liveness, zone: &Zone, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let started = utc(file.agent.started_ms).map(rfc3339).unwrap_or_default();
    let updated = utc(file.updated_ms).map(rfc3339).unwrap_or_default();
    out.push_str(&match live {
        Liveness::Running => format!(
            "agent: running (pid {}, since {started})\n",
            file.agent.pid
        ),
        Liveness::Stopped => format!(
            "agent: not running (stopped {}); last known state\n",
            file.agent.stopped_ms.and_then(utc).map(rfc3339).unwrap_or_default()
        ),
        Liveness::Gone => format!(
            "agent: not running (pid {} started {started} ended without a clean stop); last known state from {updated}\n",
            file.agent.pid
        ),
    });
    let header = [
        "TASK",
        "SCHEDULE",
        "REPEAT",
        "NEXT",
        "NEXT (UTC)",
        "DELAY",
        "LAST (UTC)",
        "RESULT",
        "EXIT",
        "DURATION",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for t in &file.tasks {
        let next = (live == Liveness::Running)
            .then(|| next_run(t, zone, now))
            .flatten();
        let dash = || "-".to_string();
        let (last, result, exit, took) = match (t.running(), t.ended()) {
            // Under way when the agent died: the next agent reports it as an error.
            (Some(run), _) if live != Liveness::Running => (
                utc(run.started_ms).map(rfc3339).unwrap_or_else(dash),
                "interrupted".to_string(),
                dash(),
                dash(),
            ),
            (Some(run), _) => (
                utc(run.started_ms).map(rfc3339).unwrap_or_else(dash),
                "running".to_string(),
                dash(),
                duration(now.timestamp_millis() - run.started_ms),
            ),
            (None, Some(run)) => (
                utc(run.started_ms).map(rfc3339).unwrap_or_else(dash),
                run.result.clone(),
                run.exit_code.map(|c| c.to_string()).unwrap_or_else(dash),
                duration(run.ended_ms - run.started_ms),
            ),
            (None, None) => (dash(), dash(), dash(), dash()),
        };
        rows.push(vec![
            t.id.clone(),
            if t.schedule.is_empty() {
                dash()
            } else {
                t.schedule.clone()
            },
            t.repeat.clone(),
            next.map(|n| local_display(local(n, zone)))
                .unwrap_or_else(dash),
            next.map(rfc3339).unwrap_or_else(dash),
            if t.random_delay_secs > 0 {
                format!("<{}s", t.random_delay_secs)
            } else {
                dash()
            },
            last,
            result,
            exit,
            took,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(crate::escape::for_terminal(line.trim_end()).as_ref());
        out.push('\n');
    }
    if file.left_out > 0 {
        out.push_str(&format!(
            "({} more task(s) not in the status file)\n",
            file.left_out
        ));
    }
    out
}

pub(super) fn cmd_list(mut args: Args) -> Result<ExitCode, CliError> {
    let cfg = load_config(&mut args)?;
    let as_json = args.flag("--json");
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    let state = StateDir::new(cfg.state_dir.clone());
    let uid = fsutil::euid();
    if std::fs::symlink_metadata(&state.root).is_err() {
        return Err(CliError::Status(status::StatusError::Missing(
            state.status_file(),
        )));
    }
    state.check_trust(uid).map_err(CliError::Untrusted)?;
    let file = status::read(&state.status_file(), uid).map_err(CliError::Status)?;
    let boot = fsutil::boot_id().ok();
    let live = status::liveness(&file.agent, Path::new("/proc"), boot.as_deref());
    let zone = schedule::tz::system_zone();
    let now = Utc::now();
    let text = if as_json {
        let mut t = list_json(&file, live, &zone, now).to_string();
        t.push('\n');
        t
    } else {
        list_text(&file, live, &zone, now)
    };
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(io_err("cannot write"))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_run(mut args: Args) -> Result<ExitCode, CliError> {
    let cfg = load_config(&mut args)?;
    args.finish()?;
    let [id] = args.positionals.as_slice() else {
        return Err(CliError::Usage("run takes one task id".to_string()));
    };
    let state = StateDir::new(cfg.state_dir.clone());
    let socket = state.control_socket();
    if std::fs::symlink_metadata(&state.root).is_err() {
        return Err(CliError::Agent(format!(
            "no agent is running with state dir {} (it does not exist)",
            state.root.display()
        )));
    }
    state
        .check_trust(fsutil::euid())
        .map_err(CliError::Untrusted)?;
    let (answer, version) = crate::control::ask_run(&state.root, id).map_err(|e| {
        let what = match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
                "no agent is running with state dir {} (cannot connect to {})",
                state.root.display(),
                socket.display()
            ),
            io::ErrorKind::PermissionDenied => format!(
                "only root or the state dir's owner may ask the agent (cannot connect to {})",
                socket.display()
            ),
            _ => format!("cannot ask the agent through {}", socket.display()),
        };
        CliError::Io { what, source: e }
    })?;
    let journal = format!(
        "assistd journal --state-dir {} --task {id}",
        state.root.display()
    );
    let version = version.unwrap_or(0);
    let mut out = io::stdout().lock();
    match answer.as_str() {
        "started" => {
            writeln!(
                out,
                "started task={id} invoke_version={version}\nits result: {journal}"
            )
            .map_err(io_err("cannot write"))?;
            Ok(ExitCode::SUCCESS)
        }
        "running" => {
            writeln!(
                out,
                "not started: task {id} is already queued or running (invoke_version={version}); one runs at a time\nits result: {journal}"
            )
            .map_err(io_err("cannot write"))?;
            Ok(ExitCode::from(1))
        }
        "unknown" => Err(CliError::Agent(format!(
            "the agent has no task {id:?} (`assistd list` shows its tasks)"
        ))),
        "stopping" => Err(CliError::Agent(
            "the agent is shutting down; nothing was started".to_string(),
        )),
        "refused" => Err(CliError::Agent(
            "the agent refused: only root or the state dir's owner may ask".to_string(),
        )),
        other => Err(CliError::Agent(format!(
            "the agent answered {other:?}; nothing was started"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(1_234), "1.2s");
        assert_eq!(duration(184_000), "3m04s");
        assert_eq!(duration(7_500_000), "2h05m");
        assert_eq!(duration(-5), "0.0s");
    }

    #[test]
    fn local_times_carry_their_offset_as_hours_and_minutes() {
        let t = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 5).unwrap();
        let at = |secs| t.with_timezone(&FixedOffset::east_opt(secs).unwrap());
        assert_eq!(local_display(at(8 * 3600)), "2030-01-01 08:00:05 +08:00");
        assert_eq!(local_display(at(0)), "2030-01-01 00:00:05 +00:00");
        assert_eq!(
            local_display(at(-(3 * 3600 + 30 * 60))),
            "2029-12-31 20:30:05 -03:30"
        );
        assert_eq!(
            local_display(at(5 * 3600 + 45 * 60)),
            "2030-01-01 05:45:05 +05:45"
        );
    }

    #[test]
    fn a_stopped_agent_shows_no_next_run_and_the_last_result() {
        let file = StatusFile {
            format: status::FORMAT,
            tasks: vec![TaskStatus {
                id: "a".to_string(),
                schedule: "*/5 * * * *".to_string(),
                cron: "0 */5 * * * *".to_string(),
                repeat: "Period".to_string(),
                random_delay_secs: 30,
                last: Some(LastRun {
                    invoke_version: 1,
                    started_ms: 1_000,
                    ended_ms: 3_000,
                    result: "finished".to_string(),
                    exit_code: Some(0),
                }),
                ..TaskStatus::default()
            }],
            ..StatusFile::default()
        };
        let now = utc(10_000).expect("time");
        let zone = Zone::utc();
        let text = list_text(&file, Liveness::Stopped, &zone, now);
        assert!(text.starts_with("agent: not running (stopped"), "{text}");
        let row = text.lines().nth(2).expect("row");
        assert!(
            row.contains("*/5 * * * *")
                && row.contains("finished")
                && row.contains("2.0s")
                && row.contains("<30s"),
            "{row}"
        );
        let v = list_json(&file, Liveness::Running, &zone, now);
        assert_eq!(v["agent"]["state"], "running");
        assert_eq!(v["tasks"][0]["next"], "1970-01-01T00:05:00Z");
        assert_eq!(v["tasks"][0]["last"]["duration_ms"], 2000);
        assert_eq!(v["tasks"][0]["running"], Value::Null);
    }
}
