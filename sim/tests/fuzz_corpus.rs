//! Replays the checked-in fuzz corpora of the simulation target (seeds and
//! every crash ever found), so `cargo test` covers them without libFuzzer.

#[path = "../../fuzz/replay.rs"]
mod corpus;

use corpus::replay;

#[test]
fn sim_schedule_corpus_stays_clean() {
    replay("sim_schedule", oncesend_sim::fuzzing::sim_schedule);
}
