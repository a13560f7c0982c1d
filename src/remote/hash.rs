//! The two hashes of the server protocol that ring does not have: MD5 (RFC 1321: send-file
//! contents, spec §8.1, and the hybrid request signature, §2.2) and SM3 (GB/T 32905-2016:
//! SM3WithSM2 task signatures, §7). Both are 64-byte-block Merkle–Damgård hashes and share the
//! buffering and padding; only the length's byte order and the compression differ. Neither is
//! used for anything secret, so neither needs to be constant-time.

/// The buffer, the length and the padding of a 64-byte-block hash.
#[derive(Clone)]
struct Blocks {
    buf: [u8; 64],
    fill: usize,
    /// Bytes hashed so far.
    len: u64,
}

impl Blocks {
    fn new() -> Blocks {
        Blocks {
            buf: [0; 64],
            fill: 0,
            len: 0,
        }
    }

    fn update(&mut self, mut data: &[u8], compress: &mut impl FnMut(&[u8; 64])) {
        self.len = self.len.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let n = (64 - self.fill).min(data.len());
            self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == 64 {
                compress(&self.buf);
                self.fill = 0;
            }
        }
    }

    /// The padding: a 1 bit, zeros, and the length in bits as 8 bytes in the given order.
    fn finish(mut self, big_endian: bool, compress: &mut impl FnMut(&[u8; 64])) {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 72];
        tail[0] = 0x80;
        let zeros = (55 - self.fill as i64).rem_euclid(64) as usize;
        let length = if big_endian {
            bits.to_be_bytes()
        } else {
            bits.to_le_bytes()
        };
        tail[1 + zeros..9 + zeros].copy_from_slice(&length);
        self.update(&tail[..9 + zeros], compress);
        debug_assert_eq!(self.fill, 0);
    }
}

/// MD5, fed in pieces.
#[derive(Clone)]
pub struct Md5 {
    state: [u32; 4],
    blocks: Blocks,
}

/// MD5's per-round shifts, four of each round repeated four times (RFC 1321 §3.4).
const MD5_SHIFT: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321 §3.4).
const MD5_K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

fn md5_compress(state: &mut [u32; 4], block: &[u8; 64]) {
    let mut m = [0u32; 16];
    for (w, b) in m.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    for i in 0..64 {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let f = f.wrapping_add(a).wrapping_add(MD5_K[i]).wrapping_add(m[g]);
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(f.rotate_left(MD5_SHIFT[i / 16][i % 4]));
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d]) {
        *s = s.wrapping_add(v);
    }
}

impl Md5 {
    pub fn new() -> Md5 {
        Md5 {
            state: [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476],
            blocks: Blocks::new(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let state = &mut self.state;
        self.blocks.update(data, &mut |b| md5_compress(state, b));
    }

    pub fn finish(self) -> [u8; 16] {
        let mut state = self.state;
        self.blocks
            .finish(false, &mut |b| md5_compress(&mut state, b));
        let mut out = [0u8; 16];
        for (o, s) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&s.to_le_bytes());
        }
        out
    }
}

impl Default for Md5 {
    fn default() -> Md5 {
        Md5::new()
    }
}

/// MD5 of `data`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(data);
    h.finish()
}

/// SM3, fed in pieces.
#[derive(Clone)]
pub struct Sm3 {
    state: [u32; 8],
    blocks: Blocks,
}

fn sm3_compress(state: &mut [u32; 8], block: &[u8; 64]) {
    let p0 = |x: u32| x ^ x.rotate_left(9) ^ x.rotate_left(17);
    let p1 = |x: u32| x ^ x.rotate_left(15) ^ x.rotate_left(23);
    let mut w = [0u32; 68];
    for (w, b) in w.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    }
    for j in 16..68 {
        w[j] = p1(w[j - 16] ^ w[j - 9] ^ w[j - 3].rotate_left(15))
            ^ w[j - 13].rotate_left(7)
            ^ w[j - 6];
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for j in 0..64 {
        let t: u32 = if j < 16 { 0x79cc4519 } else { 0x7a879d8a };
        let ss1 = a
            .rotate_left(12)
            .wrapping_add(e)
            .wrapping_add(t.rotate_left(j as u32 % 32))
            .rotate_left(7);
        let ss2 = ss1 ^ a.rotate_left(12);
        let (ff, gg) = if j < 16 {
            (a ^ b ^ c, e ^ f ^ g)
        } else {
            ((a & b) | (a & c) | (b & c), (e & f) | (!e & g))
        };
        let tt1 = ff
            .wrapping_add(d)
            .wrapping_add(ss2)
            .wrapping_add(w[j] ^ w[j + 4]);
        let tt2 = gg.wrapping_add(h).wrapping_add(ss1).wrapping_add(w[j]);
        d = c;
        c = b.rotate_left(9);
        b = a;
        a = tt1;
        h = g;
        g = f.rotate_left(19);
        f = e;
        e = p0(tt2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s ^= v;
    }
}

impl Sm3 {
    pub fn new() -> Sm3 {
        Sm3 {
            state: [
                0x7380166f, 0x4914b2b9, 0x172442d7, 0xda8a0600, 0xa96f30bc, 0x163138aa, 0xe38dee4d,
                0xb0fb0e4e,
            ],
            blocks: Blocks::new(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let state = &mut self.state;
        self.blocks.update(data, &mut |b| sm3_compress(state, b));
    }

    pub fn finish(self) -> [u8; 32] {
        let mut state = self.state;
        self.blocks
            .finish(true, &mut |b| sm3_compress(&mut state, b));
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }
}

impl Default for Sm3 {
    fn default() -> Sm3 {
        Sm3::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_vectors_of_rfc_1321() {
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex(&md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn sm3_vectors_of_gb_t_32905() {
        let mut h = Sm3::new();
        h.update(b"abc");
        assert_eq!(
            hex(&h.finish()),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        let mut h = Sm3::new();
        h.update("abcd".repeat(16).as_bytes());
        assert_eq!(
            hex(&h.finish()),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
        );
    }

    /// Against RustCrypto's md-5 and sm3 at every length around the block and padding edges,
    /// fed whole and in uneven pieces.
    #[test]
    fn both_agree_with_rustcrypto_at_every_edge() {
        use md5::Digest as _;
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let input = &data[..len];
            let (mut m, mut s) = (Md5::new(), Sm3::new());
            for piece in input.chunks(1 + len % 13) {
                m.update(piece);
                s.update(piece);
            }
            let want_md5: [u8; 16] = md5::Md5::digest(input).into();
            let want_sm3: [u8; 32] = sm3::Sm3::digest(input).into();
            assert_eq!(m.finish(), want_md5, "md5 of {len} bytes");
            assert_eq!(s.finish(), want_sm3, "sm3 of {len} bytes");
            assert_eq!(md5(input), want_md5);
        }
    }
}
