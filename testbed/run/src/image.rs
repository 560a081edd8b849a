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

/// Builds `image` from the workspace at `root`.
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
            run(
                Command::new("docker").current_dir(root).args([
                    "build",
                    "--quiet",
                    "-f",
                    "Dockerfile",
                    "-t",
                    image,
                    ".",
                ]),
                "docker build",
            )
        }
        BuildMode::Source => run(
            Command::new("docker").current_dir(root).args([
                "build",
                "-f",
                "docker/source.Dockerfile",
                "-t",
                image,
                ".",
            ]),
            "docker build from source",
        ),
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
