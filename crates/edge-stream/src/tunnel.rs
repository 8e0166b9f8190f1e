//! Keeping the tunnel up: dial, serve the session's streams, reconnect with backoff, drain on
//! shutdown.
//!
//! [`run`] owns everything it starts. Session drivers and retired sessions run in one
//! [`TaskTracker`], stream handlers in another, so that shutdown can wait for the handlers
//! (up to the drain grace) before it closes the sessions they run on. A token cut at the end
//! of the grace ends whatever is still running.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use tunnel_session::client::{self, DialConfig};
use tunnel_session::{Dialect, Incoming, Session, SessionDriver};

use crate::backoff::ReconnectDelay;
use crate::config::EdgeConfig;
use crate::error::Error;
use crate::kubelet::Kubelet;
use crate::serve::Connector;

/// How long a new tether/2 session waits for the cloud's first frame before it is reported
/// connected anyway.
const REGISTERED_WAIT: Duration = Duration::from_secs(5);
/// After the drain grace, how long cut handlers and closed sessions get to wind down.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// The state of the edge's tunnel, published for readiness probes and status pages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TunnelStatus {
    /// No session yet: the first dial is under way. A good initial value for the channel.
    #[default]
    Connecting,
    /// A session to the cloud is up.
    Connected {
        /// The dialect the cloud agreed to.
        dialect: Dialect,
    },
    /// No session; the edge is waiting to dial again.
    Disconnected {
        /// Why the last session ended or the last dial failed.
        reason: String,
    },
    /// [`run`] has returned.
    Stopped,
}

/// Runs the edge until `shutdown` is cancelled.
///
/// Keeps one session to the cloud up, serves every stream the cloud opens from the kubelet,
/// and reconnects with jittered exponential backoff whenever the session is lost or a dial
/// fails. `status`, if given, follows the tunnel's state.
///
/// When the cloud drains a tether/2 session (GO_AWAY), a new session is dialled at once
/// while the old one finishes its streams: waiting for them would leave the node
/// unreachable for as long as the longest `kubectl logs -f` or `exec` on it.
///
/// On shutdown the session is drained (the cloud is told, with tether/2), in-flight streams
/// get `config.drain_grace` to finish, the rest are cut, the sessions are closed, and this
/// returns `Ok(())`.
///
/// # Errors
///
/// [`Error::Config`] if the configuration is invalid; nothing is dialled then. Tunnel and
/// kubelet failures are logged and retried, never returned.
pub async fn run(
    config: EdgeConfig,
    shutdown: CancellationToken,
    status: Option<watch::Sender<TunnelStatus>>,
) -> Result<(), Error> {
    config.validate()?;
    let kubelet = Kubelet::new(&config.kubelet)?;
    let edge = Edge {
        connector: Arc::new(Connector::new(
            config.dial.node.name.clone(),
            kubelet,
            config.operations,
            config.compress_bodies,
        )),
        delay: ReconnectDelay::new(config.backoff),
        dial: config.dial,
        drain_grace: config.drain_grace,
        status,
        handlers: TaskTracker::new(),
        sessions: TaskTracker::new(),
        cut: CancellationToken::new(),
    };
    let span = info_span!("edge", node = %edge.dial.node.name, server = %edge.dial.server);
    edge.run(shutdown).instrument(span).await;
    Ok(())
}

/// How serving one session ended.
enum SessionEnd {
    /// The session is gone.
    Closed { reason: String },
    /// The cloud is draining it; it lives on in a retire task until its streams end.
    Draining,
    /// The edge is shutting down; the session is still open.
    Shutdown(Session),
}

/// The running edge: what [`run`] owns.
struct Edge {
    dial: DialConfig,
    connector: Arc<Connector>,
    delay: ReconnectDelay,
    drain_grace: Duration,
    status: Option<watch::Sender<TunnelStatus>>,
    /// Stream handlers.
    handlers: TaskTracker,
    /// Session drivers and retired sessions.
    sessions: TaskTracker,
    /// Cancelled at the end of the shutdown grace.
    cut: CancellationToken,
}

impl Edge {
    async fn run(mut self, shutdown: CancellationToken) {
        self.publish(TunnelStatus::Connecting);
        let current = loop {
            let dialled = tokio::select! {
                () = shutdown.cancelled() => break None,
                dialled = client::dial(&self.dial) => dialled,
            };
            let wait = match dialled {
                Err(error) => {
                    // A node certificate refused under TLS 1.3 surfaces here too, as an error
                    // right after the TLS handshake.
                    warn!(%error, "could not open the tunnel to the cloud");
                    self.publish(TunnelStatus::Disconnected {
                        reason: error.to_string(),
                    });
                    self.delay.next_delay()
                }
                Ok((session, incoming, driver)) => {
                    let since = Instant::now();
                    match self
                        .serve_session(session, incoming, driver, &shutdown)
                        .await
                    {
                        SessionEnd::Shutdown(session) => break Some(session),
                        SessionEnd::Draining => {
                            self.publish(TunnelStatus::Disconnected {
                                reason: "the cloud is draining the session".to_owned(),
                            });
                            // Not a failure: start the pacing afresh, still jittered so a
                            // fleet told to go away at once does not return at once.
                            self.delay.reset();
                            self.delay.next_delay()
                        }
                        SessionEnd::Closed { reason } => {
                            warn!(%reason, lived = ?since.elapsed(), "tunnel session ended");
                            self.publish(TunnelStatus::Disconnected { reason });
                            self.delay.session_ended(since.elapsed());
                            self.delay.next_delay()
                        }
                    }
                }
            };
            debug!(?wait, "next tunnel dial");
            tokio::select! {
                () = shutdown.cancelled() => break None,
                () = tokio::time::sleep(wait) => {}
            }
        };
        self.stop(current).await;
    }

    /// Serves one session's streams until it ends, drains, or the edge shuts down.
    async fn serve_session(
        &self,
        session: Session,
        mut incoming: Incoming,
        driver: SessionDriver,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let dialect = session.dialect();
        let span = info_span!("session", node = %session.node().name, %dialect);
        self.sessions.spawn(
            async move {
                if let Err(error) = driver.run().await {
                    debug!(%error, "session driver ended");
                }
            }
            .instrument(span),
        );
        // A tether cloud pings as soon as it has registered the session, so the first frame
        // means requests can reach this node. A stock cloud never pings; with it the 101 is
        // all there is.
        if dialect == Dialect::Tether2 {
            let wait = tokio::time::timeout(REGISTERED_WAIT, session.heard_from_peer());
            tokio::select! {
                () = shutdown.cancelled() => return SessionEnd::Shutdown(session),
                _ = wait => {}
            }
        }
        info!(%dialect, "tunnel to the cloud open");
        self.publish(TunnelStatus::Connected { dialect });
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return SessionEnd::Shutdown(session),
                accepted = incoming.accept() => match accepted {
                    Some(stream) => {
                        let connector = Arc::clone(&self.connector);
                        self.handlers.spawn(connector.serve(stream, self.cut.clone()));
                    }
                    None => {
                        let reason = session.close_reason().unwrap_or_else(|| "closed".to_owned());
                        return SessionEnd::Closed { reason };
                    }
                },
                () = session.draining() => {
                    self.retire(session, incoming);
                    return SessionEnd::Draining;
                }
            }
        }
    }

    /// Lets a session the cloud is draining finish its streams, then closes it. The cloud
    /// opens nothing new on it; what it opened before its GO_AWAY is still accepted and
    /// served (GO_AWAY travels behind those connects, so they are all queued by now).
    fn retire(&self, session: Session, mut incoming: Incoming) {
        info!(
            open_streams = session.open_streams(),
            "the cloud is draining the tunnel; dialling a new one while the open streams finish"
        );
        let cut = self.cut.clone();
        let handlers = self.handlers.clone();
        let connector = Arc::clone(&self.connector);
        let span = info_span!("retired_session", node = %session.node().name);
        self.sessions.spawn(
            async move {
                loop {
                    tokio::select! {
                        () = session.closed() => return,
                        () = cut.cancelled() => {
                            session.close("the edge is shutting down");
                            return;
                        }
                        accepted = incoming.accept() => match accepted {
                            Some(stream) => {
                                handlers.spawn(Arc::clone(&connector).serve(stream, cut.clone()));
                            }
                            None => return,
                        },
                        () = session.idle() => {
                            session.close("drained: no streams left");
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Shuts down: drain the current session, give the handlers the grace, cut the rest,
    /// close every session.
    async fn stop(self, current: Option<Session>) {
        if let Some(session) = &current {
            session.drain("the edge is shutting down");
        }
        self.handlers.close();
        if !self.handlers.is_empty() {
            info!(streams = self.handlers.len(), grace = ?self.drain_grace, "waiting for open streams");
            if tokio::time::timeout(self.drain_grace, self.handlers.wait())
                .await
                .is_err()
            {
                warn!(
                    streams = self.handlers.len(),
                    "streams still open after the drain grace; cutting them"
                );
            }
        }
        self.cut.cancel();
        let _ = tokio::time::timeout(CUT_WAIT, self.handlers.wait()).await;
        if let Some(session) = &current {
            session.close("the edge is shutting down");
        }
        self.sessions.close();
        if tokio::time::timeout(CUT_WAIT, self.sessions.wait())
            .await
            .is_err()
        {
            warn!("tunnel sessions did not close in time");
        }
        self.publish(TunnelStatus::Stopped);
        info!("edge stopped");
    }

    fn publish(&self, status: TunnelStatus) {
        if let Some(tx) = &self.status {
            tx.send_replace(status);
        }
    }
}
