//! How far ahead a stream lets the peer send (tether/2): a receive window sized from the path.
//!
//! A fixed window caps a stream at window / RTT (1 MiB over 200 ms is 5 MB/s, a third of a
//! 100 Mbit/s link), and a window larger than the path needs fills the router queue in front
//! of a thin link, so an `exec` keystroke waits behind it. So the receiver sizes each
//! stream's window from what it measures, much as HTTP/2 and QUIC stacks auto-tune:
//!
//! - every epoch (one round trip plus [`SLACK`]) it takes the rate the reader consumed at,
//!   and keeps the largest of the last [`RATE_SAMPLES`] epochs;
//! - while a stream starts (or restarts after idling) the window doubles every epoch in
//!   which the peer used at least half of it, until the rate stops growing by a quarter or
//!   the path shows a queue (the latest ping round trip well above the shortest): the
//!   window, not the link, was the limit until then (the way BBR finds a full pipe);
//! - after that it is 1.15 × rate × (shortest round trip + slack): the bandwidth-delay
//!   product with a little headroom, so the link stays full and the queue in front of it
//!   stays a few milliseconds long, and a window-limited stream still grows 1.15× per round
//!   trip. A stream whose reader idles or slows gets a small window back the same way.
//!
//! Bounds hold whatever the peer does: the peer may send only what was granted (more is a
//! protocol error), a window never exceeds the per-stream maximum, and growth above the
//! initial window draws on a per-session budget. Shrinking withholds grants until the credit
//! already given is used up; it never takes credit back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Headroom over the bandwidth-delay product, in percent: enough that grant steps and rate
/// jitter do not leave the link idle, little enough that the queue stays short.
const GAIN_PERCENT: u64 = 115;
/// Added to the round trip for the scheduling and processing delays of the two ends, which a
/// ping does not see but a window turnaround does (on loopback they are the whole round trip).
pub(crate) const SLACK: Duration = Duration::from_millis(2);
/// Epochs whose rates the window is sized from (the largest counts).
pub(crate) const RATE_SAMPLES: usize = 4;
/// A window never shrinks below this.
pub(crate) const MIN_WINDOW: u64 = 64 * 1024;

/// What the session knows of the path, from its pings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathRtt {
    /// The shortest round trip seen: the path without queues.
    pub(crate) min: Duration,
    /// The latest round trip.
    pub(crate) latest: Duration,
}

/// Limits a window is tuned within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The window the peer was promised for every stream at the handshake.
    pub(crate) initial: u64,
    /// The largest window of one stream.
    pub(crate) max: u64,
}

/// What [`ReceiveWindow::consume`] asks the session to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Consumed {
    /// Grant the peer this much more credit (a WINDOW message).
    pub(crate) grant: Option<u64>,
    /// An epoch ended: measure the round trip again.
    pub(crate) probe_rtt: bool,
}

/// The receive side of one stream's flow control.
#[derive(Debug)]
pub(crate) struct ReceiveWindow {
    /// Bytes the peer may send in all: the initial window plus every grant.
    allowed: u64,
    received: u64,
    consumed: u64,
    /// The window now aimed at.
    window: u64,
    epoch_start: Option<Instant>,
    epoch_bytes: u64,
    /// Bytes per second of the last epochs.
    rates: [u64; RATE_SAMPLES],
    next_rate: usize,
    /// Doubling while the rate keeps growing (see the module docs).
    startup: bool,
    /// Epochs in a row in which the rate did not grow by a quarter.
    flat_epochs: u8,
    /// The window during the previous epoch.
    previous_window: u64,
}

impl ReceiveWindow {
    /// A stream's window as the handshake set it.
    pub(crate) fn new(initial: u64) -> ReceiveWindow {
        ReceiveWindow {
            allowed: initial,
            received: 0,
            consumed: 0,
            window: initial,
            epoch_start: None,
            epoch_bytes: 0,
            rates: [0; RATE_SAMPLES],
            next_rate: 0,
            startup: true,
            flat_epochs: 0,
            previous_window: initial,
        }
    }

    /// Takes `len` bytes from the peer; false if they exceed the credit it was granted.
    pub(crate) fn receive(&mut self, len: usize) -> bool {
        let total = self.received.saturating_add(len as u64);
        if total > self.allowed {
            return false;
        }
        self.received = total;
        true
    }

    /// The window now aimed at.
    #[cfg(test)]
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// The reader consumed `n` bytes at `now`. Retunes the window once an epoch is over and
    /// says how much credit to grant, if any: the peer gets its window back in steps of an
    /// sixteenth, so grants are few and the sender rarely runs dry. `budget` is the session's
    /// allowance for windows above the initial one; `open` is false once the peer has
    /// finished sending (nothing more to grant).
    pub(crate) fn consume(
        &mut self,
        n: usize,
        now: Instant,
        path: Option<PathRtt>,
        limits: Limits,
        budget: &WindowBudget,
        open: bool,
    ) -> Consumed {
        self.consumed = self.consumed.saturating_add(n as u64);
        let probe_rtt = self.tune(n as u64, now, path, limits, budget);
        // Credit the peer holds plus bytes waiting to be read: what it may make us buffer.
        let exposed = self.allowed.saturating_sub(self.consumed);
        let room = self.window.saturating_sub(exposed);
        let grant = (open && room > 0 && room >= (self.window / 16).max(1)).then(|| {
            self.allowed += room;
            room
        });
        Consumed { grant, probe_rtt }
    }

    fn tune(
        &mut self,
        n: u64,
        now: Instant,
        path: Option<PathRtt>,
        limits: Limits,
        budget: &WindowBudget,
    ) -> bool {
        let Some(start) = self.epoch_start else {
            self.epoch_start = Some(now);
            self.epoch_bytes = 0;
            return false;
        };
        self.epoch_bytes += n;
        let Some(path) = path else { return false };
        let turnaround = path.min + SLACK;
        let elapsed = now.saturating_duration_since(start);
        if elapsed < turnaround {
            return false;
        }
        let rate = (self.epoch_bytes as u128 * 1_000_000 / elapsed.as_micros().max(1)) as u64;
        let before = self.rates.iter().copied().max().unwrap_or(0);
        self.rates[self.next_rate] = rate;
        self.next_rate = (self.next_rate + 1) % RATE_SAMPLES;
        self.epoch_start = Some(now);
        self.epoch_bytes = 0;

        let best = self.rates.iter().copied().max().unwrap_or(0);
        let turnaround_us = turnaround.as_micros() as u64;
        let bdp = (u128::from(best) * u128::from(turnaround_us) / 1_000_000) as u64;
        let queued = path.latest > path.min + (path.min / 8).max(SLACK);
        let used = (u128::from(rate) * u128::from(turnaround_us) / 1_000_000) as u64;
        // A new window shows in what arrives a round trip later, so an epoch is judged
        // against the smaller of the windows of the last two epochs.
        let in_effect = self.window.min(self.previous_window);
        self.previous_window = self.window;
        let window_limited = used >= in_effect / 2;
        let growing = rate >= before.saturating_add(before / 4);
        // One flat epoch may be noise or the lag above; two mean the pipe is full (or the
        // sender has no more to give): time to size the window from the rate.
        self.flat_epochs = if !growing {
            self.flat_epochs.saturating_add(1)
        } else {
            0
        };
        if queued || self.flat_epochs >= 2 {
            self.startup = false;
        }
        let steady = bdp.saturating_mul(GAIN_PERCENT) / 100;
        let wanted = if used < in_effect / 8 {
            // Idle or held back by the reader: a small window now, and the next burst finds
            // its rate quickly again.
            self.startup = true;
            steady
        } else if self.startup {
            // Never shrink while starting: the epoch may still show the old window.
            if window_limited {
                self.window.saturating_mul(2)
            } else {
                self.window
            }
        } else {
            steady
        };
        let wanted = wanted.clamp(
            MIN_WINDOW.min(limits.initial),
            limits.max.max(limits.initial),
        );
        let before_window = self.window;
        self.window = budget.resize(self.window, wanted, limits.initial);
        tracing::debug!(
            rate,
            min_rtt_us = path.min.as_micros() as u64,
            rtt_us = path.latest.as_micros() as u64,
            queued,
            startup = self.startup,
            from = before_window,
            window = self.window,
            "receive window tuned"
        );
        true
    }

    /// Gives back what this window drew from the session's budget (the stream is gone).
    pub(crate) fn release(&mut self, budget: &WindowBudget, initial: u64) {
        self.window = budget.resize(self.window, initial.min(self.window), initial);
    }
}

/// The part of a session's memory that windows above the initial one may take.
#[derive(Debug)]
pub(crate) struct WindowBudget {
    used: AtomicU64,
    cap: u64,
}

impl WindowBudget {
    /// A budget of `cap` bytes.
    pub(crate) fn new(cap: u64) -> WindowBudget {
        WindowBudget {
            used: AtomicU64::new(0),
            cap,
        }
    }

    /// Bytes of windows above the initial one, over all streams.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Moves a window from `from` to `to`, drawing on or returning to the budget what lies
    /// above `initial`; grows only as far as the budget allows. Returns the new window.
    fn resize(&self, from: u64, to: u64, initial: u64) -> u64 {
        let above = |w: u64| w.saturating_sub(initial);
        let (old, new) = (above(from), above(to));
        if new <= old {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
            return to;
        }
        let mut granted = 0;
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                granted = (new - old).min(self.cap.saturating_sub(used));
                Some(used + granted)
            });
        // Up to the initial window is free (it was promised at the handshake); above it, what
        // the budget granted.
        from.max(initial) + granted
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const MIB: u64 = 1 << 20;

    struct Outcome {
        /// Bytes per second delivered over the last second.
        rate: u64,
        /// Queueing delay in front of the link at the end.
        queue_delay: Duration,
        window: u64,
    }

    /// One stream through a bottleneck of `rate` bytes/s and `rtt`, the sender always
    /// having data and sending whatever credit allows into the link's queue, the reader
    /// reading at once; pings every round trip. 1 ms steps of simulated time.
    fn simulate(rate: u64, rtt: Duration, seconds: u64) -> Outcome {
        let limits = Limits {
            initial: MIB,
            max: 16 * MIB,
        };
        let budget = WindowBudget::new(64 * MIB);
        let mut rwin = ReceiveWindow::new(limits.initial);
        let start = Instant::now();
        let one_way = rtt / 2;
        let per_ms = rate / 1000;
        let mut credit = limits.initial; // at the sender
        let mut queue = 0u64; // in front of the link
        let mut wire: VecDeque<(Duration, u64)> = VecDeque::new(); // data towards the reader
        let mut grants: VecDeque<(Duration, u64)> = VecDeque::new(); // credit towards the sender
        let mut pongs: VecDeque<(Duration, Duration)> = VecDeque::new(); // (due, sent)
        let mut path: Option<PathRtt> = None;
        let mut delivered_last_second = 0;
        let total = Duration::from_secs(seconds);
        let mut now = Duration::ZERO;
        pongs.push_back((rtt, Duration::ZERO));
        while now < total {
            now += Duration::from_millis(1);
            queue += std::mem::take(&mut credit);
            let sent = queue.min(per_ms);
            queue -= sent;
            wire.push_back((now + one_way, sent));
            while grants.front().is_some_and(|(due, _)| *due <= now) {
                credit += grants.pop_front().map_or(0, |(_, g)| g);
            }
            while pongs.front().is_some_and(|(due, _)| *due <= now) {
                let (_, sent_at) = pongs.pop_front().unwrap_or_default();
                let latest = now - sent_at;
                path = Some(PathRtt {
                    min: path.map_or(latest, |p| p.min.min(latest)),
                    latest,
                });
            }
            while wire.front().is_some_and(|(due, _)| *due <= now) {
                let n = wire.pop_front().map_or(0, |(_, n)| n);
                assert!(rwin.receive(n as usize), "the sender kept to its credit");
                if now + Duration::from_secs(1) > total {
                    delivered_last_second += n;
                }
                let c = rwin.consume(n as usize, start + now, path, limits, &budget, true);
                if let Some(g) = c.grant {
                    grants.push_back((now + one_way, g));
                }
                if c.probe_rtt && pongs.is_empty() {
                    // The pong comes back through the queue in front of the link.
                    let queued = Duration::from_micros(queue * 1_000_000 / rate);
                    pongs.push_back((now + rtt + queued, now));
                }
            }
        }
        Outcome {
            rate: delivered_last_second,
            queue_delay: Duration::from_micros(queue * 1_000_000 / rate),
            window: rwin.window(),
        }
    }

    #[test]
    fn a_long_fat_link_is_filled() {
        // 100 Mbit/s, 200 ms: the bandwidth-delay product is 2.5 MB, over twice the
        // initial window.
        let out = simulate(12_500_000, Duration::from_millis(200), 6);
        eprintln!(
            "100 Mbit/s 200 ms: {} B/s, queue {:?}, window {}",
            out.rate, out.queue_delay, out.window
        );
        assert!(out.rate >= 12_500_000 * 9 / 10, "{} B/s", out.rate);
        assert!(
            out.window > 2_500_000 && out.window <= 16 * MIB,
            "{}",
            out.window
        );
    }

    #[test]
    fn a_thin_link_gets_no_standing_queue() {
        // 20 Mbit/s, 100 ms: the initial 1 MiB is four times the path; the window comes
        // down and the queue in front of the link stays short.
        let out = simulate(2_500_000, Duration::from_millis(100), 6);
        eprintln!(
            "20 Mbit/s 100 ms: {} B/s, queue {:?}, window {}",
            out.rate, out.queue_delay, out.window
        );
        assert!(out.rate >= 2_500_000 * 9 / 10, "{} B/s", out.rate);
        assert!(
            out.queue_delay <= Duration::from_millis(30),
            "{:?}",
            out.queue_delay
        );
        assert!(out.window < 512 * 1024, "{}", out.window);
    }

    #[test]
    fn credit_is_the_limit_whatever_the_tuning() {
        let mut rwin = ReceiveWindow::new(MIB);
        assert!(rwin.receive(MIB as usize));
        assert!(!rwin.receive(1), "one byte over the granted credit");
    }

    #[test]
    fn a_slow_reader_shrinks_the_window_and_idle_growth_is_given_back() {
        let limits = Limits {
            initial: MIB,
            max: 16 * MIB,
        };
        let budget = WindowBudget::new(2 * MIB);
        let mut rwin = ReceiveWindow::new(MIB);
        let path = Some(PathRtt {
            min: Duration::from_millis(10),
            latest: Duration::from_millis(10),
        });
        let t0 = Instant::now();
        // A fast reader (4 MiB per round trip) with no queue on the path: the window grows
        // as far as the session's budget lets it.
        let mut t = t0;
        for _ in 0..50 {
            t += Duration::from_millis(12);
            assert!(rwin.receive(0));
            rwin.consume(4 * MIB as usize, t, path, limits, &budget, true);
        }
        assert_eq!(rwin.window(), 3 * MIB, "initial + the whole budget");
        assert_eq!(budget.used(), 2 * MIB);
        // Then 1 KiB per epoch: the window comes down to the floor.
        for _ in 0..10 {
            t += Duration::from_millis(12);
            rwin.consume(1024, t, path, limits, &budget, true);
        }
        assert_eq!(rwin.window(), MIN_WINDOW);
        assert_eq!(budget.used(), 0);
        rwin.release(&budget, MIB);
        assert_eq!(budget.used(), 0);
    }
}
