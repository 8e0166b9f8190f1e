//! `tether-cli`: the command-line and configuration plumbing that the `cloudstream` and
//! `edgestream` binaries share.
//!
//! How this fits: each binary declares its settings once each in its `settings` module with
//! [`settings!`], and keeps KubeEdge's defaults and readers in its `config` module; what they
//! have in common lives here, so one fix reaches both: the layering of a setting over defaults,
//! the file (ours or KubeEdge's) and its flag ([`setting`]), the checks of single values
//! ([`check`]), the vocabulary of tether's own format ([`tether_file`]), the walking of
//! KubeEdge's YAML tree by dotted key path ([`kubeedge`]), and the process chores of `main`
//! ([`process`]: logging set-up, waiting for SIGTERM or Ctrl-C).
//! It is used by the two binaries only, never by the library crates (`tunnel-session`,
//! `stream-server`, `edge-stream`, …), which take typed configuration and know nothing of files,
//! flags or signals.

pub mod check;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod kubeedge;
pub mod process;
pub mod setting;
pub mod tether_file;
