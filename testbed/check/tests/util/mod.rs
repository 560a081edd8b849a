//! Helpers for the checker's tests: captured runs copied into a temp folder, edited into broken
//! ones, and the binary run on them.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_testbed-check");

/// A captured run: 11 nodes (bootstrap + 10 peers) saved by `testbed up`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a captured run that a test may break.
pub struct Logs {
    pub dir: tempfile::TempDir,
}

impl Logs {
    pub fn copy_of(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(fixture(name)).expect("fixture exists") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .expect("read dir")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .file_stem()
                    .expect("stem")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    fn file(&self, node: &str) -> PathBuf {
        self.path().join(format!("{node}.log"))
    }

    pub fn lines(&self, node: &str) -> Vec<String> {
        std::fs::read_to_string(self.file(node))
            .expect("log exists")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn write(&self, node: &str, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(self.file(node), text).expect("write log");
    }

    pub fn remove(&self, node: &str) {
        std::fs::remove_file(self.file(node)).expect("remove log");
    }

    /// Rewrites every event of `node` with `f` (`None` drops the line).
    pub fn edit_events(&self, node: &str, mut f: impl FnMut(Value) -> Option<Value>) {
        let lines = self
            .lines(node)
            .into_iter()
            .filter_map(|l| f(serde_json::from_str(&l).expect("fixture lines are JSON")))
            .map(|v| v.to_string())
            .collect::<Vec<_>>();
        self.write(node, &lines);
    }

    /// The node's peer id, from its node_started.
    pub fn peer_id(&self, node: &str) -> String {
        self.lines(node)
            .iter()
            .find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["type"] == "node_started").then(|| v["peer_id"].as_str().map(str::to_owned))?
            })
            .expect("node_started")
    }

    /// Removes `peer` from every routing_table of every node.
    pub fn drop_from_all_tables(&self, peer: &str) {
        for node in self.names() {
            self.edit_events(&node, |mut v| {
                if v["type"] == "routing_table" {
                    let peers: Vec<Value> = v["peers"]
                        .as_array()
                        .expect("peers")
                        .iter()
                        .filter(|p| p["peer_id"] != peer)
                        .cloned()
                        .collect();
                    v["size"] = peers.len().into();
                    v["peers"] = Value::Array(peers);
                }
                Some(v)
            });
        }
    }

    /// The latest timestamp in any log.
    pub fn last_ts(&self) -> String {
        self.names()
            .iter()
            .flat_map(|n| self.lines(n))
            .filter_map(|l| {
                serde_json::from_str::<Value>(&l).ok()?["ts"]
                    .as_str()
                    .map(str::to_owned)
            })
            .max()
            .expect("some event")
    }
}

/// What the checker said.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn says(&self, text: &str) -> bool {
        self.stdout.contains(text) || self.stderr.contains(text)
    }
}

/// Runs `testbed-check` with `args`, feeding `stdin`.
pub fn check_with_stdin(args: &[&str], stdin: &str) -> Outcome {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("COMPOSE_PROJECT_NAME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("testbed-check runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("feed stdin");
    let out = child.wait_with_output().expect("finishes");
    let outcome = Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!outcome.stderr.contains("panicked"), "{outcome:?}");
    outcome
}

/// Runs `testbed-check --logs <path> args…`.
pub fn check(path: &Path, args: &[&str]) -> Outcome {
    let path = path.to_str().expect("utf-8 path");
    let mut all = vec!["--logs", path];
    all.extend_from_slice(args);
    check_with_stdin(&all, "")
}
