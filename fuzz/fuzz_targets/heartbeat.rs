//! Fuzzes heartbeat answers (`remote::heartbeat::parse_answer`): any bytes ask something or nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = assistd::remote::heartbeat::parse_answer(data);
});
