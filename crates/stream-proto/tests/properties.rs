//! Property tests: everything we encode decodes to the same value, and no byte string makes a
//! decoder panic.

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-*-in-tests; a
// failed unwrap here is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use stream_proto::{
    ConnectId, ConnectRequest, Error, GoUrl, GoUserinfo, HeaderMap, MAX_DATA_LEN, Message,
    MessageType, OpenResult, Reset, ResetCode, decode_window, encode_window, fuzzing, varint,
};

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        (0u64..=11).prop_map(MessageType::from_u64),
        // Unknown only holds values without a named variant (see its docs).
        (12u64..).prop_map(MessageType::Unknown),
    ]
}

fn connect_id() -> impl Strategy<Value = ConnectId> {
    prop_oneof![0u64..1000, any::<u64>(), Just(u64::MAX)].prop_map(ConnectId)
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    btree_map(any::<String>(), vec(any::<String>(), 0..3), 0..4)
}

fn go_url() -> impl Strategy<Value = GoUrl> {
    (
        (
            any::<String>(),
            any::<String>(),
            any::<bool>(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
        ),
    )
        .prop_map(
            |(
                (scheme, opaque, user, host, path, raw_path),
                (omit_host, force_query, raw_query, fragment, raw_fragment),
            )| GoUrl {
                scheme,
                opaque,
                user: user.then_some(GoUserinfo),
                host,
                path,
                raw_path,
                omit_host,
                force_query,
                raw_query,
                fragment,
                raw_fragment,
            },
        )
}

fn connect_request() -> impl Strategy<Value = ConnectRequest> {
    (
        any::<u64>(),
        go_url(),
        proptest::option::of(header_map()),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(mess_id, url, header, method)| ConnectRequest {
            mess_id,
            url,
            header,
            method,
        })
}

fn open_result() -> impl Strategy<Value = OpenResult> {
    prop_oneof![
        (100u16..=599, header_map())
            .prop_map(|(status, headers)| OpenResult::Response { status, headers }),
        Just(OpenResult::Raw),
        (100u16..=599, any::<String>())
            .prop_map(|(status, reason)| OpenResult::Refused { status, reason }),
    ]
}

fn reset_code() -> impl Strategy<Value = ResetCode> {
    prop_oneof![
        (0u64..=6).prop_map(ResetCode::from_u64),
        (7u64..).prop_map(ResetCode::Unknown),
    ]
}

proptest! {
    #[test]
    fn message_round_trips(
        id in connect_id(),
        kind in message_type(),
        data in vec(any::<u8>(), 0..512),
    ) {
        let message = Message::new(id, kind, data);
        let mut encoded = Vec::new();
        message.encode(&mut encoded);
        prop_assert_eq!(encoded.len(), message.encoded_len());
        prop_assert!(encoded.len() - message.data.len() <= Message::MAX_HEADER_LEN);

        let mut split = Vec::new();
        Message::encode_header(id, kind, &mut split);
        split.extend_from_slice(&message.data);
        prop_assert_eq!(&split, &encoded);

        prop_assert_eq!(Message::decode(Bytes::from(encoded)).unwrap(), message);
    }

    #[test]
    fn message_type_values_round_trip(v in any::<u64>()) {
        prop_assert_eq!(MessageType::from_u64(v).as_u64(), v);
        prop_assert_eq!(ResetCode::from_u64(v).as_u64(), v);
    }

    #[test]
    fn decoders_never_panic(data in vec(any::<u8>(), 0..256)) {
        let _ = Message::decode(Bytes::from(data.clone()));
        let _ = ConnectRequest::from_json(&data);
        let _ = OpenResult::from_json(&data);
        let _ = Reset::decode(Bytes::from(data.clone()));
        let _ = decode_window(Bytes::from(data.clone()));
        let _ = varint::decode(&mut &data[..]);
        fuzzing::decode_all(&data);
    }

    #[test]
    fn json_ish_input_never_panics(text in r#"[{}\[\]":,a-zA-Z0-9 \\%/?#&u.-]{0,80}"#) {
        let _ = ConnectRequest::from_json(text.as_bytes());
        let _ = OpenResult::from_json(text.as_bytes());
        let _ = GoUrl::from_request_target("http", "h", &text);
    }

    #[test]
    fn varint_round_trips(v in any::<u64>(), tail in vec(any::<u8>(), 0..4)) {
        let mut encoded = Vec::new();
        varint::encode(v, &mut encoded);
        prop_assert_eq!(encoded.len(), varint::encoded_len(v));
        encoded.extend_from_slice(&tail);
        let mut src = &encoded[..];
        prop_assert_eq!(varint::decode(&mut src).unwrap(), v);
        prop_assert_eq!(src, &tail[..]);
    }

    #[test]
    fn truncated_varints_are_errors(v in 128u64.., cut in 1usize..10) {
        let mut encoded = Vec::new();
        varint::encode(v, &mut encoded);
        let cut = cut.min(encoded.len() - 1);
        let result = varint::decode(&mut &encoded[..cut]);
        prop_assert!(matches!(result, Err(Error::VarintTruncated)));
    }

    #[test]
    fn connect_request_json_round_trips(request in connect_request()) {
        let json = request.to_json();
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        prop_assert_eq!(ConnectRequest::from_json(&json).unwrap(), request);
    }

    #[test]
    fn open_result_json_round_trips(result in open_result()) {
        prop_assert_eq!(OpenResult::from_json(&result.to_json()).unwrap(), result);
    }

    #[test]
    fn reset_round_trips(code in reset_code(), reason in any::<String>()) {
        let reset = Reset::new(code, reason);
        let mut encoded = Vec::new();
        reset.encode(&mut encoded);
        prop_assert_eq!(encoded.len(), reset.encoded_len());
        prop_assert_eq!(Reset::decode(Bytes::from(encoded)).unwrap(), reset);
    }

    #[test]
    fn window_round_trips(increment in any::<u64>()) {
        let mut encoded = Vec::new();
        encode_window(increment, &mut encoded);
        prop_assert_eq!(decode_window(Bytes::from(encoded)).unwrap(), increment);
    }

    /// What from_request_target builds must render back to the target it came from whenever
    /// the target is already in Go's canonical escaping.
    #[test]
    fn request_target_round_trips(
        segments in vec("[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,8}", 1..5),
        query in proptest::option::of("[a-zA-Z0-9=&%]{0,16}"),
    ) {
        let mut target = String::new();
        for segment in &segments {
            target.push('/');
            target.push_str(segment);
        }
        if let Some(query) = &query {
            target.push('?');
            target.push_str(query);
        }
        let url = GoUrl::from_request_target("http", "127.0.0.1:10350", &target).unwrap();
        prop_assert_eq!(url.request_uri(), target);
    }
}

#[test]
fn varint_boundaries() {
    let cases: [(u64, &[u8]); 5] = [
        (0, &[0x00]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (300, &[0xac, 0x02]),
        (
            u64::MAX,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
    ];
    for (value, bytes) in cases {
        let mut encoded = Vec::new();
        varint::encode(value, &mut encoded);
        assert_eq!(encoded, bytes);
        assert_eq!(varint::decode(&mut &bytes[..]).unwrap(), value);
    }
    let eleven = [
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
    ];
    assert!(matches!(
        varint::decode(&mut &eleven[..]),
        Err(Error::VarintOverlong)
    ));
    let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
    assert!(matches!(
        varint::decode(&mut &overflow[..]),
        Err(Error::VarintOverflow)
    ));
    // A message whose connect id is overlong is rejected as a whole.
    assert!(matches!(
        Message::decode(Bytes::copy_from_slice(&eleven)),
        Err(Error::VarintOverlong)
    ));
}

#[test]
fn one_mib_limit() {
    let mut encoded = Vec::new();
    Message::encode_header(ConnectId(5), MessageType::Data, &mut encoded);
    encoded.resize(encoded.len() + MAX_DATA_LEN, 0x5a);
    let message = Message::decode(Bytes::from(encoded.clone())).unwrap();
    assert_eq!(message.data.len(), MAX_DATA_LEN);

    encoded.push(0x5a);
    assert!(matches!(
        Message::decode(Bytes::from(encoded)),
        Err(Error::DataTooLong { len }) if len == MAX_DATA_LEN + 1
    ));
}
