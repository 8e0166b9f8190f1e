//! The directory against a real etcd: several replicas (directories) in one process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use etcd_client::GetOptions;
use support::{Etcd, Recorder, Replica, Stop, WAIT, all_see, barrier, init_tracing, ip, wait_told};

const TTL: Duration = Duration::from_secs(5);

async fn three(etcd: &Etcd) -> (Replica, Replica, Replica) {
    let a = Replica::start("a", etcd.config(TTL));
    let b = Replica::start("b", etcd.config(TTL));
    let c = Replica::start("c", etcd.config(TTL));
    for r in [&a, &b, &c] {
        r.dir.synced(WAIT).await.unwrap();
    }
    (a, b, c)
}

/// The keys under the default prefix, as `(key, lease)`.
async fn etcd_keys(etcd: &Etcd) -> Vec<(String, i64)> {
    let mut client = etcd.client().await.unwrap();
    let response = client
        .get("/tether/v1/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.lease()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_seen_everywhere_and_a_release_removes_it() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let (a, b, c) = three(&etcd).await;

    a.dir.claim("edge-1", &[ip("10.0.0.1"), ip("fd00::1")], 7);
    let holder = all_see(&[&a, &b, &c], "edge-1", Some("a")).await;
    assert_eq!(&*holder.addr, "a.replicas.test:10350");
    assert_eq!(holder.session, 7);
    assert_eq!(&*holder.ips, &[ip("10.0.0.1"), ip("fd00::1")]);
    for r in [&a, &b, &c] {
        let by_ip = r.dir.lookup_ip(ip("fd00::1")).unwrap();
        assert_eq!(&*by_ip.node, "edge-1");
        assert_eq!(by_ip.revision, holder.revision);
    }

    // One write, three keys (node + two IPs), all on A's single lease, plus A's record.
    a.fresh().await;
    let lease = a.dir.status().lease.unwrap();
    let keys = etcd_keys(&etcd).await;
    for key in [
        "/tether/v1/nodes/edge-1",
        "/tether/v1/ips/10.0.0.1",
        "/tether/v1/ips/fd00::1",
        "/tether/v1/replicas/a",
    ] {
        assert!(
            keys.contains(&(key.to_owned(), lease)),
            "{key} on lease {lease}: {keys:?}"
        );
    }
    assert_eq!(a.dir.status().counters.writes, 1);
    assert_eq!(
        b.dir.replica_addr("a").as_deref(),
        Some("a.replicas.test:10350")
    );

    a.dir.release("edge-1", 7);
    all_see(&[&a, &b, &c], "edge-1", None).await;
    for r in [&a, &b, &c] {
        assert!(r.dir.lookup_ip(ip("10.0.0.1")).is_none());
    }
    a.fresh().await;
    let keys = etcd_keys(&etcd).await;
    assert!(
        keys.iter()
            .all(|(k, _)| !k.contains("edge-1") && !k.contains("/ips/")),
        "release deletes the node and its IP keys: {keys:?}"
    );
    let status = a.dir.status();
    assert_eq!((status.counters.writes, status.counters.deletes), (1, 1));
    assert_eq!((status.local_claims, status.pending), (0, 0));
    assert!(status.is_connected());
    assert!(a.events.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_re_registers_with_other_ips_drops_the_old_ones() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let (a, b, _c) = three(&etcd).await;

    a.dir.claim("edge-1", &[ip("10.0.0.1"), ip("10.0.0.2")], 1);
    all_see(&[&a, &b], "edge-1", Some("a")).await;
    // A new session of the node on another replica, with one IP changed.
    b.dir.claim("edge-1", &[ip("10.0.0.2"), ip("10.0.0.3")], 1);
    all_see(&[&a, &b], "edge-1", Some("b")).await;
    b.fresh().await;
    for r in [&a, &b] {
        assert!(r.dir.lookup_ip(ip("10.0.0.1")).is_none(), "{}", r.id);
        assert_eq!(&*r.dir.lookup_ip(ip("10.0.0.3")).unwrap().replica, "b");
        assert_eq!(&*r.dir.lookup_ip(ip("10.0.0.2")).unwrap().replica, "b");
    }
    let keys = etcd_keys(&etcd).await;
    assert!(
        !keys.iter().any(|(k, _)| k == "/tether/v1/ips/10.0.0.1"),
        "the IP the node no longer has is deleted with the claim that replaced it: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moving_supersedes_the_old_holder_exactly_once() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let (a, b, c) = three(&etcd).await;

    a.dir.claim("edge-1", &[ip("10.0.0.1")], 11);
    let first = all_see(&[&a, &b, &c], "edge-1", Some("a")).await;

    // The edge reconnects to B before A noticed its old session die.
    b.dir.claim("edge-1", &[ip("10.0.0.1")], 21);
    let second = all_see(&[&a, &b, &c], "edge-1", Some("b")).await;
    assert!(second.revision > first.revision);
    wait_told(&a.events, &Recorder::default(), 1, WAIT)
        .await
        .unwrap();
    let told = a.events.events();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!((told[0].node.as_str(), told[0].session), ("edge-1", 11));
    assert_eq!(&*told[0].by.replica, "b");
    assert_eq!(told[0].by.session, 21);

    // The caller closes A's session and releases it: that must not delete B's claim.
    a.dir.release("edge-1", 11);
    barrier(&a, &[&a, &b, &c], "after-release").await;
    for r in [&a, &b, &c] {
        assert_eq!(
            &*r.dir.lookup_name("edge-1").unwrap().replica,
            "b",
            "{}",
            r.id
        );
    }
    // And back to A: B is told, once; A is not told again.
    a.dir.claim("edge-1", &[ip("10.0.0.1")], 12);
    all_see(&[&a, &b, &c], "edge-1", Some("a")).await;
    b.dir
        .wait_until(WAIT, "B told", |_| !b.events.events().is_empty())
        .await
        .unwrap();
    barrier(&c, &[&a, &b, &c], "end").await;
    assert_eq!(a.events.events().len(), 1);
    assert_eq!(b.events.events().len(), 1);
    assert_eq!(b.events.events()[0].session, 21);
    assert!(c.events.events().is_empty());
    assert_eq!(a.dir.status().counters.superseded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_release_of_an_older_own_session_keeps_the_newer_claim() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let (a, b, _c) = three(&etcd).await;

    a.dir.claim("edge-1", &[], 1);
    all_see(&[&a, &b], "edge-1", Some("a")).await;
    a.fresh().await;
    // The edge reconnected to A: session 2 replaces session 1, whose cleanup comes late.
    a.dir.claim("edge-1", &[], 2);
    a.dir.release("edge-1", 1);
    b.dir
        .wait_until(WAIT, "session 2", |d| {
            d.lookup_name("edge-1").is_some_and(|h| h.session == 2)
        })
        .await
        .unwrap();
    barrier(&a, &[&a, &b], "late").await;
    assert_eq!(b.dir.lookup_name("edge-1").unwrap().session, 2);
    assert!(a.events.events().is_empty());

    // Released while its write is still queued or running: nothing stays behind.
    a.dir.claim("edge-2", &[], 3);
    a.dir.release("edge-2", 3);
    barrier(&a, &[&a, &b], "quick").await;
    assert!(b.dir.lookup_name("edge-2").is_none());
    assert_eq!(a.dir.status().local_claims, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_end_with_one_holder_and_the_loser_told() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let (a, b, c) = three(&etcd).await;

    // Both replicas claim 20 nodes they both saw absent: each race has one winner.
    let nodes: Vec<String> = (0..20).map(|i| format!("edge-{i}")).collect();
    for (i, node) in nodes.iter().enumerate() {
        a.dir.claim(node, &[], 100 + i as u64);
        b.dir.claim(node, &[], 200 + i as u64);
    }
    for node in &nodes {
        for r in [&a, &b] {
            r.dir
                .wait_until(WAIT, "a holder", |d| d.lookup_name(node).is_some())
                .await
                .unwrap();
        }
    }
    wait_told(&a.events, &b.events, nodes.len(), WAIT)
        .await
        .unwrap();
    barrier(&c, &[&a, &b, &c], "race").await;

    assert_eq!(
        a.events.events().len() + b.events.events().len(),
        nodes.len()
    );
    for node in &nodes {
        let holder = c.dir.lookup_name(node).unwrap();
        for r in [&a, &b] {
            assert_eq!(
                r.dir.lookup_name(node).unwrap(),
                holder,
                "{} on {}",
                node,
                r.id
            );
        }
        let (winner, loser) = if &*holder.replica == "a" {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(
            winner.events.for_node(node).is_empty(),
            "{node}: winner told"
        );
        let told = loser.events.for_node(node);
        assert_eq!(told.len(), 1, "{node}: {told:?}");
        assert_eq!(told[0].by, holder);
    }
    let conflicts = a.dir.status().counters.conflicts + b.dir.status().counters.conflicts;
    assert!(conflicts >= nodes.len() as u64, "{conflicts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_lookups_and_reconciles_when_etcd_returns() {
    init_tracing();
    let mut etcd = Etcd::start().await.unwrap();
    let (a, b, c) = three(&etcd).await;

    a.dir.claim("moved", &[ip("10.0.1.1")], 1);
    a.dir.claim("half-open", &[ip("10.0.1.2")], 2);
    all_see(&[&a, &b, &c], "moved", Some("a")).await;
    all_see(&[&a, &b, &c], "half-open", Some("a")).await;
    a.fresh().await;

    etcd.stop(Stop::Kill).unwrap();
    for r in [&a, &b, &c] {
        r.dir
            .wait_until(WAIT, "stale", |d| !d.status().is_connected())
            .await
            .unwrap();
        let status = r.dir.status();
        let directory_etcd::LinkState::Stale { reason, .. } = &status.link else {
            panic!("{status:?}")
        };
        assert!(!reason.is_empty());
        // Lookups answer from the last known state.
        assert_eq!(&*r.dir.lookup_name("moved").unwrap().replica, "a");
        assert_eq!(&*r.dir.lookup_ip(ip("10.0.1.2")).unwrap().node, "half-open");
    }

    // Meanwhile: a new edge on A; "moved" leaves A (A sees it go) for B; "half-open" reaches
    // B while A still believes in its session.
    a.dir.claim("new", &[], 3);
    a.dir.release("moved", 1);
    b.dir.claim("moved", &[ip("10.0.1.1")], 4);
    b.dir.claim("half-open", &[ip("10.0.1.2")], 5);
    assert_eq!(a.dir.status().pending, 2);
    assert_eq!(b.dir.status().pending, 2);
    assert!(c.dir.lookup_name("new").is_none());

    etcd.restart().await.unwrap();
    for r in [&a, &b, &c] {
        r.fresh().await;
    }
    all_see(&[&a, &b, &c], "new", Some("a")).await;
    all_see(&[&a, &b, &c], "moved", Some("b")).await;
    all_see(&[&a, &b, &c], "half-open", Some("b")).await;
    wait_told(&a.events, &Recorder::default(), 1, WAIT)
        .await
        .unwrap();
    barrier(&c, &[&a, &b, &c], "outage").await;
    let told = a.events.events();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!((told[0].node.as_str(), told[0].session), ("half-open", 2));
    assert!(b.events.events().is_empty());
    for r in [&a, &b, &c] {
        assert_eq!(&*r.dir.lookup_ip(ip("10.0.1.1")).unwrap().replica, "b");
        assert!(r.dir.status().counters.resyncs >= 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_disappears_within_its_lease() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let ttl = Duration::from_secs(2);
    let mut a = Replica::start("a", etcd.config(ttl));
    let b = Replica::start("b", etcd.config(TTL));
    a.dir.claim("edge-1", &[ip("10.0.0.1")], 1);
    all_see(&[&a, &b], "edge-1", Some("a")).await;
    b.dir
        .wait_until(WAIT, "A's record", |d| d.replica_addr("a").is_some())
        .await
        .unwrap();

    // No release, no revoke: only the lease's expiry removes A's keys.
    a.kill().await;
    b.wait_holder("edge-1", None).await;
    assert!(b.dir.lookup_ip(ip("10.0.0.1")).is_none());
    b.dir
        .wait_until(WAIT, "A's record gone", |d| d.replica_addr("a").is_none())
        .await
        .unwrap();
    assert!(
        etcd_keys(&etcd)
            .await
            .iter()
            .all(|(k, _)| k == "/tether/v1/replicas/b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_replica_revokes_its_lease_at_once() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    // A TTL far longer than the wait: only the revoke can make the claim vanish in time.
    let long = Duration::from_secs(120);
    let mut a = Replica::start("a", etcd.config(long));
    let b = Replica::start("b", etcd.config(TTL));
    a.dir.claim("edge-1", &[], 1);
    all_see(&[&a, &b], "edge-1", Some("a")).await;
    a.shut_down().await;
    b.dir
        .wait_until(Duration::from_secs(20), "A's claim gone", |d| {
            d.lookup_name("edge-1").is_none()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_replaced_and_every_claim_written_again() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let (a, b, _c) = three(&etcd).await;
    a.dir.claim("edge-1", &[ip("10.0.0.1")], 1);
    a.dir.claim("edge-2", &[], 2);
    all_see(&[&a, &b], "edge-1", Some("a")).await;
    all_see(&[&a, &b], "edge-2", Some("a")).await;
    a.fresh().await;
    let old_lease = a.dir.status().lease.unwrap();

    // As if the lease had expired while A could not reach etcd.
    etcd.client()
        .await
        .unwrap()
        .lease_revoke(old_lease)
        .await
        .unwrap();
    a.dir
        .wait_until(WAIT, "a new lease", |d| {
            let s = d.status();
            s.counters.lease_losses == 1 && s.lease.is_some_and(|l| l != old_lease)
        })
        .await
        .unwrap();
    a.fresh().await;
    let new_lease = a.dir.status().lease.unwrap();
    all_see(&[&a, &b], "edge-1", Some("a")).await;
    all_see(&[&a, &b], "edge-2", Some("a")).await;
    assert_eq!(&*b.dir.lookup_ip(ip("10.0.0.1")).unwrap().node, "edge-1");
    let keys = etcd_keys(&etcd).await;
    for key in [
        "/tether/v1/nodes/edge-1",
        "/tether/v1/nodes/edge-2",
        "/tether/v1/ips/10.0.0.1",
        "/tether/v1/replicas/a",
    ] {
        assert!(
            keys.contains(&(key.to_owned(), new_lease)),
            "{key}: {keys:?}"
        );
    }
    assert!(a.events.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_etcd_is_down_registers_when_it_is_up() {
    init_tracing();
    let mut etcd = Etcd::start().await.unwrap();
    etcd.stop(Stop::Term).unwrap();

    let d = Replica::start("d", etcd.config(TTL));
    d.dir.claim("edge-1", &[ip("10.0.0.9")], 1);
    d.dir
        .wait_until(WAIT, "a failed attempt", |d| {
            d.status().counters.etcd_errors > 0
        })
        .await
        .unwrap();
    let status = d.dir.status();
    assert!(!status.synced && !status.is_connected(), "{status:?}");
    assert_eq!((status.local_claims, status.pending), (1, 1));
    assert!(
        d.dir.lookup_name("edge-1").is_none(),
        "the cache holds only what etcd said"
    );

    etcd.restart().await.unwrap();
    let observer = Replica::start("o", etcd.config(TTL));
    d.fresh().await;
    all_see(&[&d, &observer], "edge-1", Some("d")).await;
    assert_eq!(
        &*observer.dir.lookup_ip(ip("10.0.0.9")).unwrap().node,
        "edge-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_whose_node_moved_learns_it_lost_and_does_not_take_it_back() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let partition = support::Partition::new(&etcd).await.unwrap();
    let mut behind = etcd.config(Duration::from_secs(2));
    behind.endpoints = vec![partition.endpoint()];
    let a = Replica::start("a", behind);
    let b = Replica::start("b", etcd.config(TTL));
    a.dir.claim("moved", &[ip("10.0.2.1")], 1);
    a.dir.claim("stayed", &[ip("10.0.2.2")], 2);
    all_see(&[&a, &b], "moved", Some("a")).await;
    all_see(&[&a, &b], "stayed", Some("a")).await;

    // A is cut off from etcd but not from its edges: its lease expires, its keys vanish.
    partition.cut();
    b.wait_holder("moved", None).await;
    b.wait_holder("stayed", None).await;
    assert!(!a.dir.status().is_connected());
    assert_eq!(
        &*a.dir.lookup_name("moved").unwrap().replica,
        "a",
        "A's last known state"
    );
    // One edge gives up on A and reconnects to B.
    b.dir.claim("moved", &[ip("10.0.2.1")], 9);
    b.wait_holder("moved", Some("b")).await;

    // When A is back it must not overwrite B's newer claim with its older session, and it
    // must register the node that stayed.
    partition.heal();
    wait_told(&a.events, &Recorder::default(), 1, WAIT)
        .await
        .unwrap();
    a.fresh().await;
    all_see(&[&a, &b], "moved", Some("b")).await;
    all_see(&[&a, &b], "stayed", Some("a")).await;
    barrier(&b, &[&a, &b], "healed").await;
    let told = a.events.events();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!((told[0].node.as_str(), told[0].session), ("moved", 1));
    assert_eq!(&*told[0].by.replica, "b");
    assert!(b.events.events().is_empty());
    assert_eq!(a.dir.status().counters.lease_losses, 1);
    assert_eq!(&*b.dir.lookup_name("moved").unwrap().replica, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_racing_a_newer_claim_never_deletes_it() {
    init_tracing();
    let etcd = Etcd::start().await.unwrap();
    let (a, b, c) = three(&etcd).await;
    let nodes: Vec<String> = (0..20).map(|i| format!("edge-{i}")).collect();
    for (i, node) in nodes.iter().enumerate() {
        a.dir.claim(node, &[], i as u64);
    }
    for node in &nodes {
        all_see(&[&a, &b], node, Some("a")).await;
    }

    // Each edge leaves A and reaches B at the same moment: A's delete and B's claim (based
    // on A's claim) race in etcd. Whichever commits first, B ends up holding the node with
    // one write: a delete that lands after B's claim must not remove it (B would have to
    // notice and write again).
    for (i, node) in nodes.iter().enumerate() {
        a.dir.release(node, i as u64);
        b.dir.claim(node, &[], 100 + i as u64);
    }
    for node in &nodes {
        all_see(&[&a, &b, &c], node, Some("b")).await;
    }
    barrier(&a, &[&a, &b, &c], "race").await;
    barrier(&b, &[&a, &b, &c], "race").await;
    for node in &nodes {
        assert_eq!(&*c.dir.lookup_name(node).unwrap().replica, "b", "{node}");
    }
    let b_status = b.dir.status();
    assert_eq!(
        b_status.counters.writes,
        nodes.len() as u64 + 1,
        "one write per node (plus B's barrier): {b_status:?}"
    );
    assert!(a.events.events().is_empty());
    assert!(b.events.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_replaced_by_an_empty_one_is_filled_again() {
    init_tracing();
    let mut etcd = Etcd::start().await.unwrap();
    let (a, b, _c) = three(&etcd).await;
    // Our writes land at revisions the new store will not reach for a while.
    let mut raw = etcd.client().await.unwrap();
    for i in 0..200 {
        raw.put("/unrelated/key", format!("{i}"), None)
            .await
            .unwrap();
    }
    for i in 0..20 {
        a.dir.claim(&format!("edge-{i}"), &[ip("10.0.3.1")], i);
    }
    all_see(&[&a, &b], "edge-19", Some("a")).await;
    a.fresh().await;

    etcd.stop(Stop::Term).unwrap();
    etcd.wipe().unwrap();
    etcd.restart().await.unwrap();

    a.fresh().await;
    for i in 0..20 {
        all_see(&[&a, &b], &format!("edge-{i}"), Some("a")).await;
    }
    assert_eq!(a.dir.status().counters.lease_losses, 1);
    assert!(a.events.events().is_empty());
}
