//! Runs across time: every run (`up`, `bench`) appends one line to `runs/history.jsonl`, `up
//! --repeat K` summarises K runs at once, and `testbed history` summarises the file per size
//! across commits and flags what is flaky.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use testbed_check::verdict::{PropertyId, Status};

use crate::run::RunOutcome;
use crate::stats::{self, wilson};

/// One line of `runs/history.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub date: String,
    pub commit: String,
    /// The run's name (its folder under runs/).
    pub run: String,
    /// What kind of run: `up`, `bench`, or a scenario's name.
    pub kind: String,
    pub peers: usize,
    /// 0 passed, 1 a property failed, 2 the run itself failed.
    pub exit_code: u8,
    pub up_s: Option<f64>,
    /// From every container running to the checker's pass (or the deadline).
    pub check_s: Option<f64>,
    /// Properties that failed.
    pub failed: Vec<PropertyId>,
}

impl Entry {
    pub fn of(outcome: &RunOutcome, kind: &str, commit: &str) -> Self {
        let failed = outcome
            .report
            .as_ref()
            .map(|r| {
                r.properties
                    .iter()
                    .filter(|p| p.status == Status::Fail)
                    .map(|p| p.id)
                    .collect()
            })
            .unwrap_or_default();
        Entry {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            commit: commit.to_owned(),
            run: outcome.name.clone(),
            kind: kind.to_owned(),
            peers: outcome.peers,
            exit_code: outcome.exit_code(),
            up_s: outcome.up_seconds,
            check_s: outcome.check_seconds,
            failed,
        }
    }
}

/// Appends `entry` to `runs/history.jsonl` under `root`.
pub fn append(root: &Path, entry: &Entry) -> anyhow::Result<()> {
    let path = root.join("runs").join("history.jsonl");
    std::fs::create_dir_all(root.join("runs"))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(entry)?)?;
    Ok(())
}

/// Reads `runs/history.jsonl`; a line that does not parse is skipped and counted.
pub fn read(root: &Path) -> anyhow::Result<(Vec<Entry>, usize)> {
    let path = root.join("runs").join("history.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (every `testbed up` or `bench` run appends to it; none has run here yet?)",
            path.display()
        )
    })?;
    let mut bad = 0;
    let entries = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let parsed = serde_json::from_str(l).ok();
            bad += usize::from(parsed.is_none());
            parsed
        })
        .collect();
    Ok((entries, bad))
}

/// Median and p95 of `values` (nearest rank), `None` when empty.
fn p50_p95(values: &[f64]) -> Option<(f64, f64)> {
    let v = stats::sorted(values);
    Some((stats::median(&v)?, stats::quantile(&v, 0.95)?))
}

fn seconds(v: Option<(f64, f64)>) -> String {
    v.map_or("–".into(), |(p50, p95)| format!("{p50:.1} / {p95:.1}"))
}

/// The summary of a set of runs: pass rate with its interval, timings, what failed.
pub fn summarize(entries: &[&Entry]) -> String {
    let n = entries.len();
    let passed = entries.iter().filter(|e| e.exit_code == 0).count();
    let (lo, hi) = wilson(passed, n);
    let up: Vec<f64> = entries.iter().filter_map(|e| e.up_s).collect();
    let check: Vec<f64> = entries
        .iter()
        .filter(|e| e.exit_code == 0)
        .filter_map(|e| e.check_s)
        .collect();
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for e in entries {
        for p in &e.failed {
            *failed.entry(p.to_string()).or_default() += 1;
        }
        if e.exit_code == 2 {
            *failed.entry("run failed (exit 2)".into()).or_default() += 1;
        }
    }
    let failed = if failed.is_empty() {
        "none".to_owned()
    } else {
        failed
            .iter()
            .map(|(p, c)| format!("{p} in {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "passed {passed} of {n} runs: {:.0} % (95 % Wilson interval {:.0}–{:.0} %)\n\
         up (s), p50 / p95: {}\n\
         until the check passed (s), p50 / p95 of passing runs: {}\n\
         failed: {failed}",
        100.0 * passed as f64 / n.max(1) as f64,
        100.0 * lo,
        100.0 * hi,
        seconds(p50_p95(&up)),
        seconds(p50_p95(&check)),
    )
}

/// `testbed history`: per kind and size, pass rate and timings across commits; flaky where some
/// runs passed and some failed.
pub fn report(entries: &[Entry]) -> String {
    let mut groups: BTreeMap<(String, usize), Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        groups.entry((e.kind.clone(), e.peers)).or_default().push(e);
    }
    let mut out = String::from(
        "| kind | peers | runs | pass rate (95 % CI) | check p50 / p95 (s) | commits | last | flaky |\n\
         |---|---:|---:|---|---:|---:|---|---|\n",
    );
    for ((kind, peers), runs) in &groups {
        let n = runs.len();
        let passed = runs.iter().filter(|e| e.exit_code == 0).count();
        let (lo, hi) = wilson(passed, n);
        let check: Vec<f64> = runs
            .iter()
            .filter(|e| e.exit_code == 0)
            .filter_map(|e| e.check_s)
            .collect();
        let commits: std::collections::BTreeSet<&str> =
            runs.iter().map(|e| e.commit.as_str()).collect();
        let last = runs.last().map_or("", |e| e.commit.as_str());
        let flaky = passed > 0 && passed < n;
        out.push_str(&format!(
            "| {kind} | {peers} | {n} | {:.0} % ({:.0}–{:.0} %) | {} | {} | `{last}` | {} |\n",
            100.0 * passed as f64 / n as f64,
            100.0 * lo,
            100.0 * hi,
            seconds(p50_p95(&check)),
            commits.len(),
            if flaky { "**flaky**" } else { "" },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, peers: usize, code: u8, check: f64, commit: &str) -> Entry {
        Entry {
            date: "2026-11-28T00:00:00Z".into(),
            commit: commit.into(),
            run: "r".into(),
            kind: kind.into(),
            peers,
            exit_code: code,
            up_s: Some(3.0),
            check_s: Some(check),
            failed: if code == 1 {
                vec![PropertyId::Closest]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn history_round_trips_and_flags_a_size_that_both_passed_and_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for e in [
            entry("up", 10, 0, 2.0, "aaa"),
            entry("up", 10, 1, 60.0, "bbb"),
            entry("up", 10, 0, 4.0, "aaa"),
            entry("bench", 300, 0, 9.0, "bbb"),
        ] {
            append(dir.path(), &e).expect("append");
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("runs/history.jsonl"))
            .and_then(|mut f| writeln!(f, "not json"))
            .expect("garble");
        let (entries, bad) = read(dir.path()).expect("read");
        assert_eq!((entries.len(), bad), (4, 1));
        let table = report(&entries);
        let up = table
            .lines()
            .find(|l| l.starts_with("| up | 10 |"))
            .expect("up row");
        // Commits aaa, bbb, aaa: two distinct commits, the last one aaa.
        assert!(
            up.contains("| 3 | 67 % (21–94 %) | 4.0 / 4.0 | 2 | `aaa` | **flaky** |"),
            "{up}"
        );
        let bench = table
            .lines()
            .find(|l| l.starts_with("| bench | 300 |"))
            .expect("bench row");
        assert!(!bench.contains("flaky"), "{bench}");
    }

    #[test]
    fn a_summary_names_the_failed_property_and_the_pass_rate() {
        let runs = [
            entry("up", 10, 0, 2.0, "a"),
            entry("up", 10, 1, 60.0, "a"),
            entry("up", 10, 2, 1.0, "a"),
        ];
        let refs: Vec<&Entry> = runs.iter().collect();
        let text = summarize(&refs);
        assert!(text.starts_with("passed 1 of 3 runs: 33 %"), "{text}");
        assert!(
            text.contains("failed: closest in 1, run failed (exit 2) in 1"),
            "{text}"
        );
        assert!(
            text.contains("p50 / p95 of passing runs: 2.0 / 2.0"),
            "{text}"
        );
    }

    #[test]
    fn no_history_yet_is_an_error_that_says_what_writes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read(dir.path()).expect_err("nothing there");
        assert!(format!("{err:#}").contains("appends to it"), "{err:#}");
    }
}
