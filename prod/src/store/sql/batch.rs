//! One transaction's ops: consecutive row writes and consecutive enqueues
//! are applied set-wise, everything else one op at a time.

use super::codec::StepsCache;
use super::tx::Tx;
use super::Backend;
use crate::store::group::is_row_write;
use oncesend_core::{RunId, StoreOp, StoreReply};
use sqlx::AnyConnection;
use std::collections::BTreeSet;

/// One transaction's worth of ops.
pub(super) struct Batch<'c> {
    pub conn: &'c mut AnyConnection,
    pub backend: Backend,
    /// Something became claimable: tell listening workers at commit.
    pub notify: bool,
    /// PostgreSQL: the runs loaded for writing that head their
    /// conversation, whose claim state is their `heads` row.
    pub heads: BTreeSet<RunId>,
    /// The store's decoded messages, by run.
    pub steps: &'c StepsCache,
}

fn is_enqueue(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Enqueue { .. } | StoreOp::Trigger { .. })
}

impl Batch<'_> {
    pub(super) async fn apply_all(&mut self, ops: Vec<StoreOp>) -> Tx<Vec<StoreReply>> {
        let mut replies = Vec::with_capacity(ops.len());
        let mut ops = ops.into_iter().peekable();
        while let Some(op) = ops.next() {
            if is_row_write(&op) {
                let mut segment = vec![op];
                while let Some(next) = ops.next_if(is_row_write) {
                    segment.push(next);
                }
                replies.extend(self.rows(segment).await?);
            } else if is_enqueue(&op) {
                let mut segment = vec![op];
                while let Some(next) = ops.next_if(is_enqueue) {
                    segment.push(next);
                }
                replies.extend(self.enqueue(segment).await?);
            } else {
                replies.push(self.one(op).await?);
            }
        }
        Ok(replies)
    }

    async fn one(&mut self, op: StoreOp) -> Tx<StoreReply> {
        match op {
            StoreOp::PutFlow { tenant, flow } => self.put_flow(tenant, flow).await,
            StoreOp::GetFlow { tenant, flow } => self.get_flow(tenant, flow).await,
            StoreOp::ListFlows { after, limit } => self.list_flows(after, limit).await,
            StoreOp::PutTenant { tenant } => self.put_tenant(tenant).await,
            StoreOp::GetTenant { tenant } => self.get_tenant(tenant).await,
            StoreOp::Claim {
                owner,
                max,
                lease_ms,
                now_ms,
            } => self.claim(owner, max, lease_ms, now_ms).await,
            StoreOp::PauseSender {
                tenant,
                reason,
                code,
                temporary,
                settings,
                now_ms,
            } => {
                self.pause_sender(tenant, reason, code, temporary, settings, now_ms)
                    .await
            }
            StoreOp::ResumeSender { tenant } => Ok(StoreReply::Resumed {
                was_paused: self.delete_pause(&tenant).await?,
            }),
            StoreOp::GetSender { tenant } => Ok(StoreReply::Sender(
                self.load_pauses(std::slice::from_ref(&tenant))
                    .await?
                    .remove(&tenant),
            )),
            StoreOp::ListPausedSenders => self.list_paused_senders().await,
            StoreOp::ListTenants => self.list_tenants().await,
            StoreOp::Suppress {
                tenant,
                to,
                reason,
                now_ms,
            } => self.suppress(tenant, to, reason, now_ms).await,
            StoreOp::Unsuppress { tenant, to } => self.unsuppress(tenant, to).await,
            StoreOp::GetRecipient { tenant, to } => self.get_recipient(tenant, to).await,
            StoreOp::ListSuppressed {
                tenant,
                after,
                limit,
            } => self.list_suppressed(tenant, after, limit).await,
            StoreOp::RecordInbound { tenant, to, now_ms } => {
                self.record_inbound(tenant, to, now_ms).await
            }
            StoreOp::GetRun { run } => self.get_run(run).await,
            StoreOp::ListRuns {
                status,
                filter,
                limit,
            } => self.list_runs(status, &filter, limit).await,
            StoreOp::Stats { now_ms } => self.stats(now_ms).await,
            StoreOp::CountFinished { limit } => self.count_finished(limit).await,
            StoreOp::Prune {
                retention_ms,
                max,
                now_ms,
            } => self.prune(retention_ms, max, now_ms).await,
            other => unreachable!("{} is a row op", other.name()),
        }
    }
}
