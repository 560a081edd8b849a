//! The Docker Engine side of a run: waiting for containers, saving their logs, measuring them,
//! and a teardown that copes with hundreds of containers.
//!
//! Teardown does not use `compose down`: a mass `down` of ~100+ containers on Docker 20.10 can
//! leave the network with "active endpoints" that only a daemon restart clears (moby #43286;
//! Testground #696 reports the same above ~250). The daemon updates a network's endpoint count on
//! every container exit, and concurrent exits race on it. Measured here with 150 idle containers:
//! stopping 16 at a time leaked the network in 1 of 2 runs; stopping one at a time, then removing
//! 16 at a time, then the network, leaked in 0 of 7. So stops are serial (about 0.1 s each), and
//! everything else is parallel.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use testbed_docker::bollard::Docker;
use testbed_docker::bollard::query_parameters::{
    KillContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use testbed_docker::{
    DockerError, LogTarget, Member, Output, Scope, containers, log_lines, members, networks,
    project_containers, short_name,
};

/// Containers handled at once for work that does not touch network endpoints (logs, removal of
/// stopped containers, inspection).
const PARALLEL: usize = 16;

/// Containers stopped at once: one, because concurrent exits corrupt the network's endpoint count
/// on Docker 20.10 (see the module docs).
const STOP_PARALLEL: usize = 1;

/// Seconds `docker stop` waits before SIGKILL. A node flushes and exits in well under one.
const STOP_TIMEOUT_S: i32 = 10;

/// Waits until `expected` nodes of `scope` (containers, or a stack's tasks) run, or fails after
/// `limit` saying how many do.
pub async fn wait_running(
    docker: &Docker,
    scope: &Scope,
    expected: usize,
    limit: Duration,
    progress: impl FnMut(usize),
) -> anyhow::Result<Duration> {
    wait_until_running(|| members(docker, scope), expected, limit, progress).await
}

/// [`wait_running`], with the members listed by `list`.
///
/// A listing the daemon did not answer in time is asked again, within `limit`: measured here,
/// one call timed out (bollard's 120 s) at 889 of 1001 containers, with the load average near
/// 1100, and that one timeout ended the whole run. Any other error ends the wait.
async fn wait_until_running<F, Fut>(
    mut list: F,
    expected: usize,
    limit: Duration,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Member>, DockerError>>,
{
    let started = Instant::now();
    let (mut running, mut exist) = (0, 0);
    loop {
        match list().await {
            Ok(containers) => {
                // Nodes only: a crawler (compose/crawl.yml) is not one of the `expected`.
                running = containers
                    .iter()
                    .filter(|m| m.running && is_node(&m.name))
                    .count();
                exist = containers.len();
                progress(running);
                if running >= expected {
                    return Ok(started.elapsed());
                }
            }
            Err(e @ DockerError::Timeout(_)) => {
                eprintln!("  {e}: asking again");
            }
            Err(e) => return Err(e.into()),
        }
        if started.elapsed() >= limit {
            anyhow::bail!(
                "only {running} of {expected} containers running after {}s ({exist} exist)",
                limit.as_secs(),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The running members of `project`: its bootstrap container, and its peer containers by
/// number (`peer_3` is 3), in order.
pub async fn running_members(
    docker: &Docker,
    project: &str,
) -> anyhow::Result<(Option<String>, Vec<(usize, String)>)> {
    let mut bootstrap = None;
    let mut peers = Vec::new();
    for (name, running) in project_containers(docker, project).await? {
        if !running {
            continue;
        }
        let short = short_name(&name, project);
        if !is_node(short) {
            continue;
        }
        if short.starts_with("bootstrap") {
            bootstrap = Some(name.clone());
        } else if let Some(n) = short
            .strip_prefix("peer")
            .map(|r| r.trim_start_matches(['_', '-']))
            .and_then(|r| r.parse().ok())
        {
            peers.push((n, name));
        }
    }
    peers.sort_unstable();
    Ok((bootstrap, peers))
}

/// Whether a container (by its short name, `peer_3` or `bootstrap-1`) is one of the DHT's nodes
/// rather than a helper such as the crawler.
pub fn is_node(short: &str) -> bool {
    short.starts_with("bootstrap") || short.starts_with("peer")
}

/// `count` of `peers`, spread evenly over their numbers (so a share of them is not one block).
pub fn spread(peers: &[(usize, String)], count: usize) -> Vec<String> {
    let count = count.min(peers.len());
    (0..count)
        .map(|i| peers[i * peers.len() / count].1.clone())
        .collect()
}

/// Kills `containers` (SIGKILL: no final snapshot, no `node_stopping`, as a crash), one at a
/// time like every stop (see the module docs). Returns what could not be killed.
pub async fn kill(docker: &Docker, containers: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for name in containers {
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        if let Err(e) = docker.kill_container(name, Some(options)).await {
            errors.push(format!("kill {name}: {e}"));
        }
    }
    errors
}

/// What a teardown did and could not do.
#[derive(Debug, Default, serde::Serialize)]
pub struct Teardown {
    pub containers_removed: usize,
    pub networks_removed: usize,
    /// What is still there, to remove by hand (`docker rm -f …`, `docker network rm …`).
    pub leftovers: Vec<String>,
}

/// Stops every container of `scope` on this host (SIGTERM, so nodes flush their final snapshot),
/// one at a time ([`STOP_PARALLEL`]). Errors are collected, not fatal.
pub async fn stop_all(docker: &Docker, scope: &Scope) -> anyhow::Result<Vec<String>> {
    let containers = containers(docker, scope).await?;
    let errors = futures::stream::iter(containers.into_iter().filter(|(_, running)| *running))
        .map(|(name, _)| async move {
            let options = StopContainerOptionsBuilder::new().t(STOP_TIMEOUT_S).build();
            docker
                .stop_container(&name, Some(options))
                .await
                .err()
                .map(|e| format!("stop {name}: {e}"))
        })
        .buffer_unordered(STOP_PARALLEL)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    Ok(errors)
}

/// Removes every container and network of `project`: stop, remove, then the networks, retried.
pub async fn teardown(docker: &Docker, project: &str) -> Teardown {
    let mut result = Teardown::default();
    let scope = Scope::Compose(project.to_owned());
    if let Ok(errors) = stop_all(docker, &scope).await {
        result.leftovers.extend(errors);
    }
    for attempt in 0..3 {
        let Ok(containers) = project_containers(docker, project).await else {
            continue;
        };
        if containers.is_empty() {
            break;
        }
        let removed: Vec<bool> = futures::stream::iter(containers)
            .map(|(name, _)| async move {
                let options = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                docker.remove_container(&name, Some(options)).await.is_ok()
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        result.containers_removed += removed.iter().filter(|r| **r).count();
        tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
    }
    let list_networks = || async { networks(docker, &scope).await.unwrap_or_default() };
    // Networks another container still holds, with who holds them: retrying will not help.
    let mut held: HashMap<String, Vec<String>> = HashMap::new();
    for attempt in 0..5u32 {
        let networks = list_networks().await;
        if networks.is_empty() {
            break;
        }
        for name in networks {
            if docker.remove_network(&name).await.is_ok() {
                result.networks_removed += 1;
                continue;
            }
            // Every container of the project is gone by now: whoever is attached is not ours.
            match testbed_docker::attached_containers(docker, &name).await {
                Ok(others) if !others.is_empty() => {
                    held.insert(name, others);
                }
                _ => {}
            }
        }
        if !held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
    }
    if let Ok(containers) = project_containers(docker, project).await {
        result.leftovers.extend(
            containers
                .into_iter()
                .map(|(n, _)| format!("container {n}")),
        );
    }
    for name in list_networks().await {
        result.leftovers.push(match held.get(&name) {
            Some(others) => format!(
                "network {name}: containers that are not this project's are still attached \
                 ({}); detach them (`docker network disconnect {name} <container>`) or remove \
                 them, then run `testbed down {project}` again",
                others.join(", ")
            ),
            None => format!(
                "network {name}: no container is attached, yet Docker would not remove it; if it \
                 reports active endpoints, only restarting the Docker daemon clears them"
            ),
        });
    }
    result
}

/// Saves each member's stdout (the events) to `dir/logs/<name>.log` and its stderr
/// (diagnostics) to `dir/diag/<name>.log`, through the checker's reader
/// ([`testbed_docker::log_lines`]). Returns the bytes of events saved.
pub async fn save_logs(docker: &Docker, scope: &Scope, dir: &Path) -> anyhow::Result<u64> {
    let logs_dir = dir.join("logs");
    let diag_dir = dir.join("diag");
    std::fs::create_dir_all(&logs_dir)
        .and_then(|()| std::fs::create_dir_all(&diag_dir))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let members = members(docker, scope).await?;
    let sizes: Vec<anyhow::Result<u64>> = futures::stream::iter(members)
        .map(|member| {
            let out_path = logs_dir.join(format!("{}.log", member.name));
            let err_path = diag_dir.join(format!("{}.log", member.name));
            async move { save_one(docker, &member.logs, &out_path, &err_path).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut total = 0;
    for size in sizes {
        total += size?;
    }
    Ok(total)
}

/// Saves one container's logs as [`save_logs`] does, before the container is removed mid-run
/// (a scenario's `remove`): nothing it wrote is lost.
pub async fn save_container_logs(
    docker: &Docker,
    project: &str,
    container: &str,
    dir: &Path,
) -> anyhow::Result<u64> {
    let (logs_dir, diag_dir) = (dir.join("logs"), dir.join("diag"));
    std::fs::create_dir_all(&logs_dir)
        .and_then(|()| std::fs::create_dir_all(&diag_dir))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let short = short_name(container, project);
    let out_path = logs_dir.join(format!("{short}.log"));
    let err_path = diag_dir.join(format!("{short}.log"));
    let target = LogTarget::Container(container.to_owned());
    save_one(docker, &target, &out_path, &err_path).await
}

async fn save_one(
    docker: &Docker,
    target: &LogTarget,
    out_path: &Path,
    err_path: &Path,
) -> anyhow::Result<u64> {
    let create = |p: &Path| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("cannot write {}", p.display()))
    };
    let mut out = create(out_path)?;
    let mut err = create(err_path)?;
    let mut bytes = 0;
    let mut failed: Option<std::io::Error> = None;
    log_lines(docker, target, None, true, |output, _, line| {
        let file = match output {
            Output::Stdout => {
                bytes += line.len() as u64 + 1;
                &mut out
            }
            Output::Stderr => &mut err,
        };
        if let Err(e) = writeln!(file, "{line}") {
            failed.get_or_insert(e);
        }
    })
    .await
    .context("cannot read the logs")?;
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("cannot write {}", out_path.display()));
    }
    out.flush()?;
    err.flush()?;
    Ok(bytes)
}

/// One container's resource use, read from the host's /proc (the container's PID 1 is the node).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeResources {
    pub name: String,
    pub rss_bytes: u64,
    /// The part of the RSS that is the node's own (heap, stacks): what each further node costs.
    pub rss_anon_bytes: u64,
    /// The part mapped from files: the binary's pages, one copy in the page cache for all nodes.
    pub rss_file_bytes: u64,
    /// User + system CPU time since the node started.
    pub cpu_seconds: f64,
    pub started_at_ms: Option<u64>,
}

/// Samples every running container of `project`. Needs to run on the Docker host (Linux).
pub async fn sample_resources(
    docker: &Docker,
    project: &str,
) -> anyhow::Result<Vec<NodeResources>> {
    let containers = project_containers(docker, project).await?;
    let ticks = clock_ticks();
    let samples: Vec<Option<NodeResources>> = futures::stream::iter(containers)
        .map(|(name, _)| async move {
            let info = docker.inspect_container(&name, None).await.ok()?;
            let state = info.state?;
            let pid = state.pid.filter(|p| *p > 0)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kb = |field: &str| -> Option<u64> {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            };
            let rss_kb = kb("VmRSS:")?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces, hence the last ')').
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            let started_at_ms = state
                .started_at
                .and_then(|s| humantime::parse_rfc3339_weak(&s).ok())
                .map(|t| testbed_events::Timestamp::from(t).as_millis());
            Some(NodeResources {
                name: short_name(&name, project).to_owned(),
                rss_bytes: rss_kb * 1024,
                rss_anon_bytes: kb("RssAnon:").unwrap_or(0) * 1024,
                rss_file_bytes: kb("RssFile:").unwrap_or(0) * 1024,
                cpu_seconds: (utime + stime) as f64 / ticks,
                started_at_ms,
            })
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    Ok(samples.into_iter().flatten().collect())
}

/// The kernel's clock ticks per second (USER_HZ), 100 on every mainstream Linux.
fn clock_ticks() -> f64 {
    100.0
}

/// The size of an image in bytes.
pub async fn image_size(docker: &Docker, image: &str) -> Option<u64> {
    let info = docker.inspect_image(image).await.ok()?;
    info.size.and_then(|s| u64::try_from(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                name: format!("peer_{i}"),
                running: true,
                logs: LogTarget::Container(format!("p-peer_{i}")),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_listing_the_daemon_did_not_answer_in_time_is_asked_again() {
        let mut calls = 0;
        let waited = wait_until_running(
            || {
                calls += 1;
                let answer = if calls == 1 {
                    Err(DockerError::Timeout("cannot list containers".into()))
                } else {
                    Ok(running(3))
                };
                async move { answer }
            },
            3,
            Duration::from_secs(10),
            |_| {},
        )
        .await;
        assert!(waited.is_ok(), "{waited:?}");
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn a_daemon_that_never_answers_still_ends_the_wait_at_its_limit() {
        let waited = wait_until_running(
            || async { Err(DockerError::Timeout("cannot list containers".into())) },
            3,
            Duration::from_millis(700),
            |_| {},
        )
        .await;
        let error = waited.expect_err("waited past the limit").to_string();
        assert!(error.contains("only 0 of 3 containers running"), "{error}");
    }

    #[tokio::test]
    async fn any_other_daemon_error_ends_the_wait_at_once() {
        let mut calls = 0;
        let waited = wait_until_running(
            || {
                calls += 1;
                async { Err(DockerError::Api("cannot list containers: 500".into())) }
            },
            3,
            Duration::from_secs(10),
            |_| {},
        )
        .await;
        assert!(waited.is_err());
        assert_eq!(calls, 1);
    }
}
