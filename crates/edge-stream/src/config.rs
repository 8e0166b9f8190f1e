//! What the edge needs to know: the cloud to dial, the kubelet to serve from, which kubelet
//! operations are allowed, and how to pace reconnects.
//!
//! Plain data, built by the binary from `edgecore.yaml` and flags; the library reads no files
//! or environment of its own. [`EdgeConfig::validate`] checks the values against each other
//! before anything is dialled.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tunnel_session::client::DialConfig;

use crate::error::Error;
use crate::route::Operation;

/// Default kubelet address: KubeEdge edged's read-only API on loopback.
pub const DEFAULT_KUBELET_ADDR: &str = "127.0.0.1:10350";
/// Default time allowed for TCP connect (plus TLS) to the kubelet.
pub const DEFAULT_KUBELET_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default first reconnect delay ceiling.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Default cap on the reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default growth factor of the delay ceiling per failed attempt.
pub const DEFAULT_BACKOFF_MULTIPLIER: u32 = 2;
/// Default session age after which the backoff starts from scratch again.
pub const DEFAULT_BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// Default time in-flight streams get to finish when the edge shuts down.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Everything [`run`](crate::run) needs.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The cloud to dial: server address, TLS (node certificate, cloud verification), node
    /// identity, handshake timeout, session tunables and whether to offer tether/2.
    pub dial: DialConfig,
    /// The kubelet every stream is served from.
    pub kubelet: KubeletTarget,
    /// Which kubelet operations the cloud may ask for.
    pub operations: Operations,
    /// Reconnect pacing.
    pub backoff: Backoff,
    /// On shutdown, how long in-flight streams may run before they are cut.
    pub drain_grace: Duration,
    /// Compress plain response bodies (logs, stats, metrics) when the cloud offers to decode
    /// them (tether/2 only; see the `stream-compress` crate).
    pub compress_bodies: bool,
}

/// Compressed bodies encoded at once (each encoder holds about 0.7 MiB); beyond it, bodies
/// travel uncompressed.
pub const MAX_ENCODERS: usize = 16;

impl EdgeConfig {
    /// A configuration dialling as `dial` says, with every other setting at its default.
    pub fn new(dial: DialConfig) -> EdgeConfig {
        EdgeConfig {
            dial,
            kubelet: KubeletTarget::default(),
            operations: Operations::default(),
            backoff: Backoff::default(),
            drain_grace: DEFAULT_DRAIN_GRACE,
            compress_bodies: true,
        }
    }

    /// Checks the values against each other.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.dial.server.is_empty() {
            return bad("dial.server is empty".into());
        }
        if self.dial.node.name.is_empty() {
            return bad("dial.node.name is empty".into());
        }
        if self.dial.handshake_timeout.is_zero() {
            return bad("dial.handshake_timeout must be longer than zero".into());
        }
        if let Err(e) = self.dial.session.validate() {
            return bad(format!("dial.session: {e}"));
        }
        if !has_port(&self.kubelet.addr) {
            return bad(format!(
                "kubelet.addr {:?} is not host:port",
                self.kubelet.addr
            ));
        }
        if self.kubelet.connect_timeout.is_zero() {
            return bad("kubelet.connect_timeout must be longer than zero".into());
        }
        if let Err(e) = self.backoff.validate() {
            return bad(format!("backoff: {e}"));
        }
        Ok(())
    }
}

/// True for `host:port` and `[v6]:port` with a numeric port.
fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}

/// The kubelet the edge serves streams from. The edge never dials anything else, whatever
/// host the cloud puts in a request's URL.
#[derive(Debug, Clone)]
pub struct KubeletTarget {
    /// `host:port`. KubeEdge's edged listens on `127.0.0.1:10350` over plain HTTP; a stock
    /// kubelet on `10250` needs `tls`.
    pub addr: String,
    /// TLS towards the kubelet: the client configuration (the node's client certificate and
    /// the kubelet's CA) and the name to verify. `None` speaks plain HTTP.
    ///
    /// Only HTTP/1.1 is spoken (upgrades cannot run over HTTP/2), so any ALPN list in the
    /// configuration is replaced by `http/1.1`.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// TCP connect plus TLS handshake must finish within this.
    pub connect_timeout: Duration,
}

impl Default for KubeletTarget {
    fn default() -> Self {
        KubeletTarget {
            addr: DEFAULT_KUBELET_ADDR.to_owned(),
            tls: None,
            connect_timeout: DEFAULT_KUBELET_CONNECT_TIMEOUT,
        }
    }
}

/// Per-operation switches (design decision 7: least privilege at the edge). All on by
/// default; a request for a disabled operation is refused with 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operations {
    /// `GET /containerLogs/...` (`kubectl logs`).
    pub logs: bool,
    /// `/exec/...` (`kubectl exec`, `kubectl cp`).
    pub exec: bool,
    /// `/attach/...` (`kubectl attach`).
    pub attach: bool,
    /// `/portForward/...` (`kubectl port-forward`).
    pub port_forward: bool,
    /// `/stats/...` and `/metrics...` (metrics-server, Prometheus, `kubectl top`).
    pub metrics: bool,
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            logs: true,
            exec: true,
            attach: true,
            port_forward: true,
            metrics: true,
        }
    }
}

impl Operations {
    /// True if `operation` may be served.
    pub fn allows(&self, operation: Operation) -> bool {
        match operation {
            Operation::Logs => self.logs,
            Operation::Exec => self.exec,
            Operation::Attach => self.attach,
            Operation::PortForward => self.port_forward,
            Operation::Metrics => self.metrics,
        }
    }
}

/// Reconnect pacing: exponential backoff with full jitter and a cap.
///
/// The n-th consecutive wait is drawn uniformly from `[0, min(max, initial × multiplierⁿ)]`.
/// Full jitter spreads thousands of edges that lost the cloud at the same moment over the
/// whole window instead of having them return in synchronised waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first wait.
    pub initial: Duration,
    /// Cap on the ceiling.
    pub max: Duration,
    /// Growth of the ceiling per consecutive failure (1 keeps it constant).
    pub multiplier: u32,
    /// A session that stayed up at least this long resets the ceiling to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: DEFAULT_BACKOFF_INITIAL,
            max: DEFAULT_BACKOFF_MAX,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            reset_after: DEFAULT_BACKOFF_RESET_AFTER,
        }
    }
}

impl Backoff {
    /// Checks the values; returns a description of the first problem.
    fn validate(&self) -> Result<(), String> {
        if self.initial.is_zero() {
            return Err("initial must be longer than zero".into());
        }
        if self.max < self.initial {
            return Err(format!(
                "max ({:?}) is below initial ({:?})",
                self.max, self.initial
            ));
        }
        if self.multiplier == 0 {
            return Err("multiplier must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(has_port("127.0.0.1:10350"));
        assert!(has_port("[::1]:10250"));
        assert!(has_port("kubelet:10250"));
        assert!(!has_port("127.0.0.1"));
        assert!(!has_port(":10250"));
        assert!(!has_port("kubelet:0"));
        assert!(!has_port("kubelet:http"));
    }

    #[test]
    fn backoff_limits() {
        assert!(Backoff::default().validate().is_ok());
        let zero = Backoff {
            initial: Duration::ZERO,
            ..Backoff::default()
        };
        assert!(zero.validate().is_err());
        let inverted = Backoff {
            max: Duration::from_millis(1),
            ..Backoff::default()
        };
        assert!(inverted.validate().is_err());
        let flat = Backoff {
            multiplier: 0,
            ..Backoff::default()
        };
        assert!(flat.validate().is_err());
    }
}
