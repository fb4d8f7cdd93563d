//! Faults: what can go wrong, drawn from a seed or given as an explicit
//! schedule (which proptest generates and shrinks).

use crate::trace::{sim_ms, Shared};
use oncesend::worker::EngineClient;
use oncesend_core::rng::SplitMix64;
use oncesend_core::worker::EngineUnreachable;
use oncesend_core::{SendRequest, SendResponse};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A host of the simulation, as faults name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Node {
    /// The database.
    Db,
    /// The engine (with its embedded processor).
    Engine,
    /// A standalone worker, by index from 0.
    Worker(u8),
}

impl Node {
    /// The host's name.
    pub fn host(self) -> String {
        match self {
            Node::Db => "db".into(),
            Node::Engine => "engine".into(),
            Node::Worker(i) => format!("worker-{}", i + 1),
        }
    }
}

/// One kind of fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// No traffic between two hosts, both ways or from `a` to `b` only.
    Partition {
        /// One side.
        a: Node,
        /// The other.
        b: Node,
        /// Only `a` → `b` is cut.
        oneway: bool,
    },
    /// Messages between two hosts are held, then all released at once.
    Hold {
        /// One side.
        a: Node,
        /// The other.
        b: Node,
    },
    /// A host crashes, and is restarted when the fault ends.
    Crash {
        /// The host.
        node: Node,
    },
    /// The provider delivers but loses its replies.
    LoseReplies,
    /// A worker stops (as in a long pause) with its leases held; whatever
    /// it was about to send goes out only when it wakes.
    Pause {
        /// The worker, by index.
        worker: u8,
    },
    /// Links between two hosts fail at random.
    Loss {
        /// One side.
        a: Node,
        /// The other.
        b: Node,
    },
    /// The db's clock runs ahead (or behind) the others.
    Skew {
        /// Milliseconds of skew.
        skew_ms: i32,
    },
    /// The provider refuses the sender itself with this Cloud API code (an
    /// expired token, a payment problem, a block); when it heals, an
    /// operator resumes the paused sender.
    SenderBlocked {
        /// The error code.
        code: i64,
    },
    /// The db answers late: some answers after the caller gave up.
    SlowStore {
        /// How late.
        delay_ms: u64,
    },
    /// The provider answers after the engine's send timeout: the engine
    /// says unknown, then hears the late answer.
    SlowProvider {
        /// How late, past the timeout.
        delay_ms: u64,
    },
    /// The engine host's clock steps (an NTP correction), forward or back.
    ClockJump {
        /// By how much.
        by_ms: i32,
    },
}

impl FaultKind {
    /// The kind's name, for counters.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Partition { oneway: false, .. } => "partition",
            FaultKind::Partition { oneway: true, .. } => "partition_oneway",
            FaultKind::Hold { .. } => "hold",
            FaultKind::Crash { node: Node::Db } => "crash_db",
            FaultKind::Crash { node: Node::Engine } => "crash_engine",
            FaultKind::Crash {
                node: Node::Worker(_),
            } => "crash_worker",
            FaultKind::LoseReplies => "lost_reply",
            FaultKind::Pause { .. } => "pause",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Skew { .. } => "skew",
            FaultKind::SenderBlocked { .. } => "sender_blocked",
            FaultKind::SlowStore { .. } => "slow_store",
            FaultKind::SlowProvider { .. } => "late_reply",
            FaultKind::ClockJump { .. } => "clock_jump",
        }
    }
}

/// Every kind of fault, by name: each must fire in some seeds.
pub const FAULT_KINDS: [&str; 16] = [
    "latency",
    "partition",
    "partition_oneway",
    "hold",
    "crash_db",
    "crash_engine",
    "crash_worker",
    "lost_reply",
    "pause",
    "loss",
    "skew",
    "lease_rescue",
    "sender_blocked",
    "slow_store",
    "late_reply",
    "clock_jump",
];

/// Sender-level codes the simulated provider answers with: a token, a
/// permission, a payment and a temporary block.
pub const SENDER_BLOCK_CODES: [i64; 4] = [190, 200, 131042, 368];

/// A fault with its start and length in simulated time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// When it starts.
    pub at_ms: u64,
    /// How long it lasts.
    pub duration_ms: u64,
    /// What it is.
    pub kind: FaultKind,
}

impl FaultEvent {
    /// When it heals.
    pub fn heal_ms(&self) -> u64 {
        self.at_ms + self.duration_ms
    }
}

fn node(rng: &mut SplitMix64, workers: u8) -> Node {
    match rng.next_u64() % (2 + workers as u64) {
        0 => Node::Db,
        1 => Node::Engine,
        i => Node::Worker((i - 2) as u8),
    }
}

fn pair(rng: &mut SplitMix64, workers: u8) -> (Node, Node) {
    let a = node(rng, workers);
    loop {
        let b = node(rng, workers);
        if b != a {
            return (a, b);
        }
    }
}

/// Draws a schedule of faults from a seed: a handful of events in the
/// first `window_ms`, each healing within a few seconds. `lease_ms` sets
/// how long a pause lasts (past the lease, so another worker can claim).
pub fn schedule_from_seed(
    seed: u64,
    workers: u8,
    window_ms: u64,
    lease_ms: u64,
) -> Vec<FaultEvent> {
    let mut rng = SplitMix64::new(seed ^ 0xFA17_5EED);
    let n = 2 + rng.next_u64() % 6;
    let mut events = Vec::new();
    for _ in 0..n {
        let at_ms = rng.next_u64() % window_ms;
        let mut duration_ms = 200 + rng.next_u64() % 2_500;
        let kind = match rng.next_u64() % 14 {
            0 | 1 => {
                let (a, b) = pair(&mut rng, workers);
                FaultKind::Partition {
                    a,
                    b,
                    oneway: rng.next_u64().is_multiple_of(2),
                }
            }
            2 => {
                let (a, b) = pair(&mut rng, workers);
                FaultKind::Hold { a, b }
            }
            3 | 4 => FaultKind::Crash {
                node: node(&mut rng, workers),
            },
            5 => FaultKind::LoseReplies,
            6 | 7 if workers > 0 => {
                duration_ms = lease_ms + 500 + rng.next_u64() % lease_ms;
                FaultKind::Pause {
                    worker: (rng.next_u64() % workers as u64) as u8,
                }
            }
            8 => {
                let (a, b) = pair(&mut rng, workers);
                FaultKind::Loss { a, b }
            }
            9 => FaultKind::Skew {
                skew_ms: (rng.next_u64() % 1_200) as i32 - 400,
            },
            10 => FaultKind::SenderBlocked {
                code: SENDER_BLOCK_CODES[(rng.next_u64() % 4) as usize],
            },
            11 => FaultKind::SlowStore {
                delay_ms: 100 + rng.next_u64() % 800,
            },
            12 => FaultKind::SlowProvider {
                delay_ms: 50 + rng.next_u64() % 1_200,
            },
            _ => FaultKind::ClockJump {
                by_ms: (rng.next_u64() % 6_000) as i32 - 2_000,
            },
        };
        events.push(FaultEvent {
            at_ms,
            duration_ms,
            kind,
        });
    }
    events.sort_by_key(|e| e.at_ms);
    events
}

/// Holds a host's outbound requests while it is paused: the process has
/// decided to send, but is frozen before the bytes leave.
#[derive(Clone)]
pub struct Gate {
    shared: Shared,
    host: Option<String>,
    lease_ms: u64,
}

impl Gate {
    /// A gate for `host`.
    pub fn new(shared: Shared, host: &str, lease_ms: u64) -> Self {
        Self {
            shared,
            host: Some(host.to_string()),
            lease_ms,
        }
    }

    /// A gate that never closes.
    pub fn open(shared: Shared) -> Self {
        Self {
            shared,
            host: None,
            lease_ms: 0,
        }
    }

    /// Waits while the host is paused.
    pub async fn pass(&self) {
        let Some(host) = &self.host else { return };
        let start = sim_ms();
        while let Some(until) = self.shared.paused_until(host) {
            tokio::time::sleep(Duration::from_millis(until.saturating_sub(sim_ms()).max(1))).await;
        }
        if sim_ms() >= start + self.lease_ms {
            // A request decided under a lease went out after that lease
            // could have lapsed: the case fencing exists for.
            self.shared.fired("pause");
        }
    }
}

/// A worker's way to the engine, with its pause gate, and (for the
/// shrinking test only) a planted bug.
#[derive(Clone)]
pub struct GatedEngine<E> {
    /// The real client.
    pub inner: E,
    /// The worker's pause gate.
    pub gate: Gate,
    /// Test-only bug: treat an unknown outcome as retryable.
    pub planted_bug: bool,
}

impl<E: EngineClient> EngineClient for GatedEngine<E> {
    async fn send(&self, request: SendRequest) -> Result<SendResponse, EngineUnreachable> {
        self.gate.pass().await;
        let response = self.inner.send(request).await;
        match response {
            Ok(SendResponse::Unknown { reason }) if self.planted_bug => Ok(SendResponse::Failed {
                retryable: true,
                reason,
                retry_after_ms: None,
            }),
            other => other,
        }
    }
}
