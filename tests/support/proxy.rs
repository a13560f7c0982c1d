//! An HTTP CONNECT proxy double on `127.0.0.1:0`, for the proxy rule (`ALIYUN_ASSIST_PROXY`):
//! it records every tunnel it is asked for, with the first line the client sends through it,
//! and resolves names itself from a fixed map (`server.test` → a loopback port), so a test can
//! tell that the agent handed a name to the proxy instead of resolving it. Anything it cannot
//! map is refused with 502 (and still recorded).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

/// One tunnel the proxy was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    /// The CONNECT target as sent: `server.test:8080`.
    pub target: String,
    /// The first line the client sent through the tunnel (`GET /luban/notify_server HTTP/1.1`),
    /// or empty when it sent none before closing (or the tunnel was refused).
    pub first_line: String,
}

#[derive(Default)]
struct Log {
    asked: Vec<Asked>,
}

#[derive(Clone)]
pub struct Proxy {
    port: u16,
    log: Arc<(Mutex<Log>, Condvar)>,
}

impl Proxy {
    /// Starts the double; `names` maps a host name to the loopback port it stands for.
    pub fn start(names: &[(&str, u16)]) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy double");
        let port = listener.local_addr().expect("proxy addr").port();
        let names: Arc<HashMap<String, u16>> =
            Arc::new(names.iter().map(|(n, p)| (n.to_string(), *p)).collect());
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let shared = log.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (names, log) = (names.clone(), shared.clone());
                thread::spawn(move || serve(conn, &names, &log));
            }
        });
        Proxy { port, log }
    }

    /// `http://127.0.0.1:<port>`, for `ALIYUN_ASSIST_PROXY`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every tunnel asked for so far (those whose first line is known).
    pub fn asked(&self) -> Vec<Asked> {
        self.log.0.lock().expect("proxy log").asked.clone()
    }

    /// Waits until some tunnel matches `pred`.
    pub fn wait_for(&self, deadline: Instant, pred: impl Fn(&Asked) -> bool) -> Option<Asked> {
        let (lock, changed) = &*self.log;
        let mut log = lock.lock().expect("proxy log");
        loop {
            if let Some(a) = log.asked.iter().find(|a| pred(a)) {
                return Some(a.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            log = changed.wait_timeout(log, left).expect("proxy log").0;
        }
    }

    fn record(log: &(Mutex<Log>, Condvar), asked: Asked) {
        log.0.lock().expect("proxy log").asked.push(asked);
        log.1.notify_all();
    }
}

/// Reads up to and including the first `\n` (at most 8 KiB), byte by byte so nothing after
/// it is consumed.
fn read_line(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 8192 {
        if conn.read(&mut b)? == 0 {
            break;
        }
        line.push(b[0]);
    }
    Ok(line)
}

fn serve(mut client: TcpStream, names: &HashMap<String, u16>, log: &(Mutex<Log>, Condvar)) {
    let Ok(request) = read_line(&mut client) else {
        return;
    };
    // The rest of the head (Host, Proxy-Authorization).
    loop {
        match read_line(&mut client) {
            Ok(l) if l == b"\r\n" || l.is_empty() => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let request = String::from_utf8_lossy(&request).trim_end().to_string();
    let target = request
        .strip_prefix("CONNECT ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
        .to_string();
    let port = target
        .rsplit_once(':')
        .and_then(|(host, _)| names.get(host).copied());
    let upstream = port.and_then(|p| TcpStream::connect(("127.0.0.1", p)).ok());
    let Some(mut upstream) = upstream else {
        Proxy::record(
            log,
            Asked {
                target: if target.is_empty() { request } else { target },
                first_line: String::new(),
            },
        );
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let first = read_line(&mut client).unwrap_or_default();
    Proxy::record(
        log,
        Asked {
            target,
            first_line: String::from_utf8_lossy(&first).trim_end().to_string(),
        },
    );
    if upstream.write_all(&first).is_err() {
        return;
    }
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    // Both directions until either side closes; then both go, so neither thread lingers.
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Both);
        let _ = c2.shutdown(Shutdown::Both);
    });
    let _ = io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = up.join();
}
