//! Fuzzes what a session websocket carries (`session::frame::decode` and its payload
//! decoders, `shell::split_command`, `shell::Utf8Carry`): any bytes decode or fail cleanly,
//! a decoded frame's payload is the rest of the message, and the UTF-8 carry loses no byte.
#![no_main]

use assistd::remote::session::{frame, shell};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = frame::decode(data) {
        assert_eq!(f.payload.len() + frame::HEADER_LEN, data.len());
        let _ = frame::decode_window_size(&f.payload);
        let _ = frame::decode_set_speed(&f.payload);
    }
    if let Ok(line) = std::str::from_utf8(data) {
        if let Ok(words) = shell::split_command(line) {
            assert!(words.iter().map(String::len).sum::<usize>() <= line.len());
        }
    }
    let mut carry = shell::Utf8Carry::default();
    let mut out = Vec::new();
    for chunk in data.chunks(7) {
        out.extend(carry.push(chunk));
    }
    out.extend(carry.finish());
    assert_eq!(out, data);
});
