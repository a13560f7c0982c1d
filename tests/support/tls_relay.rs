//! A TLS front for the control-plane double (`server.rs`), for what only HTTPS exercises:
//! `make bench`'s HTTPS figures and the TLS part of the build's function-order training.
//! It accepts TLS on a loopback port with the test certificate of `tests/fixtures/tls/`
//! (a P-256 leaf for 127.0.0.1, signed by `ca.pem`, both valid for a century) and relays the
//! plaintext of each connection to the double's plain port, websockets included. The agent
//! trusts it through its `ca_file` setting ([`CA_PEM`]).
//!
//! One thread per connection, blocking sockets, `poll(2)` on both ends: a read only happens
//! on a readable socket, so it never blocks; a write may, as with any blocking relay.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// The CA the agent must trust (its `ca_file`).
pub const CA_PEM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
const SERVER_PEM: &[u8] = include_bytes!("../fixtures/tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../fixtures/tls/server.key");

pub struct TlsRelay {
    addr: SocketAddr,
}

impl TlsRelay {
    /// Listens on a free loopback port; every connection is relayed to the double listening
    /// on `upstream_port` of 127.0.0.1.
    pub fn start(upstream_port: u16) -> io::Result<TlsRelay> {
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let config = Arc::new(server_config()?);
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        thread::Builder::new()
            .name("tls-relay".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let config = Arc::clone(&config);
                    let _ = thread::Builder::new()
                        .name("tls-relay-conn".into())
                        .spawn(move || {
                            let _ = relay(conn, upstream, config);
                        });
                }
            })?;
        Ok(TlsRelay { addr })
    }

    /// The URL the agent is given as its server.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// Writes the agent's config file (mode 600) that makes it trust the front: `ca_file` only.
pub fn write_agent_config(path: &Path) -> io::Result<()> {
    let json = serde_json::json!({ "ca_file": CA_PEM }).to_string();
    std::fs::write(path, json + "\n")?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn server_config() -> io::Result<ServerConfig> {
    let cert = CertificateDer::from_pem_slice(SERVER_PEM)
        .map_err(|e| invalid(format!("tests/fixtures/tls/server.pem: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY)
        .map_err(|e| invalid(format!("tests/fixtures/tls/server.key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(invalid)
}

/// Waits until either socket has something to read (or has hung up), or, with `want_write`
/// (rustls has records queued), until the TLS socket takes a write. Returns (TLS readable,
/// TLS writable, plain readable).
fn wait(tls: &TcpStream, plain: &TcpStream, want_write: bool) -> io::Result<(bool, bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: tls.as_raw_fd(),
            events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
            revents: 0,
        },
        libc::pollfd {
            fd: plain.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfd entries that outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let readable =
        |f: &libc::pollfd| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok((
        readable(&fds[0]),
        fds[0].revents & libc::POLLOUT != 0,
        readable(&fds[1]),
    ))
}

fn relay(mut tls: TcpStream, upstream: SocketAddr, config: Arc<ServerConfig>) -> io::Result<()> {
    let mut conn = ServerConnection::new(config).map_err(invalid)?;
    let mut plain = TcpStream::connect(upstream)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (tls_in, tls_out, plain_in) = wait(&tls, &plain, conn.wants_write())?;
        if tls_out {
            conn.write_tls(&mut tls)?;
        }
        if tls_in {
            if conn.read_tls(&mut tls)? == 0 {
                return Ok(());
            }
            conn.process_new_packets().map_err(invalid)?;
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => plain.write_all(&buf[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if plain_in {
            let n = plain.read(&mut buf)?;
            if n == 0 {
                conn.send_close_notify();
            } else {
                conn.writer().write_all(&buf[..n])?;
            }
            while conn.wants_write() {
                conn.write_tls(&mut tls)?;
            }
            if n == 0 {
                return Ok(());
            }
        }
    }
}
