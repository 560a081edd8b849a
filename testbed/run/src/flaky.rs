//! `testbed flaky`: run a command K times and say how often it passed, with a confidence
//! interval, and how long it (and any number it prints) took. The flake check the team runs
//! before every stop, e.g. `testbed flaky --runs 20 --metric "converged after" -- cargo test
//! --locked --test network`.
//!
//! Each run's output is saved to `runs/<name>/run-<i>.log`, so a failure can be read afterwards.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::stats::{self, wilson};

#[derive(Debug, Clone, Args)]
pub struct FlakyArgs {
    /// How many times to run the command.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,

    /// A phrase the command prints before a number, e.g. "converged after": the number after
    /// each occurrence is collected and summarised (median, p95, max). Repeatable.
    #[arg(long = "metric", value_name = "PHRASE")]
    metrics: Vec<String>,

    /// Longest one run may take; a run past it is killed (with its process group) and failed.
    #[arg(long, default_value = "15m", value_parser = crate::parse_duration)]
    timeout: Duration,

    /// Folder under runs/ for the logs [default: flaky-<time>].
    #[arg(long)]
    name: Option<String>,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// One run's outcome.
#[derive(Debug)]
struct Run {
    passed: bool,
    status: String,
    took: Duration,
    /// Per metric, the numbers found after its phrase.
    values: Vec<Vec<f64>>,
}

/// Exit 0 if every run passed, 1 if some failed, 2 if the command could not be started at all.
pub fn run(args: &FlakyArgs, root: &Path) -> anyhow::Result<u8> {
    let name = args.name.clone().unwrap_or_else(|| {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let stamp: String = now.chars().filter(|c| c.is_ascii_digit()).collect();
        format!("flaky-{stamp}")
    });
    let dir = root.join("runs").join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let shown = args.command.join(" ");
    eprintln!(
        "testbed: {} runs of `{shown}`, logs in {}",
        args.runs,
        dir.display()
    );
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let log = dir.join(format!("run-{i}.log"));
        let run = run_once(args, &log)?;
        let numbers: Vec<String> = args
            .metrics
            .iter()
            .zip(&run.values)
            .map(|(m, v)| format!("{m} {v:?}"))
            .collect();
        eprintln!(
            "testbed: run {i}/{}: {} in {:.1} s{}{}",
            args.runs,
            if run.passed { "pass" } else { "FAIL" },
            run.took.as_secs_f64(),
            if run.passed {
                String::new()
            } else {
                format!(" ({}; see {})", run.status, log.display())
            },
            if numbers.is_empty() {
                String::new()
            } else {
                format!("; {}", numbers.join("; "))
            },
        );
        runs.push(run);
    }
    let summary = summarize(args, &runs);
    println!("{summary}");
    std::fs::write(dir.join("summary.txt"), format!("`{shown}`\n{summary}\n"))
        .with_context(|| format!("writing {}", dir.join("summary.txt").display()))?;
    Ok(if runs.iter().all(|r| r.passed) { 0 } else { 1 })
}

fn run_once(args: &FlakyArgs, log: &Path) -> anyhow::Result<Run> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after --")?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group, so a timeout kills `cargo test` and the test binary under it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {program:?} (is it installed and on PATH?)"))?;
    let deadline = started + args.timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let values = args
        .metrics
        .iter()
        .map(|m| numbers_after(&text, m))
        .collect();
    Ok(match status {
        Some(s) => Run {
            passed: s.success(),
            status: s.to_string(),
            took,
            values,
        },
        None => Run {
            passed: false,
            status: format!("killed after the {:?} timeout", args.timeout),
            took,
            values,
        },
    })
}

/// The number right after each occurrence of `phrase` in `text`.
fn numbers_after(text: &str, phrase: &str) -> Vec<f64> {
    text.match_indices(phrase)
        .filter_map(|(at, _)| {
            let rest = text[at + phrase.len()..].trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

fn summarize(args: &FlakyArgs, runs: &[Run]) -> String {
    let n = runs.len();
    let passed = runs.iter().filter(|r| r.passed).count();
    let (lo, hi) = wilson(passed, n);
    let mut lines = vec![format!(
        "passed {passed} of {n} runs: pass rate {:.0} % (95 % Wilson interval {:.0}–{:.0} %)",
        100.0 * passed as f64 / n.max(1) as f64,
        100.0 * lo,
        100.0 * hi
    )];
    let took: Vec<f64> = runs.iter().map(|r| r.took.as_secs_f64()).collect();
    lines.push(format!("run time (s): {}", spread(&took)));
    for (i, metric) in args.metrics.iter().enumerate() {
        let all: Vec<f64> = runs.iter().flat_map(|r| r.values[i].clone()).collect();
        lines.push(format!("{metric} (all runs): {}", spread(&all)));
    }
    lines.join("\n")
}

/// `median … p95 … max … (n values)`.
fn spread(values: &[f64]) -> String {
    let v = stats::sorted(values);
    match (stats::median(&v), stats::quantile(&v, 0.95), v.last()) {
        (Some(median), Some(p95), Some(max)) => format!(
            "median {median:.1}, p95 {p95:.1}, max {max:.1} ({} values)",
            v.len()
        ),
        _ => "no values".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_their_phrase() {
        let text = "x\nconverged after 8.3 s: all\nconverged after 12 s\nconverged after soon\n";
        assert_eq!(numbers_after(text, "converged after"), vec![8.3, 12.0]);
        assert!(numbers_after(text, "missing").is_empty());
    }

    #[test]
    fn a_failing_command_is_counted_and_its_log_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("flag");
        let script = format!(
            "echo value 4; test -e '{0}' || {{ touch '{0}'; exit 3; }}",
            flag.display()
        );
        let args = FlakyArgs {
            runs: 3,
            metrics: vec!["value".into()],
            timeout: Duration::from_secs(30),
            name: Some("t".into()),
            command: vec!["sh".into(), "-c".into(), script],
        };
        // The first run fails (no flag yet), the next two pass.
        assert_eq!(run(&args, dir.path()).expect("ran"), 1);
        let summary =
            std::fs::read_to_string(dir.path().join("runs/t/summary.txt")).expect("summary");
        assert!(summary.contains("passed 2 of 3"), "{summary}");
        assert!(
            summary.contains("value (all runs): median 4.0"),
            "{summary}"
        );
        assert!(dir.path().join("runs/t/run-1.log").exists());
    }

    #[test]
    fn a_run_past_its_timeout_is_killed_and_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = FlakyArgs {
            runs: 1,
            metrics: Vec::new(),
            timeout: Duration::from_millis(300),
            name: Some("t".into()),
            command: vec!["sleep".into(), "30".into()],
        };
        let started = Instant::now();
        assert_eq!(run(&args, dir.path()).expect("ran"), 1);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
