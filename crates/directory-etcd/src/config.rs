//! How a replica reaches etcd, lays out its keys and paces its lease.
//!
//! The binary reads files and flags and fills these types; the library never reads files on
//! its own (design §4), so TLS material arrives as PEM bytes. [`DirectoryConfig::validate`]
//! rejects what cannot work before anything is started, so a bad configuration fails at
//! start-up instead of showing up later as a directory that is stale for ever.

use std::fmt;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "/tether/v1/";
/// The lease TTL used when none is configured.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The dial timeout used when none is configured.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The per-request timeout used when none is configured.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How many claim or release transactions one replica keeps in flight by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// The longest node name or replica id accepted in a key (a DNS subdomain's limit).
pub(crate) const MAX_NAME_LEN: usize = 253;

/// Where etcd is and how this replica uses it.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Client URLs, `http://host:port` or `https://host:port` (all of one scheme).
    pub endpoints: Vec<String>,
    /// TLS towards etcd; required for (and only allowed with) `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// The key prefix every key of this directory lives under; ends with `/`.
    pub prefix: String,
    /// TTL of this replica's lease. When the replica stops renewing it (killed, partitioned),
    /// its claims vanish from every other replica's view after at most this long. etcd grants
    /// whole seconds, so this is rounded up to one.
    pub lease_ttl: Duration,
    /// Deadline for establishing a connection to etcd.
    pub dial_timeout: Duration,
    /// Deadline for every single etcd call (a transaction, a page of the list, a keep-alive
    /// answer).
    pub request_timeout: Duration,
    /// How many claim/release transactions run at once. They are independent (one node
    /// each), so a handful in flight hides etcd's commit latency when many edges connect at
    /// once (after a replica restart, for example).
    pub max_in_flight: usize,
}

impl DirectoryConfig {
    /// A configuration for `endpoints` with every other setting at its default.
    pub fn new<I, S>(endpoints: I) -> DirectoryConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        DirectoryConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            lease_ttl: DEFAULT_LEASE_TTL,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Checks everything that can be checked without talking to etcd, PEM material included.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.endpoints.is_empty() {
            return bad("no etcd endpoints".into());
        }
        for endpoint in &self.endpoints {
            let https = endpoint.starts_with("https://");
            if !https && !endpoint.starts_with("http://") {
                return bad(format!(
                    "etcd endpoint {endpoint:?} must start with http:// or https://"
                ));
            }
            match (https, self.tls.is_some()) {
                (true, false) => {
                    return bad(format!(
                        "etcd endpoint {endpoint} is https but no etcd TLS (CA) is configured"
                    ));
                }
                (false, true) => {
                    return bad(format!(
                        "etcd TLS is configured but endpoint {endpoint} is plain http"
                    ));
                }
                _ => {}
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            return bad(format!(
                "key prefix {:?} must start and end with '/' and name something",
                self.prefix
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad(format!(
                "lease TTL {:?} is below etcd's one-second granularity",
                self.lease_ttl
            ));
        }
        if self.dial_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("dial and request timeouts must be above zero".into());
        }
        if self.request_timeout > self.lease_ttl {
            // A keep-alive that may take longer than the lease lives cannot keep it.
            return bad(format!(
                "request timeout {:?} exceeds the lease TTL {:?}",
                self.request_timeout, self.lease_ttl
            ));
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// The lease TTL in whole seconds, rounded up, as etcd takes it.
    pub(crate) fn lease_ttl_secs(&self) -> i64 {
        let secs = self.lease_ttl.as_secs() + u64::from(self.lease_ttl.subsec_nanos() > 0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    }

    /// How often the lease is renewed: a third of its TTL, as etcd's own client does, so two
    /// renewals can be lost before it expires.
    pub(crate) fn keepalive_period(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(300))
    }

    /// The etcd client options: dial deadline, HTTP/2 pings (a silently dead link is found
    /// even between renewals) and TLS.
    pub(crate) fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            .with_keep_alive(self.keepalive_period(), self.request_timeout);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.options());
        }
        options
    }
}

/// TLS towards etcd, as PEM bytes.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA bundle that signed etcd's serving certificate.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key, for etcd's `--client-cert-auth`.
    pub client: Option<ClientIdentityPem>,
    /// The name to verify etcd's certificate against, when it differs from the endpoint's
    /// host.
    pub server_name: Option<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("client", &self.client)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A client certificate chain and its private key, in PEM.
#[derive(Clone)]
pub struct ClientIdentityPem {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentityPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentityPem")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl EtcdTls {
    /// Parses the PEM material once, so that garbage fails at start-up rather than on every
    /// reconnect (tonic parses it only when it dials).
    fn validate(&self) -> Result<()> {
        let certs = |what: &str, pem: &[u8]| -> Result<()> {
            let mut count = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                cert.map_err(|e| Error::Tls(format!("{what}: {e}")))?;
                count += 1;
            }
            if count == 0 {
                return Err(Error::Tls(format!("{what}: no CERTIFICATE block")));
            }
            Ok(())
        };
        certs("CA bundle", &self.ca_pem)?;
        if let Some(client) = &self.client {
            certs("client certificate", &client.cert_pem)?;
            PrivateKeyDer::from_pem_slice(&client.key_pem)
                .map_err(|e| Error::Tls(format!("client key: {e}")))?;
        }
        Ok(())
    }

    fn options(&self) -> TlsOptions {
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(client) = &self.client {
            options = options.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        }
        if let Some(name) = &self.server_name {
            options = options.domain_name(name.clone());
        }
        options
    }
}

/// This replica as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// A name unique among the replicas and stable across restarts (a pod name, say).
    pub id: String,
    /// `host:port` where the other replicas reach this replica's stream server to forward
    /// requests for nodes it holds.
    pub advertise_addr: String,
}

impl ReplicaInfo {
    /// A replica `id` reachable at `advertise_addr`.
    pub fn new(id: impl Into<String>, advertise_addr: impl Into<String>) -> ReplicaInfo {
        ReplicaInfo {
            id: id.into(),
            advertise_addr: advertise_addr.into(),
        }
    }

    /// Checks that the id can be a key segment and that an address is given.
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty() || self.id.len() > MAX_NAME_LEN || self.id.contains('/') {
            return Err(Error::Config(format!(
                "replica id {:?} must be 1 to {MAX_NAME_LEN} bytes without '/'",
                self.id
            )));
        }
        if self.advertise_addr.is_empty() {
            return Err(Error::Config("replica advertise address is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn defaults_validate() {
        DirectoryConfig::new(["http://127.0.0.1:2379"])
            .validate()
            .unwrap();
    }

    #[test]
    fn rejects_what_cannot_work() {
        let base = DirectoryConfig::new(["http://127.0.0.1:2379"]);
        let cases: Vec<(&str, DirectoryConfig)> = vec![
            ("no endpoints", DirectoryConfig::new(Vec::<String>::new())),
            ("no scheme", DirectoryConfig::new(["127.0.0.1:2379"])),
            ("https without CA", DirectoryConfig::new(["https://e:2379"])),
            (
                "prefix without slash",
                DirectoryConfig {
                    prefix: "/tether".into(),
                    ..base.clone()
                },
            ),
            (
                "sub-second TTL",
                DirectoryConfig {
                    lease_ttl: Duration::from_millis(500),
                    ..base.clone()
                },
            ),
            (
                "request timeout above TTL",
                DirectoryConfig {
                    request_timeout: Duration::from_secs(20),
                    ..base.clone()
                },
            ),
            (
                "garbage CA",
                DirectoryConfig {
                    endpoints: vec!["https://e:2379".into()],
                    tls: Some(EtcdTls {
                        ca_pem: b"not pem".to_vec(),
                        client: None,
                        server_name: None,
                    }),
                    ..base.clone()
                },
            ),
        ];
        for (what, config) in cases {
            assert!(config.validate().is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        let mut config = DirectoryConfig::new(["http://e:1"]);
        config.lease_ttl = Duration::from_millis(2500);
        assert_eq!(config.lease_ttl_secs(), 3);
        config.lease_ttl = Duration::from_secs(10);
        assert_eq!(config.lease_ttl_secs(), 10);
    }

    #[test]
    fn replica_ids_are_key_segments() {
        assert!(ReplicaInfo::new("a/b", "x:1").validate().is_err());
        assert!(ReplicaInfo::new("", "x:1").validate().is_err());
        assert!(ReplicaInfo::new("a", "").validate().is_err());
        ReplicaInfo::new("cloudstream-0", "10.0.0.1:10003")
            .validate()
            .unwrap();
    }
}
