//! Building the kad-node image.
//!
//! `host` (the default on x86-64 Linux) compiles a static binary here and copies it into a scratch
//! image: no registry needed, which is what CI machines without one require. `source` builds inside
//! Docker from docker/source.Dockerfile, for machines without a Linux toolchain (macOS), and needs
//! a registry for its Rust base image.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// How to build the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BuildMode {
    /// Static binary built here, copied into the scratch image (needs no registry).
    Host,
    /// Built inside Docker from source (needs a registry; works without a Linux toolchain).
    Source,
    /// Use the image as it is.
    None,
}

impl BuildMode {
    /// `Host` where this machine can build the Linux binary, else `Source`.
    pub fn auto() -> Self {
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            BuildMode::Host
        } else {
            BuildMode::Source
        }
    }
}

/// The target the static binary is built for, and where cargo puts it.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `image` (the node) and [`CRAWL_IMAGE`] from the workspace at `root`.
pub fn build(mode: BuildMode, image: &str, root: &Path) -> anyhow::Result<()> {
    match mode {
        BuildMode::None => Ok(()),
        BuildMode::Host => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(
                Command::new(cargo)
                    .current_dir(root)
                    .args([
                        "build",
                        "--release",
                        "--locked",
                        "--target",
                        TARGET,
                        "-p",
                        "kad-node",
                        "-p",
                        "testbed-crawl",
                    ])
                    // Static glibc: the image has no libc. Only this target's artifacts get the
                    // flag, so host builds and tests are untouched.
                    .env(
                        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                        "-C target-feature=+crt-static",
                    ),
                "building the static kad-node and testbed-crawl binaries",
            )?;
            for (dockerfile, tag) in [
                ("Dockerfile", image),
                ("docker/crawl.Dockerfile", CRAWL_IMAGE),
            ] {
                run(
                    Command::new("docker")
                        .current_dir(root)
                        .args(["build", "--quiet", "-f", dockerfile, "-t", tag, "."]),
                    &format!("docker build -f {dockerfile}"),
                )?;
            }
            Ok(())
        }
        BuildMode::Source => {
            // One build stage, two images: the node's (the last stage) and the crawler's.
            for (target, tag) in [(None, image), (Some("crawl"), CRAWL_IMAGE)] {
                let mut cmd = Command::new("docker");
                cmd.current_dir(root)
                    .args(["build", "-f", "docker/source.Dockerfile", "-t", tag]);
                if let Some(target) = target {
                    cmd.args(["--target", target]);
                }
                run(cmd.arg("."), "docker build from source")?;
            }
            Ok(())
        }
    }
}

/// The crawler's image (compose/crawl.yml's default): testbed-crawl alone, FROM scratch, so the
/// node's image stays the node alone.
pub const CRAWL_IMAGE: &str = "kad-testbed/crawl:dev";

/// The foreign node's image tag (compose/foreign.yml's default).
pub const FOREIGN_IMAGE: &str = "kad-testbed/foreign-kad-node:dev";

/// Where the foreign node's sources are: its own cargo workspace and lock file.
const FOREIGN_DIR: &str = "foreign/rust-libp2p-0.53";

/// Builds the foreign node's image (rust-libp2p 0.53, see foreign/rust-libp2p-0.53) from a
/// static binary built here, as [`build`] does for kad-node. Only the host build exists for it:
/// `Source` mode, for machines without a Linux toolchain, is refused with what to do instead.
pub fn build_foreign(mode: BuildMode, image: &str, root: &Path) -> anyhow::Result<()> {
    match mode {
        BuildMode::None => Ok(()),
        BuildMode::Source => bail!(
            "the foreign node builds only on x86-64 Linux here; build your own image and name it \
             with KAD_FOREIGN_IMAGE (README, \"Bring your own node\")"
        ),
        BuildMode::Host => {
            let dir = root.join(FOREIGN_DIR);
            eprintln!("testbed: building image {image} (rust-libp2p 0.53, {FOREIGN_DIR})");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(
                Command::new(cargo)
                    .current_dir(&dir)
                    .args(["build", "--release", "--locked", "--target", TARGET])
                    // Not this workspace's target dir: the foreign node has its own lock file.
                    .env_remove("CARGO_TARGET_DIR")
                    .env(
                        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                        "-C target-feature=+crt-static",
                    ),
                "building the static foreign node",
            )?;
            run(
                Command::new("docker")
                    .current_dir(&dir)
                    .args(["build", "--quiet", "-t", image, "."]),
                "docker build (foreign node)",
            )
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
