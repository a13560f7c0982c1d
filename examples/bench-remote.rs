//! Remote-mode figures for `make bench`: how fast a kick on the notify websocket becomes a
//! running script and how fast its exit becomes a report, then what the idle, connected agent
//! costs (RSS and wakeups). Everything runs on loopback against the control-plane double of
//! `tests/support/server.rs`; every wait is bounded. It never measures anything but the agent
//! binary it is given.
//!
//! ```text
//! bench-remote [AGENT] [--iterations N] [--idle-secs S] [--tls]   (defaults: target/release/assistd, 1000, 60)
//! ```
//!
//! Per iteration it queues a Once task whose script prints `date +%s%N` twice (its first and
//! last line), pushes `kick_vm task run t-N`, and waits for the finish report:
//! - kick-to-exec = the script's first timestamp − the wall-clock time just before the kick
//!   was written to the websocket (fetch, dispatch, fork/exec of `sh` and of `date`);
//! - exit-to-report = the time the double had read the finish request − the script's last
//!   timestamp (the rest of the script, exit, reap, output drain, the report's HTTP request).
//!
//! Idle: per-thread context switches (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`
//! of `/proc/<pid>/task/*/status`) before and after the idle period, grouped by thread name.
//! The heartbeat's share is the delta of the thread named `heartbeat` (it does its HTTP request
//! on that thread), so "without heartbeat" is the total minus that thread's delta.
//!
//! `--tls`: the agent talks HTTPS and wss:// to a TLS front of the double
//! (`tests/support/tls_relay.rs`), trusting the test CA through a config file's `ca_file`:
//! what a real server costs in memory, since production is always HTTPS.

#[path = "../tests/support/server.rs"]
mod server;
#[path = "../tests/support/tls_relay.rs"]
mod tls_relay;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use server::{shell_entry, task_list, Server, HEARTBEAT, OUTPUT, TASK_LIST};

const FINISH: &str = "/luban/api/v1/task/finish";
/// Bounds one wait (a kick's report, the channel coming up); only a failure takes this long.
const DEADLINE: Duration = Duration::from_secs(30);
const SCRIPT: &str = "date +%s%N\ndate +%s%N\nexit 0\n";

struct Options {
    agent: PathBuf,
    iterations: usize,
    idle_secs: u64,
    tls: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        agent: PathBuf::from("target/release/assistd"),
        iterations: 1000,
        idle_secs: 60,
        tls: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match a.as_str() {
            "--iterations" => opts.iterations = number("--iterations")? as usize,
            "--idle-secs" => opts.idle_secs = number("--idle-secs")?,
            "--tls" => opts.tls = true,
            "--help" | "-h" => {
                return Err(
                    "usage: bench-remote [AGENT] [--iterations N] [--idle-secs S] [--tls]"
                        .to_string(),
                )
            }
            s if s.starts_with("--") => return Err(format!("unknown argument {s:?}")),
            path => opts.agent = PathBuf::from(path),
        }
    }
    if opts.iterations == 0 {
        return Err("--iterations must be at least 1".to_string());
    }
    Ok(opts)
}

/// The agent process; dropping it stops it (SIGTERM, a bounded wait, then SIGKILL).
struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ns_since_epoch(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The `q`-th percentile (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[i128], q: usize) -> i128 {
    let rank = (sorted.len() * q).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn ms(ns: i128) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// Context switches per thread: tid → (name, voluntary + nonvoluntary).
fn switches(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let mut name = String::new();
        let mut count = 0;
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Name:") {
                name = v.trim().to_string();
            } else if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                count += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        out.insert(tid, (name, count));
    }
    out
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    kib_field(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

/// The value of the `key` line of a /proc file such as `status` or `smaps_rollup`, in KiB.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The idle memory split of `/proc/<pid>/smaps_rollup`, in KiB: (anonymous, file-backed). The
/// file-backed part is the binary's own pages (text, read-only data); anonymous is the heap,
/// the thread stacks and the relocated data.
fn rss_split(pid: u32) -> Option<(u64, u64)> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let rss = kib_field(&rollup, "Rss:")?;
    let anon = kib_field(&rollup, "Anonymous:")?;
    Some((anon, rss.saturating_sub(anon)))
}

/// `url` is the double's, or its TLS front's; `config` the file that trusts the front's CA.
fn start_agent(
    opts: &Options,
    url: &str,
    config: Option<&Path>,
    dir: &Path,
) -> Result<AgentProcess, String> {
    let log = File::create(dir.join("agent.log")).map_err(|e| format!("agent.log: {e}"))?;
    let mut cmd = Command::new(&opts.agent);
    cmd.args(["agent", "--server", url, "--instance-id", "i-bench"]);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let child = cmd
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--coldstart-flag")
        .arg(dir.join("coldstart-flag"))
        .env_remove("ALIYUN_ASSIST_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", opts.agent.display()))?;
    Ok(AgentProcess { child })
}

fn run(opts: &Options) -> Result<(), String> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("assistd-bench-remote-{}", std::process::id())));
    fs::create_dir_all(dir.0.join("state")).map_err(|e| format!("temp dir: {e}"))?;
    let server = Server::start_on(0).map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let relay;
    let mut config = None;
    let url = if opts.tls {
        relay = tls_relay::TlsRelay::start(server.port()).map_err(|e| format!("TLS front: {e}"))?;
        let path = dir.0.join("assistd.json");
        tls_relay::write_agent_config(&path).map_err(|e| format!("config file: {e}"))?;
        config = Some(path);
        println!("over TLS: {} in front of {}", relay.url(), server.url());
        relay.url()
    } else {
        server.url()
    };
    let agent = start_agent(opts, &url, config.as_deref(), &dir.0)?;
    let pid = agent.pid();
    let log_hint = || format!("(agent log: {})", dir.0.join("agent.log").display());

    // Ready: the kick channel is up and the startup fetch has been asked for.
    server
        .wait_kicks(Instant::now() + DEADLINE, |k| (k.live >= 1).then_some(()))
        .ok_or_else(|| format!("the kick channel never came up {}", log_hint()))?;
    server
        .wait_for(Instant::now() + DEADLINE, |r| {
            r.path == TASK_LIST && r.query.starts_with("reason=startup")
        })
        .ok_or_else(|| format!("no startup fetch {}", log_hint()))?;

    println!(
        "kick round trips: {} Once tasks, each kicked over the websocket",
        opts.iterations
    );
    let mut kick_to_exec = Vec::with_capacity(opts.iterations);
    let mut exit_to_report = Vec::with_capacity(opts.iterations);
    for i in 1..=opts.iterations {
        let id = format!("t-{i}");
        server.push(
            TASK_LIST,
            task_list(
                &[shell_entry(&id, SCRIPT, "", "Once", OUTPUT)],
                &[],
                &[],
                &[],
            ),
        );
        let kicked = ns_since_epoch(SystemTime::now());
        if server.push_kick(&format!("kick_vm task run {id}")) == 0 {
            return Err(format!("kick channel lost at {id} {}", log_hint()));
        }
        let fin = server
            .wait_for(Instant::now() + DEADLINE, |r| {
                r.path == FINISH && r.param("taskId") == Some(id.as_str())
            })
            .ok_or_else(|| format!("no finish report for {id} {}", log_hint()))?;
        let body = fin.body_text();
        let stamps: Vec<i128> = body.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let (Some(first), Some(last)) = (stamps.first(), stamps.last()) else {
            return Err(format!("{id}: no timestamps in the output {body:?}"));
        };
        kick_to_exec.push(first - kicked);
        exit_to_report.push(ns_since_epoch(fin.received) - last);
    }
    kick_to_exec.sort_unstable();
    exit_to_report.sort_unstable();
    for (name, v) in [
        ("kick-to-exec", &kick_to_exec),
        ("exit-to-report", &exit_to_report),
    ] {
        println!(
            "{name}: p50 {}  p99 {}  max {}",
            ms(percentile(v, 50)),
            ms(percentile(v, 99)),
            ms(*v.last().expect("at least one iteration"))
        );
    }

    println!(
        "idle: connected to the double for {} s, no tasks",
        opts.idle_secs
    );
    // Let the last task's tail settle first: its worker removes the invocation and the control
    // loop handles its `Done` just after the finish report reached the server, and those two
    // wakeups belong to the task, not to the idle agent.
    thread::sleep(Duration::from_secs(2));
    let rss_before = status_kib(pid, "VmRSS:").unwrap_or(0);
    let before = switches(pid);
    let t0 = SystemTime::now();
    // The idle period is the measurement itself.
    thread::sleep(Duration::from_secs(opts.idle_secs));
    let after = switches(pid);
    let t1 = SystemTime::now();
    let rss_after = status_kib(pid, "VmRSS:").unwrap_or(0);
    let split = rss_split(pid);
    let heartbeats = server
        .requests()
        .iter()
        .filter(|r| r.path == HEARTBEAT && r.received >= t0 && r.received <= t1)
        .count();

    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, (name, n)) in &after {
        // A thread born during the idle period counts from zero.
        let was = before.get(tid).map(|(_, b)| *b).unwrap_or(0);
        *by_name.entry(name.clone()).or_default() += n.saturating_sub(was);
    }
    let gone = before.keys().filter(|t| !after.contains_key(t)).count();
    let total: u64 = by_name.values().sum();
    let heartbeat = by_name.get("heartbeat").copied().unwrap_or(0);
    let per_min = |n: u64| n as f64 * 60.0 / opts.idle_secs as f64;
    println!(
        "idle RSS: {rss_before} KiB at the start, {rss_after} KiB after {} s",
        opts.idle_secs
    );
    if let Some((anon, file)) = split {
        println!("  of which anonymous {anon} KiB, file-backed (the binary's pages) {file} KiB");
    }
    println!(
        "idle wakeups (context switches, all threads): {total} in {} s = {:.1}/min",
        opts.idle_secs,
        per_min(total)
    );
    println!(
        "  heartbeat thread: {heartbeat} ({heartbeats} heartbeat request(s) in the window); without it: {:.1}/min",
        per_min(total - heartbeat)
    );
    for (name, n) in &by_name {
        println!("  thread {name}: {n}");
    }
    if gone > 0 {
        println!(
            "  ({gone} thread(s) ended during the idle period; their switches are not counted)"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-remote: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-remote: error: {e}");
            ExitCode::FAILURE
        }
    }
}
