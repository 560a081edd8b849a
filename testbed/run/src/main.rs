//! `testbed`: the one command that builds the image, brings a kad-testbed network up, checks it,
//! saves its logs under `runs/<name>/` and tears it down.
//!
//! # Layout
//!
//! * `main.rs`: subcommands `up`, `down`, `image`, `bench`, `crawl`, `flaky`, `history`.
//! * `crawl.rs`: the crawler from the host, seeded with every container's address.
//! * `run.rs`: one run, with its always-run save-and-teardown.
//! * `compose.rs`: `docker compose` (v2) or `docker-compose` (v1.29).
//! * `swarm.rs`: the same files as a Docker Swarm stack (`up --engine swarm`).
//! * `engine.rs`: what a run does with Docker (through `testbed-docker`): waiting, saving logs,
//!   resources, teardown.
//! * `image.rs`: building the image from a local static binary or from source.
//! * `host.rs`: host limits (the neighbour table) checked, and raised where allowed.
//! * `bench.rs`: runs at several sizes and writes BENCHMARKS.md.
//! * `scenario/`: faults as code: the scenario file, playing its timeline, judging expectations.
//! * `faults.rs`: network faults from outside the nodes — the one place that needs privilege.
//! * `flaky.rs`: runs any command K times: pass rate with a confidence interval, timings.
//! * `history.rs`: `runs/history.jsonl`, one line per run; `up --repeat` and `history` summaries.
//!
//! This is the only code that drives Docker: the node never reads logs, the checker never starts
//! containers.

mod bench;
mod compose;
mod crawl;
mod engine;
mod faults;
mod flaky;
mod history;
mod host;
mod image;
mod run;
mod scenario;
mod stats;
mod swarm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use testbed_check::CheckOptions;
use testbed_check::verdict::DEFAULT_CLOSEST_THRESHOLD;

use crate::compose::Compose;
use crate::image::BuildMode;

/// Build, run, check and tear down a kad-testbed network.
///
/// Exit codes: 0 the DHT formed (every property held), 1 a property failed, 2 the run itself
/// failed (no Docker, compose error, containers did not start).
#[derive(Debug, Parser)]
#[command(name = "testbed", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bring up bootstrap + N peers, check them, save logs to runs/<name>/, tear down.
    Up(UpArgs),
    /// Remove every container and network of a compose project: stops one at a time (final
    /// snapshots, and no endpoint-count race), removes 16 at a time, retries, reports leftovers.
    /// On a swarm manager, a stack of that name (`up --engine swarm --keep`) is removed too.
    Down {
        /// The compose project, as printed by `up` (kt-…).
        project: String,
    },
    /// Build the kad-node image only.
    Image(ImageArgs),
    /// Read every node's routing table over the wire (testbed-crawl) from the host, seeded with
    /// every container's address from the Docker API; events to runs/crawl-<project>.jsonl for
    /// `testbed-check --crawl`. Exit 0 if it read a node, 1 if none.
    Crawl(crawl::CrawlArgs),
    /// Run the testbed at several sizes and write BENCHMARKS.md and BENCHMARKS.json.
    Bench(bench::BenchArgs),
    /// Run a command K times (the flake check): pass rate with a 95 % Wilson interval, run
    /// times, and numbers it prints; logs in runs/<name>/. Exit 0 if every run passed, 1 if not.
    Flaky(flaky::FlakyArgs),
    /// Summarise runs/history.jsonl (one line per `up` or `bench` run): pass rate with a 95 %
    /// Wilson interval and check times per kind and size, across commits; flags the flaky ones.
    History,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineArg {
    Compose,
    Swarm,
}

#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// How to build the image [default: host on x86-64 Linux, source elsewhere].
    #[arg(long, value_enum)]
    pub build: Option<BuildMode>,

    /// Image tag to build and run.
    #[arg(long, env = "KAD_IMAGE", default_value = "kad-testbed/kad-node:dev")]
    pub image: String,
}

#[derive(Debug, Clone, Args)]
struct UpArgs {
    /// Number of peers besides the bootstrap node (1–10000).
    #[arg(long, default_value_t = 10, value_parser = parse_peers)]
    peers: usize,

    /// Play a scenario (compose/scenarios/*.toml): its size, groups, and timeline of faults,
    /// each step's expectations judged live. Exit 0 if every expectation held, 1 if one failed,
    /// 2 if the run failed. A file with a mistake starts nothing (exit 2).
    #[arg(long, value_name = "FILE", conflicts_with = "peers")]
    scenario: Option<PathBuf>,

    /// Run name, the folder under runs/ [default: up-<time>-<peers>p].
    #[arg(long)]
    name: Option<String>,

    /// Compose project name [default: kt-<name>-<random>]. Give one to tear it down from a
    /// script's trap (`testbed down NAME`).
    #[arg(long)]
    project: Option<String>,

    /// Compose overlay files (compose/*.yml), applied in order.
    #[arg(long = "overlay", value_name = "FILE")]
    overlays: Vec<PathBuf>,

    /// Also run the crawler (compose/crawl.yml): it reads every node's table over the wire, and
    /// the verdict judges nodes that answer it even when they write no events of ours.
    #[arg(long)]
    crawl: bool,

    /// Also run M foreign nodes (compose/foreign.yml): Kademlia servers of another
    /// implementation that write none of our events, judged through the crawler (implies
    /// --crawl). The default image, rust-libp2p 0.53, is built here; KAD_FOREIGN_IMAGE runs yours.
    #[arg(long, value_name = "M", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1000))]
    foreign: u16,

    /// What deploys the network: compose on this host, or a Docker Swarm stack of the same files
    /// (docker stack deploy, with compose/swarm.yml) on a swarm this daemon manages.
    #[arg(long, value_enum, default_value_t = EngineArg::Compose)]
    engine: EngineArg,

    /// With --engine swarm on a host in no swarm: start a single-node swarm on loopback for the
    /// run, and leave it afterwards. A swarm the host is already in is used and left alone.
    #[arg(long)]
    init_swarm: bool,

    /// Leave the network running after the check.
    #[arg(long)]
    keep: bool,

    /// How long the DHT may take to form once every container runs [default: 60s + 0.5s a peer].
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,

    /// How long starting the containers may take [default: 60s + 1s a peer].
    #[arg(long, value_parser = parse_duration)]
    up_timeout: Option<Duration>,

    /// Also require a full mesh (every node knows every other; only for ≤ 20 peers).
    #[arg(long)]
    full_mesh: bool,

    /// Share of nodes that must hold all of their 20 closest peers (0.9 or 90%).
    #[arg(long, default_value_t = DEFAULT_CLOSEST_THRESHOLD, value_parser = testbed_check::verdict::parse_share)]
    closest_threshold: f64,

    /// Run even if the host's neighbour table looks too small for this many nodes.
    #[arg(long)]
    ignore_host_limits: bool,

    /// Run K independent runs (each its own project, folder and teardown) and summarise them:
    /// pass rate with a 95 % Wilson interval, p50/p95 timings, the properties that failed.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,

    #[command(flatten)]
    image: ImageArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testbed: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Up(args) => up(args).await,
            Cmd::Down { project } => down(&project).await,
            Cmd::Image(args) => build_image(&args).map(|()| 0),
            Cmd::Crawl(args) => crawl::run(args, &root()).await,
            Cmd::Bench(args) => bench::run(args).await,
            Cmd::Flaky(args) => flaky::run(&args, &root()),
            Cmd::History => show_history(),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("testbed: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The workspace root: where docker-compose.yml and runs/ live.
pub fn root() -> PathBuf {
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&compiled).unwrap_or(compiled)
}

pub fn build_image(args: &ImageArgs) -> anyhow::Result<()> {
    let mode = args.build.unwrap_or_else(BuildMode::auto);
    if mode != BuildMode::None {
        eprintln!("testbed: building image {} ({mode:?})", args.image);
    }
    image::build(mode, &args.image, &root())
}

/// A unique run name and its compose project.
pub fn names(name: Option<String>, prefix: &str, peers: usize) -> (String, String) {
    let name = name.unwrap_or_else(|| {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let stamp: String = now.chars().filter(|c| c.is_ascii_digit()).collect();
        format!("{prefix}-{stamp}-{peers}p")
    });
    let suffix: u16 = rand::random();
    let project = testbed_docker::normalize_project_name(&format!("kt-{name}-{suffix:04x}"));
    (name, project)
}

/// How long the DHT may take to form once every container runs.
pub fn default_wait(peers: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(500) * u32::try_from(peers).unwrap_or(u32::MAX)
}

/// How long starting the containers may take (this host starts a few per second).
pub fn default_up_timeout(peers: usize) -> Duration {
    Duration::from_secs(60 + peers as u64)
}

async fn up(mut args: UpArgs) -> anyhow::Result<u8> {
    let root = root();
    // The scenario is read and checked, and its privileges with it, before anything starts.
    let scenario = match &args.scenario {
        Some(path) => {
            let scenario = scenario::file::load(path)?;
            if scenario.needs_network_faults() {
                faults::preflight(scenario.needs_delay()).await?;
            }
            args.peers = scenario.peers;
            args.name = args.name.or(Some(scenario.name.clone()));
            args.overlays
                .extend(scenario.overlays.iter().map(|o| root.join(o)));
            Some(scenario)
        }
        None => None,
    };
    let foreign = usize::from(args.foreign);
    if args.crawl || foreign > 0 {
        args.overlays.push(root.join("compose/crawl.yml"));
    }
    if foreign > 0 {
        args.overlays.push(root.join("compose/foreign.yml"));
    }
    let nodes = args.peers + 1;
    // Compose runs in the workspace root: resolve overlays against where the user is.
    let mut overlays = args
        .overlays
        .iter()
        .map(|f| {
            std::fs::canonicalize(f).map_err(|e| {
                anyhow::anyhow!(
                    "--overlay {}: {e} (give a compose file such as compose/fast-walks.yml)",
                    f.display()
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for note in host::check_neighbour_table(nodes, args.ignore_host_limits)?.notes {
        eprintln!("testbed: {note}");
    }
    if args.engine == EngineArg::Swarm {
        swarm_supports(&args)?;
        overlays.push(root.join(swarm::OVERLAY));
    } else if args.init_swarm {
        anyhow::bail!("--init-swarm: only with --engine swarm");
    } else if args.peers > SCALE_FROM && !overlays.iter().any(|o| o.ends_with(SCALE_OVERLAY)) {
        eprintln!(
            "testbed: adding {SCALE_OVERLAY} (more than {SCALE_FROM} peers: no per-peer healthcheck, \
             a larger CPU weight for the bootstrap)"
        );
        overlays.insert(0, root.join(SCALE_OVERLAY));
    }
    let docker = testbed_docker::connect().await?;
    let engine = match args.engine {
        EngineArg::Compose => run::Engine::Compose(Compose::detect()?),
        EngineArg::Swarm => run::Engine::Swarm,
    };
    build_image(&args.image)?;
    // Last before the runs: nothing after it may fail without the swarm being left again.
    let swarm = match args.engine {
        EngineArg::Swarm => Some(swarm::prepare(&docker, args.init_swarm).await?),
        EngineArg::Compose => None,
    };
    if foreign > 0 && std::env::var_os("KAD_FOREIGN_IMAGE").is_none() {
        let mode = args.image.build.unwrap_or_else(BuildMode::auto);
        image::build_foreign(mode, image::FOREIGN_IMAGE, &root)?;
    }
    let commit = commit(&root);
    let mut entries = Vec::new();
    let mut worst = 0;
    for i in 1..=args.repeat {
        if args.repeat > 1 {
            eprintln!("\ntestbed: run {i} of {}", args.repeat);
        }
        let name = match (&args.name, args.repeat) {
            (Some(n), 1) => Some(n.clone()),
            (Some(n), _) => Some(format!("{n}-{i}")),
            (None, _) => None,
        };
        let (name, generated) = names(name, "up", args.peers);
        let project = match (&args.project, args.repeat) {
            (Some(p), 1) => testbed_docker::normalize_project_name(p),
            (Some(p), _) => testbed_docker::normalize_project_name(&format!("{p}-{i}")),
            (None, _) => generated,
        };
        let spec = run::RunSpec {
            name,
            project,
            peers: args.peers,
            root: root.clone(),
            overlays: overlays.clone(),
            image: args.image.image.clone(),
            engine: engine.clone(),
            keep: args.keep,
            wait: args.wait.unwrap_or(default_wait(args.peers)),
            up_timeout: args.up_timeout.unwrap_or(default_up_timeout(args.peers)),
            waves: run::Waves::ALL_AT_ONCE,
            check: CheckOptions {
                full_mesh: args.full_mesh,
                closest_threshold: args.closest_threshold,
                // Foreign nodes count once the crawler has read them.
                expect_nodes: Some(nodes + foreign),
                ..CheckOptions::default()
            },
            env: scenario
                .as_ref()
                .map(scenario_env)
                .unwrap_or_default()
                .into_iter()
                .chain((foreign > 0).then(|| ("KAD_FOREIGN_PEERS".to_owned(), foreign.to_string())))
                .collect(),
            settle: None,
            kind: if scenario.is_some() { "scenario" } else { "up" },
            churn: None,
            scenario: scenario.clone(),
            crawl: overlays.iter().any(|o| o.ends_with("compose/crawl.yml")),
            host_crawl: false,
        };
        let outcome = run::execute(&spec, &docker).await;
        worst = worst.max(outcome.exit_code());
        entries.push(history::Entry::of(&outcome, "up", &commit));
    }
    if let Some(swarm) = swarm {
        if args.keep {
            eprintln!(
                "testbed: --keep: the swarm stays as it is (docker swarm leave --force, once the stack is removed)"
            );
        } else if let Err(e) = swarm.leave(&docker).await {
            eprintln!("testbed: {e:#}");
            worst = 2;
        }
    }
    if args.repeat > 1 {
        let refs: Vec<&history::Entry> = entries.iter().collect();
        println!(
            "\n{} runs of bootstrap + {} peers at {commit}:\n{}",
            args.repeat,
            args.peers,
            history::summarize(&refs)
        );
    }
    Ok(worst)
}

/// The overlay for hundreds of peers on one host, and the size from which `up` adds it.
const SCALE_OVERLAY: &str = "compose/scale.yml";
const SCALE_FROM: usize = 100;

/// What a swarm run does not do (yet): each of these needs compose's containers by name.
fn swarm_supports(args: &UpArgs) -> anyhow::Result<()> {
    let unsupported = [
        (args.scenario.is_some(), "--scenario"),
        (args.crawl, "--crawl"),
        (args.foreign > 0, "--foreign"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(used, _)| *used) {
        anyhow::bail!(
            "{flag} runs on compose only (it stops, restarts and crawls containers by their \
             compose names); drop --engine swarm"
        );
    }
    Ok(())
}

/// The nodes' environment a scenario asks for.
pub(crate) fn scenario_env(s: &scenario::file::Scenario) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = s.env.clone().into_iter().collect();
    if s.heal {
        env.push(("KAD_HEAL".into(), "true".into()));
    }
    env
}

fn show_history() -> anyhow::Result<u8> {
    let (entries, bad) = history::read(&root())?;
    print!("{}", history::report(&entries));
    if bad > 0 {
        eprintln!("testbed: {bad} lines of runs/history.jsonl did not parse and were skipped");
    }
    Ok(0)
}

/// The commit checked out in `root`, `-dirty` when tracked files changed (the benchmark's own
/// output aside).
pub fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The benchmark's own output does not make the code it measured dirty.
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| {
        s.lines()
            .any(|l| !l.ends_with("BENCHMARKS.md") && !l.ends_with("BENCHMARKS.json"))
    });
    if dirty { format!("{head}-dirty") } else { head }
}

async fn down(project: &str) -> anyhow::Result<u8> {
    let docker = testbed_docker::connect().await?;
    // The same normalisation `up --project` applied, so the name given to both finds the project.
    let project = &testbed_docker::normalize_project_name(project);
    // A stack of that name (`up --engine swarm --keep`) goes too, if this daemon manages one.
    let stack = testbed_docker::swarm_state(&docker).await.ok()
        == Some(testbed_docker::SwarmState::Manager);
    let mut teardown = engine::teardown(&docker, project).await;
    if stack {
        let swarm = swarm::teardown(&docker, project).await;
        teardown.containers_removed += swarm.containers_removed;
        teardown.networks_removed += swarm.networks_removed;
        teardown.leftovers.extend(swarm.leftovers);
    }
    eprintln!(
        "testbed: removed {} containers and {} networks of {project}",
        teardown.containers_removed, teardown.networks_removed
    );
    if teardown.leftovers.is_empty() {
        Ok(0)
    } else {
        eprintln!(
            "testbed: could not remove: {}",
            teardown.leftovers.join(", ")
        );
        Ok(2)
    }
}

/// Peers on one host: at least one; past 10 000 the arithmetic of timeouts and host limits, and
/// any one host, is out of its depth.
pub fn parse_peers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_PEERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of peers from 1 to {MAX_PEERS}"
        )),
    }
}

pub const MAX_PEERS: usize = 10_000;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 90s or 5m)"))
}
