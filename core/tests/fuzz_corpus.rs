//! Replays the checked-in fuzz corpora of the core's targets (seeds and
//! every crash ever found), so `cargo test` covers them without libFuzzer.

#[path = "../../fuzz/replay.rs"]
mod corpus;

use corpus::replay;

#[test]
fn store_ops_corpus_holds_the_invariants() {
    replay("store_ops", oncesend_core::fuzzing::store_ops);
}

#[test]
fn template_corpus_parses_and_renders() {
    replay("template", oncesend_core::fuzzing::template);
}
