//! Providers: where messages finally go. The engine driver calls one per
//! delivery that the core's engine machine has begun.

pub(crate) mod cloud_api;
mod log;
mod tenants;

pub use self::cloud_api::CloudApiProvider;
pub use self::log::LogProvider;
pub use self::tenants::{AnyProvider, TenantProviders};

use oncesend_core::{DeliveryOutcome, OutboundMessage};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Hands one message to a messaging service and says what became of it.
pub trait Provider: Clone + Send + Sync + 'static {
    /// Sends `message`. The caller bounds the call with a timeout and
    /// treats a timeout as [`DeliveryOutcome::Unknown`].
    fn send(&self, message: OutboundMessage) -> impl Future<Output = DeliveryOutcome> + Send;
}

/// Accepts everything and sends nothing: for load tests of the engine path.
#[derive(Clone, Default)]
pub struct NullProvider {
    sent: Arc<AtomicU64>,
}

impl NullProvider {
    /// Messages accepted so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Provider for NullProvider {
    async fn send(&self, message: OutboundMessage) -> DeliveryOutcome {
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        DeliveryOutcome::Sent {
            provider_message_id: format!("null.{n}.{}", message.key),
        }
    }
}
