//! testbed-check: reads every node's logs and says whether the DHT formed, and if not, why.
//!
//! The verdict is a pure function of the logs ([`verdict::check`]); reading them is a separate
//! layer ([`source`]) so the same verdict applies to a live compose project, saved files or stdin.
//! Only the event contract (`testbed-events`) is shared with the node; there is no libp2p here.
//!
//! # Properties
//!
//! 1. `seen`: every live peer is in at least `--min-seen` other live nodes' latest routing tables.
//! 2. `tables`: every live node's table holds at least one live peer.
//! 3. `full_mesh` (`--full-mesh`): every live node knows every other.
//! 4. `closest`: at least `--closest-threshold` of live nodes hold all of their `--closest` k
//!    XOR-closest live peers. Always reported.
//! 5. `node_count` (`--expect-nodes N`): exactly N nodes are live.
//!
//! Departed nodes (they logged `node_stopping` or their container exited while others ran) are not
//! required; entries pointing at them are counted as stale. When *every* node stopped (logs saved
//! after `down`), the last wave of stops is the run's own shutdown and those nodes are judged on
//! their final snapshots. Zero live nodes is never a pass.
//!
//! # Layout
//!
//! * [`ingest`]: lines → per-node digests ([`ingest::NodeLog`]), streaming, bad lines counted.
//! * [`verdict`]: digests → [`verdict::Report`]; no I/O.
//! * [`closest`]: each live node's k closest live peers, for the verdict and the timeline alike.
//! * [`crawl`]: tables read over the wire by `testbed-crawl`: members known only that way, and
//!   logged tables compared with what nodes answered.
//! * [`report`]: the report as a table, JSON or JUnit XML.
//! * [`source`]: files, stdin, a compose project's containers (through `testbed-docker`), or a
//!   Kubernetes namespace's pods (through `testbed-kube`).
//! * [`timeline`]: when a saved run converged, replaying every snapshot in time order.
//! * [`instants`]: a saved run judged by the full verdict at instants in time order, each file
//!   read once: how a scenario's expectations are judged after the run.
//!
//! Exit codes of the binary: 0 every property holds, 1 a property failed, 2 the logs could not be
//! read (no daemon, no such project, no events at all, bad flags).

pub mod closest;
pub mod crawl;
#[cfg(test)]
mod fixtures;
pub mod html;
pub mod ingest;
pub mod instants;
pub mod report;
pub mod source;
pub mod timeline;
pub mod verdict;

use testbed_events::Timestamp;

pub use source::{Source, SourceError};
pub use verdict::{CheckOptions, Report, check};

/// Reads a source, again and again if asked: incrementally for a compose project or a stack.
#[derive(Debug)]
pub struct Reader {
    source: Source,
    docker: Option<source::DockerReader>,
    /// Crawl files (`testbed-crawl --out`) read beside the source.
    crawls: Vec<std::path::PathBuf>,
}

impl Reader {
    pub fn new(source: Source) -> Self {
        Self {
            docker: source.docker_scope().map(source::DockerReader::new),
            source,
            crawls: Vec::new(),
        }
    }

    /// Also reads these crawl files (`--crawl`), as of the same instant as the source.
    pub fn with_crawls(mut self, files: Vec<std::path::PathBuf>) -> Self {
        self.crawls = files;
        self
    }

    /// Reads what is there now and judges it (as of `opts.at`, if given).
    pub async fn check(&mut self, opts: &CheckOptions) -> Result<Report, SourceError> {
        // A run folder saved by `testbed up` is judged as of the moment its live check ended,
        // unless --at says otherwise.
        let recorded = match &self.source {
            Source::Files(path) => source::recorded_run(path),
            Source::Compose(_) | Source::Stack(_) | Source::Kubernetes(_) => None,
        };
        let at = opts.at.or(recorded
            .as_ref()
            .and_then(|r| r.checked_at)
            .map(verdict::At::Time));
        let cutoff = match at {
            None => None,
            Some(verdict::At::Time(t)) => Some(t),
            Some(verdict::At::AfterFirstStart(d)) => {
                let first = self.first_start().await?;
                Some(Timestamp(
                    first.as_millis() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                ))
            }
        };
        let mut opts = opts.clone();
        let files;
        let mut as_of;
        let ingests: Vec<&ingest::Ingest> = match (&mut self.docker, &self.source) {
            // With a cutoff every read starts afresh: the incremental reader keeps everything.
            (Some(_), source) if cutoff.is_some() => {
                let scope = source.docker_scope().expect("a Docker reader has a scope");
                as_of = source::DockerReader::new(scope).until(cutoff);
                as_of.read().await?
            }
            (Some(reader), _) => reader.read().await?,
            (None, Source::Files(path)) => {
                let mut ingest = ingest::Ingest::until(cutoff);
                source::read_files(path, &mut ingest)?;
                // A run folder saved by `testbed up` knows when its shutdown began (no need to
                // guess it), how many nodes it started, and which it killed when.
                for (node, at) in recorded.iter().flat_map(source::RecordedRun::kills) {
                    ingest.set_killed(node, at);
                }
                files = ingest;
                if let Some(run) = recorded {
                    run.fill(&mut opts);
                }
                vec![&files]
            }
            (None, Source::Kubernetes(namespace)) => {
                let mut ingest = ingest::Ingest::until(cutoff);
                source::read_kubernetes(namespace, &mut ingest).await?;
                files = ingest;
                vec![&files]
            }
            (None, Source::Compose(_) | Source::Stack(_)) => {
                unreachable!("Docker sources have a reader")
            }
        };
        let mut crawl_ingests = Vec::new();
        for file in &self.crawls {
            let mut ingest = ingest::Ingest::until(cutoff);
            source::read_files(file, &mut ingest)?;
            crawl_ingests.push(ingest);
        }
        let ingests: Vec<&ingest::Ingest> =
            ingests.into_iter().chain(crawl_ingests.iter()).collect();
        let mut report = judge(&self.source.to_string(), &ingests, &opts)?;
        report.at = cutoff;
        Ok(report)
    }

    /// When the first node started, from a full read of the source.
    async fn first_start(&self) -> Result<Timestamp, SourceError> {
        let files;
        let mut docker;
        let ingests: Vec<&ingest::Ingest> = match &self.source {
            Source::Compose(_) | Source::Stack(_) => {
                let scope = self.source.docker_scope().expect("a Docker source");
                docker = source::DockerReader::new(scope);
                docker.read().await?
            }
            Source::Files(path) => {
                let mut ingest = ingest::Ingest::new();
                source::read_files(path, &mut ingest)?;
                files = ingest;
                vec![&files]
            }
            Source::Kubernetes(namespace) => {
                let mut ingest = ingest::Ingest::new();
                source::read_kubernetes(namespace, &mut ingest).await?;
                files = ingest;
                vec![&files]
            }
        };
        ingests
            .iter()
            .flat_map(|i| i.logs())
            .filter_map(|l| l.first_started)
            .min()
            .ok_or_else(|| SourceError::NoEvents {
                origin: format!(
                    "{} (no node_started, so --at +DURATION has no start)",
                    self.source
                ),
                lines: 0,
            })
    }
}

/// The verdict on what `ingests` read from `origin` (named in the error when they hold no event).
pub(crate) fn judge(
    origin: &str,
    ingests: &[&ingest::Ingest],
    opts: &CheckOptions,
) -> Result<Report, SourceError> {
    let logs: Vec<&ingest::NodeLog> = ingests.iter().flat_map(|i| i.logs()).collect();
    let mut lines = ingest::LineStats::default();
    for log in &logs {
        lines.add(&log.lines);
    }
    if lines.events == 0 {
        return Err(SourceError::NoEvents {
            origin: origin.to_owned(),
            lines: lines.lines,
        });
    }
    let samples = ingests
        .iter()
        .flat_map(|i| i.samples.iter().cloned())
        .take(5)
        .collect();
    let input = verdict::InputSummary {
        // A `compose logs` banner is not a log.
        logs: logs.iter().filter(|l| l.lines.events > 0).count(),
        lines,
        samples,
    };
    Ok(check(&logs, opts, input))
}

/// Reads `source` once and judges it: the whole checker in one call.
pub async fn read_and_check(source: &Source, opts: &CheckOptions) -> Result<Report, SourceError> {
    Reader::new(source.clone()).check(opts).await
}
