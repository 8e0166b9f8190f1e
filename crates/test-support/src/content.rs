//! Deterministic content used for large transfers.
//!
//! The content is a sequence of 64-byte lines: a zero-padded 10-digit line number, a space, 52
//! filler letters and a newline, e.g. `0000000007 hijklm…\n`. Any byte range can be recomputed
//! from its offset, so a test can compare a transfer of hundreds of MiB chunk by chunk (or by
//! hash with [`sha256_hex`] / [`generated_sha256_hex`]) without holding a copy.
//!
//! The same content backs [`ContainerSpec::generated`](crate::kubelet::ContainerSpec::generated)
//! logs and the `yes-bytes N` / `head -c N` exec commands of the test kubelet.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Length of one generated line including its trailing newline.
pub const LINE_LEN: u64 = 64;

fn write_line(line: u64, out: &mut [u8; LINE_LEN as usize]) {
    let digits = format!("{:010}", line % 10_000_000_000);
    out[..10].copy_from_slice(digits.as_bytes());
    out[10] = b' ';
    let start = (line % 26) as u8;
    for (i, b) in out[11..63].iter_mut().enumerate() {
        *b = b'a' + (start + i as u8) % 26;
    }
    out[63] = b'\n';
}

/// Returns `len` bytes of the deterministic content starting at byte `offset`.
pub fn generated_bytes(offset: u64, len: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(len);
    let mut line_buf = [0u8; LINE_LEN as usize];
    let mut pos = offset;
    let end = offset + len as u64;
    while pos < end {
        let line = pos / LINE_LEN;
        write_line(line, &mut line_buf);
        let from = (pos % LINE_LEN) as usize;
        let to = ((end - line * LINE_LEN).min(LINE_LEN)) as usize;
        out.extend_from_slice(&line_buf[from..to]);
        pos = line * LINE_LEN + to as u64;
    }
    out.freeze()
}

/// Returns the first `total_bytes` bytes of the deterministic content (what a
/// [`ContainerSpec::generated`](crate::kubelet::ContainerSpec::generated) container logs and
/// what `yes-bytes N` prints).
pub fn generated_log(total_bytes: u64) -> Bytes {
    generated_bytes(0, total_bytes as usize)
}

/// Hex SHA-256 of the first `total_bytes` bytes of the deterministic content, computed in
/// 1 MiB steps so that large sizes need no large allocation.
pub fn generated_sha256_hex(total_bytes: u64) -> String {
    let mut hasher = Sha256::new();
    let mut pos = 0u64;
    while pos < total_bytes {
        let n = (total_bytes - pos).min(1 << 20);
        hasher.update(generated_bytes(pos, n as usize));
        pos += n;
    }
    hex(&hasher.finalize())
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lower-case hex encoding.
pub(crate) fn hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Incremental verifier for a stream that must equal the deterministic content.
#[derive(Debug, Default)]
pub struct GeneratedVerifier {
    offset: u64,
    mismatch_at: Option<u64>,
}

impl GeneratedVerifier {
    /// A verifier expecting the content from offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next received chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        if self.mismatch_at.is_none() {
            let expected = generated_bytes(self.offset, chunk.len());
            if let Some(i) = expected.iter().zip(chunk).position(|(a, b)| a != b) {
                self.mismatch_at = Some(self.offset + i as u64);
            }
        }
        self.offset += chunk.len() as u64;
    }

    /// Number of bytes fed so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// True when nothing has been fed.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Offset of the first byte that differed from the expected content, if any.
    pub fn mismatch_at(&self) -> Option<u64> {
        self.mismatch_at
    }

    /// Ok when every byte matched and exactly `total` bytes were fed.
    pub fn finish(&self, total: u64) -> anyhow::Result<()> {
        if let Some(at) = self.mismatch_at {
            anyhow::bail!("generated content mismatch at byte {at}");
        }
        anyhow::ensure!(
            self.offset == total,
            "expected {total} bytes of generated content, got {}",
            self.offset
        );
        Ok(())
    }
}

/// `n` bytes of a container log that looks like one: timestamps, levels, paths and numbers.
/// It compresses about as well as real application logs (5–10× with zstd), unlike
/// [`generated_bytes`], whose lines repeat a fixed pattern.
pub fn realistic_log(n: usize) -> Bytes {
    let mut s = Vec::with_capacity(n + 200);
    let mut i = 0u64;
    while s.len() < n {
        s.extend_from_slice(
            format!(
                "2026-12-04T03:{:02}:{:02}.{:06}Z stdout F level=info msg=\"request served\" \
                 path=/api/v1/items/{} status={} bytes={} duration_ms={}\n",
                (i / 60) % 60,
                i % 60,
                i * 7919 % 1_000_000,
                i * 131 % 977,
                if i.is_multiple_of(17) { 404 } else { 200 },
                i * 31 % 5000,
                i * 13 % 250
            )
            .as_bytes(),
        );
        i += 1;
    }
    s.truncate(n);
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_access_matches_prefix() {
        let all = generated_log(10_000);
        assert_eq!(all.len(), 10_000);
        assert!(
            all.starts_with(b"0000000000 abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz\n")
        );
        for (off, len) in [
            (0, 1),
            (63, 2),
            (64, 64),
            (100, 1000),
            (9_999, 1),
            (5_000, 0),
        ] {
            assert_eq!(
                &generated_bytes(off, len)[..],
                &all[off as usize..off as usize + len]
            );
        }
        assert_eq!(generated_sha256_hex(10_000), sha256_hex(&all));
        let mut v = GeneratedVerifier::new();
        v.update(&all[..77]);
        v.update(&all[77..]);
        v.finish(10_000).unwrap();
    }
}
