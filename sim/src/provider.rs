//! The simulated provider: records every delivery into the history, and
//! can be told to accept a send and then lose the reply.

use crate::trace::Shared;
use oncesend::provider::Provider;
use oncesend_core::{CloudApiError, DeliveryOutcome, OutboundMessage};
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
        self.shared.provider_called(message.key);
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

impl Provider for SimProvider {
    async fn send(&self, message: OutboundMessage) -> DeliveryOutcome {
        let key = message.key;
        if let Some(code) = self.shared.refuse_sender() {
            // Refused before anything went out, as the Cloud API answers
            // an expired token or a blocked account.
            self.shared.fired("sender_blocked");
            self.shared
                .log(format!("provider refused the sender with {code} for {key}"));
            tokio::time::sleep(self.latency).await;
            let body = format!(
                r#"{{"error":{{"message":"(#{code}) refused","type":"OAuthException","code":{code},"fbtrace_id":"Sim{key}"}}}}"#
            );
            return CloudApiError::parse(400, None, body.as_bytes()).outcome();
        }
        self.shared.provider_called(key);
        self.shared.owe_statuses(key);
        self.shared.log(format!(
            "[WhatsApp Engine] Message sent to {}: {}   (key {key})",
            message.to.as_str().trim_start_matches('+'),
            message
                .message
                .text_body()
                .unwrap_or(message.message.kind())
        ));
        tokio::time::sleep(self.latency).await;
        if self.shared.lose_replies() {
            // Delivered, but the answer never comes back: the engine's
            // timeout turns this into `unknown`.
            self.shared.note_ambiguous(key, "lost_reply");
            self.shared.fired("lost_reply");
            self.shared
                .log(format!("provider lost the reply for {key}"));
            std::future::pending::<()>().await;
        }
        self.shared.provider_replied(key);
        DeliveryOutcome::Sent {
            provider_message_id: format!("wamid.{key}"),
        }
    }
}
