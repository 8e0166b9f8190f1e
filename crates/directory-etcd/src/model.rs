//! The key layout and the values stored under it.
//!
//! Everything lives under one prefix so that one list and one watch cover it:
//!
//! - `<prefix>nodes/<node>` → a JSON [`ClaimValue`]: which replica holds the node, where that
//!   replica is reached, which of its local sessions it is, and the node's IPs.
//! - `<prefix>ips/<ip>` → the node name, written in the same transaction as the node key, so
//!   both carry the same `mod_revision` (a release uses that to delete only its own IP keys).
//! - `<prefix>replicas/<id>` → a JSON [`ReplicaValue`], for operators and status.
//!
//! All of them are attached to the writing replica's lease.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One claim as seen in etcd: `node` is held by `replica`, reachable at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The node's name.
    pub node: Arc<str>,
    /// The node's IPs, as the claiming replica registered them.
    pub ips: Arc<[IpAddr]>,
    /// The id of the replica that holds the node's session.
    pub replica: Arc<str>,
    /// Where that replica's stream server is reached (its advertise address).
    pub addr: Arc<str>,
    /// The holding replica's token for its local session (unique within that replica).
    pub session: u64,
    /// The etcd `mod_revision` of the claim: later claims have larger revisions.
    pub revision: i64,
}

/// The JSON value of a node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClaimValue {
    pub(crate) replica: String,
    pub(crate) addr: String,
    pub(crate) session: u64,
    #[serde(default)]
    pub(crate) ips: Vec<IpAddr>,
}

/// The JSON value of a replica key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplicaValue {
    pub(crate) addr: String,
}

/// What a key under the prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind<'a> {
    Node(&'a str),
    Ip(IpAddr),
    Replica(&'a str),
}

/// Builds and reads keys under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    nodes: String,
    ips: String,
    replicas: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            nodes: format!("{prefix}nodes/"),
            ips: format!("{prefix}ips/"),
            replicas: format!("{prefix}replicas/"),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The first key after every key that starts with the prefix (etcd's range end for a
    /// prefix). The prefix ends with `/`, so incrementing its last byte never overflows.
    pub(crate) fn prefix_end(&self) -> Vec<u8> {
        let mut end = self.prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last = last.saturating_add(1);
        }
        end
    }

    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes)
    }

    pub(crate) fn ip(&self, ip: IpAddr) -> String {
        format!("{}{ip}", self.ips)
    }

    pub(crate) fn replica(&self, id: &str) -> String {
        format!("{}{id}", self.replicas)
    }

    /// What `key` names, or `None` for keys outside our layout (ignored, not fatal: a later
    /// version may add kinds).
    pub(crate) fn classify<'k>(&self, key: &'k [u8]) -> Option<KeyKind<'k>> {
        let key = std::str::from_utf8(key).ok()?;
        if let Some(node) = key.strip_prefix(self.nodes.as_str()) {
            return (!node.is_empty()).then_some(KeyKind::Node(node));
        }
        if let Some(ip) = key.strip_prefix(self.ips.as_str()) {
            return ip.parse().ok().map(KeyKind::Ip);
        }
        if let Some(id) = key.strip_prefix(self.replicas.as_str()) {
            return (!id.is_empty()).then_some(KeyKind::Replica(id));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = Keys::new("/tether/v1/");
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            keys.classify(keys.node("edge-1").as_bytes()),
            Some(KeyKind::Node("edge-1"))
        );
        assert_eq!(keys.classify(keys.ip(v6).as_bytes()), Some(KeyKind::Ip(v6)));
        assert_eq!(
            keys.classify(keys.replica("r0").as_bytes()),
            Some(KeyKind::Replica("r0"))
        );
        assert_eq!(keys.classify(b"/tether/v1/ips/not-an-ip"), None);
        assert_eq!(keys.classify(b"/tether/v1/nodes/"), None);
        assert_eq!(keys.classify(b"/tether/v1/other/x"), None);
        assert_eq!(keys.classify(b"/tether/v1/nodes/\xff"), None);
        assert_eq!(keys.prefix_end(), b"/tether/v10".to_vec());
    }

    #[test]
    fn claim_json_is_stable() {
        let claim = ClaimValue {
            replica: "r0".into(),
            addr: "10.0.0.1:10003".into(),
            session: 7,
            ips: vec!["192.168.1.5".parse().unwrap()],
        };
        let json = serde_json::to_string(&claim).unwrap();
        assert_eq!(
            json,
            r#"{"replica":"r0","addr":"10.0.0.1:10003","session":7,"ips":["192.168.1.5"]}"#
        );
        assert_eq!(serde_json::from_str::<ClaimValue>(&json).unwrap(), claim);
    }
}
