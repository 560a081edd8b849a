//! The one writer of stdout: each event becomes one JSON line, flushed at once.
//!
//! Flushing every line costs a syscall per event but means `docker logs` (and a test reading the
//! buffer) sees an event the moment it happens, and a killed node loses nothing it reported.

use std::io::Write;

use testbed_events::{Envelope, Event};

/// Writes events as JSON Lines to `W` (stdout in the binary, a buffer in tests).
pub struct Emitter<W: Write> {
    out: W,
    broken: bool,
}

impl<W: Write> std::fmt::Debug for Emitter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("broken", &self.broken)
            .finish()
    }
}

impl<W: Write> Emitter<W> {
    pub fn new(out: W) -> Self {
        Self { out, broken: false }
    }

    /// Writes `event` as one line. A write error (stdout closed) is reported once on stderr and
    /// the node keeps running: its peers still need it even if nobody reads its log.
    pub fn emit(&mut self, event: Event) {
        if self.broken {
            return;
        }
        let mut line = Envelope::now(event).to_line();
        line.push('\n');
        if let Err(e) = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush())
        {
            tracing::error!("cannot write events to stdout, no more events will be written: {e}");
            self.broken = true;
        }
    }
}
