//! The node's one `NetworkBehaviour`: Kademlia, Identify, Ping, and keeping the connections to
//! the k closest peers open.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, identify, kad, ping};

/// The Kademlia protocol every testbed node speaks (the IPFS DHT's).
pub const KAD_PROTOCOL: StreamProtocol = kad::PROTOCOL_NAME;

/// What the node runs on every connection.
#[derive(NetworkBehaviour)]
#[allow(
    missing_debug_implementations,
    reason = "kad::Behaviour implements no Debug"
)]
pub struct Behaviour {
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub keep_alive: crate::keep_alive::Behaviour,
}

/// The agent version the node announces through Identify.
pub fn agent_version() -> String {
    format!("kad-node/{}", env!("CARGO_PKG_VERSION"))
}

impl Behaviour {
    pub fn new(key: &Keypair, ping_interval: Duration) -> Self {
        let peer_id = key.public().to_peer_id();

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // The event loop runs its own jittered bootstrap schedule: libp2p's fixed 5-minute timer
        // would fire on every node of a testbed started together at the same moment.
        kad_config.set_periodic_bootstrap_interval(None);
        // Peers enter the table only through the event loop (from identify), and only while their
        // bucket has room. With automatic inserts, every connection from a peer that falls in a
        // full bucket makes Kademlia dial the bucket's least-recently-seen entry to test it, and
        // that dial does the same on the other side: measured at N = 300, a chain reaction of
        // ~350 connections a second that never settled. Classic Kademlia keeps old contacts.
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Always a server. In automatic mode a node without a confirmed external address stays a
        // client, and clients never enter anyone's routing table: in containers that is every node
        // (rust-libp2p #3877, #4074).
        kad.set_mode(Some(kad::Mode::Server));

        let identify = identify::Behaviour::new(
            identify::Config::new("/kad-testbed/1.0.0".into(), key.public())
                .with_agent_version(agent_version())
                // Kademlia keeps the addresses we need; identify's own cache would be a copy.
                .with_cache_size(0),
        );

        let ping = ping::Behaviour::new(ping::Config::new().with_interval(ping_interval));

        Self {
            kad,
            identify,
            ping,
            keep_alive: crate::keep_alive::Behaviour::default(),
        }
    }
}
