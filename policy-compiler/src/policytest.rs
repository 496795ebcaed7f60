//! Running the `[[test]]` blocks of a policy.

use gateway_common::policy::Verdict;

use crate::eval::Decision;
use crate::model::Policy;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    /// Position of the `[[test]]` header.
    pub line: u32,
    pub column: u32,
    pub expected: Verdict,
    pub decision: Decision,
    pub at: i64,
    pub passed: bool,
}

impl TestResult {
    /// `file:line:col: test 'name': expected allow, got deny (NoGrant, rule 0)`.
    pub fn render(&self, policy: &Policy) -> String {
        let status = if self.passed { "ok" } else { "FAILED" };
        let rule = self
            .decision
            .rule
            .and_then(|r| policy.rule(r.0))
            .map_or_else(|| "default".to_string(), |m| m.to_string());
        format!(
            "{}:{}:{}: test `{}`: {status}: expected {:?}, got {:?} ({:?}, {rule})",
            policy.file,
            self.line,
            self.column,
            self.name,
            self.expected,
            self.decision.verdict,
            self.decision.reason
        )
    }
}

/// Runs every `[[test]]` block; blocks without `at` run at the policy's `parsed_at`.
pub fn run_tests(policy: &Policy) -> Vec<TestResult> {
    policy
        .tests
        .iter()
        .map(|t| {
            let at = t.at.unwrap_or(policy.parsed_at);
            let decision = t.target().evaluate(policy, t.src, at);
            TestResult {
                name: t.name.clone(),
                line: t.line,
                column: t.column,
                expected: t.expect,
                decision,
                at,
                passed: decision.verdict == t.expect,
            }
        })
        .collect()
}
