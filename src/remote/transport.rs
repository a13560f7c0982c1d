//! The HTTP boundary to the control plane. `Http` is what the rest of the agent calls; the ureq
//! implementation (timeouts, TLS roots, proxy, identity headers, retry rule) lives here and is
//! the only place that imports `ureq`. It never decides what a request means: no endpoint,
//! query string or body format is known here.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

/// The reference's per-request timeout (spec §2.2).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The task-list request's timeout (spec §2.2).
pub const TASK_LIST_TIMEOUT: Duration = Duration::from_secs(8);

/// The most of an answer's body that is read. Every server answer is far smaller; the largest,
/// a task list, is refused above this size (`fetch::MAX_TASK_LIST_LEN`). ureq's own default
/// (`read_to_vec`, 10 MiB) is not used, so the limit is ours and stated once.
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

/// An answer from the server, whatever its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// At most `MAX_BODY_LEN + 1` bytes: a longer answer is cut there, so a caller can tell
    /// an answer that was too long (`is_cut`) without the agent buffering all of it.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Whether the body was longer than `MAX_BODY_LEN` (and so is not the whole answer).
    pub fn is_cut(&self) -> bool {
        self.body.len() > MAX_BODY_LEN
    }
}

/// A request that got no usable answer.
#[derive(Debug)]
pub enum TransportError {
    /// No answer: DNS, connect, TLS, timeout, reset. Retry.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    /// Answered with a status above 400 (400 itself counts as success, spec §11.1). Retry.
    Status(u16),
    /// No server is configured.
    NoServer,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Unreachable(_) => f.write_str("server unreachable"),
            TransportError::Status(code) => write!(f, "server answered HTTP {code}"),
            TransportError::NoServer => f.write_str("no server configured"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Unreachable(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// Requests to the control plane. `path_and_query` starts with `/` and is appended to the
/// server base URL as is (task ids are not escaped, spec §2.3). Implementations add the
/// identity headers and apply `timeout` to the whole request. One attempt per call; callers
/// that retry use `with_retries`.
pub trait Http: Send + Sync {
    fn post(
        &self,
        path_and_query: &str,
        body: &[u8],
        content_type: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError>;
    fn get(&self, path_and_query: &str, timeout: Duration) -> Result<HttpResponse, TransportError>;
}

/// Attempts of the reference's "1+3" retry rule (spec §2.2): the first try and 3 retries.
pub const RETRY_ATTEMPTS: u32 = 4;
/// Pause before each retry (spec §2.2).
pub const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// The longest connect phase of any request; the request's own timeout bounds it further.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// ureq's read and write buffers per connection (its default is 128 KiB each, zero-filled, so
/// all of it resident, and twice over on TLS, where the TCP layer under rustls has its own
/// pair): a pooled idle connection held 256 KiB, 512 KiB on HTTPS. Every server answer's head
/// is a few hundred bytes and each request's head (identity headers, query string) under
/// 2 KiB, far below this; bodies stream through the buffers in pieces of this size. 16 KiB is
/// one TLS record.
pub const IO_BUFFER_LEN: usize = 16 * 1024;

/// Extra identity headers for one request, from its method and path (hybrid identity,
/// spec §2.2). Called once per request, so values such as timestamps can be fresh.
pub type IdentityHeaders = Box<dyn Fn(&str, &str) -> Vec<(String, String)> + Send + Sync>;

/// Calls `f` up to `attempts` times while it fails, waiting `pause` before each retry. The
/// wait ends early, with the last error, when `stop` disconnects (shutdown).
pub fn with_retries<T>(
    attempts: u32,
    pause: Duration,
    stop: Option<&Receiver<()>>,
    mut f: impl FnMut() -> Result<T, TransportError>,
) -> Result<T, TransportError> {
    let mut result = f();
    for _ in 1..attempts.max(1) {
        if result.is_ok() {
            break;
        }
        let stopping = match stop {
            Some(stop) => matches!(
                stop.recv_timeout(pause),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            ),
            None => {
                std::thread::sleep(pause);
                false
            }
        };
        if stopping {
            break;
        }
        result = f();
    }
    result
}

/// The User-Agent in the reference's format `<GOOS>_<GOARCH>/<version>` (spec §2.2), with
/// assistd's own version, e.g. `linux_amd64/0.1.0`.
pub fn user_agent() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        other => other,
    };
    format!(
        "{}_{}/{}",
        std::env::consts::OS,
        arch,
        env!("CARGO_PKG_VERSION")
    )
}

/// A server given as `host[:port]` means HTTPS (spec §2.3); a full URL (`http://127.0.0.1:8080`
/// for a local dev server) is kept. The result has no trailing slash.
pub fn server_base_url(server: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    }
}

/// The reference's proxy rule (Go's `httpproxy.useProxy`): `localhost` and loopback addresses
/// (127.0.0.0/8, `::1`, and IPv4-mapped loopback) are always reached directly, whatever
/// `ALIYUN_ASSIST_PROXY` or the config's `proxy` say; every other host goes through the proxy.
/// There is no `NO_PROXY`. `host` is a URL's host, with or without IPv6 brackets. HTTP
/// requests, the notify websocket and session websockets all decide with this one function.
pub fn bypasses_proxy(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// How the ureq agent is built.
#[derive(Clone, Debug, Default)]
pub struct TransportConfig {
    /// `https://host` or a full URL; see `server_base_url`.
    pub base_url: String,
    /// `X-Client-Instance-ID` (spec §2.2); `unknown` when not known.
    pub instance_id: String,
    /// PEM file of the root certificates to trust instead of the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Proxy URL for every request to a host that is not loopback (`bypasses_proxy`):
    /// `ALIYUN_ASSIST_PROXY`, or the config's `proxy`.
    pub proxy: Option<String>,
}

/// The transport could not be built from its configuration.
#[derive(Debug)]
pub enum SetupError {
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    CaPem {
        path: PathBuf,
        source: ureq::Error,
    },
    NoCertificates {
        path: PathBuf,
    },
    Proxy {
        proxy: String,
        source: ureq::Error,
    },
    /// The TLS settings of the kick channel could not be built.
    Tls(rustls::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::CaFile { path, .. } => write!(f, "cannot read CA file {}", path.display()),
            SetupError::CaPem { path, .. } => write!(f, "CA file {} is not PEM", path.display()),
            SetupError::NoCertificates { path } => {
                write!(f, "CA file {} holds no certificate", path.display())
            }
            // The proxy URL may carry a password: name it without it.
            SetupError::Proxy { .. } => f.write_str("bad proxy URL"),
            SetupError::Tls(_) => f.write_str("cannot set up TLS for the kick channel"),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::CaFile { source, .. } => Some(source),
            SetupError::CaPem { source, .. } | SetupError::Proxy { source, .. } => Some(source),
            SetupError::Tls(e) => Some(e),
            SetupError::NoCertificates { .. } => None,
        }
    }
}

/// The rustls settings of the kick channel's `wss://` connection: the same roots as the HTTP
/// client (the CA file when configured, else the bundled Mozilla roots) and the same provider
/// (`tls_policy`).
pub fn kick_tls_config(
    ca_file: Option<&Path>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_roots(path)? {
                let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
                roots.add(der).map_err(SetupError::Tls)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(super::tls_policy::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// The ureq implementation of `Http`: one `Agent` (one connection pool), cheap to clone.
#[derive(Clone)]
pub struct UreqHttp {
    /// Requests to every host but loopback: through the proxy when one is set.
    agent: ureq::Agent,
    /// Requests to `localhost` and loopback addresses (`bypasses_proxy`): never proxied. The
    /// same agent as `agent` when no proxy is set.
    direct: ureq::Agent,
    base: String,
    instance_id: String,
    identity: Option<Arc<IdentityHeaders>>,
}

impl fmt::Debug for UreqHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UreqHttp")
            .field("base", &self.base)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

fn read_roots(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, SetupError> {
    let pem = std::fs::read(path).map_err(|source| SetupError::CaFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(source) => {
                return Err(SetupError::CaPem {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(SetupError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

impl UreqHttp {
    /// Builds the agent once. Timeouts are set explicitly (ureq sets none by default); the
    /// per-request timeout of each call narrows them. The proxy is only what `cfg` says: ureq's
    /// own environment lookup (`HTTP_PROXY`...) is turned off, as in the reference.
    pub fn new(cfg: &TransportConfig) -> Result<UreqHttp, SetupError> {
        let mut tls = ureq::tls::TlsConfig::builder()
            .unversioned_rustls_crypto_provider(super::tls_policy::crypto_provider());
        if let Some(path) = &cfg.ca_file {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&read_roots(path)?));
        }
        let proxy = match &cfg.proxy {
            Some(p) => Some(ureq::Proxy::new(p).map_err(|source| SetupError::Proxy {
                proxy: p.clone(),
                source,
            })?),
            None => None,
        };
        let tls = tls.build();
        // ureq tunnels every proxied request with CONNECT (http and https targets alike) and
        // lets the proxy resolve the target's name (`resolve_target` is false for HTTP
        // proxies), so with a proxy the agent never resolves a server name itself.
        let build = |proxy: Option<ureq::Proxy>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .user_agent(user_agent())
                .proxy(proxy)
                .tls_config(tls.clone())
                .timeout_global(Some(DEFAULT_TIMEOUT))
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_recv_response(Some(DEFAULT_TIMEOUT))
                .timeout_recv_body(Some(DEFAULT_TIMEOUT))
                .max_redirects(0)
                .input_buffer_size(IO_BUFFER_LEN)
                .output_buffer_size(IO_BUFFER_LEN)
                .build()
                .into()
        };
        let direct = build(None);
        let agent = match proxy {
            Some(proxy) => build(Some(proxy)),
            None => direct.clone(),
        };
        Ok(UreqHttp {
            agent,
            direct,
            base: server_base_url(&cfg.base_url),
            instance_id: if cfg.instance_id.is_empty() {
                "unknown".to_string()
            } else {
                cfg.instance_id.clone()
            },
            identity: None,
        })
    }

    /// Installs the extra identity headers (hybrid mode). They are added to every later
    /// request to the server, after `X-Client-Instance-ID`.
    pub fn set_identity_headers(&mut self, headers: IdentityHeaders) {
        self.identity = Some(Arc::new(headers));
    }

    /// The server base URL, e.g. `https://cn-hangzhou.axt.aliyun.com`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The agent for `url`: direct for a loopback host, else the (maybe proxied) one.
    fn agent_for(&self, url: &str) -> &ureq::Agent {
        let host = url.parse::<ureq::http::Uri>().ok();
        match host.as_ref().and_then(|u| u.host()) {
            Some(host) if bypasses_proxy(host) => &self.direct,
            _ => &self.agent,
        }
    }

    /// A GET to an absolute URL outside the server (metadata, connection detect): only the
    /// User-Agent header, as in the reference.
    pub fn get_url(&self, url: &str, timeout: Duration) -> Result<HttpResponse, TransportError> {
        classify(with_timeout(self.agent_for(url).get(url), timeout).call())
    }

    /// Like `get_url`, but the caller streams the body (`get_url` buffers at most 10 MiB, too
    /// little for an agent binary). `timeout` bounds the whole request, body included; the
    /// caller caps the size. Only a 2xx answer is a body to keep: a 400 page or a redirect
    /// (redirects are not followed) is `Status`.
    pub fn get_url_reader(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<Box<dyn std::io::Read + Send>, TransportError> {
        let resp = with_timeout(self.agent_for(url).get(url), timeout)
            .call()
            .map_err(|e| TransportError::Unreachable(Box::new(e)))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(TransportError::Status(status));
        }
        Ok(Box::new(resp.into_body().into_reader()))
    }

    /// The identity headers and the per-request timeouts every server request carries.
    fn prepare<B>(
        &self,
        mut req: ureq::RequestBuilder<B>,
        method: &str,
        path_and_query: &str,
        timeout: Duration,
    ) -> ureq::RequestBuilder<B> {
        let path = path_and_query.split('?').next().unwrap_or(path_and_query);
        for (name, value) in self.headers(method, path) {
            req = req.header(name, value);
        }
        with_timeout(req, timeout)
    }

    fn headers(&self, method: &str, path: &str) -> Vec<(String, String)> {
        let mut headers = vec![("X-Client-Instance-ID".to_string(), self.instance_id.clone())];
        if let Some(identity) = &self.identity {
            headers.extend(identity(method, path));
        }
        headers
    }
}

/// Bounds a request as a whole and each of its waits by `timeout` (ureq sets none by default).
fn with_timeout<B>(req: ureq::RequestBuilder<B>, timeout: Duration) -> ureq::RequestBuilder<B> {
    req.config()
        .timeout_global(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(timeout))
        .build()
}

/// Status > 400 is a failure; 400 itself, 2xx and 3xx are answers (spec §2.2, §11.1).
fn classify(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<HttpResponse, TransportError> {
    let mut resp = result.map_err(|e| TransportError::Unreachable(Box::new(e)))?;
    let status = resp.status().as_u16();
    if status > 400 {
        return Err(TransportError::Status(status));
    }
    // One byte past the limit tells the caller the answer was longer; the rest is never read
    // (ureq then closes the connection instead of reusing it).
    let mut body = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_BODY_LEN as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| TransportError::Unreachable(Box::new(e)))?;
    Ok(HttpResponse { status, body })
}

impl Http for UreqHttp {
    fn post(
        &self,
        path_and_query: &str,
        body: &[u8],
        content_type: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError> {
        let url = format!("{}{path_and_query}", self.base);
        let req = self
            .agent_for(&url)
            .post(&url)
            .header("Content-Type", content_type);
        classify(
            self.prepare(req, "POST", path_and_query, timeout)
                .send(body),
        )
    }

    fn get(&self, path_and_query: &str, timeout: Duration) -> Result<HttpResponse, TransportError> {
        let url = format!("{}{path_and_query}", self.base);
        let req = self.agent_for(&url).get(&url);
        classify(self.prepare(req, "GET", path_and_query, timeout).call())
    }
}

impl<H: Http + ?Sized> Http for Arc<H> {
    fn post(
        &self,
        path_and_query: &str,
        body: &[u8],
        content_type: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError> {
        (**self).post(path_and_query, body, content_type, timeout)
    }
    fn get(&self, path_and_query: &str, timeout: Duration) -> Result<HttpResponse, TransportError> {
        (**self).get(path_and_query, timeout)
    }
}

/// Go's `url.QueryEscape`: unreserved bytes kept, space as `+`, everything else `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Discovers the server when none is configured (spec §2.1, ECS only): the region from the
/// metadata service, then `<region>.axt.aliyun.com` if its connection check answers `ok`.
/// Returns the base URL and the instance id (`unknown` when the metadata has none).
pub fn discover_server(
    metadata_url: &str,
    probe: &UreqHttp,
) -> Result<(String, String), TransportError> {
    let metadata = metadata_url.trim_end_matches('/');
    let region = probe.get_url(
        &format!("{metadata}/latest/meta-data/region-id"),
        DEFAULT_TIMEOUT,
    )?;
    let region = String::from_utf8_lossy(&region.body).trim().to_string();
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(TransportError::NoServer);
    }
    let base = format!("https://{region}.axt.aliyun.com");
    let detect = probe.get_url(
        &format!("{base}/luban/api/connection_detect"),
        DEFAULT_TIMEOUT,
    )?;
    if detect.body != b"ok" {
        return Err(TransportError::NoServer);
    }
    let instance_id = probe
        .get_url(
            &format!("{metadata}/latest/meta-data/instance-id"),
            DEFAULT_TIMEOUT,
        )
        .ok()
        .map(|r| String::from_utf8_lossy(&r.body).trim().to_string())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    Ok((base, instance_id))
}

/// Test doubles of the `Http` trait, shared by every module's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Http, HttpResponse, TransportError};
    use parking_lot::Mutex;
    use std::collections::VecDeque;
    use std::time::Duration;

    /// A fake `Http`: records each request and answers from a script (see `fallback`
    /// for what it answers once the script is used up).
    #[derive(Default)]
    pub(crate) struct FakeHttp {
        pub(crate) requests: Mutex<Vec<(String, String, Vec<u8>)>>,
        pub(crate) answers: Mutex<VecDeque<Result<HttpResponse, TransportError>>>,
        /// The answer once the script is used up; `None`: `Unreachable`.
        pub(crate) fallback: Option<Vec<u8>>,
    }

    impl FakeHttp {
        pub(crate) fn answering(answers: Vec<Result<HttpResponse, TransportError>>) -> FakeHttp {
            FakeHttp {
                requests: Mutex::new(Vec::new()),
                answers: Mutex::new(answers.into()),
                fallback: None,
            }
        }
        /// Answers 200 with `body` once the script is used up.
        pub(crate) fn with_fallback(mut self, body: &[u8]) -> FakeHttp {
            self.fallback = Some(body.to_vec());
            self
        }
        pub(crate) fn ok(body: &str) -> Result<HttpResponse, TransportError> {
            Ok(HttpResponse {
                status: 200,
                body: body.as_bytes().to_vec(),
            })
        }
        fn answer(&self) -> Result<HttpResponse, TransportError> {
            let next = self.answers.lock().pop_front();
            next.unwrap_or_else(|| match &self.fallback {
                Some(body) => Ok(HttpResponse {
                    status: 200,
                    body: body.clone(),
                }),
                None => Err(TransportError::Unreachable("no scripted answer".into())),
            })
        }
        pub(crate) fn paths(&self) -> Vec<String> {
            self.requests.lock().iter().map(|r| r.1.clone()).collect()
        }
    }

    impl Http for FakeHttp {
        fn post(
            &self,
            path_and_query: &str,
            body: &[u8],
            _content_type: &str,
            _timeout: Duration,
        ) -> Result<HttpResponse, TransportError> {
            self.requests
                .lock()
                .push(("POST".into(), path_and_query.into(), body.to_vec()));
            self.answer()
        }
        fn get(
            &self,
            path_and_query: &str,
            _timeout: Duration,
        ) -> Result<HttpResponse, TransportError> {
            self.requests
                .lock()
                .push(("GET".into(), path_and_query.into(), Vec::new()));
            self.answer()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one HTTP/1.1 answer of `len` bytes of `x` on a loopback port; returns its URL.
    fn serve_once(len: usize) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}/", listener.local_addr().expect("local addr"));
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut out = &stream;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = len;
            // The client stops reading past its limit and closes: write errors end the answer.
            let _ = out.write_all(head.as_bytes());
            while left > 0 {
                let n = left.min(chunk.len());
                if out.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        });
        url
    }

    #[test]
    fn bodies_are_read_up_to_the_limit_and_cut_one_byte_past_it() {
        let http = UreqHttp::new(&TransportConfig {
            base_url: "http://127.0.0.1".into(),
            instance_id: String::new(),
            ca_file: None,
            proxy: None,
        })
        .expect("transport");
        let timeout = Duration::from_secs(30);
        let small = http.get_url(&serve_once(1000), timeout).expect("answer");
        assert_eq!((small.body.len(), small.is_cut()), (1000, false));
        // Past ureq's own 10 MiB default, still whole.
        let at_limit = http
            .get_url(&serve_once(MAX_BODY_LEN), timeout)
            .expect("answer");
        assert_eq!(
            (at_limit.body.len(), at_limit.is_cut()),
            (MAX_BODY_LEN, false)
        );
        let over = http
            .get_url(&serve_once(MAX_BODY_LEN + 4096), timeout)
            .expect("answer");
        assert_eq!((over.body.len(), over.is_cut()), (MAX_BODY_LEN + 1, true));
    }

    #[test]
    fn loopback_hosts_bypass_the_proxy_and_no_other_does() {
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(bypasses_proxy(host), "{host}");
        }
        for host in [
            "server.test",
            "localhost.example",
            "my-localhost",
            "10.0.0.1",
            "100.100.100.200",
            "128.0.0.1",
            "::2",
            "[fe80::1]",
            "",
        ] {
            assert!(!bypasses_proxy(host), "{host}");
        }
    }

    /// A proxy double that records the first CONNECT it is asked for and refuses it.
    fn refusing_proxy() -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line.trim_end().to_string());
            let _ = (&stream).write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        });
        (url, rx)
    }

    #[test]
    fn https_to_a_name_goes_through_a_connect_tunnel_for_that_name() {
        let (proxy, asked) = refusing_proxy();
        let http = UreqHttp::new(&TransportConfig {
            base_url: "https://server.test".into(),
            instance_id: String::new(),
            ca_file: None,
            proxy: Some(proxy),
        })
        .expect("transport");
        // The proxy refuses, so the request fails; what matters is what it was asked.
        assert!(http.get("/x", Duration::from_secs(30)).is_err());
        assert_eq!(
            asked
                .recv_timeout(Duration::from_secs(30))
                .expect("the proxy was asked"),
            "CONNECT server.test:443 HTTP/1.1"
        );
    }

    #[test]
    fn a_loopback_url_is_fetched_directly_with_a_proxy_set() {
        let (proxy, asked) = refusing_proxy();
        let http = UreqHttp::new(&TransportConfig {
            base_url: "http://127.0.0.1".into(),
            instance_id: String::new(),
            ca_file: None,
            proxy: Some(proxy),
        })
        .expect("transport");
        let answer = http
            .get_url(&serve_once(10), Duration::from_secs(30))
            .expect("answer");
        assert_eq!(answer.body.len(), 10);
        assert!(asked.try_recv().is_err(), "the proxy was asked");
    }

    #[test]
    fn query_escape_matches_go() {
        assert_eq!(query_escape("Asia/Shanghai"), "Asia%2FShanghai");
        assert_eq!(query_escape("GMT+8:00"), "GMT%2B8%3A00");
        assert_eq!(query_escape("a b~c"), "a+b~c");
        assert_eq!(query_escape("é"), "%C3%A9");
    }

    #[test]
    fn server_host_means_https_and_urls_are_kept() {
        assert_eq!(
            server_base_url("cn-hangzhou.axt.aliyun.com"),
            "https://cn-hangzhou.axt.aliyun.com"
        );
        assert_eq!(
            server_base_url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn user_agent_has_the_reference_shape() {
        let ua = user_agent();
        let (platform, version) = ua.split_once('/').expect("a slash");
        assert!(platform.contains('_'), "{ua}");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn retries_stop_at_the_first_success_and_after_four_attempts() {
        let mut calls = 0;
        let r: Result<(), _> = with_retries(4, Duration::ZERO, None, || {
            calls += 1;
            Err(TransportError::Status(500))
        });
        assert!(matches!(r, Err(TransportError::Status(500))));
        assert_eq!(calls, 4);
        let mut calls = 0;
        let r = with_retries(4, Duration::ZERO, None, || {
            calls += 1;
            if calls < 2 {
                Err(TransportError::Status(502))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.ok(), Some(2));
    }
}
