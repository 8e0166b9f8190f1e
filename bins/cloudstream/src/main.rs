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
mod ha;
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
        let egress_listener = match settings.egress_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the egress listener on {addr}"))?,
            ),
            None => None,
        };
        let admin_listener = match settings.admin_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener on {addr}"))?,
            ),
            None => None,
        };
        // One machine-readable line on stdout, so scripts and tests learn the bound ports.
        let mut extra = String::new();
        if let Some(l) = &admin_listener {
            extra.push_str(&format!(" admin={}", l.local_addr()?));
        }
        if let Some(l) = &egress_listener {
            extra.push_str(&format!(" egress={}", l.local_addr()?));
        }

        let registry = Arc::new(Registry::new());
        let shutdown = CancellationToken::new();
        let metrics = admin::Metrics::new();
        let readiness = admin::Readiness::new();
        // The directory outlives the tunnel server's drain, so that the sessions' releases
        // are written before the lease is revoked.
        let directory_stop = CancellationToken::new();
        let replicas = match &settings.ha {
            Some(ha_settings) => Some(ha::start(
                ha_settings,
                stream_listener.local_addr()?,
                &cs.stream.cert,
                Arc::new(metrics.clone()),
                directory_stop.clone(),
            )?),
            None => None,
        };
        if let Some(started) = &replicas {
            extra.push_str(&format!(" replica={}", started.forwarding.replica_id));
        }
        println!(
            "cloudstream listening tunnel={} stream={}{extra}",
            tunnel_listener.local_addr()?,
            stream_listener.local_addr()?
        );

        let tunnel_observer: Arc<dyn tunnel_session::server::TunnelObserver> = match &replicas {
            Some(started) => started.replicas.observer.clone(),
            None => Arc::new(metrics.clone()),
        };
        let tunnel = TunnelServer::new(tunnel_tls, registry.clone(), settings.tunnel_server)
            .with_observer(tunnel_observer);
        let mut stream = StreamServer::new(stream_tls, registry.clone(), settings.stream_server)
            .with_observer(Arc::new(metrics.clone()));
        if let Some(listener) = egress_listener {
            stream = stream.with_egress(listener);
        }
        let mut directory_tasks = Vec::new();
        if let Some(started) = replicas {
            stream = stream.with_forwarding(started.forwarding);
            let directory = started.replicas.directory.clone();
            directory_tasks.push(tokio::spawn(started.replicas.driver));
            ha::show_in_readiness(directory.clone(), &readiness);
            directory_tasks.push(tokio::spawn(ha::sample(
                directory,
                metrics.clone(),
                directory_stop.clone(),
            )));
        }
        let (stream, pod_watch) = with_pod_resolver(
            stream,
            &settings.kube_api,
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
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
        // Every session has ended and queued its release: stop the directory, which revokes
        // this replica's lease so the others drop its claims at once.
        directory_stop.cancel();
        for task in directory_tasks {
            let _ = task.await;
        }
        let _ = sampler.await;
        if let Some(task) = pod_watch {
            let _ = task.await;
        }
        admin_stop.cancel();
        if let Some(task) = admin_task {
            task.await.context("admin task")??;
        }
        info!("stopped");
        Ok(())
    })
}

/// How often live sessions' ping round trips (and the pod cache's size) are recorded.
const RTT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Finds pods' nodes through the Kubernetes API: the configured kubeconfig, or the
/// in-cluster service account. Returns the server and the watch task that feeds the cache.
#[cfg(feature = "k8s")]
async fn with_pod_resolver(
    stream: StreamServer,
    kube_api: &settings::KubeApiSettings,
    metrics: admin::Metrics,
    shutdown: CancellationToken,
) -> Result<(StreamServer, Option<tokio::task::JoinHandle<()>>)> {
    use stream_server::pods::kube::{KubeApi, KubePodResolver, ResolverOptions, connect};
    let api = KubeApi {
        kubeconfig: kube_api.kubeconfig.clone(),
        master: kube_api.master.clone(),
    };
    let Some((client, source)) = connect(&api)
        .await
        .context("the Kubernetes API (kubeAPIConfig)")?
    else {
        warn!(
            "no Kubernetes API configured (kubeAPIConfig.kubeConfig or --kubeconfig, or run in a \
             pod): pod requests are routed by their Host header only, which kube-apiserver does \
             not set to the node for SPDY exec, attach and port-forward"
        );
        return Ok((stream, None));
    };
    let options = ResolverOptions {
        qps: kube_api.qps,
        burst: kube_api.burst,
        ..ResolverOptions::default()
    };
    let (resolver, watch) = KubePodResolver::new(client, options).context("the pod resolver")?;
    info!(%source, "finding pods' nodes through the Kubernetes API");
    let sampled = resolver.clone();
    let stop = shutdown.clone();
    let sample = async move {
        let mut tick = tokio::time::interval(RTT_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stats = sampled.stats();
            metrics.pod_cache(stats.cached, stats.watching);
        }
    };
    let task = tokio::spawn(async move {
        tokio::join!(watch.run(shutdown), sample);
    });
    Ok((stream.with_pod_resolver(Arc::new(resolver)), Some(task)))
}

/// Without the `k8s` feature there is no Kubernetes client; say so if one was configured.
#[cfg(not(feature = "k8s"))]
async fn with_pod_resolver(
    stream: StreamServer,
    kube_api: &settings::KubeApiSettings,
    _metrics: admin::Metrics,
    _shutdown: CancellationToken,
) -> Result<(StreamServer, Option<tokio::task::JoinHandle<()>>)> {
    if kube_api.kubeconfig.is_some() || kube_api.master.is_some() {
        warn!(
            "this cloudstream was built without the `k8s` feature: the Kubernetes API settings are ignored"
        );
    }
    Ok((stream, None))
}
