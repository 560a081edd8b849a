//! Command line and environment: every flag has a `KAD_…` variable so compose can set it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;

/// A minimal rust-libp2p Kademlia node that writes what it knows as JSON Lines on stdout.
///
/// Without --bootstrap the node is the network's bootstrap node. With it, the node dials the
/// bootstrap address (retrying with backoff until it answers), runs a Kademlia bootstrap, then
/// keeps doing periodic bootstraps and random walks so it finds the other joiners.
///
/// stdout carries one JSON event per line (see the testbed-events crate); diagnostics go to
/// stderr (filter them with RUST_LOG). Exit codes: 0 stopped by SIGTERM/SIGINT, 1 the node could
/// not run (e.g. the listen port is in use), 2 bad flags.
#[derive(Debug, Parser)]
#[command(name = "kad-node", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 if the node in this container is healthy: listening, with a non-empty routing table,
    /// and its health file fresh. For a Docker HEALTHCHECK; reads the file the node writes with
    /// --health-file. The bootstrap node may be alone (it is the first node of a network), so it is
    /// healthy with an empty table unless --require-peers is given.
    Health(HealthArgs),
}

/// Options of the node itself.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "KAD_LISTEN", value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/4001", value_parser = parse_multiaddr)]
    pub listen: Multiaddr,

    /// Bootstrap node to join through; repeatable, or comma-separated in the env var. DNS names
    /// work (/dns4/bootstrap/tcp/4001), with or without a /p2p/<peer id> suffix. Unset: this node
    /// is the bootstrap node.
    #[arg(long, env = "KAD_BOOTSTRAP", value_name = "MULTIADDR", value_delimiter = ',', value_parser = parse_multiaddr)]
    pub bootstrap: Vec<Multiaddr>,

    /// Derive the identity from this number instead of a random key, so the PeerId is known in
    /// advance (the bootstrap node uses it).
    #[arg(long, env = "KAD_KEY_SEED", value_name = "N")]
    pub key_seed: Option<u64>,

    /// Longest mean interval between walks. After joining, a node walks 60 s later, then twice
    /// as long after each walk until this interval (each wait jittered ±50%, so nodes never walk
    /// in lockstep). Walks alternate between the node's own key (keeps its closest peers complete,
    /// and tells them about it) and a random key (discovers the rest). Each walk costs a few dozen
    /// connections, which a thousand nodes on one host feel. 0 disables.
    #[arg(long, env = "KAD_WALK_INTERVAL", value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub walk_interval: Duration,

    /// Mean interval between full Kademlia bootstraps (self lookup plus a refresh of every bucket,
    /// the costliest thing a node does), jittered by ±50%. 0 disables.
    #[arg(long, env = "KAD_BOOTSTRAP_INTERVAL", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub bootstrap_interval: Duration,

    /// After the table changes, wait this long for more changes before writing one routing_table
    /// snapshot, so a busy node does not flood its log.
    #[arg(long, env = "KAD_TABLE_DEBOUNCE", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub table_debounce: Duration,

    /// Write a routing_table snapshot when none was written for this long.
    #[arg(long, env = "KAD_HEARTBEAT", value_name = "DURATION", default_value = "30s", value_parser = parse_nonzero_duration)]
    pub heartbeat: Duration,

    /// Longest wait between two dials of an unanswered bootstrap address (backoff starts at 250ms
    /// and doubles up to this).
    #[arg(long, env = "KAD_DIAL_BACKOFF_MAX", value_name = "DURATION", default_value = "5s", value_parser = parse_nonzero_duration)]
    pub dial_backoff_max: Duration,

    /// Close a connection once no protocol has used it for this long. Kademlia keeps peers in its
    /// table after their connection closes, so closing loses no peer. Long enough for a join's
    /// lookups to share their connections: they ask mostly the same peers, one lookup after
    /// another, and on a loaded host that takes minutes. At N = 300 on 2 cores, with 10 s a node
    /// re-connected 188 times to peers it had met before (median over a run) and joined in 175 s;
    /// with 60 s, 45 times and 13 s. An open connection costs ~100 KB and a ping per
    /// `--ping-interval`.
    #[arg(long, env = "KAD_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Heal after churn (src/event_loop/liveness.rs): keep the 20 closest connected, remove
    /// peers whose dials show them gone, look up a lost closest peer's replacements. Off by
    /// default until measured at scale: at N = 300 on 2 cores, networks with it on did not form
    /// in time (the cause is not pinned down; see the README).
    #[arg(long, env = "KAD_HEAL")]
    pub heal: bool,

    /// Interval between pings on an open connection.
    #[arg(long, env = "KAD_PING_INTERVAL", value_name = "DURATION", default_value = "15s", value_parser = parse_nonzero_duration)]
    pub ping_interval: Duration,

    /// Also write the node's health here (atomically, at every snapshot) for `kad-node health`.
    #[arg(long, env = "KAD_HEALTH_FILE", value_name = "PATH")]
    pub health_file: Option<PathBuf>,

    /// Diagnostics format on stderr.
    #[arg(
        long,
        env = "KAD_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Options of `kad-node health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The health file the node writes.
    #[arg(
        long,
        env = "KAD_HEALTH_FILE",
        value_name = "PATH",
        default_value = "/tmp/kad-node.health"
    )]
    pub health_file: PathBuf,

    /// The node's heartbeat: the file must have been written within three of them.
    #[arg(long, env = "KAD_HEARTBEAT", value_name = "DURATION", default_value = "30s", value_parser = parse_nonzero_duration)]
    pub heartbeat: Duration,

    /// Demand a non-empty routing table from the bootstrap node too.
    #[arg(long)]
    pub require_peers: bool,
}

/// How diagnostics on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

/// Parses a multiaddr, saying what one looks like when it is not.
fn parse_multiaddr(s: &str) -> Result<Multiaddr, String> {
    s.trim().parse().map_err(|e| {
        format!("{e} (a multiaddr looks like /ip4/0.0.0.0/tcp/4001 or /dns4/bootstrap/tcp/4001)")
    })
}

/// The longest interval any flag takes: timers past it would overflow the clock's arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a human duration such as `30s`, `500ms`, `5m`, or `0`; at most a year.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 500ms, 30s or 5m)"))?;
    if d > MAX_DURATION {
        return Err("longer than a year (expected a duration such as 500ms, 30s or 5m)".into());
    }
    Ok(d)
}

fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kad-node").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_make_a_bootstrap_node_on_port_4001() {
        let cli = parse(&[]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.node.listen.to_string(), "/ip4/0.0.0.0/tcp/4001");
        assert!(cli.node.bootstrap.is_empty());
    }

    #[test]
    fn bootstrap_is_repeatable_and_takes_dns() {
        let cli = parse(&[
            "--bootstrap",
            "/dns4/bootstrap/tcp/4001",
            "--bootstrap",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4",
        ])
        .expect("parses");
        assert_eq!(cli.node.bootstrap.len(), 2);
    }

    #[test]
    fn a_malformed_multiaddr_names_the_flag_and_the_value() {
        let err = parse(&["--listen", "127.0.0.1:4001"]).expect_err("rejected");
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("--listen"), "{text}");
        assert!(text.contains("127.0.0.1:4001"), "{text}");
    }

    #[test]
    fn a_bad_duration_names_the_flag_and_says_what_is_expected() {
        let err = parse(&["--walk-interval", "soon"]).expect_err("rejected");
        let text = err.to_string();
        assert!(
            text.contains("--walk-interval") && text.contains("soon"),
            "{text}"
        );
        assert!(text.contains("30s"), "{text}");
        let err = parse(&["--heartbeat", "0"]).expect_err("rejected");
        assert!(err.to_string().contains("greater than zero"));
        // Huge values would overflow timers: refused at the flag, not a panic later.
        let err = parse(&["--bootstrap-interval", "400000000000y"]).expect_err("rejected");
        assert!(err.to_string().contains("--bootstrap-interval"), "{err}");
        let err = parse(&["--heartbeat", "2years"]).expect_err("rejected");
        assert!(err.to_string().contains("longer than a year"), "{err}");
    }

    #[test]
    fn health_is_a_subcommand() {
        let cli = parse(&["health", "--require-peers"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Health(HealthArgs {
                require_peers: true,
                ..
            }))
        ));
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
