//! This replica's live sessions and their claims in the directory.
//!
//! Each session the tunnel server accepts gets a claim token, unique in this process, that
//! the directory stores with the claim. The token, not the node name, says which session a
//! claim belongs to: a node may briefly have two local sessions (the newer one registered,
//! the older one still ending), and a late release or supersede must touch only its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use directory_etcd::{DirectoryEvents, EtcdDirectory, Holder};
use tracing::{info, warn};
use tunnel_session::Session;
use tunnel_session::server::{Refusal, TunnelObserver};

/// Live local sessions by node, each with its claim token.
#[derive(Default)]
pub struct LocalSessions {
    next_token: AtomicU64,
    by_node: Mutex<HashMap<String, Vec<(u64, Session)>>>,
}

impl std::fmt::Debug for LocalSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSessions")
            .field("nodes", &self.lock().len())
            .finish()
    }
}

impl LocalSessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<(u64, Session)>>> {
        self.by_node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `session` and returns its new claim token.
    fn insert(&self, session: &Session) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock()
            .entry(session.node().name.clone())
            .or_default()
            .push((token, session.clone()));
        token
    }

    /// Forgets `session`; returns its token if it was known.
    fn remove(&self, session: &Session) -> Option<u64> {
        let mut map = self.lock();
        let node = &session.node().name;
        let entries = map.get_mut(node)?;
        let at = entries.iter().position(|(_, s)| s.same(session))?;
        let (token, _) = entries.swap_remove(at);
        if entries.is_empty() {
            map.remove(node);
        }
        Some(token)
    }

    /// The live session of `node` with claim token `token`.
    fn get(&self, node: &str, token: u64) -> Option<Session> {
        self.lock()
            .get(node)?
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, s)| s.clone())
    }

    /// Nodes with at least one live local session.
    pub fn nodes(&self) -> usize {
        self.lock().len()
    }
}

impl DirectoryEvents for LocalSessions {
    fn superseded(&self, node: &str, session: u64, by: &Holder) {
        let Some(local) = self.get(node, session) else {
            return;
        };
        let reason = format!(
            "superseded: node {node} has a newer session on cloudstream replica {} ({})",
            by.replica, by.addr
        );
        info!(node, by = %by.replica, "closing a local session another replica's newer claim replaced");
        local.close(&reason);
    }
}

/// The tunnel server's observer with several replicas: claims each session in the directory
/// when it starts and releases it when it ends, then tells `inner`.
pub struct ClaimingObserver {
    directory: EtcdDirectory,
    sessions: Arc<LocalSessions>,
    inner: Arc<dyn TunnelObserver>,
}

impl std::fmt::Debug for ClaimingObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimingObserver")
            .field("directory", &self.directory)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl ClaimingObserver {
    /// Claims in `directory`, remembers sessions in `sessions` (the directory's event
    /// receiver), and passes every event on to `inner`.
    pub fn new(
        directory: EtcdDirectory,
        sessions: Arc<LocalSessions>,
        inner: Arc<dyn TunnelObserver>,
    ) -> ClaimingObserver {
        ClaimingObserver {
            directory,
            sessions,
            inner,
        }
    }

    /// The local sessions.
    pub fn sessions(&self) -> &LocalSessions {
        &self.sessions
    }
}

impl TunnelObserver for ClaimingObserver {
    fn refused(&self, reason: Refusal) {
        self.inner.refused(reason);
    }

    fn session_started(&self, session: &Session) {
        let token = self.sessions.insert(session);
        let ips: Vec<IpAddr> = session.node().ip.into_iter().collect();
        self.directory.claim(&session.node().name, &ips, token);
        self.inner.session_started(session);
    }

    fn session_ended(&self, session: &Session) {
        match self.sessions.remove(session) {
            Some(token) => self.directory.release(&session.node().name, token),
            None => warn!(node = %session.node().name, "a session ended that was never claimed"),
        }
        self.inner.session_ended(session);
    }
}
