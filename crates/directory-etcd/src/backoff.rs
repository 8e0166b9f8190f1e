//! The pause between attempts to reach etcd: exponential, full jitter, capped.
//!
//! Written out rather than taken from `backon` for the reason `edge-stream` gives: the driver
//! keeps a connection up for ever and restarts the ceiling after a connection that lived, which
//! is not "retry this call". Full jitter spreads the replicas of a fleet that all lost etcd at
//! the same moment. The cap stays well under the lease TTL so that a replica notices etcd's
//! return, and renews its lease, within one TTL.

use std::time::Duration;

use rand::Rng;

/// The first ceiling.
const INITIAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    ceiling: Duration,
    cap: Duration,
}

impl Backoff {
    /// A backoff capped at a quarter of `lease_ttl`, and at 5 s.
    pub(crate) fn for_lease(lease_ttl: Duration) -> Backoff {
        let cap = (lease_ttl / 4).clamp(INITIAL, Duration::from_secs(5));
        Backoff {
            ceiling: INITIAL,
            cap,
        }
    }

    /// The next pause, uniform in `[0, ceiling]`; the ceiling then doubles up to the cap.
    pub(crate) fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let delay = rng.random_range(Duration::ZERO..=self.ceiling);
        self.ceiling = self.ceiling.saturating_mul(2).min(self.cap);
        delay
    }

    /// Starts again from the first ceiling.
    pub(crate) fn reset(&mut self) {
        self.ceiling = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn doubles_up_to_a_cap_below_the_lease() {
        let mut backoff = Backoff::for_lease(Duration::from_secs(10));
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(backoff.ceiling);
            let d = backoff.next_delay(&mut rng);
            assert!(d <= *ceilings.last().unwrap_or(&INITIAL));
        }
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2500, 2500, 2500]);
        backoff.reset();
        assert_eq!(backoff.ceiling, INITIAL);
    }

    #[test]
    fn full_jitter_spreads_over_the_window() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut backoff = Backoff::for_lease(Duration::from_secs(100));
        for _ in 0..10 {
            backoff.next_delay(&mut rng);
        }
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay(&mut rng)).collect();
        let below_half = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(2500))
            .count();
        assert!((50..150).contains(&below_half), "{below_half} of 200");
    }
}
