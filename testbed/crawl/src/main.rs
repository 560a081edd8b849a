//! The `testbed-crawl` binary: flags, output and signals around [`testbed_crawl::Crawler`].
//!
//! Exit codes: 0 the (last) round read at least one node; 1 it read none (every seed or node
//! failed, each with a `crawl_failed` event saying why); 2 bad flags or no way to write.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use libp2p::Multiaddr;
use testbed_crawl::{Config, Crawler};
use testbed_events::Envelope;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Diagnostics filter when RUST_LOG is unset or invalid.
const DEFAULT_LOG: &str = "info,libp2p_swarm=warn";

/// Reads every Kademlia node's routing table over the wire (one FIND_NODE per bucket), starting
/// from the seeds, and writes them as kad-testbed `routing_table` events (JSON Lines).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Where to start: a node's multiaddr, with or without /p2p/<id>. Repeat, or comma-separate.
    #[arg(
        long = "seed",
        env = "KAD_CRAWL_SEEDS",
        value_name = "MULTIADDR",
        value_delimiter = ',',
        required = true
    )]
    seeds: Vec<Multiaddr>,
    /// Crawl again this long after each round ends, until SIGTERM/Ctrl-C. Once when not set.
    #[arg(long, env = "KAD_CRAWL_EVERY", value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// Nodes read at once.
    #[arg(long, env = "KAD_CRAWL_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// The longest one FIND_NODE may take.
    #[arg(long, env = "KAD_CRAWL_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// The longest one node may take in all (connecting, every bucket, Identify).
    #[arg(long, env = "KAD_CRAWL_NODE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    node_timeout: Duration,
    /// Write the events here instead of stdout (appends).
    #[arg(long, env = "KAD_CRAWL_OUT", value_name = "FILE")]
    out: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    // Diagnostics on stderr; stdout is the event stream.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| DEFAULT_LOG.parse().unwrap_or_default());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
    let code = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("testbed-crawl: cannot start the async runtime: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> i32 {
    let mut out: Box<dyn Write> = match &cli.out {
        None => Box::new(std::io::stdout()),
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!(
                    "testbed-crawl: cannot open --out {}: {e} (is the folder there and writable?)",
                    path.display()
                );
                return 2;
            }
        },
    };
    let config = Config {
        seeds: cli.seeds,
        concurrency: usize::from(cli.concurrency),
        request_timeout: cli.request_timeout,
        node_timeout: cli.node_timeout,
    };
    let mut crawler = match Crawler::new(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testbed-crawl: {e}");
            return 2;
        }
    };
    tracing::info!(peer_id = %crawler.peer_id(), "crawler started");
    let mut write_failed = None;
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let round = crawler.round(|event| {
            let line = Envelope::now(event).to_line();
            if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                write_failed.get_or_insert(e);
            }
        });
        let summary = tokio::select! {
            s = round => s,
            _ = &mut shutdown => return 0,
        };
        if let Some(e) = write_failed {
            eprintln!("testbed-crawl: cannot write the events: {e}");
            return 2;
        }
        tracing::info!(
            nodes = summary.nodes,
            failed = summary.failed,
            requests = summary.requests,
            took = ?summary.duration,
            "crawl round done"
        );
        let Some(every) = cli.every else {
            return if summary.nodes > 0 { 0 } else { 1 };
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = &mut shutdown => return 0,
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT (never, if the handlers cannot be installed).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers ({e}); stop the crawler with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
