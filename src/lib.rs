//! kad-node: a minimal rust-libp2p Kademlia node that writes what it knows as JSON Lines.
//!
//! TCP + Noise + Yamux, DNS, Identify, Kademlia (always in server mode) and Ping. Without
//! `--bootstrap` the node is the bootstrap node; joiners dial it (retrying until it answers), run a
//! Kademlia bootstrap, then keep walking the DHT so they find each other. Every event goes to stdout
//! as one JSON line in the format of the `testbed-events` crate; diagnostics go to stderr.
//!
//! # Layout
//!
//! * `main.rs`: the binary; parses flags, sets up stderr logging, calls [`run`], maps exit codes.
//! * [`config`]: flags and their `KAD_…` environment variables.
//! * [`identity`]: random or seed-derived keys.
//! * [`behaviour`]: the one `NetworkBehaviour` (Kademlia + Identify + Ping + keep-alive).
//! * [`keep_alive`]: keeps the connections to the k closest peers open, to notice when one dies.
//! * [`event_loop`]: the one loop that owns the Swarm and turns what happens into events.
//! * [`addrs`]: which advertised addresses are worth giving Kademlia.
//! * [`emit`]: the one writer of stdout.
//! * [`health`]: the health file behind `kad-node health`.
//! * [`memory`]: returning the heap a join's burst freed.
//!
//! [`run`] takes the output writer and the shutdown future as arguments, so tests drive real nodes
//! in-process on 127.0.0.1 and stop them at will.

pub mod addrs;
pub mod behaviour;
pub mod config;
pub mod emit;
pub mod event_loop;
pub mod health;
pub mod identity;
pub mod keep_alive;
pub mod memory;

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, tcp, yamux};
use testbed_events::{Event, NodeStarted, Role};

pub use crate::config::NodeArgs;
use crate::event_loop::{EventLoop, Timers, error_chain};

/// How long the listener may take to report its first address before the node gives up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the node could not run. [`NodeError::exit_code`] maps each to the documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A flag's value is unusable (exit 2).
    #[error("invalid value '{value}' for '{flag}': {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// Listening failed, e.g. the port is in use (exit 1).
    #[error("cannot listen on {addr} (--listen): {reason}")]
    Listen { addr: Multiaddr, reason: String },
    /// The transport could not be built, e.g. /etc/resolv.conf is unreadable (exit 1).
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
}

impl NodeError {
    /// 2 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            NodeError::InvalidFlag { .. } => 2,
            NodeError::Listen { .. } | NodeError::Transport(_) => 1,
        }
    }
}

/// Checks what clap cannot: addresses must be TCP over IP (or DNS, for `--bootstrap`).
pub fn validate(args: &NodeArgs) -> Result<(), NodeError> {
    let invalid = |flag, addr: &Multiaddr, reason: &str| NodeError::InvalidFlag {
        flag,
        value: addr.to_string(),
        reason: reason.to_owned(),
    };
    let mut listen = args.listen.iter();
    match (listen.next(), listen.next(), listen.next()) {
        (Some(Protocol::Ip4(_) | Protocol::Ip6(_)), Some(Protocol::Tcp(_)), None) => {}
        _ => {
            return Err(invalid(
                "--listen",
                &args.listen,
                "expected /ip4/ADDRESS/tcp/PORT or /ip6/ADDRESS/tcp/PORT",
            ));
        }
    }
    for addr in &args.bootstrap {
        let mut parts = addr.iter();
        let host = matches!(
            parts.next(),
            Some(
                Protocol::Ip4(_)
                    | Protocol::Ip6(_)
                    | Protocol::Dns(_)
                    | Protocol::Dns4(_)
                    | Protocol::Dns6(_)
            )
        );
        let tcp = matches!(parts.next(), Some(Protocol::Tcp(_)));
        let rest_ok = matches!(
            (parts.next(), parts.next()),
            (None, None) | (Some(Protocol::P2p(_)), None)
        );
        if !(host && tcp && rest_ok) {
            return Err(invalid(
                "--bootstrap",
                addr,
                "expected /ip4/ADDRESS/tcp/PORT or /dns4/NAME/tcp/PORT, optionally ending in /p2p/PEER_ID",
            ));
        }
    }
    Ok(())
}

/// Runs a node until `shutdown` resolves with the reason to stop (e.g. `"SIGTERM"`).
///
/// Events go to `out` as JSON Lines. On shutdown the node writes its final `routing_table` and
/// `node_stopping`, then returns `Ok`.
pub async fn run<W: Write>(
    args: NodeArgs,
    out: W,
    shutdown: impl Future<Output = String>,
) -> Result<(), NodeError> {
    validate(&args)?;
    let key = identity::keypair(args.key_seed);
    let peer_id = key.public().to_peer_id();
    let ping_interval = args.ping_interval;
    let idle_timeout = args.idle_timeout;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NodeError::Transport(error_chain(&e)))?
        .with_dns()
        .map_err(|e| {
            NodeError::Transport(format!(
                "DNS resolver: {} (the node reads /etc/resolv.conf)",
                error_chain(&e)
            ))
        })?
        .with_behaviour(|key| behaviour::Behaviour::new(key, ping_interval))
        .map_err(|e| NodeError::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(idle_timeout)
                // Kademlia knows most peers by two spellings of one address (with and without
                // /p2p/…); dialing them concurrently would run two TCP + Noise handshakes to the
                // same socket and throw one away. One at a time halves the cost of a dial.
                .with_dial_concurrency_factor(std::num::NonZeroU8::MIN)
        })
        .build();

    swarm
        .listen_on(args.listen.clone())
        .map_err(|e| NodeError::Listen {
            addr: args.listen.clone(),
            reason: format!(
                "{} (is another process using the port? pick another with --listen, or port 0 for any free one)",
                error_chain(&e)
            ),
        })?;
    let listen_addrs = first_listen_addrs(&mut swarm, &args.listen).await?;

    let role = if args.bootstrap.is_empty() {
        Role::Bootstrap
    } else {
        Role::Peer
    };
    tracing::info!(%peer_id, role = role.as_str(), ?listen_addrs, "node started");
    let mut event_loop = EventLoop::new(
        swarm,
        emit::Emitter::new(out),
        args.bootstrap.clone(),
        Timers {
            walk_interval: args.walk_interval,
            bootstrap_interval: args.bootstrap_interval,
            table_debounce: args.table_debounce,
            heartbeat: args.heartbeat,
            dial_backoff_max: args.dial_backoff_max,
            heal: args.heal,
            idle_timeout: args.idle_timeout,
        },
        args.health_file.clone(),
    );
    event_loop.emit(Event::NodeStarted(NodeStarted {
        peer_id: peer_id.to_string(),
        role,
        listen_addrs: listen_addrs.iter().map(|a| a.to_string()).collect(),
        bootstrap: args.bootstrap.iter().map(|a| a.to_string()).collect(),
        agent_version: behaviour::agent_version(),
        kad_protocol: behaviour::KAD_PROTOCOL.to_string(),
        heartbeat_ms: u64::try_from(args.heartbeat.as_millis()).ok(),
    }));
    event_loop.run(shutdown).await;
    Ok(())
}

/// Waits for the listener's first address, then takes every other address it reports at once
/// (a 0.0.0.0 listener reports one per interface), so `node_started` names them all.
async fn first_listen_addrs(
    swarm: &mut libp2p::Swarm<behaviour::Behaviour>,
    listen: &Multiaddr,
) -> Result<Vec<Multiaddr>, NodeError> {
    let mut addrs = Vec::new();
    let wait = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    addrs.push(address);
                    return Ok(());
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(match reason {
                        Err(e) => error_chain(&e),
                        Ok(()) => "the listener closed".to_owned(),
                    });
                }
                SwarmEvent::ListenerError { error, .. } => return Err(error_chain(&error)),
                _ => {}
            }
        }
    };
    let listen_err = |reason: String| NodeError::Listen {
        addr: listen.clone(),
        reason,
    };
    tokio::time::timeout(LISTEN_TIMEOUT, wait)
        .await
        .map_err(|_| listen_err(format!("no address after {LISTEN_TIMEOUT:?}")))?
        .map_err(listen_err)?;
    // Whatever else is ready now; the event loop reports later ones as `listen_addr`.
    while let Some(Some(event)) = swarm.next().now_or_never() {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => addrs.push(address),
            other => tracing::debug!(event = ?other, "early swarm event"),
        }
    }
    Ok(addrs)
}
