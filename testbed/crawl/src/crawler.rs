//! One crawl round: from the seeds outward, every node's table read bucket by bucket.
//!
//! Per node: connect, ask FIND_NODE for a key in bucket `cpl = 0`, then 1, 2, … (see
//! [`crate::keys`]), and stop after the first answer that also holds a peer from a *shallower*
//! bucket than the one asked about. Answers list the asked bucket's peers first and then the
//! closest others, which come from the deeper buckets before any shallower one; a shallower
//! peer in the answer therefore means every deeper bucket was already listed whole. An empty
//! answer means an empty table. Each peer an answer names is crawled in turn.
//!
//! The crawler is a client: its request-response behaviour is outbound-only, so Identify does
//! not list `/ipfs/kad/1.0.0` and no server puts it in a table.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, tcp, yamux};
use testbed_events::{Crawled, Event, SnapshotReason, TableEntry, error_chain};

use crate::codec::{FindNodeCodec, KAD_PROTOCOL};
use crate::keys::{self, KeyHash, MAX_CPL};
use crate::proto::{Message, MessageType};

/// How a crawl runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the crawl starts: addresses with or without `/p2p/<id>`.
    pub seeds: Vec<Multiaddr>,
    /// Nodes read at once.
    pub concurrency: usize,
    /// The longest one FIND_NODE may take once the connection is up.
    pub request_timeout: Duration,
    /// The longest a node may take in all (connecting, every request, Identify).
    pub node_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seeds: Vec::new(),
            concurrency: 64,
            request_timeout: Duration::from_secs(10),
            node_timeout: Duration::from_secs(30),
        }
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub nodes: usize,
    pub failed: usize,
    pub requests: u64,
    pub duration: Duration,
}

/// The crawler's libp2p behaviour: FIND_NODE out, Identify both ways.
#[derive(NetworkBehaviour)]
#[allow(
    missing_debug_implementations,
    reason = "request_response::Behaviour implements no Debug"
)]
struct Behaviour {
    find_node: request_response::Behaviour<FindNodeCodec>,
    identify: identify::Behaviour,
}

/// The agent version the crawler announces.
pub fn agent_version() -> String {
    format!("testbed-crawl/{}", env!("CARGO_PKG_VERSION"))
}

/// Errors that stop a crawl before it starts.
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    #[error("no seed to start from: give --seed MULTIADDR (e.g. /dns4/bootstrap/tcp/4001)")]
    NoSeeds,
}

/// A crawler with its own identity, reused across rounds.
pub struct Crawler {
    swarm: Swarm<Behaviour>,
    config: Config,
}

impl std::fmt::Debug for Crawler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crawler")
            .field("peer_id", self.swarm.local_peer_id())
            .field("config", &self.config)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Asking(OutboundRequestId),
    /// Every bucket read; waiting (briefly) for Identify to name the software.
    Identifying,
    Done,
}

#[derive(Debug)]
struct Node {
    key: KeyHash,
    addrs: Vec<Multiaddr>,
    phase: Phase,
    cpl: u32,
    /// Peer → bucket index, the union of every answer.
    entries: BTreeMap<PeerId, u32>,
    requests: u32,
    /// Whether a request of this node was already sent again after its connection closed.
    retried: bool,
    complete: bool,
    reached_on: Option<Multiaddr>,
    agent: Option<String>,
    started: Option<Instant>,
    identify_deadline: Option<Instant>,
}

impl Node {
    fn new(peer: &PeerId, addrs: Vec<Multiaddr>) -> Self {
        Self {
            key: keys::hash(&peer.to_bytes()),
            addrs,
            phase: Phase::Queued,
            cpl: 0,
            entries: BTreeMap::new(),
            requests: 0,
            retried: false,
            complete: false,
            reached_on: None,
            agent: None,
            started: None,
            identify_deadline: None,
        }
    }
}

/// How long a finished node may wait for its Identify answer before its table is written
/// without the agent version.
const IDENTIFY_GRACE: Duration = Duration::from_secs(2);

/// The state of one round.
#[derive(Default)]
struct Round {
    nodes: HashMap<PeerId, Node>,
    queue: VecDeque<PeerId>,
    active: usize,
    /// Dials of seed addresses without a peer id, by connection.
    seed_dials: HashMap<ConnectionId, Multiaddr>,
    by_request: HashMap<OutboundRequestId, PeerId>,
    summary: Summary,
}

impl Crawler {
    pub fn new(config: Config) -> Result<Self, CrawlError> {
        if config.seeds.is_empty() {
            return Err(CrawlError::NoSeeds);
        }
        let swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| CrawlError::Transport(e.to_string()))?
            .with_dns()
            .map_err(|e| CrawlError::Transport(format!("DNS resolver: {e}")))?
            .with_behaviour(|key| Behaviour {
                find_node: request_response::Behaviour::with_codec(
                    FindNodeCodec,
                    [(KAD_PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new("/ipfs/0.1.0".into(), key.public())
                        .with_agent_version(agent_version()),
                ),
            })
            .map_err(|e| CrawlError::Transport(e.to_string()))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_secs(5))
                    .with_dial_concurrency_factor(std::num::NonZeroU8::MIN)
            })
            .build();
        Ok(Self { swarm, config })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Crawls once, from the seeds outward, writing one event per node read or failed and a
    /// `crawl_completed` at the end.
    pub async fn round(&mut self, mut emit: impl FnMut(Event)) -> Summary {
        let started = Instant::now();
        let mut round = Round::default();
        for seed in self.config.seeds.clone() {
            match peer_of(&seed) {
                Some(peer) => round.discover(peer, vec![seed]),
                None => {
                    // The peer id comes with the connection: remember which dial is which seed.
                    let opts = DialOpts::unknown_peer_id().address(seed.clone()).build();
                    let id = opts.connection_id();
                    match self.swarm.dial(opts) {
                        Ok(()) => {
                            round.seed_dials.insert(id, seed);
                        }
                        Err(e) => {
                            round.summary.failed += 1;
                            emit(failed(None, &[seed], &error_chain(&e)));
                        }
                    }
                }
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            self.pump(&mut round);
            if round.queue.is_empty() && round.active == 0 && round.seed_dials.is_empty() {
                break;
            }
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    self.on_event(event, &mut round, &mut emit);
                }
                _ = tick.tick() => self.on_tick(&mut round, &mut emit),
            }
        }
        round.summary.duration = started.elapsed();
        emit(Event::CrawlCompleted {
            nodes: round.summary.nodes,
            failed: round.summary.failed,
            requests: round.summary.requests,
            duration_ms: u64::try_from(round.summary.duration.as_millis()).unwrap_or(u64::MAX),
        });
        round.summary
    }

    /// Starts queued nodes while there is room.
    fn pump(&mut self, round: &mut Round) {
        while round.active < self.config.concurrency {
            let Some(peer) = round.queue.pop_front() else {
                break;
            };
            round.active += 1;
            if let Some(node) = round.nodes.get_mut(&peer) {
                node.started = Some(Instant::now());
            }
            round.ask(&mut self.swarm, peer);
        }
    }

    fn on_event(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
        round: &mut Round,
        emit: &mut impl FnMut(Event),
    ) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                if let Some(seed) = round.seed_dials.remove(&connection_id) {
                    round.discover(peer_id, vec![seed]);
                }
                if let Some(node) = round.nodes.get_mut(&peer_id) {
                    node.reached_on.get_or_insert(addr);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                if let Some(seed) = round.seed_dials.remove(&connection_id) {
                    round.summary.failed += 1;
                    emit(failed(None, &[seed], &error_chain(&error)));
                } else if let Some(peer) = peer_id {
                    // Keep the detail: request_response only says "dial failure".
                    if let Some(node) = round.nodes.get(&peer) {
                        if matches!(node.phase, Phase::Asking(_)) {
                            let addrs = node.addrs.clone();
                            round.fail(
                                peer,
                                &addrs,
                                &format!("no connection: {}", error_chain(&error)),
                                emit,
                            );
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if let Some(node) = round.nodes.get_mut(&peer_id) {
                    node.agent = Some(info.agent_version);
                    if node.phase == Phase::Identifying {
                        round.finish(peer_id, &mut self.swarm, emit);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::FindNode(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) => {
                round.by_request.remove(&request_id);
                self.on_answer(peer, request_id, response, round, emit);
            }
            SwarmEvent::Behaviour(BehaviourEvent::FindNode(
                request_response::Event::OutboundFailure {
                    peer,
                    request_id,
                    error,
                    ..
                },
            )) => {
                round.by_request.remove(&request_id);
                let Some(node) = round.nodes.get_mut(&peer) else {
                    return;
                };
                if node.phase != Phase::Asking(request_id) {
                    return;
                }
                // A connection that closed under the request (an idle close racing the send, or
                // the node shedding load) says nothing about the node: ask once more.
                if matches!(error, OutboundFailure::ConnectionClosed) && !node.retried {
                    node.retried = true;
                    round.ask(&mut self.swarm, peer);
                    return;
                }
                let why = match error {
                    OutboundFailure::UnsupportedProtocols => {
                        format!("does not speak {KAD_PROTOCOL} (not a Kademlia server)")
                    }
                    OutboundFailure::Timeout => format!(
                        "FIND_NODE for bucket {} got no answer within {:?}",
                        255 - node.cpl,
                        self.config.request_timeout
                    ),
                    OutboundFailure::DialFailure => "no connection (dial failed)".to_owned(),
                    other => format!(
                        "FIND_NODE for bucket {}: {}",
                        255 - node.cpl,
                        error_chain(&other)
                    ),
                };
                let addrs = node.addrs.clone();
                round.fail(peer, &addrs, &why, emit);
            }
            _ => {}
        }
    }

    fn on_answer(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: Message,
        round: &mut Round,
        emit: &mut impl FnMut(Event),
    ) {
        let Some(node) = round.nodes.get_mut(&peer) else {
            return;
        };
        if node.phase != Phase::Asking(request_id) {
            return;
        }
        if response.r#type != MessageType::FindNode as i32 {
            let addrs = node.addrs.clone();
            let why = format!("answered FIND_NODE with message type {}", response.r#type);
            round.fail(peer, &addrs, &why, emit);
            return;
        }
        let asked = node.cpl;
        let mut answered = Vec::new();
        let mut found = Vec::new();
        for p in &response.closer_peers {
            // An id that does not parse is the answerer's problem: skip it, and say so.
            let Ok(id) = PeerId::from_bytes(&p.id) else {
                tracing::warn!(%peer, "answer holds a peer id that does not parse; skipped");
                continue;
            };
            let key = keys::hash(&id.to_bytes());
            let Some(bucket) = keys::bucket_of(&node.key, &key) else {
                continue; // itself
            };
            answered.push(key);
            node.entries.insert(id, bucket);
            let addrs: Vec<Multiaddr> = p
                .addrs
                .iter()
                .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
                .collect();
            found.push((id, addrs));
        }
        let done = keys::answer_reaches_bottom(&node.key, asked, &answered);
        if done {
            node.complete = true;
        }
        let out_of_range = !done && asked >= MAX_CPL;
        for (id, addrs) in found {
            if id != *self.swarm.local_peer_id() {
                round.discover(id, addrs);
            }
        }
        let Some(node) = round.nodes.get_mut(&peer) else {
            return;
        };
        if done || out_of_range {
            node.phase = Phase::Identifying;
            node.identify_deadline = Some(Instant::now() + IDENTIFY_GRACE);
            if node.agent.is_some() {
                round.finish(peer, &mut self.swarm, emit);
            }
        } else {
            node.cpl += 1;
            round.ask(&mut self.swarm, peer);
        }
    }

    fn on_tick(&mut self, round: &mut Round, emit: &mut impl FnMut(Event)) {
        let now = Instant::now();
        let mut late = Vec::new();
        let mut unidentified = Vec::new();
        for (peer, node) in &round.nodes {
            match node.phase {
                Phase::Asking(_)
                    if node
                        .started
                        .is_some_and(|s| now - s > self.config.node_timeout) =>
                {
                    late.push(*peer);
                }
                Phase::Identifying if node.identify_deadline.is_some_and(|d| now >= d) => {
                    unidentified.push(*peer);
                }
                _ => {}
            }
        }
        for peer in late {
            let addrs = round.nodes[&peer].addrs.clone();
            let why = format!("not read within {:?}", self.config.node_timeout);
            round.fail(peer, &addrs, &why, emit);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for peer in unidentified {
            round.finish(peer, &mut self.swarm, emit);
        }
    }
}

impl Round {
    /// Sends the FIND_NODE for the node's current bucket.
    fn ask(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let Some(node) = self.nodes.get_mut(&peer) else {
            return;
        };
        let key = keys::preimage_for(&node.key, node.cpl).unwrap_or_default();
        let id = swarm.behaviour_mut().find_node.send_request_with_addresses(
            &peer,
            Message::find_node(key),
            node.addrs.clone(),
        );
        self.by_request.insert(id, peer);
        node.phase = Phase::Asking(id);
        node.requests += 1;
        self.summary.requests += 1;
    }

    /// Queues a peer not seen before this round; adds addresses to one already known.
    fn discover(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        match self.nodes.get_mut(&peer) {
            Some(node) => {
                for a in addrs {
                    if !node.addrs.contains(&a) {
                        node.addrs.push(a);
                    }
                }
            }
            None => {
                self.nodes.insert(peer, Node::new(&peer, addrs));
                self.queue.push_back(peer);
            }
        }
    }

    fn fail(&mut self, peer: PeerId, addrs: &[Multiaddr], why: &str, emit: &mut impl FnMut(Event)) {
        if let Some(node) = self.nodes.get_mut(&peer) {
            if node.phase == Phase::Done {
                return;
            }
            node.phase = Phase::Done;
        }
        self.active = self.active.saturating_sub(1);
        self.summary.failed += 1;
        emit(failed(Some(peer), addrs, why));
    }

    /// Writes the node's table and lets its connection go.
    fn finish(&mut self, peer: PeerId, swarm: &mut Swarm<Behaviour>, emit: &mut impl FnMut(Event)) {
        let Some(node) = self.nodes.get_mut(&peer) else {
            return;
        };
        if node.phase == Phase::Done {
            return;
        }
        node.phase = Phase::Done;
        self.active = self.active.saturating_sub(1);
        self.summary.nodes += 1;
        let peers: Vec<TableEntry> = node
            .entries
            .iter()
            .map(|(id, bucket)| TableEntry {
                peer_id: id.to_string(),
                bucket: *bucket,
            })
            .collect();
        emit(Event::RoutingTable {
            reason: SnapshotReason::Crawl,
            size: peers.len(),
            peers,
            crawled: Some(Crawled {
                peer_id: peer.to_string(),
                addr: node.reached_on.as_ref().map(ToString::to_string),
                agent_version: node.agent.clone().filter(|a| !a.is_empty()),
                requests: node.requests,
                complete: node.complete,
            }),
        });
        let _ = swarm.disconnect_peer_id(peer);
    }
}

fn failed(peer: Option<PeerId>, addrs: &[Multiaddr], why: &str) -> Event {
    Event::CrawlFailed {
        peer_id: peer.map(|p| p.to_string()),
        addrs: addrs.iter().map(ToString::to_string).collect(),
        error: why.to_owned(),
    }
}

/// The peer id at the end of a multiaddr, if it names one.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}
