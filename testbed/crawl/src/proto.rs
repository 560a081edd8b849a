//! The Kademlia wire messages the crawler needs, vendored from rust-libp2p's `dht.proto`
//! (libp2p-kad 0.49, `src/generated/dht.proto`, MIT): only `Message` with the fields FIND_NODE
//! uses and `Peer`. Fields left out (records, providers) are skipped when decoding, as protobuf
//! allows, so a node that fills them still parses.
//!
//! A FIND_NODE exchange, as go-, rust- and js-libp2p speak it on `/ipfs/kad/1.0.0`: the request is
//! `Message { type: FIND_NODE, key }`, the answer `Message { type: FIND_NODE, closer_peers }`, each
//! framed by an unsigned-varint length (see [`crate::codec`]).

/// One Kademlia message (`dht.proto`'s `Message`, the fields FIND_NODE uses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    /// [`MessageType`] as an integer.
    #[prost(enumeration = "MessageType", tag = "1")]
    pub r#type: i32,
    /// Not used by anyone; kept so the tag is not reused.
    #[prost(int32, tag = "10")]
    pub cluster_level_raw: i32,
    /// The key looked up: any bytes; the answerer hashes them with SHA-256 to a point of the key
    /// space.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// The answerer's peers closest to the key.
    #[prost(message, repeated, tag = "8")]
    pub closer_peers: Vec<Peer>,
}

/// A peer in an answer.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Peer {
    /// The peer id's bytes (a multihash).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Its multiaddrs, in binary form.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
    /// Whether the answerer is connected to it (`ConnectionType`); informational.
    #[prost(int32, tag = "3")]
    pub connection: i32,
}

/// `dht.proto`'s `MessageType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MessageType {
    PutValue = 0,
    GetValue = 1,
    AddProvider = 2,
    GetProviders = 3,
    FindNode = 4,
    Ping = 5,
}

impl Message {
    /// A FIND_NODE request for `key`.
    pub fn find_node(key: Vec<u8>) -> Self {
        Self {
            r#type: MessageType::FindNode as i32,
            cluster_level_raw: 0,
            key,
            closer_peers: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn a_find_node_request_encodes_as_the_wire_format_says() {
        let bytes = Message::find_node(vec![0xAB, 0xCD]).encode_to_vec();
        // field 1 (varint) = 4, field 2 (bytes) = [AB CD]; zero fields are not written.
        assert_eq!(bytes, vec![0x08, 0x04, 0x12, 0x02, 0xAB, 0xCD]);
    }

    #[test]
    fn unknown_fields_in_an_answer_are_skipped() {
        let peer = Peer {
            id: vec![1, 2, 3],
            addrs: vec![vec![4]],
            connection: 1,
        };
        let mut bytes = Message {
            r#type: MessageType::FindNode as i32,
            cluster_level_raw: 0,
            key: vec![],
            closer_peers: vec![peer.clone()],
        }
        .encode_to_vec();
        // A provider_peers entry (field 9), which this struct does not declare.
        bytes.extend([0x4A, 0x02, 0x0A, 0x00]);
        let decoded = Message::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.closer_peers, vec![peer]);
    }
}
