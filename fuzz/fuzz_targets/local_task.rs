//! Fuzzes local task files (`source::local::parse_task`): any bytes give a task or a `LoadErrorKind`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = assistd::source::local::parse_task(data, "fuzz", 1_700_000_000_000);
});
