//! One open websocket, client side (RFC 6455 §5): frames in and out over a byte stream that is
//! already upgraded (`websocket::dial` does the upgrade). Reads reassemble fragmented messages
//! and check what a client must check (server frames unmasked, no reserved bits, control
//! frames short and whole, text UTF-8); pings are answered and a close is echoed, as the
//! protocol requires. Writes are masked with a fresh random key per frame and queued until
//! `flush`, so a non-blocking socket (sessions) and a blocking one with timeouts (kicks) work
//! alike: `WouldBlock`, `TimedOut` and `Interrupted` leave every buffered byte in place and
//! the call can be repeated.
//!
//! No extensions (no compression) are offered, so none can be in use.

use std::fmt;
use std::io::{self, Read, Write};

use rand_core::{OsRng, RngCore};

/// The largest message accepted, reassembled: 16 MiB. Session input frames are a few KiB and
/// kicks a few bytes; this only bounds what a broken server can make the agent hold.
pub const MAX_MESSAGE: usize = 16 << 20;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A whole message, or a control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    /// Answered already (the pong is queued); returned so the caller knows the peer is there.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close; its echo is queued and sent by the next `flush`.
    Close,
}

impl Message {
    pub fn into_text(self) -> Option<String> {
        match self {
            Message::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Why a read or a write failed.
#[derive(Debug)]
pub enum Error {
    /// From the stream: `WouldBlock`, `TimedOut` and `Interrupted` are retries.
    Io(io::Error),
    /// The peer broke RFC 6455 (the reason names the rule).
    Protocol(&'static str),
    /// A message over `MAX_MESSAGE`.
    TooBig(u64),
    /// The close handshake is over (or we sent our close): nothing more can be read or sent.
    Closed,
    /// The stream ended without a close frame.
    Eof,
    /// No random masking key could be had (getrandom failed).
    Random,
}

impl Error {
    /// A read or write that found nothing to do yet: repeat it later.
    pub fn is_would_block(&self) -> bool {
        matches!(self, Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Nothing arrived in time or a signal cut the call short: the connection is still good.
    pub fn is_retry(&self) -> bool {
        matches!(self, Error::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        ))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Protocol(why) => write!(f, "websocket protocol error: {why}"),
            Error::TooBig(n) => write!(f, "a message of {n} bytes is over the {MAX_MESSAGE} limit"),
            Error::Closed => f.write_str("the websocket is closed"),
            Error::Eof => f.write_str("the connection ended without a close frame"),
            Error::Random => f.write_str("no random masking key"),
        }
    }
}

impl std::error::Error for Error {}

/// The client end of a websocket over `S`.
pub struct WebSocket<S> {
    stream: S,
    /// Bytes read and not yet parsed start at `in_pos`.
    input: Vec<u8>,
    in_pos: usize,
    /// Frames queued for the stream; the unsent ones start at `out_pos`.
    output: Vec<u8>,
    out_pos: usize,
    /// A fragmented message being reassembled: its opcode and the data so far.
    partial: Option<(u8, Vec<u8>)>,
    close_sent: bool,
    close_received: bool,
}

impl<S: Read + Write> WebSocket<S> {
    /// A websocket over an upgraded stream; `early` holds bytes read past the upgrade answer.
    pub fn new(stream: S, early: Vec<u8>) -> WebSocket<S> {
        WebSocket {
            stream,
            input: early,
            in_pos: 0,
            output: Vec::new(),
            out_pos: 0,
            partial: None,
            close_sent: false,
            close_received: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The next message. Queued output (a pong, a close echo) goes out first, as far as the
    /// stream takes it.
    pub fn read(&mut self) -> Result<Message, Error> {
        loop {
            match self.flush() {
                Ok(()) | Err(Error::Closed) => {}
                Err(e) if e.is_retry() => {}
                Err(e) => return Err(e),
            }
            if self.close_received {
                return Err(Error::Closed);
            }
            if let Some(msg) = self.parse()? {
                return Ok(msg);
            }
            if self.in_pos > 0 {
                self.input.drain(..self.in_pos);
                self.in_pos = 0;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Error::Eof),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Queues `msg` as one frame; `flush` sends it.
    pub fn write(&mut self, msg: Message) -> Result<(), Error> {
        if self.close_sent {
            return Err(Error::Closed);
        }
        match msg {
            Message::Text(t) => self.queue(OP_TEXT, t.as_bytes()),
            Message::Binary(b) => self.queue(OP_BINARY, &b),
            Message::Ping(p) => self.queue(OP_PING, control_payload(&p)?),
            Message::Pong(p) => self.queue(OP_PONG, control_payload(&p)?),
            Message::Close => {
                self.close_sent = true;
                self.queue(OP_CLOSE, &[])
            }
        }
    }

    /// `write`, then `flush`.
    pub fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.write(msg)?;
        self.flush()
    }

    /// Queues our close (once) and flushes. Reading on until `Closed` takes the peer's echo.
    pub fn close(&mut self) -> Result<(), Error> {
        if !self.close_sent {
            self.write(Message::Close)?;
        }
        self.flush()
    }

    /// Writes what is queued. A signal mid-write is retried; `WouldBlock` and `TimedOut`
    /// return with the rest still queued.
    pub fn flush(&mut self) -> Result<(), Error> {
        while self.out_pos < self.output.len() {
            match self.stream.write(&self.output[self.out_pos..]) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        self.output.clear();
        self.out_pos = 0;
        loop {
            match self.stream.flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Error> {
        let mut mask = [0u8; 4];
        OsRng.try_fill_bytes(&mut mask).map_err(|_| Error::Random)?;
        if self.out_pos == self.output.len() {
            self.output.clear();
            self.out_pos = 0;
        }
        encode_frame(&mut self.output, opcode, payload, mask);
        Ok(())
    }

    /// One message out of the input buffer, or `None` when it needs more bytes.
    fn parse(&mut self) -> Result<Option<Message>, Error> {
        while let Some(frame) = next_frame(&self.input[self.in_pos..])? {
            let (fin, opcode, start, len) = frame;
            let at = self.in_pos + start;
            let payload = &self.input[at..at + len];
            self.in_pos = at + len;
            if opcode >= OP_CLOSE {
                let payload = payload.to_vec();
                return self.control(opcode, payload).map(Some);
            }
            let data = match (opcode, self.partial.take()) {
                (OP_CONTINUATION, Some((op, mut data))) => {
                    if data.len() + len > MAX_MESSAGE {
                        return Err(Error::TooBig((data.len() + len) as u64));
                    }
                    data.extend_from_slice(payload);
                    (op, data)
                }
                (OP_CONTINUATION, None) => return Err(Error::Protocol("continuation of nothing")),
                (OP_TEXT | OP_BINARY, None) => (opcode, payload.to_vec()),
                (OP_TEXT | OP_BINARY, Some(_)) => {
                    return Err(Error::Protocol("a new message inside a fragmented one"))
                }
                _ => return Err(Error::Protocol("reserved opcode")),
            };
            if !fin {
                self.partial = Some(data);
                continue;
            }
            return match data {
                (OP_TEXT, bytes) => String::from_utf8(bytes)
                    .map(|t| Some(Message::Text(t)))
                    .map_err(|_| Error::Protocol("text that is not UTF-8")),
                (_, bytes) => Ok(Some(Message::Binary(bytes))),
            };
        }
        Ok(None)
    }

    fn control(&mut self, opcode: u8, payload: Vec<u8>) -> Result<Message, Error> {
        match opcode {
            OP_PING => {
                if !self.close_sent {
                    self.queue(OP_PONG, &payload)?;
                }
                Ok(Message::Ping(payload))
            }
            OP_PONG => Ok(Message::Pong(payload)),
            OP_CLOSE => {
                if payload.len() == 1 {
                    return Err(Error::Protocol("a close frame of one byte"));
                }
                if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(Error::Protocol("a close reason that is not UTF-8"));
                }
                self.close_received = true;
                if !self.close_sent {
                    // The echo carries the peer's status code (RFC 6455 §5.5.1).
                    self.close_sent = true;
                    let code = payload.get(..2).unwrap_or(&[]).to_vec();
                    self.queue(OP_CLOSE, &code)?;
                }
                Ok(Message::Close)
            }
            _ => Err(Error::Protocol("reserved control opcode")),
        }
    }
}

/// What a peer's bytes make: every message read from `input` handed over `chunk` bytes at a
/// time (with a `WouldBlock` before each chunk), the error that ended the reading, and what
/// was written back (pongs, the close echo). The fuzz target's and the parser suite's entry.
pub fn replay(input: &[u8], chunk: usize) -> (Vec<Message>, Error, Vec<u8>) {
    struct Replay<'a> {
        input: &'a [u8],
        chunk: usize,
        ready: bool,
        written: Vec<u8>,
    }
    impl Read for Replay<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.ready = !self.ready;
            if !self.ready {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.chunk.max(1).min(buf.len()).min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
    }
    impl Write for Replay<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let stream = Replay {
        input,
        chunk,
        ready: false,
        written: Vec::new(),
    };
    let mut ws = WebSocket::new(stream, Vec::new());
    let mut messages = Vec::new();
    let end = loop {
        match ws.read() {
            Ok(m) => messages.push(m),
            Err(e) if e.is_would_block() => {}
            Err(e) => break e,
        }
    };
    (messages, end, ws.stream.written)
}

fn control_payload(p: &[u8]) -> Result<&[u8], Error> {
    if p.len() > 125 {
        return Err(Error::Protocol("a control frame over 125 bytes"));
    }
    Ok(p)
}

/// The frame at the start of `buf` as (fin, opcode, payload start, payload length), or `None`
/// when `buf` does not hold all of it yet.
fn next_frame(buf: &[u8]) -> Result<Option<(bool, u8, usize, usize)>, Error> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        return Err(Error::Protocol(
            "reserved bits set (no extension was agreed)",
        ));
    }
    if b1 & 0x80 != 0 {
        return Err(Error::Protocol("a masked frame from the server"));
    }
    let (len, start) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(Error::Protocol("a fragmented or long control frame"));
    }
    if len > MAX_MESSAGE as u64 {
        return Err(Error::TooBig(len));
    }
    let len = len as usize;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some((fin, opcode, start, len)))
}

/// Appends one final, masked frame.
fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its input a few bytes at a time (then `WouldBlock`, once) and
    /// keeps what is written.
    struct Trickle {
        input: Vec<u8>,
        pos: usize,
        step: usize,
        blocked: bool,
        written: Vec<u8>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.blocked {
                self.blocked = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.blocked = false;
            let n = self.step.min(buf.len()).min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        encode_frame(&mut f, opcode, payload, [0; 4]);
        f[0] = if fin { 0x80 | opcode } else { opcode };
        // Unmasked, as a server sends: drop the mask bit and the key.
        f[1] &= 0x7F;
        let key_at = match payload.len() {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        };
        f.drain(key_at..key_at + 4);
        f
    }

    fn ws(input: Vec<u8>, step: usize) -> WebSocket<Trickle> {
        WebSocket::new(
            Trickle {
                input,
                pos: 0,
                step,
                blocked: false,
                written: Vec::new(),
            },
            Vec::new(),
        )
    }

    /// Reads on through `WouldBlock` until a message or another error.
    fn read(ws: &mut WebSocket<Trickle>) -> Result<Message, Error> {
        loop {
            match ws.read() {
                Err(e) if e.is_would_block() => {}
                other => return other,
            }
        }
    }

    /// Unmasks the client frames in `bytes` as (opcode, payload).
    fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0] & 0xF0, 0x80, "final, no reserved bits");
            assert_ne!(bytes[1] & 0x80, 0, "a client frame is masked");
            let (len, at) = match bytes[1] & 0x7F {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&bytes[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                n => (n as usize, 2),
            };
            let mask = &bytes[at..at + 4];
            let payload = bytes[at + 4..at + 4 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            out.push((bytes[0] & 0x0F, payload));
            bytes = &bytes[at + 4 + len..];
        }
        out
    }

    #[test]
    fn messages_arrive_whole_through_short_reads_and_fragments() {
        let big = vec![7u8; 70_000];
        let mut input = server_frame(true, OP_TEXT, "kick_vm ✓".as_bytes());
        input.extend(server_frame(false, OP_BINARY, b"ab"));
        // A ping between fragments is answered at once.
        input.extend(server_frame(true, OP_PING, b"p"));
        input.extend(server_frame(false, OP_CONTINUATION, b"cd"));
        input.extend(server_frame(true, OP_CONTINUATION, b"e"));
        input.extend(server_frame(true, OP_BINARY, &big));
        input.extend(server_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        let mut ws = ws(input, 3);
        assert_eq!(read(&mut ws).ok(), Some(Message::Text("kick_vm ✓".into())));
        assert_eq!(read(&mut ws).ok(), Some(Message::Ping(b"p".to_vec())));
        assert_eq!(read(&mut ws).ok(), Some(Message::Binary(b"abcde".to_vec())));
        assert_eq!(read(&mut ws).ok(), Some(Message::Binary(big)));
        assert_eq!(read(&mut ws).ok(), Some(Message::Close));
        assert!(matches!(read(&mut ws), Err(Error::Closed)));
        assert!(matches!(
            ws.send(Message::Text("late".into())),
            Err(Error::Closed)
        ));
        assert_eq!(
            client_frames(&ws.get_ref().written),
            vec![
                (OP_PONG, b"p".to_vec()),
                (OP_CLOSE, 1000u16.to_be_bytes().to_vec())
            ]
        );
    }

    #[test]
    fn sent_frames_are_masked_with_fresh_keys_and_sized_three_ways() {
        let mut ws = ws(Vec::new(), 1);
        let long = vec![1u8; 300];
        let huge = vec![2u8; 70_000];
        for m in [
            Message::Text("accept:kick_vm".into()),
            Message::Binary(long.clone()),
            Message::Binary(huge.clone()),
            Message::Ping(b"keepalive".to_vec()),
        ] {
            ws.write(m).expect("queued");
        }
        assert!(
            ws.get_ref().written.is_empty(),
            "nothing leaves before flush"
        );
        ws.close().expect("close");
        let written = ws.get_ref().written.clone();
        assert_eq!(
            client_frames(&written),
            vec![
                (OP_TEXT, b"accept:kick_vm".to_vec()),
                (OP_BINARY, long),
                (OP_BINARY, huge),
                (OP_PING, b"keepalive".to_vec()),
                (OP_CLOSE, Vec::new()),
            ]
        );
        assert_eq!(written[1], 0x80 | 14);
        assert_eq!(written[20..24], [0x82, 0x80 | 126, 0x01, 0x2C]);
        // Two frames of the same text differ on the wire: each has its own key.
        assert_ne!(
            ws_bytes("same"),
            ws_bytes("same"),
            "one key per frame (a 2^-32 chance of a false alarm)"
        );
        assert!(ws.write(Message::Ping(vec![0; 126])).is_err());
    }

    fn ws_bytes(text: &str) -> Vec<u8> {
        let mut ws = ws(Vec::new(), 1);
        ws.send(Message::Text(text.into())).expect("send");
        ws.get_ref().written.clone()
    }

    #[test]
    fn protocol_breaches_are_errors() {
        let masked = {
            let mut f = server_frame(true, OP_TEXT, b"x");
            f[1] |= 0x80;
            f.splice(2..2, [0u8; 4]);
            f
        };
        let mut rsv = server_frame(true, OP_TEXT, b"x");
        rsv[0] |= 0x40;
        let mut too_big = vec![0x82, 127];
        too_big.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (masked, "masked"),
            (rsv, "reserved bits"),
            (server_frame(true, OP_CONTINUATION, b"x"), "continuation"),
            (server_frame(false, OP_PING, b""), "control"),
            (server_frame(true, OP_TEXT, &[0xFF, 0xFE]), "UTF-8"),
            (server_frame(true, 0x3, b""), "reserved opcode"),
            (server_frame(true, OP_CLOSE, &[3]), "one byte"),
            (too_big, "over the"),
            (
                [
                    server_frame(false, OP_TEXT, b"a"),
                    server_frame(true, OP_TEXT, b"b"),
                ]
                .concat(),
                "inside a fragmented",
            ),
        ];
        for (input, want) in cases {
            let err = read(&mut ws(input, 64)).expect_err(want);
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        assert!(matches!(read(&mut ws(vec![0x81], 64)), Err(Error::Eof)));
    }

    #[test]
    fn early_bytes_are_read_first_and_retries_are_told_apart() {
        let mut ws = WebSocket::new(
            Trickle {
                input: Vec::new(),
                pos: 0,
                step: 1,
                blocked: false,
                written: Vec::new(),
            },
            server_frame(true, OP_TEXT, b"early"),
        );
        assert_eq!(ws.read().ok(), Some(Message::Text("early".into())));
        let e = ws.read().expect_err("would block");
        assert!(e.is_would_block() && e.is_retry());
        assert!(Error::Io(io::ErrorKind::TimedOut.into()).is_retry());
        assert!(!Error::Eof.is_retry());
    }
}
