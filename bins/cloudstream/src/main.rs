//! `cloudstream`: the cloud end of the tether tunnel.
//!
//! Parses flags, loads and validates the configuration file (tether's own format or KubeEdge's
//! `cloudcore.yaml`, see `settings`), sets up logging and TLS, binds the listeners, then hands
//! them to `tunnel-session`'s tunnel server and `stream-server`'s kubelet API server, which
//! share one session registry. SIGTERM or Ctrl-C drains both. `cloudstream certs …` writes
//! the certificates a deployment needs instead.

/// jemalloc rather than the system allocator: glibc's malloc keeps the memory of sessions
/// that have left (fragmentation across its arenas), so a cloud that once held thousands of
/// edges never shrank; jemalloc's background threads return freed pages to the OS.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod certs;
mod config;
mod settings;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use stream_server::StreamServer;
use tether_cli::process::{init_tracing, runtime, wait_for_signal};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_session::Registry;
use tunnel_session::server::TunnelServer;
use tunnel_session::tls;

/// The cloud end of the tether tunnel (KubeEdge CloudStream compatible).
///
/// Without a subcommand, runs from --config: tether's own format (apiVersion:
/// tether.io/v1alpha1, kind: CloudStream) or KubeEdge's cloudcore.yaml. Flags and their
/// environment variables override the file. See docs/configuration.md.
#[derive(Debug, Parser)]
#[command(version, about, long_about, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file: tether's CloudStream format or KubeEdge's cloudcore.yaml.
    #[arg(long, env = "CLOUDSTREAM_CONFIG", value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: settings::Flags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a CA, server, kube-apiserver client and node certificates as PEM files.
    Certs(certs::CertsArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Certs(args)) = &cli.command {
        return certs::run(args);
    }
    let config = cli.config.context("--config is required")?;
    let settings = settings::load(&config, &cli.flags)?;
    init_tracing(&settings.log);
    for warning in &settings.warnings {
        warn!("{warning}");
    }
    tls::install_default_provider();

    let cs = &settings.cloud_stream;
    let tunnel_tls = tls::server_config(&cs.tunnel.tls_files(), &[b"http/1.1"])
        .with_context(|| format!("tunnel TLS ({}.tlsTunnel*)", cs.section))?;
    let stream_tls = tls::server_config(&cs.stream.tls_files(), &[b"h2", b"http/1.1"])
        .with_context(|| format!("stream TLS ({}.tlsStream*)", cs.section))?;
    info!(
        config = %settings.source.display(),
        format = ?settings.format,
        tunnel = %settings.tunnel_addr,
        stream = %settings.stream_addr,
        "starting"
    );

    runtime()?.block_on(async move {
        let (tunnel_addr, stream_addr) = (settings.tunnel_addr, settings.stream_addr);
        let tunnel_listener = TcpListener::bind(tunnel_addr)
            .await
            .with_context(|| format!("binding the tunnel listener on {tunnel_addr}"))?;
        let stream_listener = TcpListener::bind(stream_addr)
            .await
            .with_context(|| format!("binding the stream listener on {stream_addr}"))?;
        let admin_listener = match settings.admin_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener on {addr}"))?,
            ),
            None => None,
        };
        // One machine-readable line on stdout, so scripts and tests learn the bound ports.
        let admin_text = match &admin_listener {
            Some(l) => format!(" admin={}", l.local_addr()?),
            None => String::new(),
        };
        println!(
            "cloudstream listening tunnel={} stream={}{admin_text}",
            tunnel_listener.local_addr()?,
            stream_listener.local_addr()?
        );

        let registry = Arc::new(Registry::new());
        let shutdown = CancellationToken::new();
        let metrics = admin::Metrics::new();
        let readiness = admin::Readiness::new();
        let tunnel = TunnelServer::new(tunnel_tls, registry.clone(), settings.tunnel_server)
            .with_observer(Arc::new(metrics.clone()));
        let stream = StreamServer::new(stream_tls, registry.clone(), settings.stream_server)
            .with_observer(Arc::new(metrics.clone()));
        let stream = with_pod_resolver(stream, settings.kube_api.kubeconfig.as_deref()).await?;
        let tunnel_task = tokio::spawn(tunnel.serve(tunnel_listener, shutdown.clone()));
        let stream_task = tokio::spawn(stream.serve(stream_listener, shutdown.clone()));
        let sampler = tokio::spawn(admin::sample_rtt(
            registry,
            metrics.clone(),
            RTT_SAMPLE_INTERVAL,
            shutdown.clone(),
        ));
        // Both listeners are bound and serving: ready.
        readiness.set_ready(true);
        // The admin port outlives the drain so probes and scrapes see it through.
        let admin_stop = CancellationToken::new();
        let admin_task = admin_listener.map(|l| {
            tokio::spawn(admin::serve(
                l,
                metrics,
                readiness.clone(),
                admin_stop.clone(),
            ))
        });

        wait_for_signal().await?;
        info!("shutting down: draining streams and sessions");
        readiness.set_ready(false);
        shutdown.cancel();
        let (tunnel_result, stream_result) = tokio::join!(tunnel_task, stream_task);
        tunnel_result.context("tunnel server task")??;
        stream_result.context("stream server task")??;
        let _ = sampler.await;
        admin_stop.cancel();
        if let Some(task) = admin_task {
            task.await.context("admin task")??;
        }
        info!("stopped");
        Ok(())
    })
}

/// How often live sessions' ping round trips are recorded.
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Finds pods' nodes through the Kubernetes API when a kubeconfig is configured
/// (`kubeAPIConfig.kubeConfig`).
#[cfg(feature = "k8s")]
async fn with_pod_resolver(
    stream: StreamServer,
    kubeconfig: Option<&std::path::Path>,
) -> Result<StreamServer> {
    let Some(path) = kubeconfig else {
        return Ok(stream);
    };
    let resolver = stream_server::pods::kube::KubePodResolver::from_kubeconfig(path)
        .await
        .with_context(|| format!("kubeAPIConfig.kubeConfig {}", path.display()))?;
    Ok(stream.with_pod_resolver(Arc::new(resolver)))
}

/// Without the `k8s` feature there is no Kubernetes API client, so there is nothing to add.
#[cfg(not(feature = "k8s"))]
async fn with_pod_resolver(
    stream: StreamServer,
    _kubeconfig: Option<&std::path::Path>,
) -> Result<StreamServer> {
    Ok(stream)
}
