//! The `oncesend-sim` program: seeds split over several processes add up to
//! exactly what one process finds, failures included.

use std::collections::BTreeMap;
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oncesend-sim"))
        .args(args)
        .output()
        .expect("run oncesend-sim")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The RESULT line's fields, without the wall time (the only one that may
/// differ between two runs of the same seeds).
fn result_fields(out: &Output) -> BTreeMap<String, String> {
    let text = stdout(out);
    let line = text
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line last:\n{text}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k != "wall_secs")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn summary_value<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
}

#[test]
fn seeds_split_over_processes_add_up_to_one_process_s_result() {
    let args = ["--seeds", "5", "--start", "40", "--runs", "6"];
    let one = sim(&[&args[..], &["--jobs", "1"]].concat());
    let three = sim(&[&args[..], &["--jobs", "3"]].concat());
    assert!(one.status.success(), "{}", stdout(&one));
    assert!(three.status.success(), "{}", stdout(&three));
    assert_eq!(summary_value(&stdout(&one), "processes"), "1");
    assert_eq!(summary_value(&stdout(&three), "processes"), "3");
    let fields = result_fields(&one);
    assert_eq!(fields["seeds"], "5");
    assert_ne!(fields["deliveries"], "0");
    assert_eq!(fields, result_fields(&three));
    // The production parts' counters and the faults fired add up too.
    let counters = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("send batches"))
            .filter(|l| {
                !l.starts_with("seeds per second")
                    && !l.starts_with("sim time")
                    && !l.starts_with("RESULT")
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(counters(&stdout(&one)), counters(&stdout(&three)));
}

#[test]
fn a_failing_seed_in_any_process_fails_the_whole_and_is_named_with_its_replay() {
    let out = sim(&["--legacy", "--seeds", "3", "--runs", "4", "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    for seed in 0..3 {
        assert!(
            text.contains(&format!("seed {seed} FAILED: ")),
            "seed {seed} not reported:\n{text}"
        );
        assert!(
            text.contains(&format!("--legacy --seed {seed} --workers 2 --runs 4")),
            "no replay line for seed {seed}:\n{text}"
        );
    }
    assert_eq!(summary_value(&text, "failed seeds"), "0 1 2");
    let fields = result_fields(&out);
    assert_ne!(fields["duplicates"], "0");
    let single = sim(&["--legacy", "--seeds", "3", "--runs", "4", "--jobs", "1"]);
    assert_eq!(fields, result_fields(&single));
}

#[test]
fn a_wrong_part_is_refused_with_what_to_give() {
    let out = sim(&["--part", "2/2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("K must be below N"), "{err}");
}
