//! The process chores of both binaries' `main`: logging set-up and waiting for the signal to
//! stop.

use anyhow::{Context, Result};

use crate::tether_file::{LogFormat, LogSettings};

/// Installs the global tracing subscriber: lines on stderr, in the configured format, filtered
/// by [`LogSettings::filter`] (with `RUST_LOG` from the environment).
pub fn init_tracing(log: &LogSettings) {
    let filter = log.filter(std::env::var("RUST_LOG").ok());
    // `settings` checked the filter; a bad one here would be RUST_LOG, so fall back to info.
    let filter = crate::check::parse_log_filter(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The multi-threaded tokio runtime `main` runs the servers on, with every driver enabled.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Returns when the process receives SIGTERM or Ctrl-C (SIGINT).
pub async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
