//! Recipients: opt-outs (which cancel their open runs), opt-ins, and the
//! time of their last inbound message.

use super::batch::Batch;
use super::codec::{db, decode_err, run_id, un};
use super::statements::{self, common};
use super::tx::Tx;
use oncesend_core::store::rules::{self, RunRecord};
use oncesend_core::store::{RecipientInfo, Suppression};
use oncesend_core::{Recipient, RunId, StoreReply, TenantId};
use sqlx::Row;
use std::collections::BTreeSet;

impl Batch<'_> {
    /// Records an opt-out and cancels the recipient's unfinished runs, in
    /// this transaction: a send begun after it commits finds its run
    /// cancelled and is refused by the fence.
    pub(super) async fn suppress(
        &mut self,
        tenant: TenantId,
        to: Recipient,
        reason: String,
        now_ms: u64,
    ) -> Tx<StoreReply> {
        let newly = sqlx::query(common::SUPPRESS)
            .bind(tenant.as_str())
            .bind(to.as_str())
            .bind(db(now_ms))
            .bind(oncesend_core::limits::clip_reason(&reason))
            .execute(&mut *self.conn)
            .await?
            .rows_affected()
            > 0;
        let rows = sqlx::query(common::OPEN_RUNS_OF_RECIPIENT)
            .bind(tenant.as_str())
            .bind(to.as_str())
            .fetch_all(&mut *self.conn)
            .await?;
        let ids = rows
            .iter()
            .map(|row| run_id(&row.try_get::<Vec<u8>, _>(0)?))
            .collect::<Tx<BTreeSet<RunId>>>()?;
        let before = self.load_runs(&ids, true).await?;
        let mut after = before.clone();
        let mut cancelled = 0;
        for row in after.values_mut() {
            cancelled += u32::from(rules::opt_out(row, now_ms));
        }
        let (old, new): (Vec<&RunRecord>, Vec<&RunRecord>) = before
            .values()
            .zip(after.values())
            .filter(|(b, a)| b != a)
            .unzip();
        self.write_runs(&old, &new).await?;
        Ok(StoreReply::Suppressed { newly, cancelled })
    }

    pub(super) async fn unsuppress(&mut self, tenant: TenantId, to: Recipient) -> Tx<StoreReply> {
        let done = sqlx::query(common::UNSUPPRESS)
            .bind(tenant.as_str())
            .bind(to.as_str())
            .execute(&mut *self.conn)
            .await?;
        Ok(StoreReply::Unsuppressed {
            was_suppressed: done.rows_affected() > 0,
        })
    }

    pub(super) async fn get_recipient(
        &mut self,
        tenant: TenantId,
        to: Recipient,
    ) -> Tx<StoreReply> {
        let row = sqlx::query(common::GET_RECIPIENT)
            .bind(tenant.as_str())
            .bind(to.as_str())
            .fetch_optional(&mut *self.conn)
            .await?;
        let Some(row) = row else {
            return Ok(StoreReply::RecipientIs(RecipientInfo::default()));
        };
        let since: Option<i64> = row.try_get(1)?;
        let reason: Option<String> = row.try_get(2)?;
        Ok(StoreReply::RecipientIs(RecipientInfo {
            last_inbound_ms: row.try_get::<Option<i64>, _>(0)?.map(un),
            suppressed: since.map(|s| Suppression {
                since_ms: un(s),
                reason: reason.unwrap_or_default(),
            }),
        }))
    }

    pub(super) async fn list_suppressed(
        &mut self,
        tenant: TenantId,
        after: Option<Recipient>,
        limit: u32,
    ) -> Tx<StoreReply> {
        let rows = sqlx::query(common::LIST_SUPPRESSED)
            .bind(tenant.as_str())
            .bind(after.as_ref().map_or("", |a| a.as_str()))
            .bind(limit as i64)
            .fetch_all(&mut *self.conn)
            .await?;
        let list = rows
            .iter()
            .map(|row| {
                let to = Recipient::parse(&row.try_get::<String, _>(0)?)
                    .map_err(|e| decode_err("recipient", e))?;
                Ok((
                    to,
                    Suppression {
                        since_ms: un(row.try_get(1)?),
                        reason: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                    },
                ))
            })
            .collect::<Tx<Vec<_>>>()?;
        Ok(StoreReply::Suppressions(list))
    }

    pub(super) async fn record_inbound(
        &mut self,
        tenant: TenantId,
        to: Recipient,
        now_ms: u64,
    ) -> Tx<StoreReply> {
        sqlx::query(statements::of(self.backend).record_inbound)
            .bind(tenant.as_str())
            .bind(to.as_str())
            .bind(db(now_ms))
            .execute(&mut *self.conn)
            .await?;
        Ok(StoreReply::InboundRecorded)
    }
}
