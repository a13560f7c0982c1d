//! The task registry: which invocations are queued or running (keyed by task id) and which
//! periodic tasks are registered. It only records; it never starts, kills or reports anything.
//!
//! It is the one piece of engine state shared between threads (the control loop, the timer's
//! callbacks and the workers), behind one short `parking_lot` lock that is never held across
//! I/O.

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use std::collections::HashMap;

use crate::runner::Cancel;
use crate::timer::TimerId;

/// A queued or running invocation.
struct Live {
    invoke_version: i64,
    periodic: bool,
    started: bool,
    /// The cron's last firing was skipped because this invocation was still running: it
    /// reports `completed` when it ends instead (spec §5.9).
    completes_cron: bool,
    cancel: Sender<Cancel>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Live>,
    /// Registered periodic tasks: their invoke versions and timer ids. The task itself and
    /// its schedule live in the timer's callback; this map only answers "which version is
    /// registered" and "which timer to disarm", so it costs a few dozen bytes a task.
    periodic: HashMap<Box<str>, Periodic>,
    /// Set at shutdown: no invocation is added after it.
    closed: bool,
}

/// A registered periodic task.
struct Periodic {
    invoke_version: i64,
    /// Set right after the task is registered (`attach_timer`); `None` only in between.
    timer: Option<TimerId>,
}

/// What the registry knows about a task id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// A queued or running invocation of this version.
    Live(i64),
    /// A registered periodic task of this version (idle or running).
    Periodic(i64),
}

impl Known {
    pub fn invoke_version(self) -> i64 {
        match self {
            Known::Live(v) | Known::Periodic(v) => v,
        }
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Looks a task up the way the reference does: invocations first, then periodic tasks.
    pub fn known(&self, task_id: &str) -> Option<Known> {
        let inner = self.inner.lock();
        if let Some(live) = inner.live.get(task_id) {
            return Some(Known::Live(live.invoke_version));
        }
        inner
            .periodic
            .get(task_id)
            .map(|p| Known::Periodic(p.invoke_version))
    }

    pub fn has_live(&self, task_id: &str) -> bool {
        self.inner.lock().live.contains_key(task_id)
    }

    /// Adds a queued invocation unless one of the same task is already queued or running
    /// (the non-overlap rule). Returns the receiver its worker listens to for cancels.
    pub fn try_add_live(
        &self,
        task_id: &str,
        invoke_version: i64,
        periodic: bool,
    ) -> Option<Receiver<Cancel>> {
        let mut inner = self.inner.lock();
        if inner.closed || inner.live.contains_key(task_id) {
            return None;
        }
        Some(insert_live(&mut inner, task_id, invoke_version, periodic))
    }

    /// Like `try_add_live`, for a timer firing: also refuses when the periodic registration
    /// is gone or belongs to another version (a firing that raced with a stop or an update).
    pub fn try_add_periodic_invocation(
        &self,
        task_id: &str,
        invoke_version: i64,
    ) -> Option<Receiver<Cancel>> {
        let mut inner = self.inner.lock();
        let registered = inner.periodic.get(task_id).map(|p| p.invoke_version);
        if inner.closed || registered != Some(invoke_version) || inner.live.contains_key(task_id) {
            return None;
        }
        Some(insert_live(&mut inner, task_id, invoke_version, true))
    }

    /// Marks an invocation as started (its worker took it from the queue).
    pub fn mark_started(&self, task_id: &str, invoke_version: i64) {
        if let Some(live) = self.inner.lock().live.get_mut(task_id) {
            if live.invoke_version == invoke_version {
                live.started = true;
            }
        }
    }

    /// Removes an invocation when its worker is done with it. Returns whether a skipped last
    /// cron firing asked it to report `completed`.
    pub fn remove_live(&self, task_id: &str, invoke_version: i64) -> bool {
        let mut inner = self.inner.lock();
        if inner
            .live
            .get(task_id)
            .is_some_and(|l| l.invoke_version == invoke_version)
        {
            return inner.live.remove(task_id).is_some_and(|l| l.completes_cron);
        }
        false
    }

    /// The cron's last firing found this invocation still running: let it report
    /// `completed` when it ends. False when no invocation of that version is live.
    pub fn request_completion(&self, task_id: &str, invoke_version: i64) -> bool {
        match self.inner.lock().live.get_mut(task_id) {
            Some(live) if live.invoke_version == invoke_version => {
                live.completes_cron = true;
                true
            }
            _ => false,
        }
    }

    /// Refuses every later invocation (shutdown has begun).
    pub fn close(&self) {
        self.inner.lock().closed = true;
    }

    /// Asks the queued or running invocation of `task_id` to stop. False when there is none.
    pub fn cancel(&self, task_id: &str, how: Cancel) -> bool {
        let inner = self.inner.lock();
        match inner.live.get(task_id) {
            // The channel holds one message; a second cancel of the same invocation is
            // redundant and dropped.
            Some(live) => {
                let _ = live.cancel.try_send(how);
                true
            }
            None => false,
        }
    }

    /// Sends `how` to every invocation; `queued_only` limits it to those not yet started.
    pub fn cancel_all(&self, how: Cancel, queued_only: bool) -> usize {
        let inner = self.inner.lock();
        let mut n = 0;
        for live in inner.live.values().filter(|l| !queued_only || !l.started) {
            let _ = live.cancel.try_send(how);
            n += 1;
        }
        n
    }

    /// Registers a periodic task's version; false when the id is registered already. The
    /// task is registered before its timer is armed, so that a first firing due at once
    /// finds it; `attach_timer` then records the timer.
    pub fn register_periodic(&self, task_id: &str, invoke_version: i64) -> bool {
        let mut inner = self.inner.lock();
        if inner.periodic.contains_key(task_id) {
            return false;
        }
        inner.periodic.insert(
            task_id.into(),
            Periodic {
                invoke_version,
                timer: None,
            },
        );
        true
    }

    /// Records the timer armed for a registered periodic task. When that registration is
    /// gone (or is another version's), the id comes back for the caller to disarm.
    pub fn attach_timer(
        &self,
        task_id: &str,
        invoke_version: i64,
        timer: TimerId,
    ) -> Result<(), TimerId> {
        match self.inner.lock().periodic.get_mut(task_id) {
            Some(p) if p.invoke_version == invoke_version && p.timer.is_none() => {
                p.timer = Some(timer);
                Ok(())
            }
            _ => Err(timer),
        }
    }

    /// Unregisters a periodic task; returns the version that was registered and its timer,
    /// which the caller disarms.
    pub fn take_periodic(&self, task_id: &str) -> Option<(i64, Option<TimerId>)> {
        let p = self.inner.lock().periodic.remove(task_id)?;
        Some((p.invoke_version, p.timer))
    }

    /// The registered version of a periodic task.
    pub fn periodic(&self, task_id: &str) -> Option<i64> {
        let inner = self.inner.lock();
        inner.periodic.get(task_id).map(|p| p.invoke_version)
    }

    /// The updater's question (spec §1.6): is a non-periodic invocation queued or running?
    pub fn any_non_periodic_live(&self) -> bool {
        self.inner.lock().live.values().any(|l| !l.periodic)
    }

    pub fn live_count(&self) -> usize {
        self.inner.lock().live.len()
    }

    pub fn periodic_count(&self) -> usize {
        self.inner.lock().periodic.len()
    }
}

fn insert_live(
    inner: &mut Inner,
    task_id: &str,
    invoke_version: i64,
    periodic: bool,
) -> Receiver<Cancel> {
    let (tx, rx) = bounded(1);
    inner.live.insert(
        task_id.to_string(),
        Live {
            invoke_version,
            periodic,
            started: false,
            completes_cron: false,
            cancel: tx,
        },
    );
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_invocation_of_the_same_task_is_refused_until_the_first_is_removed() {
        let reg = Registry::new();
        assert!(reg.try_add_live("t", 1, false).is_some());
        assert!(reg.try_add_live("t", 1, false).is_none());
        assert!(reg.try_add_live("t", 2, false).is_none());
        reg.remove_live("t", 1);
        assert!(reg.try_add_live("t", 2, false).is_some());
    }

    #[test]
    fn a_closed_registry_takes_no_new_invocation() {
        let reg = Registry::new();
        reg.close();
        assert!(reg.try_add_live("t", 1, false).is_none());
    }

    #[test]
    fn a_requested_completion_is_returned_on_removal() {
        let reg = Registry::new();
        let _rx = reg.try_add_live("c", 1, true);
        assert!(!reg.request_completion("c", 2), "another version");
        assert!(reg.request_completion("c", 1));
        assert!(reg.remove_live("c", 1));
        assert!(!reg.request_completion("c", 1), "gone");
    }

    #[test]
    fn removing_with_a_stale_version_keeps_the_newer_invocation() {
        let reg = Registry::new();
        let _rx = reg.try_add_live("t", 2, false);
        reg.remove_live("t", 1);
        assert_eq!(reg.known("t"), Some(Known::Live(2)));
    }

    #[test]
    fn cancel_reaches_the_worker_and_unknown_ids_say_so() {
        let reg = Registry::new();
        let rx = reg.try_add_live("t", 1, false).expect("added");
        assert!(reg.cancel("t", Cancel::Stop));
        assert_eq!(rx.try_recv(), Ok(Cancel::Stop));
        assert!(!reg.cancel("other", Cancel::Stop));
    }

    #[test]
    fn only_queued_invocations_are_cancelled_with_queued_only() {
        let reg = Registry::new();
        let queued = reg.try_add_live("q", 1, false).expect("added");
        let running = reg.try_add_live("r", 1, false).expect("added");
        reg.mark_started("r", 1);
        assert_eq!(reg.cancel_all(Cancel::Stop, true), 1);
        assert_eq!(queued.try_recv(), Ok(Cancel::Stop));
        assert!(running.try_recv().is_err());
    }

    #[test]
    fn periodic_only_counts_as_non_periodic_when_it_is_not() {
        let reg = Registry::new();
        let _a = reg.try_add_live("p", 1, true);
        assert!(!reg.any_non_periodic_live());
        let _b = reg.try_add_live("o", 1, false);
        assert!(reg.any_non_periodic_live());
    }
}
