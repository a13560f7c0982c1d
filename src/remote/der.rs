//! DER TLVs and PEM blocks: the framing that signature certificates (`signature`) and the
//! hybrid RSA key (`rsa_key`) read and write. It knows no structure beyond tag and length;
//! what a SEQUENCE must hold is its caller's business.

use crate::runner::params::{decode_base64, encode_base64};

/// Splits one DER element with tag `tag` off the front of `buf`: (its contents, the rest).
/// Short-form and one- to three-byte long-form lengths.
pub fn take(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = buf.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x83 => {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n)?;
            let len = bytes.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b));
            (len, &rest[n..])
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// One DER element: `tag`, the definite length of `value`, `value`.
pub fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

/// The DER inside the first `-----BEGIN <label>-----` block of `text`, which may hold text
/// around it; `None` when there is none or it is empty.
pub fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let len = text[start..].find(&end)?;
    let b64: String = text[start..start + len].split_whitespace().collect();
    decode_base64(b64.as_bytes()).ok().filter(|d| !d.is_empty())
}

/// The DER of a text that is one `label` PEM block and nothing else (but whitespace).
pub fn pem_only(text: &str, label: &str) -> Option<Vec<u8>> {
    let body = text
        .trim()
        .strip_prefix(&format!("-----BEGIN {label}-----"))?
        .strip_suffix(&format!("-----END {label}-----"))?;
    let b64: String = body.split_whitespace().collect();
    decode_base64(b64.as_bytes()).ok()
}

/// A PEM block: the label's lines around base64 in lines of 64 (RFC 7468).
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = encode_base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_both_ways() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 200]);
        assert_eq!(&long[..3], [0x04, 0x81, 200]);
        let longer = tlv(0x04, &[0; 300]);
        assert_eq!(&longer[..4], [0x04, 0x82, 0x01, 0x2c]);
        let (value, rest) = take(&longer, 0x04).unwrap();
        assert_eq!((value.len(), rest.len()), (300, 0));
        assert!(take(&longer, 0x30).is_none(), "another tag");
        assert!(take(&longer[..longer.len() - 1], 0x04).is_none(), "short");
        assert!(take(&[0x30, 0x85, 0, 0, 0, 0, 1], 0x30).is_none());
        assert!(take(&[0x30, 0x80], 0x30).is_none(), "indefinite length");
    }

    #[test]
    fn pem_blocks_round_trip() {
        let der: Vec<u8> = (0..=255).collect();
        let text = pem("THING", &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(pem_only(&text, "THING"), Some(der.clone()));
        assert_eq!(
            pem_block(&format!("before\n{text}after"), "THING"),
            Some(der)
        );
        assert_eq!(pem_only(&format!("before\n{text}"), "THING"), None);
        assert_eq!(pem_block(&text, "OTHER"), None);
        assert_eq!(
            pem_block("-----BEGIN X----------END X-----", "X"),
            None,
            "empty"
        );
    }
}
