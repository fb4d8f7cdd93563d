//! The body of the `sim_schedule` fuzz target. It lives here so `cargo
//! test` replays `fuzz/corpus/sim_schedule/` without libFuzzer.

use crate::fault::{FaultEvent, FaultKind, Node};
use crate::world::{run_seed, Faults, SimConfig};
use oncesend_core::fuzzing::ByteReader;

/// Most fault events one input holds.
const MAX_EVENTS: u8 = 6;

fn node(r: &mut ByteReader<'_>, workers: u8) -> Node {
    match r.below(2 + workers) {
        0 => Node::Db,
        1 => Node::Engine,
        i => Node::Worker(i - 2),
    }
}

/// Two different hosts.
fn pair(r: &mut ByteReader<'_>, workers: u8) -> (Node, Node) {
    let hosts = 2 + workers;
    let a = r.below(hosts);
    let b = (a + 1 + r.below(hosts - 1)) % hosts;
    let as_node = |i: u8| match i {
        0 => Node::Db,
        1 => Node::Engine,
        i => Node::Worker(i - 2),
    };
    (as_node(a), as_node(b))
}

/// Decodes a small simulation from `data`: a seed, 1 or 2 workers, 1 to 4
/// runs of 1 to 3 steps over 1 to 3 conversations, and up to six faults
/// starting in the first 6 s, each lasting 0.2 to 4 s.
pub fn decode(data: &[u8]) -> (u64, SimConfig) {
    let mut r = ByteReader::new(data);
    let seed = r.u8() as u64;
    let workers = 1 + r.below(2);
    let runs = 1 + r.below(4) as u32;
    let steps = 1 + r.below(3) as u32;
    let recipients = 1 + r.below(3) as u32;
    let events = r.below(MAX_EVENTS + 1);
    let mut schedule = Vec::new();
    for _ in 0..events {
        let at_ms = (r.u16() % 6_000) as u64;
        let duration_ms = 200 + (r.u16() % 3_800) as u64;
        let kind = match r.below(10) {
            0 => {
                let (a, b) = pair(&mut r, workers);
                FaultKind::Partition {
                    a,
                    b,
                    oneway: r.bool(),
                }
            }
            1 => {
                let (a, b) = pair(&mut r, workers);
                FaultKind::Hold { a, b }
            }
            2 => FaultKind::Crash {
                node: node(&mut r, workers),
            },
            3 => FaultKind::LoseReplies,
            4 => FaultKind::Pause {
                worker: r.below(workers),
            },
            5 => {
                let (a, b) = pair(&mut r, workers);
                FaultKind::Loss { a, b }
            }
            6 => FaultKind::SlowStore {
                delay_ms: 100 + (r.u16() % 800) as u64,
            },
            7 => FaultKind::SlowProvider {
                delay_ms: 50 + (r.u16() % 1_200) as u64,
            },
            8 => FaultKind::ClockJump {
                by_ms: (r.u16() % 6_000) as i32 - 2_000,
            },
            _ => FaultKind::Skew {
                skew_ms: (r.u16() % 1_200) as i32 - 400,
            },
        };
        schedule.push(FaultEvent {
            at_ms,
            duration_ms,
            kind,
        });
    }
    let config = SimConfig {
        runs,
        steps,
        recipients,
        workers,
        faults: Faults::Explicit(schedule),
        ..SimConfig::fixed()
    };
    (seed, config)
}

/// `sim_schedule`: one small simulation of the fixed design under the
/// decoded fault schedule; no key may reach the provider twice, steps and
/// runs go out in order, nothing is lost, and every run finishes in time.
pub fn sim_schedule(data: &[u8]) {
    let (seed, config) = decode(data);
    let r = run_seed(seed, &config);
    assert!(
        r.ok(),
        "seed {seed}, {} runs of {} steps, {} workers, schedule {:?}:\n{}\n  liveness: {:?}\n  unexplained unknown: {:?}",
        config.runs,
        config.steps,
        config.workers,
        r.schedule,
        r.report,
        r.liveness,
        r.unexplained_unknown
    );
    assert_eq!(
        r.runs, config.runs as u64,
        "every trigger was accepted once"
    );
}
