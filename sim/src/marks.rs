//! The marks the race page draws (`--html`): which host read, claimed,
//! wrote and sent which run step when, and each message the provider took.
//!
//! Marks are recorded only when a page is asked for. A seed run without
//! one pays a branch on an empty `Option` per event and allocates nothing
//! for it: the long runs of thousands of seeds stay as fast as before.
//! Recording reads the simulation's state but never changes it, draws no
//! random number and sleeps nowhere, so a seed gives the same history with
//! and without marks.

use crate::fault::{FaultEvent, FaultKind, Node};
use oncesend_core::store::RunView;
use oncesend_core::{DeliveryKey, StoreOp, StoreReply};
use std::sync::{Arc, Mutex};

/// The lane of the provider: what reached the recipient.
pub const PROVIDER_LANE: &str = "WhatsApp";
/// The lane of the client that triggers runs.
pub const CLIENT_LANE: &str = "client";

/// What a mark shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkKind {
    /// Rows read to be sent (the old system's `SELECT … WHERE status = 'pending'`).
    Read,
    /// A lease taken on a run (the new design's claim, which reads and
    /// locks in one step).
    Claim,
    /// A write that went through.
    Write,
    /// A step handed to the provider (old system), or `sending` recorded in
    /// the ledger just before the provider call (new design).
    Send,
    /// The provider took a message. `call` counts the calls it took for the
    /// same run step before this one: 0 for the first.
    Deliver {
        /// Earlier calls for the same key.
        call: u32,
    },
    /// A stale lease holder's write or send, refused by its epoch: nothing
    /// changed.
    Fenced,
    /// The ledger already held the step and answered without sending.
    Replay,
    /// A fault the simulation injected (it touches no run step).
    Fault,
}

impl MarkKind {
    /// Whether this mark is one of the new design's guards stopping a
    /// second send or a stale write.
    pub fn stopped(self) -> bool {
        matches!(self, MarkKind::Fenced | MarkKind::Replay)
    }
}

/// One thing a host did, at a simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Simulated ms since the simulation began.
    pub at_ms: u64,
    /// The host (or, in the old system, the processor) that did it.
    pub lane: String,
    /// The lease epoch it was done under: a claim's, and the one a send
    /// carries. It ties a send the engine records to the claim (and so the
    /// worker) it was made for.
    pub epoch: Option<u64>,
    /// What it was.
    pub kind: MarkKind,
    /// The run steps it touched (a read may touch many).
    pub keys: Vec<DeliveryKey>,
    /// What happened, in words (may hold message text: escape it).
    pub text: String,
}

/// Where marks go: nowhere unless the page was asked for.
#[derive(Clone, Default)]
pub struct Marks(Option<Arc<Mutex<Vec<Mark>>>>);

impl Marks {
    /// A recorder that keeps every mark.
    pub fn recording() -> Self {
        Self(Some(Arc::default()))
    }

    /// Whether marks are kept: callers build what a mark needs (a clone
    /// of an op, a lookup) only when this is true.
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// Keeps the mark `make` builds; without a recorder `make` never runs.
    pub fn add(&self, make: impl FnOnce() -> Mark) {
        if let Some(marks) = &self.0 {
            let mark = make();
            marks.lock().expect("marks lock").push(mark);
        }
    }

    /// Every mark so far, in the order they were made.
    pub fn take(&self) -> Vec<Mark> {
        self.0
            .as_ref()
            .map(|m| std::mem::take(&mut *m.lock().expect("marks lock")))
            .unwrap_or_default()
    }
}

/// Why a holder's write with `epoch` was refused, from the run as the
/// store saw it just before (at store time `now_ms`).
fn why_fenced(run: Option<&RunView>, epoch: u64, now_ms: u64) -> String {
    let Some(v) = run else {
        return "the run is gone".to_string();
    };
    match &v.lease {
        Some(l) if l.epoch != epoch => format!(
            "the run was claimed again since (epoch {}, by {})",
            l.epoch, l.owner
        ),
        Some(l) if l.until_ms <= now_ms => format!(
            "its lease (epoch {epoch}) had lapsed {} ms before",
            now_ms - l.until_ms
        ),
        Some(_) => "its lease was live, yet the store refused it".to_string(),
        None if v.epoch != epoch => format!(
            "the run was claimed again since (epoch {}) and is now {}",
            v.epoch,
            v.status.as_str()
        ),
        None => format!(
            "its lease (epoch {epoch}) was gone: the run is {}",
            v.status.as_str()
        ),
    }
}

/// The step a run-level op was about: the run's cursor, or its last step
/// once it has finished (the cursor then counts past the end).
fn step_of(run: Option<&RunView>) -> u32 {
    run.map_or(0, |v| v.cursor.min(v.steps.len().saturating_sub(1) as u32))
}

/// The marks for a store op the db host applied for `lane` at simulated
/// `at_ms` (store time `now_ms`), if the page draws that op. `before` is
/// the op's run as it stood before the op, read only while recording, to
/// say whose lease a fenced writer had lost.
pub fn of_store_op(
    at_ms: u64,
    now_ms: u64,
    lane: &str,
    op: &StoreOp,
    reply: &StoreReply,
    before: Option<&RunView>,
) -> Vec<Mark> {
    let mark = |kind, keys: Vec<DeliveryKey>, text: String| Mark {
        at_ms,
        lane: lane.to_string(),
        epoch: None,
        kind,
        keys,
        text,
    };
    let key = |run, step| DeliveryKey { run, step };
    let fenced = |what: &str, keys, epoch: u64| {
        mark(
            MarkKind::Fenced,
            keys,
            format!(
                "{what} with lease epoch {epoch} refused, nothing changed: {}",
                why_fenced(before, epoch, now_ms)
            ),
        )
    };
    match (op, reply) {
        (_, StoreReply::Enqueued { run, created: true }) => {
            vec![mark(
                MarkKind::Write,
                vec![key(*run, 0)],
                "run enqueued".into(),
            )]
        }
        (StoreOp::Claim { .. }, StoreReply::Claimed(runs)) => runs
            .iter()
            .map(|r| Mark {
                epoch: Some(r.epoch),
                ..mark(
                    MarkKind::Claim,
                    vec![key(r.id, r.cursor)],
                    format!(
                        "claimed, lease epoch {}{}",
                        r.epoch,
                        if r.rescued {
                            " (the last holder's lease had lapsed)"
                        } else {
                            ""
                        }
                    ),
                )
            })
            .collect(),
        (StoreOp::BeginDelivery { key, epoch, .. }, reply) => {
            let keys = vec![*key];
            let marks = match reply {
                StoreReply::Begun { attempt, .. } => vec![mark(
                    MarkKind::Send,
                    keys,
                    format!("ledger: sending (attempt {attempt}, lease epoch {epoch}); calls the provider"),
                )],
                StoreReply::AlreadySent { provider_message_id } => vec![mark(
                    MarkKind::Replay,
                    keys,
                    format!("asked again: the ledger holds it sent ({provider_message_id}); answered that, sent nothing"),
                )],
                StoreReply::InProgress => vec![mark(
                    MarkKind::Replay,
                    keys,
                    "asked again: the ledger holds a send of it under way; sent nothing".into(),
                )],
                StoreReply::DeliveryUnknown => vec![mark(
                    MarkKind::Replay,
                    keys,
                    "asked again: the ledger holds its outcome unknown; not sent blindly again".into(),
                )],
                StoreReply::Fenced => vec![fenced("send", keys, *epoch)],
                _ => Vec::new(),
            };
            marks
                .into_iter()
                .map(|m| Mark {
                    epoch: Some(*epoch),
                    ..m
                })
                .collect()
        }
        (StoreOp::FinishDelivery { key, .. }, StoreReply::Finished(state)) => vec![mark(
            MarkKind::Write,
            vec![*key],
            format!("ledger: {}", state.as_str()),
        )],
        (StoreOp::Advance { run, step, .. }, StoreReply::Advanced { cursor, .. }) => vec![mark(
            MarkKind::Write,
            vec![key(*run, *step)],
            format!("step done; next step {cursor}"),
        )],
        (StoreOp::Complete { run, step, .. }, StoreReply::Completed) => vec![mark(
            MarkKind::Write,
            vec![key(*run, *step)],
            "run completed".into(),
        )],
        (StoreOp::Fail { run, reason, .. }, StoreReply::Failed { dead }) => vec![mark(
            MarkKind::Write,
            vec![key(*run, step_of(before))],
            format!(
                "{}: {reason}",
                if *dead { "run failed" } else { "will retry" }
            ),
        )],
        (StoreOp::AwaitOutcome { run, step, .. }, StoreReply::RunIs { status }) => vec![mark(
            MarkKind::Write,
            vec![key(*run, *step)],
            format!("outcome unknown; run is {}", status.as_str()),
        )],
        (
            StoreOp::Advance {
                run, epoch, step, ..
            },
            StoreReply::Fenced,
        )
        | (
            StoreOp::Complete {
                run, epoch, step, ..
            },
            StoreReply::Fenced,
        )
        | (
            StoreOp::AwaitOutcome {
                run, epoch, step, ..
            },
            StoreReply::Fenced,
        ) => {
            vec![fenced("write", vec![key(*run, *step)], *epoch)]
        }
        (StoreOp::Fail { run, epoch, .. }, StoreReply::Fenced)
        | (StoreOp::Release { run, epoch, .. }, StoreReply::Fenced)
        | (StoreOp::Heartbeat { run, epoch, .. }, StoreReply::Fenced) => {
            vec![fenced("write", vec![key(*run, step_of(before))], *epoch)]
        }
        _ => Vec::new(),
    }
}

/// The mark for a fault as it starts, at simulated `at_ms`, in the lane of
/// the host it strikes (the db's and the provider's own faults get lanes
/// of their own).
pub fn of_fault(at_ms: u64, e: &FaultEvent) -> Mark {
    let until = format!("until t={} ms", e.heal_ms());
    let (lane, text) = match &e.kind {
        FaultKind::Partition { a, b, oneway } => (
            a.host(),
            format!(
                "cut off from {}{} {until}",
                b.host(),
                if *oneway { " (one way)" } else { "" }
            ),
        ),
        FaultKind::Hold { a, b } => (a.host(), format!("traffic with {} held {until}", b.host())),
        FaultKind::Loss { a, b } => (
            a.host(),
            format!("5% of packets to {} lost {until}", b.host()),
        ),
        FaultKind::Crash { node } => (
            node.host(),
            format!("crashed; restarts at t={} ms", e.heal_ms()),
        ),
        FaultKind::Pause { worker } => (Node::Worker(*worker).host(), format!("paused {until}")),
        FaultKind::Skew { skew_ms } => ("db".into(), format!("clock off by {skew_ms} ms {until}")),
        FaultKind::SlowStore { delay_ms } => {
            ("db".into(), format!("answers {delay_ms} ms late {until}"))
        }
        FaultKind::ClockJump { by_ms } => {
            ("engine".into(), format!("clock steps {by_ms} ms {until}"))
        }
        FaultKind::LoseReplies => (PROVIDER_LANE.into(), format!("loses its replies {until}")),
        FaultKind::SlowProvider { delay_ms } => (
            PROVIDER_LANE.into(),
            format!("answers {delay_ms} ms past the send timeout {until}"),
        ),
        FaultKind::SenderBlocked { code } => (
            PROVIDER_LANE.into(),
            format!("refuses the sender with error {code} {until}"),
        ),
    };
    Mark {
        at_ms,
        lane,
        epoch: None,
        kind: MarkKind::Fault,
        keys: Vec::new(),
        text,
    }
}

/// The run an op names, whose state before the op a fenced mark reports.
pub fn run_of_op(op: &StoreOp) -> Option<oncesend_core::RunId> {
    match op {
        StoreOp::BeginDelivery { key, .. } => Some(key.run),
        StoreOp::Advance { run, .. }
        | StoreOp::Complete { run, .. }
        | StoreOp::Fail { run, .. }
        | StoreOp::Release { run, .. }
        | StoreOp::Heartbeat { run, .. }
        | StoreOp::AwaitOutcome { run, .. } => Some(*run),
        _ => None,
    }
}
