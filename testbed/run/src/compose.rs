//! Driving Docker Compose: v2 (`docker compose`, what users have) or v1.29 (`docker-compose`, the
//! only one on some hosts). Both take the same files and flags used here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Which compose program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compose {
    /// The `docker compose` plugin.
    V2,
    /// The standalone `docker-compose`.
    V1,
}

impl Compose {
    /// `KAD_COMPOSE` (`docker compose` or `docker-compose`) if set, else whichever is installed,
    /// v2 first.
    pub fn detect() -> anyhow::Result<Self> {
        if let Ok(choice) = std::env::var("KAD_COMPOSE") {
            return match choice.trim() {
                "docker compose" | "v2" => Ok(Compose::V2),
                "docker-compose" | "v1" => Ok(Compose::V1),
                other => bail!(
                    "KAD_COMPOSE={other:?}: expected \"docker compose\" or \"docker-compose\""
                ),
            };
        }
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if works("docker", &["compose", "version"]) {
            Ok(Compose::V2)
        } else if works("docker-compose", &["version"]) {
            Ok(Compose::V1)
        } else {
            bail!(
                "neither `docker compose` (v2) nor `docker-compose` (v1) works here: install Docker Compose \
                 (https://docs.docker.com/compose/install/)"
            )
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Compose::V2 => "docker compose",
            Compose::V1 => "docker-compose",
        }
    }

    /// A compose command for `project` over `files`, run in `root`.
    pub fn command(&self, root: &Path, project: &str, files: &[PathBuf]) -> Command {
        let mut cmd = match self {
            Compose::V2 => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
            Compose::V1 => {
                let mut c = Command::new("docker-compose");
                // v1 talks to the daemon with a 60 s HTTP timeout, too short for hundreds of
                // containers on a loaded host.
                c.env("COMPOSE_HTTP_TIMEOUT", "600");
                c
            }
        };
        // Both honour this. Starting more containers at once than a 2-core daemon can wire up
        // only makes each start slower (v2's default is unbounded).
        cmd.env("COMPOSE_PARALLEL_LIMIT", "32");
        cmd.current_dir(root).arg("-p").arg(project);
        for f in files {
            cmd.arg("-f").arg(f);
        }
        cmd
    }

    /// `up -d --scale peer=N --no-build`, its output appended to `log`. Dropping the future kills
    /// compose, so a caller that gives up (deadline, Ctrl-C) is not racing a compose that goes on
    /// creating containers while it tears down.
    pub async fn up(
        &self,
        root: &Path,
        project: &str,
        files: &[PathBuf],
        peers: usize,
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<()> {
        let mut cmd = self.command(root, project, files);
        cmd.args(["up", "-d", "--no-build", "--scale"])
            .arg(format!("peer={peers}"))
            .envs(env.iter().map(|(k, v)| (k, v)));
        run_logged(cmd, log, &format!("{} up", self.name())).await
    }
}

/// Runs `cmd` (`what`, for errors), its output appended to `log`; a failure quotes the log's last
/// lines. Dropping the future kills the process.
pub async fn run_logged(cmd: Command, log: &Path, what: &str) -> anyhow::Result<()> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot write {}", log.display()))?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    let status = cmd
        .status()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{what} failed ({status}); its last lines:\n{}",
            tail.join("\n")
        );
    }
    Ok(())
}
