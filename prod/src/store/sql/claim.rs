//! Claims: the due heads of conversations, leased in due order.

use super::batch::Batch;
use super::codec::{db, decode_err, run_from_row_with, run_id, un};
use super::statements::{postgres, sqlite};
use super::tx::Tx;
use super::Backend;
use oncesend_core::store::rules::{self, RunRecord};
use oncesend_core::store::RunWait;
use oncesend_core::{ClaimedRun, FlowId, Lease, Recipient, StoreReply, TenantId, WorkerId};
use sqlx::Row;

impl Batch<'_> {
    pub(super) async fn claim(
        &mut self,
        owner: WorkerId,
        max: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Tx<StoreReply> {
        let max = max.min(oncesend_core::limits::MAX_CLAIM_BATCH);
        if max == 0 {
            return Ok(StoreReply::Claimed(Vec::new()));
        }
        let until = now_ms.saturating_add(lease_ms);
        let mut events = Vec::new();
        let mut claimed: Vec<(u64, u64, ClaimedRun)> = match self.backend {
            Backend::Postgres => {
                // One statement; `postgres/claim.sql` says why it is safe.
                let rows = sqlx::query(postgres::CLAIM)
                    .bind(db(now_ms))
                    .bind(max as i64)
                    .bind(owner.as_str())
                    .bind(db(until))
                    .fetch_all(&mut *self.conn)
                    .await?;
                let rows = rows
                    .iter()
                    .map(|row| {
                        let steps: String = row.try_get("steps")?;
                        let id: Vec<u8> = row.try_get("id")?;
                        let claimed = ClaimedRun {
                            id: run_id(&id)?,
                            tenant: TenantId::new(row.try_get::<String, _>("tenant")?)
                                .map_err(|e| decode_err("tenant", e))?,
                            flow: FlowId::new(row.try_get::<String, _>("flow")?)
                                .map_err(|e| decode_err("flow", e))?,
                            to: Recipient::parse(&row.try_get::<String, _>("recipient")?)
                                .map_err(|e| decode_err("recipient", e))?,
                            steps: serde_json::from_str(&steps)
                                .map_err(|e| decode_err("steps", e))?,
                            cursor: un(row.try_get("next_step")?) as u32,
                            epoch: un(row.try_get("epoch")?),
                            lease_until_ms: until,
                            attempts: un(row.try_get("attempts")?) as u32,
                            rescued: row.try_get::<i64, _>("rescued")? != 0,
                            waited: match row.try_get::<Option<String>, _>("waited")? {
                                Some(w) => {
                                    Some(RunWait::parse(&w).ok_or_else(|| decode_err("wait", &w))?)
                                }
                                None => None,
                            },
                        };
                        claimed.assert_sound(un(row.try_get("step_count")?) as usize);
                        if claimed.rescued {
                            // The holder it was taken from, as the claim
                            // read it under the row's lock.
                            let from = Lease {
                                owner: WorkerId::new(row.try_get::<String, _>("was_owner")?)
                                    .map_err(|e| decode_err("lease owner", e))?,
                                epoch: claimed.epoch - 1,
                                until_ms: un(row.try_get("was_until_ms")?),
                            };
                            events.push((
                                claimed.id,
                                rules::rescue_event(
                                    &from,
                                    &owner,
                                    claimed.epoch,
                                    claimed.cursor,
                                    now_ms,
                                ),
                            ));
                        }
                        Ok((
                            un(row.try_get("run_at_ms")?),
                            un(row.try_get("seq")?),
                            claimed,
                        ))
                    })
                    .collect::<Tx<Vec<_>>>()?;
                // A step whose wait for the previous step's status ran out
                // goes anyway, and its run says so (rare: one more write).
                for (_, _, c) in &rows {
                    if let Some(RunWait::After(after)) = c.waited {
                        let note = rules::after_expired_note(
                            c.cursor,
                            after,
                            c.steps[c.cursor as usize].after_timeout(),
                        );
                        sqlx::query(postgres::SET_NOTE)
                            .bind(note)
                            .bind(c.id.0.as_bytes().to_vec())
                            .execute(&mut *self.conn)
                            .await?;
                    }
                }
                rows
            }
            Backend::Sqlite => {
                // The one writer holds the database under BEGIN IMMEDIATE:
                // read the due heads, lease them with the shared rules,
                // write them back.
                let rows = sqlx::query(sqlite::CLAIM)
                    .bind(db(now_ms))
                    .bind(max as i64)
                    .fetch_all(&mut *self.conn)
                    .await?;
                let mut before = Vec::with_capacity(rows.len());
                let mut after = Vec::with_capacity(rows.len());
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let record = run_from_row_with(row, Some(self.steps))?;
                    let mut leased = record.clone();
                    let claimed = leased.claim(&owner, lease_ms, now_ms, &mut events);
                    claimed.assert_sound(un(row.try_get("step_count")?) as usize);
                    out.push((record.run_at_ms, record.seq, claimed));
                    before.push(record);
                    after.push(leased);
                }
                let before: Vec<&RunRecord> = before.iter().collect();
                let after: Vec<&RunRecord> = after.iter().collect();
                self.write_runs(&before, &after).await?;
                out
            }
        };
        claimed.sort_by_key(|(run_at, seq, _)| (*run_at, *seq));
        // In the order the model records them: the claim's order.
        events.sort_by_key(|(id, _)| {
            claimed
                .iter()
                .position(|(_, _, c)| c.id == *id)
                .expect("events of claimed runs")
        });
        self.write_events(&events).await?;
        Ok(StoreReply::Claimed(
            claimed.into_iter().map(|(_, _, c)| c).collect(),
        ))
    }
}
