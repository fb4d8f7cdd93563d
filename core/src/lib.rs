//! The sans-IO heart of oncesend.
//!
//! Everything that decides *what happens* to a message lives here: the
//! domain types and their validation, the storage contract as data
//! ([`StoreOp`] / [`StoreReply`]), the reference store ([`MemStore`]), the
//! worker and engine state machines, the retry policy and the history
//! checker. Nothing here does I/O, reads a clock or draws randomness: time
//! comes in as `now_ms` arguments and randomness as seeds, so the very same
//! code runs inside the deterministic simulation and inside the daemons.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod engine;
pub mod flow;
/// Harnesses for the fuzz targets and their corpus replays; only with the
/// `fuzzing` feature, which `fuzz/` and this crate's own tests turn on.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ids;
pub mod limits;
pub mod message;
pub mod pacing;
pub mod provider_error;
pub mod receipt;
pub mod recipient;
pub mod retry;
pub mod rng;
pub mod send;
pub mod store;
pub mod template;
pub mod tenant;
pub mod worker;

pub use engine::{Engine, EngineConfig, EngineEffect, EngineEvent};
pub use flow::{plan_run, Flow, FlowStep, PlanError, RawFlowStep, StepMessage};
pub use ids::{DeliveryKey, FlowId, IdError, RunId, TenantId, WorkerId};
pub use message::{Message, MessageError, MessageTemplate};
pub use pacing::{Pacer, PacingConfig, TokenBucket};
pub use provider_error::{classify_cloud_api, CloudApiError, CloudApiExchange, ErrorClass};
pub use receipt::ReceiptStatus;
pub use recipient::{Recipient, RecipientError};
pub use retry::RetryPolicy;
pub use send::{
    DeliveryOutcome, OutboundMessage, SendBatch, SendBatchResponse, SendRequest, SendResponse,
};
pub use store::{
    ClaimedRun, DeliveryRecord, DeliveryState, FinishedCounts, Guards, Lease, MemStore, NewRun,
    PlannedStep, QueueStats, RunEvent, RunEventKind, RunStatus, RunView, StoreOp, StoreReply,
    StoreUnavailable,
};
pub use template::{Template, TemplateError};
pub use tenant::{CloudApiSettings, ProviderSettings, SenderPause, Tenant, TenantError};
pub use worker::{Worker, WorkerConfig, WorkerEffect, WorkerEvent};
