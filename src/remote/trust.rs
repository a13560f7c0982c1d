//! What an update offer must prove before it is installed: a download URL that is `https://`
//! (plain `http://` only to a loopback host, and only with `update_allow_insecure_loopback`),
//! a version above ours, and, when a release key is configured, an Ed25519 signature by that
//! key. It never downloads, installs or logs; it only answers yes or why not.
//!
//! The signature is an extension of ours (the reference's `update_check` answer has none): a
//! file beside the download, at the download URL with `.sig` appended to its path, holding the
//! base64 of a 64-byte Ed25519 signature over the text `signed_message` builds from the
//! offered version and the SHA-256 of the binary. Signing the version with the digest means a
//! signed old release cannot be replayed under a newer version number.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A signature file is a line of base64; anything longer is not one.
pub const MAX_SIGNATURE_BYTES: u64 = 1024;
/// A key file is a line of base64 (and perhaps a comment the operator added); bounded anyway.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Why an offer is not trusted.
#[derive(Debug)]
pub enum TrustError {
    /// The download URL has no scheme and host that we can tell.
    BadUrl,
    /// Not `https://`, and not a loopback `http://` that the configuration allows.
    Insecure {
        scheme: String,
        host: String,
        loopback_allowed: bool,
    },
    /// `update_info.version` is missing or is not dotted numbers.
    BadVersion(String),
    /// The offered version is not above ours.
    NotNewer { offered: Version, ours: Version },
    /// `strict_signatures` is on and no release key is configured.
    NoKey,
    /// `update_public_key` is set but cannot be used (shared with the setting that keeps it).
    Key(Arc<KeyError>),
    /// The signature file is not base64 of 64 bytes.
    MalformedSignature,
    /// The signature does not verify with the release key.
    BadSignature,
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::BadUrl => f.write_str("the download URL has no scheme and host"),
            TrustError::Insecure {
                scheme,
                host,
                loopback_allowed,
            } => {
                write!(f, "the download URL (scheme {scheme}, host {host}) is not https")?;
                if *loopback_allowed {
                    f.write_str("; plain http is allowed only to a loopback host")
                } else {
                    f.write_str("; only https downloads are installed")
                }
            }
            TrustError::BadVersion(v) => write!(
                f,
                "the offered version {v:?} is not dotted numbers (such as 0.2.0)"
            ),
            TrustError::NotNewer { offered, ours } => write!(
                f,
                "the offered version {offered} is not newer than this agent's {ours}"
            ),
            TrustError::NoKey => f.write_str(
                "strict_signatures is on and no update_public_key is configured to verify updates with",
            ),
            TrustError::Key(_) => f.write_str("update_public_key cannot be used"),
            TrustError::MalformedSignature => {
                f.write_str("the signature file is not base64 of a 64-byte Ed25519 signature")
            }
            TrustError::BadSignature => {
                f.write_str("the signature does not verify with update_public_key")
            }
        }
    }
}

impl std::error::Error for TrustError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrustError::Key(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Why `update_public_key` cannot be used.
#[derive(Debug)]
pub enum KeyError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Neither base64 of 32 bytes nor a file holding that.
    Malformed(PathBuf),
    MalformedInline,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            KeyError::Malformed(path) => write!(
                f,
                "{} does not hold base64 of a 32-byte Ed25519 public key",
                path.display()
            ),
            KeyError::MalformedInline => {
                f.write_str("the value is neither base64 of 32 bytes nor an absolute file path")
            }
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An Ed25519 public key that release binaries are signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct ReleaseKey([u8; 32]);

impl fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReleaseKey(..)")
    }
}

impl ReleaseKey {
    pub fn from_bytes(bytes: [u8; 32]) -> ReleaseKey {
        ReleaseKey(bytes)
    }

    /// `update_public_key`: base64 of the 32 raw key bytes, or the absolute path of a file
    /// whose first non-empty line is that.
    pub fn from_config(value: &str) -> Result<ReleaseKey, KeyError> {
        let value = value.trim();
        if let Some(key) = decode_key(value) {
            return Ok(key);
        }
        if !value.starts_with('/') {
            return Err(KeyError::MalformedInline);
        }
        let path = Path::new(value);
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(read_err)?,
                MAX_KEY_FILE_BYTES,
            ),
            &mut text,
        )
        .map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(decode_key)
            .ok_or_else(|| KeyError::Malformed(path.to_path_buf()))
    }
}

fn decode_key(text: &str) -> Option<ReleaseKey> {
    let bytes = crate::runner::params::decode_base64(text.as_bytes()).ok()?;
    Some(ReleaseKey(bytes.try_into().ok()?))
}

/// A version of dotted numbers (`0.10.0`), compared number by number; trailing zeros do not
/// count (`1.2` equals `1.2.0`).
#[derive(Clone, Debug)]
pub struct Version {
    parts: Vec<u64>,
    text: String,
}

impl Version {
    /// At most 8 numbers of at most 18 digits each; nothing else (no `v`, no `-rc1`).
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let mut parts = Vec::new();
        for part in text.split('.') {
            if part.is_empty() || part.len() > 18 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parts.push(part.parse().ok()?);
        }
        if parts.len() > 8 {
            return None;
        }
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Some(Version {
            parts,
            text: text.to_string(),
        })
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// This build's version.
    pub fn ours() -> Version {
        Version::parse(env!("CARGO_PKG_VERSION")).expect("Cargo.toml's version is dotted numbers")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts.cmp(&other.parts)
    }
}

/// Where release binaries' signatures come from.
#[derive(Clone, Debug)]
pub enum ReleaseKeySetting {
    /// No `update_public_key`: offers are installed on their SHA-256 alone (unless strict).
    None,
    Key(ReleaseKey),
    /// Configured but unusable: every update is refused (never a silent fall-back to unsigned).
    Unusable(Arc<KeyError>),
}

impl ReleaseKeySetting {
    /// From the configuration's `update_public_key`.
    pub fn from_config(value: Option<&str>) -> ReleaseKeySetting {
        match value {
            None => ReleaseKeySetting::None,
            Some(v) => match ReleaseKey::from_config(v) {
                Ok(key) => ReleaseKeySetting::Key(key),
                Err(e) => ReleaseKeySetting::Unusable(Arc::new(e)),
            },
        }
    }
}

/// The rules an offer is held to.
#[derive(Clone, Debug)]
pub struct Policy {
    /// `update_allow_insecure_loopback`: plain http to 127.0.0.0/8, ::1 or localhost.
    pub allow_insecure_loopback: bool,
    pub key: ReleaseKeySetting,
    /// `strict_signatures`: no key, no update.
    pub require_key: bool,
    /// `assistd update --apply --allow-downgrade`, by hand only: the version floor is lifted.
    pub allow_downgrade: bool,
}

impl Policy {
    /// Everything that can be decided before the download: the URL, the version against
    /// `ours`, and whether a needed key is there. Returns the offered version and the key the
    /// download must be verified with, if any.
    pub fn vet(
        &self,
        url: &str,
        version: &str,
        ours: &Version,
    ) -> Result<(Version, Option<&ReleaseKey>), TrustError> {
        check_url(url, self.allow_insecure_loopback)?;
        let offered =
            Version::parse(version).ok_or_else(|| TrustError::BadVersion(short(version)))?;
        if offered <= *ours && !self.allow_downgrade {
            return Err(TrustError::NotNewer {
                offered,
                ours: ours.clone(),
            });
        }
        let key = match &self.key {
            ReleaseKeySetting::Key(key) => Some(key),
            ReleaseKeySetting::Unusable(e) => return Err(TrustError::Key(e.clone())),
            ReleaseKeySetting::None if self.require_key => return Err(TrustError::NoKey),
            ReleaseKeySetting::None => None,
        };
        Ok((offered, key))
    }
}

/// An offered version for a log line: bounded, without control characters.
fn short(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(40)
        .collect::<String>()
}

/// `https://` always; `http://` only when `allow_insecure_loopback` and the host is a
/// loopback address or `localhost`.
pub fn check_url(url: &str, allow_insecure_loopback: bool) -> Result<(), TrustError> {
    let (scheme, host) = scheme_and_host(url).ok_or(TrustError::BadUrl)?;
    match scheme.as_str() {
        "https" => Ok(()),
        "http" if allow_insecure_loopback && is_loopback(&host) => Ok(()),
        _ => Err(TrustError::Insecure {
            scheme,
            host,
            loopback_allowed: allow_insecure_loopback,
        }),
    }
}

/// The lowercased scheme and host of an absolute URL; userinfo (which may hold a password) is
/// dropped, never returned. `None` for anything we cannot read with confidence.
pub fn scheme_and_host(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority
        .bytes()
        .any(|b| b <= b' ' || b >= 0x7f || b == b'\\')
    {
        return None;
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => host_port.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host == "localhost."
        || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback())
}

/// A URL for a log line: scheme, host and path, without userinfo, query or fragment (a
/// presigned download URL carries its credential in the query).
pub fn redact_url(url: &str) -> String {
    let (Some((scheme, _)), Some((_, rest))) = (scheme_and_host(url), url.trim().split_once("://"))
    else {
        return "(unreadable URL)".to_string();
    };
    let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let path = rest[path_start..].split(['?', '#']).next().unwrap_or("");
    let authority = &rest[..path_start];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host_port}{path}")
}

/// The signature's URL: the download URL with `.sig` appended to its path.
pub fn signature_url(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(i) => format!("{}.sig{}", &url[..i], &url[i..]),
        None => format!("{url}.sig"),
    }
}

/// The text a release is signed over: the offered version exactly as `update_info.version`
/// carries it, and the binary's SHA-256 in lowercase hex.
pub fn signed_message(version: &str, sha256: &[u8; 32]) -> Vec<u8> {
    let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
    format!("assistd-update\nversion {}\nsha256 {hex}\n", version.trim()).into_bytes()
}

/// Verifies the signature file's content for `version` and `sha256`.
pub fn verify_signature(
    key: &ReleaseKey,
    version: &str,
    sha256: &[u8; 32],
    signature_file: &[u8],
) -> Result<(), TrustError> {
    let text: Vec<u8> = signature_file
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let sig = crate::runner::params::decode_base64(&text)
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or(TrustError::MalformedSignature)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.0)
        .verify(&signed_message(version, sha256), &sig)
        .map_err(|_| TrustError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn v(s: &str) -> Version {
        Version::parse(s).expect(s)
    }

    #[test]
    fn versions_compare_number_by_number() {
        assert!(v("0.10.0") > v("0.9.9"));
        assert!(v("1.0") == v("1.0.0"));
        assert!(v("1.2.1") > v("1.2"));
        assert!(v("2") > v("1.99.99"));
        assert!(v("0.1.0") < v("0.1.1"));
        for bad in [
            "",
            "v1.2",
            "1..2",
            "1.2-rc1",
            " . ",
            "1.2.",
            "1,2",
            "１.2",
            "1.2.3.4.5.6.7.8.9",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(v(" 0.2.0 ").to_string(), "0.2.0");
    }

    #[test]
    fn only_https_or_an_allowed_loopback_http_is_accepted() {
        let ok = |url: &str, loopback: bool| check_url(url, loopback).is_ok();
        assert!(ok("https://example.com/a", false));
        assert!(ok("HTTPS://example.com:8443/a?x=1", false));
        assert!(!ok("http://127.0.0.1:9/a", false));
        for url in [
            "http://127.0.0.1:9/a",
            "http://127.10.0.3/a",
            "http://[::1]:8080/a",
            "http://localhost/a",
            "http://LOCALHOST:1/a",
            "http://user:pw@127.0.0.1/a",
        ] {
            assert!(ok(url, true), "{url}");
        }
        for url in [
            "http://10.0.0.1/a",
            "http://127.0.0.1.example.com/a",
            "http://127.0.0.1@example.com/a",
            "http://example.com/127.0.0.1",
            "http://[::2]/a",
            "http://128.0.0.1/a",
            "ftp://127.0.0.1/a",
            "file:///etc/passwd",
            "http://127.0.0.1\\@example.com/",
            "http://0x7f000001/a",
            "//127.0.0.1/a",
            "",
        ] {
            assert!(!ok(url, true), "{url}");
        }
        match check_url("http://user:secret@10.1.2.3:80/x?token=s", true) {
            Err(e @ TrustError::Insecure { .. }) => {
                let text = e.to_string();
                assert!(text.contains("scheme http, host 10.1.2.3"), "{text}");
                assert!(
                    !text.contains("secret") && !text.contains("token"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn log_lines_get_urls_without_credentials() {
        assert_eq!(
            redact_url("https://u:pw@h.example:8443/a/b?Signature=xyz#f"),
            "https://h.example:8443/a/b"
        );
        assert_eq!(redact_url("http://h"), "http://h");
        assert_eq!(redact_url("nonsense"), "(unreadable URL)");
        assert_eq!(signature_url("https://h/a"), "https://h/a.sig");
        assert_eq!(signature_url("https://h/a?x=1"), "https://h/a.sig?x=1");
    }

    fn policy(key: ReleaseKeySetting, require_key: bool, allow_downgrade: bool) -> Policy {
        Policy {
            allow_insecure_loopback: false,
            key,
            require_key,
            allow_downgrade,
        }
    }

    #[test]
    fn the_policy_holds_the_version_floor_and_the_key_requirement() {
        let ours = v("0.5.0");
        let url = "https://h/a";
        let p = policy(ReleaseKeySetting::None, false, false);
        assert!(p.vet(url, "0.5.1", &ours).is_ok());
        assert!(matches!(
            p.vet(url, "0.5", &ours),
            Err(TrustError::NotNewer { .. })
        ));
        assert!(matches!(
            p.vet(url, "0.4.9", &ours),
            Err(TrustError::NotNewer { .. })
        ));
        assert!(matches!(
            p.vet(url, "assistd", &ours),
            Err(TrustError::BadVersion(_))
        ));
        assert!(matches!(
            p.vet(url, "", &ours),
            Err(TrustError::BadVersion(_))
        ));
        let down = policy(ReleaseKeySetting::None, false, true);
        assert!(down.vet(url, "0.0.1", &ours).is_ok());
        assert!(matches!(
            down.vet(url, "old", &ours),
            Err(TrustError::BadVersion(_))
        ));
        let strict = policy(ReleaseKeySetting::None, true, false);
        assert!(matches!(
            strict.vet(url, "0.6.0", &ours),
            Err(TrustError::NoKey)
        ));
        let broken = policy(
            ReleaseKeySetting::from_config(Some("not a key")),
            false,
            false,
        );
        assert!(matches!(
            broken.vet(url, "0.6.0", &ours),
            Err(TrustError::Key(e)) if matches!(*e, KeyError::MalformedInline)
        ));
        let keyed = policy(
            ReleaseKeySetting::Key(ReleaseKey::from_bytes([7; 32])),
            true,
            false,
        );
        assert!(matches!(keyed.vet(url, "0.6.0", &ours), Ok((_, Some(_)))));
    }

    #[test]
    fn keys_are_read_inline_or_from_a_file() {
        let b64 = crate::runner::params::encode_base64(&[9u8; 32]);
        assert_eq!(
            ReleaseKey::from_config(&format!(" {b64}\n")).expect("inline"),
            ReleaseKey::from_bytes([9; 32])
        );
        let dir = crate::fsutil::tests::TempDir::new("trust-key");
        let file = dir.path().join("release.pub");
        std::fs::write(&file, format!("# release key\n\n{b64}\n")).expect("write");
        assert_eq!(
            ReleaseKey::from_config(&file.display().to_string()).expect("file"),
            ReleaseKey::from_bytes([9; 32])
        );
        std::fs::write(&file, "short").expect("write");
        assert!(matches!(
            ReleaseKey::from_config(&file.display().to_string()),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            ReleaseKey::from_config(&dir.path().join("missing").display().to_string()),
            Err(KeyError::Read { .. })
        ));
        let short_key = crate::runner::params::encode_base64(&[9u8; 31]);
        assert!(matches!(
            ReleaseKey::from_config(&short_key),
            Err(KeyError::MalformedInline)
        ));
    }

    #[test]
    fn signatures_verify_only_for_the_signed_version_and_digest() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
        let key = ReleaseKey::from_bytes(pair.public_key().as_ref().try_into().expect("32"));
        let sha = [3u8; 32];
        let sig = pair.sign(&signed_message("0.2.0", &sha));
        let file = format!("{}\n", crate::runner::params::encode_base64(sig.as_ref()));
        assert!(verify_signature(&key, "0.2.0", &sha, file.as_bytes()).is_ok());
        assert!(matches!(
            verify_signature(&key, "0.3.0", &sha, file.as_bytes()),
            Err(TrustError::BadSignature)
        ));
        let mut other = sha;
        other[0] ^= 1;
        assert!(matches!(
            verify_signature(&key, "0.2.0", &other, file.as_bytes()),
            Err(TrustError::BadSignature)
        ));
        let stranger = ReleaseKey::from_bytes([1; 32]);
        assert!(verify_signature(&stranger, "0.2.0", &sha, file.as_bytes()).is_err());
        assert!(matches!(
            verify_signature(&key, "0.2.0", &sha, b"!!!"),
            Err(TrustError::MalformedSignature)
        ));
        assert!(matches!(
            verify_signature(&key, "0.2.0", &sha, b"AAAA"),
            Err(TrustError::MalformedSignature)
        ));
    }
}
