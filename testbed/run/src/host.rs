//! Host limits a testbed hits before the DHT does.
//!
//! Linux keeps one neighbour (ARP) table for every container on a host, with a hard cap of
//! `net.ipv4.neigh.default.gc_thresh3` entries (1024 by default). Each node that talks to a peer
//! needs an entry for it, so a few dozen chatty containers overflow it: the kernel logs "neighbor
//! table overflow" and dials time out. Measured here: 833 dial errors at 41 nodes with the default,
//! 0 after raising it.

use std::path::Path;

const NEIGH: &str = "/proc/sys/net/ipv4/neigh/default";

/// Below this many nodes the default table is enough (overflow was seen from ~32).
const SMALL_NETWORK: usize = 24;

/// Entries each node may need: the peers it keeps talking to. Kademlia tables cap at 20 a bucket,
/// and a node talks to its table plus the peers its lookups meet; 256 covers that with room.
const PEERS_PER_NODE: usize = 256;

/// Neighbour-table thresholds sized for `nodes` containers.
pub fn needed(nodes: usize) -> [u64; 3] {
    let entries = (nodes * nodes.min(PEERS_PER_NODE) * 2).max(1024) as u64;
    let thresh3 = entries.next_power_of_two();
    [thresh3 / 4, thresh3 / 2, thresh3]
}

/// What was found and done, to print.
#[derive(Debug, Default)]
pub struct HostCheck {
    pub notes: Vec<String>,
}

/// Checks the neighbour table for `nodes` containers and raises it when allowed (root); when not,
/// fails with the command to run, unless `ignore` is set.
pub fn check_neighbour_table(nodes: usize, ignore: bool) -> anyhow::Result<HostCheck> {
    let mut check = HostCheck::default();
    let want = needed(nodes);
    let current: Option<Vec<u64>> = (1..=3)
        .map(|i| {
            std::fs::read_to_string(Path::new(NEIGH).join(format!("gc_thresh{i}")))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    let Some(current) = current else {
        check.notes.push(format!(
            "cannot read {NEIGH}/gc_thresh*: not a Linux Docker host (Docker Desktop's VM has its own limits)"
        ));
        return Ok(check);
    };
    if current[2] >= want[2] || nodes <= SMALL_NETWORK {
        return Ok(check);
    }
    let command = format!(
        "sudo sysctl -w net.ipv4.neigh.default.gc_thresh1={} net.ipv4.neigh.default.gc_thresh2={} net.ipv4.neigh.default.gc_thresh3={}",
        want[0], want[1], want[2]
    );
    let raised = (1..=3).all(|i| {
        let path = Path::new(NEIGH).join(format!("gc_thresh{i}"));
        // Only raise, never lower what an administrator set.
        let value = want[i - 1].max(current[i - 1]);
        std::fs::write(path, value.to_string()).is_ok()
    });
    if raised {
        check.notes.push(format!(
            "raised the host's neighbour (ARP) table from gc_thresh3 = {} to {} for {nodes} nodes \
             (undo: sudo sysctl -w net.ipv4.neigh.default.gc_thresh3={})",
            current[2], want[2], current[2]
        ));
        return Ok(check);
    }
    let message = format!(
        "the host's neighbour (ARP) table holds {} entries (gc_thresh3); {nodes} nodes need about {}: \
         past ~30 containers dials time out with \"neighbor table overflow\" in dmesg. Run:\n  {command}",
        current[2], want[2]
    );
    if ignore {
        check.notes.push(format!("ignoring: {message}"));
        Ok(check)
    } else {
        anyhow::bail!("{message}\nor pass --ignore-host-limits to try anyway")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_grow_with_the_network_and_stay_ordered() {
        let small = needed(10);
        assert_eq!(small[2], 1024);
        let big = needed(1000);
        assert!(big[2] >= 1000 * 256 * 2);
        assert!(big[0] < big[1] && big[1] < big[2]);
    }
}
