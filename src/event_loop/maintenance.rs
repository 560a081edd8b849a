//! Keeping the routing table complete: the join (Kademlia bootstrap: a self lookup, then bucket
//! refreshes), telling the peers that need this node of it ([`peers_to_tell`]), the settling self
//! lookup after it, walks, periodic bootstraps, and cancelling libp2p-kad's own automatic
//! bootstraps (this node runs its own schedule).

use std::io::Write;
use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::{self, KBucketKey, QueryId, QueryResult};
use rand::Rng;
use testbed_events::{BootstrapTrigger, Event, WalkTarget};
use tokio::time::Instant;

use super::{EventLoop, millis, table_entries};

/// First wait before a walk; doubles per walk up to `--walk-interval`. Joining is when the
/// network around a node changes most, so walks are frequent then and rare once it settled.
pub(super) const WALK_START: Duration = Duration::from_secs(60);

/// When a joiner looks up its own key a second time, after its initial bootstrap. Nodes that
/// joined at the same moment cannot find each other in their first lookups (neither is in any
/// table yet); a few seconds later both are, and this lookup finds and informs them.
pub(super) const SETTLE_WALK: Duration = Duration::from_secs(8);

/// Peers a random walk asks for. Discovery needs a few; asking for k = 20 would contact twice
/// as many nodes for little more.
pub(super) const RANDOM_WALK_PEERS: usize = 8;

/// Peers a refresh of a bucket beyond [`NEEDERS_SPAN`] asks for. libp2p's bootstrap asks for
/// k = 20 per bucket, ~25 connections each; such a bucket's part of the key space holds more than
/// k nodes, none of which can want this node among its closest, and the refresh only needs to meet
/// some of them to fill the bucket for routing. Measured at N = 300: ~63 outbound dials per node
/// over a whole run, from ~700 with k-peer refreshes.
///
/// A bucket within [`NEEDERS_SPAN`] of the k-th closest peer is refreshed with a k-peer lookup:
/// it holds the nodes that can want this one among their 20 closest while being far down its own
/// list, where its self lookup does not reach, and a k-peer lookup of a key there meets them.
/// Without this, such a node learned of the newcomer only on its own next walk.
///
/// Buckets nearer than the k-th closest peer are not refreshed at all: the self lookup already met
/// every node in them. So a join costs two k-peer refreshes (the buckets around the k-th closest)
/// and a few short ones at any N. Refreshing every sparse bucket with k peers instead was measured
/// at N = 300 in containers: 200 outbound dials per node (median), joins of 60 s (median) on a
/// host loaded to 270, and the check missed its deadline.
pub(super) const REFRESH_PEERS: usize = 3;

/// How many buckets beyond the one of the k-th closest peer can hold a peer that ranks this node
/// among *its* k closest. Such a peer P at distance d has fewer than k nodes within d of it; with
/// this node's k-th closest at distance r, the key space around P holds about k·d/r nodes within d,
/// so d stays within about 2r, and so within one bucket of r's. Counted over random networks
/// (every node, 5 networks of 300 and one of 1000): per node ~5 such peers in r's bucket,
/// 0.8-1.0 in the next one, none farther (test `the_peers_that_need_a_node_lie_within_the_span`).
///
/// This is what a join's refreshes are sized by. Sizing them by how full the bucket was in this
/// node's table instead (a bucket not yet full got a k-peer lookup) asked for k peers in the far
/// buckets, which a newcomer's table does not yet fill although the network does: measured at
/// N = 300 in containers, 116 outbound dials per join (median), 70 of them to peers ranked past
/// 80th, 40 into the farthest bucket alone.
pub(super) const NEEDERS_SPAN: u32 = 1;

/// First wait before a join whose self lookup got no answer is tried again; doubles per failed
/// try up to [`REJOIN_MAX`].
///
/// On a host too loaded to answer in time (measured at N = 1000 on 2 cores: a load of ~300 while
/// containers were still starting), the bootstrap node's answer to a joiner's self lookup timed
/// out. The join then "finished" with the bootstrap node as its only peer, and the node waited for
/// its walks (30-90 s, then minutes) to meet anyone: 517 of 1000 joins ended so, and 114 of 1001
/// nodes were still in nobody's table 9 minutes after the last start.
pub(super) const REJOIN_START: Duration = Duration::from_secs(2);

/// Longest wait between two tries of a join that got no answer.
pub(super) const REJOIN_MAX: Duration = Duration::from_secs(30);

/// When to try a join again whose self lookup no peer answered.
#[derive(Debug, Default)]
pub(super) struct Rejoin {
    pub(super) at: Option<Instant>,
    /// The wait before the next try; zero before the first failure.
    pub(super) wait: Duration,
}

impl Rejoin {
    /// Schedules the next try after a failed one, with jittered exponential backoff.
    fn failed(&mut self, now: Instant) {
        self.wait = if self.wait.is_zero() {
            REJOIN_START
        } else {
            (self.wait * 2).min(REJOIN_MAX)
        };
        self.at = jittered(now, self.wait);
    }
}

/// A query this loop started, to report when it finishes.
#[derive(Debug)]
pub(super) enum Query {
    /// A step of the running [`Bootstrapping`].
    BootstrapStep,
    Walk {
        target: WalkTarget,
        started: Instant,
        /// Tell the peers that need this node of it when the walk ends (the settling self
        /// lookup, see [`EventLoop::tell_peers_that_need_this_node`]).
        tell: bool,
    },
}

/// A Kademlia bootstrap in progress: the self lookup, then one short lookup per bucket farther
/// than the closest neighbour, one after the other.
#[derive(Debug)]
pub(super) struct Bootstrapping {
    pub(super) trigger: BootstrapTrigger,
    pub(super) started: Instant,
    pub(super) error: Option<String>,
    /// Refreshes still to run, as (bucket, peers to ask for), the next one last; `None` until
    /// the self lookup finished.
    pub(super) buckets: Option<Vec<(u32, usize)>>,
    /// Whether any peer answered the self lookup; `None` until it finished.
    pub(super) answered: Option<bool>,
}

impl<W: Write> EventLoop<W> {
    pub(super) fn schedule_periodic_work(&mut self, now: Instant) {
        self.walk_wait = WALK_START.min(self.timers.walk_interval);
        self.next_walk = jittered(now, self.walk_wait);
        self.next_bootstrap = jittered(now, self.timers.bootstrap_interval);
        self.liveness.watch_at = jittered(now, super::liveness::WATCH_INTERVAL);
    }

    /// libp2p-kad bootstraps on its own whenever a peer joins a table of fewer than 20 peers, and
    /// it cannot be switched off. For a joiner that meant a second full bootstrap right after its
    /// initial one: measured at N = 300, 213 of them, each ~100 connections and up to 100 s on a
    /// loaded host. This node runs its own bootstraps ([`EventLoop::start_bootstrap`]), so
    /// libp2p's are finished as soon as they appear.
    pub(super) fn cancel_automatic_bootstraps(&mut self) {
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
    /// key in it, sized by [`refresh_plan`].
    pub(super) fn start_bootstrap(&mut self, trigger: BootstrapTrigger) {
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
            answered: None,
        });
    }

    /// Looks up the node's own key (its k closest): every peer the lookup reaches learns of this
    /// node, and this node of them.
    pub(super) fn lookup_own_key(&mut self) -> QueryId {
        let own = *self.swarm.local_peer_id();
        self.swarm.behaviour_mut().kad.get_closest_peers(own)
    }

    /// A bootstrap step finished, answered by `answers` peers: start the next one, or report the
    /// bootstrap.
    pub(super) fn bootstrap_step_done(&mut self, error: Option<String>, answers: u32) {
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let Some(run) = &mut self.bootstrapping else {
            return;
        };
        if let Some(e) = error {
            run.error.get_or_insert(e);
        }
        if run.answered.is_none() {
            run.answered = Some(answers > 0);
            if answers == 0 {
                // Nobody answered, so the refreshes would ask the same silent peers: stop here
                // and report the bootstrap as failed (a join is then tried again).
                run.error
                    .get_or_insert_with(|| "no peer answered the self lookup".into());
                run.buckets = Some(Vec::new());
            }
        }
        if run.buckets.is_none() {
            let kad = &mut self.swarm.behaviour_mut().kad;
            let mut distances = table_entries(kad, |key, _| local.distance(key));
            distances.sort_unstable();
            let closest = distances.first().and_then(|d| d.ilog2());
            let reach = distances
                .get(kad::K_VALUE.get() - 1)
                .map(|d| d.ilog2().unwrap_or(0));
            let mut plan = refresh_plan(closest, reach, kad::K_VALUE.get());
            // Nearest first: the buckets where peers may need this node come before the far ones.
            plan.reverse();
            run.buckets = Some(plan);
        }
        while let Some((bucket, peers)) = run.buckets.as_mut().and_then(Vec::pop) {
            if let Some(target) = random_peer_in_bucket(&local, bucket) {
                let kad = &mut self.swarm.behaviour_mut().kad;
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
        let answered = run.answered == Some(true);
        if run.trigger == BootstrapTrigger::Initial && !answered {
            self.rejoin.failed(Instant::now());
        } else if run.trigger == BootstrapTrigger::Initial {
            self.rejoin = Rejoin::default();
        }
        if run.trigger == BootstrapTrigger::Initial
            && answered
            && !self.timers.walk_interval.is_zero()
        {
            // The next walk is the settling self lookup (see SETTLE_WALK); the walks after it
            // go on from WALK_START as before.
            self.next_walk = jittered(Instant::now(), SETTLE_WALK);
            self.next_walk_target = WalkTarget::Own;
            self.walk_wait = WALK_START / 2;
            self.tell_after_walk = true;
        }
        if run.trigger == BootstrapTrigger::Initial && answered {
            self.tell_peers_that_need_this_node();
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

    pub(super) fn on_query_progress(
        &mut self,
        id: QueryId,
        result: QueryResult,
        answers: u32,
        last: bool,
    ) {
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
                    Some(Query::Walk {
                        target,
                        started,
                        tell,
                    }) => {
                        if tell {
                            self.tell_peers_that_need_this_node();
                        }
                        (target, started)
                    }
                    Some(Query::BootstrapStep) => {
                        let error = result.err().map(|e| e.to_string());
                        self.bootstrap_step_done(error, answers);
                        return;
                    }
                    None => return,
                };
                if target == WalkTarget::Own {
                    self.liveness.relookup.lookup_ended(Instant::now());
                }
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
}

impl<W: Write> EventLoop<W> {
    /// Dials every table peer that may hold this node among its k closest ([`peers_to_tell`])
    /// and is not connected: the connection's identify tells it of this node. Run when the join
    /// ends and again after the settling self lookup, whose lookups found peers the join had not.
    ///
    /// A join's lookups meet the peers closest to the *newcomer*, but the peers that need it are
    /// those for which the newcomer is among *their* k closest, and the two sets differ at their
    /// edges: a peer can rank the newcomer 16th while the newcomer ranks it 25th. Measured in
    /// containers at N = 1000 all at once before this: 3 of 1001 nodes never held one of their 20
    /// closest, in each case a newcomer that it ranked 16th-19th and that ranked it 22nd-28th.
    /// Twice the newcomer had dialed it during its join and the connection closed before either
    /// side identified the other (the host's load was ~400); once neither dialed. Such a peer
    /// learned of the newcomer only on its own next walk, up to 10 minutes later.
    pub(super) fn tell_peers_that_need_this_node(&mut self) {
        let local = KBucketKey::from(*self.swarm.local_peer_id());
        let table = table_entries(&mut self.swarm.behaviour_mut().kad, |key, _| *key);
        let peers = peers_to_tell(&local, &table, kad::K_VALUE.get());
        let unconnected: Vec<PeerId> = peers
            .into_iter()
            .filter(|p| !self.swarm.is_connected(p))
            .collect();
        tracing::debug!(
            peers = unconnected.len(),
            "telling the peers that may hold this node among their closest"
        );
        for peer in unconnected {
            self.probe(peer);
        }
    }
}

/// The peers of `table` for which `local` may be among their `k` closest: fewer than `k` other
/// peers of the table are closer to them than `local` is. The table is all this node knows, and
/// every peer closer to `p` that it does not know only pushes `local` farther down `p`'s list;
/// so with the whole network in `table` this is exactly the set of peers that rank `local` among
/// their k closest, and with part of it a superset.
pub(super) fn peers_to_tell(
    local: &KBucketKey<PeerId>,
    table: &[KBucketKey<PeerId>],
    k: usize,
) -> Vec<PeerId> {
    table
        .iter()
        .filter(|p| {
            let ours = local.distance(*p);
            table
                .iter()
                .filter(|q| q != p && q.distance(*p) < ours)
                .take(k)
                .count()
                < k
        })
        .map(|p| *p.preimage())
        .collect()
}

/// The buckets a join refreshes after its self lookup, nearest first, each with the number of
/// peers its lookup asks for. `closest` is the bucket of this node's closest peer and `reach` the
/// bucket of its k-th closest (`None` when it knows fewer than k peers).
///
/// Buckets nearer than `reach` are skipped (the self lookup met every node in them); those up to
/// [`NEEDERS_SPAN`] beyond it get k-peer lookups, the farther ones [`REFRESH_PEERS`]. A node that
/// knows fewer than k peers cannot tell where its neighbourhood ends, so it asks for k everywhere.
/// Where the table is incomplete, `reach` is too far out, which errs towards more k-peer lookups.
pub(super) fn refresh_plan(
    closest: Option<u32>,
    reach: Option<u32>,
    k: usize,
) -> Vec<(u32, usize)> {
    let Some(closest) = closest else {
        return Vec::new();
    };
    (closest + 1..=255)
        .filter(|&b| reach.is_none_or(|r| b >= r))
        .map(|b| match reach {
            Some(r) if b > r + NEEDERS_SPAN => (b, REFRESH_PEERS),
            _ => (b, k),
        })
        .collect()
}

/// A random peer id whose key falls in `bucket` as seen from `local` (bucket 255 holds half of
/// all keys, bucket 255 - j one in 2^(j+1)), or `None` if none turned up in 2^17 tries.
pub(super) fn random_peer_in_bucket(local: &KBucketKey<PeerId>, bucket: u32) -> Option<PeerId> {
    (0..1u32 << 17)
        .map(|_| PeerId::random())
        .find(|p| local.distance(&KBucketKey::from(*p)).ilog2() == Some(bucket))
}

/// `now + interval`, jittered by ±50%; `None` when the interval is zero (disabled).
pub(super) fn jittered(now: Instant, interval: Duration) -> Option<Instant> {
    if interval.is_zero() {
        return None;
    }
    Some(now + interval.mul_f64(rand::thread_rng().gen_range(0.5..1.5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `p`'s distances to every other key of `everyone`, nearest first.
    fn sorted_distances(
        p: &KBucketKey<PeerId>,
        everyone: &[KBucketKey<PeerId>],
    ) -> Vec<kad::KBucketDistance> {
        let mut distances: Vec<_> = everyone
            .iter()
            .filter(|q| *q != p)
            .map(|q| q.distance(p))
            .collect();
        distances.sort_unstable();
        distances
    }

    /// Brute force: whether `local` is among `p`'s `k` closest of `everyone` (`p` left out).
    fn ranks_among_k_closest(
        p: &KBucketKey<PeerId>,
        local: &KBucketKey<PeerId>,
        everyone: &[KBucketKey<PeerId>],
        k: usize,
    ) -> bool {
        sorted_distances(p, everyone)
            .iter()
            .position(|d| *d == local.distance(p))
            .is_some_and(|rank| rank < k)
    }

    fn random_keys(n: usize) -> Vec<KBucketKey<PeerId>> {
        (0..n).map(|_| KBucketKey::from(PeerId::random())).collect()
    }

    #[test]
    fn knowing_the_whole_network_it_tells_exactly_the_peers_that_rank_it_among_their_k_closest() {
        const K: usize = 20;
        let local = KBucketKey::from(PeerId::random());
        let table = random_keys(300);
        let mut everyone = table.clone();
        everyone.push(local);
        let mut told = peers_to_tell(&local, &table, K);
        told.sort_unstable();
        let mut expected: Vec<PeerId> = table
            .iter()
            .filter(|p| ranks_among_k_closest(p, &local, &everyone, K))
            .map(|p| *p.preimage())
            .collect();
        expected.sort_unstable();
        assert!(!expected.is_empty(), "no peer ranks the node among its 20");
        assert_eq!(told, expected);
    }

    #[test]
    fn knowing_part_of_the_network_it_tells_every_table_peer_that_needs_it() {
        const K: usize = 20;
        let local = KBucketKey::from(PeerId::random());
        let network = random_keys(400);
        let mut everyone = network.clone();
        everyone.push(local);
        // A partial view, as a real table is: every third peer.
        let table: Vec<_> = network.iter().step_by(3).cloned().collect();
        let told = peers_to_tell(&local, &table, K);
        for p in &table {
            if ranks_among_k_closest(p, &local, &everyone, K) {
                assert!(
                    told.contains(p.preimage()),
                    "{p:?} needs the node, not told"
                );
            }
        }
        assert!(
            told.len() < table.len(),
            "told all {} table peers: the rule selects nothing",
            table.len()
        );
    }

    #[test]
    fn a_peer_with_k_closer_peers_in_the_table_is_not_told() {
        let local = KBucketKey::from(PeerId::random());
        let table = random_keys(50);
        // With k = 0 nobody may rank the node among their 0 closest.
        assert!(peers_to_tell(&local, &table, 0).is_empty());
        // With k larger than the table every peer may.
        assert_eq!(peers_to_tell(&local, &table, 50).len(), 50);
    }

    #[test]
    fn a_join_refreshes_its_neighbourhood_with_k_peers_and_the_far_buckets_briefly() {
        let plan = refresh_plan(Some(240), Some(250), 20);
        assert_eq!(
            plan,
            vec![
                (250, 20),
                (251, 20),
                (252, REFRESH_PEERS),
                (253, REFRESH_PEERS),
                (254, REFRESH_PEERS),
                (255, REFRESH_PEERS),
            ]
        );
        // The k-th closest in the farthest bucket: nothing lies beyond it.
        assert_eq!(refresh_plan(Some(250), Some(255), 20), vec![(255, 20)]);
        // Nothing known, nothing to refresh.
        assert!(refresh_plan(None, None, 20).is_empty());
    }

    #[test]
    fn knowing_fewer_than_k_peers_a_join_refreshes_every_farther_bucket_with_k() {
        let plan = refresh_plan(Some(252), None, 20);
        assert_eq!(plan, vec![(253, 20), (254, 20), (255, 20)]);
    }

    /// Keys of `n` fixed identities, so the network is the same in every run.
    fn seeded_keys(first: u64, n: u64) -> Vec<KBucketKey<PeerId>> {
        (first..first + n)
            .map(|seed| {
                KBucketKey::from(
                    crate::identity::keypair_from_seed(seed)
                        .public()
                        .to_peer_id(),
                )
            })
            .collect()
    }

    /// The claim [`NEEDERS_SPAN`] rests on, over whole networks: every peer that ranks a node among
    /// its k closest lies within the node's own k closest, or in a bucket the join refreshes with a
    /// k-peer lookup. With a span of 0 it fails (such peers lie one bucket beyond, ~1 a node).
    #[test]
    fn the_peers_that_need_a_node_lie_within_the_span() {
        const K: usize = 20;
        for (first, n) in [(1_000, 300), (5_000, 300), (9_000, 200)] {
            let everyone = seeded_keys(first, n);
            // Each node's distance to its k-th closest.
            let sorted: Vec<_> = everyone
                .iter()
                .map(|p| sorted_distances(p, &everyone))
                .collect();
            let kth: Vec<_> = sorted.iter().map(|d| d[K - 1]).collect();
            for (i, local) in everyone.iter().enumerate() {
                let reach = kth[i].ilog2();
                let closest = sorted[i][0].ilog2();
                let plan = refresh_plan(closest, reach, K);
                for (j, p) in everyone.iter().enumerate() {
                    let d = local.distance(p);
                    let needs = j != i && d <= kth[j];
                    let ours = d <= kth[i];
                    if needs && !ours {
                        let bucket = d.ilog2().expect("distinct keys");
                        assert!(
                            plan.contains(&(bucket, K)),
                            "network {first}: peer {j} needs node {i} from bucket {bucket}, \
                             plan {plan:?}"
                        );
                    }
                }
            }
        }
    }
}
