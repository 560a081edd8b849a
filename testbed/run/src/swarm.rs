//! Docker Swarm: the same `docker-compose.yml` deployed as a stack (`docker stack deploy`), with
//! `compose/swarm.yml` on top (an attachable overlay network, DNS round-robin, no restarts, the
//! peer count as replicas).
//!
//! * [`prepare`]: this daemon must be a swarm manager. A host in no swarm gets a single-node one
//!   only when asked (`--init-swarm`), and [`Swarm::leave`] leaves only a swarm this run created.
//! * [`deploy`]: `docker stack deploy`, its output in the run's `compose.log`.
//! * [`teardown`]: the stack's services, then its networks, through the Engine API, each waited
//!   for (bounded); what is left is named.
//!
//! Waiting, stopping (one container at a time, SIGTERM) and saving logs are the run's own
//! ([`crate::engine`] over a [`Scope::Stack`]): a stack's tasks are read through the manager, so on
//! a multi-host swarm every node's log is saved, while only this host's containers get the
//! one-at-a-time SIGTERM; the others stop when their service is removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testbed_docker::bollard::Docker;
use testbed_docker::bollard::models::SwarmInitRequest;
use testbed_docker::bollard::query_parameters::LeaveSwarmOptionsBuilder;
use testbed_docker::{Scope, SwarmState, containers, networks, stack_services, swarm_state};

use crate::engine::Teardown;

/// The overlay that turns `docker-compose.yml` into a stack.
pub const OVERLAY: &str = "compose/swarm.yml";

/// Where a swarm this run starts listens: loopback only, so a single-node swarm opens nothing to
/// the outside (joining other hosts needs a real address: `docker swarm init --advertise-addr`).
const LISTEN: &str = "127.0.0.1:2377";

/// Overlay subnets of a swarm this run starts: /22, room for 1021 tasks on the stack's network
/// (the default /24 holds 253, fewer than the peers a host can run).
const SUBNET_SIZE: u32 = 22;

/// The bridge `docker swarm init` creates for containers' traffic out of the overlay. It outlives
/// the swarm, so a run that created the swarm removes it when it leaves, if it created it too.
const GATEWAY_BRIDGE: &str = "docker_gwbridge";

/// How long removing the stack's services and networks may take.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(120);

/// The swarm a run deploys into.
#[derive(Debug)]
pub struct Swarm {
    /// This run started it (`--init-swarm`): leave it afterwards.
    created: bool,
    /// The run created `docker_gwbridge` with it: remove that too.
    created_bridge: bool,
}

/// Makes sure this daemon can deploy a stack: it is a swarm manager, or it is in no swarm and
/// `init` allows starting a single-node one. Fails, starting nothing, otherwise.
pub async fn prepare(docker: &Docker, init: bool) -> anyhow::Result<Swarm> {
    match swarm_state(docker).await? {
        SwarmState::Manager => Ok(Swarm {
            created: false,
            created_bridge: false,
        }),
        SwarmState::Other => bail!(
            "--engine swarm: this Docker daemon is in a swarm but cannot deploy (a worker, or the \
             swarm is locked or pending): run the testbed on a manager (docker node ls)"
        ),
        SwarmState::Inactive if !init => bail!(
            "--engine swarm: this Docker daemon is not in a swarm. Pass --init-swarm to start a \
             single-node swarm on loopback for this run (left again afterwards), or start one \
             yourself (docker swarm init)"
        ),
        SwarmState::Inactive => {
            let bridge_existed = docker.inspect_network(GATEWAY_BRIDGE, None).await.is_ok();
            let request = SwarmInitRequest {
                listen_addr: Some(LISTEN.into()),
                advertise_addr: Some(LISTEN.into()),
                subnet_size: Some(SUBNET_SIZE),
                ..SwarmInitRequest::default()
            };
            docker
                .init_swarm(request)
                .await
                .context("--init-swarm: docker swarm init failed")?;
            say(&format!(
                "started a single-node swarm on {LISTEN} (--init-swarm)"
            ));
            Ok(Swarm {
                created: true,
                created_bridge: !bridge_existed,
            })
        }
    }
}

impl Swarm {
    /// Leaves the swarm if this run started it (and removes the gateway bridge it brought).
    /// A swarm the run found is left alone.
    pub async fn leave(self, docker: &Docker) -> anyhow::Result<()> {
        if !self.created {
            return Ok(());
        }
        let options = LeaveSwarmOptionsBuilder::new().force(true).build();
        docker
            .leave_swarm(Some(options))
            .await
            .context("cannot leave the swarm this run started (docker swarm leave --force)")?;
        if self.created_bridge {
            // Its endpoints go with the swarm a moment later.
            let mut last = None;
            for attempt in 0..5u64 {
                match docker.remove_network(GATEWAY_BRIDGE).await {
                    // Gone already: a daemon that made it lazily never needed it.
                    Ok(())
                    | Err(testbed_docker::bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            }
            if let Some(e) = last {
                bail!("left the swarm, but cannot remove {GATEWAY_BRIDGE}, which it created: {e}");
            }
        }
        say("left the swarm this run started");
        Ok(())
    }
}

/// `docker stack deploy` of `files` as `stack`, with `peers` replicas of the peer service
/// (`KAD_PEERS`, read by compose/swarm.yml). Output appended to `log`.
pub async fn deploy(
    root: &Path,
    stack: &str,
    files: &[PathBuf],
    peers: usize,
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new("docker");
    cmd.current_dir(root).args(["stack", "deploy"]);
    for f in files {
        cmd.arg("--compose-file").arg(f);
    }
    // The image is local: asking a registry for its digest only fails (none is reachable here,
    // and a multi-host swarm is told where the image is by the user's registry or `docker load`).
    cmd.args(["--resolve-image", "never", stack])
        .env("KAD_PEERS", peers.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)));
    crate::compose::run_logged(cmd, log, "docker stack deploy").await
}

/// Removes the stack: its services (their tasks' containers go with them), then its networks, each
/// waited for up to [`TEARDOWN_LIMIT`] in all. Whatever is still there is a leftover, named.
pub async fn teardown(docker: &Docker, stack: &str) -> Teardown {
    let scope = Scope::Stack(stack.to_owned());
    let mut result = Teardown::default();
    let deadline = Instant::now() + TEARDOWN_LIMIT;
    let before = containers(docker, &scope).await.map_or(0, |c| c.len());
    for name in stack_services(docker, stack).await.unwrap_or_default() {
        if let Err(e) = docker.delete_service(&name).await {
            result.leftovers.push(format!("service {name}: {e}"));
        }
    }
    // Removing a service removes its containers asynchronously; the network goes once they did.
    loop {
        let left = containers(docker, &scope).await.map(|c| c.len());
        if matches!(left, Ok(0)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let list_networks = || async { networks(docker, &scope).await.unwrap_or_default() };
    loop {
        let left = list_networks().await;
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        for name in left {
            if docker.remove_network(&name).await.is_ok() {
                result.networks_removed += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match containers(docker, &scope).await {
        Ok(left) => {
            result.containers_removed = before.saturating_sub(left.len());
            result
                .leftovers
                .extend(left.into_iter().map(|(n, _)| format!("container {n}")));
        }
        Err(e) => result
            .leftovers
            .push(format!("cannot list containers: {e}")),
    }
    for name in stack_services(docker, stack).await.unwrap_or_default() {
        result
            .leftovers
            .push(format!("service {name} (docker service rm {name})"));
    }
    for name in list_networks().await {
        result.leftovers.push(format!(
            "network {name}: still there {}s after its services went (docker network rm {name})",
            TEARDOWN_LIMIT.as_secs()
        ));
    }
    result
}

fn say(message: &str) {
    eprintln!("testbed: {message}");
}
