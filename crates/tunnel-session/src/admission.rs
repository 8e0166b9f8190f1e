//! Who may use the tunnel port, and how many at once.
//!
//! How this fits: the tunnel server's accept loop asks an [`Admission`] before and right after
//! each `accept`, and each accepted connection's task asks it once more before TLS. Three
//! limits apply:
//!
//! - **connections** open at once, queued, handshaking or serving a session (file descriptors
//!   and memory). The loop takes a connection slot *before* it accepts; past the limit, edges
//!   wait in the kernel's accept queue;
//! - **handshakes** at once (TLS and the websocket upgrade). An accepted connection waits for
//!   a handshake slot in a first-come, first-served queue, so a burst of edges (all of them
//!   reconnecting after a cloud restart) is handshaken a few hundred at a time instead of all
//!   at once, starving running sessions of CPU and timing out together. The queue is ours, not
//!   the kernel's: its accept queue is short (1,024 here), and a full one drops SYNs, which the
//!   edges only resend after 1, 3, 7, 15 s (measured: 10,000 edges took 34 s to connect that
//!   way, 7–8 s with this queue). The server bounds the wait (see `server`);
//! - connections **per source address**, queued or handshaking: checked right after `accept`,
//!   because only then is the address known. A connection over the limit is reset at once, so
//!   10,000 idle connections from one address hold only a few slots (until the handshake
//!   deadline) and cannot lock a real edge out.
//!
//! IPv6 sources are counted per /64, the block a single host or site usually gets; IPv4-mapped
//! IPv6 addresses count as their IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::TunnelObserver;

/// The limits, as numbers (see [`crate::server::TunnelServerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) connections: usize,
    pub(crate) handshakes: usize,
    pub(crate) handshakes_per_source: usize,
}

/// The shared state of one server's accept path.
pub(crate) struct Admission {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_source: usize,
    sources: Arc<Sources>,
}

/// Handshakes in progress per source, and the observer told about each one.
struct Sources {
    counts: Mutex<HashMap<SourceKey, usize>>,
    observer: Arc<dyn TunnelObserver>,
}

/// What a source is counted as: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey(IpAddr);

impl SourceKey {
    pub(crate) fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                SourceKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => SourceKey(v4),
        }
    }
}

/// A semaphore of `n` permits, at least 1 (0 would stop the accept loop for good) and at most
/// what tokio supports (more would panic).
fn semaphore(n: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)))
}

impl Admission {
    pub(crate) fn new(limits: Limits, observer: Arc<dyn TunnelObserver>) -> Admission {
        Admission {
            connections: semaphore(limits.connections),
            handshakes: semaphore(limits.handshakes),
            per_source: limits.handshakes_per_source.max(1),
            sources: Arc::new(Sources {
                counts: Mutex::new(HashMap::new()),
                observer,
            }),
        }
    }

    /// Waits for room for one more connection. Cancel-safe. `None` only if the semaphore was
    /// closed, which nothing does.
    pub(crate) async fn ready(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).acquire_owned().await.ok()
    }

    /// Admits a connection accepted from `ip` to the handshake queue; `None` if that source
    /// already has as many connections queued or handshaking as allowed.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<SourceSlot> {
        let key = SourceKey::of(ip);
        {
            let mut counts = self
                .sources
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(key).or_insert(0);
            if *count >= self.per_source {
                return None;
            }
            *count += 1;
        }
        Some(SourceSlot {
            key,
            sources: Arc::clone(&self.sources),
        })
    }

    /// Waits, in arrival order, for a handshake slot. Cancel-safe. `None` only if the
    /// semaphore was closed, which nothing does.
    pub(crate) async fn handshake(&self) -> Option<HandshakeSlot> {
        let permit = Arc::clone(&self.handshakes).acquire_owned().await.ok()?;
        self.sources.observer.handshake_started();
        Some(HandshakeSlot {
            sources: Arc::clone(&self.sources),
            _permit: permit,
        })
    }

    /// Handshakes in progress from `ip`'s source.
    #[cfg(test)]
    fn handshakes_from(&self, ip: IpAddr) -> usize {
        let counts = self
            .sources
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.get(&SourceKey::of(ip)).copied().unwrap_or(0)
    }

    /// Sources with a handshake in progress.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.sources
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One of a source's places in the handshake queue and handshake. Dropped when the upgrade is
/// done or the handshake failed.
pub(crate) struct SourceSlot {
    key: SourceKey,
    sources: Arc<Sources>,
}

/// A handshake slot: the connection is handshaking. Dropped when the upgrade is done or the
/// handshake failed.
pub(crate) struct HandshakeSlot {
    sources: Arc<Sources>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.sources.observer.handshake_ended();
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        {
            let mut counts = self
                .sources
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = counts.get_mut(&self.key) {
                *count = count.saturating_sub(1);
                // Forget idle sources, so the map holds at most one entry per handshake.
                if *count == 0 {
                    counts.remove(&self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[derive(Default)]
    struct Count {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    impl TunnelObserver for Count {
        fn handshake_started(&self) {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
        }
        fn handshake_ended(&self) {
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn admission(
        connections: usize,
        handshakes: usize,
        per_source: usize,
    ) -> (Admission, Arc<Count>) {
        let count = Arc::new(Count::default());
        let limits = Limits {
            connections,
            handshakes,
            handshakes_per_source: per_source,
        };
        (Admission::new(limits, count.clone()), count)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_source_gets_its_limit_and_no_more_then_its_slots_back() {
        let (admission, _) = admission(100, 100, 2);
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(admission.admit(ip("192.0.2.1")).unwrap());
        }
        assert!(admission.admit(ip("192.0.2.1")).is_none());
        // Another source is not affected.
        let other = admission.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(admission.handshakes_from(ip("192.0.2.1")), 2);
        held.pop();
        let again = admission.admit(ip("192.0.2.1")).unwrap();
        drop((held, again, other));
        // No source remembered.
        assert_eq!(admission.sources(), 0);
    }

    #[tokio::test]
    async fn handshakes_beyond_the_limit_wait_in_arrival_order() {
        let (admission, count) = admission(100, 2, 100);
        let first = admission.handshake().await.unwrap();
        let _second = admission.handshake().await.unwrap();
        assert_eq!(count.now.load(Ordering::SeqCst), 2);
        // Full: the next ones queue, in order.
        let mut third = std::pin::pin!(admission.handshake());
        let mut fourth = std::pin::pin!(admission.handshake());
        assert!((&mut third).now_or_never().is_none());
        assert!((&mut fourth).now_or_never().is_none());
        drop(first);
        assert!(
            (&mut fourth).now_or_never().is_none(),
            "the later one went first"
        );
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("a finished handshake frees its slot")
            .unwrap();
        assert_eq!(count.now.load(Ordering::SeqCst), 2);
        assert_eq!(count.peak.load(Ordering::SeqCst), 2);
        drop(third);
        assert!(fourth.now_or_never().is_some());
    }

    #[tokio::test]
    async fn the_connection_limit_holds_after_the_handshake() {
        let (admission, _) = admission(1, 10, 10);
        let session = admission.ready().await.unwrap();
        drop(admission.admit(ip("192.0.2.1")));
        drop(admission.handshake().await);
        // The handshake is over but the session still holds its connection slot.
        assert!(
            admission.ready().now_or_never().is_none(),
            "a second connection got in"
        );
        drop(session);
        let _next = tokio::time::timeout(Duration::from_secs(5), admission.ready())
            .await
            .expect("an ended session frees its slot")
            .unwrap();
    }

    #[tokio::test]
    async fn zero_and_huge_limits_neither_stall_nor_panic() {
        let (admission, _) = admission(0, usize::MAX, 0);
        let _c = admission.ready().await.unwrap();
        assert!(admission.admit(ip("192.0.2.1")).is_some());
        assert!(admission.handshake().await.is_some());
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(
            SourceKey::of(ip("2001:db8:1:2:aaaa::1")),
            SourceKey::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.7")),
            SourceKey::of(ip("192.0.2.7"))
        );
        assert_ne!(
            SourceKey::of(ip("192.0.2.7")),
            SourceKey::of(ip("192.0.2.8"))
        );
    }
}
