//! Which session serves which node: by node name and by node IP.
//!
//! The write rate is tiny (edges connect and leave), the read rate is one lookup per kubelet
//! request, so one `RwLock` over two maps is right: both keys change together under one
//! write lock, and a lookup clones an `Arc` and lets go at once (rust-stack.md §3.6).
//! The stream server depends on the [`SessionDirectory`] trait, not on this type, so a
//! directory shared by several cloud replicas can replace it (design decision 10).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::info;

use crate::error::{Error, Result};
use crate::session::Session;

/// How a request names a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKey<'a> {
    /// By node name.
    Name(&'a str),
    /// By internal IP.
    Ip(IpAddr),
}

impl<'a> NodeKey<'a> {
    /// Reads a host as a request names it: an IP literal (IPv6 with or without brackets) or
    /// a node name.
    pub fn parse(host: &'a str) -> NodeKey<'a> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => NodeKey::Ip(ip),
            Err(_) => NodeKey::Name(host),
        }
    }
}

impl std::fmt::Display for NodeKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeKey::Name(name) => f.write_str(name),
            NodeKey::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Finds the live session for a node. Implemented by [`Registry`]; a multi-replica
/// directory would implement it too.
pub trait SessionDirectory: Send + Sync + 'static {
    /// The live session for `key`, if this directory has one.
    fn find(&self, key: NodeKey<'_>) -> Option<Session>;
}

#[derive(Default)]
struct Maps {
    by_name: HashMap<String, Session>,
    by_ip: HashMap<IpAddr, String>,
}

/// The sessions of this process, by node name and node IP.
#[derive(Default)]
pub struct Registry {
    maps: RwLock<Maps>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("sessions", &self.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Checks, without changing anything, whether `node` may use `ip`: an IP belongs to the
    /// node that holds it while that node's session lives.
    pub fn check_ip(&self, node: &str, ip: Option<IpAddr>) -> Result<()> {
        let Some(ip) = ip else { return Ok(()) };
        let maps = self.read();
        match maps.by_ip.get(&ip) {
            Some(holder)
                if holder != node && maps.by_name.get(holder).is_some_and(|s| !s.is_closed()) =>
            {
                Err(Error::Registry(format!(
                    "node IP {ip} is already registered by node {holder}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Makes `session` the one for its node. A previous session of the same node is closed
    /// and returned (the newer connection wins). Fails if the node IP belongs to another
    /// live node.
    pub fn register(&self, session: Session) -> Result<Option<Session>> {
        let node = session.node().clone();
        let replaced = {
            let mut maps = self.write();
            if let Some(ip) = node.ip
                && let Some(holder) = maps.by_ip.get(&ip)
            {
                let live = maps.by_name.get(holder).is_some_and(|s| !s.is_closed());
                if holder != &node.name && live {
                    return Err(Error::Registry(format!(
                        "node IP {ip} is already registered by node {holder}"
                    )));
                }
            }
            let replaced = maps.by_name.insert(node.name.clone(), session);
            if let Some(old) = &replaced
                && let Some(old_ip) = old.node().ip
                && maps.by_ip.get(&old_ip) == Some(&node.name)
            {
                maps.by_ip.remove(&old_ip);
            }
            if let Some(ip) = node.ip {
                maps.by_ip.insert(ip, node.name.clone());
            }
            replaced
        };
        if let Some(old) = &replaced {
            info!(node = %node.name, "a newer session replaces the old one");
            old.close("replaced by a newer session for the same node");
        }
        Ok(replaced)
    }

    /// Removes `session` if it is still the one registered for its node (an old session's
    /// cleanup must not evict its replacement). Returns true if it was removed.
    pub fn remove_if_same(&self, session: &Session) -> bool {
        let node = session.node();
        let mut maps = self.write();
        let same = maps
            .by_name
            .get(&node.name)
            .is_some_and(|current| current.same(session));
        if same {
            maps.by_name.remove(&node.name);
            if let Some(ip) = node.ip
                && maps.by_ip.get(&ip) == Some(&node.name)
            {
                maps.by_ip.remove(&ip);
            }
        }
        same
    }

    /// The session for a node name.
    pub fn get(&self, name: &str) -> Option<Session> {
        self.read().by_name.get(name).cloned()
    }

    /// The session for a node IP.
    pub fn get_by_ip(&self, ip: IpAddr) -> Option<Session> {
        let maps = self.read();
        let name = maps.by_ip.get(&ip)?;
        maps.by_name.get(name).cloned()
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// True when no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of all sessions.
    pub fn sessions(&self) -> Vec<Session> {
        self.read().by_name.values().cloned().collect()
    }
}

impl SessionDirectory for Registry {
    fn find(&self, key: NodeKey<'_>) -> Option<Session> {
        let session = match key {
            NodeKey::Name(name) => self.get(name),
            NodeKey::Ip(ip) => self.get_by_ip(ip),
        }?;
        (!session.is_closed()).then_some(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionConfig;
    use crate::dialect::{Dialect, NodeIdentity, Role};
    use crate::session::SessionParams;

    fn session(name: &str, ip: Option<&str>) -> Session {
        let (io, _peer) = tokio::io::duplex(64);
        let params = SessionParams {
            role: Role::Cloud,
            dialect: Dialect::KubeEdge,
            node: NodeIdentity {
                name: name.into(),
                ip: ip.map(|i| i.parse().unwrap()),
            },
            config: std::sync::Arc::new(SessionConfig::default()),
            peer_window: 0,
            leftover: bytes::Bytes::new(),
        };
        Session::establish(io, params).0
    }

    #[test]
    fn keys_parse_ipv6_and_names() {
        assert_eq!(NodeKey::parse("[::1]"), NodeKey::Ip("::1".parse().unwrap()));
        assert_eq!(
            NodeKey::parse("fe80::2"),
            NodeKey::Ip("fe80::2".parse().unwrap())
        );
        assert_eq!(
            NodeKey::parse("10.0.0.1"),
            NodeKey::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(NodeKey::parse("edge-1"), NodeKey::Name("edge-1"));
    }

    #[test]
    fn lookup_by_name_and_ip_and_replacement() {
        let reg = Registry::new();
        let a = session("edge-1", Some("10.0.0.1"));
        assert!(reg.register(a.clone()).unwrap().is_none());
        assert!(reg.find(NodeKey::Name("edge-1")).unwrap().same(&a));
        assert!(reg.find(NodeKey::parse("10.0.0.1")).unwrap().same(&a));

        let b = session("edge-1", Some("10.0.0.2"));
        let old = reg.register(b.clone()).unwrap().unwrap();
        assert!(old.same(&a) && a.is_closed());
        assert!(reg.find(NodeKey::parse("10.0.0.1")).is_none());
        assert!(reg.find(NodeKey::parse("10.0.0.2")).unwrap().same(&b));

        // The old session's cleanup leaves the new one alone.
        assert!(!reg.remove_if_same(&a));
        assert!(reg.remove_if_same(&b));
        assert!(reg.is_empty());
    }

    #[test]
    fn an_ip_belongs_to_one_live_node() {
        let reg = Registry::new();
        let a = session("edge-1", Some("10.0.0.1"));
        reg.register(a.clone()).unwrap();
        assert!(
            reg.check_ip("edge-2", Some("10.0.0.1".parse().unwrap()))
                .is_err()
        );
        assert!(reg.register(session("edge-2", Some("10.0.0.1"))).is_err());
        assert!(
            reg.check_ip("edge-1", Some("10.0.0.1".parse().unwrap()))
                .is_ok()
        );
        a.close("gone");
        assert!(reg.register(session("edge-2", Some("10.0.0.1"))).is_ok());
    }
}
