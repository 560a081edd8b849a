//! The `kad-node` binary: flags in, node run, exit code out. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use kad_node::config::{Cli, Command, LogFormat};
use testbed_events::Timestamp;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Diagnostics filter when RUST_LOG is unset or invalid.
const DEFAULT_LOG: &str = "info,libp2p_swarm=warn,libp2p_kad=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Health(args)) => {
            let max_age = args.heartbeat.saturating_mul(3);
            match kad_node::health::check(
                &args.health_file,
                max_age,
                args.require_peers,
                Timestamp::now(),
            ) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    eprintln!("unhealthy: {reason}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            init_tracing(cli.node.log_format);
            // One small node per container: a single-threaded runtime keeps it to one thread and
            // a few MB, which is what lets a thousand of them share two cores.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(kad_node::run(
                cli.node,
                std::io::stdout(),
                shutdown_signal(),
            ));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
                }
            }
        }
    }
}

/// Diagnostics go to stderr: stdout belongs to the event stream.
fn init_tracing(format: LogFormat) {
    // `target=level` directives, RUST_LOG's common form, without pulling a regex engine into
    // every container.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| DEFAULT_LOG.parse().unwrap_or_default());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry.with(layer.with_filter(filter)).init(),
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).init(),
    }
}

/// Resolves with the name of the first SIGTERM or SIGINT.
async fn shutdown_signal() -> String {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers ({e}); stop the node with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM".to_owned(),
        _ = int.recv() => "SIGINT".to_owned(),
    }
}
