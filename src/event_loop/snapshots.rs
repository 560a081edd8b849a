//! Routing-table snapshots (debounced on change, a heartbeat, the final one on shutdown) and the
//! health file written with each.

use std::io::Write;

use testbed_events::{Event, SnapshotReason, TableEntry, Timestamp};
use tokio::time::Instant;

use super::EventLoop;
use crate::health::{self, HealthState};

impl<W: Write> EventLoop<W> {
    pub(super) fn table_changed(&mut self) {
        self.liveness.table_changed_at(Instant::now());
        if self.snapshot_due.is_none() {
            self.snapshot_due = Some(Instant::now() + self.timers.table_debounce);
        }
    }

    pub(super) fn table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum()
    }

    /// Writes the full routing table, and the health file with it.
    pub(super) fn snapshot(&mut self, reason: SnapshotReason) {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            let index = bucket.range().0.ilog2().unwrap_or(0);
            for entry in bucket.iter() {
                peers.push(TableEntry {
                    peer_id: entry.node.key.preimage().to_string(),
                    bucket: index,
                });
            }
        }
        self.snapshot_due = None;
        self.last_snapshot = Instant::now();
        if reason == SnapshotReason::Changed {
            // The k closest may have changed: keep their connections open (liveness.rs).
            self.update_watched();
        }
        let size = peers.len();
        self.emit(Event::RoutingTable {
            reason,
            size,
            peers,
            crawled: None,
        });
        self.write_health_with(size);
        crate::memory::release_free_heap();
    }

    pub(super) fn write_health(&mut self) {
        let size = self.table_size();
        self.write_health_with(size);
    }

    pub(super) fn write_health_with(&mut self, table_size: usize) {
        let Some(path) = &self.health_file else {
            return;
        };
        let state = HealthState {
            peer_id: self.swarm.local_peer_id().to_string(),
            role: self.role,
            listening: self.swarm.listeners().next().is_some(),
            table_size,
            updated: Timestamp::now(),
        };
        if let Err(e) = health::write(path, &state) {
            if !self.health_error_reported {
                tracing::error!(
                    path = %path.display(),
                    "cannot write the health file ({e}); `kad-node health` will report unhealthy. \
                     Mount a writable tmpfs there (docker run --tmpfs /tmp) or unset KAD_HEALTH_FILE"
                );
                self.health_error_reported = true;
            }
        }
    }
}
