//! Renderings of a [`Report`]: a table for people, JSON for programs, JUnit XML for CI dashboards.

use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Report as JunitReport, TestCase, TestCaseStatus, TestSuite};

use crate::crawl::CrawlSummary;
use crate::verdict::{NodeState, Report, Status, short_id};

/// Above this many nodes the table shows only nodes with a problem, unless `all` is set.
pub const FULL_TABLE_MAX: usize = 40;

/// The human report: per-node table, each property with its `k / n`, failures with reasons.
pub fn human(report: &Report, source: &str, all: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "testbed-check: {} nodes judged, {} departed, from {source}",
        report.live, report.departed
    );
    if let Some(at) = report.at {
        let _ = writeln!(out, "as of {at}: events after it left out");
    }
    if report.judged_before_shutdown {
        let _ = writeln!(
            out,
            "every node had stopped: judging the run on its state before the shutdown"
        );
    }
    let _ = writeln!(out);

    let show_all = all || report.nodes.len() <= FULL_TABLE_MAX;
    let k = report.closest.k;
    let rows: Vec<_> = report
        .nodes
        .iter()
        .filter(|n| {
            show_all
                || n.state != NodeState::Departed
                    && (n.seen_by == 0
                        || n.live_in_table == 0
                        || n.closest_found < n.closest_wanted)
        })
        .collect();
    let name_width = rows.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:<name_width$}  {:<11}  {:<9}  {:>5}  {:>7}  {:>9}  STATE",
        "NODE",
        "PEER ID",
        "ROLE",
        "TABLE",
        "SEEN BY",
        format!("{k}-CLOSEST")
    );
    for n in &rows {
        let role = n.role.map_or("?", |r| r.as_str());
        let state = match n.state {
            NodeState::Live => "live".to_owned(),
            NodeState::StoppedWithRun => "stopped with run".to_owned(),
            NodeState::Departed => "departed".to_owned(),
        };
        let state = if n.restarts > 0 {
            format!("{state}, restarted {}x", n.restarts)
        } else {
            state
        };
        let closest = format!("{}/{}", n.closest_found, n.closest_wanted);
        let _ = writeln!(
            out,
            "{:<name_width$}  {:<11}  {:<9}  {:>5}  {:>7}  {:>9}  {state}",
            n.name,
            short_id(&n.peer_id),
            role,
            n.table_size,
            n.seen_by,
            closest
        );
    }
    if rows.len() < report.nodes.len() {
        let _ = writeln!(
            out,
            "({} more nodes without a problem not shown; --all shows every node)",
            report.nodes.len() - rows.len()
        );
    }
    let _ = writeln!(out);

    for p in &report.properties {
        let (mark, count) = match p.status {
            Status::Pass => ("PASS", format!("{} / {}", p.holds, p.of)),
            Status::Fail => ("FAIL", format!("{} / {}", p.holds, p.of)),
            Status::Skipped => ("skip", "not checked".to_owned()),
        };
        let _ = writeln!(out, "{mark}  {}  [{count}]", p.title);
        for f in &p.failures {
            let _ = writeln!(out, "        {f}");
        }
    }
    let _ = writeln!(out, "      k-closest health: {}", report.closest.sentence());
    if let Some(crawl) = &report.crawl {
        crawl_section(&mut out, crawl);
    }
    for w in &report.warnings {
        let _ = writeln!(out, "note: {w}");
    }
    let lines = &report.input.lines;
    if lines.bad() + lines.unknown_types + lines.newer_version > 0 {
        let _ = writeln!(
            out,
            "note: read {} lines from {} logs: {} events, {} not JSON, {} malformed or truncated, {} not events, \
             {} of unknown type (skipped), {} of a newer schema version ({} unreadable)",
            lines.lines,
            report.input.logs,
            lines.events,
            lines.not_json,
            lines.malformed,
            lines.not_events,
            lines.unknown_types,
            lines.newer_version + lines.unsupported_version,
            lines.unsupported_version
        );
        for s in &report.input.samples {
            let _ = writeln!(out, "      {s}");
        }
    }
    let (held, checked) = report.tally();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}: {held} / {checked} properties hold over {} nodes",
        if report.passed { "PASS" } else { "FAIL" },
        report.live
    );
    out
}

/// What the crawler read: rounds, members known only through it, and logged tables that differ
/// from what their nodes answered.
fn crawl_section(out: &mut String, crawl: &CrawlSummary) {
    let latest = crawl.latest.map_or_else(String::new, |r| {
        format!(
            "; latest round {} nodes read, {} failed, {} FIND_NODE requests ({:.1} a node), {:.1} s",
            r.nodes,
            r.failed,
            r.requests,
            r.requests as f64 / r.nodes.max(1) as f64,
            r.duration_ms as f64 / 1000.0
        )
    });
    let _ = writeln!(
        out,
        "crawl: {} rounds{latest}; {} tables read over the wire, {} agree with what their node \
         logged, {} differ",
        crawl.rounds,
        crawl.read,
        crawl.compared - crawl.differing.len(),
        crawl.differing.len()
    );
    for m in &crawl.crawled_only {
        let _ = writeln!(
            out,
            "      judged on the crawl alone (no log of ours): {} {} ({}){}",
            m.name,
            m.peer_id,
            m.agent_version.as_deref().unwrap_or("agent unknown"),
            m.addr
                .as_deref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default()
        );
    }
    for d in crawl.differing.iter().take(10) {
        let names = |ids: &[String]| {
            ids.iter()
                .map(|id| short_id(id))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "      {} logged at {} but answered at {}{}: only logged [{}], only answered [{}]",
            d.name,
            d.logged_at,
            d.crawled_at,
            if d.complete {
                ""
            } else {
                " (crawl incomplete)"
            },
            names(&d.only_logged),
            names(&d.only_crawled)
        );
    }
    for f in crawl.failures.iter().rev().take(10) {
        let _ = writeln!(
            out,
            "      not read: {} at {}: {}",
            f.peer_id
                .as_deref()
                .map_or_else(|| "seed".to_owned(), short_id),
            f.addrs.join(", "),
            f.error
        );
    }
}

/// The report as pretty JSON.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
}

/// The report as JUnit XML: one test case per property.
pub fn junit(report: &Report, source: &str) -> Result<String, quick_junit::SerializeError> {
    let mut junit = JunitReport::new("testbed-check");
    let mut suite = TestSuite::new("dht");
    for p in &report.properties {
        let status = match p.status {
            Status::Pass => TestCaseStatus::success(),
            Status::Skipped => TestCaseStatus::skipped(),
            Status::Fail => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!("{} / {} hold", p.holds, p.of));
                s.set_description(p.failures.join("\n"));
                s
            }
        };
        let mut case = TestCase::new(format!("{}: {}", p.id, p.title), status);
        case.set_classname(format!("testbed-check.{}", p.id));
        suite.add_test_case(case);
    }
    suite.set_system_out(human(report, source, false));
    junit.add_test_suite(suite);
    junit.to_string()
}

/// The verdict as Markdown, for a CI job summary (`$GITHUB_STEP_SUMMARY`): the headline, each
/// property with its result, and the k-closest health.
pub fn markdown(report: &Report, title: &str) -> String {
    let (held, checked) = report.tally();
    let mut out = format!(
        "### {} {title}: {held} / {checked} properties hold over {} nodes ({} departed)\n\n\
         | | property | held |\n|---|---|---:|\n",
        if report.passed {
            "✅ PASS"
        } else {
            "❌ FAIL"
        },
        report.live,
        report.departed
    );
    for p in &report.properties {
        let word = match p.status {
            Status::Pass => "PASS",
            Status::Fail => "**FAIL**",
            Status::Skipped => "skip",
        };
        let why = p
            .failures
            .first()
            .map(|f| format!(" — {}", f.replace('|', "\\|")))
            .unwrap_or_default();
        let held = if p.status == Status::Skipped {
            "–".to_owned()
        } else {
            format!("{} / {}", p.holds, p.of)
        };
        out.push_str(&format!(
            "| {word} | {}{why} | {held} |\n",
            p.title.replace('|', "\\|"),
        ));
    }
    out.push_str(&format!(
        "\nk-closest health: {}.\n",
        report.closest.sentence()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{CheckOptions, InputSummary, check};

    #[test]
    fn the_markdown_summary_is_one_well_formed_table() {
        let report = check(&[], &CheckOptions::default(), InputSummary::default());
        let text = markdown(&report, "a | b");
        assert!(text.starts_with("### ❌ FAIL a | b:"), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows[1], "|---|---|---:|", "{text}");
        // Every row has the header's three cells; pipes inside cells are escaped.
        for row in &rows {
            let cells = row.replace("\\|", "").matches('|').count() - 1;
            assert_eq!(cells, 3, "{row}");
        }
        assert_eq!(rows.len(), 2 + report.properties.len());
    }
}
