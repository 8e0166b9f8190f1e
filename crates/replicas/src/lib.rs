//! Makes `cloudstream` replicas one service: the glue between the tunnel server, the stream
//! server and the etcd directory.
//!
//! # How this fits
//!
//! `tunnel-session` and `stream-server` know nothing of etcd (design decision 10);
//! `directory-etcd` knows nothing of sessions. This crate connects them, and `cloudstream`
//! composes it when `--etcd-endpoints` is given:
//!
//! - [`ClaimingObserver`] is the tunnel server's observer: each accepted session is claimed
//!   in the directory (one write) and released when it ends (one delete), then the event is
//!   passed on to the observer it wraps (metrics).
//! - [`LocalSessions`] remembers which claim token belongs to which live session, and closes a
//!   session whose claim lost to a newer one on another replica
//!   ([`DirectoryEvents::superseded`]), with a reason naming that replica.
//! - [`EtcdLocator`] is the stream server's [`ReplicaDirectory`]: which other replica holds a
//!   node, answered from the directory's cache, and why that view may be stale.
//!
//! [`Replicas::start`] builds the three around one [`EtcdDirectory`].

mod sessions;

use std::sync::Arc;

use directory_etcd::{
    DirectoryConfig, DirectoryDriver, DirectoryEvents, EtcdDirectory, LinkState, ReplicaInfo,
};
use stream_server::{RemoteHolder, ReplicaDirectory};
use tokio_util::sync::CancellationToken;
use tunnel_session::NodeKey;
use tunnel_session::server::TunnelObserver;

pub use sessions::{ClaimingObserver, LocalSessions};

/// What can go wrong setting the replicas up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory's configuration cannot work.
    #[error(transparent)]
    Directory(#[from] directory_etcd::Error),
}

/// The directory and its two adapters, ready to hand to the servers.
#[derive(Debug)]
pub struct Replicas {
    /// The shared directory (status for readiness and metrics).
    pub directory: EtcdDirectory,
    /// The task that talks to etcd; the caller spawns it and awaits it after cancelling the
    /// shutdown token given to [`Replicas::start`] (it then revokes this replica's lease).
    pub driver: DirectoryDriver,
    /// For `TunnelServer::with_observer`.
    pub observer: Arc<ClaimingObserver>,
    /// For `stream_server::Forwarding`.
    pub locator: Arc<EtcdLocator>,
}

impl Replicas {
    /// Starts the directory for `replica` (nothing waits on etcd: it connects in the
    /// background) and wires the adapters; `inner` receives every tunnel event after the
    /// directory has seen it.
    pub fn start(
        config: DirectoryConfig,
        replica: ReplicaInfo,
        inner: Arc<dyn TunnelObserver>,
        shutdown: CancellationToken,
    ) -> Result<Replicas, Error> {
        let sessions = Arc::new(LocalSessions::default());
        let events: Arc<dyn DirectoryEvents> = sessions.clone();
        let (directory, driver) = EtcdDirectory::start(config, replica, events, shutdown)?;
        let observer = Arc::new(ClaimingObserver::new(directory.clone(), sessions, inner));
        let locator = Arc::new(EtcdLocator {
            directory: directory.clone(),
        });
        Ok(Replicas {
            directory,
            driver,
            observer,
            locator,
        })
    }
}

/// The stream server's view of the other replicas, from the directory's cache.
#[derive(Debug, Clone)]
pub struct EtcdLocator {
    directory: EtcdDirectory,
}

impl EtcdLocator {
    /// A locator over `directory`.
    pub fn new(directory: EtcdDirectory) -> EtcdLocator {
        EtcdLocator { directory }
    }
}

impl ReplicaDirectory for EtcdLocator {
    fn locate(&self, key: NodeKey<'_>) -> Option<RemoteHolder> {
        let holder = match key {
            NodeKey::Name(name) => self.directory.lookup_name(name),
            NodeKey::Ip(ip) => self.directory.lookup_ip(ip),
        }?;
        // Our own claim without a live local session (it just ended, and the release is on
        // its way) is no reason to forward: to ourselves would be a loop.
        if *holder.replica == *self.directory.replica().id {
            return None;
        }
        Some(RemoteHolder {
            node: holder.node.to_string(),
            replica: holder.replica.to_string(),
            addr: holder.addr.to_string(),
        })
    }

    fn staleness(&self) -> Option<String> {
        match self.directory.status().link {
            LinkState::Connected { .. } => None,
            LinkState::Stale { since, reason } => Some(format!(
                "etcd has not been followed for {:.1?}: {reason}",
                since.elapsed()
            )),
        }
    }
}
