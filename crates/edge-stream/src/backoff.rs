//! The reconnect delay: exponential, full jitter, capped, reset after a healthy session.
//!
//! Written out rather than taken from `backon`: that crate models "retry this call until it
//! succeeds", while the edge keeps a session up for ever and must reset the ceiling after a
//! session that lived long enough. The whole policy is the few lines below, on top of `rand`,
//! which the crate needs anyway, and the sequence is testable with a seeded generator.

use std::time::Duration;

use rand::Rng;

use crate::config::Backoff;

/// The state of the reconnect pacing: the ceiling of the next wait.
#[derive(Debug, Clone)]
pub(crate) struct ReconnectDelay {
    policy: Backoff,
    ceiling: Duration,
}

impl ReconnectDelay {
    /// Starts at `policy.initial`.
    pub(crate) fn new(policy: Backoff) -> ReconnectDelay {
        ReconnectDelay {
            policy,
            ceiling: policy.initial,
        }
    }

    /// The next wait, drawn from the thread-local generator.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_with(&mut rand::rng())
    }

    /// The next wait: uniform in `[0, ceiling]`; the ceiling then grows by the multiplier
    /// up to the cap.
    pub(crate) fn next_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let delay = rng.random_range(Duration::ZERO..=self.ceiling);
        self.ceiling = self
            .ceiling
            .saturating_mul(self.policy.multiplier)
            .min(self.policy.max);
        delay
    }

    /// Starts again from `initial`.
    pub(crate) fn reset(&mut self) {
        self.ceiling = self.policy.initial;
    }

    /// Called when a session ends after `lived`: a session that stayed up for `reset_after`
    /// proves the path works, so the next failure starts small again.
    pub(crate) fn session_ended(&mut self, lived: Duration) {
        if lived >= self.policy.reset_after {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2,
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut delay = ReconnectDelay::new(policy());
        let mut rng = StdRng::seed_from_u64(7);
        let ceilings = [1, 2, 4, 8, 16, 30, 30, 30];
        for (attempt, secs) in ceilings.into_iter().enumerate() {
            assert_eq!(
                delay.ceiling,
                Duration::from_secs(secs),
                "attempt {attempt}"
            );
            let d = delay.next_with(&mut rng);
            assert!(d <= Duration::from_secs(secs), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_window() {
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<Duration> = (0..200)
            .map(|_| ReconnectDelay::new(policy()).next_with(&mut rng))
            .collect();
        // Uniform over [0, 1 s]: both halves of the window are used.
        assert!(draws.iter().any(|d| *d < Duration::from_millis(250)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(750)));
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(1)));
    }

    #[test]
    fn long_session_resets_short_one_does_not() {
        let mut delay = ReconnectDelay::new(policy());
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..4 {
            delay.next_with(&mut rng);
        }
        assert_eq!(delay.ceiling, Duration::from_secs(16));
        delay.session_ended(Duration::from_secs(59));
        assert_eq!(delay.ceiling, Duration::from_secs(16));
        delay.session_ended(Duration::from_secs(60));
        assert_eq!(delay.ceiling, Duration::from_secs(1));
    }

    #[test]
    fn huge_multiplier_saturates_at_the_cap() {
        let mut delay = ReconnectDelay::new(Backoff {
            multiplier: u32::MAX,
            ..policy()
        });
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..5 {
            assert!(delay.next_with(&mut rng) <= Duration::from_secs(30));
        }
        assert_eq!(delay.ceiling, Duration::from_secs(30));
    }
}
