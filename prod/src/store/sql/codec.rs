//! Rows to records and records to statement parameters: the column lists
//! the decoders read, the JSON shapes the row statements take, and the
//! conversions between the store's `u64`s and the databases' `BIGINT`s.

use super::tx::{Tx, TxError};
use oncesend_core::store::rules::{RunRecord, RunRow};
use oncesend_core::store::RunWait;
use oncesend_core::tenant::SenderPause;
use oncesend_core::{
    DeliveryKey, DeliveryRecord, DeliveryState, FlowId, Lease, PlannedStep, Recipient, RunId,
    RunStatus, TenantId, WorkerId,
};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Store times and counters are `u64`; the databases keep `BIGINT`.
pub(super) fn db(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

pub(super) fn un(v: i64) -> u64 {
    v.max(0) as u64
}

pub(super) fn decode_err(what: &str, e: impl std::fmt::Display) -> TxError {
    TxError::Db(sqlx::Error::Decode(format!("{what}: {e}").into()))
}

pub(super) fn run_id(bytes: &[u8]) -> Tx<RunId> {
    uuid::Uuid::from_slice(bytes)
        .map(RunId)
        .map_err(|e| decode_err("run id", e))
}

/// The columns [`run_from_row`] reads, in the order the statements that
/// load runs select them.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const RUN_COLUMNS: [&str; 19] = [
    "seq",
    "id",
    "tenant",
    "flow",
    "recipient",
    "steps",
    "next_step",
    "status",
    "run_at_ms",
    "attempts",
    "epoch",
    "lease_owner",
    "lease_until_ms",
    "reason",
    "trigger_key",
    "created_at_ms",
    "finished_at_ms",
    "wait",
    "note",
];

pub(super) fn run_from_row(row: &AnyRow) -> Tx<RunRecord> {
    run_from_row_with(row, None)
}

/// A run's messages decoded from their stored text, kept per run while the
/// text read back is the same: a run's messages never change once it is
/// enqueued, and every op that writes a run reads its row first, so
/// without this each step of a run decoded all of its messages again
/// (three times per send on the full path). Bounded: emptied when full.
#[derive(Default)]
pub(super) struct StepsCache(Mutex<BTreeMap<RunId, KeptSteps>>);

/// The text a run's messages were decoded from, and what it decoded to.
type KeptSteps = (String, Arc<[PlannedStep]>);

impl StepsCache {
    /// Runs whose messages are kept at most.
    const CAPACITY: usize = 16_384;

    fn decode(&self, id: RunId, text: String) -> Tx<Arc<[PlannedStep]>> {
        let mut kept = self.0.lock().expect("steps cache poisoned");
        if let Some((seen, steps)) = kept.get(&id) {
            if *seen == text {
                return Ok(steps.clone());
            }
        }
        let steps: Vec<PlannedStep> =
            serde_json::from_str(&text).map_err(|e| decode_err("steps", e))?;
        let steps: Arc<[PlannedStep]> = steps.into();
        if kept.len() >= Self::CAPACITY {
            kept.clear();
        }
        kept.insert(id, (text, steps.clone()));
        Ok(steps)
    }
}

/// [`run_from_row`], with the messages taken from `cache` when the row's
/// text is the one decoded before.
pub(super) fn run_from_row_with(row: &AnyRow, cache: Option<&StepsCache>) -> Tx<RunRecord> {
    let text: String = row.try_get("steps")?;
    let id: Vec<u8> = row.try_get("id")?;
    let id = run_id(&id)?;
    let steps: Arc<[PlannedStep]> = match cache {
        Some(cache) => cache.decode(id, text)?,
        None => serde_json::from_str::<Vec<PlannedStep>>(&text)
            .map_err(|e| decode_err("steps", e))?
            .into(),
    };
    let status: String = row.try_get("status")?;
    let status = RunStatus::parse(&status).ok_or_else(|| decode_err("status", &status))?;
    let owner: Option<String> = row.try_get("lease_owner")?;
    let until: Option<i64> = row.try_get("lease_until_ms")?;
    let epoch = un(row.try_get("epoch")?);
    let lease = match (owner, until) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: WorkerId::new(owner).map_err(|e| decode_err("lease owner", e))?,
            epoch,
            until_ms: un(until),
        }),
        _ => None,
    };
    RunRecord::from_row(RunRow {
        id,
        seq: un(row.try_get("seq")?),
        tenant: TenantId::new(row.try_get::<String, _>("tenant")?)
            .map_err(|e| decode_err("tenant", e))?,
        flow: FlowId::new(row.try_get::<String, _>("flow")?).map_err(|e| decode_err("flow", e))?,
        to: Recipient::parse(&row.try_get::<String, _>("recipient")?)
            .map_err(|e| decode_err("recipient", e))?,
        steps,
        cursor: un(row.try_get("next_step")?) as u32,
        status,
        run_at_ms: un(row.try_get("run_at_ms")?),
        attempts: un(row.try_get("attempts")?) as u32,
        epoch,
        lease,
        wait: match row.try_get::<Option<String>, _>("wait")? {
            Some(w) => Some(RunWait::parse(&w).ok_or_else(|| decode_err("wait", &w))?),
            None => None,
        },
        note: row.try_get("note")?,
        reason: row.try_get("reason")?,
        trigger_key: row.try_get("trigger_key")?,
        created_at_ms: un(row.try_get("created_at_ms")?),
        finished_at_ms: row.try_get::<Option<i64>, _>("finished_at_ms")?.map(un),
    })
    .map_err(|e| decode_err("run", e))
}

/// The columns [`delivery_from_row`] reads.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const DELIVERY_COLUMNS: [&str; 12] = [
    "run_id",
    "step",
    "state",
    "deadline_ms",
    "retryable",
    "epoch",
    "attempts",
    "provider_message_id",
    "last_error",
    "resolved_by",
    "resolved_at_ms",
    "owner",
];

pub(super) fn delivery_from_row(row: &AnyRow) -> Tx<DeliveryRecord> {
    let run: Vec<u8> = row.try_get("run_id")?;
    let state: String = row.try_get("state")?;
    let deadline: Option<i64> = row.try_get("deadline_ms")?;
    let retryable: Option<i64> = row.try_get("retryable")?;
    let state = match state.as_str() {
        "sending" => DeliveryState::Sending {
            deadline_ms: un(deadline.unwrap_or(0)),
        },
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "failed" => DeliveryState::Failed {
            retryable: retryable.unwrap_or(0) != 0,
        },
        "unknown" => DeliveryState::Unknown,
        other => return Err(decode_err("delivery state", other)),
    };
    Ok(DeliveryRecord {
        key: DeliveryKey {
            run: run_id(&run)?,
            step: un(row.try_get("step")?) as u32,
        },
        state,
        epoch: un(row.try_get("epoch")?),
        attempts: un(row.try_get("attempts")?) as u32,
        provider_message_id: row.try_get("provider_message_id")?,
        last_error: row.try_get("last_error")?,
        resolved_by: row.try_get("resolved_by")?,
        resolved_at_ms: row.try_get::<Option<i64>, _>("resolved_at_ms")?.map(un),
        owner: match row.try_get::<Option<String>, _>("owner")? {
            Some(w) => Some(WorkerId::new(w).map_err(|e| decode_err("owner", e))?),
            None => None,
        },
    })
}

/// The columns [`pause_from_row`] reads.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const PAUSE_COLUMNS: [&str; 7] = [
    "tenant",
    "reason",
    "code",
    "since_ms",
    "probe_at_ms",
    "probes",
    "settings",
];

pub(super) fn pause_from_row(row: &AnyRow) -> Tx<(TenantId, SenderPause)> {
    let tenant =
        TenantId::new(row.try_get::<String, _>("tenant")?).map_err(|e| decode_err("tenant", e))?;
    let probe_at: Option<i64> = row.try_get("probe_at_ms")?;
    Ok((
        tenant,
        SenderPause {
            reason: row.try_get("reason")?,
            code: row.try_get("code")?,
            since_ms: un(row.try_get("since_ms")?),
            probe_at_ms: probe_at.map(un),
            probes: u32::try_from(un(row.try_get("probes")?)).unwrap_or(u32::MAX),
            settings: row.try_get("settings")?,
        },
    ))
}

/// The row statements take their rows as one JSON parameter, so each has
/// one text whatever the batch size: prepared once per connection, never
/// re-parsed or re-planned for a new size, and one bind instead of
/// thousands. In PostgreSQL the id lists go through `= ANY(ARRAY(…))`, an
/// index condition, so the plan stays an index probe per row however the
/// planner sizes the table (a join against a `VALUES` list of 200 rows was
/// planned as a sequential scan of `runs`).
pub(super) fn hex_ids<'a>(ids: impl Iterator<Item = &'a RunId>) -> String {
    let ids: Vec<String> = ids.map(|id| hex::encode(id.0.as_bytes())).collect();
    serde_json::to_string(&ids).expect("ids serialize")
}

/// `[{"tenant", "recipient"}, …]`, as the statements read conversations.
pub(super) fn json_conversations(conversations: &BTreeSet<(&str, &str)>) -> String {
    #[derive(serde::Serialize)]
    struct Conversation<'a> {
        tenant: &'a str,
        recipient: &'a str,
    }
    serde_json::to_string(
        &conversations
            .iter()
            .map(|(tenant, recipient)| Conversation { tenant, recipient })
            .collect::<Vec<_>>(),
    )
    .expect("conversations serialize")
}

/// A trigger key, as the statements read it (`run_id` empty in lookups).
#[derive(serde::Serialize)]
pub(super) struct TriggerKeyRow {
    pub tenant: String,
    pub key: String,
    pub run_id: String,
}

/// A new run, as the insert reads it.
#[derive(serde::Serialize)]
pub(super) struct RunInsert {
    pub id: String,
    pub tenant: String,
    pub flow: String,
    pub recipient: String,
    pub steps: String,
    pub step_count: i64,
    pub is_head: bool,
    pub run_at_ms: i64,
    pub trigger_key: Option<String>,
    pub created_at_ms: i64,
}

/// One run's write-back, as the statements read it.
#[derive(serde::Serialize)]
pub(super) struct RunWrite {
    pub id: String,
    pub read_epoch: i64,
    /// PostgreSQL: the run heads its conversation, fenced by its `heads`
    /// row rather than by its own epoch.
    pub head: bool,
    pub status: &'static str,
    pub next_step: i64,
    pub run_at_ms: i64,
    pub attempts: i64,
    pub epoch: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub reason: Option<String>,
    pub finished_at_ms: Option<i64>,
    pub wait: Option<&'static str>,
    pub note: Option<String>,
    /// When the run had finished as it was read (PostgreSQL keeps its
    /// list of finished runs in step with a change of this).
    pub read_finished_at_ms: Option<i64>,
}

/// One head's claim state written back (PostgreSQL's `heads`): kept, or
/// removed when its run finished.
#[derive(serde::Serialize)]
pub(super) struct HeadWrite<'a> {
    pub tenant: &'a str,
    pub recipient: &'a str,
    pub seq: i64,
    pub read_epoch: i64,
    pub keep: bool,
    pub status: &'static str,
    pub epoch: i64,
    pub lease_owner: Option<&'a str>,
    pub lease_until_ms: Option<i64>,
    pub run_at_ms: i64,
    pub wait: Option<&'static str>,
}

/// One ledger row's upsert, as the statements read it.
#[derive(serde::Serialize)]
pub(super) struct DeliveryWrite {
    pub run_id: String,
    pub step: i64,
    pub state: &'static str,
    pub deadline_ms: Option<i64>,
    pub retryable: Option<i64>,
    pub epoch: i64,
    pub attempts: i64,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at_ms: Option<i64>,
    pub owner: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::statements::{common, postgres, sqlite};
    use super::*;

    /// The select list of `sql` (comments dropped, whitespace folded).
    fn selected(sql: &str) -> String {
        let text: Vec<&str> = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .flat_map(str::split_whitespace)
            .collect();
        let text = text.join(" ");
        let list = text.strip_prefix("SELECT ").expect("a SELECT");
        list[..list.find(" FROM ").expect("a FROM")].to_string()
    }

    /// A column a statement forgot would fail only when a row is decoded;
    /// this fails at once, and also on a column the decoder does not read.
    #[test]
    fn statements_select_what_the_decoders_read() {
        for sql in [sqlite::LOAD_RUNS, common::LIST_RUNS] {
            assert_eq!(selected(sql), RUN_COLUMNS.join(", "), "{sql}");
        }
        // PostgreSQL's loads also say which runs are heads.
        for sql in [postgres::LOAD_RUNS, postgres::LOAD_RUNS_LOCKED] {
            assert_eq!(
                selected(sql),
                format!("{}, is_head", RUN_COLUMNS.join(", ")),
                "{sql}"
            );
        }
        // The claim also reads the stored step count, which each claimed
        // run is checked against.
        assert_eq!(
            selected(sqlite::CLAIM),
            format!("{}, step_count", RUN_COLUMNS.join(", ")),
            "{}",
            sqlite::CLAIM
        );
        for sql in [
            postgres::LOAD_DELIVERIES,
            postgres::LOAD_DELIVERIES_LOCKED,
            sqlite::LOAD_DELIVERIES,
        ] {
            assert_eq!(selected(sql), DELIVERY_COLUMNS.join(", "), "{sql}");
        }
        for sql in [
            postgres::LOAD_PAUSES,
            sqlite::LOAD_PAUSES,
            common::LIST_PAUSED_SENDERS,
        ] {
            assert_eq!(selected(sql), PAUSE_COLUMNS.join(", "), "{sql}");
        }
    }

    #[test]
    fn the_steps_cache_reuses_a_runs_messages_only_for_the_same_text() {
        let cache = StepsCache::default();
        let a = RunId::new(1, 1);
        let text = r#"[{"text":"hello","delay_ms":0},{"text":"again","delay_ms":5}]"#;
        let first = cache.decode(a, text.to_string()).ok().expect("decodes");
        assert_eq!(first.len(), 2);
        assert_eq!(first[1].delay_ms, 5);
        let again = cache.decode(a, text.to_string()).ok().expect("decodes");
        assert!(Arc::ptr_eq(&first, &again), "the same text decoded twice");
        // The same id with other text (a database recreated under it) is
        // decoded afresh, never answered from what was kept.
        let other = cache
            .decode(a, r#"[{"text":"other","delay_ms":0}]"#.to_string())
            .ok()
            .expect("decodes");
        assert_eq!(other.len(), 1);
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(cache.decode(a, "[{".to_string()).is_err());
        // Bounded: full, it starts over.
        for i in 0..StepsCache::CAPACITY as u64 {
            cache
                .decode(RunId::new(10 + i, i), text.to_string())
                .ok()
                .expect("decodes");
        }
        assert!(cache.0.lock().unwrap().len() <= StepsCache::CAPACITY);
    }
}
