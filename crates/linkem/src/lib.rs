//! A user-space link emulator for tether's tests and benchmarks.
//!
//! Edge nodes reach the cloud over links of 50–300 ms RTT and 1–100 Mbit/s that stall and drop
//! without notice, while every test here runs on loopback and the kernel has no `netem`. A
//! [`Link`] is a TCP proxy on `127.0.0.1:0` placed between a client and a server (typically
//! `edgestream` and `cloudstream`) that forwards each connection through a modelled bottleneck
//! link and lets the test break that link on demand. It is test-only: no product crate
//! depends on it, and it depends on nothing of tether's.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> Result<(), linkem::Error> {
//! use linkem::{Link, Preset};
//! let link = Link::start(server, Preset::Mbit20Rtt100.into())?;
//! // Point the client at link.addr() instead of server.
//! link.pause(); // a stalled link ...
//! link.resume();
//! link.blackhole(); // ... a dead router ...
//! link.reset(); // ... or every connection reset.
//! link.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # The model
//!
//! Each connection gets its own path in each direction (up = client → server, down = server →
//! client), configured by a [`PathConfig`]:
//!
//! - a router **queue** of `queue` bytes: bytes read from the sender, not yet sent on. When it
//!   is full the proxy stops reading, so the sender is held back by TCP flow control. Nothing
//!   is ever dropped because a queue is full;
//! - a **serialiser** releasing bytes from the queue at `rate` bytes/s, in quanta of about 1 ms
//!   of the rate (at least 1,500 bytes, one MTU), on a virtual clock so timer granularity does
//!   not drift the rate;
//! - a one-way **delay**: a byte released at `t` is written to the receiver at `t + delay`.
//!   Bytes on the wire are bounded by rate × delay (plus slack), not by the queue; with no rate
//!   limit by [`UNLIMITED_IN_FLIGHT`].
//!
//! A FIN or a reset from one side follows that side's last byte through the path. The proxy's
//! own sockets use `TCP_NODELAY` and small kernel buffers (about 1 ms of the rate, 4–64 KiB,
//! sized when the connection is accepted) so that the kernel does not add hidden queue, and an Ethernet MSS ([`ETHERNET_MSS`]) so
//! that the endpoints' kernels size their auto-tuned send buffers in Ethernet-sized segments,
//! as on a real path, instead of loopback's 64 KiB ones.
//!
//! # Faults
//!
//! [`Link::blackhole`] (half-open path, bytes lost), [`Link::pause`] (stalled path, nothing
//! lost), [`Link::reset`] (every connection reset on both sides), [`Link::set_admission`] (new
//! connections forwarded, reset or held) and [`Link::set_config`] (rate, delay and queue
//! changed at run time). [`Link::stats`] and [`Link::wait_stats`] let tests assert outcomes
//! (bytes forwarded, dropped, queued) rather than timings.
//!
//! # What is not modelled
//!
//! - **TCP over the emulated path.** The proxy terminates TCP on both sides, and each
//!   endpoint's TCP sees a loopback path with microsecond RTT: no slow start, congestion
//!   window or receive window over the long path, no loss and no retransmission. A receiver
//!   with a small receive buffer is not limited to buffer / RTT as it would be on the real
//!   path; only windows the application keeps itself (tether/2 credit windows, request-response
//!   turns) pay the emulated RTT. The timing comes from the proxy alone.
//! - **Loss, reordering, jitter, corruption.** Bytes are delivered in order or not at all.
//! - **Sharing.** Each connection has its own queue and its own rate: two connections through
//!   one `Link` do not compete for bandwidth, as they would on one access link. For tether
//!   (one tunnel connection per node) one connection is one node's link.
//! - **ACK paths.** A blackhole or pause affects data in both directions, but there are no
//!   acknowledgements to lose: a sender's writes keep succeeding while its queue has room.
//! - **The endpoints' buffers.** An endpoint's own kernel send buffer still queues ahead of
//!   the link, as on a real host: with Linux auto-tuning and BBR it reached ~950 KB here
//!   (seconds at 2 Mbit/s). Bounding it is the endpoint's job (`SO_SNDBUF`,
//!   `TCP_NOTSENT_LOWAT`); the link only keeps its own buffers small.
//! - **Precision.** Timers run on tokio's 1 ms wheel. The writer asks to be woken 1 ms early to
//!   offset the wheel's rounding up, so a chunk reaches the receiver within about a
//!   millisecond of its due time (measured: median +0.7 ms, earliest −0.5 ms), plus
//!   scheduling latency on a loaded machine. Rates come out within 2 % (the serialiser keeps a
//!   virtual clock, so timer lateness does not accumulate).
//!
//! `cargo run --release -p linkem --example measure` prints what each [`Preset`] delivers.

mod config;
mod link;
mod path;
mod stats;

pub use config::{DEFAULT_QUEUE, LinkConfig, PathConfig, Preset, UNLIMITED_IN_FLIGHT, mbit_per_s};
pub use link::{Admission, ETHERNET_MSS, Link};
pub use stats::{LinkStats, PathStats};

/// What can go wrong setting up or observing a link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`Link::start`] was called outside a tokio runtime.
    #[error("a link must be started from within a tokio runtime")]
    NoRuntime,
    /// The listening socket could not be set up.
    #[error("cannot listen on 127.0.0.1: {0}")]
    Listen(#[source] std::io::Error),
    /// A [`LinkConfig`] value the data path cannot work with.
    #[error("invalid link configuration: {0}")]
    InvalidConfig(&'static str),
    /// [`Link::wait_stats`] timed out; carries the last snapshot for the failure message.
    #[error("link counters did not reach the awaited state in time; last: {0:?}")]
    StatsTimeout(Box<LinkStats>),
}
