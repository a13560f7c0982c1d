//! Metrics events (taskengine appendix B): `POST /luban/api/metrics` with one JSON event per
//! request. Only sessions send them today (aliyun-sessions §1.6). The event bodies are pure
//! functions; `Metrics` adds the reference's budget (at most 100 events, then one per 10
//! minutes) and sends with one attempt, its answer ignored: a metric never delays or changes
//! what the agent does.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

use crate::remote::transport::{Http, DEFAULT_TIMEOUT};

pub const METRICS_PATH: &str = "/luban/api/metrics";
/// Events sent freely before the budget slows to one per `SLOW_INTERVAL`.
pub const FREE_EVENTS: u32 = 100;
pub const SLOW_INTERVAL: Duration = Duration::from_secs(600);

/// One event, before it is serialised.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: &'static str,
    pub category: &'static str,
    pub level: &'static str,
    /// Keyword pairs, in order.
    pub keywords: Vec<(&'static str, String)>,
}

/// The host facts every event carries (`common`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Common {
    pub instance_id: String,
    pub os_version: String,
}

/// The request body of `event` at `now_ms`: `common` and `keywords` are JSON objects
/// serialised into strings, as the reference sends them.
pub fn body(event: &Event, common: &Common, now_ms: i64) -> String {
    let common = json!({
        "arch": std::env::consts::ARCH,
        "instanceId": common.instance_id,
        "osVersion": common.os_version,
        "virtualType": "kvm",
        "distribution": "linux",
        "kernelVersion": common.os_version.strip_prefix("Linux_").unwrap_or(&common.os_version),
    });
    let keywords: serde_json::Map<String, serde_json::Value> = event
        .keywords
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    json!({
        "eventId": event.event_id,
        "category": event.category,
        "subCategory": "",
        "eventLevel": event.level,
        "eventTime": now_ms,
        "common": common.to_string(),
        "keywords": serde_json::Value::Object(keywords).to_string(),
    })
    .to_string()
}

/// The reference's budget: `FREE_EVENTS` at once, then one per `SLOW_INTERVAL`.
#[derive(Debug, Default)]
pub struct Budget {
    sent: u32,
    last_slow: Option<Instant>,
}

impl Budget {
    /// Whether one more event may go out at `now` (and counts it when it may).
    pub fn take(&mut self, now: Instant) -> bool {
        if self.sent < FREE_EVENTS {
            self.sent += 1;
            return true;
        }
        match self.last_slow {
            Some(last) if now.saturating_duration_since(last) < SLOW_INTERVAL => false,
            _ => {
                self.last_slow = Some(now);
                true
            }
        }
    }
}

/// The agent's one metrics sender.
#[derive(Debug, Default)]
pub struct Metrics {
    pub common: Common,
    budget: Mutex<Budget>,
}

impl Metrics {
    pub fn new(common: Common) -> Metrics {
        Metrics {
            common,
            budget: Mutex::new(Budget::default()),
        }
    }

    /// Sends `event` if the budget allows: one attempt, the answer ignored. The lock is
    /// held for the budget only, never across the request.
    pub fn send(&self, http: &dyn Http, event: &Event) {
        if !self.budget.lock().take(Instant::now()) {
            log::debug!("phase=metrics budget spent; {} not sent", event.event_id);
            return;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let body = body(event, &self.common, now_ms);
        if let Err(e) = http.post(
            METRICS_PATH,
            body.as_bytes(),
            "application/json",
            DEFAULT_TIMEOUT,
        ) {
            log::debug!("phase=metrics {} not delivered: {e}", event.event_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_reference_shape() {
        let event = Event {
            event_id: "agent.session.failed",
            category: "SESSION",
            level: "ERROR",
            keywords: vec![
                ("sessionId", "s-1".to_string()),
                ("code", "Open_port_failed".to_string()),
            ],
        };
        let common = Common {
            instance_id: "i-1".to_string(),
            os_version: "Linux_6.1".to_string(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&body(&event, &common, 1234)).expect("JSON");
        assert_eq!(v["eventId"], "agent.session.failed");
        assert_eq!(v["category"], "SESSION");
        assert_eq!(v["eventLevel"], "ERROR");
        assert_eq!(v["eventTime"], 1234);
        let kw: serde_json::Value =
            serde_json::from_str(v["keywords"].as_str().expect("a string")).expect("JSON");
        assert_eq!(kw, json!({"sessionId": "s-1", "code": "Open_port_failed"}));
        let common: serde_json::Value =
            serde_json::from_str(v["common"].as_str().expect("a string")).expect("JSON");
        assert_eq!(common["instanceId"], "i-1");
        assert_eq!(common["kernelVersion"], "6.1");
    }

    #[test]
    fn a_hundred_events_go_at_once_then_one_per_ten_minutes() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        assert!((0..FREE_EVENTS).all(|_| b.take(t0)));
        assert!(b.take(t0), "the first slow one");
        assert!(!b.take(t0 + Duration::from_secs(599)));
        assert!(b.take(t0 + SLOW_INTERVAL));
        assert!(!b.take(t0 + SLOW_INTERVAL + Duration::from_secs(1)));
    }
}
