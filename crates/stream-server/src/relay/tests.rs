//! Tests of the kubelet response readers on hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{MAX_CHUNKED_ERROR_BODY, read_chunked};
use bytes::Bytes;

/// A chunk size near u64::MAX after a first chunk made `body.len() + size` overflow: a panic
/// in debug builds, and in release a wrapped bound check and an out-of-range slice (kubelet
/// input must never panic the relay). Found by the `kubelet_head` fuzz target.
#[tokio::test]
async fn a_chunk_size_near_u64_max_is_refused() {
    let mut rest: &[u8] = b"";
    for size in ["FFFFFFFFFFFFFFFF", "FFFFFFFFFFFFFFFE", "FFFFFFFFFFFFFFF0"] {
        let raw = format!("1\r\na\r\n{size}\r\nxyz\r\n0\r\n\r\n");
        let result = read_chunked(Bytes::from(raw), &mut rest).await;
        assert_eq!(
            result,
            Err("the kubelet's error body is too large".to_owned()),
            "{size}"
        );
    }
}

/// The bound itself: a body of exactly the limit passes, one byte more does not.
#[tokio::test]
async fn a_chunked_body_is_bounded_exactly() {
    let mut rest: &[u8] = b"";
    let ok = format!(
        "1\r\na\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        MAX_CHUNKED_ERROR_BODY - 1,
        "b".repeat(MAX_CHUNKED_ERROR_BODY - 1)
    );
    let body = read_chunked(Bytes::from(ok), &mut rest).await.unwrap();
    assert_eq!(body.len(), MAX_CHUNKED_ERROR_BODY);
    let over = format!(
        "1\r\na\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        MAX_CHUNKED_ERROR_BODY,
        "b".repeat(MAX_CHUNKED_ERROR_BODY)
    );
    assert!(read_chunked(Bytes::from(over), &mut rest).await.is_err());
}
