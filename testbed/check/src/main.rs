//! The `testbed-check` binary: flags in, logs read (once or until `--wait` runs out), verdict out.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use testbed_check::verdict::{DEFAULT_CLOSEST_THRESHOLD, PropertyId, Status};
use testbed_check::{CheckOptions, Reader, Report, Source, SourceError, report};

/// Reads every kad-testbed node's logs and checks that the Kademlia DHT formed.
///
/// By default it reads the containers of the compose project in this directory through the Docker
/// Engine API. Exit codes: 0 every property holds, 1 a property failed, 2 the logs could not be
/// read (no Docker daemon, no such project, no events at all) or the flags are wrong.
#[derive(Debug, Parser)]
#[command(name = "testbed-check", version)]
struct Cli {
    /// Compose project to read [default: COMPOSE_PROJECT_NAME, or this directory's name as docker
    /// compose normalises it].
    #[arg(long, value_name = "NAME", conflicts_with = "logs")]
    project: Option<String>,

    /// Read the pods of this Kubernetes namespace instead (deploy/k8s; label
    /// app.kubernetes.io/part-of=kad-testbed), through the Kubernetes API (KUBECONFIG).
    #[arg(long, value_name = "NS", conflicts_with_all = ["logs", "project"])]
    k8s_namespace: Option<String>,

    /// Read the tasks of this Docker Swarm stack instead (`docker stack deploy`, or `testbed up
    /// --engine swarm`), on every node of the swarm, through this daemon (a manager).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["logs", "project", "k8s_namespace"])]
    stack: Option<String>,

    /// Read saved logs instead: a folder with one file per node (or a runs/<name>/ folder), one
    /// file, or - for stdin. Plain JSON Lines or `docker compose logs` output (v2 or v1 prefixes).
    #[arg(long, value_name = "PATH")]
    logs: Option<PathBuf>,

    /// Also read tables crawled over the wire (a `testbed-crawl --out` file; repeat for more).
    /// Nodes that answered the crawler but wrote no log are judged on them, and each node's logged
    /// table is compared with what it answered. A crawler container in the project (compose/crawl.yml)
    /// is read without this flag.
    #[arg(long = "crawl", value_name = "FILE")]
    crawls: Vec<PathBuf>,

    /// Re-read until every property holds or this much time has passed (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,

    /// Time between reads while waiting.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    interval: Duration,

    /// Every live peer must be in at least this many other nodes' routing tables.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_seen: usize,

    /// Also require every node to know every other node (meaningful while N ≤ 20, the bucket size).
    #[arg(long)]
    full_mesh: bool,

    /// k for the k-closest health property.
    #[arg(long = "closest", value_name = "K", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    closest_k: u64,

    /// Share of live nodes that must hold all of their k closest live peers: 0.9 or 90%.
    #[arg(long, value_name = "SHARE", default_value_t = DEFAULT_CLOSEST_THRESHOLD, value_parser = testbed_check::verdict::parse_share)]
    closest_threshold: f64,

    /// Fail unless exactly this many nodes are live (bootstrap included).
    #[arg(long, value_name = "N")]
    expect_nodes: Option<usize>,

    /// In logs where every node stopped and no shutdown moment is known, stops within this gap
    /// of each other at the end, after every node's latest (re)start, are the run's own shutdown
    /// (judged on the state before it); earlier ones are departures.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    shutdown_gap: Duration,

    /// Judge the network as it stood at this instant: a time (2026-11-25T10:00:00Z) or +DURATION
    /// after the first node started (+90s). Only events up to it count: nodes that started later
    /// do not exist yet, nodes that stopped later are still live, and each table is its latest
    /// snapshot by then.
    #[arg(long, value_name = "TIME", value_parser = testbed_check::verdict::parse_at, conflicts_with = "wait")]
    at: Option<testbed_check::verdict::At>,

    /// When the run's own shutdown began (RFC 3339, e.g. 2026-11-25T10:00:00Z): nodes that
    /// stopped before it departed, the rest stopped with the run. A run folder saved by `testbed
    /// up` records it in run.json, and it is used from there.
    #[arg(long, value_name = "TIME", value_parser = testbed_events::Timestamp::parse_rfc3339)]
    shutdown_at: Option<testbed_events::Timestamp>,

    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,

    /// Also write the report as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,

    /// Also write the report as one self-contained HTML page (charts inline, nothing fetched)
    /// to this file. With saved logs it charts convergence over time too.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,

    /// Also write the verdict as Markdown to this file (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,

    /// Show every node in the table, not only those with a problem (above 40 nodes).
    #[arg(long)]
    all: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = match (&cli.logs, &cli.k8s_namespace, &cli.stack) {
        (_, Some(namespace), _) => Source::Kubernetes(namespace.clone()),
        (_, _, Some(stack)) => Source::Stack(stack.clone()),
        (Some(path), None, None) => Source::Files(path.clone()),
        (None, None, None) => Source::Compose(cli.project.clone().unwrap_or_else(|| {
            let cwd = std::env::current_dir().unwrap_or_default();
            testbed_docker::default_project_name(&cwd)
        })),
    };
    let opts = CheckOptions {
        min_seen: cli.min_seen,
        full_mesh: cli.full_mesh,
        closest_k: usize::try_from(cli.closest_k).unwrap_or(20),
        closest_threshold: cli.closest_threshold,
        expect_nodes: cli.expect_nodes,
        shutdown_gap: cli.shutdown_gap,
        shutdown_at: cli.shutdown_at,
        at: cli.at,
        across: None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testbed-check: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(judge(&source, &cli.crawls, &opts, cli.wait, cli.interval));
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("testbed-check: error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.json {
        println!("{}", report::json(&report));
    } else {
        print!("{}", report::human(&report, &source.to_string(), cli.all));
    }
    if let Some(path) = &cli.junit {
        let written = report::junit(&report, &source.to_string())
            .map_err(|e| e.to_string())
            .and_then(|xml| std::fs::write(path, xml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!(
                "testbed-check: error: cannot write --junit {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &cli.markdown {
        let text = report::markdown(&report, &source.to_string());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "testbed-check: error: cannot write --markdown {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &cli.html {
        let title = source.to_string();
        let page = match &cli.logs {
            Some(logs) if logs.as_os_str() != "-" => {
                let logs_dir = if logs.join("logs").is_dir() {
                    logs.join("logs")
                } else {
                    logs.clone()
                };
                // Links relative to the page when it sits in the run folder, else absolute.
                let here = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
                let link = match (here, std::fs::canonicalize(&logs_dir).ok()) {
                    (Some(h), Some(l)) => l
                        .strip_prefix(&h)
                        .map(|r| format!("{}/", r.display()))
                        .unwrap_or_else(|_| format!("{}/", l.display())),
                    _ => format!("{}/", logs_dir.display()),
                };
                let page = testbed_check::html::Page {
                    title: &title,
                    source: &title,
                    log_dir: Some(&link),
                };
                testbed_check::html::render_saved(&report, logs, &opts, &page)
            }
            _ => testbed_check::html::render(
                &report,
                None,
                &testbed_check::html::Page {
                    title: &title,
                    source: &title,
                    log_dir: None,
                },
            ),
        };
        if let Err(e) = std::fs::write(path, page) {
            eprintln!(
                "testbed-check: error: cannot write --html {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads and judges once, or until everything holds or `wait` runs out, showing progress.
async fn judge(
    source: &Source,
    crawls: &[PathBuf],
    opts: &CheckOptions,
    wait: Option<Duration>,
    interval: Duration,
) -> Result<Report, SourceError> {
    let mut reader = Reader::new(source.clone()).with_crawls(crawls.to_vec());
    // Stdin can be read only once: its whole stream is all there will be.
    let Some(wait) = wait.filter(|_| !source.is_stdin()) else {
        return reader.check(opts).await;
    };
    let started = Instant::now();
    let progress = Progress::new();
    loop {
        let result = reader.check(opts).await;
        let elapsed = started.elapsed();
        let out_of_time = elapsed >= wait;
        match &result {
            Ok(report) if report.passed || out_of_time => {
                progress.finish(&format!("{} · {} s", summary(report), elapsed.as_secs()));
                return result;
            }
            Err(_) if out_of_time => {
                progress.finish("gave up waiting");
                return result;
            }
            Ok(report) => progress.update(&summary(report), elapsed),
            // Containers may still be starting: keep trying until the deadline.
            Err(e) => progress.update(&format!("waiting: {e}"), elapsed),
        }
        tokio::time::sleep(interval.min(wait.saturating_sub(elapsed))).await;
    }
}

/// `peers seen 37/41 · tables ≥ 1: 41/41 · k-closest 85 %`.
fn summary(report: &Report) -> String {
    let count = |id: PropertyId| {
        report
            .property(id)
            .filter(|p| p.status != Status::Skipped)
            .map(|p| format!("{}/{}", p.holds, p.of))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "peers seen {} · tables ≥ 1: {} · k-closest {:.0} %",
        count(PropertyId::Seen),
        count(PropertyId::Tables),
        report.closest.share * 100.0
    )
}

/// A live line on a terminal; plain lines (when something changed, or every 15 s) otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_plain: std::cell::RefCell<(String, Option<Instant>)>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            last_plain: std::cell::RefCell::new((String::new(), None)),
        }
    }

    fn update(&self, message: &str, elapsed: Duration) {
        let line = format!("{message} · {} s", elapsed.as_secs());
        if let Some(bar) = &self.bar {
            bar.set_message(line);
            return;
        }
        let mut last = self.last_plain.borrow_mut();
        let stale = last
            .1
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(15));
        if last.0 != message || stale {
            eprintln!("testbed-check: {line}");
            *last = (message.to_owned(), Some(Instant::now()));
        }
    }

    fn finish(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_owned()),
            None => eprintln!("testbed-check: {message}"),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 500ms, 30s or 5m)"))
}
