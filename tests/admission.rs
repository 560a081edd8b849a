//! A close peer that reached the node without an address to dial back still enters its table.
//!
//! A peer that dials a node gets into the node's table through identify: the remote address of
//! an inbound connection is an ephemeral port. When that identify fails (measured in containers
//! at N = 300: connections broken under load), the peer's Kademlia requests tell the node it
//! exists but not where. The node then looks the peer's key up (10 s later, if identify did not
//! bring it in meanwhile), and the peers nearest to it answer with its address.

mod util;

use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use testbed_events::{Event, WalkTarget};
use util::{InProcessNode, loopback_swarm, test_args, wait_for};

/// A Kademlia server, with or without identify.
#[derive(NetworkBehaviour)]
struct Peer {
    kad: kad::Behaviour<MemoryStore>,
    identify: libp2p::swarm::behaviour::toggle::Toggle<identify::Behaviour>,
}

/// A listening Kademlia server on loopback, and the address it listens at.
async fn server(with_identify: bool) -> (Swarm<Peer>, Multiaddr) {
    loopback_swarm(|key| {
        let id = key.public().to_peer_id();
        let mut kad = kad::Behaviour::new(id, MemoryStore::new(id));
        kad.set_mode(Some(kad::Mode::Server));
        Peer {
            kad,
            identify: with_identify
                .then(|| {
                    identify::Behaviour::new(identify::Config::new(
                        "/ipfs/0.1.0".into(),
                        key.public(),
                    ))
                })
                .into(),
        }
    })
    .await
}

/// Runs a swarm until the test ends.
fn drive(mut swarm: Swarm<Peer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}

fn routed(node: &InProcessNode, peer: &PeerId) -> bool {
    node.events().iter().any(|e| {
        matches!(&e.event, Event::RoutingUpdated { peer_id, .. } if *peer_id == peer.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_peer_whose_identify_failed_is_looked_up_and_admitted() {
    // The node under test runs no walks or bootstraps of its own, so only the rule under test
    // can bring the peer into its table.
    let node = InProcessNode::start(test_args(&[
        "--walk-interval",
        "0",
        "--bootstrap-interval",
        "0",
    ]));
    let (node_id, node_addr) = node.started().await;
    let node_id: PeerId = node_id.parse().expect("peer id");
    let node_addr: Multiaddr = node_addr.parse().expect("multiaddr");

    // The mute peer: Kademlia without identify, so the node never learns where it listens.
    let (mut mute, mute_addr) = server(false).await;
    let mute_id = *mute.local_peer_id();

    // A neighbour that knows the mute peer's address, and that the node holds (it identifies).
    let (mut neighbour, _) = server(true).await;
    let neighbour_id = *neighbour.local_peer_id();
    neighbour
        .behaviour_mut()
        .kad
        .add_address(&mute_id, mute_addr);
    neighbour.dial(node_addr.clone()).expect("dial the node");
    let neighbour = drive(neighbour);
    wait_for(
        "the node to hold the neighbour",
        Duration::from_secs(20),
        || routed(&node, &neighbour_id).then_some(()),
        || format!("{:#?}", node.events()),
    )
    .await;

    // The mute peer speaks Kademlia to the node: the node sees it, with no address.
    mute.behaviour_mut().kad.add_address(&node_id, node_addr);
    mute.behaviour_mut().kad.get_closest_peers(PeerId::random());
    let mute = drive(mute);

    wait_for(
        "the node to hold the peer whose identify failed",
        // The lookup waits 10 s for an identify that may still come (PEER_LOOKUP_DELAY).
        Duration::from_secs(40),
        || routed(&node, &mute_id).then_some(()),
        || format!("{:#?}", node.events()),
    )
    .await;
    let events = node.stop().await;
    assert!(
        events.iter().any(|e| matches!(
            &e.event,
            Event::WalkCompleted {
                target: WalkTarget::Peer,
                ..
            }
        )),
        "the peer entered the table without the lookup of its key"
    );
    mute.abort();
    neighbour.abort();
}
