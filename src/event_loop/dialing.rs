//! Dialing the `--bootstrap` addresses: one dial at a time per address, retried with exponential
//! backoff until it answers, and again if that connection closes before the node joined.

use std::io::Write;
use std::time::Duration;

use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use rand::Rng;
use testbed_events::Event;
use tokio::time::Instant;

use super::{EventLoop, error_chain, millis};

/// First wait before redialing an unanswered bootstrap address; doubles per attempt.
pub(super) const DIAL_BACKOFF_START: Duration = Duration::from_millis(250);

/// A `--bootstrap` address and how dialing it goes.
#[derive(Debug)]
pub(super) struct BootstrapTarget {
    pub(super) addr: Multiaddr,
    pub(super) peer: Option<PeerId>,
    pub(super) attempts: u32,
    /// The dial in flight, if any.
    pub(super) pending: Option<ConnectionId>,
    pub(super) next_dial: Option<Instant>,
    pub(super) reached: bool,
}

impl<W: Write> EventLoop<W> {
    pub(super) fn dial_bootstrap(&mut self, i: usize) {
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
    pub(super) fn bootstrap_dial_failed(&mut self, i: usize, error: String) {
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
}

/// The `/p2p/<peer id>` of an address, if it has one.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}
