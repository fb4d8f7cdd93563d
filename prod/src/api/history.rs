//! The last hour of the queue's figures, for the console's charts: the
//! engine samples them every few seconds into a ring of fixed size, so the
//! history costs the same after a month as after an hour. It lives in the
//! process (a restart starts it afresh) and only the daemons sample; the
//! simulation, which builds the same router, does not.

use super::{AppState, Problem};
use crate::store::Store;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oncesend_core::{QueueStats, StoreOp, StoreReply};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How often a sample is taken, in ms.
pub const SAMPLE_EVERY_MS: u64 = 5_000;
/// Samples kept: one hour's worth.
pub const HISTORY_SAMPLES: usize = (3_600_000 / SAMPLE_EVERY_MS) as usize;

/// The figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// When, in store time.
    pub at_ms: u64,
    /// The queue's figures then, as `GET /v1/stats` gives them.
    #[serde(flatten)]
    pub queue: QueueStats,
    /// Sends answered `sent` since the engine started.
    pub sent: u64,
    /// Sends answered `failed` since the engine started.
    pub failed: u64,
    /// How long the send requests answered since the last sample took,
    /// from reaching the engine to its answer (`None`: none answered).
    pub send_latency: Option<crate::engine::Latency>,
}

/// At most [`HISTORY_SAMPLES`] samples, oldest first.
#[derive(Debug, Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// Adds a sample, dropping the oldest when full.
    pub fn push(&self, s: Sample) {
        let mut ring = self.0.lock().expect("history lock");
        if ring.len() == HISTORY_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(s);
        assert!(ring.len() <= HISTORY_SAMPLES);
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.0
            .lock()
            .expect("history lock")
            .iter()
            .copied()
            .collect()
    }
}

/// Takes a sample now and every [`SAMPLE_EVERY_MS`] after, for as long as
/// the process runs. A store that does not answer costs that sample only.
pub async fn sample_forever<S: Store>(st: AppState<S>) {
    let mut tick = tokio::time::interval(Duration::from_millis(SAMPLE_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_ms = st.clock.now_ms();
        match st.store.apply(StoreOp::Stats { now_ms }).await {
            Ok(StoreReply::Stats(q)) => {
                let e = st.engine.stats();
                st.history.push(Sample {
                    at_ms: now_ms,
                    queue: q,
                    sent: e.sent,
                    failed: e.failed,
                    send_latency: st.engine.take_latency(),
                });
            }
            Ok(other) => tracing::warn!(reply = ?other, "unexpected answer to the stats op"),
            Err(e) => tracing::debug!(error = %e, "no health sample: the store did not answer"),
        }
    }
}

/// `GET /v1/stats/history`: the samples, oldest first, and how far apart;
/// answered from memory, without asking the store.
pub(super) async fn history<S: Store>(State(st): State<AppState<S>>) -> Result<Response, Problem> {
    Ok(Json(serde_json::json!({
        "every_ms": SAMPLE_EVERY_MS,
        "samples": st.history.samples(),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Sample {
        Sample {
            at_ms: ms,
            queue: QueueStats::default(),
            sent: 0,
            failed: 0,
            send_latency: None,
        }
    }

    #[test]
    fn the_history_keeps_the_last_hour_and_drops_the_oldest() {
        let h = History::default();
        for i in 0..(HISTORY_SAMPLES as u64 + 10) {
            h.push(at(i));
        }
        let kept = h.samples();
        assert_eq!(kept.len(), HISTORY_SAMPLES);
        assert_eq!(kept[0].at_ms, 10, "the ten oldest went");
        assert_eq!(kept.last().unwrap().at_ms, HISTORY_SAMPLES as u64 + 9);
    }
}
