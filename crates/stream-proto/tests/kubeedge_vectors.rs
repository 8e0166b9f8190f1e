//! Golden vectors: messages captured from stock KubeEdge decode to what they mean and
//! re-encode to the same bytes.

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-*-in-tests; a
// failed unwrap here is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use stream_proto::{ConnectId, ConnectRequest, Message, MessageType, fuzzing};

use common::{kubeedge_vectors, title_type_and_id};

#[test]
fn every_capture_decodes_and_re_encodes_identically() {
    for vector in kubeedge_vectors() {
        let (kind, id) = title_type_and_id(&vector.title);
        let message = Message::decode(Bytes::from(vector.payload.clone())).unwrap();
        assert_eq!(message.connect_id, ConnectId(id), "{}", vector.title);
        assert_eq!(message.kind.to_string(), kind, "{}", vector.title);
        assert!(message.kind.is_kubeedge());

        let mut encoded = Vec::new();
        message.encode(&mut encoded);
        assert_eq!(encoded, vector.payload, "{}", vector.title);
        assert_eq!(message.encoded_len(), vector.payload.len());

        if message.kind.is_connect() {
            let request = ConnectRequest::from_json(&message.data).unwrap();
            assert_eq!(request.mess_id, id, "MessID equals the connect id");
            assert_eq!(request.url.scheme, "http");
            assert_eq!(request.url.host, "127.0.0.1:10350");
            assert_eq!(request.url.user, None);
            assert_eq!(request.url.raw_path, "");
            // Our JSON differs in key order from this capture but must mean the same.
            assert_eq!(
                ConnectRequest::from_json(&request.to_json()).unwrap(),
                request
            );
        }
    }
}

fn connect_request(id: u64) -> (MessageType, ConnectRequest) {
    let vector = kubeedge_vectors()
        .into_iter()
        .find(|v| {
            let (kind, vid) = title_type_and_id(&v.title);
            vid == id && kind.ends_with("_CONNECT") && kind != "REMOVE_CONNECT"
        })
        .expect("connect vector");
    let message = Message::decode(Bytes::from(vector.payload)).unwrap();
    (
        message.kind,
        ConnectRequest::from_json(&message.data).unwrap(),
    )
}

#[test]
fn logs_connect_fields() {
    let (kind, request) = connect_request(1);
    assert_eq!(kind, MessageType::LogsConnect);
    assert_eq!(request.url.path, "/containerLogs/default/big/app");
    // `\u0026` in the capture is an escaped '&'.
    assert_eq!(request.url.raw_query, "tailLines=2&timestamps=true");
    assert_eq!(
        request.url.request_uri(),
        "/containerLogs/default/big/app?tailLines=2&timestamps=true"
    );
    assert_eq!(
        request.url.to_go_string(),
        "http://127.0.0.1:10350/containerLogs/default/big/app?tailLines=2&timestamps=true"
    );
    let header = request.header.as_ref().unwrap();
    assert_eq!(header["Accept-Encoding"], ["gzip"]);
    assert_eq!(header["User-Agent"], ["client-go/test"]);
    assert_eq!(request.method, None);

    // Go 1.23's compact form: what a stock cloud built with the pinned Go writes.
    let expected = concat!(
        r#"{"MessID":1,"url":{"Scheme":"http","Opaque":"","User":null,"Host":"127.0.0.1:10350","#,
        r#""Path":"/containerLogs/default/big/app","RawPath":"","OmitHost":false,"#,
        r#""ForceQuery":false,"RawQuery":"tailLines=2\u0026timestamps=true","Fragment":"","#,
        r#""RawFragment":""},"header":{"Accept-Encoding":["gzip"],"User-Agent":["client-go/test"]}}"#
    );
    assert_eq!(String::from_utf8(request.to_json()).unwrap(), expected);
}

#[test]
fn metric_connect_fields() {
    let (kind, request) = connect_request(2);
    assert_eq!(kind, MessageType::MetricConnect);
    assert_eq!(request.url.path, "/metrics/probes");
    assert_eq!(request.url.raw_query, "");
    assert_eq!(request.url.request_uri(), "/metrics/probes");
    assert_eq!(request.method, None);
}

#[test]
fn exec_connect_spdy_fields() {
    let (kind, request) = connect_request(3);
    assert_eq!(kind, MessageType::ExecConnect);
    assert_eq!(request.url.path, "/exec/default/p/c");
    assert_eq!(
        request.url.request_uri(),
        "/exec/default/p/c?command=cat&error=1&input=1&output=1"
    );
    assert_eq!(request.method.as_deref(), Some("POST"));
    let header = request.header.as_ref().unwrap();
    assert_eq!(header["Connection"], ["Upgrade"]);
    assert_eq!(header["Upgrade"], ["SPDY/3.1"]);
    assert_eq!(header["Content-Length"], ["0"]);
    assert_eq!(
        header["X-Stream-Protocol-Version"],
        [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io"
        ]
    );
}

#[test]
fn exec_connect_websocket_fields() {
    let (kind, request) = connect_request(4);
    assert_eq!(kind, MessageType::ExecConnect);
    assert_eq!(request.method.as_deref(), Some("GET"));
    let header = request.header.as_ref().unwrap();
    // Go canonicalized Sec-WebSocket-* to Sec-Websocket-*.
    assert_eq!(header["Sec-Websocket-Key"], ["EJNXdiVP86gGx35asbXlYg=="]);
    assert_eq!(header["Sec-Websocket-Version"], ["13"]);
    assert_eq!(header["Upgrade"], ["websocket"]);
    assert_eq!(
        stream_proto::canonical_header_key("sec-websocket-key"),
        "Sec-Websocket-Key"
    );
}

#[test]
fn data_and_remove_payloads() {
    let vectors = kubeedge_vectors();
    let decoded: Vec<Message> = vectors
        .iter()
        .map(|v| Message::decode(Bytes::from(v.payload.clone())).unwrap())
        .collect();
    let find = |id: u64, kind: MessageType, skip: usize| {
        decoded
            .iter()
            .filter(|m| m.connect_id == ConnectId(id) && m.kind == kind)
            .nth(skip)
            .unwrap()
    };
    assert_eq!(find(3, MessageType::Data, 0).data, &[0x80, 0x03][..]);
    assert!(find(3, MessageType::RemoveConnect, 0).data.is_empty());
    assert!(find(1, MessageType::RemoveConnect, 0).data.is_empty());
    assert!(
        find(1, MessageType::Data, 0)
            .data
            .starts_with(b"2026-11-25T10:47:09")
    );
    assert!(
        find(3, MessageType::Data, 1)
            .data
            .starts_with(b"HTTP/1.1 101 Switching Protocols\r\n")
    );
    // The websocket upgrade answer is followed by a websocket frame in the same message.
    assert!(
        find(4, MessageType::Data, 0)
            .data
            .ends_with(&[0x82, 0x01, 0x01])
    );
}

/// The fuzz target's per-input logic, run on every capture and a few hostile inputs, so CI
/// exercises it without libFuzzer.
#[test]
fn fuzz_seeds_replay() {
    for vector in kubeedge_vectors() {
        fuzzing::decode_all(&vector.payload);
    }
    let hostile: [&[u8]; 10] = [
        b"",
        b"\x80",
        &[0xff; 11],
        b"\x01\x00null",
        b"\x01\x00{\"url\":{\"Path\":\"\\u2028\",\"RawPath\":\"%zz\",\"User\":{}}}",
        b"\x01\x08{\"result\":\"response\",\"status\":200,\"headers\":{}}",
        b"\x01\x08{\"result\":\"refused\",\"status\":70000}",
        b"\x01\x09\x02reason",
        b"\x01\x07\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        b"\x01\x03/a%2Fb?x",
    ];
    for input in hostile {
        fuzzing::decode_all(input);
    }
}
