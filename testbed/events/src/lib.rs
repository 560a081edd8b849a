//! The kad-testbed log contract: what a node writes on stdout and what the checker reads.
//!
//! This crate is the specification. It has no libp2p dependency on purpose: anyone who wants to put
//! another libp2p implementation into the testbed implements this format and nothing else.
//!
//! # Format
//!
//! A node writes **JSON Lines** on stdout: one JSON object per line, UTF-8, `\n`-terminated, nothing
//! else on stdout (diagnostics go to stderr). Every object is an [`Envelope`]:
//!
//! | field  | type    | meaning                                                              |
//! |--------|---------|----------------------------------------------------------------------|
//! | `v`    | integer | schema version, [`SCHEMA_VERSION`] for this crate                    |
//! | `ts`   | string  | wall-clock time the event was written, RFC 3339 UTC with milliseconds |
//! | `type` | string  | the event type, `snake_case`; the remaining fields depend on it      |
//!
//! The event types and their fields are the variants of [`Event`]. Nested values are real JSON
//! arrays and objects. Peer ids are base58 strings, addresses are multiaddr strings.
//!
//! ```text
//! {"v":1,"ts":"2026-11-25T10:00:00.012Z","type":"node_started","peer_id":"12D3KooW…","role":"peer","listen_addrs":["/ip4/172.18.0.3/tcp/4001"],"bootstrap":["/dns4/bootstrap/tcp/4001"],"agent_version":"kad-node/0.1.0","kad_protocol":"/ipfs/kad/1.0.0","heartbeat_ms":30000}
//! {"v":1,"ts":"2026-11-25T10:00:00.020Z","type":"dial_failed","peer_id":null,"addr":"/dns4/bootstrap/tcp/4001","error":"…","attempt":1,"retry_in_ms":200}
//! {"v":1,"ts":"2026-11-25T10:00:00.240Z","type":"connection_established","peer_id":"12D3KooW…","remote_addr":"/ip4/172.18.0.2/tcp/4001","direction":"dialer","connections":1}
//! {"v":1,"ts":"2026-11-25T10:00:00.245Z","type":"identified","peer_id":"12D3KooW…","agent_version":"kad-node/0.1.0","kad":true,"listen_addrs":["/ip4/127.0.0.1/tcp/4001","/ip4/172.18.0.2/tcp/4001"],"added_addrs":["/ip4/172.18.0.2/tcp/4001"]}
//! {"v":1,"ts":"2026-11-25T10:00:00.245Z","type":"routing_updated","peer_id":"12D3KooW…","is_new_peer":true,"bucket":255,"addresses":["/ip4/172.18.0.2/tcp/4001"],"evicted":null}
//! {"v":1,"ts":"2026-11-25T10:00:01.250Z","type":"routing_table","reason":"changed","size":1,"peers":[{"peer_id":"12D3KooW…","bucket":255}]}
//! {"v":1,"ts":"2026-11-25T10:00:01.300Z","type":"bootstrap_completed","trigger":"initial","ok":true,"duration_ms":1055,"error":null,"table_size":9}
//! {"v":1,"ts":"2026-11-25T10:00:31.300Z","type":"walk_completed","target":"own","ok":true,"duration_ms":12,"peers_found":9,"table_size":9}
//! {"v":1,"ts":"2026-11-25T10:02:10.400Z","type":"peer_removed","peer_id":"12D3KooW…","reason":"Failed to negotiate transport protocol(s): …: Connection refused (os error 111)","closest":true}
//! {"v":1,"ts":"2026-11-25T10:05:00.000Z","type":"routing_table","reason":"shutdown","size":9,"peers":[…]}
//! {"v":1,"ts":"2026-11-25T10:05:00.001Z","type":"node_stopping","reason":"SIGTERM","uptime_ms":300001}
//! ```
//!
//! # Crawled tables
//!
//! `testbed-crawl` reads tables over the wire instead (FIND_NODE per bucket), for nodes that write
//! none of this. It writes the same `routing_table` event with `"reason":"crawl"` and a
//! [`Crawled`] field naming the node it describes, a `crawl_failed` per node it could not read and
//! a `crawl_completed` per round:
//!
//! ```text
//! {"v":1,"ts":"…","type":"routing_table","reason":"crawl","size":9,"peers":[…],"crawled":{"peer_id":"12D3KooW…","addr":"/ip4/172.18.0.5/tcp/4001","agent_version":"kad-node/0.1.0","requests":2,"complete":true}}
//! {"v":1,"ts":"…","type":"crawl_failed","peer_id":"12D3KooW…","addrs":["/ip4/172.18.0.9/tcp/4001"],"error":"…"}
//! {"v":1,"ts":"…","type":"crawl_completed","nodes":9,"failed":1,"requests":19,"duration_ms":212}
//! ```
//!
//! # Compatibility rules
//!
//! * **New event types may appear; readers skip what they don't know.** They parse as
//!   [`Event::Unknown`].
//! * New optional fields may appear in existing events; readers ignore them.
//! * A change that breaks a reader bumps [`SCHEMA_VERSION`]. A reader that meets a newer version
//!   warns and keeps going where the event still parses ([`ParsedLine::newer_version`]).
//!
//! # Layout
//!
//! * [`Envelope`], [`Event`] and the event payload structs: the wire format.
//! * [`Timestamp`]: milliseconds since the Unix epoch, written as RFC 3339.
//! * [`parse_line`] / [`Envelope::to_line`]: the one reader and the one writer.
//! * [`error_chain`]: how an error is written into an event, causes included.
//! * [`kad_key`] / [`KadKey`]: the Kademlia XOR metric over peer ids, so readers can judge routing
//!   tables (k-closest peers, bucket indices) without a libp2p dependency.

mod key;
mod time;

pub use key::{KadKey, PeerIdError, kad_key};
use serde::{Deserialize, Serialize};
pub use time::Timestamp;

/// The schema version this crate writes and fully understands.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of a node's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Schema version, see [`SCHEMA_VERSION`].
    pub v: u32,
    /// When the node wrote the event.
    pub ts: Timestamp,
    /// The event itself; its `type` tag sits beside `v` and `ts` in the same object.
    #[serde(flatten)]
    pub event: Event,
}

impl Envelope {
    /// Wraps an event written now, at the current schema version.
    pub fn now(event: Event) -> Self {
        Self {
            v: SCHEMA_VERSION,
            ts: Timestamp::now(),
            event,
        }
    }

    /// The JSON line for this envelope, without the trailing newline.
    pub fn to_line(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and no value is a float.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"v":{SCHEMA_VERSION},"type":"serialize_error","error":"{e}"}}"#)
        })
    }
}

/// Whether a node is the network's bootstrap node or a joiner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Started without `--bootstrap`: the first node, which the others dial.
    Bootstrap,
    /// Started with one or more `--bootstrap` addresses.
    Peer,
}

impl Role {
    /// The lowercase name used on the wire and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Bootstrap => "bootstrap",
            Role::Peer => "peer",
        }
    }
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This node dialed.
    Dialer,
    /// The remote dialed this node.
    Listener,
}

/// Why a `routing_table` snapshot was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotReason {
    /// The table changed; changes within the node's debounce window share one snapshot.
    Changed,
    /// No snapshot was written for a heartbeat interval.
    Heartbeat,
    /// The node is stopping: this is its final table.
    Shutdown,
    /// Not written by the node: `testbed-crawl` asked it over the wire (one FIND_NODE per
    /// bucket). Such an event carries [`Crawled`], naming the node it describes.
    Crawl,
}

/// Whose table a crawled `routing_table` is, and how the crawler read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crawled {
    /// The node that answered (the table is *its* table, not the crawler's).
    pub peer_id: String,
    /// The address the crawler reached it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// What Identify said it runs, e.g. `go-libp2p/0.36`, when it answered Identify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// FIND_NODE requests it answered for this table.
    pub requests: u32,
    /// `false` when the crawl stopped before the table's deepest bucket (a request failed or the
    /// crawler's bucket limit was hit): the peers listed are then a lower bound.
    pub complete: bool,
}

/// What started a Kademlia bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootstrapTrigger {
    /// The first bootstrap after a joiner reached a bootstrap node.
    Initial,
    /// The node's periodic bootstrap timer.
    Periodic,
    /// Started by the Kademlia implementation on its own. kad-node cancels those and writes none;
    /// older kad-node versions and other implementations may.
    Automatic,
}

/// What a walk looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalkTarget {
    /// The node's own key: finds its closest peers, and makes them learn it.
    Own,
    /// A random key.
    Random,
    /// A peer that spoke Kademlia to this node but left it no address to dial back (its
    /// identify failed), and that would be among this node's k closest: the lookup of its key
    /// finds its addresses in its own neighbours' tables.
    Peer,
}

/// One peer in a routing table snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// The peer's id.
    pub peer_id: String,
    /// The k-bucket index: `floor(log2(distance))` of the XOR distance between the two
    /// [`kad_key`]s, 0..=255. Bucket 255 holds the farthest half of the key space.
    pub bucket: u32,
}

/// The payload of a `node_started` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStarted {
    /// This node's own peer id.
    pub peer_id: String,
    /// Bootstrap node or joiner.
    pub role: Role,
    /// Addresses the node listens on (those known when it started; later ones arrive as
    /// `listen_addr` events).
    pub listen_addrs: Vec<String>,
    /// The bootstrap addresses a joiner dials; empty for the bootstrap node.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// The node software, e.g. `kad-node/0.1.0`.
    #[serde(default)]
    pub agent_version: String,
    /// The Kademlia protocol the node speaks.
    #[serde(default)]
    pub kad_protocol: String,
    /// The longest the node stays silent: it writes a `routing_table` snapshot at least this
    /// often. A node whose log went quiet for several heartbeats while others' went on has died
    /// (killed, paused or crashed) without a `node_stopping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

/// Every event type. Serialized with a `type` tag beside the [`Envelope`] fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The node is listening. Always the first event of a node's incarnation: a second one in the
    /// same log means the process restarted, and what came before belongs to the old incarnation.
    NodeStarted(NodeStarted),
    /// The node started listening on another address after `node_started`.
    ListenAddr {
        /// The new listen address.
        addr: String,
    },
    /// A connection to a peer is up (after the security and muxer handshakes).
    ConnectionEstablished {
        /// The remote peer.
        peer_id: String,
        /// The remote's address on this connection.
        remote_addr: String,
        /// Who dialed.
        direction: Direction,
        /// Connections now open to this peer, this one included.
        connections: u32,
    },
    /// A connection to a peer closed.
    ConnectionClosed {
        /// The remote peer.
        peer_id: String,
        /// The remote's address on this connection.
        remote_addr: String,
        /// Connections still open to this peer.
        connections: u32,
        /// The error that closed it; `null` for an orderly close (e.g. idle timeout).
        cause: Option<String>,
    },
    /// An outgoing dial failed.
    DialFailed {
        /// The peer dialed, if known (a bootstrap address without `/p2p/` has none).
        peer_id: Option<String>,
        /// The address dialed, when the dial was to one address.
        addr: Option<String>,
        /// Why it failed, with the cause chain.
        error: String,
        /// For bootstrap dials: which attempt this was, from 1.
        #[serde(default)]
        attempt: Option<u32>,
        /// For bootstrap dials: when the node tries again.
        #[serde(default)]
        retry_in_ms: Option<u64>,
    },
    /// A peer answered the Identify protocol. Identify runs on every new connection; an answer
    /// identical to the peer's previous one is not repeated.
    Identified {
        /// The peer.
        peer_id: String,
        /// What software it runs.
        agent_version: String,
        /// Whether it supports this node's Kademlia protocol (only then is it routable).
        kad: bool,
        /// The listen addresses it advertised.
        listen_addrs: Vec<String>,
        /// The advertised addresses given to Kademlia; the rest could not reach the peer from here
        /// (loopback seen over a non-loopback connection, unspecified addresses). Empty when the
        /// peer does not speak Kademlia or its k-bucket is full (old contacts are kept).
        added_addrs: Vec<String>,
    },
    /// Kademlia added a peer to its routing table (possibly evicting another). New addresses of
    /// peers already in the table are not reported.
    RoutingUpdated {
        /// The peer.
        peer_id: String,
        /// `true` when the peer was not in the table before.
        is_new_peer: bool,
        /// The peer's bucket index (see [`TableEntry::bucket`]).
        bucket: Option<u32>,
        /// All addresses the table holds for the peer.
        addresses: Vec<String>,
        /// A peer this insertion evicted from a full bucket.
        evicted: Option<String>,
    },
    /// The node took a peer out of its routing table because it is gone: a dial to it failed
    /// (killed, restarted with another identity, paused, cut off). Entries for dead peers would
    /// otherwise stay until their bucket needs the room.
    PeerRemoved {
        /// The peer.
        peer_id: String,
        /// The dial error that showed it gone.
        reason: String,
        /// Whether it was among the node's k closest (the node then looks for its replacements).
        closest: bool,
    },
    /// A peer connected and speaks Kademlia but no dialable address is known for it, so it was not
    /// added to the routing table (typically: identify has not answered yet, or never did).
    /// Reported once per peer until it is added.
    UnroutablePeer {
        /// The peer.
        peer_id: String,
    },
    /// A Kademlia bootstrap (a lookup of the node's own key, then a refresh of each bucket farther
    /// than its closest neighbour) finished.
    BootstrapCompleted {
        /// What started it.
        trigger: BootstrapTrigger,
        /// Whether every step succeeded.
        ok: bool,
        /// From start to the last step.
        duration_ms: u64,
        /// Why a step failed.
        error: Option<String>,
        /// Routing table size when it finished.
        table_size: usize,
    },
    /// A walk finished: a lookup of the node's own key (to keep its neighbourhood complete) or of
    /// a random key (to discover the rest of the network).
    WalkCompleted {
        /// What was looked up.
        target: WalkTarget,
        /// Whether the lookup finished before its timeout.
        ok: bool,
        /// From start to finish.
        duration_ms: u64,
        /// Peers the lookup returned.
        peers_found: usize,
        /// Routing table size when it finished.
        table_size: usize,
    },
    /// The full routing table: every peer in it.
    RoutingTable {
        /// Why it was written.
        reason: SnapshotReason,
        /// Number of peers, equal to `peers.len()`.
        size: usize,
        /// Every peer in the table with its bucket.
        peers: Vec<TableEntry>,
        /// Set only by `testbed-crawl` (with reason `crawl`): the node whose table this is. A
        /// node's own snapshots leave it out, and the table is the writer's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        crawled: Option<Crawled>,
    },
    /// Written by `testbed-crawl`: a node it could not read (no connection, no answer, or an
    /// answer that is not a FIND_NODE response).
    CrawlFailed {
        /// The node, when known (a seed address without `/p2p/` that never answered has none).
        peer_id: Option<String>,
        /// The addresses tried.
        addrs: Vec<String>,
        /// Why, with the cause chain.
        error: String,
    },
    /// Written by `testbed-crawl` at the end of each crawl round.
    CrawlCompleted {
        /// Nodes whose table was read (a `routing_table` event each).
        nodes: usize,
        /// Nodes that could not be read (a `crawl_failed` event each).
        failed: usize,
        /// FIND_NODE requests sent in all.
        requests: u64,
        /// From the first dial to the last answer.
        duration_ms: u64,
    },
    /// The node is stopping. The last event of an incarnation; the final `routing_table` comes just
    /// before it.
    NodeStopping {
        /// What stopped it, e.g. `SIGTERM`.
        reason: String,
        /// Time since the node started.
        uptime_ms: u64,
    },
    /// An event type this reader does not know (written by a newer node). Never written.
    #[serde(other)]
    Unknown,
}

impl Event {
    /// The `type` tag of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::NodeStarted(_) => "node_started",
            Event::ListenAddr { .. } => "listen_addr",
            Event::ConnectionEstablished { .. } => "connection_established",
            Event::ConnectionClosed { .. } => "connection_closed",
            Event::DialFailed { .. } => "dial_failed",
            Event::Identified { .. } => "identified",
            Event::RoutingUpdated { .. } => "routing_updated",
            Event::PeerRemoved { .. } => "peer_removed",
            Event::UnroutablePeer { .. } => "unroutable_peer",
            Event::BootstrapCompleted { .. } => "bootstrap_completed",
            Event::WalkCompleted { .. } => "walk_completed",
            Event::RoutingTable { .. } => "routing_table",
            Event::NodeStopping { .. } => "node_stopping",
            Event::CrawlFailed { .. } => "crawl_failed",
            Event::CrawlCompleted { .. } => "crawl_completed",
            Event::Unknown => "unknown",
        }
    }
}

/// A successfully parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// The envelope.
    pub envelope: Envelope,
    /// `true` when the line's schema version is newer than [`SCHEMA_VERSION`]: it parsed, but the
    /// reader may be missing what the newer version added. Warn once.
    pub newer_version: bool,
}

/// Why a line is not a usable event.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The line does not look like a JSON object at all (a diagnostic, a banner, a blank line).
    #[error("not a JSON object")]
    NotJson,
    /// The line starts like JSON but is not valid: typically a line truncated by a crash or a log
    /// rotation.
    #[error("malformed or truncated JSON: {0}")]
    Malformed(serde_json::Error),
    /// Valid JSON of a newer schema version whose shape this reader cannot parse.
    #[error(
        "schema version {found} is newer than this reader's {SCHEMA_VERSION} and the line does not parse: {source}"
    )]
    UnsupportedVersion {
        /// The version on the line.
        found: u32,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Valid JSON that is not an envelope of this schema (missing `v`/`ts`/`type`, wrong types).
    #[error("not a kad-testbed event: {0}")]
    NotAnEvent(serde_json::Error),
}

/// An error and its causes on one line, `outer: inner: root`: how every `error` and `reason`
/// field of the events carries an error (node and crawler alike).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some libp2p errors repeat their source in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Parses one line (without its newline) into an event.
///
/// Leading and trailing whitespace (including a `\r`) is ignored.
pub fn parse_line(line: &str) -> Result<ParsedLine, ParseError> {
    let line = line.trim();
    if !line.starts_with('{') {
        return Err(ParseError::NotJson);
    }
    if let Some(envelope) = routing_table_line(line) {
        return Ok(ParsedLine {
            envelope,
            newer_version: false,
        });
    }
    match serde_json::from_str::<Envelope>(line) {
        Ok(envelope) => {
            let newer_version = envelope.v > SCHEMA_VERSION;
            Ok(ParsedLine {
                envelope,
                newer_version,
            })
        }
        Err(e) if e.is_syntax() || e.is_eof() => Err(ParseError::Malformed(e)),
        Err(e) => {
            // Valid JSON but not our shape: a newer version is a different failure from garbage.
            #[derive(Deserialize)]
            struct VersionOnly {
                v: u32,
            }
            match serde_json::from_str::<VersionOnly>(line) {
                Ok(VersionOnly { v }) if v > SCHEMA_VERSION => {
                    Err(ParseError::UnsupportedVersion {
                        found: v,
                        source: e,
                    })
                }
                _ => Err(ParseError::NotAnEvent(e)),
            }
        }
    }
}

/// A `routing_table` line of this schema version, read straight into its fields: `None` for any
/// other line, or one that does not read so, which [`parse_line`] then reads the general way.
///
/// Tables are nearly all of a log's bytes, and the general way is slow for them: the flattened,
/// internally tagged [`Envelope`] makes serde copy every field of the line into an owned tree
/// first, then read the event from that tree. Measured on the saved logs of a 1000-node run
/// (1.05 GB), the checker took 2.8 s, most of it allocating and freeing.
fn routing_table_line(line: &str) -> Option<Envelope> {
    /// The tag, which must say `routing_table`.
    #[derive(Deserialize)]
    enum Tag {
        #[serde(rename = "routing_table")]
        RoutingTable,
    }
    #[derive(Deserialize)]
    struct Line {
        v: u32,
        ts: Timestamp,
        #[serde(rename = "type")]
        _tag: Tag,
        reason: SnapshotReason,
        size: usize,
        peers: Vec<TableEntry>,
        #[serde(default)]
        crawled: Option<Crawled>,
    }
    if !line.contains(r#""type":"routing_table""#) {
        return None;
    }
    let l: Line = serde_json::from_str(line).ok()?;
    (l.v <= SCHEMA_VERSION).then_some(Envelope {
        v: l.v,
        ts: l.ts,
        event: Event::RoutingTable {
            reason: l.reason,
            size: l.size,
            peers: l.peers,
            crawled: l.crawled,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> String {
        "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4".to_owned()
    }

    /// The fast path for tables ([`routing_table_line`]) reads what the general one reads, and
    /// leaves every line it cannot read to it.
    #[test]
    fn a_routing_table_reads_the_same_on_the_fast_path() {
        let entry = |bucket| TableEntry {
            peer_id: peer(),
            bucket,
        };
        let crawled = Crawled {
            peer_id: peer(),
            addr: Some("/ip4/10.0.0.2/tcp/4001".into()),
            agent_version: None,
            requests: 4,
            complete: true,
        };
        let mut lines: Vec<String> = [
            (SnapshotReason::Changed, vec![entry(255), entry(250)], None),
            (SnapshotReason::Shutdown, vec![], None),
            (SnapshotReason::Crawl, vec![entry(3)], Some(crawled)),
        ]
        .into_iter()
        .map(|(reason, peers, crawled)| {
            Envelope::now(Event::RoutingTable {
                reason,
                size: peers.len(),
                peers,
                crawled,
            })
            .to_line()
        })
        .collect();
        // Another writer's order, and fields this reader does not know.
        lines.push(
            r#"{"peers":[{"bucket":3,"peer_id":"p","rtt":1}],"type":"routing_table","size":1,"reason":"heartbeat","ts":"2026-11-25T10:00:00.012Z","v":1,"extra":[1,{"a":2}]}"#
                .into(),
        );
        for line in &lines {
            let general: Envelope = serde_json::from_str(line).expect("general");
            assert_eq!(routing_table_line(line).as_ref(), Some(&general), "{line}");
            let parsed = parse_line(line).expect("parses");
            assert_eq!((parsed.envelope, parsed.newer_version), (general, false));
        }
        // Left to the general way: a newer version (which says so), a table that does not read,
        // and other events.
        let newer = lines[0].replacen(r#""v":1"#, r#""v":2"#, 1);
        assert!(routing_table_line(&newer).is_none());
        assert!(parse_line(&newer).expect("newer parses").newer_version);
        let broken = r#"{"v":1,"ts":"2026-11-25T10:00:00.012Z","type":"routing_table","reason":"changed","size":1,"peers":[{"peer_id":"p"}]}"#;
        assert!(routing_table_line(broken).is_none());
        assert!(matches!(parse_line(broken), Err(ParseError::NotAnEvent(_))));
        let other = Envelope::now(Event::ListenAddr {
            addr: "/ip4/10.0.0.1/tcp/4001".into(),
        })
        .to_line();
        assert!(routing_table_line(&other).is_none());
    }

    #[test]
    fn every_event_round_trips_through_a_line() {
        let events = vec![
            Event::NodeStarted(NodeStarted {
                peer_id: peer(),
                role: Role::Bootstrap,
                listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                bootstrap: vec![],
                agent_version: "kad-node/0.1.0".into(),
                kad_protocol: "/ipfs/kad/1.0.0".into(),
                heartbeat_ms: Some(30_000),
            }),
            Event::ListenAddr {
                addr: "/ip4/10.0.0.1/tcp/4001".into(),
            },
            Event::ConnectionEstablished {
                peer_id: peer(),
                remote_addr: "/ip4/10.0.0.2/tcp/4001".into(),
                direction: Direction::Dialer,
                connections: 1,
            },
            Event::ConnectionClosed {
                peer_id: peer(),
                remote_addr: "/ip4/10.0.0.2/tcp/4001".into(),
                connections: 0,
                cause: None,
            },
            Event::DialFailed {
                peer_id: None,
                addr: Some("/dns4/bootstrap/tcp/4001".into()),
                error: "no such host".into(),
                attempt: Some(3),
                retry_in_ms: Some(800),
            },
            Event::Identified {
                peer_id: peer(),
                agent_version: "kad-node/0.1.0".into(),
                kad: true,
                listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                added_addrs: vec![],
            },
            Event::RoutingUpdated {
                peer_id: peer(),
                is_new_peer: true,
                bucket: Some(255),
                addresses: vec!["/ip4/10.0.0.2/tcp/4001".into()],
                evicted: None,
            },
            Event::PeerRemoved {
                peer_id: peer(),
                reason: "Failed to negotiate transport protocol(s)".into(),
                closest: true,
            },
            Event::UnroutablePeer { peer_id: peer() },
            Event::BootstrapCompleted {
                trigger: BootstrapTrigger::Initial,
                ok: true,
                duration_ms: 12,
                error: None,
                table_size: 3,
            },
            Event::WalkCompleted {
                target: WalkTarget::Own,
                ok: true,
                duration_ms: 5,
                peers_found: 2,
                table_size: 3,
            },
            Event::RoutingTable {
                reason: SnapshotReason::Heartbeat,
                size: 1,
                peers: vec![TableEntry {
                    peer_id: peer(),
                    bucket: 254,
                }],
                crawled: None,
            },
            Event::RoutingTable {
                reason: SnapshotReason::Crawl,
                size: 0,
                peers: vec![],
                crawled: Some(Crawled {
                    peer_id: peer(),
                    addr: Some("/ip4/172.18.0.3/tcp/4001".into()),
                    agent_version: Some("go-libp2p/0.36.2".into()),
                    requests: 1,
                    complete: true,
                }),
            },
            Event::CrawlFailed {
                peer_id: None,
                addrs: vec!["/dns4/bootstrap/tcp/4001".into()],
                error: "Connection refused".into(),
            },
            Event::CrawlCompleted {
                nodes: 10,
                failed: 1,
                requests: 31,
                duration_ms: 240,
            },
            Event::NodeStopping {
                reason: "SIGTERM".into(),
                uptime_ms: 1000,
            },
        ];
        for event in events {
            let envelope = Envelope::now(event);
            let line = envelope.to_line();
            assert!(!line.contains('\n'), "one event per line: {line}");
            let parsed = parse_line(&line).expect("own output parses");
            assert_eq!(parsed.envelope, envelope);
            assert!(!parsed.newer_version);
            let tag = format!(r#""type":"{}""#, envelope.event.type_name());
            assert!(line.contains(&tag), "{line} carries {tag}");
        }
    }

    #[test]
    fn nested_values_are_json_not_strings() {
        let line = Envelope::now(Event::RoutingTable {
            reason: SnapshotReason::Changed,
            size: 1,
            peers: vec![TableEntry {
                peer_id: peer(),
                bucket: 3,
            }],
            crawled: None,
        })
        .to_line();
        assert!(
            !line.contains("crawled"),
            "a node's own table has no crawl field"
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert!(value["peers"].is_array());
        assert_eq!(value["peers"][0]["bucket"], 3);
        assert!(value["ts"].as_str().expect("ts string").ends_with('Z'));
    }

    #[test]
    fn unknown_event_types_parse_as_unknown() {
        let parsed = parse_line(
            r#"{"v":1,"ts":"2026-11-25T10:00:00.000Z","type":"gossip_received","x":[1]}"#,
        )
        .expect("parses");
        assert_eq!(parsed.envelope.event, Event::Unknown);
    }

    #[test]
    fn a_newer_version_that_still_parses_is_flagged() {
        let parsed = parse_line(
            r#"{"v":7,"ts":"2026-11-25T10:00:00.000Z","type":"listen_addr","addr":"/ip4/1.2.3.4/tcp/1","extra":true}"#,
        )
        .expect("parses");
        assert!(parsed.newer_version);
    }

    #[test]
    fn a_newer_version_that_does_not_parse_says_so() {
        let err = parse_line(r#"{"v":2,"ts":12,"type":"listen_addr"}"#).expect_err("fails");
        assert!(
            matches!(err, ParseError::UnsupportedVersion { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_truncated_lines_are_told_apart() {
        assert!(matches!(
            parse_line("thread 'main' panicked"),
            Err(ParseError::NotJson)
        ));
        assert!(matches!(parse_line(""), Err(ParseError::NotJson)));
        assert!(matches!(
            parse_line(r#"{"v":1,"ts":"2026-11-25T10:00:00.000Z","type":"routing_ta"#),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_line(r#"{"hello":"world"}"#),
            Err(ParseError::NotAnEvent(_))
        ));
    }

    #[test]
    fn a_carriage_return_is_ignored() {
        let line = format!(
            "{}\r",
            Envelope::now(Event::ListenAddr { addr: "/x".into() }).to_line()
        );
        assert!(parse_line(&line).is_ok());
    }
}
