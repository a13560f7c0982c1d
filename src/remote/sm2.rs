//! SM2 signature verification (GB/T 32918.2 §7, the `SM3WithSM2` task signatures of spec §7)
//! on the curve sm2p256v1, with `bignum` for the field and SM3 from `hash`.
//!
//! Only verification, whose inputs (the key, the message, the signature) are all public, so
//! the point arithmetic is plain variable-time code: Jacobian coordinates with `a = -3`, and
//! `[s]G + [t]P` in one pass over the bits (Shamir's trick). The public key is read from a
//! SubjectPublicKeyInfo (`id-ecPublicKey` with the `sm2p256v1` curve, an uncompressed point:
//! what OpenSSL and the reference's `tjfoc/gmsm` write) and must lie on the curve.
//!
//! The RustCrypto `sm2` crate did this before, with its elliptic-curve, bignum and DER/PEM
//! stack; that is now the tests' oracle.

use crate::remote::hash::Sm3;

use crate::remote::bignum::{self, Limbs, Modulus};

/// The curve's numbers (GB/T 32918.5), big-endian hex.
const P: &str = "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF";
const A: &str = "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC";
const B: &str = "28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93";
const N: &str = "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123";
const GX: &str = "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7";
const GY: &str = "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0";

/// `AlgorithmIdentifier { id-ecPublicKey, sm2p256v1 }` (1.2.840.10045.2.1, 1.2.156.10197.1.301).
const SM2_ALGORITHM: [u8; 21] = [
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x81, 0x1c,
    0xcf, 0x55, 0x01, 0x82, 0x2d,
];

fn hex32(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    out
}

/// A point in Jacobian coordinates `(X, Y, Z)`, field values in Montgomery form; `Z = 0` is
/// the point at infinity.
#[derive(Clone, Debug)]
struct Point {
    x: Limbs,
    y: Limbs,
    z: Limbs,
}

/// The curve: its field, its order, and `G`.
#[derive(Clone)]
struct Curve {
    field: Modulus,
    order: Modulus,
    g: Point,
}

impl Curve {
    fn new() -> Curve {
        let field = Modulus::new(&bignum::from_be_bytes(&hex32(P))).expect("odd prime p");
        let order = Modulus::new(&bignum::from_be_bytes(&hex32(N))).expect("odd prime n");
        let g = Point {
            x: field.to_mont(&bignum::from_be_bytes(&hex32(GX))),
            y: field.to_mont(&bignum::from_be_bytes(&hex32(GY))),
            z: field.one(),
        };
        Curve { field, order, g }
    }

    fn is_infinity(&self, p: &Point) -> bool {
        bignum::is_zero(&p.z)
    }

    fn infinity(&self) -> Point {
        let zero = vec![0; self.field.limbs()];
        Point {
            x: self.field.one(),
            y: self.field.one(),
            z: zero,
        }
    }

    /// `y^2 = x^3 + a x + b` for affine `x, y` in Montgomery form.
    fn on_curve(&self, x: &[u64], y: &[u64]) -> bool {
        let f = &self.field;
        let a = f.to_mont(&bignum::from_be_bytes(&hex32(A)));
        let b = f.to_mont(&bignum::from_be_bytes(&hex32(B)));
        let x3 = f.mul(&f.mul(x, x), x);
        let rhs = f.add(&f.add(&x3, &f.mul(&a, x)), &b);
        f.mul(y, y) == rhs
    }

    /// `2P` (dbl-2001-b, for `a = -3`).
    fn double(&self, p: &Point) -> Point {
        if self.is_infinity(p) || bignum::is_zero(&p.y) {
            return self.infinity();
        }
        let f = &self.field;
        let delta = f.mul(&p.z, &p.z);
        let gamma = f.mul(&p.y, &p.y);
        let beta = f.mul(&p.x, &gamma);
        let t = f.mul(&f.sub(&p.x, &delta), &f.add(&p.x, &delta));
        let alpha = f.add(&f.add(&t, &t), &t);
        let beta2 = f.add(&beta, &beta);
        let beta4 = f.add(&beta2, &beta2);
        let beta8 = f.add(&beta4, &beta4);
        let x3 = f.sub(&f.mul(&alpha, &alpha), &beta8);
        let yz = f.add(&p.y, &p.z);
        let z3 = f.sub(&f.sub(&f.mul(&yz, &yz), &gamma), &delta);
        let gamma2 = f.mul(&gamma, &gamma);
        let g2 = f.add(&gamma2, &gamma2);
        let g4 = f.add(&g2, &g2);
        let g8 = f.add(&g4, &g4);
        let y3 = f.sub(&f.mul(&alpha, &f.sub(&beta4, &x3)), &g8);
        Point {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// `P + Q` (add-1998-cmo-2), any two points.
    fn add(&self, p: &Point, q: &Point) -> Point {
        if self.is_infinity(p) {
            return q.clone();
        }
        if self.is_infinity(q) {
            return p.clone();
        }
        let f = &self.field;
        let z1z1 = f.mul(&p.z, &p.z);
        let z2z2 = f.mul(&q.z, &q.z);
        let u1 = f.mul(&p.x, &z2z2);
        let u2 = f.mul(&q.x, &z1z1);
        let s1 = f.mul(&f.mul(&p.y, &q.z), &z2z2);
        let s2 = f.mul(&f.mul(&q.y, &p.z), &z1z1);
        let h = f.sub(&u2, &u1);
        let r = f.sub(&s2, &s1);
        if bignum::is_zero(&h) {
            return if bignum::is_zero(&r) {
                self.double(p)
            } else {
                self.infinity()
            };
        }
        let hh = f.mul(&h, &h);
        let hhh = f.mul(&hh, &h);
        let v = f.mul(&u1, &hh);
        let x3 = f.sub(&f.sub(&f.mul(&r, &r), &hhh), &f.add(&v, &v));
        let y3 = f.sub(&f.mul(&r, &f.sub(&v, &x3)), &f.mul(&s1, &hhh));
        let z3 = f.mul(&f.mul(&p.z, &q.z), &h);
        Point {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// `[a]G + [b]Q`, one doubling per bit.
    fn twin_mul(&self, a: &[u64], b: &[u64], q: &Point) -> Point {
        let both = self.add(&self.g, q);
        let mut acc = self.infinity();
        for i in (0..256).rev() {
            acc = self.double(&acc);
            match (bignum::bit(a, i), bignum::bit(b, i)) {
                (true, true) => acc = self.add(&acc, &both),
                (true, false) => acc = self.add(&acc, &self.g),
                (false, true) => acc = self.add(&acc, q),
                (false, false) => {}
            }
        }
        acc
    }

    /// The affine `x` of a finite point, as a plain number.
    fn affine_x(&self, p: &Point) -> Limbs {
        let f = &self.field;
        let p_minus_2 = bignum::sub_small(f.n(), 2).unwrap_or_default();
        let z_inv = f.pow(&p.z, &p_minus_2);
        f.from_mont(&f.mul(&p.x, &f.mul(&z_inv, &z_inv)))
    }
}

/// An SM2 public key: a point on sm2p256v1 other than infinity, with the curve arithmetic
/// it is verified with (made once, when the key is read).
#[derive(Clone)]
pub struct Sm2PublicKey {
    /// The uncompressed point's 64 bytes `x || y`, as `Z_A` hashes them.
    xy: [u8; 64],
    curve: Curve,
    point: Point,
}

impl std::fmt::Debug for Sm2PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm2PublicKey")
    }
}

impl Sm2PublicKey {
    /// The key of a DER SubjectPublicKeyInfo; `None` unless it is exactly `id-ecPublicKey`
    /// on `sm2p256v1` with an uncompressed point on the curve.
    pub fn from_spki_der(der: &[u8]) -> Option<Sm2PublicKey> {
        // SEQUENCE (0x30 0x59) { algorithm (21 bytes), BIT STRING (0x03 0x42 0x00 0x04 x y) }.
        let rest = der.strip_prefix(&[0x30, 0x59])?;
        let rest = rest.strip_prefix(&SM2_ALGORITHM)?;
        let point = rest.strip_prefix(&[0x03, 0x42, 0x00, 0x04])?;
        let xy: [u8; 64] = point.try_into().ok()?;
        let curve = Curve::new();
        let point = curve_point(&curve, &xy)?;
        Some(Sm2PublicKey { xy, curve, point })
    }

    /// `Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA)` (GB/T 32918.2 §5.5).
    fn z(&self, uid: &[u8]) -> Option<[u8; 32]> {
        let bits = u16::try_from(uid.len().checked_mul(8)?).ok()?;
        let mut h = Sm3::new();
        h.update(&bits.to_be_bytes());
        h.update(uid);
        for c in [A, B, GX, GY] {
            h.update(&hex32(c));
        }
        h.update(&self.xy);
        Some(h.finish())
    }

    /// Whether `(r, s)` (big-endian, 32 bytes each) signs `msg` under this key and the
    /// distinguishing identifier `uid` (GB/T 32918.2 §7.1, B1–B7).
    pub fn verify(&self, uid: &[u8], msg: &[u8], r: &[u8; 32], s: &[u8; 32]) -> bool {
        let (curve, q) = (&self.curve, &self.point);
        let order = &curve.order;
        let (r, s) = (bignum::from_be_bytes(r), bignum::from_be_bytes(s));
        let in_range = |v: &Limbs| !bignum::is_zero(v) && bignum::cmp(v, order.n()).is_lt();
        if !in_range(&r) || !in_range(&s) {
            return false;
        }
        let Some(z) = self.z(uid) else {
            return false;
        };
        let mut h = Sm3::new();
        h.update(&z);
        h.update(msg);
        let e = h.finish();
        let e = bignum::from_be_bytes(&e);
        // Plain numbers below n add modulo n without Montgomery form.
        let t = order.add(&r, &s);
        if bignum::is_zero(&t) {
            return false;
        }
        let sum = curve.twin_mul(&s, &t, q);
        if curve.is_infinity(&sum) {
            return false;
        }
        let x1 = curve.affine_x(&sum);
        // e and x1 are below 2^256 < 2n: one subtraction reduces them.
        let reduce = |v: Limbs| bignum::sub(&v, order.n()).unwrap_or(v);
        let big_r = order.add(&reduce(e), &reduce(x1));
        bignum::cmp(&big_r, &r).is_eq()
    }
}

/// The affine point `x || y` in Jacobian form, if its coordinates are field elements on the
/// curve.
fn curve_point(curve: &Curve, xy: &[u8; 64]) -> Option<Point> {
    let f = &curve.field;
    let x = bignum::from_be_bytes(&xy[..32]);
    let y = bignum::from_be_bytes(&xy[32..]);
    if bignum::cmp(&x, f.n()).is_ge() || bignum::cmp(&y, f.n()).is_ge() {
        return None;
    }
    let (x, y) = (f.to_mont(&x), f.to_mont(&y));
    curve.on_curve(&x, &y).then(|| Point { x, y, z: f.one() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm2::elliptic_curve::sec1::ToEncodedPoint;
    use sm2::pkcs8::EncodePublicKey;

    const UID: &[u8] = b"1234567812345678";

    /// Marsaglia's xorshift64: deterministic messages.
    fn messages() -> impl Iterator<Item = Vec<u8>> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..12).map(move |i| {
            (0..i * 13)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
    }

    fn split(sig: &sm2::dsa::Signature) -> ([u8; 32], [u8; 32]) {
        let bytes = sig.to_bytes();
        (
            bytes[..32].try_into().unwrap(),
            bytes[32..].try_into().unwrap(),
        )
    }

    #[test]
    fn the_generator_is_on_the_curve_and_has_order_n() {
        let curve = Curve::new();
        assert!(curve.on_curve(&curve.g.x, &curve.g.y));
        // [n]G = infinity, [n - 1]G = -G.
        let zero = vec![0u64; 4];
        let n = curve.order.n().to_vec();
        assert!(curve.is_infinity(&curve.twin_mul(&n, &zero, &curve.g)));
        let n1 = bignum::sub_small(&n, 1).unwrap();
        let minus_g = curve.twin_mul(&n1, &zero, &curve.g);
        assert_eq!(
            curve.affine_x(&minus_g),
            curve.field.from_mont(&curve.g.x),
            "same x"
        );
        // [a]G + [b]G = [a + b]G (twin_mul with Q = G exercises the doubling case of add).
        let two = curve.twin_mul(&[1], &[1], &curve.g);
        let direct = curve.twin_mul(&[2], &zero, &curve.g);
        assert_eq!(curve.affine_x(&two), curve.affine_x(&direct));
    }

    #[test]
    fn signatures_of_the_sm2_crate_verify_and_altered_ones_do_not() {
        use sm2::dsa::signature::Signer;
        let mut rng = rand_core::OsRng;
        for round in 0..4 {
            let secret = sm2::SecretKey::random(&mut rng);
            let signer = sm2::dsa::SigningKey::new("1234567812345678", &secret).unwrap();
            let der = secret.public_key().to_public_key_der().unwrap();
            let key = Sm2PublicKey::from_spki_der(der.as_bytes()).expect("our parser reads it");
            assert_eq!(
                key.xy[..],
                secret.public_key().to_encoded_point(false).as_bytes()[1..]
            );
            for msg in messages().skip(round) {
                let (r, s) = split(&signer.sign(&msg));
                assert!(key.verify(UID, &msg, &r, &s), "{msg:?}");
                let mut other = msg.clone();
                other.push(0);
                assert!(!key.verify(UID, &other, &r, &s), "another message");
                assert!(
                    !key.verify(b"1234567812345679", &msg, &r, &s),
                    "another uid"
                );
                let mut r2 = r;
                r2[31] ^= 1;
                assert!(!key.verify(UID, &msg, &r2, &s), "another r");
                assert!(!key.verify(UID, &msg, &r, &r), "s = r");
            }
        }
    }

    #[test]
    fn out_of_range_signatures_are_refused() {
        let secret = sm2::SecretKey::random(&mut rand_core::OsRng);
        let der = secret.public_key().to_public_key_der().unwrap();
        let key = Sm2PublicKey::from_spki_der(der.as_bytes()).unwrap();
        let n = hex32(N);
        let zero = [0u8; 32];
        let mut one = [0u8; 32];
        one[31] = 1;
        for (r, s) in [
            (zero, one),
            (one, zero),
            (n, one),
            (one, n),
            ([0xff; 32], one),
        ] {
            assert!(!key.verify(UID, b"m", &r, &s));
        }
    }

    #[test]
    fn public_keys_must_be_sm2_points_on_the_curve() {
        let secret = sm2::SecretKey::random(&mut rand_core::OsRng);
        let der = secret.public_key().to_public_key_der().unwrap();
        let good = der.as_bytes().to_vec();
        assert!(Sm2PublicKey::from_spki_der(&good).is_some());
        let mut off_curve = good.clone();
        *off_curve.last_mut().unwrap() ^= 1;
        assert!(
            Sm2PublicKey::from_spki_der(&off_curve).is_none(),
            "off the curve"
        );
        let mut p256 = good.clone();
        p256[14..23].copy_from_slice(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x00]);
        assert!(
            Sm2PublicKey::from_spki_der(&p256).is_none(),
            "another curve"
        );
        let mut compressed = good.clone();
        compressed[26] = 0x02;
        assert!(
            Sm2PublicKey::from_spki_der(&compressed).is_none(),
            "not uncompressed"
        );
        assert!(Sm2PublicKey::from_spki_der(&good[..good.len() - 1]).is_none());
        let mut longer = good.clone();
        longer.push(0);
        assert!(Sm2PublicKey::from_spki_der(&longer).is_none());
        // x = p: not a field element.
        let mut big_x = good.clone();
        big_x[27..59].copy_from_slice(&hex32(P));
        assert!(Sm2PublicKey::from_spki_der(&big_x).is_none());
        assert!(Sm2PublicKey::from_spki_der(&[]).is_none());
    }
}
