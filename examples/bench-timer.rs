//! Timer benchmark (run by `make bench`): for each size (10,000, 100,000 and 1,000,000 armed
//! schedules by default, a mix of rates and crons) it prints the timer's memory per armed
//! schedule, the cost of arming and disarming through the real timer thread, and, up to
//! `--lateness-max` schedules, the firing lateness of `rate(1s)` schedules spread over the
//! second. It only measures and prints; it asserts nothing about the figures.
//!
//! Usage: `bench-timer [SIZE...] [--seconds S] [--lateness-max N]`. With no size it runs all
//! three; `--seconds` (default 5) is how long each lateness run records firings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assistd::schedule::{Schedule, ScheduleKind, Zone};
use assistd::timer::{self, TimerHandle};
use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, Sender};
use parking_lot::Mutex;

/// Counts the bytes the process has live, so the timer's own memory can be told apart from
/// the schedules'. A global allocator has to be a `static`; this one is the example binary's
/// only global and holds nothing but counters.
struct Counting {
    live: AtomicUsize,
}

// SAFETY: every call is forwarded unchanged to `System`; the wrapper only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            self.live.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            self.live.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            self.live.fetch_add(new_size, Ordering::Relaxed);
            self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting {
    live: AtomicUsize::new(0),
};

fn live_bytes() -> usize {
    ALLOC.live.load(Ordering::Relaxed)
}

/// The process's resident set in bytes, where /proc tells it.
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time the timer thread (named "timer") has used, in nanoseconds, where /proc tells it.
/// Unlike wall-clock figures, it does not grow when other processes share the cores.
fn timer_cpu_ns() -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() == "timer" {
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// `after - before` nanoseconds of timer CPU spread over `ops`, for printing.
fn cpu_per(before: Option<u64>, after: Option<u64>, ops: u64) -> String {
    match (before, after) {
        (Some(a), Some(b)) if ops > 0 => format!("{:.0}", b.saturating_sub(a) as f64 / ops as f64),
        _ => "n/a".to_string(),
    }
}

struct Args {
    sizes: Vec<usize>,
    seconds: u64,
    lateness_max: usize,
}

const USAGE: &str = "usage: bench-timer [SIZE...] [--seconds S] [--lateness-max N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes: Vec::new(),
        seconds: 5,
        lateness_max: 100_000,
    };
    let number = |flag: &str, value: Option<String>| -> Result<usize, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
        value
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => args.seconds = number("--seconds", it.next())? as u64,
            "--lateness-max" => args.lateness_max = number("--lateness-max", it.next())?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => match number("size", Some(arg.clone()))? {
                0 => return Err("a size must be at least 1".to_string()),
                n => args.sizes.push(n),
            },
        }
    }
    if args.sizes.is_empty() {
        args.sizes = vec![10_000, 100_000, 1_000_000];
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench-timer: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    for &n in &args.sizes {
        memory_and_arm_cost(n);
        if n <= args.lateness_max {
            lateness(n, args.seconds);
        }
    }
}

/// Sends `()` when dropped: the timer drops a callback on the timer thread when its key is
/// disarmed, so this tells the bench that every message sent before the disarm was handled.
struct SignalOnDrop(Sender<()>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Returns once the timer thread has handled every message sent before this call.
fn fence(handle: &TimerHandle) {
    let (tx, rx) = bounded(1);
    let guard = SignalOnDrop(tx);
    let far = Utc::now().timestamp_millis();
    let schedule = Schedule::parse("rate(1000d)", ScheduleKind::Rate, far, &Zone::utc())
        .expect("a literal rate parses");
    let id = handle.arm(
        Arc::new(schedule),
        Box::new(move |_| {
            let _held = &guard;
        }),
    );
    handle.disarm(id);
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the timer thread handles the fence within 300 s");
}

/// The `i`th schedule of the mix: three rates and a daily cron, none due while the bench runs
/// (each rate's creation lies up to one period ahead, so its first run is a period away).
fn mixed_schedule(i: usize, base_ms: i64, zone: &Zone) -> Schedule {
    let spread = |period_ms: i64| base_ms + (i as i64).wrapping_mul(7919) % period_ms;
    let parsed = match i % 4 {
        0 => Schedule::parse("rate(5m)", ScheduleKind::Rate, spread(300_000), zone),
        1 => Schedule::parse("rate(1h)", ScheduleKind::Rate, spread(3_600_000), zone),
        2 => Schedule::parse("rate(7d)", ScheduleKind::Rate, spread(604_800_000), zone),
        _ => Schedule::parse("0 0 3 * * ?", ScheduleKind::Cron, 0, zone),
    };
    parsed.expect("the bench's literal schedules parse")
}

fn memory_and_arm_cost(n: usize) {
    let zone = Zone::utc();
    let base_ms = Utc::now().timestamp_millis();
    // Allocated before the count starts: the ids are the caller's, not the timer's memory.
    let mut ids = Vec::with_capacity(n);
    let schedules: Vec<Arc<Schedule>> = (0..n)
        .map(|i| Arc::new(mixed_schedule(i, base_ms, &zone)))
        .collect();
    let (handle, join) = timer::spawn(timer::SystemClock, None);
    fence(&handle);

    let (live0, rss0, cpu0) = (live_bytes(), rss_bytes(), timer_cpu_ns());
    let started = Instant::now();
    for schedule in &schedules {
        // A callback that captures nothing allocates nothing, so the count below is the
        // timer's alone.
        ids.push(handle.arm(schedule.clone(), Box::new(|_| {})));
    }
    fence(&handle);
    let arm = started.elapsed();
    let (live1, rss1, cpu1) = (live_bytes(), rss_bytes(), timer_cpu_ns());

    let started = Instant::now();
    for id in ids {
        handle.disarm(id);
    }
    fence(&handle);
    let disarm = started.elapsed();
    let cpu2 = timer_cpu_ns();
    drop(handle);
    join.join().expect("timer thread ends");

    let per = |bytes: isize| bytes as f64 / n as f64;
    let rss = match (rss0, rss1) {
        (Some(a), Some(b)) => format!("{:.0}", per(b as isize - a as isize)),
        _ => "n/a".to_string(),
    };
    let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!(
        "timer with {n} armed (3/4 rate, 1/4 cron): {:.1} bytes/timer allocated (RSS {rss} bytes/timer), \
         arm {:.0} ns/op, disarm {:.0} ns/op, arm+disarm {:.0} ns; timer thread CPU: arm {} ns/op, disarm {} ns/op",
        per(live1 as isize - live0 as isize),
        ns(arm),
        ns(disarm),
        ns(arm) + ns(disarm),
        cpu_per(cpu0, cpu1, n as u64),
        cpu_per(cpu1, cpu2, n as u64),
    );
}

/// One firing: when it was scheduled and how late it came, in microseconds.
type Sample = (DateTime<Utc>, i64);

/// Fires `n` `rate(1s)` schedules spread over the second for `seconds` seconds (after one
/// second of warm-up) and prints p50/p99/max of actual minus scheduled fire time.
fn lateness(n: usize, seconds: u64) {
    let zone = Zone::utc();
    let (handle, join) = timer::spawn(timer::SystemClock, None);
    let samples: Arc<Mutex<Vec<Sample>>> =
        Arc::new(Mutex::new(Vec::with_capacity(n * (seconds as usize + 3))));
    let base = Utc::now().timestamp_millis();
    for i in 0..n {
        // Spread creation times over one second so deadlines are distinct.
        let creation = base + (i as i64 * 1000 / n as i64);
        let schedule =
            Schedule::parse("rate(1s)", ScheduleKind::Rate, creation, &zone).expect("valid rate");
        let samples = samples.clone();
        // Never disarmed: dropping the handle below ends the timer.
        let _id = handle.arm(
            Arc::new(schedule),
            // What the agent's callbacks do at that point: record and return.
            Box::new(move |firing: timer::Firing| {
                let late = Utc::now() - firing.scheduled;
                samples.lock().push((
                    firing.scheduled,
                    late.num_microseconds().unwrap_or(i64::MAX),
                ));
            }),
        );
    }
    fence(&handle);
    // Firings scheduled while the arm messages were still arriving are left out.
    let from = Utc::now() + chrono::Duration::seconds(1);
    let until = from + chrono::Duration::seconds(seconds as i64);
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = timer_cpu_ns();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu1 = timer_cpu_ns();
    std::thread::sleep(Duration::from_secs(1));
    drop(handle);
    join.join().expect("timer thread ends");

    let mut late: Vec<i64> = samples
        .lock()
        .iter()
        .filter(|(scheduled, _)| *scheduled >= from && *scheduled < until)
        .map(|&(_, late)| late)
        .collect();
    late.sort_unstable();
    if late.is_empty() {
        println!("timer lateness with {n} tasks: no samples");
        return;
    }
    let pct = |p: f64| late[((late.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "timer lateness with {n} tasks over {seconds} s ({} firings of {} expected): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
         timer thread CPU {} ns/firing",
        late.len(),
        n as u64 * seconds,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        cpu_per(cpu0, cpu1, n as u64 * seconds),
    );
}
