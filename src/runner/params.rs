//! Pure text transforms of a script before it runs: Go-compatible base64 decoding and the
//! `{{ACS::Name}}` built-in parameter substitution (spec §4.4, §4.5); never does any I/O.

use std::collections::BTreeMap;
use std::fmt;

/// Base64 input that Go's `base64.StdEncoding` would reject; the offset is Go's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Base64Error {
    pub offset: usize,
}

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The exact text of Go's `CorruptInputError`, which the server receives.
        write!(f, "illegal base64 data at input byte {}", self.offset)
    }
}

impl std::error::Error for Base64Error {}

const PAD: u8 = b'=';

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn is_newline(c: u8) -> bool {
    c == b'\n' || c == b'\r'
}

/// Standard, padded base64 (the encoding of `commandContent`).
pub fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard, padded base64 the way Go's `base64.StdEncoding.DecodeString` does:
/// `\r` and `\n` are skipped anywhere, and errors carry the same input offset.
pub fn decode_base64(src: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    while si < src.len() {
        // One quantum (Go's `decodeQuantum`): up to four sextets.
        let mut dbuf = [0u8; 4];
        let mut dlen = 4;
        let mut trailing: Option<Base64Error> = None;
        let mut j = 0;
        while j < 4 {
            if si == src.len() {
                if j == 0 {
                    return Ok(out);
                }
                // Padded encoding: a quantum cut short is an error at its first byte.
                return Err(Base64Error { offset: si - j });
            }
            let c = src[si];
            si += 1;
            if let Some(v) = sextet(c) {
                dbuf[j] = v;
                j += 1;
                continue;
            }
            if is_newline(c) {
                continue;
            }
            if c != PAD || j < 2 {
                return Err(Base64Error { offset: si - 1 });
            }
            if j == 2 {
                // "==" is expected; the first "=" is consumed.
                while si < src.len() && is_newline(src[si]) {
                    si += 1;
                }
                if si == src.len() {
                    return Err(Base64Error { offset: src.len() });
                }
                if src[si] != PAD {
                    return Err(Base64Error { offset: si - 1 });
                }
                si += 1;
            }
            while si < src.len() && is_newline(src[si]) {
                si += 1;
            }
            if si < src.len() {
                trailing = Some(Base64Error { offset: si });
            }
            dlen = j;
            break;
        }
        let val = (u32::from(dbuf[0]) << 18)
            | (u32::from(dbuf[1]) << 12)
            | (u32::from(dbuf[2]) << 6)
            | u32::from(dbuf[3]);
        let bytes = [(val >> 16) as u8, (val >> 8) as u8, val as u8];
        out.extend_from_slice(&bytes[..dlen - 1]);
        if let Some(e) = trailing {
            return Err(e);
        }
    }
    Ok(out)
}

/// A `{{ACS::Name}}` whose name is not among the task's built-in parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownParameter {
    pub name: String,
}

impl fmt::Display for UnknownParameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "The environment parameter {} is invalid", self.name)
    }
}

impl std::error::Error for UnknownParameter {}

/// Go regexp `\s`: `[\t\n\f\r ]`.
fn is_space(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

/// `[\w-.]`.
fn is_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.'
}

fn skip_space(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_space(s[i]) {
        i += 1;
    }
    i
}

/// Matches `{{\s*ACS\s*::\s*([\w-.]+)\s*}}` at `start`; returns the name and the end offset.
fn match_at(s: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let mut i = start;
    if !s[i..].starts_with(b"{{") {
        return None;
    }
    i = skip_space(s, i + 2);
    if !s[i..].starts_with(b"ACS") {
        return None;
    }
    i = skip_space(s, i + 3);
    if !s[i..].starts_with(b"::") {
        return None;
    }
    i = skip_space(s, i + 2);
    let name_start = i;
    while i < s.len() && is_name(s[i]) {
        i += 1;
    }
    if i == name_start {
        return None;
    }
    let name = &s[name_start..i];
    i = skip_space(s, i);
    if !s[i..].starts_with(b"}}") {
        return None;
    }
    Some((name, i + 2))
}

/// Replaces every `{{ACS::Name}}` (spaces allowed inside the braces and around `::`) with
/// `params[Name]`, left to right like Go's `ReplaceAllStringFunc`; the first unknown name wins.
pub fn resolve_builtin(
    content: &[u8],
    params: &BTreeMap<String, String>,
) -> Result<Vec<u8>, UnknownParameter> {
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        if content[i] == b'{' {
            if let Some((name, end)) = match_at(content, i) {
                // Name bytes are ASCII by construction.
                let name = String::from_utf8_lossy(name);
                match params.get(name.as_ref()) {
                    Some(value) => out.extend_from_slice(value.as_bytes()),
                    None => {
                        return Err(UnknownParameter {
                            name: name.into_owned(),
                        })
                    }
                }
                i = end;
                continue;
            }
        }
        out.push(content[i]);
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Vec<u8>, String> {
        decode_base64(s.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn base64_valid() {
        assert_eq!(decode(""), Ok(vec![]));
        assert_eq!(decode("cHdk"), Ok(b"pwd".to_vec()));
        assert_eq!(decode("aGk="), Ok(b"hi".to_vec()));
        assert_eq!(decode("aA=="), Ok(b"h".to_vec()));
        assert_eq!(decode("ZWNobyBo\r\naQ==\n"), Ok(b"echo hi".to_vec()));
        assert_eq!(decode("+/+/"), Ok(vec![0xfb, 0xff, 0xbf]));
    }

    #[test]
    fn base64_errors_match_go_offsets() {
        let err = |s: &str| decode(s).expect_err(s);
        assert_eq!(err("YWJj1"), "illegal base64 data at input byte 4");
        assert_eq!(err("abc"), "illegal base64 data at input byte 0");
        assert_eq!(err("ab!d"), "illegal base64 data at input byte 2");
        assert_eq!(err("a==="), "illegal base64 data at input byte 1");
        assert_eq!(err("aA="), "illegal base64 data at input byte 3");
        assert_eq!(err("aA=x"), "illegal base64 data at input byte 2");
        assert_eq!(err("aGk=aGk="), "illegal base64 data at input byte 4");
        assert_eq!(err("not base64!"), "illegal base64 data at input byte 3");
    }

    fn params() -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        p.insert("InstanceId".to_string(), "i-123".to_string());
        p.insert("Region.Id-x_1".to_string(), "cn".to_string());
        p
    }

    fn resolve(s: &str) -> Result<String, String> {
        resolve_builtin(s.as_bytes(), &params())
            .map(|b| String::from_utf8(b).expect("utf8"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parameters_are_substituted() {
        assert_eq!(resolve("echo {{ACS::InstanceId}}"), Ok("echo i-123".into()));
        assert_eq!(
            resolve("{{ ACS :: InstanceId }}/{{ACS::Region.Id-x_1}}"),
            Ok("i-123/cn".into())
        );
        assert_eq!(resolve("{{{ACS::InstanceId}}}"), Ok("{i-123}".into()));
        assert_eq!(resolve("{{\tACS::InstanceId\n}}"), Ok("i-123".into()));
        // Not the pattern: left alone.
        assert_eq!(
            resolve("{{acs::InstanceId}} {{ACS:InstanceId}} {{ACS::}} {{ACS::a b}}"),
            Ok("{{acs::InstanceId}} {{ACS:InstanceId}} {{ACS::}} {{ACS::a b}}".into())
        );
        assert_eq!(resolve("{{ACS::InstanceId"), Ok("{{ACS::InstanceId".into()));
        assert_eq!(resolve("${x} {{oos:Name}}"), Ok("${x} {{oos:Name}}".into()));
    }

    #[test]
    fn unknown_parameter_is_reported_by_name() {
        assert_eq!(
            resolve("{{ACS::InstanceId}} {{ACS::Nope}} {{ACS::Other}}"),
            Err("The environment parameter Nope is invalid".into())
        );
    }
}
