//! Time for drivers: they read the clock and hand `now_ms` to the core.

use std::sync::Arc;

/// Time from tokio's clock, offset to the Unix epoch once at start. Under
/// the simulation tokio's clock is simulated, so the same code is
/// deterministic there and real in production.
#[derive(Clone)]
pub struct TokioClock {
    inner: Arc<(tokio::time::Instant, u64)>,
}

impl TokioClock {
    /// A clock that reads `base_ms` now and moves with tokio's time.
    pub fn new(base_ms: u64) -> Self {
        Self {
            inner: Arc::new((tokio::time::Instant::now(), base_ms)),
        }
    }

    /// A clock based on the machine's wall clock, for the daemons.
    #[allow(clippy::disallowed_methods)] // Production reads the wall clock once, at start.
    pub fn system() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::new(base_ms)
    }

    /// The tokio instant that corresponds to `at_ms` on this clock.
    pub fn instant_at(&self, at_ms: u64) -> tokio::time::Instant {
        let (origin, base) = *self.inner;
        origin + std::time::Duration::from_millis(at_ms.saturating_sub(base))
    }
}

impl TokioClock {
    /// The current time, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let (origin, base) = *self.inner;
        base + origin.elapsed().as_millis() as u64
    }
}
