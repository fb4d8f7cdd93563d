//! Time for drivers: they read the clock and hand `now_ms` to the core.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Time from tokio's clock, offset to the Unix epoch once at start. Under
/// the simulation tokio's clock is simulated, so the same code is
/// deterministic there and real in production.
///
/// The reading can be stepped ([`TokioClock::step`]), as a wall clock is
/// when NTP corrects it; timers set for a reading move with it.
#[derive(Clone)]
pub struct TokioClock {
    inner: Arc<(tokio::time::Instant, u64)>,
    step_ms: Arc<AtomicI64>,
}

impl TokioClock {
    /// A clock that reads `base_ms` now and moves with tokio's time.
    pub fn new(base_ms: u64) -> Self {
        Self {
            inner: Arc::new((tokio::time::Instant::now(), base_ms)),
            step_ms: Arc::default(),
        }
    }

    /// Steps the reading by `by_ms` (forward or back), from now on.
    pub fn step(&self, by_ms: i64) {
        self.step_ms.fetch_add(by_ms, Ordering::Relaxed);
    }

    fn base_ms(&self) -> u64 {
        let step = self.step_ms.load(Ordering::Relaxed);
        self.inner.1.saturating_add_signed(step)
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
        let origin = self.inner.0;
        origin + std::time::Duration::from_millis(at_ms.saturating_sub(self.base_ms()))
    }
}

impl TokioClock {
    /// The current time, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.base_ms() + self.inner.0.elapsed().as_millis() as u64
    }
}
