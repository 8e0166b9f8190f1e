//! Both binaries driven by tether's own configuration format only: every setting, listen
//! addresses included, comes from the file; the command line is `--config FILE` and nothing
//! else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::StatusCode;
use test_support::client::body_bytes;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cloud, PATIENCE, Process, World, binary};

const LOGS: &[u8] = b"configured by file\n";

fn cloudstream_yaml(world: &World, extra: &str) -> Result<PathBuf> {
    let d = world.dir.path().display();
    let text = format!(
        "apiVersion: tether.io/v1alpha1
kind: CloudStream
cloudStream:
  tlsTunnelCAFile: {d}/ca.crt
  tlsTunnelCertFile: {d}/server.crt
  tlsTunnelPrivateKeyFile: {d}/server.key
  tlsStreamCAFile: {d}/ca.crt
  tlsStreamCertFile: {d}/server.crt
  tlsStreamPrivateKeyFile: {d}/server.key
listen:
  tunnel: 127.0.0.1:0
  stream: 127.0.0.1:0
  admin: 127.0.0.1:0
session:
  streamWindow: 262144
  pingInterval: 1s
  deadAfter: 10s
streamServer:
  responseTimeout: 10s
log:
  level: info,tunnel_session=debug
{extra}"
    );
    let path = world.path("cloudstream.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn edgestream_yaml(
    world: &World,
    node: &str,
    server: SocketAddr,
    kubelet: SocketAddr,
) -> Result<PathBuf> {
    let cert = world.pki.node(node)?;
    world
        .pki
        .write_pem_files(world.dir.path(), &format!("node-{node}"), &cert)?;
    let d = world.dir.path().display();
    let text = format!(
        "apiVersion: tether.io/v1alpha1
kind: EdgeStream
edgeStream:
  server: {server}
  tlsTunnelCAFile: {d}/ca.crt
  tlsTunnelCertFile: {d}/node-{node}.crt
  tlsTunnelPrivateKeyFile: {d}/node-{node}.key
  handshakeTimeout: 10
edged:
  hostnameOverride: {node}
  nodeIP: 10.0.0.31
kubelet:
  address: {kubelet}
listen:
  admin: 127.0.0.1:0
session:
  pingInterval: 1s
  deadAfter: 10s
operations:
  metrics: false
backoff:
  initial: 50ms
  max: 1s
"
    );
    let path = world.path(&format!("edgestream-{node}.yaml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts cloudstream with `--config FILE` only and learns its ports from stdout.
async fn start_cloud(world: &World, config: &Path) -> Result<Cloud> {
    let config = config.to_string_lossy().into_owned();
    let mut process = Process::spawn(
        "cloudstream",
        &["--config", &config],
        world.path("cloudstream.log"),
    )?;
    let line = process.wait_line("cloudstream listening").await?;
    let field = |name: &str| -> Result<SocketAddr> {
        let prefix = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no {name}= in {line:?}"))?
            .parse()
            .context("bad address")
    };
    Ok(Cloud {
        tunnel: field("tunnel")?,
        stream: field("stream")?,
        admin: Some(field("admin")?),
        process,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_run_from_their_own_config_files_only() {
    let world = World::new().unwrap();
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(Bytes::from_static(LOGS)),
        )
        .start()
        .await
        .unwrap();

    let cloud_config = cloudstream_yaml(&world, "").unwrap();
    let cloud = start_cloud(&world, &cloud_config).await.unwrap();
    // The listen addresses came from the file: loopback, ephemeral ports.
    assert!(cloud.tunnel.ip().is_loopback() && cloud.tunnel.port() != 0);
    assert!(cloud.stream.ip().is_loopback() && cloud.stream.port() != 0);

    let edge_config = edgestream_yaml(&world, "edge-1", cloud.tunnel, kubelet.addr()).unwrap();
    let edge_config = edge_config.to_string_lossy().into_owned();
    let mut edge = Process::spawn(
        "edgestream",
        &["--config", &edge_config],
        world.path("edgestream-edge-1.log"),
    )
    .unwrap();
    edge.wait_line("edgestream admin=").await.unwrap();
    let line = edge.wait_line("edgestream connected").await.unwrap();
    assert!(line.contains("dialect=tether/2"), "{line}");

    let resp = tokio::time::timeout(
        PATIENCE,
        world.get(&cloud, "edge-1", "/containerLogs/default/web/app", &[]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", cloud.process.logs());
    assert_eq!(body_bytes(resp.into_body()).await.unwrap(), LOGS);

    // `operations.metrics: false` in the edge's file: refused at the edge.
    let resp = world.get(&cloud, "edge-1", "/metrics", &[]).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{}", edge.logs());
    // Also when the refused request has a body larger than the stream window, which the
    // cloud is still sending when the refusal arrives: the edge's reason wins.
    let post = http::Request::post("/stats/summary")
        .body(http_body_util::Full::new(Bytes::from(vec![b' '; 4 << 20])))
        .unwrap();
    let resp = world.request(&cloud, "edge-1", post).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{}", edge.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_fails_before_listening_naming_the_key_and_the_file() {
    let world = World::new().unwrap();
    let config = cloudstream_yaml(&world, "tunnelServer:\n  maxConnectoins: 10\n").unwrap();
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(binary("cloudstream").unwrap())
            .arg("--config")
            .arg(&config)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("tunnelServer.maxConnectoins"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");

    // The same for the edge.
    let edge_config = edgestream_yaml(
        &world,
        "edge-1",
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(&edge_config).unwrap() + "operations2: {}\n";
    std::fs::write(&edge_config, text).unwrap();
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(binary("edgestream").unwrap())
            .arg("--config")
            .arg(&edge_config)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("operations2"), "{stderr}");
    assert!(
        stderr.contains(&edge_config.display().to_string()),
        "{stderr}"
    );
}

/// A stock kubelet serves HTTPS on 10250 and wants a client certificate: the edge dials it
/// with its own CA and certificate from the `kubelet.tls` section, for plain requests and for
/// upgrades alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_reaches_an_https_kubelet_with_its_client_certificate() {
    let world = World::new().unwrap();
    let serving = world.pki.server(&["127.0.0.1"]).unwrap();
    let kubelet = TestKubelet::builder()
        .tls(serving, Some(&world.pki))
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(Bytes::from_static(LOGS)),
        )
        .start()
        .await
        .unwrap();
    assert!(kubelet.is_tls());

    let cloud_config = cloudstream_yaml(&world, "").unwrap();
    let cloud = start_cloud(&world, &cloud_config).await.unwrap();
    let edge_config = edgestream_yaml(&world, "edge-1", cloud.tunnel, kubelet.addr()).unwrap();
    let d = world.dir.path().display();
    let text = std::fs::read_to_string(&edge_config).unwrap().replace(
        &format!("kubelet:\n  address: {}\n", kubelet.addr()),
        &format!(
            "kubelet:\n  address: {}\n  tls:\n    caFile: {d}/ca.crt\n    certFile: {d}/node-edge-1.crt\n    privateKeyFile: {d}/node-edge-1.key\n    serverName: 127.0.0.1\n",
            kubelet.addr()
        ),
    );
    assert!(text.contains("caFile"), "{text}");
    std::fs::write(&edge_config, text).unwrap();
    let edge_config = edge_config.to_string_lossy().into_owned();
    let mut edge = Process::spawn(
        "edgestream",
        &["--config", &edge_config],
        world.path("edgestream-edge-1.log"),
    )
    .unwrap();
    edge.wait_line("edgestream connected").await.unwrap();

    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", edge.logs());
    assert_eq!(body_bytes(resp.into_body()).await.unwrap(), LOGS);

    let io = world.connect_stream(&cloud).await.unwrap();
    let exec = test_support::client::exec_ws(
        io,
        "edge-1",
        "/exec/default/web/app?command=echo&command=over&command=https&output=1",
        &[],
    )
    .await
    .unwrap();
    let out = tokio::time::timeout(PATIENCE, exec.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout, b"over https\n");
    assert!(kubelet.requests().len() >= 2);
}
