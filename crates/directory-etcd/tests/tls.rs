//! The directory over etcd's TLS with client certificates (`--client-cert-auth`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use directory_etcd::{DirectoryConfig, LinkState};
use support::{Etcd, Replica, WAIT, all_see, init_tracing, ip};

const TTL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_directory_over_mutual_tls() {
    init_tracing();
    let etcd = Etcd::start_tls().await.unwrap();
    assert!(etcd.endpoint().starts_with("https://"));
    let a = Replica::start("a", etcd.config(TTL));
    let b = Replica::start("b", etcd.config(TTL));
    a.dir.claim("edge-1", &[ip("10.0.0.1")], 1);
    all_see(&[&a, &b], "edge-1", Some("a")).await;
    assert_eq!(&*b.dir.lookup_ip(ip("10.0.0.1")).unwrap().node, "edge-1");
    a.dir.release("edge-1", 1);
    all_see(&[&a, &b], "edge-1", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_client_certificate_stays_stale_and_says_why() {
    init_tracing();
    let etcd = Etcd::start_tls().await.unwrap();
    let mut config: DirectoryConfig = etcd.config(TTL);
    if let Some(tls) = config.tls.as_mut() {
        tls.client = None;
    }
    let refused = Replica::start("refused", config);
    refused.dir.claim("edge-1", &[], 1);
    refused
        .dir
        .wait_until(WAIT, "two failed attempts", |d| {
            d.status().counters.etcd_errors >= 2
        })
        .await
        .unwrap();
    let status = refused.dir.status();
    assert!(!status.synced, "{status:?}");
    let LinkState::Stale { reason, .. } = &status.link else {
        panic!("{status:?}")
    };
    assert!(!reason.is_empty());

    // A replica with its certificate sees nothing of the refused one.
    let good = Replica::start("good", etcd.config(TTL));
    good.fresh().await;
    assert!(good.dir.lookup_name("edge-1").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_trust_etcd_refuses_it() {
    init_tracing();
    let etcd = Etcd::start_tls().await.unwrap();
    let other_ca = test_support::pki::TestPki::new().unwrap();
    let mut config = etcd.config(TTL);
    if let Some(tls) = config.tls.as_mut() {
        tls.ca_pem = other_ca.ca_pem().into_bytes();
    }
    let wary = Replica::start("wary", config);
    wary.dir
        .wait_until(WAIT, "a failed attempt", |d| {
            d.status().counters.etcd_errors >= 1
        })
        .await
        .unwrap();
    assert!(!wary.dir.status().synced);
}
