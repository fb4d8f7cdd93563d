//! The engine's send API as data: what a worker asks, what a provider
//! answers, and what the engine tells the worker.

use crate::ids::{DeliveryKey, TenantId};
use crate::message::Message;
use crate::recipient::Recipient;
use serde::{Deserialize, Serialize};

/// A worker's request to deliver one step (`POST /v1/messages`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// `run_id:step`, also sent as the `Idempotency-Key` header.
    pub key: DeliveryKey,
    /// The lease epoch the worker holds; the engine refuses stale ones.
    pub epoch: u64,
    /// Whose provider sends it.
    pub tenant: TenantId,
    /// The recipient.
    pub to: Recipient,
    /// The rendered message.
    pub message: Message,
}

/// One message handed to a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// Carried to the provider (the Cloud API's `biz_opaque_callback_data`).
    pub key: DeliveryKey,
    /// Whose provider sends it.
    pub tenant: TenantId,
    /// The recipient.
    pub to: Recipient,
    /// The rendered message.
    pub message: Message,
}

impl OutboundMessage {
    /// The exact Cloud API request body: the envelope (`messaging_product`,
    /// `recipient_type`, `to`, `biz_opaque_callback_data`) around the
    /// message.
    pub fn body(&self) -> serde_json::Value {
        self.message.envelope(&self.to, &self.key)
    }
}

/// What became of one provider call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The provider accepted the message.
    Sent {
        /// The provider's id for it.
        provider_message_id: String,
    },
    /// The provider refused it.
    Failed {
        /// Whether trying again later may work.
        retryable: bool,
        /// What the provider said.
        reason: String,
        /// How long the provider asked us to wait, if it did.
        retry_after_ms: Option<u64>,
    },
    /// The request may or may not have reached the provider: a timeout
    /// after it left, or a connection lost mid-way. Never resent blindly.
    Unknown {
        /// What happened.
        reason: String,
    },
    /// The provider refused the sender itself (an expired token, a missing
    /// permission, an unpaid account, a blocked number): nothing went out,
    /// and nothing of this sender will until it is resumed.
    SenderBlocked {
        /// What the provider said.
        reason: String,
        /// Its error code.
        code: Option<i64>,
        /// Whether the block may end by itself (368, 131048).
        temporary: bool,
    },
}

/// The engine's answer to a [`SendRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SendResponse {
    /// Delivered to the provider, now or earlier (`replayed`).
    Sent {
        /// The provider's id for the message.
        provider_message_id: String,
        /// True when this key had already been sent and nothing was sent now.
        replayed: bool,
    },
    /// Another request for this key is being sent right now.
    InProgress,
    /// The provider refused the message.
    Failed {
        /// Whether a later attempt may work.
        retryable: bool,
        /// Why.
        reason: String,
        /// How long to wait before trying again, if known.
        retry_after_ms: Option<u64>,
    },
    /// The outcome cannot be known; the key will not be sent again.
    Unknown {
        /// What happened.
        reason: String,
    },
    /// The worker's lease is stale: another worker owns the run now.
    Fenced,
    /// The tenant is paused (see [`crate::tenant::SenderPause`]): nothing
    /// was sent, no attempt is counted, and the run waits.
    Paused {
        /// Why the tenant is paused.
        reason: String,
    },
    /// The engine is at capacity or pacing this sender; try again later.
    Busy {
        /// When to try again.
        retry_after_ms: u64,
    },
}

/// How long a worker waits before asking again when the engine's send path
/// is gone (its driver stopped): the answer is `Busy`, nothing was written.
pub const ENGINE_GONE_RETRY_MS: u64 = 1_000;

impl SendResponse {
    /// The answer when the engine's send path has stopped: nothing was
    /// recorded or sent, so asking again later is safe.
    pub fn engine_gone() -> Self {
        SendResponse::Busy {
            retry_after_ms: ENGINE_GONE_RETRY_MS,
        }
    }
}

/// Several sends in one request (`POST /v1/messages/batch`): the worker
/// sends the steps of many runs at once, each decided on its own exactly as
/// if it had come alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBatch {
    /// At most [`crate::limits::MAX_SEND_BATCH`] requests.
    pub messages: Vec<SendRequest>,
}

/// The engine's answer to a [`SendBatch`]: one response per request, in
/// the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendBatchResponse {
    /// `results[i]` answers `messages[i]`.
    pub results: Vec<SendResponse>,
}
