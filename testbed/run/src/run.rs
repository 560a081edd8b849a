//! One testbed run: compose up, wait for the containers, check until the DHT formed or time runs
//! out, stop (nodes flush their final tables), save every log, remove everything — the last three
//! even when something before them failed or the user pressed Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use testbed_check::verdict::{At, PropertyId};
use testbed_check::{CheckOptions, Reader, Report, Source, report};
use testbed_docker::Scope;
use testbed_docker::bollard::Docker;

use crate::compose::Compose;
use crate::engine::{self, NodeResources, Teardown};
use crate::history;
use crate::scenario::file::Scenario;
use crate::scenario::{self, ScenarioOutcome, Stage};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Run name: the folder under `runs/`.
    pub name: String,
    pub project: String,
    pub peers: usize,
    pub root: PathBuf,
    pub overlays: Vec<PathBuf>,
    pub image: String,
    /// Compose (v2 or v1), or a swarm stack of the same files.
    pub engine: Engine,
    /// Leave the network running (logs are saved from the live containers).
    pub keep: bool,
    /// How long the DHT may take to form once the containers run.
    pub wait: Duration,
    /// How long `up` may take until every container runs (all waves).
    pub up_timeout: Duration,
    /// Start the peers all at once, or in waves.
    pub waves: Waves,
    pub check: CheckOptions,
    /// Extra environment for compose (KAD_… knobs).
    pub env: Vec<(String, String)>,
    /// Benchmarks: once the check is done, sample per-node memory and CPU over an idle window.
    pub settle: Option<IdleSample>,
    /// What started the run (`up`, `bench`), for runs/history.jsonl.
    pub kind: &'static str,
    /// Once the network formed (and idled, for benchmarks): kill some peers and watch it heal.
    pub churn: Option<Churn>,
    /// Once the network formed: play this scenario (`up --scenario`).
    pub scenario: Option<Scenario>,
    /// A crawler runs beside the nodes (compose/crawl.yml): once the network formed, the run
    /// waits for a crawl round that began after it, and is judged with that round.
    pub crawl: bool,
    /// Benchmarks (`bench --crawl`): after the idle sample, crawl every node once from the host
    /// (`testbed crawl`), events to `runs/<name>/crawl.jsonl`, and time it.
    pub host_crawl: bool,
}

/// How a benchmark samples an idle network's memory and CPU.
#[derive(Debug, Clone, Copy)]
pub struct IdleSample {
    /// How long the sample lasts: CPU is the time used over it, memory is read at its end.
    pub window: Duration,
    /// The sample starts no sooner than this after every container was running (and not before
    /// every node finished its join). A join leaves work behind: its connections close after
    /// the nodes' `--idle-timeout` (60 s), and a node's first walk comes 30–90 s after it joined,
    /// dialing peers that must handshake, whose connections close a minute later. Measured at
    /// N = 300 (node of 4f760b2, each node's cgroup CPU over 15 s windows; the check passed 40 s
    /// after the last start): the median node used 0.15 % of a core 48–63 s after the last
    /// start, 0.12 % at 78–93 s, 0.08 % at 93–108 s, and 0.05–0.06 % from 108 s on.
    pub after_start: Duration,
}

/// What deploys the network.
#[derive(Debug, Clone)]
pub enum Engine {
    /// `docker compose` or `docker-compose`: a project on this host.
    Compose(Compose),
    /// `docker stack deploy` (with compose/swarm.yml): a stack on a swarm this daemon manages.
    Swarm,
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Compose(c) => c.name(),
            Engine::Swarm => "docker stack",
        }
    }
}

impl RunSpec {
    /// The Docker objects of this run: the compose project, or the stack of the same name.
    pub fn scope(&self) -> Scope {
        match self.engine {
            Engine::Compose(_) => Scope::Compose(self.project.clone()),
            Engine::Swarm => Scope::Stack(self.project.clone()),
        }
    }

    /// The compose program, for what only compose does (scenarios add and restart containers).
    pub fn compose(&self) -> anyhow::Result<&Compose> {
        match &self.engine {
            Engine::Compose(c) => Ok(c),
            Engine::Swarm => anyhow::bail!("this needs compose; the run deploys a swarm stack"),
        }
    }
}

/// How long after the network formed a fresh crawl round may take to finish: the crawler's
/// default interval (10 s) plus its per-node timeout (30 s), with room to spare.
const CRAWL_ROUND_WAIT: Duration = Duration::from_secs(90);

/// Churn after the network formed: SIGKILL `share` of the peers, then watch for `window`.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    pub share: f64,
    pub window: Duration,
}

/// One node a run killed.
#[derive(Debug, Clone, Serialize)]
pub struct Killed {
    /// Its name in the saved logs (`peer_4`).
    pub node: String,
    pub container: String,
    pub at: testbed_events::Timestamp,
}

impl Killed {
    /// Kills `containers` (SIGKILL) one at a time, like every stop (see [`engine`]'s docs), and
    /// records each at the moment its kill returned. The node is dead by then, while a loaded
    /// daemon can hold the request itself: at N = 300 a peer was logged completing a handshake
    /// 42 s after the request to kill it was sent, so timing the request could make its table
    /// entries look staler than they were. Stops at the first container that could not be
    /// killed.
    pub async fn kill_each(
        docker: &Docker,
        containers: &[String],
        project: &str,
        killed: &mut Vec<Killed>,
    ) -> anyhow::Result<()> {
        for container in containers {
            if let Some(e) = engine::kill(docker, std::slice::from_ref(container))
                .await
                .first()
            {
                anyhow::bail!("{e}");
            }
            killed.push(Killed {
                node: testbed_docker::short_name(container, project).to_owned(),
                container: container.clone(),
                at: testbed_events::Timestamp::now(),
            });
        }
        Ok(())
    }
}

/// How the network healed after [`Churn`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnOutcome {
    /// The nodes killed, each with when: the checker reads them from run.json as departures at
    /// that moment (their logs just stop; silence alone would tell only 90 s later).
    pub killed: Vec<Killed>,
    /// When the first was killed.
    pub began: Option<testbed_events::Timestamp>,
    /// Seconds from the first kill until every live node held all of its k closest live peers
    /// again, as the live checker saw it (every ~2 s).
    pub closest_healed_s: Option<f64>,
    /// Seconds from the first kill until no live table held an entry for a dead peer.
    pub stale_cleared_s: Option<f64>,
    /// Stale entries left at the end of the window, and the longest any had lingered.
    pub stale_left: usize,
    pub stale_lingered_s: Option<f64>,
    /// The age of the oldest stale entry at any sample: from its peer's kill to the snapshot
    /// that still held it. Unlike `stale_cleared_s`, it does not grow with the time the kills
    /// themselves take (two minutes for 90 containers here).
    pub stale_oldest_s: Option<f64>,
}

/// Peers started in `count` waves, `gap` apart (1: all at once).
#[derive(Debug, Clone, Copy)]
pub struct Waves {
    pub count: u32,
    pub gap: Duration,
}

impl Waves {
    pub const ALL_AT_ONCE: Waves = Waves {
        count: 1,
        gap: Duration::ZERO,
    };

    /// The peer count compose scales to after each wave: the last is `peers`.
    pub fn scales(&self, peers: usize) -> Vec<usize> {
        let count = self.count.max(1) as usize;
        (1..=count).map(|i| (peers * i).div_ceil(count)).collect()
    }
}

/// What happened, written to `runs/<name>/run.json`.
#[derive(Debug, Serialize)]
pub struct RunOutcome {
    pub name: String,
    pub project: String,
    pub peers: usize,
    pub compose: String,
    pub image: String,
    /// From `compose up` to every container running.
    pub up_seconds: Option<f64>,
    /// From every container running to the checker's pass (or the deadline).
    pub check_seconds: Option<f64>,
    pub passed: bool,
    pub error: Option<String>,
    pub log_bytes: u64,
    /// Per-node memory and CPU after the settle period (benchmarks).
    pub resources: Vec<NodeResources>,
    /// Per-node CPU use during the settle period, percent of one core (benchmarks).
    pub idle_cpu_percent: Vec<f64>,
    /// When the idle sample began, seconds after every container was running (benchmarks).
    pub idle_from_s: Option<f64>,
    /// The host's 1-minute load average when the check finished.
    pub load_average: Option<f64>,
    pub teardown: Option<Teardown>,
    /// When this run began stopping its nodes: the checker judges nodes that went down before it
    /// as departed, the rest as stopped with the run (`testbed-check --logs runs/<name>` reads it).
    pub shutdown_began: Option<testbed_events::Timestamp>,
    /// When the live check ended (passed, or its deadline ran out): the instant the verdict
    /// judges, also from the saved logs, so idling afterwards (benchmarks) changes nothing.
    pub checked_at: Option<testbed_events::Timestamp>,
    /// What went wrong after the check: logs not saved, containers or networks not removed.
    pub cleanup_errors: Vec<String>,
    /// Churn after the check (`--churn`), and how the network healed. Its `killed` lists every
    /// node the run killed, by `--churn` or by a scenario.
    pub churn: Option<ChurnOutcome>,
    /// The scenario played (`up --scenario`): each step and each expectation's verdict.
    pub scenario: Option<ScenarioOutcome>,
    /// The signal that cut the run short (Ctrl-C, SIGTERM), if one did.
    pub interrupted: Option<&'static str>,
    /// The crawl from the host (`bench --crawl`): nodes read, requests, time.
    pub crawl: Option<crate::crawl::CrawlOutcome>,
    #[serde(skip)]
    pub report: Option<Report>,
    pub run_dir: PathBuf,
}

impl RunOutcome {
    /// 0 passed, 1 a property failed, 2 the run itself failed — including a run whose logs were
    /// not saved or that left containers or networks behind, whatever the verdict.
    pub fn exit_code(&self) -> u8 {
        if !self.cleanup_errors.is_empty() {
            return 2;
        }
        // A scenario is judged by its expectations (the network must form first).
        if let Some(scenario) = &self.scenario {
            return match (&self.error, scenario.failure_code()) {
                (Some(_), _) => 2,
                (None, code) => code.unwrap_or(0),
            };
        }
        match (&self.report, &self.error) {
            (Some(r), None) if r.passed => 0,
            (Some(_), _) => 1,
            (None, _) => 2,
        }
    }
}

/// Runs the testbed once. Never leaves containers behind unless `spec.keep`.
pub async fn execute(spec: &RunSpec, docker: &Docker) -> RunOutcome {
    let run_dir = spec.root.join("runs").join(&spec.name);
    let mut outcome = RunOutcome {
        name: spec.name.clone(),
        project: spec.project.clone(),
        peers: spec.peers,
        compose: spec.engine.name().into(),
        image: spec.image.clone(),
        up_seconds: None,
        check_seconds: None,
        passed: false,
        error: None,
        log_bytes: 0,
        resources: Vec::new(),
        idle_cpu_percent: Vec::new(),
        idle_from_s: None,
        load_average: None,
        teardown: None,
        shutdown_began: None,
        checked_at: None,
        cleanup_errors: Vec::new(),
        churn: None,
        scenario: None,
        interrupted: None,
        crawl: None,
        report: None,
        run_dir: run_dir.clone(),
    };
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        outcome.error = Some(format!("cannot create {}: {e}", run_dir.display()));
        return outcome;
    }

    let body = bring_up_and_check(spec, docker, &run_dir, &mut outcome);
    let interrupted = tokio::select! {
        result = body => {
            if let Err(e) = result {
                outcome.error = Some(format!("{e:#}"));
            }
            None
        }
        signal = interrupted() => Some(signal),
    };
    if let Some(signal) = interrupted {
        outcome.interrupted = Some(signal);
        outcome.error = Some(format!(
            "interrupted ({signal}): saving logs and tearing down"
        ));
        eprintln!("\n{}", outcome.error.as_deref().unwrap_or_default());
    }

    // Finally: stop (final snapshots), save, remove. Each step runs even if the previous failed.
    if !spec.keep {
        say("stopping nodes (SIGTERM: each writes its final routing table)");
        outcome.shutdown_began = Some(testbed_events::Timestamp::now());
        match engine::stop_all(docker, &spec.scope()).await {
            Ok(errors) if !errors.is_empty() => {
                eprintln!(
                    "  {} containers did not stop cleanly: {}",
                    errors.len(),
                    errors.join("; ")
                )
            }
            Ok(_) => {}
            Err(e) => eprintln!("  cannot stop containers: {e:#}"),
        }
    }
    match engine::save_logs(docker, &spec.scope(), &run_dir).await {
        Ok(bytes) => {
            outcome.log_bytes = bytes;
            say(&format!(
                "logs saved under {}",
                relative(&run_dir, &spec.root)
            ));
        }
        Err(e) => {
            let problem = format!("cannot save logs: {e:#}");
            eprintln!("  {problem}");
            outcome.cleanup_errors.push(problem);
        }
    }
    if spec.keep {
        say(&format!(
            "--keep: the network stays up; remove it with: cargo run -p testbed -- down {}",
            spec.project
        ));
    } else {
        let teardown = match spec.engine {
            Engine::Compose(_) => engine::teardown(docker, &spec.project).await,
            Engine::Swarm => crate::swarm::teardown(docker, &spec.project).await,
        };
        if teardown.leftovers.is_empty() {
            say(&format!(
                "torn down: {} containers, {} networks removed",
                teardown.containers_removed, teardown.networks_removed
            ));
        } else {
            let problem = format!("could not remove: {}", teardown.leftovers.join(", "));
            eprintln!("{problem}");
            outcome.cleanup_errors.push(problem);
        }
        outcome.teardown = Some(teardown);
    }
    // run.json first: the saved logs are judged through it (the kills, the shutdown moment),
    // exactly as `testbed-check --logs runs/<name>` will judge them. Without it the kills of a
    // churn run were unknown to this verdict (39 of 90 killed nodes judged live at N = 300).
    write_run_json(&outcome, &run_dir);
    rejudge_saved_logs(&mut outcome, &run_dir, spec).await;
    rejudge_scenario(&mut outcome, &run_dir, spec);
    write_outputs(&outcome, &run_dir, spec);
    outcome
}

/// The verdict printed and saved is the checker's on the saved logs, as of the moment the live
/// check ended and with the recorded shutdown moment: what `testbed-check --logs runs/<name>`
/// says about the same folder (it reads both from run.json).
async fn rejudge_saved_logs(outcome: &mut RunOutcome, run_dir: &Path, spec: &RunSpec) {
    if outcome.report.is_none() || outcome.log_bytes == 0 {
        return;
    }
    let killed = outcome.churn.as_ref().map_or(0, |c| c.killed.len());
    let opts = CheckOptions {
        shutdown_at: outcome.shutdown_began,
        at: outcome.checked_at.map(At::Time),
        // A scenario adds, stops and pauses nodes: its expectations say how many should be live.
        expect_nodes: spec
            .check
            .expect_nodes
            .filter(|_| spec.scenario.is_none())
            .map(|n| n.saturating_sub(killed)),
        ..spec.check.clone()
    };
    match testbed_check::read_and_check(&Source::Files(run_dir.join("logs")), &opts).await {
        Ok(report) => {
            if report.passed != outcome.passed {
                eprintln!(
                    "testbed: the saved logs' verdict ({}) differs from the live one ({}); the saved one counts",
                    if report.passed { "pass" } else { "fail" },
                    if outcome.passed { "pass" } else { "fail" },
                );
            }
            outcome.passed = report.passed;
            outcome.report = Some(report);
        }
        Err(e) => {
            let problem = format!("cannot judge the saved logs: {e}");
            eprintln!("  {problem}");
            outcome.cleanup_errors.push(problem);
        }
    }
}

/// A scenario's expectations, judged again from the saved logs second by second in the nodes'
/// own clocks ([`scenario::rejudge`]): the live samples only paced the timeline.
fn rejudge_scenario(outcome: &mut RunOutcome, run_dir: &Path, spec: &RunSpec) {
    let (Some(played), Some(scenario)) = (outcome.scenario.as_mut(), spec.scenario.as_ref()) else {
        return;
    };
    if !played.formed || outcome.log_bytes == 0 {
        return;
    }
    let end = outcome.checked_at.or(outcome.shutdown_began);
    let began = Instant::now();
    match scenario::rejudge(played, scenario, &run_dir.join("logs"), end) {
        Ok(done) => {
            say(&format!(
                "scenario judged from the saved logs: {} instants, second by second, in {:.1} s",
                done.instants,
                began.elapsed().as_secs_f64()
            ));
            if done.changed > 0 {
                say(&format!(
                    "{} expectation verdicts from the saved logs differ from the live ones; \
                     the saved ones count (both are in scenario.txt)",
                    done.changed
                ));
            }
        }
        Err(e) => {
            let problem = format!(
                "cannot judge the scenario from the saved logs ({e}); the live verdicts stand"
            );
            eprintln!("  {problem}");
            outcome.cleanup_errors.push(problem);
        }
    }
}

/// Resolves on Ctrl-C, or SIGTERM (`timeout`, a CI runner cancelling, `kill`), with its name. Either
/// way the run still stops, saves and tears down what it started.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                () = ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    ctrl_c().await;
    "Ctrl-C"
}

/// Ctrl-C; never, if the handler cannot be installed (that is no reason to stop a run).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn bring_up_and_check(
    spec: &RunSpec,
    docker: &Docker,
    run_dir: &Path,
    outcome: &mut RunOutcome,
) -> anyhow::Result<()> {
    let mut files = vec![spec.root.join("docker-compose.yml")];
    files.extend(spec.overlays.iter().cloned());
    let mut env = spec.env.clone();
    env.push(("KAD_IMAGE".into(), spec.image.clone()));

    let what = match spec.engine {
        Engine::Compose(_) => "compose project",
        Engine::Swarm => "swarm stack",
    };
    say(&format!(
        "starting bootstrap + {} peers as {what} {} ({})",
        spec.peers,
        spec.project,
        spec.engine.name()
    ));
    let started = Instant::now();
    let log = run_dir.join("compose.log");
    let up = async {
        // Bounded too: the engine's deadline alone would let a compose that hangs after starting
        // every container hang the run.
        tokio::time::timeout(spec.up_timeout, async {
            let scales = spec.waves.scales(spec.peers);
            for (i, &scale) in scales.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(spec.waves.gap).await;
                    say(&format!("wave {}: scaling to {scale} peers", i + 1));
                }
                match &spec.engine {
                    Engine::Compose(compose) => {
                        compose
                            .up(&spec.root, &spec.project, &files, scale, &env, &log)
                            .await?
                    }
                    Engine::Swarm => {
                        crate::swarm::deploy(&spec.root, &spec.project, &files, scale, &env, &log)
                            .await?
                    }
                }
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} up did not finish within {}s (--up-timeout)",
                spec.engine.name(),
                spec.up_timeout.as_secs()
            )
        })?
    };
    // `up` returns once compose has created and started everything; the engine is watched as well
    // for progress and for the deadline. The first error ends both (a failed compose is not waited
    // out; a compose past the deadline is killed).
    let expected = spec.peers + 1;
    let mut reported = Instant::now();
    let scope = spec.scope();
    let waiting = engine::wait_running(docker, &scope, expected, spec.up_timeout, |n| {
        if n < expected && reported.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {n}/{expected} containers running");
            reported = Instant::now();
        }
    });
    tokio::try_join!(up, waiting)?;
    let all_running = Instant::now();
    let up_seconds = started.elapsed().as_secs_f64();
    outcome.up_seconds = Some(up_seconds);
    say(&format!(
        "{expected} containers running after {up_seconds:.1} s"
    ));

    say(&format!(
        "checking the DHT (up to {}s)",
        spec.wait.as_secs()
    ));
    let checking = Instant::now();
    let mut reader = Reader::new(match spec.engine {
        Engine::Compose(_) => Source::Compose(spec.project.clone()),
        Engine::Swarm => Source::Stack(spec.project.clone()),
    });
    let mut report: Option<Report> = None;
    let mut last_line = String::new();
    loop {
        match reader.check(&spec.check).await {
            Ok(r) => {
                let line = format!(
                    "  peers seen {} · tables ≥ 1: {} · k-closest {:.0} % · {} s",
                    r.property(PropertyId::Seen)
                        .map_or("-".into(), |p| format!("{}/{}", p.holds, p.of)),
                    r.property(PropertyId::Tables)
                        .map_or("-".into(), |p| format!("{}/{}", p.holds, p.of)),
                    r.closest.share * 100.0,
                    checking.elapsed().as_secs()
                );
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
                let done = r.passed;
                report = Some(r);
                if done {
                    break;
                }
            }
            Err(e) => eprintln!("  not yet readable: {e}"),
        }
        if checking.elapsed() >= spec.wait {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if spec.crawl && report.as_ref().is_some_and(|r| r.passed) {
        report = Some(fresh_crawl(&mut reader, &spec.check).await?);
    }
    outcome.check_seconds = Some(checking.elapsed().as_secs_f64());
    outcome.checked_at = Some(testbed_events::Timestamp::now());
    outcome.load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    if let Some(IdleSample {
        window: settle,
        after_start,
    }) = spec.settle
    {
        // Idle means after the join: wait (bounded) until every node finished its initial
        // bootstrap, the costliest thing a node does.
        let joined = Instant::now();
        loop {
            let pending = match reader.check(&spec.check).await {
                Ok(r) => r.nodes.iter().filter(|n| !n.bootstrapped).count(),
                Err(_) => usize::MAX,
            };
            if pending == 0 || joined.elapsed() >= spec.wait {
                let left = if pending == 0 {
                    "no".to_owned()
                } else {
                    pending.to_string()
                };
                say(&format!(
                    "{left} nodes still bootstrapping after {}s",
                    joined.elapsed().as_secs()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        // The last joins leave work behind for a while (see `IdleSample::after_start`).
        let quiet = all_running + after_start;
        if quiet > Instant::now() {
            say(&format!(
                "waiting until {}s after the last start, when the last joins' work is done",
                after_start.as_secs()
            ));
            tokio::time::sleep(quiet.saturating_duration_since(Instant::now())).await;
        }
        say(&format!(
            "letting the network idle for {}s, then sampling memory and CPU",
            settle.as_secs()
        ));
        outcome.idle_from_s = Some(all_running.elapsed().as_secs_f64());
        let before = engine::sample_resources(docker, &spec.project).await?;
        tokio::time::sleep(settle).await;
        let after = engine::sample_resources(docker, &spec.project).await?;
        outcome.idle_cpu_percent = after
            .iter()
            .filter_map(|a| {
                let b = before.iter().find(|b| b.name == a.name)?;
                Some((a.cpu_seconds - b.cpu_seconds) / settle.as_secs_f64() * 100.0)
            })
            .collect();
        outcome.resources = after;
    }
    // The crawler reads whatever tables there are: timed whether or not the DHT formed.
    if spec.host_crawl && report.is_some() {
        say("crawling every node from the host (testbed-crawl, one round)");
        let crawl = crate::crawl::once(docker, &spec.project, &run_dir.join("crawl.jsonl")).await?;
        say(&format!(
            "crawl: {} nodes read, {} not, {:.1} FIND_NODE requests a node, {:.1} s",
            crawl.nodes,
            crawl.failed,
            crawl.requests as f64 / crawl.nodes.max(1) as f64,
            crawl.seconds
        ));
        outcome.crawl = Some(crawl);
    }
    if let Some(scenario) = &spec.scenario {
        let formed = report.as_ref().is_some_and(|r| r.passed);
        let played = if formed {
            let mut stage = Stage {
                spec,
                docker,
                reader: &mut reader,
                files: &files,
                env: &env,
                compose_log: &log,
                run_dir,
                t0: all_running,
            };
            scenario::play(scenario, &mut stage).await
        } else {
            say("the network did not form: the scenario's steps do not run");
            ScenarioOutcome::not_played(scenario)
        };
        if !played.killed.is_empty() {
            outcome.churn = Some(ChurnOutcome {
                killed: played.killed.clone(),
                ..ChurnOutcome::default()
            });
        }
        outcome.scenario = Some(played);
        if formed {
            // The run's own report: the network as the scenario left it.
            outcome.checked_at = Some(testbed_events::Timestamp::now());
            let after = CheckOptions {
                expect_nodes: None,
                ..spec.check.clone()
            };
            report = reader.check(&after).await.ok().or(report);
        }
    }
    let mut report = report.context("the checker never managed to read the logs")?;
    if let Some(churn) = spec.churn.filter(|_| report.passed) {
        let (healed, last) = churn_and_watch(spec, docker, &mut reader, churn).await?;
        outcome.churn = Some(healed);
        // The run is judged at the end of the window: after the churn, healed or not.
        outcome.checked_at = Some(testbed_events::Timestamp::now());
        report = last;
    }
    outcome.passed = report.passed;
    outcome.report = Some(report);
    Ok(())
}

/// Waits for a crawl round that began now or later to finish, and judges the network with it:
/// a round from before the network formed would compare tables that have changed since.
async fn fresh_crawl(reader: &mut Reader, check: &CheckOptions) -> anyhow::Result<Report> {
    let formed = testbed_events::Timestamp::now();
    say("waiting for a crawl round that begins after the network formed");
    let waiting = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = reader.check(check).await?;
        let round = report.crawl.as_ref().and_then(|c| c.latest);
        if let Some(round) = round.filter(|r| r.began() >= formed) {
            say(&format!(
                "crawl: {} nodes read over the wire, {} not, {} FIND_NODE requests in {:.1} s",
                round.nodes,
                round.failed,
                round.requests,
                round.duration_ms as f64 / 1000.0
            ));
            return Ok(report);
        }
        if waiting.elapsed() >= CRAWL_ROUND_WAIT {
            anyhow::bail!(
                "crawl: no crawl round finished within {}s after the network formed (see the \
                 crawler's log in the run folder; is compose/crawl.yml's crawler running?)",
                CRAWL_ROUND_WAIT.as_secs()
            );
        }
    }
}

/// Kills `churn.share` of the peers (spread evenly over their numbers), then checks the live
/// network every ~2 s for `churn.window`: when every live node again holds its k closest live
/// peers, and when no table holds a dead peer any more. Returns that and the last report.
async fn churn_and_watch(
    spec: &RunSpec,
    docker: &Docker,
    reader: &mut Reader,
    churn: Churn,
) -> anyhow::Result<(ChurnOutcome, Report)> {
    let (_, peers) = engine::running_members(docker, &spec.project).await?;
    let count = ((peers.len() as f64 * churn.share).round() as usize).min(peers.len());
    let victims = engine::spread(&peers, count);
    say(&format!(
        "churn: killing {count} of {} peers (SIGKILL), then watching for {}s",
        peers.len(),
        churn.window.as_secs()
    ));
    let mut outcome = ChurnOutcome {
        began: Some(testbed_events::Timestamp::now()),
        ..ChurnOutcome::default()
    };
    let began = Instant::now();
    Killed::kill_each(docker, &victims, &spec.project, &mut outcome.killed)
        .await
        .context("churn")?;
    // The killed are gone for good: the run now expects that many fewer live nodes.
    let check = CheckOptions {
        expect_nodes: spec
            .check
            .expect_nodes
            .map(|n| n.saturating_sub(outcome.killed.len())),
        ..spec.check.clone()
    };
    let mut last = None;
    let mut last_line = String::new();
    // The window starts after the last kill: at N = 300 the daemon took 165 s to kill 90
    // containers one by one, longer than the whole window.
    let watching = Instant::now();
    while watching.elapsed() < churn.window {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(r) = reader.check(&check).await else {
            continue;
        };
        let at = began.elapsed().as_secs_f64();
        let whole = r.closest.of > 0 && r.closest.complete == r.closest.of;
        if whole && outcome.closest_healed_s.is_none() {
            outcome.closest_healed_s = Some(at);
        }
        if !whole {
            outcome.closest_healed_s = None;
        }
        if r.stale.entries == 0 && outcome.stale_cleared_s.is_none() {
            outcome.stale_cleared_s = Some(at);
        }
        if r.stale.entries > 0 {
            outcome.stale_cleared_s = None;
        }
        let line = format!(
            "  {} live · k-closest {}/{} · {} stale entries · {} s",
            r.live,
            r.closest.complete,
            r.closest.of,
            r.stale.entries,
            began.elapsed().as_secs()
        );
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        outcome.stale_left = r.stale.entries;
        outcome.stale_lingered_s = r.stale.lingered_ms.map(|ms| ms as f64 / 1000.0);
        if let Some(age) = outcome.stale_lingered_s {
            outcome.stale_oldest_s = Some(outcome.stale_oldest_s.map_or(age, |o| o.max(age)));
        }
        last = Some(r);
    }
    let last = last.context("churn: the checker could not read the logs after the kills")?;
    Ok((outcome, last))
}

fn write_outputs(outcome: &RunOutcome, run_dir: &Path, spec: &RunSpec) {
    // The saved folder: the report is the checker's on it (see `rejudge_saved_logs`).
    let source = relative(run_dir, &spec.root);
    if let Some(report) = &outcome.report {
        let human = report::human(report, &source, false);
        print!("{human}");
        let _ = std::fs::write(run_dir.join("report.txt"), &human);
        let _ = std::fs::write(run_dir.join("report.json"), report::json(report));
        if let Ok(xml) = report::junit(report, &source) {
            let _ = std::fs::write(run_dir.join("junit.xml"), xml);
        }
        let _ = std::fs::write(
            run_dir.join("summary.md"),
            report::markdown(
                report,
                &format!("{} (bootstrap + {} peers)", outcome.name, spec.peers),
            ),
        );
        let page = testbed_check::html::Page {
            title: &outcome.name,
            source: &source,
            log_dir: Some("logs/"),
        };
        let html = testbed_check::html::render_saved(report, run_dir, &spec.check, &page);
        match std::fs::write(run_dir.join("report.html"), html) {
            Ok(()) => say(&format!(
                "report page: {}",
                relative(&run_dir.join("report.html"), &spec.root)
            )),
            Err(e) => eprintln!("testbed: cannot write report.html: {e}"),
        }
    }
    if let Some(played) = &outcome.scenario {
        let text = scenario::human(played);
        print!("{text}");
        let _ = std::fs::write(run_dir.join("scenario.txt"), &text);
        if let Ok(json) = serde_json::to_string_pretty(played) {
            let _ = std::fs::write(run_dir.join("scenario.json"), json);
        }
        if let Ok(xml) = scenario::junit(played) {
            let _ = std::fs::write(run_dir.join("scenario-junit.xml"), xml);
        }
    }
    if let Some(e) = &outcome.error {
        eprintln!("error: {e}");
    }
    write_run_json(outcome, run_dir);
    let entry = history::Entry::of(outcome, spec.kind, &crate::commit(&spec.root));
    if let Err(e) = history::append(&spec.root, &entry) {
        eprintln!("testbed: {e:#}");
    }
}

fn write_run_json(outcome: &RunOutcome, run_dir: &Path) {
    match serde_json::to_string_pretty(outcome) {
        Ok(json) => {
            if let Err(e) = std::fs::write(run_dir.join("run.json"), json) {
                eprintln!("testbed: cannot write run.json: {e}");
            }
        }
        Err(e) => eprintln!("testbed: cannot serialize run.json: {e}"),
    }
}

fn say(message: &str) {
    eprintln!("testbed: {message}");
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
