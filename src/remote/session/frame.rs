//! The session channel's binary frame (spec §3): a fixed 60-byte header and a payload, and the
//! small payloads inside it (window size, send speed). Pure encode and decode; it never does
//! I/O and never panics on input: a short or malformed frame is an error.

use std::fmt;

/// Length of the fixed header (spec §3.1).
pub const HEADER_LEN: usize = 60;
/// The schema version every frame the agent writes carries (spec §3.2).
pub const SCHEMA_VERSION: &str = "1.01";

/// Keystrokes or TCP data, server → agent.
pub const INPUT_STREAM_DATA: u32 = 0;
/// Terminal output or TCP data, agent → server: the only type the agent sends.
pub const OUTPUT_STREAM_DATA: u32 = 1;
/// A window size as JSON, server → agent.
pub const SET_SIZE: u32 = 2;
/// Sent by the client to close; the agent ignores it (spec §3.5).
pub const CLOSE_DATA_CHANNEL: u32 = 3;
/// A status byte and its data, server → agent.
pub const STATUS: u32 = 5;
/// The status code that sets the agent's send speed (spec §3.8).
pub const STATUS_SET_SPEED: u8 = 7;

const VERSION_AT: usize = 4;
const SESSION_ID_AT: usize = 8;
const CREATED_AT: usize = 40;
const SEQ_AT: usize = 48;
const LEN_AT: usize = 56;
const VERSION_LEN: usize = SESSION_ID_AT - VERSION_AT;
const SESSION_ID_LEN: usize = CREATED_AT - SESSION_ID_AT;

/// One decoded frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub msg_type: u32,
    pub version: String,
    pub session_id: String,
    /// Unix epoch milliseconds; never 0 in a frame that decoded.
    pub created_ms: u64,
    pub seq: i64,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    // Payloads are keystrokes and terminal output: only their length is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("msg_type", &self.msg_type)
            .field("version", &self.version)
            .field("session_id", &self.session_id)
            .field("created_ms", &self.created_ms)
            .field("seq", &self.seq)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why a frame could not be built or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The schema version is longer than its 4-byte field.
    VersionTooLong(usize),
    /// The session id is longer than its 32-byte field (spec §3.3).
    SessionIdTooLong(usize),
    /// An empty payload is never sent (spec §3.3).
    EmptyPayload,
    /// A message of this many bytes is shorter than the header. The reference returns an error
    /// up to 56 bytes and panics for 57-59; both are this error here.
    Short(usize),
    /// CreatedDate is 0 (spec §3.4): the frame is invalid.
    NoCreatedDate,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::VersionTooLong(n) => {
                write!(f, "schema version of {n} bytes does not fit in 4")
            }
            FrameError::SessionIdTooLong(n) => {
                write!(f, "session id of {n} bytes does not fit in 32")
            }
            FrameError::EmptyPayload => f.write_str("frame payload is empty"),
            FrameError::Short(n) => write!(f, "frame of {n} bytes is shorter than its header"),
            FrameError::NoCreatedDate => f.write_str("frame has no creation date"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Builds one frame (spec §3.3): string fields padded with spaces, integers little-endian,
/// PayloadLength from the payload.
pub fn encode(
    msg_type: u32,
    version: &str,
    session_id: &str,
    created_ms: u64,
    seq: i64,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    if version.len() > VERSION_LEN {
        return Err(FrameError::VersionTooLong(version.len()));
    }
    if session_id.len() > SESSION_ID_LEN {
        return Err(FrameError::SessionIdTooLong(session_id.len()));
    }
    if payload.is_empty() {
        return Err(FrameError::EmptyPayload);
    }
    // The payload is at most a few KiB (one read); a length past u32 is not a frame.
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::EmptyPayload)?;
    let mut out = vec![b' '; HEADER_LEN];
    out[..VERSION_AT].copy_from_slice(&msg_type.to_le_bytes());
    out[VERSION_AT..VERSION_AT + version.len()].copy_from_slice(version.as_bytes());
    out[SESSION_ID_AT..SESSION_ID_AT + session_id.len()].copy_from_slice(session_id.as_bytes());
    out[CREATED_AT..SEQ_AT].copy_from_slice(&created_ms.to_le_bytes());
    out[SEQ_AT..LEN_AT].copy_from_slice(&seq.to_le_bytes());
    out[LEN_AT..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// An output frame as the agent sends it (spec §3.2).
pub fn encode_output(
    session_id: &str,
    created_ms: u64,
    seq: i64,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    encode(
        OUTPUT_STREAM_DATA,
        SCHEMA_VERSION,
        session_id,
        created_ms,
        seq,
        payload,
    )
}

/// Reads one inbound frame (spec §3.4). The payload is everything after the header; the
/// PayloadLength field is not trusted, as in the reference. Strings lose surrounding NULs and
/// whitespace.
pub fn decode(msg: &[u8]) -> Result<Frame, FrameError> {
    if msg.len() < HEADER_LEN {
        return Err(FrameError::Short(msg.len()));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg[at..at + 8]);
        b
    };
    let mut t = [0u8; 4];
    t.copy_from_slice(&msg[..VERSION_AT]);
    let created_ms = u64::from_le_bytes(u64_at(CREATED_AT));
    if created_ms == 0 {
        return Err(FrameError::NoCreatedDate);
    }
    Ok(Frame {
        msg_type: u32::from_le_bytes(t),
        version: field_text(&msg[VERSION_AT..SESSION_ID_AT]),
        session_id: field_text(&msg[SESSION_ID_AT..CREATED_AT]),
        created_ms,
        seq: i64::from_le_bytes(u64_at(SEQ_AT)),
        payload: msg[HEADER_LEN..].to_vec(),
    })
}

fn field_text(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let end = raw.iter().rposition(|b| *b != 0).map_or(start, |i| i + 1);
    String::from_utf8_lossy(&raw[start..end]).trim().to_string()
}

/// A terminal size (spec §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u32,
    pub rows: u32,
}

/// Decodes a SetSize payload `{"cols":120,"rows":40}`: keys case-insensitive, a missing key
/// is 0; anything that is not an object of unsigned 32-bit integers is `None`.
pub fn decode_window_size(payload: &[u8]) -> Option<WindowSize> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let obj = value.as_object()?;
    let mut size = WindowSize { cols: 0, rows: 0 };
    for (k, v) in obj {
        let slot = if k.eq_ignore_ascii_case("cols") {
            &mut size.cols
        } else if k.eq_ignore_ascii_case("rows") {
            &mut size.rows
        } else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        *slot = u32::try_from(v.as_u64()?).ok()?;
    }
    Some(size)
}

/// The send speed in bits per second of a Status payload with code 7 (spec §3.5): 1 to 4
/// big-endian bytes after the code. `None` for other codes, other lengths, or speed 0.
pub fn decode_set_speed(payload: &[u8]) -> Option<u32> {
    let (&code, speed) = payload.split_first()?;
    if code != STATUS_SET_SPEED || speed.is_empty() || speed.len() > 4 {
        return None;
    }
    let value = speed.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    (value > 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        // The spec's notation: `|` between fields, `20×32` for 32 spaces.
        let s = s
            .replace("20×32", &"20".repeat(32))
            .replace("20×12", &"20".repeat(12));
        let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn check_encode(args: (u32, &str, &str, u64, i64, &[u8]), expect: &str) {
        let (t, v, id, created, seq, payload) = args;
        assert_eq!(encode(t, v, id, created, seq, payload), Ok(hex(expect)));
    }

    #[test]
    fn vector_a_message_test() {
        let a = "01000000 | 312e3120 | 20×32 | 0068e5cf8b010000 | 6500000000000000 | 0b000000 | 68656c6c6f20776f726c64";
        check_encode((1, "1.1", "", 1_700_000_000_000, 101, b"hello world"), a);
        let f = decode(&hex(a)).expect("decodes");
        assert_eq!((f.seq, f.version.as_str(), f.msg_type), (101, "1.1", 1));
        assert_eq!(f.payload, b"hello world");
        assert_eq!(hex(a).len(), 71);
    }

    #[test]
    fn vector_b_agent_output() {
        let b = "01000000 | 312e3031 | 732d687a306a646677636e6b7878787878787878 20×12 | 0018f7618d010000 | 0000000000000000 | 07000000 | 2f726f6f740d0a";
        assert_eq!(
            encode_output("s-hz0jdfwcnkxxxxxxxx", 1_706_745_600_000, 0, b"/root\r\n"),
            Ok(hex(b))
        );
        assert_eq!(
            decode(&hex(b)).expect("decodes").session_id,
            "s-hz0jdfwcnkxxxxxxxx"
        );
    }

    #[test]
    fn vector_c_resize() {
        let c = "02000000 | 312e3031 | 20×32 | 7b18f7618d010000 | 0200000000000000 | 16000000 | 7b22636f6c73223a3132302c22726f7773223a34307d";
        check_encode(
            (
                2,
                "1.01",
                "",
                1_706_745_600_123,
                2,
                br#"{"cols":120,"rows":40}"#,
            ),
            c,
        );
        let f = decode(&hex(c)).expect("decodes");
        assert_eq!(f.session_id, "");
        assert_eq!(
            decode_window_size(&f.payload),
            Some(WindowSize {
                cols: 120,
                rows: 40
            })
        );
    }

    #[test]
    fn vector_d_set_speed() {
        let d = "05000000 | 312e3031 | 20×32 | 7b18f7618d010000 | 0300000000000000 | 05000000 | 0700100000";
        let f = decode(&hex(d)).expect("decodes");
        assert_eq!((f.msg_type, f.seq), (STATUS, 3));
        assert_eq!(decode_set_speed(&f.payload), Some(1_048_576));
    }

    #[test]
    fn vector_e_keystrokes_and_truncations() {
        let e = hex(
            "00000000 | 312e3031 | 20×32 | 7b18f7618d010000 | 0400000000000000 | 03000000 | 6c730d",
        );
        assert_eq!(e.len(), 63);
        assert_eq!(decode(&e).expect("decodes").payload, b"ls\r");
        let at60 = decode(&e[..60]).expect("60 bytes decode");
        assert_eq!((at60.seq, at60.payload.len()), (4, 0));
        assert_eq!(decode(&e[..61]).expect("61 bytes decode").payload, b"l");
        // 57-59 bytes panic the reference; here they are an error like any short frame.
        for n in [0, 3, 4, 7, 8, 39, 40, 48, 49, 56, 57, 58, 59] {
            assert_eq!(decode(&e[..n]), Err(FrameError::Short(n)), "length {n}");
        }
    }

    #[test]
    fn payload_length_field_is_ignored() {
        let mut e = hex(
            "00000000 | 312e3031 | 20×32 | 7b18f7618d010000 | 0400000000000000 | 03000000 | 6c730d",
        );
        e[56] = 255;
        assert_eq!(decode(&e).expect("decodes").payload, b"ls\r");
    }

    #[test]
    fn vector_f_close_frame() {
        let f = "03000000 | 312e3031 | 20×32 | 7b18f7618d010000 | 0900000000000000 | 01000000 | 31";
        check_encode((3, "1.01", "", 1_706_745_600_123, 9, b"1"), f);
        assert_eq!(
            decode(&hex(f)).expect("decodes").msg_type,
            CLOSE_DATA_CHANNEL
        );
    }

    #[test]
    fn vector_g_session_id_of_32_bytes() {
        let g = "01000000 | 312e3031 | 3132333435363738393031323334353637383930313233343536373839303132 | 0100000000000000 | 0000000000000000 | 01000000 | 78";
        check_encode(
            (1, "1.01", "12345678901234567890123456789012", 1, 0, b"x"),
            g,
        );
        assert_eq!(
            encode_output("123456789012345678901234567890123", 1, 0, b"x"),
            Err(FrameError::SessionIdTooLong(33))
        );
    }

    #[test]
    fn vector_h_extreme_values() {
        let h = "ffffffff | 312e3031 | 20×32 | ffffffffffffffff | ffffffffffffffff | 01000000 | 78";
        check_encode((u32::MAX, "1.01", "", u64::MAX, -1, b"x"), h);
        let f = decode(&hex(h)).expect("decodes");
        assert_eq!((f.msg_type, f.created_ms, f.seq), (u32::MAX, u64::MAX, -1));
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        assert_eq!(
            encode(1, "1.011", "", 1, 0, b"x"),
            Err(FrameError::VersionTooLong(5))
        );
        assert_eq!(encode_output("s", 1, 0, b""), Err(FrameError::EmptyPayload));
    }

    #[test]
    fn strings_lose_nuls_and_blanks() {
        let mut f = encode(0, "1.01", " ab c", 5, 0, b"x").expect("encodes");
        f[4..8].copy_from_slice(b"1.01");
        f[8] = 0;
        assert_eq!(decode(&f).expect("decodes").session_id, "ab c");
        let mut v = encode(0, "", "", 5, 0, b"x").expect("encodes");
        v[4..8].copy_from_slice(b"\x001.0");
        assert_eq!(decode(&v).expect("decodes").version, "1.0");
    }

    #[test]
    fn created_date_zero_is_invalid() {
        let f = encode(0, "1.01", "", 0, 0, b"x").expect("encodes");
        assert_eq!(decode(&f), Err(FrameError::NoCreatedDate));
    }

    #[test]
    fn speeds() {
        let check = |p: &[u8], want: Option<u32>| assert_eq!(decode_set_speed(p), want, "{p:02x?}");
        check(&[7, 0x07], Some(7));
        check(&[7, 0x10, 0x00], Some(4096));
        check(&[7, 0x10, 0x00, 0x00], Some(1_048_576));
        check(&[7, 0x00, 0x10, 0x00, 0x00], Some(1_048_576));
        check(&[7, 1, 2, 3, 4, 5], None);
        check(&[7], None);
        check(&[], None);
        check(&[7, 0], None);
        check(&[6, 1], None);
    }

    #[test]
    fn window_sizes() {
        let check = |p: &str, want: Option<(u32, u32)>| {
            assert_eq!(
                decode_window_size(p.as_bytes()),
                want.map(|(cols, rows)| WindowSize { cols, rows }),
                "{p}"
            )
        };
        check(r#"{"cols":120,"rows":40}"#, Some((120, 40)));
        check(r#"{"COLS":3}"#, Some((3, 0)));
        check(r#"{}"#, Some((0, 0)));
        check(r#"{"cols":-1,"rows":2}"#, None);
        check(r#"{"cols":1.5}"#, None);
        check(r#"{"cols":4294967296}"#, None);
        check(r#"{"cols":"80"}"#, None);
        check("[1]", None);
        check("not json", None);
    }
}
