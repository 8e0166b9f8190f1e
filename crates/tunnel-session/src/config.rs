//! Tunables of a session, with the defaults an operator gets when they set nothing.

use std::time::Duration;

/// Default per-stream receive window and buffer bound: 1 MiB (design.md §3: a stalled
/// stream holds at most this much).
pub const DEFAULT_STREAM_WINDOW: u32 = 1 << 20;
/// Default largest receive window one stream may grow to (tether/2): fills 100 Mbit/s at
/// 1.3 s round trip, or 400 Mbit/s at 300 ms.
pub const DEFAULT_MAX_STREAM_WINDOW: u32 = 16 << 20;
/// Default bytes of receive windows above `stream_window` one session may hand out over all
/// its streams (tether/2).
pub const DEFAULT_SESSION_WINDOW_BUDGET: u64 = 64 << 20;
/// Default limit on bytes written to the tunnel socket that the kernel has not sent yet
/// (`TCP_NOTSENT_LOWAT`): 16 KiB, a few milliseconds even of a thin link.
pub const DEFAULT_UNSENT_LIMIT: u32 = 16 * 1024;
/// Default time a stock-KubeEdge session reader may wait for one full stream buffer before
/// that stream alone is closed.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(5);
/// Default interval between our websocket pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default silence after which the peer is declared dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(30);
/// Default deadline for one write (and flush) to the websocket.
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(15);
/// Default number of tunnel messages queued for the writer.
pub const DEFAULT_WRITE_QUEUE: usize = 64;
/// Default limit on concurrently open streams per session.
pub const DEFAULT_MAX_STREAMS: usize = 4096;
/// Default largest DATA payload we send. KubeEdge accepts up to 1 MiB; 64 KiB keeps
/// interactive streams responsive while bulk copies stay cheap.
pub const DEFAULT_MAX_DATA_CHUNK: usize = 64 * 1024;
/// Default wait for the edge's answer to a new stream (tether/2 open result).
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a session behaves. Both ends of the tunnel use the same type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Bytes a stream may buffer on receipt. With tether/2 it is the window a stream starts
    /// with while the session knows no rate on its path (and the most it starts with when it
    /// does), from which the window is then tuned to the path: down to 64 KiB when the link
    /// is thin or the reader slow, up to `max_stream_window` when the link is long and fast.
    /// The handshake announces only [`SessionConfig::announced_window`] of it; the rest is
    /// granted as each stream opens, from `session_window_budget`.
    pub stream_window: u32,
    /// The largest receive window of one stream (tether/2). Set it to `stream_window` to
    /// keep windows from growing.
    pub max_stream_window: u32,
    /// Bytes of receive windows above the announced window that one session's streams may
    /// hold together (tether/2): with `max_streams` × [`SessionConfig::announced_window`],
    /// what a peer can make one session buffer.
    pub session_window_budget: u64,
    /// With a stock KubeEdge peer (no windows), how long the session reader waits for space
    /// in one stream's buffer before closing that stream.
    pub stall_limit: Duration,
    /// Interval between pings we send.
    pub ping_interval: Duration,
    /// Silence after which the peer is dead and the session ends.
    pub dead_after: Duration,
    /// Deadline for each write to the websocket; a peer that does not read is dead.
    pub write_deadline: Duration,
    /// Tunnel messages queued for the writer task.
    pub write_queue: usize,
    /// Streams open at once on one session.
    pub max_streams: usize,
    /// Bytes the kernel may hold unsent on the tunnel socket (`TCP_NOTSENT_LOWAT`, Linux);
    /// 0 leaves the kernel's default. Linux sizes send buffers for throughput and would
    /// otherwise queue up to megabytes, seconds of a thin link, ahead of every keystroke and
    /// control message; acknowledged-but-in-flight bytes are not limited by this.
    pub unsent_limit: u32,
    /// Largest DATA payload per message.
    pub max_data_chunk: usize,
    /// How long `Stream::open_result` waits for the edge (tether/2).
    pub open_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            stream_window: DEFAULT_STREAM_WINDOW,
            max_stream_window: DEFAULT_MAX_STREAM_WINDOW,
            session_window_budget: DEFAULT_SESSION_WINDOW_BUDGET,
            stall_limit: DEFAULT_STALL_LIMIT,
            ping_interval: DEFAULT_PING_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
            write_deadline: DEFAULT_WRITE_DEADLINE,
            write_queue: DEFAULT_WRITE_QUEUE,
            max_streams: DEFAULT_MAX_STREAMS,
            unsent_limit: DEFAULT_UNSENT_LIMIT,
            max_data_chunk: DEFAULT_MAX_DATA_CHUNK,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
        }
    }
}

impl SessionConfig {
    /// The per-stream window this end announces at the tether/2 handshake (the
    /// `X-Tether-Window` header, [`SessionParams::peer_window`](crate::SessionParams) on the
    /// other end): `stream_window`, but at most 64 KiB, so that no stream can flood a thin
    /// link before its window is sized.
    pub fn announced_window(&self) -> u32 {
        crate::window::handshake_window(self.stream_window)
    }

    /// Checks the values against each other; returns a description of the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.stream_window < 1024 {
            return Err(format!(
                "stream window {} is below 1024 bytes",
                self.stream_window
            ));
        }
        if self.max_stream_window < self.stream_window {
            return Err(format!(
                "max stream window {} is below the stream window {}",
                self.max_stream_window, self.stream_window
            ));
        }
        if self.max_data_chunk == 0 || self.max_data_chunk > stream_proto::MAX_DATA_LEN {
            return Err(format!(
                "max data chunk {} must be between 1 and {}",
                self.max_data_chunk,
                stream_proto::MAX_DATA_LEN
            ));
        }
        if self.ping_interval.is_zero() || self.dead_after <= self.ping_interval {
            return Err("the dead-peer deadline must be longer than the ping interval".into());
        }
        if self.write_queue == 0 || self.max_streams == 0 {
            return Err("write queue and stream limit must be at least 1".into());
        }
        if self.write_deadline.is_zero()
            || self.stall_limit.is_zero()
            || self.open_timeout.is_zero()
        {
            return Err("deadlines must be longer than zero".into());
        }
        Ok(())
    }
}
