//! Enqueue: new runs, their trigger keys, and which of them is its
//! conversation's head.

use super::batch::Batch;
use super::codec::{db, hex_ids, json_conversations, run_id, un, RunInsert, TriggerKeyRow};
use super::statements;
use super::tx::Tx;
use oncesend_core::store::rules::RunRecord;
use oncesend_core::store::Suppression;
use oncesend_core::{NewRun, RunId, StoreOp, StoreReply};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};

impl Batch<'_> {
    /// Enqueues a run of consecutive `Enqueue` ops set-wise: one read of
    /// the trigger keys, one of the ids, one that locks the conversations'
    /// heads, then each op decided in order (a later op sees the runs and
    /// keys of the earlier ones), one insert of the runs and one of the keys.
    ///
    /// Every transaction here locks runs in id order (the holders' writes
    /// too), so two of them wait for each other at worst, never in a cycle.
    ///
    /// The heads are locked `FOR SHARE` against a concurrent finish: either
    /// the finish commits first (and this sees its promotion, or no head and
    /// makes its run the head) or this commits first (and the finish's
    /// promotion sees these runs).
    pub(super) async fn enqueue(&mut self, ops: Vec<StoreOp>) -> Tx<Vec<StoreReply>> {
        let runs: Vec<(NewRun, u64)> = ops
            .into_iter()
            .map(|op| match op {
                StoreOp::Enqueue { run, now_ms } => {
                    assert!(!run.steps.is_empty(), "a run has at least one step");
                    (run, now_ms)
                }
                other => unreachable!("{} is not an enqueue", other.name()),
            })
            .collect();
        let sql = statements::of(self.backend);

        let keys: Vec<TriggerKeyRow> = runs
            .iter()
            .filter_map(|(run, _)| {
                run.trigger_key.as_ref().map(|key| TriggerKeyRow {
                    tenant: run.tenant.as_str().to_string(),
                    key: key.as_str().to_string(),
                    run_id: String::new(),
                })
            })
            .collect();
        let mut known: BTreeMap<(String, String), RunId> = BTreeMap::new();
        if !keys.is_empty() {
            let json = serde_json::to_string(&keys).expect("keys serialize");
            for row in sqlx::query(sql.find_trigger_keys)
                .bind(json)
                .fetch_all(&mut *self.conn)
                .await?
            {
                let id: Vec<u8> = row.try_get(2)?;
                known.insert((row.try_get(0)?, row.try_get(1)?), run_id(&id)?);
            }
        }

        let mut taken = BTreeSet::new();
        for row in sqlx::query(sql.find_runs)
            .bind(hex_ids(runs.iter().map(|(run, _)| &run.id)))
            .fetch_all(&mut *self.conn)
            .await?
        {
            let id: Vec<u8> = row.try_get(0)?;
            taken.insert(run_id(&id)?);
        }

        let conversations: BTreeSet<(&str, &str)> = runs
            .iter()
            .map(|(run, _)| (run.tenant.as_str(), run.to.as_str()))
            .collect();
        let json = json_conversations(&conversations);
        let mut headed: BTreeSet<(String, String)> = BTreeSet::new();
        for row in sqlx::query(sql.lock_heads)
            .bind(json)
            .fetch_all(&mut *self.conn)
            .await?
        {
            headed.insert((row.try_get(0)?, row.try_get(1)?));
        }

        // Recipients who opted out of these tenants.
        let mut suppressed: BTreeMap<(String, String), Suppression> = BTreeMap::new();
        for row in sqlx::query(sql.find_suppressed)
            .bind(json_conversations(&conversations))
            .fetch_all(&mut *self.conn)
            .await?
        {
            suppressed.insert(
                (row.try_get(0)?, row.try_get(1)?),
                Suppression {
                    since_ms: un(row.try_get(2)?),
                    reason: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                },
            );
        }

        let mut replies = Vec::with_capacity(runs.len());
        let mut inserts = Vec::new();
        let mut new_keys = Vec::new();
        for (run, now_ms) in runs {
            let tenant = run.tenant.as_str().to_string();
            if let Some(key) = &run.trigger_key {
                if let Some(existing) = known.get(&(tenant.clone(), key.as_str().to_string())) {
                    replies.push(StoreReply::Enqueued {
                        run: *existing,
                        created: false,
                    });
                    continue;
                }
            }
            if let Some(s) = suppressed.get(&(tenant.clone(), run.to.as_str().to_string())) {
                replies.push(StoreReply::RecipientSuppressed(s.clone()));
                continue;
            }
            if taken.contains(&run.id) {
                replies.push(StoreReply::Conflict {
                    reason: format!("run {} already exists", run.id),
                });
                continue;
            }
            let is_head = headed.insert((tenant.clone(), run.to.as_str().to_string()));
            if is_head {
                self.notify = true;
            }
            let record = RunRecord::new(run, 0, now_ms);
            let id = hex::encode(record.id.0.as_bytes());
            taken.insert(record.id);
            if let Some(key) = &record.trigger_key {
                known.insert((tenant.clone(), key.clone()), record.id);
                new_keys.push(TriggerKeyRow {
                    tenant: tenant.clone(),
                    key: key.clone(),
                    run_id: id.clone(),
                });
            }
            inserts.push(RunInsert {
                id,
                tenant,
                flow: record.flow.as_str().to_string(),
                recipient: record.to.as_str().to_string(),
                steps: serde_json::to_string(&record.steps).expect("steps serialize"),
                step_count: record.steps.len() as i64,
                is_head,
                run_at_ms: db(record.run_at_ms),
                trigger_key: record.trigger_key.clone(),
                created_at_ms: db(now_ms),
            });
            replies.push(StoreReply::Enqueued {
                run: record.id,
                created: true,
            });
        }
        if !inserts.is_empty() {
            self.execute_json(sql.insert_runs, &inserts).await?;
        }
        if !new_keys.is_empty() {
            self.execute_json(sql.insert_trigger_keys, &new_keys)
                .await?;
        }
        Ok(replies)
    }
}
