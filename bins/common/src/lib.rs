//! `tether-cli`: the command-line and configuration plumbing that the `cloudstream` and
//! `edgestream` binaries share.
//!
//! How this fits: each binary parses its own flags and has its own `settings` (tether's format)
//! and `config` (KubeEdge's `cloudcore.yaml` / `edgecore.yaml`) modules; what they have in
//! common lives here, so one fix reaches both: the vocabulary of tether's own format
//! ([`tether_file`]), the walking of KubeEdge's YAML tree by dotted key path ([`kubeedge`]), and
//! the process chores of `main` ([`process`]: logging set-up, waiting for SIGTERM or Ctrl-C).
//! It is used by the two binaries only, never by the library crates (`tunnel-session`,
//! `stream-server`, `edge-stream`, …), which take typed configuration and know nothing of files,
//! flags or signals.

pub mod kubeedge;
pub mod process;
pub mod tether_file;
