//! Keeps the connections to chosen peers open: the node's k closest (see
//! `event_loop/liveness.rs`), so that it notices at once when one of them dies.
//!
//! Every other connection closes after `--idle-timeout`, as before. A kept connection costs
//! memory (~100 KB) and a ping every `--ping-interval`; the node keeps at most k of them.
//! A process that is killed closes its sockets, so the kept connection closes within a round
//! trip; a paused or cut-off peer stops answering pings, and the event loop drops it.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent, ToSwarm,
};

/// Which peers' connections stay open.
#[derive(Debug, Default)]
pub struct Behaviour {
    kept: HashSet<PeerId>,
    /// Open connections per peer, to tell each handler when its peer is kept or let go.
    connections: std::collections::HashMap<PeerId, Vec<ConnectionId>>,
    pending: VecDeque<ToSwarm<Infallible, bool>>,
}

impl Behaviour {
    /// Keeps exactly `peers`' connections open from now on.
    pub fn keep(&mut self, peers: HashSet<PeerId>) {
        let changed: Vec<(PeerId, bool)> = peers
            .difference(&self.kept)
            .map(|p| (*p, true))
            .chain(self.kept.difference(&peers).map(|p| (*p, false)))
            .collect();
        for (peer, keep) in changed {
            for &id in self.connections.get(&peer).into_iter().flatten() {
                self.pending.push_back(ToSwarm::NotifyHandler {
                    peer_id: peer,
                    handler: NotifyHandler::One(id),
                    event: keep,
                });
            }
        }
        self.kept = peers;
    }

    /// Whether `peer`'s connections are kept open.
    pub fn is_kept(&self, peer: &PeerId) -> bool {
        self.kept.contains(peer)
    }

    fn handler(&mut self, id: ConnectionId, peer: PeerId) -> Handler {
        self.connections.entry(peer).or_default().push(id);
        Handler {
            keep: self.kept.contains(&peer),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(id, peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(id, peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && let Some(ids) = self.connections.get_mut(&closed.peer_id)
        {
            ids.retain(|id| *id != closed.connection_id);
            if ids.is_empty() {
                self.connections.remove(&closed.peer_id);
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: Infallible) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// Speaks no protocol; only says whether its connection stays open.
#[derive(Debug)]
pub struct Handler {
    keep: bool,
}

impl libp2p::swarm::ConnectionHandler for Handler {
    /// Whether to keep the connection open.
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => match protocol {},
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol, ..
            }) => match protocol {},
            _ => {}
        }
    }
}
