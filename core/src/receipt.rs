//! Delivery receipts: what a provider reports about a message after it
//! accepted it (sent, delivered, read, failed), and the forward-only rule
//! for applying them to the ledger.
//!
//! Receipts arrive late, twice, and out of order. A delivery's state only
//! ever moves forward: `sent -> delivered -> read`, or `failed` before it
//! was delivered. An `unknown` delivery is settled by the first receipt
//! that names it: `sent`, `delivered` or `read` prove the provider had the
//! message; `failed` says it did not go out, so (where the error table
//! allows) it may be sent again. A run waiting on the delivery moves with
//! it (see `store::rules`).

use crate::store::DeliveryState;
use serde::{Deserialize, Serialize};

/// A status a provider reports for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// The provider sent it on to the recipient's network.
    Sent,
    /// It reached the recipient's device.
    Delivered,
    /// The recipient opened it.
    Read,
    /// It could not be delivered.
    Failed,
}

impl ReceiptStatus {
    /// Parses the Cloud API's spelling (`sent`, `delivered`, `read`,
    /// `failed`); anything else (such as `deleted` or `warning`) is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// How far along a state is; a receipt never moves a delivery to a lower
/// rank. `None` for a permanent failure, which nothing moves.
fn rank(state: &DeliveryState) -> Option<u8> {
    match state {
        DeliveryState::Sending { .. }
        | DeliveryState::Unknown
        | DeliveryState::Failed { retryable: true } => Some(0),
        DeliveryState::Sent => Some(1),
        DeliveryState::Delivered => Some(2),
        DeliveryState::Read => Some(3),
        DeliveryState::Failed { retryable: false } => None,
    }
}

/// The state `receipt` moves `current` to, or `None` when it is late,
/// repeated, or would move the delivery back.
///
/// A failure before the provider took the message (the step is still
/// `sending`, or `unknown`) means it did not go out: with `resend` (the
/// error table says retry, or the sender itself was refused) the step may
/// be sent again. A failure after it was taken is recorded on the step
/// and final: later steps may have gone out, and order comes first.
pub fn progress(
    current: &DeliveryState,
    receipt: ReceiptStatus,
    resend: bool,
) -> Option<DeliveryState> {
    let now = rank(current)?;
    let (next, next_rank) = match receipt {
        ReceiptStatus::Sent => (DeliveryState::Sent, 1),
        ReceiptStatus::Delivered => (DeliveryState::Delivered, 2),
        ReceiptStatus::Read => (DeliveryState::Read, 3),
        ReceiptStatus::Failed => {
            let next = match now {
                0 => DeliveryState::Failed { retryable: resend },
                1 => DeliveryState::Failed { retryable: false },
                // A failure report after delivery is stale.
                _ => return None,
            };
            return (next != *current).then_some(next);
        }
    };
    (next_rank > now).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReceiptStatus::*;

    const SENDING: DeliveryState = DeliveryState::Sending { deadline_ms: 5 };
    const FAILED: DeliveryState = DeliveryState::Failed { retryable: false };

    #[test]
    fn receipts_move_a_delivery_forward_only() {
        assert_eq!(
            progress(&DeliveryState::Sent, Delivered, false),
            Some(DeliveryState::Delivered)
        );
        assert_eq!(
            progress(&DeliveryState::Delivered, Read, false),
            Some(DeliveryState::Read)
        );
        assert_eq!(
            progress(&DeliveryState::Sent, Read, false),
            Some(DeliveryState::Read)
        );
        // Late or repeated: nothing moves back or sideways.
        assert_eq!(progress(&DeliveryState::Read, Delivered, false), None);
        assert_eq!(progress(&DeliveryState::Read, Sent, false), None);
        assert_eq!(progress(&DeliveryState::Delivered, Delivered, false), None);
        assert_eq!(progress(&DeliveryState::Sent, Sent, false), None);
    }

    #[test]
    fn failure_counts_only_before_delivery_and_is_final() {
        assert_eq!(progress(&DeliveryState::Sent, Failed, true), Some(FAILED));
        assert_eq!(progress(&DeliveryState::Delivered, Failed, false), None);
        assert_eq!(progress(&DeliveryState::Read, Failed, false), None);
        assert_eq!(progress(&FAILED, Read, false), None);
        assert_eq!(progress(&FAILED, Failed, false), None);
    }

    #[test]
    fn any_receipt_settles_an_unknown_or_sending_delivery() {
        for from in [DeliveryState::Unknown, SENDING] {
            assert_eq!(progress(&from, Sent, false), Some(DeliveryState::Sent));
            assert_eq!(progress(&from, Read, false), Some(DeliveryState::Read));
            assert_eq!(progress(&from, Failed, false), Some(FAILED));
            assert_eq!(
                progress(&from, Failed, true),
                Some(DeliveryState::Failed { retryable: true })
            );
        }
    }

    #[test]
    fn any_order_of_receipts_ends_at_the_furthest_one() {
        let all = [Sent, Delivered, Read];
        // Every permutation of the three, each applied twice.
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for p in perms {
            let mut state = DeliveryState::Unknown;
            for i in p.iter().chain(p.iter()) {
                if let Some(next) = progress(&state, all[*i], false) {
                    state = next;
                }
            }
            assert_eq!(state, DeliveryState::Read, "{p:?}");
        }
    }

    #[test]
    fn parses_the_cloud_api_spelling() {
        assert_eq!(ReceiptStatus::parse("delivered"), Some(Delivered));
        assert_eq!(ReceiptStatus::parse("deleted"), None);
    }
}
