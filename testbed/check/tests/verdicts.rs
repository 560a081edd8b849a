//! The checker against captured real runs and broken runs made from them. Each test asserts the
//! exit code and the reason the report gives.

mod util;

use serde_json::{Value, json};
use util::{Logs, check, check_with_stdin, fixture};

#[test]
fn a_healthy_live_run_passes() {
    let out = check(
        &fixture("live-10"),
        &["--expect-nodes", "11", "--full-mesh"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.says("PASS: 5 / 5 properties hold over 11 nodes"),
        "{}",
        out.stdout
    );
    assert!(out.says("11 of 11 nodes (100.0 %) hold all of their 20 closest"));
}

#[test]
fn a_run_saved_after_down_is_judged_on_its_state_before_the_shutdown() {
    let out = check(&fixture("stopped-10"), &["--expect-nodes", "11"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("judging the run on its state before the shutdown"));
    assert!(out.says("stopped with run"));
}

#[test]
fn a_peer_missing_from_every_table_fails_and_is_named() {
    let logs = Logs::copy_of("live-10");
    let victim = logs.peer_id("peer_3");
    logs.drop_from_all_tables(&victim);
    let out = check(logs.path(), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.says("FAIL  every live peer is in ≥ 1 other node's routing table  [10 / 11]"),
        "{}",
        out.stdout
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("peer_3 ("))
        .expect("names peer_3");
    assert!(
        line.contains("in 0 other routing tables, expected ≥ 1"),
        "{line}"
    );
    // It did connect: the logs say so, and the report says the tables still lack it.
    assert!(
        line.contains(
            "nodes connected to it and 10 added it to their table, yet no latest table holds it"
        ),
        "{line}"
    );
    assert!(out.says("FAIL: "));
}

#[test]
fn an_isolated_node_fails_with_its_dial_errors_as_the_reason() {
    let logs = Logs::copy_of("live-10");
    let victim = logs.peer_id("peer_7");
    logs.drop_from_all_tables(&victim);
    // peer_7 never reached the bootstrap: it started, then its dials failed.
    let mut started = None;
    logs.edit_events("peer_7", |v| {
        if v["type"] == "node_started" {
            started = Some(v["ts"].clone());
            return Some(v);
        }
        None
    });
    let ts = started.expect("node_started");
    let mut lines = logs.lines("peer_7");
    for attempt in 1..=3 {
        lines.push(
            json!({"v":1,"ts":ts,"type":"dial_failed","peer_id":null,"addr":"/dns4/bootstrap/tcp/4001",
                   "error":"Failed to resolve DNS address: no record found","attempt":attempt,"retry_in_ms":500})
            .to_string(),
        );
    }
    logs.write("peer_7", &lines);
    for node in logs.names() {
        logs.edit_events(&node, |v| {
            let about_victim = v["peer_id"] == victim.as_str() && v["type"] != "node_started";
            (!about_victim).then_some(v)
        });
    }
    let out = check(logs.path(), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let seen = out
        .stdout
        .lines()
        .find(|l| l.contains("peer_7 (") && l.contains("other routing tables"))
        .expect("seen failure");
    assert!(seen.contains("it never connected to any node"), "{seen}");
    assert!(
        seen.contains("its bootstrap dials failed 3 times, last: Failed to resolve DNS address"),
        "{seen}"
    );
    let empty = out
        .stdout
        .lines()
        .find(|l| l.contains("peer_7 (") && l.contains("holds 0 live peers"))
        .expect("table failure");
    assert!(empty.contains("it wrote no routing_table yet"), "{empty}");
    assert!(
        empty.contains("never completed its initial Kademlia bootstrap"),
        "{empty}"
    );
}

#[test]
fn garbage_and_truncated_lines_are_counted_not_fatal() {
    let logs = Logs::copy_of("live-10");
    let mut lines = logs.lines("peer_1");
    lines.insert(1, "thread 'main' panicked at nothing".into());
    lines.insert(2, "\u{1b}[31m coloured noise \u{1b}[0m".into());
    lines.insert(3, r#"{"not":"an event"}"#.into());
    let last = lines.pop().expect("a last line");
    lines.push(last[..last.len() / 2].to_owned());
    logs.write("peer_1", &lines);
    std::fs::write(logs.path().join("peer_2.log"), {
        let mut bytes = std::fs::read(logs.path().join("peer_2.log")).expect("read");
        bytes.extend_from_slice(b"\xff\xfe binary junk\n");
        bytes
    })
    .expect("write");
    let out = check(logs.path(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("1 malformed or truncated"), "{}", out.stdout);
    assert!(
        out.says("3 not JSON") && out.says("1 not events"),
        "{}",
        out.stdout
    );
    assert!(
        out.says("peer_1, line"),
        "quotes the bad line: {}",
        out.stdout
    );
}

#[test]
fn a_departed_node_is_not_required_and_its_entries_are_stale() {
    let logs = Logs::copy_of("live-10");
    let victim = logs.peer_id("peer_5");
    let ts = logs.last_ts();
    let mut lines = logs.lines("peer_5");
    lines.push(
        json!({"v":1,"ts":ts,"type":"node_stopping","reason":"SIGTERM","uptime_ms":1000})
            .to_string(),
    );
    logs.write("peer_5", &lines);
    // Nobody's table lacks it, but even if they did it would not matter: drop it from half.
    for node in ["peer_1", "peer_2", "peer_3"] {
        logs.edit_events(node, |mut v| {
            if v["type"] == "routing_table" {
                let peers: Vec<Value> = v["peers"]
                    .as_array()
                    .expect("peers")
                    .iter()
                    .filter(|p| p["peer_id"] != victim.as_str())
                    .cloned()
                    .collect();
                v["size"] = peers.len().into();
                v["peers"] = Value::Array(peers);
            }
            Some(v)
        });
    }
    let out = check(logs.path(), &["--expect-nodes", "10"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("10 nodes judged, 1 departed"), "{}", out.stdout);
    assert!(
        out.says("entries at departed nodes, 0 at earlier identities of restarted nodes"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("peer_5 ") && l.contains("departed"))
    );
}

#[test]
fn a_restarted_node_counts_as_its_latest_incarnation() {
    let logs = Logs::copy_of("live-10");
    let ts = logs.last_ts();
    let mut lines = logs.lines("peer_2");
    // The container restarted with a fresh identity a moment after everyone's last snapshot, and
    // nobody has learned the new one yet.
    let later = ts.replace('Z', "").chars().collect::<String>();
    let later = format!("{}9Z", &later[..later.len() - 1]);
    lines.push(json!({"v":1,"ts":later,"type":"node_started","peer_id":"12D3KooWKmMxN7Hg1yd6ySzZ2K2y9tpwLAdPKbXrQpMcNcugjxfK",
                      "role":"peer","listen_addrs":["/ip4/172.18.0.4/tcp/4001"]}).to_string());
    lines.push(
        json!({"v":1,"ts":later,"type":"routing_table","reason":"changed","size":1,
                      "peers":[{"peer_id": logs.peer_id("bootstrap_1"), "bucket": 255}]})
        .to_string(),
    );
    logs.write("peer_2", &lines);
    let out = check(logs.path(), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("peer_2 ") && l.contains("restarted 1x")),
        "{}",
        out.stdout
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("peer_2 (") && l.contains("other routing tables"))
        .expect("peer_2 named");
    assert!(
        line.contains("after the other nodes' latest snapshots"),
        "{line}"
    );
    assert!(
        out.says("0 entries at departed nodes, 10 at earlier identities of restarted nodes"),
        "the old incarnation's id: {}",
        out.stdout
    );
}

#[test]
fn empty_input_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("empty.log"), "").expect("write");
    let out = check(dir.path(), &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.says("no kad-testbed events"), "{out:?}");
    let out = check_with_stdin(&["--logs", "-"], "just some text\n");
    assert_eq!(out.code, Some(2));
    assert!(
        out.says("no kad-testbed events in stdin (1 lines read)"),
        "{out:?}"
    );
    let out = check(&dir.path().join("nope"), &[]);
    assert_eq!(out.code, Some(2));
    assert!(out.says("cannot read") && out.says("nope"), "{out:?}");
}

#[test]
fn events_but_no_node_is_never_a_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = Logs::copy_of("live-10");
    let tables: Vec<String> = logs
        .lines("peer_1")
        .into_iter()
        .filter(|l| l.contains("\"routing_table\""))
        .collect();
    std::fs::write(dir.path().join("headless.log"), tables.join("\n")).expect("write");
    let out = check(dir.path(), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.says("no live nodes to judge: no log holds a node_started event"),
        "{}",
        out.stdout
    );
    assert!(
        out.says("have events but no node_started"),
        "{}",
        out.stdout
    );
}

#[test]
fn newer_schema_versions_and_unknown_events_are_reported_and_skipped() {
    let logs = Logs::copy_of("live-10");
    logs.edit_events("peer_4", |mut v| {
        v["v"] = 2.into();
        Some(v)
    });
    let mut lines = logs.lines("peer_6");
    lines.push(json!({"v":1,"ts":logs.last_ts(),"type":"gossip_received","topic":"x"}).to_string());
    lines.push(json!({"v":3,"ts":12,"type":"routing_table","peers":"compressed"}).to_string());
    logs.write("peer_6", &lines);
    let out = check(logs.path(), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("1 of unknown type (skipped)"), "{}", out.stdout);
    assert!(
        out.says("of a newer schema version (1 unreadable)"),
        "{}",
        out.stdout
    );
}

#[test]
fn compose_logs_output_is_read_in_both_prefix_styles() {
    // docker-compose 1.29 output as captured (with the banner and stderr lines interleaved).
    let out = check(&fixture("compose-v1-logs.txt"), &["--expect-nodes", "11"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    // The v2 style, `project-service-N  | `, built from the per-node captures, through stdin.
    let logs = Logs::copy_of("live-10");
    let mut combined = String::new();
    for node in logs.names() {
        let prefix = format!("kt-demo-{}", node.replace('_', "-"));
        for line in logs.lines(&node) {
            combined.push_str(&format!("{prefix:<22}| {line}\n"));
        }
    }
    let out = check_with_stdin(&["--logs", "-", "--expect-nodes", "11"], &combined);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("kt-demo-peer-10"), "{}", out.stdout);
    // Stdin is read once, also under --wait: a failure stays a failure (1), not "no events" (2).
    let out = check_with_stdin(
        &["--logs", "-", "--expect-nodes", "12", "--wait", "3s"],
        &combined,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.says("expected 12 live nodes, found 11"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_compose_dump_split_over_two_files_is_read_as_one() {
    // Each node's lines are in both files: read in parallel into separate digests, the second
    // half would replace the first (and lose every node_started).
    let whole = std::fs::read_to_string(fixture("compose-v1-logs.txt")).expect("fixture");
    let lines: Vec<&str> = whole.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("part-1.txt"), first.join("\n") + "\n").expect("write");
    std::fs::write(dir.path().join("part-2.txt"), second.join("\n") + "\n").expect("write");
    let out = check(dir.path(), &["--expect-nodes", "11"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.says("PASS: 4 / 4 properties hold over 11 nodes"),
        "{}",
        out.stdout
    );
}

#[test]
fn json_and_junit_reports_carry_the_failure() {
    let logs = Logs::copy_of("live-10");
    logs.drop_from_all_tables(&logs.peer_id("peer_9"));
    let junit = logs.path().join("junit.xml");
    let junit_arg = junit.to_str().expect("utf-8");
    let out = check(logs.path(), &["--json", "--junit", junit_arg]);
    assert_eq!(out.code, Some(1));
    let report: Value = serde_json::from_str(&out.stdout).expect("stdout is the JSON report");
    assert_eq!(report["passed"], false);
    let seen = report["properties"]
        .as_array()
        .expect("properties")
        .iter()
        .find(|p| p["id"] == "seen")
        .expect("seen");
    assert_eq!(
        (
            seen["status"].as_str(),
            seen["holds"].as_u64(),
            seen["of"].as_u64()
        ),
        (Some("fail"), Some(10), Some(11))
    );
    assert!(
        seen["failures"][0]
            .as_str()
            .expect("text")
            .contains("peer_9")
    );
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.contains("<failure") && xml.contains("peer_9"), "{xml}");
    assert!(
        xml.contains("tests=\"4\"") && xml.contains("failures=\"2\""),
        "{xml}"
    );
}

#[test]
fn the_expected_node_count_is_enforced() {
    let out = check(&fixture("live-10"), &["--expect-nodes", "12"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.says("expected 12 live nodes, found 11"),
        "{}",
        out.stdout
    );
    let logs = Logs::copy_of("live-10");
    logs.remove("peer_8");
    let out = check(logs.path(), &["--expect-nodes", "11"]);
    assert_eq!(out.code, Some(1));
    assert!(out.says("expected 11 live nodes, found 10"));
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["--closest-threshold", "150%"][..], "--closest-threshold"),
        (&["--wait", "forever"][..], "--wait"),
        (&["--closest", "0"][..], "--closest"),
        (&["--logs", "x", "--project", "y"][..], "--project"),
        (&["--logs", "x", "--stack", "y"][..], "--stack"),
        (&["--k8s-namespace", "x", "--stack", "y"][..], "--stack"),
    ] {
        let out = check_with_stdin(args, "");
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains(flag), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn no_docker_daemon_exits_2_with_what_to_do() {
    // A compose project and a swarm stack are both read through the daemon.
    for source in ["--project", "--stack"] {
        let out = std::process::Command::new(util::BIN)
            .args([source, "anything"])
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{source}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot reach the Docker daemon") && stderr.contains("--logs"),
            "{source}: {stderr}"
        );
    }
}

#[test]
fn no_kubernetes_cluster_exits_2_with_what_to_do() {
    let home = tempfile::tempdir().expect("a temp dir");
    let out = std::process::Command::new(util::BIN)
        .args(["--k8s-namespace", "kad"])
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env("HOME", home.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the Kubernetes API") && stderr.contains("KUBECONFIG"),
        "{stderr}"
    );
}

/// Captured from a real run (compose by hand, 6 peers): once healthy, peer_3 was stopped, peer_5
/// restarted 1 s later with a new identity, every node learned it, and 3.4 s after peer_3's stop
/// every container was stopped. Within `--shutdown-gap` (10 s) of the shutdown, peer_3's stop
/// still came before peer_5's restart: it departed. The network was healthy, so this passes.
#[test]
fn churn_near_the_end_is_a_departure_and_a_restart_and_passes() {
    let out = check(&fixture("churn-near-end"), &["--expect-nodes", "6"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("6 nodes judged, 1 departed"), "{}", out.stdout);
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("peer_3 ").ends_with("departed"), "{}", out.stdout);
    assert!(line("peer_5 ").contains("restarted 1x"), "{}", out.stdout);
    // Both gone identities linger in the other five tables, and the report says for how long.
    assert!(
        out.says(
            "stale: 10 routing-table entries in 5 live tables point at 2 gone peers (5 entries at \
             departed nodes, 5 at earlier identities of restarted nodes); the oldest still held 4.1 s"
        ),
        "{}",
        out.stdout
    );
}

/// The same logs with the shutdown said to begin before peer_3 stopped: peer_3 is then judged
/// with the run, on a table without peer_5's new identity, and the check fails, as the checker
/// before the restart rule failed this healthy run (it took every stop within 10 s of the last
/// for the shutdown). The recorded moment decides over the guess.
#[test]
fn a_shutdown_moment_before_a_departure_judges_the_departed_node_and_fails() {
    let stop = std::fs::read_to_string(util::fixture("churn-near-end").join("peer_3.log"))
        .expect("fixture")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "node_stopping")
        .and_then(|v| v["ts"].as_str().map(str::to_owned))
        .expect("peer_3 stopped");
    // One second before peer_3's stop: the stop is part of the shutdown now.
    let ts = testbed_events::Timestamp::parse_rfc3339(&stop).expect("timestamp");
    let earlier = testbed_events::Timestamp(ts.as_millis() - 1000).to_string();
    let out = check(&fixture("churn-near-end"), &["--shutdown-at", &earlier]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.says("7 nodes judged, 0 departed"), "{}", out.stdout);
    // The failure the old guess produced on this run: the stopped peer never learned the
    // restarted one, and the restarted one never knew the stopped one.
    assert!(
        out.says("FAIL  ≥ 90 % of live nodes hold their 20 XOR-closest"),
        "{}",
        out.stdout
    );
    assert!(out.says("peer_3 (12D3…AnDEm9): holds 5 of its 6 closest live peers"));
    assert!(out.says("peer_5 (12D3…E2PSZT): holds 5 of its 6 closest live peers"));
}

#[test]
fn a_bad_shutdown_moment_is_a_usage_error_naming_the_flag() {
    let out = check(&fixture("churn-near-end"), &["--shutdown-at", "yesterday"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("--shutdown-at") && out.stderr.contains("yesterday"),
        "{}",
        out.stderr
    );
}

/// `--at` judges the churn run as it stood at three instants (peer_3 stopped at 17:17:38.789,
/// peer_5's first incarnation at 39.904, its second started at 40.287).
#[test]
fn at_judges_the_network_as_it_stood_then() {
    let run = fixture("churn-near-end");
    // Before anything stopped: all seven live, healthy.
    let out = check(&run, &["--at", "2026-11-28T17:17:38.500Z"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("7 nodes judged, 0 departed"), "{}", out.stdout);
    assert!(out.says("as of 2026-11-28T17:17:38.500Z: events after it left out"));
    // Between the stop and the restart: peer_3 departed, peer_5's old identity still live.
    let out = check(&run, &["--at", "2026-11-28T17:17:39.500Z"]);
    assert!(out.says("6 nodes judged, 1 departed"), "{}", out.stdout);
    let peer_5 = out
        .stdout
        .lines()
        .find(|l| l.starts_with("peer_5 "))
        .unwrap_or_default();
    assert!(!peer_5.contains("restarted"), "{peer_5}");
    // At the first node's start nothing had a table yet: that fails, and says so.
    let out = check(&run, &["--at", "+0s"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.says("FAIL  every live node's routing table holds a live peer"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_bad_at_is_a_usage_error_naming_the_flag() {
    for bad in ["soon", "+ninety"] {
        let out = check(&fixture("churn-near-end"), &["--at", bad]);
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(
            out.stderr.contains("--at") && out.stderr.contains(bad.trim_start_matches('+')),
            "{}",
            out.stderr
        );
    }
}

/// A node the run killed (`bench --churn` records it in run.json) is departed from that moment:
/// its log just stops, and silence alone would tell only after three heartbeats.
#[test]
fn a_node_the_run_killed_is_departed_from_the_recorded_moment() {
    let logs = Logs::copy_of("live-10");
    let killed_at = logs.last_ts();
    let folder = logs.path().join("run");
    std::fs::create_dir_all(folder.join("logs")).expect("mkdir");
    for entry in std::fs::read_dir(logs.path()).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let name = path.file_name().expect("name");
            std::fs::rename(&path, folder.join("logs").join(name)).expect("move");
        }
    }
    let run = json!({
        "peers": 10,
        "churn": {"killed": [{"node": "peer_5", "container": "kt_peer_5", "at": killed_at}]}
    });
    std::fs::write(folder.join("run.json"), run.to_string()).expect("run.json");
    let out = check(&folder, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.says("10 nodes judged, 1 departed"), "{}", out.stdout);
    assert!(out.says("PASS  10 nodes are live"), "{}", out.stdout);

    // Without the record the same logs hold 11 live nodes, one more than the run expects.
    std::fs::write(folder.join("run.json"), json!({"peers": 9}).to_string()).expect("run.json");
    let out = check(&folder, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.says("11 nodes judged, 0 departed"), "{}", out.stdout);
}
