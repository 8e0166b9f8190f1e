#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::frame::{goaway_status, rst_status};

/// Three SYN_STREAM frames written by C zlib (Python's `zlib`, level 9) with the SPDY/3
/// dictionary and one context for all three, SYNC_FLUSH after each block: what an
/// independent implementation puts on the wire. Headers: `streamtype: error`, then
/// `streamtype: stdin`, then `port: 8080`, `requestid: 0`, `streamtype: data\0extra`.
const ZLIB_FRAMES: [&[u8]; 3] = [
    b"\x80\x03\x00\x01\x00\x00\x00\x28\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x78\xf9\xe3\xc6\
      \xa7\xc2\x02\xa6\x23\x46\x70\x3a\x2b\x29\x4a\x4d\xcc\x85\x16\x25\xac\xa9\xa0\x80\x06\x00\
      \x00\x00\xff\xff",
    b"\x80\x03\x00\x01\x00\x00\x00\x17\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\xc2\x2e\x55\x5c\
      \x02\xcc\x2e\x00\x00\x00\x00\xff\xff",
    b"\x80\x03\x00\x01\x00\x00\x00\x34\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x02\x25\x55\x48\
      \xa9\x5d\x04\xce\x20\x16\x06\x16\x06\x40\x9a\xb3\x08\x12\xcb\x99\xa0\xd4\xcf\x68\x80\xa1\
      \x99\x0b\x58\x44\x25\x32\x00\x3d\x55\x94\x08\x00\x00\x00\xff\xff",
];

fn encode(enc: &mut Encoder, frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    enc.encode(frame, &mut buf).unwrap();
    buf
}

fn decode_all(dec: &mut Decoder, mut buf: BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    out
}

fn all_frames() -> Vec<Frame> {
    let hs = Headers::new()
        .with("streamType", "stdout")
        .with("port", "80")
        .with("port", "443");
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 7,
            slot: 0,
            fin: false,
            unidirectional: true,
            headers: hs.clone(),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: true,
            headers: Headers::new(),
        },
        Frame::Headers {
            stream_id: 3,
            fin: false,
            headers: hs,
        },
        Frame::RstStream {
            stream_id: 3,
            status: rst_status::CANCEL,
        },
        Frame::Settings {
            clear: true,
            entries: vec![Setting {
                flags: 1,
                id: 7,
                value: 65536,
            }],
        },
        Frame::Ping { id: 2 },
        Frame::GoAway {
            last_good_stream_id: 5,
            status: goaway_status::OK,
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1024,
        },
        Frame::Data {
            stream_id: 0x7fff_ffff,
            fin: true,
            data: Bytes::from_static(b"\x00\xffbinary"),
        },
        Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::new(),
        },
    ]
}

#[test]
fn every_frame_round_trips_through_one_context() {
    let (mut enc, mut dec) = (Encoder::new(), Decoder::default());
    let frames = all_frames();
    let mut wire = BytesMut::new();
    for f in &frames {
        enc.encode(f, &mut wire).unwrap();
    }
    let mut decoded = decode_all(&mut dec, wire);
    // Lowercased on the way in, NUL-joined on the wire, split on the way out.
    if let Frame::SynStream { headers, .. } = &mut decoded[0] {
        assert_eq!(headers.get("streamtype"), Some("stdout"));
        assert_eq!(headers.get_all("port").collect::<Vec<_>>(), ["80", "443"]);
    }
    assert_eq!(decoded, frames);
}

#[test]
fn first_block_names_the_spdy_dictionary() {
    let mut enc = Encoder::new();
    let buf = encode(
        &mut enc,
        &Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new(),
        },
    );
    // 8 header + 4 stream id, then the zlib header: CMF, FLG with FDICT, dictionary id.
    let zlib = &buf[12..];
    assert_eq!(zlib[0] & 0x0f, 8, "deflate");
    assert_ne!(zlib[1] & 0x20, 0, "FDICT set");
    assert_eq!((u16::from(zlib[0]) << 8 | u16::from(zlib[1])) % 31, 0);
    assert_eq!(&zlib[2..6], &DICTIONARY_ID.to_be_bytes());
    // SYNC_FLUSH: the block ends with an empty stored block.
    assert!(buf.ends_with(&[0, 0, 0xff, 0xff]));
}

#[test]
fn decodes_blocks_written_by_c_zlib() {
    let mut dec = Decoder::default();
    let mut wire = BytesMut::new();
    for f in ZLIB_FRAMES {
        wire.put_slice(f);
    }
    let frames = decode_all(&mut dec, wire);
    let types: Vec<_> = frames
        .iter()
        .map(|f| match f {
            Frame::SynStream {
                stream_id, headers, ..
            } => (*stream_id, headers.clone()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(types[0], (1, Headers::new().with("streamtype", "error")));
    assert_eq!(types[1], (3, Headers::new().with("streamtype", "stdin")));
    assert_eq!(
        types[2],
        (
            5,
            Headers::new()
                .with("port", "8080")
                .with("requestid", "0")
                .with("streamtype", "data")
                .with("streamtype", "extra")
        )
    );
}

#[test]
fn later_blocks_depend_on_the_shared_context() {
    let mut enc = Encoder::new();
    let hs = Headers::new().with("streamtype", "stdout").with(
        "x-long",
        "a fairly long value that the second block can refer back to",
    );
    let frame = |id| Frame::SynStream {
        stream_id: id,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers: hs.clone(),
    };
    let first = encode(&mut enc, &frame(1));
    let second = encode(&mut enc, &frame(3));
    assert!(
        second.len() < first.len(),
        "the repeat is a back reference: {} vs {}",
        second.len(),
        first.len()
    );
    // In order, one decoder reads both.
    let mut dec = Decoder::default();
    let mut both = first.clone();
    both.put_slice(&second);
    assert_eq!(decode_all(&mut dec, both), vec![frame(1), frame(3)]);
    // A decoder that did not see the first block cannot read the second.
    let mut fresh = Decoder::default();
    let mut only_second = second.clone();
    assert!(fresh.decode(&mut only_second).is_err());
    // Nor can a second fresh context read C zlib's second block alone.
    let mut fresh = Decoder::default();
    assert!(fresh.decode(&mut BytesMut::from(ZLIB_FRAMES[1])).is_err());
}

#[test]
fn partial_input_waits_for_the_whole_frame() {
    let mut enc = Encoder::new();
    let mut wire = BytesMut::new();
    for f in all_frames() {
        enc.encode(&f, &mut wire).unwrap();
    }
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for b in wire.iter() {
        buf.put_u8(*b);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(frames, all_frames());
}

#[test]
fn oversize_frames_fail_on_the_header_alone() {
    let limits = Limits {
        max_data_payload: 1000,
        max_control_payload: 100,
        ..Limits::default()
    };
    let mut dec = Decoder::new(limits);
    // A DATA header claiming 1001 bytes, no payload yet.
    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0, 0, 0x03, 0xe9][..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(Error::FrameTooLarge {
            kind: "data",
            len: 1001,
            max: 1000
        })
    ));
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::from(&[0x80u8, 3, 0, 1, 0, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(Error::FrameTooLarge {
            kind: "control",
            ..
        })
    ));
}

fn control(frame_type: u16, flags: u8, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    FrameHeader::Control {
        version: 3,
        frame_type,
        flags,
        length: payload.len() as u32,
    }
    .write(&mut buf);
    buf.put_slice(payload);
    buf
}

#[test]
fn malformed_control_frames_are_errors() {
    let cases: Vec<(&str, BytesMut)> = vec![
        (
            "rst short",
            control(frame_type::RST_STREAM, 0, &[0, 0, 0, 1]),
        ),
        (
            "rst status 0",
            control(frame_type::RST_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
        ),
        (
            "rst stream 0",
            control(frame_type::RST_STREAM, 0, &[0, 0, 0, 0, 0, 0, 0, 5]),
        ),
        ("ping id 0", control(frame_type::PING, 0, &[0, 0, 0, 0])),
        ("ping long", control(frame_type::PING, 0, &[0, 0, 0, 1, 0])),
        (
            "goaway short",
            control(frame_type::GOAWAY, 0, &[0, 0, 0, 1]),
        ),
        (
            "window short",
            control(frame_type::WINDOW_UPDATE, 0, &[0, 0, 0, 1]),
        ),
        (
            "settings count",
            control(
                frame_type::SETTINGS,
                0,
                &[0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1],
            ),
        ),
        (
            "syn short",
            control(frame_type::SYN_STREAM, 0, &[0, 0, 0, 1]),
        ),
        ("reply short", control(frame_type::SYN_REPLY, 0, &[0, 0])),
        (
            "garbage zlib",
            control(frame_type::SYN_REPLY, 0, &[0, 0, 0, 1, 0x12, 0x34, 0x56]),
        ),
        ("wrong version", {
            let mut b = BytesMut::new();
            FrameHeader::Control {
                version: 2,
                frame_type: frame_type::PING,
                flags: 0,
                length: 4,
            }
            .write(&mut b);
            b.put_u32(1);
            b
        }),
        ("data stream 0", {
            let mut b = BytesMut::new();
            FrameHeader::Data {
                stream_id: 0,
                flags: 0,
                length: 1,
            }
            .write(&mut b);
            b.put_u8(1);
            b
        }),
    ];
    for (name, mut buf) in cases {
        let mut dec = Decoder::default();
        assert!(dec.decode(&mut buf).is_err(), "{name} should fail");
    }
}

#[test]
fn unknown_control_types_are_skipped() {
    let mut dec = Decoder::default();
    let mut buf = control(0x00ff, 0x40, b"whatever");
    buf.put_slice(&control(frame_type::PING, 0, &[0, 0, 0, 9]));
    assert_eq!(
        decode_all(&mut dec, buf),
        vec![
            Frame::Unknown {
                frame_type: 0xff,
                flags: 0x40,
                length: 8
            },
            Frame::Ping { id: 9 }
        ]
    );
}

/// A SYN_REPLY whose block is `raw`, compressed by a fresh context.
fn reply_with_raw_block(raw: &[u8]) -> BytesMut {
    let mut enc = Encoder::new();
    let block = enc.compress_block(raw).unwrap();
    let mut payload = vec![0, 0, 0, 1];
    payload.extend_from_slice(&block);
    control(frame_type::SYN_REPLY, 0, &payload)
}

fn raw_block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.put_u32(pairs.len() as u32);
    for (n, v) in pairs {
        raw.put_u32(n.len() as u32);
        raw.put_slice(n);
        raw.put_u32(v.len() as u32);
        raw.put_slice(v);
    }
    raw
}

#[test]
fn malformed_header_blocks_are_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("uppercase", raw_block(&[(b"Port", b"1")])),
        ("duplicate", raw_block(&[(b"port", b"1"), (b"port", b"2")])),
        ("empty name", raw_block(&[(b"", b"1")])),
        ("not utf-8", raw_block(&[(b"x", b"\xff")])),
        ("forbidden", raw_block(&[(b"connection", b"close")])),
        ("truncated", raw_block(&[(b"port", b"1")])[..10].to_vec()),
        ("trailing", {
            let mut b = raw_block(&[(b"port", b"1")]);
            b.push(0);
            b
        }),
        ("count too big", {
            let mut b = raw_block(&[(b"port", b"1")]);
            b[..4].copy_from_slice(&1000u32.to_be_bytes());
            b
        }),
        ("length beyond block", {
            let mut b = raw_block(&[(b"port", b"1")]);
            b[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
            b
        }),
    ];
    for (name, raw) in cases {
        let mut dec = Decoder::default();
        let mut frame = reply_with_raw_block(&raw);
        assert!(dec.decode(&mut frame).is_err(), "{name} should fail");
    }
    // Too many headers for the configured count.
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..11)
        .map(|i| (format!("h{i}").into_bytes(), b"v".to_vec()))
        .collect();
    let pairs: Vec<(&[u8], &[u8])> = many.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    let mut dec = Decoder::new(Limits {
        max_header_count: 10,
        ..Limits::default()
    });
    assert!(
        dec.decode(&mut reply_with_raw_block(&raw_block(&pairs)))
            .is_err()
    );
}

#[test]
fn decompression_stops_at_the_block_limit() {
    // 1 MiB of one byte compresses to about a kilobyte: a small frame, a huge block.
    let bomb = vec![b'a'; 1 << 20];
    let raw = raw_block(&[(b"x", &bomb)]);
    let mut frame = reply_with_raw_block(&raw);
    assert!(frame.len() < 16 * 1024, "{}", frame.len());
    let mut dec = Decoder::new(Limits {
        max_header_block: 64 * 1024,
        ..Limits::default()
    });
    assert!(matches!(
        dec.decode(&mut frame),
        Err(Error::HeaderBlockTooLarge { max: 65536 })
    ));
    // The default limit (256 KiB) refuses it too; a generous one accepts it.
    let mut frame = reply_with_raw_block(&raw);
    let mut dec = Decoder::new(Limits {
        max_header_block: 2 << 20,
        ..Limits::default()
    });
    match dec.decode(&mut frame).unwrap() {
        Some(Frame::SynReply { headers, .. }) => {
            assert_eq!(headers.get("x").map(str::len), Some(1 << 20))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_reply_block_reads_as_no_headers() {
    let mut dec = Decoder::default();
    let mut buf = control(frame_type::SYN_REPLY, 0, &[0, 0, 0, 7]);
    assert_eq!(
        dec.decode(&mut buf).unwrap(),
        Some(Frame::SynReply {
            stream_id: 7,
            fin: false,
            headers: Headers::new()
        })
    );
}

#[test]
fn invalid_outgoing_frames_leave_the_encoder_usable() {
    let mut enc = Encoder::new();
    let mut buf = BytesMut::new();
    let bad = [
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new().with("Host", "x"),
        },
        Frame::SynReply {
            stream_id: 0,
            fin: false,
            headers: Headers::new(),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new().with("x", "a\0b"),
        },
        Frame::RstStream {
            stream_id: 1,
            status: 0,
        },
        Frame::Ping { id: 0 },
        Frame::Unknown {
            frame_type: 99,
            flags: 0,
            length: 0,
        },
    ];
    for f in &bad {
        assert!(enc.encode(f, &mut buf).is_err(), "{f:?}");
    }
    assert!(buf.is_empty());
    let good = Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: Headers::new().with("host", "allowed in replies"),
    };
    enc.encode(&good, &mut buf).unwrap();
    assert_eq!(decode_all(&mut Decoder::default(), buf), vec![good]);
}

proptest! {
    #[test]
    fn decode_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut dec = Decoder::new(Limits { max_data_payload: 4096, max_control_payload: 4096, max_header_block: 4096, max_header_count: 16 });
        let mut buf = BytesMut::new();
        'outer: for c in chunks {
            buf.put_slice(&c);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn valid_prefix_then_garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..256)) {
        // A real first block primes the context, so garbage reaches the inflater mid-stream.
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(ZLIB_FRAMES[0]);
        prop_assert!(dec.decode(&mut buf).unwrap().is_some());
        let mut frame = control(frame_type::SYN_STREAM, 0, &[&[0u8, 0, 0, 3, 0, 0, 0, 0][..], &garbage].concat());
        let _ = dec.decode(&mut frame);
    }

    #[test]
    fn headers_round_trip(pairs in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,40}"), 0..12)) {
        prop_assume!(pairs.iter().all(|(n, _)| !FORBIDDEN_IN_RESPONSE.contains(&n.as_str())));
        let headers: Headers = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let frame = Frame::Headers { stream_id: 1, fin: false, headers: headers.clone() };
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        enc.encode(&frame, &mut buf).unwrap();
        let decoded = Decoder::default().decode(&mut buf).unwrap();
        let Some(Frame::Headers { headers: got, .. }) = decoded else { panic!("{decoded:?}") };
        // Same values per name, in order (the wire groups them by name).
        for (name, _) in headers.iter() {
            prop_assert_eq!(got.get_all(name).collect::<Vec<_>>(), headers.get_all(name).collect::<Vec<_>>());
        }
        prop_assert_eq!(got.len(), headers.len());
    }
}
