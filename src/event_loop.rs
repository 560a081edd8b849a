//! The one event loop: owns the Swarm, turns each swarm event into at most one schema event, and
//! runs the node's timers (bootstrap dial retries, random walks, periodic bootstraps, routing-table
//! snapshots).

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
use libp2p::kad::{self, KBucketKey, QueryId, QueryResult};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use rand::Rng;
use testbed_events::{
    BootstrapTrigger, Direction, Event, Role, SnapshotReason, TableEntry, Timestamp, WalkTarget,
};
use tokio::time::{Instant, Sleep};

use crate::addrs::dialable_from;
use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::emit::Emitter;
use crate::health::{self, HealthState};

/// First wait before redialing an unanswered bootstrap address; doubles per attempt.
const DIAL_BACKOFF_START: Duration = Duration::from_millis(250);

/// First wait before a walk; doubles per walk up to `--walk-interval`. Joining is when the
/// network around a node changes most, so walks are frequent then and rare once it settled.
const WALK_START: Duration = Duration::from_secs(60);

/// When a joiner looks up its own key a second time, after its initial bootstrap. Nodes that
/// joined at the same moment cannot find each other in their first lookups (neither is in any
/// table yet); a few seconds later both are, and this lookup finds and informs them.
const SETTLE_WALK: Duration = Duration::from_secs(8);

/// Peers a random walk asks for. Discovery needs a few; asking for k = 20 would contact twice
/// as many nodes for little more.
const RANDOM_WALK_PEERS: usize = 8;

/// A `--bootstrap` address and how dialing it goes.
#[derive(Debug)]
struct BootstrapTarget {
    addr: Multiaddr,
    peer: Option<PeerId>,
    attempts: u32,
    /// The dial in flight, if any.
    pending: Option<ConnectionId>,
    next_dial: Option<Instant>,
    reached: bool,
}

/// A query this loop started, to report when it finishes.
#[derive(Debug)]
enum Query {
    /// A step of the running [`Bootstrapping`].
    BootstrapStep,
    Walk {
        target: WalkTarget,
        started: Instant,
    },
}

/// A Kademlia bootstrap in progress: the self lookup, then one short lookup per bucket farther
/// than the closest neighbour, one after the other.
#[derive(Debug)]
struct Bootstrapping {
    trigger: BootstrapTrigger,
    started: Instant,
    error: Option<String>,
    /// Buckets still to refresh; `None` until the self lookup finished.
    buckets: Option<Vec<u32>>,
}

/// Peers a refresh of a *full* bucket asks for. libp2p's bootstrap asks for k = 20 per bucket,
/// ~25 connections each; a full bucket's part of the key space holds more than k nodes, and the
/// refresh only needs to meet some of them. Measured at N = 300: ~63 outbound dials per node over
/// a whole run, from ~700 with k-peer refreshes.
///
/// A bucket that is not full is refreshed with a k-peer lookup. Its part of the key space may hold
/// fewer than k nodes, and then a k-peer lookup of any key in it reaches every one of them (each
/// is closer to that key than any node outside). Those are the nodes that can want this one among
/// their 20 closest while being far down its own list, where its self lookup does not reach:
/// without this, such a node learned of the newcomer only on its own next walk.
///
/// Buckets nearer than the k-th closest peer are not refreshed at all: the self lookup already met
/// every node in them. So a join costs one or two k-peer refreshes (the buckets around the k-th
/// closest) at any N. Refreshing every sparse bucket with k peers instead was measured at N = 300
/// in containers: 200 outbound dials per node (median), joins of 60 s (median) on a host loaded to
/// 270, and the check missed its deadline.
const REFRESH_PEERS: usize = 3;

/// Timing knobs of the loop, from the command line.
#[derive(Debug, Clone)]
pub struct Timers {
    pub walk_interval: Duration,
    pub bootstrap_interval: Duration,
    pub table_debounce: Duration,
    pub heartbeat: Duration,
    pub dial_backoff_max: Duration,
}

pub struct EventLoop<W: Write> {
    swarm: Swarm<Behaviour>,
    emitter: Emitter<W>,
    role: Role,
    timers: Timers,
    health_file: Option<PathBuf>,
    started: Instant,
    /// Remote address of each open connection: decides which identify addresses are dialable.
    remotes: HashMap<ConnectionId, Multiaddr>,
    bootstrap_targets: Vec<BootstrapTarget>,
    /// Whether the initial Kademlia bootstrap has been started (joiners only).
    joined: bool,
    queries: HashMap<QueryId, Query>,
    bootstrapping: Option<Bootstrapping>,
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
    next_bootstrap: Option<Instant>,
    health_error_reported: bool,
    /// A digest of what each peer last said through identify: identify runs on every new
    /// connection, and repeating an unchanged answer would be most of a busy node's log.
    identified: HashMap<PeerId, u64>,
    /// Peers already reported unroutable and not routed since.
    unroutable: HashSet<PeerId>,
    /// Peers let into a full bucket, and whom they replaced (reported with their insertion).
    evicting: HashMap<PeerId, PeerId>,
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
            remotes: HashMap::new(),
            bootstrap_targets,
            joined: false,
            queries: HashMap::new(),
            bootstrapping: None,
            cancelled: HashSet::new(),
            snapshot_due: None,
            last_snapshot: now,
            next_walk: None,
            walk_wait: WALK_START,
            next_walk_target: WalkTarget::Own,
            next_bootstrap: None,
            health_error_reported: false,
            identified: HashMap::new(),
            unroutable: HashSet::new(),
            evicting: HashMap::new(),
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
                WalkTarget::Random => WalkTarget::Own,
            };
            if self.table_size() > 0 {
                let id = match target {
                    WalkTarget::Own => self.lookup_own_key(),
                    WalkTarget::Random => self.swarm.behaviour_mut().kad.get_n_closest_peers(
                        PeerId::random(),
                        NonZeroUsize::new(RANDOM_WALK_PEERS).unwrap_or(NonZeroUsize::MIN),
                    ),
                };
                self.queries.insert(
                    id,
                    Query::Walk {
                        target,
                        started: now,
                    },
                );
            }
        }
        if self.next_bootstrap.is_some_and(|at| at <= now) {
            self.next_bootstrap = jittered(now, self.timers.bootstrap_interval);
            self.start_bootstrap(BootstrapTrigger::Periodic);
        }
    }

    fn schedule_periodic_work(&mut self, now: Instant) {
        self.walk_wait = WALK_START.min(self.timers.walk_interval);
        self.next_walk = jittered(now, self.walk_wait);
        self.next_bootstrap = jittered(now, self.timers.bootstrap_interval);
    }

    /// libp2p-kad bootstraps on its own whenever a peer joins a table of fewer than 20 peers, and
    /// it cannot be switched off. For a joiner that meant a second full bootstrap right after its
    /// initial one: measured at N = 300, 213 of them, each ~100 connections and up to 100 s on a
    /// loaded host. This node runs its own bootstraps ([`EventLoop::start_bootstrap`]), so
    /// libp2p's are finished as soon as they appear.
    fn cancel_automatic_bootstraps(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        for mut query in kad.iter_queries_mut() {
            let id = query.id();
            // A bootstrap runs as a series of steps under one id (self lookup, then one lookup
            // per bucket): finish each step as it starts.
            if matches!(query.info(), kad::QueryInfo::Bootstrap { .. }) {
                self.cancelled.insert(id);
                query.finish();
            }
        }
    }

    /// Starts a Kademlia bootstrap as the Kademlia paper describes a join: look up the node's own
    /// key, then refresh every bucket farther than the closest neighbour with a lookup of a random
    /// key in it. Full buckets are refreshed with [`REFRESH_PEERS`] peers, the others with k.
    fn start_bootstrap(&mut self, trigger: BootstrapTrigger) {
        // Nothing to bootstrap from yet, or one running: the next round will do.
        if self.bootstrapping.is_some() || self.table_size() == 0 {
            return;
        }
        let id = self.lookup_own_key();
        self.queries.insert(id, Query::BootstrapStep);
        self.bootstrapping = Some(Bootstrapping {
            trigger,
            started: Instant::now(),
            error: None,
            buckets: None,
        });
    }

    /// Looks up the node's own key (its k closest): every peer the lookup reaches learns of this
    /// node, and this node of them.
    fn lookup_own_key(&mut self) -> QueryId {
        let own = *self.swarm.local_peer_id();
        self.swarm.behaviour_mut().kad.get_closest_peers(own)
    }

    /// A bootstrap step finished: start the next one, or report the bootstrap.
    fn bootstrap_step_done(&mut self, error: Option<String>) {
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let Some(run) = &mut self.bootstrapping else {
            return;
        };
        if let Some(e) = error {
            run.error.get_or_insert(e);
        }
        if run.buckets.is_none() {
            let kad = &mut self.swarm.behaviour_mut().kad;
            let closest = kad.kbuckets().filter_map(|b| b.range().0.ilog2()).min();
            // Buckets nearer than the k-th closest peer lie wholly inside the self lookup's
            // reach: every node in them is among the k closest, and the lookup met them. Only
            // the buckets from the k-th closest outwards need refreshing.
            let mut distances: Vec<_> = kad
                .kbuckets()
                .flat_map(|b| {
                    b.iter()
                        .map(|e| local.distance(e.node.key))
                        .collect::<Vec<_>>()
                })
                .collect();
            distances.sort_unstable();
            let reach = distances
                .get(kad::K_VALUE.get() - 1)
                .and_then(|d| d.ilog2())
                .unwrap_or(0);
            run.buckets = Some(closest.map_or(Vec::new(), |c| {
                (c + 1..=255).filter(|&b| b >= reach).collect()
            }));
        }
        while let Some(bucket) = run.buckets.as_mut().and_then(Vec::pop) {
            if let Some(target) = random_peer_in_bucket(&local, bucket) {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let held = kad
                    .kbuckets()
                    .find(|b| b.range().0.ilog2() == Some(bucket))
                    .map_or(0, |b| b.num_entries());
                let peers = if held < kad::K_VALUE.get() {
                    kad::K_VALUE.get()
                } else {
                    REFRESH_PEERS
                };
                let id = kad.get_n_closest_peers(
                    target,
                    NonZeroUsize::new(peers).unwrap_or(NonZeroUsize::MIN),
                );
                self.queries.insert(id, Query::BootstrapStep);
                return;
            }
        }
        let Some(run) = self.bootstrapping.take() else {
            return;
        };
        if run.trigger == BootstrapTrigger::Initial && !self.timers.walk_interval.is_zero() {
            // The next walk is the settling self lookup (see SETTLE_WALK); the walks after it
            // go on from WALK_START as before.
            self.next_walk = jittered(Instant::now(), SETTLE_WALK);
            self.next_walk_target = WalkTarget::Own;
            self.walk_wait = WALK_START / 2;
        }
        let table_size = self.table_size();
        self.emit(Event::BootstrapCompleted {
            trigger: run.trigger,
            ok: run.error.is_none(),
            duration_ms: millis(run.started.elapsed()),
            error: run.error,
            table_size,
        });
    }

    fn dial_bootstrap(&mut self, i: usize) {
        let target = &mut self.bootstrap_targets[i];
        target.attempts += 1;
        let opts = match target.peer {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![target.addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id()
                .address(target.addr.clone())
                .build(),
        };
        let id = opts.connection_id();
        target.pending = Some(id);
        target.next_dial = None;
        if let Err(e) = self.swarm.dial(opts) {
            self.bootstrap_dial_failed(i, error_chain(&e));
        }
    }

    /// Records a failed bootstrap dial and schedules the next one with exponential backoff.
    fn bootstrap_dial_failed(&mut self, i: usize, error: String) {
        let max = self.timers.dial_backoff_max;
        let target = &mut self.bootstrap_targets[i];
        target.pending = None;
        let exp = target.attempts.saturating_sub(1).min(16);
        let backoff = DIAL_BACKOFF_START.saturating_mul(1 << exp).min(max);
        // Up to 25% jitter so joiners that failed together do not retry together.
        let backoff = backoff.mul_f64(rand::thread_rng().gen_range(0.75..=1.0));
        target.next_dial = Some(Instant::now() + backoff);
        let event = Event::DialFailed {
            peer_id: target.peer.map(|p| p.to_string()),
            addr: Some(target.addr.to_string()),
            error,
            attempt: Some(target.attempts),
            retry_in_ms: Some(millis(backoff)),
        };
        tracing::warn!(addr = %target.addr, attempt = target.attempts, "bootstrap dial failed, retrying");
        self.emit(event);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                if let Err(error) = e.result {
                    tracing::debug!(peer = %e.peer, %error, "ping failed");
                }
            }
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
                self.remotes.insert(connection_id, remote);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                cause,
            } => {
                self.remotes.remove(&connection_id);
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
                self.emit(Event::ConnectionClosed {
                    peer_id: peer_id.to_string(),
                    remote_addr: endpoint.get_remote_address().to_string(),
                    connections: num_established,
                    cause: cause.map(|e| error_chain(&e)),
                });
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
                self.emit(Event::DialFailed {
                    peer_id: peer_id.map(|p| p.to_string()),
                    addr,
                    error: error_chain(&error),
                    attempt: None,
                    retry_in_ms: None,
                });
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
                let dialable = match (kad, self.remotes.get(&connection_id)) {
                    (true, Some(remote)) => dialable_from(remote, &info.listen_addrs),
                    _ => Vec::new(),
                };
                let added = self.admit(peer_id, dialable);
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
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats: _,
                step,
            } => self.on_query_progress(id, result, step.last),
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

    fn on_query_progress(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::Bootstrap(_) if self.cancelled.contains(&id) => {
                if last {
                    self.cancelled.remove(&id);
                }
            }
            // One that slipped past `cancel_automatic_bootstraps` (its first step ran over
            // connections already open, so no swarm event came between): stop it after that step.
            QueryResult::Bootstrap(_) => {
                if !last {
                    self.cancelled.insert(id);
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
            }
            QueryResult::GetClosestPeers(result) => {
                // Every peer a lookup ends with answered it, so it is alive. Peers already
                // connected are not identified again, so without this a closer peer found by a
                // lookup over an open connection would never enter the table.
                let found = match &result {
                    Ok(ok) => &ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                for info in found.clone() {
                    self.admit(info.peer_id, info.addrs);
                }
                let (target, started) = match self.queries.remove(&id) {
                    Some(Query::Walk { target, started }) => (target, started),
                    Some(Query::BootstrapStep) => {
                        let error = result.err().map(|e| e.to_string());
                        self.bootstrap_step_done(error);
                        return;
                    }
                    None => return,
                };
                let (ok, peers_found) = match result {
                    Ok(ok) => (true, ok.peers.len()),
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => (false, peers.len()),
                };
                let table_size = self.table_size();
                self.emit(Event::WalkCompleted {
                    target,
                    ok,
                    duration_ms: millis(started.elapsed()),
                    peers_found,
                    table_size,
                });
            }
            other => tracing::debug!(?other, "unexpected query result"),
        }
    }

    /// Adds `peer` at `addrs` if [`EventLoop::make_room_for`] lets it in; returns the addresses
    /// added (none if it was turned away or has none).
    fn admit(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        if addrs.is_empty() || !self.make_room_for(&peer) {
            return Vec::new();
        }
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        addrs
    }

    /// Whether `peer` may enter the routing table: it is there already, or its bucket has a free
    /// slot, or — the one exception to "old contacts stay" — it would be among this node's k
    /// closest peers and its full bucket holds someone farther, who then makes room.
    ///
    /// Without the exception a node whose k closest peers spill into a full bucket can never
    /// hold them all: measured at N = 100, 12 of 101 nodes were stuck at 18 of their 20
    /// closest. Lookups rely on nodes knowing their closest peers; far buckets do not need it.
    fn make_room_for(&mut self, peer: &PeerId) -> bool {
        let k = kad::K_VALUE.get();
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let distance = local.distance(&KBucketKey::from(*peer));
        let kad = &mut self.swarm.behaviour_mut().kad;
        let Some(bucket) = kad.kbucket(*peer) else {
            return false; // our own id
        };
        if bucket.num_entries() < k || bucket.iter().any(|e| e.node.key.preimage() == peer) {
            return true;
        }
        let Some((farthest, farthest_distance)) = bucket
            .iter()
            .map(|e| (*e.node.key.preimage(), local.distance(e.node.key)))
            .max_by_key(|(_, d)| *d)
        else {
            return false;
        };
        if distance >= farthest_distance {
            return false;
        }
        let closer = kad
            .kbuckets()
            .flat_map(|b| {
                b.iter()
                    .map(|e| local.distance(e.node.key))
                    .collect::<Vec<_>>()
            })
            .filter(|d| *d < distance)
            .count();
        if closer >= k {
            return false;
        }
        kad.remove_peer(&farthest);
        self.evicting.insert(*peer, farthest);
        true
    }

    fn table_changed(&mut self) {
        if self.snapshot_due.is_none() {
            self.snapshot_due = Some(Instant::now() + self.timers.table_debounce);
        }
    }

    fn table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    /// Writes the full routing table, and the health file with it.
    fn snapshot(&mut self, reason: SnapshotReason) {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            let index = bucket.range().0.ilog2().unwrap_or(0);
            for entry in bucket.iter() {
                peers.push(TableEntry {
                    peer_id: entry.node.key.preimage().to_string(),
                    bucket: index,
                });
            }
        }
        self.snapshot_due = None;
        self.last_snapshot = Instant::now();
        let size = peers.len();
        self.emit(Event::RoutingTable {
            reason,
            size,
            peers,
        });
        self.write_health_with(size);
        crate::memory::release_free_heap();
    }

    fn write_health(&mut self) {
        let size = self.table_size();
        self.write_health_with(size);
    }

    fn write_health_with(&mut self, table_size: usize) {
        let Some(path) = &self.health_file else {
            return;
        };
        let state = HealthState {
            peer_id: self.swarm.local_peer_id().to_string(),
            role: self.role,
            listening: self.swarm.listeners().next().is_some(),
            table_size,
            updated: Timestamp::now(),
        };
        if let Err(e) = health::write(path, &state) {
            if !self.health_error_reported {
                tracing::error!(
                    path = %path.display(),
                    "cannot write the health file ({e}); `kad-node health` will report unhealthy. \
                     Mount a writable tmpfs there (docker run --tmpfs /tmp) or unset KAD_HEALTH_FILE"
                );
                self.health_error_reported = true;
            }
        }
    }
}

/// A random peer id whose key falls in `bucket` as seen from `local` (bucket 255 holds half of
/// all keys, bucket 255 - j one in 2^(j+1)), or `None` if none turned up in 2^17 tries.
fn random_peer_in_bucket(local: &KBucketKey<PeerId>, bucket: u32) -> Option<PeerId> {
    (0..1u32 << 17)
        .map(|_| PeerId::random())
        .find(|p| local.distance(&KBucketKey::from(*p)).ilog2() == Some(bucket))
}

/// `now + interval`, jittered by ±50%; `None` when the interval is zero (disabled).
fn jittered(now: Instant, interval: Duration) -> Option<Instant> {
    if interval.is_zero() {
        return None;
    }
    Some(now + interval.mul_f64(rand::thread_rng().gen_range(0.5..1.5)))
}

/// The `/p2p/<peer id>` of an address, if it has one.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

fn to_strings<'a>(addrs: impl IntoIterator<Item = &'a Multiaddr>) -> Vec<String> {
    addrs.into_iter().map(|a| a.to_string()).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An error and its causes on one line: `outer: inner: root`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some libp2p errors repeat their source in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
