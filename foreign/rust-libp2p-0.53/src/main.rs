//! A minimal Kademlia server on rust-libp2p 0.53 that writes nothing a testbed reads: a stand-in
//! for "somebody else's node". It meets the foreign-node contract (README, "Bring your own node"):
//! listens on TCP 4001, dials the bootstrap multiaddr in `KAD_BOOTSTRAP`, runs Kademlia in server
//! mode on `/ipfs/kad/1.0.0`, and speaks Identify. Diagnostics go to stderr as plain text.

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, noise, tcp, yamux, Multiaddr, StreamProtocol};

const KAD: StreamProtocol = StreamProtocol::new("/ipfs/kad/1.0.0");

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("foreign-kad-node: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap: Option<Multiaddr> = match std::env::var("KAD_BOOTSTRAP") {
        Ok(s) if !s.is_empty() => Some(
            s.parse()
                .map_err(|e| format!("KAD_BOOTSTRAP={s:?} is not a multiaddr: {e}"))?,
        ),
        _ => None,
    };
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_dns()?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut config = kad::Config::default();
            config.set_protocol_names(vec![KAD]);
            Behaviour {
                kad: kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), config),
                identify: identify::Behaviour::new(
                    identify::Config::new("/ipfs/0.1.0".into(), key.public())
                        .with_agent_version("foreign-kad-node/rust-libp2p-0.53".to_owned()),
                ),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    swarm.listen_on("/ip4/0.0.0.0/tcp/4001".parse()?)?;
    eprintln!("foreign-kad-node: peer id {}", swarm.local_peer_id());

    let mut redial = tokio::time::interval(Duration::from_secs(2));
    let mut walk = tokio::time::interval(Duration::from_secs(30));
    let mut joined = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = redial.tick(), if !joined => {
                if let Some(addr) = &bootstrap {
                    let _ = swarm.dial(addr.clone());
                }
            }
            _ = walk.tick() => {
                let _ = swarm.behaviour_mut().kad.bootstrap();
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info })) => {
                    if info.protocols.contains(&KAD) {
                        for addr in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                        if !joined {
                            joined = true;
                            let _ = swarm.behaviour_mut().kad.bootstrap();
                            eprintln!("foreign-kad-node: joined through {peer_id}");
                        }
                    }
                }
                SwarmEvent::OutgoingConnectionError { error, .. } if !joined => {
                    eprintln!("foreign-kad-node: bootstrap dial failed ({error}); retrying");
                }
                _ => {}
            },
        }
    }
}
