//! Healing: noticing that peers in the table are gone, taking them out, and finding the
//! replacements of a lost closest peer.
//!
//! Kademlia as libp2p ships it keeps a dead entry until its bucket needs the room, and a node
//! learns that one of its closest peers died only if it happens to contact it. Measured before
//! this (N = 50 in containers, 15 peers killed): k-closest stayed at 66.7 % for 2 minutes and
//! every node kept ~11 dead entries. The rules:
//!
//! 1. **Watch the k closest.** The connections to the node's k closest table peers stay open
//!    (`keep_alive.rs`), and every [`WATCH_INTERVAL`] the node dials any of them it is not
//!    connected to. A killed peer's sockets close with its process, so its watchers notice
//!    within a round trip. A paused or cut-off peer keeps its TCP connection up for many
//!    minutes; its ping fails (`--ping-interval` plus libp2p's 20 s ping timeout), and the node
//!    closes that connection, which rule 2 then treats as broken.
//! 2. **Probe, then remove.** When the last connection to a watched peer closes, the node
//!    dials it once, [`PROBE_DELAY`] later; so too for any table peer whose connection broke
//!    younger than `--idle-timeout`, which no idle close does (once per [`YOUNG_BREAK_GAP`]
//!    a peer). A dial
//!    to a table peer (this probe, or any dial a lookup makes) that shows the peer gone removes
//!    it from the table (`peer_removed`): refused, unreachable, or another peer at its address
//!    ([`dial_verdict`]). A dial that timed out removes nothing, since an overloaded host times
//!    dials out: the peer is dialed again [`SUSPECT_RECHECK`] later (three times, each wait
//!    longer), and a dead peer's address then answers "no route to host" once the host's
//!    neighbour entry for it expired. Measured at N = 300 while 300 nodes joined: removing on the
//!    first timeout took even the bootstrap node out of joiners' tables (82 nodes were left with
//!    empty tables); removing on a second one 30 s later had the bootstrap node take 61 live
//!    newcomers out of its table, the only one that held them yet. Only the fourth timeout in a
//!    row, more than a minute (42–63 s of waits, plus the three dials' own 10 s) after the first,
//!    removes the peer, and rule 5 dials it now and then, so a live peer removed by an
//!    overloaded host comes back ([`after_timeout`]). Before that fourth timeout removed
//!    anything, 1500 entries still pointed at dead peers 3.5 minutes after 30 % of 300 peers
//!    were killed: a peer whose dials had all timed out stayed until its bucket needed the
//!    room. The exception is a watched
//!    peer whose kept connection broke: a connection that was up and pinged closed, and the
//!    peer's address no longer answers. That is two pieces of evidence, and it is what a killed
//!    container looks like (its process closes the socket, then its address vanishes), so it is
//!    removed on the first timeout.
//!    Nothing is removed before the node's own join finished, and never its last table entry.
//!    A dial that reached a process but failed its handshake removes nothing:
//!    measured in containers, both ends of a dropped connection probing each other at the same
//!    instant meet in one TCP connection (simultaneous open from the same reused port), both
//!    act as the Noise initiator, and the handshake fails with "input error" on both sides —
//!    280 live peers were taken out that way at N = 50 before this rule.
//! 3. **Replace a lost closest peer.** Removing one of the k closest schedules a self lookup a
//!    moment later ([`RELOOKUP_DELAY`], so the losses of one churn event share one lookup): it
//!    finds the peers that are now among the k closest, and tells them of this node. Never two
//!    at once: evidence during a self lookup queues one more for its end ([`Relookup`]).
//! 4. **Sweep after churn.** A lost closest peer is evidence of churn, and other entries may be
//!    dead too: a little later ([`SWEEP_DELAY`], spread so that a network's nodes do not
//!    sweep at once), and once per [`SWEEP_GAP`] at most (a loss within the gap defers the
//!    next sweep to its end, [`sweep_time`]), the node dials every table peer it is not
//!    connected to, and rule 2 removes the dead. Any entry shown dead (refused, unreachable)
//!    counts as such a loss, so a sweep that finds dead peers is followed by another a minute
//!    later, until one finds none ([`after_removal`]): churn that goes on for minutes is swept
//!    up as it goes, not only when it next hits the node's closest peers.
//!
//! 5. **Look again when an unanswering peer is back.** A peer removed because it stopped
//!    answering may be cut off rather than dead, so it is dialed again at its last addresses
//!    ([`LOST_RECHECK`], doubling, [`LOST_PROBES`] times). A peer removed that way, or one whose
//!    dial timed out (rule 2), that is reached again is evidence that a cut healed: the node
//!    runs a self lookup ([`RELOOKUP_DELAY`] later), which finds the closest peers it lost
//!    across the cut. Without this, two halves of a partition each drop the other side from
//!    their tables, and nothing ever dials across again: the split would be permanent.
//! 6. **Another peer at a table peer's address.** Only one process listens at an address, so
//!    a peer identified at an address that a table entry of another peer also lists is that
//!    entry's container restarted with a new identity. The old entry is probed: the dial meets
//!    the new peer, fails with a wrong peer id, and rule 2 removes it. A restart closes its
//!    connections in order (SIGTERM), so rules 1–4 see nothing unless the peer was among the k
//!    closest: measured in the lossy scenario at N = 300 before this, a third of the peers
//!    restarted under 5 % loss left 146 entries of their old identities in 63 tables, the oldest
//!    635 s old at the end of the run.
//!
//! None of it runs unless the node was started with `--heal` (`KAD_HEAL`), and not until it has
//! **settled**: its join finished (joiners) and its table went [`SETTLE_QUIET`] without a
//! change (checked at that instant, and at each watch). Measured at N = 300 on 2 cores: with the
//! rules on from the start, the watch dials and kept connections of 300 joining nodes overloaded the
//! bootstrap node, identify timed out, and 71 joiners never got a peer.
//!
//! Costs: at most k kept connections (memory, and a ping each `--ping-interval`); dials only
//! when something died.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use libp2p::TransportError;
use libp2p::kad::{self, KBucketKey};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{Multiaddr, PeerId};
use rand::Rng;
use testbed_events::{Event, Role, WalkTarget};
use tokio::time::Instant;

use super::maintenance::Query;
use super::{EventLoop, jittered, table_entries};

/// A probe waits a random moment of up to this long, so that the two ends of a dropped
/// connection do not dial each other at the same instant (see rule 2).
pub(super) const PROBE_DELAY: Duration = Duration::from_millis(2000);

/// How often the node makes sure it is connected to each of its k closest peers.
pub(super) const WATCH_INTERVAL: Duration = Duration::from_secs(20);

/// From losing a closest peer to the self lookup that finds its replacement: long enough for the
/// other losses of one churn event to be noticed too.
pub(super) const RELOOKUP_DELAY: Duration = Duration::from_secs(2);

/// From the first lost closest peer to the sweep of the whole table, spread over this window.
pub(super) const SWEEP_DELAY: (Duration, Duration) =
    (Duration::from_secs(5), Duration::from_secs(30));

/// A peer whose dial timed out is dialed again this long after (then twice, three times as
/// long; jittered).
/// A killed container's address blackholes dials only while the host's neighbour entry for it
/// lives (up to ~50 s: reachable for 15–45 s, then 5 s delay and 3 probes); a dial after that
/// is refused at once ("no route to host"), so the first recheck settles most. Some addresses
/// time out for longer: with 10 s, the one entry in 6127 (N = 300) and in 455 (N = 50) that
/// outlived 2 minutes after its peer's kill had timed out four times, 18 s to 123 s after it.
pub(super) const SUSPECT_RECHECK: Duration = Duration::from_secs(7);

/// Dials again after timeouts, at most; the next timeout removes the peer (rule 2).
const SUSPECT_PROBES: u32 = 3;

/// A peer removed for not answering is dialed again this long after, then after twice, four
/// and eight times as long (7.5 min in all): long enough to outlast a typical cut, short enough
/// that a dead peer costs a handful of dials.
pub(super) const LOST_RECHECK: Duration = Duration::from_secs(30);

/// Dials of a lost peer, at most.
const LOST_PROBES: u32 = 4;

/// How long a node's table must go without a change before the liveness rules start.
pub(super) const SETTLE_QUIET: Duration = Duration::from_secs(20);

/// A peer is probed for a young connection that broke (rule 2) at most once per this long: a
/// peer whose own idle timeout is shorter than this node's closes every connection young, and
/// must not be re-dialed each time.
pub(super) const YOUNG_BREAK_GAP: Duration = Duration::from_secs(600);

/// At most one sweep of the whole table per this long: while churn goes on, a node dials its
/// whole table (~100 peers at N = 300) once a minute at most.
pub(super) const SWEEP_GAP: Duration = Duration::from_secs(60);

/// What the healing rules are waiting for.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// When to check the k closest are connected next.
    pub(super) watch_at: Option<Instant>,
    /// The self lookup that replaces lost closest peers (rules 3 and 5).
    pub(super) relookup: Relookup,
    /// A sweep of the table, due after churn.
    pub(super) sweep_at: Option<Instant>,
    pub(super) last_sweep: Option<Instant>,
    /// Probes waiting for their moment.
    pub(super) probes: Vec<(Instant, PeerId)>,
    /// Peers whose dials timed out, and how many times (rule 2).
    pub(super) suspects: HashMap<PeerId, u32>,
    /// Watched peers whose kept connection broke, until they are reached again (rule 2).
    pub(super) broken: HashSet<PeerId>,
    /// Peers removed because they stopped answering, with their addresses and how many times
    /// they were dialed since (rule 5).
    pub(super) lost: HashMap<PeerId, (Vec<Multiaddr>, u32)>,
    /// When to dial each lost peer next.
    pub(super) lost_probes: Vec<(Instant, PeerId)>,
    /// The node has settled: the rules run (see the module docs). Once set, stays set.
    pub(super) settled: bool,
    /// When the table last changed.
    pub(super) table_changed: Option<Instant>,
    /// When the table will have been quiet for [`SETTLE_QUIET`], while not settled.
    pub(super) settle_at: Option<Instant>,
    /// Peers probed because a young connection to them broke, and when (at most one such probe
    /// per peer per [`YOUNG_BREAK_GAP`]).
    young_probed: HashMap<PeerId, Instant>,
}

impl Liveness {
    /// Whether `peer` is suspected dead: a dial to it timed out, or its watched connection
    /// broke, and nothing has reached it since. Such an entry makes room for a closer peer that
    /// answers (`admission.rs`).
    pub(super) fn is_suspect(&self, peer: &PeerId) -> bool {
        self.suspects.contains_key(peer) || self.broken.contains(peer)
    }

    /// `peer` leaves the table: nothing is suspected of it any more.
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.suspects.remove(peer);
        self.broken.remove(peer);
    }

    /// A young connection to `peer` broke at `now`: whether to probe it (not if it was probed
    /// for that within [`YOUNG_BREAK_GAP`]).
    pub(super) fn young_break(&mut self, peer: PeerId, now: Instant) -> bool {
        self.young_probed
            .retain(|_, at| now.duration_since(*at) < YOUNG_BREAK_GAP);
        if self.young_probed.contains_key(&peer) {
            return false;
        }
        self.young_probed.insert(peer, now);
        true
    }

    /// The table changed at `now`: settling waits for [`SETTLE_QUIET`] from here.
    pub(super) fn table_changed_at(&mut self, now: Instant) {
        self.table_changed = Some(now);
        if !self.settled {
            self.settle_at = Some(now + SETTLE_QUIET);
        }
    }

    pub(super) fn deadlines(&self) -> impl Iterator<Item = Instant> {
        [
            self.watch_at,
            self.relookup.at,
            self.sweep_at,
            self.settle_at,
        ]
        .into_iter()
        .flatten()
        .chain(self.probes.iter().map(|(at, _)| *at))
        .chain(self.lost_probes.iter().map(|(at, _)| *at))
    }
}

/// The self lookup that finds the replacements of lost closest peers (rule 3) and the peers
/// lost across a healed cut (rule 5): asked for by each piece of evidence, started
/// [`RELOOKUP_DELAY`] after the first, and never while another self lookup runs. One asked for
/// meanwhile waits, and starts when the running one ends: it may know peers that lookup does not.
///
/// Before, each piece of evidence that came after the last lookup had started began another.
/// Measured at N = 300 after a 90 s partition healed: every node saw ~48 unanswering peers come
/// back over 150 s and started 17 self lookups, each ~60 s long on the overloaded host (5120 in
/// all, about seven at a time on each node), identify took up to 25 s, and the halves held each
/// other only 142.5 s after the heal.
#[derive(Debug, Default)]
pub(super) struct Relookup {
    /// When to start it.
    pub(super) at: Option<Instant>,
    /// Asked for while a self lookup ran: due when that one ends.
    queued: bool,
}

impl Relookup {
    /// Evidence at `now` that closest peers are missing.
    pub(super) fn request(&mut self, now: Instant) {
        if !self.queued {
            self.at.get_or_insert(now + RELOOKUP_DELAY);
        }
    }

    /// Whether to start the self lookup at `now`; `running` says one is in flight, and then it
    /// waits for that one's end ([`Relookup::lookup_ended`]).
    pub(super) fn start_now(&mut self, now: Instant, running: bool) -> bool {
        if self.at.is_none_or(|at| at > now) {
            return false;
        }
        self.at = None;
        self.queued = running;
        !running
    }

    /// A self lookup ended at `now`: the one waiting for it is due.
    pub(super) fn lookup_ended(&mut self, now: Instant) {
        if std::mem::take(&mut self.queued) {
            self.at = Some(now);
        }
    }
}

impl<W: Write> EventLoop<W> {
    /// The node's k closest table peers, nearest first.
    pub(super) fn closest_in_table(&mut self) -> Vec<PeerId> {
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let mut all = table_entries(&mut self.swarm.behaviour_mut().kad, |key, _| {
            (local.distance(key), *key.preimage())
        });
        all.sort_unstable();
        all.truncate(kad::K_VALUE.get());
        all.into_iter().map(|(_, p)| p).collect()
    }

    /// Keeps the connections to the current k closest open (rule 1). Cheap: called whenever the
    /// table changed.
    pub(super) fn update_watched(&mut self) {
        if !self.liveness.settled {
            return;
        }
        let closest: HashSet<PeerId> = self.closest_in_table().into_iter().collect();
        self.swarm.behaviour_mut().keep_alive.keep(closest);
    }

    /// The liveness timers that are due.
    pub(super) fn on_liveness_timers(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.liveness.probes)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.liveness.probes = later;
        for (_, peer) in due {
            self.probe(peer);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.liveness.lost_probes)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.liveness.lost_probes = later;
        for (_, peer) in due {
            self.probe_lost(peer, now);
        }
        if self.liveness.settle_at.is_some_and(|at| at <= now) {
            // Quiet for long enough: see whether the node settles now, not at the next watch,
            // which may be 30 s away. Churn in that gap found a node unsettled: it ignored its
            // closest peers' connections closing, and took a minute to remove them instead of
            // seconds (measured at N = 50, nodes settled 31–43 s after their last change).
            self.liveness.settle_at = None;
            self.liveness.watch_at = Some(now);
        }
        if self.liveness.watch_at.is_some_and(|at| at <= now) {
            self.liveness.watch_at = jittered(now, WATCH_INTERVAL);
            let joined =
                self.role == Role::Bootstrap || (self.joined && self.bootstrapping.is_none());
            let quiet = self
                .liveness
                .table_changed
                .is_none_or(|at| now.duration_since(at) >= SETTLE_QUIET);
            if !self.liveness.settled && self.timers.heal && joined && quiet {
                self.liveness.settled = true;
                tracing::info!("settled: watching the closest peers from now on");
            }
            if !self.liveness.settled {
                return;
            }
            self.update_watched();
            for peer in self.closest_in_table() {
                self.probe(peer);
            }
        }
        let running = self.walk_running(WalkTarget::Own);
        if self.liveness.relookup.start_now(now, running) && self.table_size() > 0 {
            let id = self.lookup_own_key();
            self.queries.insert(
                id,
                Query::Walk {
                    target: WalkTarget::Own,
                    started: now,
                    tell: false,
                },
            );
        }
        if self.liveness.sweep_at.is_some_and(|at| at <= now) {
            self.liveness.sweep_at = None;
            self.liveness.last_sweep = Some(now);
            let peers = table_entries(&mut self.swarm.behaviour_mut().kad, |key, _| {
                *key.preimage()
            });
            tracing::info!(
                peers = peers.len(),
                "sweeping the routing table after churn"
            );
            for peer in peers {
                self.probe(peer);
            }
        }
    }

    /// Dials `peer` unless connected or being dialed; a failure removes it (rule 2).
    pub(super) fn probe(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(error) = self.swarm.dial(opts) {
            tracing::debug!(%peer, %error, "probe dial not started");
        }
    }

    /// `peer` was identified listening at `addrs` (rule 6): any other table peer listed at one
    /// of them is probed, once.
    pub(super) fn on_address_claimed(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if !self.liveness.settled || addrs.is_empty() {
            return;
        }
        let earlier: Vec<PeerId> =
            table_entries(&mut self.swarm.behaviour_mut().kad, |key, listed| {
                let entry = *key.preimage();
                is_earlier_identity(entry, listed.iter(), peer, addrs).then_some(entry)
            })
            .into_iter()
            .flatten()
            .collect();
        let now = Instant::now();
        for earlier in earlier {
            if self.liveness.probes.iter().any(|(_, p)| *p == earlier) {
                continue;
            }
            tracing::info!(%earlier, %peer, "another peer listens at a table peer's address; probing it");
            let delay = PROBE_DELAY.mul_f64(rand::thread_rng().gen_range(0.1..1.0));
            self.liveness.probes.push((now + delay, earlier));
        }
    }

    /// The last connection to `peer` closed (rule 2): probe it if it was watched, since a
    /// watched connection only closes when something broke.
    ///
    /// Any other connection closes in the normal course of things, and how it closed says
    /// nothing: the end whose idle timer ran out sees a keep-alive timeout, the other end an I/O
    /// error ("connection is closed"), exactly as when a peer is killed. Probing those too kept
    /// every pair of unwatched table peers reconnecting each `--idle-timeout` forever (measured
    /// with 101 local processes: 169 connections a minute per node, idle CPU 0.44 % against
    /// 0.05 % without `--heal`).
    ///
    /// The exception is a connection that broke (an error, not an orderly close) younger than
    /// `--idle-timeout` (`young`): it was not closed for being idle, so its peer may have died.
    /// It is probed too, once per [`YOUNG_BREAK_GAP`] at most, and without the watched peer's
    /// removal on the first timeout. Measured at N = 300 before this, 90 peers killed: a node
    /// none of whose 20 closest died noticed nothing, never swept, and still held 24 dead
    /// entries 150 s after the last kill, though connections from two of those peers, opened
    /// 14–23 s before, had broken during the kills.
    pub(super) fn on_disconnected(&mut self, peer: PeerId, young: bool) {
        if !self.liveness.settled || !self.in_table(&peer) {
            return;
        }
        let now = Instant::now();
        let watched = self.swarm.behaviour().keep_alive.is_kept(&peer);
        if watched {
            self.liveness.broken.insert(peer);
        } else if young && self.liveness.young_break(peer, now) {
            tracing::debug!(%peer, "a young connection broke; probing");
        } else {
            return;
        }
        let delay = PROBE_DELAY.mul_f64(rand::thread_rng().gen_range(0.1..1.0));
        self.liveness.probes.push((now + delay, peer));
    }

    /// A ping on `connection` failed. A watched peer's connection is closed then (rule 1): a
    /// peer that is paused or cut off leaves its TCP connection up for many minutes, and only
    /// the ping notices. Closing it makes it a broken watched connection, so the probe decides.
    pub(super) fn on_ping_failed(&mut self, peer: PeerId, connection: ConnectionId) {
        if self.liveness.settled && self.swarm.behaviour().keep_alive.is_kept(&peer) {
            tracing::info!(%peer, "ping to a watched peer failed; closing the connection");
            self.swarm.close_connection(connection);
        }
    }

    /// A connection to `peer` is up: whatever it was suspected of, it is alive.
    pub(super) fn on_connected(&mut self, peer: &PeerId) {
        // A peer that did not answer is back: the network may have been cut and joined again,
        // and closest peers lost meanwhile can be found once more (rule 5).
        let was_lost = self.liveness.lost.remove(peer).is_some();
        if (self.liveness.suspects.remove(peer).is_some() || was_lost) && self.liveness.settled {
            tracing::info!(%peer, "an unanswering peer is back; looking up the closest again");
            self.liveness.relookup.request(Instant::now());
        }
        self.liveness.broken.remove(peer);
    }

    /// A dial to `peer` failed (rule 2): if that shows it gone, take it out of the table, and if
    /// it was among the k closest, look for its replacement (rule 3) and sweep the table (rule 4).
    pub(super) fn on_dial_failure(&mut self, peer: PeerId, error: &DialError, reason: String) {
        if !self.liveness.settled || self.swarm.is_connected(&peer) || !self.in_table(&peer) {
            return;
        }
        let now = Instant::now();
        let broken = self.liveness.broken.contains(&peer);
        let verdict = dial_verdict(error);
        match verdict {
            DialVerdict::Reached => return,
            // Its kept connection broke and now nothing answers: both ends of the evidence.
            DialVerdict::NoAnswer if broken => {}
            DialVerdict::NoAnswer => {
                let timeouts = self.liveness.suspects.entry(peer).or_insert(0);
                *timeouts += 1;
                let jitter = rand::thread_rng().gen_range(1.0..1.5);
                if let AfterTimeout::Recheck(wait) = after_timeout(*timeouts, jitter) {
                    self.liveness.probes.push((now + wait, peer));
                    return;
                }
                // Unanswered over more than a minute: out, and dialed now and then in case it
                // was only cut off (rule 5).
            }
            DialVerdict::Gone => {}
        }
        // A node's last peer is its way back into the network.
        if self.table_size() <= 1 {
            return;
        }
        self.liveness.forget(&peer);
        let unanswered = verdict == DialVerdict::NoAnswer;
        let closest = self.closest_in_table().contains(&peer);
        let removed = self.swarm.behaviour_mut().kad.remove_peer(&peer);
        if let Some(entry) = removed.filter(|_| unanswered) {
            // It may be cut off rather than dead: dial it now and then (rule 5).
            let addrs = entry.node.value.into_vec();
            self.liveness.lost.insert(peer, (addrs, 0));
            self.liveness.lost_probes.push((now + LOST_RECHECK, peer));
        }
        self.table_changed();
        self.emit(Event::PeerRemoved {
            peer_id: peer.to_string(),
            reason,
            closest,
        });
        let next = after_removal(closest, verdict);
        if next.relookup {
            self.update_watched();
            self.liveness.relookup.request(now);
        }
        if next.sweep && self.liveness.sweep_at.is_none() {
            let (low, high) = SWEEP_DELAY;
            let delay = rand::thread_rng().gen_range(low..high);
            self.liveness.sweep_at = Some(sweep_time(now, self.liveness.last_sweep, delay));
        }
    }

    /// Dials a peer removed for not answering (rule 5), at its last known addresses; schedules
    /// the next dial, each wait twice the last, [`LOST_PROBES`] times in all.
    fn probe_lost(&mut self, peer: PeerId, now: Instant) {
        let Some((addrs, tries)) = self.liveness.lost.get_mut(&peer) else {
            return;
        };
        *tries += 1;
        let tries = *tries;
        let addrs = addrs.clone();
        if tries < LOST_PROBES {
            let wait = LOST_RECHECK * 2u32.pow(tries);
            self.liveness.lost_probes.push((now + wait, peer));
        } else {
            self.liveness.lost.remove(&peer);
        }
        if self.swarm.is_connected(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(error) = self.swarm.dial(opts) {
            tracing::debug!(%peer, %error, "lost-peer dial not started");
        }
    }

    /// Whether a lookup of `target`'s kind is in flight: [`WalkTarget::Own`] for a self lookup
    /// (a walk, or a relookup), [`WalkTarget::Peer`] for a close peer's addresses.
    pub(super) fn walk_running(&self, target: WalkTarget) -> bool {
        self.queries
            .values()
            .any(|q| matches!(q, Query::Walk { target: t, .. } if *t == target))
    }

    /// Whether `peer` is in the routing table.
    pub(super) fn in_table(&mut self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .kbucket(*peer)
            .is_some_and(|b| b.iter().any(|e| e.node.key.preimage() == peer))
    }
}

/// When to sweep the table (rule 4) after losing a closest peer at `now`: `delay` later, but
/// not within [`SWEEP_GAP`] of the last sweep. A loss during the gap defers the sweep rather
/// than dropping it: churn is rarely one instant (killing 90 of 300 containers took two
/// minutes here), and entries that died after a sweep are dialed by nothing else. Dropping it
/// left 1577 entries pointing at dead peers 2.5 minutes after the last of those kills.
pub(super) fn sweep_time(now: Instant, last_sweep: Option<Instant>, delay: Duration) -> Instant {
    let gap_over = last_sweep.map_or(now, |at| (at + SWEEP_GAP).max(now));
    gap_over + delay
}

/// What taking a peer out of the table leads to (rules 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AfterRemoval {
    /// A self lookup, to find the lost closest peer's replacement.
    pub(super) relookup: bool,
    /// A sweep of the whole table, [`sweep_time`].
    pub(super) sweep: bool,
}

/// What removing a peer leads to, by whether it was among the k closest and what its dial said.
///
/// A lost closest peer is replaced and starts a sweep. Any other peer shown dead (`Gone`) starts
/// one too: during a sweep that is what keeps the next one coming, so a node sweeps once a
/// minute for as long as its sweeps find dead peers, and one sweep that finds none ends it.
/// Before, only a closest loss started a sweep, and entries of peers killed after a node's sweep
/// waited for its next closest loss: measured at N = 300 with 90 peers killed over 2–3 minutes,
/// 3–4 % of dead entries outlived 2 minutes (the oldest 189 s), and 83 were left 150 s after the
/// last kill. A peer removed for timeouts alone does not: an overloaded host times dials to live
/// peers out, and a sweep would add to the load that removed it.
pub(super) fn after_removal(closest: bool, verdict: DialVerdict) -> AfterRemoval {
    AfterRemoval {
        relookup: closest,
        sweep: closest || verdict == DialVerdict::Gone,
    }
}

/// What the `timeouts`-th dial timeout in a row to a table peer leads to (rule 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum AfterTimeout {
    /// Dial it again this long after.
    Recheck(Duration),
    /// Take it out of the table.
    Remove,
}

/// The recheck schedule of rule 2: [`SUSPECT_RECHECK`] times the count, stretched by `jitter`
/// (1.0 to 1.5, so that a network's nodes do not dial in step), [`SUSPECT_PROBES`] times; the
/// timeout after that removes.
pub(super) fn after_timeout(timeouts: u32, jitter: f64) -> AfterTimeout {
    if timeouts <= SUSPECT_PROBES {
        AfterTimeout::Recheck((SUSPECT_RECHECK * timeouts).mul_f64(jitter))
    } else {
        AfterTimeout::Remove
    }
}

/// What a failed dial says of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DialVerdict {
    /// Its address refused or is unreachable (the process or its host is gone), or another peer
    /// answered there (it restarted with a new identity).
    Gone,
    /// Nothing answered in time: gone, or only slow (an overloaded host).
    NoAnswer,
    /// The dial reached a process and then failed (a handshake or protocol error): nothing.
    Reached,
}

/// What a failed dial says of the peer.
///
/// The socket's error sits deep in libp2p's wrappers (I/O error, transport timeout, DNS, two
/// `Either`s), and `Either` hides its inner error from `source()`, so the chain cannot be walked
/// to it; the error's debug form names the socket error's kind, and that is what is read.
pub(super) fn dial_verdict(error: &DialError) -> DialVerdict {
    match error {
        DialError::WrongPeerId { .. } | DialError::NoAddresses => DialVerdict::Gone,
        DialError::Transport(attempts) => {
            let verdicts = attempts.iter().map(|(_, e)| match e {
                TransportError::Other(e) => {
                    let debug = format!("{e:?}");
                    let is = |kind: &std::io::ErrorKind| {
                        debug.contains(&format!("kind: {kind:?}"))
                            || debug.contains(&format!("Kind({kind:?})"))
                    };
                    if GONE.iter().any(is) {
                        DialVerdict::Gone
                    } else if e.to_string().contains(DIAL_TIMEOUT)
                        || is(&std::io::ErrorKind::TimedOut)
                    {
                        DialVerdict::NoAnswer
                    } else {
                        DialVerdict::Reached
                    }
                }
                TransportError::MultiaddrNotSupported(_) => DialVerdict::Reached,
            });
            // The strongest evidence of any address: gone, else no answer.
            verdicts
                .min_by_key(|v| *v as u8)
                .unwrap_or(DialVerdict::Reached)
        }
        _ => DialVerdict::Reached,
    }
}

/// Whether the table peer `entry`, listed at `listed`, is an earlier identity of `peer`, which
/// was identified at `addrs` (rule 6): another peer at one of the same addresses, compared
/// without a trailing `/p2p/…`.
fn is_earlier_identity<'a>(
    entry: PeerId,
    mut listed: impl Iterator<Item = &'a Multiaddr>,
    peer: PeerId,
    addrs: &[Multiaddr],
) -> bool {
    fn bare(a: &Multiaddr) -> impl Iterator<Item = libp2p::multiaddr::Protocol<'_>> {
        a.iter()
            .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
    }
    entry != peer && listed.any(|l| addrs.iter().any(|a| bare(l).eq(bare(a))))
}

/// How libp2p's transport timeout reads (measured in containers: about half the dials to a
/// killed peer end so, the others with "No route to host").
const DIAL_TIMEOUT: &str = "Timeout has been reached";

/// The socket errors that say nobody is there.
const GONE: [std::io::ErrorKind; 4] = [
    std::io::ErrorKind::ConnectionRefused,
    std::io::ErrorKind::HostUnreachable,
    std::io::ErrorKind::NetworkUnreachable,
    std::io::ErrorKind::AddrNotAvailable,
];

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::Multiaddr;

    fn transport(e: std::io::Error) -> DialError {
        let addr: Multiaddr = "/ip4/172.18.0.5/tcp/4001".parse().expect("addr");
        DialError::Transport(vec![(addr, TransportError::Other(e))])
    }

    /// How libp2p's boxed transport hands over a socket error: wrapped, kind `Other`.
    fn wrapped(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::other(std::io::Error::from(kind))
    }

    /// A restarted container's new identity claims its old address: the old entry, and only
    /// it, is an earlier identity, whether or not its address carries `/p2p/…`.
    #[test]
    fn a_peer_at_a_table_peers_address_names_that_entry_an_earlier_identity() {
        let (old, new, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let at = |ip: &str| -> Multiaddr { format!("/ip4/{ip}/tcp/4001").parse().expect("addr") };
        let with_id = at("172.18.0.5").with(libp2p::multiaddr::Protocol::P2p(old));
        let table = [
            (old, vec![with_id]),
            (other, vec![at("172.18.0.6")]),
            (new, vec![at("172.18.0.5")]),
        ];
        let earlier = |peer: PeerId, addrs: &[Multiaddr]| -> Vec<PeerId> {
            table
                .iter()
                .filter(|(entry, listed)| is_earlier_identity(*entry, listed.iter(), peer, addrs))
                .map(|(entry, _)| *entry)
                .collect()
        };
        assert_eq!(earlier(new, &[at("172.18.0.5")]), vec![old]);
        assert!(earlier(new, &[at("172.18.0.7")]).is_empty());
        // A peer identified again at its own address names nothing.
        assert!(earlier(other, &[at("172.18.0.6")]).is_empty());
        // Another port at the same IP is another process.
        assert!(earlier(new, &["/ip4/172.18.0.5/tcp/4002".parse().expect("addr")]).is_empty());
    }

    #[test]
    fn refused_and_unreachable_dials_show_the_peer_gone() {
        for kind in GONE {
            assert_eq!(dial_verdict(&transport(wrapped(kind))), DialVerdict::Gone);
            let plain = transport(std::io::Error::from(kind));
            assert_eq!(dial_verdict(&plain), DialVerdict::Gone, "{kind:?}");
        }
        // As a real refused dial arrives: the OS error inside the wrappers.
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let refused = transport(std::io::Error::other(refused));
        assert_eq!(dial_verdict(&refused), DialVerdict::Gone);
        assert_eq!(dial_verdict(&DialError::NoAddresses), DialVerdict::Gone);
    }

    /// An overloaded host times dials to live peers out, so one timeout, or a few within
    /// seconds, must not remove; a killed peer's entry must still be gone well within 2 minutes
    /// of its first timeout.
    #[test]
    fn only_the_fourth_timeout_in_a_row_removes_and_it_comes_within_two_minutes() {
        for jitter in [1.0, 1.25, 1.5] {
            let waits: Vec<Duration> = (1..=SUSPECT_PROBES)
                .map(|n| match after_timeout(n, jitter) {
                    AfterTimeout::Recheck(wait) => wait,
                    AfterTimeout::Remove => panic!("timeout {n} removed (jitter {jitter})"),
                })
                .collect();
            assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
            assert_eq!(
                after_timeout(SUSPECT_PROBES + 1, jitter),
                AfterTimeout::Remove
            );
            // From the first timeout: the waits, and the three rechecks, each of which may take
            // libp2p's 10 s connection timeout.
            let span: Duration = waits.iter().sum::<Duration>() + Duration::from_secs(30);
            assert!(
                span >= Duration::from_secs(60),
                "removed after only {span:?}"
            );
            assert!(span <= Duration::from_secs(120), "stale for {span:?}");
        }
    }

    #[test]
    fn a_loss_soon_after_a_sweep_defers_the_next_sweep_and_never_drops_it() {
        let now = Instant::now();
        let delay = Duration::from_secs(7);
        // No sweep yet, or the last one long ago: `delay` from now.
        assert_eq!(sweep_time(now, None, delay), now + delay);
        let long_ago = now.checked_sub(SWEEP_GAP * 3).expect("instant");
        assert_eq!(sweep_time(now, Some(long_ago), delay), now + delay);
        // Swept 10 s ago: not before the gap is over, but then surely.
        let lately = now.checked_sub(Duration::from_secs(10)).expect("instant");
        let at = sweep_time(now, Some(lately), delay);
        assert_eq!(at, lately + SWEEP_GAP + delay);
        assert!(at > now + delay);
    }

    #[test]
    fn evidence_during_a_self_lookup_waits_for_its_end_and_starts_one_more() {
        let t0 = Instant::now();
        let mut relookup = Relookup::default();
        relookup.request(t0);
        // Evidence a moment later shares the lookup the first asked for.
        relookup.request(t0 + Duration::from_secs(1));
        assert!(
            !relookup.start_now(t0 + Duration::from_secs(1), false),
            "not due yet"
        );
        let due = t0 + RELOOKUP_DELAY;
        assert!(
            relookup.start_now(due, false),
            "due and nothing running: start"
        );
        assert!(!relookup.start_now(due, false), "started once");
        // More evidence while that lookup runs: no second one in parallel.
        let later = due + Duration::from_secs(5);
        relookup.request(later);
        assert!(
            !relookup.start_now(later + RELOOKUP_DELAY, true),
            "one is running"
        );
        assert_eq!(relookup.at, None, "nothing due while it runs");
        relookup.request(later + Duration::from_secs(10));
        assert_eq!(relookup.at, None, "the queued one covers new evidence");
        // It ends: the queued lookup is due at once, and only one.
        let end = due + Duration::from_secs(60);
        relookup.lookup_ended(end);
        assert_eq!(relookup.at, Some(end));
        assert!(relookup.start_now(end, false));
        relookup.lookup_ended(end + Duration::from_secs(1));
        assert_eq!(relookup.at, None, "nothing was waiting");
    }

    #[test]
    fn a_peer_is_probed_for_a_young_break_once_per_gap() {
        let t0 = Instant::now();
        let mut liveness = Liveness::default();
        let peer = PeerId::random();
        assert!(liveness.young_break(peer, t0), "the first break is probed");
        assert!(
            !liveness.young_break(peer, t0 + YOUNG_BREAK_GAP / 2),
            "a peer that closes every connection young is not re-dialed each time"
        );
        assert!(
            liveness.young_break(PeerId::random(), t0),
            "other peers are apart"
        );
        assert!(
            liveness.young_break(peer, t0 + YOUNG_BREAK_GAP),
            "once the gap is over"
        );
    }

    #[test]
    fn a_dead_entry_keeps_the_sweeps_coming_and_a_timed_out_one_does_not() {
        for verdict in [DialVerdict::Gone, DialVerdict::NoAnswer] {
            let closest = after_removal(true, verdict);
            assert!(
                closest.relookup && closest.sweep,
                "{verdict:?}: {closest:?}"
            );
        }
        let dead = after_removal(false, DialVerdict::Gone);
        assert_eq!(
            dead,
            AfterRemoval {
                relookup: false,
                sweep: true
            }
        );
        let slow = after_removal(false, DialVerdict::NoAnswer);
        assert!(!slow.relookup && !slow.sweep, "{slow:?}");
    }

    #[test]
    fn a_timeout_is_no_answer_and_a_failed_handshake_is_nothing() {
        let timeout = transport(std::io::Error::other(DIAL_TIMEOUT));
        assert_eq!(dial_verdict(&timeout), DialVerdict::NoAnswer);
        let timed_out = transport(wrapped(std::io::ErrorKind::TimedOut));
        assert_eq!(dial_verdict(&timed_out), DialVerdict::NoAnswer);
        // What two nodes dialing each other at once got: a process answered.
        let noise = std::io::Error::other("Handshake failed: input error");
        let noise = transport(std::io::Error::other(noise));
        assert_eq!(dial_verdict(&noise), DialVerdict::Reached);
        assert_eq!(dial_verdict(&DialError::Aborted), DialVerdict::Reached);
    }
}
