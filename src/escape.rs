//! Control characters made visible, for text that reaches a terminal or a line-based log:
//! `\x1b` instead of ESC, `\n` instead of a newline. Task output and ids come from outside; an
//! escape sequence must not re-title or clear an operator's terminal, and a newline in a task
//! id must not forge a log line. It never changes printable text, tabs included.

use std::borrow::Cow;

/// True for what a terminal acts on: C0 controls but tab, DEL, and the C1 controls (U+0080 to
/// U+009F; U+009B is a one-byte CSI on some terminals).
fn is_active(c: char) -> bool {
    (c.is_control() && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

/// `s` with every active control character written as `\n`, `\r` or `\xNN` (`\u{NN}` for
/// C1); borrowed when there is none.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_active) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_active(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_active(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Like `for_terminal` on bytes that are mostly UTF-8 (a formatted log record): ASCII
/// controls but tab, DEL, and the two-byte UTF-8 encodings of C1 controls are escaped; other
/// bytes pass unchanged.
pub fn bytes_for_terminal(b: &[u8]) -> Cow<'_, [u8]> {
    let active = |i: usize| -> usize {
        match b[i] {
            0x09 => 0,
            0x00..=0x1f | 0x7f => 1,
            0xc2 if b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) => 2,
            _ => 0,
        }
    };
    if !(0..b.len()).any(|i| active(i) > 0) {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len() + 8);
    let mut i = 0;
    while i < b.len() {
        match active(i) {
            0 => {
                out.push(b[i]);
                i += 1;
            }
            1 => {
                match b[i] {
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    x => out.extend_from_slice(format!("\\x{x:02x}").as_bytes()),
                }
                i += 1;
            }
            _ => {
                out.extend_from_slice(format!("\\u{{{:x}}}", b[i + 1]).as_bytes());
                i += 2;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_borrowed_unchanged() {
        assert!(matches!(for_terminal("plain\ttext é"), Cow::Borrowed(_)));
        assert!(matches!(
            bytes_for_terminal("plain\ttext é".as_bytes()),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escape_sequences_and_newlines_become_visible() {
        assert_eq!(for_terminal("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(for_terminal("id\n[INFO] forged"), "id\\n[INFO] forged");
        assert_eq!(for_terminal("x\u{9b}2J"), "x\\u{9b}2J");
        assert_eq!(for_terminal("\r\x7f"), "\\r\\x7f");
        assert_eq!(
            bytes_for_terminal(b"t=a\nb \x1b[2J \xc2\x9b end"),
            Cow::<[u8]>::Owned(b"t=a\\nb \\x1b[2J \\u{9b} end".to_vec())
        );
        // A lone 0xc2 (not UTF-8) passes: only real C1 encodings are escaped.
        assert_eq!(
            bytes_for_terminal(b"\xc2A"),
            Cow::<[u8]>::Borrowed(b"\xc2A")
        );
    }
}
