//! Unsigned LEB128 varints, bit-compatible with Go's `encoding/binary` `Uvarint`.
//!
//! Both header fields of a tunnel message (connect id and message type) are uvarints, and the
//! tether/2 window and reset payloads reuse the same encoding. Decoding follows Go's
//! `binary.ReadUvarint`, which is what stock KubeEdge uses on the wire: at most ten bytes are
//! read, a tenth byte above `1` overflows, and non-minimal encodings (`80 00` for zero) are
//! accepted, as Go accepts them.

use bytes::{Buf, BufMut};

use crate::Error;

/// The most bytes a `u64` varint can take (Go's `binary.MaxVarintLen64`).
pub const MAX_LEN: usize = 10;

/// Appends `v` as a uvarint (1 to 10 bytes, shortest form).
pub fn encode(mut v: u64, dst: &mut impl BufMut) {
    while v >= 0x80 {
        // Truncation to the low seven bits is the point of the cast.
        dst.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

/// How many bytes [`encode`] writes for `v`.
pub fn encoded_len(v: u64) -> usize {
    // Each byte carries 7 bits; zero still takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads one uvarint from the front of `src`, advancing past it.
///
/// On error `src` has been advanced past the bytes inspected; callers treat any error as fatal
/// for the payload, as Go's reader does.
pub fn decode(src: &mut impl Buf) -> Result<u64, Error> {
    let mut value = 0u64;
    for i in 0..MAX_LEN {
        if !src.has_remaining() {
            return Err(Error::VarintTruncated);
        }
        let byte = src.get_u8();
        let shift = 7 * i;
        if byte < 0x80 {
            // The tenth byte holds bit 63 only; anything larger does not fit in a u64.
            if i == MAX_LEN - 1 && byte > 1 {
                return Err(Error::VarintOverflow);
            }
            return Ok(value | (u64::from(byte) << shift));
        }
        value |= u64::from(byte & 0x7f) << shift;
    }
    // Ten bytes, all with the continuation bit: Go reports overflow without reading further.
    Err(Error::VarintOverlong)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, &mut out);
        out
    }

    #[test]
    fn boundaries_encode_like_go() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(16383), [0xff, 0x7f]);
        assert_eq!(enc(16384), [0x80, 0x80, 0x01]);
        let max = enc(u64::MAX);
        assert_eq!(max.len(), MAX_LEN);
        assert_eq!(max[..9], [0xff; 9]);
        assert_eq!(max[9], 0x01);
    }

    #[test]
    fn encoded_len_matches_encode() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                assert_eq!(encoded_len(v), enc(v).len(), "v={v}");
            }
        }
        assert_eq!(encoded_len(u64::MAX), 10);
        assert_eq!(encoded_len(0), 1);
    }

    #[test]
    fn decode_boundaries() {
        for v in [
            0,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let bytes = enc(v);
            let mut src = &bytes[..];
            assert_eq!(decode(&mut src).unwrap(), v);
            assert!(src.is_empty());
        }
    }

    #[test]
    fn decode_leaves_following_bytes() {
        let mut src = &[0xac, 0x02, 0x04, 0xff][..];
        assert_eq!(decode(&mut src).unwrap(), 300);
        assert_eq!(src, [0x04, 0xff]);
    }

    #[test]
    fn decode_accepts_non_minimal_forms_like_go() {
        assert_eq!(decode(&mut &[0x80, 0x00][..]).unwrap(), 0);
        assert_eq!(decode(&mut &[0x81, 0x80, 0x00][..]).unwrap(), 1);
    }

    #[test]
    fn decode_errors() {
        assert!(matches!(decode(&mut &[][..]), Err(Error::VarintTruncated)));
        assert!(matches!(
            decode(&mut &[0x80][..]),
            Err(Error::VarintTruncated)
        ));
        assert!(matches!(
            decode(&mut &[0xff; 9][..]),
            Err(Error::VarintTruncated)
        ));
        // Tenth byte 2: bit 64 would be set.
        let mut overflow = [0xff; 10];
        overflow[9] = 0x02;
        assert!(matches!(
            decode(&mut &overflow[..]),
            Err(Error::VarintOverflow)
        ));
        // Eleven bytes: the tenth still continues.
        let mut overlong = [0x80; 11];
        overlong[10] = 0x00;
        assert!(matches!(
            decode(&mut &overlong[..]),
            Err(Error::VarintOverlong)
        ));
        // Ten continuation bytes and nothing after them: Go's reader stops at ten and overflows.
        assert!(matches!(
            decode(&mut &[0x80; 10][..]),
            Err(Error::VarintOverlong)
        ));
    }
}
