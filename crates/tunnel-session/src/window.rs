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
//!   stays short (15 % of the round trip: 15 ms on 100 ms, 45 ms on 300 ms), and a
//!   window-limited stream still grows 1.15× per round trip. A stream whose reader idles or
//!   slows gets a small window back the same way.
//!
//! Credit given cannot be taken back, so the window a stream *starts* with matters on a
//! thin link: 1 MiB takes four seconds to cross 2 Mbit/s, and every other stream of the
//! session (an `exec` keystroke) waits behind it. So the handshake promises only
//! [`HANDSHAKE_WINDOW`] per stream, and each new stream is granted the rest of its starting
//! window with its first message: sized from the rate the session's streams last reached
//! on this path when there is one (and then tuned from there, without the doubling), else
//! the configured stream window, doubling from there as above.
//!
//! Bounds hold whatever the peer does: the peer may send only what was granted (more is a
//! protocol error), a window never exceeds the per-stream maximum, and every window above
//! the handshake's promise draws on a per-session budget. Shrinking withholds grants until
//! the credit already given is used up; it never takes credit back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Headroom over the bandwidth-delay product, in percent: enough that grant steps, rate
/// jitter and the delays of the loop a ping does not see (each grant's burst serialised at
/// the bottleneck, the ends' scheduling) do not leave the link idle, little enough that
/// the queue stays short. A cap in time instead (10 ms) was tried and measured: on
/// 2 Mbit/s, 300 ms those unseen delays were ~50 ms, the window fell to its floor and the
/// stream to 73 % of the link.
const GAIN_PERCENT: u64 = 115;
/// Grants go out when this fraction of the window is free again: fewer grants, and the
/// sender rarely runs dry.
const GRANT_STEP_DIVISOR: u64 = 16;
/// The receive window each side promises the other per stream at the handshake (or less,
/// when the configured stream window is smaller). New streams get the rest of their
/// starting window granted when they open.
pub(crate) const HANDSHAKE_WINDOW: u32 = 64 * 1024;
/// How long the rate a stream reached stays the starting point for new streams.
const RATE_MEMORY: Duration = Duration::from_secs(120);
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
    /// The window the peer was promised for every stream at the handshake: what a stream
    /// holds without drawing on the session's budget.
    pub(crate) initial: u64,
    /// The window a new stream starts with when the session knows no rate on this path
    /// (the configured stream window), and the most it starts with when it does.
    pub(crate) start: u64,
    /// The largest window of one stream.
    pub(crate) max: u64,
}

/// The window announced at the handshake for a configured stream window.
pub(crate) fn handshake_window(stream_window: u32) -> u32 {
    stream_window.min(HANDSHAKE_WINDOW)
}

/// The window a stream reading at `rate` bytes/s over a path of `turnaround` needs: the
/// bandwidth-delay product and the headroom.
fn steady_window(rate: u64, turnaround: Duration) -> u64 {
    let bdp = (u128::from(rate) * turnaround.as_micros() / 1_000_000) as u64;
    bdp.saturating_mul(GAIN_PERCENT) / 100
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
    /// The window of a stream that opens now, and the credit to grant the peer with the
    /// stream's first message (above what the handshake promised). Sized from the rate the
    /// session's streams last reached on this path when it knows one, else
    /// [`Limits::start`]; what lies above the handshake's promise draws on `budget`.
    pub(crate) fn open(
        limits: Limits,
        path: Option<PathRtt>,
        budget: &WindowBudget,
        now: Instant,
    ) -> (ReceiveWindow, Option<u64>) {
        let mut rwin = ReceiveWindow::new(limits.initial);
        let known = path.zip(budget.path_rate(now));
        let wanted = match known {
            Some((path, rate)) => steady_window(rate, path.min + SLACK),
            None => limits.start,
        };
        // The rate is the path's, so the stream starts where a running one would be, not
        // doubling from there into a queue; it counts as the stream's first sample.
        rwin.startup = known.is_none();
        if let Some((_, rate)) = known {
            rwin.rates[0] = rate;
            rwin.next_rate = 1;
        }
        let wanted = wanted.clamp(
            MIN_WINDOW.min(limits.start),
            limits.start.max(limits.initial),
        );
        rwin.window = budget.resize(limits.initial, wanted, limits.initial);
        rwin.previous_window = rwin.window;
        let grant = rwin.window.saturating_sub(limits.initial);
        rwin.allowed += grant;
        (rwin, (grant > 0).then_some(grant))
    }

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
        let grant =
            (open && room > 0 && room >= (self.window / GRANT_STEP_DIVISOR).max(1)).then(|| {
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
        let steady = steady_window(best, turnaround);
        let idle = used < in_effect / 8;
        if !self.startup && !idle {
            // What this path carries now: where the next stream starts. This epoch's rate,
            // not the best of the last ones, which may still hold a burst from the start.
            budget.note_path_rate(rate, now);
        }
        let wanted = if idle {
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

/// What a session's windows share: the part of its memory that windows above the
/// handshake's promise may take, and the rate its streams last reached on the path.
#[derive(Debug)]
pub(crate) struct WindowBudget {
    used: AtomicU64,
    cap: u64,
    /// The largest rate a running stream measured recently (bytes/s), and when; see
    /// [`WindowBudget::path_rate`].
    rate: Mutex<Option<(u64, Instant)>>,
}

impl WindowBudget {
    /// A budget of `cap` bytes.
    pub(crate) fn new(cap: u64) -> WindowBudget {
        WindowBudget {
            used: AtomicU64::new(0),
            cap,
            rate: Mutex::new(None),
        }
    }

    /// A running stream read at `rate` bytes/s at `now`. A higher rate replaces the one
    /// kept; a lower one only once that is older than [`RATE_MEMORY`], so a slow reader
    /// does not make the next stream on a fast path start small.
    fn note_path_rate(&self, rate: u64, now: Instant) {
        if rate == 0 {
            return;
        }
        let mut kept = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let replace = match *kept {
            None => true,
            Some((old, at)) => rate >= old || now.saturating_duration_since(at) > RATE_MEMORY,
        };
        if replace {
            *kept = Some((rate, now));
        }
    }

    /// The rate a new stream starts from, if a stream measured one in the last
    /// [`RATE_MEMORY`].
    fn path_rate(&self, now: Instant) -> Option<u64> {
        let kept = *self.rate.lock().unwrap_or_else(|e| e.into_inner());
        kept.filter(|(_, at)| now.saturating_duration_since(*at) <= RATE_MEMORY)
            .map(|(rate, _)| rate)
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
        /// The longest queueing delay in front of the link over the last second...
        queue_delay: Duration,
        /// ...and over the whole run.
        worst_queue_delay: Duration,
        window: u64,
    }

    fn limits() -> Limits {
        Limits {
            initial: u64::from(HANDSHAKE_WINDOW),
            start: MIB,
            max: 16 * MIB,
        }
    }

    /// One stream through a bottleneck of `rate` bytes/s and `rtt`, opened on a session
    /// whose streams last measured `known_rate` on the path (if any), the sender always
    /// having data and sending whatever credit allows into the link's queue, the reader
    /// reading at once; pings every round trip. 1 ms steps of simulated time.
    fn simulate(rate: u64, rtt: Duration, seconds: u64, known_rate: Option<u64>) -> Outcome {
        let limits = limits();
        let budget = WindowBudget::new(64 * MIB);
        let start = Instant::now();
        // A session that has pinged before the stream opens knows the round trip.
        let mut path = Some(PathRtt {
            min: rtt,
            latest: rtt,
        });
        if let Some(known) = known_rate {
            budget.note_path_rate(known, start);
        }
        let (mut rwin, opening_grant) = ReceiveWindow::open(limits, path, &budget, start);
        let one_way = rtt / 2;
        let per_ms = rate / 1000;
        // At the sender: the handshake's promise, and the opening grant with the CONNECT.
        let mut credit = limits.initial + opening_grant.unwrap_or(0);
        let mut queue = 0u64; // in front of the link
        let mut wire: VecDeque<(Duration, u64)> = VecDeque::new(); // data towards the reader
        let mut grants: VecDeque<(Duration, u64)> = VecDeque::new(); // credit towards the sender
        let mut pongs: VecDeque<(Duration, Duration)> = VecDeque::new(); // (due, sent)
        let mut delivered_last_second = 0;
        let (mut worst, mut worst_last_second) = (0u64, 0u64);
        let total = Duration::from_secs(seconds);
        let mut now = Duration::ZERO;
        while now < total {
            now += Duration::from_millis(1);
            queue += std::mem::take(&mut credit);
            worst = worst.max(queue);
            if now + Duration::from_secs(1) > total {
                worst_last_second = worst_last_second.max(queue);
            }
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
        let delay = |bytes: u64| Duration::from_micros(bytes * 1_000_000 / rate);
        Outcome {
            rate: delivered_last_second,
            queue_delay: delay(worst_last_second),
            worst_queue_delay: delay(worst),
            window: rwin.window(),
        }
    }

    fn report(name: &str, out: &Outcome) {
        eprintln!(
            "{name}: {} B/s, queue {:?} (worst {:?}), window {}",
            out.rate, out.queue_delay, out.worst_queue_delay, out.window
        );
    }

    #[test]
    fn a_long_fat_link_is_filled() {
        // 100 Mbit/s, 200 ms: the bandwidth-delay product is 2.5 MB, over twice the
        // starting window.
        let out = simulate(12_500_000, Duration::from_millis(200), 6, None);
        report("100 Mbit/s 200 ms", &out);
        assert!(out.rate >= 12_500_000 * 9 / 10, "{} B/s", out.rate);
        assert!(
            out.window > 2_500_000 && out.window <= 16 * MIB,
            "{}",
            out.window
        );
        // The headroom: 15 % of the round trip plus the slack.
        assert!(
            out.queue_delay <= Duration::from_millis(33),
            "{:?}",
            out.queue_delay
        );
    }

    #[test]
    fn a_thin_link_gets_no_standing_queue() {
        // 20 Mbit/s, 100 ms: the starting 1 MiB is four times the path; the window comes
        // down and the queue in front of the link stays short.
        let out = simulate(2_500_000, Duration::from_millis(100), 6, None);
        report("20 Mbit/s 100 ms", &out);
        assert!(out.rate >= 2_500_000 * 9 / 10, "{} B/s", out.rate);
        assert!(
            out.queue_delay <= Duration::from_millis(18),
            "{:?}",
            out.queue_delay
        );
        assert!(out.window < 512 * 1024, "{}", out.window);
    }

    #[test]
    fn a_thin_long_link_is_filled_and_its_queue_is_the_headroom() {
        // 2 Mbit/s, 300 ms: the starting 1 MiB is four seconds of this link; once it has
        // crossed, the queue is the headroom (15 % of the round trip).
        let out = simulate(250_000, Duration::from_millis(300), 12, None);
        report("2 Mbit/s 300 ms", &out);
        assert!(out.rate >= 250_000 * 9 / 10, "{} B/s", out.rate);
        assert!(
            out.queue_delay <= Duration::from_millis(50),
            "{:?}",
            out.queue_delay
        );
    }

    #[test]
    fn a_stream_on_a_known_path_starts_at_its_rate_without_a_queue() {
        // The session's last stream read 250 kB/s: the next starts at about the path's
        // bandwidth-delay product (not the 1 MiB that takes four seconds to cross it): its
        // first flight is the worst queue there is (the window leaves at once; nothing
        // paces it), no doubling adds to it, and the stream still fills the link.
        let out = simulate(250_000, Duration::from_millis(300), 6, Some(250_000));
        report("2 Mbit/s 300 ms, known rate", &out);
        assert!(out.rate >= 250_000 * 9 / 10, "{} B/s", out.rate);
        assert!(
            out.worst_queue_delay <= Duration::from_millis(360),
            "{:?}",
            out.worst_queue_delay
        );
        assert!(
            out.queue_delay <= Duration::from_millis(50),
            "{:?}",
            out.queue_delay
        );
        // The first stream, with no rate known, starts at the configured window.
        let first = simulate(250_000, Duration::from_millis(300), 1, None);
        assert!(
            first.worst_queue_delay >= Duration::from_secs(2),
            "{:?}",
            first.worst_queue_delay
        );
    }

    #[test]
    fn a_known_rate_that_was_too_low_is_outgrown() {
        // The last stream read at a quarter of the link (a slow reader, or a shared link):
        // a new bulk stream grows to the link by the headroom per round trip.
        let out = simulate(2_500_000, Duration::from_millis(100), 8, Some(625_000));
        report("20 Mbit/s 100 ms, a quarter known", &out);
        assert!(out.rate >= 2_500_000 * 9 / 10, "{} B/s", out.rate);
    }

    #[test]
    fn the_opening_window_draws_on_the_budget_and_respects_the_limits() {
        let limits = limits();
        let now = Instant::now();
        let path = Some(PathRtt {
            min: Duration::from_millis(1),
            latest: Duration::from_millis(1),
        });
        // Unknown rate: the configured start, the part above the handshake from the budget.
        let budget = WindowBudget::new(MIB);
        let (rwin, grant) = ReceiveWindow::open(limits, path, &budget, now);
        assert_eq!(rwin.window(), MIB);
        assert_eq!(grant, Some(MIB - limits.initial));
        assert_eq!(budget.used(), MIB - limits.initial);
        // The budget is nearly spent: the next stream gets what is left.
        let (second, grant) = ReceiveWindow::open(limits, path, &budget, now);
        assert_eq!(second.window(), limits.initial + limits.initial);
        assert_eq!(grant, Some(limits.initial));
        // Spent: the handshake's promise only, no grant.
        let (third, grant) = ReceiveWindow::open(limits, path, &budget, now);
        assert_eq!((third.window(), grant), (limits.initial, None));
        // A fast known path never starts above the configured start; a slow one not below
        // the floor.
        let budget = WindowBudget::new(64 * MIB);
        budget.note_path_rate(1_000_000_000, now);
        assert_eq!(
            ReceiveWindow::open(limits, path, &budget, now).0.window(),
            MIB
        );
        let budget = WindowBudget::new(64 * MIB);
        budget.note_path_rate(1_000, now);
        assert_eq!(
            ReceiveWindow::open(limits, path, &budget, now).0.window(),
            MIN_WINDOW
        );
        // An old rate is forgotten; a lower one does not replace a recent higher one.
        budget.note_path_rate(500, now + Duration::from_secs(1));
        assert_eq!(budget.path_rate(now + Duration::from_secs(1)), Some(1_000));
        assert_eq!(
            budget.path_rate(now + RATE_MEMORY + Duration::from_secs(2)),
            None
        );
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
            start: MIB,
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
