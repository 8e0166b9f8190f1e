//! Who is on the other end of a stream-server connection, as far as forwarding cares.
//!
//! Clients of the stream server are kube-apiserver, metrics-server, Prometheus — and, with
//! several replicas, the other replicas forwarding requests for nodes this one holds. A
//! replica proves it is one with a client certificate from the stream CA whose subject CN is
//! exactly `tether-replica:<id>`. Only such a client may send the hop marker
//! ([`crate::forward::HOP_HEADER`]); the CN is read whole (no `system:node:` stripping), so a
//! node certificate can never pass for a replica.

use rustls::pki_types::CertificateDer;

/// The subject CN prefix of a replica's client certificate: `tether-replica:<id>`.
pub const REPLICA_CN_PREFIX: &str = "tether-replica:";

/// What the TLS handshake proved about a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The replica id, when the client certificate's CN is `tether-replica:<id>`.
    pub replica: Option<String>,
}

impl ClientIdentity {
    /// The identity of the peer of a finished server handshake.
    pub fn of(conn: &rustls::CommonState) -> ClientIdentity {
        let replica = conn
            .peer_certificates()
            .and_then(<[CertificateDer<'static>]>::first)
            .and_then(replica_of_certificate);
        ClientIdentity { replica }
    }
}

/// The replica id a certificate speaks for: its single subject CN, if it is
/// `tether-replica:<id>` with a non-empty id.
pub fn replica_of_certificate(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = parsed.subject();
    let mut names = subject.iter_common_name();
    let cn = names.next()?.as_str().ok()?;
    if names.next().is_some() {
        // Two CNs: stacks disagree on which counts; trust neither.
        return None;
    }
    let id = cn.strip_prefix(REPLICA_CN_PREFIX)?;
    (!id.is_empty()).then(|| id.to_owned())
}
