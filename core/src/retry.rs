//! Retry policy: capped exponential backoff with full jitter, a bounded
//! number of attempts, and the classification of provider failures.

use serde::{Deserialize, Serialize};

/// How a failed provider call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryClass {
    /// Trying again later may work.
    Retryable,
    /// It will never work; stop.
    Permanent,
    /// The request may have been delivered; never resend blindly.
    Unknown,
}

/// Cloud API error codes that mean "later": throttling (130429, 80007, 4)
/// and a temporary recipient-side pair-rate limit (131056).
pub const CLOUD_API_RETRYABLE_CODES: [i64; 4] = [130429, 131056, 80007, 4];

/// Classifies a WhatsApp Cloud API error reply. The JSON `error.code`
/// decides first, because the API reports throttling under several HTTP
/// statuses; then any 5xx is retryable and any other status permanent.
pub fn classify_cloud_api(http_status: u16, error_code: Option<i64>) -> RetryClass {
    if error_code.is_some_and(|c| CLOUD_API_RETRYABLE_CODES.contains(&c)) {
        return RetryClass::Retryable;
    }
    if http_status >= 500 || http_status == 429 {
        RetryClass::Retryable
    } else {
        RetryClass::Permanent
    }
}

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
    fn cloud_api_codes_decide_before_http_status() {
        assert_eq!(classify_cloud_api(400, Some(130429)), RetryClass::Retryable);
        assert_eq!(classify_cloud_api(400, Some(131056)), RetryClass::Retryable);
        assert_eq!(classify_cloud_api(400, Some(80007)), RetryClass::Retryable);
        assert_eq!(classify_cloud_api(403, Some(4)), RetryClass::Retryable);
        assert_eq!(classify_cloud_api(500, Some(1)), RetryClass::Retryable);
        assert_eq!(classify_cloud_api(503, None), RetryClass::Retryable);
        assert_eq!(classify_cloud_api(400, Some(131026)), RetryClass::Permanent);
        assert_eq!(classify_cloud_api(401, Some(190)), RetryClass::Permanent);
        assert_eq!(classify_cloud_api(404, None), RetryClass::Permanent);
    }

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
