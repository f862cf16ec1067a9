//! The 64-bit state digest of the sample devices, and the deterministic
//! pseudo-random generator their engines use.
//!
//! The digest is a four-lane multiply-rotate hash over little-endian u64
//! words with a final avalanche. It is not cryptographic; it only has to
//! make "same state ⇒ same digest, different state ⇒ different digest"
//! hold with overwhelming probability, and to hash hundreds of MiB fast.
//! The result does not depend on how the input is split across
//! [`Digest64::update`] calls.

const P1: u64 = 0x9e37_79b1_85eb_ca87;
const P2: u64 = 0xc2b2_ae3d_27d4_eb4f;
const P3: u64 = 0x1656_67b1_9e37_79f9;

/// SplitMix64 finaliser: a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes several words into one (order matters).
pub fn mix_words(words: &[u64]) -> u64 {
    words.iter().fold(P3, |h, &w| mix64(h ^ w.wrapping_mul(P1)))
}

/// Fills `out` with the SplitMix64 stream that starts at `seed`.
pub fn fill_pseudo_random(seed: u64, out: &mut [u8]) {
    let mut s = seed;
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        s = s.wrapping_add(P1);
        c.copy_from_slice(&mix64(s).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        s = s.wrapping_add(P1);
        let v = mix64(s).to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }
}

/// Streaming 64-bit digest.
#[derive(Debug, Clone)]
pub struct Digest64 {
    lanes: [u64; 4],
    tail: [u8; 32],
    tail_len: usize,
    total: u64,
}

#[inline(always)]
fn round(acc: u64, w: u64) -> u64 {
    acc.wrapping_add(w.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

impl Digest64 {
    /// A digest seeded with `seed` (different seeds give unrelated digests).
    pub fn new(seed: u64) -> Self {
        Self {
            lanes: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            tail: [0; 32],
            tail_len: 0,
            total: 0,
        }
    }

    fn block(&mut self, b: &[u8]) {
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            *lane = round(*lane, w);
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.tail_len > 0 {
            let n = (32 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + n].copy_from_slice(&data[..n]);
            self.tail_len += n;
            data = &data[n..];
            if self.tail_len < 32 {
                return;
            }
            let t = self.tail;
            self.block(&t);
            self.tail_len = 0;
        }
        let mut blocks = data.chunks_exact(32);
        for b in &mut blocks {
            self.block(b);
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// Feeds one little-endian u64.
    pub fn update_u64(&mut self, v: u64) {
        self.update(&v.to_le_bytes());
    }

    /// The digest of everything fed so far.
    pub fn finish(&self) -> u64 {
        let [a, b, c, d] = self.lanes;
        let mut h = a
            .rotate_left(1)
            .wrapping_add(b.rotate_left(7))
            .wrapping_add(c.rotate_left(12))
            .wrapping_add(d.rotate_left(18));
        for lane in self.lanes {
            h = (h ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P3);
        }
        h ^= self.total;
        let mut words = self.tail[..self.tail_len].chunks(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            h = mix64(h ^ round(0, u64::from_le_bytes(b)));
        }
        mix64(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_does_not_matter() {
        let mut data = vec![0u8; 1000];
        fill_pseudo_random(7, &mut data);
        let mut whole = Digest64::new(1);
        whole.update(&data);
        for split in [1, 3, 31, 32, 33, 500, 999] {
            let mut d = Digest64::new(1);
            for c in data.chunks(split) {
                d.update(c);
            }
            assert_eq!(d.finish(), whole.finish(), "split {split}");
        }
    }

    #[test]
    fn sensitive_to_content_length_and_seed() {
        let base = {
            let mut d = Digest64::new(0);
            d.update(&[0u8; 4096]);
            d.finish()
        };
        let mut flipped = [0u8; 4096];
        flipped[4095] = 1;
        let mut d = Digest64::new(0);
        d.update(&flipped);
        assert_ne!(d.finish(), base);
        let mut d = Digest64::new(0);
        d.update(&[0u8; 4095]);
        assert_ne!(d.finish(), base);
        let mut d = Digest64::new(1);
        d.update(&[0u8; 4096]);
        assert_ne!(d.finish(), base);
        // Swapping two words changes the digest.
        let mut a = [0u8; 64];
        a[0] = 1;
        let mut b = [0u8; 64];
        b[8] = 1;
        let (mut da, mut db) = (Digest64::new(0), Digest64::new(0));
        da.update(&a);
        db.update(&b);
        assert_ne!(da.finish(), db.finish());
    }

    #[test]
    fn generator_is_deterministic() {
        let mut a = [0u8; 37];
        let mut b = [0u8; 37];
        fill_pseudo_random(42, &mut a);
        fill_pseudo_random(42, &mut b);
        assert_eq!(a, b);
        fill_pseudo_random(43, &mut b);
        assert_ne!(a, b);
        assert_ne!(mix_words(&[1, 2]), mix_words(&[2, 1]));
    }
}
