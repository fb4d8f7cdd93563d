//! Enqueue: new runs, their trigger keys, and which of them is its
//! conversation's head.

use super::batch::Batch;
use super::codec::{db, hex_ids, json_conversations, run_id, un, RunInsert, TriggerKeyRow};
use super::statements;
use super::tx::Tx;
use oncesend_core::store::rules::{
    decide_enqueue, plan_trigger, EnqueueDecision, EnqueueFacts, RunRecord,
};
use oncesend_core::store::Suppression;
use oncesend_core::{Flow, FlowId, NewRun, RunId, StoreOp, StoreReply, TenantId};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};

impl Batch<'_> {
    /// Enqueues a run of consecutive `Enqueue` and `Trigger` ops set-wise: one read of
    /// the trigger keys, one of the ids, one that locks the conversations'
    /// heads, then each op decided in order (a later op sees the runs and
    /// keys of the earlier ones), one insert of the runs and one of the keys.
    ///
    /// Every transaction here locks runs and heads in the order of the
    /// runs' ids, as the holders' writes do (a head by its run's id, never
    /// by its conversation), so two of them wait for each other at worst,
    /// never in a cycle.
    ///
    /// Enqueues into the same conversation wait for each other (PostgreSQL's
    /// advisory locks, one per conversation, in one order): otherwise two of
    /// them could both find it without a head and both make their run it.
    ///
    /// The heads are locked `FOR SHARE` against a concurrent finish: either
    /// the finish commits first (and this sees its promotion, or no head and
    /// makes its run the head) or this commits first (and the finish's
    /// promotion sees these runs).
    pub(super) async fn enqueue(&mut self, ops: Vec<StoreOp>) -> Tx<Vec<StoreReply>> {
        let mut replies: Vec<Option<StoreReply>> = Vec::with_capacity(ops.len());
        let runs = self.plan_triggers(ops, &mut replies).await?;
        if runs.is_empty() {
            return Ok(answered(replies));
        }
        let sql = statements::of(self.backend);
        let conversations: BTreeSet<(&str, &str)> = runs
            .iter()
            .map(|(_, run, _)| (run.tenant.as_str(), run.to.as_str()))
            .collect();
        if let Some(lock) = sql.lock_conversations {
            sqlx::query(lock)
                .bind(json_conversations(&conversations))
                .execute(&mut *self.conn)
                .await?;
        }

        let keys: Vec<TriggerKeyRow> = runs
            .iter()
            .filter_map(|(_, run, _)| {
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
            .bind(hex_ids(runs.iter().map(|(_, run, _)| &run.id)))
            .fetch_all(&mut *self.conn)
            .await?
        {
            let id: Vec<u8> = row.try_get(0)?;
            taken.insert(run_id(&id)?);
        }

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

        // Each run decided in order: a later one sees the runs, keys and
        // heads of the earlier ones.
        let mut inserts = Vec::new();
        let mut new_keys = Vec::new();
        for (i, run, now_ms) in runs {
            let tenant = run.tenant.as_str().to_string();
            let conv = (tenant.clone(), run.to.as_str().to_string());
            let facts = EnqueueFacts {
                existing: run
                    .trigger_key
                    .as_ref()
                    .and_then(|key| known.get(&(tenant.clone(), key.clone())))
                    .copied(),
                suppressed: suppressed.get(&conv),
                id_taken: taken.contains(&run.id),
                conversation_open: headed.contains(&conv),
            };
            let is_head = match decide_enqueue(&run, facts) {
                EnqueueDecision::Insert { is_head } => is_head,
                other => {
                    replies[i] = Some(other.answer(run.id));
                    continue;
                }
            };
            if is_head {
                headed.insert(conv);
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
            replies[i] = Some(StoreReply::Enqueued {
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
        Ok(answered(replies))
    }

    /// Turns each op into the run it enqueues (its index, the run, the
    /// store's time), planning triggers in the core from the tenant and
    /// flow read here, each distinct one once; a trigger the core refuses
    /// is answered in `replies` and enqueues nothing.
    async fn plan_triggers(
        &mut self,
        ops: Vec<StoreOp>,
        replies: &mut Vec<Option<StoreReply>>,
    ) -> Tx<Vec<(usize, NewRun, u64)>> {
        let mut tenants: BTreeMap<TenantId, bool> = BTreeMap::new();
        let mut flows: BTreeMap<(TenantId, FlowId), Option<Flow>> = BTreeMap::new();
        let mut runs = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            replies.push(None);
            match op {
                StoreOp::Enqueue { run, now_ms } => runs.push((i, run, now_ms)),
                StoreOp::Trigger {
                    flow,
                    trigger,
                    run,
                    now_ms,
                } => {
                    let tenant = trigger.tenant.clone();
                    if !tenants.contains_key(&tenant) {
                        let stored = self.tenant_stored(&tenant).await?;
                        tenants.insert(tenant.clone(), stored);
                    }
                    let key = (tenant, flow);
                    if !flows.contains_key(&key) {
                        let found = self.load_flow(&key.0, &key.1).await?;
                        flows.insert(key.clone(), found);
                    }
                    match plan_trigger(tenants[&key.0], flows[&key].as_ref(), trigger, run) {
                        Ok(run) => runs.push((i, run, now_ms)),
                        Err(why) => replies[i] = Some(StoreReply::TriggerRefused(why)),
                    }
                }
                other => unreachable!("{} is not an enqueue", other.name()),
            }
        }
        Ok(runs)
    }
}

fn answered(replies: Vec<Option<StoreReply>>) -> Vec<StoreReply> {
    replies
        .into_iter()
        .map(|r| r.expect("every enqueue is answered"))
        .collect()
}
