//! Network faults, applied from outside the nodes: **the one place in the testbed that needs
//! privilege.**
//!
//! Node containers keep `cap_drop: [ALL]`, a read-only rootfs and a non-root user; they cannot
//! change their own network, and nothing here asks them to. Instead the orchestrator enters each
//! node's network namespace (`nsenter --net --target <pid>`, the container's main process from
//! the Engine API) and changes the kernel's rules there:
//!
//! * **partition**: `iptables` DROP rules for the other group's addresses, in both directions
//!   (INPUT and OUTPUT), in a chain of our own ([`CHAIN`]). They match addresses, not ports or
//!   protocols, so TCP and UDP alike are cut, and established connections stall as on a real
//!   cut (no RST is sent).
//! * **loss**: an `iptables` `statistic --mode random` DROP on the node's outgoing packets.
//! * **rate**: `tc qdisc … tbf` on the node's interfaces.
//! * **delay, jitter**: `tc qdisc … netem`, where the kernel has netem (`CONFIG_NET_SCH_NETEM`).
//!   Where it has not, the scenario is refused before anything starts (see [`preflight`]).
//!
//! The rules live in the container's own namespace, so they go with it: nothing on the host
//! changes, and teardown has nothing to undo. A restarted container gets a new namespace, so the
//! scenario engine applies its faults again after a restart ([`Faults::reapply`]).
//!
//! **What it needs**: root (or CAP_SYS_ADMIN to enter namespaces and CAP_NET_ADMIN to change
//! them), and `nsenter` (util-linux), `iptables` (iptables) and `tc` (iproute2) on the host.

use std::collections::BTreeMap;
use std::process::Stdio;

use anyhow::{Context, bail};
use testbed_docker::bollard::Docker;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::scenario::file::Shape;

/// The iptables chain that holds the testbed's cuts in each node's namespace (from INPUT and
/// OUTPUT).
pub const CHAIN: &str = "KAD-TESTBED";

/// The chain for outgoing packets only (from OUTPUT): loss.
pub const CHAIN_OUT: &str = "KAD-TESTBED-OUT";

/// Checks, before anything starts, that faults can be applied here: privilege, tools, and the
/// kernel's netem when `delay` is asked for. The error names what is missing.
pub async fn preflight(delay: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "network faults (partition, shape) enter each node's network namespace from outside, \
             which needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN); run the testbed as root, e.g. \
             `sudo -E cargo run -p testbed -- up --scenario …`, or drop the network steps"
        );
    }
    for (tool, package) in [
        ("nsenter", "util-linux"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
        ("tc", "iproute2"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok();
        if !found {
            bail!("network faults need `{tool}` on the host (Debian/Ubuntu package {package})");
        }
    }
    if delay {
        // A throwaway namespace: does this kernel know netem?
        let out = Command::new("unshare")
            .args([
                "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
            ])
            .output()
            .await
            .context("cannot run `unshare` (util-linux) to probe for netem")?;
        if !out.status.success() {
            bail!(
                "`delay`/`jitter` need the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), and this \
                 kernel has none (tc: {}). Loss and rate work without it; drop `delay` here, or run \
                 on a kernel with netem (GitHub's Ubuntu runners have it)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

fn is_root() -> bool {
    // The effective uid, from the kernel's own account of this process.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A container's main process and its addresses on the project's networks.
#[derive(Debug, Clone)]
pub struct Target {
    pub container: String,
    pub pid: i64,
    pub addresses: Vec<String>,
    pub interfaces: Vec<String>,
}

/// Looks a container up: its process (to enter its namespace) and its IPv4 addresses.
pub async fn target(docker: &Docker, container: &str) -> anyhow::Result<Target> {
    let (pid, addresses) = testbed_docker::process_and_addresses(docker, container).await?;
    if addresses.is_empty() {
        bail!("{container} has no IPv4 address on any network");
    }
    Ok(Target {
        container: container.to_owned(),
        pid,
        addresses,
        // Compose attaches one network: eth0. Overlays that add networks add eth1, ….
        interfaces: vec!["eth0".into()],
    })
}

/// The faults in force, per container, so they can be applied again after a restart.
#[derive(Debug, Default)]
pub struct Faults {
    /// Addresses each container must not reach, nor be reached from.
    cut: BTreeMap<String, Vec<String>>,
    shaped: BTreeMap<String, Shape>,
}

impl Faults {
    /// Cuts `a` from `b`, both ways, at both ends.
    pub async fn partition(&mut self, a: &[Target], b: &[Target]) -> anyhow::Result<()> {
        for (side, other) in [(a, b), (b, a)] {
            let away: Vec<String> = other.iter().flat_map(|t| t.addresses.clone()).collect();
            for t in side {
                let cut = self.cut.entry(t.container.clone()).or_default();
                cut.extend(away.iter().cloned());
                cut.sort_unstable();
                cut.dedup();
            }
        }
        for t in a.iter().chain(b) {
            self.apply_rules(t).await?;
        }
        Ok(())
    }

    /// Removes every partition.
    pub async fn heal(&mut self, targets: &[Target]) -> anyhow::Result<()> {
        self.cut.clear();
        for t in targets {
            self.apply_rules(t).await?;
        }
        Ok(())
    }

    pub async fn shape(&mut self, targets: &[Target], shape: &Shape) -> anyhow::Result<()> {
        for t in targets {
            self.shaped.insert(t.container.clone(), shape.clone());
            self.apply_rules(t).await?;
            apply_qdisc(t, Some(shape)).await?;
        }
        Ok(())
    }

    pub async fn unshape(&mut self, targets: &[Target]) -> anyhow::Result<()> {
        for t in targets {
            if self.shaped.remove(&t.container).is_some() {
                self.apply_rules(t).await?;
                apply_qdisc(t, None).await?;
            }
        }
        Ok(())
    }

    /// A container restarted (new namespace): applies what was in force on it again.
    pub async fn reapply(&self, t: &Target) -> anyhow::Result<()> {
        if self.cut.contains_key(&t.container) || self.shaped.contains_key(&t.container) {
            self.apply_rules(t).await?;
            if let Some(shape) = self.shaped.get(&t.container) {
                apply_qdisc(t, Some(shape)).await?;
            }
        }
        Ok(())
    }

    /// The containers a partition touches.
    pub fn cut_containers(&self) -> Vec<String> {
        self.cut.keys().cloned().collect()
    }

    /// Whether any fault is in force on `container`.
    pub fn touches(&self, container: &str) -> bool {
        self.cut.contains_key(container) || self.shaped.contains_key(container)
    }

    /// Replaces the chain's rules in `t`'s namespace with what is in force on it now.
    async fn apply_rules(&self, t: &Target) -> anyhow::Result<()> {
        let rules = rules(
            self.cut.get(&t.container).map(Vec::as_slice).unwrap_or(&[]),
            self.shaped.get(&t.container).and_then(|s| s.loss),
        );
        // The jumps into the chain, once per namespace.
        let jumped = nsenter(t, "iptables", &["-C", "INPUT", "-j", CHAIN], None)
            .await
            .is_ok();
        let mut script = rules;
        if !jumped {
            script = script.replace(
                "COMMIT\n",
                &format!(
                    "-I INPUT -j {CHAIN}\n-I OUTPUT -j {CHAIN}\n-I OUTPUT -j {CHAIN_OUT}\nCOMMIT\n"
                ),
            );
        }
        nsenter(t, "iptables-restore", &["--noflush"], Some(&script)).await
    }
}

/// The iptables-restore input for one node: the chains, flushed and refilled.
pub fn rules(cut: &[String], loss: Option<f64>) -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n:{CHAIN_OUT} - [0:0]\n");
    for ip in cut {
        s.push_str(&format!("-A {CHAIN} -s {ip}/32 -j DROP\n"));
        s.push_str(&format!("-A {CHAIN} -d {ip}/32 -j DROP\n"));
    }
    if let Some(p) = loss.filter(|p| *p > 0.0) {
        // Outgoing only: a packet between two shaped nodes is then lost at the given rate, not
        // twice it.
        s.push_str(&format!(
            "-A {CHAIN_OUT} -m statistic --mode random --probability {p:.4} -j DROP\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

/// Sets (or with `None` removes) the rate and delay qdisc on `t`'s interfaces.
async fn apply_qdisc(t: &Target, shape: Option<&Shape>) -> anyhow::Result<()> {
    for dev in &t.interfaces {
        // Whatever was there goes first; "no such qdisc" is fine.
        let _ = nsenter(t, "tc", &["qdisc", "del", "dev", dev, "root"], None).await;
        let Some(shape) = shape else { continue };
        let mut args: Vec<String> = vec!["qdisc".into(), "add".into(), "dev".into(), dev.clone()];
        match (&shape.delay, &shape.rate) {
            (Some((delay, jitter)), rate) => {
                args.extend(["root".into(), "netem".into(), "delay".into()]);
                args.push(format!("{}ms", delay.as_millis()));
                if !jitter.is_zero() {
                    args.push(format!("{}ms", jitter.as_millis()));
                }
                if let Some(rate) = rate {
                    args.extend(["rate".into(), rate.clone()]);
                }
            }
            (None, Some(rate)) => {
                args.extend(["root".into(), "tbf".into(), "rate".into(), rate.clone()]);
                args.extend([
                    "burst".into(),
                    "32kbit".into(),
                    "latency".into(),
                    "400ms".into(),
                ]);
            }
            (None, None) => continue,
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nsenter(t, "tc", &args, None).await?;
    }
    Ok(())
}

/// Runs `tool args…` in `t`'s network namespace, with `stdin` if given.
async fn nsenter(t: &Target, tool: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let pid = t.pid.to_string();
    let mut cmd = Command::new("nsenter");
    cmd.args(["--net", "--target", &pid, tool])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run nsenter for {}", t.container))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .with_context(|| {
            format!(
                "{tool} in {}'s namespace did not finish in 20 s",
                t.container
            )
        })??;
    if !out.status.success() {
        bail!(
            "{tool} {} in {}'s network namespace failed: {}",
            args.join(" "),
            t.container,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_both_directions_and_loss_only_outgoing() {
        let r = rules(&["172.18.0.5".into()], Some(0.05));
        assert!(
            r.starts_with("*filter\n:KAD-TESTBED - [0:0]\n:KAD-TESTBED-OUT - [0:0]\n"),
            "{r}"
        );
        assert!(r.contains("-A KAD-TESTBED -s 172.18.0.5/32 -j DROP\n"));
        assert!(r.contains("-A KAD-TESTBED -d 172.18.0.5/32 -j DROP\n"));
        assert!(r.contains(
            "-A KAD-TESTBED-OUT -m statistic --mode random --probability 0.0500 -j DROP"
        ));
        assert!(r.ends_with("COMMIT\n"));
        // Healed and unshaped: the chain is flushed and left empty.
        assert_eq!(
            rules(&[], None),
            "*filter\n:KAD-TESTBED - [0:0]\n:KAD-TESTBED-OUT - [0:0]\nCOMMIT\n"
        );
    }
}
