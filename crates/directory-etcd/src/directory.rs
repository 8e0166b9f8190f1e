//! The handle the rest of the replica uses: claim, release, look up, ask for status.
//!
//! Nothing here waits on etcd. `claim` and `release` record what this replica wants and wake
//! the [`DirectoryDriver`]; lookups read the local cache. The driver, spawned and owned by the
//! caller, does all the talking to etcd.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cache::Cache;
use crate::config::{DirectoryConfig, MAX_NAME_LEN, ReplicaInfo};
use crate::driver::DirectoryDriver;
use crate::error::{Error, Result};
use crate::local::LocalState;
use crate::model::{Holder, Keys};

/// The most IPs one claim registers; more are dropped with a warning. It keeps every claim
/// transaction far below etcd's default limit of 128 operations per transaction.
pub const MAX_IPS_PER_NODE: usize = 16;

/// What the directory tells the rest of the replica.
pub trait DirectoryEvents: Send + Sync + 'static {
    /// Our claim for `node`, made for local session `session`, lost to a newer claim by
    /// another replica (`by`). The caller closes that local session with a reason naming
    /// `by`: the edge has a newer session elsewhere. Called once per lost claim, from the
    /// driver, with no lock held (calling back into the directory is fine); it must not block.
    fn superseded(&self, node: &str, session: u64, by: &Holder);
}

/// Whether the cache follows etcd right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Listed and watching: the cache follows etcd, claims and releases are being written.
    Connected {
        /// Since when.
        since: Instant,
    },
    /// Not following etcd: lookups answer from the last known state, claims and releases
    /// wait.
    Stale {
        /// Since when.
        since: Instant,
        /// Why (the last failure, or "not connected yet").
        reason: String,
    },
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryCounters {
    /// Claims written.
    pub writes: u64,
    /// Own claims deleted by a release.
    pub deletes: u64,
    /// Claim transactions whose compare failed (someone wrote the node key since we looked).
    pub conflicts: u64,
    /// Local sessions told they were superseded by another replica's claim.
    pub superseded: u64,
    /// Failed etcd calls (each one also ends the connection, which is then re-established).
    pub etcd_errors: u64,
    /// Times this replica's lease was found expired or revoked.
    pub lease_losses: u64,
    /// Full lists of the prefix (the first sync, then one per reconnect or compacted watch).
    pub resyncs: u64,
}

/// A snapshot of the directory's health, for `/readyz`, metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryStatus {
    /// Whether the cache follows etcd.
    pub link: LinkState,
    /// The cache was filled from etcd at least once.
    pub synced: bool,
    /// The store revision the cache reflects.
    pub revision: i64,
    /// This replica's current lease.
    pub lease: Option<i64>,
    /// Nodes in the cache (the fleet, as etcd knows it).
    pub entries: usize,
    /// Node IPs in the cache.
    pub ips: usize,
    /// Replicas with a live record.
    pub replicas: usize,
    /// Local sessions this replica claims.
    pub local_claims: usize,
    /// Local nodes whose claim or release is not yet in etcd.
    pub pending: usize,
    /// Counters since start.
    pub counters: DirectoryCounters,
}

impl DirectoryStatus {
    /// The cache follows etcd.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, LinkState::Connected { .. })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) writes: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) superseded: AtomicU64,
    pub(crate) etcd_errors: AtomicU64,
    pub(crate) lease_losses: AtomicU64,
    pub(crate) resyncs: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DirectoryCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectoryCounters {
            writes: get(&self.writes),
            deletes: get(&self.deletes),
            conflicts: get(&self.conflicts),
            superseded: get(&self.superseded),
            etcd_errors: get(&self.etcd_errors),
            lease_losses: get(&self.lease_losses),
            resyncs: get(&self.resyncs),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) state: LinkState,
    pub(crate) synced: bool,
    pub(crate) lease: Option<i64>,
}

/// What the handle and the driver share.
pub(crate) struct Shared {
    pub(crate) config: DirectoryConfig,
    pub(crate) replica: ReplicaInfo,
    pub(crate) me: Arc<str>,
    pub(crate) keys: Keys,
    cache: RwLock<Cache>,
    local: Mutex<LocalState>,
    link: Mutex<Link>,
    pub(crate) counters: Counters,
    /// The revision of our latest successful write; the cache is fresh for us once it has
    /// caught up with it.
    pub(crate) last_write: AtomicI64,
    /// Wakes the driver when there is local work.
    pub(crate) wake: Notify,
    /// Bumped on every change a waiter may care about.
    changed: watch::Sender<()>,
    pub(crate) events: Arc<dyn DirectoryEvents>,
}

impl Shared {
    pub(crate) fn cache(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cache_mut(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock order: `local` before `cache` wherever both are held.
    pub(crate) fn local(&self) -> MutexGuard<'_, LocalState> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn notify_changed(&self) {
        self.changed.send_replace(());
    }

    pub(crate) fn set_connected(&self) {
        {
            let mut link = self.link();
            if !matches!(link.state, LinkState::Connected { .. }) {
                link.state = LinkState::Connected {
                    since: Instant::now(),
                };
            }
        }
        self.notify_changed();
    }

    pub(crate) fn set_stale(&self, reason: String) {
        {
            let mut link = self.link();
            match &mut link.state {
                LinkState::Stale { reason: r, .. } => *r = reason,
                LinkState::Connected { .. } => {
                    link.state = LinkState::Stale {
                        since: Instant::now(),
                        reason,
                    }
                }
            }
        }
        self.notify_changed();
    }
}

/// The cloud replicas' shared view of which replica holds which edge node.
///
/// Cheap to clone (one `Arc`). Every method returns at once: writes are queued for the
/// [`DirectoryDriver`], lookups read the local cache.
#[derive(Clone)]
pub struct EtcdDirectory {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EtcdDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDirectory")
            .field("replica", &self.shared.replica.id)
            .field("prefix", &self.shared.keys.prefix())
            .finish()
    }
}

impl EtcdDirectory {
    /// Creates the directory and its driver. The caller spawns the driver and owns it; it
    /// runs until `shutdown` is cancelled, then revokes this replica's lease (so the others
    /// drop its claims at once instead of after the TTL) and ends.
    ///
    /// Never fails because etcd is unreachable: the driver connects, and reconnects for
    /// ever, in the background. Fails only on a configuration that cannot work.
    pub fn start(
        config: DirectoryConfig,
        replica: ReplicaInfo,
        events: Arc<dyn DirectoryEvents>,
        shutdown: CancellationToken,
    ) -> Result<(EtcdDirectory, DirectoryDriver)> {
        config.validate()?;
        replica.validate()?;
        let (changed, _) = watch::channel(());
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.prefix),
            me: Arc::from(replica.id.as_str()),
            config,
            replica,
            cache: RwLock::new(Cache::default()),
            local: Mutex::new(LocalState::default()),
            link: Mutex::new(Link {
                state: LinkState::Stale {
                    since: Instant::now(),
                    reason: "not connected yet".into(),
                },
                synced: false,
                lease: None,
            }),
            counters: Counters::default(),
            last_write: AtomicI64::new(0),
            wake: Notify::new(),
            changed,
            events,
        });
        let driver = DirectoryDriver::new(shared.clone(), shutdown);
        Ok((EtcdDirectory { shared }, driver))
    }

    /// This replica.
    pub fn replica(&self) -> &ReplicaInfo {
        &self.shared.replica
    }

    /// Local session `session` now serves `node` with `ips`: register it. Returns at once;
    /// the write happens in the background (after etcd returns, if it is away). A newer
    /// session of the same node replaces an older one's claim.
    ///
    /// The claim is based on what the cache shows for the node right now: if another replica
    /// writes the node after that, it is newer, and this claim loses (reported through
    /// [`DirectoryEvents::superseded`]).
    pub fn claim(&self, node: &str, ips: &[IpAddr], session: u64) {
        if node.is_empty() || node.len() > MAX_NAME_LEN {
            warn!(
                node,
                "node name unusable as a directory key; not registering it"
            );
            return;
        }
        let mut unique: Vec<IpAddr> = Vec::with_capacity(ips.len().min(MAX_IPS_PER_NODE));
        for ip in ips {
            if !unique.contains(ip) {
                unique.push(*ip);
            }
        }
        if unique.len() > MAX_IPS_PER_NODE {
            warn!(
                node,
                ips = unique.len(),
                kept = MAX_IPS_PER_NODE,
                "too many node IPs; registering the first ones"
            );
            unique.truncate(MAX_IPS_PER_NODE);
        }
        let basis = self
            .shared
            .cache()
            .holder(node)
            .map_or(0, |holder| holder.revision);
        self.shared
            .local()
            .claim(node, session, unique.into(), basis);
        self.shared.wake.notify_one();
        self.shared.notify_changed();
    }

    /// Local session `session` of `node` ended: delete its claim, if it is still the one in
    /// etcd. A release from an older session (the node already has a newer local one) does
    /// nothing, and the delete never removes a newer claim, ours or another replica's.
    pub fn release(&self, node: &str, session: u64) {
        if self.shared.local().release(node, session) {
            self.shared.wake.notify_one();
            self.shared.notify_changed();
        }
    }

    /// The claim for `node`, from the local cache only.
    pub fn lookup_name(&self, node: &str) -> Option<Holder> {
        self.shared.cache().holder(node).cloned()
    }

    /// The claim of the node that registered `ip`, from the local cache only.
    pub fn lookup_ip(&self, ip: IpAddr) -> Option<Holder> {
        self.shared.cache().holder_by_ip(ip).cloned()
    }

    /// The advertise address of replica `id`, from its live record.
    pub fn replica_addr(&self, id: &str) -> Option<Arc<str>> {
        self.shared.cache().replicas.get(id).cloned()
    }

    /// A snapshot of the directory's health.
    pub fn status(&self) -> DirectoryStatus {
        let (local_claims, pending) = {
            let local = self.shared.local();
            (local.claims(), local.pending())
        };
        let (entries, ips, replicas, revision) = {
            let cache = self.shared.cache();
            (
                cache.nodes.len(),
                cache.ips.len(),
                cache.replicas.len(),
                cache.revision,
            )
        };
        let link = self.shared.link();
        DirectoryStatus {
            link: link.state.clone(),
            synced: link.synced,
            revision,
            lease: link.lease,
            entries,
            ips,
            replicas,
            local_claims,
            pending,
            counters: self.shared.counters.snapshot(),
        }
    }

    /// Waits until `condition` holds, re-checking after every change of the cache, the local
    /// claims or the link.
    pub async fn wait_until<F>(
        &self,
        timeout: Duration,
        what: &'static str,
        mut condition: F,
    ) -> Result<()>
    where
        F: FnMut(&EtcdDirectory) -> bool,
    {
        let mut changes = self.shared.changed.subscribe();
        let wait = async {
            loop {
                if condition(self) {
                    return;
                }
                // The sender lives in `Shared`, which `self` keeps alive: this never errs.
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout {
                what,
                after: timeout,
            })
    }

    /// Waits until the cache was filled from etcd once.
    pub async fn synced(&self, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, "the first sync with etcd", |d| {
            d.shared.link().synced
        })
        .await
    }

    /// Waits until the directory follows etcd, every local claim and release is written, and
    /// the cache shows our own latest write.
    pub async fn wait_until_fresh(&self, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, "a fresh directory", |d| d.is_fresh())
            .await
    }

    fn is_fresh(&self) -> bool {
        let connected = matches!(self.shared.link().state, LinkState::Connected { .. });
        connected
            && self.shared.local().pending() == 0
            && self.shared.cache().revision >= self.shared.last_write.load(Ordering::Acquire)
    }
}
