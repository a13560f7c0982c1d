//! Fuzzes `kick_vm` messages from the notify websocket (`kick::parse_kick`, `handle_message`):
//! any text parses or fails cleanly, and the reply is bounded by the message.
#![no_main]

use assistd::remote::kick;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = std::str::from_utf8(data) else {
        return;
    };
    let _ = kick::parse_kick(msg);
    for critical in [false, true] {
        let (reply, _action) = kick::handle_message(msg, critical);
        assert!(
            reply.len() <= msg.len() + 64,
            "reply of {} bytes",
            reply.len()
        );
    }
});
