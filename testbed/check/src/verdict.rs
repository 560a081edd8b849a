//! The verdict: a pure function from node logs to a [`Report`].
//!
//! No I/O and no clock: the same logs always give the same report, which is what lets the tests
//! pin every property and every explanation on captured runs and hand-made broken ones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use testbed_events::{Role, SnapshotReason, Timestamp, kad_key};

use crate::closest::ClosestIndex;
use crate::crawl::{CrawlFailure, CrawlLog, CrawlSummary, CrawledMember, TableComparison};

use crate::ingest::{LineStats, NodeLog};

/// Thresholds and switches, one flag each (see the binary's `--help`).
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Every live peer must be in at least this many other live nodes' tables.
    pub min_seen: usize,
    /// Also require every node to know every other (meaningful while N ≤ bucket size).
    pub full_mesh: bool,
    /// k of the k-closest health property.
    pub closest_k: usize,
    /// Share of live nodes that must hold all of their k closest live peers, 0.0..=1.0.
    pub closest_threshold: f64,
    /// Fail unless exactly this many nodes are live.
    pub expect_nodes: Option<usize>,
    /// Logs where every node stopped, and no shutdown moment is known: nodes that stopped within
    /// this gap of each other at the end, and after every node's latest (re)start, stopped *with
    /// the run* and are judged on their state before the shutdown.
    pub shutdown_gap: Duration,
    /// When the run's own shutdown began, if it is known (`testbed up` records it in run.json):
    /// nodes down before it departed, nodes down at or after it stopped with the run.
    pub shutdown_at: Option<Timestamp>,
    /// Judge the network as it stood at this instant (`--at`), not at the end of the logs.
    pub at: Option<At>,
    /// Two groups of nodes that must hold each other ([`PropertyId::Across`]): after a
    /// partition heals, say.
    pub across: Option<Across>,
}

/// Two named groups of nodes, by log name (`bootstrap`, `peer_3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Across {
    pub a: (String, Vec<String>),
    pub b: (String, Vec<String>),
}

/// An instant to judge (`--at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// A wall-clock time.
    Time(Timestamp),
    /// This long after the first node started (`+90s`).
    AfterFirstStart(Duration),
}

/// `--at`: RFC 3339 (`2026-11-25T10:00:00Z`) or `+DURATION` after the first node's start.
pub fn parse_at(s: &str) -> Result<At, String> {
    let s = s.trim();
    match s.strip_prefix('+') {
        Some(d) => humantime::parse_duration(d.trim())
            .map(At::AfterFirstStart)
            .map_err(|e| format!("{s:?}: {e} (expected +DURATION such as +90s, or a time such as 2026-11-25T10:00:00Z)")),
        None => Timestamp::parse_rfc3339(s)
            .map(At::Time)
            .map_err(|e| format!("{e}, or +DURATION after the first node started, such as +90s")),
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            min_seen: 1,
            full_mesh: false,
            closest_k: 20,
            closest_threshold: DEFAULT_CLOSEST_THRESHOLD,
            expect_nodes: None,
            shutdown_gap: Duration::from_secs(10),
            shutdown_at: None,
            at: None,
            across: None,
        }
    }
}

/// The default k-closest threshold. A healthy testbed network reaches 100 % (see BENCHMARKS.md);
/// 90 % leaves room for the few nodes still finishing a lookup when the check runs. (ProbeLab
/// measured 61 % on the public IPFS DHT, which is far from a lab network.)
pub const DEFAULT_CLOSEST_THRESHOLD: f64 = 0.9;

/// How a node is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Running: must be seen, must know peers.
    Live,
    /// Stopped in the shutdown that ended the run: judged on its state before it.
    StoppedWithRun,
    /// Left while the others ran (stopped or exited): not required; entries for it are stale.
    Departed,
}

impl NodeState {
    fn judged(self) -> bool {
        self != NodeState::Departed
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub peer_id: String,
    pub role: Option<Role>,
    pub state: NodeState,
    pub restarts: u32,
    /// Peers in its latest table (all of them).
    pub table_size: usize,
    /// Judged (live) peers in its latest table.
    pub live_in_table: usize,
    /// Judged nodes whose latest table holds this node.
    pub seen_by: usize,
    /// Of its k closest live peers, how many its table holds.
    pub closest_found: usize,
    pub closest_wanted: usize,
    /// Whether its initial Kademlia bootstrap completed (always true for the bootstrap node).
    pub bootstrapped: bool,
}

/// Whether a property held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Not asked for.
    Skipped,
}

/// The properties the checker judges. Written as snake_case (`node_count`, `seen`, …) in the
/// JSON and JUnit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropertyId {
    /// `--expect-nodes N`: exactly N nodes are live.
    NodeCount,
    /// Every live peer is in at least `--min-seen` other live nodes' tables.
    Seen,
    /// Every live node's table holds a live peer.
    Tables,
    /// `--full-mesh`: every live node knows every other.
    FullMesh,
    /// At least `--closest-threshold` of live nodes hold all of their k closest live peers.
    Closest,
    /// Every live node of group A holds those of its k closest live peers that are in group B,
    /// and the other way round (scenarios: the two sides of a partition hold each other again).
    Across,
    /// With a crawl: every peer the crawler met wrote a log or answered it (none unobservable).
    Observable,
}

impl PropertyId {
    /// The id as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyId::NodeCount => "node_count",
            PropertyId::Seen => "seen",
            PropertyId::Tables => "tables",
            PropertyId::FullMesh => "full_mesh",
            PropertyId::Closest => "closest",
            PropertyId::Across => "across",
            PropertyId::Observable => "observable",
        }
    }
}

impl std::fmt::Display for PropertyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One property's result: `holds` of `of` items passed.
#[derive(Debug, Clone, Serialize)]
pub struct PropertyResult {
    pub id: PropertyId,
    pub title: String,
    pub status: Status,
    pub holds: usize,
    pub of: usize,
    /// One line per failing item: node, expected, found, and why when the logs say.
    pub failures: Vec<String>,
}

/// k-closest health over the network.
#[derive(Debug, Clone, Serialize)]
pub struct ClosestSummary {
    pub k: usize,
    /// Live nodes whose table holds all of their k closest live peers.
    pub complete: usize,
    pub of: usize,
    /// `complete / of`.
    pub share: f64,
    /// Mean over nodes of (closest peers held / closest peers wanted).
    pub mean_coverage: f64,
    pub threshold: f64,
}

impl ClosestSummary {
    /// `11 of 11 nodes (100.0 %) hold all of their 20 closest live peers; mean coverage 100.0 %`:
    /// the one wording every report uses.
    pub fn sentence(&self) -> String {
        format!(
            "{} of {} nodes ({:.1} %) hold all of their {} closest live peers; mean coverage {:.1} %",
            self.complete,
            self.of,
            self.share * 100.0,
            self.k,
            self.mean_coverage * 100.0
        )
    }
}

/// How full one k-bucket is across the judged nodes, against what Kademlia predicts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BucketFill {
    /// 255 holds the farthest half of the key space, 254 the next quarter, …
    pub bucket: u32,
    /// Mean entries per judged node.
    pub mean: f64,
    /// `min(k, (N - 1) · 2^-(256 - bucket))`: the peers that fall in it at random, capped at k
    /// (ProbeLab RFM19).
    pub expected: f64,
}

/// Bucket fill over the judged nodes' latest tables, from the farthest bucket down to the
/// nearest one that anyone holds or should hold (expected ≥ 0.5).
fn bucket_fill(nodes: &[&NodeLog], judged: &[usize], k: usize) -> Vec<BucketFill> {
    let mut totals = [0u64; 256];
    for &i in judged {
        for entry in nodes[i].table.iter().flat_map(|t| &t.peers) {
            if let Some(slot) = totals.get_mut(entry.bucket as usize) {
                *slot += 1;
            }
        }
    }
    let n = judged.len();
    let others = n.saturating_sub(1) as f64;
    let all: Vec<BucketFill> = (0..=255u32)
        .rev()
        .map(|bucket| BucketFill {
            bucket,
            mean: totals[bucket as usize] as f64 / n.max(1) as f64,
            expected: (others * 0.5f64.powi(256 - bucket as i32)).min(k as f64),
        })
        .collect();
    let nearest = all
        .iter()
        .filter(|b| b.mean > 0.0 || b.expected >= 0.5)
        .map(|b| b.bucket)
        .min()
        .unwrap_or(255);
    all.into_iter().filter(|b| b.bucket >= nearest).collect()
}

/// Routing-table entries of judged nodes that point at peers that are gone: departed nodes,
/// and earlier identities of restarted nodes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StaleSummary {
    pub entries: usize,
    /// Tables holding at least one.
    pub tables: usize,
    /// Distinct gone peers they point at.
    pub peers: usize,
    pub departed: usize,
    pub former_identities: usize,
    /// When the peer of the oldest such entry left.
    pub oldest_since: Option<Timestamp>,
    /// How long that entry had lingered by the latest snapshot judged.
    pub lingered_ms: Option<u64>,
}

/// Where the verdict came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InputSummary {
    /// Logs read (containers, files or `compose logs` prefixes).
    pub logs: usize,
    pub lines: LineStats,
    /// Some bad lines, quoted.
    pub samples: Vec<String>,
}

/// The whole verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    /// Nodes judged (live, or stopped with the run).
    pub live: usize,
    pub departed: usize,
    /// Set when every node had stopped: the run is judged on its state before the shutdown.
    pub judged_before_shutdown: bool,
    /// The instant judged, when `--at` asked for one: only events up to it were read.
    pub at: Option<Timestamp>,
    pub nodes: Vec<NodeReport>,
    pub properties: Vec<PropertyResult>,
    pub closest: ClosestSummary,
    /// Entries in live tables that point at departed nodes or at earlier identities of
    /// restarted ones.
    pub stale: StaleSummary,
    /// k-bucket fill against Kademlia's expectation.
    pub buckets: Vec<BucketFill>,
    /// What `testbed-crawl` read over the wire, when a log held a crawl.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crawl: Option<CrawlSummary>,
    pub warnings: Vec<String>,
    pub input: InputSummary,
}

impl Report {
    /// The property with this id.
    pub fn property(&self, id: PropertyId) -> Option<&PropertyResult> {
        self.properties.iter().find(|p| p.id == id)
    }

    /// Properties that were checked and held, and those checked.
    pub fn tally(&self) -> (usize, usize) {
        let checked = self
            .properties
            .iter()
            .filter(|p| p.status != Status::Skipped);
        let n = checked.clone().count();
        (checked.filter(|p| p.status == Status::Pass).count(), n)
    }
}

/// Judges the network described by `logs`.
pub fn check(logs: &[&NodeLog], opts: &CheckOptions, input: InputSummary) -> Report {
    let mut warnings = Vec::new();
    // Tables read over the wire by testbed-crawl, when a log holds some: nodes that answered it
    // but wrote no log of ours are judged on them.
    let crawl = CrawlLog::merged(logs.iter().map(|l| &l.crawl));
    let logged: HashSet<&str> = logs
        .iter()
        .flat_map(|l| {
            l.peer_id
                .as_deref()
                .into_iter()
                .chain(l.former_ids.iter().map(|(id, _)| id.as_str()))
        })
        .collect();
    let members = crawl.members(&logged);
    // Kademlia servers the nodes identified and connected to, that no log and no crawl
    // describes: another implementation, run without the crawler.
    let known: HashSet<&str> = logged
        .iter()
        .copied()
        .chain(members.iter().filter_map(|m| m.peer_id.as_deref()))
        .collect();
    let identified = identified_members(logs, &known);
    if !identified.is_empty() {
        let names: Vec<String> = identified
            .iter()
            .map(|n| {
                format!(
                    "{} ({})",
                    n.peer_id.as_deref().unwrap_or_default(),
                    n.agent_version.as_deref().unwrap_or("?")
                )
            })
            .collect();
        warnings.push(format!(
            "{} Kademlia servers wrote no log here and were not crawled, known only because nodes \
             identified them: {}. They are judged as peers the others must hold, not on tables of \
             their own (the crawler reads those: compose/crawl.yml)",
            names.len(),
            abbreviated(&names, 5)
        ));
    }
    let logs: Vec<&NodeLog> = logs
        .iter()
        .copied()
        .chain(&members)
        .chain(&identified)
        .collect();
    let nodes = identified_nodes(&logs, &mut warnings);
    let (states, shutdown) = classify(&nodes, opts.shutdown_gap, opts.shutdown_at);
    let judged_before_shutdown = shutdown.all_down;

    let judged: Vec<usize> = (0..nodes.len()).filter(|&i| states[i].judged()).collect();
    let index_of: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.peer_id.as_deref().unwrap_or_default(), i))
        .collect();

    // Earlier identities of restarted nodes, and when each went away.
    let former: HashMap<&str, Timestamp> = nodes
        .iter()
        .flat_map(|n| n.former_ids.iter().map(|(id, t)| (id.as_str(), *t)))
        .collect();

    // Who is in whose table.
    let mut seen_by = vec![0usize; nodes.len()];
    let mut live_in_table = vec![0usize; nodes.len()];
    let mut tables: Vec<HashSet<usize>> = vec![HashSet::new(); nodes.len()];
    let mut stale = StaleSummary::default();
    let mut stale_tables = HashSet::new();
    let mut stale_peers = HashSet::new();
    let mut unknown_entries = 0;
    let mut unknown_peers = std::collections::BTreeSet::new();
    for &i in &judged {
        let Some(table) = &nodes[i].table else {
            continue;
        };
        // A node stopped with the run is judged on its table before the shutdown: peers it took
        // out because *they* stopped with the run count as held (see `NodeLog::removed`).
        let put_back = shutdown
            .began
            .filter(|_| states[i] == NodeState::StoppedWithRun)
            .map(|began| {
                nodes[i]
                    .removed
                    .iter()
                    .filter(move |(_, t)| *t >= began)
                    .filter_map(|(peer, _)| index_of.get(peer.as_str()).copied())
                    .filter(|&j| states[j] == NodeState::StoppedWithRun)
            })
            .into_iter()
            .flatten();
        for j in put_back {
            if j != i && tables[i].insert(j) {
                seen_by[j] += 1;
                live_in_table[i] += 1;
            }
        }
        for entry in &table.peers {
            let gone_since = match index_of.get(entry.peer_id.as_str()) {
                Some(&j) if j == i => continue,
                Some(&j) if states[j].judged() => {
                    if tables[i].insert(j) {
                        seen_by[j] += 1;
                        live_in_table[i] += 1;
                    }
                    continue;
                }
                Some(&j) => {
                    stale.departed += 1;
                    nodes[j].down_at()
                }
                None => match former.get(entry.peer_id.as_str()) {
                    Some(&t) => {
                        stale.former_identities += 1;
                        Some(t)
                    }
                    None => {
                        unknown_entries += 1;
                        unknown_peers.insert(entry.peer_id.as_str());
                        continue;
                    }
                },
            };
            stale.entries += 1;
            stale_tables.insert(i);
            stale_peers.insert(entry.peer_id.as_str());
            if let Some(t) = gone_since {
                stale.oldest_since = Some(stale.oldest_since.map_or(t, |o: Timestamp| o.min(t)));
            }
        }
    }
    stale.tables = stale_tables.len();
    stale.peers = stale_peers.len();
    let latest_snapshot = judged
        .iter()
        .filter_map(|&i| nodes[i].table.as_ref().map(|t| t.ts))
        .max();
    stale.lingered_ms = stale
        .oldest_since
        .zip(latest_snapshot)
        .map(|(since, latest)| latest.millis_since(since));
    if stale.entries > 0 {
        let lingered = stale
            .lingered_ms
            .map(|ms| {
                format!(
                    "; the oldest still held {:.1} s after its peer left (at the latest snapshot)",
                    ms as f64 / 1000.0
                )
            })
            .unwrap_or_default();
        warnings.push(format!(
            "stale: {} routing-table entries in {} live tables point at {} gone peers ({} \
             entries at departed nodes, {} at earlier identities of restarted nodes){lingered}. \
             Not an error: Kademlia drops an entry only when its bucket needs the room",
            stale.entries, stale.tables, stale.peers, stale.departed, stale.former_identities
        ));
    }
    if unknown_entries > 0 {
        let named: Vec<String> = unknown_peers.iter().map(|p| short_id(p)).collect();
        warnings.push(format!(
            "{unknown_entries} routing-table entries point at {} peers with no log here: {} (not an \
             error if some logs were left out)",
            named.len(),
            abbreviated(&named, 5)
        ));
    }

    let closest = closest_coverage(&nodes, &judged, &tables, opts.closest_k, &mut warnings);
    // The judged nodes whose table is known: all but those known only through Identify.
    let holders: Vec<usize> = judged
        .iter()
        .copied()
        .filter(|&i| nodes[i].has_table())
        .collect();
    let ctx = Context {
        nodes: &nodes,
        judged: &judged,
        holders: &holders,
        latest_snapshot,
    };

    let mut properties = Vec::new();
    if let Some(expected) = opts.expect_nodes {
        properties.push(node_count(&ctx, expected));
    }
    properties.push(seen(&ctx, &seen_by, opts.min_seen));
    properties.push(tables_hold_a_peer(&ctx, &live_in_table));
    properties.push(full_mesh(&ctx, &tables, &live_in_table, opts.full_mesh));
    properties.push(closest_peers(
        &ctx,
        &closest,
        opts.closest_k,
        opts.closest_threshold,
    ));
    if let Some(across) = &opts.across {
        properties.push(held_across(&ctx, &closest.index, &tables, across));
    }
    let crawl_summary = (!crawl.is_empty()).then(|| {
        properties.push(observable(&crawl, &known));
        crawl_summary(&crawl, &nodes, &judged, &mut warnings)
    });

    if judged.is_empty() {
        let why = if nodes.is_empty() {
            "no log holds a node_started event".to_owned()
        } else {
            format!("all {} nodes departed", nodes.len())
        };
        for p in properties
            .iter_mut()
            .filter(|p| p.status != Status::Skipped)
        {
            p.status = Status::Fail;
            p.failures
                .insert(0, format!("no live nodes to judge: {why}"));
        }
    }

    let passed = properties.iter().all(|p| p.status != Status::Fail);
    let node_reports = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeReport {
            name: n.name.clone(),
            peer_id: n.peer_id.clone().unwrap_or_default(),
            role: n.role,
            state: states[i],
            restarts: n.incarnations.saturating_sub(1),
            table_size: n.table.as_ref().map_or(0, |t| t.peers.len()),
            live_in_table: live_in_table[i],
            seen_by: seen_by[i],
            closest_found: closest.found[i],
            closest_wanted: closest.wanted[i],
            // Not known for a node without a log: nothing to wait for.
            bootstrapped: n.role == Some(Role::Bootstrap)
                || n.initial_bootstrap.is_some()
                || !n.is_log(),
        })
        .collect();
    Report {
        passed,
        live: judged.len(),
        departed: nodes.len() - judged.len(),
        judged_before_shutdown,
        at: None,
        nodes: node_reports,
        properties,
        closest: ClosestSummary {
            k: opts.closest_k,
            complete: closest.complete,
            of: holders.len(),
            share: closest.share,
            mean_coverage: closest.mean,
            threshold: opts.closest_threshold,
        },
        stale,
        buckets: bucket_fill(&nodes, &holders, opts.closest_k),
        crawl: crawl_summary,
        warnings,
        input,
    }
}

/// Kademlia servers that the nodes' logs saw identify (`kad: true`), that are not in `known`
/// (no log, no crawl), as stand-in logs without a table. One is live while a live node holds a
/// connection to it (kad-node keeps those to its k closest open); else it went down when the last
/// such connection closed, and entries still pointing at it are stale.
fn identified_members(logs: &[&NodeLog], known: &HashSet<&str>) -> Vec<NodeLog> {
    let observers: Vec<&NodeLog> = logs.iter().copied().filter(|l| l.is_log()).collect();
    let end = observers.iter().filter_map(|l| l.last_event).max();
    let mut agents: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for log in &observers {
        for (peer, agent) in &log.kad_servers {
            if !known.contains(peer.as_str()) {
                agents.entry(peer.as_str()).or_insert(agent.as_str());
            }
        }
    }
    agents
        .into_iter()
        .map(|(peer, agent)| {
            let mut live = false;
            let mut gone: Option<Timestamp> = None;
            for log in &observers {
                let Some(&(open, at)) = log.links.get(peer) else {
                    continue;
                };
                let observer_down = end.map_or(log.is_down(), |now| log.is_down_as_of(now));
                if open > 0 && !observer_down {
                    live = true;
                } else {
                    let t = if open > 0 {
                        log.down_at().unwrap_or(at)
                    } else {
                        at
                    };
                    gone = Some(gone.map_or(t, |g| g.max(t)));
                }
            }
            NodeLog {
                name: format!("identified:{}", short_id(peer)),
                peer_id: Some(peer.to_owned()),
                role: Some(Role::Peer),
                incarnations: 1,
                agent_version: Some(agent.to_owned()),
                identified_only: true,
                stopped: (!live).then(|| {
                    (
                        gone.unwrap_or_default(),
                        "no live node holds a connection to it".to_owned(),
                    )
                }),
                ..NodeLog::default()
            }
        })
        .collect()
}

/// `observable`: every peer the crawler tried is described by a log or by what it answered.
fn observable(crawl: &CrawlLog, known: &HashSet<&str>) -> PropertyResult {
    let unseen = crawl.unobservable(known);
    let of = crawl.tables.len() + unseen.len();
    let failures = unseen
        .iter()
        .map(|f| {
            format!(
                "{} at {}: no log here, and the crawler could not read its table: {}",
                f.peer_id
                    .as_deref()
                    .map_or_else(|| "?".to_owned(), short_id),
                if f.addrs.is_empty() {
                    "no known address".to_owned()
                } else {
                    f.addrs.join(", ")
                },
                f.error
            )
        })
        .collect::<Vec<_>>();
    PropertyResult {
        id: PropertyId::Observable,
        title: "every peer the crawler met wrote a log or answered FIND_NODE".to_owned(),
        status: if failures.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        holds: of - failures.len(),
        of,
        failures,
    }
}

/// The crawl's section of the report, and a warning when nodes answered other than they logged.
fn crawl_summary(
    crawl: &CrawlLog,
    nodes: &[&NodeLog],
    judged: &[usize],
    warnings: &mut Vec<String>,
) -> CrawlSummary {
    let judged_nodes: Vec<&NodeLog> = judged.iter().map(|&i| nodes[i]).collect();
    let comparisons = crawl.compare(&judged_nodes);
    let differing: Vec<TableComparison> = comparisons
        .iter()
        .filter(|c| !c.agrees())
        .cloned()
        .collect();
    if !differing.is_empty() {
        warnings.push(format!(
            "crawl: {} of {} nodes answered FIND_NODE with other peers than their latest logged \
             table holds ({}); a table that changed between the snapshot and the crawl differs \
             too, see the crawl section for both instants",
            differing.len(),
            comparisons.len(),
            abbreviated(
                &differing
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>(),
                5
            )
        ));
    }
    let mut failures: Vec<CrawlFailure> = crawl.failures.values().cloned().collect();
    failures.sort_by_key(|f| f.ts);
    CrawlSummary {
        rounds: crawl.rounds.len(),
        latest: crawl.rounds.last().copied(),
        read: crawl.tables.len(),
        crawled_only: nodes
            .iter()
            .filter(|n| n.crawled_only)
            .map(|n| {
                let peer = n.peer_id.clone().unwrap_or_default();
                CrawledMember {
                    name: n.name.clone(),
                    addr: crawl.tables.get(&peer).and_then(|t| t.crawled.addr.clone()),
                    agent_version: n.agent_version.clone(),
                    peer_id: peer,
                }
            })
            .collect(),
        compared: comparisons.len(),
        differing,
        failures,
    }
}

/// Logs that name a node; duplicates of one peer id keep the latest incarnation.
fn identified_nodes<'a>(logs: &[&'a NodeLog], warnings: &mut Vec<String>) -> Vec<&'a NodeLog> {
    let mut by_peer: HashMap<&str, &NodeLog> = HashMap::new();
    let mut nameless = Vec::new();
    let mut silent = Vec::new();
    for &log in logs {
        let Some(peer) = log.peer_id.as_deref() else {
            if log.lines.events > 0 && log.crawl.is_empty() {
                nameless.push(log.name.as_str());
            } else if log.lines.events == 0 && log.lines.lines > 1 {
                // A container that writes plain text: another implementation, or a crash
                // message. (One line alone is a `compose logs` banner.)
                silent.push(format!("{} ({} lines)", log.name, log.lines.lines));
            }
            continue;
        };
        match by_peer.get(peer) {
            Some(other) => {
                warnings.push(format!(
                    "{} and {} are the same node ({}); using the later one",
                    other.name, log.name, peer
                ));
                if log.started > other.started {
                    by_peer.insert(peer, log);
                }
            }
            None => {
                by_peer.insert(peer, log);
            }
        }
    }
    if !nameless.is_empty() {
        warnings.push(format!(
            "{} logs have events but no node_started (it may have been rotated away), so they \
             cannot be judged: {}",
            nameless.len(),
            abbreviated(&nameless, 5)
        ));
    }
    if !silent.is_empty() {
        warnings.push(format!(
            "{} logs hold no kad-testbed event, so they are not judged as logs: {}. A node of \
             another implementation is judged through the crawler (compose/crawl.yml, --crawl)",
            silent.len(),
            abbreviated(&silent, 5)
        ));
    }
    let mut nodes: Vec<&NodeLog> = by_peer.into_values().collect();
    nodes.sort_by_key(|n| node_order(n));
    nodes
}

/// Bootstrap first, then by name with numbers in numeric order (peer_2 before peer_10).
fn node_order(n: &NodeLog) -> (bool, Vec<NameChunk>) {
    (n.role != Some(Role::Bootstrap), natural_key(&n.name))
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NameChunk {
    Text(String),
    Number(u64),
}

fn natural_key(s: &str) -> Vec<NameChunk> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            out.push(NameChunk::Number(
                rest[..digits].parse().unwrap_or(u64::MAX),
            ));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            out.push(NameChunk::Text(rest[..text].to_owned()));
            rest = &rest[text..];
        }
    }
    out
}

/// Each node's state, and whether the whole run had shut down.
///
/// The rule: a node is down when it wrote `node_stopping`, when Docker says its container is not
/// running, or when its log went silent for [`SILENT_HEARTBEATS`] of its heartbeats before the
/// end of the logs (killed, paused or crashed). A node that is down either departed while the
/// others ran, or stopped with the run. When the moment the run's shutdown began is known
/// (`shutdown_at`), that moment decides. Otherwise, once every node is down, the run's shutdown
/// is guessed as the last wave of stops (each within `gap` of the next), and the wave never
/// reaches back past any node's (re)start: a stop followed by a node starting was churn, not the
/// shutdown.
///
/// [`SILENT_HEARTBEATS`]: crate::ingest::SILENT_HEARTBEATS
fn classify(
    nodes: &[&NodeLog],
    gap: Duration,
    shutdown_at: Option<Timestamp>,
) -> (Vec<NodeState>, Shutdown) {
    let end_of_logs = nodes.iter().filter_map(|n| n.last_event).max();
    let down: Vec<bool> = nodes
        .iter()
        .map(|n| end_of_logs.map_or(n.is_down(), |now| n.is_down_as_of(now)))
        .collect();
    // Whether the run is over is for the nodes' own logs to say: a node known only from a crawl
    // is merely not read since the last round (the crawler stops with the run too).
    let logged = nodes.iter().zip(&down).filter(|(n, _)| n.is_log());
    let all_down = match logged.clone().count() {
        0 => !nodes.is_empty() && down.iter().all(|d| *d),
        _ => logged.clone().all(|(_, d)| *d),
    };
    let wave_start = match shutdown_at {
        Some(at) => Some(at),
        None => all_down.then(|| last_wave_of_stops(nodes, gap)),
    };
    let states = nodes
        .iter()
        .zip(&down)
        .map(|(n, down)| match (down, wave_start) {
            (false, Some(_)) if all_down && !n.is_log() => NodeState::StoppedWithRun,
            (false, _) => NodeState::Live,
            (true, Some(start)) if n.down_at().is_some_and(|t| t >= start) => {
                NodeState::StoppedWithRun
            }
            (true, _) => NodeState::Departed,
        })
        .collect();
    (
        states,
        Shutdown {
            began: wave_start,
            all_down,
        },
    )
}

/// The run's own shutdown, as [`classify`] found it.
struct Shutdown {
    /// When it began (recorded, or guessed once every node is down).
    began: Option<Timestamp>,
    /// Every node is down: the live ones are judged on their state before the shutdown.
    all_down: bool,
}

/// When the last wave of stops began (see [`wave_start`]).
fn last_wave_of_stops(nodes: &[&NodeLog], gap: Duration) -> Timestamp {
    let latest_start = nodes.iter().filter_map(|n| n.started).max();
    let downs = nodes.iter().filter_map(|n| n.down_at()).collect();
    wave_start(downs, latest_start, gap).unwrap_or_default()
}

/// When the last wave of `downs` began: walking back from the last one while they are within
/// `gap` of each other, and never past `latest_start`, the latest (re)start of any node. The
/// verdict's and the timeline's guess of a run's own shutdown.
pub(crate) fn wave_start(
    mut downs: Vec<Timestamp>,
    latest_start: Option<Timestamp>,
    gap: Duration,
) -> Option<Timestamp> {
    downs.sort_unstable_by(|a, b| b.cmp(a));
    let gap_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
    let mut start = *downs.first()?;
    for t in downs.into_iter().skip(1) {
        if start.millis_since(t) > gap_ms || latest_start.is_some_and(|s| t < s) {
            break;
        }
        start = t;
    }
    Some(start)
}

struct Closest {
    /// Each keyed judged node's k closest judged peers.
    index: ClosestIndex<usize>,
    found: Vec<usize>,
    wanted: Vec<usize>,
    complete: usize,
    share: f64,
    mean: f64,
}

/// For each judged node: how many of its k XOR-closest judged peers its table holds (through
/// the same [`ClosestIndex`] as the timeline).
fn closest_coverage(
    nodes: &[&NodeLog],
    judged: &[usize],
    tables: &[HashSet<usize>],
    k: usize,
    warnings: &mut Vec<String>,
) -> Closest {
    let mut index = ClosestIndex::new(k);
    let mut keyed = Vec::with_capacity(judged.len());
    for &i in judged {
        let peer = nodes[i].peer_id.as_deref().unwrap_or_default();
        match kad_key(peer) {
            Ok(key) => {
                index.join(i, key);
                keyed.push(i);
            }
            Err(e) => warnings.push(format!("{}: {e}; left out of k-closest", nodes[i].name)),
        }
    }
    let mut found = vec![0; nodes.len()];
    let mut wanted = vec![0; nodes.len()];
    let mut complete = 0;
    let mut coverage_sum = 0.0;
    // Every judged node is a peer others must hold; only those whose table is known hold.
    let holders = keyed.into_iter().filter(|&i| nodes[i].has_table());
    for i in holders {
        let (held, want) = index.held(i, |j| tables[i].contains(&j));
        if want == 0 {
            continue;
        }
        found[i] = held;
        wanted[i] = want;
        coverage_sum += held as f64 / want as f64;
        if held == want {
            complete += 1;
        }
    }
    let n = judged.iter().filter(|&&i| nodes[i].has_table()).count();
    let share = if n == 0 {
        0.0
    } else {
        complete as f64 / n as f64
    };
    let mean = if n == 0 { 0.0 } else { coverage_sum / n as f64 };
    Closest {
        index,
        found,
        wanted,
        complete,
        share,
        mean,
    }
}

/// What the evidence explains about a node.
struct Context<'a> {
    nodes: &'a [&'a NodeLog],
    judged: &'a [usize],
    /// Of `judged`, those whose table is known (see [`NodeLog::has_table`]).
    holders: &'a [usize],
    latest_snapshot: Option<Timestamp>,
}

impl Context<'_> {
    /// Why no (or too few) tables hold node `i`.
    fn why_unseen(&self, i: usize) -> Vec<String> {
        let node = self.nodes[i];
        let peer = node.peer_id.as_deref().unwrap_or_default();
        let mut why = Vec::new();
        if let (Some(started), Some(latest)) = (node.started, self.latest_snapshot) {
            let others_latest = self
                .judged
                .iter()
                .filter(|&&j| j != i)
                .filter_map(|&j| self.nodes[j].table.as_ref().map(|t| t.ts))
                .max()
                .unwrap_or(latest);
            if started > others_latest {
                why.push(format!(
                    "it started at {started}, after the other nodes' latest snapshots ({others_latest}); \
                     check again later or with --wait"
                ));
            }
        }
        let connected_from = self.count_others(i, |o| o.connected.contains(peer));
        if connected_from == 0 && node.connected.is_empty() {
            why.push("it never connected to any node".into());
        }
        let routed = self.count_others(i, |o| o.routed.contains(peer));
        let unroutable = self.count_others(i, |o| {
            o.unroutable.contains(peer) && !o.routed.contains(peer)
        });
        if unroutable > 0 {
            why.push(format!(
                "{unroutable} nodes saw it only as unroutable (connected, but identify gave no \
                 dialable address)"
            ));
        }
        let no_kad = self.count_others(i, |o| o.no_kad.contains(peer));
        if no_kad > 0 {
            why.push(format!(
                "{no_kad} nodes saw it identify without the Kademlia protocol (client mode?)"
            ));
        }
        why.extend(dial_evidence(node));
        if why.is_empty() {
            why.push(format!(
                "{} nodes connected to it and {routed} added it to their table, yet no latest \
                 table holds it (evicted from full buckets?)",
                connected_from.max(node.connected.len())
            ));
        }
        why
    }

    /// Why node `i` knows no live peer.
    fn why_empty(&self, i: usize) -> Vec<String> {
        let node = self.nodes[i];
        let mut why = Vec::new();
        match &node.table {
            None => why.push("it wrote no routing_table yet".into()),
            Some(t) if t.reason == SnapshotReason::Shutdown => {}
            Some(_) => {}
        }
        if node.connected.is_empty() {
            why.push("it never connected to any node".into());
        }
        why.extend(dial_evidence(node));
        if node.role == Some(Role::Peer) && node.initial_bootstrap.is_none() {
            why.push("it never completed its initial Kademlia bootstrap".into());
        }
        why
    }

    fn count_others(&self, i: usize, f: impl Fn(&NodeLog) -> bool) -> usize {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, o)| *j != i && f(o))
            .count()
    }
}

fn dial_evidence(node: &NodeLog) -> Vec<String> {
    let mut why = Vec::new();
    if node.bootstrap_dial_failures > 0 && node.connected.is_empty() {
        why.push(format!(
            "its bootstrap dials failed {} times, last: {}",
            node.bootstrap_dial_failures,
            node.last_bootstrap_error.as_deref().unwrap_or("?")
        ));
    }
    if node.dial_failures > 0 {
        why.push(format!(
            "{} of its dials failed, last: {}",
            node.dial_failures,
            node.last_dial_error.as_deref().unwrap_or("?")
        ));
    }
    why
}

/// [`PropertyId::NodeCount`]: exactly `expected` nodes are live.
fn node_count(ctx: &Context, expected: usize) -> PropertyResult {
    // Nodes known from their own log or a crawl. A peer known only because others identified it
    // counts for `seen`, not here: a node whose log is missing must not pass for present.
    let live = ctx.holders.len();
    let unlogged = ctx.judged.len() - live;
    let failures = if live == expected {
        vec![]
    } else {
        let also = if unlogged > 0 {
            format!(
                "; also {unlogged} live Kademlia servers known only from Identify, not counted \
                 (no log of theirs here: run the crawler to count them, compose/crawl.yml)"
            )
        } else {
            String::new()
        };
        vec![format!(
            "expected {expected} live nodes, found {live} ({} logs with a node, {} departed){also}",
            ctx.nodes.len() - unlogged,
            ctx.nodes.len() - ctx.judged.len()
        )]
    };
    property(
        PropertyId::NodeCount,
        format!("{expected} nodes are live"),
        live.min(expected),
        expected,
        failures,
        true,
    )
}

/// [`PropertyId::Seen`]: every live peer is in at least `min_seen` other live nodes' tables.
fn seen(ctx: &Context, seen_by: &[usize], min_seen: usize) -> PropertyResult {
    let failures: Vec<String> = ctx
        .judged
        .iter()
        .filter(|&&i| seen_by[i] < min_seen)
        .map(|&i| {
            format!(
                "{}: in {} other routing tables, expected ≥ {min_seen}{}",
                label(ctx.nodes[i]),
                seen_by[i],
                because(&ctx.why_unseen(i))
            )
        })
        .collect();
    property(
        PropertyId::Seen,
        format!("every live peer is in ≥ {min_seen} other node's routing table"),
        ctx.judged.len() - failures.len(),
        ctx.judged.len(),
        failures,
        true,
    )
}

/// [`PropertyId::Tables`]: every live node's table holds a live peer.
fn tables_hold_a_peer(ctx: &Context, live_in_table: &[usize]) -> PropertyResult {
    let failures: Vec<String> = ctx
        .holders
        .iter()
        .filter(|&&i| live_in_table[i] == 0)
        .map(|&i| {
            format!(
                "{}: routing table holds 0 live peers, expected ≥ 1{}",
                label(ctx.nodes[i]),
                because(&ctx.why_empty(i))
            )
        })
        .collect();
    property(
        PropertyId::Tables,
        "every live node's routing table holds a live peer".into(),
        ctx.holders.len() - failures.len(),
        ctx.holders.len(),
        failures,
        true,
    )
}

/// [`PropertyId::FullMesh`]: every live node knows every other (only when `enabled`).
fn full_mesh(
    ctx: &Context,
    tables: &[HashSet<usize>],
    live_in_table: &[usize],
    enabled: bool,
) -> PropertyResult {
    let judged = ctx.judged;
    let others = judged.len().saturating_sub(1);
    let mut failures = Vec::new();
    if enabled {
        for &i in ctx.holders {
            if live_in_table[i] < others {
                let missing: Vec<String> = judged
                    .iter()
                    .filter(|&&j| j != i && !tables[i].contains(&j))
                    .map(|&j| short_id(ctx.nodes[j].peer_id.as_deref().unwrap_or_default()))
                    .collect();
                failures.push(format!(
                    "{}: knows {} of {others} other live nodes; missing {}",
                    label(ctx.nodes[i]),
                    live_in_table[i],
                    abbreviated(&missing, 8)
                ));
            }
        }
    }
    property(
        PropertyId::FullMesh,
        "every live node knows every other (--full-mesh)".into(),
        ctx.holders.len() - failures.len(),
        ctx.holders.len(),
        failures,
        enabled,
    )
}

/// [`PropertyId::Closest`]: at least `threshold` of live nodes hold all of their `k` closest
/// live peers.
fn closest_peers(ctx: &Context, closest: &Closest, k: usize, threshold: f64) -> PropertyResult {
    let judged = ctx.holders;
    let mut failures = Vec::new();
    if closest.share < threshold || judged.is_empty() {
        let mut worst: Vec<&usize> = judged
            .iter()
            .filter(|&&i| closest.found[i] < closest.wanted[i])
            .collect();
        worst.sort_by_key(|&&i| (closest.found[i] * 1000) / closest.wanted[i].max(1));
        failures.push(format!(
            "{} of {} nodes ({:.0} %) hold all of their {k} closest live peers, expected ≥ {:.0} %",
            closest.complete,
            judged.len(),
            closest.share * 100.0,
            threshold * 100.0
        ));
        for &&i in worst.iter().take(10) {
            failures.push(format!(
                "{}: holds {} of its {} closest live peers",
                label(ctx.nodes[i]),
                closest.found[i],
                closest.wanted[i]
            ));
        }
        if worst.len() > 10 {
            failures.push(format!("… and {} more nodes", worst.len() - 10));
        }
    }
    property(
        PropertyId::Closest,
        format!(
            "≥ {:.0} % of live nodes hold their {k} XOR-closest live peers",
            threshold * 100.0
        ),
        closest.complete,
        judged.len(),
        failures,
        true,
    )
}

/// [`PropertyId::Across`]: every live node of each group holds those of its k closest live peers
/// that are in the other group.
fn held_across(
    ctx: &Context,
    index: &ClosestIndex<usize>,
    tables: &[HashSet<usize>],
    across: &Across,
) -> PropertyResult {
    let group_of = |i: usize| {
        let name = ctx.nodes[i].name.as_str();
        if across.a.1.iter().any(|n| n == name) {
            Some(0)
        } else if across.b.1.iter().any(|n| n == name) {
            Some(1)
        } else {
            None
        }
    };
    let names = [across.a.0.as_str(), across.b.0.as_str()];
    let mut failures = Vec::new();
    let (mut holds, mut of) = (0, 0);
    for &i in ctx.holders {
        let Some(g) = group_of(i) else { continue };
        of += 1;
        let wanted: Vec<usize> = index
            .of(i)
            .filter(|&j| group_of(j) == Some(1 - g))
            .collect();
        let missing: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|j| !tables[i].contains(j))
            .collect();
        if missing.is_empty() {
            holds += 1;
            continue;
        }
        let mut who: Vec<&str> = missing
            .iter()
            .map(|&j| ctx.nodes[j].name.as_str())
            .collect();
        who.sort_unstable();
        let more = who.len().saturating_sub(5);
        who.truncate(5);
        failures.push(format!(
            "{} ({}): holds {} of the {} of its closest live peers that are in {}; missing {}{}",
            label(ctx.nodes[i]),
            names[g],
            wanted.len() - missing.len(),
            wanted.len(),
            names[1 - g],
            who.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if of == 0 {
        failures.push(format!(
            "no live node of {} or {} to judge",
            names[0], names[1]
        ));
    }
    property(
        PropertyId::Across,
        format!(
            "the nodes of {} and {} hold each other (those of their {} closest in the other group)",
            names[0],
            names[1],
            index.k()
        ),
        holds,
        of,
        failures,
        true,
    )
}

fn property(
    id: PropertyId,
    title: String,
    holds: usize,
    of: usize,
    failures: Vec<String>,
    enabled: bool,
) -> PropertyResult {
    let status = match (enabled, failures.is_empty()) {
        (false, _) => Status::Skipped,
        (true, true) => Status::Pass,
        (true, false) => Status::Fail,
    };
    PropertyResult {
        id,
        title,
        status,
        holds,
        of,
        failures,
    }
}

/// `name (12D3…abcd)`.
pub fn label(n: &NodeLog) -> String {
    format!(
        "{} ({})",
        n.name,
        short_id(n.peer_id.as_deref().unwrap_or("?"))
    )
}

/// A share flag: `0.9`, `90%` or `90 %` → 0.9; outside 0–100 % is an error naming the value.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (number, scale) = match s.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (s, 1.0),
    };
    let value = number
        .parse::<f64>()
        .map_err(|_| format!("expected a share such as 0.9 or 90%, not {s:?}"))?
        / scale;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{s} is not between 0 and 100 %"))
    }
}

/// `12D3…wXyZ`: enough to tell nodes apart in a table.
pub fn short_id(peer: &str) -> String {
    // By characters, not bytes: a corrupted log may put anything here.
    let chars: Vec<char> = peer.chars().collect();
    if chars.len() <= 12 {
        return peer.to_owned();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 6..].iter().collect();
    format!("{head}…{tail}")
}

fn because(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

fn abbreviated<T: AsRef<str>>(items: &[T], max: usize) -> String {
    let shown: Vec<&str> = items.iter().take(max).map(AsRef::as_ref).collect();
    let mut text = shown.join(", ");
    if items.len() > max {
        text.push_str(&format!(" and {} more", items.len() - max));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_naturally_with_the_bootstrap_first() {
        let mut names = vec!["kad-peer-10", "kad-peer-2", "kad-peer-1"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["kad-peer-1", "kad-peer-2", "kad-peer-10"]);
    }

    #[test]
    fn short_ids_keep_both_ends() {
        assert_eq!(
            short_id("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"),
            "12D3…x6nXTN"
        );
        // Not ASCII (a corrupted id): cut between characters, never inside one.
        assert_eq!(short_id("ééééééééééééééé"), "éééé…éééééé");
    }

    #[test]
    fn shares_take_fractions_or_percents_and_reject_the_rest() {
        assert_eq!(parse_share("0.9"), Ok(0.9));
        assert_eq!(parse_share("90%"), Ok(0.9));
        assert_eq!(parse_share(" 95 % "), Ok(0.95));
        assert!(
            parse_share("90")
                .expect_err("a bare 90 is refused")
                .contains("90")
        );
        assert!(
            parse_share("ninety")
                .expect_err("not a number")
                .contains("ninety")
        );
    }

    // ---- Each property and the shutdown rule, directly on events. ----

    use testbed_events::{
        Envelope, Event, NodeStarted, SCHEMA_VERSION, SnapshotReason, TableEntry,
    };

    /// The made-up nodes' heartbeat: silent for more than 90 s means down.
    const HEARTBEAT_MS: u64 = 30_000;

    /// `t` seconds into a made-up run.
    fn at(t: u64) -> Timestamp {
        Timestamp(1_764_064_800_000 + t * 1000)
    }

    /// A distinct valid base58 id for each n < 24 (any base58 multihash serves the XOR metric).
    fn id(n: usize) -> String {
        let alphabet = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
        let c = alphabet[n % alphabet.len()] as char;
        format!("Qm{c}{c}{c}{c}")
    }

    fn envelope(t: u64, event: Event) -> Envelope {
        Envelope {
            v: SCHEMA_VERSION,
            ts: at(t),
            event,
        }
    }

    fn started(t: u64, peer: &str) -> Envelope {
        envelope(
            t,
            Event::NodeStarted(NodeStarted {
                peer_id: peer.to_owned(),
                role: Role::Peer,
                listen_addrs: vec![],
                bootstrap: vec![],
                agent_version: String::new(),
                kad_protocol: String::new(),
                heartbeat_ms: Some(HEARTBEAT_MS),
            }),
        )
    }

    fn table(t: u64, peers: &[String]) -> Envelope {
        envelope(
            t,
            Event::RoutingTable {
                reason: SnapshotReason::Changed,
                size: peers.len(),
                peers: peers
                    .iter()
                    .map(|p| TableEntry {
                        peer_id: p.clone(),
                        bucket: 0,
                    })
                    .collect(),
                crawled: None,
            },
        )
    }

    fn stopping(t: u64) -> Envelope {
        envelope(
            t,
            Event::NodeStopping {
                reason: "SIGTERM".into(),
                uptime_ms: 0,
            },
        )
    }

    /// `n` nodes started at t = 0, each with a table of every other node at t = 1.
    fn full_network(n: usize) -> Vec<Vec<Envelope>> {
        let ids: Vec<String> = (0..n).map(id).collect();
        (0..n)
            .map(|i| {
                let others: Vec<String> = ids.iter().filter(|p| **p != ids[i]).cloned().collect();
                vec![started(0, &ids[i]), table(1, &others)]
            })
            .collect()
    }

    fn judge(logs: Vec<Vec<Envelope>>, opts: &CheckOptions) -> Report {
        let logs: Vec<NodeLog> = logs
            .into_iter()
            .enumerate()
            .map(|(i, events)| NodeLog::from_events(&format!("n{i}"), events))
            .collect();
        let refs: Vec<&NodeLog> = logs.iter().collect();
        check(&refs, opts, InputSummary::default())
    }

    fn status(report: &Report, id: PropertyId) -> Status {
        report.property(id).expect("judged").status
    }

    #[test]
    fn node_count_holds_only_for_the_expected_number() {
        let opts = |n| CheckOptions {
            expect_nodes: Some(n),
            ..CheckOptions::default()
        };
        assert_eq!(
            status(&judge(full_network(4), &opts(4)), PropertyId::NodeCount),
            Status::Pass
        );
        let report = judge(full_network(4), &opts(5));
        assert_eq!(status(&report, PropertyId::NodeCount), Status::Fail);
        assert!(!report.passed);
        assert!(
            judge(full_network(4), &CheckOptions::default())
                .property(PropertyId::NodeCount)
                .is_none()
        );
    }

    #[test]
    fn seen_fails_for_a_peer_in_no_table() {
        let mut logs = full_network(4);
        let lonely = id(3);
        // Nobody else lists node 3.
        for (i, events) in logs.iter_mut().enumerate().take(3) {
            let others: Vec<String> = (0..4)
                .filter(|&j| j != i)
                .map(id)
                .filter(|p| *p != lonely)
                .collect();
            events.push(table(2, &others));
        }
        let report = judge(logs, &CheckOptions::default());
        assert_eq!(status(&report, PropertyId::Seen), Status::Fail);
        assert_eq!(status(&report, PropertyId::Tables), Status::Pass);
        let failures = &report.property(PropertyId::Seen).expect("seen").failures;
        assert!(failures[0].contains("n3"), "{failures:?}");
        assert_eq!(
            status(
                &judge(full_network(4), &CheckOptions::default()),
                PropertyId::Seen
            ),
            Status::Pass
        );
    }

    /// A crawler's log: `node`'s table as it answered FIND_NODE at `t`.
    fn crawled(t: u64, node: &str, peers: &[String]) -> Envelope {
        envelope(
            t,
            Event::RoutingTable {
                reason: SnapshotReason::Crawl,
                size: peers.len(),
                peers: peers
                    .iter()
                    .map(|p| TableEntry {
                        peer_id: p.clone(),
                        bucket: 0,
                    })
                    .collect(),
                crawled: Some(testbed_events::Crawled {
                    peer_id: node.to_owned(),
                    addr: Some("/ip4/10.0.0.9/tcp/4001".into()),
                    agent_version: Some("py-libp2p/0.8.1".into()),
                    requests: 2,
                    complete: true,
                }),
            },
        )
    }

    #[test]
    fn a_node_that_only_answers_the_crawler_is_judged_as_a_member() {
        // Nodes 0-2 log; node 3 writes nothing but answers the crawler. Everyone holds everyone.
        let mut logs = full_network(4);
        let foreign = id(3);
        let others: Vec<String> = (0..3).map(id).collect();
        logs[3] = vec![crawled(2, &foreign, &others)];
        let report = judge(logs.clone(), &CheckOptions::default());
        assert!(report.passed, "{report:#?}");
        assert_eq!(report.live, 4, "the foreign node counts");
        assert_eq!(status(&report, PropertyId::Observable), Status::Pass);
        let crawl = report.crawl.as_ref().expect("a crawl section");
        assert_eq!(crawl.crawled_only.len(), 1);
        assert_eq!(
            crawl.crawled_only[0].agent_version.as_deref(),
            Some("py-libp2p/0.8.1")
        );

        // Now nobody lists it: `seen` must fail and name it, as for a logged node.
        for (i, events) in logs.iter_mut().enumerate().take(3) {
            let others: Vec<String> = (0..3).filter(|&j| j != i).map(id).collect();
            events.push(table(3, &others));
        }
        let report = judge(logs, &CheckOptions::default());
        assert_eq!(status(&report, PropertyId::Seen), Status::Fail);
        let failures = &report.property(PropertyId::Seen).expect("seen").failures;
        assert!(failures[0].contains("crawled:"), "{failures:?}");
    }

    #[test]
    fn a_peer_with_no_log_that_the_crawler_cannot_read_fails_observable() {
        let mut logs = full_network(3);
        logs.push(vec![envelope(
            2,
            Event::CrawlFailed {
                peer_id: Some(id(7)),
                addrs: vec!["/ip4/10.0.0.7/tcp/4001".into()],
                error: "does not speak /ipfs/kad/1.0.0 (not a Kademlia server)".into(),
            },
        )]);
        let report = judge(logs, &CheckOptions::default());
        assert!(!report.passed);
        let p = report.property(PropertyId::Observable).expect("judged");
        assert_eq!(p.status, Status::Fail);
        assert!(p.failures[0].contains("10.0.0.7"), "{:?}", p.failures);
        assert!(
            report
                .warnings
                .iter()
                .all(|w| !w.contains("no node_started")),
            "a crawler's log is not a broken node log: {:?}",
            report.warnings
        );
    }

    /// Node `t`'s view of a foreign Kademlia server `peer`: identified, with `open` connections.
    fn saw_foreign(t: u64, peer: &str, open: u32) -> Vec<Envelope> {
        let mut events = vec![
            envelope(
                t,
                Event::ConnectionEstablished {
                    peer_id: peer.to_owned(),
                    remote_addr: "/ip4/10.0.0.9/tcp/4001".into(),
                    direction: testbed_events::Direction::Listener,
                    connections: 1,
                },
            ),
            envelope(
                t,
                Event::Identified {
                    peer_id: peer.to_owned(),
                    agent_version: "py-libp2p/0.8.1".into(),
                    kad: true,
                    listen_addrs: vec![],
                    added_addrs: vec![],
                },
            ),
        ];
        if open == 0 {
            events.push(envelope(
                t + 1,
                Event::ConnectionClosed {
                    peer_id: peer.to_owned(),
                    remote_addr: "/ip4/10.0.0.9/tcp/4001".into(),
                    connections: 0,
                    cause: Some("Connection reset by peer".into()),
                },
            ));
        }
        events
    }

    #[test]
    fn a_kad_server_without_a_log_counts_as_a_peer_the_others_must_hold() {
        // Nodes 0-2 log and hold each other and the foreign server F, which writes nothing.
        let foreign = id(9);
        let ids: Vec<String> = (0..3).map(id).collect();
        let network = |open: u32, held: bool| -> Vec<Vec<Envelope>> {
            (0..3)
                .map(|i| {
                    let mut events = vec![started(0, &ids[i])];
                    events.extend(saw_foreign(1, &foreign, open));
                    let mut peers: Vec<String> =
                        ids.iter().filter(|p| **p != ids[i]).cloned().collect();
                    if held {
                        peers.push(foreign.clone());
                    }
                    events.push(table(3, &peers));
                    events
                })
                .collect()
        };
        let opts = CheckOptions {
            expect_nodes: Some(3),
            ..CheckOptions::default()
        };
        let report = judge(network(1, true), &opts);
        assert!(report.passed, "{report:#?}");
        assert_eq!(report.live, 4, "the foreign server is a live node");
        // ...that counts for `seen`, but not as one of the expected nodes: without its log (or a
        // crawl) a missing log must not pass for a present node.
        let count = report.property(PropertyId::NodeCount).expect("judged");
        assert_eq!((count.holds, count.of), (3, 3));
        let four = CheckOptions {
            expect_nodes: Some(4),
            ..CheckOptions::default()
        };
        let report = judge(network(1, true), &four);
        let count = report.property(PropertyId::NodeCount).expect("judged");
        assert_eq!(count.status, Status::Fail);
        assert!(
            count.failures[0].contains("known only from Identify"),
            "{:?}",
            count.failures
        );
        let tables = report.property(PropertyId::Tables).expect("judged");
        assert_eq!(tables.of, 3, "its own table is not judged: it is not known");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("py-libp2p/0.8.1"))
        );

        // Live, but in no table: `seen` fails and names it.
        let report = judge(network(1, false), &opts);
        let seen = report.property(PropertyId::Seen).expect("judged");
        assert_eq!(seen.status, Status::Fail);
        assert!(
            seen.failures[0].contains("identified:"),
            "{:?}",
            seen.failures
        );

        // Gone (every connection closed) yet still in the tables: a departure, stale entries.
        let report = judge(network(0, true), &CheckOptions::default());
        assert!(report.passed, "{report:#?}");
        assert_eq!((report.live, report.departed), (3, 1));
        assert_eq!(report.stale.peers, 1);
    }

    #[test]
    fn entries_for_peers_without_a_log_are_named() {
        let mut logs = full_network(3);
        let mut held: Vec<String> = (1..3).map(id).collect();
        held.push(id(8));
        logs[0].push(table(2, &held));
        let report = judge(logs, &CheckOptions::default());
        let note = report
            .warnings
            .iter()
            .find(|w| w.contains("peers with no log here"))
            .expect("a note");
        assert!(note.contains(&short_id(&id(8))), "{note}");
    }

    #[test]
    fn a_container_that_writes_no_events_is_named() {
        let mut ingest = crate::ingest::Ingest::new();
        for line in ["foreign-kad-node: peer id 12D3…", "joined through 12D3…"] {
            ingest.push_line("foreign_1", line);
        }
        let logs: Vec<NodeLog> = full_network(2)
            .into_iter()
            .enumerate()
            .map(|(i, events)| NodeLog::from_events(&format!("n{i}"), events))
            .collect();
        let refs: Vec<&NodeLog> = logs.iter().chain(ingest.logs()).collect();
        let report = check(&refs, &CheckOptions::default(), InputSummary::default());
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("no kad-testbed event") && w.contains("foreign_1 (2 lines)")),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn a_node_that_answers_other_than_it_logged_is_shown() {
        let mut logs = full_network(3);
        // Node 0 answers with node 1 only; its log says 1 and 2.
        logs.push(vec![crawled(2, &id(0), &[id(1)])]);
        let report = judge(logs, &CheckOptions::default());
        let crawl = report.crawl.as_ref().expect("a crawl section");
        assert_eq!(crawl.compared, 1);
        assert_eq!(crawl.differing.len(), 1);
        assert_eq!(crawl.differing[0].only_logged, [id(2)]);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("crawl: 1 of 1"))
        );
    }

    #[test]
    fn tables_fails_for_an_empty_table() {
        let mut logs = full_network(4);
        logs[2].push(table(2, &[]));
        let report = judge(logs, &CheckOptions::default());
        assert_eq!(status(&report, PropertyId::Tables), Status::Fail);
        assert_eq!(
            report.property(PropertyId::Tables).expect("tables").holds,
            3
        );
    }

    #[test]
    fn full_mesh_is_skipped_unless_asked_and_fails_on_a_missing_link() {
        let mut logs = full_network(4);
        logs[0].push(table(2, &[id(1), id(2)]));
        assert_eq!(
            status(
                &judge(logs.clone(), &CheckOptions::default()),
                PropertyId::FullMesh
            ),
            Status::Skipped
        );
        let mesh = CheckOptions {
            full_mesh: true,
            ..CheckOptions::default()
        };
        assert_eq!(
            status(&judge(logs, &mesh), PropertyId::FullMesh),
            Status::Fail
        );
        assert_eq!(
            status(&judge(full_network(4), &mesh), PropertyId::FullMesh),
            Status::Pass
        );
    }

    #[test]
    fn across_holds_only_when_each_side_holds_its_closest_of_the_other() {
        // Six nodes, k = 2, split into n0..n2 and n3..n5.
        let ids: Vec<String> = (0..6).map(id).collect();
        let across = Across {
            a: ("a".into(), (0..3).map(|i| format!("n{i}")).collect()),
            b: ("b".into(), (3..6).map(|i| format!("n{i}")).collect()),
        };
        let opts = CheckOptions {
            closest_k: 2,
            across: Some(across),
            ..CheckOptions::default()
        };
        let merged = judge(full_network(6), &opts);
        assert_eq!(status(&merged, PropertyId::Across), Status::Pass);
        assert_eq!(merged.property(PropertyId::Across).expect("judged").of, 6);

        // Each side holds only its own half: whoever has a closest peer on the other side misses it.
        let cut: Vec<Vec<Envelope>> = (0..6)
            .map(|i| {
                let side = if i < 3 { 0..3 } else { 3..6 };
                let own: Vec<String> = side.filter(|&j| j != i).map(|j| ids[j].clone()).collect();
                vec![started(0, &ids[i]), table(1, &own)]
            })
            .collect();
        let report = judge(cut, &opts);
        let across = report.property(PropertyId::Across).expect("judged");
        assert_eq!(across.status, Status::Fail);
        assert!(!report.passed);
        assert!(
            across
                .failures
                .iter()
                .any(|f| f.contains("that are in b; missing n")),
            "{:?}",
            across.failures
        );
        // Without the option the property is not judged at all.
        let plain = judge(full_network(6), &CheckOptions::default());
        assert!(plain.property(PropertyId::Across).is_none());
    }

    #[test]
    fn closest_fails_below_the_threshold() {
        // k = 2 of 6 nodes; every table holds only one peer, the next node's.
        let ids: Vec<String> = (0..6).map(id).collect();
        let ring: Vec<Vec<Envelope>> = (0..6)
            .map(|i| vec![started(0, &ids[i]), table(1, &[ids[(i + 1) % 6].clone()])])
            .collect();
        let opts = CheckOptions {
            closest_k: 2,
            ..CheckOptions::default()
        };
        let report = judge(ring, &opts);
        assert_eq!(status(&report, PropertyId::Closest), Status::Fail);
        assert_eq!(report.closest.complete, 0);
        let whole = judge(full_network(6), &opts);
        assert_eq!(status(&whole, PropertyId::Closest), Status::Pass);
        assert_eq!(whole.closest.complete, 6);
    }

    /// Churn near the end: node 1 stops at 20 s, node 2 restarts with a new identity at 22 s and
    /// everyone learns it, then the run shuts down at 25–26 s. Node 1 departed; the others stopped
    /// with the run, and the network was healthy.
    fn churn_near_the_end() -> Vec<Vec<Envelope>> {
        let ids: Vec<String> = (0..5).map(id).collect();
        let fresh = id(9);
        let mut logs = Vec::new();
        for i in 0..5 {
            let mut events = vec![started(0, &ids[i])];
            let others: Vec<String> = ids.iter().filter(|p| **p != ids[i]).cloned().collect();
            events.push(table(1, &others));
            match i {
                1 => events.push(stopping(20)),
                2 => {
                    events.push(stopping(21));
                    events.push(started(22, &fresh));
                    let peers = vec![ids[0].clone(), ids[3].clone(), ids[4].clone()];
                    events.push(table(23, &peers));
                    events.push(stopping(26));
                }
                _ => {
                    let peers: Vec<String> = ids
                        .iter()
                        .filter(|p| **p != ids[i] && **p != ids[1] && **p != ids[2])
                        .cloned()
                        .chain([fresh.clone()])
                        .collect();
                    events.push(table(23, &peers));
                    events.push(stopping(25));
                }
            }
            logs.push(events);
        }
        logs
    }

    #[test]
    fn a_stop_before_a_restart_is_a_departure_not_part_of_the_shutdown() {
        let opts = CheckOptions {
            closest_k: 3,
            ..CheckOptions::default()
        };
        let report = judge(churn_near_the_end(), &opts);
        assert_eq!(report.departed, 1, "{report:#?}");
        assert_eq!(
            report
                .nodes
                .iter()
                .find(|n| n.name == "n1")
                .expect("n1")
                .state,
            NodeState::Departed
        );
        assert!(report.judged_before_shutdown);
        assert!(report.passed, "{:#?}", report.nodes);
    }

    #[test]
    fn a_recorded_shutdown_moment_decides_over_the_guess() {
        // Recorded at 24 s: node 1 (20 s) departed, as the guess said. Recorded at 19 s: node 1
        // stopped with the run too, and the network is judged as of before it.
        let at_24 = CheckOptions {
            closest_k: 3,
            shutdown_at: Some(at(24)),
            ..CheckOptions::default()
        };
        assert_eq!(judge(churn_near_the_end(), &at_24).departed, 1);
        let at_19 = CheckOptions {
            shutdown_at: Some(at(19)),
            ..at_24
        };
        assert_eq!(judge(churn_near_the_end(), &at_19).departed, 0);
    }

    #[test]
    fn without_a_restart_a_close_wave_of_stops_is_the_shutdown() {
        // The same stops with no restart in between: the guess cannot tell, and takes node 1 as
        // part of the shutdown (documented; `testbed up` records the moment instead).
        let mut logs = full_network(4);
        logs[1].push(stopping(20));
        for events in logs.iter_mut().filter(|e| e.len() == 2) {
            events.push(stopping(25));
        }
        assert_eq!(judge(logs, &CheckOptions::default()).departed, 0);
    }

    /// Nodes 0, 2 and 3 drop node 1 from their tables at 60 s, and write heartbeats until `end`;
    /// node 1 was killed after its table at 1 s (no `node_stopping`).
    fn killed_node_dropped_at_60s(end: u64) -> Vec<Vec<Envelope>> {
        let ids: Vec<String> = (0..4).map(id).collect();
        let mut logs = full_network(4);
        for (i, events) in logs.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
            let without: Vec<String> = ids
                .iter()
                .filter(|p| **p != ids[i] && **p != ids[1])
                .cloned()
                .collect();
            events.push(table(60, &without));
            events.push(table(end, &without));
        }
        logs
    }

    #[test]
    fn a_node_silent_for_three_heartbeats_has_departed() {
        let report = judge(killed_node_dropped_at_60s(130), &CheckOptions::default());
        assert_eq!(report.departed, 1, "{report:#?}");
        assert_eq!(report.nodes[1].state, NodeState::Departed);
        assert!(report.passed, "{:#?}", report.properties);
    }

    #[test]
    fn a_node_silent_for_less_than_three_heartbeats_is_live_and_missed() {
        // 59 s of silence is under 3 × 30 s: node 1 may just be quiet, so it is live, and no
        // table holds it.
        let report = judge(killed_node_dropped_at_60s(60), &CheckOptions::default());
        assert_eq!(report.departed, 0);
        assert_eq!(status(&report, PropertyId::Seen), Status::Fail);
        let seen = report.property(PropertyId::Seen).expect("seen");
        assert!(
            seen.failures.iter().any(|f| f.contains("n1")),
            "{:#?}",
            seen.failures
        );
    }

    fn removed(t: u64, peer: &str) -> Envelope {
        envelope(
            t,
            Event::PeerRemoved {
                peer_id: peer.to_owned(),
                reason: "Connection refused".into(),
                closest: true,
            },
        )
    }

    /// A shutdown wave, one node after another: each node still running takes the stopped ones
    /// out of its table (the node's liveness rules) before it stops itself.
    fn shutdown_one_by_one(record_removals: bool) -> Vec<Vec<Envelope>> {
        let ids: Vec<String> = (0..4).map(id).collect();
        let mut logs = full_network(4);
        for (i, events) in logs.iter_mut().enumerate() {
            let stop = 20 + 2 * i as u64;
            let gone: Vec<&String> = ids[..i].iter().collect();
            if record_removals {
                events.extend(gone.iter().map(|p| removed(stop - 1, p)));
            }
            let left: Vec<String> = ids
                .iter()
                .filter(|p| **p != ids[i] && !gone.contains(p))
                .cloned()
                .collect();
            events.push(table(stop - 1, &left));
            events.push(stopping(stop));
        }
        logs
    }

    #[test]
    fn peers_removed_because_they_stopped_with_the_run_still_count() {
        let report = judge(shutdown_one_by_one(true), &CheckOptions::default());
        assert!(report.judged_before_shutdown);
        assert_eq!(report.departed, 0);
        assert!(report.passed, "{:#?}", report.properties);
    }

    #[test]
    fn entries_missing_without_a_recorded_removal_still_fail() {
        // The same tables with no `peer_removed`: nothing says the entries left with the
        // shutdown, and node 0 is in no final table.
        let report = judge(shutdown_one_by_one(false), &CheckOptions::default());
        assert_eq!(status(&report, PropertyId::Seen), Status::Fail);
    }
}
