//! What the agent's TLS client accepts: cipher suites, key-exchange groups and certificate
//! signature algorithms. Both TLS users, the HTTP client (`transport::UreqHttp`) and the kick
//! and session websockets (`transport::kick_tls_config`), take their rustls provider from here,
//! so the policy is stated once.
//!
//! It is rustls's ring provider without the ChaCha20-Poly1305 suites:
//! - suites: AES-128-GCM and AES-256-GCM, for TLS 1.3 and for TLS 1.2 with ECDHE (RSA or ECDSA
//!   certificates). TLS 1.3 makes TLS_AES_128_GCM_SHA256 mandatory for every peer (RFC 8446
//!   §9.1). rustls has no CBC suites, so a TLS 1.2 server it can reach offers AES-GCM or
//!   ChaCha20-Poly1305, and one that offers ChaCha20 alone is a configuration we know of no
//!   server having. ChaCha20-Poly1305 only ever wins on CPUs without AES instructions, and
//!   the agent sends a few kilobytes a minute: not worth ~51 KB of ring's assembly in every
//!   binary. A server without AES-GCM answers with a handshake_failure alert, which the agent
//!   logs as the connection's error.
//! - groups: X25519, P-256 and P-384, ring's three, in rustls's order. X25519 stays: its key
//!   generation reads a 24 KiB table where P-256's reads the whole 148 KiB of
//!   `ecp_nistz256_precomputed`, and that table would then be resident in every agent that
//!   talks to a server with an RSA certificate.
//! - certificate signatures: all of webpki's ring algorithms, as rustls's own provider has them.
//!
//! Nothing else is taken from `rustls::crypto::ring::default_provider()`: calling it would link
//! its suite table, and the ChaCha code with it.

use std::sync::Arc;

use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom};
use rustls::crypto::{SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::SigningKey;
use rustls::{SignatureScheme, SupportedCipherSuite};
use webpki::ring as algs;

/// Best first, as in rustls's own list.
static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
];

static KX_GROUPS: &[&dyn SupportedKxGroup] =
    &[kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];

/// webpki's ring algorithms and the TLS signature schemes they serve: the table rustls keeps
/// privately for its ring provider (`SUPPORTED_SIG_ALGS`), written out because it is not public.
static SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        algs::ECDSA_P256_SHA256,
        algs::ECDSA_P256_SHA384,
        algs::ECDSA_P384_SHA256,
        algs::ECDSA_P384_SHA384,
        algs::ED25519,
        algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        algs::RSA_PKCS1_2048_8192_SHA256,
        algs::RSA_PKCS1_2048_8192_SHA384,
        algs::RSA_PKCS1_2048_8192_SHA512,
        algs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        // TLS 1.2 does not tie an ECDSA scheme to a curve; TLS 1.3 does.
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[algs::ECDSA_P384_SHA384, algs::ECDSA_P256_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256],
        ),
        (SignatureScheme::ED25519, &[algs::ED25519]),
        (
            SignatureScheme::RSA_PSS_SHA512,
            &[algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA384,
            &[algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA512,
            &[algs::RSA_PKCS1_2048_8192_SHA512],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA384,
            &[algs::RSA_PKCS1_2048_8192_SHA384],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA256,
            &[algs::RSA_PKCS1_2048_8192_SHA256],
        ),
    ],
};

/// The provider both TLS clients are built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        kx_groups: KX_GROUPS.to_vec(),
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &SystemRandom,
        key_provider: &NoClientKeys,
    })
}

/// The kernel's random numbers (getrandom(2)), through ring, as rustls's provider has them.
#[derive(Debug)]
struct SystemRandom;

impl SecureRandom for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        use ring::rand::SecureRandom as _;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| GetRandomFailed)
    }
}

/// The agent authenticates to the server in HTTP headers, never with a client certificate, so
/// it loads no TLS private key. Refusing here keeps ring's signing code out of the binary.
#[derive(Debug)]
struct NoClientKeys;

impl KeyProvider for NoClientKeys {
    fn load_private_key(
        &self,
        _key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        Err(rustls::Error::General(
            "assistd uses no TLS client certificate".to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_is_consistent_and_has_no_chacha() {
        let provider = crypto_provider();
        // rustls's own check: every suite has a usable group and signature scheme.
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("a consistent provider");
        let names: Vec<String> = provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert!(names.iter().all(|n| n.contains("AES")), "{names:?}");
        assert!(names.iter().any(|n| n == "TLS13_AES_128_GCM_SHA256"));
        assert_eq!(provider.kx_groups.len(), 3);
        assert!(provider.signature_verification_algorithms.mapping.len() >= 9);
    }

    #[test]
    fn signature_table_matches_rustls_ring_provider() {
        // The table is a copy of rustls's private one: a rustls upgrade that changes it
        // shows here rather than as a server whose certificate no longer verifies.
        let ours = &SIGNATURE_ALGORITHMS;
        let theirs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let ids = |a: &WebPkiSupportedAlgorithms| -> Vec<String> {
            a.all
                .iter()
                .map(|alg| format!("{:?} {:?}", alg.public_key_alg_id(), alg.signature_alg_id()))
                .collect()
        };
        assert_eq!(ids(ours), ids(&theirs));
        let schemes = |a: &WebPkiSupportedAlgorithms| -> Vec<SignatureScheme> {
            a.mapping.iter().map(|(s, _)| *s).collect()
        };
        assert_eq!(schemes(ours), schemes(&theirs));
        assert_eq!(ours.supported_schemes(), theirs.supported_schemes());
    }

    /// The test identity of `tests/fixtures/tls/` (a P-256 leaf for localhost and its CA).
    const CA_PEM: &[u8] = include_bytes!("../../tests/fixtures/tls/ca.pem");
    const SERVER_PEM: &[u8] = include_bytes!("../../tests/fixtures/tls/server.pem");
    const SERVER_KEY: &[u8] = include_bytes!("../../tests/fixtures/tls/server.key");

    /// What a handshake agreed on: version, suite and key-exchange group.
    type Agreed = (
        rustls::ProtocolVersion,
        rustls::CipherSuite,
        rustls::NamedGroup,
    );

    /// A handshake in memory between a client on our provider (trusting the fixture CA) and
    /// a server on rustls's full ring provider narrowed by `narrow` and limited to `versions`.
    fn handshake(
        versions: &[&'static rustls::SupportedProtocolVersion],
        narrow: impl FnOnce(&mut CryptoProvider),
    ) -> Result<Agreed, rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(CA_PEM).expect("fixture CA"))
            .expect("fixture CA is a root");
        let client_config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server_provider = rustls::crypto::ring::default_provider();
        narrow(&mut server_provider);
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(server_provider))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(SERVER_PEM).expect("fixture cert")],
                PrivateKeyDer::from_pem_slice(SERVER_KEY).expect("fixture key"),
            )?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server_config))?;
        let mut wire = Vec::new();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            wire.clear();
            client.write_tls(&mut wire).expect("to memory");
            server.read_tls(&mut wire.as_slice()).expect("from memory");
            // A server that refuses still sends its alert: the client's error is what the
            // agent would log, so it is the one returned.
            let server_state = server.process_new_packets().map(|_| ());
            wire.clear();
            server.write_tls(&mut wire).expect("to memory");
            client.read_tls(&mut wire.as_slice()).expect("from memory");
            client.process_new_packets()?;
            server_state?;
        }
        assert!(!client.is_handshaking(), "the handshake did not finish");
        Ok((
            client.protocol_version().expect("a version"),
            client.negotiated_cipher_suite().expect("a suite").suite(),
            client
                .negotiated_key_exchange_group()
                .expect("a group")
                .name(),
        ))
    }

    #[test]
    fn handshakes_with_tls13_and_tls12_servers() {
        use rustls::version::{TLS12, TLS13};
        use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

        let agreed = handshake(&[&TLS13, &TLS12], |_| {}).expect("TLS 1.3");
        assert_eq!(
            agreed,
            (
                ProtocolVersion::TLSv1_3,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                NamedGroup::X25519
            )
        );
        let agreed = handshake(&[&TLS12], |_| {}).expect("TLS 1.2");
        assert_eq!(agreed.0, ProtocolVersion::TLSv1_2);
        assert_eq!(
            agreed.1,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        );
        // A server that only does AES-128-GCM (TLS 1.3's mandatory suite) and P-256.
        let agreed = handshake(&[&TLS13], |p| {
            p.cipher_suites
                .retain(|s| s.suite() == CipherSuite::TLS13_AES_128_GCM_SHA256);
            p.kx_groups.retain(|g| g.name() == NamedGroup::secp256r1);
        })
        .expect("AES-128-GCM with P-256");
        assert_eq!(agreed.1, CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(agreed.2, NamedGroup::secp256r1);
    }

    #[test]
    fn a_chacha_only_server_is_refused() {
        use rustls::version::{TLS12, TLS13};
        let refused = handshake(&[&TLS13, &TLS12], |p| {
            p.cipher_suites
                .retain(|s| format!("{:?}", s.suite()).contains("CHACHA20"));
        });
        assert!(
            matches!(
                refused,
                Err(rustls::Error::AlertReceived(
                    rustls::AlertDescription::HandshakeFailure
                ))
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn no_client_key_is_loaded() {
        let key = PrivateKeyDer::Pkcs8(vec![0u8; 8].into());
        assert!(NoClientKeys.load_private_key(key).is_err());
    }
}
