//! Unsigned big integers as little-endian `u64` limbs, and arithmetic modulo an odd modulus
//! in Montgomery form: what the hybrid identity's RSA key (`rsa_key`: generation, signing)
//! and SM2 verification (`sm2`) need, and nothing more.
//!
//! `Modulus::{mul, add, sub, pow}` take time that depends on the operands' lengths only,
//! never on their values (no branch and no memory index on a value), because `pow` is what
//! raises a message to the RSA private exponent. The free functions are plain schoolbook
//! arithmetic on public values (key generation's candidates, the modulus itself).

use std::cmp::Ordering;

/// A number: limbs, least significant first. Lengths may differ; high zero limbs are allowed.
pub type Limbs = Vec<u64>;

/// `t + a * b + c` as (low, high): cannot overflow (at most `2^128 - 1`).
#[inline]
fn mac(t: u64, a: u64, b: u64, c: u64) -> (u64, u64) {
    let v = u128::from(t) + u128::from(a) * u128::from(b) + u128::from(c);
    (v as u64, (v >> 64) as u64)
}

/// The number `bytes` spells, big-endian.
pub fn from_be_bytes(bytes: &[u8]) -> Limbs {
    let mut limbs = vec![0u64; bytes.len().div_ceil(8).max(1)];
    for (i, &b) in bytes.iter().rev().enumerate() {
        limbs[i / 8] |= u64::from(b) << (8 * (i % 8));
    }
    limbs
}

/// `a` big-endian in exactly `len` bytes; `None` when it does not fit.
pub fn to_be_bytes(a: &[u64], len: usize) -> Option<Vec<u8>> {
    if bit_len(a) > len * 8 {
        return None;
    }
    let mut out = vec![0u8; len];
    for (i, byte) in out.iter_mut().rev().enumerate() {
        let limb = a.get(i / 8).copied().unwrap_or(0);
        *byte = (limb >> (8 * (i % 8))) as u8;
    }
    Some(out)
}

/// `a` big-endian without leading zero bytes (one zero byte for zero).
pub fn to_be_bytes_minimal(a: &[u64]) -> Vec<u8> {
    let len = bit_len(a).div_ceil(8).max(1);
    to_be_bytes(a, len).unwrap_or_default()
}

/// The position of the highest set bit plus one (0 for zero).
pub fn bit_len(a: &[u64]) -> usize {
    match a.iter().rposition(|&l| l != 0) {
        Some(i) => i * 64 + 64 - a[i].leading_zeros() as usize,
        None => 0,
    }
}

pub fn is_zero(a: &[u64]) -> bool {
    a.iter().all(|&l| l == 0)
}

/// Bit `i` of `a`.
pub fn bit(a: &[u64], i: usize) -> bool {
    a.get(i / 64).is_some_and(|l| (l >> (i % 64)) & 1 == 1)
}

/// Compares two numbers of any lengths.
pub fn cmp(a: &[u64], b: &[u64]) -> Ordering {
    let len = a.len().max(b.len());
    for i in (0..len).rev() {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x.cmp(&y);
        }
    }
    Ordering::Equal
}

/// `a - b`; `None` when `b > a`. The result has `a`'s length.
pub fn sub(a: &[u64], b: &[u64]) -> Option<Limbs> {
    let mut out = a.to_vec();
    let borrow = sub_assign(&mut out, b);
    (borrow == 0 && b.iter().skip(a.len()).all(|&l| l == 0)).then_some(out)
}

/// `a -= b` over `a`'s length (`b` no longer than `a`'s significant part matters); the borrow.
fn sub_assign(a: &mut [u64], b: &[u64]) -> u64 {
    let mut borrow = 0u64;
    for (i, x) in a.iter_mut().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        let (d1, b1) = x.overflowing_sub(y);
        let (d2, b2) = d1.overflowing_sub(borrow);
        *x = d2;
        borrow = u64::from(b1 | b2);
    }
    borrow
}

/// `a += b` over `a`'s length; the carry.
pub fn add_assign(a: &mut [u64], b: &[u64]) -> u64 {
    let mut carry = 0u64;
    for (i, x) in a.iter_mut().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        let (s1, c1) = x.overflowing_add(y);
        let (s2, c2) = s1.overflowing_add(carry);
        *x = s2;
        carry = u64::from(c1 | c2);
    }
    carry
}

/// `a * b`.
pub fn mul(a: &[u64], b: &[u64]) -> Limbs {
    let mut out = vec![0u64; a.len() + b.len()];
    for (i, &x) in a.iter().enumerate() {
        let mut carry = 0u64;
        for (j, &y) in b.iter().enumerate() {
            let (lo, hi) = mac(out[i + j], x, y, carry);
            out[i + j] = lo;
            carry = hi;
        }
        out[i + b.len()] = carry;
    }
    out
}

/// `a * m + c`.
pub fn mul_small_add(a: &[u64], m: u64, c: u64) -> Limbs {
    let mut out = Vec::with_capacity(a.len() + 1);
    let mut carry = c;
    for &x in a {
        let (lo, hi) = mac(0, x, m, carry);
        out.push(lo);
        carry = hi;
    }
    out.push(carry);
    out
}

/// `(a / d, a % d)` for `d > 0`.
pub fn div_small(a: &[u64], d: u64) -> (Limbs, u64) {
    let mut q = vec![0u64; a.len()];
    let mut r = 0u64;
    for i in (0..a.len()).rev() {
        let v = (u128::from(r) << 64) | u128::from(a[i]);
        q[i] = (v / u128::from(d)) as u64;
        r = (v % u128::from(d)) as u64;
    }
    (q, r)
}

/// `a % d` for `d > 0`.
pub fn rem_small(a: &[u64], d: u64) -> u64 {
    a.iter().rev().fold(0u64, |r, &l| {
        (((u128::from(r) << 64) | u128::from(l)) % u128::from(d)) as u64
    })
}

/// `a` with `x` added at limb 0, grown by a limb if it carries out.
pub fn add_small(a: &[u64], x: u64) -> Limbs {
    let mut out = a.to_vec();
    if add_assign(&mut out, &[x]) != 0 {
        out.push(1);
    }
    out
}

/// `a` with `x` subtracted at limb 0; `None` when `x > a`.
pub fn sub_small(a: &[u64], x: u64) -> Option<Limbs> {
    sub(a, &[x])
}

/// `a` shifted right by `k` bits.
pub fn shr(a: &[u64], k: usize) -> Limbs {
    let (limbs, bits) = (k / 64, k % 64);
    let mut out = vec![0u64; a.len().saturating_sub(limbs).max(1)];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = a.get(i + limbs).copied().unwrap_or(0);
        let hi = a.get(i + limbs + 1).copied().unwrap_or(0);
        *o = if bits == 0 {
            lo
        } else {
            (lo >> bits) | (hi << (64 - bits))
        };
    }
    out
}

/// All ones when `bit` is 1, zero when it is 0.
#[inline]
fn mask(bit: u64) -> u64 {
    0u64.wrapping_sub(bit & 1)
}

/// `out = if choose { a } else { b }`, limb by limb, without a branch on `choose` (a mask).
#[inline]
fn select_into(out: &mut [u64], m: u64, a: &[u64], b: &[u64]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = (a[i] & m) | (b[i] & !m);
    }
}

/// An odd modulus `n > 1` and what Montgomery arithmetic modulo it needs. Values "in
/// Montgomery form" are `x * R mod n` with `R = 2^(64 * limbs)`, always fully reduced (`< n`)
/// and exactly `limbs` long, so two equal values have equal limbs.
#[derive(Clone, Debug)]
pub struct Modulus {
    n: Limbs,
    /// `-n^-1 mod 2^64`.
    n0: u64,
    /// `R^2 mod n`.
    rr: Limbs,
}

impl Modulus {
    /// `None` when `n` is even or below 3.
    pub fn new(n: &[u64]) -> Option<Modulus> {
        let len = n.iter().rposition(|&l| l != 0)? + 1;
        let n = n[..len].to_vec();
        if n[0] & 1 == 0 || (len == 1 && n[0] < 3) {
            return None;
        }
        // Newton's iteration for n[0]^-1 mod 2^64: each step doubles the correct low bits,
        // from the 3 that `x = n[0]` has (n * n = 1 mod 8 for odd n).
        let mut inv = n[0];
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n[0].wrapping_mul(inv)));
        }
        // R^2 mod n by doubling 1 (2 * 64 * len) times, reducing each time; `n` is public.
        let mut r = vec![0u64; len];
        r[0] = 1;
        for _ in 0..2 * 64 * len {
            let twice = r.clone();
            let carry = add_assign(&mut r, &twice);
            if carry != 0 || cmp(&r, &n) != Ordering::Less {
                sub_assign(&mut r, &n);
            }
        }
        Some(Modulus {
            n,
            n0: inv.wrapping_neg(),
            rr: r,
        })
    }

    /// The modulus.
    pub fn n(&self) -> &[u64] {
        &self.n
    }

    /// Limbs of every value in Montgomery form.
    pub fn limbs(&self) -> usize {
        self.n.len()
    }

    /// `a mod n` in Montgomery form (`a * R mod n`), for `a` of any length: from the top,
    /// `limbs`-long chunks `c` fold in as `acc = acc * R + c`. `mul` reduces a product of a
    /// value below `R` (a chunk) and one below `n` (`R^2 mod n`) fully, so no chunk needs to
    /// be below `n` first.
    pub fn to_mont(&self, a: &[u64]) -> Limbs {
        let k = self.limbs();
        let mut acc = vec![0u64; k];
        let chunks = a.len().div_ceil(k);
        for i in (0..chunks).rev() {
            let mut chunk = a[i * k..a.len().min((i + 1) * k)].to_vec();
            chunk.resize(k, 0);
            let shifted = self.mul(&acc, &self.rr);
            acc = self.add(&shifted, &self.mul(&chunk, &self.rr));
        }
        acc
    }

    /// The plain value of `a` (in Montgomery form).
    pub fn from_mont(&self, a: &[u64]) -> Limbs {
        let mut one = vec![0u64; self.limbs()];
        one[0] = 1;
        self.mul(a, &one)
    }

    /// `R mod n`: one, in Montgomery form.
    pub fn one(&self) -> Limbs {
        let mut one = vec![0u64; self.limbs()];
        one[0] = 1;
        self.mul(&one, &self.rr)
    }

    /// `a * b * R^-1 mod n` for `a, b < n` (coarsely integrated Montgomery multiplication,
    /// then one subtraction chosen by a mask).
    pub fn mul(&self, a: &[u64], b: &[u64]) -> Limbs {
        let k = self.limbs();
        let n = &self.n;
        let mut t = vec![0u64; k + 2];
        for &ai in &a[..k] {
            let mut c = 0u64;
            for j in 0..k {
                (t[j], c) = mac(t[j], ai, b[j], c);
            }
            let (s, carry) = t[k].overflowing_add(c);
            t[k] = s;
            t[k + 1] = u64::from(carry);
            let m = t[0].wrapping_mul(self.n0);
            let (_, mut c) = mac(t[0], m, n[0], 0);
            for j in 1..k {
                (t[j - 1], c) = mac(t[j], m, n[j], c);
            }
            let (s, carry) = t[k].overflowing_add(c);
            t[k - 1] = s;
            t[k] = t[k + 1] + u64::from(carry);
        }
        // t < 2n: subtract n unless that borrows (and t did not carry out).
        let mut d = t[..k].to_vec();
        let borrow = sub_assign(&mut d, n);
        let mut out = vec![0u64; k];
        select_into(&mut out, mask(t[k] | (borrow ^ 1)), &d, &t[..k]);
        out
    }

    /// `a + b mod n` for `a, b < n`.
    pub fn add(&self, a: &[u64], b: &[u64]) -> Limbs {
        let k = self.limbs();
        let mut s = a[..k].to_vec();
        let carry = add_assign(&mut s, &b[..k]);
        let mut d = s.clone();
        let borrow = sub_assign(&mut d, &self.n);
        let mut out = vec![0u64; k];
        select_into(&mut out, mask(carry | (borrow ^ 1)), &d, &s);
        out
    }

    /// `a - b mod n` for `a, b < n`.
    pub fn sub(&self, a: &[u64], b: &[u64]) -> Limbs {
        let k = self.limbs();
        let mut d = a[..k].to_vec();
        let borrow = sub_assign(&mut d, &b[..k]);
        let mut e = d.clone();
        add_assign(&mut e, &self.n);
        let mut out = vec![0u64; k];
        select_into(&mut out, mask(borrow), &e, &d);
        out
    }

    /// `base^exp` (both in and out in Montgomery form), with 4-bit windows over every limb
    /// of `exp`: the same squarings and multiplications whatever the exponent's value, and
    /// each window's table entry read by scanning all sixteen under a mask.
    pub fn pow(&self, base: &[u64], exp: &[u64]) -> Limbs {
        let k = self.limbs();
        let mut table = Vec::with_capacity(16);
        table.push(self.one());
        table.push(base[..k].to_vec());
        for i in 2..16 {
            let next = self.mul(&table[i - 1], base);
            table.push(next);
        }
        let mut acc = self.one();
        let mut entry = vec![0u64; k];
        for window in (0..exp.len() * 16).rev() {
            for _ in 0..4 {
                acc = self.mul(&acc, &acc);
            }
            let w = (exp[window / 16] >> (4 * (window % 16))) & 0xf;
            entry.iter_mut().for_each(|l| *l = 0);
            for (i, candidate) in table.iter().enumerate() {
                // All ones exactly when i == w, without comparing with a branch.
                let m = mask(((i as u64 ^ w).wrapping_sub(1) >> 63) & 1);
                for (e, c) in entry.iter_mut().zip(candidate) {
                    *e |= c & m;
                }
            }
            acc = self.mul(&acc, &entry);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marsaglia's xorshift64: deterministic test numbers.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn limbs(&mut self, n: usize) -> Limbs {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn big(a: &[u64]) -> rsa::BigUint {
        rsa::BigUint::from_bytes_be(&to_be_bytes_minimal(a))
    }

    fn limbs_of(b: &rsa::BigUint) -> Limbs {
        from_be_bytes(&b.to_bytes_be())
    }

    #[test]
    fn bytes_round_trip_and_bit_len() {
        let a = from_be_bytes(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09]);
        assert_eq!(a, vec![0x0203_0405_0607_0809, 0x01]);
        assert_eq!(bit_len(&a), 65);
        assert_eq!(to_be_bytes(&a, 10).unwrap(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(to_be_bytes(&a, 8), None);
        assert_eq!(to_be_bytes_minimal(&a), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(to_be_bytes_minimal(&[0, 0]), [0]);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert!(bit(&a, 64) && !bit(&a, 63) && bit(&a, 0) && !bit(&a, 1000));
    }

    #[test]
    fn schoolbook_arithmetic_matches_a_reference_bignum() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..200 {
            let a = rng.limbs(1 + round % 5);
            let b = rng.limbs(1 + round % 3);
            let d = rng.next() | 1;
            assert_eq!(big(&mul(&a, &b)), big(&a) * big(&b));
            assert_eq!(big(&mul_small_add(&a, d, 7)), big(&a) * d + 7u64);
            let (q, r) = div_small(&a, d);
            assert_eq!((big(&q), r), (big(&a) / d, rem_small(&a, d)));
            assert_eq!(big(&q) * d + r, big(&a));
            assert_eq!(big(&add_small(&a, u64::MAX)), big(&a) + u64::MAX);
            assert_eq!(big(&shr(&a, round % 130)), big(&a) >> (round % 130));
            match sub(&a, &b) {
                Some(diff) => assert_eq!(big(&diff) + big(&b), big(&a)),
                None => assert!(big(&b) > big(&a)),
            }
            assert_eq!(cmp(&a, &b), big(&a).cmp(&big(&b)));
        }
        assert_eq!(sub_small(&[5], 6), None);
        assert_eq!(add_small(&[u64::MAX], 1), vec![0, 1]);
    }

    #[test]
    fn modulus_refuses_even_and_tiny_values() {
        assert!(Modulus::new(&[4]).is_none());
        assert!(Modulus::new(&[1]).is_none());
        assert!(Modulus::new(&[0, 0]).is_none());
        assert!(Modulus::new(&[3]).is_some());
        let m = Modulus::new(&[7, 0, 0]).unwrap();
        assert_eq!(m.limbs(), 1, "high zero limbs are dropped");
        // 7 + 8 R + 9 R^2 with R = 2^64 = 2 (mod 7).
        assert_eq!(
            m.from_mont(&m.to_mont(&[7, 8, 9])),
            vec![(7 + 8 * 2 + 9 * 4) % 7]
        );
    }

    #[test]
    fn montgomery_arithmetic_matches_a_reference_bignum() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for limbs in [1usize, 2, 4, 5, 16] {
            for _ in 0..6 {
                let mut n = rng.limbs(limbs);
                n[0] |= 1;
                // Moduli close to R as well as far below it (the final subtraction's cases).
                if rng.next() & 1 == 0 {
                    n[limbs - 1] |= 1 << 63;
                } else {
                    n[limbs - 1] >>= 5;
                    n[limbs - 1] |= 1;
                }
                let m = Modulus::new(&n).unwrap();
                let bn = big(&n);
                let a = limbs_of(&(big(&rng.limbs(limbs)) % &bn));
                let b = limbs_of(&(big(&rng.limbs(limbs)) % &bn));
                let e = rng.limbs(1 + limbs % 3);
                let (am, bm) = (m.to_mont(&a), m.to_mont(&b));
                // A value of any length reduces.
                let wide = rng.limbs(3 * limbs + 1);
                assert_eq!(big(&m.from_mont(&m.to_mont(&wide))), big(&wide) % &bn);
                assert_eq!(big(&m.from_mont(&am)), big(&a));
                assert_eq!(big(&m.from_mont(&m.mul(&am, &bm))), big(&a) * big(&b) % &bn);
                assert_eq!(
                    big(&m.from_mont(&m.add(&am, &bm))),
                    (big(&a) + big(&b)) % &bn
                );
                assert_eq!(
                    big(&m.from_mont(&m.sub(&am, &bm))),
                    (big(&a) + &bn - big(&b)) % &bn
                );
                assert_eq!(
                    big(&m.from_mont(&m.pow(&am, &e))),
                    big(&a).modpow(&big(&e), &bn)
                );
                assert_eq!(big(&m.from_mont(&m.one())), rsa::BigUint::from(1u8) % &bn);
            }
        }
    }

    #[test]
    fn the_largest_values_reduce_fully() {
        // n = 2^128 - 159 (a prime), a = b = n - 1: every carry and the final subtraction.
        let n = vec![u64::MAX - 158, u64::MAX];
        let m = Modulus::new(&n).unwrap();
        let top = sub_small(&n, 1).unwrap();
        let t = m.to_mont(&top);
        assert_eq!(m.to_mont(&n), vec![0, 0], "n itself is zero");
        assert_eq!(m.from_mont(&m.mul(&t, &t)), vec![1, 0], "(-1)^2 = 1");
        assert_eq!(m.from_mont(&m.add(&t, &t)), sub_small(&n, 2).unwrap());
        assert_eq!(m.from_mont(&m.sub(&m.one(), &t)), vec![2, 0]);
        // Fermat: a^(n-1) = 1 for a prime n.
        assert_eq!(m.from_mont(&m.pow(&t, &top)), vec![1, 0]);
    }
}
