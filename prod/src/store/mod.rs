//! Stores: the core's storage contract executed against real state.
//!
//! Every backend applies [`StoreOp`]s and answers [`StoreReply`]s exactly as
//! the core's `MemStore` does; the differential tests hold them to it.

pub mod group;
pub mod sql;

use oncesend_core::store::StoreUnavailable;
use oncesend_core::{MemStore, StoreOp, StoreReply};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// An async executor of the storage contract. Drivers (the engine, the
/// worker, the simulation's db host) hold one and never decide anything
/// themselves: they pass the core's ops through and feed the replies back.
pub trait Store: Clone + Send + Sync + 'static {
    /// Applies one op atomically. `Err` means the store could not be
    /// reached or did not answer; the op may or may not have been applied,
    /// and every op is safe to repeat.
    fn apply(
        &self,
        op: StoreOp,
    ) -> impl Future<Output = Result<StoreReply, StoreUnavailable>> + Send;

    /// Applies several ops, each atomically, in order. Backends override
    /// this to use one transaction or round trip for the lot.
    fn apply_batch(
        &self,
        ops: Vec<StoreOp>,
    ) -> impl Future<Output = Result<Vec<StoreReply>, StoreUnavailable>> + Send {
        async move {
            let mut replies = Vec::with_capacity(ops.len());
            for op in ops {
                replies.push(self.apply(op).await?);
            }
            Ok(replies)
        }
    }
}

/// The reference model behind a lock, for tests and the simulation.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemStore>>,
}

impl MemoryStore {
    /// Wraps a model.
    pub fn new(store: MemStore) -> Self {
        Self {
            inner: Arc::new(Mutex::new(store)),
        }
    }

    /// Applies an op synchronously.
    pub fn apply_now(&self, op: StoreOp) -> StoreReply {
        self.inner.lock().expect("model lock").apply(op)
    }
}

impl Store for MemoryStore {
    async fn apply(&self, op: StoreOp) -> Result<StoreReply, StoreUnavailable> {
        Ok(self.apply_now(op))
    }
}
