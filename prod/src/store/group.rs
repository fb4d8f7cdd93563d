//! Group commit: concurrent writes from many callers share transactions.
//!
//! The engine writes the ledger (`BeginDelivery`, `FinishDelivery`) once
//! per send and the worker writes each run's progress (`Advance`,
//! `Complete`, …) once per step, each as its own `Store::apply`. With
//! hundreds of sends in flight, that is hundreds of commits a moment, each
//! waiting for its own flush. [`GroupCommit`] queues such writes and hands
//! whatever has gathered to the store as one `apply_batch`: one transaction
//! for the lot, each op still decided on its own, in arrival order, with the
//! same reply it would have had alone at that point.
//!
//! A batch that fails fails for every op in it, and each caller sees
//! `StoreUnavailable` exactly as if its own op had failed: the op may or may
//! not have been applied, and repeating it is safe. Nothing else changes for
//! the callers, so the core's machines do not know it is there.
//!
//! Two lanes: per-row writes, and enqueues (slower, a few statements each).
//! Everything else (claims, reads, admin) goes straight to the store.

use super::Store;
use crate::coalesce::{CoalesceOptions, Coalescer};
use oncesend_core::store::{rules, StoreUnavailable};
use oncesend_core::{StoreOp, StoreReply};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type Lane = Coalescer<StoreOp, Result<StoreReply, StoreUnavailable>>;

/// A [`Store`] that groups concurrent writes into shared transactions.
#[derive(Clone)]
pub struct GroupCommit<S> {
    inner: S,
    rows: Lane,
    enqueues: Lane,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    enqueue_batches: AtomicU64,
    batches: AtomicU64,
    shared: AtomicU64,
}

/// What a [`GroupCommit`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Batches handed to the store, both lanes.
    pub batches: u64,
    /// Of those, batches of two ops or more: writes that shared a
    /// transaction.
    pub shared: u64,
    /// Batches of the enqueue lane.
    pub enqueue_batches: u64,
}

/// Whether `op` is a write to one run or one ledger row: what this module
/// groups, and what the SQL store decides row by row with the core's rules.
pub fn is_row_write(op: &StoreOp) -> bool {
    rules::is_row_op(op)
}

impl<S: Store> GroupCommit<S> {
    /// Groups writes to `inner`: at most `options.max_batch` ops a
    /// transaction and `options.in_flight` transactions at once per lane.
    /// Must be called on a tokio runtime.
    pub fn new(inner: S, options: CoalesceOptions) -> Self {
        let counts = Arc::new(Counts::default());
        let lane = |inner: S, enqueues: bool| {
            let counts = counts.clone();
            Coalescer::spawn(options, move |ops: Vec<StoreOp>| {
                let inner = inner.clone();
                let n = ops.len();
                counts.batches.fetch_add(1, Ordering::Relaxed);
                if n > 1 {
                    counts.shared.fetch_add(1, Ordering::Relaxed);
                }
                if enqueues {
                    counts.enqueue_batches.fetch_add(1, Ordering::Relaxed);
                }
                async move {
                    match inner.apply_batch(ops).await {
                        Ok(replies) => {
                            assert_eq!(replies.len(), n, "a store answers every op of a batch");
                            replies.into_iter().map(Ok).collect()
                        }
                        Err(e) => vec![Err(e); n],
                    }
                }
            })
        };
        Self {
            rows: lane(inner.clone(), false),
            enqueues: lane(inner.clone(), true),
            counts,
            inner,
        }
    }

    /// Batches the enqueue lane has handed to the store so far.
    pub fn enqueue_batches(&self) -> u64 {
        self.counts.enqueue_batches.load(Ordering::Relaxed)
    }

    /// Its counters so far.
    pub fn stats(&self) -> GroupStats {
        GroupStats {
            batches: self.counts.batches.load(Ordering::Relaxed),
            shared: self.counts.shared.load(Ordering::Relaxed),
            enqueue_batches: self.enqueue_batches(),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for GroupCommit<S> {
    async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
        let lane = if is_row_write(&op) {
            &self.rows
        } else if matches!(op, StoreOp::Enqueue { .. } | StoreOp::Trigger { .. }) {
            &self.enqueues
        } else {
            return self.inner.apply(op).await;
        };
        lane.call(op).await.unwrap_or_else(|| {
            Err(StoreUnavailable(
                "the write's group commit was dropped before it answered".to_string(),
            ))
        })
    }

    async fn apply_batch(&self, ops: Vec<StoreOp>) -> Result<Vec<StoreReply>, StoreUnavailable> {
        self.inner.apply_batch(ops).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use oncesend_core::{
        ClaimedRun, DeliveryKey, DeliveryOutcome, FlowId, NewRun, PlannedStep, Recipient, RunId,
        TenantId, WorkerId,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const NOW: u64 = 1_000_000;

    /// Applies batches to the model, keeping every op and reply in the
    /// order the model saw them; fails every batch while `down` is set.
    #[derive(Clone, Default)]
    struct Recording {
        model: MemoryStore,
        log: Arc<Mutex<Vec<(StoreOp, StoreReply)>>>,
        batches: Arc<Mutex<Vec<usize>>>,
        down: Arc<AtomicBool>,
    }

    impl Store for Recording {
        async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
            Ok(self.apply_batch(vec![op]).await?.remove(0))
        }

        async fn apply_batch(
            &self,
            ops: Vec<StoreOp>,
        ) -> Result<Vec<StoreReply>, StoreUnavailable> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreUnavailable("down".into()));
            }
            self.batches.lock().unwrap().push(ops.len());
            let replies: Vec<StoreReply> = ops
                .iter()
                .map(|op| self.model.apply_now(op.clone()))
                .collect();
            let mut log = self.log.lock().unwrap();
            log.extend(ops.into_iter().zip(replies.iter().cloned()));
            Ok(replies)
        }
    }

    /// Forty runs in forty conversations, all claimed by one worker.
    fn setup(model: &MemoryStore) -> Vec<ClaimedRun> {
        for i in 0..40u64 {
            let run = NewRun {
                id: RunId::new(NOW, i + 1),
                tenant: TenantId::default_tenant(),
                flow: FlowId::new("f").unwrap(),
                to: Recipient::parse(&format!("+1555{i:08}")).unwrap(),
                steps: (0..3)
                    .map(|s| PlannedStep {
                        message: oncesend_core::Message::text(format!("m{s}")),
                        delay_ms: 0,
                        after: Default::default(),
                        after_timeout_ms: None,
                    })
                    .collect(),
                trigger_key: None,
            };
            model.apply_now(StoreOp::Enqueue { run, now_ms: NOW });
        }
        match model.apply_now(StoreOp::Claim {
            owner: WorkerId::new("w").unwrap(),
            max: 100,
            lease_ms: 60_000,
            now_ms: NOW,
        }) {
            StoreReply::Claimed(runs) => runs,
            other => panic!("claim answered {other:?}"),
        }
    }

    /// What one run's sender does, step by step: begin, finish, move on.
    /// Every fifth run writes with a stale epoch and is fenced.
    async fn drive(
        store: GroupCommit<Recording>,
        run: ClaimedRun,
        stale: bool,
    ) -> Vec<(StoreOp, StoreReply)> {
        let epoch = if stale { run.epoch - 1 } else { run.epoch };
        let mut seen = Vec::new();
        for step in 0..3u32 {
            let key = DeliveryKey { run: run.id, step };
            let ops = [
                StoreOp::BeginDelivery {
                    key,
                    epoch,
                    send_timeout_ms: 10_000,
                    now_ms: NOW,
                },
                StoreOp::FinishDelivery {
                    key,
                    outcome: DeliveryOutcome::Sent {
                        provider_message_id: format!("p{step}"),
                    },
                    now_ms: NOW,
                },
                if step == 2 {
                    StoreOp::Complete {
                        run: run.id,
                        epoch,
                        step,
                        now_ms: NOW,
                    }
                } else {
                    StoreOp::Advance {
                        run: run.id,
                        epoch,
                        step,
                        delay_ms: None,
                        now_ms: NOW,
                    }
                },
            ];
            for op in ops {
                let reply = store.apply(op.clone()).await.expect("the store is up");
                seen.push((op, reply));
            }
        }
        seen
    }

    #[tokio::test]
    async fn concurrent_writes_share_batches_and_get_the_replies_of_that_order() {
        let rec = Recording::default();
        let runs = setup(&rec.model);
        assert_eq!(runs.len(), 40);
        let group = GroupCommit::new(
            rec.clone(),
            CoalesceOptions {
                max_batch: 16,
                in_flight: 1,
            },
        );
        let seen: Vec<Vec<(StoreOp, StoreReply)>> = futures_util::future::join_all(
            runs.iter()
                .enumerate()
                .map(|(i, r)| drive(group.clone(), r.clone(), i % 5 == 0)),
        )
        .await;

        // Every reply a caller got is the one the model gave that op in the
        // batch order; replaying that order on a fresh model gives the same.
        let log = rec.log.lock().unwrap().clone();
        assert_eq!(log.len(), 40 * 9);
        for (op, reply) in seen.iter().flatten() {
            let logged: Vec<_> = log.iter().filter(|(o, _)| o == op).collect();
            assert_eq!(logged.len(), 1, "{op:?} applied once");
            assert_eq!(&logged[0].1, reply, "{op:?}");
        }
        let fresh = MemoryStore::default();
        setup(&fresh);
        for (op, reply) in &log {
            assert_eq!(&fresh.apply_now(op.clone()), reply, "replaying {op:?}");
        }
        // The stale writers were fenced, the others completed.
        let fenced = seen
            .iter()
            .flatten()
            .filter(|(_, r)| matches!(r, StoreReply::Fenced))
            .count();
        assert!(fenced >= 8, "{fenced} fenced replies");
        let completed = seen
            .iter()
            .flatten()
            .filter(|(_, r)| matches!(r, StoreReply::Completed))
            .count();
        assert_eq!(completed, 32);

        // 360 writes went out in far fewer transactions, none over 16.
        let batches = rec.batches.lock().unwrap().clone();
        assert!(batches.iter().all(|&n| n <= 16), "{batches:?}");
        assert!(
            batches.len() * 4 <= 360,
            "{} batches for 360 writes",
            batches.len()
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_write_in_it_and_reads_pass_through() {
        let rec = Recording::default();
        let runs = setup(&rec.model);
        let group = GroupCommit::new(
            rec.clone(),
            CoalesceOptions {
                max_batch: 64,
                in_flight: 1,
            },
        );
        rec.down.store(true, Ordering::SeqCst);
        let writes = runs.iter().map(|r| {
            group.apply(StoreOp::Advance {
                run: r.id,
                epoch: r.epoch,
                step: 0,
                delay_ms: None,
                now_ms: NOW,
            })
        });
        let results = futures_util::future::join_all(writes).await;
        assert!(results
            .iter()
            .all(|r| r == &Err(StoreUnavailable("down".into()))));
        assert!(rec.log.lock().unwrap().is_empty());
        // Reads and claims are not grouped; they reach the store as they are.
        rec.down.store(false, Ordering::SeqCst);
        let view = group
            .apply(StoreOp::GetRun { run: runs[0].id })
            .await
            .unwrap();
        match view {
            StoreReply::Run(v) => assert_eq!(v.cursor, 0, "nothing was applied"),
            other => panic!("{other:?}"),
        }
        assert_eq!(*rec.batches.lock().unwrap(), vec![1]);
    }
}
