//! What a link looks like: rate, one-way delay and router queue, per direction.
//!
//! A [`LinkConfig`] is handed to [`crate::Link::start`] and may be replaced at run time with
//! [`crate::Link::set_config`]; every connection reads the current values before it releases
//! each quantum, so a change applies to bytes still queued. The derived numbers the data path
//! needs (release quantum, in-flight bound) live here so the model is defined in one place.

use std::time::Duration;

use crate::Error;

/// Router queue used by [`LinkConfig::symmetric`] and the presets: 64 KiB, a modest home-router
/// buffer. Large enough not to throttle a single flow below the rate, small enough that a full
/// queue adds little latency on the faster presets.
pub const DEFAULT_QUEUE: usize = 64 * 1024;

/// Bytes on the wire allowed per connection and direction when the rate is unlimited.
///
/// With a rate, the wire holds at most rate × (delay + 20 ms) plus two quanta, about what a
/// real path holds. Without one, rate × delay is unbounded; this caps the proxy's memory and
/// therefore throughput at `UNLIMITED_IN_FLIGHT / delay`.
pub const UNLIMITED_IN_FLIGHT: usize = 8 * 1024 * 1024;

/// Time added to the delay when bounding the bytes on the wire: delivery runs up to a couple of
/// timer ticks late, and a bound of exactly rate × delay measurably throttled the link (to 96 %).
const WIRE_SLACK: Duration = Duration::from_millis(20);

/// Smallest release quantum: one Ethernet MTU. A real link serialises whole packets too, so a
/// 1,500-byte write on a 2 Mbit/s link reaches the far side only once its last byte is sent.
const MIN_QUANTUM: usize = 1500;

/// Largest release quantum; only reached above ~500 Mbit/s.
const MAX_QUANTUM: usize = 64 * 1024;

/// Bytes per second of `megabits` Mbit/s (decimal, as link rates are quoted).
#[must_use]
pub const fn mbit_per_s(megabits: u64) -> u64 {
    megabits * 125_000
}

/// One direction of a link: a bounded queue in front of a serialiser of `rate`, followed by a
/// propagation `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathConfig {
    /// Bottleneck rate in bytes per second; 0 means unlimited (no serialisation time).
    pub rate: u64,
    /// One-way propagation delay: a byte released by the serialiser reaches the far side this
    /// much later.
    pub delay: Duration,
    /// Router queue in bytes: bytes read from the sender but not yet serialised. When it is full
    /// the proxy stops reading, so the sender is held back by TCP. Must be at least 1.
    pub queue: usize,
}

impl PathConfig {
    /// A path with no rate limit, no delay and the default queue: a plain proxy.
    #[must_use]
    pub const fn unlimited() -> Self {
        Self {
            rate: 0,
            delay: Duration::ZERO,
            queue: DEFAULT_QUEUE,
        }
    }

    /// The largest chunk the serialiser releases at once: about 1 ms of the rate, at least one
    /// MTU. Small enough that tokio's 1 ms timer keeps the rate within a few percent; a write
    /// smaller than this is released as soon as its own bytes are serialised.
    pub(crate) fn quantum(&self) -> usize {
        if self.rate == 0 {
            return MAX_QUANTUM;
        }
        usize::try_from(self.rate / 1000)
            .unwrap_or(MAX_QUANTUM)
            .clamp(MIN_QUANTUM, MAX_QUANTUM)
    }

    /// Bytes allowed on the wire (released, not yet delivered) per connection: the most
    /// memory the wire of one path can hold, besides the queue. It is the rate over the delay plus
    /// 20 ms, plus two quanta. The bound must never slow a flowing link, whose chunks
    /// are delivered a timer tick or two after they are due, yet it stops the wire from
    /// growing when the receiver stalls.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        if self.rate == 0 {
            return UNLIMITED_IN_FLIGHT;
        }
        let span = (self.delay + WIRE_SLACK).as_nanos();
        let bytes = u128::from(self.rate) * span / 1_000_000_000;
        usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(2 * self.quantum())
    }

    /// Time the serialiser needs to release `bytes`; zero when the rate is unlimited.
    pub(crate) fn serialisation_time(&self, bytes: usize) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        // usize -> u128 never truncates; the quotient fits u64 nanoseconds (584 years) for any
        // quantum-sized chunk at any rate >= 1 byte/s.
        let nanos = (bytes as u128) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl Default for PathConfig {
    fn default() -> Self {
        Self::unlimited()
    }
}

/// Both directions of a link. `up` is client → server (bytes the proxy reads from the
/// connections it accepts), `down` is server → client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkConfig {
    /// Client → server.
    pub up: PathConfig,
    /// Server → client.
    pub down: PathConfig,
}

impl LinkConfig {
    /// No shaping in either direction: a transparent proxy (faults still work).
    #[must_use]
    pub const fn unlimited() -> Self {
        Self {
            up: PathConfig::unlimited(),
            down: PathConfig::unlimited(),
        }
    }

    /// The same `rate` (bytes/s) both ways and a round-trip time of `rtt` (half of it each way),
    /// with the [`DEFAULT_QUEUE`].
    #[must_use]
    pub fn symmetric(rate: u64, rtt: Duration) -> Self {
        let path = PathConfig {
            rate,
            delay: rtt / 2,
            queue: DEFAULT_QUEUE,
        };
        Self {
            up: path,
            down: path,
        }
    }

    /// This configuration with the router queue of both directions set to `bytes`.
    #[must_use]
    pub const fn with_queue(mut self, bytes: usize) -> Self {
        self.up.queue = bytes;
        self.down.queue = bytes;
        self
    }

    /// Checks the values the data path relies on.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if a queue is 0 bytes: nothing could ever be forwarded.
    pub fn validate(&self) -> Result<(), Error> {
        if self.up.queue == 0 || self.down.queue == 0 {
            return Err(Error::InvalidConfig("queue must be at least 1 byte"));
        }
        Ok(())
    }
}

impl From<Preset> for LinkConfig {
    fn from(preset: Preset) -> Self {
        preset.config()
    }
}

/// The edge links tether is measured on (design §3), each with a 64 KiB queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// 100 Mbit/s, 200 ms RTT: a fast but far site (BDP 2.5 MB).
    Mbit100Rtt200,
    /// 20 Mbit/s, 100 ms RTT: a typical branch office or LTE link.
    Mbit20Rtt100,
    /// 2 Mbit/s, 300 ms RTT: a thin satellite-like link.
    Mbit2Rtt300,
}

impl Preset {
    /// Every preset, fastest first.
    pub const ALL: [Preset; 3] = [
        Preset::Mbit100Rtt200,
        Preset::Mbit20Rtt100,
        Preset::Mbit2Rtt300,
    ];

    /// A short human-readable name, e.g. `"100Mbit/200ms"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Preset::Mbit100Rtt200 => "100Mbit/200ms",
            Preset::Mbit20Rtt100 => "20Mbit/100ms",
            Preset::Mbit2Rtt300 => "2Mbit/300ms",
        }
    }

    /// The symmetric link this preset stands for.
    #[must_use]
    pub fn config(self) -> LinkConfig {
        let (mbit, rtt_ms) = match self {
            Preset::Mbit100Rtt200 => (100, 200),
            Preset::Mbit20Rtt100 => (20, 100),
            Preset::Mbit2Rtt300 => (2, 300),
        };
        LinkConfig::symmetric(mbit_per_s(mbit), Duration::from_millis(rtt_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantum_is_about_a_millisecond_and_at_least_an_mtu() {
        let at = |mbit| {
            PathConfig {
                rate: mbit_per_s(mbit),
                ..PathConfig::unlimited()
            }
            .quantum()
        };
        assert_eq!(at(100), 12_500);
        assert_eq!(at(20), 2_500);
        assert_eq!(at(2), MIN_QUANTUM);
        assert_eq!(at(10_000), MAX_QUANTUM);
    }

    #[test]
    fn max_in_flight_is_the_bandwidth_delay_product_plus_slack() {
        let cfg = Preset::Mbit100Rtt200.config();
        assert_eq!(cfg.up.delay, Duration::from_millis(100));
        assert_eq!(cfg.up.max_in_flight(), 1_250_000 + 250_000 + 2 * 12_500);
        assert_eq!(PathConfig::unlimited().max_in_flight(), UNLIMITED_IN_FLIGHT);
    }

    #[test]
    fn serialisation_time_follows_the_rate() {
        let path = PathConfig {
            rate: mbit_per_s(2),
            ..PathConfig::unlimited()
        };
        assert_eq!(path.serialisation_time(250_000), Duration::from_secs(1));
        assert_eq!(path.serialisation_time(0), Duration::ZERO);
        assert_eq!(
            PathConfig::unlimited().serialisation_time(1 << 20),
            Duration::ZERO
        );
    }

    #[test]
    fn a_zero_queue_is_rejected() {
        assert!(LinkConfig::unlimited().with_queue(0).validate().is_err());
        assert!(Preset::Mbit2Rtt300.config().validate().is_ok());
    }
}
