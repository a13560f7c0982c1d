//! Task signature verification (spec §7): the `taskSignature` format, the certificate cache and
//! its download, and the SHA256WithRSA / SM3WithSM2 checks.
//!
//! This module never runs or reports a task and never logs a signature or a key; it only says
//! whether a run task may run.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error_chain::error_chain;
use crate::model::{RunTaskInfo, SendFileTaskInfo};
use crate::remote::der;
use crate::remote::sm2::Sm2PublicKey;
use crate::remote::transport::{Http, TransportError, DEFAULT_TIMEOUT};
use crate::runner::params::{decode_base64, Base64Error};
use crate::runner::Invalid;

/// Where certificates are downloaded from. The reference calls `util.GetSignCertService()`,
/// whose path is in no available source (spec §2.3 E16 [UNKNOWN]); this default is our guess
/// and `SignatureVerifier::with_cert_path` overrides it.
pub const DEFAULT_CERT_PATH: &str = "/luban/api/v1/task/sign_cert";
/// The `param` of the invalid report. The reference's constant `invalidSignature` has no known
/// literal value (spec §7 [UNKNOWN]); we send its name.
pub const INVALID_PARAM: &str = "invalidSignature";
/// The `value` of the invalid report for a signature that does not match (spec §7).
pub const MISMATCH_VALUE: &str = "Signature verification failed";
/// The SM2 distinguishing identifier the reference uses (`tjfoc/gmsm` default).
pub const SM2_DEFAULT_UID: &str = "1234567812345678";
/// Name of the certificate cache file in the state directory.
pub const CACHE_FILE_NAME: &str = "task_sign_certs";
/// How long a failed certificate download is remembered: tasks signed with that certificate
/// meanwhile fail at once instead of each waiting for the request's timeout on the control
/// loop.
pub const CERT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The fields a signature covers, of a run task or a send-file entry. The reference signs run
/// tasks only; a send-file entry may carry the same `taskSignature` (and `userId`) as an
/// assistd extension, its base64 `content` standing for `commandContent`.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    pub task_id: &'a str,
    pub invoke_version: i64,
    pub user_id: &'a str,
    pub content: &'a str,
    pub signature: &'a str,
}

impl<'a> From<&'a RunTaskInfo> for Signed<'a> {
    fn from(t: &'a RunTaskInfo) -> Signed<'a> {
        Signed {
            task_id: &t.task_id,
            invoke_version: t.invoke_version,
            user_id: &t.user_id,
            content: &t.content,
            signature: &t.signature,
        }
    }
}

impl<'a> From<&'a SendFileTaskInfo> for Signed<'a> {
    fn from(t: &'a SendFileTaskInfo) -> Signed<'a> {
        Signed {
            task_id: &t.task_id,
            invoke_version: 0,
            user_id: &t.user_id,
            content: &t.content,
            signature: &t.task_signature,
        }
    }
}

/// Signing algorithm named by a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256WithRsa,
    Sm3WithSm2,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "SHA256WithRSA" => Some(Algorithm::Sha256WithRsa),
            "SM3WithSM2" => Some(Algorithm::Sm3WithSm2),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256WithRsa => "SHA256WithRSA",
            Algorithm::Sm3WithSm2 => "SM3WithSM2",
        }
    }
}

/// The parts of a `taskSignature`: `"<signVer>#<keypairVer>#<base64 signature>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedSignature {
    pub signature_version: i64,
    pub keypair_version: i64,
    pub signature: Vec<u8>,
}

impl ParsedSignature {
    /// The certificate lookup key `"<s>-<k>"`.
    pub fn cert_key(&self) -> String {
        format!("{}-{}", self.signature_version, self.keypair_version)
    }
}

impl fmt::Debug for ParsedSignature {
    // The signature bytes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedSignature")
            .field("signature_version", &self.signature_version)
            .field("keypair_version", &self.keypair_version)
            .field("signature_len", &self.signature.len())
            .finish()
    }
}

/// Why a signature could not be checked, or did not match.
#[derive(Debug)]
pub enum SignatureError {
    /// The task carries no signature (servers that do not sign send `""`).
    Missing,
    /// Not three non-empty `#`-separated parts with integer versions.
    Format,
    /// The third part is not standard base64.
    Base64(Base64Error),
    /// The certificate wants the instance id and we have none.
    UnknownInstanceId,
    /// The certificate request got no answer.
    CertDownload(TransportError),
    /// The certificate answer is not a certificate.
    CertDecode(String),
    /// The server sent the certificate of other versions than asked.
    CertVersion { asked: String, got: String },
    /// The certificate names an algorithm we do not know.
    UnknownAlgorithm(String),
    /// The certificate's public key does not parse.
    PublicKey(Algorithm),
    /// The signature was checked and does not match.
    Mismatch(Algorithm),
    /// `signature_pinned_keys` is set and the certificate's key is not one of them.
    NotPinned,
    /// Strict mode wants these fields signed and the certificate does not list them.
    FieldsNotSigned(Vec<String>),
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Missing => f.write_str("task is not signed"),
            SignatureError::Format => f.write_str("unknown signature format"),
            SignatureError::Base64(_) => f.write_str("signature is not base64"),
            SignatureError::UnknownInstanceId => f.write_str("unknown instance id"),
            SignatureError::CertDownload(_) => f.write_str("certificate download failed"),
            SignatureError::CertDecode(why) => write!(f, "certificate is invalid: {why}"),
            SignatureError::CertVersion { asked, got } => {
                write!(f, "asked for certificate {asked}, server sent {got}")
            }
            SignatureError::UnknownAlgorithm(a) => write!(f, "unknown sign algorithm {a:?}"),
            SignatureError::PublicKey(a) => write!(f, "{} public key does not parse", a.name()),
            SignatureError::Mismatch(a) => write!(f, "{} signature does not match", a.name()),
            SignatureError::NotPinned => {
                f.write_str("certificate key is not one of signature_pinned_keys")
            }
            SignatureError::FieldsNotSigned(missing) => write!(
                f,
                "certificate does not sign {} (signature_required_fields)",
                missing.join(", ")
            ),
        }
    }
}

impl std::error::Error for SignatureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SignatureError::Base64(e) => Some(e),
            SignatureError::CertDownload(e) => Some(e),
            _ => None,
        }
    }
}

/// Splits a `taskSignature` (the reference's `SplitN(sig, "#", 3)` rules).
pub fn parse_signature(sig: &str) -> Result<ParsedSignature, SignatureError> {
    if sig.is_empty() {
        return Err(SignatureError::Missing);
    }
    let mut parts = sig.splitn(3, '#');
    let (Some(s), Some(k), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SignatureError::Format);
    };
    if s.is_empty() || k.is_empty() || b64.is_empty() {
        return Err(SignatureError::Format);
    }
    let signature_version = parse_go_int(s).ok_or(SignatureError::Format)?;
    let keypair_version = parse_go_int(k).ok_or(SignatureError::Format)?;
    let signature = decode_base64(b64.as_bytes()).map_err(SignatureError::Base64)?;
    Ok(ParsedSignature {
        signature_version,
        keypair_version,
        signature,
    })
}

/// `strconv.Atoi`: an optional sign and decimal digits.
fn parse_go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A certificate with its key parsed.
#[derive(Clone)]
struct Cert {
    signature_version: i64,
    keypair_version: i64,
    public_key_pem: String,
    algorithm: Algorithm,
    fields: Vec<String>,
    key: PublicKey,
    /// The DER `SubjectPublicKeyInfo` of `public_key_pem`, compared with pinned keys.
    spki_der: Vec<u8>,
}

#[derive(Clone)]
enum PublicKey {
    /// The DER `RSAPublicKey` (PKCS#1) inside the PEM's `SubjectPublicKeyInfo`, which ring
    /// verifies (the same ring rustls uses for TLS, so RSA adds no bignum code of its own).
    Rsa(Vec<u8>),
    Sm2(Box<Sm2PublicKey>),
}

impl Cert {
    /// Decodes one certificate object (spec §7 `Cert`).
    fn from_json(v: &Value) -> Result<Cert, SignatureError> {
        let bad = |what: &str| SignatureError::CertDecode(what.to_string());
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let int = |k: &str| obj.get(k).and_then(Value::as_i64).unwrap_or(0);
        let text = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
        let alg_name = text("algorithm");
        let algorithm = Algorithm::parse(alg_name)
            .ok_or_else(|| SignatureError::UnknownAlgorithm(alg_name.to_string()))?;
        let public_key_pem = text("publicKey").to_string();
        let fields = match obj.get("signatureFields") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|f| f.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("signatureFields holds a non-string"))?,
            Some(_) => return Err(bad("signatureFields is not a list")),
        };
        let key = parse_public_key(algorithm, &public_key_pem)?;
        let spki_der =
            pem_public_key_der(&public_key_pem).ok_or(SignatureError::PublicKey(algorithm))?;
        Ok(Cert {
            spki_der,
            signature_version: int("signatureVersion"),
            keypair_version: int("keypairVersion"),
            public_key_pem,
            algorithm,
            fields,
            key,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "keypairVersion": self.keypair_version,
            "signatureVersion": self.signature_version,
            "publicKey": self.public_key_pem,
            "algorithm": self.algorithm.name(),
            "signatureFields": self.fields,
        })
    }

    fn key(&self) -> String {
        format!("{}-{}", self.signature_version, self.keypair_version)
    }
}

fn parse_public_key(algorithm: Algorithm, pem: &str) -> Result<PublicKey, SignatureError> {
    match algorithm {
        Algorithm::Sha256WithRsa => rsa_public_key_from_pem(pem)
            .map(PublicKey::Rsa)
            .ok_or(SignatureError::PublicKey(algorithm)),
        Algorithm::Sm3WithSm2 => {
            let spki =
                der::pem_only(pem, "PUBLIC KEY").ok_or(SignatureError::PublicKey(algorithm))?;
            Sm2PublicKey::from_spki_der(&spki)
                .map(|k| PublicKey::Sm2(Box::new(k)))
                .ok_or(SignatureError::PublicKey(algorithm))
        }
    }
}

/// Checks `sig` over `data`. Any failure to verify is a mismatch; for SM2 that includes a
/// signature that is not DER `(r, s)` (the reference's `Verify` returns false for it too).
fn verify_with(cert: &Cert, data: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
    let ok = match &cert.key {
        PublicKey::Rsa(key) => {
            use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
                .verify(data, sig)
                .is_ok()
        }
        PublicKey::Sm2(key) => match sm2_signature_from_der(sig) {
            Some((r, s)) => key.verify(SM2_DEFAULT_UID.as_bytes(), data, &r, &s),
            None => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch(cert.algorithm))
    }
}

/// The DER `SubjectPublicKeyInfo` inside a `-----BEGIN PUBLIC KEY-----` PEM block (the first
/// one of `pem`, which may hold text around it); `None` when there is none.
pub fn pem_public_key_der(pem: &str) -> Option<Vec<u8>> {
    der::pem_block(pem, "PUBLIC KEY")
}

/// Every `PUBLIC KEY` block of `text`, as DER.
pub fn pem_public_keys_der(text: &str) -> Vec<Vec<u8>> {
    const END: &str = "-----END PUBLIC KEY-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(der) = pem_public_key_der(rest) {
        out.push(der);
        match rest.find(END) {
            Some(i) => rest = &rest[i + END.len()..],
            None => break,
        }
    }
    out
}

/// The keys of `signature_pinned_keys`: each entry a PEM `PUBLIC KEY` (or several) or the
/// absolute path of a file holding them. An entry that is neither, a file that cannot be read
/// or one without a key is an error naming the entry.
pub fn load_pinned_keys(entries: &[String]) -> std::io::Result<Vec<Vec<u8>>> {
    use std::io::{Error, ErrorKind};
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let (text, name) = if entry.contains("-----BEGIN") {
            (entry.clone(), format!("entry {}", i + 1))
        } else if entry.starts_with('/') {
            let text = std::fs::read_to_string(entry)
                .map_err(|e| Error::new(e.kind(), format!("{entry}: {e}")))?;
            (text, entry.clone())
        } else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "entry {} is neither a PEM public key nor an absolute path",
                    i + 1
                ),
            ));
        };
        let found = pem_public_keys_der(&text);
        if found.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("{name} holds no -----BEGIN PUBLIC KEY----- block"),
            ));
        }
        keys.extend(found);
    }
    Ok(keys)
}

/// The `RSAPublicKey` of a `-----BEGIN PUBLIC KEY-----` PEM: its `SubjectPublicKeyInfo` is
/// `SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0x00, RSAPublicKey } }`.
/// `None` for anything else, an RSA key in another wrapping included. The key itself (modulus
/// size, exponent) is checked by ring when it verifies.
fn rsa_public_key_from_pem(pem: &str) -> Option<Vec<u8>> {
    const RSA_ENCRYPTION: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let whole = der::pem_only(pem, "PUBLIC KEY")?;
    let (spki, rest) = der::take(&whole, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (alg, rest) = der::take(spki, 0x30)?;
    // The parameters must be NULL (RFC 3279 §2.3.1), and nothing else may follow.
    if alg != [RSA_ENCRYPTION, &[0x05, 0x00]].concat() {
        return None;
    }
    let (bits, rest) = der::take(rest, 0x03)?;
    if !rest.is_empty() {
        return None;
    }
    match bits.split_first() {
        Some((0, key)) if !key.is_empty() => Some(key.to_vec()),
        _ => None,
    }
}

/// Decodes a DER `SEQUENCE { INTEGER r, INTEGER s }` into an SM2 signature's `(r, s)`,
/// big-endian. Short-form and one- or two-byte long-form lengths; nothing may follow the
/// sequence. Whether they are in range is `Sm2PublicKey::verify`'s check.
fn sm2_signature_from_der(der: &[u8]) -> Option<([u8; 32], [u8; 32])> {
    fn length(buf: &[u8]) -> Option<(usize, &[u8])> {
        let (&first, rest) = buf.split_first()?;
        match first {
            0..=0x7f => Some((usize::from(first), rest)),
            0x81 => {
                let (&b, rest) = rest.split_first()?;
                Some((usize::from(b), rest))
            }
            0x82 => {
                let b = rest.get(..2)?;
                Some(((usize::from(b[0]) << 8) | usize::from(b[1]), &rest[2..]))
            }
            _ => None,
        }
    }
    fn integer(buf: &[u8]) -> Option<([u8; 32], &[u8])> {
        let (&tag, rest) = buf.split_first()?;
        if tag != 0x02 {
            return None;
        }
        let (len, rest) = length(rest)?;
        let bytes = rest.get(..len)?;
        let mut digits = bytes;
        while digits.len() > 1 && digits[0] == 0 {
            digits = &digits[1..];
        }
        if digits.is_empty() || digits.len() > 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out[32 - digits.len()..].copy_from_slice(digits);
        Some((out, &rest[len..]))
    }
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (len, rest) = length(rest)?;
    if rest.len() != len {
        return None;
    }
    let (r, rest) = integer(rest)?;
    let (s, rest) = integer(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some((r, s))
}

/// The data a certificate's `signatureFields` cover, joined with `#` (spec §7). Unknown field
/// names are skipped, as the reference does.
fn signed_data(
    fields: &[String],
    task: &Signed<'_>,
    instance_id: &str,
) -> Result<String, SignatureError> {
    let mut parts: Vec<&str> = Vec::with_capacity(fields.len());
    for field in fields {
        match field.as_str() {
            "userId" => parts.push(task.user_id),
            "instanceId" => {
                if instance_id.is_empty() || instance_id == "unknown" {
                    return Err(SignatureError::UnknownInstanceId);
                }
                parts.push(instance_id);
            }
            "commandContent" => parts.push(task.content),
            _ => {}
        }
    }
    Ok(parts.join("#"))
}

/// Verifies run tasks against the server's certificates, with a cache file.
pub struct SignatureVerifier {
    http: Arc<dyn Http>,
    cache_path: PathBuf,
    instance_id: String,
    strict: bool,
    cert_path: String,
    /// DER `SubjectPublicKeyInfo`s a certificate's key must be one of; empty: any key.
    pinned: Vec<Vec<u8>>,
    /// What strict mode wants signed whatever the certificate lists.
    required_fields: Vec<String>,
    /// Certificates by key; `None` until the cache file is read (once, on first use). Only the
    /// thread that owns the verifier touches it.
    certs: RefCell<Option<BTreeMap<String, Cert>>>,
    /// Failed downloads by certificate key, with when they failed (see `CERT_RETRY_AFTER`).
    failed: RefCell<BTreeMap<String, (Instant, TransportError)>>,
    retry_after: Duration,
}

impl fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("cache_path", &self.cache_path)
            .field("instance_id", &self.instance_id)
            .field("strict", &self.strict)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl SignatureVerifier {
    /// `cache_path` is the certificate cache file (`<state>/task_sign_certs`). `strict` refuses
    /// every task that is unsigned or cannot be verified; the default (`false`) keeps the
    /// reference's soft behaviour.
    pub fn new(
        http: Arc<dyn Http>,
        cache_path: PathBuf,
        instance_id: String,
        strict: bool,
    ) -> SignatureVerifier {
        SignatureVerifier {
            http,
            cache_path,
            instance_id,
            strict,
            cert_path: DEFAULT_CERT_PATH.to_string(),
            pinned: Vec::new(),
            required_fields: crate::config::DEFAULT_SIGNATURE_REQUIRED_FIELDS
                .map(str::to_string)
                .to_vec(),
            certs: RefCell::new(None),
            failed: RefCell::new(BTreeMap::new()),
            retry_after: CERT_RETRY_AFTER,
        }
    }

    /// Overrides `DEFAULT_CERT_PATH` (the reference's path is unknown).
    pub fn with_cert_path(mut self, path: impl Into<String>) -> SignatureVerifier {
        self.cert_path = path.into();
        self
    }

    /// Only certificates whose key is one of `keys` (DER `SubjectPublicKeyInfo`s) are used
    /// (`signature_pinned_keys`); none given: any key the server sends.
    pub fn with_pinned_keys(mut self, keys: Vec<Vec<u8>>) -> SignatureVerifier {
        self.pinned = keys;
        self
    }

    /// What strict mode requires a certificate to sign (`signature_required_fields`).
    pub fn with_required_fields(mut self, fields: Vec<String>) -> SignatureVerifier {
        self.required_fields = fields;
        self
    }

    /// The check itself: `Ok` only for a signature that verified, with a pinned key (when
    /// keys are pinned) and, in strict mode, over at least the required fields.
    pub fn check<'a>(&self, task: impl Into<Signed<'a>>) -> Result<(), SignatureError> {
        let task = &task.into();
        let parsed = parse_signature(task.signature)?;
        let cert = self.cert(&parsed, task.task_id)?;
        if !self.pinned.is_empty() && !self.pinned.contains(&cert.spki_der) {
            return Err(SignatureError::NotPinned);
        }
        if self.strict {
            let missing: Vec<String> = self
                .required_fields
                .iter()
                .filter(|f| !cert.fields.contains(f))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(SignatureError::FieldsNotSigned(missing));
            }
        }
        let data = signed_data(&cert.fields, task, &self.instance_id)?;
        verify_with(&cert, data.as_bytes(), &parsed.signature)
    }

    /// The engine's decision (spec §7). Soft mode (the reference): an SM2 mismatch is an invalid
    /// task, every other failure is logged and the task runs. That includes an RSA mismatch: the
    /// reference's RSA check returns `(false, err)` and so lands in its "error, run anyway"
    /// branch; we keep that quirk in soft mode and treat an RSA mismatch as a mismatch only in
    /// strict mode. Strict mode: anything but a verified signature is an invalid task, with the
    /// reason as the report's value.
    pub fn verify(&self, task: &RunTaskInfo) -> Result<(), Invalid> {
        self.decide(&Signed::from(task))
    }

    /// A send-file entry (an assistd extension: the reference checks only the content's MD5).
    /// Strict mode refuses an entry without a signature that verifies; soft mode checks a
    /// signature when the entry carries one and decides as for run tasks, and lets an unsigned
    /// entry through as the reference does.
    pub fn verify_send_file(&self, file: &SendFileTaskInfo) -> Result<(), Invalid> {
        if !self.strict && file.task_signature.is_empty() {
            return Ok(());
        }
        self.decide(&Signed::from(file))
    }

    fn decide(&self, task: &Signed<'_>) -> Result<(), Invalid> {
        let id = task.task_id;
        let v = task.invoke_version;
        match self.check(*task) {
            Ok(()) => {
                log::info!("task={id} invoke={v} phase=verify signature is OK");
                Ok(())
            }
            Err(SignatureError::Mismatch(Algorithm::Sm3WithSm2)) => {
                log::warn!("task={id} invoke={v} phase=verify SM3WithSM2 signature does not match, task refused");
                Err(mismatch())
            }
            Err(SignatureError::Mismatch(Algorithm::Sha256WithRsa)) if self.strict => {
                log::warn!("task={id} invoke={v} phase=verify SHA256WithRSA signature does not match, task refused");
                Err(mismatch())
            }
            Err(e) if self.strict => {
                log::warn!(
                    "task={id} invoke={v} phase=verify {} (strict mode: task refused)",
                    error_chain(&e)
                );
                Err(Invalid {
                    param: INVALID_PARAM.to_string(),
                    value: e.to_string(),
                })
            }
            Err(e) => {
                log::warn!(
                    "task={id} invoke={v} phase=verify {}; running it anyway",
                    error_chain(&e)
                );
                Ok(())
            }
        }
    }

    fn cert(&self, sig: &ParsedSignature, task_id: &str) -> Result<Cert, SignatureError> {
        let key = sig.cert_key();
        let mut certs = self.certs.borrow_mut();
        let certs = certs.get_or_insert_with(|| self.load_cache());
        if let Some(c) = certs.get(&key) {
            return Ok(c.clone());
        }
        if let Some((at, e)) = self.failed.borrow().get(&key) {
            if at.elapsed() < self.retry_after {
                log::debug!(
                    "task={task_id} phase=verify certificate {key} download failed {} s ago; \
                     not asked again yet",
                    at.elapsed().as_secs()
                );
                return Err(SignatureError::CertDownload(replay(e)));
            }
        }
        let cert = match self.download(sig) {
            Err(SignatureError::CertDownload(e)) => {
                let again = replay(&e);
                self.failed.borrow_mut().insert(key, (Instant::now(), e));
                return Err(SignatureError::CertDownload(again));
            }
            other => other?,
        };
        self.failed.borrow_mut().remove(&key);
        if cert.key() != key {
            return Err(SignatureError::CertVersion {
                asked: key,
                got: cert.key(),
            });
        }
        log::info!("task={task_id} phase=verify downloaded certificate {key}");
        certs.insert(key, cert.clone());
        self.store_cache(certs);
        Ok(cert)
    }

    fn download(&self, sig: &ParsedSignature) -> Result<Cert, SignatureError> {
        let url = format!(
            "{}?signatureVersion={}&keypairVersion={}",
            self.cert_path, sig.signature_version, sig.keypair_version
        );
        let resp = self
            .http
            .get(&url, DEFAULT_TIMEOUT)
            .map_err(SignatureError::CertDownload)?;
        let v: Value = serde_json::from_slice(&resp.body).map_err(|_| {
            SignatureError::CertDecode(format!("HTTP {} answer is not JSON", resp.status))
        })?;
        Cert::from_json(&v)
    }

    /// Reads the cache file; a missing or broken file is an empty cache, and certificates that
    /// do not parse are skipped (spec §7).
    fn load_cache(&self) -> BTreeMap<String, Cert> {
        let mut out = BTreeMap::new();
        let bytes = match std::fs::read(&self.cache_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(e) => {
                log::warn!("phase=verify reading {}: {e}", self.cache_path.display());
                return out;
            }
        };
        let map = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            _ => {
                log::warn!(
                    "phase=verify {} is not a JSON object; ignored",
                    self.cache_path.display()
                );
                return out;
            }
        };
        for (key, v) in map {
            match Cert::from_json(&v) {
                Ok(c) => {
                    out.insert(key, c);
                }
                Err(e) => log::warn!("phase=verify cached certificate {key} skipped: {e}"),
            }
        }
        out
    }

    fn store_cache(&self, certs: &BTreeMap<String, Cert>) {
        let map: serde_json::Map<String, Value> = certs
            .iter()
            .map(|(k, c)| (k.clone(), c.to_json()))
            .collect();
        let text = Value::Object(map).to_string();
        if let Err(e) = crate::fsutil::write_atomic(&self.cache_path, text.as_bytes(), 0o644) {
            log::warn!("phase=verify writing {}: {e}", self.cache_path.display());
        }
    }
}

/// The same transport error again, for a remembered failure (`TransportError` is not `Clone`:
/// an unreachable server's cause is kept as its text).
fn replay(e: &TransportError) -> TransportError {
    match e {
        TransportError::Unreachable(cause) => TransportError::Unreachable(cause.to_string().into()),
        TransportError::Status(code) => TransportError::Status(*code),
        TransportError::NoServer => TransportError::NoServer,
    }
}

fn mismatch() -> Invalid {
    Invalid {
        param: INVALID_PARAM.to_string(),
        value: MISMATCH_VALUE.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;

    use crate::remote::transport::testing::FakeHttp;

    // Test vectors made once with openssl 3.0 (see src/remote/testdata/README.md): the data
    // `1234567890#i-test0001#ZWNobyBoZWxsbwo=` signed with SHA256WithRSA and SM3WithSM2.
    const RSA_PUB: &str = include_str!("testdata/sign_rsa_pub.pem");
    const RSA_SIG: &str = include_str!("testdata/sign_rsa.sig.b64");
    const SM2_PUB: &str = include_str!("testdata/sign_sm2_pub.pem");
    const SM2_SIG: &str = include_str!("testdata/sign_sm2.sig.b64");
    const INSTANCE: &str = "i-test0001";

    fn cert_json(alg: &str, pem: &str, s: i64, k: i64) -> String {
        json!({
            "keypairVersion": k,
            "signatureVersion": s,
            "publicKey": pem,
            "algorithm": alg,
            "signatureFields": ["userId", "instanceId", "commandContent"],
        })
        .to_string()
    }

    fn task(sig: &str) -> RunTaskInfo {
        RunTaskInfo {
            task_id: "t-1".into(),
            user_id: "1234567890".into(),
            content: "ZWNobyBoZWxsbwo=".into(),
            signature: sig.into(),
            ..RunTaskInfo::default()
        }
    }

    fn verifier(dir: &TempDir, http: Arc<FakeHttp>, strict: bool) -> SignatureVerifier {
        SignatureVerifier::new(
            http,
            dir.path().join(CACHE_FILE_NAME),
            INSTANCE.into(),
            strict,
        )
    }

    fn rsa_sig() -> String {
        format!("2#1#{}", RSA_SIG.trim())
    }
    fn sm2_sig() -> String {
        format!("3#1#{}", SM2_SIG.trim())
    }

    fn rsa_http(fields: &[&str]) -> Arc<FakeHttp> {
        let cert = json!({
            "keypairVersion": 1,
            "signatureVersion": 2,
            "publicKey": RSA_PUB,
            "algorithm": "SHA256WithRSA",
            "signatureFields": fields,
        })
        .to_string();
        Arc::new(FakeHttp::answering(vec![FakeHttp::ok(&cert)]))
    }

    #[test]
    fn only_a_pinned_key_verifies() {
        let dir = TempDir::new("sig-pinned");
        let ours = pem_public_keys_der(&format!("comment\n{RSA_PUB}\n{SM2_PUB}"));
        assert_eq!(ours.len(), 2, "both blocks of a key file");
        let fields = ["userId", "instanceId", "commandContent"];
        let v = verifier(&dir, rsa_http(&fields), true).with_pinned_keys(ours.clone());
        v.check(&task(&rsa_sig())).expect("pinned RSA key");

        let dir = TempDir::new("sig-unpinned");
        let v = verifier(&dir, rsa_http(&fields), true).with_pinned_keys(vec![ours[1].clone()]);
        assert!(matches!(
            v.check(&task(&rsa_sig())),
            Err(SignatureError::NotPinned)
        ));
        let refused = v.verify(&task(&rsa_sig())).expect_err("strict refuses");
        assert_eq!(
            refused.value,
            "certificate key is not one of signature_pinned_keys"
        );
    }

    #[test]
    fn strict_mode_wants_the_required_fields_signed() {
        let dir = TempDir::new("sig-fields");
        // A certificate that signs the content alone: a forged task could name any account.
        let v = verifier(&dir, rsa_http(&["commandContent"]), true);
        match v.check(&task(&rsa_sig())) {
            Err(SignatureError::FieldsNotSigned(missing)) => {
                assert_eq!(missing, ["userId", "instanceId"])
            }
            other => panic!("{other:?}"),
        }
        let dir = TempDir::new("sig-fields-set");
        let v = verifier(&dir, rsa_http(&["commandContent"]), true)
            .with_required_fields(vec!["commandContent".into()]);
        // Only the content is signed now, so the vector (over three fields) does not match.
        assert!(matches!(
            v.check(&task(&rsa_sig())),
            Err(SignatureError::Mismatch(_))
        ));
    }

    #[test]
    fn send_files_are_checked_in_strict_mode_and_when_signed() {
        let file = |sig: &str| SendFileTaskInfo {
            task_id: "f-1".into(),
            user_id: "1234567890".into(),
            content: "ZWNobyBoZWxsbwo=".into(),
            task_signature: sig.into(),
            ..SendFileTaskInfo::default()
        };
        let fields = ["userId", "instanceId", "commandContent"];
        let dir = TempDir::new("sig-file-strict");
        let strict = verifier(&dir, rsa_http(&fields), true);
        assert_eq!(strict.verify_send_file(&file(&rsa_sig())), Ok(()));
        assert!(strict.verify_send_file(&file("")).is_err(), "unsigned");
        let mut tampered = file(&rsa_sig());
        tampered.content = "ZWNobyBieWUK".into();
        assert_eq!(strict.verify_send_file(&tampered), Err(mismatch()));

        let dir = TempDir::new("sig-file-soft");
        let http = rsa_http(&fields);
        let soft = verifier(&dir, http.clone(), false);
        assert_eq!(soft.verify_send_file(&file("")), Ok(()), "as the reference");
        assert!(
            http.paths().is_empty(),
            "an unsigned entry asks for nothing"
        );
    }

    #[test]
    fn parse_formats() {
        let p = parse_signature("2#1#aGk=").expect("parse");
        assert_eq!((p.signature_version, p.keypair_version), (2, 1));
        assert_eq!(p.signature, b"hi");
        assert_eq!(p.cert_key(), "2-1");
        // The signature part may itself hold '#' only if base64 did; it does not, so it fails.
        for bad in [
            "2#1#",
            "2#1",
            "#1#aGk=",
            "x#1#aGk=",
            "2#1.0#aGk=",
            "2##aGk=",
        ] {
            assert!(
                matches!(parse_signature(bad), Err(SignatureError::Format)),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_signature(""), Err(SignatureError::Missing)));
        assert!(matches!(
            parse_signature("2#1#a#b"),
            Err(SignatureError::Base64(_))
        ));
        assert!(format!("{p:?}").contains("signature_len"));
    }

    #[test]
    fn only_an_rsa_subject_public_key_info_is_an_rsa_key() {
        let key = rsa_public_key_from_pem(RSA_PUB).expect("the test key");
        assert_eq!(key.first(), Some(&0x30), "an RSAPublicKey SEQUENCE");
        assert!(
            rsa_public_key_from_pem(SM2_PUB).is_none(),
            "not rsaEncryption"
        );
        let truncated = RSA_PUB.replacen("MII", "MIJ", 1);
        assert!(rsa_public_key_from_pem(&truncated).is_none());
        assert!(rsa_public_key_from_pem("garbage").is_none());
        assert!(der::take(&[0x30, 0x85, 0, 0, 0, 0, 1], 0x30).is_none());
    }

    #[test]
    fn rsa_signature_passes() {
        let dir = TempDir::new("sig-rsa");
        let http = Arc::new(FakeHttp::answering(vec![FakeHttp::ok(&cert_json(
            "SHA256WithRSA",
            RSA_PUB,
            2,
            1,
        ))]));
        let v = verifier(&dir, http.clone(), true);
        v.check(&task(&rsa_sig())).expect("verifies");
        assert_eq!(v.verify(&task(&rsa_sig())), Ok(()));
        assert_eq!(
            http.paths(),
            [format!(
                "{DEFAULT_CERT_PATH}?signatureVersion=2&keypairVersion=1"
            )],
            "one download, then the memory cache"
        );
    }

    #[test]
    fn sm2_signature_passes() {
        let dir = TempDir::new("sig-sm2");
        let http = Arc::new(FakeHttp::answering(vec![FakeHttp::ok(&cert_json(
            "SM3WithSM2",
            SM2_PUB,
            3,
            1,
        ))]));
        let v = verifier(&dir, http, true);
        v.check(&task(&sm2_sig())).expect("verifies");
    }

    #[test]
    fn tampered_content_fails() {
        let dir = TempDir::new("sig-tamper");
        let http = Arc::new(FakeHttp::answering(vec![
            FakeHttp::ok(&cert_json("SHA256WithRSA", RSA_PUB, 2, 1)),
            FakeHttp::ok(&cert_json("SM3WithSM2", SM2_PUB, 3, 1)),
        ]));
        let soft = verifier(&dir, http, false);
        let mut t = task(&rsa_sig());
        t.content = "cm0gLXJmIC8K".into();
        assert!(matches!(
            soft.check(&t),
            Err(SignatureError::Mismatch(Algorithm::Sha256WithRsa))
        ));
        // The reference's quirk: an RSA mismatch runs in soft mode.
        assert_eq!(soft.verify(&t), Ok(()));
        t.signature = sm2_sig();
        assert_eq!(soft.verify(&t), Err(mismatch()));
        let mut wrong_instance = task(&sm2_sig());
        wrong_instance.user_id = "other".into();
        assert_eq!(soft.verify(&wrong_instance), Err(mismatch()));
    }

    #[test]
    fn strict_refuses_what_soft_runs() {
        let dir = TempDir::new("sig-strict");
        let http = Arc::new(FakeHttp::answering(vec![FakeHttp::ok(&cert_json(
            "SHA256WithRSA",
            RSA_PUB,
            2,
            1,
        ))]));
        let strict = verifier(&dir, http.clone(), true);
        let soft = verifier(&dir, http, false);
        let unsigned = task("");
        assert_eq!(soft.verify(&unsigned), Ok(()));
        assert_eq!(
            strict.verify(&unsigned),
            Err(Invalid {
                param: INVALID_PARAM.into(),
                value: "task is not signed".into()
            })
        );
        let odd = task("v2#1#aGk=");
        assert_eq!(soft.verify(&odd), Ok(()));
        assert_eq!(
            strict.verify(&odd).map_err(|i| i.value),
            Err("unknown signature format".to_string())
        );
        let mut tampered = task(&rsa_sig());
        tampered.user_id = "0".into();
        assert_eq!(strict.verify(&tampered), Err(mismatch()));
        // Certificate download failure (the script is now empty).
        let no_cert = task("9#9#aGk=");
        assert_eq!(soft.verify(&no_cert), Ok(()));
        assert_eq!(
            strict.verify(&no_cert).map_err(|i| i.value),
            Err("certificate download failed".to_string())
        );
    }

    #[test]
    fn unknown_instance_id_is_unverifiable() {
        let dir = TempDir::new("sig-noid");
        let http = Arc::new(FakeHttp::answering(vec![FakeHttp::ok(&cert_json(
            "SHA256WithRSA",
            RSA_PUB,
            2,
            1,
        ))]));
        let v = SignatureVerifier::new(
            http,
            dir.path().join(CACHE_FILE_NAME),
            "unknown".into(),
            false,
        );
        assert!(matches!(
            v.check(&task(&rsa_sig())),
            Err(SignatureError::UnknownInstanceId)
        ));
    }

    #[test]
    fn download_rewrites_cache_and_cache_hits_skip_http() {
        let dir = TempDir::new("sig-cache");
        let cache = dir.path().join(CACHE_FILE_NAME);
        // A cache with one broken entry and the SM2 certificate.
        let seeded = format!(
            r#"{{"3-1": {}, "5-5": {{"algorithm":"SHA256WithRSA","publicKey":"garbage","signatureVersion":5,"keypairVersion":5}}}}"#,
            cert_json("SM3WithSM2", SM2_PUB, 3, 1)
        );
        std::fs::write(&cache, seeded).expect("seed cache");
        let http = Arc::new(FakeHttp::answering(vec![FakeHttp::ok(&cert_json(
            "SHA256WithRSA",
            RSA_PUB,
            2,
            1,
        ))]));
        let v = SignatureVerifier::new(http.clone(), cache.clone(), INSTANCE.into(), true)
            .with_cert_path("/certs");
        v.check(&task(&sm2_sig())).expect("sm2 from the cache");
        assert!(http.paths().is_empty(), "cache hit needs no HTTP");
        v.check(&task(&rsa_sig())).expect("rsa downloaded");
        assert_eq!(http.paths(), ["/certs?signatureVersion=2&keypairVersion=1"]);
        let written: Value =
            serde_json::from_slice(&std::fs::read(&cache).expect("read cache")).expect("json");
        let keys: Vec<&String> = written.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["2-1", "3-1"], "broken entry dropped, new one added");
        // A second verifier (a restart) finds both without HTTP.
        let http2 = Arc::new(FakeHttp::default());
        let v2 = SignatureVerifier::new(http2.clone(), cache, INSTANCE.into(), true);
        v2.check(&task(&rsa_sig()))
            .expect("rsa from the rewritten cache");
        v2.check(&task(&sm2_sig()))
            .expect("sm2 from the rewritten cache");
        assert!(http2.paths().is_empty());
    }

    #[test]
    fn a_failed_download_is_remembered_for_a_while() {
        let dir = TempDir::new("sig-failed");
        let http = Arc::new(FakeHttp::answering(vec![
            Err(TransportError::Unreachable("connect timed out".into())),
            FakeHttp::ok(&cert_json("SHA256WithRSA", RSA_PUB, 2, 1)),
        ]));
        let v = verifier(&dir, http.clone(), true);
        let t = task(&rsa_sig());
        for _ in 0..2 {
            let e = v.check(&t).expect_err("no certificate");
            assert!(matches!(e, SignatureError::CertDownload(_)), "{e}");
            assert_eq!(
                error_chain(&e),
                "certificate download failed: server unreachable: connect timed out"
            );
        }
        assert_eq!(http.paths().len(), 1, "the second check made no request");
        // Another certificate is asked for.
        assert!(v.check(&task(&sm2_sig())).is_err());
        assert_eq!(http.paths().len(), 2);

        // Once the window has passed, the next check asks again.
        let http = Arc::new(FakeHttp::answering(vec![
            Err(TransportError::Status(503)),
            FakeHttp::ok(&cert_json("SHA256WithRSA", RSA_PUB, 2, 1)),
        ]));
        let mut v = verifier(&dir, http.clone(), true);
        v.retry_after = Duration::ZERO;
        assert!(v.check(&t).is_err());
        v.check(&t).expect("downloaded on the second try");
        assert_eq!(http.paths().len(), 2);
        assert!(v.failed.borrow().is_empty());
    }

    #[test]
    fn bad_certificate_answers() {
        let dir = TempDir::new("sig-badcert");
        let http = Arc::new(FakeHttp::answering(vec![
            FakeHttp::ok("not json"),
            FakeHttp::ok(&cert_json("MD5WithRSA", RSA_PUB, 2, 1)),
            FakeHttp::ok(&cert_json("SHA256WithRSA", SM2_PUB, 2, 1)),
            FakeHttp::ok(&cert_json("SHA256WithRSA", RSA_PUB, 7, 1)),
        ]));
        let v = verifier(&dir, http, false);
        let t = task(&rsa_sig());
        assert!(matches!(v.check(&t), Err(SignatureError::CertDecode(_))));
        assert!(matches!(
            v.check(&t),
            Err(SignatureError::UnknownAlgorithm(_))
        ));
        assert!(matches!(v.check(&t), Err(SignatureError::PublicKey(_))));
        assert!(matches!(
            v.check(&t),
            Err(SignatureError::CertVersion { .. })
        ));
        assert!(!dir.path().join(CACHE_FILE_NAME).exists(), "nothing cached");
    }

    #[test]
    fn sm2_der_decoding() {
        let sig = decode_base64(SM2_SIG.trim().as_bytes()).expect("base64");
        assert!(sm2_signature_from_der(&sig).is_some());
        let mut trailing = sig.clone();
        trailing.push(0);
        assert!(sm2_signature_from_der(&trailing).is_none());
        assert!(sm2_signature_from_der(&sig[..sig.len() - 1]).is_none());
        assert!(sm2_signature_from_der(&[]).is_none());
        assert!(sm2_signature_from_der(&[0x30, 0x00]).is_none());
    }
}
