//! The hybrid identity's RSA key (spec §2.2): generation at `register`, PKCS#1 and
//! SubjectPublicKeyInfo PEM, and PKCS#1 v1.5 signatures over an MD5 digest.
//!
//! ring verifies (task signatures, TLS) but neither generates an RSA key nor signs an MD5
//! DigestInfo, and the `rsa` crate for these two jobs cost 160 KB of the static binary (its
//! bignum, its DER and PEM stack). This module does them on `bignum`:
//! - Generation as FIPS 186-5 A.1.3 asks of random primes: each prime exactly half the bits
//!   with its two top bits set (so `n` has exactly `bits`), trial division, then Miller–Rabin
//!   with random bases (`MILLER_RABIN_ROUNDS`), `p - 1` and `q - 1` coprime to `e = 65537`,
//!   `|p - q| > 2^(bits/2 - 100)`. Randomness from the OS (`getrandom(2)`).
//! - Signing raises the encoded digest to `d` with `Modulus::pow` (time independent of `d`)
//!   and checks the result with the public exponent before it leaves, so a fault during
//!   the computation cannot send a signature that would give the key away.
//! - The secret numbers are overwritten when the key is dropped.

use std::fmt;

use crate::remote::bignum::{self, Limbs, Modulus};
use crate::remote::der;

/// The public exponent of every key made here (and of the reference's keys).
pub const PUBLIC_EXPONENT: u64 = 65537;
/// Rounds with random bases for each candidate prime: FIPS 186-5 table B.1 asks 4 for
/// 1024-bit primes (error below 2^-100); 8 costs little more.
const MILLER_RABIN_ROUNDS: usize = 8;
/// `DigestInfo` of an MD5 digest, up to the digest itself (RFC 8017 §9.2 note 1).
const MD5_DIGEST_INFO: [u8; 18] = [
    0x30, 0x20, 0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x05, 0x05, 0x00,
    0x04, 0x10,
];
/// `AlgorithmIdentifier { rsaEncryption, NULL }` of a SubjectPublicKeyInfo.
const RSA_ENCRYPTION_ALGORITHM: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
const PRIVATE_KEY_LABEL: &str = "RSA PRIVATE KEY";
const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

/// Why a key could not be made or used.
#[derive(Debug)]
pub enum RsaKeyError {
    /// The OS gave no random bytes.
    Random(rand_core::Error),
    /// A key size this module does not make (below 1024 bits, or not a multiple of 128).
    Size(usize),
    /// The text is not a PEM `RSA PRIVATE KEY` holding a usable two-prime PKCS#1 key.
    NotAKey(&'static str),
    /// The signature did not check with the public exponent (a fault, or a key whose
    /// numbers do not belong together): nothing is sent.
    SelfCheck,
}

impl fmt::Display for RsaKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RsaKeyError::Random(e) => write!(f, "no random bytes from the OS: {e}"),
            RsaKeyError::Size(bits) => write!(f, "{bits}-bit RSA keys are not made here"),
            RsaKeyError::NotAKey(why) => write!(f, "not a PKCS#1 RSA private key: {why}"),
            RsaKeyError::SelfCheck => f.write_str("the signature failed its own check"),
        }
    }
}

impl std::error::Error for RsaKeyError {}

/// A two-prime RSA private key with everything PKCS#1 stores.
#[derive(Clone)]
pub struct RsaKey {
    n: Limbs,
    e: Limbs,
    d: Limbs,
    p: Limbs,
    q: Limbs,
    dp: Limbs,
    dq: Limbs,
    qinv: Limbs,
    modulus: Modulus,
    mod_p: Modulus,
    mod_q: Modulus,
}

impl fmt::Debug for RsaKey {
    // Only the public half.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaKey({} bits)", bignum::bit_len(&self.n))
    }
}

impl Drop for RsaKey {
    fn drop(&mut self) {
        for secret in [
            &mut self.d,
            &mut self.p,
            &mut self.q,
            &mut self.dp,
            &mut self.dq,
            &mut self.qinv,
        ] {
            for limb in secret.iter_mut() {
                // SAFETY: `limb` is a valid, aligned, exclusive reference.
                unsafe { std::ptr::write_volatile(limb, 0) };
            }
            secret.clear();
        }
    }
}

/// Overwrites secret bytes (a volatile write, which the compiler may not drop as dead).
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, exclusive reference.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// Fills `buf` from the OS.
fn random(buf: &mut [u8]) -> Result<(), RsaKeyError> {
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, buf).map_err(RsaKeyError::Random)
}

/// The odd primes below 2,000, for trial division.
fn small_primes() -> Vec<u64> {
    let mut sieve = [true; 2000];
    let mut out = Vec::new();
    for i in 2..sieve.len() {
        if sieve[i] {
            if i > 2 {
                out.push(i as u64);
            }
            (i * i..sieve.len())
                .step_by(i)
                .for_each(|j| sieve[j] = false);
        }
    }
    out
}

/// `x^-1 mod m` for a prime `m` (Fermat), `x` not a multiple of it.
fn inverse_mod_small_prime(x: u64, m: u64) -> u64 {
    let (mut base, mut exp, mut acc) = (u128::from(x % m), m - 2, 1u128);
    while exp > 0 {
        if exp & 1 == 1 {
            acc = acc * base % u128::from(m);
        }
        base = base * base % u128::from(m);
        exp >>= 1;
    }
    acc as u64
}

/// `e^-1 mod m` for the prime public exponent and an `m` it does not divide: with
/// `k = -m^-1 mod e`, `k * m + 1` is a multiple of `e`, and `(k * m + 1) / e < m`.
fn inverse_of_exponent(m: &[u64]) -> Limbs {
    let r = bignum::rem_small(m, PUBLIC_EXPONENT);
    let k = PUBLIC_EXPONENT - inverse_mod_small_prime(r, PUBLIC_EXPONENT);
    let (x, rem) = bignum::div_small(&bignum::mul_small_add(m, k, 1), PUBLIC_EXPONENT);
    debug_assert_eq!(rem, 0);
    x
}

/// A random number in `[2, n - 2]`, for `n` above 4.
fn random_below(n: &[u64], bytes: &mut [u8]) -> Result<Limbs, RsaKeyError> {
    let bits = bignum::bit_len(n);
    let top = bignum::sub_small(n, 2).unwrap_or_default();
    loop {
        random(bytes)?;
        let excess = bytes.len() * 8 - bits;
        bytes[0] &= 0xff >> excess;
        let a = bignum::from_be_bytes(bytes);
        if bignum::cmp(&a, &[2]).is_ge() && bignum::cmp(&a, &top).is_le() {
            return Ok(a);
        }
    }
}

/// Miller–Rabin with `rounds` random bases: `false` means composite, `true` prime with an
/// error below `4^-rounds` (far below for random candidates). `n` is odd and above 4.
fn probably_prime(n: &[u64], rounds: usize) -> Result<bool, RsaKeyError> {
    let Some(modulus) = Modulus::new(n) else {
        return Ok(false);
    };
    let n_minus_1 = bignum::sub_small(n, 1).unwrap_or_default();
    let s = (0..).find(|&i| bignum::bit(&n_minus_1, i)).unwrap_or(0);
    let d = bignum::shr(&n_minus_1, s);
    let one = modulus.one();
    let minus_one = modulus.sub(&vec![0; modulus.limbs()], &one);
    let mut bytes = vec![0u8; bignum::bit_len(n).div_ceil(8)];
    'bases: for _ in 0..rounds {
        let a = random_below(n, &mut bytes)?;
        let a = modulus.to_mont(&a);
        let mut x = modulus.pow(&a, &d);
        if x == one || x == minus_one {
            continue;
        }
        for _ in 1..s {
            x = modulus.mul(&x, &x);
            if x == minus_one {
                continue 'bases;
            }
            if x == one {
                return Ok(false);
            }
        }
        return Ok(false);
    }
    Ok(true)
}

/// A random prime of exactly `bits` bits (a multiple of 64), its two top bits set, with
/// `p - 1` coprime to the public exponent.
fn random_prime(bits: usize, primes: &[u64]) -> Result<Limbs, RsaKeyError> {
    let mut bytes = vec![0u8; bits / 8];
    loop {
        random(&mut bytes)?;
        bytes[0] |= 0xc0;
        *bytes.last_mut().unwrap_or(&mut 0) |= 1;
        let candidate = bignum::from_be_bytes(&bytes);
        if primes
            .iter()
            .any(|&p| bignum::rem_small(&candidate, p) == 0)
            || bignum::rem_small(&candidate, PUBLIC_EXPONENT) == 1
        {
            continue;
        }
        if probably_prime(&candidate, MILLER_RABIN_ROUNDS)? {
            return Ok(candidate);
        }
    }
}

impl RsaKey {
    /// A new key of `bits` bits (a multiple of 128, at least 1024) with `e = 65537`.
    pub fn generate(bits: usize) -> Result<RsaKey, RsaKeyError> {
        if bits < 1024 || bits % 128 != 0 {
            return Err(RsaKeyError::Size(bits));
        }
        Self::generate_any_size(bits)
    }

    /// `generate` without the lower bound, for tests that need a key fast.
    pub(crate) fn generate_any_size(bits: usize) -> Result<RsaKey, RsaKeyError> {
        let primes = small_primes();
        let half = bits / 2;
        loop {
            let p = random_prime(half, &primes)?;
            let q = random_prime(half, &primes)?;
            // |p - q| above 2^(half - 100): the top 100 bits differ (FIPS 186-5 A.1.3).
            let gap = bignum::sub(&p, &q).or_else(|| bignum::sub(&q, &p));
            if gap.map_or(true, |g| bignum::bit_len(&g) <= half.saturating_sub(100)) {
                continue;
            }
            let (p, q) = if bignum::cmp(&p, &q).is_gt() {
                (p, q)
            } else {
                (q, p)
            };
            return Self::from_primes(p, q).ok_or(RsaKeyError::NotAKey("inconsistent primes"));
        }
    }

    /// The key of two primes `p > q` (so that `q < p` is already reduced for `qInv`).
    fn from_primes(p: Limbs, q: Limbs) -> Option<RsaKey> {
        let p1 = bignum::sub_small(&p, 1)?;
        let q1 = bignum::sub_small(&q, 1)?;
        let phi = bignum::mul(&p1, &q1);
        let d = inverse_of_exponent(&phi);
        let dp = inverse_of_exponent(&p1);
        let dq = inverse_of_exponent(&q1);
        // q^-1 mod p = q^(p-2) mod p (Fermat; p is prime).
        let mod_p = Modulus::new(&p)?;
        let qinv = mod_p.from_mont(&mod_p.pow(&mod_p.to_mont(&q), &bignum::sub_small(&p, 2)?));
        Self::from_parts(
            bignum::mul(&p, &q),
            vec![PUBLIC_EXPONENT],
            [d, p, q, dp, dq, qinv],
        )
    }

    /// The key of its PKCS#1 numbers: `n`, `e` and `[d, p, q, dP, dQ, qInv]`. `None` when
    /// `n` is not `p * q` of two odd numbers; whether the rest fits is `sign_md5`'s check.
    fn from_parts(n: Limbs, e: Limbs, secrets: [Limbs; 6]) -> Option<RsaKey> {
        let [d, p, q, dp, dq, qinv] = secrets;
        let modulus = Modulus::new(&n)?;
        let mod_p = Modulus::new(&p)?;
        let mod_q = Modulus::new(&q)?;
        if !bignum::cmp(&bignum::mul(&p, &q), &n).is_eq() {
            return None;
        }
        // Exponents as long as their moduli, so `pow`'s time does not tell their length.
        let fit = |mut x: Limbs, len: usize| {
            x.resize(x.len().max(len), 0);
            x
        };
        Some(RsaKey {
            n: modulus.n().to_vec(),
            e,
            d: fit(d, modulus.limbs()),
            dp: fit(dp, mod_p.limbs()),
            dq: fit(dq, mod_q.limbs()),
            p,
            q,
            qinv,
            modulus,
            mod_p,
            mod_q,
        })
    }

    /// The modulus's size in bytes: the length of every signature.
    fn size(&self) -> usize {
        bignum::bit_len(&self.n).div_ceil(8)
    }

    /// The PKCS#1 v1.5 encoded message of an MD5 digest, `EM = 00 01 FF… 00 DigestInfo
    /// digest` (RFC 8017 §9.2), as a number.
    fn md5_message(&self, digest: &[u8; 16]) -> Limbs {
        let k = self.size();
        let t_len = MD5_DIGEST_INFO.len() + digest.len();
        let mut em = vec![0xffu8; k];
        em[0] = 0;
        em[1] = 1;
        em[k - t_len - 1] = 0;
        em[k - t_len..k - digest.len()].copy_from_slice(&MD5_DIGEST_INFO);
        em[k - digest.len()..].copy_from_slice(digest);
        bignum::from_be_bytes(&em)
    }

    /// The PKCS#1 v1.5 signature of an MD5 digest: `S = EM^d mod n` (RFC 8017 §8.2.1).
    pub fn sign_md5(&self, digest: &[u8; 16]) -> Result<Vec<u8>, RsaKeyError> {
        let m = self.md5_message(digest);
        // CRT (RFC 8017 §5.1.2 2.b): s_p = m^dP mod p, s_q = m^dQ mod q,
        // h = qInv (s_p - s_q) mod p, s = s_q + q h.
        let (mp, mq) = (&self.mod_p, &self.mod_q);
        let sp = mp.pow(&mp.to_mont(&m), &self.dp);
        let sq = mq.from_mont(&mq.pow(&mq.to_mont(&m), &self.dq));
        let diff = mp.sub(&sp, &mp.to_mont(&sq));
        let h = mp.from_mont(&mp.mul(&diff, &mp.to_mont(&self.qinv)));
        let mut s = bignum::mul(&self.q, &h);
        s.resize(s.len().max(sq.len()) + 1, 0);
        let carry = bignum::add_assign(&mut s, &sq);
        debug_assert_eq!(carry, 0, "s_q + q h < n fits");
        // The check with e: s^e must give back EM (a fault in either half would otherwise
        // send a signature that factors n).
        let n = &self.modulus;
        let back = n.from_mont(&n.pow(&n.to_mont(&s), &self.e));
        if !bignum::cmp(&back, &m).is_eq() {
            return Err(RsaKeyError::SelfCheck);
        }
        bignum::to_be_bytes(&s, self.size()).ok_or(RsaKeyError::SelfCheck)
    }

    /// `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1 `RSAPrivateKey`, RFC 8017 A.1.2).
    pub fn to_pkcs1_pem(&self) -> String {
        let mut body = der_integer(&[0]);
        for x in [
            &self.n, &self.e, &self.d, &self.p, &self.q, &self.dp, &self.dq, &self.qinv,
        ] {
            body.extend(der_integer(x));
        }
        let mut der = der::tlv(0x30, &body);
        let pem = der::pem(PRIVATE_KEY_LABEL, &der);
        wipe(&mut der);
        wipe(&mut body);
        pem
    }

    /// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo with rsaEncryption, RFC 8017 A.1.1).
    pub fn public_key_pem(&self) -> String {
        let mut public = der_integer(&self.n);
        public.extend(der_integer(&self.e));
        let public = der::tlv(0x30, &public);
        let mut bits = vec![0u8];
        bits.extend(public);
        let mut spki = RSA_ENCRYPTION_ALGORITHM.to_vec();
        spki.extend(der::tlv(0x03, &bits));
        der::pem(PUBLIC_KEY_LABEL, &der::tlv(0x30, &spki))
    }

    /// Reads a PKCS#1 PEM private key (the reference's `pri-key` or one made here) and checks
    /// that its numbers belong together by signing once.
    pub fn from_pkcs1_pem(text: &str) -> Result<RsaKey, RsaKeyError> {
        let whole =
            der::pem_block(text, PRIVATE_KEY_LABEL).ok_or(RsaKeyError::NotAKey("no PEM block"))?;
        let (mut fields, after) =
            der::take(&whole, 0x30).ok_or(RsaKeyError::NotAKey("not a DER sequence"))?;
        if !after.is_empty() {
            return Err(RsaKeyError::NotAKey("bytes after the key"));
        }
        let mut next = || {
            let (x, rest) = take_integer(fields)
                .ok_or(RsaKeyError::NotAKey("a field is not a positive INTEGER"))?;
            fields = rest;
            Ok::<Limbs, RsaKeyError>(x)
        };
        if !bignum::is_zero(&next()?) {
            return Err(RsaKeyError::NotAKey("not a two-prime key (version 0)"));
        }
        let (n, e, d, p, q, dp, dq, qinv) = (
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
            next()?,
        );
        if bignum::bit_len(&n) < 512 || bignum::bit_len(&e) < 2 {
            return Err(RsaKeyError::NotAKey("modulus or exponent too small"));
        }
        if bignum::cmp(&d, &n).is_ge() {
            return Err(RsaKeyError::NotAKey(
                "private exponent not below the modulus",
            ));
        }
        let key = Self::from_parts(n, e, [d, p, q, dp, dq, qinv]).ok_or(RsaKeyError::NotAKey(
            "the modulus is not the product of its primes",
        ))?;
        // Signing uses the CRT numbers and checks them against e; `d` (which other tools
        // use) must give the same signature.
        let disagree = || RsaKeyError::NotAKey("its numbers do not belong together");
        let digest = [0; 16];
        let crt = bignum::from_be_bytes(&key.sign_md5(&digest).map_err(|_| disagree())?);
        let n = &key.modulus;
        let plain = n.from_mont(&n.pow(&n.to_mont(&key.md5_message(&digest)), &key.d));
        if !bignum::cmp(&plain, &crt).is_eq() {
            return Err(disagree());
        }
        Ok(key)
    }
}

/// A DER INTEGER of a non-negative number (minimal, a zero byte before a set top bit).
fn der_integer(x: &[u64]) -> Vec<u8> {
    let mut bytes = bignum::to_be_bytes_minimal(x);
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    der::tlv(0x02, &bytes)
}

/// The INTEGER at the front of `buf`, which must not be negative, and the rest.
fn take_integer(buf: &[u8]) -> Option<(Limbs, &[u8])> {
    let (bytes, rest) = der::take(buf, 0x02)?;
    if bytes.first().map_or(true, |&b| b & 0x80 != 0) {
        return None;
    }
    Some((bignum::from_be_bytes(bytes), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
    use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};

    fn digest(text: &str) -> [u8; 16] {
        Md5::digest(text.as_bytes()).into()
    }

    #[test]
    fn small_number_helpers() {
        assert_eq!(small_primes()[..5], [3, 5, 7, 11, 13]);
        assert_eq!(*small_primes().last().unwrap(), 1999);
        for x in [1u64, 2, 3, 12345, 65536] {
            let inv = inverse_mod_small_prime(x, PUBLIC_EXPONENT);
            assert_eq!(x * inv % PUBLIC_EXPONENT, 1, "{x}");
        }
        // e^-1 mod 100 = 73 (65537 * 73 = 4784201 = 1 mod 100).
        assert!(bignum::cmp(&inverse_of_exponent(&[100]), &[73]).is_eq());
        assert!(
            probably_prime(&[0xffff_ffff_ffff_ffc5], 8).unwrap(),
            "2^64 - 59"
        );
        assert!(!probably_prime(&[0xffff_ffff_ffff_ffc3], 8).unwrap());
        // A Carmichael number fools Fermat, not Miller–Rabin.
        assert!(!probably_prime(&[561], 8).unwrap());
        assert!(!probably_prime(&[3215031751], 8).unwrap());
    }

    #[test]
    fn a_generated_key_is_what_the_rsa_crate_reads_and_signs_alike() {
        let key = RsaKey::generate_any_size(768).unwrap();
        assert_eq!(bignum::bit_len(&key.n), 768);
        let pem = key.to_pkcs1_pem();
        assert!(
            pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
            "{pem}"
        );
        assert!(pem.lines().all(|l| l.len() <= 64));
        let theirs = rsa::RsaPrivateKey::from_pkcs1_pem(&pem).expect("rsa reads our PKCS#1");
        theirs
            .validate()
            .expect("the key's numbers agree (rsa::validate)");
        assert_eq!(theirs.primes().len(), 2);
        // The same PEM both ways, and the same public key.
        assert_eq!(*theirs.to_pkcs1_pem(LineEnding::LF).unwrap(), pem);
        let public = key.public_key_pem();
        assert_eq!(
            theirs
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
            public
        );
        let their_public = rsa::RsaPublicKey::from_public_key_pem(&public).unwrap();
        assert_eq!(their_public.e(), &rsa::BigUint::from(PUBLIC_EXPONENT));
        // PKCS#1 v1.5 is deterministic: the same bytes as rsa's signature, which verifies.
        for text in ["", "mi-1m-11700000000000req-1", "x".repeat(300).as_str()] {
            let d = digest(text);
            let ours = key.sign_md5(&d).unwrap();
            assert_eq!(ours.len(), 96);
            let scheme = rsa::Pkcs1v15Sign::new::<Md5>();
            assert_eq!(ours, theirs.sign(scheme.clone(), &d).unwrap(), "{text:?}");
            their_public.verify(scheme, &d, &ours).expect("verifies");
        }
    }

    #[test]
    fn a_key_made_by_the_rsa_crate_loads_and_signs_alike() {
        let mut rng = rand_core::OsRng;
        let theirs = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let pem = theirs.to_pkcs1_pem(LineEnding::CRLF).unwrap();
        let ours = RsaKey::from_pkcs1_pem(&pem).expect("loads");
        let d = digest("hello");
        assert_eq!(
            ours.sign_md5(&d).unwrap(),
            theirs.sign(rsa::Pkcs1v15Sign::new::<Md5>(), &d).unwrap()
        );
        let d = bignum::from_be_bytes(&theirs.d().to_bytes_be());
        assert!(bignum::cmp(&d, &ours.d).is_eq());
    }

    #[test]
    fn generate_refuses_sizes_it_does_not_make() {
        assert!(matches!(RsaKey::generate(512), Err(RsaKeyError::Size(512))));
        assert!(matches!(
            RsaKey::generate(2000),
            Err(RsaKeyError::Size(2000))
        ));
    }

    #[test]
    fn broken_keys_are_refused_with_a_reason() {
        let key = RsaKey::generate_any_size(640).unwrap();
        let pem = key.to_pkcs1_pem();
        let reason = |text: &str| match RsaKey::from_pkcs1_pem(text) {
            Err(RsaKeyError::NotAKey(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(""), "no PEM block");
        assert_eq!(
            reason(&pem.replace("RSA PRIVATE", "PRIVATE")),
            "no PEM block"
        );
        assert_eq!(
            reason("-----BEGIN RSA PRIVATE KEY-----\nAgEA\n-----END RSA PRIVATE KEY-----"),
            "not a DER sequence"
        );
        // The self-check catches numbers that do not belong together: another d, another n.
        let mut bad = key.clone();
        bad.d = bignum::add_small(&key.d, 2);
        assert_eq!(
            reason(&bad.to_pkcs1_pem()),
            "its numbers do not belong together"
        );
        let mut other = key.clone();
        other.n = bignum::add_small(&key.n, 2);
        other.modulus = Modulus::new(&other.n).unwrap();
        assert_eq!(
            reason(&other.to_pkcs1_pem()),
            "the modulus is not the product of its primes"
        );
        let mut crt = key.clone();
        crt.dp = bignum::add_small(&key.dp, 2);
        assert_eq!(
            reason(&crt.to_pkcs1_pem()),
            "its numbers do not belong together"
        );
        // Trailing bytes after the sequence.
        let der = der::pem_block(&pem, PRIVATE_KEY_LABEL).unwrap();
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(
            reason(&der::pem(PRIVATE_KEY_LABEL, &longer)),
            "bytes after the key"
        );
        // A truncated sequence.
        assert_eq!(
            reason(&der::pem(PRIVATE_KEY_LABEL, &der[..der.len() - 1])),
            "not a DER sequence"
        );
        assert!(
            format!("{key:?}").contains("640 bits"),
            "no secret in Debug"
        );
    }

    #[test]
    fn der_integers() {
        assert_eq!(der_integer(&[0]), [0x02, 1, 0]);
        assert_eq!(der_integer(&[0x80]), [0x02, 2, 0, 0x80]);
        assert_eq!(
            take_integer(&[0x02, 1, 0x7f, 9]),
            Some((vec![0x7f], &[9u8][..]))
        );
        assert_eq!(take_integer(&[0x02, 1, 0x80]), None, "negative");
        assert_eq!(take_integer(&[0x02, 0]), None, "empty");
        assert_eq!(take_integer(&[0x04, 1, 1]), None, "not an INTEGER");
    }
}
