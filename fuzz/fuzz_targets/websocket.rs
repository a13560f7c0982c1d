//! Fuzzes what a server sends on a websocket: the upgrade answer's head
//! (`websocket::check_answer`) and the frames after it (`ws_conn::replay`, which reads them in
//! chunks of 1 to 8 bytes). Messages and replies are bounded by the input, and a close is the
//! last message.
#![no_main]

use assistd::remote::{websocket, ws_conn};
use libfuzzer_sys::fuzz_target;

/// RFC 6455 §1.3's example key; its accept value is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let head_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 4);
    if websocket::check_answer(&data[..head_end], KEY).is_ok() {
        let head = String::from_utf8_lossy(&data[..head_end]);
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }
    // An answer's frames start behind its head.
    let frames = if data.starts_with(b"HTTP/") {
        &data[head_end..]
    } else {
        data
    };
    let chunk = 1 + usize::from(data.len() as u8 % 8);
    let (messages, end, written) = ws_conn::replay(frames, chunk);
    assert!(messages.len() <= frames.len() / 2 + 1);
    assert!(written.len() <= 3 * frames.len() + 8);
    assert!(!end.is_would_block());
    if let Some(at) = messages.iter().position(|m| *m == ws_conn::Message::Close) {
        assert_eq!(at + 1, messages.len());
        assert!(matches!(end, ws_conn::Error::Closed));
    }
});
