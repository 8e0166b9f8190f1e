//! This replica's own claims: what it wants in etcd and what it knows it has there.
//!
//! `claim` and `release` only change the wanted state and queue the node; the driver compares
//! wanted with written and sends one transaction to close the gap. Keeping the desired state
//! instead of a log of operations bounds the memory by the number of nodes this replica
//! serves (plus those with a delete still owed), whatever happens while etcd is away: a node
//! that connects and leaves ten times during an outage costs one entry and, at most, one
//! write when etcd returns.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

/// A local session that should hold its node's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) session: u64,
    pub(crate) ips: Arc<[IpAddr]>,
    /// The node key's `mod_revision` this claim is based on: what the cache showed when the
    /// session claimed (0 if absent), later the revision of our own write. The claim's
    /// transaction succeeds only if the key is still at this revision.
    pub(crate) basis: i64,
}

/// Our claim as last written to etcd (on the current lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) session: u64,
    pub(crate) ips: Arc<[IpAddr]>,
    pub(crate) revision: i64,
}

/// One node this replica serves or served.
#[derive(Debug, Default)]
pub(crate) struct LocalNode {
    pub(crate) want: Option<Want>,
    pub(crate) written: Option<Written>,
    /// A transaction for this node is running; nothing else is started for it meanwhile.
    pub(crate) in_flight: bool,
    /// The node is in the queue.
    queued: bool,
}

impl LocalNode {
    /// Wanted and written agree: nothing to send.
    pub(crate) fn is_settled(&self) -> bool {
        match (&self.want, &self.written) {
            (Some(want), Some(written)) => {
                want.session == written.session && want.ips == written.ips
            }
            (None, None) => true,
            _ => false,
        }
    }
}

/// What the driver should do for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Write the claim of `want`.
    Claim(Want),
    /// Delete our claim written at this revision.
    Release(Written),
}

/// The nodes of this replica and the queue of those that need a look.
#[derive(Debug, Default)]
pub(crate) struct LocalState {
    pub(crate) nodes: HashMap<Arc<str>, LocalNode>,
    queue: VecDeque<Arc<str>>,
}

impl LocalState {
    /// Records that `session` should hold `node`; a newer local session of the node replaces
    /// the older one's wish.
    pub(crate) fn claim(&mut self, node: &str, session: u64, ips: Arc<[IpAddr]>, basis: i64) {
        let name = self.name(node);
        let entry = self.nodes.entry(name.clone()).or_default();
        if let Some(want) = &entry.want
            && want.session == session
            && want.ips == ips
        {
            return;
        }
        // A claim that repeats what we already wrote keeps that write's revision as its
        // basis; a new session starts from what the cache showed.
        let basis = match &entry.written {
            Some(w) if w.session == session => w.revision,
            _ => basis,
        };
        entry.want = Some(Want {
            session,
            ips,
            basis,
        });
        self.enqueue(&name);
    }

    /// Records that `session` no longer holds `node`. A release from a session that is not
    /// the node's current one (a late cleanup of an older session) changes nothing.
    pub(crate) fn release(&mut self, node: &str, session: u64) -> bool {
        let Some(entry) = self.nodes.get_mut(node) else {
            return false;
        };
        if entry.want.as_ref().is_none_or(|w| w.session != session) {
            return false;
        }
        entry.want = None;
        let name = self.name(node);
        self.enqueue(&name);
        true
    }

    /// Puts `node` in the queue unless it is there already.
    pub(crate) fn enqueue(&mut self, node: &Arc<str>) {
        if let Some(entry) = self.nodes.get_mut(node)
            && !entry.queued
        {
            entry.queued = true;
            self.queue.push_back(node.clone());
        }
    }

    /// Queues every node (after a reconnect or a lost lease, everything needs a look).
    pub(crate) fn enqueue_all(&mut self) {
        let names: Vec<Arc<str>> = self.nodes.keys().cloned().collect();
        for name in &names {
            self.enqueue(name);
        }
    }

    /// The next queued node and what to do for it. Settled nodes with nothing wanted are
    /// forgotten here.
    pub(crate) fn next_action(&mut self) -> Option<(Arc<str>, Action)> {
        while let Some(name) = self.queue.pop_front() {
            let Some(entry) = self.nodes.get_mut(&name) else {
                continue;
            };
            entry.queued = false;
            if entry.in_flight {
                // Looked at again when the running transaction ends.
                continue;
            }
            let action = match (&entry.want, &entry.written) {
                (Some(_), Some(_)) if entry.is_settled() => continue,
                (Some(want), _) => Action::Claim(want.clone()),
                (None, Some(written)) => Action::Release(written.clone()),
                (None, None) => {
                    self.nodes.remove(&name);
                    continue;
                }
            };
            entry.in_flight = true;
            return Some((name, action));
        }
        None
    }

    /// Forgets what we wrote: the lease it was attached to is gone, so it is gone too. Every
    /// wanted claim is written again, still based on the revision of our last write.
    pub(crate) fn lease_lost(&mut self) {
        self.nodes.retain(|_, n| {
            n.written = None;
            n.want.is_some() || n.in_flight
        });
        self.queue.clear();
        for entry in self.nodes.values_mut() {
            entry.queued = false;
        }
        self.enqueue_all();
    }

    /// No transaction runs any more (the connection they ran on is gone).
    pub(crate) fn abandon_in_flight(&mut self) {
        for entry in self.nodes.values_mut() {
            entry.in_flight = false;
        }
    }

    /// Local sessions holding (or wanting) a claim.
    pub(crate) fn claims(&self) -> usize {
        self.nodes.values().filter(|n| n.want.is_some()).count()
    }

    /// Nodes whose etcd state still differs from what is wanted.
    pub(crate) fn pending(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| n.in_flight || !n.is_settled())
            .count()
    }

    fn name(&self, node: &str) -> Arc<str> {
        match self.nodes.get_key_value(node) {
            Some((name, _)) => name.clone(),
            None => Arc::from(node),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ips(list: &[&str]) -> Arc<[IpAddr]> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn claim_then_written_is_settled() {
        let mut local = LocalState::default();
        local.claim("n", 1, ips(&["10.0.0.1"]), 0);
        let (name, action) = local.next_action().unwrap();
        assert_eq!(&*name, "n");
        let Action::Claim(want) = action else {
            panic!("{action:?}")
        };
        assert_eq!(want.basis, 0);
        let entry = local.nodes.get_mut("n").unwrap();
        entry.in_flight = false;
        entry.written = Some(Written {
            session: 1,
            ips: want.ips,
            revision: 5,
        });
        local.enqueue(&name);
        assert_eq!(local.next_action(), None);
        assert_eq!(local.pending(), 0);
        assert_eq!(local.claims(), 1);
    }

    #[test]
    fn release_of_an_older_session_changes_nothing() {
        let mut local = LocalState::default();
        local.claim("n", 1, ips(&[]), 0);
        local.claim("n", 2, ips(&[]), 0);
        assert!(!local.release("n", 1));
        let (_, action) = local.next_action().unwrap();
        assert!(matches!(action, Action::Claim(Want { session: 2, .. })));
    }

    #[test]
    fn release_after_write_deletes_and_then_forgets() {
        let mut local = LocalState::default();
        local.claim("n", 1, ips(&[]), 0);
        let (name, _) = local.next_action().unwrap();
        let entry = local.nodes.get_mut("n").unwrap();
        entry.in_flight = false;
        entry.written = Some(Written {
            session: 1,
            ips: ips(&[]),
            revision: 9,
        });
        assert!(local.release("n", 1));
        let (_, action) = local.next_action().unwrap();
        assert!(matches!(
            action,
            Action::Release(Written { revision: 9, .. })
        ));
        let entry = local.nodes.get_mut("n").unwrap();
        entry.in_flight = false;
        entry.written = None;
        local.enqueue(&name);
        assert_eq!(local.next_action(), None);
        assert!(
            local.nodes.is_empty(),
            "a settled, unwanted node is forgotten"
        );
    }

    #[test]
    fn claim_and_release_before_any_write_costs_nothing() {
        let mut local = LocalState::default();
        for session in 0..10 {
            local.claim("n", session, ips(&[]), 0);
            local.release("n", session);
        }
        assert_eq!(local.next_action(), None);
        assert!(local.nodes.is_empty());
    }

    #[test]
    fn lease_loss_rewrites_every_wanted_claim() {
        let mut local = LocalState::default();
        for (i, node) in ["a", "b"].iter().enumerate() {
            local.claim(node, i as u64, ips(&[]), 0);
        }
        while let Some((name, Action::Claim(want))) = local.next_action() {
            let entry = local.nodes.get_mut(&name).unwrap();
            entry.in_flight = false;
            entry.written = Some(Written {
                session: want.session,
                ips: want.ips,
                revision: 3,
            });
            if let Some(w) = entry.want.as_mut() {
                w.basis = 3;
            }
        }
        local.release("b", 1);
        local.lease_lost();
        let mut claimed = Vec::new();
        while let Some((name, action)) = local.next_action() {
            let Action::Claim(want) = action else {
                panic!("{action:?}")
            };
            assert_eq!(want.basis, 3, "re-claims keep the basis of our last write");
            claimed.push(name.to_string());
        }
        assert_eq!(
            claimed,
            ["a"],
            "b was released; its keys went with the lease"
        );
    }
}
