//! The `log` provider: each delivery as one JSON line, to a file or stdout.

use super::Provider;
use oncesend_core::{DeliveryOutcome, OutboundMessage};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Writes each delivery as a JSON line: the default provider, for running
/// oncesend with no messaging account.
#[derive(Clone)]
pub struct LogProvider {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl LogProvider {
    /// Writes to stdout.
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// Appends to a file, creating it if needed.
    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::to_writer(Box::new(std::io::LineWriter::new(f))))
    }

    /// Writes to any writer (a sink, in benchmarks).
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }
}

impl Provider for LogProvider {
    async fn send(&self, message: OutboundMessage) -> DeliveryOutcome {
        let id = format!("log.{}", message.key);
        let line = serde_json::json!({
            "provider_message_id": id,
            "idempotency_key": message.key.to_string(),
            "tenant": message.tenant,
            "body": message.body(),
        });
        let written = {
            let mut out = self.out.lock().expect("log provider lock");
            writeln!(out, "{line}").and_then(|_| out.flush())
        };
        match written {
            Ok(()) => DeliveryOutcome::Sent {
                provider_message_id: id,
            },
            // Nothing was written: safe to try again.
            Err(e) => DeliveryOutcome::Failed {
                retryable: true,
                reason: format!("log provider could not write: {e}"),
                retry_after_ms: None,
            },
        }
    }
}
