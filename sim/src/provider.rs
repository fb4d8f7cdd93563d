//! The old system's provider: records every delivery into the history.
//! (The new design sends through the `meta` host's Cloud API stand-in.)

use crate::marks::{Mark, MarkKind, PROVIDER_LANE};
use crate::trace::{sim_ms, Shared};
use oncesend_core::OutboundMessage;
use std::time::Duration;

/// A provider that always delivers, after a short latency.
#[derive(Clone)]
pub struct SimProvider {
    shared: Shared,
    latency: Duration,
}

impl SimProvider {
    /// A provider recording into `shared`.
    pub fn new(shared: Shared, latency: Duration) -> Self {
        Self { shared, latency }
    }

    /// Delivers one message as the old engine did: no key, no ledger.
    pub async fn deliver(&self, message: &OutboundMessage, who: &str) {
        let call = self.shared.provider_called(message.key);
        self.shared.marks().add(|| Mark {
            epoch: None,
            at_ms: sim_ms(),
            lane: PROVIDER_LANE.into(),
            kind: MarkKind::Deliver { call },
            keys: vec![message.key],
            text: format!(
                "to {}: {}",
                message.to.as_str(),
                message
                    .message
                    .text_body()
                    .unwrap_or(message.message.kind())
            ),
        });
        self.shared.log(format!(
            "[WhatsApp Engine] Message sent to {}: {}   ({who}, key {})",
            message.to.as_str().trim_start_matches('+'),
            message
                .message
                .text_body()
                .unwrap_or(message.message.kind()),
            message.key
        ));
        tokio::time::sleep(self.latency).await;
        self.shared.provider_replied(message.key);
    }
}
