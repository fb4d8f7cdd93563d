//! `oncesend bench` runs the `oncesend-bench` executable beside it: every
//! argument goes through and its exit status comes back; without it, the
//! error says how to build it. Each case runs a copy of `oncesend` in a
//! folder of its own, so whatever `target/` holds does not matter.
//!
//! No executable here is ever open for writing in this process: the
//! other tests of this binary spawn children all the time, and a child
//! forked while such a descriptor is open holds it until it execs, so
//! running the file at that moment fails with "Text file busy" (ETXTBSY).
//! The copy of `oncesend` is a hard link (or made by `cp`, in a process
//! of its own), and the stand-in tool is written by `cp` as well.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A fresh folder holding a copy of `oncesend`; answers the copy's path.
fn lone_oncesend(case: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "oncesend-bench-entry-{}-{case}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    let exe = dir.join(format!("oncesend{}", std::env::consts::EXE_SUFFIX));
    let original = env!("CARGO_BIN_EXE_oncesend");
    if std::fs::hard_link(original, &exe).is_err() {
        copy_in_another_process(original.as_ref(), &exe);
    }
    exe
}

/// Copies `from` to `to` with `cp`, so the descriptor that writes `to` is
/// never one of this process's (see the module's note on ETXTBSY).
fn copy_in_another_process(from: &std::path::Path, to: &std::path::Path) {
    if cfg!(unix) {
        let status = Command::new("cp")
            .arg(from)
            .arg(to)
            .status()
            .expect("run cp");
        assert!(
            status.success(),
            "cp {} {}: {status}",
            from.display(),
            to.display()
        );
    } else {
        std::fs::copy(from, to).expect("copy");
    }
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
    let text = exe.with_file_name("stand-in.txt");
    std::fs::write(
        &text,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s|' \"$a\"; done\necho \"format=$ONCESEND_LOG_FORMAT\"\nexit 7\n",
    )
    .expect("write the stand-in's text");
    copy_in_another_process(&text, &tool);
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
