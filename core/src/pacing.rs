//! Pacing: how fast one sender may send, and how close together two
//! messages to one recipient may arrive.
//!
//! WhatsApp throttles a business phone number (about 80 messages a second
//! by default) and punishes bursts to one user (error 131056, "pair rate
//! limit"). The engine asks the [`Pacer`] before it records `sending`, so a
//! message held back by pacing is simply answered "busy, come back in N ms"
//! and nothing is written. Time comes in as `now_ms`; nothing here reads a
//! clock.

use crate::ids::TenantId;
use crate::recipient::Recipient;
use std::collections::BTreeMap;

/// Pacing limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingConfig {
    /// Messages per second one sender (tenant) may send, on average. At
    /// least 1.
    pub rate_per_s: u32,
    /// Messages one sender may send at once after being idle. At least 1.
    pub burst: u32,
    /// Least time between two messages to one recipient of one sender; 0
    /// turns the gap off.
    pub recipient_gap_ms: u64,
}

impl Default for PacingConfig {
    /// The Cloud API's default throughput (80 msg/s) and a 6 s gap.
    fn default() -> Self {
        Self {
            rate_per_s: 80,
            burst: 80,
            recipient_gap_ms: 6_000,
        }
    }
}

/// A token bucket in thousandths of a token, so refills need no floats.
///
/// When the provider says the sender is over its throughput (130429), the
/// bucket is [`throttle`](Self::throttle)d: it stays empty for the wait the
/// provider asked for, then refills at half its rate, climbing back by a
/// tenth of the configured rate each second (additive increase,
/// multiplicative decrease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate_per_s: u64,
    capacity_milli: u64,
    tokens_milli: u64,
    last_ms: u64,
    /// After a throttle: the rate it fell to, and from when it climbs.
    slowed: Option<(u64, u64)>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate_per_s`.
    pub fn new(rate_per_s: u32, burst: u32, now_ms: u64) -> Self {
        let rate_per_s = u64::from(rate_per_s.max(1));
        let capacity_milli = u64::from(burst.max(1)) * 1_000;
        Self {
            rate_per_s,
            capacity_milli,
            tokens_milli: capacity_milli,
            last_ms: now_ms,
            slowed: None,
        }
    }

    /// The rate in force at `now_ms`: the configured one, or, after a
    /// throttle, the lowered one climbing back towards it.
    pub fn rate_at(&self, now_ms: u64) -> u64 {
        match self.slowed {
            None => self.rate_per_s,
            Some((rate, from_ms)) => {
                let step = (self.rate_per_s / 10).max(1);
                let climbed = now_ms.saturating_sub(from_ms) / 1_000 * step;
                rate.saturating_add(climbed).min(self.rate_per_s)
            }
        }
    }

    fn refill(&mut self, now_ms: u64) {
        // A clock that steps back refills nothing; it never drains. Nor
        // does time before a throttle's wait has passed (`last_ms` ahead).
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        let rate = self.rate_at(now_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(elapsed_ms.saturating_mul(rate))
            .min(self.capacity_milli);
        if rate == self.rate_per_s {
            self.slowed = None;
        }
    }

    /// How long until a token is available; 0 means one is available now.
    pub fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens_milli >= 1_000 {
            0
        } else {
            let held_ms = self.last_ms.saturating_sub(now_ms);
            held_ms + (1_000 - self.tokens_milli).div_ceil(self.rate_at(now_ms).max(1))
        }
    }

    /// The provider refused a send for throughput: nothing more for
    /// `hold_ms` (its `Retry-After`), then half the rate, climbing back.
    pub fn throttle(&mut self, hold_ms: u64, now_ms: u64) {
        self.refill(now_ms);
        let until_ms = now_ms.saturating_add(hold_ms);
        let half = (self.rate_at(now_ms) / 2).max(1);
        self.slowed = Some((half, until_ms));
        self.tokens_milli = 0;
        self.last_ms = self.last_ms.max(until_ms);
    }

    /// Takes a token, or says how long to wait for one.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        match self.wait_ms(now_ms) {
            0 => {
                self.tokens_milli -= 1_000;
                Ok(())
            }
            wait => Err(wait),
        }
    }
}

/// Past this many remembered recipients, the pacer forgets those whose gap
/// has passed. Only recipients messaged within the last gap are kept, so
/// the table stays near `rate x gap` entries per sender.
const MAX_REMEMBERED: usize = 100_000;

/// Per-sender token buckets and per-recipient gaps.
#[derive(Debug, Clone)]
pub struct Pacer {
    config: PacingConfig,
    buckets: BTreeMap<TenantId, TokenBucket>,
    last_sent_ms: BTreeMap<(TenantId, Recipient), u64>,
}

impl Pacer {
    /// A pacer that has seen no sends.
    pub fn new(config: PacingConfig) -> Self {
        Self {
            config,
            buckets: BTreeMap::new(),
            last_sent_ms: BTreeMap::new(),
        }
    }

    /// How many conversations it remembers a last send for (its memory,
    /// kept near `rate x gap` per sender: past 100,000 it forgets
    /// everyone whose gap has passed).
    pub fn remembered(&self) -> usize {
        self.last_sent_ms.len()
    }

    /// Its limits.
    pub fn config(&self) -> PacingConfig {
        self.config
    }

    /// May `tenant` send to `to` now? `Ok` counts the send against both
    /// limits; `Err` says how many ms to wait and counts nothing.
    pub fn admit(&mut self, tenant: &TenantId, to: &Recipient, now_ms: u64) -> Result<(), u64> {
        let gap_ms = self.config.recipient_gap_ms;
        let conversation = (tenant.clone(), to.clone());
        // With no gap nothing is ever remembered, so this finds nothing.
        if let Some(&last) = self.last_sent_ms.get(&conversation) {
            let next = last.saturating_add(gap_ms);
            if now_ms < next {
                return Err(next - now_ms);
            }
        }
        let (rate, burst) = (self.config.rate_per_s, self.config.burst);
        self.buckets
            .entry(tenant.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now_ms))
            .take(now_ms)?;
        if gap_ms > 0 {
            if self.last_sent_ms.len() >= MAX_REMEMBERED {
                self.last_sent_ms
                    .retain(|_, last| last.saturating_add(gap_ms) > now_ms);
            }
            self.last_sent_ms.insert(conversation, now_ms);
        }
        Ok(())
    }

    /// The provider said `tenant` is over its throughput (130429): its
    /// bucket waits `hold_ms`, then refills at half its rate, climbing back.
    pub fn throttle(&mut self, tenant: &TenantId, hold_ms: u64, now_ms: u64) {
        let (rate, burst) = (self.config.rate_per_s, self.config.burst);
        self.buckets
            .entry(tenant.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now_ms))
            .throttle(hold_ms, now_ms);
    }

    /// The rate `tenant` may send at now.
    pub fn rate_at(&self, tenant: &TenantId, now_ms: u64) -> u64 {
        self.buckets
            .get(tenant)
            .map_or(u64::from(self.config.rate_per_s.max(1)), |b| {
                b.rate_at(now_ms)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(n: u32) -> Recipient {
        Recipient::parse(&format!("+55119{n:08}")).unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(80, 80, 0);
        for _ in 0..80 {
            assert_eq!(b.take(0), Ok(()));
        }
        // One token takes 1000/80 = 12.5 ms to come back.
        assert_eq!(b.take(0), Err(13));
        assert_eq!(b.take(12), Err(1));
        assert_eq!(b.take(13), Ok(()));
        assert!(b.take(13).is_err());
        // Idle for a long time: full again, never more than the burst.
        let mut n = 0;
        while b.take(1_000_000).is_ok() {
            n += 1;
        }
        assert_eq!(n, 80);
    }

    #[test]
    fn a_bucket_sustains_its_rate_over_a_second() {
        // Two tokens of headroom, so no refill is lost to the cap between
        // whole milliseconds.
        let mut b = TokenBucket::new(80, 2, 0);
        let sent = (0..1_000u64).filter(|ms| b.take(*ms).is_ok()).count();
        assert!((80..=82).contains(&sent), "{sent}");
    }

    #[test]
    fn a_clock_stepping_back_never_adds_tokens() {
        let mut b = TokenBucket::new(1, 1, 10_000);
        assert_eq!(b.take(10_000), Ok(()));
        assert!(b.take(5_000).is_err());
        assert!(b.take(10_500).is_err());
        assert_eq!(b.take(11_000), Ok(()));
    }

    #[test]
    fn the_recipient_gap_holds_back_only_that_recipient() {
        let t = TenantId::default_tenant();
        let mut p = Pacer::new(PacingConfig {
            rate_per_s: 1_000,
            burst: 1_000,
            recipient_gap_ms: 6_000,
        });
        assert_eq!(p.admit(&t, &to(1), 0), Ok(()));
        assert_eq!(p.admit(&t, &to(1), 1_000), Err(5_000));
        assert_eq!(p.admit(&t, &to(2), 1_000), Ok(()));
        assert_eq!(p.admit(&t, &to(1), 6_000), Ok(()));
        // Another sender's conversation with the same number is separate.
        let other = TenantId::new("acme").unwrap();
        assert_eq!(p.admit(&other, &to(1), 6_001), Ok(()));
    }

    #[test]
    fn a_zero_gap_lets_steps_to_one_recipient_go_back_to_back() {
        let t = TenantId::default_tenant();
        let mut p = Pacer::new(PacingConfig {
            rate_per_s: 80,
            burst: 80,
            recipient_gap_ms: 0,
        });
        for _ in 0..80 {
            assert_eq!(p.admit(&t, &to(1), 0), Ok(()));
        }
        assert_eq!(p.admit(&t, &to(1), 0), Err(13));
    }

    #[test]
    fn without_a_gap_nothing_is_remembered_and_a_clock_stepping_back_is_no_gap() {
        let t = TenantId::default_tenant();
        let mut p = Pacer::new(PacingConfig {
            rate_per_s: 1_000,
            burst: 1_000,
            recipient_gap_ms: 0,
        });
        assert_eq!(p.admit(&t, &to(1), 10_000), Ok(()));
        assert_eq!(p.remembered(), 0);
        // The engine host's clock steps back: with no gap configured there
        // is no gap to wait out.
        assert_eq!(p.admit(&t, &to(1), 5_000), Ok(()));
        assert_eq!(p.remembered(), 0);
    }

    #[test]
    fn the_remembered_recipients_stay_bounded_by_those_still_in_their_gap() {
        let t = TenantId::default_tenant();
        let gap_ms = 1_000;
        let mut p = Pacer::new(PacingConfig {
            rate_per_s: u32::MAX,
            burst: u32::MAX,
            recipient_gap_ms: gap_ms,
        });
        let full = u32::try_from(MAX_REMEMBERED).unwrap();
        for n in 0..full {
            assert_eq!(p.admit(&t, &to(n), 0), Ok(()));
        }
        assert_eq!(p.remembered(), MAX_REMEMBERED);
        // One ms before their gaps end they are all still needed...
        assert_eq!(p.admit(&t, &to(full), gap_ms - 1), Ok(()));
        assert_eq!(p.remembered(), MAX_REMEMBERED + 1);
        // ...and at the very ms they end, the table sheds every one of them.
        assert_eq!(p.admit(&t, &to(full + 1), gap_ms), Ok(()));
        assert_eq!(p.remembered(), 2);
        // What was shed no longer holds anyone back.
        assert_eq!(p.admit(&t, &to(0), gap_ms), Ok(()));
    }

    #[test]
    fn a_refusal_by_the_gap_spends_no_token() {
        let t = TenantId::default_tenant();
        let mut p = Pacer::new(PacingConfig {
            rate_per_s: 1,
            burst: 1,
            recipient_gap_ms: 100,
        });
        assert_eq!(p.admit(&t, &to(1), 0), Ok(()));
        assert_eq!(p.admit(&t, &to(1), 50), Err(50));
        // The bucket is empty because of the first send, not the refusal.
        assert_eq!(p.admit(&t, &to(2), 1_000), Ok(()));
    }

    #[test]
    fn a_throttle_holds_the_sender_then_halves_its_rate_and_climbs_back() {
        let t = TenantId::default_tenant();
        let other = TenantId::new("acme").unwrap();
        let mut p = Pacer::new(PacingConfig {
            rate_per_s: 80,
            burst: 80,
            recipient_gap_ms: 0,
        });
        assert_eq!(p.admit(&t, &to(1), 0), Ok(()));
        p.throttle(&t, 2_000, 100);
        // Nothing during the provider's Retry-After...
        assert_eq!(p.admit(&t, &to(2), 100), Err(2_000 + 25));
        assert!(p.admit(&t, &to(2), 2_000).is_err());
        // ...then half the rate (40/s: a token every 25 ms)...
        assert_eq!(p.rate_at(&t, 2_100), 40);
        assert!(p.admit(&t, &to(2), 2_110).is_err());
        assert_eq!(p.admit(&t, &to(2), 2_125), Ok(()));
        // ...climbing by a tenth of 80 each second, back to 80.
        assert_eq!(p.rate_at(&t, 3_100), 48);
        assert_eq!(p.rate_at(&t, 7_100), 80);
        assert_eq!(p.rate_at(&t, 60_000), 80);
        // Other senders are not slowed.
        assert_eq!(p.rate_at(&other, 2_100), 80);
        assert_eq!(p.admit(&other, &to(2), 200), Ok(()));
        // A second throttle while slowed halves again.
        p.throttle(&t, 0, 2_200);
        assert_eq!(p.rate_at(&t, 2_200), 20);
    }

    #[test]
    fn senders_have_separate_buckets() {
        let mut p = Pacer::new(PacingConfig {
            rate_per_s: 1,
            burst: 1,
            recipient_gap_ms: 0,
        });
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        assert_eq!(p.admit(&a, &to(1), 0), Ok(()));
        assert_eq!(p.admit(&a, &to(2), 0), Err(1_000));
        assert_eq!(p.admit(&b, &to(2), 0), Ok(()));
    }
}
