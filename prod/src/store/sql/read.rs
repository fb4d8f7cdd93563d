//! Reading runs: one run with its ledger, lists of runs, and the queue's
//! figures.

use super::batch::Batch;
use super::codec::{db, decode_err, run_from_row, un};
use super::statements::{self, common};
use super::tx::Tx;
use super::Backend;
use oncesend_core::store::{FinishedCounts, QueueStats, RunFilter};
use oncesend_core::{DeliveryKey, RunId, RunStatus, StoreReply};
use sqlx::Row;
use std::collections::BTreeSet;

impl Batch<'_> {
    pub(super) async fn get_run(&mut self, run: RunId) -> Tx<StoreReply> {
        let ids = BTreeSet::from([run]);
        let Some(record) = self.load_runs(&ids, false).await?.remove(&run) else {
            return Ok(StoreReply::NotFound);
        };
        let mut ledger = self.load_deliveries(&ids, false).await?;
        let deliveries = (0..record.steps.len() as u32)
            .map(|step| ledger.remove(&DeliveryKey { run, step }))
            .collect();
        let events = self.load_events(run).await?;
        Ok(StoreReply::Run(record.view(deliveries, events)))
    }

    pub(super) async fn list_runs(
        &mut self,
        status: Option<RunStatus>,
        filter: &RunFilter,
        limit: u32,
    ) -> Tx<StoreReply> {
        let mut conds: Vec<String> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut nums: Vec<i64> = Vec::new();
        let mark = |conds: &mut Vec<String>, sql: &dyn Fn(usize) -> String| {
            let n = conds.len() + 1;
            conds.push(sql(n));
        };
        // Text conditions first, then numbers, each bound in that order.
        if let Some(s) = status {
            mark(&mut conds, &|n| format!("status = ${n}"));
            texts.push(s.as_str().to_string());
        }
        if let Some(f) = &filter.flow {
            mark(&mut conds, &|n| format!("flow = ${n}"));
            texts.push(f.as_str().to_string());
        }
        if let Some(t) = &filter.tenant {
            mark(&mut conds, &|n| format!("tenant = ${n}"));
            texts.push(t.as_str().to_string());
        }
        if let Some(r) = &filter.reason_contains {
            let backend = self.backend;
            mark(&mut conds, &|n| match backend {
                Backend::Postgres => format!("strpos(reason, ${n}) > 0"),
                Backend::Sqlite => format!("instr(reason, ${n}) > 0"),
            });
            texts.push(r.clone());
        }
        if let Some(to) = &filter.to {
            mark(&mut conds, &|n| format!("recipient = ${n}"));
            texts.push(to.as_str().to_string());
        }
        if let Some(t) = filter.created_before_ms {
            mark(&mut conds, &|n| format!("created_at_ms < ${n}"));
            nums.push(db(t));
        }
        if let Some(t) = filter.created_after_ms {
            mark(&mut conds, &|n| format!("created_at_ms > ${n}"));
            nums.push(db(t));
        }
        if let Some(s) = filter.before_seq {
            mark(&mut conds, &|n| format!("seq < ${n}"));
            nums.push(db(s));
        }
        let limit_mark = conds.len() + 1;
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = statements::fill(common::LIST_RUNS, "where", &where_);
        let sql = statements::fill(&sql, "limit", &format!("${limit_mark}"));
        let mut q = sqlx::query(&sql);
        for t in texts {
            q = q.bind(t);
        }
        for n in nums {
            q = q.bind(n);
        }
        let rows = q.bind(limit as i64).fetch_all(&mut *self.conn).await?;
        let views = rows
            .iter()
            .map(|row| Ok(run_from_row(row)?.view(Vec::new(), Vec::new())))
            .collect::<Tx<Vec<_>>>()?;
        Ok(StoreReply::Runs(views))
    }

    pub(super) async fn count_finished(&mut self, limit: u32) -> Tx<StoreReply> {
        let rows = sqlx::query(statements::of(self.backend).count_finished)
            .bind(limit as i64)
            .fetch_all(&mut *self.conn)
            .await?;
        let mut c = FinishedCounts {
            limit,
            ..Default::default()
        };
        for row in rows {
            let n = un(row.try_get(1)?);
            match RunStatus::parse(&row.try_get::<String, _>(0)?) {
                Some(RunStatus::Completed) => c.completed = n,
                Some(RunStatus::Failed) => c.failed = n,
                Some(RunStatus::Cancelled) => c.cancelled = n,
                other => return Err(decode_err("finished status", format!("{other:?}"))),
            }
        }
        Ok(StoreReply::FinishedCounts(c))
    }

    pub(super) async fn stats(&mut self, now_ms: u64) -> Tx<StoreReply> {
        let row = sqlx::query(statements::of(self.backend).stats)
            .bind(db(now_ms))
            .fetch_one(&mut *self.conn)
            .await?;
        let oldest: Option<i64> = row.try_get(3)?;
        let unknown: i64 = sqlx::query(statements::of(self.backend).count_unknown)
            .fetch_one(&mut *self.conn)
            .await?
            .try_get(0)?;
        Ok(StoreReply::Stats(QueueStats {
            pending: un(row.try_get(0)?),
            due: un(row.try_get(1)?),
            leased: un(row.try_get(2)?),
            waiting: un(row.try_get(4)?),
            oldest_due_age_ms: oldest.map_or(0, |t| now_ms.saturating_sub(un(t))),
            unknown_deliveries: un(unknown),
        }))
    }
}
