//! Pruning: finished runs past their retention, with their ledger rows and
//! trigger keys.

use super::batch::Batch;
use super::codec::db;
use super::statements::{self, common, postgres};
use super::tx::Tx;
use super::Backend;
use oncesend_core::StoreReply;
use sqlx::Row;

/// Rows per multi-row statement (well under both databases' parameter caps).
const CHUNK: usize = 400;

impl Batch<'_> {
    pub(super) async fn prune(
        &mut self,
        retention_ms: u64,
        max: u32,
        now_ms: u64,
    ) -> Tx<StoreReply> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let rows = sqlx::query(statements::of(self.backend).prunable_runs)
            .bind(db(cutoff))
            .bind(max as i64)
            .fetch_all(&mut *self.conn)
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        let mut keys = Vec::new();
        for row in &rows {
            ids.push(row.try_get::<Vec<u8>, _>(0)?);
            seqs.push(row.try_get::<i64, _>(3)?);
            if let Some(key) = row.try_get::<Option<String>, _>(2)? {
                keys.push((row.try_get::<String, _>(1)?, key));
            }
        }
        for chunk in ids.chunks(CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            // PostgreSQL lists the unknown ledger rows apart.
            let unknown = (self.backend == Backend::Postgres).then_some(postgres::PRUNE_UNKNOWN);
            let deletes = [
                common::PRUNE_DELIVERIES,
                common::PRUNE_RUN_EVENTS,
                common::PRUNE_RUNS,
            ];
            for delete in unknown.into_iter().chain(deletes) {
                let sql = statements::fill(delete, "ids", &marks.join(", "));
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(id.clone());
                }
                q.execute(&mut *self.conn).await?;
            }
        }
        if self.backend == Backend::Postgres {
            // Their entries in the list of finished runs go with them.
            for chunk in seqs.chunks(CHUNK) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = statements::fill(postgres::PRUNE_FINISHED, "seqs", &marks.join(", "));
                let mut q = sqlx::query(&sql);
                for seq in chunk {
                    q = q.bind(*seq);
                }
                q.execute(&mut *self.conn).await?;
            }
        }
        for chunk in keys.chunks(CHUNK) {
            let sql = statements::fill(common::PRUNE_TRIGGER_KEYS, "keys", &tuples(chunk.len(), 2));
            let mut q = sqlx::query(&sql);
            for (tenant, key) in chunk {
                q = q.bind(tenant.clone()).bind(key.clone());
            }
            q.execute(&mut *self.conn).await?;
        }
        Ok(StoreReply::Pruned {
            runs: ids.len() as u32,
        })
    }
}
/// `$from, $from+1, …` for one row of `width` values, as `($a, $b, …)`.
fn tuple(from: usize, width: usize) -> String {
    let cols: Vec<String> = (from..from + width).map(|i| format!("${i}")).collect();
    format!("({})", cols.join(", "))
}

/// `($1, …), ($k+1, …), …` for `rows` rows of `width` values.
fn tuples(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| tuple(r * width + 1, width))
        .collect::<Vec<_>>()
        .join(", ")
}
