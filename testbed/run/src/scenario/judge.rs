//! Judging one expectation from samples of the network: a pure state machine, so that "holds
//! within T" and "holds throughout T" mean the same in every report and can be tested without
//! Docker. The live run samples what its reader has read ([`Judge::observe`]); after the run,
//! [`replay`] drives the same judges over the saved logs at exact instants, and that verdict
//! counts.

use std::time::Duration;

use serde::Serialize;
use testbed_check::Report;
use testbed_check::verdict::{PropertyId, Status};
use testbed_events::Timestamp;

use super::file::{Hold, Property};

/// How far apart the saved logs are sampled when expectations are judged after the run: about
/// the nodes' own table debounce (a changed table is logged within 1 s).
pub const REPLAY_EVERY: Duration = Duration::from_secs(1);

/// What became of an expectation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// Still being sampled.
    Pending,
    /// It held: `within` since the first instant it held, `throughout` at every sample.
    Pass {
        /// `within`: from the step to the first sample where it held (the healing time).
        held_after_s: Option<f64>,
    },
    Fail {
        /// `throughout`: the first sample where it did not hold; `within`: the deadline.
        at_s: f64,
        reasons: Vec<String>,
    },
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass { .. })
    }
}

/// One expectation being judged.
#[derive(Debug, Clone)]
pub struct Judge {
    pub hold: Hold,
    pub verdict: Verdict,
    pub samples: usize,
    /// The reasons of the latest sample where it did not hold.
    last_reasons: Vec<String>,
}

impl Judge {
    pub fn new(hold: Hold) -> Self {
        Self {
            hold,
            verdict: Verdict::Pending,
            samples: 0,
            last_reasons: Vec::new(),
        }
    }

    pub fn done(&self) -> bool {
        self.verdict != Verdict::Pending
    }

    /// A sample taken `since` after the step: whether the property held, and why not.
    pub fn observe(&mut self, since: Duration, held: Result<(), Vec<String>>) {
        if self.done() {
            return;
        }
        self.samples += 1;
        let at_s = since.as_secs_f64();
        match (self.hold, held) {
            (Hold::Within(limit), Ok(())) if since <= limit => {
                self.verdict = Verdict::Pass {
                    held_after_s: Some(at_s),
                }
            }
            (Hold::Within(_), Ok(())) => self.expire(since),
            (Hold::Within(limit), Err(reasons)) => {
                self.last_reasons = reasons;
                if since >= limit {
                    self.expire(since);
                }
            }
            (Hold::Throughout(_), Err(reasons)) => {
                self.verdict = Verdict::Fail { at_s, reasons };
            }
            (Hold::Throughout(window), Ok(())) if since >= window => {
                self.verdict = Verdict::Pass { held_after_s: None }
            }
            (Hold::Throughout(_), Ok(())) => {}
        }
    }

    /// No sample could be taken (the logs were unreadable) at `since`: only the deadline counts.
    pub fn tick(&mut self, since: Duration) {
        if !self.done() && since >= self.deadline() {
            if self.samples == 0 {
                self.last_reasons = vec!["no sample of the network could be read".into()];
                self.verdict = Verdict::Fail {
                    at_s: since.as_secs_f64(),
                    reasons: self.last_reasons.clone(),
                };
            } else {
                self.expire(since);
            }
        }
    }

    /// Sampling ends at `since`, before the deadline or the window's end (the next step began):
    /// a judge still pending fails, saying why. A `throughout` window observed only in part is
    /// not a pass.
    pub fn cut_short(&mut self, since: Duration, why: String) {
        if self.done() {
            return;
        }
        let mut reasons = vec![why];
        reasons.extend(self.last_reasons.iter().cloned());
        self.verdict = Verdict::Fail {
            at_s: since.as_secs_f64(),
            reasons,
        };
    }

    fn expire(&mut self, since: Duration) {
        let mut reasons = vec![format!(
            "did not hold within {}",
            humantime::format_duration(self.deadline())
        )];
        reasons.extend(self.last_reasons.iter().cloned());
        self.verdict = match self.hold {
            Hold::Within(_) => Verdict::Fail {
                at_s: since.as_secs_f64(),
                reasons,
            },
            // Every sample of the window held (a failing one ends it at once).
            Hold::Throughout(_) => Verdict::Pass { held_after_s: None },
        };
    }

    /// When the judge needs no more samples, measured from the step.
    pub fn deadline(&self) -> Duration {
        match self.hold {
            Hold::Within(d) | Hold::Throughout(d) => d,
        }
    }
}

/// Judges expectations (their `holds`) again over instants [`REPLAY_EVERY`] apart from `acted`
/// (the step's action done), up to each deadline but not past `next`: what came next, and when
/// (the next step, whose fault later instants would judge instead, or the run's end). That
/// moment itself is the last instant judged; a judge still pending then fails, saying so.
/// `held(at)` says, per expectation, whether it held at that instant (`None`: the logs could not
/// be judged then). Returns one decided judge per expectation.
pub fn replay(
    holds: &[Hold],
    acted: Timestamp,
    next: Option<(&str, Timestamp)>,
    mut held: impl FnMut(Timestamp) -> Option<Vec<Result<(), Vec<String>>>>,
) -> Vec<Judge> {
    let mut judges: Vec<Judge> = holds.iter().map(|h| Judge::new(*h)).collect();
    let mut since = Duration::ZERO;
    while judges.iter().any(|j| !j.done()) {
        let mut at =
            Timestamp(acted.as_millis() + u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        // The last instant is the one just before what came next: the live judge decided on
        // what its reader had by then, so a property that held for it is seen to hold here
        // too, even when it first held less than a second before.
        let last = next.filter(|(_, began)| at >= *began);
        if let Some((_, began)) = last {
            at = began;
            since = Duration::from_millis(began.millis_since(acted));
        }
        match held(at) {
            Some(results) => {
                for (j, result) in judges.iter_mut().zip(results) {
                    j.observe(since, result);
                }
            }
            None => {
                for j in &mut judges {
                    j.tick(since);
                }
            }
        }
        if let Some((what, _)) = last {
            let why = format!(
                "{what} began {:.1} s after this step acted, before this was decided",
                since.as_secs_f64()
            );
            for j in &mut judges {
                j.cut_short(since, why.clone());
            }
            break;
        }
        since += REPLAY_EVERY;
    }
    judges
}

/// Whether `property` holds in `report`, and if not, why (the checker's own failure lines).
pub fn holds(property: &Property, report: &Report) -> Result<(), Vec<String>> {
    let by_id = |id: PropertyId| match report.property(id) {
        Some(p) if p.status == Status::Pass => Ok(()),
        Some(p) => Err(if p.failures.is_empty() {
            vec![p.title.clone()]
        } else {
            p.failures.iter().take(6).cloned().collect()
        }),
        None => Err(vec![format!("{id} was not judged")]),
    };
    match property {
        Property::Seen => by_id(PropertyId::Seen),
        Property::Tables => by_id(PropertyId::Tables),
        Property::FullMesh => by_id(PropertyId::FullMesh),
        Property::Across(..) => by_id(PropertyId::Across),
        Property::Closest(min) => {
            if report.closest.of > 0 && report.closest.share + 1e-9 >= *min {
                Ok(())
            } else {
                Err(vec![format!(
                    "{} (wanted ≥ {:.0} %)",
                    report.closest.sentence(),
                    min * 100.0
                )])
            }
        }
        Property::NodeCount(n) => {
            if report.live == *n {
                Ok(())
            } else {
                Err(vec![format!(
                    "{} nodes live ({} departed), expected {n}",
                    report.live, report.departed
                )])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn no() -> Result<(), Vec<String>> {
        Err(vec!["peer_3 misses peer_7".into()])
    }

    #[test]
    fn within_passes_at_the_first_sample_that_holds_and_says_when() {
        let mut j = Judge::new(Hold::Within(s(60)));
        j.observe(s(2), no());
        j.observe(s(4), no());
        assert!(!j.done());
        j.observe(s(6), Ok(()));
        assert_eq!(
            j.verdict,
            Verdict::Pass {
                held_after_s: Some(6.0)
            }
        );
        // Later samples change nothing.
        j.observe(s(8), no());
        assert!(matches!(j.verdict, Verdict::Pass { .. }));
    }

    /// The case that proves it can fail: a property that never comes back.
    #[test]
    fn within_fails_at_the_deadline_with_the_last_reason() {
        let mut j = Judge::new(Hold::Within(s(10)));
        j.observe(s(4), no());
        j.observe(s(10), no());
        match &j.verdict {
            Verdict::Fail { at_s, reasons } => {
                assert_eq!(*at_s, 10.0);
                assert_eq!(reasons[0], "did not hold within 10s");
                assert_eq!(reasons[1], "peer_3 misses peer_7");
            }
            other => panic!("{other:?}"),
        }
        // Holding only after the deadline is still a failure.
        let mut late = Judge::new(Hold::Within(s(10)));
        late.observe(s(12), Ok(()));
        assert!(matches!(late.verdict, Verdict::Fail { .. }));
    }

    #[test]
    fn throughout_fails_at_the_first_sample_that_does_not_hold() {
        let mut j = Judge::new(Hold::Throughout(s(30)));
        j.observe(s(2), Ok(()));
        j.observe(s(4), no());
        assert!(matches!(j.verdict, Verdict::Fail { at_s, .. } if at_s == 4.0));

        let mut ok = Judge::new(Hold::Throughout(s(30)));
        for t in (2..=30).step_by(2) {
            ok.observe(s(t), Ok(()));
        }
        assert_eq!(ok.verdict, Verdict::Pass { held_after_s: None });
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp(1_800_000_000_000 + ms)
    }

    #[test]
    fn a_replay_samples_every_second_from_the_action_and_finds_the_first_that_held() {
        let acted = at(0);
        let mut asked = Vec::new();
        // Holds from 7.5 s on: the first instant it held is 8 s.
        let judges = replay(&[Hold::Within(s(60))], acted, None, |t| {
            asked.push(t.millis_since(acted));
            Some(vec![if t.millis_since(acted) >= 7_500 {
                Ok(())
            } else {
                no()
            }])
        });
        assert_eq!(
            judges[0].verdict,
            Verdict::Pass {
                held_after_s: Some(8.0)
            }
        );
        assert_eq!(asked, (0..=8).map(|i| i * 1_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_replay_fails_what_never_held_and_what_broke_within_its_window() {
        let judges = replay(
            &[Hold::Within(s(10)), Hold::Throughout(s(20))],
            at(0),
            None,
            |t| {
                let broke = t.millis_since(at(0)) >= 15_000;
                Some(vec![no(), if broke { no() } else { Ok(()) }])
            },
        );
        assert!(
            matches!(&judges[0].verdict, Verdict::Fail { at_s, reasons }
                if *at_s == 10.0 && reasons[0] == "did not hold within 10s"),
            "{:?}",
            judges[0].verdict
        );
        assert!(
            matches!(judges[1].verdict, Verdict::Fail { at_s, .. } if at_s == 15.0),
            "{:?}",
            judges[1].verdict
        );
    }

    #[test]
    fn a_replay_stops_where_the_next_step_began() {
        // Step 3 began 5.3 s after this step acted; it never held before that.
        let mut asked = Vec::new();
        let judges = replay(
            &[Hold::Within(s(60)), Hold::Throughout(s(30))],
            at(0),
            Some(("step 3", at(5_300))),
            |t| {
                asked.push(t.millis_since(at(0)));
                Some(vec![no(), Ok(())])
            },
        );
        assert_eq!(asked, vec![0, 1_000, 2_000, 3_000, 4_000, 5_000, 5_300]);
        for j in &judges {
            assert!(
                matches!(&j.verdict, Verdict::Fail { at_s, reasons }
                    if *at_s == 5.3 && reasons[0].starts_with("step 3 began 5.3 s after this step")),
                "{:?}",
                j.verdict
            );
        }
        // What first held in the last second before the next step (when the live judge saw it
        // and moved on) holds at the instant that step began.
        let judges = replay(
            &[Hold::Within(s(60))],
            at(0),
            Some(("step 3", at(8_300))),
            |t| Some(vec![if t >= at(8_100) { Ok(()) } else { no() }]),
        );
        assert_eq!(
            judges[0].verdict,
            Verdict::Pass {
                held_after_s: Some(8.3)
            }
        );
        // Unreadable logs to the deadline: a failure, never a pass.
        let unread = replay(&[Hold::Throughout(s(3))], at(0), None, |_| None);
        assert!(matches!(unread[0].verdict, Verdict::Fail { .. }));
    }

    #[test]
    fn no_readable_sample_by_the_deadline_is_a_failure() {
        let mut j = Judge::new(Hold::Throughout(s(10)));
        j.tick(s(5));
        assert!(!j.done());
        j.tick(s(10));
        assert!(
            matches!(&j.verdict, Verdict::Fail { reasons, .. } if reasons[0].contains("no sample"))
        );
    }
}
