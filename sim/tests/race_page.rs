//! The race, drawn (`--html`): the old system's page shows each duplicate
//! the checker counts, in red, on the right run step; the new design's page
//! shows where a guard stopped a second send; keeping the marks changes
//! nothing the simulation does; and a seed draws the same bytes each time.

use oncesend_core::Guards;
use oncesend_sim::html::{render, Page};
use oncesend_sim::{run_seed, Faults, Mode, SeedResult, SimConfig};
use std::collections::BTreeSet;
use std::process::Command;

/// A seed whose old-system run sends duplicates.
const LEGACY_SEED: u64 = 3;
/// A seed where, under its faults, a guard of the new design stopped a
/// second send.
const FIXED_SEED: u64 = 2;

fn marked(config: SimConfig) -> SimConfig {
    SimConfig {
        marks: true,
        ..config
    }
}

fn page_of(r: &SeedResult, mode: Mode) -> String {
    render(&Page::of(r, mode, format!("--seed {}", r.seed)))
}

/// The full run keys (`title`) of every mark drawn with `class`.
fn marks_with(html: &str, class: &str) -> Vec<String> {
    let open = format!("<div class=\"{class}\" data-key=\"");
    html.match_indices(&open)
        .map(|(at, _)| {
            let rest = &html[at..];
            let title = rest.find("title=\"").expect("a mark has a title") + 7;
            let end = rest[title..].find('"').expect("the title ends");
            rest[title..title + end].to_string()
        })
        .collect()
}

/// The run steps the checker counted as sent twice.
fn duplicate_keys(r: &SeedResult) -> BTreeSet<String> {
    r.report
        .duplicates
        .iter()
        .map(|(k, _)| k.to_string())
        .collect()
}

#[test]
fn the_old_system_s_page_shows_each_duplicate_in_red_on_its_run_step() {
    let r = run_seed(LEGACY_SEED, &marked(SimConfig::legacy()));
    assert!(
        !r.report.duplicates.is_empty(),
        "seed {LEGACY_SEED} no longer duplicates in the old system: pick another for this test"
    );
    let html = page_of(&r, Mode::Legacy);
    let red: BTreeSet<String> = marks_with(&html, "m deliver dup").into_iter().collect();
    let counted = duplicate_keys(&r);
    assert_eq!(
        red, counted,
        "the red marks are not the checker's duplicates"
    );
    assert!(
        html.contains("processors read the same pending row") && html.contains("Both sent it"),
        "the page does not say in words what happened:\n{html}"
    );
    assert!(html.contains("<div class=\"verdict bad\">"));
    assert!(
        !html.contains("<script") && !html.contains("http"),
        "the page must stand alone"
    );
    assert!(html.len() < 300 * 1024, "{} bytes", html.len());
}

#[test]
fn the_new_design_s_page_shows_a_second_send_stopped_and_no_duplicate() {
    let r = run_seed(FIXED_SEED, &marked(SimConfig::fixed()));
    assert!(r.ok(), "{}", r.report);
    let html = page_of(&r, Mode::Fixed);
    assert!(marks_with(&html, "m deliver dup").is_empty(), "{html}");
    let stopped =
        marks_with(&html, "m replay stop").len() + marks_with(&html, "m fenced stop").len();
    assert!(
        stopped > 0,
        "seed {FIXED_SEED} no longer shows a stopped second send: pick another for this test"
    );
    assert!(html.contains("<div class=\"verdict good\">"), "{html}");
    assert!(html.contains("Nothing was sent twice"), "{html}");
    assert!(html.len() < 300 * 1024, "{} bytes", html.len());
}

#[test]
fn keeping_marks_changes_nothing_the_simulation_does() {
    for (config, seeds) in [(SimConfig::legacy(), 0..3), (SimConfig::fixed(), 4..7)] {
        for seed in seeds {
            let plain = run_seed(seed, &config);
            let with = run_seed(seed, &marked(config.clone()));
            assert!(plain.marks.is_empty(), "marks kept unasked");
            assert!(!with.marks.is_empty(), "seed {seed}: no marks kept");
            assert_eq!(plain.trace_hash, with.trace_hash, "seed {seed}");
            assert_eq!(plain.report.to_string(), with.report.to_string());
        }
    }
}

fn sim(args: &[&str]) -> (String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_oncesend-sim"))
        .args(args)
        .output()
        .expect("run oncesend-sim");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

fn last_line(out: &str) -> String {
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("RESULT "), "RESULT is not last:\n{out}");
    // Wall time is the one field that may differ between two runs.
    last.split(" wall_secs=").next().unwrap_or_default().into()
}

#[test]
fn a_seed_draws_the_same_bytes_and_the_same_result_as_without_a_page() {
    let dir = std::env::temp_dir().join(format!("oncesend-race-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (a, b) = (dir.join("a.html"), dir.join("b.html"));
    let seed = LEGACY_SEED.to_string();
    let args = ["--legacy", "--seed", &seed];
    let (plain, _) = sim(&args);
    let (first, _) = sim(&[&args[..], &["--html", a.to_str().expect("utf-8")]].concat());
    let (second, _) = sim(&[&args[..], &["--html", b.to_str().expect("utf-8")]].concat());
    assert!(
        first.contains(&format!("html: wrote {} for seed {seed}", a.display())),
        "{first}"
    );
    assert_eq!(last_line(&plain), last_line(&first));
    assert_eq!(last_line(&first), last_line(&second));
    let (a, b) = (
        std::fs::read(&a).expect("page a"),
        std::fs::read(&b).expect("page b"),
    );
    assert!(!a.is_empty());
    assert!(a == b, "two runs of seed {seed} drew different pages");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn over_many_seeds_the_page_is_the_first_failing_seed_s() {
    let dir = std::env::temp_dir().join(format!("oncesend-race-many-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("race.html");
    let (out, ok) = sim(&[
        "--legacy",
        "--seeds",
        "4",
        "--jobs",
        "2",
        "--html",
        path.to_str().expect("utf-8"),
    ]);
    assert!(!ok, "the old system's seeds should fail:\n{out}");
    let first = out
        .lines()
        .find_map(|l| l.strip_prefix("failed seeds"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no failed seeds listed:\n{out}"));
    assert!(
        out.contains(&format!(
            "for seed {first} (the first seed that broke an invariant)"
        )),
        "{out}"
    );
    let html = std::fs::read_to_string(&path).expect("the page was written");
    assert!(html.contains(&format!("<h1>Seed {first}:")));
    assert!(html.contains("The checker's report"), "{html}");
    let _ = std::fs::remove_dir_all(&dir);

    // With nothing failing and no seed named, nothing is drawn, and it says so.
    let (out, ok) = sim(&[
        "--seeds",
        "1",
        "--runs",
        "3",
        "--html",
        "/nonexistent/x.html",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("no seed broke an invariant, so no page was written"),
        "{out}"
    );
}

#[test]
fn a_failing_seed_with_the_guards_off_is_drawn_small_with_its_duplicates_red() {
    let config = SimConfig {
        guards: Guards {
            fencing: false,
            ledger: false,
        },
        faults: Faults::Race,
        marks: true,
        ..SimConfig::fixed()
    };
    let r = run_seed(0, &config);
    assert!(!r.ok(), "seed 0 no longer fails with both guards off");
    let html = page_of(&r, Mode::Fixed);
    let counted = duplicate_keys(&r);
    let red = marks_with(&html, "m deliver dup");
    assert!(!red.is_empty(), "{html}");
    assert!(red.iter().all(|k| counted.contains(k)), "{red:?}");
    assert!(html.contains("The checker's report"));
    // Thousands of marks: the page says where it stops, and stays small.
    assert!(r.marks.len() > 1_000, "{} marks", r.marks.len());
    assert!(html.contains("The page stops at the first"));
    assert!(html.len() < 300 * 1024, "{} bytes", html.len());
}
