//! Holders' writes: the rows a run of per-row ops touches, read once and
//! locked, decided by the core's rules, written back conditional on the
//! epoch they were read with; and the promotion of each finished head's
//! successor.

use super::batch::Batch;
use super::codec::{
    db, decode_err, delivery_from_row, hex_ids, json_conversations, run_from_row_with, run_id,
    DeliveryWrite, HeadWrite, RunWrite,
};
use super::statements::{self, common};
use super::tx::{Tx, TxError};
use super::{Backend, GUARDS};
use oncesend_core::store::rules::{self, RunRecord};
use oncesend_core::store::RunWait;
use oncesend_core::{
    DeliveryKey, DeliveryRecord, DeliveryState, Recipient, RunEvent, RunId, RunStatus, StoreOp,
    StoreReply, TenantId,
};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};

impl Batch<'_> {
    /// Loads runs by id, locked for the rest of the transaction when
    /// `lock` (SQLite's one writer already holds the database).
    pub(super) async fn load_runs(
        &mut self,
        ids: &BTreeSet<RunId>,
        lock: bool,
    ) -> Tx<BTreeMap<RunId, RunRecord>> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let sql = statements::of(self.backend);
        let rows = sqlx::query(if lock {
            sql.load_runs_locked
        } else {
            sql.load_runs
        })
        .bind(hex_ids(ids.iter()))
        .fetch_all(&mut *self.conn)
        .await?;
        for row in rows {
            let record = run_from_row_with(&row, Some(self.steps))?;
            if self.backend == Backend::Postgres {
                if row.try_get::<bool, _>("is_head")? {
                    self.heads.insert(record.id);
                } else {
                    self.heads.remove(&record.id);
                }
            }
            out.insert(record.id, record);
        }
        Ok(out)
    }

    /// Loads the ledger rows of these runs, locked when `lock`.
    pub(super) async fn load_deliveries(
        &mut self,
        runs: &BTreeSet<RunId>,
        lock: bool,
    ) -> Tx<BTreeMap<DeliveryKey, DeliveryRecord>> {
        let mut out = BTreeMap::new();
        if runs.is_empty() {
            return Ok(out);
        }
        let sql = statements::of(self.backend);
        let rows = sqlx::query(if lock {
            sql.load_deliveries_locked
        } else {
            sql.load_deliveries
        })
        .bind(hex_ids(runs.iter()))
        .fetch_all(&mut *self.conn)
        .await?;
        for row in rows {
            let record = delivery_from_row(&row)?;
            out.insert(record.key, record);
        }
        Ok(out)
    }

    /// A run of consecutive per-row ops: read every row they touch once,
    /// decide each op with the core's rules in order, write back what
    /// changed, and promote the next run of every conversation whose head
    /// finished (or give a run an operator sent on again its place).
    pub(super) async fn rows(&mut self, ops: Vec<StoreOp>) -> Tx<Vec<StoreReply>> {
        let run_ids: BTreeSet<RunId> = ops.iter().filter_map(rules::row_op_run).collect();
        let before_runs = self.load_runs(&run_ids, true).await?;
        let ledger_runs: BTreeSet<RunId> = ops
            .iter()
            .filter_map(|op| {
                let id = rules::row_op_run(op)?;
                rules::needs_ledger(op, before_runs.get(&id)).then_some(id)
            })
            .collect();
        let before_ledger = self.load_deliveries(&ledger_runs, true).await?;
        // The pauses of the tenants whose sends begin here (none at all in
        // the common case, and then no query).
        let begin_tenants: Vec<TenantId> = ops
            .iter()
            .filter(|op| rules::needs_pause(op))
            .filter_map(|op| before_runs.get(&rules::row_op_run(op)?))
            .map(|r| r.tenant.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let before_pauses = if begin_tenants.is_empty() {
            BTreeMap::new()
        } else {
            self.load_pauses(&begin_tenants).await?
        };
        // The opt-outs of the recipients sends begin for, read in this
        // transaction (locked on PostgreSQL, so an opt-out commits
        // before or after, never beside, the `sending` it would stop).
        let begin_conversations: BTreeSet<(&str, &str)> = ops
            .iter()
            .filter(|op| rules::needs_pause(op))
            .filter_map(|op| before_runs.get(&rules::row_op_run(op)?))
            .map(|r| (r.tenant.as_str(), r.to.as_str()))
            .collect();
        let mut opted_out: BTreeSet<(String, String)> = BTreeSet::new();
        if !begin_conversations.is_empty() {
            let sql = statements::of(self.backend);
            for row in sqlx::query(sql.find_suppressed_locked)
                .bind(json_conversations(&begin_conversations))
                .fetch_all(&mut *self.conn)
                .await?
            {
                opted_out.insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        let suppressed = |t: &TenantId, to: &Recipient| {
            opted_out.contains(&(t.as_str().to_string(), to.as_str().to_string()))
        };
        // Runs an operator may send on again: the other unfinished runs of
        // their conversations, as they stand before this batch; the batch's
        // own changes are read from the rows as each op comes.
        let mut others: BTreeMap<RunId, Vec<RunId>> = BTreeMap::new();
        for op in &ops {
            if let StoreOp::RetryRun { run, .. }
            | StoreOp::ResolveUnknown {
                key: DeliveryKey { run, .. },
                ..
            } = op
            {
                if let Some(r) = before_runs.get(run) {
                    if !others.contains_key(run) {
                        let ids = self.other_open(r).await?;
                        others.insert(*run, ids);
                    }
                }
            }
        }
        let mut pauses = before_pauses.clone();
        let mut runs = before_runs.clone();
        let mut ledger = before_ledger.clone();
        let mut replies = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        for op in ops {
            let crowded = rules::row_op_run(&op)
                .and_then(|id| Some((runs.get(&id)?, others.get(&id)?)))
                .is_some_and(|(me, ids)| {
                    let open = |r: &RunRecord| !r.status.is_terminal();
                    ids.iter().any(|id| runs.get(id).is_none_or(open))
                        || runs.values().any(|r| {
                            r.id != me.id && r.tenant == me.tenant && r.to == me.to && open(r)
                        })
                });
            let mut rows = rules::Rows {
                runs: &mut runs,
                ledger: &mut ledger,
                pauses: &mut pauses,
                suppressed: &suppressed,
                events: &mut events,
            };
            replies.push(rules::apply_row_op(&mut rows, GUARDS, op, &|_| crowded));
        }

        let mut old = Vec::new();
        let mut new = Vec::new();
        // Conversations that may need a new head, each with the seq the
        // search for it starts after.
        let mut finished: BTreeMap<(TenantId, Recipient), u64> = BTreeMap::new();
        // Runs sent on again, each of which must come out as its
        // conversation's head.
        let mut reopened: Vec<&RunRecord> = Vec::new();
        for (id, after) in &runs {
            let before = &before_runs[id];
            if before != after {
                if before.status.is_terminal() != after.status.is_terminal() {
                    // A head that finished hands its place on to a run
                    // after it; a run sent on again takes the empty place.
                    let from = if after.status.is_terminal() {
                        after.seq
                    } else {
                        reopened.push(after);
                        after.seq.saturating_sub(1)
                    };
                    finished
                        .entry((after.tenant.clone(), after.to.clone()))
                        .and_modify(|s| *s = (*s).min(from))
                        .or_insert(from);
                }
                if after.status == RunStatus::Pending && before.status != RunStatus::Pending {
                    // Released for a delay or a retry: due again later.
                    self.notify = true;
                }
                old.push(before);
                new.push(after);
            }
        }
        self.write_runs(&old, &new).await?;
        let changed: Vec<&DeliveryRecord> = ledger
            .iter()
            .filter(|(key, rec)| before_ledger.get(key) != Some(rec))
            .map(|(_, rec)| rec)
            .collect();
        self.write_deliveries(&before_ledger, &changed).await?;
        for (tenant, p) in &pauses {
            if before_pauses.get(tenant) != Some(p) {
                self.write_pause(tenant, p).await?;
            }
        }
        if !finished.is_empty() {
            self.promote(&finished).await?;
        }
        self.check_reopened(&reopened).await?;
        self.write_events(&events).await?;
        Ok(replies)
    }

    /// Stores runs' events, in order (rare: none on the happy path).
    pub(super) async fn write_events(&mut self, events: &[(RunId, RunEvent)]) -> Tx<()> {
        for (run, event) in events {
            let body = serde_json::to_string(event).expect("events serialize");
            sqlx::query(common::INSERT_RUN_EVENT)
                .bind(run.0.as_bytes().to_vec())
                .bind(db(event.at_ms))
                .bind(body)
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }

    /// A run's events, oldest first.
    pub(super) async fn load_events(&mut self, run: RunId) -> Tx<Vec<RunEvent>> {
        let rows = sqlx::query(common::LOAD_RUN_EVENTS)
            .bind(run.0.as_bytes().to_vec())
            .fetch_all(&mut *self.conn)
            .await?;
        rows.iter()
            .map(|row| {
                let body: String = row.try_get(0)?;
                serde_json::from_str(&body).map_err(|e| decode_err("run event", e))
            })
            .collect()
    }

    /// The unfinished runs of `run`'s conversation besides it.
    pub(super) async fn other_open(&mut self, run: &RunRecord) -> Tx<Vec<RunId>> {
        let rows = sqlx::query(common::OTHER_OPEN_RUNS)
            .bind(run.tenant.as_str())
            .bind(run.to.as_str())
            .bind(run.id.0.as_bytes().to_vec())
            .fetch_all(&mut *self.conn)
            .await?;
        rows.iter()
            .map(|row| run_id(&row.try_get::<Vec<u8>, _>(0)?))
            .collect()
    }

    /// Runs a statement that takes its rows as one JSON parameter; answers
    /// how many rows it changed.
    pub(super) async fn execute_json<T: serde::Serialize>(
        &mut self,
        sql: &str,
        rows: &[T],
    ) -> Tx<u64> {
        let json = serde_json::to_string(rows).expect("rows serialize to JSON");
        let done = sqlx::query(sql).bind(json).execute(&mut *self.conn).await?;
        Ok(done.rows_affected())
    }

    /// Runs a statement that takes its rows as one JSON parameter and
    /// answers with one count (a statement of several parts, whose own row
    /// count would be that of its final SELECT).
    pub(super) async fn count_json<T: serde::Serialize>(
        &mut self,
        sql: &str,
        rows: &[T],
    ) -> Tx<u64> {
        let json = serde_json::to_string(rows).expect("rows serialize to JSON");
        let n: i64 = sqlx::query(sql)
            .bind(json)
            .fetch_one(&mut *self.conn)
            .await?
            .try_get(0)?;
        Ok(n as u64)
    }

    /// Writes changed runs back, each conditional on the epoch it was read
    /// with. A run that became terminal stops being its conversation's head.
    pub(super) async fn write_runs(
        &mut self,
        before: &[&RunRecord],
        after: &[&RunRecord],
    ) -> Tx<()> {
        if after.is_empty() {
            return Ok(());
        }
        let run_write = |o: &RunRecord, n: &RunRecord, head: bool| RunWrite {
            id: hex::encode(n.id.0.as_bytes()),
            read_epoch: db(o.epoch),
            head,
            status: n.status.as_str(),
            next_step: n.cursor as i64,
            run_at_ms: db(n.run_at_ms),
            attempts: n.attempts as i64,
            epoch: db(n.epoch),
            lease_owner: n.lease.as_ref().map(|l| l.owner.as_str().to_string()),
            lease_until_ms: n.lease.as_ref().map(|l| db(l.until_ms)),
            reason: n.reason.clone(),
            finished_at_ms: n.finished_at_ms.map(db),
            wait: n.wait.map(RunWait::as_str),
            note: n.note.clone(),
            read_finished_at_ms: o.finished_at_ms.map(db),
        };
        let mut rows: Vec<RunWrite> = Vec::with_capacity(after.len());
        let mut heads: Vec<HeadWrite> = Vec::new();
        for (o, n) in before.iter().zip(after) {
            let head = self.backend == Backend::Postgres && self.heads.contains(&n.id);
            if !head {
                rows.push(run_write(o, n, false));
                continue;
            }
            // A head's claim state is its `heads` row; its run's row is
            // written only for what that row does not hold, or when the
            // run finishes and its row takes the whole state back.
            let keep = !n.status.is_terminal();
            let claim_changed = o.status != n.status
                || o.epoch != n.epoch
                || o.lease != n.lease
                || o.run_at_ms != n.run_at_ms
                || o.wait != n.wait;
            // The row was read under lock, so its epoch cannot have moved
            // since; a head whose claim state is unchanged (a step
            // recorded, the lease kept) needs no new version.
            if keep && !claim_changed {
                rows.push(run_write(o, n, true));
                continue;
            }
            heads.push(HeadWrite {
                tenant: n.tenant.as_str(),
                recipient: n.to.as_str(),
                seq: db(n.seq),
                read_epoch: db(o.epoch),
                keep,
                status: n.status.as_str(),
                epoch: db(n.epoch),
                lease_owner: n.lease.as_ref().map(|l| l.owner.as_str()),
                lease_until_ms: n.lease.as_ref().map(|l| db(l.until_ms)),
                run_at_ms: db(n.run_at_ms),
                wait: n.wait.map(RunWait::as_str),
            });
            let own_changed = o.cursor != n.cursor
                || o.attempts != n.attempts
                || o.reason != n.reason
                || o.note != n.note;
            if !keep || own_changed {
                rows.push(run_write(o, n, true));
            }
        }
        if !heads.is_empty() {
            let matched = self
                .count_json(statements::postgres::WRITE_HEADS, &heads)
                .await?;
            if matched != heads.len() as u64 {
                return Err(TxError::Retry(format!(
                    "{matched} of {} heads matched the epoch they were read with",
                    heads.len()
                )));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let written = match self.backend {
            // A statement with parts: it answers how many runs it wrote.
            Backend::Postgres => {
                self.count_json(statements::postgres::WRITE_RUNS, &rows)
                    .await?
            }
            Backend::Sqlite => {
                self.execute_json(statements::sqlite::WRITE_RUNS, &rows)
                    .await?
            }
        };
        if written != rows.len() as u64 {
            return Err(TxError::Retry(format!(
                "{written} of {} runs matched the epoch they were read with",
                rows.len()
            )));
        }
        Ok(())
    }

    /// Inserts or updates ledger rows (`before`: as they were read), and
    /// keeps PostgreSQL's list of unknown outcomes in step with them.
    pub(super) async fn write_deliveries(
        &mut self,
        before: &BTreeMap<DeliveryKey, DeliveryRecord>,
        rows: &[&DeliveryRecord],
    ) -> Tx<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = statements::of(self.backend);
        #[derive(serde::Serialize)]
        struct Key {
            run_id: String,
            step: i64,
        }
        let key = |rec: &DeliveryRecord| Key {
            run_id: hex::encode(rec.key.run.0.as_bytes()),
            step: rec.key.step as i64,
        };
        let was_unknown = |rec: &DeliveryRecord| {
            before
                .get(&rec.key)
                .is_some_and(|b| b.state == DeliveryState::Unknown)
        };
        let (unknown, known): (Vec<&DeliveryRecord>, Vec<&DeliveryRecord>) = rows
            .iter()
            .partition(|rec| rec.state == DeliveryState::Unknown);
        let listed: Vec<Key> = unknown
            .into_iter()
            .filter(|r| !was_unknown(r))
            .map(key)
            .collect();
        let unlisted: Vec<Key> = known
            .into_iter()
            .filter(|r| was_unknown(r))
            .map(key)
            .collect();
        let writes: Vec<DeliveryWrite> = rows
            .iter()
            .map(|rec| {
                let (deadline_ms, retryable) = match rec.state {
                    DeliveryState::Sending { deadline_ms } => (Some(db(deadline_ms)), None),
                    DeliveryState::Failed { retryable } => (None, Some(retryable as i64)),
                    _ => (None, None),
                };
                DeliveryWrite {
                    run_id: hex::encode(rec.key.run.0.as_bytes()),
                    step: rec.key.step as i64,
                    state: rec.state.as_str(),
                    deadline_ms,
                    retryable,
                    epoch: db(rec.epoch),
                    attempts: rec.attempts as i64,
                    provider_message_id: rec.provider_message_id.clone(),
                    last_error: rec.last_error.clone(),
                    resolved_by: rec.resolved_by.clone(),
                    resolved_at_ms: rec.resolved_at_ms.map(db),
                    owner: rec.owner.as_ref().map(|w| w.as_str().to_string()),
                }
            })
            .collect();
        self.execute_json(sql.write_deliveries, &writes).await?;
        if let (Some(list), false) = (sql.list_unknown, listed.is_empty()) {
            self.execute_json(list, &listed).await?;
        }
        if let (Some(unlist), false) = (sql.unlist_unknown, unlisted.is_empty()) {
            self.execute_json(unlist, &unlisted).await?;
        }
        Ok(())
    }

    /// Fails the transaction, to be tried again, if a run sent on again
    /// here is not its conversation's head: a concurrent enqueue took the
    /// place (see `reopened_not_heads.sql`). The next attempt sees that
    /// enqueue's run, and the rules refuse to let the older run overtake it.
    async fn check_reopened(&mut self, reopened: &[&RunRecord]) -> Tx<()> {
        let Some(sql) = statements::of(self.backend).reopened_not_heads else {
            return Ok(());
        };
        if reopened.is_empty() {
            return Ok(());
        }
        #[derive(serde::Serialize)]
        struct Reopened<'a> {
            tenant: &'a str,
            recipient: &'a str,
            seq: i64,
        }
        let rows: Vec<Reopened> = reopened
            .iter()
            .map(|r| Reopened {
                tenant: r.tenant.as_str(),
                recipient: r.to.as_str(),
                seq: db(r.seq),
            })
            .collect();
        match self.count_json(sql, &rows).await? {
            0 => Ok(()),
            n => Err(TxError::Retry(format!(
                "{n} run(s) sent on again lost their conversation's place to a concurrent enqueue"
            ))),
        }
    }

    /// Makes the oldest waiting run of each conversation its head, where
    /// the conversation has none. Each conversation comes with a seq its
    /// next head must be past (the head that finished, or just before a
    /// run sent on again): nothing unfinished is older.
    pub(super) async fn promote(
        &mut self,
        conversations: &BTreeMap<(TenantId, Recipient), u64>,
    ) -> Tx<()> {
        #[derive(serde::Serialize)]
        struct Conversation<'a> {
            tenant: &'a str,
            recipient: &'a str,
            after: i64,
        }
        let json = serde_json::to_string(
            &conversations
                .iter()
                .map(|((tenant, to), after)| Conversation {
                    tenant: tenant.as_str(),
                    recipient: to.as_str(),
                    after: db(*after),
                })
                .collect::<Vec<_>>(),
        )
        .expect("conversations serialize");
        // One pass: on PostgreSQL the candidate is locked and re-checked
        // (promote.sql), and SQLite's one writer sees no concurrent change.
        let promoted = sqlx::query(statements::of(self.backend).promote)
            .bind(json)
            .execute(&mut *self.conn)
            .await?
            .rows_affected();
        if promoted > 0 {
            self.notify = true;
        }
        Ok(())
    }
}
