//! The health file: the node writes it, `kad-node health` (a Docker HEALTHCHECK) reads it.
//!
//! A scratch image has no shell or curl, and a probe that joins the DHT itself would cost a full
//! libp2p handshake per check on every container. A small file written atomically at each
//! routing-table snapshot costs nothing and is fresh as long as the node's heartbeat runs.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testbed_events::{Role, Timestamp};

/// What the node last reported about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthState {
    pub peer_id: String,
    pub role: Role,
    pub listening: bool,
    pub table_size: usize,
    pub updated: Timestamp,
}

/// Writes `state` to `path` atomically (temp file and rename), so a reader never sees half a file.
pub fn write(path: &Path, state: &HealthState) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// The verdict of `kad-node health`: `Ok` with a one-line summary, or `Err` with the reason.
pub fn check(
    path: &Path,
    max_age: Duration,
    require_peers: bool,
    now: Timestamp,
) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the health file {}: {e} (is the node running with --health-file / \
             KAD_HEALTH_FILE set to this path, on a writable filesystem such as a tmpfs?)",
            path.display()
        )
    })?;
    let state: HealthState = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the health file {} is not valid: {e}", path.display()))?;
    let age = Duration::from_millis(now.millis_since(state.updated));
    if age > max_age {
        return Err(format!(
            "the health file is {}s old (limit {}s): the node stopped updating it",
            age.as_secs(),
            max_age.as_secs()
        ));
    }
    if !state.listening {
        return Err("the node is not listening".into());
    }
    let alone_is_fine = state.role == Role::Bootstrap && !require_peers;
    if state.table_size == 0 && !alone_is_fine {
        return Err(format!(
            "the routing table of {} ({}) is empty",
            state.peer_id,
            state.role.as_str()
        ));
    }
    Ok(format!(
        "healthy: {} ({}) listening, {} peers in its routing table",
        state.peer_id,
        state.role.as_str(),
        state.table_size
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(role: Role, table_size: usize, updated: u64) -> HealthState {
        HealthState {
            peer_id: "12D3KooWtest".into(),
            role,
            listening: true,
            table_size,
            updated: Timestamp(updated),
        }
    }

    fn verdict(s: &HealthState, require_peers: bool, now: u64) -> Result<String, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("health");
        write(&path, s).expect("writes");
        check(
            &path,
            Duration::from_secs(90),
            require_peers,
            Timestamp(now),
        )
    }

    #[test]
    fn a_peer_with_a_table_is_healthy() {
        assert!(verdict(&state(Role::Peer, 3, 1_000), false, 2_000).is_ok());
    }

    #[test]
    fn a_peer_with_an_empty_table_is_not() {
        let err = verdict(&state(Role::Peer, 0, 1_000), false, 2_000).expect_err("unhealthy");
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn the_bootstrap_may_be_alone_unless_peers_are_required() {
        assert!(verdict(&state(Role::Bootstrap, 0, 1_000), false, 2_000).is_ok());
        assert!(verdict(&state(Role::Bootstrap, 0, 1_000), true, 2_000).is_err());
    }

    #[test]
    fn a_stale_file_is_unhealthy() {
        let err = verdict(&state(Role::Peer, 3, 1_000), false, 100_000).expect_err("stale");
        assert!(err.contains("old"), "{err}");
    }

    #[test]
    fn a_missing_file_says_what_to_do() {
        let err = check(
            Path::new("/nonexistent/health"),
            Duration::from_secs(1),
            false,
            Timestamp(0),
        )
        .expect_err("missing");
        assert!(err.contains("KAD_HEALTH_FILE"), "{err}");
    }
}
