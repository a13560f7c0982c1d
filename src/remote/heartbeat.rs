//! The heartbeat of remote mode (spec appendix A): `GET /luban/api/heart-beat` on its own small
//! thread, at the interval the server asks for (55–65 s). It never fetches or runs tasks; its
//! only other duty is to say when the first heartbeat is over, which enables fetching (spec §1.1).
//!
//! It is a thread blocked on `recv_timeout` of the shutdown channel rather than a timer
//! callback: timer callbacks run on the timer thread or the pool and must not do network I/O.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::remote::transport::{query_escape, Http, TransportError, DEFAULT_TIMEOUT};

pub const HEARTBEAT_PATH: &str = "/luban/api/heart-beat";
/// The interval window the server may ask for (spec §1.1 step 11).
pub const MIN_INTERVAL: Duration = Duration::from_millis(55_000);
pub const MAX_INTERVAL: Duration = Duration::from_millis(65_000);
/// Attempts of the first heartbeat (`PingwithRetries(3)`) and the pause between them.
pub const FIRST_ATTEMPTS: u32 = 3;
pub const RETRY_PAUSE: Duration = Duration::from_secs(3);
/// Extra attempts allowed per hour after a failed heartbeat (spec appendix A).
const RETRIES_PER_HOUR: u32 = 3;

/// What a heartbeat answer asks of the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// `errMsg` says a required request parameter is missing: send the full parameter set.
    pub wants_full_form: bool,
    /// `nextInterval` (milliseconds) as asked, before `Heartbeat::next_interval` bounds it.
    pub next_interval: Option<Duration>,
}

/// Reads a heartbeat answer. Lenient: an answer that is not a JSON object, or lacks a key,
/// asks nothing of that key (the heartbeat itself still counts as acknowledged).
pub fn parse_answer(body: &[u8]) -> Answer {
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let wants_full_form = body
        .get("errMsg")
        .and_then(|m| m.as_str())
        .is_some_and(|msg| msg.contains("Required request parameter"));
    let next_interval = body
        .get("nextInterval")
        .and_then(|v| v.as_u64())
        .map(Duration::from_millis);
    Answer {
        wants_full_form,
        next_interval,
    }
}

/// What the heartbeat says about this host, read once at start.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    pub cold_start: bool,
    pub os_version: String,
    pub zone_id: String,
    pub machine_id: String,
}

impl HostFacts {
    /// Reads the kernel release and `/etc/machine-id`; the zone id is unknown outside ECS.
    pub fn read(cold_start: bool) -> HostFacts {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        HostFacts {
            cold_start,
            os_version: format!("Linux_{}", read("/proc/sys/kernel/osrelease")),
            zone_id: String::new(),
            machine_id: read("/etc/machine-id"),
        }
    }
}

/// Counters and mode of the heartbeat; builds each request target.
pub struct Heartbeat {
    facts: HostFacts,
    started: Instant,
    sent: u64,
    acked: u64,
    /// The server asked for the long parameter form (spec appendix A); kept for good.
    full_form: bool,
    seed: u64,
}

impl Heartbeat {
    pub fn new(facts: HostFacts) -> Heartbeat {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Heartbeat {
            facts,
            started: Instant::now(),
            sent: 0,
            acked: 0,
            full_form: false,
            seed: nanos ^ (u64::from(std::process::id()) << 32) | 1,
        }
    }

    /// The request target of the next heartbeat. Both counters start at 0, as the reference's
    /// do (spec appendix A): `index` counts the heartbeats the server acknowledged, `seq_no`
    /// the ones sent before this one, so the first is `index=0&seq_no=0`, the next (after an
    /// answer) `index=1&seq_no=1`, and one after a failed attempt `index=0&seq_no=1`.
    pub fn target(&self, now_ms: i64, uptime_ms: u64) -> String {
        let mut q = format!(
            "{HEARTBEAT_PATH}?uptime={uptime_ms}&timestamp={now_ms}&pid={}&process_uptime={}&index={}&seq_no={}",
            std::process::id(),
            self.started.elapsed().as_millis(),
            self.acked,
            self.sent
        );
        let first = self.acked == 0;
        if self.full_form {
            q.push_str(&format!(
                "&virt_type=kvm&lang=golang&os_type=linux&os_version={}&app_version={}&az={}",
                query_escape(&self.facts.os_version),
                env!("CARGO_PKG_VERSION"),
                query_escape(&self.facts.zone_id)
            ));
            if first {
                q.push_str(&format!("&cold_start={}", self.facts.cold_start));
            }
        } else if first {
            q.push_str(&format!(
                "&virt_type=kvm&os_version={}&az={}&machineid={}&cold_start={}",
                query_escape(&self.facts.os_version),
                query_escape(&self.facts.zone_id),
                query_escape(&self.facts.machine_id),
                self.facts.cold_start
            ));
        }
        q
    }

    /// Sends one heartbeat; returns the interval until the next one on success.
    pub fn ping(&mut self, http: &dyn Http) -> Result<Duration, TransportError> {
        let target = self.target(chrono::Utc::now().timestamp_millis(), uptime_ms());
        self.sent += 1;
        let resp = http.get(&target, DEFAULT_TIMEOUT)?;
        self.acked += 1;
        let answer = parse_answer(&resp.body);
        if answer.wants_full_form && !self.full_form {
            log::info!("phase=heartbeat server asks for the full parameter set; switching");
            self.full_form = true;
        }
        Ok(self.next_interval(answer.next_interval))
    }

    /// The server's `nextInterval` when inside 55–65 s, else a random point of that window.
    pub fn next_interval(&mut self, asked: Option<Duration>) -> Duration {
        match asked {
            Some(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => d,
            _ => {
                // xorshift: enough to spread agents over the window; no crate needed.
                self.seed ^= self.seed << 13;
                self.seed ^= self.seed >> 7;
                self.seed ^= self.seed << 17;
                let span = (MAX_INTERVAL - MIN_INTERVAL).as_millis() as u64;
                MIN_INTERVAL + Duration::from_millis(self.seed % (span + 1))
            }
        }
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}

/// Waits `d` on the shutdown channel; true when shutdown has begun.
fn stopped(stop: &Receiver<()>, d: Duration) -> bool {
    matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Disconnected))
}

/// Starts the heartbeat thread: the first heartbeat (up to 3 attempts), then `enable` is
/// dropped (fetching may begin), then one heartbeat per interval until `stop` disconnects.
pub fn spawn(
    http: Arc<dyn Http>,
    facts: HostFacts,
    stop: Receiver<()>,
    enable: Sender<()>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("heartbeat".to_string())
        .spawn(move || {
            let mut hb = Heartbeat::new(facts);
            let mut interval = None;
            for attempt in 1..=FIRST_ATTEMPTS {
                match hb.ping(http.as_ref()) {
                    Ok(next) => {
                        interval = Some(next);
                        break;
                    }
                    Err(e) => {
                        log::warn!("phase=heartbeat first heartbeat attempt {attempt} failed: {e}");
                        if attempt < FIRST_ATTEMPTS && stopped(&stop, RETRY_PAUSE) {
                            return;
                        }
                    }
                }
            }
            drop(enable);
            let mut interval = interval.unwrap_or_else(|| hb.next_interval(None));
            let mut retries_left = RETRIES_PER_HOUR;
            let mut hour_start = Instant::now();
            loop {
                if stopped(&stop, interval) {
                    return;
                }
                if hour_start.elapsed() > Duration::from_secs(3600) {
                    hour_start = Instant::now();
                    retries_left = RETRIES_PER_HOUR;
                }
                interval = match hb.ping(http.as_ref()) {
                    Ok(next) => next,
                    Err(e) => {
                        log::warn!("phase=heartbeat heartbeat failed: {e}");
                        if retries_left > 0 {
                            retries_left -= 1;
                            RETRY_PAUSE
                        } else {
                            hb.next_interval(None)
                        }
                    }
                };
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            cold_start: true,
            os_version: "Linux_6.1".to_string(),
            zone_id: "cn-hangzhou-h".to_string(),
            machine_id: "abc".to_string(),
        }
    }

    #[test]
    fn first_heartbeat_carries_host_facts_and_later_ones_do_not() {
        let mut hb = Heartbeat::new(facts());
        let t = hb.target(1000, 2000);
        assert!(
            t.starts_with("/luban/api/heart-beat?uptime=2000&timestamp=1000&pid="),
            "{t}"
        );
        assert!(t.contains("&index=0&seq_no=0&virt_type=kvm&os_version=Linux_6.1&az=cn-hangzhou-h&machineid=abc&cold_start=true"), "{t}");
        hb.sent = 1;
        let t = hb.target(1000, 2000);
        assert!(
            t.contains("&index=0&seq_no=1&virt_type=kvm&os_version"),
            "{t}"
        );
        hb.acked = 1;
        let t = hb.target(1000, 2000);
        assert!(t.ends_with("&index=1&seq_no=1"), "{t}");
        hb.full_form = true;
        let t = hb.target(1000, 2000);
        assert!(t.ends_with(&format!("&virt_type=kvm&lang=golang&os_type=linux&os_version=Linux_6.1&app_version={}&az=cn-hangzhou-h", env!("CARGO_PKG_VERSION"))), "{t}");
    }

    /// What the counters say on the wire, heartbeat by heartbeat, through `ping` itself.
    #[test]
    fn counters_start_at_zero_and_seq_no_counts_failed_attempts_too() {
        use crate::remote::transport::testing::FakeHttp;
        let http = FakeHttp::answering(vec![
            FakeHttp::ok("{}"),
            Err(TransportError::Status(500)),
            FakeHttp::ok("{}"),
        ]);
        let mut hb = Heartbeat::new(facts());
        for _ in 0..3 {
            let _ = hb.ping(&http);
        }
        let counters: Vec<String> = http
            .paths()
            .iter()
            .map(|p| {
                let at = p.find("&index=").expect("index");
                let end = p[at + 1..].find("&virt").map_or(p.len(), |e| at + 1 + e);
                p[at + 1..end].to_string()
            })
            .collect();
        assert_eq!(
            counters,
            ["index=0&seq_no=0", "index=1&seq_no=1", "index=1&seq_no=2"]
        );
    }

    #[test]
    fn answers_are_read_leniently() {
        assert_eq!(
            parse_answer(br#"{"nextInterval":60000}"#),
            Answer {
                wants_full_form: false,
                next_interval: Some(Duration::from_secs(60)),
            }
        );
        let full =
            parse_answer(br#"{"errMsg":"Required request parameter 'os_type' is not present"}"#);
        assert!(full.wants_full_form);
        assert_eq!(full.next_interval, None);
        for odd in [
            &b""[..],
            b"[]",
            b"null",
            b"{\"nextInterval\":-1}",
            b"{\"errMsg\":7}",
            b"\xff",
        ] {
            assert_eq!(parse_answer(odd), Answer::default(), "{odd:?}");
        }
    }

    #[test]
    fn intervals_outside_the_window_are_replaced_by_a_point_inside_it() {
        let mut hb = Heartbeat::new(facts());
        assert_eq!(
            hb.next_interval(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        for asked in [
            None,
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(3600)),
        ] {
            let d = hb.next_interval(asked);
            assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&d), "{d:?}");
        }
    }
}
