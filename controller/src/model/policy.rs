//! The policy aggregate's types: who changes the policy and how, the plan of a change
//! (objects, hosts, entries), and the answers of explain and test access.

use policy_compiler::{MapDelta, Verdict};

use crate::objects::Kind;

/// Who does a change, and how.
#[derive(Clone, Debug)]
pub struct ChangeOpts {
    pub dry_run: bool,
    pub expected_revision: Option<u64>,
    /// Who: `key:NAME`, `user:NAME` (the authenticated principal), `local:...`.
    pub actor: String,
    /// Apply a whole policy even when its own `[[test]]` blocks fail (recorded as such
    /// in the audit trail); otherwise such a policy is refused.
    pub skip_tests: bool,
}

impl Default for ChangeOpts {
    fn default() -> Self {
        ChangeOpts {
            dry_run: false,
            expected_revision: None,
            actor: "local".into(),
            skip_tests: false,
        }
    }
}

/// How an object changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

/// One object's change, with its table before and after (empty when absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectChange {
    pub kind: Kind,
    pub name: String,
    pub change: ChangeKind,
    pub before: String,
    pub after: String,
    /// For a changed object: its fields that changed.
    pub fields: Vec<FieldChange>,
}

/// One field of a changed object: TOML values before and after (empty when absent); a
/// list of plain values changes by `element`s added (`after`) and removed (`before`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    pub field: String,
    pub before: String,
    pub after: String,
    pub element: bool,
}

/// Entries of one map of a view added, changed and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounts {
    pub added: u32,
    pub changed: u32,
    pub removed: u32,
}

impl EntryCounts {
    /// The counts of one map of a view diff.
    pub fn of<K, V>(m: &MapDelta<K, V>) -> EntryCounts {
        EntryCounts {
            added: m.added.len() as u32,
            changed: m.changed.len() as u32,
            removed: m.removed.len() as u32,
        }
    }

    /// The sum of several counts.
    pub fn sum(all: &[EntryCounts]) -> EntryCounts {
        all.iter().fold(EntryCounts::default(), |a, c| EntryCounts {
            added: a.added + c.added,
            changed: a.changed + c.changed,
            removed: a.removed + c.removed,
        })
    }
}

/// How a host's compiled view changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostChange {
    pub host: String,
    pub base_generation: u64,
    pub new_generation: u64,
    pub src: EntryCounts,
    pub dst: EntryCounts,
    pub rules: EntryCounts,
    pub total: EntryCounts,
    pub metadata_changed: bool,
    /// Agents of the host connected when the plan was made.
    pub connected_agents: u32,
    /// WireGuard peers added, changed and removed (not in `total`: no map entries).
    pub peers: EntryCounts,
}

/// What a change does (or did): objects, hosts, and the policy's warnings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub base_revision: u64,
    pub new_revision: u64,
    pub objects: Vec<ObjectChange>,
    pub hosts: Vec<HostChange>,
    pub warnings: Vec<String>,
}

/// One rule explain looked at, and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consideration {
    pub rule: u32,
    pub grant: String,
    pub action: String,
    pub resource: String,
    /// `matched`, `expired`, `address_mismatch`, `port_mismatch`, `not_for_principal`.
    pub outcome: String,
    pub detail: String,
}

/// The decision for one packet, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Verdict,
    /// The reason, in snake case (`no_grant`).
    pub reason: String,
    pub rule_id: u32,
    pub rule: String,
    pub principal: Option<String>,
    pub resources: Vec<String>,
    pub considered: Vec<Consideration>,
    /// The explanation as text.
    pub text: String,
    /// The instant decided at (unix seconds).
    pub at: i64,
}

/// An access assertion, in the `[[test]]` syntax.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assertion {
    /// Empty: `assertion-N`.
    pub name: String,
    pub from: String,
    pub to: String,
    pub expect: String,
    pub at: Option<i64>,
}

/// The outcome of one assertion or policy test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    pub name: String,
    pub passed: bool,
    pub expected: Verdict,
    pub got: Verdict,
    pub reason: String,
    pub rule_id: u32,
    pub message: String,
}

/// The outcomes of a test run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestReport {
    pub results: Vec<TestOutcome>,
    pub passed: u32,
    pub failed: u32,
}
