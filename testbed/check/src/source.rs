//! Where logs come from: saved files (or stdin), or a compose project's containers through the
//! Docker Engine API. Both stream line by line into an [`Ingest`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
use futures::StreamExt;

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
}

impl Source {
    /// `--logs -`.
    pub fn is_stdin(&self) -> bool {
        matches!(self, Source::Files(p) if p.as_os_str() == "-")
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Files(_) if self.is_stdin() => write!(f, "stdin"),
            Source::Files(p) => write!(f, "{}", p.display()),
            Source::Compose(project) => write!(f, "compose project \"{project}\""),
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
    #[error("no kad-testbed events in {origin} ({lines} lines read): is this a kad-node log?")]
    NoEvents { origin: String, lines: u64 },
}

/// Reads saved logs: a folder, one file, or `-` for stdin.
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
    /// Peers the run killed on purpose (`bench --churn`): not expected among the live nodes.
    pub churn: Option<RecordedChurn>,
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

    /// The live nodes the run expects at its end: the bootstrap and the peers, but for those it
    /// killed.
    pub fn expected_nodes(&self) -> Option<usize> {
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
    // A run folder (runs/<name>/) keeps its node logs in logs/.
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
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| SourceError::Io {
                path: name.to_owned(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if line.contains('\x1b') {
            f(&strip_ansi_escapes::strip_str(line));
        } else {
            f(line);
        }
    }
}

/// Connects to the local Docker daemon (DOCKER_HOST or the default socket) at an API version both
/// sides speak (Docker 20.10 speaks 1.41).
pub async fn connect_docker() -> Result<Docker, SourceError> {
    let docker =
        Docker::connect_with_defaults().map_err(|e| SourceError::NoDaemon(e.to_string()))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| SourceError::NoDaemon(e.to_string()))
}

/// The containers of a compose project: (name, running).
///
/// API calls take the full container name; reports use [`short_name`].
pub async fn project_containers(
    docker: &Docker,
    project: &str,
) -> Result<Vec<(String, bool)>, SourceError> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("com.docker.compose.project={project}")],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| SourceError::Docker(e.to_string()))?;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            let name = c.names?.first()?.trim_start_matches('/').to_owned();
            use bollard::models::ContainerSummaryStateEnum as State;
            let running = matches!(
                c.state,
                Some(State::RUNNING | State::PAUSED | State::RESTARTING)
            );
            Some((name, running))
        })
        .collect())
}

/// A container's name without its compose project prefix: `peer_3` (v1) or `peer-3` (v2).
pub fn short_name<'a>(container: &'a str, project: &str) -> &'a str {
    container
        .strip_prefix(project)
        .and_then(|rest| rest.strip_prefix(['_', '-']))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(container)
}

/// Reads a compose project's logs, incrementally: the first read takes each container's whole
/// stdout, later ones only what was written since (by Docker's timestamps). Waiting on a thousand
/// containers would otherwise make the daemon decode every log again every few seconds.
#[derive(Debug, Default)]
pub struct ComposeReader {
    project: String,
    /// Leave out events after this instant (`--at`).
    cutoff: Option<Timestamp>,
    docker: Option<Docker>,
    containers: HashMap<String, ContainerLog>,
}

#[derive(Debug)]
struct ContainerLog {
    name: String,
    ingest: Ingest,
    /// Docker's timestamp of the last line read.
    read_until: Option<SystemTime>,
}

impl ComposeReader {
    pub fn new(project: &str) -> Self {
        Self {
            project: project.to_owned(),
            ..Self::default()
        }
    }

    /// Keeps only events up to `cutoff`.
    pub fn until(self, cutoff: Option<Timestamp>) -> Self {
        Self { cutoff, ..self }
    }

    /// Reads what is new and returns the ingest of every container.
    pub async fn read(&mut self) -> Result<Vec<&Ingest>, SourceError> {
        if self.docker.is_none() {
            self.docker = Some(connect_docker().await?);
        }
        let Some(docker) = &self.docker else {
            unreachable!("connected above")
        };
        let project = self.project.as_str();
        let containers = project_containers(docker, project).await?;
        if containers.is_empty() {
            return Err(SourceError::NoContainers(project.to_owned()));
        }
        let mut running_by_name = HashMap::new();
        for (container, running) in containers {
            running_by_name.insert(container.clone(), running);
            self.containers
                .entry(container.clone())
                .or_insert_with(|| ContainerLog {
                    name: short_name(&container, project).to_owned(),
                    ingest: Ingest::until(self.cutoff),
                    read_until: None,
                });
        }
        // Containers removed since the last read are gone from the project.
        self.containers
            .retain(|c, _| running_by_name.contains_key(c));
        let results: Vec<Result<(), SourceError>> =
            futures::stream::iter(self.containers.iter_mut())
                .map(|(container, log)| {
                    let running = running_by_name.get(container).copied().unwrap_or(false);
                    async move {
                        read_container(docker, container, log).await?;
                        log.ingest.set_exited(&log.name, !running);
                        Ok(())
                    }
                })
                .buffer_unordered(DOCKER_CONCURRENCY)
                .collect()
                .await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(self.containers.values().map(|c| &c.ingest).collect())
    }
}

/// Streams what one container wrote on stdout (not stderr: diagnostics live there) since the
/// last read into its log.
async fn read_container(
    docker: &Docker,
    container: &str,
    log: &mut ContainerLog,
) -> Result<(), SourceError> {
    let since = log.read_until;
    container_lines(docker, container, since, false, |_, ts, line| {
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
}

/// A container's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The node's events.
    Stdout,
    /// Its diagnostics.
    Stderr,
}

/// The one reader of container logs (the checker's and the orchestrator's): calls `line` with
/// each complete line of stdout (and of stderr, if asked), with Docker's timestamp, from `since`
/// on (whole seconds: Docker's resolution, so the caller skips what it had by the timestamps).
/// A container that went away while being read ends the stream quietly.
pub async fn container_lines(
    docker: &Docker,
    container: &str,
    since: Option<SystemTime>,
    stderr: bool,
    mut line: impl FnMut(Output, Option<SystemTime>, &str),
) -> Result<(), SourceError> {
    let mut options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(stderr)
        .follow(false)
        .timestamps(true)
        .tail("all");
    if let Some(since) = since {
        let secs = since
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        options = options.since(i32::try_from(secs).unwrap_or(i32::MAX));
    }
    let mut stream = docker.logs(container, Some(options.build()));
    let mut outputs = [FrameLines::default(), FrameLines::default()];
    let mut take = |output: Output, bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches(['\n', '\r']);
        let (stamp, rest) = text.split_once(' ').unwrap_or((text, ""));
        let ts = humantime::parse_rfc3339_weak(stamp).ok();
        line(output, ts, rest);
    };
    while let Some(frame) = stream.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            // The container went away while we read it: what we have is what there is.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => break,
            Err(e) => return Err(SourceError::Docker(format!("logs of {container}: {e}"))),
        };
        let (output, bytes) = match frame {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (Output::Stdout, message)
            }
            LogOutput::StdErr { message } => (Output::Stderr, message),
            LogOutput::StdIn { .. } => continue,
        };
        outputs[output as usize].push(&bytes, |l| take(output, l));
    }
    for output in [Output::Stdout, Output::Stderr] {
        if let Some(rest) = outputs[output as usize].rest() {
            // A last line without its newline: the node was killed mid-write.
            take(output, rest);
        }
    }
    Ok(())
}

/// Lines out of Docker's log frames, read with timestamps. Docker stores a line longer than
/// 16 KiB as several entries (moby's partial messages) and prefixes *each* with its timestamp, so
/// an entry that continues an unfinished line starts with a timestamp that is not part of it.
/// (A routing table of ~200 peers is a line that long.)
#[derive(Debug, Default)]
struct FrameLines {
    partial: Vec<u8>,
}

impl FrameLines {
    /// Takes in one frame, calling `line` with each line it completes (newline included).
    fn push(&mut self, frame: &[u8], mut line: impl FnMut(&[u8])) {
        let mut frame = frame;
        if !self.partial.is_empty()
            && let Some(space) = frame.iter().position(|b| *b == b' ')
            && std::str::from_utf8(&frame[..space])
                .ok()
                .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
                .is_some()
        {
            frame = &frame[space + 1..];
        }
        self.partial.extend_from_slice(frame);
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=pos).collect();
            line(&complete);
        }
    }

    /// What is left without a newline.
    fn rest(&self) -> Option<&[u8]> {
        (!self.partial.is_empty()).then_some(self.partial.as_slice())
    }
}

/// The project name `docker compose` would use in `dir`: COMPOSE_PROJECT_NAME from the
/// environment or `dir/.env`, else the folder's name, normalised the way compose does.
pub fn default_project_name(dir: &Path) -> String {
    let from_env = std::env::var("COMPOSE_PROJECT_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let from_dotenv = || {
        let text = std::fs::read_to_string(dir.join(".env")).ok()?;
        text.lines().find_map(|l| {
            let value = l.trim().strip_prefix("COMPOSE_PROJECT_NAME=")?;
            let value = value.trim().trim_matches(['"', '\'']);
            (!value.is_empty()).then(|| value.to_owned())
        })
    };
    let raw = from_env.or_else(from_dotenv).unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    normalize_project_name(&raw)
}

/// Lowercase, only `[a-z0-9_-]`, starting with a letter or digit (compose's own rule).
pub fn normalize_project_name(raw: &str) -> String {
    let kept: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        .collect();
    kept.trim_start_matches(['_', '-']).to_owned()
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
        // A run left running records no shutdown.
        std::fs::write(run.path().join("run.json"), r#"{"shutdown_began":null}"#).expect("write");
        assert_eq!(
            recorded_run(run.path()).and_then(|r| r.shutdown_began),
            None
        );
    }

    #[test]
    fn a_line_docker_split_into_timestamped_entries_is_put_back_together() {
        let mut lines = FrameLines::default();
        let mut out: Vec<String> = Vec::new();
        let frames: [&[u8]; 5] = [
            b"2026-11-25T08:00:00.000000001Z {\"a\":1}\n",
            // One long line, stored by Docker as three entries: only the first timestamp is real.
            b"2026-11-25T08:00:01.000000001Z {\"peers\":[\"x",
            b"2026-11-25T08:00:01.000000002Z yy",
            b"2026-11-25T08:00:01.000000003Z zzz\"]}\n",
            b"2026-11-25T08:00:02.000000001Z {\"b\":2}",
        ];
        for frame in frames {
            lines.push(frame, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        assert_eq!(
            out,
            [
                "2026-11-25T08:00:00.000000001Z {\"a\":1}\n",
                "2026-11-25T08:00:01.000000001Z {\"peers\":[\"xyyzzz\"]}\n",
            ]
        );
        assert_eq!(
            lines.rest(),
            Some(&b"2026-11-25T08:00:02.000000001Z {\"b\":2}"[..])
        );
        // A continuation that does not start with a timestamp is kept whole.
        let mut lines = FrameLines::default();
        let mut out = Vec::new();
        lines.push(b"T0 abc", |_| {});
        lines.push(b"not-a-time def\n", |l| out.push(l.to_vec()));
        assert_eq!(out, [b"T0 abcnot-a-time def\n".to_vec()]);
    }

    #[test]
    fn project_names_are_normalised_like_compose_does() {
        assert_eq!(normalize_project_name("My.Project_1"), "myproject_1");
        assert_eq!(normalize_project_name("-kad-testbed"), "kad-testbed");
    }

    #[test]
    fn container_names_lose_their_project_prefix() {
        assert_eq!(short_name("kt-run-1_peer_3", "kt-run-1"), "peer_3");
        assert_eq!(short_name("kt-run-1-peer-3", "kt-run-1"), "peer-3");
        assert_eq!(short_name("other", "kt-run-1"), "other");
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
