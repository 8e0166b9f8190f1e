//! Replicas on etcd, as `main` sets them up from [`HaSettings`].
//!
//! How this fits: with `--etcd-endpoints`, `main` calls [`start`] once its listeners are bound.
//! It starts the shared directory (`replicas::Replicas`, which claims the tunnel server's
//! sessions), builds the stream server's [`Forwarding`] (this replica's `tether-replica:<id>`
//! client certificate, the peers' CA and the name their serving certificates carry);
//! [`show_in_readiness`] and [`sample`] put the directory's state on the admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use directory_etcd::{EtcdDirectory, LinkState, ReplicaInfo};
use replicas::Replicas;
use rustls::pki_types::ServerName;
use stream_server::Forwarding;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_session::server::TunnelObserver;
use tunnel_session::tls;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::settings::HaSettings;

/// How often the directory's state is copied into the metrics.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// This replica, started.
pub struct Started {
    /// The directory, its driver and the adapters.
    pub replicas: Replicas,
    /// For `StreamServer::with_forwarding`.
    pub forwarding: Forwarding,
}

/// Starts the directory and builds forwarding for this replica. `stream` is the bound stream
/// listener (the default advertise address); `stream_cert` our own serving certificate (the
/// default peer server name); `inner` receives the tunnel events after the directory.
pub fn start(
    ha: &HaSettings,
    stream: SocketAddr,
    stream_cert: &std::path::Path,
    inner: Arc<dyn TunnelObserver>,
    shutdown: CancellationToken,
) -> Result<Started> {
    let id = match &ha.replica_id {
        Some(id) => id.clone(),
        None => hostname().context("the replica id (--replica-id) defaults to the host name")?,
    };
    let advertise = match &ha.advertise_addr {
        Some(addr) => addr.clone(),
        None if !stream.ip().is_unspecified() => stream.to_string(),
        None => bail!(
            "the stream listener binds every interface ({stream}), so other replicas cannot \
             be told where to reach this one: set --advertise-addr HOST:PORT (the pod IP and \
             stream port)"
        ),
    };
    let server_name = match &ha.peer_server_name {
        Some(name) => name.clone(),
        None => first_name(stream_cert).with_context(|| {
            format!(
                "the peer server name (--peer-server-name) defaults to the first name in {}",
                stream_cert.display()
            )
        })?,
    };
    let server_name = ServerName::try_from(server_name.clone())
        .map_err(|e| anyhow!("peer server name {server_name:?}: {e}"))?;
    let peer_tls = tls::client_config(&ha.peer, true).with_context(|| {
        format!(
            "peer TLS (--peer-cert {}, --peer-key {}, CA {})",
            ha.peer.cert.display(),
            ha.peer.key.display(),
            ha.peer.ca.display()
        )
    })?;
    check_peer_identity(&ha.peer.cert, &id)?;
    let replica = ReplicaInfo::new(id.clone(), advertise.clone());
    let replicas = Replicas::start(ha.directory.clone(), replica, inner, shutdown)
        .context("the replica directory (ha.etcd)")?;
    let forwarding = Forwarding::new(
        id.clone(),
        replicas.locator.clone(),
        Arc::unwrap_or_clone(peer_tls),
        server_name,
        ha.peer_dial_timeout,
    );
    info!(
        replica = %id,
        advertise = %advertise,
        endpoints = ?ha.directory.endpoints,
        lease_ttl = ?ha.directory.lease_ttl,
        "replica directory on etcd"
    );
    Ok(Started {
        replicas,
        forwarding,
    })
}

/// Shows the directory's state under `/readyz`, computed on each request. A stale directory
/// is shown, not made "not ready": the replica keeps serving its own sessions and forwarding
/// to the replicas it knew.
pub fn show_in_readiness(directory: EtcdDirectory, readiness: &admin::Readiness) {
    readiness.set_detail_source(move || {
        let status = directory.status();
        Some(match &status.link {
            LinkState::Connected { .. } => format!(
                "directory: following etcd; {} nodes, {} held here",
                status.entries, status.local_claims
            ),
            LinkState::Stale { since, reason } => format!(
                "directory: stale for {:.0?} (serving from the last known state: {} nodes, {} held \
                 here, {} changes waiting): {reason}",
                since.elapsed(),
                status.entries,
                status.local_claims,
                status.pending
            ),
        })
    });
}

/// Copies the directory's state into the metrics every [`SAMPLE_INTERVAL`], and logs when it
/// goes stale or recovers, until `stop`.
pub async fn sample(directory: EtcdDirectory, metrics: admin::Metrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = directory.status();
        let up = status.is_connected();
        metrics.directory(admin::DirectorySample {
            nodes: status.entries,
            local_claims: status.local_claims,
            pending: status.pending,
            up,
            etcd_errors: status.counters.etcd_errors,
            lease_losses: status.counters.lease_losses,
            superseded: status.counters.superseded,
        });
        if was_up != Some(up) {
            if up {
                info!(nodes = status.entries, "replica directory follows etcd");
            } else if was_up.is_some() {
                warn!(
                    "replica directory is stale: etcd is unreachable; serving from the last known state"
                );
            }
            was_up = Some(up);
        }
    }
}

/// The host name, as the kernel has it.
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("cannot read the host name"))?;
    Ok(name)
}

/// The first DNS or IP subject alternative name of the certificate in `path`.
fn first_name(path: &std::path::Path) -> Result<String> {
    let certs = tls::load_certs(path)?;
    let leaf = certs.first().context("no certificate")?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| anyhow!("not X.509: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow!("bad subjectAltName: {e}"))?
        .context("the certificate has no subjectAltName")?;
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => return Ok((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .map(std::net::IpAddr::from)
                        .ok(),
                    _ => None,
                };
                if let Some(ip) = ip {
                    return Ok(ip.to_string());
                }
            }
            _ => {}
        }
    }
    bail!("the certificate names no DNS name or IP")
}

/// Refuses a peer certificate that would not be taken for this replica: the receiving side
/// accepts the hop marker only from CN `tether-replica:<id>`.
fn check_peer_identity(cert: &std::path::Path, id: &str) -> Result<()> {
    let certs = tls::load_certs(cert)?;
    let leaf = certs.first().context("no certificate in --peer-cert")?;
    match stream_server::identity::replica_of_certificate(leaf) {
        Some(cn_id) if cn_id == id => Ok(()),
        Some(other) => {
            // Replicas of a Deployment usually share one Secret, hence one CN: fine, the
            // hop marker still names this replica.
            info!(certificate = %other, replica = %id, "the peer certificate is shared with other replicas");
            Ok(())
        }
        None => bail!(
            "--peer-cert {} must have the subject CN {}{id}: other replicas refuse forwarded \
             requests from any other identity",
            cert.display(),
            stream_server::identity::REPLICA_CN_PREFIX
        ),
    }
}
