//! Fuzzes TZif zone files (`schedule::tzif::parse`) and the local-time arithmetic on whatever
//! parses: offsets stay in range, and every instant `resolve_local` returns shows that time.
#![no_main]

use std::sync::Arc;

use assistd::schedule::tz::{LocalInstant, NamedZone, Zone};
use chrono::{DateTime, Duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tz) = assistd::schedule::tzif::parse(data) else {
        return;
    };
    let mut probes = vec![i64::MIN, -1, 0, 1, 1_900_000_000, i64::MAX];
    probes.extend(
        tz.transitions()
            .iter()
            .take(64)
            .flat_map(|&(at, _)| [at - 1, at]),
    );
    for &at in &probes {
        let offset = tz.offset_at(at);
        assert!(
            (-89_999..=93_599).contains(&offset),
            "offset {offset} at {at}"
        );
    }
    let zone = Zone::Named(Arc::new(NamedZone::new("Fuzz/Zone", tz.clone())));
    for &at in probes
        .iter()
        .filter(|&&at| (-1_000_000_000_000..1_000_000_000_000).contains(&at))
    {
        let Some(local) = DateTime::from_timestamp(at, 0).map(|t| t.naive_utc()) else {
            continue;
        };
        match zone.resolve_local(local) {
            Some(LocalInstant::Single(t)) => assert_eq!(zone.to_local(t), Some(local)),
            Some(LocalInstant::Ambiguous { earliest, latest }) => {
                assert!(earliest < latest);
                assert_eq!(zone.to_local(earliest), Some(local));
                assert_eq!(zone.to_local(latest), Some(local));
            }
            Some(LocalInstant::Gap { next_valid }) => {
                assert!(
                    zone.to_local(next_valid) >= Some(local),
                    "gap end before {local}"
                );
                let before = next_valid - Duration::seconds(1);
                assert!(
                    zone.to_local(before) < Some(local),
                    "gap end not the first after {local}"
                );
            }
            None => {}
        }
    }
});
