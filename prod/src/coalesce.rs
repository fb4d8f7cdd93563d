//! Coalescing: many concurrent single calls become a few batched ones.
//!
//! A [`Coalescer`] owns a task that takes calls off a queue. It waits for
//! the first call, then for a free slot (at most `in_flight` batches run at
//! once), then takes whatever else has queued meanwhile, up to `max_batch`,
//! and hands the lot to the batch function as one call. Under light load a
//! call goes out alone and at once; under heavy load calls queue while the
//! slots are busy and leave together, so the batch size follows the load
//! with no timer and no added wait.
//!
//! The store's group commit (many callers' writes in one transaction) and
//! the worker's batched sends to the engine (many sends in one HTTP
//! request) are both built on it.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How a coalescer batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceOptions {
    /// Most calls in one batch.
    pub max_batch: usize,
    /// Most batches running at once.
    pub in_flight: usize,
}

type Call<T, R> = (T, oneshot::Sender<R>);

/// Calls that may wait for a batch, per call the running batches can
/// hold: past that a caller waits to queue (back-pressure), so the queue
/// never grows without bound.
const QUEUED_PER_SLOT: usize = 2;

/// A queue of calls that leave in batches. Cheap to clone; the task stops
/// when the last clone is dropped and the batches it started have ended.
pub struct Coalescer<T, R> {
    tx: mpsc::Sender<Call<T, R>>,
}

impl<T, R> Clone for Coalescer<T, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Coalescer<T, R> {
    /// Starts the task on the current tokio runtime. `run` gets each batch
    /// in arrival order and must answer with one result per call, in the
    /// same order.
    pub fn spawn<F, Fut>(options: CoalesceOptions, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let slots = options.max_batch.max(1) * options.in_flight.max(1);
        let (tx, rx) = mpsc::channel(slots * QUEUED_PER_SLOT);
        tokio::spawn(pump(options, Arc::new(run), rx));
        Self { tx }
    }

    /// Queues one call and waits for its result. `None` when the batch it
    /// went out in was dropped before answering (its task panicked, or the
    /// runtime is shutting down).
    pub async fn call(&self, item: T) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((item, reply)).await.ok()?;
        rx.await.ok()
    }
}

async fn pump<T, R, F, Fut>(
    options: CoalesceOptions,
    run: Arc<F>,
    mut rx: mpsc::Receiver<Call<T, R>>,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let max_batch = options.max_batch.max(1);
    let slots = Arc::new(Semaphore::new(options.in_flight.max(1)));
    while let Some(first) = rx.recv().await {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut items = Vec::with_capacity(max_batch.min(64));
        let mut replies = Vec::with_capacity(max_batch.min(64));
        let (item, reply) = first;
        items.push(item);
        replies.push(reply);
        while items.len() < max_batch {
            match rx.try_recv() {
                Ok((item, reply)) => {
                    items.push(item);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let run = run.clone();
        tokio::spawn(async move {
            let n = items.len();
            let results = run(items).await;
            assert_eq!(results.len(), n, "a batch answers every call in it");
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn every_call_gets_its_own_answer() {
        let c = Coalescer::spawn(
            CoalesceOptions {
                max_batch: 8,
                in_flight: 2,
            },
            |xs: Vec<u32>| async move { xs.into_iter().map(|x| x * 10).collect::<Vec<_>>() },
        );
        let calls: Vec<_> = (0..100u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { (i, c.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, got) = call.await.expect("call task");
            assert_eq!(got, Some(i * 10));
        }
    }

    #[tokio::test]
    async fn calls_queued_behind_a_busy_slot_leave_together() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let (s, g) = (sizes.clone(), gate.clone());
        let c = Coalescer::spawn(
            CoalesceOptions {
                max_batch: 16,
                in_flight: 1,
            },
            move |xs: Vec<u32>| {
                let (s, g) = (s.clone(), g.clone());
                async move {
                    let first = s.lock().unwrap().is_empty();
                    s.lock().unwrap().push(xs.len());
                    if first {
                        // Hold the only slot until the rest have queued.
                        g.notified().await;
                    }
                    xs
                }
            },
        );
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.call(0).await }
        });
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // One poll of join_all queues all forty calls; only then does the
        // gate open, so they all wait behind the busy slot together.
        let mut rest = std::pin::pin!(futures_util::future::join_all(
            (1..=40u32).map(|i| c.call(i))
        ));
        assert!(futures_util::poll!(rest.as_mut()).is_pending());
        gate.notify_one();
        let rest = rest.await;
        assert_eq!(first.await.unwrap(), Some(0));
        assert_eq!(rest, (1..=40u32).map(Some).collect::<Vec<_>>());
        // One alone, then the forty in batches of at most 16.
        assert_eq!(*sizes.lock().unwrap(), vec![1, 16, 16, 8]);
    }

    #[tokio::test]
    async fn a_batch_that_panics_answers_none_and_the_next_still_runs() {
        let c = Coalescer::spawn(
            CoalesceOptions {
                max_batch: 4,
                in_flight: 1,
            },
            |xs: Vec<u32>| async move {
                assert!(!xs.contains(&13), "unlucky");
                xs
            },
        );
        assert_eq!(c.call(13).await, None);
        assert_eq!(c.call(7).await, Some(7));
    }
}
