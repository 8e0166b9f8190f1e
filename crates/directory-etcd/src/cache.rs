//! The local copy of the directory that every lookup reads.
//!
//! The driver fills it from one list and keeps it current from the watch; lookups take a read
//! lock, clone a [`Holder`] (reference counts only, no allocation) and let go. It holds one
//! entry per node of the fleet, so its size is the fleet's: the strings a claim repeats (the
//! replica id and address) are shared between entries, and a node name is stored once for the
//! node map and the IP map. The bytes per entry are measured by the `cache_memory` bench.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use etcd_client::KeyValue;
use tracing::warn;

use crate::model::{ClaimValue, Holder, KeyKind, Keys, ReplicaValue};

/// One node's entry: the claim and the lease it is attached to.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) holder: Holder,
    pub(crate) lease: i64,
}

/// Node name → claim, node IP → node name, replica id → address.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pub(crate) nodes: HashMap<Arc<str>, Entry>,
    pub(crate) ips: HashMap<IpAddr, Arc<str>>,
    pub(crate) replicas: HashMap<Arc<str>, Arc<str>>,
    /// The store revision everything up to which is reflected here.
    pub(crate) revision: i64,
}

impl Cache {
    /// A cache from a consistent list of the prefix taken at `revision`.
    pub(crate) fn from_list(keys: &Keys, kvs: &[KeyValue], revision: i64) -> Cache {
        let mut cache = Cache {
            revision,
            ..Cache::default()
        };
        // Replicas first and IPs last, so that claims share the replicas' strings and IP
        // entries share the node names (a list comes sorted: ips/ < nodes/ < replicas/).
        let kinds: Vec<(KeyKind<'_>, &KeyValue)> = kvs
            .iter()
            .filter_map(|kv| keys.classify(kv.key()).map(|kind| (kind, kv)))
            .collect();
        for (kind, kv) in &kinds {
            if let KeyKind::Replica(id) = kind {
                cache.put_replica(id, kv);
            }
        }
        for (kind, kv) in &kinds {
            if let KeyKind::Node(node) = kind {
                cache.put_node(node, kv);
            }
        }
        for (kind, kv) in &kinds {
            if let KeyKind::Ip(ip) = kind {
                cache.put_ip(*ip, kv);
            }
        }
        cache
    }

    /// The claim for `node`.
    pub(crate) fn holder(&self, node: &str) -> Option<&Holder> {
        self.nodes.get(node).map(|e| &e.holder)
    }

    /// The claim of the node that registered `ip` last, if that claim still lists `ip`. The
    /// check matters when an IP key outlived the claim it was written with (a node that
    /// re-registered with other IPs).
    pub(crate) fn holder_by_ip(&self, ip: IpAddr) -> Option<&Holder> {
        let node = self.ips.get(&ip)?;
        let holder = self.holder(node)?;
        holder.ips.contains(&ip).then_some(holder)
    }

    pub(crate) fn put_node(&mut self, node: &str, kv: &KeyValue) {
        let claim: ClaimValue = match serde_json::from_slice(kv.value()) {
            Ok(claim) => claim,
            Err(e) => {
                // Someone else's garbage under our prefix: forget the node rather than route
                // to a guess. A claim by any replica overwrites it.
                warn!(node, error = %e, "unreadable claim in etcd; ignoring it");
                self.nodes.remove(node);
                return;
            }
        };
        let node: Arc<str> = match self.nodes.get_key_value(node) {
            Some((name, _)) => name.clone(),
            None => Arc::from(node),
        };
        let (replica, addr) = self.shared_strings(&claim.replica, &claim.addr);
        let entry = Entry {
            holder: Holder {
                node: node.clone(),
                ips: claim.ips.into(),
                replica,
                addr,
                session: claim.session,
                revision: kv.mod_revision(),
            },
            lease: kv.lease(),
        };
        self.nodes.insert(node, entry);
    }

    pub(crate) fn delete_node(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    pub(crate) fn put_ip(&mut self, ip: IpAddr, kv: &KeyValue) {
        let Ok(node) = std::str::from_utf8(kv.value()) else {
            warn!(%ip, "IP key in etcd does not hold a node name; ignoring it");
            self.ips.remove(&ip);
            return;
        };
        let node = match self.nodes.get_key_value(node) {
            Some((name, _)) => name.clone(),
            None => Arc::from(node),
        };
        self.ips.insert(ip, node);
    }

    pub(crate) fn delete_ip(&mut self, ip: IpAddr) {
        self.ips.remove(&ip);
    }

    pub(crate) fn put_replica(&mut self, id: &str, kv: &KeyValue) {
        match serde_json::from_slice::<ReplicaValue>(kv.value()) {
            Ok(value) => {
                self.replicas.insert(Arc::from(id), Arc::from(value.addr));
            }
            Err(e) => {
                warn!(replica = id, error = %e, "unreadable replica record in etcd; ignoring it");
                self.replicas.remove(id);
            }
        }
    }

    pub(crate) fn delete_replica(&mut self, id: &str) {
        self.replicas.remove(id);
    }

    /// The replica id and address as shared strings: the replica record's when it matches,
    /// else a fresh copy (a claim written by a replica whose record is gone or differs).
    fn shared_strings(&self, replica: &str, addr: &str) -> (Arc<str>, Arc<str>) {
        match self.replicas.get_key_value(replica) {
            Some((id, known)) if &**known == addr => (id.clone(), known.clone()),
            Some((id, _)) => (id.clone(), Arc::from(addr)),
            None => (Arc::from(replica), Arc::from(addr)),
        }
    }
}
