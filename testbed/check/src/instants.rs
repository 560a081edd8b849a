//! A saved run judged by the full verdict at instants in time order, reading each log file once.
//!
//! A live check judges the logs as the reader has them when it asks; under load it lags the
//! nodes (at N = 300, two samples in two minutes, with 28 running nodes not yet read). A run's
//! saved logs hold every event with the node's own timestamp, so the network as it stood at any
//! instant is exact: [`Instants::check_at`] feeds each node's events up to that instant and
//! judges them with [`crate::verdict::check`], as `testbed-check --at` does for one instant.
//!
//! Each node's events are in time order in its own file, so walking forward only reads on: a
//! file's first event past the instant waits for a later one. Going back starts over. Files are
//! opened only while read (at their offset), so a run of thousands of nodes needs no more open
//! files than a small one.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use testbed_events::{ParsedLine, Timestamp, parse_line};

use crate::ingest::{Ingest, split_compose_prefix};
use crate::source::{Lines, RecordedRun, SourceError, log_files, node_name, recorded_run};
use crate::{CheckOptions, Report};

/// A run folder (`runs/<name>/`, or any folder of per-node logs) being walked forward in time.
pub struct Instants {
    path: PathBuf,
    files: Vec<Cursor>,
    ingest: Ingest,
    /// run.json: the kills (departures at their instants), the shutdown moment.
    recorded: Option<RecordedRun>,
}

impl std::fmt::Debug for Instants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instants")
            .field("path", &self.path)
            .field("files", &self.files.len())
            .field("at", &self.ingest.cutoff())
            .finish_non_exhaustive()
    }
}

/// One log file, read up to the current instant.
struct Cursor {
    path: PathBuf,
    name: String,
    /// Bytes read so far.
    offset: u64,
    /// Its first event after the current instant (with the node it belongs to).
    held: Option<(String, String, ParsedLine)>,
    ended: bool,
}

impl Instants {
    /// Opens the logs in `path` (a run folder's `logs/`, with its `run.json` beside).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let files = log_files(path)?
            .into_iter()
            .map(|file| Cursor {
                name: node_name(&file),
                path: file,
                offset: 0,
                held: None,
                ended: false,
            })
            .collect();
        Ok(Self {
            path: path.to_owned(),
            files,
            ingest: Ingest::new(),
            recorded: recorded_run(path),
        })
    }

    /// The network as it stood at `at`, judged with `opts` (filled in from run.json as
    /// `testbed-check --logs` does). Later instants read on; an earlier one reads again.
    pub fn check_at(&mut self, at: Timestamp, opts: &CheckOptions) -> Result<Report, SourceError> {
        if self.ingest.cutoff().is_some_and(|c| at < c) {
            *self = Self::open(&self.path)?;
        }
        self.ingest.advance_to(at);
        for file in &mut self.files {
            file.read_until(at, &mut self.ingest)?;
        }
        let mut opts = opts.clone();
        if let Some(run) = &self.recorded {
            for (node, killed) in run.kills() {
                // Ignored past the instant, and by a node that started again since.
                self.ingest.set_killed(node, killed);
            }
            run.fill(&mut opts);
        }
        let mut report = crate::judge(&self.path.display().to_string(), &[&self.ingest], &opts)?;
        report.at = Some(at);
        Ok(report)
    }
}

impl Cursor {
    /// Feeds every line up to the first event after `at`, which it holds back.
    fn read_until(&mut self, at: Timestamp, ingest: &mut Ingest) -> Result<(), SourceError> {
        if let Some((node, line, parsed)) = self.held.take() {
            if parsed.envelope.ts > at {
                self.held = Some((node, line, parsed));
                return Ok(());
            }
            ingest.push_parsed(&node, &line, Ok(parsed));
        }
        if self.ended {
            return Ok(());
        }
        let io = |source| SourceError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        // A second of a node's log is a few KB: a small buffer reads little past the instant.
        let mut lines = Lines::with_capacity(&self.path.display().to_string(), file, 16 * 1024);
        loop {
            let Some(line) = lines.next_line()? else {
                self.ended = true;
                break;
            };
            // A `docker compose logs` dump names the node on each line; a node's own file
            // does not.
            let (node, rest) = split_compose_prefix(&line).unwrap_or((&self.name, &line));
            match parse_line(rest) {
                Ok(parsed) if parsed.envelope.ts > at => {
                    self.held = Some((node.to_owned(), rest.to_owned(), parsed));
                    break;
                }
                parsed => ingest.push_parsed(node, rest, parsed),
            }
        }
        self.offset += lines.consumed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{started, table};
    use crate::verdict::{At, PropertyId, Status};

    const A: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    const B: &str = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X";
    const C: &str = "12D3KooWGFMmCGJH8bSxrSX5ZZNPjcq64UcwpweWZVBx31uiP7C4";

    fn ts(s: u32) -> Timestamp {
        Timestamp::parse_rfc3339(&format!("2026-11-25T10:00:{s:02}.000Z")).expect("a timestamp")
    }

    /// Three nodes: c's table stays empty until 10:00:09, and no one holds c until 10:00:07.
    fn run() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = [
            ("a", vec![started(A, 0), table(2, &[B]), table(7, &[B, C])]),
            ("b", vec![started(B, 1), table(3, &[A]), table(8, &[A, C])]),
            ("c", vec![started(C, 2), table(9, &[A, B])]),
        ];
        for (name, lines) in logs {
            std::fs::write(dir.path().join(format!("{name}.log")), lines.join("\n"))
                .expect("write");
        }
        dir
    }

    fn status(report: &Report, id: PropertyId) -> Status {
        report.property(id).expect("judged").status
    }

    #[test]
    fn each_instant_is_judged_as_the_logs_stood_then() {
        let dir = run();
        let mut walk = Instants::open(dir.path()).expect("opens");
        let opts = CheckOptions::default();
        let early = walk.check_at(ts(5), &opts).expect("judged");
        assert_eq!(status(&early, PropertyId::Seen), Status::Fail);
        assert_eq!(status(&early, PropertyId::Tables), Status::Fail);
        let middle = walk.check_at(ts(8), &opts).expect("judged");
        assert_eq!(status(&middle, PropertyId::Seen), Status::Pass);
        assert_eq!(status(&middle, PropertyId::Tables), Status::Fail);
        let late = walk.check_at(ts(9), &opts).expect("judged");
        assert!(late.passed, "{late:?}");
        assert_eq!(late.at, Some(ts(9)));
        // Back in time: read again, same answer as the first time.
        let again = walk.check_at(ts(5), &opts).expect("judged");
        assert_eq!(status(&again, PropertyId::Seen), Status::Fail);
    }

    #[test]
    fn walking_forward_agrees_with_judging_each_instant_afresh() {
        let dir = run();
        let mut walk = Instants::open(dir.path()).expect("opens");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        for s in 0..=10 {
            let opts = CheckOptions {
                at: Some(At::Time(ts(s))),
                ..CheckOptions::default()
            };
            let walked = walk.check_at(ts(s), &opts);
            let fresh = rt.block_on(crate::read_and_check(
                &crate::Source::Files(dir.path().to_owned()),
                &opts,
            ));
            match (walked, fresh) {
                (Ok(w), Ok(f)) => {
                    assert_eq!(w.passed, f.passed, "at 10:00:{s:02}");
                    assert_eq!(w.live, f.live, "at 10:00:{s:02}");
                    assert_eq!(w.closest.complete, f.closest.complete, "at 10:00:{s:02}");
                    assert_eq!(w.properties.len(), f.properties.len());
                    for (pw, pf) in w.properties.iter().zip(&f.properties) {
                        assert_eq!(pw.status, pf.status, "{} at 10:00:{s:02}", pw.id);
                    }
                }
                (Err(_), Err(_)) => {}
                (w, f) => panic!("at 10:00:{s:02}: walked {w:?}, fresh {f:?}"),
            }
        }
    }
}
