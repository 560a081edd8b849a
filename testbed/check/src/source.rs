//! Where logs come from: saved files (or stdin), a compose project's containers or a swarm stack's
//! tasks through the Docker Engine API, or pods through the Kubernetes API. Each streams line by
//! line into an [`Ingest`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures::StreamExt;
use testbed_docker::bollard::Docker;
use testbed_docker::{DockerError, LogTarget, Scope, log_lines, members};

use testbed_events::Timestamp;

use crate::ingest::Ingest;

/// Containers whose logs are read at once: enough to hide latency, few enough not to swamp the
/// daemon while a thousand containers run.
const DOCKER_CONCURRENCY: usize = 16;

/// What to read.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder of per-node logs, one file, or `-` for stdin.
    Files(PathBuf),
    /// Every container (running or not) of this compose project.
    Compose(String),
    /// Every task (running or not) of this swarm stack (`docker stack deploy`), on any node of
    /// the swarm: read through this daemon, which must be a manager.
    Stack(String),
    /// Every testbed pod of this Kubernetes namespace (`deploy/k8s`), through the Kubernetes API.
    Kubernetes(String),
}

impl Source {
    /// `--logs -`.
    pub fn is_stdin(&self) -> bool {
        matches!(self, Source::Files(p) if p.as_os_str() == "-")
    }

    /// The Docker objects this source reads, if it reads Docker.
    pub fn docker_scope(&self) -> Option<Scope> {
        match self {
            Source::Compose(project) => Some(Scope::Compose(project.clone())),
            Source::Stack(stack) => Some(Scope::Stack(stack.clone())),
            Source::Files(_) | Source::Kubernetes(_) => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Files(_) if self.is_stdin() => write!(f, "stdin"),
            Source::Files(p) => write!(f, "{}", p.display()),
            Source::Compose(project) => write!(f, "compose project \"{project}\""),
            Source::Stack(stack) => write!(f, "swarm stack \"{stack}\""),
            Source::Kubernetes(namespace) => write!(f, "Kubernetes namespace \"{namespace}\""),
        }
    }
}

/// Why logs could not be read (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no log files in {0} (expected one file per node, or `docker compose logs` output)")]
    NoFiles(String),
    #[error(
        "cannot reach the Docker daemon: {0}. Is Docker running (DOCKER_HOST, /var/run/docker.sock)? \
         Saved logs can be checked with --logs PATH"
    )]
    NoDaemon(String),
    #[error("the Docker daemon failed: {0}")]
    Docker(String),
    #[error(
        "no containers in compose project \"{0}\": is it up? Name it with --project or \
         COMPOSE_PROJECT_NAME (docker compose ls / docker ps list projects)"
    )]
    NoContainers(String),
    #[error("no tasks in swarm stack \"{0}\": is it deployed? (docker stack ls lists stacks)")]
    NoTasks(String),
    #[error("{0}")]
    Kube(#[from] testbed_kube::KubeError),
    #[error(
        "no kad-testbed pods in Kubernetes namespace \"{0}\" (label {sel}): is deploy/k8s applied \
         there? (kubectl get pods -n {0})",
        sel = testbed_kube::SELECTOR
    )]
    NoPods(String),
    #[error("no kad-testbed events in {origin} ({lines} lines read): is this a kad-node log?")]
    NoEvents { origin: String, lines: u64 },
}

impl From<DockerError> for SourceError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::NoDaemon(m) => SourceError::NoDaemon(m),
            DockerError::Api(m) => SourceError::Docker(m),
            e @ DockerError::Timeout(_) => SourceError::Docker(e.to_string()),
        }
    }
}

/// Reads every testbed pod's log in `namespace` into `ingest` (whole logs: the Kubernetes API
/// has no cursor to resume from, unlike Docker's `since`).
pub async fn read_kubernetes(namespace: &str, ingest: &mut Ingest) -> Result<(), SourceError> {
    let client = testbed_kube::connect().await?;
    let pods = testbed_kube::pod_logs(&client, namespace).await?;
    if pods.is_empty() {
        return Err(SourceError::NoPods(namespace.to_owned()));
    }
    for pod in pods {
        for line in pod.text.lines() {
            ingest.push_line(&pod.name, line);
        }
        ingest.set_exited(&pod.name, !pod.running);
    }
    Ok(())
}

/// What `testbed up` recorded about a run in its `run.json`, found in a run folder
/// (`runs/<name>/`) or beside its `logs/`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct RecordedRun {
    /// When the run began stopping its nodes (`None` for a run left running with `--keep`).
    pub shutdown_began: Option<Timestamp>,
    /// Peers besides the bootstrap node.
    pub peers: Option<usize>,
    /// When the live check ended: the instant the run's verdict judged.
    pub checked_at: Option<Timestamp>,
    /// Peers the run killed on purpose (`bench --churn`, or a scenario): not expected among the
    /// live nodes.
    pub churn: Option<RecordedChurn>,
    /// The scenario the run played (`up --scenario`), if any: it adds, restarts and removes
    /// nodes, so the number expected live is its expectations' business, not the peer count's.
    pub scenario: Option<RecordedScenario>,
}

/// The scenario part of `run.json` (only its name is read here).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct RecordedScenario {
    pub name: String,
}

/// The churn part of `run.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct RecordedChurn {
    pub killed: Vec<RecordedKill>,
}

/// A node the run killed, and when: a departure at that moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RecordedKill {
    /// Its name in the saved logs.
    pub node: String,
    pub at: Timestamp,
}

impl RecordedRun {
    /// The nodes the run killed, by log name, with when.
    pub fn kills(&self) -> impl Iterator<Item = (&str, Timestamp)> {
        self.churn
            .iter()
            .flat_map(|c| c.killed.iter().map(|k| (k.node.as_str(), k.at)))
    }

    /// What the run tells its verdict that the logs do not: when its shutdown began, and how
    /// many nodes it expects live (each only where `opts` does not say).
    pub fn fill(&self, opts: &mut crate::CheckOptions) {
        opts.shutdown_at = opts.shutdown_at.or(self.shutdown_began);
        opts.expect_nodes = opts.expect_nodes.or(self.expected_nodes());
    }

    /// The live nodes the run expects at its end: the bootstrap and the peers, but for those it
    /// killed; none for a scenario.
    pub fn expected_nodes(&self) -> Option<usize> {
        if self.scenario.is_some() {
            return None;
        }
        let killed = self.churn.as_ref().map_or(0, |c| c.killed.len());
        self.peers.map(|p| (p + 1).saturating_sub(killed))
    }
}

/// The `run.json` of a run folder, if `path` is one (or its `logs/`) and it parses.
pub fn recorded_run(path: &Path) -> Option<RecordedRun> {
    let candidates = [
        path.join("run.json"),
        path.parent()
            .map(|p| p.join("run.json"))
            .unwrap_or_default(),
    ];
    candidates.iter().filter(|p| p.is_file()).find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        serde_json::from_str::<RecordedRun>(&text).ok()
    })
}

pub fn read_files(path: &Path, ingest: &mut Ingest) -> Result<(), SourceError> {
    if path.as_os_str() == "-" {
        return read_stream("stdin", std::io::stdin().lock(), ingest);
    }
    let io = |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        let file = std::fs::File::open(path).map_err(io)?;
        return read_stream(&node_name(path), file, ingest);
    }
    let files = log_files(path)?;
    // One file per node: read them on every core (a 1000-node run is ~600 MB of events).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let parts = read_files_parallel(&files, workers, ingest.cutoff())?;
    // Files that share a node (a compose dump split in two, or a dump beside that node's own
    // file) must be read in order into one digest: then read them all in order, on one core.
    let mut names = std::collections::HashSet::new();
    let disjoint = parts
        .iter()
        .all(|part| part.logs().all(|log| names.insert(log.name.clone())));
    if !disjoint {
        for file in &files {
            read_file(file, ingest)?;
        }
        return Ok(());
    }
    for part in parts {
        ingest.merge(part);
    }
    Ok(())
}

/// The log files of a folder, sorted: a run folder's (`runs/<name>/`) are in its `logs/`.
/// Hidden files are not logs.
pub(crate) fn log_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io = |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = if path.join("logs").is_dir() {
        path.join("logs")
    } else {
        path.to_owned()
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    if files.is_empty() {
        return Err(SourceError::NoFiles(dir.display().to_string()));
    }
    files.sort();
    Ok(files)
}

/// Reads `files` on `workers` threads, each into its own digest.
fn read_files_parallel(
    files: &[PathBuf],
    workers: usize,
    cutoff: Option<Timestamp>,
) -> Result<Vec<Ingest>, SourceError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Ingest::until(cutoff);
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = files.get(i) else {
                            return Ok(mine);
                        };
                        read_file(file, &mut mine)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                // A worker that panicked lost its files: an error, never a silently smaller run.
                h.join().unwrap_or_else(|_| {
                    Err(SourceError::Io {
                        path: "a log folder".into(),
                        source: std::io::Error::other("a reader thread panicked"),
                    })
                })
            })
            .collect()
    })
}

/// One per-node file (or compose dump) into `ingest`.
fn read_file(file: &Path, ingest: &mut Ingest) -> Result<(), SourceError> {
    let f = std::fs::File::open(file).map_err(|source| SourceError::Io {
        path: file.display().to_string(),
        source,
    })?;
    read_stream(&node_name(file), f, ingest)
}

/// The node name for a file: its name without a log-ish extension.
pub fn node_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    for ext in [".jsonl", ".log", ".txt", ".json"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_owned();
        }
    }
    name
}

/// Reads lines (invalid UTF-8 and colours tolerated) from `reader` as the file `name`.
fn read_stream(name: &str, reader: impl Read, ingest: &mut Ingest) -> Result<(), SourceError> {
    each_line(name, reader, |line| ingest.push_file_line(name, line))
}

/// Calls `f` with each line of `reader` (the file `name`, for errors), streamed, without its
/// line end, invalid UTF-8 replaced and terminal colours removed. The one way logs are read.
pub(crate) fn each_line(
    name: &str,
    reader: impl Read,
    mut f: impl FnMut(&str),
) -> Result<(), SourceError> {
    let mut lines = Lines::new(name, reader);
    while let Some(line) = lines.next_line()? {
        f(&line);
    }
    Ok(())
}

/// A log read a line at a time, as [`each_line`] reads it: for a reader that stops between
/// lines ([`crate::instants`]).
pub(crate) struct Lines<R> {
    name: String,
    reader: BufReader<R>,
    buf: Vec<u8>,
    /// Bytes of the lines returned so far.
    consumed: u64,
}

impl<R: Read> Lines<R> {
    pub(crate) fn new(name: &str, reader: R) -> Self {
        Self::with_capacity(name, reader, 256 * 1024)
    }

    /// With a read buffer of `capacity` bytes: small for a reader that reads a little at a time.
    pub(crate) fn with_capacity(name: &str, reader: R, capacity: usize) -> Self {
        Self {
            name: name.to_owned(),
            reader: BufReader::with_capacity(capacity, reader),
            buf: Vec::with_capacity(4096),
            consumed: 0,
        }
    }

    /// How many bytes the lines returned so far took, line ends included.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next line, or `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<Cow<'_, str>>, SourceError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| SourceError::Io {
                path: self.name.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.consumed += n as u64;
        // Valid UTF-8 is the rule: `from_utf8` checks it several times faster than the lossy
        // decoder, which is only the fallback.
        let line = match std::str::from_utf8(&self.buf) {
            Ok(text) => Cow::Borrowed(text.trim_end_matches(['\n', '\r'])),
            Err(_) => Cow::Owned(
                String::from_utf8_lossy(&self.buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
        };
        Ok(Some(if line.contains('\x1b') {
            Cow::Owned(strip_ansi_escapes::strip_str(&line))
        } else {
            line
        }))
    }
}

/// Reads the logs of a compose project's containers or a swarm stack's tasks, incrementally: the
/// first read takes each one's whole stdout, later ones only what was written since (by Docker's
/// timestamps). Waiting on a thousand containers would otherwise make the daemon decode every log
/// again every few seconds.
#[derive(Debug)]
pub struct DockerReader {
    scope: Scope,
    /// Leave out events after this instant (`--at`).
    cutoff: Option<Timestamp>,
    docker: Option<Docker>,
    members: HashMap<LogTarget, MemberLog>,
}

#[derive(Debug)]
struct MemberLog {
    name: String,
    ingest: Ingest,
    /// Docker's timestamp of the last line read.
    read_until: Option<SystemTime>,
}

impl DockerReader {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            cutoff: None,
            docker: None,
            members: HashMap::new(),
        }
    }

    /// Keeps only events up to `cutoff`.
    pub fn until(self, cutoff: Option<Timestamp>) -> Self {
        Self { cutoff, ..self }
    }

    /// Reads what is new and returns the ingest of every member.
    pub async fn read(&mut self) -> Result<Vec<&Ingest>, SourceError> {
        if self.docker.is_none() {
            self.docker = Some(testbed_docker::connect().await?);
        }
        let Some(docker) = &self.docker else {
            unreachable!("connected above")
        };
        let found = members(docker, &self.scope).await?;
        if found.is_empty() {
            return Err(match &self.scope {
                Scope::Compose(p) => SourceError::NoContainers(p.clone()),
                Scope::Stack(s) => SourceError::NoTasks(s.clone()),
            });
        }
        let mut running_by_target = HashMap::new();
        for member in found {
            running_by_target.insert(member.logs.clone(), member.running);
            self.members
                .entry(member.logs)
                .or_insert_with(|| MemberLog {
                    name: member.name,
                    ingest: Ingest::until(self.cutoff),
                    read_until: None,
                });
        }
        // Containers and tasks removed since the last read are gone from the network.
        self.members
            .retain(|target, _| running_by_target.contains_key(target));
        let results: Vec<Result<(), SourceError>> = futures::stream::iter(self.members.iter_mut())
            .map(|(target, log)| {
                let running = running_by_target.get(target).copied().unwrap_or(false);
                async move {
                    read_member(docker, target, log).await?;
                    log.ingest.set_exited(&log.name, !running);
                    Ok(())
                }
            })
            .buffer_unordered(DOCKER_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(self.members.values().map(|c| &c.ingest).collect())
    }
}

/// Streams what one container or task wrote on stdout (not stderr: diagnostics live there) since
/// the last read into its log.
async fn read_member(
    docker: &Docker,
    target: &LogTarget,
    log: &mut MemberLog,
) -> Result<(), SourceError> {
    let since = log.read_until;
    log_lines(docker, target, since, false, |_, ts, line| {
        if let (Some(ts), Some(until)) = (ts, log.read_until)
            && ts <= until
        {
            return;
        }
        if ts.is_some() {
            log.read_until = ts;
        }
        log.ingest.push_line(&log.name, line);
    })
    .await
    .map_err(SourceError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_tells_when_its_shutdown_began() {
        let run = tempfile::tempdir().expect("tempdir");
        let logs = run.path().join("logs");
        std::fs::create_dir(&logs).expect("mkdir");
        assert_eq!(recorded_run(run.path()), None);
        std::fs::write(
            run.path().join("run.json"),
            r#"{"name":"x","peers":10,"shutdown_began":"2026-11-25T10:00:05.250Z"}"#,
        )
        .expect("write");
        let want = Some(RecordedRun {
            shutdown_began: Timestamp::parse_rfc3339("2026-11-25T10:00:05.250Z").ok(),
            peers: Some(10),
            checked_at: None,
            churn: None,
            scenario: None,
        });
        // From the run folder and from its logs/ alike.
        assert_eq!(recorded_run(run.path()), want);
        assert_eq!(recorded_run(&logs), want);
        assert_eq!(
            want.as_ref().and_then(RecordedRun::expected_nodes),
            Some(11)
        );
        // A churn run expects the killed peers gone.
        std::fs::write(
            run.path().join("run.json"),
            r#"{"peers":10,"churn":{"killed":[
                {"node":"peer_1","container":"kt_peer_1","at":"2026-11-25T10:00:05.250Z"},
                {"node":"peer_4","container":"kt_peer_4","at":"2026-11-25T10:00:05.350Z"}
            ],"began":null}}"#,
        )
        .expect("write");
        assert_eq!(
            recorded_run(run.path()).and_then(|r| r.expected_nodes()),
            Some(9)
        );
        // A scenario run expects no count: its steps add and restart nodes.
        std::fs::write(
            run.path().join("run.json"),
            r#"{"peers":10,"churn":{"killed":[{"node":"peer_1","at":"2026-11-25T10:00:05.250Z"}]},
                "scenario":{"name":"churn","steps":[]}}"#,
        )
        .expect("write");
        assert_eq!(
            recorded_run(run.path()).and_then(|r| r.expected_nodes()),
            None
        );
        // A run left running records no shutdown.
        std::fs::write(run.path().join("run.json"), r#"{"shutdown_began":null}"#).expect("write");
        assert_eq!(
            recorded_run(run.path()).and_then(|r| r.shutdown_began),
            None
        );
    }

    #[test]
    fn node_names_drop_log_extensions() {
        assert_eq!(
            node_name(Path::new("runs/x/logs/kad-peer-3.log")),
            "kad-peer-3"
        );
        assert_eq!(node_name(Path::new("a.jsonl")), "a");
        assert_eq!(node_name(Path::new("b")), "b");
    }
}
