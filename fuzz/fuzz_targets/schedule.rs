//! Fuzzes cron, rate and at expressions (`Schedule::parse_in`) and the search for the next run
//! (`next_after`): parsing fails cleanly, and successive runs strictly increase and end.
//!
//! Input: one byte picks the grammar, 8 bytes (big-endian seconds) give `from`, the rest is the
//! expression. Named zones come from the repository's fixtures, never the host's database.
#![no_main]

use assistd::schedule::tz::ZoneDb;
use assistd::schedule::{Schedule, ScheduleKind, Zone};
use chrono::DateTime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((from, expr)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let Ok(expr) = std::str::from_utf8(expr) else {
        return;
    };
    let kind = match kind % 3 {
        0 => ScheduleKind::Cron,
        1 => ScheduleKind::Rate,
        _ => ScheduleKind::At,
    };
    // Within chrono's range: from year -262143 to +262142.
    let from_secs = i64::from_be_bytes(*from) % 8_200_000_000_000;
    let Some(from) = DateTime::from_timestamp(from_secs, 0) else {
        return;
    };
    let db = ZoneDb::in_dirs([concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../src/schedule/testdata/zoneinfo"
    )
    .into()]);
    let creation_ms = from_secs.saturating_mul(1000) / 3;
    let Ok(schedule) = Schedule::parse_in(expr, kind, creation_ms, &Zone::utc(), &db) else {
        return;
    };
    let mut at = from;
    for _ in 0..4 {
        match schedule.next_after(at) {
            Some(next) => {
                assert!(next > at, "{expr:?}: {next} is not after {at}");
                at = next;
            }
            None => break,
        }
    }
});
