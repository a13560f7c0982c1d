//! `make soak`: the release agent under a bounded load against the control-plane double of
//! `tests/support/server.rs`, with failures injected on the report endpoints and two restarts,
//! then an account of what reached the server. It never measures anything but the agent binary
//! it is given, and talks to nothing but the double on loopback.
//!
//! ```text
//! soak [AGENT] [--secs S] [--periodic N] [--rate N] [--once N]    (SOAK_SECS sets --secs)
//! soak [AGENT] --spool N                                           (the spool figure)
//! ```
//!
//! Defaults: target/release/assistd, 600 s, 5,000 periodic tasks of which 50 are `rate(1s)`
//! and the rest crons firing once every 2 minutes (spread over the seconds of that period),
//! batches of 200 once-tasks. Every 10th request to a report endpoint fails: a 500, a reset
//! or a hang past the request timeout, in turn.
//!
//! Timeline (T = --secs): agent 1 gets batch 1 and the periodic tasks; at 0.4 T it is stopped
//! with SIGTERM and agent 2 starts with batch 2 and the periodic tasks; 0.2 T later agent 2 is
//! SIGKILLed while batch 2 runs; agent 3 starts with the unfinished part of batch 2 delivered
//! again (it must not run twice), settles (idle point 0), then gets batch 3 and the periodic
//! tasks for 0.3 T, then the periodic tasks are stopped; when all is quiet: idle point 1; then a
//! short second load (batch 4 and the periodic tasks for 0.1 T, then stopped); idle point 2.
//!
//! Verdict: every invocation any final report names has exactly one accepted final report
//! (after merging copies of the same report that the agent re-sent because it never saw the
//! answer); every once-task exactly one invocation; no task's script started more often than
//! it has invocations with an accepted final; no script process left running or a zombie; the
//! fd count at idle points 1 and 2 equal to idle point 0; anonymous RSS growth from idle point
//! 1 to 2 under 1 MiB (the binary's own pages are not a leak: see `Footprint`). Exit status 1
//! when any of these fails.
//!
//! The spool figure (`--spool N`): N spool files written in the agent's own format (with its
//! own atomic write), their size on disk, then the agent started against the double and timed
//! until its spool directory is empty.

#[path = "../tests/support/server.rs"]
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use server::{shell_entry, task_list, Reply, Request, Server, OUTPUT, TASK_LIST};

const FINISH: &str = "/luban/api/v1/task/finish";
const RUNNING: &str = "/luban/api/v1/task/running";
/// Every endpoint of a final report (spec §2.3).
const FINALS: [&str; 5] = [
    FINISH,
    "/luban/api/v1/task/timeout",
    "/luban/api/v1/task/error",
    "/luban/api/v1/task/stopped",
    "/luban/api/v1/task/invalid",
];
/// Bounds one wait (an agent's exit, the startup fetch); only a failure takes this long.
const DEADLINE: Duration = Duration::from_secs(120);
/// How long agent 3 may take to send what recovery and the killed agent left in its spool:
/// one thread re-sends in order, and with one request in ten refused (a 2 s retry each, a
/// 6 s hang for some) several hundred reports take minutes.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(420);
/// How long nothing may reach the report endpoints for the agent to count as quiet.
const QUIET: Duration = Duration::from_secs(4);
/// Every how many report requests one fails.
const FAULT_EVERY: u64 = 10;

struct Options {
    agent: PathBuf,
    secs: u64,
    periodic: usize,
    rate: usize,
    once: usize,
    spool: Option<usize>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        agent: PathBuf::from("target/release/assistd"),
        secs: match std::env::var("SOAK_SECS") {
            Ok(v) => v
                .parse()
                .map_err(|_| format!("SOAK_SECS={v:?} is not a whole number"))?,
            Err(_) => 600,
        },
        periodic: 5000,
        rate: 50,
        once: 200,
        spool: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match a.as_str() {
            "--secs" => opts.secs = number("--secs")?,
            "--periodic" => opts.periodic = number("--periodic")? as usize,
            "--rate" => opts.rate = number("--rate")? as usize,
            "--once" => opts.once = number("--once")? as usize,
            "--spool" => opts.spool = Some(number("--spool")? as usize),
            "--help" | "-h" => {
                return Err("usage: soak [AGENT] [--secs S] [--periodic N] [--rate N] [--once N] | soak [AGENT] --spool N".to_string())
            }
            s if s.starts_with("--") => return Err(format!("unknown argument {s:?}")),
            path => opts.agent = PathBuf::from(path),
        }
    }
    if opts.secs < 60 {
        return Err("--secs must be at least 60".to_string());
    }
    opts.rate = opts.rate.min(opts.periodic);
    Ok(opts)
}

/// One agent process, its stderr in `<dir>/agent-N.log`. Dropping it SIGKILLs it.
struct AgentProcess {
    child: Option<Child>,
    pid: i32,
}

impl AgentProcess {
    fn start(opts: &Options, server: &Server, dir: &Path, n: usize) -> AgentProcess {
        let log = File::create(dir.join(format!("agent-{n}.log"))).expect("create agent log");
        let child = Command::new(&opts.agent)
            .args([
                "agent",
                "--server",
                &server.url(),
                "--instance-id",
                "i-test",
                "--state-dir",
                &dir.join("state").display().to_string(),
                "--coldstart-flag",
                &dir.join("coldstart-flag").display().to_string(),
                "--poll-interval",
                "0",
                // The most the engine takes: 200 sleeping once-tasks plus the periodic ones.
                "--workers",
                "500",
            ])
            .env("TZ", "UTC")
            .env_remove("ALIYUN_ASSIST_PROXY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", opts.agent.display()));
        let pid = child.id() as i32;
        AgentProcess {
            child: Some(child),
            pid,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill with the pid of our own child, not yet reaped.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Signals and waits (bounded) for the exit.
    fn end(&mut self, sig: i32) -> Option<ExitStatus> {
        self.signal(sig);
        let mut child = self.child.take()?;
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            // std has no wait with a timeout.
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The periodic tasks: `rate` of them `rate(1s)`, the others crons once every 2 minutes.
fn periodic_entries(opts: &Options, pids: &Path) -> Vec<String> {
    let creation = now_ms();
    (0..opts.periodic)
        .map(|i| {
            let id = format!("p-{i}");
            let script = format!("echo \"{id} $$\" >> {}", pids.display());
            if i < opts.rate {
                shell_entry(
                    &id,
                    &script,
                    &format!(r#","cron":"rate(1s)","creationTime":{creation}"#),
                    "Rate",
                    OUTPUT,
                )
            } else {
                let cron = format!("{} {}/2 * * * ?", i % 60, (i / 60) % 2);
                shell_entry(
                    &id,
                    &script,
                    &format!(r#","cron":"{cron}""#),
                    "Period",
                    OUTPUT,
                )
            }
        })
        .collect()
}

/// Batch `b` of once-tasks, sleeping 1 to `max_sleep` s each (the sleep is a child of the
/// script's shell, so a group kill has two processes to end).
fn once_batch(opts: &Options, b: usize, max_sleep: u64, pids: &Path) -> Vec<(String, String)> {
    (0..opts.once)
        .map(|i| {
            let id = format!("o{b}-{i}");
            let secs = 1 + (i as u64 * 7919) % max_sleep.max(1);
            let script = format!(
                "sleep {secs} & echo \"{id} $$ $!\" >> {}; wait",
                pids.display()
            );
            let entry = shell_entry(&id, &script, "", "Once", OUTPUT);
            (id, entry)
        })
        .collect()
}

/// Run records of children that are still someone's to report (a recovered once-invocation's
/// record stays, marked reported, to refuse a re-delivery).
fn live_records(state: &Path) -> usize {
    fs::read_dir(state.join("running"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    fs::read(e.path())
                        .ok()
                        .and_then(|b| assistd::runner::record::decode(&b))
                        .is_some_and(|r| !r.reported)
                })
                .count()
        })
        .unwrap_or(0)
}

fn is_report(r: &Request) -> bool {
    r.path == RUNNING || FINALS.contains(&r.path.as_str())
}

fn count_dir(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Waits until the agent has sent no report for `QUIET` (the double has answered everything
/// it got), it has no running child and an empty spool; false on `deadline`.
fn wait_quiet(server: &Server, state: &Path, deadline: Instant) -> bool {
    let mut last = (usize::MAX, Instant::now());
    while Instant::now() < deadline {
        let log = server.requests();
        let reports = log.iter().filter(|r| is_report(r)).count();
        let busy = live_records(state) > 0 || count_dir(&state.join("spool")) > 0;
        if reports != last.0 || busy {
            last = (reports, Instant::now());
        } else if last.1.elapsed() >= QUIET {
            return true;
        }
        // Quiet is the absence of events; only a pause can show it.
        thread::sleep(Duration::from_millis(250));
    }
    false
}

/// Whether the server's startup fetch of `agent_no` has been answered: the `n`th answered list.
fn wait_lists(server: &Server, n: usize) -> bool {
    server
        .wait_until(Instant::now() + DEADLINE, |log| {
            (log.iter()
                .filter(|r| r.path == TASK_LIST && r.answered.is_some())
                .count()
                >= n)
                .then_some(())
        })
        .is_some()
}

fn answered_lists(server: &Server) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path == TASK_LIST && r.answered.is_some())
        .count()
}

/// Queues `list` and kicks the agent with SIGHUP, then waits until a fetch took it: kicks
/// that arrive before a fetch starts are one fetch, so the next list must wait for this one.
fn kick(server: &Server, agent: &AgentProcess, list: Reply) -> Result<(), String> {
    let lists = answered_lists(server);
    server.push(TASK_LIST, list);
    agent.signal(libc::SIGHUP);
    if wait_lists(server, lists + 1) {
        Ok(())
    } else {
        Err("the agent never fetched after a kick".to_string())
    }
}

/// What `pid` holds at an idle point.
struct Footprint {
    /// VmRSS, KiB.
    rss: u64,
    /// RssAnon, KiB: heap, stacks, relocated data. A leak grows this; the rest of the RSS is
    /// the binary's own pages, bounded by its size, which come in as code first runs (with
    /// the hot functions linked first, the cold ones a soak reaches late come in late).
    anon: u64,
    fds: usize,
}

fn footprint(pid: i32) -> Footprint {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Footprint {
        rss: kib("VmRSS:"),
        anon: kib("RssAnon:"),
        fds: count_dir(Path::new(&format!("/proc/{pid}/fd"))),
    }
}

/// What each fd of `pid` points at, grouped (`socket`, `pipe`, `anon_inode:[timerfd]`, paths).
fn fd_kinds(pid: i32) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Ok(d) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in d.flatten() {
            let target = fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let kind = target.split(':').next().unwrap_or("").to_string();
            *out.entry(if kind.starts_with('/') { target } else { kind })
                .or_default() += 1;
        }
    }
    out
}

/// The pids the scripts wrote: per task id, how many starts, and every pid.
fn read_pids(path: &Path) -> (BTreeMap<String, usize>, Vec<i32>) {
    let mut starts = BTreeMap::new();
    let mut pids = Vec::new();
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        let mut parts = line.split_whitespace();
        let Some(id) = parts.next() else { continue };
        *starts.entry(id.to_string()).or_default() += 1;
        pids.extend(parts.filter_map(|p| p.parse::<i32>().ok()));
    }
    (starts, pids)
}

/// Script processes still there: (pid, state, ppid, command line). A pid reused by something
/// that is not one of ours (its command line names neither the soak dir nor `sleep`) is skipped.
fn leftovers(pids: &[i32], dir: &Path, agent: i32) -> Vec<(i32, char, i32, String)> {
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        // A script's pid may be reused by a later agent, whose command line names the dir too,
        // or by any process of the machine (a test suite running beside the soak): a `sleep`
        // is ours when it runs one of the soak's tasks (`p-…`, `o<batch>-…`), as its
        // environment says.
        let task_env = fs::read(format!("/proc/{pid}/environ"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter_map(|kv| kv.strip_prefix(b"ASSISTD_TASK_ID="))
                    .any(|id| id.starts_with(b"p-") || (id.starts_with(b"o") && id.contains(&b'-')))
            })
            .unwrap_or(false);
        let ours = (cmdline.contains(&dir.display().to_string())
            && !cmdline.contains("assistd agent"))
            || (cmdline.starts_with("sleep") && task_env);
        // A zombie is a leak when the agent (or one of the soak's scripts) is its parent and
        // has not reaped it. One whose parent is init was orphaned when the SIGKILLed agent
        // died and killed by the next one's recovery: init's to reap (the sandbox's init here
        // reaps a few seconds late). Any other parent is a process of the machine that reused
        // a soak script's pid (a test suite running beside the soak).
        let our_zombie = state == 'Z' && (ppid == agent || pids.contains(&ppid));
        if ours || our_zombie {
            out.push((pid, state, ppid, cmdline));
        }
    }
    out
}

type Invocation = (String, String, String);
type Identity = (String, String, Vec<u8>);

fn invocation(r: &Request) -> Invocation {
    let p = |k| r.param(k).unwrap_or("").to_string();
    (p("taskId"), p("invokeVersion"), p("start"))
}

fn identity(r: &Request) -> Identity {
    let q: Vec<&str> = r
        .query
        .split('&')
        .filter(|kv| !kv.starts_with("currentTime="))
        .collect();
    (r.path.clone(), q.join("&"), r.body.clone())
}

struct Account {
    invocations: usize,
    exactly_once: usize,
    lost: Vec<Invocation>,
    duplicated: Vec<(Invocation, Vec<String>)>,
    final_requests: usize,
    accepted_requests: usize,
}

/// Every invocation named by a final report, with its distinct accepted reports.
fn account(log: &[Request]) -> (Account, BTreeMap<Invocation, BTreeSet<Identity>>) {
    let mut by_inv: BTreeMap<Invocation, BTreeSet<Identity>> = BTreeMap::new();
    let mut a = Account {
        invocations: 0,
        exactly_once: 0,
        lost: Vec::new(),
        duplicated: Vec::new(),
        final_requests: 0,
        accepted_requests: 0,
    };
    for r in log.iter().filter(|r| FINALS.contains(&r.path.as_str())) {
        a.final_requests += 1;
        let set = by_inv.entry(invocation(r)).or_default();
        if r.accepted() {
            a.accepted_requests += 1;
            set.insert(identity(r));
        }
    }
    a.invocations = by_inv.len();
    for (inv, set) in &by_inv {
        match set.len() {
            0 => a.lost.push(inv.clone()),
            1 => a.exactly_once += 1,
            _ => a.duplicated.push((
                inv.clone(),
                set.iter().map(|(p, q, _)| format!("{p}?{q}")).collect(),
            )),
        }
    }
    (a, by_inv)
}

fn sleep_until(t: Instant) {
    // The soak's schedule: the load runs while the harness waits for the next step.
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        thread::sleep(d);
    }
}

fn soak(opts: &Options) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!("assistd-soak-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("state")).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let pids = dir.join("pids");
    let server = Server::start();
    let faults = vec![
        Reply::status(500),
        Reply::Reset,
        Reply::Hang(Duration::from_secs(6)),
    ];
    for path in FINALS.iter().chain([&RUNNING]) {
        server.set_faults(path, FAULT_EVERY, faults.clone());
    }
    let t = Duration::from_secs(opts.secs);
    let begin = Instant::now();
    let at = |share: f64| begin + t.mul_f64(share);
    let periodic = periodic_entries(opts, &pids);
    let with = |batch: &[(String, String)], extra: &[String]| {
        let mut run: Vec<String> = batch.iter().map(|(_, e)| e.clone()).collect();
        run.extend_from_slice(extra);
        task_list(&run, &[], &[], &[])
    };
    println!(
        "soak: {} s, {} periodic ({} rate(1s), {} crons every 2 min), batches of {} once-tasks, 1 in {FAULT_EVERY} report requests fails (500, reset, 6 s hang); dir {}",
        opts.secs,
        opts.periodic,
        opts.rate,
        opts.periodic - opts.rate,
        opts.once,
        dir.display()
    );
    let mut failures = Vec::new();
    let mut once_ids: Vec<String> = Vec::new();

    // Agent 1: batch 1 and the periodic tasks, until a SIGTERM at 0.4 T.
    let b1 = once_batch(opts, 1, opts.secs / 2, &pids);
    once_ids.extend(b1.iter().map(|(id, _)| id.clone()));
    server.push(TASK_LIST, with(&b1, &periodic));
    let mut a1 = AgentProcess::start(opts, &server, &dir, 1);
    if !wait_lists(&server, 1) {
        return Err("agent 1 never fetched".to_string());
    }
    sleep_until(at(0.4));
    let running_at_term = live_records(&dir.join("state"));
    match a1.end(libc::SIGTERM) {
        Some(s) if s.success() => {}
        other => failures.push(format!("agent 1 after SIGTERM: {other:?}")),
    }
    println!(
        "  {:>6.1} s  agent 1 SIGTERMed with {running_at_term} running",
        begin.elapsed().as_secs_f64()
    );

    // Agent 2: batch 2 and the periodic tasks, SIGKILLed at 0.6 T.
    let b2 = once_batch(opts, 2, opts.secs * 2 / 5, &pids);
    once_ids.extend(b2.iter().map(|(id, _)| id.clone()));
    let lists = answered_lists(&server);
    server.push(TASK_LIST, with(&b2, &periodic));
    let mut a2 = AgentProcess::start(opts, &server, &dir, 2);
    if !wait_lists(&server, lists + 1) {
        return Err("agent 2 never fetched".to_string());
    }
    sleep_until(Instant::now() + t.mul_f64(0.2));
    a2.end(libc::SIGKILL);
    let records = live_records(&dir.join("state"));
    println!(
        "  {:>6.1} s  agent 2 SIGKILLed with {records} run records left",
        begin.elapsed().as_secs_f64()
    );

    // Agent 3 first gets again what of batch 2 has no accepted final (as a server that never
    // heard of an end re-delivers it); none of it may run a second time.
    let finished: BTreeSet<String> = server
        .requests()
        .iter()
        .filter(|r| FINALS.contains(&r.path.as_str()) && r.accepted())
        .filter_map(|r| r.param("taskId").map(str::to_string))
        .collect();
    let again: Vec<(String, String)> = b2
        .iter()
        .filter(|(id, _)| !finished.contains(id))
        .cloned()
        .collect();
    let lists = answered_lists(&server);
    server.push(TASK_LIST, with(&again, &[]));
    let mut a3 = AgentProcess::start(opts, &server, &dir, 3);
    if !wait_lists(&server, lists + 1) {
        return Err("agent 3 never fetched".to_string());
    }
    if !wait_quiet(
        &server,
        &dir.join("state"),
        Instant::now() + RECOVERY_DEADLINE,
    ) {
        failures.push("agent 3 never settled after recovery".to_string());
    }
    let idle0 = footprint(a3.pid);
    let kinds0 = fd_kinds(a3.pid);
    println!(
        "  {:>6.1} s  agent 3 started, {} of batch 2 delivered again; idle point 0: RSS {} KiB ({} anonymous), {} fds",
        begin.elapsed().as_secs_f64(),
        again.len(),
        idle0.rss,
        idle0.anon,
        idle0.fds
    );

    // Batch 3 and the periodic tasks, stopped at 0.9 T.
    let b3 = once_batch(opts, 3, (opts.secs / 4).max(1), &pids);
    once_ids.extend(b3.iter().map(|(id, _)| id.clone()));
    kick(&server, &a3, with(&b3, &periodic))?;
    sleep_until(Instant::now() + t.mul_f64(0.3));
    kick(&server, &a3, task_list(&[], &periodic, &[], &[]))?;
    if !wait_quiet(&server, &dir.join("state"), Instant::now() + t) {
        failures.push("agent 3 never settled after the load".to_string());
    }
    let idle1 = footprint(a3.pid);
    let kinds1 = fd_kinds(a3.pid);
    println!(
        "  {:>6.1} s  idle point 1: RSS {} KiB ({} anonymous), {} fds",
        begin.elapsed().as_secs_f64(),
        idle1.rss,
        idle1.anon,
        idle1.fds
    );

    // A second, shorter load on the same process: batch 4 and the periodic tasks again
    // (invoke version 2, so they are new registrations) for 0.1 T.
    let b4 = once_batch(opts, 4, 5, &pids);
    once_ids.extend(b4.iter().map(|(id, _)| id.clone()));
    let periodic2: Vec<String> = periodic
        .iter()
        .map(|e| e.replacen("\"invokeVersion\":1", "\"invokeVersion\":2", 1))
        .collect();
    kick(&server, &a3, with(&b4, &periodic2))?;
    sleep_until(Instant::now() + t.mul_f64(0.1));
    kick(&server, &a3, task_list(&[], &periodic2, &[], &[]))?;
    if !wait_quiet(&server, &dir.join("state"), Instant::now() + t) {
        failures.push("agent 3 never settled after the second load".to_string());
    }
    let idle2 = footprint(a3.pid);
    let kinds2 = fd_kinds(a3.pid);
    println!(
        "  {:>6.1} s  idle point 2: RSS {} KiB ({} anonymous), {} fds",
        begin.elapsed().as_secs_f64(),
        idle2.rss,
        idle2.anon,
        idle2.fds
    );

    let (starts, all_pids) = read_pids(&pids);
    let left_running = leftovers(&all_pids, &dir, a3.pid);
    match a3.end(libc::SIGTERM) {
        Some(s) if s.success() => {}
        other => failures.push(format!("agent 3 after SIGTERM: {other:?}")),
    }
    let left_after_exit = leftovers(&all_pids, &dir, a3.pid);
    let spool_left = count_dir(&dir.join("state/spool"));

    let log = server.requests();
    let (acc, by_inv) = account(&log);
    let mut once_not_one = Vec::new();
    for id in &once_ids {
        let n = by_inv
            .iter()
            .filter(|((t, _, _), set)| t == id && !set.is_empty())
            .count();
        if n != 1 {
            once_not_one.push(format!("{id}: {n}"));
        }
    }
    let mut started_unreported = Vec::new();
    for (id, n) in &starts {
        let reported = by_inv
            .iter()
            .filter(|((t, _, s), set)| t == id && s != "0" && !set.is_empty())
            .count();
        if *n > reported {
            started_unreported.push(format!("{id}: {n} starts, {reported} reported"));
        }
    }
    let twice: Vec<&String> = once_ids
        .iter()
        .filter(|id| starts.get(*id).copied().unwrap_or(0) > 1)
        .collect();
    let report_requests = log.iter().filter(|r| is_report(r)).count();
    let faulted = log.iter().filter(|r| is_report(r) && !r.accepted()).count();
    let script_starts: usize = starts.values().sum();

    println!("results:");
    println!(
        "  requests: {} in all, {report_requests} reports, {faulted} of them not accepted (injected)",
        log.len()
    );
    println!("  script starts: {script_starts}");
    println!(
        "  invocations with a final report: {}; exactly one accepted: {}; none accepted: {}; more than one: {}",
        acc.invocations,
        acc.exactly_once,
        acc.lost.len(),
        acc.duplicated.len()
    );
    println!(
        "  final requests: {} ({} accepted)",
        acc.final_requests, acc.accepted_requests
    );
    println!(
        "  once-tasks: {}; not exactly one invocation: {}; run twice: {}",
        once_ids.len(),
        once_not_one.len(),
        twice.len()
    );
    println!(
        "  tasks started more often than reported: {}",
        started_unreported.len()
    );
    println!(
        "  script processes left: {} while agent 3 ran, {} after it exited; spool files left: {spool_left}",
        left_running.len(),
        left_after_exit.len()
    );
    println!(
        "  fds: idle 0 {}, idle 1 {}, idle 2 {}",
        idle0.fds, idle1.fds, idle2.fds
    );
    let growth = idle2.anon as i64 - idle1.anon as i64;
    println!(
        "  RSS: idle 0 {} KiB, idle 1 {} KiB, idle 2 {} KiB; anonymous {} / {} / {} KiB, growth idle 1 -> 2: {growth} KiB",
        idle0.rss, idle1.rss, idle2.rss, idle0.anon, idle1.anon, idle2.anon
    );

    let show = |what: &str, items: &[String]| {
        if !items.is_empty() {
            let shown: Vec<&String> = items.iter().take(10).collect();
            println!("  {what} ({}): {shown:?}", items.len());
        }
    };
    if !acc.lost.is_empty() {
        failures.push(format!("{} invocations lost their final", acc.lost.len()));
        show(
            "lost",
            &acc.lost
                .iter()
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>(),
        );
    }
    if !acc.duplicated.is_empty() {
        failures.push(format!(
            "{} invocations have differing accepted finals",
            acc.duplicated.len()
        ));
        show(
            "duplicated",
            &acc.duplicated
                .iter()
                .map(|(i, s)| format!("{i:?} {s:?}"))
                .collect::<Vec<_>>(),
        );
    }
    if !once_not_one.is_empty() {
        failures.push(format!(
            "{} once-tasks without exactly one invocation",
            once_not_one.len()
        ));
        show("once-tasks", &once_not_one);
    }
    if !twice.is_empty() {
        failures.push(format!("{} once-tasks ran twice", twice.len()));
    }
    if !started_unreported.is_empty() {
        failures.push(format!(
            "{} tasks started more often than reported",
            started_unreported.len()
        ));
        show("started, unreported", &started_unreported);
    }
    for (when, left) in [
        ("while agent 3 ran", &left_running),
        ("after exit", &left_after_exit),
    ] {
        if !left.is_empty() {
            failures.push(format!("{} script processes left {when}", left.len()));
            show(
                "left",
                &left.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>(),
            );
        }
    }
    if spool_left > 0 {
        failures.push(format!("{spool_left} spool files left"));
    }
    // Sockets may differ by the HTTP client's keep-alive pool (ureq keeps up to 3 idle
    // connections per host and prunes them on its next request); every other descriptor must
    // be back to its count at idle point 0.
    const KEEPALIVE_POOL: usize = 3;
    let others = |k: &BTreeMap<String, usize>| -> usize {
        k.iter()
            .filter(|(kind, _)| kind.as_str() != "socket")
            .map(|(_, n)| n)
            .sum()
    };
    let sockets = |k: &BTreeMap<String, usize>| k.get("socket").copied().unwrap_or(0);
    let fds_back = [&kinds1, &kinds2]
        .iter()
        .all(|k| others(k) == others(&kinds0) && sockets(k) <= sockets(&kinds0) + KEEPALIVE_POOL);
    if !fds_back {
        failures.push(format!(
            "fd count not back to idle: {} -> {} -> {}",
            idle0.fds, idle1.fds, idle2.fds
        ));
        println!("  fds at idle 0: {kinds0:?}");
        println!("  fds at idle 1: {kinds1:?}");
        println!("  fds at idle 2: {kinds2:?}");
    }
    if growth >= 1024 {
        failures.push(format!(
            "anonymous RSS grew {growth} KiB between idle points"
        ));
    }
    if failures.is_empty() {
        println!("soak: PASS");
        let _ = fs::remove_dir_all(&dir);
        Ok(true)
    } else {
        println!("soak: FAIL");
        for f in &failures {
            println!("  - {f}");
        }
        println!("  (kept {} for inspection)", dir.display());
        Ok(false)
    }
}

/// The spool figure: `n` reports written as the agent spools them, then drained.
fn spool_figure(opts: &Options, n: usize) -> Result<bool, String> {
    use assistd::remote::spool::{encode, SpooledRequest};
    let dir = std::env::temp_dir().join(format!("assistd-spool-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let spool = dir.join("state/spool");
    fs::create_dir_all(&spool).map_err(|e| format!("create {}: {e}", spool.display()))?;
    // A typical finished report: a few lines of output and the full query string.
    let body = b"Linux host 6.1.0 x86_64\n/dev/vda1  40G  12G  26G  32% /\nok\n".to_vec();
    let pid = std::process::id();
    let write_start = Instant::now();
    let mut apparent = 0u64;
    for i in 0..n {
        let start = now_ms();
        let req = SpooledRequest {
            path_and_query: format!(
                "{FINISH}?taskId=t-spool-{i}&invokeVersion=1&start={start}&end={}&exitCode=0&dropped=0",
                start + 12
            ),
            content_type: "text/plain; charset=utf-8".to_string(),
            body: body.clone(),
            label: format!("task=t-spool-{i} invoke_version=1 finished"),
        };
        let bytes = encode(&req);
        apparent += bytes.len() as u64;
        // The name and the write of `SpoolWriter::push`.
        let name = format!("{start:015}-{pid:010}-{i:010}.report");
        assistd::fsutil::write_atomic(&spool.join(name), &bytes, 0o600)
            .map_err(|e| format!("write spool file: {e}"))?;
    }
    let write_time = write_start.elapsed();
    let mut blocks = 0u64;
    for e in fs::read_dir(&spool).map_err(|e| e.to_string())?.flatten() {
        blocks += e.metadata().map(|m| m.blocks()).unwrap_or(0);
    }
    let on_disk = blocks * 512;
    let server = Server::start();
    let drain_start = Instant::now();
    let mut agent = AgentProcess::start(opts, &server, &dir, 1);
    let deadline = drain_start + Duration::from_secs(600);
    let mut drained = None;
    while Instant::now() < deadline {
        if count_dir(&spool) == 0 {
            drained = Some(drain_start.elapsed());
            break;
        }
        // The spool dir emptying is not an event the harness can wait on; a short poll.
        thread::sleep(Duration::from_millis(20));
    }
    let delivered = server
        .requests()
        .iter()
        .filter(|r| r.path == FINISH && r.accepted())
        .count();
    let first_fetch = server
        .requests()
        .iter()
        .position(|r| r.path == TASK_LIST)
        .unwrap_or(usize::MAX);
    let before_fetch = server.requests()[..first_fetch.min(server.requests().len())]
        .iter()
        .filter(|r| r.path == FINISH)
        .count();
    let _ = agent.end(libc::SIGTERM);
    println!("spool: {n} reports of {} body bytes each", body.len());
    println!(
        "  file size {:.0} B per report (apparent), {:.0} B per report on disk ({} KiB in all, du)",
        apparent as f64 / n as f64,
        on_disk as f64 / n as f64,
        on_disk / 1024
    );
    println!(
        "  writing them as the agent does (temp + fsync + rename + dir fsync): {:.2} s, {:.2} ms each",
        write_time.as_secs_f64(),
        write_time.as_secs_f64() * 1000.0 / n as f64
    );
    match drained {
        Some(d) => println!(
            "  drain from agent start to an empty spool dir: {:.2} s ({:.0} reports/s); {delivered} delivered, {before_fetch} before the startup fetch",
            d.as_secs_f64(),
            n as f64 / d.as_secs_f64()
        ),
        None => println!("  not drained after 600 s; {delivered} delivered"),
    }
    let ok = drained.is_some() && delivered == n;
    let _ = fs::remove_dir_all(&dir);
    Ok(ok)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match opts.spool {
        Some(n) => spool_figure(&opts, n.max(1)),
        None => soak(&opts),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}
