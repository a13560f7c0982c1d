//! The client side of a websocket to the server, shared by the kick listener and sessions:
//! the `ws(s)://` target, the TCP connection (direct, or through an HTTP CONNECT proxy), TLS,
//! and the opening handshake with the identity headers. Once the server has switched, the
//! frames are `ws_conn`'s.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::RngCore;

use crate::remote::transport::bypasses_proxy;
use crate::remote::ws_conn::WebSocket;

/// Extra headers for a request, given its method and path (the identity headers, spec §2.2).
pub type HeaderHook = Arc<dyn Fn(&str, &str) -> Vec<(String, String)> + Send + Sync>;

/// A parsed `ws://` or `wss://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// A URL that is not `ws(s)://host[:port]/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadUrl(pub String);

impl fmt::Display for BadUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot use {:?} as a websocket URL", self.0)
    }
}

impl std::error::Error for BadUrl {}

impl Target {
    pub fn parse(url: &str) -> Result<Target, BadUrl> {
        let bad = || BadUrl(url.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// The websocket URL of `path` on a server base URL: `https://h` → `wss://h{path}`,
/// `http://h:p` → `ws://h:p{path}`; a bare host is taken as https.
pub fn server_ws_url(server: &str, path: &str) -> Result<String, BadUrl> {
    let bad = || BadUrl(server.to_string());
    let (scheme, host) = if let Some(h) = server.strip_prefix("https://") {
        ("wss", h)
    } else if let Some(h) = server.strip_prefix("http://") {
        ("ws", h)
    } else if let Some(h) = server.strip_prefix("wss://") {
        ("wss", h)
    } else if let Some(h) = server.strip_prefix("ws://") {
        ("ws", h)
    } else if !server.contains("://") {
        ("wss", server)
    } else {
        return Err(bad());
    };
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok(format!("{scheme}://{host}{path}"))
}

/// The byte stream under the websocket: plain TCP or rustls over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath, for timeouts, non-blocking mode, `poll` and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// How to reach one websocket.
pub struct Dial<'a> {
    pub target: &'a Target,
    /// Headers added to the upgrade request.
    pub headers: Option<&'a HeaderHook>,
    /// Required for `wss://`.
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
    /// `http://[user:password@]host:port` of an HTTP CONNECT proxy, or direct when `None`.
    /// A loopback target is reached directly even with a proxy (`transport::bypasses_proxy`);
    /// any other is tunnelled with CONNECT, `ws://` and `wss://` alike, and its name is
    /// resolved by the proxy, never here.
    pub proxy: Option<&'a str>,
    /// Bound on each connect, the proxy's answer, the TLS handshake and the upgrade.
    pub timeout: Duration,
}

/// Why a websocket could not be opened.
#[derive(Debug)]
pub enum DialError {
    Io(io::Error),
    /// The proxy URL is not `http://host:port`, or the proxy refused the tunnel.
    Proxy(String),
    Tls(rustls::Error),
    /// `wss://` without a TLS config, or a host that is not a TLS server name.
    TlsName(String),
    /// The server did not switch to websocket (the reason says what it answered).
    Upgrade(String),
    /// The handshake did not finish within the timeout.
    TimedOut,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Io(_) => f.write_str("connection failed"),
            // The proxy URL may carry a password: it is never named.
            DialError::Proxy(why) => write!(f, "proxy tunnel failed: {why}"),
            DialError::Tls(_) => f.write_str("TLS setup failed"),
            DialError::TlsName(host) => write!(f, "cannot use TLS with {host:?}"),
            DialError::Upgrade(why) => write!(f, "websocket upgrade failed: {why}"),
            DialError::TimedOut => f.write_str("websocket upgrade timed out"),
        }
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DialError::Io(e) => Some(e),
            DialError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

/// Connects, tunnels, starts TLS and upgrades. `on_tcp` sees the TCP socket as soon as it is
/// connected (the kick listener keeps a clone to shut it down); its error ends the dial. The
/// socket is left with `timeout` as read and write timeout; callers set their own.
pub fn dial(
    d: &Dial<'_>,
    on_tcp: impl FnOnce(&TcpStream) -> io::Result<()>,
) -> Result<WebSocket<Stream>, DialError> {
    let t = d.target;
    let proxy = d.proxy.filter(|_| !bypasses_proxy(&t.host));
    let tcp = match proxy {
        Some(proxy) => {
            let (host, port, auth) = parse_proxy(proxy)?;
            let tcp = connect(&host, port, d.timeout)?;
            tunnel(&tcp, t, auth.as_deref())?;
            tcp
        }
        None => connect(&t.host, t.port, d.timeout)?,
    };
    on_tcp(&tcp).map_err(DialError::Io)?;
    let stream = if t.tls {
        let tls = d.tls.ok_or_else(|| DialError::TlsName(t.host.clone()))?;
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|_| DialError::TlsName(t.host.clone()))?;
        let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(DialError::Tls)?;
        Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
    } else {
        Stream::Plain(tcp)
    };
    let mut headers = Vec::new();
    if let Some(hook) = d.headers {
        let path = t.path.split('?').next().unwrap_or(&t.path);
        for (k, v) in hook("GET", path) {
            if !is_token(&k)
                || !is_field_value(&v)
                || HANDSHAKE_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h))
            {
                log::warn!("phase=websocket skipping a header that is not valid here: {k}");
                continue;
            }
            headers.push((k, v));
        }
    }
    upgrade(stream, t, &headers, d.timeout)
}

/// The headers of the upgrade itself, which a hook may not set.
const HANDSHAKE_HEADERS: [&str; 5] = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
];

/// RFC 6455 §1.3: what the server hashes with the client's key to prove it read the request.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The opening handshake (RFC 6455 §4.1) on a connected stream: the GET with our key and
/// `headers`, then the server's 101 answer checked (its `Upgrade`, `Connection` and the
/// `Sec-WebSocket-Accept` our key calls for). Bytes after the answer's head are the first of
/// the websocket's.
fn upgrade(
    mut stream: Stream,
    t: &Target,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<WebSocket<Stream>, DialError> {
    let mut nonce = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|_| DialError::Upgrade("no random key".to_string()))?;
    let key = base64(&nonce);
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let default_port = if t.tls { 443 } else { 80 };
    let mut req = format!("GET {} HTTP/1.1\r\nHost: {host}", t.path);
    if t.port != default_port {
        req.push_str(&format!(":{}", t.port));
    }
    req.push_str(&format!(
        "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    ));
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let deadline = Instant::now() + timeout;
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => DialError::TimedOut,
        _ => DialError::Io(e),
    };
    let mut sent = 0;
    while sent < req.len() {
        match stream.write(&req.as_bytes()[sent..]) {
            Ok(0) => return Err(DialError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    loop {
        match stream.flush() {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let mut answer = Vec::new();
    let head_len = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if answer.len() > 8192 {
            return Err(DialError::Upgrade("answer head over 8 KiB".to_string()));
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return Err(DialError::Upgrade("closed before answering".to_string())),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(io_err(e)),
        }
    };
    check_answer(&answer[..head_len], &key)?;
    let early = answer.split_off(head_len);
    Ok(WebSocket::new(stream, early))
}

/// The server's answer head: `101`, `Upgrade: websocket`, `Connection: upgrade` and the
/// accept value of `key`. Public for the fuzz target.
pub fn check_answer(head: &[u8], key: &str) -> Result<(), DialError> {
    let bad = |why: String| Err(DialError::Upgrade(why));
    let Ok(head) = std::str::from_utf8(head) else {
        return bad("answer head is not text".to_string());
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line.split(' ').nth(1).unwrap_or("");
    if !status_line.starts_with("HTTP/1.1 ") || status != "101" {
        let status: String = status
            .chars()
            .take(3)
            .filter(char::is_ascii_digit)
            .collect();
        return bad(format!("the server answered {status:?}, not 101"));
    }
    let (mut upgrade, mut connection, mut accept) = (false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value);
        }
    }
    if !upgrade || !connection {
        return bad("the answer does not switch to websocket".to_string());
    }
    if accept != Some(accept_value(key).as_str()) {
        return bad("the answer's Sec-WebSocket-Accept does not match our key".to_string());
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64 of SHA-1 of the key and the GUID.
fn accept_value(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(ACCEPT_GUID.as_bytes());
    base64(ctx.finish().as_ref())
}

/// An HTTP header name (RFC 9110 token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP field value: visible ASCII, spaces and tabs; nothing that could end the line.
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// A TCP connection to the first address of `host` that answers within `timeout`.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    // Name resolution has no timeout of ours: it is bounded by the system resolver's own
    // (resolv.conf `timeout` x `attempts`).
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(DialError::Io)?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(timeout)).map_err(DialError::Io)?;
                tcp.set_write_timeout(Some(timeout))
                    .map_err(DialError::Io)?;
                tcp.set_nodelay(true).map_err(DialError::Io)?;
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(DialError::Io(last))
}

/// `http://[user:password@]host[:port]` → host, port (default 80), and the Basic credentials.
fn parse_proxy(proxy: &str) -> Result<(String, u16, Option<String>), DialError> {
    let bad = || DialError::Proxy("proxy URL is not http://host:port".to_string());
    let rest = proxy.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (auth, hostport) = match authority.rsplit_once('@') {
        Some((a, h)) => (Some(a.to_string()), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (hostport, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port, auth))
}

/// Asks the proxy for a tunnel to `t` and reads its answer head (at most 8 KiB).
fn tunnel(mut tcp: &TcpStream, t: &Target, auth: Option<&str>) -> Result<(), DialError> {
    let authority = if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = auth {
        req.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64(auth.as_bytes())
        ));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).map_err(DialError::Io)?;
    // Byte by byte, so nothing after the head (the server's first TLS bytes) is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(DialError::Proxy("answer head too long".to_string()));
        }
        match tcp.read(&mut byte).map_err(DialError::Io)? {
            0 => return Err(DialError::Proxy("closed before answering".to_string())),
            _ => head.push(byte[0]),
        }
    }
    let status = head
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .unwrap_or("");
    if status != "200" {
        return Err(DialError::Proxy(format!("answered {status:?}")));
    }
    Ok(())
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn targets() {
        let t = Target::parse("ws://127.0.0.1:9/luban/notify_server").expect("parse");
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "127.0.0.1", 9));
        assert_eq!(t.path, "/luban/notify_server");
        let t = Target::parse("wss://h.example/x?channelId=c").expect("parse");
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "h.example", 443));
        assert_eq!(t.path, "/x?channelId=c");
        let t = Target::parse("ws://[::1]:7/x").expect("parse");
        assert_eq!((t.host.as_str(), t.port), ("::1", 7));
        assert!(Target::parse("http://h/x").is_err());
        assert!(Target::parse("ws://h:notaport/x").is_err());
    }

    #[test]
    fn server_urls() {
        let u = |s: &str| server_ws_url(s, "/luban/session/backend?channelId=c");
        assert_eq!(
            u("https://cn-hangzhou.axt.aliyun.com").as_deref(),
            Ok("wss://cn-hangzhou.axt.aliyun.com/luban/session/backend?channelId=c")
        );
        assert_eq!(
            u("http://127.0.0.1:8080/").as_deref(),
            Ok("ws://127.0.0.1:8080/luban/session/backend?channelId=c")
        );
        assert!(u("ftp://x").is_err());
        assert!(u("https://").is_err());
    }

    /// Dials a one-shot raw server that answers the upgrade request with `answer(key)`; gives
    /// the dial's result and the request head the server read.
    fn upgrade_against(
        answer: impl Fn(&str) -> Vec<u8> + Send + 'static,
    ) -> (Result<WebSocket<Stream>, DialError>, String, u16) {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let (mut tcp, _) = server.accept().expect("accept");
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(tcp.read(&mut b).expect("read"), 1);
                head.push(b[0]);
            }
            let head = String::from_utf8(head).expect("text");
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("a key")
                .to_string();
            // Then closed: the client has read all it sent, so this is a FIN behind the answer,
            // never a reset, and the answer stays readable.
            tcp.write_all(&answer(&key)).expect("answer");
            head
        });
        let url = format!("ws://{addr}/luban/notify_server?x=1");
        let target = Target::parse(&url).expect("parse");
        let hook: HeaderHook = Arc::new(|_, _| {
            vec![
                ("x-acs-instance-id".to_string(), "i-1".to_string()),
                ("x-evil".to_string(), "a\r\nHost: elsewhere".to_string()),
                ("Host".to_string(), "elsewhere".to_string()),
            ]
        });
        let result = dial(
            &Dial {
                target: &target,
                headers: Some(&hook),
                tls: None,
                proxy: None,
                timeout: Duration::from_secs(30),
            },
            |_| Ok(()),
        );
        (result, peer.join().expect("server"), addr.port())
    }

    fn switching(accept: &str) -> Vec<u8> {
        format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes()
    }

    #[test]
    fn the_upgrade_sends_our_headers_and_checks_the_answer() {
        // RFC 6455 §1.3's example key and accept value.
        assert_eq!(
            accept_value("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        // A frame sent right behind the answer, in the same write, is the first message.
        let (ws, head, port) = upgrade_against(|key| {
            let mut a = switching(&accept_value(key));
            a.extend_from_slice(b"\x81\x05early");
            a
        });
        let mut ws = ws.expect("upgraded");
        assert_eq!(
            ws.read().ok().and_then(|m| m.into_text()).as_deref(),
            Some("early")
        );
        assert!(
            head.starts_with(&format!(
                "GET /luban/notify_server?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            )),
            "{head}"
        );
        for line in [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "x-acs-instance-id: i-1",
        ] {
            assert!(
                head.contains(&format!("\r\n{line}\r\n")),
                "{line} in {head}"
            );
        }
        assert!(
            !head.contains("elsewhere") && !head.contains("x-evil"),
            "{head}"
        );

        let (ws, _, _) = upgrade_against(|_| switching("d3JvbmcK"));
        let err = ws
            .err()
            .expect("a wrong accept value is refused")
            .to_string();
        assert!(err.contains("does not match our key"), "{err}");
        let (ws, _, _) = upgrade_against(|_| b"HTTP/1.1 403 Forbidden\r\n\r\n".to_vec());
        let err = ws.err().expect("403 is refused").to_string();
        assert!(err.contains("answered \"403\""), "{err}");
        let (ws, _, _) = upgrade_against(|key| {
            format!(
                "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_value(key)
            )
            .into_bytes()
        });
        let err = ws.err().expect("no Upgrade header").to_string();
        assert!(err.contains("does not switch"), "{err}");
    }

    #[test]
    fn proxies() {
        assert_eq!(
            parse_proxy("http://u:p@proxy:3128").ok(),
            Some(("proxy".to_string(), 3128, Some("u:p".to_string())))
        );
        assert_eq!(
            parse_proxy("http://proxy/").ok().map(|(h, p, _)| (h, p)),
            Some(("proxy".to_string(), 80))
        );
        assert!(parse_proxy("socks5://proxy:1").is_err());
        assert_eq!(base64(b"u:p"), "dTpw");
    }

    #[test]
    fn a_loopback_target_is_dialled_directly_with_a_proxy_set() {
        let ws_server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ws_addr = ws_server.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (tcp, _) = ws_server.accept().expect("accept");
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
            let mut ws = tungstenite::accept(tcp).expect("upgrade");
            ws.send(tungstenite::Message::Text("direct".into()))
                .expect("send");
        });
        // Port 1 on loopback: nothing listens, so going through this "proxy" fails the dial.
        let url = format!("ws://{ws_addr}/x");
        let target = Target::parse(&url).expect("parse");
        let mut ws = dial(
            &Dial {
                target: &target,
                headers: None,
                tls: None,
                proxy: Some("http://127.0.0.1:1"),
                timeout: Duration::from_secs(30),
            },
            |_| Ok(()),
        )
        .expect("dial directly");
        assert_eq!(
            ws.read().expect("message").into_text().expect("text"),
            "direct"
        );
        server.join().expect("server");
    }

    #[test]
    fn a_connect_proxy_carries_the_upgrade() {
        // A one-shot proxy that checks the CONNECT line, then relays to a websocket server.
        let ws_server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ws_addr = ws_server.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (tcp, _) = ws_server.accept().expect("accept");
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
            let mut ws = tungstenite::accept(tcp).expect("upgrade");
            ws.send(tungstenite::Message::Text("hi".into()))
                .expect("send");
        });
        let proxy = TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy_addr = proxy.local_addr().expect("addr");
        let relay = std::thread::spawn(move || {
            let (mut client, _) = proxy.accept().expect("accept");
            let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(client.read(&mut b).expect("read"), 1);
                head.push(b[0]);
            }
            let head = String::from_utf8(head).expect("text");
            // The name, as given: the proxy resolves it (here: to the loopback server).
            assert!(
                head.starts_with(&format!(
                    "CONNECT server.test:{} HTTP/1.1\r\n",
                    ws_addr.port()
                )),
                "{head}"
            );
            assert!(
                head.contains("Proxy-Authorization: Basic dTpw\r\n"),
                "{head}"
            );
            client
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
                .expect("answer");
            let mut upstream = TcpStream::connect(ws_addr).expect("upstream");
            let (mut c2, mut u2) = (
                client.try_clone().expect("clone"),
                upstream.try_clone().expect("clone"),
            );
            let up = std::thread::spawn(move || {
                let _ = io::copy(&mut c2, &mut u2);
            });
            let _ = io::copy(&mut upstream, &mut client);
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = up.join();
        });
        // A loopback target would bypass the proxy: a name only the relay knows.
        let url = format!("ws://server.test:{}/x", ws_addr.port());
        let target = Target::parse(&url).expect("parse");
        let proxy_url = format!("http://u:p@{proxy_addr}");
        let mut ws = dial(
            &Dial {
                target: &target,
                headers: None,
                tls: None,
                proxy: Some(&proxy_url),
                timeout: Duration::from_secs(30),
            },
            |_| Ok(()),
        )
        .expect("dial through the proxy");
        assert_eq!(ws.read().expect("message").into_text().expect("text"), "hi");
        drop(ws);
        server.join().expect("server");
        relay.join().expect("relay");
    }
}
