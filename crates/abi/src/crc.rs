//! CRC32C arithmetic for the checksums of the wire formats, for data that
//! is moved without being read (spliced): a record's checksum is its
//! header's CRC combined with its payload's; a payload's is the record's
//! with the header's taken out again; a message's is its pieces' combined.
//!
//! `crc32c::crc32c_combine` squares 32×32 bit matrices once per bit of the
//! length — ~80 µs for a 1 MiB payload, paid twice per record (writer and
//! reader), a tenth of a second per GiB moved. Here the shift by `n` zero
//! bytes is a product of precomputed powers `x^(2^k) mod P` in `GF(2)[x]`:
//! one multiplication per set bit of `8·n`, well under a microsecond.
//!
//! Polynomials are bit-reflected, as CRC32C computes them: bit 31 is the
//! coefficient of x^0, bit 0 that of x^31.

use std::sync::OnceLock;

/// The Castagnoli polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;
/// x^0 (the multiplicative identity), reflected.
const ONE: u32 = 1 << 31;

/// `a · b mod P`.
fn mult(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut m = ONE;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `x^(2^k) mod P` for k = 0..67 (enough for a shift by any `usize` of
/// bytes: 8·n < 2^67).
fn powers() -> &'static [u32; 67] {
    static T: OnceLock<[u32; 67]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = [0u32; 67];
        t[0] = ONE >> 1; // x^1
        for k in 1..t.len() {
            t[k] = mult(t[k - 1], t[k - 1]);
        }
        t
    })
}

/// `crc` as if `n` zero bytes had been appended to the data it covers
/// (without the CRC's final inversion — exactly what combining needs).
pub fn shift(crc: u32, n: usize) -> u32 {
    let t = powers();
    // x^(8n) = product of x^(2^(k+3)) over the set bits k of n.
    let mut p = ONE;
    let mut n = n as u64;
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            p = mult(t[k], p);
        }
        n >>= 1;
        k += 1;
    }
    mult(p, crc)
}

/// CRC32C of `a ‖ b` from `crc_a` = CRC32C(a), `crc_b` = CRC32C(b) and
/// `len_b` = |b|; equal to `crc32c::crc32c_combine`.
pub fn combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    shift(crc_a, len_b) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_crc32c_crate_and_with_hashing_the_concatenation() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 2_654_435_761) as u8).collect();
        for split in [0, 1, 3, 4, 15, 16, 4096, 4100, 65_536, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let (ca, cb) = (crc32c::crc32c(a), crc32c::crc32c(b));
            assert_eq!(
                combine(ca, cb, b.len()),
                crc32c::crc32c(&data),
                "split {split}"
            );
            assert_eq!(
                combine(ca, cb, b.len()),
                crc32c::crc32c_combine(ca, cb, b.len())
            );
        }
        for len in [1usize << 20, (1 << 20) + 12, 1 << 32, usize::MAX / 3] {
            for crc in [0u32, 1, 0xdead_beef, u32::MAX] {
                assert_eq!(combine(crc, 7, len), crc32c::crc32c_combine(crc, 7, len));
            }
        }
    }
}
