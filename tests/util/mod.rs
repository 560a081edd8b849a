//! Helpers shared by the node's integration tests: in-process nodes, node processes, and waiting
//! for a condition with a deadline.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kad_node::config::Cli;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};
use testbed_events::{Envelope, Event, SnapshotReason, parse_line};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Polls `condition` every 50 ms until it returns `Some`, or fails the test after `limit` with
/// `what` and the last state `describe` gives.
pub async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = condition() {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}; last state:\n{}",
                describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `Write` whose bytes the test can read while the node writes.
#[derive(Clone, Default)]
pub struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    /// Every complete line parsed; panics on a line that is not an event (the node must never
    /// write one).
    pub fn events(&self) -> Vec<Envelope> {
        let bytes = self.0.lock().expect("not poisoned").clone();
        parse_events(&String::from_utf8(bytes).expect("stdout is UTF-8"))
    }
}

/// Parses JSON Lines, insisting every line is a valid event of the current schema.
pub fn parse_events(text: &str) -> Vec<Envelope> {
    text.lines()
        .map(|line| {
            let parsed =
                parse_line(line).unwrap_or_else(|e| panic!("bad event line {line:?}: {e}"));
            assert!(!parsed.newer_version);
            parsed.envelope
        })
        .collect()
}

/// The node's own peer id, from its `node_started`.
pub fn peer_id(events: &[Envelope]) -> Option<String> {
    events.iter().find_map(|e| match &e.event {
        Event::NodeStarted(s) => Some(s.peer_id.clone()),
        _ => None,
    })
}

/// The first listen address, from `node_started`.
pub fn listen_addr(events: &[Envelope]) -> Option<String> {
    events.iter().find_map(|e| match &e.event {
        Event::NodeStarted(s) => s.listen_addrs.first().cloned(),
        _ => None,
    })
}

/// The peers in the latest `routing_table` snapshot (and its reason).
pub fn latest_table(events: &[Envelope]) -> Option<(SnapshotReason, BTreeSet<String>)> {
    events.iter().rev().find_map(|e| match &e.event {
        Event::RoutingTable {
            reason,
            peers,
            size,
            ..
        } => {
            assert_eq!(*size, peers.len(), "size matches the peer list");
            Some((*reason, peers.iter().map(|p| p.peer_id.clone()).collect()))
        }
        _ => None,
    })
}

/// Node flags for a fast test network on loopback.
pub fn test_args(extra: &[&str]) -> kad_node::NodeArgs {
    let listen: &[&str] = if extra.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "/ip4/127.0.0.1/tcp/0"]
    };
    // Fast timers, each unless `extra` sets it.
    let base = [
        ["--walk-interval", "1s"],
        ["--bootstrap-interval", "5s"],
        ["--table-debounce", "100ms"],
        ["--heartbeat", "2s"],
        ["--dial-backoff-max", "500ms"],
    ];
    let base = base
        .iter()
        .filter(|[flag, _]| !extra.contains(flag))
        .flatten();
    let args = std::iter::once(&"kad-node")
        .chain(listen)
        .chain(base)
        .chain(extra);
    <Cli as clap::Parser>::try_parse_from(args)
        .expect("test flags parse")
        .node
}

/// A node running in-process on the test's runtime.
pub struct InProcessNode {
    pub out: SharedBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), kad_node::NodeError>>,
}

impl InProcessNode {
    pub fn start(args: kad_node::NodeArgs) -> Self {
        let out = SharedBuf::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kad_node::run(args, out.clone(), async move {
            let _ = stopped.await;
            "test shutdown".to_owned()
        }));
        Self {
            out,
            stop: Some(stop),
            task,
        }
    }

    pub fn events(&self) -> Vec<Envelope> {
        self.out.events()
    }

    /// Waits for `node_started` and returns (peer id, listen address).
    pub async fn started(&self) -> (String, String) {
        wait_for(
            "node_started",
            Duration::from_secs(10),
            || {
                let events = self.events();
                Some((peer_id(&events)?, listen_addr(&events)?))
            },
            || format!("{:?}", self.events()),
        )
        .await
    }

    /// Stops the node and waits (bounded) for it to finish.
    pub async fn stop(mut self) -> Vec<Envelope> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("node stops within 5 s")
            .expect("node task did not panic")
            .expect("node ran without error");
        self.events()
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bare libp2p peer for a test to play a part (a silent bootstrap node, a peer without
/// Identify): TCP, Noise and Yamux, listening on loopback. Returns it with its address.
pub async fn loopback_swarm<B: NetworkBehaviour>(
    behaviour: impl FnOnce(&Keypair) -> B,
) -> (Swarm<B>, Multiaddr) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("transport")
        .with_behaviour(behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("valid"))
        .expect("listen");
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    (swarm, addr)
}
