//! Who may enter a k-bucket. Peers enter only through this rule (libp2p-kad's automatic inserts
//! are off, see `behaviour.rs`): from Identify, from peers a lookup found, and from dialed
//! connections that confirmed Kademlia.
//!
//! A peer that dialed this node and whose identify failed left no address to enter with: the
//! remote address of an inbound connection is where the peer dialed from, which nothing shows
//! it listens at (libp2p's TCP port reuse often makes it so, a NAT or an ephemeral port does
//! not). If it would be among the k closest, the node looks its key up a little later
//! ([`EventLoop::find_addresses_later`]): its neighbours hold the addresses it listens at.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use libp2p::kad::{self, KBucketKey};
use libp2p::{Multiaddr, PeerId};
use testbed_events::{BootstrapTrigger, Role, WalkTarget};
use tokio::time::Instant;

use super::EventLoop;
use super::maintenance::Query;

/// How long after a close peer showed up without an address the node looks it up, if it is still
/// missing then. On an inbound connection the peer's first Kademlia request usually arrives
/// before its identify does; looking up at once started a lookup for nearly every close
/// newcomer (measured at N = 300: 7528 lookups, 25 a node, and the network converged later for
/// the load they added: ≥ 90 % of nodes complete at 150 s instead of 44 s).
pub(super) const PEER_LOOKUP_DELAY: Duration = Duration::from_secs(10);

/// A peer still missing is checked (and, if close, looked up) again this long later, doubling,
/// [`PEER_LOOKUPS`] times in all. Measured at N = 300 (load average 370): a lookup took 50–60 s
/// and could time out without reaching the peer, and with a single try 2 pairs were still
/// missing 15 minutes later, the peer's connection open and never identified all that time.
pub(super) const PEER_LOOKUP_RETRY: Duration = Duration::from_secs(30);
pub(super) const PEER_LOOKUPS: u32 = 3;

/// Close peers that showed up without an address: when to look each up, and how many lookups
/// it had.
#[derive(Debug, Default)]
pub(super) struct PeerLookups {
    due: HashMap<PeerId, (Instant, u32)>,
}

impl PeerLookups {
    /// When the next lookup is due; `None` while one runs (`running`): the next one starts when
    /// that one ends, so a due entry must not wake the loop meanwhile.
    pub(super) fn next(&self, running: bool) -> Option<Instant> {
        if running {
            return None;
        }
        self.due.values().map(|(at, _)| *at).min()
    }

    /// Moves every lookup due by `now` to `now + wait`, its count of checks kept: none starts
    /// while the node's own join runs.
    fn postpone_due(&mut self, now: Instant, wait: Duration) {
        for (at, _) in self.due.values_mut() {
            if *at <= now {
                *at = now + wait;
            }
        }
    }

    /// Takes out the earliest lookup due by `now`: the peer, and how many checks it had.
    fn pop_due(&mut self, now: Instant) -> Option<(PeerId, u32)> {
        let (peer, (_, checks)) = self
            .due
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .min_by_key(|(_, (at, _))| *at)
            .map(|(p, v)| (*p, *v))?;
        self.due.remove(&peer);
        Some((peer, checks))
    }
}

impl<W: Write> EventLoop<W> {
    /// Adds `peer` at `addrs` if [`EventLoop::make_room_for`] lets it in; returns the addresses
    /// added (none if it was turned away or has none).
    pub(super) fn admit(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
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

    /// `peer` spoke Kademlia to this node, or its identify failed, or it was turned away, and
    /// it is not in the table. It is checked [`PEER_LOOKUP_DELAY`] later, then after
    /// [`PEER_LOOKUP_RETRY`] and twice that: each time, if it is still missing and would be
    /// among the k closest, it is looked up. Checking again, and not only when it showed up,
    /// matters after churn: dead entries that count as closer turn a peer away until the node
    /// removes them (a 40-node churn test once ended with one node lacking a peer it had
    /// identified and refused that way).
    ///
    /// Measured at N = 300 in containers before this: 60 s after the last node started, 25
    /// (node, closest peer) pairs were missing, and in 15 of them the peer had connected to the
    /// node but its identify never arrived (the node logged 7 of them `unroutable_peer`). No
    /// later event gave the node an address, so the pair stayed missing until a walk happened
    /// to return it.
    pub(super) fn find_addresses_later(&mut self, peer: PeerId, now: Instant) {
        if self.peer_lookups.due.contains_key(&peer) || self.in_table(&peer) {
            return;
        }
        self.peer_lookups
            .due
            .insert(peer, (now + PEER_LOOKUP_DELAY, 0));
    }

    /// Looks up the earliest due peer that is still missing and would be among the k closest:
    /// the peers nearest to its key hold its listen addresses and answer with them, and the
    /// lookup's result goes through [`EventLoop::admit`] like any other. Due peers that are in
    /// the table by then are dropped, and those that would not be among the k closest wait for
    /// their next check.
    ///
    /// One such lookup at a time, and none while the node's own join runs (due ones wait
    /// [`PEER_LOOKUP_DELAY`] more): the join's lookups meet the close peers anyway, and these
    /// lookups are the first work to go when a host is overloaded. Measured at N = 1000 on 2
    /// cores before this bound (the run was stopped at 666 of 1001 containers, the load average
    /// near 1000): each node ran 5.6 of them, alongside its join, and a lookup took 57 s
    /// (median), so most timed out while adding to the load that delayed the answers they
    /// waited for. The N = 300 run of the same node ran none.
    pub(super) fn find_addresses_due(&mut self, now: Instant) {
        if self.walk_running(WalkTarget::Peer) {
            return;
        }
        if self.joining() {
            self.peer_lookups.postpone_due(now, PEER_LOOKUP_DELAY);
            return;
        }
        while let Some((peer, checks)) = self.peer_lookups.pop_due(now) {
            if self.in_table(&peer) {
                continue;
            }
            if checks + 1 < PEER_LOOKUPS {
                let again = now + PEER_LOOKUP_RETRY * 2u32.pow(checks);
                self.peer_lookups.due.insert(peer, (again, checks + 1));
            }
            if !self.would_be_among_k_closest(&peer) {
                continue;
            }
            let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            tracing::debug!(%peer, check = checks + 1, "looking up the addresses of a close peer");
            self.queries.insert(
                id,
                Query::Walk {
                    target: WalkTarget::Peer,
                    started: now,
                    tell: false,
                },
            );
            return;
        }
    }

    /// Whether this node's own join has yet to finish: it is a joiner that has not reached a
    /// bootstrap node yet, or whose initial bootstrap still runs, or whose join no peer answered
    /// and will be tried again.
    fn joining(&self) -> bool {
        self.role == Role::Peer
            && (!self.joined
                || self.rejoin.at.is_some()
                || self
                    .bootstrapping
                    .as_ref()
                    .is_some_and(|b| b.trigger == BootstrapTrigger::Initial))
    }

    /// Whether `peer`, not in the table, would be among this node's k closest answering peers
    /// if it were.
    fn would_be_among_k_closest(&mut self, peer: &PeerId) -> bool {
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let distance = local.distance(&KBucketKey::from(*peer));
        let liveness = &self.liveness;
        let kad = &mut self.swarm.behaviour_mut().kad;
        *peer != local.into_preimage()
            && closer_in_table(kad, &local, distance, |p| liveness.is_suspect(p))
                < kad::K_VALUE.get()
    }

    /// Whether `peer` may enter the routing table: it is there already, or its bucket has a free
    /// slot, or — the exceptions to "old contacts stay" — it would be among this node's k
    /// closest peers, and its full bucket holds an entry that stopped answering, or someone
    /// farther; that entry then makes room ([`decide`]).
    ///
    /// Without the exception a node whose k closest peers spill into a full bucket can never
    /// hold them all: measured at N = 100, 12 of 101 nodes were stuck at 18 of their 20
    /// closest. Lookups rely on nodes knowing their closest peers; far buckets do not need it.
    pub(super) fn make_room_for(&mut self, peer: &PeerId) -> bool {
        let k = kad::K_VALUE.get();
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let distance = local.distance(&KBucketKey::from(*peer));
        let liveness = &self.liveness;
        let kad = &mut self.swarm.behaviour_mut().kad;
        let Some(bucket) = kad.kbucket(*peer) else {
            return false; // our own id
        };
        let entries: Vec<Candidate<PeerId, _>> = bucket
            .iter()
            .map(|e| {
                let p = *e.node.key.preimage();
                (p, local.distance(e.node.key), liveness.is_suspect(&p))
            })
            .collect();
        match decide(k, *peer, distance, &entries, || {
            closer_in_table(kad, &local, distance, |p| liveness.is_suspect(p))
        }) {
            Admission::Admit => true,
            Admission::Refuse => false,
            Admission::Replace(old) => {
                kad.remove_peer(&old);
                self.liveness.forget(&old);
                self.evicting.insert(*peer, old);
                true
            }
        }
    }
}

/// How many peers of the table lie closer to the node (`local`) than `distance`, leaving out
/// those suspected dead (`suspect`: their dials timed out, or their watched connection broke,
/// and nothing reached them since).
fn closer_in_table(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    local: &KBucketKey<PeerId>,
    distance: kad::KBucketDistance,
    suspect: impl Fn(&PeerId) -> bool,
) -> usize {
    kad.kbuckets()
        .map(|b| {
            b.iter()
                .filter(|e| {
                    local.distance(e.node.key) < distance && !suspect(e.node.key.preimage())
                })
                .count()
        })
        .sum()
}

/// A bucket entry as [`decide`] sees it: the peer, its distance, and whether it is suspected
/// dead.
pub(super) type Candidate<P, D> = (P, D, bool);

/// What [`decide`] says about a peer that wants into a k-bucket.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission<P> {
    /// There is room, or it is there already.
    Admit,
    /// It enters in place of this entry, the bucket's farthest.
    Replace(P),
    Refuse,
}

/// The admission rule, on distances alone. `peer` at `distance` wants into a bucket that holds
/// `bucket` (each entry with its distance, and whether it is suspected dead); `closer` counts
/// the peers of the whole table that are closer than `peer` and not suspected dead (asked only
/// when it matters).
///
/// Classic Kademlia keeps old contacts: a full bucket turns newcomers away. The exception is a
/// peer that would be among this node's `k` closest peers that answer. It replaces
/// - an entry of its bucket suspected dead (the farthest such): Kademlia's own rule, an
///   unresponsive contact gives way to a new one, here kept to the k closest;
/// - else the bucket's farthest entry, if that lies farther than `peer`. That entry is then at
///   best the (k+1)-th closest answering peer: the bucket's other k − 1 entries and `peer` lie
///   nearer, and all of them answer.
///
/// Suspects do not count as closer. Counting them turned live closest peers away after churn
/// until the dead were removed, up to a minute later: measured at N = 50 with 15 peers killed,
/// every node still lacking one of its closest 40–70 s after the kills had it waiting in its full
/// far bucket, with 15–18 answering peers closer but 20–26 counting the dead.
pub(super) fn decide<P: Copy + PartialEq, D: Ord + Copy>(
    k: usize,
    peer: P,
    distance: D,
    bucket: &[Candidate<P, D>],
    closer: impl FnOnce() -> usize,
) -> Admission<P> {
    if bucket.len() < k || bucket.iter().any(|(p, _, _)| *p == peer) {
        return Admission::Admit;
    }
    let farthest = |suspects_only: bool| {
        bucket
            .iter()
            .filter(|(_, _, suspect)| *suspect || !suspects_only)
            .max_by_key(|(_, d, _)| *d)
    };
    let room = match (farthest(true), farthest(false)) {
        (Some(&(suspect, _, _)), _) => suspect,
        (None, Some(&(entry, d, _))) if distance < d => entry,
        _ => return Admission::Refuse,
    };
    if closer() >= k {
        return Admission::Refuse;
    }
    Admission::Replace(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full bucket of `k` entries at distances 10, 20, …, none suspected.
    fn full(k: usize) -> Vec<Candidate<u32, u32>> {
        (1..=k as u32).map(|i| (i, i * 10, false)).collect()
    }

    #[test]
    fn a_bucket_with_room_admits_anyone() {
        let bucket = vec![(1, 10, false), (2, 20, true)];
        assert_eq!(decide(3, 9, 500, &bucket, || 99), Admission::Admit);
    }

    #[test]
    fn a_peer_already_there_is_admitted_even_into_a_full_bucket() {
        assert_eq!(decide(3, 2, 20, &full(3), || 99), Admission::Admit);
    }

    #[test]
    fn a_full_bucket_refuses_a_peer_farther_than_all_its_entries() {
        assert_eq!(decide(3, 9, 31, &full(3), || 0), Admission::Refuse);
        assert_eq!(
            decide(3, 9, 30, &full(3), || 0),
            Admission::Refuse,
            "a tie keeps the old entry"
        );
    }

    #[test]
    fn a_peer_among_the_k_closest_replaces_the_bucket_farthest() {
        // Closer than entry 3 (distance 30), and only 2 < k peers in the table are closer.
        assert_eq!(decide(3, 9, 25, &full(3), || 2), Admission::Replace(3));
    }

    #[test]
    fn a_peer_closer_than_the_bucket_farthest_but_not_among_the_k_closest_is_refused() {
        assert_eq!(decide(3, 9, 25, &full(3), || 3), Admission::Refuse);
    }

    #[test]
    fn the_table_is_only_counted_when_it_matters() {
        let counted = std::cell::Cell::new(false);
        let count = || {
            counted.set(true);
            0
        };
        assert_eq!(decide(3, 9, 5, &[(1, 10, false)], count), Admission::Admit);
        assert!(!counted.get());
    }

    #[test]
    fn a_suspect_gives_way_to_a_peer_among_the_k_closest_that_answer() {
        // Entry 2 stopped answering; the candidate lies beyond the whole bucket, and 2 answering
        // peers lie closer: it is among the 3 closest that answer.
        let mut bucket = full(3);
        bucket[1].2 = true;
        assert_eq!(decide(3, 9, 31, &bucket, || 2), Admission::Replace(2));
        // The farthest suspect goes, not the farthest entry.
        bucket[0].2 = true;
        assert_eq!(decide(3, 9, 25, &bucket, || 2), Admission::Replace(2));
    }

    #[test]
    fn a_suspect_stays_for_a_peer_that_is_not_among_the_k_closest_that_answer() {
        let mut bucket = full(3);
        bucket[1].2 = true;
        assert_eq!(decide(3, 9, 31, &bucket, || 3), Admission::Refuse);
    }

    #[test]
    fn peer_lookups_start_earliest_first_and_wait_out_a_join() {
        let t0 = Instant::now();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut lookups = PeerLookups::default();
        lookups.due.insert(a, (t0 + Duration::from_secs(3), 0));
        lookups.due.insert(b, (t0 + Duration::from_secs(1), 2));
        lookups.due.insert(c, (t0 + Duration::from_secs(60), 1));
        let now = t0 + Duration::from_secs(5);
        // While the join runs, what is due moves on; what is not due yet stays as it was.
        lookups.postpone_due(now, PEER_LOOKUP_DELAY);
        assert_eq!(lookups.pop_due(now), None);
        assert_eq!(lookups.next(false), Some(now + PEER_LOOKUP_DELAY));
        assert_eq!(lookups.due[&c], (t0 + Duration::from_secs(60), 1));
        // Counts are kept, and the earliest due goes first.
        lookups.due.insert(b, (t0 + Duration::from_secs(1), 2));
        assert_eq!(lookups.pop_due(now), Some((b, 2)));
        assert_eq!(lookups.next(false), Some(now + PEER_LOOKUP_DELAY));
        // While a lookup runs nothing wakes the loop, due or not.
        assert_eq!(lookups.next(true), None);
        let later = now + PEER_LOOKUP_DELAY;
        assert_eq!(lookups.pop_due(later), Some((a, 0)));
        assert_eq!(lookups.pop_due(later), None, "c is not due yet");
    }
}
