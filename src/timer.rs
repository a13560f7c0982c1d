//! The timer thread: owns every periodic schedule's next deadline in a min-heap, sleeps until
//! the earliest one (or a control message) and fires its callback. It never runs a task and
//! never touches the task registry: callbacks only hand work to the pool.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{after, never, select, unbounded, Receiver, Sender};

use crate::schedule::Schedule;

/// Schedules are in wall-clock time but sleeps are monotonic. Where the clock watcher runs
/// (Linux), a clock step wakes the timer at once and sleeps are not capped; elsewhere the timer
/// looks at the wall clock again at least this often. See ARCHITECTURE.md ("Wall-clock steps").
const MAX_SLEEP_UNWATCHED: Duration = Duration::from_secs(300);

/// One firing of a periodic schedule, handed to its callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Firing {
    /// The wall-clock time the schedule asked for.
    pub scheduled: DateTime<Utc>,
    /// True when the schedule has no run after this one.
    pub last: bool,
}

/// What the timer calls on each firing. It runs on the timer thread, so it must only
/// enqueue work and return.
pub type Callback = Box<dyn FnMut(Firing) + Send>;

/// Messages to the timer thread.
pub enum TimerCtl {
    /// Starts (or replaces) the schedule registered under `key`.
    Arm {
        key: String,
        schedule: Arc<Schedule>,
        callback: Callback,
    },
    /// Removes the schedule registered under `key`; unknown keys are ignored.
    Disarm { key: String },
}

/// Handle to the timer thread. Dropping every clone of it ends the thread.
#[derive(Clone)]
pub struct TimerHandle {
    ctl: Sender<TimerCtl>,
}

impl TimerHandle {
    pub fn arm(&self, key: &str, schedule: Arc<Schedule>, callback: Callback) {
        // The timer only stops after every handle is dropped, so a send cannot fail while
        // `self` exists; if it ever did, the schedule would just not fire.
        let _ = self.ctl.send(TimerCtl::Arm {
            key: key.to_string(),
            schedule,
            callback,
        });
    }

    pub fn disarm(&self, key: &str) {
        let _ = self.ctl.send(TimerCtl::Disarm {
            key: key.to_string(),
        });
    }
}

/// A clock the timer reads; tests and benchmarks may substitute their own.
pub trait WallClock: Send + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Spawns the timer thread. It ends when every `TimerHandle` is dropped; join the returned
/// handle after that.
pub fn spawn(clock: impl WallClock) -> (TimerHandle, thread::JoinHandle<()>) {
    let (tx, rx) = unbounded();
    let join = thread::Builder::new()
        .name("timer".to_string())
        .spawn(move || {
            // Owned by the timer thread: it ends (and is joined) when this thread returns.
            let watch = match crate::clockwatch::spawn() {
                Ok(watch) => Some(watch),
                Err(e) => {
                    log::info!(
                        "phase=clock no clock-step notification ({e}); checking the wall clock every {} s",
                        MAX_SLEEP_UNWATCHED.as_secs()
                    );
                    None
                }
            };
            let (_watch, clock_steps) = match watch {
                Some((w, rx)) => (Some(w), Some(rx)),
                None => (None, None),
            };
            TimerState::new(clock, clock_steps.is_some()).run(rx, clock_steps.unwrap_or_else(never))
        })
        .expect("spawning the timer thread only fails when the process is out of resources");
    (TimerHandle { ctl: tx }, join)
}

struct Entry {
    schedule: Arc<Schedule>,
    callback: Callback,
    generation: u64,
    /// The next wall-clock run of this schedule.
    next: DateTime<Utc>,
}

/// A heap item: (next wall time, generation, key).
type Deadline = (DateTime<Utc>, u64, Arc<str>);

struct TimerState<C> {
    clock: C,
    entries: HashMap<Arc<str>, Entry>,
    /// (next wall time, generation, key); stale items are skipped by generation. The key is
    /// shared with `entries`, so re-arming after a firing allocates nothing.
    heap: BinaryHeap<Reverse<Deadline>>,
    next_generation: u64,
    /// True when the clock watcher reports wall-clock steps: sleeps need no cap.
    clock_watched: bool,
}

impl<C: WallClock> TimerState<C> {
    fn new(clock: C, clock_watched: bool) -> Self {
        TimerState {
            clock,
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            next_generation: 0,
            clock_watched,
        }
    }

    fn run(mut self, ctl: Receiver<TimerCtl>, clock_steps: Receiver<()>) {
        loop {
            let wake = self.sleep_until();
            select! {
                recv(ctl) -> msg => match msg {
                    Ok(msg) => self.handle(msg),
                    // Every handle is gone: the agent is shutting down.
                    Err(_) => return,
                },
                recv(wake) -> _ => self.fire_due(),
                // The clock was set: the next loop turn recomputes the sleep from the new time
                // (and fires what became due).
                recv(clock_steps) -> _ => self.fire_due(),
            }
        }
    }

    /// A channel that delivers when the earliest deadline is due (capped when unwatched).
    fn sleep_until(&mut self) -> Receiver<Instant> {
        self.drop_stale();
        match self.heap.peek() {
            None => never(),
            Some(Reverse((when, _, _))) => {
                let now = self.clock.now();
                let wait = (*when - now).to_std().unwrap_or(Duration::ZERO);
                if self.clock_watched {
                    after(wait)
                } else {
                    after(wait.min(MAX_SLEEP_UNWATCHED))
                }
            }
        }
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse((_, generation, key))) = self.heap.peek() {
            match self.entries.get(key) {
                Some(entry) if entry.generation == *generation => return,
                _ => {
                    self.heap.pop();
                }
            }
        }
    }

    fn handle(&mut self, msg: TimerCtl) {
        match msg {
            TimerCtl::Arm {
                key,
                schedule,
                callback,
            } => {
                let now = self.clock.now();
                let Some(next) = schedule.next_after(now) else {
                    log::info!("task={key} phase=schedule no run left; not armed");
                    self.entries.remove(key.as_str());
                    return;
                };
                let generation = self.bump();
                let key: Arc<str> = Arc::from(key);
                self.heap.push(Reverse((next, generation, key.clone())));
                self.entries.insert(
                    key,
                    Entry {
                        schedule,
                        callback,
                        generation,
                        next,
                    },
                );
            }
            TimerCtl::Disarm { key } => {
                self.entries.remove(key.as_str());
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Fires every schedule whose time has come, then re-arms each from its firing time.
    fn fire_due(&mut self) {
        let now = self.clock.now();
        loop {
            self.drop_stale();
            let Some(Reverse((when, _, _))) = self.heap.peek() else {
                return;
            };
            if *when > now {
                return;
            }
            let Some(Reverse((scheduled, _, key))) = self.heap.pop() else {
                return;
            };
            let generation = self.bump();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            // The next run is computed from the later of the scheduled time and now, so a
            // late wakeup (or a suspended host) fires once instead of catching up every
            // missed run, and the schedule never goes backwards.
            let next = entry.schedule.next_after(scheduled.max(now));
            (entry.callback)(Firing {
                scheduled,
                last: next.is_none(),
            });
            match next {
                Some(next) => {
                    entry.generation = generation;
                    entry.next = next;
                    self.heap.push(Reverse((next, generation, key)));
                }
                None => {
                    log::info!("task={key} phase=schedule last run fired");
                    self.entries.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{ScheduleKind, Zone};

    fn rate(expr: &str, creation: DateTime<Utc>) -> Arc<Schedule> {
        Arc::new(
            Schedule::parse(
                expr,
                ScheduleKind::Rate,
                creation.timestamp_millis(),
                &Zone::utc(),
            )
            .expect("valid rate"),
        )
    }

    #[test]
    fn fires_a_rate_schedule_repeatedly_and_stops_when_disarmed() {
        let (timer, join) = spawn(SystemClock);
        let (tx, rx) = unbounded();
        timer.arm(
            "t-1",
            rate("rate(1s)", Utc::now()),
            Box::new(move |f| tx.send(f).expect("test receiver alive")),
        );
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("first firing");
        let second = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("second firing");
        assert!(second.scheduled > first.scheduled);
        assert!(!first.last);
        timer.disarm("t-1");
        drop(timer);
        join.join()
            .expect("timer thread ends when the handles are dropped");
        // After the thread ended, the callback (and its sender) is dropped: the channel closes.
        while rx.recv_timeout(Duration::from_secs(30)).is_ok() {}
    }

    #[test]
    fn an_at_schedule_fires_once_and_says_it_was_the_last() {
        let (timer, join) = spawn(SystemClock);
        let (tx, rx) = unbounded();
        let when = Utc::now() + chrono::Duration::seconds(1);
        let expr = format!("at({})", when.format("%Y-%m-%dT%H:%M:%S"));
        let schedule =
            Arc::new(Schedule::parse(&expr, ScheduleKind::At, 0, &Zone::utc()).expect("valid at"));
        timer.arm(
            "t-at",
            schedule,
            Box::new(move |f| tx.send(f).expect("test receiver alive")),
        );
        let firing = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the at schedule fires");
        assert!(firing.last);
        drop(timer);
        join.join().expect("timer thread ends");
        assert!(
            rx.recv_timeout(Duration::from_secs(30)).is_err(),
            "fired more than once"
        );
    }

    #[test]
    fn rearming_a_key_replaces_its_schedule() {
        let (timer, join) = spawn(SystemClock);
        let (tx, rx) = unbounded();
        let tx2 = tx.clone();
        let far = Utc::now() + chrono::Duration::days(365);
        timer.arm(
            "k",
            rate("rate(1000d)", far),
            Box::new(move |_| tx.send("old").expect("alive")),
        );
        timer.arm(
            "k",
            rate("rate(1s)", Utc::now()),
            Box::new(move |_| tx2.send("new").expect("alive")),
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok("new"));
        drop(timer);
        join.join().expect("timer thread ends");
    }
}
