//! Explain and test access: decisions of the published policy for given packets, with
//! the reasons (never waiting for a change in progress).

use policy_compiler::{self as pc, Policy};

use super::parse_policy;
use crate::model::{Assertion, Consideration, Explanation, TestOutcome, TestReport};
use crate::objects::Kind;
use crate::state::State;
use crate::{Error, now_unix, shown};

impl State {
    /// Parses the current policy with extra `[[test]]` blocks appended.
    fn with_tests(
        &self,
        blocks: &[(String, String, String, String, Option<i64>)],
        now: i64,
    ) -> Result<Policy, Error> {
        for (name, from, to, expect, _) in blocks {
            refuse_bad_fields(&[
                ("name", name),
                ("from", from),
                ("to", to),
                ("expect", expect),
            ])?;
        }
        // The published snapshot: an Explain never waits for a change in progress.
        let mut text = {
            let snap = self.snap();
            Self::refuse_broken(&snap.broken)?;
            snap.text.clone()
        };
        for (name, from, to, expect, at) in blocks {
            let q = |s: &str| toml::Value::String(s.to_string()).to_string();
            text.push_str(&format!(
                "\n[[test]]\nname = {}\nfrom = {}\nto = {}\nexpect = {}\n",
                q(name),
                q(from),
                q(to),
                q(expect)
            ));
            if let Some(at) = at {
                text.push_str(&format!("at = {}\n", pc::format_rfc3339(*at)));
            }
        }
        parse_policy(&text, "request", now)
            .map(|p| p.policy)
            .map_err(|d| {
                Error::InvalidArgument(
                    d.iter()
                        .filter(|d| d.is_error())
                        .map(|d| match &d.help {
                            Some(h) => format!("{} ({h})", d.message),
                            None => d.message.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })
    }

    /// Every principal of the published policy as a `from` of the `[[test]]` grammar:
    /// device names, then each service account's keys (`account/key`).
    pub fn principal_names(&self) -> Vec<(String, Kind)> {
        let snap = self.snap();
        let p = &snap.policy;
        p.devices
            .iter()
            .map(|d| (d.name.clone(), Kind::Device))
            .chain(p.service_accounts.iter().flat_map(|sa| {
                sa.keys
                    .iter()
                    .map(move |k| (format!("{}/{}", sa.name, k.name), Kind::ServiceAccount))
            }))
            .collect()
    }

    /// Decides one packet (`from`/`to` in the `[[test]]` syntax) at `at` (default now).
    ///
    /// Decided on the published snapshot's parsed policy (no parse per call; an Explain
    /// never waits for a change in progress), with the `[[test]]` grammar of `from` and
    /// `to` (`policy_compiler::target`).
    pub fn explain(&self, from: &str, to: &str, at: Option<i64>) -> Result<Explanation, Error> {
        let now = now_unix();
        let at = at.unwrap_or(now);
        refuse_bad_fields(&[("from", from), ("to", to)])?;
        let snap = self.snap();
        Self::refuse_broken(&snap.broken)?;
        let p = &*snap.policy;
        let target = pc::target::resolve_target(p, to).map_err(|e| {
            let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
            Error::InvalidArgument(format!(
                "`to`: {e}{hint}; write \"addr:port/tcp\", \"addr:port/udp\", \
                 \"[v6addr]:port/tcp\", \"addr/icmp\", a DNS name in place of addr, or a \
                 resource name"
            ))
        })?;
        let src = pc::target::resolve_source(p, from, target.addr).map_err(|e| {
            Error::InvalidArgument(format!(
                "`from`: {e}; write a device name, a service-account key as \
                 \"sa-name/key-name\", or an IP address"
            ))
        })?;
        let e = target.explain(p, src, at);
        let d = e.decision;
        Ok(Explanation {
            verdict: d.verdict,
            reason: snake(&format!("{:?}", d.reason)),
            rule_id: d.rule_id(),
            rule: d
                .rule
                .and_then(|r| p.rule(r.0))
                .map_or_else(|| "default deny".into(), ToString::to_string),
            principal: e.principal.clone(),
            resources: e.resources.clone(),
            considered: e
                .considered
                .iter()
                .map(|c| {
                    let (outcome, detail) = match &c.outcome {
                        pc::eval::Outcome::Matched => ("matched", String::new()),
                        pc::eval::Outcome::Expired { expires_at } => {
                            ("expired", pc::format_rfc3339(*expires_at))
                        }
                        pc::eval::Outcome::AddressMismatch => ("address_mismatch", String::new()),
                        pc::eval::Outcome::PortMismatch { allowed } => {
                            ("port_mismatch", allowed.clone())
                        }
                        pc::eval::Outcome::NotForPrincipal => ("not_for_principal", String::new()),
                    };
                    Consideration {
                        rule: c.rule,
                        grant: c.grant.clone(),
                        action: c.action.to_string(),
                        resource: c.resource.clone(),
                        outcome: outcome.into(),
                        detail,
                    }
                })
                .collect(),
            text: e.render(p),
            at,
        })
    }

    /// Runs assertions (and optionally the policy's own tests).
    pub fn test_access(
        &self,
        assertions: &[Assertion],
        include_policy_tests: bool,
    ) -> Result<TestReport, Error> {
        let now = now_unix();
        let own = self
            .snap()
            .objects
            .list
            .iter()
            .filter(|o| o.kind == Kind::Test)
            .count();
        let blocks: Vec<_> = assertions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let name = if a.name.is_empty() {
                    format!("assertion-{}", i + 1)
                } else {
                    a.name.clone()
                };
                (name, a.from.clone(), a.to.clone(), a.expect.clone(), a.at)
            })
            .collect();
        let p = self.with_tests(&blocks, now)?;
        let results: Vec<TestOutcome> = pc::run_tests(&p)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| include_policy_tests || *i >= own)
            .map(|(_, r)| TestOutcome {
                name: r.name.clone(),
                passed: r.passed,
                expected: r.expected,
                got: r.decision.verdict,
                reason: snake(&format!("{:?}", r.decision.reason)),
                rule_id: r.decision.rule_id(),
                message: r.render(&p),
            })
            .collect();
        let passed = results.iter().filter(|r| r.passed).count() as u32;
        Ok(TestReport {
            failed: results.len() as u32 - passed,
            passed,
            results,
        })
    }
}

/// Refuses a field of an Explain or an assertion that [`crate::names::problem`] finds no
/// text to look up (at most 256 characters), naming the field.
fn refuse_bad_fields(fields: &[(&str, &str)]) -> Result<(), Error> {
    for (what, v) in fields {
        if let Some(why) = crate::names::problem(v, 256) {
            return Err(Error::InvalidArgument(format!(
                "invalid `{what}` `{}`: {why}",
                shown(v)
            )));
        }
    }
    Ok(())
}

/// `NoGrant` -> `no_grant`.
fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
