//! The proxy: a listener on `127.0.0.1:0`, one task per accepted connection, and the handle a
//! test uses to shape and break the link.
//!
//! [`Link`] owns the accept task; the accept task owns every connection task in a `JoinSet`;
//! a connection task owns both sockets and both [`crate::path`] pipelines. Dropping the
//! [`Link`] aborts the accept task, which drops the set and with it every connection, so nothing
//! outlives the handle. Faults and configuration changes reach the tasks through one `watch`
//! channel of [`Control`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::Error;
use crate::config::{LinkConfig, PathConfig};
use crate::path::{self, Abort, Control, Direction};
use crate::stats::{Counters, LinkStats};

/// `TCP_MAXSEG` of both of the proxy's sockets, so the endpoints negotiate Ethernet-sized
/// segments with it instead of loopback's 64 KiB.
///
/// Linux sizes an auto-tuned send buffer in segments (about twice the congestion window), so
/// with loopback's MSS an endpoint sending through the link buffered ~3 MB in its own kernel
/// (measured: 1.3 s of extra latency behind a bulk transfer on 20 Mbit/s) where a host on a
/// real path buffers a fraction of that.
pub const ETHERNET_MSS: u32 = 1460;

/// Bounds of the proxy's socket buffers; see `socket_buffer`.
const MIN_SOCKET_BUFFER: u32 = 4 * 1024;
const MAX_SOCKET_BUFFER: u32 = 64 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so the
/// loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// What happens to a connection the link accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Admission {
    /// Connect to the target and forward (the default).
    #[default]
    Forward,
    /// Reset it at once: the client sees its connect succeed, then a reset.
    Reset,
    /// Keep it open without connecting to the target, until the admission changes (then it
    /// is forwarded or reset accordingly), or the link resets or shuts down. The client sees a
    /// connection over which nothing ever comes back.
    Hold,
}

/// A running link emulator: connections to [`Link::addr`] are forwarded to the target through
/// the modelled link.
///
/// Every method takes `&self` and applies at once to all current and future connections.
/// Dropping the `Link` ends all of its tasks and resets every connection; [`Link::shutdown`]
/// does the same and waits until everything has ended.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<Control>,
    counters: Arc<Counters>,
    acceptor: Option<JoinHandle<()>>,
}

impl Link {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `target` through a
    /// link shaped by `config`.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a tokio runtime, [`Error::InvalidConfig`] for a bad
    /// `config`, [`Error::Listen`] if the listening socket cannot be set up.
    pub fn start(target: SocketAddr, config: LinkConfig) -> Result<Link, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let _entered = runtime.enter();
        let listener = listen().map_err(Error::Listen)?;
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let (control, control_rx) = watch::channel(Control {
            config,
            paused: false,
            blackholed: false,
            admission: Admission::Forward,
            reset_epoch: 0,
            closing: false,
        });
        let counters = Arc::new(Counters::default());
        let acceptor = runtime.spawn(accept_loop(
            listener,
            target,
            control_rx,
            Arc::clone(&counters),
        ));
        tracing::debug!(%addr, %target, ?config, "link started");
        Ok(Link {
            addr,
            target,
            control,
            counters,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect: the near end of the link.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the link forwards to.
    #[must_use]
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The configuration now in force.
    #[must_use]
    pub fn config(&self) -> LinkConfig {
        self.control.borrow().config
    }

    /// Replaces rate, delay and queue of both directions. Bytes already queued are released at
    /// the new rate with the new delay; bytes already on the wire keep their arrival time.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad `config`; the old one stays in force.
    pub fn set_config(&self, config: LinkConfig) -> Result<(), Error> {
        config.validate()?;
        self.control.send_modify(|c| c.config = config);
        Ok(())
    }

    /// Stops forwarding in both directions without closing anything, like a dead router:
    /// neither side gets a FIN or a reset, their writes keep succeeding, and every byte not yet
    /// delivered or sent meanwhile is lost (counted in [`crate::PathStats::dropped`]).
    ///
    /// Unlike a real dead path, TCP will not retransmit the lost bytes after [`Link::restore`]:
    /// a connection that lives through a blackhole has a gap in its byte stream. Use
    /// [`Link::pause`] for an outage that loses nothing.
    pub fn blackhole(&self) {
        self.control.send_modify(|c| c.blackholed = true);
    }

    /// Ends a [`Link::blackhole`]: bytes sent from now on are forwarded again.
    pub fn restore(&self) {
        self.control.send_modify(|c| c.blackholed = false);
    }

    /// Stalls the link: nothing is released or delivered, nothing is lost. Senders fill the
    /// queue and are then held back by TCP; on [`Link::resume`] everything flows on in order
    /// (bytes that were on the wire and are overdue arrive at once, the queue drains at the
    /// rate). A [`Link::blackhole`] takes precedence: while both are on, bytes are lost.
    pub fn pause(&self) {
        self.control.send_modify(|c| c.paused = true);
    }

    /// Ends a [`Link::pause`].
    pub fn resume(&self) {
        self.control.send_modify(|c| c.paused = false);
    }

    /// Aborts every connection the link has accepted so far with a reset (`SO_LINGER` 0) on
    /// both sides; queued bytes are discarded. Later connections are not affected.
    ///
    /// A client's `connect` can complete in the kernel before the link has accepted it; wait
    /// for [`LinkStats::accepted`] (or for bytes to flow) before relying on a reset reaching it.
    pub fn reset(&self) {
        self.control.send_modify(|c| c.reset_epoch += 1);
    }

    /// Chooses what happens to connections accepted from now on (and to held ones).
    pub fn set_admission(&self, admission: Admission) {
        self.control.send_modify(|c| c.admission = admission);
    }

    /// A snapshot of the link's counters.
    #[must_use]
    pub fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }

    /// Waits until the counters satisfy `done`, checking every millisecond, and returns the
    /// snapshot that did.
    ///
    /// # Errors
    /// [`Error::StatsTimeout`] with the last snapshot if `timeout` passes first.
    pub async fn wait_stats(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&LinkStats) -> bool,
    ) -> Result<LinkStats, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if done(&stats) {
                return Ok(stats);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::StatsTimeout(Box::new(stats)));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops accepting, resets every connection and waits until all of the link's tasks have
    /// ended.
    pub async fn shutdown(mut self) {
        self.control.send_modify(|c| c.closing = true);
        if let Some(acceptor) = self.acceptor.take()
            && let Err(error) = acceptor.await
            && error.is_panic()
        {
            tracing::error!(%error, "link accept task panicked");
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
    }
}

fn listen() -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Accepted sockets inherit these. Starting at the minimum and growing per connection
    // (`size_buffers`) is safe; shrinking a buffer the client may already have filled is not.
    socket.set_recv_buffer_size(MIN_SOCKET_BUFFER)?;
    socket.set_send_buffer_size(MIN_SOCKET_BUFFER)?;
    socket2::SockRef::from(&socket).set_tcp_mss(ETHERNET_MSS)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    socket.listen(1024)
}

async fn connect(target: SocketAddr, config: &LinkConfig) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // This socket receives the down direction and sends the up direction.
    socket.set_recv_buffer_size(socket_buffer(&config.down))?;
    socket.set_send_buffer_size(socket_buffer(&config.up))?;
    socket2::SockRef::from(&socket).set_tcp_mss(ETHERNET_MSS)?;
    socket.connect(target).await
}

/// `SO_RCVBUF` and `SO_SNDBUF` for a proxy socket carrying `path`: about 1 ms of its rate,
/// 4–64 KiB (Linux doubles the value).
///
/// Loopback autotuning would otherwise give each proxy socket megabytes of buffer: a hidden
/// router queue in front of the configured one that makes latency through a loaded link
/// meaningless. A fixed 16 KiB still added 130 ms on 2 Mbit/s (measured); a fixed 4 KiB held
/// an unshaped link to ~220 Mbit/s.
fn socket_buffer(path: &PathConfig) -> u32 {
    if path.rate == 0 {
        return MAX_SOCKET_BUFFER;
    }
    u32::try_from(path.rate / 1000)
        .unwrap_or(MAX_SOCKET_BUFFER)
        .clamp(MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER)
}

/// Grows the accepted socket's buffers to fit the link (it receives up, sends down).
fn size_buffers(client: &TcpStream, config: &LinkConfig) {
    let socket = socket2::SockRef::from(client);
    let sized = socket
        .set_recv_buffer_size(socket_buffer(&config.up) as usize)
        .and_then(|()| socket.set_send_buffer_size(socket_buffer(&config.down) as usize));
    if let Err(error) = sized {
        tracing::debug!(%error, "cannot size a link socket's buffers");
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    control: watch::Receiver<Control>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    // Its own receiver: the accept branch reads `control` while this one waits on it.
    let mut closing = control.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let epoch = control.borrow().reset_epoch;
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    counters.open.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(%peer, "link accepted a connection");
                    connections.spawn(connection(
                        client,
                        target,
                        control.clone(),
                        Arc::clone(&counters),
                        epoch,
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "link accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined && error.is_panic() {
                    tracing::error!(%error, "link connection task panicked");
                }
            }
            () = shutting_down(&mut closing) => break,
        }
    }
    drop(listener);
    // Every connection watches `closing` too and resets itself; wait for them to finish.
    while connections.join_next().await.is_some() {}
}

/// The two sockets of one proxied connection. Unless the connection ended cleanly (both FINs
/// delivered), dropping it resets both: a FIN would tell the endpoints that the other side
/// closed in order, which is not what happened.
struct Sockets {
    client: TcpStream,
    server: Option<TcpStream>,
    clean: bool,
    counters: Arc<Counters>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        if self.clean {
            return;
        }
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
        for socket in std::iter::once(&self.client).chain(self.server.as_ref()) {
            // If this fails the socket closes with a FIN instead; nothing better can be done.
            if let Err(error) = socket.set_zero_linger() {
                tracing::debug!(%error, "cannot set SO_LINGER 0 for a reset");
            }
        }
    }
}

/// Resolves when the link shuts down.
async fn shutting_down(control: &mut watch::Receiver<Control>) {
    // An error means the `Link` is gone; its drop aborts this task anyway. Returning `()`
    // rather than the `Ref` keeps the non-`Send` guard out of the caller's `select!`.
    let _ = control.wait_for(|c| c.closing).await;
}

/// Resolves when the connection accepted under `epoch` must be reset by the link.
async fn reset_by_link(control: &mut watch::Receiver<Control>, epoch: u64) {
    // An error means the `Link` is gone; its drop aborts this task anyway.
    let _ = control
        .wait_for(|c| c.closing || c.reset_epoch != epoch)
        .await;
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut control: watch::Receiver<Control>,
    counters: Arc<Counters>,
    epoch: u64,
) {
    let mut sockets = Sockets {
        client,
        server: None,
        clean: false,
        counters: Arc::clone(&counters),
    };
    let admitted = match control
        .wait_for(|c| c.admission != Admission::Hold || c.closing || c.reset_epoch != epoch)
        .await
    {
        Ok(c) => c.admission == Admission::Forward && !c.closing && c.reset_epoch == epoch,
        Err(_) => false,
    };
    if !admitted {
        tracing::debug!("link refused a connection by admission policy");
        return;
    }
    let config = control.borrow().config;
    size_buffers(&sockets.client, &config);
    let server = tokio::select! {
        connected = connect(target, &config) => match connected {
            Ok(server) => server,
            Err(error) => {
                tracing::debug!(%target, %error, "link cannot reach its target; resetting the client");
                return;
            }
        },
        () = reset_by_link(&mut control, epoch) => return,
    };
    // Small writes must leave the proxy as soon as they are due, not when Nagle allows.
    for socket in [&sockets.client, &server] {
        if let Err(error) = socket.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a link socket");
        }
    }
    let server = sockets.server.insert(server);
    // The pipelines get their own receiver: `reset_by_link` below needs this one mutably.
    let paths_control = control.clone();
    let (client_read, client_write) = sockets.client.split();
    let (server_read, server_write) = server.split();
    let up = path::run(
        client_read,
        server_write,
        Direction::Up,
        &paths_control,
        &counters.up,
    );
    let down = path::run(
        server_read,
        client_write,
        Direction::Down,
        &paths_control,
        &counters.down,
    );
    let paths = async { tokio::try_join!(up, down) };
    let outcome = tokio::select! {
        outcome = paths => outcome.map(|((), ())| ()),
        () = reset_by_link(&mut control, epoch) => Err(Abort::Link),
    };
    match outcome {
        Ok(()) => sockets.clean = true,
        Err(reason) => tracing::debug!(%reason, "link resets a connection"),
    }
}
