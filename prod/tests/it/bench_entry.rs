//! `oncesend bench` runs the `oncesend-bench` executable beside it: every
//! argument goes through and its exit status comes back; without it, the
//! error says how to build it. Each case runs a copy of `oncesend` in a
//! folder of its own, so whatever `target/` holds does not matter.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A fresh folder holding a copy of `oncesend`; answers the copy's path.
fn lone_oncesend(case: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "oncesend-bench-entry-{}-{case}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    let exe = dir.join(format!("oncesend{}", std::env::consts::EXE_SUFFIX));
    std::fs::copy(env!("CARGO_BIN_EXE_oncesend"), &exe).expect("copy oncesend");
    exe
}

fn run(exe: &PathBuf, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env_remove("ONCESEND_LOG_FORMAT")
        .output()
        .expect("run oncesend")
}

#[test]
fn without_the_tool_it_says_how_to_build_it() {
    let exe = lone_oncesend("missing");
    let out = run(&exe, &["bench", "--runs", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("oncesend-bench"), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p oncesend-benches --bin oncesend-bench"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(exe.parent().expect("a folder"));
}

#[cfg(unix)]
#[test]
fn the_tool_gets_every_argument_and_its_status_comes_back() {
    use std::os::unix::fs::PermissionsExt;
    let exe = lone_oncesend("stand-in");
    // A stand-in for the tool: prints what it was given, fails with 7.
    let tool = exe.with_file_name("oncesend-bench");
    std::fs::write(
        &tool,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s|' \"$a\"; done\necho \"format=$ONCESEND_LOG_FORMAT\"\nexit 7\n",
    )
    .expect("write the stand-in");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let out = run(
        &exe,
        &[
            "--log-format",
            "json",
            "bench",
            "--path",
            "full",
            "--runs",
            "5",
            "--help",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "--path|full|--runs|5|--help|format=json\n"
    );

    let out = run(&exe, &["bench"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "format=text\n");
    let _ = std::fs::remove_dir_all(exe.parent().expect("a folder"));
}
