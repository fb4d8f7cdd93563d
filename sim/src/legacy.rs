//! The old system, replayed: a `messages` table of `pending` rows, and two
//! processors (the engine's internal MessageQueue and the standalone queue
//! worker) that each read pending rows, then mark them `processing` with an
//! unconditional write, then send with no idempotency key. Both read the
//! same rows before either marks them, and both send.
//!
//! Nothing here is production code; it exists to show the race.

use crate::db::{DbClient, DbRequest, DbResponse};
use crate::marks::{Mark, MarkKind};
use crate::provider::SimProvider;
use crate::trace::{sim_ms, Shared};
use oncesend::net::HttpClient;
use oncesend_core::{DeliveryKey, OutboundMessage, Recipient, RunId, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A message row's status in the old table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LegacyStatus {
    /// Waiting.
    Pending,
    /// Picked up by a processor.
    Processing,
    /// Sent.
    Sent,
}

/// One row of the old `messages` table: one step of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegacyMessage {
    /// Row id.
    pub id: u64,
    /// The run (flow trigger) it belongs to.
    pub run: RunId,
    /// The step.
    pub step: u32,
    /// The recipient.
    pub to: Recipient,
    /// The text.
    pub text: String,
    /// Where it stands.
    pub status: LegacyStatus,
    /// Not before this db time.
    pub scheduled_at_ms: u64,
}

impl LegacyMessage {
    /// The run step the row holds, as the new design would key it.
    pub fn key(&self) -> DeliveryKey {
        DeliveryKey {
            run: self.run,
            step: self.step,
        }
    }
}

/// Requests the old processors make.
#[derive(Debug, Serialize, Deserialize)]
pub enum LegacyOp {
    /// The old webhook: one row per step.
    Insert {
        /// The run.
        run: RunId,
        /// The recipient.
        to: Recipient,
        /// Text and delay of each step.
        steps: Vec<(String, u64)>,
    },
    /// `SELECT * FROM messages WHERE status = 'pending' AND scheduled_at <= now LIMIT n`.
    FetchPending {
        /// At most this many.
        limit: usize,
    },
    /// `UPDATE messages SET status = $1 WHERE id = $2`, unconditionally.
    Mark {
        /// The row.
        id: u64,
        /// The new status.
        status: LegacyStatus,
    },
}

/// Answers to [`LegacyOp`]s.
#[derive(Debug, Serialize, Deserialize)]
pub enum LegacyReply {
    /// Done.
    Ok,
    /// Rows read.
    Rows(Vec<LegacyMessage>),
}

/// The old table.
#[derive(Debug, Default)]
pub struct LegacyTable {
    rows: BTreeMap<u64, LegacyMessage>,
    next_id: u64,
}

impl LegacyTable {
    /// Applies one op at db time `now_ms`.
    pub fn apply(&mut self, op: LegacyOp, now_ms: u64) -> LegacyReply {
        match op {
            LegacyOp::Insert { run, to, steps } => {
                let mut at = now_ms;
                for (step, (text, delay_ms)) in steps.into_iter().enumerate() {
                    at += delay_ms;
                    self.next_id += 1;
                    self.rows.insert(
                        self.next_id,
                        LegacyMessage {
                            id: self.next_id,
                            run,
                            step: step as u32,
                            to: to.clone(),
                            text,
                            status: LegacyStatus::Pending,
                            scheduled_at_ms: at,
                        },
                    );
                }
                LegacyReply::Ok
            }
            LegacyOp::FetchPending { limit } => LegacyReply::Rows(
                self.rows
                    .values()
                    .filter(|m| m.status == LegacyStatus::Pending && m.scheduled_at_ms <= now_ms)
                    .take(limit)
                    .cloned()
                    .collect(),
            ),
            LegacyOp::Mark { id, status } => {
                if let Some(m) = self.rows.get_mut(&id) {
                    m.status = status;
                }
                LegacyReply::Ok
            }
        }
    }

    /// Whether every row of every run is sent.
    pub fn all_sent(&self) -> bool {
        self.rows.values().all(|m| m.status == LegacyStatus::Sent)
    }

    /// Each run's rows: (run, recipient, steps, steps sent).
    pub fn runs(&self) -> BTreeMap<RunId, (Recipient, u32, u32)> {
        let mut out: BTreeMap<RunId, (Recipient, u32, u32)> = BTreeMap::new();
        for m in self.rows.values() {
            let e = out.entry(m.run).or_insert((m.to.clone(), 0, 0));
            e.1 += 1;
            if m.status == LegacyStatus::Sent {
                e.2 += 1;
            }
        }
        out
    }
}

async fn legacy(db: &DbClient, op: LegacyOp) -> Option<LegacyReply> {
    match db.request(&DbRequest::Legacy(op)).await {
        Ok(DbResponse::Legacy(r)) => Some(r),
        _ => None,
    }
}

/// How a processor reaches the provider.
pub enum Sender {
    /// In-process, as the engine's own MessageQueue did.
    Direct(SimProvider),
    /// Over the engine's HTTP API, as the standalone queue worker did.
    Http(HttpClient<crate::net::SimConnector>),
}

/// One old processor's loop: poll, mark, send, mark.
pub async fn processor(
    name: &'static str,
    db: DbClient,
    sender: Sender,
    poll_ms: u64,
    shared: Shared,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
        let Some(LegacyReply::Rows(rows)) = legacy(&db, LegacyOp::FetchPending { limit: 10 }).await
        else {
            continue;
        };
        if rows.is_empty() {
            continue;
        }
        shared.log(format!("{name} Processing {} messages", rows.len()));
        let marks = shared.marks();
        marks.add(|| Mark {
            epoch: None,
            at_ms: sim_ms(),
            lane: name.into(),
            kind: MarkKind::Read,
            keys: rows.iter().map(LegacyMessage::key).collect(),
            text: format!("read {} pending row(s)", rows.len()),
        });
        let mark = |kind, m: &LegacyMessage, text: &str| {
            marks.add(|| Mark {
                epoch: None,
                at_ms: sim_ms(),
                lane: name.into(),
                kind,
                keys: vec![m.key()],
                text: text.into(),
            })
        };
        for m in rows {
            shared.log(format!(
                "{name} Processing message {} for {}",
                m.id,
                m.to.as_str().trim_start_matches('+')
            ));
            legacy(
                &db,
                LegacyOp::Mark {
                    id: m.id,
                    status: LegacyStatus::Processing,
                },
            )
            .await;
            mark(
                MarkKind::Write,
                &m,
                "marked it processing (whatever its status was)",
            );
            let message = OutboundMessage {
                key: m.key(),
                tenant: TenantId::default_tenant(),
                to: m.to.clone(),
                message: oncesend_core::Message::text(m.text.clone()),
            };
            mark(MarkKind::Send, &m, "sends it, with no idempotency key");
            let sent = match &sender {
                Sender::Direct(provider) => {
                    provider.deliver(&message, name).await;
                    true
                }
                Sender::Http(http) => {
                    let body = serde_json::to_vec(&message).expect("serializes");
                    http.request(hyper::Method::POST, "/legacy/send", &[], Some(body))
                        .await
                        .is_ok_and(|(status, _, _)| status.is_success())
                }
            };
            if sent {
                legacy(
                    &db,
                    LegacyOp::Mark {
                        id: m.id,
                        status: LegacyStatus::Sent,
                    },
                )
                .await;
                mark(MarkKind::Write, &m, "marked it sent");
                shared.log(format!("{name} Message {} sent successfully", m.id));
            }
        }
    }
}

/// The old engine's send endpoint: no key, no ledger, straight to the
/// provider.
pub fn router(provider: SimProvider) -> axum::Router {
    axum::Router::new().route(
        "/legacy/send",
        axum::routing::post(move |axum::Json(message): axum::Json<OutboundMessage>| {
            let provider = provider.clone();
            async move {
                provider.deliver(&message, "[Queue Worker]").await;
                "ok"
            }
        }),
    )
}
