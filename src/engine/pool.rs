//! The worker pool: runs jobs on at most `max` threads, started when a job finds no idle
//! worker and ended after `idle_timeout` without work, so an idle agent holds no worker
//! thread. It never decides what runs or when; the engine hands it closures.
//!
//! The queue and its counters sit behind one short lock with a `Condvar`, as in any pool:
//! whether a job needs a new thread depends on how many workers are waiting at that moment,
//! and that count and the queue must change together (a channel's length cannot tell a
//! waiting worker from one that has just taken a job).

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A pool's name (its threads' name), size bound and idle timeout.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    pub name: &'static str,
    /// At most this many threads run jobs at once (at least 1).
    pub max: usize,
    /// A worker with no job for this long ends.
    pub idle_timeout: Duration,
}

/// A handle to the pool; clones share it.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: PoolConfig,
    state: Mutex<State>,
    /// Signalled when a job is queued (wakes a waiting worker) and at `join`.
    work: Condvar,
    /// Signalled when a worker ends, for `join`.
    ended: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Workers waiting for a job. Each takes at most one job when it wakes, so queued jobs
    /// beyond this count need a new worker.
    waiting: usize,
    /// Worker threads alive (waiting or running a job); never above `max`.
    live: usize,
    /// Set by `join`: workers end as soon as the queue is empty.
    closing: bool,
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                cfg: PoolConfig {
                    max: cfg.max.max(1),
                    ..cfg
                },
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                ended: Condvar::new(),
            }),
        }
    }

    /// Queues `job`; it runs on a waiting worker, or on a new one while fewer than `max` are
    /// alive, else when a worker becomes free. Never blocks on a running job.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        let mut st = self.shared.state.lock();
        st.queue.push_back(Box::new(job));
        if st.queue.len() > st.waiting && st.live < self.shared.cfg.max {
            st.live += 1;
            drop(st);
            self.spawn_worker();
        } else {
            drop(st);
            self.shared.work.notify_one();
        }
    }

    /// Worker threads alive right now.
    pub fn threads(&self) -> usize {
        self.shared.state.lock().live
    }

    /// Waits until every queued and running job is done and every worker has ended. Jobs
    /// queued meanwhile still run. It waits without a bound: the engine calls it only after
    /// its jobs were told to end (their own deadlines bound them).
    pub fn join(&self) {
        let mut st = self.shared.state.lock();
        st.closing = true;
        self.shared.work.notify_all();
        while st.live > 0 {
            self.shared.ended.wait(&mut st);
        }
    }

    /// Waits until at most `n` workers are alive; false if `deadline` came first.
    #[cfg(test)]
    fn wait_for_threads(&self, n: usize, deadline: Instant) -> bool {
        let mut st = self.shared.state.lock();
        while st.live > n {
            if self.shared.ended.wait_until(&mut st, deadline).timed_out() {
                return st.live <= n;
            }
        }
        true
    }

    fn spawn_worker(&self) {
        let shared = self.shared.clone();
        let spawned = thread::Builder::new()
            .name(shared.cfg.name.to_string())
            .spawn(move || worker(&shared));
        if let Err(e) = spawned {
            // Out of threads: give the slot back. The job stays queued for a worker that is
            // alive, or for the next `execute` that can start one.
            log::error!(
                "phase=pool cannot start a {} thread: {e}",
                self.shared.cfg.name
            );
            let mut st = self.shared.state.lock();
            st.live -= 1;
            self.shared.ended.notify_all();
        }
    }
}

/// One worker: takes jobs until it has waited `idle_timeout` for one (or the pool closes).
fn worker(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            // The job's own guard sends its report and `Done` while unwinding; catching the
            // panic here keeps this worker for the next job. The panic hook has logged it.
            let _ = panic::catch_unwind(AssertUnwindSafe(job));
            st = shared.state.lock();
            continue;
        }
        if st.closing {
            break;
        }
        let deadline = Instant::now() + shared.cfg.idle_timeout;
        st.waiting += 1;
        let timed_out = shared.work.wait_until(&mut st, deadline).timed_out();
        st.waiting -= 1;
        if timed_out && st.queue.is_empty() {
            break;
        }
    }
    st.live -= 1;
    drop(st);
    shared.ended.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};

    const DEADLINE: Duration = Duration::from_secs(30);

    fn pool(max: usize, idle_timeout: Duration) -> Pool {
        Pool::new(PoolConfig {
            name: "test-worker",
            max,
            idle_timeout,
        })
    }

    #[test]
    fn an_unused_pool_has_no_thread() {
        let p = pool(8, Duration::from_secs(60));
        assert_eq!(p.threads(), 0);
        p.join();
    }

    #[test]
    fn jobs_run_concurrently_up_to_the_bound_and_the_rest_wait() {
        let p = pool(3, Duration::from_secs(60));
        let (started_tx, started) = unbounded();
        let (release_tx, release) = bounded::<()>(0);
        for i in 0..5 {
            let (started_tx, release) = (started_tx.clone(), release.clone());
            p.execute(move || {
                started_tx.send(i).expect("test alive");
                let _ = release.recv_timeout(DEADLINE);
            });
        }
        for _ in 0..3 {
            started.recv_timeout(DEADLINE).expect("three jobs start");
        }
        assert_eq!(p.threads(), 3, "never more threads than the bound");
        assert!(started.try_recv().is_err(), "the fourth job waits");
        drop(release_tx);
        for _ in 0..2 {
            started.recv_timeout(DEADLINE).expect("the queued jobs run");
        }
        p.join();
        assert_eq!(p.threads(), 0);
    }

    #[test]
    fn a_busy_worker_does_not_hold_up_a_new_job() {
        // One worker is busy; the next job gets a thread of its own at once.
        let p = pool(2, Duration::from_secs(60));
        let (release_tx, release) = bounded::<()>(0);
        p.execute(move || {
            let _ = release.recv_timeout(DEADLINE);
        });
        let (ran_tx, ran) = bounded(1);
        p.execute(move || ran_tx.send(()).expect("test alive"));
        ran.recv_timeout(DEADLINE).expect("ran beside the busy job");
        drop(release_tx);
        p.join();
    }

    #[test]
    fn idle_workers_end_after_the_timeout() {
        let p = pool(4, Duration::from_millis(10));
        let (tx, rx) = unbounded();
        for _ in 0..4 {
            let tx = tx.clone();
            p.execute(move || tx.send(()).expect("test alive"));
        }
        for _ in 0..4 {
            rx.recv_timeout(DEADLINE).expect("job ran");
        }
        assert!(
            p.wait_for_threads(0, Instant::now() + DEADLINE),
            "idle workers ended"
        );
        // The pool still works after its workers are gone.
        p.execute(move || tx.send(()).expect("test alive"));
        rx.recv_timeout(DEADLINE).expect("a new worker ran it");
        p.join();
    }

    #[test]
    fn a_panicking_job_leaves_the_pool_working() {
        let p = pool(1, Duration::from_secs(60));
        p.execute(|| panic!("job panics on purpose"));
        let (tx, rx) = bounded(1);
        p.execute(move || tx.send(()).expect("test alive"));
        rx.recv_timeout(DEADLINE)
            .expect("the next job runs after a panic");
        p.join();
    }
}
