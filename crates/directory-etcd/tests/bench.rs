//! Measurements against a real etcd, printed, never asserted (run on demand):
//!
//! ```text
//! cargo test --release -p directory-etcd --test bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `claims_spread_over_three_replicas`: 10,000 claims (one IP each) spread over three
//!   directories: etcd writes per second, and the time until every replica sees every node.
//! - `cache_memory`: bytes of heap per cache entry, from jemalloc's own allocation counter,
//!   for a replica that only observes a fleet of 10,000 nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use support::{Etcd, Replica, WAIT, init_tracing};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const NODES: usize = 10_000;
const TTL: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(300);

fn node_ip(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap();
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// Claims `NODES` nodes spread round-robin over `replicas`; returns (all written, all seen).
async fn claim_all(replicas: &[Replica]) -> (Duration, Duration) {
    let start = Instant::now();
    for i in 0..NODES {
        let replica = &replicas[i % replicas.len()];
        replica
            .dir
            .claim(&format!("edge-{i:05}"), &[node_ip(i)], i as u64);
    }
    let mut written = Duration::ZERO;
    for replica in replicas {
        replica
            .dir
            .wait_until(LONG, "all local claims written", |d| {
                d.status().pending == 0
            })
            .await
            .unwrap();
        written = written.max(start.elapsed());
    }
    let mut seen = Duration::ZERO;
    for replica in replicas {
        replica
            .dir
            .wait_until(LONG, "every node seen", |d| d.status().entries >= NODES)
            .await
            .unwrap();
        seen = seen.max(start.elapsed());
    }
    (written, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn claims_spread_over_three_replicas() {
    init_tracing();
    for max_in_flight in [64, 1] {
        let etcd = Etcd::start().await.unwrap();
        let replicas: Vec<Replica> = ["a", "b", "c"]
            .into_iter()
            .map(|id| {
                let mut config = etcd.config(TTL);
                config.max_in_flight = max_in_flight;
                Replica::start(id, config)
            })
            .collect();
        for r in &replicas {
            r.dir.synced(WAIT).await.unwrap();
        }
        let (written, seen) = claim_all(&replicas).await;
        let writes: u64 = replicas
            .iter()
            .map(|r| r.dir.status().counters.writes)
            .sum();
        println!(
            "max_in_flight={max_in_flight}: {writes} claims over 3 replicas written in {:.2} s \
             ({:.0} etcd writes/s); every replica saw all {NODES} nodes after {:.2} s",
            written.as_secs_f64(),
            writes as f64 / written.as_secs_f64(),
            seen.as_secs_f64(),
        );
    }
}

fn allocated() -> usize {
    tikv_jemalloc_ctl::epoch::advance().unwrap();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn cache_memory() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let writers: Vec<Replica> = ["a", "b", "c"]
        .into_iter()
        .map(|id| Replica::start(id, etcd.config(TTL)))
        .collect();
    for r in &writers {
        r.dir.synced(WAIT).await.unwrap();
    }
    claim_all(&writers).await;

    // An observer of an empty prefix costs the client, the lease and the watch; the same
    // observer of the fleet costs that plus the cache. The difference is the cache.
    let mut empty_config = etcd.config(TTL);
    empty_config.prefix = "/tether/empty/".into();
    let before = allocated();
    let empty = Replica::start("o-empty", empty_config);
    empty.fresh().await;
    let fixed = allocated().saturating_sub(before);

    let before = allocated();
    let observer = Replica::start("o", etcd.config(TTL));
    observer
        .dir
        .wait_until(LONG, "the fleet", |d| d.status().entries >= NODES)
        .await
        .unwrap();
    observer.fresh().await;
    let total = allocated().saturating_sub(before);
    let per_entry = total.saturating_sub(fixed) as f64 / NODES as f64;
    println!(
        "observer of {NODES} nodes (one IP each, 10-byte names): {total} bytes, of which \
         {fixed} fixed (client, lease, watch); cache ≈ {per_entry:.0} bytes per node"
    );
}
