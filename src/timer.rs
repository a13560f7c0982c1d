//! The timer thread: owns every periodic schedule's next deadline in a hierarchical, tick-less
//! timing wheel, sleeps until the earliest occupied slot (or a control message) and fires the
//! callbacks that are due. It never runs a task and never touches the task registry:
//! callbacks only hand work to the pool.

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

/// Names one armed schedule. `TimerHandle::arm` hands it out and `disarm` takes it back, so
/// an id is never disarmed twice or used after it was given back. It is a slot number in the
/// timer's slab: the timer keeps no map from task ids, and an armed schedule costs one slot.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a schedule stays armed until its id is given to `disarm`"]
pub struct TimerId(u32);

impl TimerId {
    /// The slot number, for log lines.
    pub fn get(&self) -> u32 {
        self.0
    }
}

/// Messages to the timer thread.
pub enum TimerCtl {
    /// Starts (or replaces) the schedule in slot `id`.
    Arm {
        id: u32,
        schedule: Arc<Schedule>,
        callback: Callback,
    },
    /// Empties slot `id`; an empty slot is left as it is.
    Disarm { id: u32 },
}

/// Slot numbers not in use: the next never-used one and those given back. Shared by every
/// clone of a `TimerHandle`. The thread that arms takes a number here before it sends
/// `Arm`, and `disarm` returns it only after sending `Disarm`; the channel keeps order, so
/// a reused number's `Arm` always reaches the timer after the `Disarm` that freed it.
#[derive(Default)]
struct Ids {
    next: u32,
    free: Vec<u32>,
}

/// Handle to the timer thread. Dropping every clone of it ends the thread.
#[derive(Clone)]
pub struct TimerHandle {
    ctl: Sender<TimerCtl>,
    ids: Arc<parking_lot::Mutex<Ids>>,
}

impl TimerHandle {
    /// Arms `schedule`: from its next run on, each firing calls `callback` on the timer
    /// thread, until the returned id is disarmed or the schedule has no run left.
    pub fn arm(&self, schedule: Arc<Schedule>, callback: Callback) -> TimerId {
        let id = {
            let mut ids = self.ids.lock();
            match ids.free.pop() {
                Some(id) => id,
                None => {
                    let id = ids.next;
                    ids.next = id
                        .checked_add(1)
                        .expect("fewer than 2^32 timers are armed at once");
                    id
                }
            }
        };
        self.send(TimerCtl::Arm {
            id,
            schedule,
            callback,
        });
        TimerId(id)
    }

    /// Replaces what `id` holds: its old schedule and callback are dropped.
    pub fn rearm(&self, id: &TimerId, schedule: Arc<Schedule>, callback: Callback) {
        self.send(TimerCtl::Arm {
            id: id.0,
            schedule,
            callback,
        });
    }

    /// Stops the schedule armed under `id` (if it has not ended on its own) and frees the id.
    pub fn disarm(&self, id: TimerId) {
        self.send(TimerCtl::Disarm { id: id.0 });
        let mut ids = self.ids.lock();
        ids.free.push(id.0);
        if ids.free.len() as u32 == ids.next {
            // Nothing is armed: start numbering again, so the slab's pages can go.
            *ids = Ids::default();
        }
    }

    fn send(&self, msg: TimerCtl) {
        // The timer only stops after every handle is dropped, so a send cannot fail while
        // `self` exists; if it ever did, the schedule would just not fire.
        let _ = self.ctl.send(msg);
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
/// handle after that. `clock_steps` delivers a message each time the wall clock is set
/// (`clockwatch`, a source of the caller's poll thread); without it (no `timerfd`, or a
/// test) the timer looks at the wall clock again at least every `MAX_SLEEP_UNWATCHED`.
pub fn spawn(
    clock: impl WallClock,
    clock_steps: Option<Receiver<()>>,
) -> (TimerHandle, thread::JoinHandle<()>) {
    let (tx, rx) = unbounded();
    let join = thread::Builder::new()
        .name("timer".to_string())
        .spawn(move || {
            if clock_steps.is_none() {
                log::info!(
                    "phase=clock no clock-step notices: checking the wall clock every {} s",
                    MAX_SLEEP_UNWATCHED.as_secs()
                );
            }
            TimerState::new(clock, clock_steps.is_some()).run(rx, clock_steps.unwrap_or_else(never))
        })
        .expect("spawning the timer thread only fails when the process is out of resources");
    (
        TimerHandle {
            ctl: tx,
            ids: Arc::default(),
        },
        join,
    )
}

/// What the wheel holds for each armed key.
struct Armed {
    schedule: Arc<Schedule>,
    callback: Callback,
}

/// Control messages handled in one loop turn before the timer looks at its deadlines again,
/// so a flood of arms cannot hold back firings that are due.
const CTL_BURST: usize = 256;

struct TimerState<C> {
    clock: C,
    wheel: Wheel<Armed>,
    /// True when the clock watcher reports wall-clock steps: sleeps need no cap.
    clock_watched: bool,
}

impl<C: WallClock> TimerState<C> {
    fn new(clock: C, clock_watched: bool) -> Self {
        let wheel = Wheel::new(clock.now());
        TimerState {
            clock,
            wheel,
            clock_watched,
        }
    }

    fn run(mut self, ctl: Receiver<TimerCtl>, mut clock_steps: Receiver<()>) {
        loop {
            let wake = self.sleep_until();
            select! {
                recv(ctl) -> msg => match msg {
                    Ok(msg) => {
                        self.handle(msg);
                        for msg in ctl.try_iter().take(CTL_BURST - 1) {
                            self.handle(msg);
                        }
                    }
                    // Every handle is gone: the agent is shutting down.
                    Err(_) => return,
                },
                recv(wake) -> _ => {}
                recv(clock_steps) -> msg => match msg {
                    // The clock was set: every deadline is placed again relative to the new
                    // time, and what became due fires below.
                    Ok(()) => self.wheel.rebuild(self.clock.now()),
                    // The watcher stopped (it logged why): fall back to capped sleeps instead
                    // of waking on the closed channel forever.
                    Err(_) => {
                        clock_steps = never();
                        self.clock_watched = false;
                    }
                },
            }
            // After every turn, not only on `wake`: this is also where a clock that went
            // back without a notice is caught (the wheel rebuilds itself).
            self.fire_due();
        }
    }

    /// A channel that delivers when the wheel next needs attention (capped when unwatched).
    fn sleep_until(&self) -> Receiver<Instant> {
        match self.wheel.next_deadline() {
            None => never(),
            Some(when) => {
                let now = self.clock.now();
                let wait = (when - now).to_std().unwrap_or(Duration::ZERO);
                if self.clock_watched {
                    after(wait)
                } else {
                    after(wait.min(MAX_SLEEP_UNWATCHED))
                }
            }
        }
    }

    fn handle(&mut self, msg: TimerCtl) {
        match msg {
            TimerCtl::Arm {
                id,
                schedule,
                callback,
            } => {
                let now = self.clock.now();
                let next = match &*schedule {
                    // Whether an `at()` has expired was decided by the caller, once
                    // (`Schedule::first_after`, which lets one due this millisecond run and
                    // reports an expired one). Deciding again here, a moment later, would
                    // drop a due `at()` without a report; a past instant fires at once.
                    Schedule::At(at) => Some(at.at()),
                    other => other.next_after(now),
                };
                let Some(next) = next else {
                    // The caller checked that a run is left a moment ago: only a schedule
                    // whose last run passed in between gets here.
                    log::info!("timer={id} phase=schedule no run left; not armed");
                    self.wheel.remove(id);
                    return;
                };
                self.wheel.insert(id, next, Armed { schedule, callback });
            }
            TimerCtl::Disarm { id } => {
                self.wheel.remove(id);
            }
        }
    }

    /// Fires every schedule whose time has come, then re-arms each from its firing time.
    /// A schedule with no run left leaves the wheel after its last firing, which says so
    /// (`Firing::last`); its id stays the caller's until it is disarmed.
    fn fire_due(&mut self) {
        let now = self.clock.now();
        self.wheel.pop_due(now, |_, scheduled, armed| {
            // The next run is computed from the later of the scheduled time and now, so a
            // late wakeup (or a suspended host) fires once instead of catching up every
            // missed run, and the schedule never goes backwards.
            let next = armed.schedule.next_after(scheduled.max(now));
            (armed.callback)(Firing {
                scheduled,
                last: next.is_none(),
            });
            next
        });
    }
}

/// Bits of the tick each wheel level resolves: 64 slots a level.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels of the wheel. Level `l` has slots of 64^l ms and holds deadlines up to 63 of its
/// slots ahead, so the six levels reach 63 * 2^30 ms (about two years) past the current
/// tick; later deadlines wait in the overflow list.
const LEVELS: usize = 6;
/// The list index of the overflow list; indices below it are `level * SLOTS + slot`.
const OVERFLOW: u16 = (LEVELS * SLOTS) as u16;
/// The list index of the due list: entries whose tick the wheel has already reached.
const DUE: u16 = OVERFLOW + 1;
const LISTS: usize = DUE as usize + 1;
/// "No node": the end of a list.
const NIL: u32 = u32::MAX;
/// Slots in a page of the slab. The slab grows a page at a time, so what it holds unused is
/// at most one page's tail (256 slots of 48 bytes), never the half of a doubled `Vec`.
const PAGE: usize = 256;

/// A hierarchical timing wheel of wall-clock deadlines, one per slot id, each with a value
/// `V`. It holds time only as the millisecond ticks since `base_ms`: it never reads a clock,
/// never sleeps and never calls out, except to the closure `pop_due` is given.
///
/// Every entry sits in exactly one list: a slot of one level, the overflow list or the due
/// list. Each level is a ring: slot `s` of level `l` holds the deadlines whose tick, shifted
/// right by `6 * l`, is `s` modulo 64, and an entry sits in the lowest level where that is 1
/// to 63 slots after `elapsed`'s. So no occupied slot is the current one, the first occupied
/// slot after it (one `rotate_right` and `trailing_zeros`) is that level's earliest, and a
/// slot is emptied (fired, or cascaded into lower levels) when `elapsed` reaches its first
/// tick, before any of its deadlines.
///
/// Entries are addressed by the id the caller chose (`TimerHandle` hands ids out densely
/// and reuses freed ones), so the wheel needs no index: id `i` is slot `i % PAGE` of page
/// `i / PAGE`, and the lists link ids.
struct Wheel<V> {
    /// The wall time of tick 0, in Unix milliseconds.
    base_ms: i64,
    /// The tick the wheel has advanced to: no slot before it holds an entry.
    elapsed: u64,
    /// The first node of each list.
    heads: [u32; LISTS],
    /// Bit `s` of `occupied[l]` is set when slot `s` of level `l` is not empty.
    occupied: [u64; LEVELS],
    /// No entry in the overflow list has an earlier tick (`u64::MAX` when it is empty). It is
    /// not raised when an entry leaves, so it may be early: that only cascades early.
    overflow_min: u64,
    /// The slab, a page at a time; pages are allocated as ids reach them and all freed when
    /// the last entry leaves.
    pages: Vec<Box<[Option<Node<V>>]>>,
    /// Entries armed.
    len: usize,
}

struct Node<V> {
    /// The entry's exact deadline; its tick is the first millisecond at or after it.
    when: DateTime<Utc>,
    value: V,
    /// Neighbours in the node's list.
    prev: u32,
    next: u32,
    /// The list the node is in (see `OVERFLOW` and `DUE`).
    list: u16,
}

// An armed timer costs one slab slot: its deadline, the schedule's `Arc`, the callback's box
// and the list links. This keeps the slot from growing unnoticed (issue 12: at most 64 bytes
// a timer beyond the schedule itself).
const _: () = assert!(std::mem::size_of::<Option<Node<Armed>>>() <= 48);

impl<V> Wheel<V> {
    fn new(now: DateTime<Utc>) -> Self {
        Wheel {
            base_ms: now.timestamp_millis(),
            elapsed: 0,
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            overflow_min: u64::MAX,
            pages: Vec::new(),
            len: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, i: u32) -> Option<&Node<V>> {
        let page = self.pages.get(i as usize / PAGE)?;
        page[i as usize % PAGE].as_ref()
    }

    /// Arms `id` at `when`, replacing (in place) what it held before; returns the value it
    /// replaced.
    fn insert(&mut self, id: u32, when: DateTime<Utc>, value: V) -> Option<V> {
        assert!(id != NIL, "timer id {NIL} is the lists' end mark");
        if self.slot(id).is_some() {
            self.unlink(id);
            let node = self.node_mut(id);
            node.when = when;
            let old = std::mem::replace(&mut node.value, value);
            self.place(id);
            return Some(old);
        }
        let page = id as usize / PAGE;
        while self.pages.len() <= page {
            self.pages.push((0..PAGE).map(|_| None).collect());
        }
        self.pages[page][id as usize % PAGE] = Some(Node {
            when,
            value,
            prev: NIL,
            next: NIL,
            list: DUE,
        });
        self.len += 1;
        self.place(id);
        None
    }

    /// Disarms `id` and frees its slot; `None` when it was not armed.
    fn remove(&mut self, id: u32) -> Option<V> {
        self.slot(id)?;
        self.unlink(id);
        Some(self.release(id))
    }

    /// When the wheel next needs `pop_due`: the first tick of its earliest occupied slot,
    /// never later than the earliest deadline it holds rounded up to the millisecond (a slot
    /// of a higher level comes due when its entries are to be cascaded down, before they
    /// are). `None` when it holds nothing.
    fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let tick = if self.heads[DUE as usize] != NIL {
            self.elapsed
        } else {
            self.next_slot()?.1
        };
        let ms = i64::try_from(tick)
            .ok()
            .and_then(|t| self.base_ms.checked_add(t));
        Some(
            ms.and_then(DateTime::from_timestamp_millis)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// Advances the wheel to `now` and calls `fire` for every entry whose deadline, rounded
    /// up to the millisecond, is at or before `now`, with its id, deadline and value. `fire`
    /// returns the entry's next deadline, or `None` to remove it. A `now` before the wheel's
    /// time (the clock went back) rebuilds the wheel first, so nothing fires early.
    fn pop_due<F>(&mut self, now: DateTime<Utc>, mut fire: F)
    where
        F: FnMut(u32, DateTime<Utc>, &mut V) -> Option<DateTime<Utc>>,
    {
        let now_ms = now.timestamp_millis();
        if now_ms - self.base_ms < self.elapsed as i64 {
            self.rebuild(now);
        }
        let now_tick = (now_ms - self.base_ms) as u64;
        // Empty every slot whose first tick has come, in time order: a level-0 slot's entries
        // are due and fire, a higher slot's cascade into lower levels (or the due list).
        while let Some((list, tick)) = self.next_slot() {
            if tick > now_tick {
                break;
            }
            self.elapsed = tick;
            let mut i = self.take(list);
            if (list as usize) < SLOTS {
                self.fire_chain(i, now, &mut fire);
                continue;
            }
            while i != NIL {
                let next = self.node(i).next;
                self.place(i);
                i = next;
            }
        }
        // No slot starts at or before `now_tick` any more, so every entry keeps its level.
        self.elapsed = now_tick;
        let due = self.take(DUE);
        self.fire_chain(due, now, &mut fire);
    }

    /// Fires the entries of a detached list starting at node `i` (see `pop_due`).
    fn fire_chain<F>(&mut self, mut i: u32, now: DateTime<Utc>, fire: &mut F)
    where
        F: FnMut(u32, DateTime<Utc>, &mut V) -> Option<DateTime<Utc>>,
    {
        while i != NIL {
            let node = self.node_mut(i);
            let next = node.next;
            if node.when > now {
                // Cannot happen while ticks round deadlines up and `now` down; kept so that
                // nothing ever fires before its exact time.
                self.place(i);
            } else {
                match fire(i, node.when, &mut node.value) {
                    Some(when) => {
                        node.when = when;
                        self.place(i);
                    }
                    None => {
                        self.release(i);
                    }
                }
            }
            i = next;
        }
    }

    /// Places every entry again with `now` as tick 0. For a clock step: O(entries).
    fn rebuild(&mut self, now: DateTime<Utc>) {
        self.base_ms = now.timestamp_millis();
        self.elapsed = 0;
        self.heads = [NIL; LISTS];
        self.occupied = [0; LEVELS];
        self.overflow_min = u64::MAX;
        for i in 0..(self.pages.len() * PAGE) as u32 {
            if self.slot(i).is_some() {
                self.place(i);
            }
        }
    }

    /// The earliest occupied slot of any level, or the overflow list, with its first tick.
    fn next_slot(&self) -> Option<(u16, u64)> {
        let mut best: Option<(u16, u64)> = None;
        for (level, &occupied) in self.occupied.iter().enumerate() {
            if occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let current = (self.elapsed >> shift) as u32 % SLOTS as u32;
            // How many slots after the current one the first occupied one is (1 to 63).
            let ahead = occupied.rotate_right(current).trailing_zeros();
            let tick = ((self.elapsed >> shift) + u64::from(ahead)) << shift;
            if best.map_or(true, |(_, t)| tick < t) {
                let slot = (current + ahead) as usize % SLOTS;
                best = Some(((level * SLOTS + slot) as u16, tick));
            }
        }
        if self.heads[OVERFLOW as usize] != NIL {
            // The overflow list cascades when its earliest entry comes within the top
            // level's reach; entries still beyond it go back to the list.
            let top = SLOT_BITS * (LEVELS as u32 - 1);
            let tick = ((self.overflow_min >> top).saturating_sub(SLOTS as u64 - 1) << top)
                .max(self.elapsed + 1);
            if best.map_or(true, |(_, t)| tick < t) {
                best = Some((OVERFLOW, tick));
            }
        }
        best
    }

    /// Links node `i` into the list its deadline belongs to, relative to `elapsed`.
    fn place(&mut self, i: u32) {
        let when = self.node(i).when;
        // The first tick at or after `when`: deadlines round up, so nothing fires early.
        let ms =
            when.timestamp_millis() + i64::from(when.timestamp_subsec_nanos() % 1_000_000 != 0);
        let tick = u64::try_from(ms - self.base_ms).unwrap_or(0);
        let list = if tick <= self.elapsed {
            DUE
        } else {
            // The lowest level whose ring reaches the deadline: at most 63 slots ahead.
            let ahead = |level: usize| {
                let shift = SLOT_BITS * level as u32;
                (tick >> shift) - (self.elapsed >> shift)
            };
            match (0..LEVELS).find(|&level| ahead(level) < SLOTS as u64) {
                Some(level) => {
                    let slot = (tick >> (SLOT_BITS * level as u32)) as usize % SLOTS;
                    (level * SLOTS + slot) as u16
                }
                None => {
                    self.overflow_min = self.overflow_min.min(tick);
                    OVERFLOW
                }
            }
        };
        self.link(i, list);
    }

    fn link(&mut self, i: u32, list: u16) {
        let head = self.heads[list as usize];
        let node = self.node_mut(i);
        node.list = list;
        node.prev = NIL;
        node.next = head;
        if head != NIL {
            self.node_mut(head).prev = i;
        }
        self.heads[list as usize] = i;
        if list < OVERFLOW {
            self.occupied[list as usize / SLOTS] |= 1 << (list as usize % SLOTS);
        }
    }

    fn unlink(&mut self, i: u32) {
        let node = self.node(i);
        let (prev, next, list) = (node.prev, node.next, node.list);
        if prev == NIL {
            self.heads[list as usize] = next;
            if next == NIL && list < OVERFLOW {
                self.occupied[list as usize / SLOTS] &= !(1 << (list as usize % SLOTS));
            } else if next == NIL && list == OVERFLOW {
                self.overflow_min = u64::MAX;
            }
        } else {
            self.node_mut(prev).next = next;
        }
        if next != NIL {
            self.node_mut(next).prev = prev;
        }
    }

    /// Detaches a whole list and returns its first node; the nodes keep their `next` links.
    fn take(&mut self, list: u16) -> u32 {
        if list < OVERFLOW {
            self.occupied[list as usize / SLOTS] &= !(1 << (list as usize % SLOTS));
        } else if list == OVERFLOW {
            self.overflow_min = u64::MAX;
        }
        std::mem::replace(&mut self.heads[list as usize], NIL)
    }

    /// Empties the slot of node `i`, which is in no list; the last entry to leave frees
    /// every page.
    fn release(&mut self, i: u32) -> V {
        let node = self.pages[i as usize / PAGE][i as usize % PAGE]
            .take()
            .expect("only a full slot is released");
        self.len -= 1;
        if self.len == 0 {
            self.pages = Vec::new();
        }
        node.value
    }

    fn node(&self, i: u32) -> &Node<V> {
        self.slot(i).expect("a linked id names a full slot")
    }

    fn node_mut(&mut self, i: u32) -> &mut Node<V> {
        self.pages[i as usize / PAGE][i as usize % PAGE]
            .as_mut()
            .expect("a linked id names a full slot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{ScheduleKind, Zone};
    use std::collections::HashMap;

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
        let (timer, join) = spawn(SystemClock, None);
        let (tx, rx) = unbounded();
        let id = timer.arm(
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
        timer.disarm(id);
        drop(timer);
        join.join()
            .expect("timer thread ends when the handles are dropped");
        // After the thread ended, the callback (and its sender) is dropped: the channel closes.
        while rx.recv_timeout(Duration::from_secs(30)).is_ok() {}
    }

    #[test]
    fn an_at_schedule_fires_once_and_says_it_was_the_last() {
        let (timer, join) = spawn(SystemClock, None);
        let (tx, rx) = unbounded();
        let when = Utc::now() + chrono::Duration::seconds(1);
        let expr = format!("at({})", when.format("%Y-%m-%dT%H:%M:%S"));
        let schedule =
            Arc::new(Schedule::parse(&expr, ScheduleKind::At, 0, &Zone::utc()).expect("valid at"));
        let _id = timer.arm(
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
    fn rearming_an_id_replaces_its_schedule() {
        let (timer, join) = spawn(SystemClock, None);
        let (tx, rx) = unbounded();
        let tx2 = tx.clone();
        let far = Utc::now() + chrono::Duration::days(365);
        let id = timer.arm(
            rate("rate(1000d)", far),
            Box::new(move |_| tx.send("old").expect("alive")),
        );
        timer.rearm(
            &id,
            rate("rate(1s)", Utc::now()),
            Box::new(move |_| tx2.send("new").expect("alive")),
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok("new"));
        drop(timer);
        join.join().expect("timer thread ends");
    }

    #[test]
    fn ids_are_reused_after_disarm_and_renumbered_when_none_is_armed() {
        let (tx, rx) = unbounded();
        let timer = TimerHandle {
            ctl: tx,
            ids: Arc::default(),
        };
        let arm = || timer.arm(rate("rate(1h)", Utc::now()), Box::new(|_| {}));
        let (a, b) = (arm(), arm());
        assert_eq!((a.get(), b.get()), (0, 1));
        timer.disarm(a);
        let c = arm();
        assert_eq!(c.get(), 0, "a freed id is reused");
        timer.disarm(b);
        timer.disarm(c);
        let d = arm();
        assert_eq!(d.get(), 0, "with nothing armed, numbering starts again");
        // Each `Disarm` reaches the timer before the `Arm` that reuses its id.
        let sent: Vec<String> = rx
            .try_iter()
            .map(|msg| match msg {
                TimerCtl::Arm { id, .. } => format!("arm {id}"),
                TimerCtl::Disarm { id } => format!("disarm {id}"),
            })
            .collect();
        assert_eq!(
            sent,
            ["arm 0", "arm 1", "disarm 0", "arm 0", "disarm 1", "disarm 0", "arm 0"]
        );
        timer.disarm(d);
    }

    /// A clock the test sets by hand.
    #[derive(Clone)]
    struct ManualClock(Arc<parking_lot::Mutex<DateTime<Utc>>>);

    impl ManualClock {
        fn set(&self, now: DateTime<Utc>) {
            *self.0.lock() = now;
        }
    }

    impl WallClock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock()
        }
    }

    /// A timer state (no thread) on a hand-set clock at `t(0)`, with one key armed whose
    /// firings arrive on the returned receiver.
    fn manual_timer(
        schedule: Arc<Schedule>,
    ) -> (TimerState<ManualClock>, ManualClock, Receiver<Firing>) {
        let clock = ManualClock(Arc::new(parking_lot::Mutex::new(t(0))));
        let mut state = TimerState::new(clock.clone(), true);
        let (tx, rx) = unbounded();
        state.handle(TimerCtl::Arm {
            id: 0,
            schedule,
            callback: Box::new(move |f| tx.send(f).expect("test receiver alive")),
        });
        (state, clock, rx)
    }

    #[test]
    fn a_late_wakeup_fires_once_and_the_schedule_keeps_its_phase() {
        let (mut state, clock, rx) = manual_timer(rate("rate(1s)", t(0)));
        clock.set(t(10_500));
        state.fire_due();
        let fired: Vec<Firing> = rx.try_iter().collect();
        assert_eq!(
            fired,
            vec![Firing {
                scheduled: t(1_000),
                last: false
            }]
        );
        // The next run is the first one after now, on the schedule's own second marks.
        clock.set(t(10_999));
        state.fire_due();
        assert_eq!(rx.try_iter().count(), 0, "fired before 11 s");
        clock.set(t(11_000));
        state.fire_due();
        let scheduled: Vec<_> = rx.try_iter().map(|f| f.scheduled).collect();
        assert_eq!(scheduled, vec![t(11_000)]);
    }

    fn at(when: DateTime<Utc>) -> Arc<Schedule> {
        let expr = format!("at({})", when.format("%Y-%m-%dT%H:%M:%S"));
        Arc::new(Schedule::parse(&expr, ScheduleKind::At, 0, &Zone::utc()).expect("valid at"))
    }

    #[test]
    fn an_at_armed_at_its_instant_fires_once() {
        let (mut state, _clock, rx) = manual_timer(at(t(0)));
        state.fire_due();
        let fired: Vec<Firing> = rx.try_iter().collect();
        assert_eq!(
            fired,
            vec![Firing {
                scheduled: t(0),
                last: true
            }]
        );
        state.fire_due();
        assert_eq!(rx.try_iter().count(), 0, "fired twice");
    }

    #[test]
    fn an_at_armed_just_after_the_caller_judged_it_due_still_fires() {
        // The caller's `first_after` ran at t(0); the timer sees the message 1 ms later.
        let clock = ManualClock(Arc::new(parking_lot::Mutex::new(t(1))));
        let mut state = TimerState::new(clock.clone(), true);
        let (tx, rx) = unbounded();
        state.handle(TimerCtl::Arm {
            id: 0,
            schedule: at(t(0)),
            callback: Box::new(move |f| tx.send(f).expect("test receiver alive")),
        });
        state.fire_due();
        let scheduled: Vec<_> = rx.try_iter().map(|f| f.scheduled).collect();
        assert_eq!(scheduled, vec![t(0)]);
    }

    #[test]
    fn a_clock_stepped_back_fires_nothing_before_its_wall_time() {
        let (mut state, clock, rx) = manual_timer(rate("rate(10s)", t(0)));
        clock.set(t(5_000));
        state.fire_due();
        // Stepped back an hour, with no notice (the unwatched case) and then with one.
        clock.set(t(-3_600_000));
        state.fire_due();
        assert_eq!(rx.try_iter().count(), 0, "fired after the step back");
        state.wheel.rebuild(clock.now());
        clock.set(t(9_999));
        state.fire_due();
        assert_eq!(rx.try_iter().count(), 0, "fired before its wall time");
        clock.set(t(10_000));
        state.fire_due();
        let scheduled: Vec<_> = rx.try_iter().map(|f| f.scheduled).collect();
        assert_eq!(scheduled, vec![t(10_000)]);
    }

    /// A wall time `ms` milliseconds after a fixed instant (before it when negative).
    fn t(ms: i64) -> DateTime<Utc> {
        crate::schedule::testing::utc("2024-03-15T10:00:00Z") + chrono::Duration::milliseconds(ms)
    }

    /// One firing seen by a wheel test: id, value, deadline, and the `now` it fired at.
    type Fired = (u32, u32, DateTime<Utc>, DateTime<Utc>);

    /// Calls `pop_due(now)`, removing what fires, and returns the firings.
    fn pop(w: &mut Wheel<u32>, now: DateTime<Utc>) -> Vec<Fired> {
        let mut fired = Vec::new();
        w.pop_due(now, |id, when, value| {
            fired.push((id, *value, when, now));
            None
        });
        fired
    }

    /// Wakes the wheel at each deadline it asks for, as the timer thread does, up to `until`;
    /// returns the firings in order and how many wakeups it took.
    fn drive(w: &mut Wheel<u32>, until: DateTime<Utc>) -> (Vec<Fired>, usize) {
        let mut fired = Vec::new();
        let mut wakeups = 0;
        while let Some(at) = w.next_deadline() {
            if at > until {
                break;
            }
            wakeups += 1;
            assert!(wakeups < 10_000, "the wheel keeps asking to be woken");
            fired.extend(pop(w, at));
        }
        (fired, wakeups)
    }

    /// The level an id's node sits in (`LEVELS` for the overflow list).
    fn level_of(w: &Wheel<u32>, id: u32) -> usize {
        w.node(id).list as usize / SLOTS
    }

    #[test]
    fn wheel_cascades_from_overflow_and_fires_on_time() {
        let mut w = Wheel::new(t(0));
        // 64 and 200 top-level slots (2^30 ms each) ahead: beyond the levels' 63.
        let far = t((64 << 30) + 12_345);
        let farther = t((200 << 30) + 5);
        w.insert(1, far, 1);
        w.insert(2, farther, 2);
        assert_eq!(
            level_of(&w, 1),
            LEVELS,
            "beyond the levels: in the overflow list"
        );
        assert_eq!(level_of(&w, 2), LEVELS);
        // The overflow list comes due when its earliest entry is 63 top-level slots away.
        assert_eq!(w.next_deadline(), Some(t(1 << 30)));
        assert!(pop(&mut w, t((1 << 30) - 1)).is_empty());
        assert!(pop(&mut w, t(1 << 30)).is_empty());
        assert_eq!(level_of(&w, 1), LEVELS - 1, "cascaded into the top level");
        assert_eq!(
            level_of(&w, 2),
            LEVELS,
            "still beyond: back to the overflow list"
        );
        assert_eq!(w.next_deadline(), Some(t(64 << 30)));
        let (fired, wakeups) = drive(&mut w, far);
        assert_eq!(fired, vec![(1, 1, far, far)]);
        assert!(wakeups <= LEVELS + 1, "{wakeups} wakeups to fire one entry");
        assert_eq!(w.next_deadline(), Some(t(137 << 30)));
        let (fired, _) = drive(&mut w, farther);
        assert_eq!(fired, vec![(2, 2, farther, farther)]);
        assert_eq!((w.len(), w.next_deadline()), (0, None));
    }

    #[test]
    fn wheel_places_a_deadline_by_its_distance_not_its_alignment() {
        let mut w = Wheel::new(t(0));
        assert!(pop(&mut w, t(4_000)).is_empty());
        // One second ahead but across a 4096 ms boundary: still level 1 (64 ms slots), so a
        // second's worth of such re-arms never piles up in one level-2 slot.
        w.insert(7, t(5_000), 1);
        assert_eq!(level_of(&w, 7), 1);
        assert_eq!(w.next_deadline(), Some(t(4_992)));
        let (fired, _) = drive(&mut w, t(5_000));
        assert_eq!(fired, vec![(7, 1, t(5_000), t(5_000))]);
    }

    #[test]
    fn wheel_fires_every_entry_of_a_crowded_slot_and_none_of_the_next() {
        let mut w = Wheel::new(t(0));
        for i in 0..1000 {
            w.insert(i, t(5_000), i);
        }
        for i in 0..10 {
            w.insert(1000 + i, t(5_001), i);
        }
        let (fired, _) = drive(&mut w, t(5_000));
        let mut ids: Vec<_> = fired.iter().map(|(id, ..)| *id).collect();
        ids.sort();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
        assert!(fired.iter().all(|(_, _, when, at)| when == at));
        assert_eq!(w.len(), 10);
        assert_eq!(w.next_deadline(), Some(t(5_001)));
    }

    #[test]
    fn wheel_disarms_an_entry_in_a_higher_level() {
        let mut w = Wheel::new(t(0));
        let day = 86_400_000;
        w.insert(4, t(day), 1);
        w.insert(5, t(day + 1), 2);
        w.insert(3, t(10), 3);
        assert_eq!(level_of(&w, 4), 4);
        assert_eq!(w.remove(4), Some(1));
        assert_eq!(w.remove(4), None);
        let (fired, _) = drive(&mut w, t(2 * day));
        let ids: Vec<_> = fired.iter().map(|(id, ..)| *id).collect();
        assert_eq!(ids, vec![3, 5]);
        // Removing a slot's last entry clears its occupancy bit: nothing is left to wake for.
        w.insert(6, t(3 * day), 4);
        assert_ne!(w.occupied, [0; LEVELS]);
        assert_eq!(w.remove(6), Some(4));
        assert_eq!(w.occupied, [0; LEVELS]);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn wheel_rearm_moves_an_entry_in_place() {
        let mut w = Wheel::new(t(0));
        assert_eq!(w.insert(7, t(86_400_000), 1), None);
        assert_eq!(w.insert(7, t(20), 2), Some(1));
        assert_eq!((w.len(), w.pages.len()), (1, 1), "re-arm reuses the entry");
        assert_eq!(w.next_deadline(), Some(t(20)));
        let (fired, _) = drive(&mut w, t(2 * 86_400_000));
        assert_eq!(fired, vec![(7, 2, t(20), t(20))]);
        // And later: the old, earlier deadline no longer fires.
        w.insert(8, t(30), 1);
        w.insert(8, t(5_000), 2);
        assert!(pop(&mut w, t(4_999)).is_empty());
        assert_eq!(pop(&mut w, t(5_000)).len(), 1);
        // The last entry to leave frees the slab.
        assert_eq!(w.remove(9), None);
        assert_eq!((w.len(), w.pages.len()), (0, 0));
        w.insert(9, t(40), 3);
        assert_eq!(w.pages.len(), 1);
        assert_eq!(w.remove(9), Some(3));
        assert_eq!(w.pages.len(), 0);
    }

    #[test]
    fn wheel_finds_the_earliest_slot_across_levels() {
        let mut w = Wheel::new(t(0));
        let deadlines = [3, 100, 5_000, 3_600_000, 86_400_000, 30 * 86_400_000];
        for (level, &ms) in deadlines.iter().enumerate().rev() {
            w.insert(level as u32, t(ms), level as u32);
        }
        for level in 0..LEVELS {
            assert_eq!(level_of(&w, level as u32), level);
        }
        assert_eq!(w.next_deadline(), Some(t(3)));
        // Without level 0, the earliest is level 1's slot of 64..128 ms.
        w.remove(0);
        assert_eq!(w.next_deadline(), Some(t(64)));
        w.insert(0, t(3), 0);
        let (fired, _) = drive(&mut w, t(31 * 86_400_000));
        let order: Vec<_> = fired
            .iter()
            .map(|(_, v, when, at)| (*v, *when, *at))
            .collect();
        let want: Vec<_> = deadlines
            .iter()
            .enumerate()
            .map(|(v, &ms)| (v as u32, t(ms), t(ms)))
            .collect();
        assert_eq!(order, want);
    }

    #[test]
    fn wheel_fires_deadlines_on_level_boundaries_exactly_on_time() {
        let boundaries: [i64; 9] = [
            63,
            64,
            4_095,
            4_096,
            1 << 18,
            1 << 24,
            1 << 30,
            (1 << 36) - 1,
            1 << 36,
        ];
        let mut w = Wheel::new(t(0));
        for (i, &ms) in boundaries.iter().enumerate() {
            w.insert(i as u32, t(ms), i as u32);
        }
        let (fired, _) = drive(&mut w, t(1 << 37));
        let got: Vec<_> = fired
            .iter()
            .map(|(_, v, when, at)| (*v, *when, *at))
            .collect();
        let want: Vec<_> = boundaries
            .iter()
            .enumerate()
            .map(|(v, &ms)| (v as u32, t(ms), t(ms)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn wheel_never_fires_before_a_deadline_inside_a_millisecond() {
        let mut w = Wheel::new(t(0));
        let when = t(10) + chrono::Duration::microseconds(500);
        w.insert(7, when, 1);
        assert_eq!(
            w.next_deadline(),
            Some(t(11)),
            "the deadline's tick rounds up"
        );
        assert!(pop(&mut w, t(10) + chrono::Duration::microseconds(999)).is_empty());
        assert_eq!(pop(&mut w, t(11)), vec![(7, 1, when, t(11))]);
    }

    #[test]
    fn wheel_rebuilds_when_time_goes_backwards() {
        let mut w = Wheel::new(t(0));
        w.insert(1, t(10_000), 1);
        assert!(pop(&mut w, t(5_000)).is_empty());
        // The clock steps back an hour. Relative to the wheel's time (5 s) this deadline is
        // past; it must still wait for its own wall time.
        let hour = 3_600_000;
        w.insert(2, t(2_000 - hour), 2);
        assert!(pop(&mut w, t(1_000 - hour)).is_empty());
        let (fired, _) = drive(&mut w, t(2_000 - hour));
        assert_eq!(fired, vec![(2, 2, t(2_000 - hour), t(2_000 - hour))]);
        assert!(pop(&mut w, t(9_999)).is_empty());
        let (fired, _) = drive(&mut w, t(10_000));
        assert_eq!(fired, vec![(1, 1, t(10_000), t(10_000))]);
    }

    #[test]
    fn wheel_rebuild_after_a_clock_step_keeps_every_deadline() {
        let mut w = Wheel::new(t(0));
        let deadlines = [1_000, 2_000, 3_600_000, 86_400_000];
        for (i, &ms) in deadlines.iter().enumerate() {
            w.insert(i as u32, t(ms), i as u32);
        }
        // Back a day: every deadline is now far away and is placed accordingly.
        w.rebuild(t(-86_400_000));
        assert!(pop(&mut w, t(999)).is_empty());
        // Forward past two of them: exactly those fire, once.
        w.rebuild(t(2_500));
        let fired: Vec<_> = pop(&mut w, t(2_500))
            .into_iter()
            .map(|(_, v, ..)| v)
            .collect();
        let mut fired = fired;
        fired.sort();
        assert_eq!(fired, vec![0, 1]);
        let (fired, _) = drive(&mut w, t(86_400_000));
        let got: Vec<_> = fired
            .iter()
            .map(|(_, v, when, at)| (*v, *when, *at))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, t(3_600_000), t(3_600_000)),
                (3, t(86_400_000), t(86_400_000))
            ]
        );
    }

    #[test]
    fn wheel_rearms_from_the_firing_closure() {
        let mut w = Wheel::new(t(0));
        w.insert(0, t(1_000), 0);
        let mut fired = Vec::new();
        for now in [t(1_000), t(1_500), t(2_000), t(3_000)] {
            w.pop_due(now, |_, when, count| {
                *count += 1;
                fired.push(when);
                Some(when + chrono::Duration::seconds(1))
            });
        }
        assert_eq!(fired, vec![t(1_000), t(2_000), t(3_000)]);
        assert_eq!(w.remove(0), Some(3));
    }

    /// A small deterministic generator (xorshift64*), so the test needs no dependency and
    /// every run sees the same sequence.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A distance ahead, from under a millisecond to about three years, with sub-ms parts.
        fn ahead(&mut self) -> chrono::Duration {
            let reach_ms =
                [64, 4_096, 300_000, 86_400_000, 100_000_000_000][self.below(5) as usize];
            chrono::Duration::milliseconds(self.below(reach_ms) as i64)
                + chrono::Duration::microseconds(self.below(1_000) as i64)
        }
    }

    /// Unix milliseconds of `when`, rounded up.
    fn ceil_ms(when: DateTime<Utc>) -> i64 {
        when.timestamp_millis() + i64::from(when.timestamp_subsec_nanos() % 1_000_000 != 0)
    }

    #[test]
    fn wheel_agrees_with_a_plain_map_under_random_operations() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut now = t(0);
        let mut w = Wheel::new(now);
        let mut model: HashMap<u32, DateTime<Utc>> = HashMap::new();
        for step in 0..20_000 {
            let key = rng.below(300) as u32;
            match rng.below(10) {
                0..=3 => {
                    let when = now + rng.ahead();
                    w.insert(key, when, 0);
                    model.insert(key, when);
                }
                4 => {
                    assert_eq!(w.remove(key).is_some(), model.remove(&key).is_some());
                }
                5 => {
                    // The clock steps back, with or without a notice.
                    now -= rng.ahead();
                    if rng.below(2) == 0 {
                        w.rebuild(now);
                    }
                }
                6 => {
                    if let Some(at) = w.next_deadline() {
                        now = now.max(at);
                    }
                }
                _ => now += chrono::Duration::microseconds(rng.below(200_000) as i64),
            }
            let mut fired = Vec::new();
            let mut rearmed = Vec::new();
            w.pop_due(now, |key, when, _| {
                fired.push((key, when));
                if rng.below(2) == 0 {
                    let next = now + rng.ahead() + chrono::Duration::microseconds(1);
                    rearmed.push((key, next));
                    Some(next)
                } else {
                    None
                }
            });
            fired.sort();
            // Due: the deadline's millisecond, rounded up, has begun.
            let mut due: Vec<_> = model
                .iter()
                .filter(|(_, &when)| ceil_ms(when) <= now.timestamp_millis())
                .map(|(&k, &when)| (k, when))
                .collect();
            due.sort();
            assert_eq!(fired, due, "step {step}: fired at {now}");
            for (key, _) in &fired {
                model.remove(key);
            }
            model.extend(rearmed);
            assert_eq!(w.len(), model.len(), "step {step}");
            match model.values().min() {
                None => assert_eq!(w.next_deadline(), None, "step {step}"),
                Some(&earliest) => {
                    // Ticks are whole milliseconds: the wheel wakes at the first one at or
                    // after the earliest deadline, never later.
                    let tick =
                        DateTime::from_timestamp_millis(ceil_ms(earliest)).expect("in range");
                    let next = w.next_deadline().expect("entries are armed");
                    assert!(
                        next <= tick,
                        "step {step}: wakes at {next}, after {earliest}"
                    );
                }
            }
        }
    }
}
