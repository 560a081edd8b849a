//! Tables read over the wire by `testbed-crawl`, beside the tables nodes log themselves.
//!
//! A crawl is one more log to the checker: its `routing_table` events carry `crawled` (whose
//! table it is), so the ingest files them here instead of under the crawler's own name. Then:
//!
//! * a node that wrote no events of ours but answered the crawler is judged as a full member, on
//!   its crawled table ([`CrawlLog::members`]);
//! * a node that did both is compared: what it logged against what it answered
//!   ([`CrawlLog::compare`]);
//! * a peer that did neither (no log, and the crawler could not read it) is unobservable, and the
//!   `observable` property fails ([`CrawlLog::unobservable`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;
use testbed_events::{Crawled, Event, Role, SnapshotReason, TableEntry, Timestamp};

use crate::ingest::{NodeLog, Snapshot};

/// A node's table as the crawler read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrawledTable {
    pub ts: Timestamp,
    pub crawled: Crawled,
    pub peers: Vec<TableEntry>,
}

/// A node (or seed address) the crawler could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrawlFailure {
    pub ts: Timestamp,
    pub peer_id: Option<String>,
    pub addrs: Vec<String>,
    pub error: String,
}

/// One finished crawl round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CrawlRound {
    /// When it ended.
    pub ts: Timestamp,
    pub nodes: usize,
    pub failed: usize,
    pub requests: u64,
    pub duration_ms: u64,
}

impl CrawlRound {
    /// When it began.
    pub fn began(&self) -> Timestamp {
        Timestamp(self.ts.as_millis().saturating_sub(self.duration_ms))
    }
}

/// Everything crawls said, latest per node.
#[derive(Debug, Clone, Default)]
pub struct CrawlLog {
    /// By peer id, the latest table read.
    pub tables: BTreeMap<String, CrawledTable>,
    /// By peer id (or the addresses, for a seed without one), the latest failure.
    pub failures: BTreeMap<String, CrawlFailure>,
    pub rounds: Vec<CrawlRound>,
}

impl CrawlLog {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.failures.is_empty() && self.rounds.is_empty()
    }

    /// Takes a crawl event; gives back any other event (and a node's own `routing_table`).
    pub fn apply(&mut self, ts: Timestamp, event: Event) -> Option<Event> {
        match event {
            Event::RoutingTable {
                peers,
                crawled: Some(crawled),
                ..
            } => {
                let newer = self
                    .tables
                    .get(&crawled.peer_id)
                    .is_none_or(|old| old.ts <= ts);
                if newer {
                    self.tables
                        .insert(crawled.peer_id.clone(), CrawledTable { ts, crawled, peers });
                }
                None
            }
            Event::CrawlFailed {
                peer_id,
                addrs,
                error,
            } => {
                let key = peer_id.clone().unwrap_or_else(|| addrs.join(","));
                self.failures.insert(
                    key,
                    CrawlFailure {
                        ts,
                        peer_id,
                        addrs,
                        error,
                    },
                );
                None
            }
            Event::CrawlCompleted {
                nodes,
                failed,
                requests,
                duration_ms,
            } => {
                self.rounds.push(CrawlRound {
                    ts,
                    nodes,
                    failed,
                    requests,
                    duration_ms,
                });
                None
            }
            other => Some(other),
        }
    }

    /// The crawls of several logs (several crawlers, or a crawl file beside a run) as one.
    pub fn merged<'a>(logs: impl IntoIterator<Item = &'a CrawlLog>) -> CrawlLog {
        let mut all = CrawlLog::default();
        for log in logs {
            for (peer, table) in &log.tables {
                if all.tables.get(peer).is_none_or(|t| t.ts <= table.ts) {
                    all.tables.insert(peer.clone(), table.clone());
                }
            }
            for (key, failure) in &log.failures {
                if all.failures.get(key).is_none_or(|f| f.ts <= failure.ts) {
                    all.failures.insert(key.clone(), failure.clone());
                }
            }
            all.rounds.extend(log.rounds.iter().copied());
        }
        all.rounds.sort_by_key(|r| r.ts);
        all
    }

    /// Nodes that answered the crawler but wrote no log of ours (`logged` holds every peer id a
    /// log names, earlier identities included), as logs of their own: judged like any node, on
    /// their crawled table. One is down once a later crawl failed to read it, or once a whole
    /// later round ran without finding it.
    pub fn members(&self, logged: &HashSet<&str>) -> Vec<NodeLog> {
        let latest_round = self.rounds.last();
        self.tables
            .values()
            .filter(|t| !logged.contains(t.crawled.peer_id.as_str()))
            .map(|t| {
                let peer = &t.crawled.peer_id;
                let failed_later = self
                    .failures
                    .get(peer)
                    .filter(|f| f.ts > t.ts)
                    .map(|f| (f.ts, format!("the crawler could not read it: {}", f.error)));
                let missed = latest_round
                    .filter(|r| r.began() > t.ts)
                    .map(|r| (r.ts, "the latest crawl did not find it".to_owned()));
                NodeLog {
                    name: format!("crawled:{}", crate::verdict::short_id(peer)),
                    peer_id: Some(peer.clone()),
                    role: Some(Role::Peer),
                    started: Some(t.ts),
                    first_started: Some(t.ts),
                    incarnations: 1,
                    last_event: Some(t.ts),
                    table: Some(Snapshot {
                        ts: t.ts,
                        reason: SnapshotReason::Crawl,
                        peers: t.peers.clone(),
                    }),
                    stopped: failed_later.or(missed),
                    agent_version: t.crawled.agent_version.clone(),
                    crawled_only: true,
                    ..NodeLog::default()
                }
            })
            .collect()
    }

    /// For each node that both logged a table and answered the crawler: the difference, against
    /// the table it logged as of the crawl. A table that changed while the crawler read it agrees
    /// when it equals the snapshot before the crawl or the one right after.
    pub fn compare(&self, nodes: &[&NodeLog]) -> Vec<TableComparison> {
        nodes
            .iter()
            .filter(|n| !n.crawled_only)
            .filter_map(|n| {
                let crawled = self.tables.get(n.peer_id.as_deref()?)?;
                let snapshots: Vec<&Snapshot> =
                    n.earlier_tables.iter().chain(n.table.as_ref()).collect();
                let before = snapshots.iter().rev().find(|s| s.ts <= crawled.ts);
                let after = snapshots.iter().find(|s| s.ts > crawled.ts);
                let ids = |peers: &[TableEntry]| -> BTreeSet<String> {
                    peers.iter().map(|p| p.peer_id.clone()).collect()
                };
                let c = ids(&crawled.peers);
                let agrees = |s: &&&Snapshot| ids(&s.peers) == c;
                let logged = before
                    .filter(agrees)
                    .or(after.filter(agrees))
                    .or(before)
                    .or(after)?;
                let l = ids(&logged.peers);
                Some(TableComparison {
                    name: n.name.clone(),
                    peer_id: n.peer_id.clone().unwrap_or_default(),
                    logged_at: logged.ts,
                    crawled_at: crawled.ts,
                    complete: crawled.crawled.complete,
                    only_logged: l.difference(&c).cloned().collect(),
                    only_crawled: c.difference(&l).cloned().collect(),
                })
            })
            .collect()
    }

    /// Peers the crawler tried and could not read, that no log and no crawled table describes:
    /// nothing here says whether they work. (A seed address that never answered names no peer;
    /// it is listed among the failures, and the nodes behind it are judged by their logs.)
    pub fn unobservable(&self, known: &HashSet<&str>) -> Vec<&CrawlFailure> {
        self.failures
            .values()
            .filter(|f| {
                f.peer_id
                    .as_deref()
                    .is_some_and(|p| !known.contains(p) && !self.tables.contains_key(p))
            })
            .collect()
    }
}

/// One node's logged table against its crawled one.
#[derive(Debug, Clone, Serialize)]
pub struct TableComparison {
    pub name: String,
    pub peer_id: String,
    pub logged_at: Timestamp,
    pub crawled_at: Timestamp,
    /// Whether the crawl read every bucket (otherwise `only_logged` may be the crawl's gap).
    pub complete: bool,
    /// Peers in the logged table the node did not answer with.
    pub only_logged: Vec<String>,
    /// Peers it answered with that its logged table lacks.
    pub only_crawled: Vec<String>,
}

impl TableComparison {
    pub fn agrees(&self) -> bool {
        self.only_logged.is_empty() && self.only_crawled.is_empty()
    }
}

/// The crawl's part of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CrawlSummary {
    /// Rounds finished, and the latest one.
    pub rounds: usize,
    pub latest: Option<CrawlRound>,
    /// Nodes whose table the crawler read.
    pub read: usize,
    /// Of those, nodes judged on the crawl alone (no log of ours), with what they run.
    pub crawled_only: Vec<CrawledMember>,
    /// Nodes with both a log and a crawled table, and those whose two tables differ.
    pub compared: usize,
    pub differing: Vec<TableComparison>,
    /// What the crawler could not read, latest failure each.
    pub failures: Vec<CrawlFailure>,
}

/// A node known only through the crawl.
#[derive(Debug, Clone, Serialize)]
pub struct CrawledMember {
    pub name: String,
    pub peer_id: String,
    pub agent_version: Option<String>,
    pub addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp(1_700_000_000_000 + ms)
    }

    fn table(peer: &str, peers: &[&str]) -> Event {
        Event::RoutingTable {
            reason: SnapshotReason::Crawl,
            size: peers.len(),
            peers: peers
                .iter()
                .map(|p| TableEntry {
                    peer_id: (*p).to_owned(),
                    bucket: 255,
                })
                .collect(),
            crawled: Some(Crawled {
                peer_id: peer.to_owned(),
                addr: Some("/ip4/10.0.0.9/tcp/4001".into()),
                agent_version: Some("py-libp2p/0.8.1".into()),
                requests: 2,
                complete: true,
            }),
        }
    }

    #[test]
    fn a_node_without_a_log_is_a_member_until_the_crawler_loses_it() {
        let mut crawl = CrawlLog::default();
        assert!(crawl.apply(at(0), table("F", &["A"])).is_none());
        let logged: HashSet<&str> = ["A"].into();
        let members = crawl.members(&logged);
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].peer_id.as_deref(), Some("F"));
        assert!(!members[0].is_down(), "read and never failed: live");
        assert_eq!(members[0].agent_version.as_deref(), Some("py-libp2p/0.8.1"));

        crawl.apply(
            at(5_000),
            Event::CrawlFailed {
                peer_id: Some("F".into()),
                addrs: vec![],
                error: "Connection refused".into(),
            },
        );
        let members = crawl.members(&logged);
        assert!(members[0].is_down(), "a later failure: gone");
        assert!(
            crawl.unobservable(&logged).is_empty(),
            "it answered once: departed, not unobservable"
        );
    }

    #[test]
    fn a_node_missing_from_a_whole_later_round_is_down() {
        let mut crawl = CrawlLog::default();
        crawl.apply(at(0), table("F", &[]));
        crawl.apply(
            at(30_000),
            Event::CrawlCompleted {
                nodes: 3,
                failed: 0,
                requests: 6,
                duration_ms: 1_000,
            },
        );
        assert!(crawl.members(&HashSet::new())[0].is_down());
    }

    #[test]
    fn peers_nobody_can_see_are_named_with_their_address() {
        let mut crawl = CrawlLog::default();
        crawl.apply(
            at(0),
            Event::CrawlFailed {
                peer_id: Some("G".into()),
                addrs: vec!["/ip4/10.0.0.7/tcp/4001".into()],
                error: "does not speak /ipfs/kad/1.0.0".into(),
            },
        );
        let unseen = crawl.unobservable(&HashSet::new());
        assert_eq!(unseen.len(), 1);
        assert_eq!(unseen[0].addrs, ["/ip4/10.0.0.7/tcp/4001"]);
        assert!(
            crawl.unobservable(&["G"].into()).is_empty(),
            "a log of its own makes it observable"
        );
    }

    #[test]
    fn comparison_names_what_each_side_lacks() {
        let mut crawl = CrawlLog::default();
        crawl.apply(at(10), table("A", &["B", "C"]));
        let mut node = NodeLog::new("peer_1");
        node.peer_id = Some("A".into());
        node.table = Some(Snapshot {
            ts: at(5),
            reason: SnapshotReason::Changed,
            peers: ["B", "D"]
                .iter()
                .map(|p| TableEntry {
                    peer_id: (*p).to_owned(),
                    bucket: 255,
                })
                .collect(),
        });
        let diffs = crawl.compare(&[&node]);
        assert_eq!(diffs.len(), 1);
        assert!(!diffs[0].agrees());
        assert_eq!(diffs[0].only_logged, ["D"]);
        assert_eq!(diffs[0].only_crawled, ["C"]);
    }

    #[test]
    fn a_crawl_is_compared_with_the_table_of_its_moment() {
        let entries = |ids: &[&str]| -> Vec<TableEntry> {
            ids.iter()
                .map(|p| TableEntry {
                    peer_id: (*p).to_owned(),
                    bucket: 255,
                })
                .collect()
        };
        let mut node = NodeLog::new("peer_1");
        node.peer_id = Some("A".into());
        // Logged: {B} at 5, {B, C} at 20 (latest). Crawled at 10: {B}, as it was then.
        node.earlier_tables.push_back(Snapshot {
            ts: at(5),
            reason: SnapshotReason::Changed,
            peers: entries(&["B"]),
        });
        node.table = Some(Snapshot {
            ts: at(20),
            reason: SnapshotReason::Changed,
            peers: entries(&["B", "C"]),
        });
        let mut crawl = CrawlLog::default();
        crawl.apply(at(10), table("A", &["B"]));
        assert!(crawl.compare(&[&node])[0].agrees());
        // Read while C was being added (the node logs after its debounce): the next one agrees.
        crawl.apply(at(15), table("A", &["B", "C"]));
        assert!(crawl.compare(&[&node])[0].agrees());
        // Neither: it differs, shown against the table before the crawl.
        crawl.apply(at(16), table("A", &["D"]));
        let diff = &crawl.compare(&[&node])[0];
        assert!(!diff.agrees());
        assert_eq!(
            (diff.logged_at, diff.only_logged.clone()),
            (at(5), vec!["B".to_owned()])
        );
    }
}
