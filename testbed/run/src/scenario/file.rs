//! The scenario file: TOML, read into typed steps. Every mistake is named by file, step and
//! field, before anything starts (see `compose/scenarios/README.md` for the format).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A scenario, checked and ready to play.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The file's stem: the run's name.
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub peers: usize,
    /// Compose overlays, relative to the repository root.
    pub overlays: Vec<PathBuf>,
    /// Start the nodes with `--heal` (`KAD_HEAL=true`).
    pub heal: bool,
    /// Extra `KAD_…` environment for every node.
    pub env: BTreeMap<String, String>,
    /// Declared groups; `bootstrap` and `all` are built in.
    pub groups: BTreeMap<String, Group>,
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Whether any step needs to enter the nodes' network namespaces (root).
    pub fn needs_network_faults(&self) -> bool {
        self.steps.iter().any(|s| s.action.is_network_fault())
    }

    /// Whether any step delays packets (the kernel's netem).
    pub fn needs_delay(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(&s.action, Action::Shape { shape, .. } if shape.delay.is_some()))
    }
}

/// A named subset of the nodes, resolved when the scenario starts: some peers, and the
/// bootstrap node if `bootstrap`.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub peers: Peers,
    pub bootstrap: bool,
}

/// Which peers a group holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Peers {
    None,
    /// Every peer running when the step runs (the built-in `all`).
    All,
    /// The first `n` peers by number.
    Count(usize),
    /// This share of the peers, spread evenly over their numbers.
    Share(f64),
    /// Peers by number (`peer_3` is 3).
    Numbers(Vec<usize>),
    /// Every peer in none of these groups: the other side of a partition, at any size.
    Except(Vec<String>),
}

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long after every node of the network started.
    At(Duration),
    /// This long after the previous step (and its expectations) finished.
    After(Duration),
}

/// One step of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based, as reports name it.
    pub number: usize,
    pub when: When,
    pub action: Action,
    pub expect: Vec<Expect>,
}

/// Link shaping for `shape`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Shape {
    /// Share of the group's outgoing packets dropped at random (0–1).
    pub loss: Option<f64>,
    /// Egress rate limit, as tc writes it (`1mbit`, `500kbit`).
    pub rate: Option<String>,
    /// Added delay and jitter (netem).
    pub delay: Option<(Duration, Duration)>,
}

/// What a step does. Container actions go through the Docker Engine API; network ones enter the
/// nodes' network namespaces from outside (`faults.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// SIGKILL: no final snapshot, as a crash.
    Kill(String),
    /// SIGTERM: the nodes write their final tables and leave.
    Stop(String),
    /// Same container, restarted. A peer comes back with a new identity (its key is random);
    /// the bootstrap node keeps its own (it derives it from `KAD_KEY_SEED`).
    Restart(String),
    Pause(String),
    Unpause(String),
    /// A join wave: this many more peers.
    Add(usize),
    /// Stop (SIGTERM) and remove the group's containers.
    Remove(String),
    /// Cut the two groups apart, both directions, every protocol.
    Partition(String, String),
    /// Undo every partition.
    Heal,
    Shape {
        group: String,
        shape: Shape,
    },
    Unshape(String),
    /// Nothing: only the expectations.
    Wait,
}

impl Action {
    pub fn is_network_fault(&self) -> bool {
        matches!(
            self,
            Action::Partition(..) | Action::Heal | Action::Shape { .. } | Action::Unshape(_)
        )
    }

    /// `partition a b`, as reports print it.
    pub fn describe(&self) -> String {
        match self {
            Action::Kill(g) => format!("kill {g}"),
            Action::Stop(g) => format!("stop {g}"),
            Action::Restart(g) => format!("restart {g}"),
            Action::Pause(g) => format!("pause {g}"),
            Action::Unpause(g) => format!("unpause {g}"),
            Action::Add(n) => format!("add {n} peers"),
            Action::Remove(g) => format!("remove {g}"),
            Action::Partition(a, b) => format!("partition {a} from {b}"),
            Action::Heal => "heal".into(),
            Action::Shape { group, shape } => {
                let mut parts = Vec::new();
                if let Some(l) = shape.loss {
                    parts.push(format!("loss {:.1} %", l * 100.0));
                }
                if let Some(r) = &shape.rate {
                    parts.push(format!("rate {r}"));
                }
                if let Some((d, j)) = shape.delay {
                    parts.push(format!("delay {d:?} ± {j:?}"));
                }
                format!("shape {group}: {}", parts.join(", "))
            }
            Action::Unshape(g) => format!("unshape {g}"),
            Action::Wait => "wait".into(),
        }
    }
}

/// A property an expectation asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Property {
    /// Every live peer is in some live table.
    Seen,
    /// Every live node's table holds a live peer.
    Tables,
    /// At least this share of live nodes hold all of their k closest live peers.
    Closest(f64),
    FullMesh,
    /// Exactly this many nodes are live.
    NodeCount(usize),
    /// The nodes of the two groups hold each other again (their closest in the other group).
    Across(String, String),
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Property::Seen => write!(f, "every live peer seen"),
            Property::Tables => write!(f, "every table holds a live peer"),
            Property::Closest(min) => write!(f, "k-closest ≥ {:.0} %", min * 100.0),
            Property::FullMesh => write!(f, "full mesh"),
            Property::NodeCount(n) => write!(f, "{n} nodes live"),
            Property::Across(a, b) => write!(f, "{a} and {b} hold each other"),
        }
    }
}

/// How long an expectation is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// It holds at some instant within this long after the step.
    Within(Duration),
    /// It holds at every instant sampled for this long after the step.
    Throughout(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    pub property: Property,
    pub hold: Hold,
}

/// A scenario file that cannot be played: which file, where in it, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", file.display(), location.as_deref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct ScenarioError {
    pub file: PathBuf,
    /// `step 2, field \`groups\``.
    pub location: Option<String>,
    pub message: String,
}

// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    description: String,
    peers: usize,
    #[serde(default)]
    overlays: Vec<PathBuf>,
    #[serde(default)]
    heal: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
    #[serde(default, rename = "step")]
    steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    bootstrap: bool,
    count: Option<usize>,
    share: Option<String>,
    peers: Option<Vec<usize>>,
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at: Option<String>,
    after: Option<String>,
    action: String,
    group: Option<String>,
    groups: Option<Vec<String>>,
    count: Option<usize>,
    loss: Option<String>,
    rate: Option<String>,
    delay: Option<String>,
    jitter: Option<String>,
    #[serde(default)]
    expect: Vec<RawExpect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    property: String,
    within: Option<String>,
    throughout: Option<String>,
    /// `closest`: the share of nodes (default 100 %).
    min: Option<String>,
    /// `node_count`.
    nodes: Option<usize>,
    /// `across`: the two groups.
    groups: Option<Vec<String>>,
}

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.into(),
        location: None,
        message: format!("cannot read it: {e}"),
    })?;
    parse(path, &text)
}

/// Checks a scenario's text (`path` names it in errors and gives its name).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let fail = |location: Option<String>, message: String| ScenarioError {
        file: path.into(),
        location,
        message,
    };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        // toml's message names the line, column and key; one line of it is enough here.
        let message = e.message().to_owned();
        let location = e.span().map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}")
        });
        fail(location, message)
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    if raw.peers == 0 {
        return Err(fail(
            Some("field `peers`".into()),
            "must be at least 1".into(),
        ));
    }
    for key in raw.env.keys() {
        if !NODE_ENV.contains(&key.as_str()) {
            return Err(fail(
                Some(format!("field `env.{key}`")),
                format!(
                    "not a variable docker-compose.yml passes to the nodes ({}); `heal = true` \
                     sets KAD_HEAL",
                    NODE_ENV.join(", ")
                ),
            ));
        }
    }

    let mut groups = BTreeMap::from([
        (
            "bootstrap".to_owned(),
            Group {
                peers: Peers::None,
                bootstrap: true,
            },
        ),
        (
            "all".to_owned(),
            Group {
                peers: Peers::All,
                bootstrap: true,
            },
        ),
    ]);
    for (gname, g) in &raw.groups {
        let at = |field: &str| Some(format!("group `{gname}`, field `{field}`"));
        if groups.contains_key(gname) {
            return Err(fail(
                Some(format!("group `{gname}`")),
                "is built in; pick another name".into(),
            ));
        }
        let peers = match (g.count, &g.share, &g.peers, &g.except) {
            (None, None, None, Some(names)) => {
                if names.is_empty() {
                    return Err(fail(at("except"), "names no group".into()));
                }
                for name in names {
                    let other = raw.groups.get(name);
                    if name == gname || name == "all" || other.is_some_and(|o| o.except.is_some()) {
                        return Err(fail(
                            at("except"),
                            format!(
                                "{name:?}: name another group given by `count`, `share` or \
                                 `peers` (not itself, `all`, or an `except` group)"
                            ),
                        ));
                    }
                    if other.is_none() && name != "bootstrap" {
                        return Err(fail(
                            at("except"),
                            format!(
                                "unknown group {name:?} (declared: {})",
                                raw.groups.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
                Peers::Except(names.clone())
            }
            (Some(n), None, None, None) => {
                if n == 0 || n > raw.peers {
                    return Err(fail(
                        at("count"),
                        format!("{n} is not between 1 and the {} peers", raw.peers),
                    ));
                }
                Peers::Count(n)
            }
            (None, Some(s), None, None) => {
                let share =
                    testbed_check::verdict::parse_share(s).map_err(|e| fail(at("share"), e))?;
                if share <= 0.0 {
                    return Err(fail(at("share"), "must be above 0 %".into()));
                }
                Peers::Share(share)
            }
            (None, None, Some(list), None) => {
                if list.is_empty() {
                    return Err(fail(at("peers"), "names no peer".into()));
                }
                if let Some(bad) = list.iter().find(|&&n| n == 0 || n > raw.peers) {
                    return Err(fail(
                        at("peers"),
                        format!("peer {bad} does not exist (peers are 1 to {})", raw.peers),
                    ));
                }
                Peers::Numbers(list.clone())
            }
            (None, None, None, None) if g.bootstrap => Peers::None,
            _ => {
                return Err(fail(
                    Some(format!("group `{gname}`")),
                    "give exactly one of `count`, `share`, `peers` or `except` (and `bootstrap = \
                     true` to add the bootstrap node)"
                        .into(),
                ));
            }
        };
        groups.insert(
            gname.clone(),
            Group {
                peers,
                bootstrap: g.bootstrap,
            },
        );
    }

    let mut steps = Vec::new();
    for (i, s) in raw.steps.iter().enumerate() {
        let number = i + 1;
        let at = |field: &str| Some(format!("step {number} ({}), field `{field}`", s.action));
        let duration = |field: &str, v: &str| {
            humantime::parse_duration(v.trim())
                .map_err(|e| fail(at(field), format!("{v:?}: {e} (expected e.g. 30s, 2m)")))
        };
        let when = match (&s.at, &s.after) {
            (Some(v), None) => When::At(duration("at", v)?),
            (None, Some(v)) => When::After(duration("after", v)?),
            (None, None) => When::After(Duration::ZERO),
            (Some(_), Some(_)) => {
                return Err(fail(at("at"), "give `at` or `after`, not both".into()));
            }
        };
        let group = |field: &str, name: &str| -> Result<String, ScenarioError> {
            if groups.contains_key(name) {
                Ok(name.to_owned())
            } else {
                Err(fail(
                    at(field),
                    format!(
                        "unknown group {name:?} (declared: {})",
                        groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        };
        let one = || -> Result<String, ScenarioError> {
            match &s.group {
                Some(g) => group("group", g),
                None => Err(fail(at("group"), "this action needs a `group`".into())),
            }
        };
        let two =
            |field: &str, list: &Option<Vec<String>>| -> Result<(String, String), ScenarioError> {
                match list.as_deref() {
                    Some([a, b]) if a != b => Ok((group(field, a)?, group(field, b)?)),
                    _ => Err(fail(
                        at(field),
                        "needs two different groups, [\"a\", \"b\"]".into(),
                    )),
                }
            };
        let action = match s.action.as_str() {
            "kill" => Action::Kill(one()?),
            "stop" => Action::Stop(one()?),
            "restart" => Action::Restart(one()?),
            "pause" => Action::Pause(one()?),
            "unpause" => Action::Unpause(one()?),
            "remove" => Action::Remove(one()?),
            "add" => match s.count {
                Some(n) if n > 0 => Action::Add(n),
                _ => return Err(fail(at("count"), "`add` needs `count` ≥ 1".into())),
            },
            "partition" => {
                let (a, b) = two("groups", &s.groups)?;
                Action::Partition(a, b)
            }
            "heal" => Action::Heal,
            "shape" => {
                let loss = match &s.loss {
                    Some(v) => Some(
                        testbed_check::verdict::parse_share(v).map_err(|e| fail(at("loss"), e))?,
                    ),
                    None => None,
                };
                let rate = match &s.rate {
                    Some(r) if valid_rate(r) => Some(r.trim().to_owned()),
                    Some(r) => {
                        return Err(fail(
                            at("rate"),
                            format!("{r:?} is not a rate (expected e.g. 1mbit, 500kbit)"),
                        ));
                    }
                    None => None,
                };
                let delay = match (&s.delay, &s.jitter) {
                    (Some(d), j) => Some((
                        duration("delay", d)?,
                        j.as_deref()
                            .map(|j| duration("jitter", j))
                            .transpose()?
                            .unwrap_or_default(),
                    )),
                    (None, Some(_)) => {
                        return Err(fail(at("jitter"), "`jitter` needs a `delay`".into()));
                    }
                    (None, None) => None,
                };
                let shape = Shape { loss, rate, delay };
                if shape == Shape::default() {
                    return Err(fail(
                        at("action"),
                        "`shape` needs at least one of `loss`, `rate`, `delay`".into(),
                    ));
                }
                Action::Shape {
                    group: one()?,
                    shape,
                }
            }
            "unshape" => Action::Unshape(one()?),
            "wait" => Action::Wait,
            other => {
                return Err(fail(
                    at("action"),
                    format!(
                        "unknown action {other:?} (kill, stop, restart, pause, unpause, add, \
                         remove, partition, heal, shape, unshape, wait)"
                    ),
                ));
            }
        };
        let mut expect = Vec::new();
        for (j, e) in s.expect.iter().enumerate() {
            let at = |field: &str| {
                Some(format!(
                    "step {number} ({}), expectation {} ({}), field `{field}`",
                    s.action,
                    j + 1,
                    e.property
                ))
            };
            let hold = match (&e.within, &e.throughout) {
                (Some(v), None) => Hold::Within(
                    humantime::parse_duration(v.trim())
                        .map_err(|err| fail(at("within"), format!("{v:?}: {err}")))?,
                ),
                (None, Some(v)) => Hold::Throughout(
                    humantime::parse_duration(v.trim())
                        .map_err(|err| fail(at("throughout"), format!("{v:?}: {err}")))?,
                ),
                _ => {
                    return Err(fail(
                        at("within"),
                        "give exactly one of `within` or `throughout`".into(),
                    ));
                }
            };
            let property = match e.property.as_str() {
                "seen" => Property::Seen,
                "tables" => Property::Tables,
                "full_mesh" => Property::FullMesh,
                "closest" => Property::Closest(match &e.min {
                    Some(v) => testbed_check::verdict::parse_share(v)
                        .map_err(|err| fail(at("min"), err))?,
                    None => 1.0,
                }),
                "node_count" => match e.nodes {
                    Some(n) => Property::NodeCount(n),
                    None => return Err(fail(at("nodes"), "`node_count` needs `nodes`".into())),
                },
                "across" => {
                    let (a, b) = match e.groups.as_deref() {
                        Some([a, b])
                            if a != b && groups.contains_key(a) && groups.contains_key(b) =>
                        {
                            (a.clone(), b.clone())
                        }
                        _ => {
                            return Err(fail(
                                at("groups"),
                                "`across` needs two different declared groups, [\"a\", \"b\"]"
                                    .into(),
                            ));
                        }
                    };
                    Property::Across(a, b)
                }
                other => {
                    return Err(fail(
                        at("property"),
                        format!(
                            "unknown property {other:?} (seen, tables, closest, full_mesh, \
                             node_count, across)"
                        ),
                    ));
                }
            };
            expect.push(Expect { property, hold });
        }
        if expect
            .iter()
            .filter(|e| matches!(e.property, Property::Across(..)))
            .count()
            > 1
        {
            return Err(fail(
                at("expect"),
                "at most one `across` expectation per step".into(),
            ));
        }
        steps.push(Step {
            number,
            when,
            action,
            expect,
        });
    }
    if steps.is_empty() {
        return Err(fail(
            None,
            "no [[step]]: a scenario needs at least one step".into(),
        ));
    }
    Ok(Scenario {
        name,
        path: path.into(),
        description: raw.description,
        peers: raw.peers,
        overlays: raw.overlays,
        heal: raw.heal,
        env: raw.env,
        groups,
        steps,
    })
}

/// The node settings docker-compose.yml passes through from the environment.
const NODE_ENV: [&str; 8] = [
    "KAD_WALK_INTERVAL",
    "KAD_BOOTSTRAP_INTERVAL",
    "KAD_TABLE_DEBOUNCE",
    "KAD_HEARTBEAT",
    "KAD_IDLE_TIMEOUT",
    "KAD_PING_INTERVAL",
    "KAD_DIAL_BACKOFF_MAX",
    "KAD_HEAL",
];

/// `1mbit`, `500kbit`, `10mbps`: a number and one of tc's rate units.
fn valid_rate(r: &str) -> bool {
    let r = r.trim();
    let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
    digits > 0
        && matches!(
            &r[digits..],
            "bit" | "kbit" | "mbit" | "gbit" | "bps" | "kbps" | "mbps" | "gbps"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "two halves cut apart, then healed"
peers = 20
heal = true

[groups]
a = { peers = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], bootstrap = true }
b = { count = 10 }
victims = { share = "30%" }

[[step]]
at = "30s"
action = "partition"
groups = ["a", "b"]
expect = [{ property = "tables", throughout = "20s" }]

[[step]]
after = "60s"
action = "heal"
expect = [
  { property = "across", groups = ["a", "b"], within = "2m" },
  { property = "closest", min = "90%", within = "2m" },
]

[[step]]
action = "shape"
group = "all"
loss = "5%"
rate = "1mbit"
"#;

    fn parsed(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("compose/scenarios/x.toml"), text)
    }

    #[test]
    fn a_complete_scenario_reads_into_steps() {
        let s = parsed(GOOD).expect("valid");
        assert_eq!(s.name, "x");
        assert_eq!(s.peers, 20);
        assert!(s.heal);
        assert_eq!(s.groups["victims"].peers, Peers::Share(0.3));
        assert!(!s.groups["victims"].bootstrap);
        assert_eq!(s.groups["a"].peers, Peers::Numbers((1..=10).collect()));
        assert!(s.groups["a"].bootstrap);
        assert_eq!(s.steps.len(), 3);
        assert_eq!(s.steps[0].when, When::At(Duration::from_secs(30)));
        assert_eq!(s.steps[0].action, Action::Partition("a".into(), "b".into()));
        assert_eq!(s.steps[1].when, When::After(Duration::from_secs(60)));
        assert_eq!(
            s.steps[1].expect[0],
            Expect {
                property: Property::Across("a".into(), "b".into()),
                hold: Hold::Within(Duration::from_secs(120))
            }
        );
        assert_eq!(s.steps[1].expect[1].property, Property::Closest(0.9));
        assert!(s.needs_network_faults());
        assert!(!s.needs_delay());
        assert!(
            matches!(&s.steps[2].action, Action::Shape { shape, .. } if shape.loss == Some(0.05))
        );
    }

    /// Each mistake names the file, the step and the field.
    #[test]
    fn mistakes_name_the_file_the_step_and_the_field() {
        let cases: [(&str, &str); 13] = [
            (
                "peers = 5\n[groups]\na = { except = [\"c\"] }\n[[step]]\naction = \"heal\"\n",
                "group `a`, field `except`: unknown group \"c\" (declared: a)",
            ),
            (
                "peers = 5\n[groups]\na = { except = [\"all\"] }\n[[step]]\naction = \"heal\"\n",
                "group `a`, field `except`: \"all\": name another group",
            ),
            (
                "peers = 5\n[groups]\na = { count = 2, except = [\"b\"] }\nb = { count = 1 }\n[[step]]\naction = \"heal\"\n",
                "group `a`: give exactly one of `count`, `share`, `peers` or `except`",
            ),
            (
                "peers = 5\n[[step]]\naction = \"explode\"\ngroup = \"all\"\n",
                "step 1 (explode), field `action`: unknown action \"explode\"",
            ),
            (
                "peers = 5\n[[step]]\naction = \"kill\"\ngroup = \"c\"\n",
                "step 1 (kill), field `group`: unknown group \"c\" (declared: all, bootstrap)",
            ),
            (
                "peers = 5\n[[step]]\naction = \"kill\"\n",
                "step 1 (kill), field `group`: this action needs a `group`",
            ),
            (
                "peers = 5\n[[step]]\nat = \"soon\"\naction = \"heal\"\n",
                "step 1 (heal), field `at`: \"soon\"",
            ),
            (
                "peers = 5\n[groups]\na = { count = 9 }\n[[step]]\naction = \"heal\"\n",
                "group `a`, field `count`: 9 is not between 1 and the 5 peers",
            ),
            (
                "peers = 5\n[[step]]\naction = \"partition\"\ngroups = [\"all\"]\n",
                "step 1 (partition), field `groups`: needs two different groups",
            ),
            (
                "peers = 5\n[[step]]\naction = \"wait\"\nexpect = [{ property = \"tables\" }]\n",
                "step 1 (wait), expectation 1 (tables), field `within`: give exactly one",
            ),
            (
                "peers = 5\n[[step]]\naction = \"shape\"\ngroup = \"all\"\nloss = \"150%\"\n",
                "step 1 (shape), field `loss`",
            ),
            ("peers = 5\n", "no [[step]]"),
            (
                "peers = 5\nsurprise = 1\n[[step]]\naction = \"heal\"\n",
                "line 2: unknown field `surprise`",
            ),
        ];
        for (text, wanted) in cases {
            let err = parsed(text).expect_err(text).to_string();
            assert!(err.starts_with("compose/scenarios/x.toml: "), "{err}");
            assert!(err.contains(wanted), "{text}\n→ {err}\nwanted: {wanted}");
        }
    }

    #[test]
    fn an_except_group_is_every_peer_the_named_groups_leave() {
        let s = parsed(
            "peers = 100\n[groups]\na = { share = \"50%\", bootstrap = true }\n\
             b = { except = [\"a\"] }\n[[step]]\naction = \"partition\"\ngroups = [\"a\", \"b\"]\n",
        )
        .expect("valid");
        assert_eq!(s.groups["b"].peers, Peers::Except(vec!["a".into()]));
        assert!(!s.groups["b"].bootstrap);
    }

    #[test]
    fn rates_are_what_tc_reads() {
        assert!(valid_rate("1mbit"));
        assert!(valid_rate("500kbit"));
        assert!(!valid_rate("fast"));
        assert!(!valid_rate("mbit"));
        assert!(!valid_rate("10 mbit"));
    }
}
