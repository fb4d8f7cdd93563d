//! Retry policy: capped exponential backoff with full jitter and a bounded
//! number of attempts. What a provider's failure means is the error table's
//! ([`crate::provider_error`]).

use serde::{Deserialize, Serialize};

/// Backoff and attempt limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// The first backoff's ceiling.
    pub base_ms: u64,
    /// No backoff is longer than this.
    pub cap_ms: u64,
    /// Give up after this many failed attempts.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 500,
            cap_ms: 60_000,
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, given `attempt` failures so
    /// far: uniform in `[0, min(cap, base * 2^attempt)]` ("full jitter"),
    /// drawn from the caller's `random`.
    pub fn backoff_ms(&self, attempt: u32, random: u64) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << attempt.min(32))
            .min(self.cap_ms);
        random % (ceiling + 1)
    }

    /// Whether a step that has failed `attempts` times may be tried again.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_a_growing_capped_ceiling() {
        let p = RetryPolicy {
            base_ms: 100,
            cap_ms: 1_000,
            max_attempts: 3,
        };
        assert_eq!(p.backoff_ms(0, u64::MAX), u64::MAX % 101);
        assert!(p.backoff_ms(0, 12345) <= 100);
        assert_eq!(p.backoff_ms(2, 400), 400);
        assert_eq!(p.backoff_ms(2, 401), 0);
        assert!((0..1000).all(|r| p.backoff_ms(40, r * 7919) <= 1_000));
        assert!(p.may_retry(2));
        assert!(!p.may_retry(3));
    }
}
