//! Timer lateness benchmark (run by `make bench`): 10,000 `rate(1s)` schedules spread over the
//! second, fired by the real timer thread for 10 s; prints p50/p99/max of actual minus
//! scheduled fire time. The callbacks do what the agent's do at that point: record and return.

use std::sync::Arc;
use std::time::Duration;

use assistd::schedule::{Schedule, ScheduleKind, Zone};
use assistd::timer;
use chrono::Utc;
use parking_lot::Mutex;

fn main() {
    let tasks: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let seconds: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let (handle, join) = timer::spawn(timer::SystemClock);
    let samples = Arc::new(Mutex::new(Vec::with_capacity(tasks * seconds as usize)));
    let base = Utc::now().timestamp_millis();
    for i in 0..tasks {
        // Spread creation times over one second so deadlines are distinct.
        let creation = base + (i as i64 * 1000 / tasks as i64);
        let schedule = Schedule::parse("rate(1s)", ScheduleKind::Rate, creation, &Zone::utc())
            .expect("valid rate");
        let samples = samples.clone();
        handle.arm(
            &format!("t-{i}"),
            Arc::new(schedule),
            Box::new(move |firing| {
                let late = Utc::now() - firing.scheduled;
                samples
                    .lock()
                    .push(late.num_microseconds().unwrap_or(i64::MAX));
            }),
        );
    }
    std::thread::sleep(Duration::from_secs(seconds));
    drop(handle);
    join.join().expect("timer thread ends");
    let mut s = samples.lock().clone();
    s.sort_unstable();
    if s.is_empty() {
        println!("timer lateness: no samples");
        return;
    }
    let pct = |p: f64| s[((s.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "timer lateness with {tasks} tasks over {seconds} s ({} firings): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        s.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}
