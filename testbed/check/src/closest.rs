//! Each live node's k XOR-closest live peers: the one index behind the k-closest property, for
//! the verdict (the network at one instant) and the timeline (the network at every instant).
//!
//! The set changes as nodes come and go. A node joining enters the sets of the nodes it is closer
//! to than their k-th closest (one pass over the live nodes); a node leaving is replaced in the
//! sets that held it (those are recomputed). So replaying a 1000-node run costs a pass per join,
//! not a sort of everyone per snapshot.

use std::collections::HashMap;
use std::hash::Hash;

use testbed_events::KadKey;

type Distance = [u8; 32];

/// The k closest live peers of every live node.
#[derive(Debug, Clone)]
pub struct ClosestIndex<Id> {
    k: usize,
    keys: HashMap<Id, KadKey>,
    /// For each live node, its closest live peers, nearest first (at most k).
    closest: HashMap<Id, Vec<(Distance, Id)>>,
}

impl<Id: Copy + Eq + Hash + Ord> ClosestIndex<Id> {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            keys: HashMap::new(),
            closest: HashMap::new(),
        }
    }

    /// A node goes live. Returns the nodes whose k closest changed (the newcomer included).
    pub fn join(&mut self, id: Id, key: KadKey) -> Vec<Id> {
        if self.keys.contains_key(&id) {
            return Vec::new();
        }
        let mut changed = vec![id];
        for (&other, set) in &mut self.closest {
            let d = key.distance(&self.keys[&other]);
            let farthest = set.last().map(|(fd, fid)| (*fd, *fid));
            if set.len() < self.k || farthest.is_some_and(|f| (d, id) < f) {
                let at = set.partition_point(|e| *e < (d, id));
                set.insert(at, (d, id));
                set.truncate(self.k);
                changed.push(other);
            }
        }
        self.keys.insert(id, key);
        let own = self.compute(id);
        self.closest.insert(id, own);
        changed
    }

    /// A node is no longer live. Returns the nodes whose k closest changed.
    pub fn leave(&mut self, id: Id) -> Vec<Id> {
        if self.keys.remove(&id).is_none() {
            return Vec::new();
        }
        self.closest.remove(&id);
        let affected: Vec<Id> = self
            .closest
            .iter()
            .filter(|(_, set)| set.iter().any(|(_, p)| *p == id))
            .map(|(o, _)| *o)
            .collect();
        for &o in &affected {
            let set = self.compute(o);
            self.closest.insert(o, set);
        }
        affected
    }

    /// The k of "k closest".
    pub fn k(&self) -> usize {
        self.k
    }

    /// The k closest live peers of `id` (fewer when fewer are live), nearest first.
    pub fn of(&self, id: Id) -> impl Iterator<Item = Id> + '_ {
        self.closest.get(&id).into_iter().flatten().map(|(_, p)| *p)
    }

    /// How many of `id`'s k closest live peers `holds` says it holds, and how many it should.
    pub fn held(&self, id: Id, holds: impl Fn(Id) -> bool) -> (usize, usize) {
        let wanted = self.closest.get(&id).map_or(0, Vec::len);
        (self.of(id).filter(|p| holds(*p)).count(), wanted)
    }

    fn compute(&self, id: Id) -> Vec<(Distance, Id)> {
        let Some(key) = self.keys.get(&id) else {
            return Vec::new();
        };
        let mut all: Vec<(Distance, Id)> = self
            .keys
            .iter()
            .filter(|(o, _)| **o != id)
            .map(|(o, other)| (key.distance(other), *o))
            .collect();
        let want = self.k.min(all.len());
        if want > 0 && want < all.len() {
            all.select_nth_unstable(want - 1);
            all.truncate(want);
        }
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_events::kad_key;

    fn key(n: u32) -> KadKey {
        // Any base58 multihash works for the XOR metric; a real peer id keeps it honest.
        let ids = [
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
            "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4",
            "12D3KooWR6x3zK5ovnF5nMp7X8Vd2VNDixQvJsuyEFYnwQe9d7R4",
            "12D3KooWBJQLfs7vom4ik3Yt5a8ncjmu1rYYRfxtkV2ir6tJrkqa",
        ];
        kad_key(ids[n as usize]).expect("valid peer id")
    }

    /// The k closest by brute force, to hold the incremental index to.
    fn brute(live: &[u32], id: u32, k: usize) -> Vec<u32> {
        let mut others: Vec<(Distance, u32)> = live
            .iter()
            .filter(|o| **o != id)
            .map(|o| (key(id).distance(&key(*o)), *o))
            .collect();
        others.sort_unstable();
        others.into_iter().take(k).map(|(_, o)| o).collect()
    }

    #[test]
    fn joins_and_leaves_keep_every_set_equal_to_brute_force() {
        let mut index = ClosestIndex::new(2);
        let mut live = Vec::new();
        for n in 0..5 {
            index.join(n, key(n));
            live.push(n);
            for &i in &live {
                assert_eq!(
                    index.of(i).collect::<Vec<_>>(),
                    brute(&live, i, 2),
                    "join {n}"
                );
            }
        }
        for gone in [2, 0] {
            let changed = index.leave(gone);
            live.retain(|n| *n != gone);
            for &i in &live {
                assert_eq!(
                    index.of(i).collect::<Vec<_>>(),
                    brute(&live, i, 2),
                    "leave {gone}"
                );
            }
            // Exactly the nodes that held the departed one were recomputed.
            assert!(changed.iter().all(|c| live.contains(c)));
        }
        assert_eq!(index.of(2).count(), 0, "a departed node has no set");
        let (found, wanted) = index.held(1, |p| p == 3);
        assert_eq!(wanted, 2);
        assert_eq!(found, usize::from(brute(&live, 1, 2).contains(&3)));
    }
}
