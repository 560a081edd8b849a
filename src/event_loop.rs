//! The one event loop: owns the Swarm, turns each swarm event into at most one schema event, and
//! runs the node's timers (bootstrap dial retries, random walks, periodic bootstraps, routing-table
//! snapshots).
//!
//! # Layout
//!
//! The loop and the mapping of swarm events to schema events live here; each of its jobs has a
//! room of its own:
//!
//! * `dialing.rs`: dialing the `--bootstrap` addresses, with backoff, until one answers.
//! * `maintenance.rs`: the join (Kademlia bootstrap: self lookup, bucket refreshes), the settling
//!   self lookup, walks, and cancelling libp2p-kad's own bootstraps.
//! * `admission.rs`: who may enter a k-bucket — the node's most unusual rule, as a pure function
//!   with its unit tests — and looking up a close peer that came without an address (one at a
//!   time, after the join).
//! * `liveness.rs`: healing — watching the k closest, removing dead entries, replacing a lost
//!   closest peer.
//! * `snapshots.rs`: routing-table snapshots and the health file.

mod admission;
mod dialing;
mod liveness;
mod maintenance;
mod snapshots;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::kad::{self, QueryId};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use testbed_events::{BootstrapTrigger, Direction, Event, Role, SnapshotReason, WalkTarget};
use tokio::time::{Instant, Sleep};

use crate::addrs::dialable_from;
use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::emit::Emitter;

pub use dialing::peer_id_of;
use dialing::{BootstrapTarget, DIAL_BACKOFF_START};
use liveness::Liveness;
use maintenance::{Bootstrapping, Query, RANDOM_WALK_PEERS, Rejoin, WALK_START, jittered};

/// Timing knobs of the loop, from the command line.
#[derive(Debug, Clone)]
pub struct Timers {
    pub walk_interval: Duration,
    pub bootstrap_interval: Duration,
    pub table_debounce: Duration,
    pub heartbeat: Duration,
    pub dial_backoff_max: Duration,
    /// Run the healing rules (`--heal`, liveness.rs).
    pub heal: bool,
    /// `--idle-timeout`: a connection that breaks younger than this was not closed for being
    /// idle (liveness.rs, rule 2).
    pub idle_timeout: Duration,
}

/// An open connection, as the loop keeps it.
struct OpenConnection {
    remote: Multiaddr,
    since: Instant,
}

pub struct EventLoop<W: Write> {
    swarm: Swarm<Behaviour>,
    emitter: Emitter<W>,
    role: Role,
    timers: Timers,
    health_file: Option<PathBuf>,
    started: Instant,
    /// Each open connection: its remote address decides which identify addresses are dialable,
    /// its age whether a break was an idle close (liveness.rs, rule 2).
    open: HashMap<ConnectionId, OpenConnection>,
    bootstrap_targets: Vec<BootstrapTarget>,
    /// Whether the initial Kademlia bootstrap has been started (joiners only).
    joined: bool,
    queries: HashMap<QueryId, Query>,
    bootstrapping: Option<Bootstrapping>,
    /// When to try the join again: its self lookup got no answer (see [`maintenance::Rejoin`]).
    rejoin: Rejoin,
    /// Bootstraps libp2p started on its own and this loop cancelled (see
    /// [`EventLoop::cancel_automatic_bootstraps`]).
    cancelled: HashSet<QueryId>,
    /// When the debounced `changed` snapshot is due, if the table changed since the last one.
    snapshot_due: Option<Instant>,
    last_snapshot: Instant,
    next_walk: Option<Instant>,
    /// The current mean wait between walks, and what the next one looks up.
    walk_wait: Duration,
    next_walk_target: WalkTarget,
    /// Whether the next self-lookup walk (the settling one) ends by telling the peers that need
    /// this node of it.
    tell_after_walk: bool,
    next_bootstrap: Option<Instant>,
    health_error_reported: bool,
    /// A digest of what each peer last said through identify: identify runs on every new
    /// connection, and repeating an unchanged answer would be most of a busy node's log.
    identified: HashMap<PeerId, u64>,
    /// Peers already reported unroutable and not routed since.
    unroutable: HashSet<PeerId>,
    /// Peers let into a full bucket, and whom they replaced (reported with their insertion).
    evicting: HashMap<PeerId, PeerId>,
    /// Close peers without an address, to look up (see [`EventLoop::find_addresses_later`]).
    peer_lookups: admission::PeerLookups,
    liveness: Liveness,
}

impl<W: Write> std::fmt::Debug for EventLoop<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", self.swarm.local_peer_id())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<W: Write> EventLoop<W> {
    pub fn new(
        swarm: Swarm<Behaviour>,
        emitter: Emitter<W>,
        bootstrap: Vec<Multiaddr>,
        timers: Timers,
        health_file: Option<PathBuf>,
    ) -> Self {
        let role = if bootstrap.is_empty() {
            Role::Bootstrap
        } else {
            Role::Peer
        };
        let now = Instant::now();
        let bootstrap_targets = bootstrap
            .into_iter()
            .map(|addr| BootstrapTarget {
                peer: peer_id_of(&addr),
                addr,
                attempts: 0,
                pending: None,
                next_dial: Some(now),
                reached: false,
            })
            .collect();
        Self {
            swarm,
            emitter,
            role,
            timers,
            health_file,
            started: now,
            open: HashMap::new(),
            bootstrap_targets,
            joined: false,
            queries: HashMap::new(),
            bootstrapping: None,
            rejoin: Rejoin::default(),
            cancelled: HashSet::new(),
            snapshot_due: None,
            last_snapshot: now,
            next_walk: None,
            walk_wait: WALK_START,
            next_walk_target: WalkTarget::Own,
            tell_after_walk: false,
            next_bootstrap: None,
            health_error_reported: false,
            identified: HashMap::new(),
            unroutable: HashSet::new(),
            evicting: HashMap::new(),
            peer_lookups: admission::PeerLookups::default(),
            liveness: Liveness::default(),
        }
    }

    pub fn emit(&mut self, event: Event) {
        self.emitter.emit(event);
    }

    /// Runs until `shutdown` resolves with a reason, then writes the final snapshot and
    /// `node_stopping`.
    pub async fn run(mut self, shutdown: impl Future<Output = String>) {
        let mut shutdown = std::pin::pin!(shutdown);
        if self.role == Role::Bootstrap {
            // The bootstrap node has nobody to join: its walks start now (and find nothing until
            // someone connects, at no cost).
            self.schedule_periodic_work(Instant::now());
        }
        self.write_health();
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(self.next_deadline()));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    self.on_swarm_event(event);
                    self.cancel_automatic_bootstraps();
                }
                () = timer.as_mut() => self.on_timers(Instant::now()),
                reason = shutdown.as_mut() => {
                    self.stop(reason);
                    return;
                }
            }
            let deadline = self.next_deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
        }
    }

    fn stop(&mut self, reason: String) {
        self.snapshot(SnapshotReason::Shutdown);
        let uptime_ms = millis(self.started.elapsed());
        self.emit(Event::NodeStopping { reason, uptime_ms });
    }

    /// The earliest time a timer needs attention.
    fn next_deadline(&self) -> Instant {
        let heartbeat = self.last_snapshot + self.timers.heartbeat;
        self.bootstrap_targets
            .iter()
            .filter(|t| !t.reached && t.pending.is_none())
            .filter_map(|t| t.next_dial)
            .chain(self.snapshot_due)
            .chain(self.next_walk)
            .chain(self.next_bootstrap)
            .chain(self.rejoin.at)
            .chain(self.peer_lookups.next(self.walk_running(WalkTarget::Peer)))
            .chain(self.liveness.deadlines())
            .fold(heartbeat, Instant::min)
    }

    fn on_timers(&mut self, now: Instant) {
        for i in 0..self.bootstrap_targets.len() {
            let t = &self.bootstrap_targets[i];
            if !t.reached && t.pending.is_none() && t.next_dial.is_some_and(|at| at <= now) {
                self.dial_bootstrap(i);
            }
        }
        if self.snapshot_due.is_some_and(|at| at <= now) {
            self.snapshot(SnapshotReason::Changed);
        }
        if self.last_snapshot + self.timers.heartbeat <= now {
            self.snapshot(SnapshotReason::Heartbeat);
        }
        if self.next_walk.is_some_and(|at| at <= now) {
            self.walk_wait = (self.walk_wait * 2).min(self.timers.walk_interval);
            self.next_walk = jittered(now, self.walk_wait);
            let target = self.next_walk_target;
            self.next_walk_target = match target {
                WalkTarget::Own => WalkTarget::Random,
                // Peer lookups are never scheduled (see `admission.rs`).
                WalkTarget::Random | WalkTarget::Peer => WalkTarget::Own,
            };
            if self.table_size() > 0 {
                let id = match target {
                    WalkTarget::Own => self.lookup_own_key(),
                    WalkTarget::Random | WalkTarget::Peer => {
                        self.swarm.behaviour_mut().kad.get_n_closest_peers(
                            PeerId::random(),
                            NonZeroUsize::new(RANDOM_WALK_PEERS).unwrap_or(NonZeroUsize::MIN),
                        )
                    }
                };
                self.queries.insert(
                    id,
                    Query::Walk {
                        target,
                        started: now,
                        tell: target == WalkTarget::Own
                            && std::mem::take(&mut self.tell_after_walk),
                    },
                );
            }
        }
        if self.next_bootstrap.is_some_and(|at| at <= now) {
            self.next_bootstrap = jittered(now, self.timers.bootstrap_interval);
            self.start_bootstrap(BootstrapTrigger::Periodic);
        }
        if self.rejoin.at.is_some_and(|at| at <= now) {
            self.rejoin.at = None;
            self.start_bootstrap(BootstrapTrigger::Initial);
        }
        self.find_addresses_due(now);
        self.on_liveness_timers(now);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                if let Err(error) = e.result {
                    tracing::debug!(peer = %e.peer, %error, "ping failed");
                    self.on_ping_failed(e.peer, e.connection);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::KeepAlive(never)) => match never {},
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let remote = endpoint.get_remote_address().clone();
                let direction = match endpoint {
                    ConnectedPoint::Dialer { .. } => Direction::Dialer,
                    ConnectedPoint::Listener { .. } => Direction::Listener,
                };
                if let Some(t) = self
                    .bootstrap_targets
                    .iter_mut()
                    .find(|t| t.pending == Some(connection_id))
                {
                    t.pending = None;
                    t.reached = true;
                    t.peer = Some(peer_id);
                    tracing::info!(addr = %t.addr, %peer_id, "reached bootstrap node");
                }
                self.emit(Event::ConnectionEstablished {
                    peer_id: peer_id.to_string(),
                    remote_addr: remote.to_string(),
                    direction,
                    connections: num_established.get(),
                });
                self.open.insert(
                    connection_id,
                    OpenConnection {
                        remote,
                        since: Instant::now(),
                    },
                );
                self.on_connected(&peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                cause,
            } => {
                let opened = self.open.remove(&connection_id);
                if !self.joined && num_established == 0 {
                    // Reached a bootstrap node but never got a routable peer out of it (identify
                    // timed out on an overloaded host, say): dial it again rather than stay alone.
                    let now = Instant::now();
                    let backoff = self.timers.dial_backoff_max;
                    for t in self
                        .bootstrap_targets
                        .iter_mut()
                        .filter(|t| t.reached && t.peer == Some(peer_id))
                    {
                        t.reached = false;
                        t.next_dial = Some(now + DIAL_BACKOFF_START.min(backoff));
                        tracing::warn!(addr = %t.addr, "bootstrap connection closed before joining; dialing again");
                    }
                }
                let age = opened.map(|o| o.since.elapsed());
                let broke = cause.is_some();
                self.emit(Event::ConnectionClosed {
                    peer_id: peer_id.to_string(),
                    remote_addr: endpoint.get_remote_address().to_string(),
                    connections: num_established,
                    cause: cause.map(|e| error_chain(&e)),
                });
                if num_established == 0 {
                    let young = broke && age.is_some_and(|age| age < self.timers.idle_timeout);
                    self.on_disconnected(peer_id, young);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(i) = self
                    .bootstrap_targets
                    .iter()
                    .position(|t| t.pending == Some(connection_id))
                {
                    self.bootstrap_dial_failed(i, error_chain(&error));
                    return;
                }
                // Not failures: another dial to the peer is in flight or it is already connected.
                if matches!(
                    error,
                    DialError::DialPeerConditionFalse(_) | DialError::Aborted
                ) {
                    return;
                }
                let addr = match &error {
                    DialError::Transport(attempts) if attempts.len() == 1 => {
                        Some(attempts[0].0.to_string())
                    }
                    _ => None,
                };
                let chain = error_chain(&error);
                self.emit(Event::DialFailed {
                    peer_id: peer_id.map(|p| p.to_string()),
                    addr,
                    error: chain.clone(),
                    attempt: None,
                    retry_in_ms: None,
                });
                if let Some(peer) = peer_id {
                    self.on_dial_failure(peer, &error, chain);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, error = %error_chain(&error), "incoming connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                self.emit(Event::ListenAddr {
                    addr: address.to_string(),
                });
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::error!(error = %error_chain(&error), "listener error");
            }
            SwarmEvent::ListenerClosed {
                reason, addresses, ..
            } => {
                tracing::error!(?addresses, ?reason, "listener closed");
            }
            other => tracing::trace!(event = ?other, "swarm event"),
        }
    }

    fn on_identify_event(&mut self, event: identify::Event) {
        match event {
            identify::Event::Received {
                connection_id,
                peer_id,
                info,
            } => {
                let kad = info.protocols.contains(&KAD_PROTOCOL);
                let dialable = match (kad, self.open.get(&connection_id)) {
                    (true, Some(open)) => dialable_from(&open.remote, &info.listen_addrs),
                    _ => Vec::new(),
                };
                self.on_address_claimed(peer_id, &dialable);
                let added = self.admit(peer_id, dialable);
                if kad && added.is_empty() {
                    // Turned away (or no dialable address): it may belong once dead entries go.
                    self.find_addresses_later(peer_id, Instant::now());
                }
                let digest = {
                    let mut listen = to_strings(&info.listen_addrs);
                    listen.sort_unstable();
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (&info.agent_version, listen, kad, added.is_empty()).hash(&mut h);
                    h.finish()
                };
                if self.identified.insert(peer_id, digest) == Some(digest) {
                    return;
                }
                self.emit(Event::Identified {
                    peer_id: peer_id.to_string(),
                    agent_version: info.agent_version,
                    kad,
                    listen_addrs: to_strings(&info.listen_addrs),
                    added_addrs: to_strings(&added),
                });
            }
            identify::Event::Error { peer_id, error, .. } => {
                tracing::debug!(%peer_id, error = %error_chain(&error), "identify failed");
                if self.swarm.is_connected(&peer_id) {
                    self.find_addresses_later(peer_id, Instant::now());
                }
            }
            identify::Event::Sent { .. } | identify::Event::Pushed { .. } => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                addresses,
                bucket_range,
                old_peer,
            } => {
                // A known peer's new address changes no table membership: not worth a line each
                // on a thousand nodes.
                self.unroutable.remove(&peer);
                let evicted_for_closer = self.evicting.remove(&peer);
                if is_new_peer || old_peer.is_some() {
                    self.table_changed();
                    self.emit(Event::RoutingUpdated {
                        peer_id: peer.to_string(),
                        is_new_peer,
                        bucket: bucket_range.0.ilog2(),
                        addresses: to_strings(addresses.iter()),
                        evicted: old_peer.or(evicted_for_closer).map(|p| p.to_string()),
                    });
                }
                if self.role == Role::Peer && !self.joined {
                    // The first routable peer is (almost always) the bootstrap node: join now.
                    self.joined = true;
                    self.start_bootstrap(BootstrapTrigger::Initial);
                    self.schedule_periodic_work(Instant::now());
                }
            }
            kad::Event::UnroutablePeer { peer } => {
                if self.unroutable.insert(peer) {
                    self.emit(Event::UnroutablePeer {
                        peer_id: peer.to_string(),
                    });
                }
                self.find_addresses_later(peer, Instant::now());
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
            } => self.on_query_progress(id, result, stats.num_successes(), step.last),
            // Kademlia confirmed on a connection this node dialed. Identify runs once per
            // connection, and when it ran the peer may have been turned away: this is the second
            // chance, at the address that just worked.
            kad::Event::RoutablePeer { peer, address } => {
                self.admit(peer, vec![address]);
            }
            kad::Event::PendingRoutablePeer { peer, address } => {
                tracing::debug!(%peer, %address, "peer pending insertion into a full bucket");
            }
            kad::Event::ModeChanged { new_mode } => {
                tracing::warn!(%new_mode, "kademlia mode changed");
            }
            kad::Event::InboundRequest { .. } => {}
        }
    }
}

/// Every routing-table entry of `kad` (its key and addresses), mapped by `f`: the one walk over
/// the k-buckets, which lend their entries a bucket at a time.
fn table_entries<T>(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    mut f: impl FnMut(&kad::KBucketKey<PeerId>, &kad::Addresses) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    for bucket in kad.kbuckets() {
        for entry in bucket.iter() {
            out.push(f(entry.node.key, entry.node.value));
        }
    }
    out
}

fn to_strings<'a>(addrs: impl IntoIterator<Item = &'a Multiaddr>) -> Vec<String> {
    addrs.into_iter().map(|a| a.to_string()).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Errors are written into events with their causes (the contract's one spelling).
pub use testbed_events::error_chain;
