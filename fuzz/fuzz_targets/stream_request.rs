//! Feeds arbitrary bytes to `stream_server::fuzzing::request`.
//! The per-input logic lives there, so the corpus replay tests
//! (`tests/tests/fuzz_corpus.rs`) run the same code on stable Rust.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stream_server::fuzzing::request(data);
});
