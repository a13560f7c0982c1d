//! The tool commands that need no running agent: `next`, `check`, `journal`. They read files and
//! print; they never start a thread or change the state dir.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};

use super::args::Args;
use super::{io_err, load_config, CliError};
use crate::error_chain::error_chain;
use crate::fsutil::StateDir;
use crate::report::journal;
use crate::runner;
use crate::schedule::crontab::{self, CrontabTime};
use crate::schedule::{self, Schedule, ScheduleKind};
use crate::source::local;

/// The grammar an expression looks like: `rate(`, `at(`, else cron.
fn guess_kind(expr: &str) -> ScheduleKind {
    let lower = expr.trim_start().to_ascii_lowercase();
    if lower.starts_with("rate") {
        ScheduleKind::Rate
    } else if lower.starts_with("at(") {
        ScheduleKind::At
    } else {
        ScheduleKind::Cron
    }
}

/// `--from`: an RFC 3339 time; one without its UTC offset is told how to add it.
fn parse_from(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    // A time that parses once `Z` is added lacks only its offset.
    let t = text.trim().replace(' ', "T");
    if DateTime::parse_from_rfc3339(&format!("{t}Z")).is_ok() {
        return Err(format!(
            "--from {text:?} has no UTC offset: write {t}Z for UTC, or add the offset, e.g. {t}+08:00"
        ));
    }
    Err(format!(
        "--from {text:?} is not an RFC 3339 time: write e.g. 2030-01-01T08:00:00Z or 2030-01-01T08:00:00+08:00"
    ))
}

/// `--count`: how many fire times to print.
fn parse_count(text: &str) -> Result<usize, String> {
    text.trim().parse().map_err(|_| {
        format!("--count takes how many fire times to print, a whole number such as --count 10, not {text:?}")
    })
}

pub(super) fn cmd_next(mut args: Args) -> Result<ExitCode, CliError> {
    let from = match args.value("--from")? {
        Some(text) => parse_from(&text).map_err(CliError::Usage)?,
        None => Utc::now(),
    };
    let count: usize = match args.value("--count")? {
        Some(n) => parse_count(&n).map_err(CliError::Usage)?,
        None => 5,
    };
    let kind = match args.value("--repeat")?.as_deref() {
        None => None,
        Some("Period") => Some(ScheduleKind::Cron),
        Some("Rate") => Some(ScheduleKind::Rate),
        Some("At") => Some(ScheduleKind::At),
        Some(other) => {
            return Err(CliError::Usage(format!(
                "--repeat must be Period, Rate or At, not {other:?}"
            )))
        }
    };
    let creation_ms: i64 = match args.value("--creation-time")? {
        Some(n) => n.parse().map_err(|_| {
            CliError::Usage(format!("--creation-time must be milliseconds, not {n:?}"))
        })?,
        None => 0,
    };
    let crontab_flag = args.flag("--crontab");
    let task_file = args.value("--task")?;
    let mut delay: u32 = match args.value("--random-delay")? {
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| u64::from(*n) <= local::MAX_RANDOM_DELAY)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--random-delay must be whole seconds from 0 to {}, not {n:?}",
                    local::MAX_RANDOM_DELAY
                ))
            })?,
        None => 0,
    };
    args.finish()?;
    // `--task FILE`: the schedule, rate origin and randomDelay of a task file, as the agent
    // reads them.
    let mut creation_ms = creation_ms;
    let mut kind = kind;
    let from_task;
    let expr = match (&task_file, args.positionals.as_slice()) {
        (Some(path), []) => {
            let info = local::load_file(Path::new(path)).map_err(CliError::Load)?;
            kind = Some(match info.repeat {
                crate::model::RepeatType::Period => ScheduleKind::Cron,
                crate::model::RepeatType::Rate => ScheduleKind::Rate,
                crate::model::RepeatType::At => ScheduleKind::At,
                other => {
                    return Err(CliError::Usage(format!(
                        "task {} has no fire times (repeat {other})",
                        info.task_id
                    )))
                }
            });
            creation_ms = info.creation_time;
            if let Some(extras) = &info.local {
                delay = delay.max(extras.random_delay_secs);
            }
            eprintln!("task {}: {} {:?}", info.task_id, info.repeat, info.cron);
            from_task = info.cron;
            &from_task
        }
        (None, [expr]) => expr,
        _ => {
            return Err(CliError::Usage(
                "next takes exactly one expression (quote it), or --task FILE".to_string(),
            ))
        }
    };
    let kind = kind.unwrap_or_else(|| guess_kind(expr));
    let looks_crontab = kind == ScheduleKind::Cron && crontab::is_crontab_form(expr);
    if crontab_flag && kind != ScheduleKind::Cron {
        return Err(CliError::Usage(
            "--crontab reads a cron time, not a rate or at expression".to_string(),
        ));
    }
    let expr = if crontab_flag || looks_crontab {
        match crontab::to_seconds_first(expr).map_err(CliError::Crontab)? {
            CrontabTime::Cron(text) => {
                eprintln!("crontab form {expr:?}, read as seconds-first {text:?}");
                text
            }
            CrontabTime::Reboot => {
                return Err(CliError::Usage(
                    "@reboot has no fire times: it runs once at every boot".to_string(),
                ))
            }
        }
    } else {
        expr.clone()
    };
    let expr = &expr;
    let zone = schedule::tz::system_zone();
    let schedule = Schedule::parse(expr, kind, creation_ms, &zone).map_err(CliError::Schedule)?;
    let mut next = schedule.first_after(from).map_err(CliError::Schedule)?;
    let mut out = io::stdout().lock();
    for i in 0..count {
        writeln!(out, "{}", next.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .map_err(io_err("cannot write"))?;
        if i + 1 == count {
            break;
        }
        match schedule.next_after(next) {
            Some(n) => next = n,
            None => break,
        }
    }
    if delay > 0 {
        eprintln!(
            "randomDelay {delay}: each firing first waits a random time in [0, {delay}) s; the times above are undelayed"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_check(mut args: Args) -> Result<ExitCode, CliError> {
    args.finish()?;
    let [target] = args.positionals.as_slice() else {
        return Err(CliError::Usage(
            "check takes one task file or directory".to_string(),
        ));
    };
    let target = PathBuf::from(target);
    // Nothing to check is an error of the command (exit 2), not a problem of a task (exit 1).
    let meta =
        std::fs::metadata(&target).map_err(io_err(format!("cannot check {}", target.display())))?;
    let zone = schedule::tz::system_zone();
    let mut problems: Vec<String> = Vec::new();
    // The agent's own reading: the directory's trust, every file's checks, ids used twice.
    let (tasks, errors) = if meta.is_dir() {
        local::load_dir(&target)
    } else {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (_, siblings) = local::load_dir(dir);
        let mut errors: Vec<local::LoadError> = siblings
            .into_iter()
            .filter(|e| {
                e.path == dir
                    || (e.path == target
                        && matches!(e.kind, local::LoadErrorKind::DuplicateId { .. }))
            })
            .collect();
        let mut tasks = Vec::new();
        match local::load_file(&target) {
            Ok(task) => tasks.push((target.clone(), task)),
            Err(e) => errors.push(e),
        }
        (tasks, errors)
    };
    problems.extend(errors.iter().map(|e| error_chain(e)));
    let mut warnings: Vec<String> = Vec::new();
    for (path, task) in &tasks {
        let (found, warned) = check_task(path, task, &zone);
        problems.extend(found);
        warnings.extend(warned);
    }
    let mut out = io::stdout().lock();
    for problem in &problems {
        writeln!(out, "{problem}").map_err(io_err("cannot write"))?;
    }
    // Not problems (the file is valid and changes nothing while it sits there), but nobody
    // keeps such a file on purpose: on stderr, and the exit code stays 0.
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if !problems.is_empty() {
        return Ok(ExitCode::from(1));
    }
    writeln!(out, "{} task file(s) OK", tasks.len()).map_err(io_err("cannot write"))?;
    Ok(ExitCode::SUCCESS)
}

/// What the engine and the runner would refuse in a task that loaded: its schedule (parsed
/// as the engine parses it, with its first run after now) and what the runner checks before
/// it starts a process. Each problem is one line naming the file. A schedule with no run
/// left (an `at` in the past, a cron whose years are over) is a warning instead: the agent
/// only says so, once, and the file harms nothing.
fn check_task(
    path: &Path,
    info: &crate::model::RunTaskInfo,
    zone: &schedule::Zone,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if info.repeat.is_periodic() {
        let kind = match info.repeat {
            crate::model::RepeatType::Rate => ScheduleKind::Rate,
            crate::model::RepeatType::At => ScheduleKind::At,
            _ => ScheduleKind::Cron,
        };
        match Schedule::parse(&info.cron, kind, info.creation_time, zone)
            .and_then(|s| s.first_after(Utc::now()))
        {
            Err(e)
                if matches!(
                    e.code,
                    schedule::ErrorCode::CronExpressionExpired
                        | schedule::ErrorCode::AtExpressionExpired
                ) =>
            {
                warnings.push(format!(
                    "{}: never runs again: {:?} has no run after now",
                    path.display(),
                    info.cron
                ));
            }
            Err(e) => problems.push(format!("{}: cron: {e}", path.display())),
            Ok(_) => {}
        }
    }
    if let Err(invalid) = runner::validate(info) {
        problems.push(format!(
            "{}: {}: {}",
            path.display(),
            invalid.param,
            invalid.value
        ));
    }
    (problems, warnings)
}

pub(super) fn cmd_journal(mut args: Args) -> Result<ExitCode, CliError> {
    let cfg = load_config(&mut args)?;
    let task = args.value("--task")?;
    let since = args
        .value("--since")?
        .map(|t| journal::parse_since(&t, Utc::now()))
        .transpose()
        .map_err(CliError::Usage)?;
    let last = match args.value("-n")? {
        Some(n) => Some(n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            CliError::Usage(format!(
                "-n takes how many invocations to show, a whole number above 0 (e.g. -n 10), not {n:?}"
            ))
        })?),
        None => None,
    };
    let failed = args.flag("--failed");
    let follow = args.flag("--follow") || args.flag("-f");
    args.finish()?;
    if let Some(extra) = args.positionals.first() {
        return Err(CliError::Usage(format!("unexpected argument {extra:?}")));
    }
    let dir = StateDir::new(cfg.state_dir.clone()).journal_dir();
    if !follow && !dir.exists() {
        eprintln!(
            "no journal in {} yet (no local agent has run with this state dir)",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let query = journal::Query {
        task,
        since,
        failed,
        last,
        max_output: cfg.max_log_quota,
    };
    let mut out = io::stdout().lock();
    journal::print(&dir, &query, follow, &mut out).map_err(io_err(format!(
        "cannot print the journal in {}",
        dir.display()
    )))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_says_what_it_takes() {
        assert_eq!(parse_count("3"), Ok(3));
        assert_eq!(
            parse_count("-1"),
            Err("--count takes how many fire times to print, a whole number such as --count 10, not \"-1\"".to_string())
        );
    }

    #[test]
    fn from_without_an_offset_is_told_how_to_add_one() {
        assert_eq!(
            parse_from("2030-01-01T00:00:00+08:00").map(|t| t.to_rfc3339()),
            Ok("2029-12-31T16:00:00+00:00".to_string())
        );
        assert_eq!(
            parse_from("2030-01-01T00:00:00"),
            Err("--from \"2030-01-01T00:00:00\" has no UTC offset: write 2030-01-01T00:00:00Z for UTC, or add the offset, e.g. 2030-01-01T00:00:00+08:00".to_string())
        );
        assert_eq!(
            parse_from("2030-01-01 00:00:00"),
            Err("--from \"2030-01-01 00:00:00\" has no UTC offset: write 2030-01-01T00:00:00Z for UTC, or add the offset, e.g. 2030-01-01T00:00:00+08:00".to_string())
        );
        assert_eq!(
            parse_from("tomorrow"),
            Err("--from \"tomorrow\" is not an RFC 3339 time: write e.g. 2030-01-01T08:00:00Z or 2030-01-01T08:00:00+08:00".to_string())
        );
    }

    #[test]
    fn expressions_are_recognised_by_their_look() {
        assert_eq!(guess_kind("rate(5m)"), ScheduleKind::Rate);
        assert_eq!(guess_kind("RATE (5m)"), ScheduleKind::Rate);
        assert_eq!(guess_kind("at(2030-01-01T00:00:00)"), ScheduleKind::At);
        assert_eq!(guess_kind("0 0 * * * ?"), ScheduleKind::Cron);
    }
}
