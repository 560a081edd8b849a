//! The `kad-node` binary as a process: signals, exit codes, the health subcommand.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testbed_events::{Envelope, Event, SnapshotReason};
use util::{latest_table, parse_events};

const BIN: &str = env!("CARGO_BIN_EXE_kad-node");

/// A node process whose stdout lines are collected by a thread; killed when dropped.
struct NodeProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl NodeProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--table-debounce",
                "100ms",
                "--walk-interval",
                "1s",
            ])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kad-node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Collects lines until `condition` holds on the events so far, or panics after `limit`.
    fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        condition: impl Fn(&[Envelope]) -> bool,
    ) -> Vec<Envelope> {
        let deadline = Instant::now() + limit;
        loop {
            let events = parse_events(&self.seen.join("\n"));
            if condition(&events) {
                return events;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {}
                Err(_) => panic!(
                    "timed out after {limit:?} (or stdout closed) waiting for {what}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; returns its exit code and all of its events.
    fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Vec<Envelope>) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "kad-node did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF; take everything it read.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        (status.code(), parse_events(&self.seen.join("\n")))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn started(events: &[Envelope]) -> Option<(String, String)> {
    Some((util::peer_id(events)?, util::listen_addr(events)?))
}

#[test]
fn sigterm_writes_the_final_snapshot_and_exits_zero_quickly() {
    let mut bootstrap = NodeProcess::start(&["--key-seed", "0"]);
    let events = bootstrap.wait_for("node_started", Duration::from_secs(10), |e| {
        started(e).is_some()
    });
    let (bootstrap_id, addr) = started(&events).expect("started");

    let mut joiner = NodeProcess::start(&["--bootstrap", &addr]);
    joiner.wait_for(
        "the bootstrap in the joiner's table",
        Duration::from_secs(20),
        |e| latest_table(e).is_some_and(|(_, t)| t.contains(&bootstrap_id)),
    );

    let sent = Instant::now();
    joiner.signal("TERM");
    let (code, events) = joiner.wait_exit(Duration::from_secs(5));
    let took = sent.elapsed();
    assert_eq!(code, Some(0));
    // The property: a stopped node exits well inside Docker's stop grace period (10 s in
    // docker-compose.yml), after which its final table would be lost to SIGKILL. It takes
    // milliseconds when idle; the 3 s margin is for a loaded 2-core CI machine, where the
    // process may wait for a core before it even sees the signal.
    assert!(took < Duration::from_secs(3), "stopped in {took:?}");
    let n = events.len();
    assert!(n >= 2);
    match (&events[n - 2].event, &events[n - 1].event) {
        (
            Event::RoutingTable {
                reason: SnapshotReason::Shutdown,
                peers,
                ..
            },
            Event::NodeStopping { reason, .. },
        ) => {
            assert!(
                peers.iter().any(|p| p.peer_id == bootstrap_id),
                "final table holds the bootstrap"
            );
            assert_eq!(reason, "SIGTERM");
        }
        other => panic!("expected a shutdown snapshot then node_stopping, got {other:?}"),
    }

    bootstrap.signal("INT");
    let (code, events) = bootstrap.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(
        matches!(&events.last().map(|e| &e.event), Some(Event::NodeStopping { reason, .. }) if reason == "SIGINT")
    );
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_flag_and_value() {
    for (args, flag, value) in [
        (
            &["--listen", "localhost:4001"][..],
            "--listen",
            "localhost:4001",
        ),
        (
            &["--bootstrap", "/ip4/10.0.0.1/udp/4001"][..],
            "--bootstrap",
            "/ip4/10.0.0.1/udp/4001",
        ),
        (&["--key-seed", "minus-one"][..], "--key-seed", "minus-one"),
        (&["--heartbeat", "often"][..], "--heartbeat", "often"),
    ] {
        let out = Command::new(BIN).args(args).output().expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "nothing on stdout for {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(flag) && first.contains(value),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_used_port_exits_1_naming_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = Command::new(BIN)
        .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&port.to_string()) && stderr.contains("--listen"),
        "{stderr}"
    );
}

#[test]
fn health_passes_for_a_lone_bootstrap_and_fails_without_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("health");
    let file_arg = file.to_str().expect("utf-8 path");
    let health = |extra: &[&str]| {
        Command::new(BIN)
            .args(["health", "--health-file", file_arg])
            .args(extra)
            .output()
            .expect("runs")
    };
    let out = health(&[]);
    assert_eq!(out.status.code(), Some(1), "no node, no health");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the health file"));

    let mut node = NodeProcess::start(&["--health-file", file_arg]);
    node.wait_for("node_started", Duration::from_secs(10), |e| {
        started(e).is_some()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(Instant::now() < deadline, "health file written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = health(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bootstrap"));
    let out = health(&["--require-peers"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}
