//! Joining through a bootstrap node that does not answer: the join is tried again.
//!
//! On a host too loaded to answer in time, a joiner's self lookup can get no answer at all. The
//! join must not count as done then: the node would sit with the bootstrap node as its only peer
//! until its walks, minutes later (measured at N = 1000 on 2 cores).

mod util;

use std::time::Duration;

use futures::StreamExt;
use libp2p::identify;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use testbed_crawl::codec::FindNodeCodec;
use testbed_events::{BootstrapTrigger, Event};
use util::{InProcessNode, loopback_swarm, test_args, wait_for};

/// A node that identifies as a Kademlia server (it lists `/ipfs/kad/1.0.0`) and fails every
/// request on it: the crawler's codec reads no requests.
#[derive(NetworkBehaviour)]
struct Mute {
    kad: request_response::Behaviour<FindNodeCodec>,
    identify: identify::Behaviour,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_no_peer_answers_is_tried_again() {
    let (mut mute, addr) = loopback_swarm(|key| Mute {
        kad: request_response::Behaviour::with_codec(
            FindNodeCodec,
            [(libp2p::kad::PROTOCOL_NAME, ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
        identify: identify::Behaviour::new(identify::Config::new(
            "/ipfs/0.1.0".into(),
            key.public(),
        )),
    })
    .await;
    let swarm = tokio::spawn(async move {
        loop {
            mute.select_next_some().await;
        }
    });

    let node = InProcessNode::start(test_args(&["--bootstrap", &addr.to_string()]));
    // Two failed tries at least: the first, and the one after REJOIN_START (2 s, jittered).
    let tries = wait_for(
        "the join to be tried again",
        Duration::from_secs(20),
        || {
            let failed: Vec<_> = node
                .events()
                .into_iter()
                .filter_map(|e| match e.event {
                    Event::BootstrapCompleted {
                        trigger: BootstrapTrigger::Initial,
                        ok,
                        error,
                        ..
                    } => Some((ok, error)),
                    _ => None,
                })
                .collect();
            (failed.len() >= 2).then_some(failed)
        },
        || format!("{:#?}", node.events()),
    )
    .await;
    for (ok, error) in &tries {
        assert!(
            !ok,
            "a join no peer answered was reported as done: {tries:?}"
        );
        assert_eq!(
            error.as_deref(),
            Some("no peer answered the self lookup"),
            "{tries:?}"
        );
    }
    swarm.abort();
    node.stop().await;
}
