//! Who may connect: the tunnel and the stream server check certificates, node names and node
//! IPs against the real `cloudstream` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::StatusCode;
use test_support::client::{http_get, tls_connect};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use test_support::pki::TestPki;
use tether_e2e::{Cloud, Edge, PATIENCE, World};
use tunnel_session::client::{DialConfig, dial};
use tunnel_session::tls::{self, TlsFiles};
use tunnel_session::{NodeIdentity, SessionConfig};

/// Dials the cloud in-process, as edgestream does, with a certificate for `cert_node`
/// claiming to be `claimed`.
async fn dial_as(
    world: &World,
    cloud: &Cloud,
    pki: &TestPki,
    cert_node: &str,
    claimed: &str,
    ip: &str,
) -> tunnel_session::Result<(
    tunnel_session::Session,
    tunnel_session::Incoming,
    tunnel_session::SessionDriver,
)> {
    let id = pki.node(cert_node).unwrap();
    let name = format!("dial-{cert_node}-{claimed}");
    let (cert, key) = pki.write_pem_files(world.dir.path(), &name, &id).unwrap();
    let files = TlsFiles {
        ca: world.path("ca.crt"),
        cert,
        key,
    };
    let config = DialConfig {
        server: cloud.tunnel.to_string(),
        tls: tls::client_config(&files, true).unwrap(),
        node: NodeIdentity {
            name: claimed.into(),
            ip: Some(ip.parse().unwrap()),
        },
        handshake_timeout: PATIENCE,
        session: SessionConfig::default(),
        offer_tether2: true,
    };
    dial(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_checks_the_certificate_against_the_claimed_node() {
    tls::install_default_provider();
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();

    // A certificate for edge-2 claiming edge-1: 403 with both names.
    let err = dial_as(&world, &cloud, &world.pki, "edge-2", "edge-1", "10.0.0.12")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("edge-2") && err.contains("edge-1"), "{err}");

    // A node certificate from another CA: refused during TLS.
    let foreign = TestPki::new().unwrap();
    let err = dial_as(&world, &cloud, &foreign, "edge-1", "edge-1", "10.0.0.11")
        .await
        .unwrap_err();
    assert!(matches!(err, tunnel_session::Error::Handshake(_)), "{err}");

    // The right certificate gets in.
    let (session, _incoming, driver) =
        dial_as(&world, &cloud, &world.pki, "edge-1", "edge-1", "10.0.0.11")
            .await
            .unwrap();
    let running = tokio::spawn(driver.run());

    // Another node may not take edge-1's IP while edge-1 is connected: 409.
    let err = dial_as(&world, &cloud, &world.pki, "edge-3", "edge-3", "10.0.0.11")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("409") && err.contains("edge-1"), "{err}");

    // A newer session for edge-1 replaces the older one, which is closed.
    let (newer, _incoming2, driver2) =
        dial_as(&world, &cloud, &world.pki, "edge-1", "edge-1", "10.0.0.11")
            .await
            .unwrap();
    let running2 = tokio::spawn(driver2.run());
    tokio::time::timeout(PATIENCE, session.closed())
        .await
        .unwrap();
    let _ = running.await.unwrap();
    assert!(!newer.is_closed());
    newer.close("test done");
    let _ = running2.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_server_requires_a_client_certificate_from_its_ca() {
    let world = World::new().unwrap();
    let cloud = Cloud::start(&world, &[]).await.unwrap();
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "app",
            ContainerSpec::with_logs(&b"hi\n"[..]),
        )
        .start()
        .await
        .unwrap();
    let _edge = Edge::start(&world, &cloud, "edge-1", "10.0.0.11", kubelet.addr(), &[])
        .await
        .unwrap();

    // The apiserver's certificate works.
    let resp = world
        .get(&cloud, "edge-1", "/containerLogs/default/web/app", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A client certificate from another CA, and no certificate at all, are refused: the
    // request never gets an answer and the kubelet never sees it.
    let foreign = TestPki::new().unwrap();
    let stranger = foreign
        .client("kube-apiserver-kubelet-client", None)
        .unwrap();
    for client in [Some(&stranger), None] {
        // Trust the real server, present the wrong (or no) client certificate.
        let config = world.pki.client_config(client).unwrap();
        let before = kubelet.requests().len();
        let attempt = async {
            let io = tls_connect(cloud.stream, config, "127.0.0.1").await?;
            http_get(io, "edge-1", "/containerLogs/default/web/app", &[]).await
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap();
        eprintln!("refused after {:?}", started.elapsed());
        assert!(
            result.is_err(),
            "a client without a valid certificate got {result:?}"
        );
        assert_eq!(kubelet.requests().len(), before);
    }
}
