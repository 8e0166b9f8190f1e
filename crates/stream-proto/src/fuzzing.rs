//! Entry points for the fuzz target in `fuzz/`, kept here so ordinary tests can replay seeds
//! through exactly the code libFuzzer runs.

use bytes::Bytes;

use crate::{ConnectRequest, Message, MessageType, OpenResult, Reset, decode_window};

/// Decodes `data` as a tunnel message, then its payload as every payload type that could
/// follow, and re-encodes what decoded.
///
/// No input may make a decoder panic. The only panics here are the round-trip assertions:
/// they fire when something we decoded does not survive our own encoder, which is a bug the
/// fuzzer should report.
pub fn decode_all(data: &[u8]) {
    let Ok(message) = Message::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    // Decode the payload as every type regardless of the header, so the fuzzer reaches the
    // JSON and control decoders without first having to guess the matching type byte.
    let payload = message.data;
    if let Ok(request) = ConnectRequest::from_json(&payload) {
        // Exercise the URL rendering an edge would run on a descriptor from a hostile cloud.
        let _ = request.url.to_go_string();
        let _ = request.url.request_uri();
        // And the classification it runs on the path.
        let _ = crate::kubelet::classify(&request.url.path).map(|route| route.allows("GET"));
        // What we encode must decode to the same descriptor.
        let again = ConnectRequest::from_json(&request.to_json());
        assert!(
            matches!(&again, Ok(r) if *r == request),
            "connect descriptor did not round-trip: {request:?} -> {again:?}"
        );
    }
    if let Ok(result) = OpenResult::from_json(&payload) {
        let again = OpenResult::from_json(&result.to_json());
        assert!(
            matches!(&again, Ok(r) if *r == result),
            "open result did not round-trip"
        );
    }
    let _ = Reset::decode(payload.clone());
    let _ = decode_window(payload.clone());
    let _ = MessageType::from_u64(message.kind.as_u64()).to_string();
    // A payload read as a request target: the cloud builds descriptors from these.
    if let Ok(target) = std::str::from_utf8(&payload)
        && let Ok(url) = crate::GoUrl::from_request_target("http", "127.0.0.1:10350", target)
    {
        let _ = url.to_go_string();
        let _ = url.request_uri();
    }
}
