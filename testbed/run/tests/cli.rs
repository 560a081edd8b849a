//! `testbed` refuses bad input before it touches Docker: exit 2, naming the flag and the value.

use std::process::Command;

fn testbed(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(args)
        .output()
        .expect("testbed runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_naming_the_flag_and_the_value() {
    for (args, flag, value) in [
        (&["up", "--peers", "0"][..], "--peers", "0"),
        (&["up", "--peers", "many"][..], "--peers", "many"),
        (
            &["up", "--closest-threshold", "90"][..],
            "--closest-threshold",
            "90",
        ),
        (&["up", "--wait", "soon"][..], "--wait", "soon"),
        (&["bench", "--peers", "10,0"][..], "--peers", "0"),
        (&["up", "--repeat", "0"][..], "--repeat", "0"),
        (&["bench", "--waves", "0"][..], "--waves", "0"),
        (&["bench", "--wave-gap", "later"][..], "--wave-gap", "later"),
        (&["flaky", "--runs", "0", "--", "true"][..], "--runs", "0"),
        (
            &["up", "--engine", "kubernetes"][..],
            "--engine",
            "kubernetes",
        ),
    ] {
        let (code, stderr) = testbed(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(value),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_missing_overlay_is_named_before_anything_starts() {
    let (code, stderr) = testbed(&["up", "--overlay", "compose/no-such-overlay.yml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--overlay compose/no-such-overlay.yml"),
        "{stderr}"
    );
}

#[test]
fn swarm_runs_refuse_what_only_compose_does_before_anything_starts() {
    for (args, want) in [
        (
            &["up", "--engine", "swarm", "--crawl"][..],
            "--crawl runs on compose only",
        ),
        (
            &["up", "--engine", "swarm", "--foreign", "1"][..],
            "--foreign runs on compose only",
        ),
        (
            &["up", "--init-swarm"][..],
            "--init-swarm: only with --engine swarm",
        ),
    ] {
        let (code, stderr) = testbed(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("building image"), "{args:?}: {stderr}");
    }
}
