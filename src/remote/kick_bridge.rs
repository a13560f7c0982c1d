//! The kick bridge: turns the kick listener's actions into fetch requests and agent signals,
//! and polls the task list while no kick channel is up. It never talks to the network and
//! never fetches by itself; the fetch thread does.

use std::io;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{after, never, select_biased, Receiver, Sender};

use crate::remote::kick::KickAction;
use crate::signals::Signal;

use crate::remote::fetch::{FetchRequest, FETCH_RETRY_INTERVAL};
use crate::remote::transport::{RETRY_ATTEMPTS, RETRY_PAUSE};

/// What the bridge thread is given.
pub struct BridgeParts {
    /// From the kick listener.
    pub actions: Receiver<KickAction>,
    /// To the fetch thread.
    pub fetch: Sender<FetchRequest>,
    /// To the control loop (`kick_vm agent stop`).
    pub signals: Sender<Signal>,
    /// Where `kick_vm session stop` goes; `None`: such kicks are logged and ignored.
    pub sessions: Option<crate::remote::session::SessionHandle>,
    /// Poll the task list this often while the kick channel is down; `None`: never.
    pub poll: Option<Duration>,
    /// Disconnects at shutdown.
    pub stop: Receiver<()>,
}

/// Spawns the bridge. It ends when `stop` or the action channel disconnects.
pub fn spawn(parts: BridgeParts) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("kick-bridge".to_string())
        .spawn(move || run(parts))
}

fn run(parts: BridgeParts) {
    let mut channel_up = false;
    loop {
        // An idle agent with a working kick channel does not wake for polling.
        let poll = match (channel_up, parts.poll) {
            (false, Some(every)) => after(every),
            _ => never(),
        };
        // Biased: an action already queued goes before a poll that fell due meanwhile. The
        // listener reports the channel up before it reads any message, so a reconnect whose
        // `ChannelUp` waits beside a due poll turns polling off instead of sending one more
        // plain fetch, which would swallow the kick that follows (`PendingFetches` merges a
        // task kick into a pending plain one).
        select_biased! {
            recv(parts.stop) -> _ => return,
            recv(parts.actions) -> action => match action {
                Ok(action) => {
                    if !handle(&parts, action, &mut channel_up) {
                        return;
                    }
                }
                Err(_) => return,
            },
            recv(poll) -> _ => {
                log::debug!("phase=poll no kick channel: polling the task list");
                request(&parts, FetchRequest::kick());
            }
        }
    }
}

/// Acts on one kick; false when the agent is stopping.
fn handle(parts: &BridgeParts, action: KickAction, channel_up: &mut bool) -> bool {
    match action {
        KickAction::ChannelUp => {
            *channel_up = true;
            log::info!("phase=kick kick channel up: polling off");
        }
        KickAction::ChannelDown => {
            *channel_up = false;
            log::warn!("phase=kick kick channel down: {}", polling_note(parts.poll));
        }
        KickAction::Fetch { task_id, session } => {
            let req = match (task_id, session) {
                (Some(id), true) => FetchRequest::session(id),
                (Some(id), false) => FetchRequest::task(id),
                (None, _) => FetchRequest::kick(),
            };
            request(parts, req);
        }
        KickAction::StopAgent => {
            log::warn!("phase=kick the server asked the agent to stop");
            let _ = parts.signals.send(Signal::Terminate);
            return false;
        }
        KickAction::StopSession { channel_id } => match &parts.sessions {
            Some(sessions) => sessions.stop(&channel_id),
            None => log::warn!("phase=kick session stop for {channel_id}: sessions are off"),
        },
        KickAction::UpdateAgent => {
            log::info!("phase=kick update kick: the updater checks on its own schedule");
        }
        other => log::warn!("phase=kick {other:?} is not supported by this agent; ignored"),
    }
    true
}

/// What polling does while the kick channel is down, as the log says it. A poll is one fetch
/// of the fetch thread: with the server down it makes `RETRY_ATTEMPTS` tries `RETRY_PAUSE`
/// apart, then, `FETCH_RETRY_INTERVAL` later, as many again unless another request (the next
/// poll) is waiting. The poll timer here keeps ticking meanwhile, and a poll that falls due
/// during a fetch is queued and starts when that fetch ends: with a 2 s interval and the
/// server down, polls start about 6 s apart, which this line says.
fn polling_note(poll: Option<Duration>) -> String {
    let Some(every) = poll else {
        return "polling is off: tasks arrive when it is back".to_string();
    };
    format!(
        "polling the task list every {} s until it is back; while the server does not answer, \
         each poll takes at least {} s ({} tries {} s apart, and {} more {} s later unless the \
         next poll is due) and a poll that falls due meanwhile waits for it to end",
        every.as_secs(),
        RETRY_PAUSE.as_secs() * u64::from(RETRY_ATTEMPTS.saturating_sub(1)),
        RETRY_ATTEMPTS,
        RETRY_PAUSE.as_secs(),
        RETRY_ATTEMPTS,
        FETCH_RETRY_INTERVAL.as_secs(),
    )
}

fn request(parts: &BridgeParts, req: FetchRequest) {
    // The fetch thread coalesces requests; a full queue already holds a pending fetch.
    let _ = parts.fetch.try_send(req);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};

    struct Bridge {
        actions: Sender<KickAction>,
        fetch: Receiver<FetchRequest>,
        signals: Receiver<Signal>,
        _stop: Sender<()>,
        join: Option<thread::JoinHandle<()>>,
    }

    fn bridge(poll: Option<Duration>) -> Bridge {
        bridge_with_queued(poll, Vec::new())
    }

    /// A bridge whose action queue already holds `queued` when its thread starts.
    fn bridge_with_queued(poll: Option<Duration>, queued: Vec<KickAction>) -> Bridge {
        let (actions, actions_rx) = unbounded();
        for action in queued {
            actions.send(action).expect("send");
        }
        let (fetch_tx, fetch) = bounded(16);
        let (signals_tx, signals) = unbounded();
        let (stop, stop_rx) = bounded(0);
        let join = spawn(BridgeParts {
            actions: actions_rx,
            fetch: fetch_tx,
            signals: signals_tx,
            sessions: None,
            poll,
            stop: stop_rx,
        })
        .expect("spawn bridge");
        Bridge {
            actions,
            fetch,
            signals,
            _stop: stop,
            join: Some(join),
        }
    }

    const DEADLINE: Duration = Duration::from_secs(30);

    #[test]
    fn kicks_become_fetch_requests() {
        let b = bridge(None);
        b.actions
            .send(KickAction::Fetch {
                task_id: Some("t-1".into()),
                session: false,
            })
            .expect("send");
        assert_eq!(
            b.fetch.recv_timeout(DEADLINE),
            Ok(FetchRequest::task("t-1"))
        );
        b.actions
            .send(KickAction::Fetch {
                task_id: None,
                session: false,
            })
            .expect("send");
        assert_eq!(b.fetch.recv_timeout(DEADLINE), Ok(FetchRequest::kick()));
    }

    #[test]
    fn agent_stop_signals_terminate_and_ends_the_bridge() {
        let mut b = bridge(None);
        b.actions.send(KickAction::StopAgent).expect("send");
        assert_eq!(b.signals.recv_timeout(DEADLINE), Ok(Signal::Terminate));
        b.join.take().expect("join").join().expect("bridge ends");
    }

    #[test]
    fn the_polling_note_says_what_a_failed_poll_takes() {
        assert_eq!(
            polling_note(Some(Duration::from_secs(2))),
            "polling the task list every 2 s until it is back; while the server does not \
             answer, each poll takes at least 6 s (4 tries 2 s apart, and 4 more 3 s later \
             unless the next poll is due) and a poll that falls due meanwhile waits for it to end"
        );
        assert_eq!(
            polling_note(None),
            "polling is off: tasks arrive when it is back"
        );
    }

    #[test]
    fn polls_only_while_the_channel_is_down() {
        let b = bridge(Some(Duration::from_millis(10)));
        // Down at start: polls arrive.
        assert_eq!(b.fetch.recv_timeout(DEADLINE), Ok(FetchRequest::kick()));
        b.actions.send(KickAction::ChannelUp).expect("send");
        // Drain what was polled before the bridge saw the channel come up, then expect none:
        // the bridge handles messages in order, so after this kick's request, no poll follows.
        b.actions
            .send(KickAction::Fetch {
                task_id: Some("marker".into()),
                session: false,
            })
            .expect("send");
        while let Ok(req) = b.fetch.recv_timeout(DEADLINE) {
            if req == FetchRequest::task("marker") {
                break;
            }
        }
        // A poll would come within 10 ms; 200 ms without one shows polling is off. (No event
        // exists for "nothing happened"; this bounded wait is the check itself.)
        assert!(b.fetch.recv_timeout(Duration::from_millis(200)).is_err());
        b.actions.send(KickAction::ChannelDown).expect("send");
        assert_eq!(b.fetch.recv_timeout(DEADLINE), Ok(FetchRequest::kick()));
    }

    #[test]
    fn queued_actions_go_before_a_due_poll() {
        // The listener's `ChannelUp` and its first kick wait in the queue while a poll is
        // already due (interval zero). The bridge must turn polling off first: a plain fetch
        // sent now would swallow the task kick (CI saw this with a random select). Actions
        // that only log queue ahead of it, so an unbiased select meets the due poll a dozen
        // times (crossbeam seeds its shuffle per thread: one race alone could pass by luck).
        let task = |id: &str| KickAction::Fetch {
            task_id: Some(id.to_string()),
            session: false,
        };
        let mut queued = vec![KickAction::UpdateAgent; 12];
        queued.extend([KickAction::ChannelUp, task("t-b"), task("end")]);
        let b = bridge_with_queued(Some(Duration::ZERO), queued);
        let mut got = Vec::new();
        while got.last() != Some(&FetchRequest::task("end")) {
            got.push(b.fetch.recv_timeout(DEADLINE).expect("a fetch request"));
        }
        assert_eq!(got, [FetchRequest::task("t-b"), FetchRequest::task("end")]);
        let Bridge {
            actions,
            fetch,
            _stop,
            join,
            ..
        } = b;
        drop((actions, _stop));
        join.expect("join").join().expect("bridge ends");
        assert!(fetch.try_recv().is_err(), "a poll with the channel up");
    }
}
