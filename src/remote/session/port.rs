//! A port-forwarding session's target side (spec §5): the TCP connection to `targetHost:
//! portNumber`, its output pump, the re-dial after the target closes, and the close on stop.
//! It never touches the websocket: data goes to the session thread as `Pumped` chunks.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::channel::{Outputs, Plugin, Pumped};
use super::frame::WindowSize;
use super::Code;
use crate::model::SessionTaskInfo;

/// Bound on each dial of the target (the reference uses the OS's connect timeout; newer
/// versions 10 s).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A forwarded connection.
pub struct Port {
    host: String,
    port: u16,
    /// `None` after the target closed, until the next inbound frame re-dials (spec §5.4).
    conn: Option<TcpStream>,
    pump: Option<JoinHandle<()>>,
    outputs: Outputs,
    id: String,
}

impl Port {
    /// Dials the target (spec §5.2) and starts the pump.
    pub fn open(info: &SessionTaskInfo, outputs: Outputs) -> Result<Port, Code> {
        let host = if info.target_host.is_empty() {
            "localhost".to_string()
        } else {
            info.target_host.clone()
        };
        // A port that is not a number is 0, as the reference's Atoi; the dial then fails.
        let port = info.port_number.trim().parse::<u16>().unwrap_or(0);
        let mut p = Port {
            host,
            port,
            conn: None,
            pump: None,
            outputs,
            id: info.session_id.clone(),
        };
        p.connect().map_err(|e| {
            log::warn!(
                "task={} invoke_version=0 phase=session cannot connect to {}:{}: {e}",
                p.id,
                p.host,
                p.port
            );
            Code::OpenPortFailed
        })?;
        log::info!(
            "task={} invoke_version=0 phase=session forwarding to {}:{}",
            p.id,
            p.host,
            p.port
        );
        Ok(p)
    }

    fn connect(&mut self) -> io::Result<()> {
        if let Some(old) = self.pump.take() {
            // It has sent `Ended`: the join returns at once.
            let _ = old.join();
        }
        // Host and port are joined by the resolver, so an IPv6 literal works (the reference
        // concatenates them and fails).
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "host has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, DIAL_TIMEOUT) {
                Ok(conn) => {
                    let reader = conn.try_clone()?;
                    let out = self.outputs.clone();
                    self.pump = Some(
                        thread::Builder::new()
                            .name("port-pump".to_string())
                            .spawn(move || pump(reader, out))?,
                    );
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Plugin for Port {
    fn input(&mut self, data: &[u8]) {
        if let Some(conn) = &mut self.conn {
            if let Err(e) = conn.write_all(data) {
                log::debug!(
                    "task={} phase=session write to the target failed: {e}",
                    self.id
                );
            }
        }
    }

    fn resize(&mut self, _: WindowSize) {}

    fn before_frame(&mut self) -> Result<(), Code> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.connect().map_err(|e| {
            log::warn!(
                "task={} invoke_version=0 phase=session cannot reconnect to {}:{}: {e}",
                self.id,
                self.host,
                self.port
            );
            Code::ReadPortFailed
        })
    }

    fn output_ended(&mut self) -> Option<Code> {
        // The target closed: the next inbound frame dials again (spec §5.4).
        if let Some(conn) = self.conn.take() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        log::info!(
            "task={} invoke_version=0 phase=session the target closed",
            self.id
        );
        None
    }

    fn frame_error(&self) -> Code {
        Code::IoPortFailed
    }

    fn finish(&mut self) {
        // Shutting the connection down ends the pump's read; the reference instead waits for
        // the target to fail (or 3 h) before it reports a stop (spec §5.5).
        if let Some(conn) = self.conn.take() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Reads the target until it closes (spec §5.3), pausing after each chunk.
fn pump(mut conn: TcpStream, out: Outputs) {
    let mut buf = vec![0u8; out.pace.chunk()];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !out.send(Pumped::Data(buf[..n].to_vec())) {
                    return;
                }
                // At most 1 s; a stop shuts the socket down, which the next read sees.
                let pause = out.pace.interval();
                if !pause.is_zero() {
                    thread::sleep(pause);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    out.send(Pumped::Ended);
}
