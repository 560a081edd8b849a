//! `testbed crawl PROJECT`: the crawler run from the host against a running project.
//!
//! The crawler container (compose/crawl.yml) starts from the bootstrap and can only find nodes
//! that some table names. From the host, the Docker API gives every container's address, so a
//! node that no table holds (or a foreign node nobody added) is read too. The events go to a file
//! that `testbed-check --crawl FILE` reads beside the project's logs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use testbed_crawl::{Config, Crawler};
use testbed_docker::{process_and_addresses, project_containers, short_name};
use testbed_events::Envelope;

#[derive(Debug, Clone, Args)]
pub struct CrawlArgs {
    /// The compose project, as printed by `up` (kt-…).
    project: String,

    /// Where to write the events (appends) [default: runs/crawl-<project>.jsonl].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Crawl again this long after each round, until Ctrl-C. Once when not set.
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,

    /// The port the nodes listen on.
    #[arg(long, default_value_t = 4001)]
    port: u16,
}

/// What one crawl from the host read (run.json, and the benchmark's crawl columns).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CrawlOutcome {
    pub nodes: usize,
    pub failed: usize,
    pub requests: u64,
    pub seconds: f64,
}

impl From<testbed_crawl::Summary> for CrawlOutcome {
    fn from(s: testbed_crawl::Summary) -> Self {
        Self {
            nodes: s.nodes,
            failed: s.failed,
            requests: s.requests,
            seconds: s.duration.as_secs_f64(),
        }
    }
}

/// Every running container's address in `project` (a crawler's excepted), as crawl seeds.
async fn seeds(
    docker: &testbed_docker::bollard::Docker,
    project: &str,
    port: u16,
) -> anyhow::Result<Vec<testbed_crawl::Multiaddr>> {
    let mut seeds = Vec::new();
    for (name, running) in project_containers(docker, project).await? {
        // Another crawler is not a node.
        if !running || short_name(&name, project).starts_with("crawler") {
            continue;
        }
        let (_, addresses) = process_and_addresses(docker, &name).await?;
        for ip in addresses {
            seeds.push(
                format!("/ip4/{ip}/tcp/{port}")
                    .parse()
                    .with_context(|| format!("{name}: address {ip} is not an IPv4 address"))?,
            );
        }
    }
    if seeds.is_empty() {
        anyhow::bail!(
            "no running container in compose project {project:?}: is it up? (`docker ps` names \
             projects in the com.docker.compose.project label)"
        );
    }
    Ok(seeds)
}

/// One crawl round of `project` from the host, its events appended to `out_path`.
pub async fn once(
    docker: &testbed_docker::bollard::Docker,
    project: &str,
    out_path: &Path,
) -> anyhow::Result<CrawlOutcome> {
    let mut crawler = Crawler::new(Config {
        seeds: seeds(docker, project, NODE_PORT).await?,
        ..Config::default()
    })?;
    let mut out = open(out_path)?;
    let summary = round(&mut crawler, &mut out, out_path).await?;
    Ok(summary.into())
}

/// The port the testbed's nodes listen on.
const NODE_PORT: u16 = 4001;

fn open(path: &Path) -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?,
    ))
}

/// Runs one round, writing every event as a line.
async fn round(
    crawler: &mut Crawler,
    out: &mut impl Write,
    path: &Path,
) -> anyhow::Result<testbed_crawl::Summary> {
    let mut write_error = None;
    let summary = crawler
        .round(|event| {
            if let Err(e) = writeln!(out, "{}", Envelope::now(event).to_line()) {
                write_error.get_or_insert(e);
            }
        })
        .await;
    out.flush()?;
    match write_error {
        Some(e) => anyhow::bail!("cannot write {}: {e}", path.display()),
        None => Ok(summary),
    }
}

/// `testbed crawl`: exit 0 if the (last) round read a node, 1 if it read none.
pub async fn run(args: CrawlArgs, root: &Path) -> anyhow::Result<u8> {
    let docker = testbed_docker::connect().await?;
    let project = testbed_docker::normalize_project_name(&args.project);
    let seeds = seeds(&docker, &project, args.port).await?;
    let out_path = args
        .out
        .unwrap_or_else(|| root.join("runs").join(format!("crawl-{project}.jsonl")));
    let mut out = open(&out_path)?;
    eprintln!(
        "testbed: crawling {} containers of {project} from the host; events to {}",
        seeds.len(),
        out_path.display()
    );
    let mut crawler = Crawler::new(Config {
        seeds,
        ..Config::default()
    })?;
    loop {
        let summary = tokio::select! {
            s = round(&mut crawler, &mut out, &out_path) => s?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        eprintln!(
            "testbed: crawl: {} nodes read, {} not, {} FIND_NODE requests ({:.1} a node) in {:.1} s",
            summary.nodes,
            summary.failed,
            summary.requests,
            summary.requests as f64 / summary.nodes.max(1) as f64,
            summary.duration.as_secs_f64()
        );
        let Some(every) = args.every else {
            eprintln!(
                "testbed: judge it with: cargo run -p testbed-check -- --project {project} --crawl {}",
                out_path.display()
            );
            return Ok(if summary.nodes > 0 { 0 } else { 1 });
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}
