//! The ready / not ready flag behind `/readyz`.
//!
//! Liveness (`/healthz`) only says the process answers; readiness says it should get
//! traffic. The binary flips it: `cloudstream` once its listeners are bound, `edgestream`
//! while its tunnel is up, and both back to not ready when they start draining.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A cheap, shared ready flag; clones see the same value. Starts not ready.
///
/// It may also carry a detail line shown under the verdict on `/readyz`, for conditions an
/// operator should see but that do not stop traffic (a replica serving from a stale
/// directory while etcd is away keeps answering, so it stays ready).
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    detail: Arc<Mutex<Option<DetailSource>>>,
}

/// Computes the detail line when `/readyz` is asked, so it is never older than the request.
type DetailSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_ready())
            .field("detail", &self.detail())
            .finish()
    }
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

    /// Shows what `source` returns under the verdict; it is called on every `/readyz`, so it
    /// must answer from memory at once.
    pub fn set_detail_source<F>(&self, source: F)
    where
        F: Fn() -> Option<String> + Send + Sync + 'static,
    {
        *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(source));
    }

    /// The detail shown under the verdict right now, if any.
    pub fn detail(&self) -> Option<String> {
        let source = self
            .detail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        source.and_then(|source| source())
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
        assert_eq!(a.detail(), None);
        b.set_detail_source(|| Some("directory: stale".to_owned()));
        assert_eq!(a.detail().as_deref(), Some("directory: stale"));
    }
}
