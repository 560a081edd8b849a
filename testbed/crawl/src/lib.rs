//! testbed-crawl: reads every Kademlia node's routing table over the wire, so a node is judged
//! whether or not it writes kad-testbed's events.
//!
//! Like Nebula, it asks each node one FIND_NODE per k-bucket, for a key that falls in that
//! bucket, and takes the union of the answers as the node's table. It speaks the IPFS DHT
//! protocol (`/ipfs/kad/1.0.0`) itself, so it reads rust-, go-, js- and py-libp2p nodes alike,
//! and it stays a client: nobody puts it in a table.
//!
//! # Layout
//!
//! * [`proto`]: the kad protobuf messages (vendored from rust-libp2p).
//! * [`codec`]: FIND_NODE as a `request_response` codec.
//! * [`keys`]: keys that fall into a chosen bucket of a node.
//! * [`crawler`]: one crawl round, from the seeds outward; writes `routing_table` events with
//!   `"reason":"crawl"`, `crawl_failed` and `crawl_completed` (the contract is in
//!   `testbed-events`).

pub mod codec;
pub mod crawler;
pub mod keys;
pub mod proto;

pub use crawler::{Config, CrawlError, Crawler, Summary};
/// Seeds are multiaddrs; re-exported so callers need no libp2p of their own.
pub use libp2p::Multiaddr;
