//! `testbed bench`: the real testbed at several sizes, with the numbers written down.
//!
//! For each size it runs the same flow as `up` (compose, check, stop, save, remove), lets the
//! converged network idle for a while to sample memory and CPU, replays the saved logs to find
//! when the network converged, times the checker on those logs, and writes BENCHMARKS.md and
//! BENCHMARKS.json at the workspace root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use testbed_check::verdict::DEFAULT_CLOSEST_THRESHOLD;
use testbed_check::{CheckOptions, Source, read_and_check};

use crate::compose::Compose;
use crate::run::{self, RunOutcome, RunSpec};
use crate::stats::median;
use crate::{ImageArgs, build_image, commit, engine, host, names, parse_duration, root};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Network sizes to run, in peers besides the bootstrap node.
    #[arg(long, value_delimiter = ',', default_value = "10,100,300,1000", value_parser = crate::parse_peers)]
    peers: Vec<usize>,

    /// How long the idle sample lasts: CPU is each node's CPU time over it, memory is read at
    /// its end.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    settle: Duration,

    /// The idle sample starts no sooner than this after the last container started: the last
    /// joins' connections and first walks keep the network busy for about two minutes (see
    /// `run::IdleSample`). `0s` samples as soon as every node joined and the check is done, as
    /// rows before this flag did.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    idle_after: Duration,

    /// Start the peers in this many waves rather than all at once: joins spread out, as on a
    /// slow daemon (the case where early nodes used to miss later, closer peers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    waves: u32,

    /// Pause between two waves.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    wave_gap: Duration,

    /// After the idle sample, SIGKILL this share of the peers (`30%` or `0.3`) and measure how
    /// the network heals: time until every live node holds its 20 closest live peers again, and
    /// until no table holds a dead peer. Rows with churn are kept apart from those without.
    #[arg(long, value_parser = testbed_check::verdict::parse_share)]
    churn: Option<f64>,

    /// How long to watch the network after the last kill.
    #[arg(long, default_value = "150s", value_parser = parse_duration)]
    heal_window: Duration,

    /// After the idle sample, crawl every node once from the host (testbed-crawl, seeded with
    /// every container's address) and record the time and FIND_NODE requests per node.
    #[arg(long)]
    crawl: bool,

    /// Play these scenarios (compose/scenarios/*.toml, comma-separated) at each `--peers` size
    /// instead of the plain run (the file's own `peers` is replaced), and write the *Scenarios*
    /// table: each expectation's verdict, and how long it took to hold (the healing time).
    #[arg(long, value_delimiter = ',', value_name = "FILE")]
    scenario: Vec<PathBuf>,

    /// How long starting the containers may take [default: 60s + 1s a peer, plus the waves'
    /// gaps]. A slow daemon (fuse-overlayfs here started 1000 at ~1/s) needs more.
    #[arg(long, value_parser = parse_duration)]
    up_timeout: Option<Duration>,

    /// Run even if the host's neighbour table looks too small.
    #[arg(long)]
    ignore_host_limits: bool,

    #[command(flatten)]
    image: ImageArgs,
}

/// One size's numbers. Rows of earlier benchmark commands are kept in BENCHMARKS.json (a
/// burst run and a run in waves are separate commands), each with its own commit and date;
/// fields added later read as empty from older rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    pub commit: String,
    pub date: String,
    /// The machine it was measured on ([`Machine::label`]); `None` in rows from before it was
    /// recorded.
    pub machine: Option<String>,
    pub peers: usize,
    pub nodes: usize,
    pub passed: bool,
    pub run: String,
    /// `compose up` until every container runs.
    pub up_s: Option<f64>,
    /// Containers started per second.
    pub start_rate: Option<f64>,
    /// From the last node's start until every node was in some table.
    pub all_seen_s: Option<f64>,
    /// From the last node's start until the k-closest threshold held.
    pub closest_s: Option<f64>,
    pub best_closest_share: f64,
    /// From the last node's start until every node held all of its k closest peers.
    pub all_closest_s: Option<f64>,
    /// Start waves (1: all at once) and the pause between them.
    pub waves: u32,
    pub wave_gap_s: f64,
    /// Connections a node dialed over the whole run (median and max over nodes).
    pub dials_median: Option<f64>,
    pub dials_max: Option<f64>,
    pub rss_median_mb: Option<f64>,
    pub rss_max_mb: Option<f64>,
    /// Medians of the RSS's two parts: the node's own memory, and pages mapped from the binary
    /// (shared by every node through the page cache).
    pub rss_anon_median_mb: Option<f64>,
    pub rss_file_median_mb: Option<f64>,
    /// CPU seconds a node used from its start to the end of the settle period (median).
    pub cpu_total_median_s: Option<f64>,
    /// CPU while idle, percent of one core (median and max over nodes).
    pub cpu_idle_median_pct: Option<f64>,
    pub cpu_idle_max_pct: Option<f64>,
    /// When the idle sample began, seconds after every container was running (rows before
    /// `--idle-after` have none: they sampled as soon as the check was done).
    pub idle_from_s: Option<f64>,
    pub load_average: Option<f64>,
    pub log_kb_per_node_min: Option<f64>,
    /// The checker's wall time on the saved logs (median of 3).
    pub checker_s: Option<f64>,
    /// Share of the peers killed after the network formed (`--churn`); 0 for none.
    pub churn_share: f64,
    pub killed: usize,
    /// From the last kill until every live node held all of its k closest live peers again
    /// (replayed from the saved logs).
    pub healed_s: Option<f64>,
    /// From the first kill until no live table held a dead peer (live checker, every ~2 s).
    pub stale_cleared_s: Option<f64>,
    /// Stale entries left at the end of the window.
    pub stale_left: Option<usize>,
    /// The oldest any stale entry got: from its peer's kill to a snapshot that still held it
    /// (live checker samples).
    pub stale_oldest_s: Option<f64>,
    /// `--crawl`: one crawl of every node from the host after the idle sample.
    pub crawl_nodes: Option<usize>,
    pub crawl_failed: Option<usize>,
    pub crawl_requests_per_node: Option<f64>,
    pub crawl_s: Option<f64>,
    pub error: Option<String>,
}

impl Default for Row {
    fn default() -> Self {
        Row {
            commit: String::new(),
            date: String::new(),
            machine: None,
            peers: 0,
            nodes: 0,
            passed: false,
            run: String::new(),
            up_s: None,
            start_rate: None,
            all_seen_s: None,
            closest_s: None,
            best_closest_share: 0.0,
            all_closest_s: None,
            waves: 1,
            wave_gap_s: 0.0,
            dials_median: None,
            dials_max: None,
            rss_median_mb: None,
            rss_max_mb: None,
            rss_anon_median_mb: None,
            rss_file_median_mb: None,
            cpu_total_median_s: None,
            cpu_idle_median_pct: None,
            cpu_idle_max_pct: None,
            idle_from_s: None,
            load_average: None,
            log_kb_per_node_min: None,
            checker_s: None,
            churn_share: 0.0,
            killed: 0,
            healed_s: None,
            stale_cleared_s: None,
            stale_left: None,
            stale_oldest_s: None,
            crawl_nodes: None,
            crawl_failed: None,
            crawl_requests_per_node: None,
            crawl_s: None,
            error: None,
        }
    }
}

/// The host a benchmark command ran on, as the file's head names it.
#[derive(Debug, Serialize, Deserialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    kernel: String,
    docker: String,
    compose: String,
}

/// One expectation of one scenario run (`bench --scenario`): a line of the *Scenarios* table.
/// A run that failed before its steps is one line with step 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScenarioRow {
    pub scenario: String,
    pub peers: usize,
    pub commit: String,
    pub date: String,
    /// As in [`Row::machine`].
    pub machine: Option<String>,
    pub run: String,
    /// The whole run: the network formed and every expectation held.
    pub passed: bool,
    pub step: usize,
    /// What the step did, as the scenario report says it.
    pub action: String,
    /// The expectation (`closest ≥ 100 %`) and how it must hold (`within 2m`).
    pub expectation: String,
    pub expectation_passed: bool,
    /// `within`: from the step until the property first held (the healing time).
    pub held_after_s: Option<f64>,
    /// Why the expectation failed, or why the run did.
    pub failure: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Benchmarks {
    date: String,
    commit: String,
    command: String,
    machine: Machine,
    image_bytes: Option<u64>,
    settle_s: u64,
    rows: Vec<Row>,
    /// Written by `bench --scenario`; files from before it have none.
    #[serde(default)]
    scenarios: Vec<ScenarioRow>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    // Every scenario file is read (and its privileges checked) before anything starts.
    let mut scenarios = Vec::new();
    if !args.scenario.is_empty() {
        if args.churn.is_some() || args.crawl || args.waves > 1 {
            anyhow::bail!(
                "--scenario plays its own timeline: drop --churn, --crawl and --waves (a scenario \
                 kills, adds or restarts peers with its own steps)"
            );
        }
        for path in &args.scenario {
            scenarios.push(crate::scenario::file::load(path)?);
        }
        if scenarios.iter().any(|s| s.needs_network_faults()) {
            crate::faults::preflight(scenarios.iter().any(|s| s.needs_delay())).await?;
        }
    }
    let largest = args.peers.iter().copied().max().unwrap_or(0) + 1;
    for note in host::check_neighbour_table(largest, args.ignore_host_limits)?.notes {
        eprintln!("testbed: {note}");
    }
    let docker = testbed_docker::connect().await?;
    let compose = Compose::detect()?;
    build_image(&args.image)?;
    let image_bytes = engine::image_size(&docker, &args.image.image).await;
    let root = root();
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    if !scenarios.is_empty() {
        let mut lines = Vec::new();
        let mut all_passed = true;
        for scenario in &scenarios {
            for &peers in &args.peers {
                eprintln!(
                    "\ntestbed bench: scenario {} at {peers} peers",
                    scenario.name
                );
                let mut scenario = scenario.clone();
                scenario.peers = peers;
                let (name, project) = names(
                    Some(format!("bench-{stamp}-{}-{peers}p", scenario.name)),
                    "bench",
                    peers,
                );
                let spec = RunSpec {
                    name,
                    project,
                    peers,
                    root: root.clone(),
                    overlays: std::iter::once(root.join("compose/scale.yml"))
                        .chain(scenario.overlays.iter().map(|o| root.join(o)))
                        .collect(),
                    image: args.image.image.clone(),
                    engine: run::Engine::Compose(compose.clone()),
                    keep: false,
                    wait: crate::default_wait(peers),
                    up_timeout: args.up_timeout.unwrap_or(crate::default_up_timeout(peers)),
                    waves: run::Waves::ALL_AT_ONCE,
                    check: CheckOptions {
                        expect_nodes: Some(peers + 1),
                        ..CheckOptions::default()
                    },
                    env: crate::scenario_env(&scenario),
                    settle: None,
                    kind: "bench",
                    churn: None,
                    scenario: Some(scenario.clone()),
                    crawl: false,
                    host_crawl: false,
                };
                let outcome = run::execute(&spec, &docker).await;
                if let Some(signal) = outcome.interrupted {
                    eprintln!(
                        "testbed bench: interrupted ({signal}) in scenario {} at {peers} peers: no \
                         row for it, no further runs",
                        scenario.name
                    );
                    return Ok(2);
                }
                all_passed &= outcome.exit_code() == 0;
                let (date, commit, command, machine) = header(&root, &docker, &compose).await;
                lines.extend(scenario_rows(
                    &scenario.name,
                    peers,
                    &outcome,
                    &commit,
                    &date,
                    &machine.label(),
                ));
                let (rows, scenarios) = with_earlier(&root, Vec::new(), lines.clone());
                let bench = Benchmarks {
                    date,
                    commit,
                    command,
                    machine,
                    image_bytes,
                    settle_s: args.settle.as_secs(),
                    rows,
                    scenarios,
                };
                write(&root, &bench)?;
            }
        }
        return Ok(if all_passed { 0 } else { 1 });
    }

    let mut rows = Vec::new();
    for &peers in &args.peers {
        eprintln!("\ntestbed bench: {peers} peers");
        let (name, project) = names(Some(format!("bench-{stamp}-{peers}p")), "bench", peers);
        let spec = RunSpec {
            name,
            project,
            peers,
            root: root.clone(),
            overlays: vec![root.join("compose/scale.yml")],
            image: args.image.image.clone(),
            engine: run::Engine::Compose(compose.clone()),
            keep: false,
            wait: crate::default_wait(peers),
            up_timeout: args
                .up_timeout
                .unwrap_or(crate::default_up_timeout(peers) + args.wave_gap * (args.waves - 1)),
            waves: run::Waves {
                count: args.waves,
                gap: args.wave_gap,
            },
            check: CheckOptions {
                expect_nodes: Some(peers + 1),
                ..CheckOptions::default()
            },
            // The node heals only when asked (`--heal`); a churn benchmark measures that.
            env: if args.churn.is_some() {
                vec![("KAD_HEAL".into(), "true".into())]
            } else {
                Vec::new()
            },
            settle: Some(run::IdleSample {
                window: args.settle,
                after_start: args.idle_after,
            }),
            kind: "bench",
            churn: args.churn.map(|share| run::Churn {
                share,
                window: args.heal_window,
            }),
            scenario: None,
            crawl: false,
            host_crawl: args.crawl,
        };
        let outcome = run::execute(&spec, &docker).await;
        if let Some(signal) = outcome.interrupted {
            // The user (or CI) asked to stop: no half-measured row, and no further sizes.
            eprintln!(
                "testbed bench: interrupted ({signal}) at {peers} peers: no row for it, no further sizes"
            );
            return Ok(2);
        }
        let mut row = measure(&outcome, peers).await;
        row.commit = commit(&root);
        row.date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        row.waves = args.waves;
        row.churn_share = args.churn.unwrap_or(0.0);
        row.wave_gap_s = if args.waves > 1 {
            args.wave_gap.as_secs_f64()
        } else {
            0.0
        };
        let (date, commit, command, machine) = header(&root, &docker, &compose).await;
        row.machine = Some(machine.label());
        rows.push(row);
        let (measured, scenarios) = with_earlier(&root, rows.clone(), Vec::new());
        let bench = Benchmarks {
            date,
            commit,
            command,
            machine,
            image_bytes,
            settle_s: args.settle.as_secs(),
            rows: measured,
            scenarios,
        };
        // Written after every size, so a long benchmark that dies late still leaves its numbers.
        write(&root, &bench)?;
    }
    let all_passed = rows.iter().all(|r| r.passed);
    Ok(if all_passed { 0 } else { 1 })
}

/// The rows and scenario lines of the BENCHMARKS.json already there: none if there is no file
/// or it does not parse (it is then rewritten from this command's numbers alone).
fn earlier(root: &Path) -> (Vec<Row>, Vec<ScenarioRow>) {
    std::fs::read_to_string(root.join("BENCHMARKS.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Benchmarks>(&text).ok())
        .map(|b| (b.rows, b.scenarios))
        .unwrap_or_default()
}

/// `new`, plus each `earlier` entry whose key no `new` entry has: a benchmark command replaces
/// the rows of what it measured and keeps the rest. The keys are taken from `new` alone, so
/// that several earlier entries with one key (a scenario's expectations) all stay.
fn merge<T, K: PartialEq>(mut new: Vec<T>, earlier: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let measured: Vec<K> = new.iter().map(&key).collect();
    new.extend(
        earlier
            .into_iter()
            .filter(|old| !measured.contains(&key(old))),
    );
    new
}

/// `rows` and `lines`, plus the earlier ones for other (peers, waves, churn) and other (scenario,
/// peers); rows in order of waves, churn then peers, lines in order of scenario, peers and step.
fn with_earlier(
    root: &Path,
    rows: Vec<Row>,
    lines: Vec<ScenarioRow>,
) -> (Vec<Row>, Vec<ScenarioRow>) {
    let (old_rows, old_lines) = earlier(root);
    let mut rows = merge(rows, old_rows, |r| (r.peers, r.waves, r.churn_share));
    rows.sort_by(|a, b| {
        (a.waves, a.churn_share > 0.0, a.peers).cmp(&(b.waves, b.churn_share > 0.0, b.peers))
    });
    let mut lines = merge(lines, old_lines, |l| (l.scenario.clone(), l.peers));
    // Stable: a step's expectations keep their order.
    lines.sort_by(|a, b| (&a.scenario, a.peers, a.step).cmp(&(&b.scenario, b.peers, b.step)));
    (rows, lines)
}

/// What the file's head says: date, commit, command and machine.
async fn header(
    root: &Path,
    docker: &testbed_docker::bollard::Docker,
    compose: &Compose,
) -> (String, String, String, Machine) {
    (
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        commit(root),
        std::env::args().collect::<Vec<_>>().join(" "),
        machine(docker, compose).await,
    )
}

/// The *Scenarios* table's lines for one run: one per expectation, or one saying why no step ran.
fn scenario_rows(
    scenario: &str,
    peers: usize,
    outcome: &RunOutcome,
    commit: &str,
    date: &str,
    machine: &str,
) -> Vec<ScenarioRow> {
    let base = ScenarioRow {
        scenario: scenario.to_owned(),
        peers,
        commit: commit.to_owned(),
        date: date.to_owned(),
        machine: Some(machine.to_owned()),
        run: outcome.name.clone(),
        passed: outcome.exit_code() == 0,
        ..ScenarioRow::default()
    };
    let mut lines = Vec::new();
    if let Some(played) = &outcome.scenario {
        for step in &played.steps {
            if let Some(error) = &step.error {
                lines.push(ScenarioRow {
                    step: step.number,
                    action: step.action.clone(),
                    failure: Some(format!("the step failed: {error}")),
                    ..base.clone()
                });
            }
            for e in &step.expectations {
                let (held_after_s, failure) = match &e.verdict {
                    crate::scenario::judge::Verdict::Pass { held_after_s } => (*held_after_s, None),
                    crate::scenario::judge::Verdict::Fail { at_s, reasons } => (
                        None,
                        Some(format!("at {at_s:.1} s: {}", reasons.join("; "))),
                    ),
                    crate::scenario::judge::Verdict::Pending => {
                        (None, Some("never judged (the run ended first)".to_owned()))
                    }
                };
                lines.push(ScenarioRow {
                    step: step.number,
                    action: step.action.clone(),
                    expectation: format!("{} {}", e.property, e.hold),
                    expectation_passed: e.passed(),
                    held_after_s,
                    failure,
                    ..base.clone()
                });
            }
        }
    }
    if lines.is_empty() {
        let why = outcome
            .error
            .clone()
            .or_else(|| {
                (!outcome.scenario.as_ref().is_some_and(|s| s.formed))
                    .then(|| "the network did not form, so no step ran".to_owned())
            })
            .unwrap_or_else(|| "no step ran".to_owned());
        lines.push(ScenarioRow {
            failure: Some(why),
            ..base
        });
    }
    lines
}

pub(crate) async fn measure(outcome: &RunOutcome, peers: usize) -> Row {
    let nodes = peers + 1;
    let logs = outcome.run_dir.join("logs");
    let convergence =
        testbed_check::timeline::replay_dir(&logs, 20, DEFAULT_CLOSEST_THRESHOLD).ok();
    // One value per node, sorted for median and max.
    let sorted = |value: fn(&crate::engine::NodeResources) -> f64| {
        let mut values: Vec<f64> = outcome.resources.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    fn mb(bytes: u64) -> f64 {
        bytes as f64 / (1024.0 * 1024.0)
    }
    let rss = sorted(|r| mb(r.rss_bytes));
    let dials: Option<Vec<f64>> = convergence.as_ref().map(|c| {
        c.outbound_connections
            .iter()
            .map(|&d| f64::from(d))
            .collect()
    });
    let cpu_total = sorted(|r| r.cpu_seconds);
    let mut idle = outcome.idle_cpu_percent.clone();
    idle.sort_by(f64::total_cmp);
    let minutes = convergence.as_ref().and_then(|c| {
        let span = c.last_event?.millis_since(c.first_start?);
        (span > 0).then(|| span as f64 / 60_000.0)
    });
    let mut checker = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let ok = read_and_check(&Source::Files(logs.clone()), &CheckOptions::default())
            .await
            .is_ok();
        if ok {
            checker.push(started.elapsed().as_secs_f64());
        }
    }
    checker.sort_by(f64::total_cmp);
    Row {
        commit: String::new(),
        date: String::new(),
        machine: None,
        peers,
        nodes,
        passed: outcome.exit_code() == 0,
        run: outcome.name.clone(),
        up_s: outcome.up_seconds,
        start_rate: outcome.up_seconds.map(|s| nodes as f64 / s),
        all_seen_s: convergence
            .as_ref()
            .and_then(|c| c.all_seen_ms)
            .map(|ms| ms as f64 / 1000.0),
        closest_s: convergence
            .as_ref()
            .and_then(|c| c.closest_ms)
            .map(|ms| ms as f64 / 1000.0),
        best_closest_share: convergence.as_ref().map_or(0.0, |c| c.best_closest_share),
        all_closest_s: convergence
            .as_ref()
            .and_then(|c| c.all_closest_ms())
            .map(|ms| ms as f64 / 1000.0),
        waves: 1,
        wave_gap_s: 0.0,
        dials_median: dials.as_deref().and_then(median),
        dials_max: dials.as_ref().and_then(|d| d.last().copied()),
        rss_median_mb: median(&rss),
        rss_max_mb: rss.last().copied(),
        rss_anon_median_mb: median(&sorted(|r| mb(r.rss_anon_bytes))),
        rss_file_median_mb: median(&sorted(|r| mb(r.rss_file_bytes))),
        cpu_total_median_s: median(&cpu_total),
        cpu_idle_median_pct: median(&idle),
        cpu_idle_max_pct: idle.last().copied(),
        idle_from_s: outcome.idle_from_s,
        load_average: outcome.load_average,
        log_kb_per_node_min: minutes.map(|m| outcome.log_bytes as f64 / 1024.0 / nodes as f64 / m),
        checker_s: median(&checker),
        churn_share: 0.0,
        killed: outcome.churn.as_ref().map_or(0, |c| c.killed.len()),
        healed_s: outcome.churn.as_ref().and_then(|c| {
            let first = convergence.as_ref()?.first_start?;
            // From the last kill: after the first, the rest are still to come.
            let since = c.killed.iter().map(|k| k.at).max()?.millis_since(first);
            let healed = convergence.as_ref()?.healed_after(since)?;
            Some(healed as f64 / 1000.0)
        }),
        stale_cleared_s: outcome.churn.as_ref().and_then(|c| c.stale_cleared_s),
        stale_left: outcome.churn.as_ref().map(|c| c.stale_left),
        // Replayed from the saved logs, not the live sample: that one also counts how far the
        // reader lagged behind the nodes (125.4 s live against 112.1 s replayed at N = 300).
        stale_oldest_s: outcome.churn.as_ref().and_then(|_| {
            let ms = convergence.as_ref()?.stale_oldest_ms?;
            Some(ms as f64 / 1000.0)
        }),
        crawl_nodes: outcome.crawl.map(|c| c.nodes),
        crawl_failed: outcome.crawl.map(|c| c.failed),
        crawl_requests_per_node: outcome
            .crawl
            .map(|c| c.requests as f64 / c.nodes.max(1) as f64),
        crawl_s: outcome.crawl.map(|c| c.seconds),
        error: outcome.error.clone(),
    }
}

async fn machine(docker: &testbed_docker::bollard::Docker, compose: &Compose) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb / 1024.0 / 1024.0)
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let docker = docker
        .version()
        .await
        .ok()
        .and_then(|v| v.version)
        .unwrap_or_else(|| "unknown".into());
    let compose_version = std::process::Command::new(match compose {
        Compose::V1 => "docker-compose",
        Compose::V2 => "docker",
    })
    .args(match compose {
        Compose::V1 => vec!["version", "--short"],
        Compose::V2 => vec!["compose", "version", "--short"],
    })
    .output()
    .ok()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib,
        kernel,
        docker,
        compose: format!("{} {compose_version}", compose.name()),
    }
}

impl Machine {
    /// What each row records of its machine: the CPU and its cores (`Intel Xeon, 2 cores`).
    /// Machines of one kind differ (the checker took 0.64 s on a 300-node run's logs on one,
    /// 0.37 s on another), so a row's figures compare only with rows of the same machine.
    fn label(&self) -> String {
        format!("{}, {} cores", short_cpu(&self.cpu), self.cores)
    }
}

/// A CPU's model name without its trademarks, clock and filler words (`Intel(R) Xeon(R)
/// Processor` is `Intel Xeon`, `AMD EPYC 7B13 64-Core Processor` is `AMD EPYC 7B13`).
fn short_cpu(model: &str) -> String {
    let model = model.split('@').next().unwrap_or(model);
    model
        .replace("(R)", "")
        .replace("(TM)", "")
        .split_whitespace()
        .filter(|w| !matches!(*w, "Processor" | "CPU") && !w.ends_with("-Core"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn write(root: &Path, bench: &Benchmarks) -> anyhow::Result<()> {
    let json_path: PathBuf = root.join("BENCHMARKS.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(bench)?)?;
    std::fs::write(root.join("BENCHMARKS.md"), markdown(bench))?;
    eprintln!("testbed bench: wrote BENCHMARKS.md and BENCHMARKS.json");
    Ok(())
}

/// Text for a Markdown table cell: a `|` would end the cell.
fn cell(text: &str) -> String {
    text.replace('|', "/")
}

/// How a row's peers were started: all at once ("1"), or "W × G s" in W waves G seconds apart.
/// Rows of one size differ only in this, so every table that lists runs shows it.
fn waves_cell(r: &Row) -> String {
    if r.waves > 1 {
        format!("{} × {:.0} s", r.waves, r.wave_gap_s)
    } else {
        "1".into()
    }
}

/// A row's machine, for a table cell.
fn machine_cell(label: Option<&str>) -> String {
    label.map_or("–".into(), cell)
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn markdown(b: &Benchmarks) -> String {
    let m = &b.machine;
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(
        "Written by `cargo run --release -p testbed -- bench` (edit by rerunning, not by hand). Every \
         row is one real run: bootstrap + N peers in containers on one host, checked, stopped, \
         saved under `runs/`, removed.\n\n",
    );
    out.push_str(&format!(
        "- **Date**: {}\n- **Commit**: `{}`\n- **Command**: `{}`\n- **Machine**: {} ({} cores), \
         {:.0} GiB RAM, Linux {}, Docker Engine {}, {}\n- **Image**: {}\n- **Idle sample**: once the \
         check is done, and no sooner than the row's *idle from* after the last start, the \
         network idles {} s; memory is each node's RSS at the end (and its two \
         parts: *anon*, the node's own heap and stacks, what each further node costs; *file*, \
         pages of the binary, one copy in the page cache shared by all nodes), idle CPU the node's \
         CPU time over that window\n\n",
        b.date,
        b.commit,
        b.command,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.kernel,
        m.docker,
        m.compose,
        b.image_bytes
            .map_or("–".into(), |s| format!("{:.2} MB", s as f64 / 1e6)),
        b.settle_s
    ));
    out.push_str(
        "| peers | waves | commit | machine | pass | up (s) | starts/s | all seen (s) | k-closest ≥ 90 % (s) | k-closest 100 % (s) | best k-closest | dials / node median / max | RSS median / max (MB) | anon / file median (MB) | CPU total / idle median / idle max | idle from (s) | load | log KB/node/min | checker (s) |\n",
    );
    out.push_str(
        "|---:|---:|---|---|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in b.rows.iter().filter(|r| r.churn_share == 0.0) {
        out.push_str(&format!(
            "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {:.1} % | {} / {} | {} / {} | {} / {} | {} s / {} % / {} % | {} | {} | {} | {} |\n",
            r.peers,
            waves_cell(r),
            r.commit,
            machine_cell(r.machine.as_deref()),
            if r.passed { "✅" } else { "❌" },
            num(r.up_s, 1),
            num(r.start_rate, 1),
            num(r.all_seen_s, 1),
            num(r.closest_s, 1),
            num(r.all_closest_s, 1),
            r.best_closest_share * 100.0,
            num(r.dials_median, 0),
            num(r.dials_max, 0),
            num(r.rss_median_mb, 1),
            num(r.rss_max_mb, 1),
            num(r.rss_anon_median_mb, 1),
            num(r.rss_file_median_mb, 1),
            num(r.cpu_total_median_s, 2),
            num(r.cpu_idle_median_pct, 2),
            num(r.cpu_idle_max_pct, 2),
            num(r.idle_from_s, 0),
            num(r.load_average, 1),
            num(r.log_kb_per_node_min, 1),
            num(r.checker_s, 2),
        ));
    }
    out.push_str(
        "\nColumns: *waves* is how the peers were started: all at once (1), or in W waves a gap \
         apart; *up* is `compose up` until every container runs; *all seen* and *k-closest* \
         are measured from the moment the last node started, by replaying every routing-table \
         snapshot of the saved logs (`testbed_check::timeline`); a negative value means it already \
         held when the last node started. *k-closest 100 %* is when every node held all of its 20 \
         closest peers (– if that never happened). *dials* are the connections a node opened over \
         the whole run. *idle from* is when the idle sample began, in seconds after the last \
         start (– in rows from before `--idle-after`: as soon as the check was done, while the \
         last joins' connections and first walks were still under way). *checker* is `testbed-check --logs runs/<run>/logs` on the saved logs, \
         median of three. *machine* is the CPU the row ran on (– in rows from before it was \
         recorded): machines of one kind differ, so rows compare only on the same machine. Rows \
         of earlier commands are kept, each with its commit.\n\n",
    );
    let churned: Vec<&Row> = b.rows.iter().filter(|r| r.churn_share > 0.0).collect();
    if !churned.is_empty() {
        out.push_str(
            "## Healing after churn\n\n`bench --churn 30%`: once the network formed and idled, \
             that share of the peers is killed (SIGKILL, one container after another), and the \
             network is watched for `--heal-window` after the last kill.\n\n",
        );
        out.push_str(
            "| peers | killed | commit | machine | pass | k-closest 100 % again (s) | no stale entry (s) | oldest stale entry (s) | stale left | dials / node median | idle CPU median | load |\n|---:|---:|---|---|:---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &churned {
            out.push_str(&format!(
                "| {} | {} ({:.0} %) | `{}` | {} | {} | {} | {} | {} | {} | {} | {} % | {} |\n",
                r.peers,
                r.killed,
                r.churn_share * 100.0,
                r.commit,
                machine_cell(r.machine.as_deref()),
                if r.passed { "✅" } else { "❌" },
                num(r.healed_s, 1),
                num(r.stale_cleared_s, 1),
                num(r.stale_oldest_s, 1),
                r.stale_left.map_or("–".into(), |n| n.to_string()),
                num(r.dials_median, 0),
                num(r.cpu_idle_median_pct, 2),
                num(r.load_average, 1),
            ));
        }
        out.push_str(
            "\nColumns: *k-closest 100 % again* is from the last kill until every live node held \
             all of its 20 closest live peers, replayed from the saved logs (the killed count as \
             departed from the moment they were killed, recorded in run.json); *no stale entry* \
             is from the first kill until no live node's table held a dead peer (the live \
             checker, every ~2 s; it includes the time the kills take, two minutes for 90 \
             containers); *oldest stale entry* is the longest any entry pointed at a dead peer, \
             from that peer's kill (the moment `docker kill` returned) to the first snapshot of \
             its holder without it, replayed from the saved logs (rows up to `2506339` \
             took it from the live checker and the kill's request, which also counted the \
             reader's lag and the daemon's; – in rows before it was measured); *stale left* is \
             what tables still held at the end.\n\n",
        );
    }
    if !b.scenarios.is_empty() {
        out.push_str(
            "## Scenarios\n\n`bench --scenario compose/scenarios/<name>.toml --peers N`: the \
             scenario's timeline played on N peers (its own `peers` replaced), judged as `up \
             --scenario` judges it. One line per expectation; *held after* is from its step's \
             action until the property first held (the healing time), for `within` expectations: \
             judged from the saved logs at every second in the nodes' own clocks (rows up to \
             `a113218` from the live samples, every ~2 s as the reader had the logs).\n\n\
             | scenario | peers | commit | machine | run passed | step | action | expectation | held | held after (s) |\n\
             |---|---:|---|---|:---:|---:|---|---|:---:|---:|\n",
        );
        for l in &b.scenarios {
            out.push_str(&format!(
                "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} |\n",
                l.scenario,
                l.peers,
                l.commit,
                machine_cell(l.machine.as_deref()),
                if l.passed { "✅" } else { "❌" },
                l.step,
                cell(&l.action),
                cell(&l.expectation),
                match (&l.failure, l.expectation_passed) {
                    (_, true) => "✅".to_owned(),
                    (Some(why), false) => format!("❌ {}", cell(why)),
                    (None, false) => "❌".to_owned(),
                },
                num(l.held_after_s, 1),
            ));
        }
        out.push('\n');
    }
    let crawled: Vec<&Row> = b.rows.iter().filter(|r| r.crawl_s.is_some()).collect();
    if !crawled.is_empty() {
        out.push_str(
            "## Crawling\n\n`bench --crawl`: after the idle sample, `testbed-crawl` reads every \
             node's routing table over the wire once, from the host, seeded with every \
             container's address (one FIND_NODE per k-bucket, 64 nodes at a time).\n\n\
             | peers | waves | commit | machine | nodes read | not read | FIND_NODE / node | time (s) |\n\
             |---:|---:|---|---|---:|---:|---:|---:|\n",
        );
        for r in &crawled {
            out.push_str(&format!(
                "| {} | {} | `{}` | {} | {} | {} | {} | {} |\n",
                r.peers,
                waves_cell(r),
                r.commit,
                machine_cell(r.machine.as_deref()),
                r.crawl_nodes.map_or("–".into(), |n| n.to_string()),
                r.crawl_failed.map_or("–".into(), |n| n.to_string()),
                num(r.crawl_requests_per_node, 1),
                num(r.crawl_s, 1),
            ));
        }
        out.push('\n');
    }
    out.push_str("## Targets\n\n");
    let row = |n: usize| {
        b.rows
            .iter()
            .find(|r| r.peers == n && r.waves == 1 && r.churn_share == 0.0)
    };
    let waves = |n: usize| {
        b.rows
            .iter()
            .find(|r| r.peers == n && r.waves > 1 && r.churn_share == 0.0)
    };
    // Measured on any run of n peers, started at once or in waves: the newest run's figure.
    let newest = |n: usize, figure: fn(&Row) -> Option<f64>| {
        b.rows
            .iter()
            .filter(|r| r.peers == n && r.churn_share == 0.0)
            .filter_map(|r| Some((&r.date, figure(r)?)))
            .max_by(|a, b| a.0.cmp(b.0))
            .map(|(_, v)| v)
    };
    let crawl1000 = newest(1000, |r| r.crawl_s);
    let checker1000 = newest(1000, |r| r.checker_s);
    let churn = |n: usize| churned.iter().find(|r| r.peers == n).copied();
    let healed = |r: Option<&Row>| {
        r.map(|r| {
            // "No stale entry older than 2 min": the oldest entry's age where it was
            // measured, else the time until none was left.
            let stale = r.stale_oldest_s.or(r.stale_cleared_s);
            let ok = r.healed_s.is_some_and(|s| s <= 60.0)
                && r.stale_left == Some(0)
                && stale.is_some_and(|s| s <= 120.0);
            (
                ok,
                format!("{} s / {} s", num(r.healed_s, 1), num(stale, 1)),
            )
        })
        .unzip()
    };
    let (ok50c, at50c) = healed(churn(50));
    let (ok300c, at300c) = healed(churn(300));
    let within_60 = |r: Option<&Row>| {
        (
            r.map(|r| r.all_closest_s.is_some_and(|s| s <= 60.0)),
            r.map(|r| format!("{} s", num(r.all_closest_s, 1))),
        )
    };
    let (ok300, at300) = within_60(row(300));
    let (ok1000, at1000) = within_60(row(1000));
    let (ok300w, at300w) = within_60(waves(300));
    let (ok1000w, at1000w) = within_60(waves(1000));
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    };
    let targets = [
        (
            "every node holds all of its 20 closest within 60 s of the last start, N = 300",
            ok300,
            at300,
        ),
        (
            "the same with the peers started in waves, N = 300",
            ok300w,
            at300w,
        ),
        ("the same, N = 1000", ok1000, at1000),
        (
            "the same with the peers started in waves, N = 1000",
            ok1000w,
            at1000w,
        ),
        (
            "after 30 % of the peers are killed, N = 50: every live node holds its 20 closest live peers again within 60 s, and no stale entry is older than 2 min",
            ok50c,
            at50c,
        ),
        ("the same, N = 300", ok300c, at300c),
        (
            "outbound dials per node ≤ 2× the 70 measured at 226e231, before the join fix, N = 300 (median)",
            row(300).and_then(|r| r.dials_median).map(|d| d <= 140.0),
            row(300).map(|r| num(r.dials_median, 0)),
        ),
        (
            "idle CPU ≤ 2× the 0.07 % measured at 226e231, before the join fix, N = 300 (median)",
            row(300)
                .and_then(|r| r.cpu_idle_median_pct)
                .map(|c| c <= 0.14),
            row(300).map(|r| format!("{} %", num(r.cpu_idle_median_pct, 2))),
        ),
        (
            "N = 1000 passes the check, started all at once",
            row(1000).map(|r| r.passed),
            row(1000).map(|r| format!("pass = {}", r.passed)),
        ),
        (
            "N = 1000 passes the check, started in waves",
            waves(1000).map(|r| r.passed),
            waves(1000).map(|r| format!("pass = {}", r.passed)),
        ),
        (
            "every peer in some table within 5 s after the last node started, N = 300",
            row(300).and_then(|r| r.all_seen_s).map(|s| s <= 5.0),
            row(300).map(|r| format!("{} s", num(r.all_seen_s, 1))),
        ),
        (
            "node RSS ≤ 6 MB idle at N = 100 (median)",
            row(100).and_then(|r| r.rss_median_mb).map(|m| m <= 6.0),
            row(100).map(|r| {
                format!(
                    "{} MB ({} anon + {} file)",
                    num(r.rss_median_mb, 1),
                    num(r.rss_anon_median_mb, 1),
                    num(r.rss_file_median_mb, 1)
                )
            }),
        ),
        (
            "image ≤ 8 MB",
            b.image_bytes.map(|s| s <= 8_000_000),
            b.image_bytes.map(|s| format!("{:.2} MB", s as f64 / 1e6)),
        ),
        (
            "crawling 1000 nodes takes ≤ 30 s",
            crawl1000.map(|s| s <= 30.0),
            crawl1000.map(|s| format!("{s:.1} s")),
        ),
        (
            "the checker reads a 1000-node run in ≤ 2 s",
            checker1000.map(|s| s <= 2.0),
            checker1000.map(|s| format!("{s:.2} s")),
        ),
    ];
    out.push_str("| target | measured | |\n|---|---:|---|\n");
    for (what, ok, measured) in targets {
        out.push_str(&format!(
            "| {what} | {} | {} |\n",
            measured.unwrap_or_else(|| "–".into()),
            verdict(ok)
        ));
    }
    let errors: Vec<String> = b
        .rows
        .iter()
        .filter_map(|r| Some(format!("- {} peers: {}", r.peers, r.error.as_ref()?)))
        .collect();
    if !errors.is_empty() {
        out.push_str("\n## Errors\n\n");
        out.push_str(&errors.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(scenarios: Vec<ScenarioRow>) -> Benchmarks {
        Benchmarks {
            date: "2026-11-29T00:00:00Z".into(),
            commit: "abc1234".into(),
            command: "testbed bench".into(),
            machine: Machine {
                cpu: "cpu".into(),
                cores: 2,
                memory_gib: 24.0,
                kernel: "6".into(),
                docker: "20.10".into(),
                compose: "v2".into(),
            },
            image_bytes: None,
            settle_s: 30,
            rows: Vec::new(),
            scenarios,
        }
    }

    #[test]
    fn the_scenarios_table_shows_each_expectation_with_its_healing_time_or_why_it_failed() {
        let held = ScenarioRow {
            scenario: "churn".into(),
            peers: 100,
            step: 1,
            action: "kill victims".into(),
            expectation: "closest ≥ 100 % within 2m".into(),
            expectation_passed: true,
            held_after_s: Some(42.3),
            ..ScenarioRow::default()
        };
        let failed = ScenarioRow {
            step: 2,
            expectation: "across a|b within 1m".into(),
            expectation_passed: false,
            held_after_s: None,
            failure: Some("at 60.0 s: a | b still apart".into()),
            ..held.clone()
        };
        let md = markdown(&bench(vec![held, failed]));
        assert!(md.contains("## Scenarios"), "{md}");
        assert!(
            md.contains("| churn | 100 | `` | – | ❌ | 1 | kill victims | closest ≥ 100 % within 2m | ✅ | 42.3 |"),
            "{md}"
        );
        // A reason's `|` would split the table's cell.
        assert!(
            md.contains("| ❌ at 60.0 s: a / b still apart | – |"),
            "{md}"
        );
        assert!(!markdown(&bench(Vec::new())).contains("## Scenarios"));
    }

    /// A burst at N = 1000 that failed and a later run in waves that passed: each has its own
    /// targets, and the crawl and checker targets take the newest run that measured them.
    #[test]
    fn the_targets_at_n_1000_tell_a_burst_from_waves_and_use_the_newest_measurement() {
        let mut b = bench(Vec::new());
        b.rows = vec![
            Row {
                date: "2026-11-01T00:00:00Z".into(),
                peers: 1000,
                waves: 1,
                passed: false,
                checker_s: Some(3.31),
                ..Row::default()
            },
            Row {
                date: "2026-11-30T00:00:00Z".into(),
                peers: 1000,
                waves: 10,
                passed: true,
                all_closest_s: Some(60.0),
                checker_s: Some(1.9),
                crawl_s: Some(8.5),
                ..Row::default()
            },
        ];
        let md = markdown(&b);
        for line in [
            "| N = 1000 passes the check, started all at once | pass = false | **missed** |",
            "| N = 1000 passes the check, started in waves | pass = true | met |",
            "| the same with the peers started in waves, N = 1000 | 60.0 s | met |",
            "| crawling 1000 nodes takes ≤ 30 s | 8.5 s | met |",
            "| the checker reads a 1000-node run in ≤ 2 s | 1.90 s | met |",
        ] {
            assert!(md.contains(line), "{line}\n{md}");
        }
        // The older measurement alone: the target is missed.
        b.rows.pop();
        assert!(
            markdown(&b)
                .contains("| the checker reads a 1000-node run in ≤ 2 s | 3.31 s | **missed** |")
        );
    }

    #[test]
    fn each_row_says_when_its_idle_sample_began() {
        let mut b = bench(Vec::new());
        let sampled = |idle_from_s| Row {
            peers: 300,
            passed: true,
            cpu_total_median_s: Some(0.8),
            cpu_idle_median_pct: Some(0.0667),
            cpu_idle_max_pct: Some(0.4),
            idle_from_s,
            load_average: Some(50.0),
            ..Row::default()
        };
        b.rows = vec![sampled(None), sampled(Some(121.4))];
        let md = markdown(&b);
        assert!(md.contains("| idle from (s) | load |"), "{md}");
        // A row from before --idle-after sampled right after the check: no start given.
        assert!(
            md.contains("| 0.80 s / 0.07 % / 0.40 % | – | 50.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| 0.80 s / 0.07 % / 0.40 % | 121 | 50.0 |"),
            "{md}"
        );
    }

    #[test]
    fn the_crawl_table_tells_a_run_in_waves_from_one_all_at_once() {
        let mut b = bench(Vec::new());
        let row = |waves: u32, crawl_s: f64| Row {
            peers: 300,
            waves,
            wave_gap_s: 60.0,
            commit: "aaaaaaa".into(),
            crawl_s: Some(crawl_s),
            ..Row::default()
        };
        b.rows = vec![row(1, 1.7), row(3, 2.3)];
        let md = markdown(&b);
        let crawl = &md[md.find("## Crawling").expect("crawl table")..];
        assert!(crawl.contains("| 300 | 1 | `aaaaaaa` |"), "{crawl}");
        assert!(crawl.contains("| 300 | 3 × 60 s | `aaaaaaa` |"), "{crawl}");
    }

    #[test]
    fn each_row_names_the_machine_it_ran_on() {
        let mut b = bench(Vec::new());
        let row = |commit: &str, machine: Option<&str>| Row {
            peers: 300,
            commit: commit.into(),
            machine: machine.map(Into::into),
            crawl_s: Some(1.0),
            ..Row::default()
        };
        b.rows = vec![
            row("aaaaaaa", Some("Intel Xeon, 2 cores")),
            row("bbbbbbb", None),
        ];
        let md = markdown(&b);
        assert!(md.contains("| commit | machine | pass |"), "{md}");
        assert!(
            md.contains("| `aaaaaaa` | Intel Xeon, 2 cores | ❌ |"),
            "{md}"
        );
        // A row from before machines were recorded says so rather than borrow the head's.
        assert!(md.contains("| `bbbbbbb` | – | ❌ |"), "{md}");
        assert!(
            md.contains("| 300 | 1 | `aaaaaaa` | Intel Xeon, 2 cores | – |"),
            "crawl table: {md}"
        );
        // Older files have no `machine` in their rows.
        let mut old = serde_json::to_value(&b).expect("serializes");
        old["rows"][0]
            .as_object_mut()
            .expect("row")
            .remove("machine");
        let read: Benchmarks = serde_json::from_value(old).expect("reads without `machine`");
        assert_eq!(read.rows[0].machine, None);
    }

    #[test]
    fn a_machine_is_named_by_its_cpu_model_and_cores() {
        assert_eq!(short_cpu("Intel(R) Xeon(R) Processor"), "Intel Xeon");
        assert_eq!(
            short_cpu("AMD EPYC 7B13 64-Core Processor"),
            "AMD EPYC 7B13"
        );
        assert_eq!(
            short_cpu("Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz"),
            "Intel Core i7-8650U"
        );
        let m = Machine {
            cpu: "AMD EPYC".into(),
            cores: 2,
            memory_gib: 24.0,
            kernel: String::new(),
            docker: String::new(),
            compose: String::new(),
        };
        assert_eq!(m.label(), "AMD EPYC, 2 cores");
    }

    #[test]
    fn a_benchmarks_file_from_before_scenarios_still_reads() {
        let mut old = serde_json::to_value(bench(Vec::new())).expect("serializes");
        old.as_object_mut().expect("object").remove("scenarios");
        let read: Benchmarks = serde_json::from_value(old).expect("reads without `scenarios`");
        assert!(read.scenarios.is_empty());
    }

    #[test]
    fn a_new_scenario_run_keeps_every_line_of_the_other_runs() {
        let line = |scenario: &str, peers, step, expectation: &str| ScenarioRow {
            scenario: scenario.into(),
            peers,
            step,
            expectation: expectation.into(),
            ..ScenarioRow::default()
        };
        let earlier = vec![
            line("lossy", 100, 1, "seen"),
            line("lossy", 100, 1, "closest"),
            line("lossy", 100, 2, "seen"),
            line("churn", 100, 1, "old"),
        ];
        let new = vec![line("churn", 100, 1, "new")];
        let merged = merge(new, earlier, |l| (l.scenario.clone(), l.peers));
        let kept: Vec<(&str, usize, &str)> = merged
            .iter()
            .map(|l| (l.scenario.as_str(), l.step, l.expectation.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                ("churn", 1, "new"),
                ("lossy", 1, "seen"),
                ("lossy", 1, "closest"),
                ("lossy", 2, "seen"),
            ],
            "the churn run replaces churn's lines and keeps all of lossy's"
        );
    }
}
