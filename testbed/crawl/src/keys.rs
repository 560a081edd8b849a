//! Keys that fall into a chosen k-bucket of a node.
//!
//! A node files a peer in bucket `255 - cpl`, where `cpl` is the number of leading bits the two
//! SHA-256 kad keys share. Asking a node FIND_NODE for a key whose hash shares exactly `cpl` bits
//! with the node's own key returns that bucket's peers first (they are the closest to the key),
//! then the closest others. So one request per bucket reads the whole table.
//!
//! The key sent is a *preimage*: the node hashes it. Like go-libp2p-kbucket (and so Nebula), we
//! precompute one preimage for each 16-bit hash prefix once; for `cpl < 16` the wanted prefix is
//! the node's with bit `cpl` flipped. Deeper buckets (only full in networks of ~65 000 nodes and
//! more) are found by search.
//!
//! Each preimage is a well-formed peer id (a sha2-256 multihash), as go-libp2p-kbucket's
//! `GenRandPeerID` makes them: rust- and go-libp2p hash whatever bytes they get, but newer
//! servers (go-libp2p-kad-dht v2, nim-libp2p) parse the key as a peer id and refuse anything else.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// A point of the Kademlia key space: SHA-256 of a peer id's bytes or of a lookup key.
pub type KeyHash = [u8; 32];

/// The kad key of some bytes.
pub fn hash(bytes: &[u8]) -> KeyHash {
    Sha256::digest(bytes).into()
}

/// Leading bits `a` and `b` share, 0..=256.
pub fn common_prefix_len(a: &KeyHash, b: &KeyHash) -> u32 {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let diff = x ^ y;
        if diff != 0 {
            return u32::try_from(i).unwrap_or(u32::MAX) * 8 + diff.leading_zeros();
        }
    }
    256
}

/// The bucket index a node files a peer under (as in `routing_table` events): 255 for the
/// farthest half, `None` for the node itself.
pub fn bucket_of(node: &KeyHash, peer: &KeyHash) -> Option<u32> {
    let cpl = common_prefix_len(node, peer);
    (cpl < 256).then(|| 255 - cpl)
}

/// Whether an answer to FIND_NODE for a key at `asked` common-prefix bits from `node` shows that
/// every bucket at `asked` bits or deeper has now been listed whole.
///
/// An answer holds the closest peers to the key: first the asked bucket's (they share `asked + 1`
/// bits with the key), then the deeper buckets' (they share `asked` bits), and only then shallower
/// ones. So a shallower peer in it means all deeper peers fitted; an empty answer means an empty
/// table. A full answer of only the asked and deeper buckets may have left some out: ask deeper.
pub fn answer_reaches_bottom(node: &KeyHash, asked: u32, answered: &[KeyHash]) -> bool {
    answered.is_empty()
        || answered
            .iter()
            .any(|peer| common_prefix_len(node, peer) < asked)
}

/// Deepest bucket the crawler asks about: a search for `cpl` takes ~2^(cpl+1) hashes past the
/// table, and no network that fits one host comes near it.
pub const MAX_CPL: u32 = 24;

/// Bytes whose hash shares exactly `cpl` leading bits with `target`; `None` above [`MAX_CPL`].
pub fn preimage_for(target: &KeyHash, cpl: u32) -> Option<Vec<u8>> {
    if cpl > MAX_CPL {
        return None;
    }
    if cpl < 16 {
        let prefix = u16::from_be_bytes([target[0], target[1]]) ^ (0x8000 >> cpl);
        return Some(peer_id_bytes(table()[usize::from(prefix)]).to_vec());
    }
    // Past the table: search, starting from a counter no table entry uses.
    (1u64 << 40..).find_map(|n| {
        let bytes = peer_id_bytes(n);
        (common_prefix_len(&hash(&bytes), target) == cpl).then(|| bytes.to_vec())
    })
}

/// A sha2-256 multihash (code 0x12, 32 bytes) whose digest ends in `n`: the bytes of a valid peer
/// id, one for each counter.
fn peer_id_bytes(n: u64) -> [u8; 34] {
    let mut bytes = [0u8; 34];
    bytes[0] = 0x12;
    bytes[1] = 0x20;
    bytes[26..].copy_from_slice(&n.to_be_bytes());
    bytes
}

/// For each 16-bit prefix, a counter whose big-endian bytes hash to it. ~730 000 hashes once.
fn table() -> &'static [u64] {
    static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![u64::MAX; 1 << 16];
        let mut missing = table.len();
        let mut n = 0u64;
        while missing > 0 {
            let h = hash(&peer_id_bytes(n));
            let slot = &mut table[usize::from(u16::from_be_bytes([h[0], h[1]]))];
            if *slot == u64::MAX {
                *slot = n;
                missing -= 1;
            }
            n += 1;
        }
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preimages_land_in_the_bucket_asked_for() {
        let node = hash(b"some node");
        for cpl in 0..=18 {
            let key = preimage_for(&node, cpl).expect("within the limit");
            assert_eq!(common_prefix_len(&hash(&key), &node), cpl, "cpl {cpl}");
            assert!(
                libp2p::PeerId::from_bytes(&key).is_ok(),
                "cpl {cpl}: the key is a valid peer id"
            );
            assert_eq!(bucket_of(&node, &hash(&key)), Some(255 - cpl));
        }
        assert_eq!(preimage_for(&node, MAX_CPL + 1), None);
    }

    /// A Kademlia table as libp2p keeps one: at most `k` peers a bucket; FIND_NODE answers the
    /// `k` closest to the key's hash.
    struct Table {
        node: KeyHash,
        peers: Vec<KeyHash>,
    }

    impl Table {
        fn new(node: KeyHash, candidates: impl Iterator<Item = KeyHash>, k: usize) -> Self {
            let mut per_bucket = std::collections::HashMap::new();
            let peers = candidates
                .filter(|p| {
                    let n = per_bucket.entry(common_prefix_len(&node, p)).or_insert(0);
                    *n += 1;
                    *n <= k
                })
                .collect();
            Self { node, peers }
        }

        fn find_node(&self, key: &[u8], k: usize) -> Vec<KeyHash> {
            let target = hash(key);
            let mut sorted = self.peers.clone();
            sorted.sort_by_key(|p| {
                let mut d = [0u8; 32];
                for i in 0..32 {
                    d[i] = p[i] ^ target[i];
                }
                d
            });
            sorted.truncate(k);
            sorted
        }
    }

    /// The crawl of one node, as the crawler runs it: ask bucket by bucket until the bottom.
    fn crawl(table: &Table, k: usize) -> (std::collections::BTreeSet<KeyHash>, u32) {
        let mut seen = std::collections::BTreeSet::new();
        for cpl in 0..=MAX_CPL {
            let answer = table.find_node(&preimage_for(&table.node, cpl).expect("key"), k);
            seen.extend(answer.iter().copied());
            if answer_reaches_bottom(&table.node, cpl, &answer) {
                return (seen, cpl + 1);
            }
        }
        panic!("never reached the bottom");
    }

    #[test]
    fn bucket_by_bucket_reads_whole_tables_of_any_size() {
        for (n, k) in [
            (0, 20),
            (5, 20),
            (19, 20),
            (21, 20),
            (300, 20),
            (5000, 20),
            (2000, 3),
        ] {
            let node = hash(format!("node {n} {k}").as_bytes());
            let candidates = (0..n).map(|i: u32| hash(format!("peer {i}").as_bytes()));
            let table = Table::new(node, candidates, k);
            let (seen, requests) = crawl(&table, k);
            let want: std::collections::BTreeSet<KeyHash> = table.peers.iter().copied().collect();
            assert_eq!(seen, want, "n = {n}, k = {k}: {requests} requests");
            // One request per bucket down to the deepest, plus at most one.
            let deepest = table
                .peers
                .iter()
                .map(|p| common_prefix_len(&node, p))
                .max();
            assert!(
                requests <= deepest.map_or(1, |d| d + 2),
                "n = {n}: {requests} requests"
            );
        }
    }

    #[test]
    fn stopping_after_the_first_full_answer_would_miss_peers() {
        // The property the rule guards: one FIND_NODE is not a table once it holds more than k.
        let node = hash(b"node");
        let table = Table::new(node, (0..300u32).map(|i| hash(&i.to_be_bytes())), 20);
        let first = table.find_node(&preimage_for(&node, 0).expect("key"), 20);
        assert!(first.len() < table.peers.len());
        assert!(!answer_reaches_bottom(&node, 0, &first));
    }

    #[test]
    fn common_prefix_counts_bits() {
        let a = [0u8; 32];
        let mut b = [0u8; 32];
        assert_eq!(common_prefix_len(&a, &b), 256);
        assert_eq!(bucket_of(&a, &b), None);
        b[0] = 0x80;
        assert_eq!(common_prefix_len(&a, &b), 0);
        b[0] = 0;
        b[1] = 0x01;
        assert_eq!(common_prefix_len(&a, &b), 15);
    }
}
