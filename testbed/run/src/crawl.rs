//! `testbed crawl PROJECT`: the crawler run from the host against a running project.
//!
//! The crawler container (compose/crawl.yml) starts from the bootstrap and can only find nodes
//! that some table names. From the host, the Docker API gives every container's address, so a
//! node that no table holds (or a foreign node nobody added) is read too. The events go to a file
//! that `testbed-check --crawl FILE` reads beside the project's logs.

use std::io::Write;
use std::path::PathBuf;
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

/// Exit 0 if the (last) round read a node, 1 if it read none.
pub async fn run(args: CrawlArgs, root: &std::path::Path) -> anyhow::Result<u8> {
    let docker = testbed_docker::connect().await?;
    let project = testbed_docker::normalize_project_name(&args.project);
    let mut seeds = Vec::new();
    for (name, running) in project_containers(&docker, &project).await? {
        // Another crawler is not a node.
        if !running || short_name(&name, &project).starts_with("crawler") {
            continue;
        }
        let (_, addresses) = process_and_addresses(&docker, &name).await?;
        for ip in addresses {
            seeds.push(
                format!("/ip4/{ip}/tcp/{}", args.port)
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
    let out_path = args
        .out
        .unwrap_or_else(|| root.join("runs").join(format!("crawl-{project}.jsonl")));
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .with_context(|| format!("cannot write {}", out_path.display()))?,
    );
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
        let mut write_error = None;
        let summary = tokio::select! {
            s = crawler.round(|event| {
                if let Err(e) = writeln!(out, "{}", Envelope::now(event).to_line()) {
                    write_error.get_or_insert(e);
                }
            }) => s,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        out.flush()?;
        if let Some(e) = write_error {
            anyhow::bail!("cannot write {}: {e}", out_path.display());
        }
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
