//! Replays the checked-in fuzz corpora of production's parser targets (seeds and
//! every crash ever found), so `cargo test` covers them without libFuzzer.

#[path = "../../../fuzz/replay.rs"]
mod corpus;

use corpus::replay;

#[test]
fn api_json_corpus_parses_and_round_trips() {
    replay("api_json", oncesend::fuzzing::api_json);
}

#[test]
fn cloud_api_response_corpus_is_classified() {
    replay("cloud_api_response", oncesend::fuzzing::cloud_api_response);
}
