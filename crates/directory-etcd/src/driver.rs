//! The one task that talks to etcd for a replica.
//!
//! It runs connection after connection until shut down. Each connection: dial; renew (or
//! grant) the replica's lease; write the replica record; list the prefix into a fresh cache;
//! watch from the list's revision + 1; then, until something fails, renew the lease, apply
//! watch events, and write what the local state asks for (a bounded number of transactions
//! at once). Any failure ends the connection, marks the directory stale (lookups keep
//! answering from the cache) and, after a jittered pause, starts the next one. Re-listing on
//! every connection is what makes a replica correct again after any outage, whatever it
//! missed.
//!
//! # Newest claim wins, by revision
//!
//! A claim is one transaction: `If(mod_revision(node) == basis) Then(put node, put ips…)
//! Else(get node)`, where `basis` is the node key's revision the replica saw when its session
//! claimed (0 if absent). If the compare fails: an absent key or one of our own is retried
//! against the fresh revision; a key written by another replica after `basis` means that
//! replica's claim is newer, and ours is superseded. The watch applies the same rule the other
//! way round: our written claim overwritten by another replica is superseded, once. A release
//! is `If(mod_revision(node) == our write) Then(delete…)`, so it never removes a newer claim.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KvClient, LeaseClient, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::cache::Cache;
use crate::directory::{Counters, Shared};
use crate::local::{Action, LocalState, Want, Written};
use crate::model::{ClaimValue, Holder, KeyKind, Keys, ReplicaValue};

/// Keys per page when listing the prefix: a page of claims stays far below gRPC's 4 MiB
/// message limit.
const LIST_PAGE: i64 = 1000;
/// The largest watch message accepted. etcd puts at most 1000 revisions in one watch
/// response, and one of our revisions changes at most 33 small keys.
const WATCH_MAX_MESSAGE: usize = 16 << 20;
/// Compare failures one claim retries before giving up on this connection (each retry means
/// someone wrote the node key in between; more than a few means something is wrong).
const MAX_CLAIM_ATTEMPTS: u32 = 4;

/// The directory's background work: a future the caller spawns and owns. It ends when the
/// shutdown token given to [`EtcdDirectory::start`](crate::EtcdDirectory::start) is
/// cancelled, after revoking the replica's lease.
#[must_use = "the directory does nothing until its driver runs"]
pub struct DirectoryDriver {
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl fmt::Debug for DirectoryDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryDriver").finish_non_exhaustive()
    }
}

impl Future for DirectoryDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl DirectoryDriver {
    pub(crate) fn new(shared: Arc<Shared>, shutdown: CancellationToken) -> DirectoryDriver {
        let span = info_span!("directory", replica = %shared.me);
        let driver = Driver {
            backoff: Backoff::for_lease(shared.config.lease_ttl),
            shared,
            shutdown,
            lease: None,
            last_failure: None,
        };
        DirectoryDriver {
            inner: Box::pin(driver.run().instrument(span)),
        }
    }
}

/// How a connection ended.
enum Exit {
    /// Shut down; the client, if one was connected, revokes the lease. (Boxed: an etcd
    /// `Client` is several KiB.)
    Shutdown(Option<Box<Client>>),
    /// etcd failed or could not be reached: pause, then reconnect.
    Failed(String),
    /// Nothing failed but the connection must start over (lease gone, watch compacted).
    Restart(String),
}

/// One connected period's streams.
struct Connection {
    client: Client,
    keeper: LeaseKeeper,
    renewals: LeaseKeepAliveStream,
    watch: WatchStream,
}

/// A claim our watch or a transaction found overwritten by a newer claim of another replica.
struct Lost {
    node: Arc<str>,
    session: u64,
    by: Holder,
}

struct Driver {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    lease: Option<i64>,
    backoff: Backoff,
    last_failure: Option<String>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let began = Instant::now();
            let exit = self.connection().await;
            self.shared.local().abandon_in_flight();
            let reason = match exit {
                Exit::Shutdown(client) => {
                    self.revoke(client).await;
                    self.shared.set_stale("shut down".into());
                    return;
                }
                Exit::Restart(reason) if began.elapsed() >= Duration::from_secs(1) => {
                    info!(%reason, "reconnecting to etcd");
                    self.shared.set_stale(reason);
                    continue;
                }
                Exit::Restart(reason) | Exit::Failed(reason) => reason,
            };
            Counters::add(&self.shared.counters.etcd_errors, 1);
            if self.last_failure.as_deref() != Some(reason.as_str()) {
                warn!(%reason, "etcd unavailable; lookups answer from the last known state");
            } else {
                debug!(%reason, "etcd still unavailable");
            }
            self.shared.set_stale(reason.clone());
            self.last_failure = Some(reason);
            if began.elapsed() >= self.shared.config.lease_ttl {
                // That connection worked for a while: the next failure starts small again.
                self.backoff.reset();
            }
            let pause = self.backoff.next_delay(&mut rand::rng());
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.shared.set_stale("shut down".into());
                    return;
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One connection, from dialing to its end.
    async fn connection(&mut self) -> Exit {
        let shutdown = self.shutdown.clone();
        let set_up = tokio::select! {
            () = shutdown.cancelled() => return Exit::Shutdown(None),
            set_up = self.set_up() => set_up,
        };
        match set_up {
            Ok(connection) => self.serve(connection).await,
            Err(exit) => exit,
        }
    }

    async fn set_up(&mut self) -> Result<Connection, Exit> {
        let config = &self.shared.config;
        let request = config.request_timeout;
        let client = within(
            config.dial_timeout,
            "connect",
            Client::connect(&config.endpoints, Some(config.connect_options())),
        )
        .await?;
        let (keeper, renewals) = self.ensure_lease(&mut client.lease_client()).await?;
        let lease = keeper.id();

        let mut kv = client.kv_client();
        let record = serde_json::to_vec(&ReplicaValue {
            addr: self.shared.replica.advertise_addr.clone(),
        })
        .map_err(|e| Exit::Failed(format!("encode the replica record: {e}")))?;
        within(
            request,
            "write the replica record",
            kv.put(
                self.shared.keys.replica(&self.shared.me),
                record,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;

        let revision = self.list(&mut kv).await?;
        let watch = within(
            request,
            "start the watch",
            client
                .watch_client()
                .max_decoding_message_size(WATCH_MAX_MESSAGE)
                .watch(
                    self.shared.keys.prefix(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                ),
        )
        .await?;
        Ok(Connection {
            client,
            keeper,
            renewals,
            watch,
        })
    }

    /// Renews the lease we have, or grants one if we have none or ours is gone.
    async fn ensure_lease(
        &mut self,
        leases: &mut LeaseClient,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), Exit> {
        let request = self.shared.config.request_timeout;
        if let Some(id) = self.lease {
            match tokio::time::timeout(request, leases.keep_alive(id)).await {
                Ok(Ok(renewal)) => return Ok(renewal),
                // etcd-client reports a lease whose renewal answers TTL 0 this way.
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(msg)))
                    if msg.contains("not found") =>
                {
                    self.lease_lost(id);
                }
                Ok(Err(e)) if lease_gone(&e) => self.lease_lost(id),
                Ok(Err(e)) => return Err(Exit::Failed(format!("renew the lease: {e}"))),
                Err(_) => {
                    return Err(Exit::Failed(format!(
                        "renew the lease: no answer within {request:?}"
                    )));
                }
            }
        }
        let ttl = self.shared.config.lease_ttl_secs();
        let granted = within(request, "grant a lease", leases.grant(ttl, None)).await?;
        let id = granted.id();
        info!(lease = id, ttl = granted.ttl(), "lease granted");
        self.lease = Some(id);
        self.shared.link().lease = Some(id);
        within(request, "renew the new lease", leases.keep_alive(id)).await
    }

    /// Our lease expired or was revoked: everything we wrote went with it.
    fn lease_lost(&mut self, id: i64) {
        warn!(
            lease = id,
            "lease expired or revoked; claiming every local node again under a new lease"
        );
        Counters::add(&self.shared.counters.lease_losses, 1);
        self.lease = None;
        self.shared.link().lease = None;
        self.shared.local().lease_lost();
        self.shared.notify_changed();
    }

    /// Lists the prefix page by page at one revision, replaces the cache, and checks every
    /// local claim against it. Returns the revision to watch after.
    async fn list(&mut self, kv: &mut KvClient) -> Result<i64, Exit> {
        let keys = &self.shared.keys;
        let request = self.shared.config.request_timeout;
        let end = keys.prefix_end();
        let mut from = keys.prefix().as_bytes().to_vec();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                // Later pages read the snapshot of the first, so the list is consistent.
                options = options.with_revision(revision);
            }
            let mut page = within(
                request,
                "list the directory",
                kv.get(from.clone(), Some(options)),
            )
            .await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let got = page.take_kvs();
            let Some(last) = got.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            kvs.extend(got);
            if !more {
                break;
            }
        }
        let cache = Cache::from_list(keys, &kvs, revision);
        drop(kvs);
        // Revisions only grow in one store. Smaller ones mean a restored or replaced store,
        // where the revisions we remember for our writes mean nothing.
        let last_write = self.shared.last_write.load(Ordering::Acquire);
        let replaced_store = revision < last_write;
        if replaced_store {
            warn!(
                revision,
                last_write,
                "etcd's revision went backwards (a restored or replaced store?); \
                 writing every local claim again"
            );
            self.shared.last_write.store(0, Ordering::Release);
        }
        let mut lost = Vec::new();
        {
            let mut local = self.shared.local();
            let mut shared_cache = self.shared.cache_mut();
            *shared_cache = cache;
            local.abandon_in_flight();
            if replaced_store {
                local.lease_lost();
            }
            let names: Vec<Arc<str>> = local.nodes.keys().cloned().collect();
            for name in &names {
                check_node(
                    &mut local,
                    &shared_cache,
                    name,
                    &self.shared.me,
                    self.lease,
                    &mut lost,
                );
            }
            local.enqueue_all();
        }
        self.shared.link().synced = true;
        Counters::add(&self.shared.counters.resyncs, 1);
        debug!(revision, "directory listed");
        self.report_lost(lost);
        self.shared.notify_changed();
        Ok(revision)
    }

    /// The connected period: renew, watch, write, until something fails or shutdown.
    async fn serve(&mut self, connection: Connection) -> Exit {
        let Connection {
            client,
            mut keeper,
            mut renewals,
            mut watch,
        } = connection;
        let Some(lease) = self.lease else {
            return Exit::Restart("no lease after set-up".into());
        };
        let config = &self.shared.config;
        let request = config.request_timeout;
        let context = Arc::new(OpContext {
            kv: client.kv_client(),
            keys: self.shared.keys.clone(),
            me: self.shared.me.clone(),
            addr: self.shared.replica.advertise_addr.clone(),
            lease,
            timeout: request,
        });
        let mut ops: FuturesUnordered<Pin<Box<dyn Future<Output = OpDone> + Send>>> =
            FuturesUnordered::new();
        let period = config.keepalive_period();
        let mut renew = tokio::time::interval_at(Instant::now() + period, period);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut renewal_sent: Option<Instant> = None;
        self.shared.set_connected();
        if self.last_failure.take().is_some() {
            info!("etcd reachable again; directory re-listed and watching");
        } else {
            info!("directory connected to etcd");
        }

        loop {
            self.dispatch(&context, &mut ops);
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Exit::Shutdown(Some(Box::new(client))),
                Some(done) = ops.next(), if !ops.is_empty() => {
                    if let Err(exit) = self.apply_done(done) {
                        return exit;
                    }
                }
                message = watch.message() => match message {
                    Ok(Some(response)) if response.canceled() => {
                        return Exit::Restart(if response.compact_revision() > 0 {
                            format!(
                                "watch fell behind a compaction at revision {}; re-listing",
                                response.compact_revision()
                            )
                        } else {
                            format!("watch cancelled by etcd: {}", response.cancel_reason())
                        });
                    }
                    Ok(Some(response)) => self.apply_watch(&response),
                    Ok(None) => return Exit::Failed("the watch stream ended".into()),
                    Err(e) => return Exit::Failed(format!("watch: {e}")),
                },
                answer = renewals.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => renewal_sent = None,
                    Ok(Some(_)) => {
                        self.lease_lost(lease);
                        return Exit::Restart("lease expired".into());
                    }
                    Ok(None) => return Exit::Failed("the lease renewal stream ended".into()),
                    Err(e) => return Exit::Failed(format!("lease renewal: {e}")),
                },
                _ = renew.tick() => {
                    if let Some(sent) = renewal_sent {
                        if sent.elapsed() >= request {
                            return Exit::Failed(format!(
                                "lease renewal unanswered for {:?}",
                                sent.elapsed()
                            ));
                        }
                    } else {
                        match tokio::time::timeout(request, keeper.keep_alive()).await {
                            Ok(Ok(())) => renewal_sent = Some(Instant::now()),
                            Ok(Err(e)) => return Exit::Failed(format!("lease renewal: {e}")),
                            Err(_) => return Exit::Failed("lease renewal: send timed out".into()),
                        }
                    }
                }
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// Starts transactions for queued nodes, up to the in-flight limit.
    fn dispatch(
        &mut self,
        context: &Arc<OpContext>,
        ops: &mut FuturesUnordered<Pin<Box<dyn Future<Output = OpDone> + Send>>>,
    ) {
        let limit = self.shared.config.max_in_flight;
        if ops.len() >= limit {
            return;
        }
        let mut local = self.shared.local();
        while ops.len() < limit {
            let Some((node, action)) = local.next_action() else {
                break;
            };
            let context = context.clone();
            match action {
                Action::Claim(want) => {
                    // IP keys of the claim we replace that the new claim does not rewrite:
                    // deleted in the same transaction if they still carry that claim's
                    // revision.
                    let replaced_ips = self
                        .shared
                        .cache()
                        .nodes
                        .get(&*node)
                        .filter(|e| e.holder.revision == want.basis)
                        .map(|e| e.holder.ips.to_vec())
                        .unwrap_or_default();
                    ops.push(Box::pin(async move {
                        let outcome = claim(&context, &node, &want, replaced_ips).await;
                        OpDone {
                            node,
                            result: OpResult::Claim { want, outcome },
                        }
                    }));
                }
                Action::Release(written) => {
                    ops.push(Box::pin(async move {
                        let outcome = release(&context, &node, &written).await;
                        OpDone {
                            node,
                            result: OpResult::Release { written, outcome },
                        }
                    }));
                }
            }
        }
    }

    /// Applies the end of one transaction to the local state.
    fn apply_done(&mut self, done: OpDone) -> Result<(), Exit> {
        let counters = &self.shared.counters;
        let mut lost = Vec::new();
        let mut failure = None;
        {
            let mut local = self.shared.local();
            let cache = self.shared.cache();
            let Some(entry) = local.nodes.get_mut(&done.node) else {
                return Ok(());
            };
            entry.in_flight = false;
            match done.result {
                OpResult::Claim { want, outcome } => match outcome {
                    Ok(ClaimOutcome::Written {
                        revision,
                        conflicts,
                        adopted,
                    }) => {
                        if !adopted {
                            Counters::add(&counters.writes, 1);
                        }
                        Counters::add(&counters.conflicts, u64::from(conflicts));
                        entry.written = Some(Written {
                            session: want.session,
                            ips: want.ips.clone(),
                            revision,
                        });
                        if let Some(current) = entry.want.as_mut()
                            && current.session == want.session
                        {
                            current.basis = revision;
                        }
                        self.shared.last_write.fetch_max(revision, Ordering::AcqRel);
                        debug!(node = %done.node, session = want.session, revision, "claim written");
                    }
                    Ok(ClaimOutcome::Lost { by, conflicts }) => {
                        Counters::add(&counters.conflicts, u64::from(conflicts));
                        // Whatever we had under the key is overwritten by `by` too.
                        entry.written = None;
                        if entry
                            .want
                            .as_ref()
                            .is_some_and(|w| w.session == want.session)
                        {
                            entry.want = None;
                            lost.push(Lost {
                                node: done.node.clone(),
                                session: want.session,
                                by,
                            });
                        }
                    }
                    Ok(ClaimOutcome::LeaseGone) => failure = Some(None),
                    Err(e) => failure = Some(Some(e)),
                },
                OpResult::Release { written, outcome } => match outcome {
                    Ok(released) => {
                        if let Some(revision) = released {
                            Counters::add(&counters.deletes, 1);
                            self.shared.last_write.fetch_max(revision, Ordering::AcqRel);
                        }
                        // Deleted, or already overwritten or gone: either way not ours now.
                        if entry.written.as_ref() == Some(&written) {
                            entry.written = None;
                        }
                    }
                    Err(e) => failure = Some(Some(e)),
                },
            }
            check_node(
                &mut local,
                &cache,
                &done.node,
                &self.shared.me,
                self.lease,
                &mut lost,
            );
            local.enqueue(&done.node);
        }
        self.report_lost(lost);
        self.shared.notify_changed();
        match failure {
            None => Ok(()),
            Some(None) => {
                if let Some(id) = self.lease {
                    self.lease_lost(id);
                }
                Err(Exit::Restart("lease expired".into()))
            }
            Some(Some(e)) => Err(Exit::Failed(e)),
        }
    }

    /// Applies a watch response to the cache, event by event, checking our claims after each
    /// node event: a batch may overwrite and then delete a node, and the overwrite alone
    /// decides that our session lost.
    fn apply_watch(&mut self, response: &WatchResponse) {
        if response.events().is_empty() {
            return;
        }
        let keys = &self.shared.keys;
        let mut lost = Vec::new();
        {
            let mut local = self.shared.local();
            let mut cache = self.shared.cache_mut();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                // etcd-client panics on an event type other than PUT (0) and DELETE (1); the
                // protocol has no other, and etcd is the store we trust with everything else.
                let put = event.event_type() == EventType::Put;
                cache.revision = cache.revision.max(kv.mod_revision());
                match keys.classify(kv.key()) {
                    Some(KeyKind::Node(node)) => {
                        if put {
                            cache.put_node(node, kv);
                        } else {
                            cache.delete_node(node);
                        }
                        if let Some((name, _)) = local.nodes.get_key_value(node) {
                            let name = name.clone();
                            check_node(
                                &mut local,
                                &cache,
                                &name,
                                &self.shared.me,
                                self.lease,
                                &mut lost,
                            );
                        }
                    }
                    Some(KeyKind::Ip(ip)) => {
                        if put {
                            cache.put_ip(ip, kv);
                        } else {
                            cache.delete_ip(ip);
                        }
                    }
                    Some(KeyKind::Replica(id)) => {
                        if put {
                            cache.put_replica(id, kv);
                        } else {
                            cache.delete_replica(id);
                        }
                    }
                    None => {}
                }
            }
        }
        self.report_lost(lost);
        self.shared.notify_changed();
    }

    /// Tells the caller about lost claims, with no lock held.
    fn report_lost(&self, lost: Vec<Lost>) {
        for Lost { node, session, by } in lost {
            Counters::add(&self.shared.counters.superseded, 1);
            info!(
                %node,
                session,
                by = %by.replica,
                revision = by.revision,
                "local session superseded by a newer claim of another replica"
            );
            self.shared.events.superseded(&node, session, &by);
        }
    }

    async fn revoke(&mut self, client: Option<Box<Client>>) {
        let (Some(client), Some(lease)) = (client, self.lease) else {
            return;
        };
        let request = self.shared.config.request_timeout;
        match tokio::time::timeout(request, client.lease_client().revoke(lease)).await {
            Ok(Ok(_)) => info!(lease, "lease revoked; this replica's claims are gone"),
            Ok(Err(e)) => {
                warn!(lease, error = %e, "could not revoke the lease; it expires by itself")
            }
            Err(_) => warn!(lease, "lease revoke unanswered; it expires by itself"),
        }
        self.lease = None;
        self.shared.link().lease = None;
    }
}

/// Compares our written claim for `node` with the cache, once the cache has caught up with
/// that write, and settles what the cache says happened to it.
fn check_node(
    local: &mut LocalState,
    cache: &Cache,
    node: &Arc<str>,
    me: &str,
    lease: Option<i64>,
    lost: &mut Vec<Lost>,
) {
    let Some(entry) = local.nodes.get_mut(node) else {
        return;
    };
    if entry.in_flight {
        // Settled when the transaction ends.
        return;
    }
    let Some(written) = entry.written.clone() else {
        return;
    };
    if cache.revision < written.revision {
        return;
    }
    match cache.nodes.get(&**node) {
        Some(current) if current.holder.revision == written.revision => return,
        Some(current) if &*current.holder.replica != me => {
            // Another replica wrote the node after our claim: its session is newer.
            entry.written = None;
            if entry
                .want
                .as_ref()
                .is_some_and(|w| w.session == written.session)
            {
                entry.want = None;
                lost.push(Lost {
                    node: node.clone(),
                    session: written.session,
                    by: current.holder.clone(),
                });
            }
        }
        Some(current) => {
            // Ours under another revision: a retried write whose first attempt did land.
            let holder = &current.holder;
            if holder.session == written.session
                && Some(current.lease) == lease
                && holder.ips == written.ips
            {
                entry.written = Some(Written {
                    revision: holder.revision,
                    ..written
                });
                return;
            }
            entry.written = None;
            if let Some(want) = entry.want.as_mut() {
                want.basis = holder.revision;
            }
        }
        None => {
            // Deleted under us (our lease went, or an operator removed it): claim it afresh.
            entry.written = None;
            if let Some(want) = entry.want.as_mut() {
                want.basis = 0;
            }
        }
    }
    local.enqueue(node);
}

/// What every transaction of one connection needs.
struct OpContext {
    kv: KvClient,
    keys: Keys,
    me: Arc<str>,
    addr: String,
    lease: i64,
    timeout: Duration,
}

struct OpDone {
    node: Arc<str>,
    result: OpResult,
}

enum OpResult {
    Claim {
        want: Want,
        outcome: Result<ClaimOutcome, String>,
    },
    /// `Ok(Some(revision))`: deleted at that revision; `Ok(None)`: the key was no longer our
    /// write.
    Release {
        written: Written,
        outcome: Result<Option<i64>, String>,
    },
}

enum ClaimOutcome {
    /// Our claim is in etcd at `revision` (`adopted`: an earlier attempt had written it).
    Written {
        revision: i64,
        conflicts: u32,
        adopted: bool,
    },
    /// Another replica's newer claim holds the node.
    Lost { by: Holder, conflicts: u32 },
    /// Our lease no longer exists.
    LeaseGone,
}

/// Writes the claim of `want` for `node`; see the module docs for the rule.
async fn claim(
    context: &OpContext,
    node: &Arc<str>,
    want: &Want,
    replaced_ips: Vec<IpAddr>,
) -> Result<ClaimOutcome, String> {
    let node_key = context.keys.node(node);
    let value = serde_json::to_vec(&ClaimValue {
        replica: context.me.to_string(),
        addr: context.addr.clone(),
        session: want.session,
        ips: want.ips.to_vec(),
    })
    .map_err(|e| format!("encode the claim of {node}: {e}"))?;
    let on_lease = || Some(PutOptions::new().with_lease(context.lease));
    let mut kv = context.kv.clone();
    let mut basis = want.basis;
    let mut replaced_ips = replaced_ips;
    for attempt in 0..MAX_CLAIM_ATTEMPTS {
        let mut then = Vec::with_capacity(1 + want.ips.len() + replaced_ips.len());
        then.push(TxnOp::put(node_key.clone(), value.clone(), on_lease()));
        for ip in want.ips.iter() {
            then.push(TxnOp::put(
                context.keys.ip(*ip),
                node.as_bytes(),
                on_lease(),
            ));
        }
        for ip in replaced_ips.iter().filter(|ip| !want.ips.contains(ip)) {
            let key = context.keys.ip(*ip);
            then.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, basis)])
                    .and_then([TxnOp::delete(key, None)]),
            ));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                node_key.clone(),
                CompareOp::Equal,
                basis,
            )])
            .and_then(then)
            .or_else([TxnOp::get(node_key.clone(), None)]);
        let response = match tokio::time::timeout(context.timeout, kv.txn(txn)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if lease_gone(&e) => return Ok(ClaimOutcome::LeaseGone),
            Ok(Err(e)) => return Err(format!("claim {node}: {e}")),
            Err(_) => {
                return Err(format!(
                    "claim {node}: no answer within {:?}",
                    context.timeout
                ));
            }
        };
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok(ClaimOutcome::Written {
                revision,
                conflicts: attempt,
                adopted: false,
            });
        }
        let current = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        let Some(current) = current else {
            // Gone since we looked: nobody holds the node, take it.
            basis = 0;
            replaced_ips = Vec::new();
            continue;
        };
        match serde_json::from_slice::<ClaimValue>(current.value()) {
            Ok(theirs) if *theirs.replica == *context.me => {
                if theirs.session == want.session
                    && current.lease() == context.lease
                    && *theirs.ips == *want.ips
                {
                    return Ok(ClaimOutcome::Written {
                        revision: current.mod_revision(),
                        conflicts: attempt + 1,
                        adopted: true,
                    });
                }
                // An older claim of ours (another session, or a previous run of this
                // replica): ours to overwrite.
                basis = current.mod_revision();
                replaced_ips = theirs.ips;
            }
            Ok(theirs) => {
                return Ok(ClaimOutcome::Lost {
                    by: Holder {
                        node: node.clone(),
                        ips: theirs.ips.into(),
                        replica: Arc::from(theirs.replica),
                        addr: Arc::from(theirs.addr),
                        session: theirs.session,
                        revision: current.mod_revision(),
                    },
                    conflicts: attempt + 1,
                });
            }
            Err(_) => {
                // Unreadable: not a claim of anyone's, overwrite it.
                basis = current.mod_revision();
                replaced_ips = Vec::new();
            }
        }
    }
    Err(format!(
        "claim {node}: the node key changed under {MAX_CLAIM_ATTEMPTS} attempts in a row"
    ))
}

/// Deletes our claim written at `written.revision`, and those of its IP keys that still carry
/// that revision (they were written in the same transaction). Never touches a newer write.
async fn release(
    context: &OpContext,
    node: &Arc<str>,
    written: &Written,
) -> Result<Option<i64>, String> {
    let node_key = context.keys.node(node);
    let mut then = Vec::with_capacity(1 + written.ips.len());
    then.push(TxnOp::delete(node_key.clone(), None));
    for ip in written.ips.iter() {
        let key = context.keys.ip(*ip);
        then.push(TxnOp::txn(
            Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    written.revision,
                )])
                .and_then([TxnOp::delete(key, None)]),
        ));
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            node_key,
            CompareOp::Equal,
            written.revision,
        )])
        .and_then(then);
    let mut kv = context.kv.clone();
    let response = within(context.timeout, "release", kv.txn(txn))
        .await
        .map_err(|exit| match exit {
            Exit::Failed(reason) => format!("{node}: {reason}"),
            Exit::Restart(reason) => reason,
            Exit::Shutdown(_) => "shut down".into(),
        })?;
    Ok(response
        .succeeded()
        .then(|| response.header().map_or(0, |h| h.revision())))
}

/// etcd refused a write because its lease no longer exists.
fn lease_gone(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains("lease not found"))
}

/// Runs one etcd call with a deadline.
async fn within<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Exit> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Exit::Failed(format!("{what}: {e}"))),
        Err(_) => Err(Exit::Failed(format!("{what}: no answer within {limit:?}"))),
    }
}
