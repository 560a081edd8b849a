//! testbed-docker: the Docker Engine API (bollard) as the testbed uses it — one small crate
//! for the checker's log source and the orchestrator alike.
//!
//! * [`connect`]: the local daemon, at an API version both sides speak.
//! * [`project_containers`], [`short_name`]: a compose project's containers and their names.
//! * [`Scope`], [`members`]: the nodes of a compose project (its containers) or of a swarm stack
//!   (its tasks, on any node of the swarm), each with where its log is read from.
//! * [`log_lines`]: the one reader of container and task logs (stdout and stderr, with Docker's
//!   timestamps, lines Docker split at 16 KiB put back together).
//! * [`swarm_state`]: whether this daemon is a swarm manager.
//! * [`process_and_addresses`]: a container's main process and IPv4 addresses, to enter its
//!   network namespace from outside (the orchestrator's network faults).
//! * [`attached_containers`]: who still holds a network (teardown names them); [`networks`] and
//!   [`stack_services`]: what a teardown removes.
//! * [`default_project_name`], [`normalize_project_name`]: compose's project naming.
//!
//! Nothing here decides anything: waiting, teardown and the verdict live with their callers.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, LogsOptionsBuilder,
};
use futures::StreamExt;

pub use bollard;

/// What went wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No daemon answered (not running, no permission on the socket, wrong DOCKER_HOST).
    #[error(
        "cannot reach the Docker daemon: {0}. Is Docker running, and may this user use it \
         (DOCKER_HOST, /var/run/docker.sock)?"
    )]
    NoDaemon(String),
    /// The daemon answered with an error.
    #[error("the Docker daemon failed: {0}")]
    Api(String),
    /// The daemon did not answer within the client's 120 s. On an overloaded host it may answer
    /// the next call: measured here, listing 1001 containers timed out once while 1000 nodes
    /// joined on 2 cores (load average ~1100).
    #[error("the Docker daemon did not answer in time ({0}); is the host overloaded?")]
    Timeout(String),
}

impl DockerError {
    /// A failed API call, with what it was for.
    fn api(what: &str, e: bollard::errors::Error) -> Self {
        match e {
            bollard::errors::Error::RequestTimeoutError => Self::Timeout(what.to_owned()),
            e => Self::Api(format!("{what}: {e}")),
        }
    }
}

/// Connects to the local Docker daemon (DOCKER_HOST or the default socket) at an API version both
/// sides speak (Docker 20.10 speaks 1.41).
pub async fn connect() -> Result<Docker, DockerError> {
    let docker =
        Docker::connect_with_defaults().map_err(|e| DockerError::NoDaemon(e.to_string()))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| DockerError::NoDaemon(e.to_string()))
}

/// The containers of a compose project: (name, running).
///
/// API calls take the full container name; reports use [`short_name`].
pub async fn project_containers(
    docker: &Docker,
    project: &str,
) -> Result<Vec<(String, bool)>, DockerError> {
    containers(docker, &Scope::Compose(project.to_owned())).await
}

/// The containers of `scope` on this daemon: (name, running). For a stack, only the tasks this
/// node runs ([`members`] reads every task of the swarm).
pub async fn containers(
    docker: &Docker,
    scope: &Scope,
) -> Result<Vec<(String, bool)>, DockerError> {
    let filters = HashMap::from([("label".to_owned(), vec![scope.label()])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| DockerError::api("cannot list containers", e))?;
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

/// The names of the networks of `scope` (a project's or a stack's, by their label).
pub async fn networks(docker: &Docker, scope: &Scope) -> Result<Vec<String>, DockerError> {
    let filters = HashMap::from([("label".to_owned(), vec![scope.label()])]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let networks = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| DockerError::Api(format!("cannot list networks: {e}")))?;
    Ok(networks.into_iter().filter_map(|n| n.name).collect())
}

/// The names of the services of a swarm stack.
pub async fn stack_services(docker: &Docker, stack: &str) -> Result<Vec<String>, DockerError> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{STACK_LABEL}={stack}")])]);
    let services = docker
        .list_services(Some(
            ListServicesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|e| swarm_error("list the stack's services", e))?;
    Ok(services.into_iter().filter_map(|s| s.spec?.name).collect())
}

/// The names of the containers attached to `network` (by name or id).
pub async fn attached_containers(
    docker: &Docker,
    network: &str,
) -> Result<Vec<String>, DockerError> {
    let inspect = docker
        .inspect_network(network, None)
        .await
        .map_err(|e| DockerError::Api(e.to_string()))?;
    let mut names: Vec<String> = inspect
        .containers
        .unwrap_or_default()
        .into_iter()
        .map(|(id, endpoint)| {
            endpoint
                .name
                .unwrap_or_else(|| id.chars().take(12).collect())
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Which Docker objects make one testbed network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The containers of a compose project (label `com.docker.compose.project`).
    Compose(String),
    /// The tasks of a swarm stack (`docker stack deploy`; label `com.docker.stack.namespace`).
    Stack(String),
}

impl Scope {
    /// The project or stack name.
    pub fn name(&self) -> &str {
        match self {
            Scope::Compose(n) | Scope::Stack(n) => n,
        }
    }

    /// The label filter that selects its containers, services and networks.
    pub fn label(&self) -> String {
        match self {
            Scope::Compose(n) => format!("com.docker.compose.project={n}"),
            Scope::Stack(n) => format!("{STACK_LABEL}={n}"),
        }
    }
}

/// The label `docker stack deploy` puts on a stack's services, networks and containers.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// Where a member's log is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogTarget {
    /// A container of this daemon, by name.
    Container(String),
    /// A swarm task, by id: the manager fetches its log from whichever node runs it.
    Task(String),
}

/// One node of a testbed network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name in reports and saved logs: `peer_3` or `peer-3` (compose), `peer.3` (stack task:
    /// service and slot).
    pub name: String,
    pub running: bool,
    pub logs: LogTarget,
}

/// Every member of `scope`, running or not. A stack's members are its tasks, except those the
/// orchestrator replaced (a task is replaced only on a restart policy; the testbed's stacks have
/// none, so each slot has one).
pub async fn members(docker: &Docker, scope: &Scope) -> Result<Vec<Member>, DockerError> {
    match scope {
        Scope::Compose(project) => Ok(project_containers(docker, project)
            .await?
            .into_iter()
            .map(|(container, running)| Member {
                name: short_name(&container, project).to_owned(),
                running,
                logs: LogTarget::Container(container),
            })
            .collect()),
        Scope::Stack(stack) => stack_tasks(docker, stack).await,
    }
}

async fn stack_tasks(docker: &Docker, stack: &str) -> Result<Vec<Member>, DockerError> {
    let mut members = Vec::new();
    for name in stack_services(docker, stack).await? {
        // The task filter takes a service's name as well as its id.
        let filters = HashMap::from([("service".to_owned(), vec![name.clone()])]);
        let tasks = docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| swarm_error("list the stack's tasks", e))?;
        let service = short_name(&name, stack);
        for task in tasks {
            let (Some(id), Some(slot)) = (task.id, task.slot) else {
                continue;
            };
            use bollard::models::TaskState;
            let state = task.status.and_then(|s| s.state);
            members.push(Member {
                name: format!("{service}.{slot}"),
                // Starting: the container runs, its health check has not passed yet.
                running: matches!(state, Some(TaskState::RUNNING | TaskState::STARTING)),
                logs: LogTarget::Task(id),
            });
        }
    }
    Ok(members)
}

fn swarm_error(what: &str, e: bollard::errors::Error) -> DockerError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 503, ..
        } => DockerError::Api(format!(
            "cannot {what}: this Docker daemon is not a swarm manager (docker swarm init, or run \
             on a manager of the swarm)"
        )),
        e => DockerError::Api(format!("cannot {what}: {e}")),
    }
}

/// This daemon's part in a swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmState {
    /// Not in a swarm.
    Inactive,
    /// A manager: it can deploy stacks and read every task.
    Manager,
    /// A worker, or a swarm in a state (pending, error, locked) that cannot deploy.
    Other,
}

/// Whether this daemon can deploy a stack.
pub async fn swarm_state(docker: &Docker) -> Result<SwarmState, DockerError> {
    let info = docker
        .info()
        .await
        .map_err(|e| DockerError::Api(format!("docker info: {e}")))?;
    use bollard::models::LocalNodeState;
    let swarm = info.swarm.unwrap_or_default();
    Ok(match swarm.local_node_state {
        None | Some(LocalNodeState::INACTIVE | LocalNodeState::EMPTY) => SwarmState::Inactive,
        Some(LocalNodeState::ACTIVE) if swarm.control_available == Some(true) => {
            SwarmState::Manager
        }
        Some(_) => SwarmState::Other,
    })
}

/// A container's name without its compose project prefix: `peer_3` (v1) or `peer-3` (v2); a
/// swarm task's container (`<stack>_peer.3.<task id>`) becomes `peer.3`, its task's name.
pub fn short_name<'a>(container: &'a str, project: &str) -> &'a str {
    let short = container
        .strip_prefix(project)
        .and_then(|rest| rest.strip_prefix(['_', '-']))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(container);
    // Compose names hold no dots; a task's container is `service.slot.task-id`.
    match short.rsplit_once('.') {
        Some((task, id)) if task.contains('.') && id.len() >= 20 => task,
        _ => short,
    }
}

/// A container's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The node's events.
    Stdout,
    /// Its diagnostics.
    Stderr,
}

/// The one reader of container and task logs (the checker's and the orchestrator's): calls `line`
/// with each complete line of stdout (and of stderr, if asked), with Docker's timestamp, from
/// `since` on (whole seconds: Docker's resolution, so the caller skips what it had by the
/// timestamps). A container or task that went away while being read ends the stream quietly.
pub async fn log_lines(
    docker: &Docker,
    target: &LogTarget,
    since: Option<SystemTime>,
    stderr: bool,
    mut line: impl FnMut(Output, Option<SystemTime>, &str),
) -> Result<(), DockerError> {
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
    let (mut stream, what) = match target {
        LogTarget::Container(name) => (
            docker.logs(name, Some(options.build())).boxed(),
            format!("container {name}"),
        ),
        LogTarget::Task(id) => (
            docker.task_logs(id, Some(options.build())).boxed(),
            format!("task {id}"),
        ),
    };
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
            Err(e) => return Err(DockerError::Api(format!("logs of {what}: {e}"))),
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

/// A container's main process (to enter its namespaces) and its IPv4 addresses on every network
/// it is attached to.
pub async fn process_and_addresses(
    docker: &Docker,
    container: &str,
) -> Result<(i64, Vec<String>), DockerError> {
    let info = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| DockerError::Api(format!("cannot inspect {container}: {e}")))?;
    let pid = info
        .state
        .as_ref()
        .and_then(|s| s.pid)
        .filter(|&p| p > 0)
        .ok_or_else(|| DockerError::Api(format!("{container} is not running: no process")))?;
    let addresses = info
        .network_settings
        .and_then(|n| n.networks)
        .into_iter()
        .flatten()
        .filter_map(|(_, n)| n.ip_address.filter(|ip| !ip.is_empty()))
        .collect();
    Ok((pid, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn scopes_select_by_their_own_label() {
        assert_eq!(
            Scope::Compose("kt-a".into()).label(),
            "com.docker.compose.project=kt-a"
        );
        assert_eq!(
            Scope::Stack("kt-b".into()).label(),
            "com.docker.stack.namespace=kt-b"
        );
        assert_eq!(Scope::Stack("kt-b".into()).name(), "kt-b");
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
        assert_eq!(
            short_name("kt-run-1_peer.3.x7k2m9q4w8e1r5t6y0u3i2o9p", "kt-run-1"),
            "peer.3"
        );
        assert_eq!(short_name("kt-run-1_peer.3", "kt-run-1"), "peer.3");
    }
}
