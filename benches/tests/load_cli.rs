//! `oncesend-bench`, the real binary: both paths drain a small workload on
//! `memory:`, verify it, and end with a RESULT line whose fields agree with
//! the flags; bad flags are refused with a message that says what is wrong.

use std::collections::BTreeMap;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oncesend-bench"))
        .args(args)
        .env("DATABASE_URL", "memory:")
        .env_remove("RUST_LOG")
        .output()
        .expect("run oncesend-bench")
}

/// The last line's `key=value` fields; fails unless it is a RESULT line.
fn result_fields(out: &Output) -> BTreeMap<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let rest = last
        .strip_prefix("RESULT ")
        .unwrap_or_else(|| panic!("last line is not a RESULT line: {stdout}"));
    rest.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn number(fields: &BTreeMap<String, String>, key: &str) -> f64 {
    fields[key]
        .parse()
        .unwrap_or_else(|e| panic!("{key}={} is not a number: {e}", fields[key]))
}

fn small_workload(path: &str, extra: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec![
        "--runs",
        "200",
        "--steps",
        "3",
        "--conversations",
        "40",
        "--workers",
        "2",
        "--batch",
        "20",
        "--path",
        path,
    ];
    args.extend_from_slice(extra);
    let out = bench(&args);
    assert!(
        out.status.success(),
        "bench --path {path} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fields = result_fields(&out);
    for key in [
        "path",
        "db",
        "runs",
        "steps",
        "workers",
        "msgs_per_s",
        "p50_ms",
        "p99_ms",
        "txn_per_msg",
    ] {
        assert!(fields.contains_key(key), "RESULT lacks {key}: {fields:?}");
    }
    assert_eq!(fields["path"], path);
    assert_eq!(fields["db"], "memory");
    assert_eq!(fields["runs"], "200");
    assert_eq!(fields["steps"], "3");
    assert_eq!(fields["workers"], "2");
    assert!(number(&fields, "msgs_per_s") > 0.0, "{fields:?}");
    assert!(number(&fields, "txn_per_msg") > 0.0, "{fields:?}");
    let (p50, p99, max) = (
        number(&fields, "p50_ms"),
        number(&fields, "p99_ms"),
        number(&fields, "max_ms"),
    );
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{fields:?}");
    assert!(number(&fields, "peak_rss_mb") > 0.0, "{fields:?}");
    // From when each step fell due: first steps and later ones apart.
    for which in ["first", "later"] {
        let (p50, p99) = (
            number(&fields, &format!("{which}_p50_ms")),
            number(&fields, &format!("{which}_p99_ms")),
        );
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{fields:?}");
    }
    fields
}

#[test]
fn one_step_runs_have_no_later_steps_to_report() {
    let out = bench(&["--runs", "50", "--steps", "1", "--conversations", "10"]);
    assert!(out.status.success(), "{out:?}");
    let fields = result_fields(&out);
    assert!(fields.contains_key("first_p99_ms"), "{fields:?}");
    assert!(!fields.contains_key("later_p99_ms"), "{fields:?}");
}

#[test]
fn store_path_drains_and_reports() {
    let fields = small_workload("store", &[]);
    // One claim per batch of up to 20 runs and one write batch per step:
    // far fewer transactions than messages.
    assert!(number(&fields, "txn_per_msg") < 0.5, "{fields:?}");
}

#[test]
fn full_path_drains_through_the_engine() {
    let fields = small_workload("full", &[]);
    // Each message begins and finishes in the ledger and moves its run on.
    assert!(number(&fields, "txn_per_msg") >= 3.0, "{fields:?}");
}

#[test]
fn given_the_ceiling_it_says_what_fraction_of_it_was_reached() {
    let fields = small_workload("store", &["--ceiling-rows-per-s", "1000"]);
    assert_eq!(fields["ceiling_rows_per_s"], "1000");
    let ratio = number(&fields, "of_ceiling");
    let expected = number(&fields, "msgs_per_s") / 1000.0;
    // Both printed rounded: msgs/s to a unit, the ratio to 3 places.
    assert!(
        (ratio - expected).abs() <= 0.001 + 0.5 / 1000.0,
        "{fields:?}"
    );
    let without = small_workload("store", &[]);
    assert!(!without.contains_key("of_ceiling"), "{without:?}");
}

#[test]
fn open_loop_rate_and_delays_drain_too() {
    small_workload("store", &["--rate", "2000", "--delay-ms", "5"]);
}

#[test]
fn bad_flags_say_what_is_wrong() {
    for (args, says) in [
        (&["--path", "nope"][..], "nope"),
        (&["--steps", "0"][..], "--steps"),
        (&["--runs", "0"][..], "--runs"),
        (&["--batch", "1001"][..], "--batch"),
        (&["--ceiling-rows-per-s", "0"][..], "positive number"),
        (&["--ceiling-rows-per-s", "fast"][..], "positive number"),
        (&["--soak-secs", "5"][..], "--rate"),
        (&["--rate", "10", "--soak-secs", "0"][..], "--soak-secs"),
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("RESULT"),
            "{args:?}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_oncesend-bench"))
        .args(["--runs", "10"])
        .env("DATABASE_URL", "mysql://nowhere/db")
        .output()
        .expect("run oncesend-bench");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("memory:"), "{stderr}");
}

/// A soak's stdout and RESULT fields, on the database `url`.
fn soak(url: &str, extra: &[&str]) -> (String, BTreeMap<String, String>) {
    let mut args = vec![
        "--rate",
        "150",
        "--soak-secs",
        "2",
        "--steps",
        "2",
        "--conversations",
        "30",
        "--workers",
        "2",
        "--batch",
        "20",
        "--path",
        "full",
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_oncesend-bench"))
        .args(&args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run oncesend-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "soak failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields = result_fields(&out);
    (stdout, fields)
}

#[test]
fn a_soak_runs_rate_times_seconds_and_reports_each_minute() {
    let (stdout, fields) = soak("memory:", &[]);
    // 150 runs a second for 2 seconds, whatever --runs says.
    assert_eq!(fields["runs"], "300");
    let minutes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("soak: minute="))
        .collect();
    assert_eq!(minutes.len(), 1, "{stdout}");
    assert!(minutes[0].contains("sent=600"), "{stdout}");
    assert!(minutes[0].contains("later_p99_ms="), "{stdout}");
    let (lo, hi) = (
        number(&fields, "minute_p99_min_ms"),
        number(&fields, "minute_p99_max_ms"),
    );
    assert!(0.0 <= lo && lo <= hi, "{fields:?}");
    // In memory there are no tables to measure.
    assert!(!stdout.contains("size: "), "{stdout}");
    assert!(!fields.contains_key("runs_mb_max"), "{fields:?}");
}

#[test]
fn a_soak_on_sqlite_prunes_measures_the_tables_and_checks_a_sample() {
    let dir = std::env::temp_dir().join(format!("oncesend-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}/soak.db?mode=rwc", dir.display());
    let (stdout, fields) = soak(&url, &["--prune-retention-ms", "0", "--verify-every", "7"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(fields["db"], "sqlite");
    // Sampled at the start and once more at the end.
    let sizes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("size: ")).collect();
    assert!(sizes.len() >= 2, "{stdout}");
    assert!(sizes.iter().all(|l| l.contains("free_pages=")), "{stdout}");
    assert!(fields.contains_key("runs_mb_max"), "{fields:?}");
    // Every finished run may be pruned at once: the last sample, taken
    // after the final prune, finds no run open and the pages the pruned
    // rows held free for reuse; the check accepts a pruned run only
    // because the bench saw each of its steps sent once.
    let last = sizes.last().unwrap();
    assert!(last.contains("open_runs=0"), "{stdout}");
    let free: u64 = last
        .rsplit_once("free_pages=")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("no free_pages: {last}"));
    assert!(free > 0, "{stdout}");
    let pruned: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("bench: pruned "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no prune line: {stdout}"));
    assert!(pruned > 0, "{stdout}");
    assert!(stdout.contains("(1 run in 7 of 300 checked)"), "{stdout}");
}
