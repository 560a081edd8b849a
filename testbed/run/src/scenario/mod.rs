//! Scenarios: faults as code. A TOML file (`compose/scenarios/*.toml`) declares the network's
//! size, named groups of nodes and a timeline of steps; each step does something to the network
//! and may expect a property of the checker to hold within a time, or throughout a window.
//!
//! * `file.rs`: the file format, read and checked before anything starts.
//! * `judge.rs`: one expectation judged from samples of the network, live or replayed (pure).
//! * this file: playing the timeline against a running compose project, and the report.
//!
//! How a run goes (`testbed up --scenario FILE`, see `run.rs`): the network comes up and must
//! form first (the ordinary check). The scenario clock starts when every container runs; a step
//! with `at` runs at that time after it (or at once, if the formation took longer; the report
//! shows both), a step with `after` that long after the previous step finished. A step's
//! expectations are judged right after its action, every ~2 s, through the same checker as
//! everything else, and the next step waits until they are decided. Those live samples pace the
//! timeline; the verdict is judged again after the run from the saved logs ([`rejudge`]), every
//! second from the action in the nodes' own clocks, so a reader lagging under load cannot fail a
//! healthy network or delay its healing time. "Healed within 60 s" is the time from the fault
//! (or the heal) to the first such instant at which the property held again.
//!
//! Container actions go through the Docker Engine API; network ones through `faults.rs`, from
//! outside the nodes.

pub mod file;
pub mod judge;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use testbed_check::instants::Instants;
use testbed_check::verdict::Across;
use testbed_check::{CheckOptions, Reader, SourceError};
use testbed_docker::bollard::Docker;
use testbed_docker::bollard::query_parameters::{
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};

use crate::engine;
use crate::faults::{self, Faults};
use crate::run::{Killed, RunSpec};
use file::{Action, Hold, Peers, Property, Scenario, When};
use judge::{Judge, Verdict};

/// How often the network is sampled while expectations are pending.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// What the scenario did and found: written to `runs/<name>/scenario.json` (and `.txt`,
/// `-junit.xml`).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    /// Whether the network formed before the first step (if not, no step ran).
    pub formed: bool,
    pub steps: Vec<StepOutcome>,
    /// Every expectation held (and the network formed).
    pub passed: bool,
    /// What the steps did to the network's links, and how.
    pub faults_applied: Vec<String>,
    #[serde(skip)]
    pub killed: Vec<Killed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub number: usize,
    pub action: String,
    /// `at` steps: when it was due, seconds after every node started.
    pub due_s: Option<f64>,
    /// When it ran, seconds after every node started.
    pub started_s: f64,
    /// When it ran (wall clock, as the node logs' timestamps).
    pub at: Option<testbed_events::Timestamp>,
    /// How long the action itself took.
    pub took_s: f64,
    /// When the action was done: the expectations' clock starts here.
    pub acted_at: Option<testbed_events::Timestamp>,
    /// The checker's options for its expectations (the groups of an `across`, say).
    #[serde(skip)]
    pub check: Option<CheckOptions>,
    /// The containers it acted on (short names).
    pub nodes: Vec<String>,
    pub expectations: Vec<ExpectOutcome>,
    /// The action failed: the run stops here (exit 2).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpectOutcome {
    pub property: String,
    pub hold: String,
    /// The verdict that counts: from the saved logs at exact instants ([`rejudge`]), or the live
    /// one if the logs could not be judged.
    #[serde(flatten)]
    pub verdict: Verdict,
    pub samples: usize,
    /// What the live run judged from the logs as its reader had them, which paced the timeline.
    pub live: Option<LiveJudgement>,
}

/// An expectation as the live run judged it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveJudgement {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub samples: usize,
}

impl ExpectOutcome {
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }
}

impl ScenarioOutcome {
    pub fn not_played(scenario: &Scenario) -> Self {
        Self {
            name: scenario.name.clone(),
            file: scenario.path.clone(),
            description: scenario.description.clone(),
            formed: false,
            steps: Vec::new(),
            passed: false,
            faults_applied: Vec::new(),
            killed: Vec::new(),
        }
    }

    /// Whether the network formed, every step was done, and every expectation held: what
    /// `passed` says once the steps ran, and again once they were judged from the saved logs.
    fn all_held(&self) -> bool {
        self.formed
            && self
                .steps
                .iter()
                .all(|s| s.error.is_none() && s.expectations.iter().all(ExpectOutcome::passed))
    }

    /// 1 if an expectation failed or the network never formed, 2 if a step could not be done.
    pub fn failure_code(&self) -> Option<u8> {
        if self.steps.iter().any(|s| s.error.is_some()) {
            Some(2)
        } else if !self.passed {
            Some(1)
        } else {
            None
        }
    }
}

/// The compose project being played on.
pub struct Stage<'a> {
    pub spec: &'a RunSpec,
    pub docker: &'a Docker,
    pub reader: &'a mut Reader,
    /// Compose files and environment, to add peers.
    pub files: &'a [PathBuf],
    pub env: &'a [(String, String)],
    pub compose_log: &'a Path,
    /// The run's folder: a removed container's logs are saved there first.
    pub run_dir: &'a Path,
    /// When every container of the initial network ran: the scenario's clock.
    pub t0: Instant,
}

impl std::fmt::Debug for Stage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("project", &self.spec.project)
            .finish_non_exhaustive()
    }
}

/// Plays every step, judging each step's expectations before the next. Stops at the first step
/// whose action fails (recorded in its outcome).
pub async fn play(scenario: &Scenario, stage: &mut Stage<'_>) -> ScenarioOutcome {
    let mut outcome = ScenarioOutcome::not_played(scenario);
    outcome.formed = true;
    let mut faults = Faults::default();
    let mut peers = stage.spec.peers;
    let groups = match resolve(scenario, stage).await {
        Ok(g) => g,
        Err(e) => {
            outcome.steps.push(StepOutcome {
                number: 0,
                action: "resolve groups".into(),
                due_s: None,
                started_s: stage.t0.elapsed().as_secs_f64(),
                at: Some(testbed_events::Timestamp::now()),
                took_s: 0.0,
                acted_at: None,
                check: None,
                nodes: Vec::new(),
                expectations: Vec::new(),
                error: Some(format!("{e:#}")),
            });
            return outcome;
        }
    };
    let mut previous_end = Instant::now();
    for step in &scenario.steps {
        let due = match step.when {
            When::At(d) => stage.t0 + d,
            When::After(d) => previous_end + d,
        };
        tokio::time::sleep_until(due.into()).await;
        let started = Instant::now();
        say(&format!(
            "step {} at {:.1} s: {}",
            step.number,
            started.duration_since(stage.t0).as_secs_f64(),
            step.action.describe()
        ));
        let mut record = StepOutcome {
            number: step.number,
            action: step.action.describe(),
            due_s: matches!(step.when, When::At(_))
                .then(|| due.duration_since(stage.t0).as_secs_f64()),
            started_s: started.duration_since(stage.t0).as_secs_f64(),
            at: Some(testbed_events::Timestamp::now()),
            took_s: 0.0,
            acted_at: None,
            check: None,
            nodes: Vec::new(),
            expectations: Vec::new(),
            error: None,
        };
        let done = act(
            &step.action,
            &groups,
            stage,
            &mut faults,
            &mut peers,
            &mut outcome,
        )
        .await;
        record.took_s = started.elapsed().as_secs_f64();
        match done {
            Ok(nodes) => record.nodes = nodes,
            Err(e) => {
                let message = format!("{e:#}");
                eprintln!("  step {} failed: {message}", step.number);
                record.error = Some(message);
                outcome.steps.push(record);
                outcome.passed = false;
                return outcome;
            }
        }
        let acted = Instant::now();
        record.acted_at = Some(testbed_events::Timestamp::now());
        if !step.expect.is_empty() {
            let opts = step_options(step, &groups, stage);
            record.expectations = expect(step, &opts, stage, acted).await;
            record.check = Some(opts);
        }
        previous_end = Instant::now();
        outcome.steps.push(record);
    }
    outcome.passed = outcome.all_held();
    outcome
}

/// Each declared group's containers, from the containers running when the scenario starts.
/// `all` is resolved again at every step (peers may have been added).
async fn resolve(
    scenario: &Scenario,
    stage: &Stage<'_>,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let (bootstrap, peers) = members(stage).await?;
    let mut out = BTreeMap::new();
    // `except` groups last: they are what the others leave.
    let (others, excepts): (Vec<_>, Vec<_>) = scenario
        .groups
        .iter()
        .partition(|(_, g)| !matches!(g.peers, Peers::Except(_)));
    for (name, group) in others.into_iter().chain(excepts) {
        let mut containers: Vec<String> = match &group.peers {
            Peers::All => continue,
            Peers::Except(names) => peers
                .iter()
                .map(|(_, c)| c)
                .filter(|c| {
                    !names
                        .iter()
                        .any(|n| out.get(n).is_some_and(|g: &Vec<String>| g.contains(c)))
                })
                .cloned()
                .collect(),
            Peers::None => Vec::new(),
            Peers::Count(n) => peers.iter().take(*n).map(|(_, c)| c.clone()).collect(),
            Peers::Share(share) => {
                let count = ((peers.len() as f64 * share).round() as usize).clamp(1, peers.len());
                engine::spread(&peers, count)
            }
            Peers::Numbers(numbers) => numbers
                .iter()
                .map(|n| {
                    peers
                        .iter()
                        .find(|(p, _)| p == n)
                        .map(|(_, c)| c.clone())
                        .with_context(|| format!("group `{name}`: no running container peer {n}"))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        if group.bootstrap {
            containers.extend(bootstrap.iter().cloned());
        }
        if containers.is_empty() {
            bail!("group `{name}` is empty: no such container runs");
        }
        out.insert(name.clone(), containers);
    }
    Ok(out)
}

/// The running bootstrap container, and the running peers by number.
async fn members(stage: &Stage<'_>) -> anyhow::Result<(Option<String>, Vec<(usize, String)>)> {
    engine::running_members(stage.docker, &stage.spec.project).await
}

async fn containers_of(
    group: &str,
    groups: &BTreeMap<String, Vec<String>>,
    stage: &Stage<'_>,
) -> anyhow::Result<Vec<String>> {
    if group == "all" {
        let (bootstrap, peers) = members(stage).await?;
        return Ok(bootstrap
            .into_iter()
            .chain(peers.into_iter().map(|(_, c)| c))
            .collect());
    }
    groups
        .get(group)
        .cloned()
        .with_context(|| format!("unknown group `{group}`"))
}

fn short(stage: &Stage<'_>, container: &str) -> String {
    testbed_docker::short_name(container, &stage.spec.project).to_owned()
}

/// Does one step's action; returns the containers it acted on (short names).
async fn act(
    action: &Action,
    groups: &BTreeMap<String, Vec<String>>,
    stage: &mut Stage<'_>,
    faults: &mut Faults,
    peers: &mut usize,
    outcome: &mut ScenarioOutcome,
) -> anyhow::Result<Vec<String>> {
    let docker = stage.docker;
    let group_targets = |containers: Vec<String>| async move {
        let mut targets = Vec::new();
        for c in &containers {
            targets.push(faults::target(docker, c).await?);
        }
        anyhow::Ok(targets)
    };
    let acted: Vec<String> = match action {
        Action::Kill(g) => {
            let containers = containers_of(g, groups, stage).await?;
            Killed::kill_each(
                docker,
                &containers,
                &stage.spec.project,
                &mut outcome.killed,
            )
            .await?;
            containers
        }
        Action::Stop(g) | Action::Remove(g) => {
            let containers = containers_of(g, groups, stage).await?;
            for c in &containers {
                let options = StopContainerOptionsBuilder::new().t(10).build();
                docker
                    .stop_container(c, Some(options))
                    .await
                    .with_context(|| format!("cannot stop {c}"))?;
                if matches!(action, Action::Remove(_)) {
                    engine::save_container_logs(docker, &stage.spec.project, c, stage.run_dir)
                        .await?;
                    let options = RemoveContainerOptionsBuilder::new().force(true).build();
                    docker
                        .remove_container(c, Some(options))
                        .await
                        .with_context(|| format!("cannot remove {c}"))?;
                }
            }
            containers
        }
        Action::Restart(g) => {
            let containers = containers_of(g, groups, stage).await?;
            for c in &containers {
                let options = RestartContainerOptionsBuilder::new().t(10).build();
                docker
                    .restart_container(c, Some(options))
                    .await
                    .with_context(|| format!("cannot restart {c}"))?;
                // A new process in a new namespace: what was in force there must be again.
                if faults.touches(c) {
                    faults.reapply(&faults::target(docker, c).await?).await?;
                }
            }
            containers
        }
        Action::Pause(g) | Action::Unpause(g) => {
            let pause = matches!(action, Action::Pause(_));
            let containers = containers_of(g, groups, stage).await?;
            for c in &containers {
                let done = if pause {
                    docker.pause_container(c).await
                } else {
                    docker.unpause_container(c).await
                };
                let verb = if pause { "pause" } else { "unpause" };
                done.with_context(|| format!("cannot {verb} {c}"))?;
            }
            containers
        }
        Action::Add(n) => {
            let before: Vec<String> = containers_of("all", groups, stage).await?;
            *peers += n;
            let spec = stage.spec;
            spec.compose()?
                .up(
                    &spec.root,
                    &spec.project,
                    stage.files,
                    *peers,
                    stage.env,
                    stage.compose_log,
                )
                .await?;
            let running = before.len() + n;
            engine::wait_running(
                docker,
                &spec.scope(),
                running,
                Duration::from_secs(60) + Duration::from_secs(*n as u64),
                |_| {},
            )
            .await?;
            containers_of("all", groups, stage)
                .await?
                .into_iter()
                .filter(|c| !before.contains(c))
                .collect()
        }
        Action::Partition(a, b) => {
            let a = group_targets(containers_of(a, groups, stage).await?).await?;
            let b = group_targets(containers_of(b, groups, stage).await?).await?;
            faults.partition(&a, &b).await?;
            outcome.faults_applied.push(format!(
                "partition: iptables DROP of the other side's addresses, in and out, in each of \
                 the {} nodes' network namespaces",
                a.len() + b.len()
            ));
            a.iter().chain(&b).map(|t| t.container.clone()).collect()
        }
        Action::Heal => {
            let touched = faults.cut_containers();
            let targets = group_targets(touched).await?;
            faults.heal(&targets).await?;
            targets.iter().map(|t| t.container.clone()).collect()
        }
        Action::Shape { group, shape } => {
            let targets = group_targets(containers_of(group, groups, stage).await?).await?;
            faults.shape(&targets, shape).await?;
            let mut how = Vec::new();
            if let Some(l) = shape.loss {
                how.push(format!(
                    "loss {:.1} %: iptables statistic DROP of outgoing packets",
                    l * 100.0
                ));
            }
            if let Some(r) = &shape.rate {
                how.push(format!(
                    "rate {r}: tc {}",
                    if shape.delay.is_some() {
                        "netem"
                    } else {
                        "tbf"
                    }
                ));
            }
            if shape.delay.is_some() {
                how.push("delay: tc netem".into());
            }
            outcome.faults_applied.push(format!(
                "shape {group} ({} nodes): {}",
                targets.len(),
                how.join("; ")
            ));
            targets.iter().map(|t| t.container.clone()).collect()
        }
        Action::Unshape(g) => {
            let targets = group_targets(containers_of(g, groups, stage).await?).await?;
            faults.unshape(&targets).await?;
            targets.iter().map(|t| t.container.clone()).collect()
        }
        Action::Wait => Vec::new(),
    };
    Ok(acted.iter().map(|c| short(stage, c)).collect())
}

/// The checker's options for a step's expectations: the run's, with the groups they name.
fn step_options(
    step: &file::Step,
    groups: &BTreeMap<String, Vec<String>>,
    stage: &Stage<'_>,
) -> CheckOptions {
    let mut opts = CheckOptions {
        expect_nodes: None,
        full_mesh: step.expect.iter().any(|e| e.property == Property::FullMesh),
        ..stage.spec.check.clone()
    };
    for e in &step.expect {
        if let Property::Across(a, b) = &e.property {
            let names = |g: &str| {
                groups
                    .get(g)
                    .map(|cs| cs.iter().map(|c| short(stage, c)).collect())
                    .unwrap_or_default()
            };
            opts.across = Some(Across {
                a: (a.clone(), names(a)),
                b: (b.clone(), names(b)),
            });
        }
    }
    opts
}

/// Judges a step's expectations from samples taken every [`SAMPLE_EVERY`] from `acted`: what
/// paces the timeline. The verdicts are judged again from the saved logs after the run.
async fn expect(
    step: &file::Step,
    opts: &CheckOptions,
    stage: &mut Stage<'_>,
    acted: Instant,
) -> Vec<ExpectOutcome> {
    let mut judges: Vec<Judge> = step.expect.iter().map(|e| Judge::new(e.hold)).collect();
    let mut last_line = String::new();
    while judges.iter().any(|j| !j.done()) {
        let read = stage.reader.check(opts).await;
        // Timed when the read ended: it holds what the nodes logged until then (at N = 300 a
        // read took ~5 s, and timing it from its start credited that to the earlier instant).
        let since = acted.elapsed();
        match read {
            Ok(report) => {
                for (j, e) in judges.iter_mut().zip(&step.expect) {
                    j.observe(since, judge::holds(&e.property, &report));
                }
                let line = format!(
                    "  {} live · k-closest {}/{} · {} stale",
                    report.live, report.closest.complete, report.closest.of, report.stale.entries
                );
                if line != last_line {
                    eprintln!("{line} · {:.0} s", since.as_secs_f64());
                    last_line = line;
                }
            }
            Err(e) => {
                eprintln!("  cannot read the network: {e}");
                for j in &mut judges {
                    j.tick(since);
                }
            }
        }
        if judges.iter().all(Judge::done) {
            break;
        }
        // Sample again, but never past the nearest deadline by more than a moment.
        let next = judges
            .iter()
            .filter(|j| !j.done())
            .map(Judge::deadline)
            .min()
            .unwrap_or_default()
            .saturating_sub(acted.elapsed())
            .min(SAMPLE_EVERY);
        tokio::time::sleep(next.max(Duration::from_millis(200))).await;
    }
    judges
        .into_iter()
        .zip(&step.expect)
        .map(|(j, e)| {
            let outcome = ExpectOutcome {
                property: e.property.to_string(),
                hold: hold_text(e.hold),
                verdict: j.verdict,
                samples: j.samples,
                live: None,
            };
            say(&format!("  live: {}", expectation_line(&outcome)));
            outcome
        })
        .collect()
}

/// Judges every expectation again from the run's saved logs, at instants
/// [`judge::REPLAY_EVERY`] apart from each step's action, in the nodes' own clocks
/// ([`Instants`]): the live samples are what the reader had read, which under load lags the
/// network (at N = 300, two samples in two minutes, 273 of 301 running nodes counted). These
/// verdicts count; the live ones stay beside them. `end` is when the scenario was over (the
/// run's own check, or its shutdown): no instant after it is judged.
pub fn rejudge(
    outcome: &mut ScenarioOutcome,
    scenario: &Scenario,
    logs: &Path,
    end: Option<testbed_events::Timestamp>,
) -> Result<Rejudged, SourceError> {
    let mut walk = Instants::open(logs)?;
    // What follows each step, and when: the next step, or the end of the scenario.
    let mut follows: Vec<(String, Option<testbed_events::Timestamp>)> = outcome
        .steps
        .iter()
        .skip(1)
        .map(|s| (format!("step {}", s.number), s.at))
        .collect();
    follows.push(("the end of the scenario".into(), end));
    let mut done = Rejudged::default();
    for (i, record) in outcome.steps.iter_mut().enumerate() {
        let (Some(acted), Some(opts)) = (record.acted_at, record.check.as_ref()) else {
            continue;
        };
        let Some(step) = scenario.steps.iter().find(|s| s.number == record.number) else {
            continue;
        };
        let next = follows
            .get(i)
            .and_then(|(what, at)| Some((what.as_str(), (*at)?)));
        let holds: Vec<Hold> = step.expect.iter().map(|e| e.hold).collect();
        let judges = judge::replay(&holds, acted, next, |at| {
            done.instants += 1;
            let report = walk.check_at(at, opts).ok()?;
            Some(
                step.expect
                    .iter()
                    .map(|e| judge::holds(&e.property, &report))
                    .collect(),
            )
        });
        for (e, j) in record.expectations.iter_mut().zip(judges) {
            let live = LiveJudgement {
                verdict: std::mem::replace(&mut e.verdict, j.verdict),
                samples: std::mem::replace(&mut e.samples, j.samples),
            };
            if live.verdict.passed() != e.verdict.passed() {
                done.changed += 1;
            }
            e.live = Some(live);
        }
    }
    outcome.passed = outcome.all_held();
    Ok(done)
}

/// What [`rejudge`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rejudged {
    /// Instants judged, over all steps.
    pub instants: usize,
    /// Expectations whose verdict differs from the live one.
    pub changed: usize,
}

fn hold_text(hold: Hold) -> String {
    match hold {
        Hold::Within(d) => format!("within {}", humantime::format_duration(d)),
        Hold::Throughout(d) => format!("throughout {}", humantime::format_duration(d)),
    }
}

fn expectation_line(e: &ExpectOutcome) -> String {
    let line = match &e.verdict {
        Verdict::Pass {
            held_after_s: Some(t),
        } => format!("PASS {} {}: held after {t:.1} s", e.property, e.hold),
        Verdict::Pass { held_after_s: None } => format!("PASS {} {}", e.property, e.hold),
        Verdict::Fail { at_s, reasons } => format!(
            "FAIL {} {} (at {at_s:.1} s): {}",
            e.property,
            e.hold,
            reasons.join("\n      ")
        ),
        Verdict::Pending => format!("? {} {}: not judged", e.property, e.hold),
    };
    match &e.live {
        Some(live) if live.verdict.passed() != e.verdict.passed() => format!(
            "{line}\n      (live, from {} samples as read while it ran: {})",
            live.samples,
            match &live.verdict {
                Verdict::Pass {
                    held_after_s: Some(t),
                } => format!("PASS, held after {t:.1} s"),
                Verdict::Pass { held_after_s: None } => "PASS".into(),
                Verdict::Fail { at_s, reasons } => format!(
                    "FAIL at {at_s:.1} s: {}",
                    reasons.last().map_or("", String::as_str)
                ),
                Verdict::Pending => "not judged".into(),
            }
        ),
        _ => line,
    }
}

/// The scenario report as text.
pub fn human(o: &ScenarioOutcome) -> String {
    let mut s = format!(
        "\nscenario {} ({}): {}\n",
        o.name,
        o.file.display(),
        if o.passed { "PASS" } else { "FAIL" }
    );
    if !o.description.is_empty() {
        s.push_str(&format!("  {}\n", o.description));
    }
    if !o.formed {
        s.push_str("  the network did not form, so no step ran\n");
    }
    for step in &o.steps {
        let due = step
            .due_s
            .map(|d| format!(" (due at {d:.1} s)"))
            .unwrap_or_default();
        s.push_str(&format!(
            "  step {} at {:.1} s{due}: {} — {} nodes, took {:.1} s\n",
            step.number,
            step.started_s,
            step.action,
            step.nodes.len(),
            step.took_s
        ));
        if let Some(e) = &step.error {
            s.push_str(&format!("    ERROR {e}\n"));
        }
        for e in &step.expectations {
            s.push_str(&format!("    {}\n", expectation_line(e)));
        }
    }
    for f in &o.faults_applied {
        s.push_str(&format!("  applied: {f}\n"));
    }
    s
}

/// The scenario report as JUnit XML: one test case per expectation.
pub fn junit(o: &ScenarioOutcome) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("testbed-scenario");
    let mut suite = TestSuite::new(o.name.clone());
    if !o.formed {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status.set_message("the network did not form before the first step");
        suite.add_test_case(TestCase::new("network forms", status));
    }
    for step in &o.steps {
        if let Some(e) = &step.error {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(e.clone());
            suite.add_test_case(TestCase::new(
                format!("step {}: {}", step.number, step.action),
                status,
            ));
        }
        for e in &step.expectations {
            let status = match &e.verdict {
                Verdict::Pass { .. } => TestCaseStatus::success(),
                Verdict::Fail { reasons, .. } => {
                    let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    st.set_message(expectation_line(e));
                    st.set_description(reasons.join("\n"));
                    st
                }
                Verdict::Pending => TestCaseStatus::skipped(),
            };
            let mut case = TestCase::new(
                format!(
                    "step {} ({}): {} {}",
                    step.number, step.action, e.property, e.hold
                ),
                status,
            );
            case.set_classname(format!("testbed-scenario.{}", o.name));
            suite.add_test_case(case);
        }
    }
    suite.set_system_out(human(o));
    report.add_test_suite(suite);
    report.to_string()
}

fn say(message: &str) {
    eprintln!("testbed: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_events::{
        Envelope, Event, NodeStarted, Role, SCHEMA_VERSION, SnapshotReason, TableEntry,
    };

    fn outcome(verdict: Verdict) -> ScenarioOutcome {
        ScenarioOutcome {
            name: "partition-heal".into(),
            file: "compose/scenarios/partition-heal.toml".into(),
            description: String::new(),
            formed: true,
            passed: matches!(verdict, Verdict::Pass { .. }),
            steps: vec![StepOutcome {
                number: 2,
                action: "heal".into(),
                due_s: None,
                started_s: 95.0,
                at: None,
                took_s: 0.4,
                acted_at: None,
                check: None,
                nodes: vec!["peer_1".into()],
                expectations: vec![ExpectOutcome {
                    property: "a and b hold each other".into(),
                    hold: "within 2m".into(),
                    verdict,
                    samples: 3,
                    live: None,
                }],
                error: None,
            }],
            faults_applied: Vec::new(),
            killed: Vec::new(),
        }
    }

    const A: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    const B: &str = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X";
    const C: &str = "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4";

    fn ts(s: u32) -> testbed_events::Timestamp {
        testbed_events::Timestamp::parse_rfc3339(&format!("2026-11-25T10:00:{s:02}.000Z"))
            .expect("a timestamp")
    }

    /// One log line at 10:00:`s`, written through the event contract.
    fn line(s: u32, event: Event) -> String {
        Envelope {
            v: SCHEMA_VERSION,
            ts: ts(s),
            event,
        }
        .to_line()
    }

    fn started(id: &str, s: u32) -> String {
        line(
            s,
            Event::NodeStarted(NodeStarted {
                peer_id: id.into(),
                role: Role::Peer,
                listen_addrs: Vec::new(),
                bootstrap: Vec::new(),
                agent_version: String::new(),
                kad_protocol: String::new(),
                heartbeat_ms: None,
            }),
        )
    }

    fn table(s: u32, peers: &[&str]) -> String {
        let peers: Vec<TableEntry> = peers
            .iter()
            .map(|p| TableEntry {
                peer_id: (*p).into(),
                bucket: 255,
            })
            .collect();
        line(
            s,
            Event::RoutingTable {
                reason: SnapshotReason::Changed,
                size: peers.len(),
                peers,
                crawled: None,
            },
        )
    }

    /// A saved run whose node c has an empty table until 10:00:09, and a scenario with one step
    /// (acted at 10:00:02) expecting every table to hold a peer within 10 s, which the live
    /// judge failed.
    fn saved_run() -> (tempfile::TempDir, Scenario, ScenarioOutcome) {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).expect("mkdir");
        for (name, lines) in [
            ("a", vec![started(A, 0), table(1, &[B]), table(5, &[B, C])]),
            ("b", vec![started(B, 0), table(1, &[A]), table(5, &[A, C])]),
            (
                "c",
                vec![started(C, 0), table(9, &[A, B]), table(30, &[A, B])],
            ),
        ] {
            std::fs::write(logs.join(format!("{name}.log")), lines.join("\n")).expect("write");
        }
        let scenario = file::parse(
            Path::new("x.toml"),
            "peers = 2\n[[step]]\nat = \"1s\"\naction = \"wait\"\n\
             expect = [{ property = \"tables\", within = \"10s\" }]\n",
        )
        .expect("a scenario");
        let mut played = outcome(Verdict::Fail {
            at_s: 10.0,
            reasons: vec!["did not hold within 10s".into(), "c: no live peer".into()],
        });
        played.steps[0].number = 1;
        played.steps[0].acted_at = Some(ts(2));
        played.steps[0].check = Some(CheckOptions::default());
        (dir, scenario, played)
    }

    #[test]
    fn the_saved_logs_judge_each_second_from_the_action_and_their_verdict_counts() {
        let (dir, scenario, mut played) = saved_run();
        let done = rejudge(
            &mut played,
            &scenario,
            &dir.path().join("logs"),
            Some(ts(40)),
        )
        .expect("judged");
        // c's table filled at 10:00:09: 7 s after the action, the eighth instant judged.
        assert_eq!((done.instants, done.changed), (8, 1));
        let e = &played.steps[0].expectations[0];
        assert_eq!(
            e.verdict,
            Verdict::Pass {
                held_after_s: Some(7.0)
            }
        );
        assert!(played.passed);
        assert_eq!(played.failure_code(), None);
        let text = human(&played);
        assert!(
            text.contains("held after 7.0 s\n      (live, from 3 samples as read while it ran: FAIL at 10.0 s: c: no live peer)"),
            "{text}"
        );

        // The scenario ended 5 s after the action: what had not held by then fails, and says so.
        let (dir, scenario, mut played) = saved_run();
        rejudge(
            &mut played,
            &scenario,
            &dir.path().join("logs"),
            Some(ts(7)),
        )
        .expect("judged");
        let e = &played.steps[0].expectations[0];
        assert!(
            matches!(&e.verdict, Verdict::Fail { reasons, .. }
                if reasons[0].starts_with("the end of the scenario began 5.0 s after this step")),
            "{:?}",
            e.verdict
        );
        assert_eq!(played.failure_code(), Some(1));
    }

    #[test]
    fn reports_name_the_step_the_expectation_and_the_healing_time() {
        let pass = outcome(Verdict::Pass {
            held_after_s: Some(12.5),
        });
        let text = human(&pass);
        assert!(
            text.contains("PASS a and b hold each other within 2m: held after 12.5 s"),
            "{text}"
        );
        assert_eq!(pass.failure_code(), None);

        let fail = outcome(Verdict::Fail {
            at_s: 120.0,
            reasons: vec![
                "did not hold within 2m".into(),
                "peer_1 (a): missing peer_9".into(),
            ],
        });
        assert_eq!(fail.failure_code(), Some(1));
        let xml = junit(&fail).expect("xml");
        assert!(
            xml.contains("step 2 (heal): a and b hold each other within 2m"),
            "{xml}"
        );
        assert!(xml.contains("peer_1 (a): missing peer_9"), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
    }
}
