//! Log lines for tests: one event each, at 10:00:SS on 2026-11-25.

/// A `node_started` line at 10:00:`s`.
pub fn started(id: &str, s: u32) -> String {
    format!(
        r#"{{"v":1,"ts":"2026-11-25T10:00:{s:02}.000Z","type":"node_started","peer_id":"{id}","role":"peer","listen_addrs":[]}}"#
    )
}

/// A `routing_table` line at 10:00:`s` holding `peers`.
pub fn table(s: u32, peers: &[&str]) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|p| format!(r#"{{"peer_id":"{p}","bucket":255}}"#))
        .collect();
    format!(
        r#"{{"v":1,"ts":"2026-11-25T10:00:{s:02}.000Z","type":"routing_table","reason":"changed","size":{},"peers":[{}]}}"#,
        peers.len(),
        list.join(",")
    )
}
