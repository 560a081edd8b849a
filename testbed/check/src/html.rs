//! `report.html`: the verdict as one self-contained page. Charts are inline SVG drawn by
//! plotters (its SVG backend, no font files: text is SVG `<text>`), with no scripts and nothing
//! fetched from the network, so the page opens offline and can be attached to a CI run.
//!
//! It shows: convergence over time (peers seen, non-empty tables, the k-closest share), a
//! histogram of table sizes, bucket fill against Kademlia's expectation, every property with its
//! failures, and the per-node table, problems first, each row linking to the node's saved log.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::timeline::Convergence;
use crate::verdict::{NodeReport, NodeState, Report, Status};

/// What the page says about where the report came from.
#[derive(Debug, Clone, Default)]
pub struct Page<'a> {
    pub title: &'a str,
    /// The logs judged, e.g. `runs/up-…` or a compose project.
    pub source: &'a str,
    /// Where each node's log is, relative to the page: `logs/` for a run folder; no links when
    /// `None`.
    pub log_dir: Option<&'a str>,
}

const WIDTH: u32 = 760;
const HEIGHT: u32 = 320;
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(140, 140, 140);

/// The page for saved logs at `path` (a run folder, or a folder of per-node logs): their
/// snapshots are replayed for the convergence chart. `log_dir` is how the page reaches the
/// per-node logs.
pub fn render_saved(
    report: &Report,
    path: &std::path::Path,
    opts: &crate::CheckOptions,
    page: &Page,
) -> String {
    let logs = if path.join("logs").is_dir() {
        path.join("logs")
    } else {
        path.to_owned()
    };
    let convergence = logs
        .is_dir()
        .then(|| crate::timeline::replay_dir(&logs, opts.closest_k, opts.closest_threshold).ok())
        .flatten();
    render(report, convergence.as_ref(), page)
}

/// The whole page.
pub fn render(report: &Report, convergence: Option<&Convergence>, page: &Page) -> String {
    let mut out = String::new();
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let (held, checked) = report.tally();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{verdict}: {}</title><style>{STYLE}</style></head><body>\n\
         <h1 class=\"{}\">{verdict}: {held} / {checked} properties hold over {} nodes</h1>\n\
         <p class=\"meta\">{} · {} departed · from <code>{}</code>{}</p>\n",
        escape(page.title),
        verdict.to_lowercase(),
        report.live,
        escape(page.title),
        report.departed,
        escape(page.source),
        report
            .at
            .map(|t| format!(" · as of {t}"))
            .unwrap_or_default(),
    );

    out.push_str("<h2>Properties</h2>\n<table><tr><th></th><th>property</th><th>held</th></tr>\n");
    for p in &report.properties {
        let (class, word) = match p.status {
            Status::Pass => ("pass", "PASS"),
            Status::Fail => ("fail", "FAIL"),
            Status::Skipped => ("skip", "skip"),
        };
        let _ = write!(
            out,
            "<tr><td class=\"{class}\">{word}</td><td>{}",
            escape(&p.title)
        );
        if !p.failures.is_empty() {
            out.push_str("<ul>");
            for f in &p.failures {
                let _ = write!(out, "<li>{}</li>", escape(f));
            }
            out.push_str("</ul>");
        }
        let held = if p.status == Status::Skipped {
            "–".to_owned()
        } else {
            format!("{} / {}", p.holds, p.of)
        };
        let _ = writeln!(out, "</td><td>{held}</td></tr>");
    }
    out.push_str("</table>\n");
    let _ = writeln!(
        out,
        "<p>k-closest health: {}.</p>",
        report.closest.sentence()
    );
    for w in &report.warnings {
        let _ = writeln!(out, "<p class=\"note\">note: {}</p>", escape(w));
    }

    out.push_str("<h2>Convergence over time</h2>\n");
    match convergence.filter(|c| !c.series.is_empty()) {
        Some(c) => {
            out.push_str(&convergence_chart(c));
            out.push_str(&timing_line(c));
        }
        None => out.push_str("<p>No routing-table snapshots to replay.</p>\n"),
    }
    out.push_str("<h2>Routing-table sizes</h2>\n");
    out.push_str(&table_size_chart(report));
    out.push_str("<h2>Bucket fill against Kademlia's expectation</h2>\n");
    out.push_str(&bucket_chart(report));
    out.push_str(
        "<p class=\"meta\">Mean entries per node in each k-bucket (bucket 255 is the farthest half \
         of the key space), against min(k, (N − 1)·2<sup>−(256 − bucket)</sup>): the peers that \
         fall in it at random, capped at k (ProbeLab RFM19).</p>\n",
    );

    out.push_str("<h2>Nodes</h2>\n");
    out.push_str(&node_table(report, page));
    out.push_str("</body></html>\n");
    out
}

fn timing_line(c: &Convergence) -> String {
    let secs = |ms: Option<i64>| {
        ms.map_or("never".to_owned(), |ms| {
            format!("{:.1} s", ms as f64 / 1000.0)
        })
    };
    format!(
        "<p class=\"meta\">After the last node started: every peer in some table at {}; \
         k-closest threshold at {}; every node holding all of its closest at {}.</p>\n",
        secs(c.all_seen_ms),
        secs(c.closest_ms),
        secs(c.all_closest_ms()),
    )
}

/// An SVG chart drawn by `draw` on a fresh plotters SVG backend; any drawing error is shown in
/// place of the chart (a report is never lost to a chart).
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> String {
    let mut text = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match result {
        Ok(()) => format!("<figure>{text}</figure>\n"),
        Err(e) => format!("<p class=\"note\">chart not drawn: {}</p>\n", escape(&e)),
    }
}

fn convergence_chart(c: &Convergence) -> String {
    let n = c.nodes.max(1) as f64;
    let end = c
        .series
        .last()
        .map_or(1.0, |p| p.ms as f64 / 1000.0)
        .max(1.0);
    let last_start = c
        .first_start
        .zip(c.last_start)
        .map(|(f, l)| l.millis_since(f) as f64 / 1000.0);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..end * 1.02, 0f64..101f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first node started")
            .y_desc("% of nodes")
            .draw()
            .map_err(|e| e.to_string())?;
        let x = |p: &crate::timeline::Point| p.ms as f64 / 1000.0;
        let seen: Vec<(f64, f64)> = c
            .series
            .iter()
            .map(|p| (x(p), p.seen as f64 * 100.0 / n))
            .collect();
        let tables: Vec<(f64, f64)> = c
            .series
            .iter()
            .map(|p| (x(p), p.tables as f64 * 100.0 / n))
            .collect();
        let closest: Vec<(f64, f64)> = c.series.iter().map(|p| (x(p), p.closest * 100.0)).collect();
        for (label, colour, points) in [
            ("seen by some table", BLUE, seen),
            ("table not empty", GREEN, tables),
            ("holds all k closest", ORANGE, closest),
        ] {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        if let Some(at) = last_start {
            chart
                .draw_series(LineSeries::new(
                    vec![(at, 0.0), (at, 101.0)],
                    GREY.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?
                .label("last node started")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREY.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(|e| e.to_string())
    })
}

fn table_size_chart(report: &Report) -> String {
    let sizes: Vec<u32> = report
        .nodes
        .iter()
        .filter(|n| n.state != NodeState::Departed)
        .map(|n| u32::try_from(n.table_size).unwrap_or(u32::MAX))
        .collect();
    let Some(&max) = sizes.iter().max() else {
        return "<p>No judged nodes.</p>\n".into();
    };
    let mut counts = vec![0u32; max as usize + 1];
    for &s in &sizes {
        counts[s as usize] += 1;
    }
    let tallest = counts.iter().copied().max().unwrap_or(1);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0u32..max + 1).into_segmented(), 0u32..tallest + 1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("peers in the routing table")
            .y_desc("nodes")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(BLUE.filled())
                    .margin(1)
                    .data(sizes.iter().map(|&s| (s, 1))),
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

fn bucket_chart(report: &Report) -> String {
    if report.buckets.is_empty() {
        return "<p>No tables to count.</p>\n".into();
    }
    let lowest = report.buckets.iter().map(|b| b.bucket).min().unwrap_or(255);
    let top = report
        .buckets
        .iter()
        .map(|b| b.mean.max(b.expected))
        .fold(1.0, f64::max);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(lowest as f64 - 0.5..255.5, 0f64..top * 1.1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("k-bucket (255: the farthest half of the key space)")
            .y_desc("entries per node")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(report.buckets.iter().map(|b| {
                let x = b.bucket as f64;
                Rectangle::new([(x - 0.35, 0.0), (x + 0.35, b.mean)], BLUE.filled())
            }))
            .map_err(|e| e.to_string())?
            .label("measured (mean)")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE.filled()));
        let mut expected: Vec<(f64, f64)> = report
            .buckets
            .iter()
            .map(|b| (b.bucket as f64, b.expected))
            .collect();
        expected.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(expected, ORANGE.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("expected: min(k, (N−1)·2^−(256−bucket))")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], ORANGE.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(|e| e.to_string())
    })
}

/// What is wrong with a node, from its row; empty for a healthy one.
fn problems(n: &NodeReport) -> Vec<String> {
    let mut out = Vec::new();
    if n.state == NodeState::Departed {
        return out;
    }
    if n.seen_by == 0 {
        out.push("in no other node's table".to_owned());
    }
    if n.live_in_table == 0 {
        out.push("its table holds no live peer".to_owned());
    }
    if n.closest_found < n.closest_wanted {
        out.push(format!(
            "holds {} of its {} closest",
            n.closest_found, n.closest_wanted
        ));
    }
    if !n.bootstrapped {
        out.push("its initial bootstrap never completed".to_owned());
    }
    out
}

fn node_table(report: &Report, page: &Page) -> String {
    let mut rows: Vec<(&NodeReport, Vec<String>)> =
        report.nodes.iter().map(|n| (n, problems(n))).collect();
    // Problems first, then departed nodes last; otherwise the checker's order.
    rows.sort_by_key(|(n, p)| (p.is_empty(), n.state == NodeState::Departed));
    let mut out = String::from(
        "<table><tr><th>node</th><th>peer id</th><th>role</th><th>table</th><th>seen by</th>\
         <th>k-closest</th><th>state</th><th>problems</th></tr>\n",
    );
    for (n, problems) in rows {
        let name = match page.log_dir {
            Some(dir) => format!(
                "<a href=\"{}{}.log\">{}</a>",
                escape(dir),
                escape(&n.name),
                escape(&n.name)
            ),
            None => escape(&n.name),
        };
        let state = match n.state {
            NodeState::Live => "live",
            NodeState::StoppedWithRun => "stopped with run",
            NodeState::Departed => "departed",
        };
        let restarts = if n.restarts > 0 {
            format!(", restarted {}×", n.restarts)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "<tr class=\"{}\"><td>{name}</td><td><code>{}</code></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}/{}</td><td>{state}{restarts}</td><td>{}</td></tr>",
            if problems.is_empty() { "" } else { "bad" },
            escape(&n.peer_id),
            n.role.map_or("?", |r| r.as_str()),
            n.table_size,
            n.seen_by,
            n.closest_found,
            n.closest_wanted,
            escape(&problems.join("; ")),
        );
    }
    out.push_str("</table>\n");
    out
}

/// Text made safe for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}\
h1.pass{color:#1a7f37}h1.fail{color:#cf222e}.meta{color:#666}.note{color:#9a6700}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\
td.pass{color:#1a7f37;font-weight:bold}td.fail{color:#cf222e;font-weight:bold}td.skip{color:#888}\
tr.bad{background:#fff5f5}code{font-size:90%}figure{margin:0}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Point;
    use crate::verdict::{CheckOptions, InputSummary, check};

    fn report() -> Report {
        check(&[], &CheckOptions::default(), InputSummary::default())
    }

    #[test]
    fn a_page_is_self_contained_and_holds_the_verdict_and_charts() {
        let mut convergence = Convergence {
            nodes: 4,
            ..Convergence::default()
        };
        convergence.series = (0..10)
            .map(|i| Point {
                ms: i * 500,
                seen: (i as usize).min(4),
                tables: (i as usize).min(4),
                closest: (i as f64 / 9.0).min(1.0),
                live: 4,
            })
            .collect();
        let html = render(
            &report(),
            Some(&convergence),
            &Page {
                title: "t<1>",
                source: "runs/x",
                log_dir: Some("logs/"),
            },
        );
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("FAIL: "), "zero nodes is a failure");
        assert!(html.contains("t&lt;1&gt;"), "titles are escaped");
        // Charts are inline SVG: the convergence lines are paths of the series' colour.
        assert!(html.matches("<svg").count() >= 1, "{html}");
        assert!(
            html.contains("stroke=\"#1F77B4\""),
            "the blue line is drawn"
        );
        // Nothing is fetched: no scripts, no external references.
        for banned in ["<script", "http://", "https://", "@import", "src="] {
            let outside_svg_ns = html.replace("http://www.w3.org/2000/svg", "");
            assert!(!outside_svg_ns.contains(banned), "{banned} in the page");
        }
    }

    #[test]
    fn node_rows_put_problems_first_and_link_logs() {
        let mut r = report();
        let row = |name: &str, seen_by| NodeReport {
            name: name.into(),
            peer_id: format!("id-{name}"),
            role: None,
            state: NodeState::Live,
            restarts: 0,
            table_size: 3,
            live_in_table: 3,
            seen_by,
            closest_found: 3,
            closest_wanted: 3,
            bootstrapped: true,
        };
        r.nodes = vec![row("a", 2), row("b", 0)];
        let page = Page {
            title: "t",
            source: "s",
            log_dir: Some("logs/"),
        };
        let html = node_table(&r, &page);
        let b = html.find(">b<").expect("b");
        let a = html.find(">a<").expect("a");
        assert!(b < a, "the node with a problem comes first");
        assert!(html.contains("<a href=\"logs/b.log\">b</a>"));
        assert!(
            html.contains("in no other node&#39;s table")
                || html.contains("in no other node's table")
        );
    }
}
