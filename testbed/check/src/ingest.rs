//! From lines to per-node digests: streaming, so a log is never held in memory whole.
//!
//! Each node's log folds into a [`NodeLog`]: who the node is, its latest routing table, whether it
//! stopped, and the evidence the verdict needs to explain a missing peer (connections, dial
//! failures, unroutable sightings). Lines that are not events are counted, never fatal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::crawl::CrawlLog;
use testbed_events::{
    BootstrapTrigger, Envelope, Event, ParseError, ParsedLine, Role, SnapshotReason, TableEntry,
    Timestamp, parse_line,
};

/// How many bad lines to quote in a report, in all.
const MAX_SAMPLES: usize = 5;

/// Whether a node that writes at least every `heartbeat` and last wrote at `last` has been
/// silent for [`SILENT_HEARTBEATS`] of them by `now`.
pub fn silent(heartbeat: Duration, last: Timestamp, now: Timestamp) -> bool {
    let limit = heartbeat.saturating_mul(SILENT_HEARTBEATS);
    u128::from(now.millis_since(last)) > limit.as_millis()
}

/// Heartbeats of silence after which a node that never said it stopped is taken to be down: the
/// node's own health check allows three too (see the node's `--heartbeat`).
pub const SILENT_HEARTBEATS: u32 = 3;

/// Tables kept before a node's latest (see [`NodeLog::earlier_tables`]): with a heartbeat of
/// 30 s, the last two minutes of a quiet node.
pub const EARLIER_TABLES: usize = 4;

/// A routing-table snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub ts: Timestamp,
    pub reason: SnapshotReason,
    pub peers: Vec<TableEntry>,
}

/// Everything the verdict needs from one node's log (its latest incarnation).
#[derive(Debug, Clone, Default)]
pub struct NodeLog {
    /// Container name, or file name, or `docker compose logs` prefix.
    pub name: String,
    pub peer_id: Option<String>,
    pub role: Option<Role>,
    pub started: Option<Timestamp>,
    /// When its first incarnation started.
    pub first_started: Option<Timestamp>,
    /// Peer ids of its earlier incarnations (a restart makes a new identity), each with when that
    /// incarnation went down.
    pub former_ids: Vec<(String, Timestamp)>,
    /// `node_started` events seen; more than one means the process restarted.
    pub incarnations: u32,
    pub last_event: Option<Timestamp>,
    /// The latest routing table of the latest incarnation.
    pub table: Option<Snapshot>,
    /// The few tables before it, oldest first (up to [`EARLIER_TABLES`]): what a crawl that read
    /// the node a moment ago is compared with.
    pub earlier_tables: std::collections::VecDeque<Snapshot>,
    /// When and why the node said it was stopping.
    pub stopped: Option<(Timestamp, String)>,
    /// The Docker source saw the container not running (exited, dead…).
    pub container_exited: bool,
    /// When the run killed it (recorded in `run.json` by `bench --churn`).
    pub killed_at: Option<Timestamp>,
    /// The longest the node stays silent (`heartbeat_ms` of its `node_started`), if it said.
    pub heartbeat: Option<Duration>,
    /// Peers it had a connection with.
    pub connected: BTreeSet<String>,
    /// Peers it saw speak Kademlia without a dialable address.
    pub unroutable: BTreeSet<String>,
    /// Peers it added to its routing table at some point (`routing_updated`).
    pub routed: BTreeSet<String>,
    /// Peers that identified without the Kademlia protocol.
    pub no_kad: BTreeSet<String>,
    /// Peers that identified as Kademlia servers, with the software they said they run: how a
    /// node of another implementation, which writes no log here, is known at all.
    pub kad_servers: BTreeMap<String, String>,
    /// For each peer it connected to: connections open now, and when that last changed.
    pub links: BTreeMap<String, (u32, Timestamp)>,
    /// Peers it took out of its table as gone (`peer_removed`), and when.
    pub removed: Vec<(String, Timestamp)>,
    /// Failed dials to other peers, and the last reason.
    pub dial_failures: u32,
    pub last_dial_error: Option<String>,
    /// Failed dials of a `--bootstrap` address, and the last reason.
    pub bootstrap_dial_failures: u32,
    pub last_bootstrap_error: Option<String>,
    /// When the first initial bootstrap completed, and whether it succeeded.
    pub initial_bootstrap: Option<(Timestamp, bool)>,
    pub lines: LineStats,
    /// What the node runs, when only a crawl knows it (a node's own log does not say).
    pub agent_version: Option<String>,
    /// Not a log: a node known only from what it answered `testbed-crawl` ([`CrawlLog::members`]).
    pub crawled_only: bool,
    /// Not a log, and no table known: a Kademlia server other nodes identified and connected to
    /// (another implementation, run without the crawler). Judged as a peer the others must hold,
    /// never on a table of its own.
    pub identified_only: bool,
    /// The crawl events this log holds (a crawler's log, or a crawl file).
    pub crawl: CrawlLog,
}

/// What the lines of a log were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LineStats {
    pub lines: u64,
    pub events: u64,
    /// Lines that are not JSON objects (diagnostics, banners).
    pub not_json: u64,
    /// JSON objects cut short or broken (a crash or rotation mid-line).
    pub malformed: u64,
    /// Valid JSON that is not a kad-testbed event.
    pub not_events: u64,
    /// Events of a type this checker does not know (skipped).
    pub unknown_types: u64,
    /// Events of a newer schema version that still parsed.
    pub newer_version: u64,
    /// Events of a newer schema version that did not parse.
    pub unsupported_version: u64,
    /// Events after the instant judged (`--at`), read and left out.
    pub after_cutoff: u64,
}

impl LineStats {
    pub fn add(&mut self, other: &LineStats) {
        self.lines += other.lines;
        self.events += other.events;
        self.not_json += other.not_json;
        self.malformed += other.malformed;
        self.not_events += other.not_events;
        self.unknown_types += other.unknown_types;
        self.newer_version += other.newer_version;
        self.unsupported_version += other.unsupported_version;
    }

    /// Lines that were not usable events.
    pub fn bad(&self) -> u64 {
        self.not_json + self.malformed + self.not_events + self.unsupported_version
    }
}

impl NodeLog {
    /// A log with nothing in it yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Folds a sequence of events (for tests and in-memory use).
    pub fn from_events(name: &str, events: impl IntoIterator<Item = Envelope>) -> Self {
        let mut log = Self::new(name);
        for e in events {
            log.lines.lines += 1;
            log.lines.events += 1;
            log.apply(e);
        }
        log
    }

    /// Whether this is a node's own log (not a stand-in built from a crawl or from Identify).
    pub fn is_log(&self) -> bool {
        !self.crawled_only && !self.identified_only
    }

    /// Whether its table is known (its own log, or a crawl): only then is it judged as a holder.
    pub fn has_table(&self) -> bool {
        !self.identified_only
    }

    /// Whether the node said it was stopping or its container is not running.
    pub fn is_down(&self) -> bool {
        self.stopped.is_some() || self.container_exited || self.killed_at.is_some()
    }

    /// Whether, as of `now` (the end of the logs read), the node is down: it said so, its
    /// container is not running, or it has been silent for [`SILENT_HEARTBEATS`] of its
    /// heartbeats while other logs went on (killed, paused or crashed: no `node_stopping`).
    pub fn is_down_as_of(&self, now: Timestamp) -> bool {
        self.is_down() || self.silent_as_of(now)
    }

    /// Silent for [`SILENT_HEARTBEATS`] heartbeats before `now`. Never true for a node that did not
    /// say how often it writes.
    pub fn silent_as_of(&self, now: Timestamp) -> bool {
        match (self.heartbeat, self.last_event) {
            (Some(heartbeat), Some(last)) => silent(heartbeat, last, now),
            _ => false,
        }
    }

    /// When the node went down: its `node_stopping`, else its last event.
    pub fn down_at(&self) -> Option<Timestamp> {
        self.stopped
            .as_ref()
            .map(|s| s.0)
            .or(self.killed_at)
            .or(self.last_event)
    }

    /// Applies one event.
    pub fn apply(&mut self, envelope: Envelope) {
        let ts = envelope.ts;
        // A crawler's events describe other nodes: they are filed apart, and the crawler's own
        // log is not a node's.
        let Some(event) = self.crawl.apply(ts, envelope.event) else {
            return;
        };
        self.last_event = Some(self.last_event.map_or(ts, |t| t.max(ts)));
        match event {
            Event::NodeStarted(started) => {
                // A new incarnation: what the old one knew no longer describes this node.
                let name = std::mem::take(&mut self.name);
                let incarnations = self.incarnations + 1;
                let lines = self.lines;
                let first_started = self.first_started.or(Some(ts));
                let mut former_ids = std::mem::take(&mut self.former_ids);
                let crawl = std::mem::take(&mut self.crawl);
                if let Some(old) = self.peer_id.take() {
                    if old != started.peer_id {
                        let gone = self.stopped.as_ref().map_or(ts, |s| s.0);
                        former_ids.push((old, gone));
                    }
                }
                *self = Self {
                    name,
                    incarnations,
                    lines,
                    first_started,
                    former_ids,
                    crawl,
                    peer_id: Some(started.peer_id),
                    role: Some(started.role),
                    heartbeat: started.heartbeat_ms.map(Duration::from_millis),
                    started: Some(ts),
                    last_event: Some(ts),
                    ..Self::default()
                };
            }
            Event::RoutingTable { reason, peers, .. } => {
                if let Some(old) = self.table.replace(Snapshot { ts, reason, peers }) {
                    if self.earlier_tables.len() == EARLIER_TABLES {
                        self.earlier_tables.pop_front();
                    }
                    self.earlier_tables.push_back(old);
                }
            }
            Event::NodeStopping { reason, .. } => self.stopped = Some((ts, reason)),
            Event::ConnectionEstablished {
                peer_id,
                connections,
                ..
            } => {
                self.links.insert(peer_id.clone(), (connections, ts));
                self.connected.insert(peer_id);
            }
            Event::ConnectionClosed {
                peer_id,
                connections,
                ..
            } => {
                self.links.insert(peer_id, (connections, ts));
            }
            Event::PeerRemoved { peer_id, .. } => self.removed.push((peer_id, ts)),
            Event::UnroutablePeer { peer_id } => {
                self.unroutable.insert(peer_id);
            }
            Event::RoutingUpdated {
                peer_id,
                is_new_peer: true,
                ..
            } => {
                self.routed.insert(peer_id);
            }
            Event::Identified {
                peer_id,
                kad,
                agent_version,
                ..
            } => {
                if kad {
                    self.kad_servers.insert(peer_id, agent_version);
                } else {
                    self.no_kad.insert(peer_id);
                }
            }
            Event::DialFailed { error, attempt, .. } => {
                if attempt.is_some() {
                    self.bootstrap_dial_failures += 1;
                    self.last_bootstrap_error = Some(error);
                } else {
                    self.dial_failures += 1;
                    self.last_dial_error = Some(error);
                }
            }
            Event::BootstrapCompleted {
                trigger: BootstrapTrigger::Initial,
                ok,
                ..
            } => {
                // A join that no peer answered is tried again: keep the first that worked, or
                // the first try while none has.
                if self
                    .initial_bootstrap
                    .is_none_or(|(_, first_ok)| !first_ok && ok)
                {
                    self.initial_bootstrap = Some((ts, ok));
                }
            }
            Event::Unknown => self.lines.unknown_types += 1,
            Event::ListenAddr { .. }
            | Event::RoutingUpdated { .. }
            | Event::BootstrapCompleted { .. }
            | Event::WalkCompleted { .. }
            | Event::CrawlFailed { .. }
            | Event::CrawlCompleted { .. } => {}
        }
    }
}

/// Collects lines from any number of sources into per-node logs.
#[derive(Debug, Default)]
pub struct Ingest {
    nodes: BTreeMap<String, NodeLog>,
    /// Events after this instant are left out: the logs as they stood then (`--at`).
    cutoff: Option<Timestamp>,
    /// Up to [`MAX_SAMPLES`] bad lines, quoted for the report.
    pub samples: Vec<String>,
}

impl Ingest {
    pub fn new() -> Self {
        Self::default()
    }

    /// An ingest that keeps only events up to `cutoff` (all when `None`): each node's state as
    /// it stood at that instant, since a node's events are in time order.
    pub fn until(cutoff: Option<Timestamp>) -> Self {
        Self {
            cutoff,
            ..Self::default()
        }
    }

    pub fn cutoff(&self) -> Option<Timestamp> {
        self.cutoff
    }

    /// Moves the cutoff later: what [`crate::instants`] does as it walks a saved run forward.
    /// The caller feeds only events up to it.
    pub(crate) fn advance_to(&mut self, cutoff: Timestamp) {
        self.cutoff = Some(self.cutoff.map_or(cutoff, |c| c.max(cutoff)));
    }

    /// Feeds one line of the log named `node` (without its newline).
    pub fn push_line(&mut self, node: &str, line: &str) {
        self.push_parsed(node, line, parse_line(line));
    }

    /// Feeds one line already parsed (`parsed` is `parse_line(line)`).
    pub(crate) fn push_parsed(
        &mut self,
        node: &str,
        line: &str,
        parsed: Result<ParsedLine, ParseError>,
    ) {
        let log = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeLog::new(node));
        log.lines.lines += 1;
        let error = match parsed {
            Ok(parsed) => {
                log.lines.events += 1;
                if parsed.newer_version {
                    log.lines.newer_version += 1;
                }
                if self.cutoff.is_some_and(|c| parsed.envelope.ts > c) {
                    log.lines.after_cutoff += 1;
                } else {
                    log.apply(parsed.envelope);
                }
                return;
            }
            Err(e) => e,
        };
        match error {
            ParseError::NotJson => log.lines.not_json += 1,
            ParseError::Malformed(_) => log.lines.malformed += 1,
            ParseError::NotAnEvent(_) => log.lines.not_events += 1,
            ParseError::UnsupportedVersion { .. } => log.lines.unsupported_version += 1,
        }
        // Blank lines and plain diagnostics are normal; quote what looks like a broken event.
        if self.samples.len() < MAX_SAMPLES && !matches!(error, ParseError::NotJson) {
            let mut quoted: String = line.chars().take(120).collect();
            if quoted.len() < line.len() {
                quoted.push('…');
            }
            self.samples.push(format!(
                "{node}, line {}: {error}: {quoted}",
                log.lines.lines
            ));
        }
    }

    /// Feeds a line of `docker compose logs` output (or of a plain log) read from `file`: a
    /// `service-1  | ` (v2) or `service_1  | ` (v1) prefix names the node; without one the file
    /// name does.
    pub fn push_file_line(&mut self, file: &str, line: &str) {
        match split_compose_prefix(line) {
            Some((node, rest)) => self.push_line(node, rest),
            None => self.push_line(file, line),
        }
    }

    /// Records whether a node's container is not running (Docker source). Not for an ingest with
    /// a cutoff: the container's state now says nothing about that instant.
    pub fn set_exited(&mut self, node: &str, exited: bool) {
        if self.cutoff.is_some() {
            return;
        }
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeLog::new(node))
            .container_exited = exited;
    }

    /// Records that the run killed `node` at `at` (its latest incarnation, if it had started by
    /// then); ignored when `at` is after the cutoff.
    pub fn set_killed(&mut self, node: &str, at: Timestamp) {
        if self.cutoff.is_some_and(|c| at > c) {
            return;
        }
        if let Some(log) = self.nodes.get_mut(node)
            && log.started.is_some_and(|s| s <= at)
        {
            log.killed_at = Some(at);
        }
    }

    /// Takes in what another ingest read (of other nodes).
    pub fn merge(&mut self, other: Ingest) {
        self.nodes.extend(other.nodes);
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    /// The logs, by name.
    pub fn logs(&self) -> impl Iterator<Item = &NodeLog> {
        self.nodes.values()
    }
}

/// Splits `name  | rest` as `docker compose logs` writes it (v2: `proj-peer-3  | `, v1.29:
/// `peer_3       | `), colours removed. `None` when the line has no such prefix.
///
/// It reads only the prefix: a node's line is mostly a routing table, and searching all of it for
/// a bar was a tenth of the checker's time on a 1000-node run.
pub fn split_compose_prefix(line: &str) -> Option<(&str, &str)> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let (name, after) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    // The name's padding, then the bar: ` | ` (or ` |` ending the line).
    let bar = after.len() - after.trim_start().len();
    if !after[..bar].ends_with(' ') {
        return None;
    }
    let rest = after[bar..].strip_prefix('|')?;
    let rest = if rest.is_empty() {
        rest
    } else {
        rest.strip_prefix(' ')?
    };
    // `docker compose logs -t` puts a timestamp before the line.
    let rest = match rest.split_once(' ') {
        Some((first, after)) if !rest.starts_with('{') && looks_like_timestamp(first) => after,
        _ => rest,
    };
    Some((name, rest))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn looks_like_timestamp(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_v2_and_v1_prefixes_name_the_node() {
        assert_eq!(
            split_compose_prefix(r#"kad-peer-3  | {"v":1}"#),
            Some(("kad-peer-3", r#"{"v":1}"#))
        );
        assert_eq!(
            split_compose_prefix(r#"peer_10      | {"v":1}"#),
            Some(("peer_10", r#"{"v":1}"#))
        );
        assert_eq!(
            split_compose_prefix(r#"peer-1  | 2026-11-25T04:48:47.033456789Z {"v":1}"#),
            Some(("peer-1", r#"{"v":1}"#))
        );
        assert_eq!(split_compose_prefix(r#"{"v":1,"a":"x | y"}"#), None);
        assert_eq!(split_compose_prefix("Attaching to kad_peer_1"), None);
    }

    /// The prefix split as it was, searching the whole line for the bar: the reference the
    /// prefix-only split must agree with.
    fn split_by_search(line: &str) -> Option<(&str, &str)> {
        let bar = line
            .find(" | ")
            .or_else(|| line.find(" |").filter(|&i| i + 2 == line.len()))?;
        let name = line[..bar].trim_end();
        if name.is_empty() || !name.chars().all(is_name_char) {
            return None;
        }
        let rest = line.get(bar + 3..).unwrap_or("");
        let rest = match rest.split_once(' ') {
            Some((first, after)) if !rest.starts_with('{') && looks_like_timestamp(first) => after,
            _ => rest,
        };
        Some((name, rest))
    }

    #[test]
    fn the_prefix_split_agrees_with_a_search_of_the_whole_line() {
        let lines = [
            r#"kad-peer-3  | {"v":1}"#,
            r#"peer_10      | {"v":1,"a":"x | y"}"#,
            "peer_1 |",
            "peer_1 | ",
            "peer_1 |  two spaces",
            "peer_1|{}",
            "peer_1 |{}",
            "peer_1\t| {}",
            "peer_1 \t | {}",
            "peer_1:x | {}",
            "peer 1 | {}",
            " | {}",
            "|",
            "",
            "peer_1",
            "peer_1  ",
            "peer_1 |x | y",
            "peer_1 | 2026-11-25T04:48:47.033456789Z {}",
            "peer_1 | 2026-11-25T04:48:47Z",
            "pe\u{e9}r | {}",
            "peer_1\u{a0}| {}",
            "peer_1 \u{a0} | {}",
            "Attaching to kad_peer_1, kad_peer_2",
        ];
        for line in lines {
            assert_eq!(
                split_compose_prefix(line),
                split_by_search(line),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_restart_starts_a_new_incarnation() {
        let mut ingest = Ingest::new();
        let started = |id: &str| {
            format!(
                r#"{{"v":1,"ts":"2026-11-25T10:00:00.000Z","type":"node_started","peer_id":"{id}","role":"peer","listen_addrs":[]}}"#
            )
        };
        ingest.push_line("n", &started("A"));
        ingest.push_line(
            "n",
            r#"{"v":1,"ts":"2026-11-25T10:00:01.000Z","type":"routing_table","reason":"changed","size":1,"peers":[{"peer_id":"X","bucket":1}]}"#,
        );
        ingest.push_line("n", &started("B"));
        let logs: Vec<&NodeLog> = ingest.logs().collect();
        assert_eq!(logs[0].peer_id.as_deref(), Some("B"));
        assert_eq!(logs[0].incarnations, 2);
        assert!(
            logs[0].table.is_none(),
            "the old incarnation's table is gone"
        );
        assert_eq!(logs[0].lines.events, 3);
    }

    #[test]
    fn bad_lines_are_counted_and_quoted() {
        let mut ingest = Ingest::new();
        ingest.push_line("n", "plain text");
        ingest.push_line("n", r#"{"v":1,"ts":"2026-11-25T10:00:0"#);
        ingest.push_line("n", r#"{"other":"json"}"#);
        ingest.push_line("n", "");
        let samples = ingest.samples.clone();
        let logs: Vec<&NodeLog> = ingest.logs().collect();
        let s = logs[0].lines;
        assert_eq!(
            (s.lines, s.events, s.not_json, s.malformed, s.not_events),
            (4, 0, 2, 1, 1)
        );
        assert_eq!(samples.len(), 2);
        assert!(samples[0].contains("line 2") && samples[0].contains("truncated"));
    }
}
