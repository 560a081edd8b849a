//! When did the network converge? Replays every routing-table snapshot of a saved run in time
//! order and finds the first moment each property held.
//!
//! The verdict ([`crate::verdict`]) judges the latest state; benchmarks need the history: "every
//! peer was in some table 1.8 s after the last node started". Peer ids are interned to indices so
//! a 1000-node run's history fits in a few MB.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use testbed_events::{Direction, Event, KadKey, Timestamp, kad_key, parse_line};

use crate::closest::ClosestIndex;
use crate::ingest::silent;
use crate::source::SourceError;

/// Convergence times of a run, in milliseconds since the last node started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Convergence {
    pub nodes: usize,
    /// When the first and the last node wrote `node_started`.
    pub first_start: Option<Timestamp>,
    pub last_start: Option<Timestamp>,
    /// The last event of the run.
    pub last_event: Option<Timestamp>,
    /// First moment every node was in at least one other node's table.
    pub all_seen_ms: Option<i64>,
    /// First moment at least `threshold` of nodes held all of their k closest peers.
    pub closest_ms: Option<i64>,
    /// The best k-closest share reached, and when.
    pub best_closest_share: f64,
    pub best_closest_ms: Option<i64>,
    pub snapshots: usize,
    /// Identities that went down while the others ran (not in the run's own shutdown).
    pub departed: usize,
    /// Connections each node dialed over the whole run (sorted): what the node costs the
    /// network.
    pub outbound_connections: Vec<u32>,
    /// The network over time, after each snapshot (thinned to at most [`MAX_POINTS`]).
    pub series: Vec<Point>,
    /// The longest a live node's table held a departed peer (a stale entry): from the departure
    /// to the holder's first snapshot without it (so to within the holder's table debounce of
    /// the drop), to the holder's own departure, or to the run's end for an entry still held.
    /// Exact in the nodes' own clocks, unlike a live sample, which also counts how far the
    /// reader lags behind.
    pub stale_oldest_ms: Option<u64>,
    /// Stale entries still held by live tables at the run's end (before its shutdown).
    pub stale_left: usize,
}

/// The network at one moment of the replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Point {
    /// Milliseconds since the first node started.
    pub ms: u64,
    /// Nodes in at least one other node's table.
    pub seen: usize,
    /// Nodes whose table holds at least one other node.
    pub tables: usize,
    /// Share of live nodes holding all of their k closest live peers.
    pub closest: f64,
    /// Nodes live at this moment.
    pub live: usize,
}

/// Enough points for a chart; a 1000-node run has tens of thousands of snapshots.
pub const MAX_POINTS: usize = 600;

impl Convergence {
    /// First moment every node held all of its k closest peers, if that happened.
    pub fn all_closest_ms(&self) -> Option<i64> {
        (self.best_closest_share >= 1.0)
            .then_some(self.best_closest_ms)
            .flatten()
    }

    /// Milliseconds from `since` (ms after the first start) until every live node held all of
    /// its k closest live peers again: the healing time after a fault, at the resolution of
    /// [`Convergence::series`].
    pub fn healed_after(&self, since_ms: u64) -> Option<u64> {
        self.series
            .iter()
            .find(|p| p.ms >= since_ms && p.closest >= 1.0)
            .map(|p| p.ms - since_ms)
    }
}

struct NodeHistory {
    key: Option<KadKey>,
    started: Timestamp,
    /// When this identity went down: its `node_stopping`, or its last event when the log went
    /// on with a new `node_started`, or went silent (the verdict's rule, [`silent`]).
    down: Option<Timestamp>,
    last_event: Timestamp,
    heartbeat: Option<Duration>,
    snapshots: Vec<(Timestamp, Vec<u32>)>,
}

/// Replays the per-node logs in `dir` (one file per node, as `testbed up` saves them).
pub fn replay_dir(dir: &Path, k: usize, threshold: f64) -> Result<Convergence, SourceError> {
    let io = |path: &Path, source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |peer: &str| -> u32 {
        let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        *ids.entry(peer.to_owned()).or_insert(next)
    };
    // Nodes the run killed (run.json), by log name: down at that moment.
    let kills: HashMap<String, Timestamp> = crate::source::recorded_run(dir)
        .map(|run| run.kills().map(|(n, at)| (n.to_owned(), at)).collect())
        .unwrap_or_default();
    let mut histories: HashMap<u32, NodeHistory> = HashMap::new();
    let mut last_event: Option<Timestamp> = None;
    let mut outbound: Vec<u32> = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        let file = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
        let mut me: Option<u32> = None;
        let mut dialed = 0;
        crate::source::each_line(&path.display().to_string(), file, |line| {
            let Ok(parsed) = parse_line(line) else {
                return;
            };
            let ts = parsed.envelope.ts;
            last_event = last_event.max(Some(ts));
            if let Some(h) = me.and_then(|id| histories.get_mut(&id)) {
                h.last_event = h.last_event.max(ts);
            }
            match parsed.envelope.event {
                Event::NodeStarted(s) => {
                    // The previous incarnation, if it never said it stopped, died at its last
                    // event.
                    if let Some(h) = me.and_then(|id| histories.get_mut(&id)) {
                        h.down = h.down.or(Some(h.last_event));
                    }
                    let id = intern(&s.peer_id);
                    me = Some(id);
                    histories.insert(
                        id,
                        NodeHistory {
                            key: kad_key(&s.peer_id).ok(),
                            started: ts,
                            down: None,
                            last_event: ts,
                            heartbeat: s.heartbeat_ms.map(Duration::from_millis),
                            snapshots: Vec::new(),
                        },
                    );
                }
                // A crawler's tables describe other nodes; the timeline replays nodes' own.
                Event::RoutingTable {
                    peers,
                    crawled: None,
                    ..
                } => {
                    let Some(id) = me else { return };
                    let table = peers.iter().map(|p| intern(&p.peer_id)).collect();
                    if let Some(h) = histories.get_mut(&id) {
                        h.snapshots.push((ts, table));
                    }
                }
                Event::NodeStopping { .. } => {
                    if let Some(h) = me.and_then(|id| histories.get_mut(&id)) {
                        h.down = h.down.or(Some(ts));
                    }
                }
                Event::ConnectionEstablished {
                    direction: Direction::Dialer,
                    ..
                } => dialed += 1,
                _ => {}
            }
        })?;
        if me.is_some() {
            outbound.push(dialed);
        }
        let name = crate::source::node_name(&path);
        if let (Some(&at), Some(h)) = (kills.get(&name), me.and_then(|id| histories.get_mut(&id)))
            && h.started <= at
        {
            h.down = Some(h.down.map_or(at, |d| d.min(at)));
        }
    }
    // Silent identities went down at their last event.
    if let Some(end) = last_event {
        for h in histories.values_mut().filter(|h| h.down.is_none()) {
            if h.heartbeat.is_some_and(|hb| silent(hb, h.last_event, end)) {
                h.down = Some(h.last_event);
            }
        }
    }
    let mut convergence = replay(histories, k, threshold);
    convergence.last_event = last_event;
    outbound.sort_unstable();
    convergence.outbound_connections = outbound;
    Ok(convergence)
}

/// What happens at an instant of the replay. At one instant, starts come first and departures
/// last, so a node's final snapshot still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Start,
    Snapshot(usize),
    Down,
}

fn replay(histories: HashMap<u32, NodeHistory>, k: usize, threshold: f64) -> Convergence {
    let last_start = histories.values().map(|h| h.started).max();
    let mut result = Convergence {
        nodes: histories.len(),
        first_start: histories.values().map(|h| h.started).min(),
        last_start,
        ..Convergence::default()
    };
    let Some(last_start) = last_start else {
        return result;
    };
    let since_start = |ts: Timestamp| ts.as_millis() as i64 - last_start.as_millis() as i64;
    // The end of the run is not a departure: nodes stopped by the run's own shutdown are judged
    // on their state before it, as the verdict does.
    let shutdown = shutdown_wave(&histories);

    let mut changes: Vec<(Timestamp, Change, u32)> = Vec::new();
    for (&id, h) in &histories {
        changes.push((h.started, Change::Start, id));
        // Snapshots written during the shutdown show nodes taking the stopped ones out of their
        // tables: the run's end, not its state.
        changes.extend(
            h.snapshots
                .iter()
                .enumerate()
                .filter(|(_, s)| shutdown.is_none_or(|at| s.0 < at))
                .map(|(i, s)| (s.0, Change::Snapshot(i), id)),
        );
        if let Some(down) = h.down.filter(|d| shutdown.is_none_or(|s| *d < s)) {
            changes.push((down, Change::Down, id));
        }
    }
    changes.sort_unstable();
    result.snapshots = changes
        .iter()
        .filter(|c| matches!(c.1, Change::Snapshot(_)))
        .count();

    let mut index: ClosestIndex<u32> = ClosestIndex::new(k);
    let mut live: HashSet<u32> = HashSet::new();
    let mut tables: HashMap<u32, HashSet<u32>> = HashMap::new();
    // How many live tables hold each peer.
    let mut seen_by: HashMap<u32, usize> = HashMap::new();
    let mut complete: HashSet<u32> = HashSet::new();
    let first_start = result.first_start.unwrap_or(last_start);
    let mut series = Vec::new();
    // When each identity departed (not in the shutdown): entries pointing at it are stale from
    // then on.
    let down_at: HashMap<u32, Timestamp> = histories
        .iter()
        .filter_map(|(&id, h)| Some((id, h.down.filter(|d| shutdown.is_none_or(|s| *d < s))?)))
        .collect();
    // The age of a stale entry that ends at `ts` (dropped, or its holder gone), if `p` had
    // departed by then.
    let stale_age = |p: &u32, ts: Timestamp, live: &HashSet<u32>| {
        (!live.contains(p))
            .then(|| down_at.get(p))
            .flatten()
            .filter(|d| **d <= ts)
            .map(|d| ts.millis_since(*d))
    };
    let mut oldest: Option<u64> = None;
    let holds_closest = |index: &ClosestIndex<u32>, tables: &HashMap<u32, HashSet<u32>>, id| {
        let (found, wanted) = index.held(id, |p| tables.get(&id).is_some_and(|t| t.contains(&p)));
        wanted > 0 && found == wanted
    };
    let recheck = |ids: Vec<u32>,
                   index: &ClosestIndex<u32>,
                   tables: &HashMap<u32, HashSet<u32>>,
                   complete: &mut HashSet<u32>| {
        for id in ids {
            if holds_closest(index, tables, id) {
                complete.insert(id);
            } else {
                complete.remove(&id);
            }
        }
    };
    for (ts, change, id) in changes {
        match change {
            Change::Start => {
                live.insert(id);
                if let Some(key) = histories[&id].key {
                    let changed = index.join(id, key);
                    recheck(changed, &index, &tables, &mut complete);
                }
            }
            Change::Down => {
                live.remove(&id);
                complete.remove(&id);
                for p in tables.remove(&id).unwrap_or_default() {
                    unsee(&mut seen_by, p);
                    oldest = oldest.max(stale_age(&p, ts, &live));
                }
                let changed = index.leave(id);
                recheck(changed, &index, &tables, &mut complete);
            }
            Change::Snapshot(i) => {
                if !live.contains(&id) {
                    continue;
                }
                let new: HashSet<u32> = histories[&id].snapshots[i]
                    .1
                    .iter()
                    .copied()
                    .filter(|p| *p != id && histories.contains_key(p))
                    .collect();
                let old = tables.remove(&id).unwrap_or_default();
                for p in old.difference(&new) {
                    unsee(&mut seen_by, *p);
                    oldest = oldest.max(stale_age(p, ts, &live));
                }
                for p in new.difference(&old) {
                    *seen_by.entry(*p).or_default() += 1;
                }
                tables.insert(id, new);
                recheck(vec![id], &index, &tables, &mut complete);
            }
        }
        let n = live.len();
        let seen = seen_by.keys().filter(|p| live.contains(p)).count();
        let non_empty = live
            .iter()
            .filter(|id| tables.get(id).is_some_and(|t| !t.is_empty()))
            .count();
        let share = complete.len() as f64 / n.max(1) as f64;
        series.push(Point {
            ms: ts.millis_since(first_start),
            seen,
            tables: non_empty,
            closest: share,
            live: n,
        });
        if ts < last_start {
            continue;
        }
        let at = since_start(ts);
        if result.all_seen_ms.is_none() && seen == n && n > 1 {
            result.all_seen_ms = Some(at);
        }
        if share > result.best_closest_share {
            result.best_closest_share = share;
            result.best_closest_ms = Some(at);
        }
        if result.closest_ms.is_none() && share >= threshold {
            result.closest_ms = Some(at);
        }
    }
    // Entries still stale at the end: held until then.
    let end = shutdown.or_else(|| histories.values().map(|h| h.last_event).max());
    if let Some(end) = end {
        for (holder, table) in &tables {
            if !live.contains(holder) {
                continue;
            }
            for p in table {
                if let Some(age) = stale_age(p, end, &live) {
                    result.stale_left += 1;
                    oldest = oldest.max(Some(age));
                }
            }
        }
    }
    result.stale_oldest_ms = oldest;
    result.departed = histories
        .values()
        .filter(|h| h.down.is_some_and(|d| shutdown.is_none_or(|s| d < s)))
        .count();
    result.series = thin(series, MAX_POINTS);
    result
}

fn unsee(seen_by: &mut HashMap<u32, usize>, p: u32) {
    if let Some(c) = seen_by.get_mut(&p) {
        *c -= 1;
        if *c == 0 {
            seen_by.remove(&p);
        }
    }
}

/// When the run's own shutdown began, if every identity went down: the verdict's guess
/// ([`crate::verdict::wave_start`], with its default `--shutdown-gap`), for logs without a
/// recorded moment.
fn shutdown_wave(histories: &HashMap<u32, NodeHistory>) -> Option<Timestamp> {
    let downs: Option<Vec<Timestamp>> = histories.values().map(|h| h.down).collect();
    let latest_start = histories.values().map(|h| h.started).max();
    let gap = crate::verdict::CheckOptions::default().shutdown_gap;
    crate::verdict::wave_start(downs?, latest_start, gap)
}

/// At most about `max` points, evenly spread over time; for each stretch the last point (the
/// state at its end), and always the final one.
fn thin(series: Vec<Point>, max: usize) -> Vec<Point> {
    let Some(last) = series.last().copied() else {
        return series;
    };
    if series.len() <= max {
        return series;
    }
    let step = (last.ms / max as u64).max(1);
    let mut out: Vec<Point> = Vec::with_capacity(max + 1);
    for p in series {
        match out.last_mut() {
            Some(prev) if prev.ms / step == p.ms / step => *prev = p,
            _ => out.push(p),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{started, table};

    #[test]
    fn a_three_node_history_converges_when_the_last_table_fills() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = [
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
            "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4",
        ];
        let logs = [
            vec![
                started(ids[0], 0),
                table(2, &[ids[1]]),
                table(5, &[ids[1], ids[2]]),
            ],
            vec![
                started(ids[1], 1),
                table(3, &[ids[0]]),
                table(6, &[ids[0], ids[2]]),
            ],
            vec![
                started(ids[2], 2),
                table(4, &[ids[0]]),
                table(9, &[ids[0], ids[1]]),
            ],
        ];
        for (i, lines) in logs.iter().enumerate() {
            std::fs::write(dir.path().join(format!("n{i}.log")), lines.join("\n")).expect("write");
        }
        let c = replay_dir(dir.path(), 20, 1.0).expect("replays");
        assert_eq!(c.nodes, 3);
        // Node 2 is first in a table at 10:00:05, three seconds after the last start (10:00:02).
        assert_eq!(c.all_seen_ms, Some(3_000));
        // Everyone holds everyone (k = 20 > 2) only once node 2's table fills at 10:00:09.
        assert_eq!(c.closest_ms, Some(7_000));
        assert_eq!(c.best_closest_share, 1.0);
        assert_eq!(c.snapshots, 6);
    }

    /// Node 1 stops at :10. Node 2 drops it at :25 (15 s), node 0 at :30 (20 s): the oldest
    /// stale entry is 20 s old, none left. Had node 0 kept it, it would be held at the run's end
    /// (node 2's last snapshot, :45): 35 s old, one left.
    #[test]
    fn a_stale_entry_ages_from_its_peers_departure_to_the_snapshot_that_drops_it() {
        let ids = [
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
            "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4",
        ];
        let stopping = |s: u32| {
            format!(
                r#"{{"v":1,"ts":"2026-11-25T10:00:{s:02}.000Z","type":"node_stopping","reason":"SIGTERM","uptime_ms":9000}}"#
            )
        };
        let replay = |node0_drops: bool| {
            let dir = tempfile::tempdir().expect("tempdir");
            let node0 = vec![
                started(ids[0], 0),
                table(5, &[ids[1], ids[2]]),
                table(20, &[ids[1], ids[2]]),
                if node0_drops {
                    table(30, &[ids[2]])
                } else {
                    table(30, &[ids[1], ids[2]])
                },
            ];
            let logs = [
                node0,
                vec![started(ids[1], 1), table(3, &[ids[0]]), stopping(10)],
                vec![
                    started(ids[2], 2),
                    table(6, &[ids[0], ids[1]]),
                    table(25, &[ids[0]]),
                    table(45, &[ids[0]]),
                ],
            ];
            for (i, lines) in logs.iter().enumerate() {
                std::fs::write(dir.path().join(format!("n{i}.log")), lines.join("\n"))
                    .expect("write");
            }
            replay_dir(dir.path(), 20, 1.0).expect("replays")
        };
        let c = replay(true);
        assert_eq!(c.departed, 1);
        assert_eq!(c.stale_oldest_ms, Some(20_000));
        assert_eq!(c.stale_left, 0);
        let kept = replay(false);
        assert_eq!(
            kept.stale_oldest_ms,
            Some(35_000),
            "held until the end at :45"
        );
        assert_eq!(kept.stale_left, 1);
    }
}

#[cfg(test)]
mod churn_tests {
    use super::*;

    /// The captured churn run (peer_3 stops, peer_5 restarts with a new identity, then the run
    /// shuts down): the timeline counts the departures and judges the live nodes only, so the
    /// network is whole again at the end, as the verdict says.
    #[test]
    fn departed_identities_are_not_wanted_after_they_leave() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/churn-near-end");
        let c = replay_dir(&dir, 20, 0.9).expect("replays");
        assert_eq!(c.nodes, 8, "7 logs, one of them with two identities");
        assert_eq!(c.departed, 2, "peer_3, and peer_5's first identity");
        let last = c.series.last().expect("a series");
        assert_eq!(last.live, 6);
        assert_eq!(last.closest, 1.0, "{last:?}");
        // Right after peer_3 left, its peers still held it but nobody wants it: still whole.
        assert!(c.healed_after(0).is_some());
    }

    /// Nobody learns the node that joins last, so k-closest never reaches 100 % and nothing
    /// heals: the same replay fails when it should.
    #[test]
    fn a_newcomer_nobody_learns_never_heals() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/live-10");
        let logs: Vec<(String, Vec<serde_json::Value>)> = std::fs::read_dir(&src)
            .expect("fixture")
            .map(|e| {
                let path = e.expect("entry").path();
                let text = std::fs::read_to_string(&path).expect("read");
                let events = text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("json"))
                    .collect();
                (
                    path.file_name().expect("name").to_string_lossy().into(),
                    events,
                )
            })
            .collect();
        let newest = logs
            .iter()
            .map(|(_, events)| &events[0])
            .max_by_key(|started| started["ts"].as_str().unwrap_or_default().to_owned())
            .expect("logs")["peer_id"]
            .clone();
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, mut events) in logs {
            for e in &mut events {
                if let Some(peers) = e.get_mut("peers").and_then(|p| p.as_array_mut()) {
                    peers.retain(|p| p["peer_id"] != newest);
                }
            }
            let lines: Vec<String> = events.iter().map(ToString::to_string).collect();
            std::fs::write(dir.path().join(name), lines.join("\n")).expect("write");
        }
        let c = replay_dir(dir.path(), 20, 0.9).expect("replays");
        assert!(c.best_closest_share < 1.0, "{:?}", c.series.last());
        assert_eq!(c.all_closest_ms(), None);
        assert_eq!(c.healed_after(0), None);
    }
}
