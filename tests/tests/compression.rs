//! Compressed bodies (tether/2): byte-exact through a link, smaller on the wire, never sent
//! to a stock-dialect edge, off when configured off.
//!
//! The edge's tunnel runs through a linkem proxy (unlimited rate), whose byte counters show
//! what crossed the "internet" between edge and cloud.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Result, ensure};
use http::StatusCode;
use http_body_util::BodyExt;
use linkem::{Link, LinkConfig};
use test_support::client::http_get;
use test_support::content::realistic_log;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, Edge, World};

const NODE: &str = "edge-1";

/// Fetches the logs through cloud → link → edge and returns (body, bytes the link carried
/// from the edge to the cloud during the request).
async fn logs_through(
    cloud_args: &[&str],
    edge_args: &[&str],
    log: &bytes::Bytes,
) -> Result<(Vec<u8>, u64)> {
    tunnel_session::tls::install_default_provider();
    let world = World::new()?;
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(log.clone()),
        )
        .start()
        .await?;
    let cloud = Cloud::start(&world, cloud_args).await?;
    let link = Link::start(cloud.tunnel, LinkConfig::unlimited())?;
    let mut edge = Edge::spawn(
        &world,
        link.addr(),
        NODE,
        "10.0.0.11",
        kubelet.addr(),
        NODE,
        edge_args,
    )?;
    edge.process.wait_line("edgestream connected").await?;
    let before = link.stats().up.forwarded;
    let io = world.connect_stream(&cloud).await?;
    let resp = http_get(io, NODE, "/containerLogs/default/web/app", &[]).await?;
    ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
    ensure!(
        !resp
            .headers()
            .contains_key(stream_compress::ENCODING_HEADER),
        "our own header leaked to the client"
    );
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    let carried = link.stats().up.forwarded - before;
    link.shutdown().await;
    Ok((body, carried))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_compressed_on_the_link_and_arrive_exact() -> Result<()> {
    let log = realistic_log(4 << 20);
    let (body, carried) = logs_through(&["--compress-bodies", "on"], &[], &log).await?;
    ensure!(
        body == log,
        "body differs ({} of {} bytes)",
        body.len(),
        log.len()
    );
    ensure!(
        carried * 4 < log.len() as u64,
        "the link carried {carried} bytes for a {}-byte log",
        log.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_means_off() -> Result<()> {
    let log = realistic_log(1 << 20);
    let (body, carried) = logs_through(&["--compress-bodies", "off"], &[], &log).await?;
    ensure!(body == log);
    ensure!(carried >= log.len() as u64, "carried {carried}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_leaves_a_loopback_link_alone() -> Result<()> {
    let log = realistic_log(1 << 20);
    let (body, carried) = logs_through(&[], &[], &log).await?;
    ensure!(body == log);
    ensure!(carried >= log.len() as u64, "carried {carried}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_dialect_edge_never_gets_compression() -> Result<()> {
    let log = realistic_log(1 << 20);
    let (body, carried) =
        logs_through(&["--compress-bodies", "on"], &["--kubeedge-only"], &log).await?;
    ensure!(body == log);
    ensure!(carried >= log.len() as u64, "carried {carried}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_configured_off_sends_plain_bodies() -> Result<()> {
    let log = realistic_log(1 << 20);
    let (body, carried) = logs_through(
        &["--compress-bodies", "on"],
        &["--compress-bodies=false"],
        &log,
    )
    .await?;
    ensure!(body == log);
    ensure!(carried >= log.len() as u64, "carried {carried}");
    Ok(())
}
