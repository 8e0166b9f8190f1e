//! The ready / not ready flag behind `/readyz`.
//!
//! Liveness (`/healthz`) only says the process answers; readiness says it should get
//! traffic. The binary flips it: `cloudstream` once its listeners are bound, `edgestream`
//! while its tunnel is up, and both back to not ready when they start draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cheap, shared ready flag; clones see the same value. Starts not ready.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// A new flag, not ready.
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Marks the process ready (`true`) or not ready (`false`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// True when the process is ready for traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let a = Readiness::new();
        let b = a.clone();
        assert!(!b.is_ready());
        a.set_ready(true);
        assert!(b.is_ready());
        b.set_ready(false);
        assert!(!a.is_ready());
    }
}
