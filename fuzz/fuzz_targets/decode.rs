//! Feeds arbitrary bytes to every stream-proto decoder. The per-input logic lives in
//! `stream_proto::fuzzing::decode_all`, so `cargo test` replays seeds through the same code.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stream_proto::fuzzing::decode_all(data);
});
