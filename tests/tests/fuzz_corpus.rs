//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) through the entry points
//! the fuzz targets call, on stable Rust, so every `cargo test --workspace` run covers what
//! the fuzzer found interesting (and any crash it found, once fixed, stays fixed).
//!
//! The corpora are minimised (`cargo fuzz cmin`); docs/fuzzing.md says how they were grown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// Every file of the corpus of `target`, in a stable order; fails if there are none, so a
/// corpus lost in a move cannot pass silently.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect()
}

/// Runs `entry` on every file of `target`'s corpus, naming the file that fails.
fn replay(target: &str, entry: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let result = std::panic::catch_unwind(|| entry(&data));
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{}: {message}", path.display());
        }
    }
}

#[test]
fn decode() {
    replay("decode", stream_proto::fuzzing::decode_all);
}

#[test]
fn ws_frames() {
    replay("ws_frames", tunnel_session::fuzzing::frames);
}

#[test]
fn tunnel_handshake() {
    replay("tunnel_handshake", tunnel_session::fuzzing::handshake);
}

#[test]
fn kubelet_head() {
    replay("kubelet_head", stream_server::fuzzing::kubelet_response);
}

#[test]
fn stream_request() {
    replay("stream_request", stream_server::fuzzing::request);
}

#[test]
fn config_tether() {
    replay("config_tether", tether_cli::fuzzing::tether);
}

#[test]
fn config_kubeedge() {
    replay("config_kubeedge", tether_cli::fuzzing::kubeedge);
}
