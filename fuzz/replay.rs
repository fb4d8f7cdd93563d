//! Shared by the corpus-replay tests of core, prod and sim (each includes
//! this file with `#[path]`): runs a fuzz target's body on every file of
//! its checked-in corpus, so `cargo test` covers the seeds and every crash
//! ever found without libFuzzer.

use std::path::Path;

/// Runs `target` on every file of `fuzz/corpus/<name>/`; fails when the
/// corpus is missing or empty, so a moved directory cannot pass silently.
pub fn replay(name: &str, target: fn(&[u8])) {
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
