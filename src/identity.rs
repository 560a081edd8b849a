//! The node's identity: random, or derived from `--key-seed` so the bootstrap has a known PeerId.

use libp2p::identity::{Keypair, ed25519};

/// An Ed25519 keypair whose secret is the seed's little-endian bytes followed by zeros.
///
/// Not secret at all, by design: it only makes a PeerId predictable (the same habit as
/// libp2p/test-plans). A golden test pins seed → PeerId so it never drifts.
pub fn keypair_from_seed(seed: u64) -> Keypair {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let secret = ed25519::SecretKey::try_from_bytes(&mut bytes)
        .expect("any 32 bytes are a valid ed25519 secret key");
    ed25519::Keypair::from(secret).into()
}

/// The node's keypair: from the seed if one is given, random otherwise.
pub fn keypair(seed: Option<u64>) -> Keypair {
    match seed {
        Some(seed) => keypair_from_seed(seed),
        None => Keypair::generate_ed25519(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_zero_always_gives_the_same_peer_id() {
        // Golden value: docker-compose.yml and the README name this PeerId for the bootstrap node.
        // If this changes, every deployment that pins the bootstrap's PeerId breaks.
        assert_eq!(
            keypair_from_seed(0).public().to_peer_id().to_string(),
            GOLDEN_SEED_0
        );
        assert_eq!(
            keypair_from_seed(1).public().to_peer_id().to_string(),
            GOLDEN_SEED_1
        );
    }

    #[test]
    fn unseeded_identities_differ() {
        assert_ne!(keypair(None).public(), keypair(None).public());
    }

    const GOLDEN_SEED_0: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    const GOLDEN_SEED_1: &str = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X";
}
