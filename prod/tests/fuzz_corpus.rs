//! Replays the checked-in fuzz corpora of production's parser targets (seeds and
//! every crash ever found), so `cargo test` covers them without libFuzzer.

use std::path::Path;

/// Runs `target` on every file of `fuzz/corpus/<name>/`; fails when the
/// corpus is missing or empty, so a moved directory cannot pass silently.
fn replay(name: &str, target: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("a readable corpus file");
        eprintln!("{name}: {}", file.display());
        target(&data);
    }
}

#[test]
fn api_json_corpus_parses_and_round_trips() {
    replay("api_json", oncesend::fuzzing::api_json);
}

#[test]
fn cloud_api_response_corpus_is_classified() {
    replay("cloud_api_response", oncesend::fuzzing::cloud_api_response);
}
