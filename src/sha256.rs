//! SHA-256 for the core: local task files' content hash and imported crontab names. A build
//! with the `remote` feature links ring for TLS and signatures anyway, so it uses ring's
//! SHA-256 and RustCrypto's `sha2` drops out of the binary; the local-only build has no ring
//! and uses `sha2`. The digest is the same either way (the test below compares them), which
//! matters: task files' digests are persisted.

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    #[cfg(feature = "remote")]
    {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
        out
    }
    #[cfg(not(feature = "remote"))]
    {
        use sha2::Digest as _;
        sha2::Sha256::digest(data).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fips_180_vector_and_both_implementations_agree() {
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        use sha2::Digest as _;
        let data: Vec<u8> = (0..200u8).collect();
        for len in 0..data.len() {
            let want: [u8; 32] = sha2::Sha256::digest(&data[..len]).into();
            assert_eq!(sha256(&data[..len]), want, "{len} bytes");
        }
    }
}
