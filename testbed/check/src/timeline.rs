//! When did the network converge? Replays every routing-table snapshot of a saved run in time
//! order and finds the first moment each property held.
//!
//! The verdict ([`crate::verdict`]) judges the latest state; benchmarks need the history: "every
//! peer was in some table 1.8 s after the last node started". Peer ids are interned to indices so
//! a 1000-node run's history fits in a few MB.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;
use testbed_events::{Direction, Event, KadKey, Timestamp, kad_key, parse_line};

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
    /// Connections each node dialed over the whole run (sorted): what the node costs the
    /// network.
    pub outbound_connections: Vec<u32>,
    /// The network over time, after each snapshot (thinned to at most [`MAX_POINTS`]).
    pub series: Vec<Point>,
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
    /// Share of nodes holding all of their k closest.
    pub closest: f64,
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
}

struct NodeHistory {
    key: Option<KadKey>,
    started: Timestamp,
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
            match parsed.envelope.event {
                Event::NodeStarted(s) => {
                    let id = intern(&s.peer_id);
                    me = Some(id);
                    histories.insert(
                        id,
                        NodeHistory {
                            key: kad_key(&s.peer_id).ok(),
                            started: ts,
                            snapshots: Vec::new(),
                        },
                    );
                }
                Event::RoutingTable { peers, .. } => {
                    let Some(id) = me else { return };
                    let table = peers.iter().map(|p| intern(&p.peer_id)).collect();
                    if let Some(h) = histories.get_mut(&id) {
                        h.snapshots.push((ts, table));
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
    }
    let mut convergence = replay(histories, k, threshold);
    convergence.last_event = last_event;
    outbound.sort_unstable();
    convergence.outbound_connections = outbound;
    Ok(convergence)
}

fn replay(histories: HashMap<u32, NodeHistory>, k: usize, threshold: f64) -> Convergence {
    let nodes: Vec<u32> = {
        let mut v: Vec<u32> = histories.keys().copied().collect();
        v.sort_unstable();
        v
    };
    let n = nodes.len();
    let last_start = histories.values().map(|h| h.started).max();
    let mut result = Convergence {
        nodes: n,
        first_start: histories.values().map(|h| h.started).min(),
        last_start,
        ..Convergence::default()
    };
    let Some(last_start) = last_start else {
        return result;
    };
    let since_start = |ts: Timestamp| ts.as_millis() as i64 - last_start.as_millis() as i64;

    // Each node's k closest peers among all nodes of the run.
    let keyed: Vec<(u32, KadKey)> = nodes
        .iter()
        .filter_map(|id| Some((*id, histories[id].key?)))
        .collect();
    let mut closest: HashMap<u32, HashSet<u32>> = HashMap::new();
    for &(id, key) in &keyed {
        let mut others: Vec<([u8; 32], u32)> = keyed
            .iter()
            .filter(|(o, _)| *o != id)
            .map(|(o, other)| (key.distance(other), *o))
            .collect();
        let want = k.min(others.len());
        if want > 0 && want < others.len() {
            others.select_nth_unstable(want - 1);
        }
        closest.insert(id, others[..want].iter().map(|(_, o)| *o).collect());
    }

    let mut events: Vec<(Timestamp, u32, usize)> = histories
        .iter()
        .flat_map(|(id, h)| h.snapshots.iter().enumerate().map(|(i, s)| (s.0, *id, i)))
        .collect();
    events.sort_unstable();
    result.snapshots = events.len();

    let is_node: HashSet<u32> = nodes.iter().copied().collect();
    let mut tables: HashMap<u32, HashSet<u32>> = HashMap::new();
    let mut seen_by: HashMap<u32, usize> = HashMap::new();
    let mut complete: HashSet<u32> = HashSet::new();
    let mut non_empty = 0usize;
    let first_start = result.first_start.unwrap_or(last_start);
    let mut series = Vec::new();
    for (ts, id, index) in events {
        let new: HashSet<u32> = histories[&id].snapshots[index]
            .1
            .iter()
            .copied()
            .filter(|p| *p != id && is_node.contains(p))
            .collect();
        let old = tables.remove(&id).unwrap_or_default();
        for p in old.difference(&new) {
            if let Some(c) = seen_by.get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    seen_by.remove(p);
                }
            }
        }
        for p in new.difference(&old) {
            *seen_by.entry(*p).or_default() += 1;
        }
        let holds_closest = closest
            .get(&id)
            .is_some_and(|c| !c.is_empty() && c.is_subset(&new));
        if holds_closest {
            complete.insert(id);
        } else {
            complete.remove(&id);
        }
        non_empty = non_empty + usize::from(!new.is_empty()) - usize::from(!old.is_empty());
        tables.insert(id, new);

        let at = since_start(ts);
        series.push(Point {
            ms: ts.millis_since(first_start),
            seen: seen_by.len(),
            tables: non_empty,
            closest: complete.len() as f64 / n.max(1) as f64,
        });
        if result.all_seen_ms.is_none() && seen_by.len() == n && n > 1 {
            result.all_seen_ms = Some(at);
        }
        let share = complete.len() as f64 / n.max(1) as f64;
        if share > result.best_closest_share {
            result.best_closest_share = share;
            result.best_closest_ms = Some(at);
        }
        if result.closest_ms.is_none() && share >= threshold {
            result.closest_ms = Some(at);
        }
    }
    result.series = thin(series, MAX_POINTS);
    result
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

    #[test]
    fn a_three_node_history_converges_when_the_last_table_fills() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = [
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
            "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4",
        ];
        let started = |id: &str, s: u32| {
            format!(
                r#"{{"v":1,"ts":"2026-11-25T10:00:{s:02}.000Z","type":"node_started","peer_id":"{id}","role":"peer","listen_addrs":[]}}"#
            )
        };
        let table = |s: u32, peers: &[&str]| {
            let list: Vec<String> = peers
                .iter()
                .map(|p| format!(r#"{{"peer_id":"{p}","bucket":255}}"#))
                .collect();
            format!(
                r#"{{"v":1,"ts":"2026-11-25T10:00:{s:02}.000Z","type":"routing_table","reason":"changed","size":{},"peers":[{}]}}"#,
                peers.len(),
                list.join(",")
            )
        };
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
}
