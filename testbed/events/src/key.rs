//! The Kademlia XOR metric over peer ids, without libp2p.
//!
//! libp2p's Kademlia places a peer at the SHA-256 of its peer id's multihash bytes (the bytes that
//! the base58 text encodes). Two keys' distance is their XOR read as a 256-bit big-endian integer.
//! The node crate pins this against libp2p's own `kbucket::Key` in a test, so the checker and the
//! node can never disagree about who is close to whom.

use std::cmp::Ordering;
use std::fmt;

use sha2::{Digest, Sha256};

/// A position in the Kademlia key space.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KadKey([u8; 32]);

impl fmt::Debug for KadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KadKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Why a string is not a peer id.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer id {peer_id:?}: {reason}")]
pub struct PeerIdError {
    peer_id: String,
    reason: String,
}

/// The Kademlia key of a base58 peer id.
pub fn kad_key(peer_id: &str) -> Result<KadKey, PeerIdError> {
    let bytes = bs58::decode(peer_id).into_vec().map_err(|e| PeerIdError {
        peer_id: peer_id.to_owned(),
        reason: e.to_string(),
    })?;
    // A peer id is a multihash: at least a code byte, a length byte and a digest.
    if bytes.len() < 3 {
        return Err(PeerIdError {
            peer_id: peer_id.to_owned(),
            reason: "too short to be a multihash".into(),
        });
    }
    Ok(KadKey(Sha256::digest(&bytes).into()))
}

impl KadKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The XOR distance to `other`, as big-endian bytes (compare them to order distances).
    pub fn distance(&self, other: &KadKey) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        d
    }

    /// Orders `a` and `b` by their distance to `self`.
    pub fn cmp_distance(&self, a: &KadKey, b: &KadKey) -> Ordering {
        self.distance(a).cmp(&self.distance(b))
    }

    /// The k-bucket index of `other` as seen from `self`: `floor(log2(distance))`, 0..=255, or
    /// `None` for the same key.
    pub fn bucket(&self, other: &KadKey) -> Option<u32> {
        let d = self.distance(other);
        let leading_zeros = d
            .iter()
            .position(|b| *b != 0)
            .map(|i| i as u32 * 8 + d[i].leading_zeros())?;
        Some(255 - leading_zeros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4";
    const B: &str = "12D3KooWNryLSn5EuR9KvCFbF65uSbL3YhFExEWDd3vY4TMnEbzu";

    #[test]
    fn a_key_is_at_distance_zero_from_itself() {
        let a = kad_key(A).expect("valid");
        assert_eq!(a.bucket(&a), None);
        assert_eq!(a.distance(&a), [0; 32]);
    }

    #[test]
    fn distance_is_symmetric_and_bucket_matches_the_highest_bit() {
        let a = kad_key(A).expect("valid");
        let b = kad_key(B).expect("valid");
        assert_eq!(a.distance(&b), b.distance(&a));
        let d = a.distance(&b);
        let bucket = a.bucket(&b).expect("distinct");
        let first = d.iter().position(|x| *x != 0).expect("nonzero");
        assert_eq!(
            bucket,
            (31 - first as u32) * 8 + (7 - d[first].leading_zeros())
        );
    }

    #[test]
    fn garbage_is_not_a_peer_id() {
        assert!(kad_key("not-base58-0OIl").is_err());
        assert!(kad_key("").is_err());
    }
}
