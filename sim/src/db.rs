//! The `db` host: the core's `MemStore` served over a small length-prefixed
//! protocol on simulated TCP, and the client every other host uses.
//!
//! The store's state lives outside the host, so a crash of the db host
//! loses the requests in flight but never committed data, like a database
//! with a durable log.

use crate::legacy::{LegacyOp, LegacyReply, LegacyTable};
use crate::trace::Shared;
use oncesend::store::{MemoryStore, Store};
use oncesend_core::store::StoreUnavailable;
use oncesend_core::{StoreOp, StoreReply};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

/// The db host's port.
pub const DB_PORT: u16 = 5432;
/// A tenant lookup this slow may hold a provider call past its timeout.
const SLOW_LOOKUP_MS: u64 = 100;
/// Largest frame accepted, in bytes.
const MAX_FRAME: usize = 1 << 20;

/// A request to the db host.
#[derive(Debug, Serialize, Deserialize)]
pub enum DbRequest {
    /// An op of the storage contract.
    Op(StoreOp),
    /// Several, applied in one go (a group commit's transaction).
    Batch(Vec<StoreOp>),
    /// An op of the old system's table.
    Legacy(LegacyOp),
}

/// The db host's answer.
#[allow(clippy::large_enum_variant)] // One value per request; boxing buys nothing.
#[derive(Debug, Serialize, Deserialize)]
pub enum DbResponse {
    /// The store's reply.
    Reply(StoreReply),
    /// The store's replies to a batch, in order.
    Replies(Vec<StoreReply>),
    /// The old table's reply.
    Legacy(LegacyReply),
}

async fn write_frame<T: Serialize>(s: &mut TcpStream, value: &T) -> std::io::Result<()> {
    // The length and the body in one write: one segment on the wire.
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, value).map_err(std::io::Error::other)?;
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&frame).await?;
    s.flush().await
}

async fn read_frame<T: for<'de> Deserialize<'de>>(s: &mut TcpStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// What the checker must hear of an op, once the store has answered it.
enum Noted {
    Nothing,
    Begin(oncesend_core::DeliveryKey),
    /// A status for a run that may be waiting on it.
    Receipt(oncesend_core::RunId),
    /// A worker giving up a step after its wait ran out.
    GiveUp(oncesend_core::RunId),
    /// A worker about to wait for a status on an unknown step.
    Await(oncesend_core::RunId),
    Pause(oncesend_core::TenantId, String),
    Resume(oncesend_core::TenantId),
    OptOut(oncesend_core::TenantId, oncesend_core::Recipient),
}

fn note_of(op: &StoreOp) -> Noted {
    match op {
        StoreOp::BeginDelivery { key, .. } => Noted::Begin(*key),
        StoreOp::PauseSender { tenant, reason, .. } => Noted::Pause(tenant.clone(), reason.clone()),
        StoreOp::ResumeSender { tenant } => Noted::Resume(tenant.clone()),
        StoreOp::RecordReceipt { key, .. } => Noted::Receipt(key.run),
        StoreOp::AwaitOutcome {
            run, wait_ms: None, ..
        } => Noted::GiveUp(*run),
        StoreOp::AwaitOutcome { run, .. } => Noted::Await(*run),
        StoreOp::Suppress { tenant, to, .. } => Noted::OptOut(tenant.clone(), to.clone()),
        _ => Noted::Nothing,
    }
}

/// Serves the store until the host is crashed. Every op's time is replaced
/// by the db's own clock (skewed when a fault says so), as a production
/// database's clock would be. A batch is applied in one go, with nothing
/// between its ops, as one transaction; a slow-store fault delays answers
/// (the ops are applied; the caller may give up before it hears).
pub async fn serve(
    store: MemoryStore,
    legacy: Arc<Mutex<LegacyTable>>,
    shared: Shared,
) -> turmoil::Result {
    let listener = TcpListener::bind(("0.0.0.0", DB_PORT)).await?;
    loop {
        let (mut conn, peer) = listener.accept().await?;
        let store = store.clone();
        let legacy = legacy.clone();
        let shared = shared.clone();
        // The race page draws each op in the lane of the host that asked.
        let lane = shared
            .marks()
            .on()
            .then(|| turmoil::reverse_lookup(peer.ip()).unwrap_or_else(|| peer.ip().to_string()));
        tokio::spawn(async move {
            let lane = lane.as_deref();
            while let Ok(request) = read_frame::<DbRequest>(&mut conn).await {
                let response = match request {
                    DbRequest::Op(op) => DbResponse::Reply(apply_noted(&store, &shared, op, lane)),
                    DbRequest::Batch(ops) => DbResponse::Replies(
                        ops.into_iter()
                            .map(|op| apply_noted(&store, &shared, op, lane))
                            .collect(),
                    ),
                    DbRequest::Legacy(op) => {
                        let now_ms = shared.db_now_ms();
                        DbResponse::Legacy(legacy.lock().expect("legacy lock").apply(op, now_ms))
                    }
                };
                if let Some(delay_ms) = shared.db_delay_ms() {
                    shared.fired("slow_store");
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                if write_frame(&mut conn, &response).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Applies one op on the db's clock and tells the checker what it must
/// hear of it; `lane` (only while marks are kept) is the host that asked.
fn apply_noted(
    store: &MemoryStore,
    shared: &Shared,
    mut op: StoreOp,
    lane: Option<&str>,
) -> StoreReply {
    let now_ms = shared.db_now_ms();
    op.set_now_ms(now_ms);
    let noted = note_of(&op);
    let run_of = |run| match store.apply_now(StoreOp::GetRun { run }) {
        StoreReply::Run(v) => Some(v),
        _ => None,
    };
    // Only while marks are kept: the op again, and its run as it stood
    // before, to say afterwards what the op did and whose lease it met.
    let marked = lane.map(|lane| {
        let before = crate::marks::run_of_op(&op).and_then(run_of);
        (lane, op.clone(), before)
    });
    // A provider call that timed out while its tenant's settings were slow
    // to read: nothing may have been sent, but the engine cannot know.
    if let StoreOp::FinishDelivery {
        key,
        outcome: oncesend_core::DeliveryOutcome::Unknown { .. },
        ..
    } = &op
    {
        let now = crate::trace::sim_ms();
        let since = now.saturating_sub(crate::world::SEND_TIMEOUT_MS * 2);
        if run_of(key.run)
            .is_some_and(|v| shared.slow_lookup_during(&v.tenant, since, now, SLOW_LOOKUP_MS))
        {
            shared.note_ambiguous(*key, "tenant_lookup_slow");
        }
    }
    let waiting_before = match &noted {
        Noted::Receipt(run) => {
            run_of(*run).is_some_and(|v| v.wait == Some(oncesend_core::store::RunWait::Outcome))
        }
        _ => false,
    };
    let reply = store.apply_now(op);
    if let Some((lane, op, before)) = marked {
        let at_ms = crate::trace::sim_ms();
        for mark in crate::marks::of_store_op(at_ms, now_ms, lane, &op, &reply, before.as_ref()) {
            shared.marks().add(|| mark);
        }
    }
    // The checker orders begun sends, pauses and opt-outs by the store's
    // own op order: the db's clock may be skewed, and two ops may share a
    // millisecond.
    let now_ms = shared.next_db_op();
    match (noted, &reply) {
        (Noted::Begin(key), StoreReply::Begun { probe, .. }) => {
            shared.note_begun(key, now_ms, *probe)
        }
        (Noted::Pause(tenant, reason), StoreReply::Paused { newly: true }) => {
            shared.log(format!("sender {tenant} paused: {reason}"));
            shared.note_paused(tenant, now_ms, reason);
        }
        (Noted::Resume(tenant), StoreReply::Resumed { was_paused: true }) => {
            shared.log(format!("sender {tenant} resumed"));
            shared.note_resumed(&tenant, now_ms);
        }
        (
            Noted::OptOut(tenant, to),
            StoreReply::Suppressed {
                newly: true,
                cancelled,
            },
        ) => {
            shared.log(format!(
                "{tenant}: {to} opted out; {cancelled} unfinished runs cancelled"
            ));
            shared.note_opt_out(tenant, to, now_ms);
        }
        (Noted::Receipt(run), StoreReply::ReceiptRecorded { .. }) if waiting_before => {
            if let Some(v) = run_of(run).filter(|v| v.wait.is_none()) {
                shared.log(format!(
                    "run {run} waiting on an unknown step settled by a status: now {}",
                    v.status.as_str()
                ));
                shared.note_receipt_settled();
            }
        }
        // The status came before the worker reported the step unknown:
        // the run goes on without waiting.
        (Noted::Await(run), StoreReply::RunIs { status })
            if !matches!(
                status,
                oncesend_core::RunStatus::Waiting | oncesend_core::RunStatus::Failed
            ) =>
        {
            shared.log(format!(
                "run {run}: its unknown step was settled by a status before it could wait"
            ));
            shared.note_receipt_settled();
        }
        (
            Noted::GiveUp(run),
            StoreReply::RunIs {
                status: oncesend_core::RunStatus::Failed,
            },
        ) => {
            let why = run_of(run).and_then(|v| v.reason).unwrap_or_default();
            if why.contains("unknown timeout") {
                shared.log(format!(
                    "run {run} failed: no status within the unknown timeout"
                ));
                shared.note_unknown_timeout();
            }
        }
        _ => {}
    }
    if let StoreReply::Claimed(runs) = &reply {
        for r in runs.iter().filter(|r| r.rescued) {
            shared.fired("lease_rescue");
            shared.log(format!(
                "lease rescue: run {} claimed at epoch {}",
                r.id, r.epoch
            ));
        }
    }
    reply
}

/// A client of the db host, used as a production `Store`. Each request
/// takes an idle connection or opens one, and gives up after `timeout`.
#[derive(Clone)]
pub struct DbClient {
    idle: Arc<Mutex<Vec<TcpStream>>>,
    timeout: Duration,
    /// Pauses and records on behalf of the host it runs in.
    gate: crate::fault::Gate,
    shared: Shared,
}

impl DbClient {
    /// A client that gives up on a request after `timeout`.
    pub fn new(timeout: Duration, gate: crate::fault::Gate, shared: Shared) -> Self {
        Self {
            idle: Arc::default(),
            timeout,
            gate,
            shared,
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&self, request: &DbRequest) -> Result<DbResponse, StoreUnavailable> {
        self.gate.pass().await;
        let exchange = async {
            let reused = self.idle.lock().expect("idle lock").pop();
            let mut conn = match reused {
                Some(c) => c,
                None => TcpStream::connect(("db", DB_PORT)).await?,
            };
            write_frame(&mut conn, request).await?;
            let response = read_frame::<DbResponse>(&mut conn).await?;
            self.idle.lock().expect("idle lock").push(conn);
            Ok::<_, std::io::Error>(response)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(StoreUnavailable(format!("db: {e}"))),
            Err(_) => Err(StoreUnavailable(format!(
                "db: no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// What the checker must be told if `op` gets no answer: a key whose
/// outcome may then end `unknown`, and why.
fn ambiguous_if_lost(op: &StoreOp) -> Option<(oncesend_core::DeliveryKey, &'static str)> {
    match op {
        // An outcome the engine could not record is one of the ways a key
        // can end `unknown`: the row stays `sending`, whatever the outcome
        // was (a refusal too, though nothing went out).
        StoreOp::FinishDelivery { key, .. } => Some((*key, "finish_lost")),
        // `sending` may have been recorded with no one left to send: the
        // row turns unknown at its deadline, with nothing sent.
        StoreOp::BeginDelivery { key, .. } => Some((*key, "begin_lost")),
        _ => None,
    }
}

fn begin_key(op: &StoreOp) -> Option<oncesend_core::DeliveryKey> {
    match op {
        StoreOp::BeginDelivery { key, .. } => Some(*key),
        _ => None,
    }
}

impl Store for DbClient {
    async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
        match self.apply_batch(vec![op]).await?.pop() {
            Some(r) => Ok(r),
            None => Err(StoreUnavailable("db answered no reply".into())),
        }
    }

    async fn apply_batch(&self, ops: Vec<StoreOp>) -> Result<Vec<StoreReply>, StoreUnavailable> {
        let lost: Vec<_> = ops.iter().filter_map(ambiguous_if_lost).collect();
        let lookup = match &ops[..] {
            [StoreOp::GetTenant { tenant }] => Some(self.shared.lookup_began(tenant.clone())),
            _ => None,
        };
        let started_ms = crate::trace::sim_ms();
        let begins: Vec<_> = ops.iter().filter_map(begin_key).collect();
        for key in &begins {
            self.shared.begin_in_flight(*key, true);
            self.shared.engine_sending(*key, true);
        }
        for op in &ops {
            if let StoreOp::FinishDelivery { key, .. } = op {
                self.shared.engine_sending(*key, false);
            }
        }
        let n = ops.len();
        let request = if n == 1 {
            DbRequest::Op(ops.into_iter().next().expect("one op"))
        } else {
            DbRequest::Batch(ops)
        };
        let response = self.request(&request).await;
        for key in &begins {
            self.shared.begin_in_flight(*key, false);
        }
        if let Some(n) = lookup {
            let slow = crate::trace::sim_ms() - started_ms >= SLOW_LOOKUP_MS;
            self.shared.lookup_ended(n, response.is_err() || slow);
        }
        if response.is_err() {
            for (key, why) in lost {
                self.shared.note_ambiguous(key, why);
            }
        }
        match response? {
            DbResponse::Reply(r) if n == 1 => Ok(vec![r]),
            DbResponse::Replies(r) if r.len() == n => Ok(r),
            _ => Err(StoreUnavailable("db answered something else".into())),
        }
    }
}
