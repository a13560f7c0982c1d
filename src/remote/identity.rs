//! Who this agent is to the server (spec §2.1–2.2): the instance id, the hybrid key files, the
//! per-request identity headers, and the `register`/`deregister` requests of hybrid instances.
//!
//! This module never logs a key, a signature or an activation code, and its `Debug` impls leave
//! them out; it never picks the server host (the caller's `Http` is already pointed at it).

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::remote::hash::md5;
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

use crate::fsutil::write_atomic;
use crate::remote::rsa_key::{wipe, RsaKey, RsaKeyError};
use crate::remote::transport::{Http, TransportError, DEFAULT_TIMEOUT};
use crate::runner::params::encode_base64;

/// The ECS metadata service.
pub const DEFAULT_METADATA_BASE: &str = "http://100.100.100.200";
/// The metadata request's overall bound (spec §2.2: `HttpGet` is 5 s).
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// The reference's key size for hybrid registration.
pub const HYBRID_KEY_BITS: usize = 2048;

/// The hybrid directory (`<root>/hybrid/`) and its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HybridDir {
    pub root: PathBuf,
}

impl HybridDir {
    pub fn new(root: impl Into<PathBuf>) -> HybridDir {
        HybridDir { root: root.into() }
    }
    pub fn instance_id(&self) -> PathBuf {
        self.root.join("instance-id")
    }
    pub fn region_id(&self) -> PathBuf {
        self.root.join("region-id")
    }
    pub fn private_key(&self) -> PathBuf {
        self.root.join("pri-key")
    }
    pub fn public_key(&self) -> PathBuf {
        self.root.join("pub-key")
    }
    pub fn machine_id(&self) -> PathBuf {
        self.root.join("machine-id")
    }
    pub fn network_mode(&self) -> PathBuf {
        self.root.join("network-mode")
    }
    /// A machine is hybrid iff `instance-id` exists (spec §2.1).
    pub fn is_hybrid(&self) -> bool {
        self.instance_id().exists()
    }
}

/// Why an identity step failed.
#[derive(Debug)]
pub enum IdentityError {
    /// A hybrid file could not be read or written.
    File { path: PathBuf, source: io::Error },
    /// `pri-key` is not a PKCS#1 RSA private key.
    PrivateKey(PathBuf),
    /// Key generation failed.
    KeyGen(RsaKeyError),
    /// `register` on a machine that is already registered.
    AlreadyRegistered,
    /// The request got no answer.
    Transport(TransportError),
    /// The server answered, but not with `code: 200`.
    Refused {
        code: i64,
        err_code: String,
        err_msg: String,
    },
    /// The answer is not the expected JSON.
    BadAnswer,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::File { path, .. } => write!(f, "{}", path.display()),
            IdentityError::PrivateKey(p) => {
                write!(f, "{} is not a PKCS#1 RSA private key", p.display())
            }
            IdentityError::KeyGen(_) => f.write_str("generating the RSA key pair failed"),
            IdentityError::AlreadyRegistered => {
                f.write_str("agent is already registered, deregister first")
            }
            IdentityError::Transport(_) => f.write_str("request failed"),
            IdentityError::Refused {
                code,
                err_code,
                err_msg,
            } => write!(f, "server refused with code {code} {err_code} {err_msg}"),
            IdentityError::BadAnswer => f.write_str("server answer is not the expected JSON"),
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::File { source, .. } => Some(source),
            IdentityError::KeyGen(e) => Some(e),
            IdentityError::Transport(e) => Some(e),
            _ => None,
        }
    }
}

fn file_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a one-line file; `None` if it is missing or blank.
fn read_trimmed(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

// ---------------------------------------------------------------------------------------------
// Instance id

/// The instance id, first found of: the configured value, the metadata service
/// (`GET <metadata_base>/latest/meta-data/instance-id`, 5 s), the hybrid `instance-id` file.
/// `None` is the reference's `"unknown"`.
pub fn resolve_instance_id(
    configured: Option<&str>,
    metadata_base: &str,
    hybrid: &HybridDir,
) -> Option<String> {
    if let Some(id) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        return Some(id.to_string());
    }
    let url = format!(
        "{}/latest/meta-data/instance-id",
        metadata_base.trim_end_matches('/')
    );
    match http_get_plain(&url, METADATA_TIMEOUT) {
        Ok(body) => {
            let id = String::from_utf8_lossy(&body).trim().to_string();
            if !id.is_empty() && id != "unknown" {
                return Some(id);
            }
        }
        Err(e) => log::debug!("phase=identity metadata instance-id: {e}"),
    }
    read_trimmed(&hybrid.instance_id())
}

/// A minimal `GET` over plain HTTP, for the link-local metadata service only: the whole
/// exchange is bounded by `timeout`, the answer must be `200`, and the body is capped at
/// 64 KiB.
pub fn http_get_plain(url: &str, timeout: Duration) -> io::Result<Vec<u8>> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let deadline = Instant::now() + timeout;
    let addr = host_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("host has no address"))?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)?;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "metadata request timed out"))
    };
    tcp.set_write_timeout(Some(remaining()?))?;
    // One write: a request split over several segments could be cut by a server that reads
    // once and closes.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())?;
    const CAP: usize = 64 * 1024;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        tcp.set_read_timeout(Some(remaining()?))?;
        // A read with a timeout is never restarted after a signal: EINTR is a retry.
        let n = match tcp.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > CAP {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer too large",
            ));
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status"))?;
    if status != 200 {
        return Err(io::Error::other(format!("metadata answered HTTP {status}")));
    }
    Ok(buf[split + 4..].to_vec())
}

// ---------------------------------------------------------------------------------------------
// Identity headers

/// The loaded hybrid identity: instance id, machine id and the private key.
#[derive(Clone)]
pub struct HybridIdentity {
    instance_id: String,
    machine_id: String,
    key: RsaKey,
}

impl fmt::Debug for HybridIdentity {
    // The key stays out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridIdentity")
            .field("instance_id", &self.instance_id)
            .field("machine_id", &self.machine_id)
            .finish_non_exhaustive()
    }
}

impl HybridIdentity {
    /// Loads `instance-id`, `machine-id` (empty if missing: the spec does not say what the
    /// reference signs then) and `pri-key` (PKCS#1 PEM). `Ok(None)` on a non-hybrid machine.
    pub fn load(dir: &HybridDir) -> Result<Option<HybridIdentity>, IdentityError> {
        let Some(instance_id) = read_trimmed(&dir.instance_id()) else {
            return Ok(None);
        };
        let machine_id = read_trimmed(&dir.machine_id()).unwrap_or_default();
        let key_path = dir.private_key();
        let pem = fs::read_to_string(&key_path).map_err(file_err(&key_path))?;
        let key = RsaKey::from_pkcs1_pem(&pem)
            .map_err(|_| IdentityError::PrivateKey(key_path.clone()))?;
        Ok(Some(HybridIdentity {
            instance_id,
            machine_id,
            key,
        }))
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The four `x-acs-*` headers for one request (spec §2.2), with the given clock and
    /// request id: `x-acs-signature = base64(RSA-PKCS1v15-sign(MD5(instance_id + machine_id +
    /// timestamp + request_id)))`.
    pub fn headers_at(&self, timestamp_ms: u128, request_id: &str) -> Vec<(String, String)> {
        let ts = timestamp_ms.to_string();
        let digest =
            md5(format!("{}{}{ts}{request_id}", self.instance_id, self.machine_id).as_bytes());
        let mut headers = vec![
            ("x-acs-instance-id".to_string(), self.instance_id.clone()),
            ("x-acs-timestamp".to_string(), ts),
            ("x-acs-request-id".to_string(), request_id.to_string()),
        ];
        match self.key.sign_md5(&digest) {
            Ok(sig) => headers.push(("x-acs-signature".to_string(), encode_base64(&sig))),
            Err(e) => log::warn!("phase=identity signing the request headers failed: {e}"),
        }
        headers
    }
}

/// Who the agent is when it talks to the server.
#[derive(Clone, Debug)]
pub enum Identity {
    /// An ECS instance: `X-Client-Instance-ID` (`unknown` when the id is).
    Ecs { instance_id: Option<String> },
    /// A hybrid (managed, non-ECS) instance: signed `x-acs-*` headers on every request.
    Hybrid(Box<HybridIdentity>),
}

impl Identity {
    /// Hybrid if the hybrid directory says so, else ECS with the resolved instance id.
    pub fn load(dir: &HybridDir, instance_id: Option<String>) -> Result<Identity, IdentityError> {
        Ok(match HybridIdentity::load(dir)? {
            Some(h) => Identity::Hybrid(Box::new(h)),
            None => Identity::Ecs { instance_id },
        })
    }

    /// The headers for one request, generated fresh each time.
    pub fn headers(&self) -> Vec<(String, String)> {
        match self {
            Identity::Ecs { instance_id } => vec![(
                "X-Client-Instance-ID".to_string(),
                instance_id.clone().unwrap_or_else(|| "unknown".to_string()),
            )],
            Identity::Hybrid(h) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                h.headers_at(now, &uuid_v4())
            }
        }
    }
}

/// The header hook for the transport and the kick listener: called with the method and the
/// path of each request (both unused: the reference signs neither). `X-Client-IP` is not sent:
/// the spec gives it only "when known" and the server does not need it to authenticate.
pub fn identity_headers(identity: Identity) -> impl Fn(&str, &str) -> Vec<(String, String)> {
    move |_method: &str, _path: &str| identity.headers()
}

/// A random (version 4) UUID from the OS RNG.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---------------------------------------------------------------------------------------------
// Register / deregister

/// What `assistd register` sends (the reference's `RegisterInfo`).
#[derive(Clone, Default)]
pub struct RegisterRequest {
    pub activation_code: String,
    pub activation_id: String,
    pub region_id: String,
    pub instance_name: String,
    pub machine_id: String,
    pub hostname: String,
    pub intranet_ip: String,
    pub os_version: String,
    pub agent_version: String,
    /// `vpc` or empty; stored in `network-mode`.
    pub network_mode: String,
}

impl fmt::Debug for RegisterRequest {
    // The activation code is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("activation_id", &self.activation_id)
            .field("region_id", &self.region_id)
            .field("instance_name", &self.instance_name)
            .field("machine_id", &self.machine_id)
            .field("hostname", &self.hostname)
            .field("network_mode", &self.network_mode)
            .finish_non_exhaustive()
    }
}

/// The register path; the caller's `Http` must point at the region's hybrid host
/// (`https://<region>.axt.aliyun.com` or the VPC variant).
pub const REGISTER_PATH: &str = "/luban/api/instance/register";
pub const DEREGISTER_PATH: &str = "/luban/api/instance/deregister";

/// Registers this machine: makes an RSA key pair, sends the public key with the activation
/// code, and on `code: 200` stores the hybrid files (0600, atomically; `instance-id` last, as
/// its presence is what makes the machine hybrid). Returns the new instance id.
pub fn register(
    http: &dyn Http,
    req: &RegisterRequest,
    dir: &HybridDir,
) -> Result<String, IdentityError> {
    register_with_bits(http, req, dir, HYBRID_KEY_BITS)
}

fn register_with_bits(
    http: &dyn Http,
    req: &RegisterRequest,
    dir: &HybridDir,
    bits: usize,
) -> Result<String, IdentityError> {
    if dir.is_hybrid() {
        return Err(IdentityError::AlreadyRegistered);
    }
    let key = RsaKey::generate_any_size(bits).map_err(IdentityError::KeyGen)?;
    let mut private_pem = key.to_pkcs1_pem().into_bytes();
    let public_pem = key.public_key_pem();
    let body = json!({
        "activationCode": req.activation_code,
        "machineId": req.machine_id,
        "regionId": req.region_id,
        "instanceName": req.instance_name,
        "hostname": req.hostname,
        "intranetIp": req.intranet_ip,
        "osVersion": req.os_version,
        "osType": "linux",
        "agentVersion": req.agent_version,
        "publicKey": encode_base64(public_pem.as_bytes()),
        "activationId": req.activation_id,
    })
    .to_string();
    log::info!(
        "phase=register region={} activation_id={}",
        req.region_id,
        req.activation_id
    );
    let resp = http
        .post(REGISTER_PATH, body.as_bytes(), "", DEFAULT_TIMEOUT)
        .map_err(IdentityError::Transport)?;
    let answer: Value = serde_json::from_slice(&resp.body).map_err(|_| IdentityError::BadAnswer)?;
    let code = answer.get("code").and_then(Value::as_i64).unwrap_or(0);
    let text = |k: &str| {
        answer
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if code != 200 {
        return Err(IdentityError::Refused {
            code,
            err_code: text("errCode"),
            err_msg: text("errMsg"),
        });
    }
    let instance_id = text("instanceId");
    if instance_id.is_empty() {
        return Err(IdentityError::BadAnswer);
    }
    // 0700 whatever the umask: the keys and the instance id in it decide who this host is.
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir.root)
        .map_err(file_err(&dir.root))?;
    fs::set_permissions(
        &dir.root,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(file_err(&dir.root))?;
    let files: [(PathBuf, &[u8]); 6] = [
        (dir.network_mode(), req.network_mode.as_bytes()),
        (dir.public_key(), public_pem.as_bytes()),
        (dir.private_key(), &private_pem),
        (dir.region_id(), req.region_id.as_bytes()),
        (dir.machine_id(), req.machine_id.as_bytes()),
        (dir.instance_id(), instance_id.as_bytes()),
    ];
    let written = files
        .into_iter()
        .try_for_each(|(path, bytes)| write_atomic(&path, bytes, 0o600).map_err(file_err(&path)));
    wipe(&mut private_pem);
    written?;
    log::info!("phase=register registered as instance {instance_id}");
    Ok(instance_id)
}

/// Deregisters this machine (the request carries the hybrid headers through the caller's
/// `Http`); on `code: 200` removes the key, id and region files, as the reference does
/// (`network-mode` stays).
pub fn deregister(http: &dyn Http, dir: &HybridDir) -> Result<(), IdentityError> {
    let resp = http
        .post(DEREGISTER_PATH, b"", "", DEFAULT_TIMEOUT)
        .map_err(IdentityError::Transport)?;
    let answer: Value = serde_json::from_slice(&resp.body).map_err(|_| IdentityError::BadAnswer)?;
    let code = answer.get("code").and_then(Value::as_i64).unwrap_or(0);
    if code != 200 {
        return Err(IdentityError::Refused {
            code,
            err_code: String::new(),
            err_msg: String::new(),
        });
    }
    // instance-id first: once it is gone the machine is no longer hybrid.
    for path in [
        dir.instance_id(),
        dir.private_key(),
        dir.public_key(),
        dir.region_id(),
        dir.machine_id(),
    ] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IdentityError::File { path, source: e }),
        }
    }
    log::info!("phase=deregister done");
    Ok(())
}

/// The machine id to register with: `/etc/machine-id`, else a random one.
pub fn default_machine_id() -> String {
    read_trimmed(Path::new("/etc/machine-id")).unwrap_or_else(|| uuid_v4().replace('-', ""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;
    use crate::remote::transport::testing::FakeHttp;
    use crate::runner::params::decode_base64;
    use ::md5::{Digest, Md5};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::{Pkcs1v15Sign, RsaPublicKey};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::thread;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
    }

    /// Serves one HTTP answer on 127.0.0.1 and returns the base URL.
    fn one_shot(answer: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", l.local_addr().expect("addr"));
        thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                // Read the whole request before answering, so closing never resets it.
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer.as_bytes());
            }
        });
        base
    }

    fn request() -> RegisterRequest {
        RegisterRequest {
            activation_code: "SECRET-CODE".into(),
            activation_id: "act-1".into(),
            region_id: "cn-test".into(),
            machine_id: "m-1".into(),
            hostname: "h".into(),
            network_mode: "vpc".into(),
            ..RegisterRequest::default()
        }
    }

    #[test]
    fn instance_id_order() {
        let dir = TempDir::new("id-order");
        let hybrid = HybridDir::new(dir.path());
        assert_eq!(
            resolve_instance_id(Some("i-conf"), "http://127.0.0.1:1", &hybrid).as_deref(),
            Some("i-conf")
        );
        let base = one_shot("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ni-meta\n");
        assert_eq!(
            resolve_instance_id(None, &base, &hybrid).as_deref(),
            Some("i-meta")
        );
        // Metadata refuses: the hybrid file, then nothing.
        let base = one_shot("HTTP/1.1 404 Not Found\r\n\r\n");
        assert_eq!(resolve_instance_id(Some(" "), &base, &hybrid), None);
        fs::write(hybrid.instance_id(), "i-hybrid\n").expect("write");
        assert_eq!(
            resolve_instance_id(None, "http://127.0.0.1:1", &hybrid).as_deref(),
            Some("i-hybrid")
        );
    }

    #[test]
    fn plain_get_rejects_https_and_garbage() {
        assert!(http_get_plain("https://x/", METADATA_TIMEOUT).is_err());
        let base = one_shot("garbage");
        assert!(http_get_plain(&base, METADATA_TIMEOUT).is_err());
    }

    #[test]
    fn ecs_header() {
        let h = identity_headers(Identity::Ecs {
            instance_id: Some("i-1".into()),
        });
        assert_eq!(
            h("POST", "/x"),
            [("X-Client-Instance-ID".to_string(), "i-1".to_string())]
        );
        let h = identity_headers(Identity::Ecs { instance_id: None });
        assert_eq!(h("GET", "/x")[0].1, "unknown");
    }

    #[test]
    fn register_stores_keys_and_headers_verify() {
        let dir = TempDir::new("id-register");
        let hybrid = HybridDir::new(dir.path().join("hybrid"));
        assert!(HybridIdentity::load(&hybrid).expect("load").is_none());
        let http = FakeHttp::answering(vec![FakeHttp::ok(r#"{"code":200,"instanceId":"mi-1"}"#)]);
        let id = register_with_bits(&http, &request(), &hybrid, 512).expect("register");
        assert_eq!(id, "mi-1");
        let reqs = http.requests.lock().clone();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].1, REGISTER_PATH);
        let body: Value = serde_json::from_slice(&reqs[0].2).expect("json body");
        assert_eq!(body["activationCode"], "SECRET-CODE");
        assert_eq!(body["activationId"], "act-1");
        assert_eq!(body["osType"], "linux");
        let pub_pem = String::from_utf8(
            decode_base64(body["publicKey"].as_str().expect("key").as_bytes()).expect("b64"),
        )
        .expect("utf8");
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        for p in [
            hybrid.instance_id(),
            hybrid.private_key(),
            hybrid.public_key(),
            hybrid.region_id(),
            hybrid.machine_id(),
            hybrid.network_mode(),
        ] {
            assert_eq!(mode_of(&p), 0o600, "{}", p.display());
        }
        assert_eq!(
            fs::read_to_string(hybrid.public_key()).expect("pub"),
            pub_pem
        );

        // The headers of a request, checked with the stored public key.
        let identity = HybridIdentity::load(&hybrid)
            .expect("load")
            .expect("hybrid");
        assert!(!format!("{identity:?}").contains("PRIVATE"));
        let headers = identity.headers_at(1_700_000_000_000, "req-1");
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .expect(k)
        };
        assert_eq!(get("x-acs-instance-id"), "mi-1");
        assert_eq!(get("x-acs-timestamp"), "1700000000000");
        assert_eq!(get("x-acs-request-id"), "req-1");
        let sig = decode_base64(get("x-acs-signature").as_bytes()).expect("b64");
        let pk = RsaPublicKey::from_public_key_pem(&pub_pem).expect("pub key");
        let digest = Md5::digest(b"mi-1m-11700000000000req-1");
        pk.verify(Pkcs1v15Sign::new::<Md5>(), &digest, &sig)
            .expect("signature verifies");
        // Fresh headers per request.
        let h = identity_headers(Identity::Hybrid(Box::new(identity)));
        let a = h("POST", "/a");
        let b = h("POST", "/a");
        assert_eq!(a.len(), 4);
        assert_ne!(a[2], b[2], "new request id per request");

        // A second register is refused without a request.
        assert!(matches!(
            register_with_bits(&http, &request(), &hybrid, 512),
            Err(IdentityError::AlreadyRegistered)
        ));
        assert_eq!(http.requests.lock().len(), 1);
    }

    #[test]
    fn register_refused_writes_nothing() {
        let dir = TempDir::new("id-refused");
        let hybrid = HybridDir::new(dir.path().join("hybrid"));
        let http = FakeHttp::answering(vec![
            FakeHttp::ok(r#"{"code":400,"errCode":"InvalidActivation","errMsg":"bad"}"#),
            FakeHttp::ok("oops"),
        ]);
        match register_with_bits(&http, &request(), &hybrid, 512) {
            Err(IdentityError::Refused { code, err_code, .. }) => {
                assert_eq!((code, err_code.as_str()), (400, "InvalidActivation"))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(
            register_with_bits(&http, &request(), &hybrid, 512),
            Err(IdentityError::BadAnswer)
        ));
        assert!(!hybrid.root.exists());
    }

    #[test]
    fn deregister_removes_files() {
        let dir = TempDir::new("id-deregister");
        let hybrid = HybridDir::new(dir.path());
        for p in [
            hybrid.instance_id(),
            hybrid.private_key(),
            hybrid.network_mode(),
        ] {
            fs::write(p, "x").expect("write");
        }
        let http = FakeHttp::answering(vec![
            FakeHttp::ok(r#"{"code":500}"#),
            FakeHttp::ok(r#"{"code":200}"#),
        ]);
        assert!(deregister(&http, &hybrid).is_err());
        assert!(hybrid.is_hybrid(), "refusal keeps the files");
        deregister(&http, &hybrid).expect("deregister");
        assert!(!hybrid.is_hybrid());
        assert!(!hybrid.private_key().exists());
        assert!(hybrid.network_mode().exists());
        assert_eq!(http.paths(), [DEREGISTER_PATH, DEREGISTER_PATH]);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let text = format!("{:?}", request());
        assert!(!text.contains("SECRET-CODE"), "{text}");
        assert!(text.contains("act-1"));
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_v4());
        assert!(!default_machine_id().is_empty());
    }

    #[test]
    fn bad_private_key_is_an_error() {
        let dir = TempDir::new("id-badkey");
        let hybrid = HybridDir::new(dir.path());
        fs::write(hybrid.instance_id(), "mi-1").expect("write");
        assert!(matches!(
            HybridIdentity::load(&hybrid),
            Err(IdentityError::File { .. })
        ));
        fs::write(hybrid.private_key(), "not a key").expect("write");
        assert!(matches!(
            HybridIdentity::load(&hybrid),
            Err(IdentityError::PrivateKey(_))
        ));
    }
}
