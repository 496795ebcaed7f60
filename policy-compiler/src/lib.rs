//! Policy model, TOML format, validation, reference evaluator and compiler to the eBPF
//! map entries of `gateway_common::policy` — a pure library (no file or network I/O:
//! callers pass text, a file name and the time).
//!
//! ```text
//! parse(text, file, now) -> Policy (+ warnings) | Vec<Diagnostic>
//! evaluate(&policy, &packet, now) -> Decision          reference semantics (slow, obvious)
//! compile(&policy, &host, now) -> HostView             one host's entries + metadata
//! to_kernel(&view, generation, unix_to_boot_ns)        exact map keys/values
//! lookup(&entries, &packet, now_ns)                    what the XDP program does (*)
//! diff(&old, &new) · explain(..) · run_tests(..) · nft(..) · json_schema()
//! resolve_source(&policy, from, dst) · resolve_target(&policy, to)   the [[test]] from/to grammar
//! ```
//!
//! (*) Test support is behind the cargo feature `testing` (off by default; nothing that
//! ships needs it): [`kernel::lookup`] and [`kernel::KernelIndex`], the model of the data
//! plane's lookup that the compiled layout is tested against, and [`random`], seeded random
//! policies and packets for property tests, the fuzzer and the benchmarks.
//!
//! # Precedence (the semantics; [`evaluate`] implements exactly this)
//!
//! For a packet `src -> dst` (protocol, destination port) at time `now` (unix seconds):
//!
//! 1. `dst` outside every remote network's `cidrs` -> **Allow**, reason `Unprotected`
//!    (not our business; rule 0). A packet to a DNS name (the proxy address a device's
//!    resolver answered it with, [`eval::evaluate_name`]) is decided like a packet to an
//!    address, with `R` below being the resources whose name pattern is the most specific
//!    one matching the name ([`names`]); a name no resource has is `Unprotected`.
//! 2. `src` is no device's and no unexpired service-account key's address -> reason
//!    `UnknownSource`: **Audit** if some resource whose address covers `dst` is in audit
//!    mode (rule: the lowest audit-default rule id among them), else **Deny** (rule 0).
//! 3. `R` = resources whose address contains `dst` and whose protocol/port spec matches
//!    (TCP/UDP by destination port; ICMP for IPv4 and ICMPv6 for IPv6 destinations by the
//!    `icmp` flag; any other protocol matches nothing). The candidate grants are those
//!    **active** at `now` (`expires_at` is exclusive: active iff `now < expires_at`;
//!    expired grants do not exist) that name the source — the device's owner (user), or
//!    the service account, directly or through any group containing it — for a resource in
//!    `R` whose narrowing (if any) also matches.
//! 4. A matching **deny** on an enforcing resource -> **Deny** (`DeniedByRule`); else a
//!    matching deny on an audit-mode resource -> **Audit** (`AuditDenyRule`); else a
//!    matching **allow** -> **Allow** (`Granted`); else, if any resource covering `dst` by
//!    address is in audit mode -> **Audit** (`AuditNoGrant`, the lowest audit-default rule
//!    id); else **Deny** (`NoGrant`, rule 0). Within a step the lowest rule id wins.
//!
//! Narrowing: a grant naming any of `tcp`/`udp`/`icmp` covers exactly what it names
//! (unnamed protocols: nothing), intersected with each resource's own ports.
//!
//! # Rule ids
//!
//! One `u32` per (grant, resource) pair, numbered from 1 in file order of the `[[allow]]`
//! and `[[deny]]` blocks, then of the resources listed in each; after them one id per
//! audit-mode resource (its audit default) in file order. Rule 0 is the default deny.
//! [`Policy::rule`] maps an id to grant, resource and action.
//!
//! # Compiled layout
//!
//! See [`compile`]: principals with the same active, relevant grants share a class;
//! the DST trie holds every protected CIDR and every resource prefix inside the protected
//! space — with longest-prefix match, the addresses decided by a prefix are covered by
//! exactly the resources whose prefix contains it, so each prefix maps to the atom of
//! (network, covering resources); RULES holds, per (class, atom, protocol), the maximal
//! port intervals whose value differs from the atom default, as aligned power-of-two port
//! blocks. Each value holds the decision now and the decision after the first expiry that
//! changes it; [`HostView::recompile_at`] is the first second change.
//!
//! # WireGuard peers
//!
//! Devices and service-account keys may carry a `public_key`, connectors a
//! `[[connector]]` (key and endpoint). [`HostView::peers`] lists, on least knowledge, the
//! WireGuard peers of the host — who may send something its networks pass, or which
//! connectors carry the networks a device may reach; the rule is in [`peers`].
//! `recompile_at` also covers the first instant the peers change.

pub mod compile;
mod diag;
pub mod diff;
pub mod eval;
pub mod kernel;
pub mod model;
pub mod names;
pub mod nft;
pub mod parse;
pub mod peers;
pub mod policytest;
#[cfg(any(test, feature = "testing"))]
pub mod random;
pub mod schema;
pub mod target;
mod wgkey;

pub use compile::{
    AtomMeta, CompileError, DstEntry, Host, HostView, NameAtoms, PrincipalMeta, RuleEntry,
    RuleSlot, RuleVal, SrcEntry, compile, port_blocks,
};
pub use diag::{Diagnostic, Severity};
pub use diff::{Delta, DstVal, MapDelta, diff};
pub use eval::{
    Consideration, Decision, Explanation, Outcome, Packet, Reason, RuleRef, evaluate, explain,
};
pub use gateway_common::policy::Verdict;
pub use kernel::{
    DST_HOST_PREFIX_LEN, KernelEntries, LpmEntry, RULE_EXACT_PREFIX_LEN, RuleOrder, to_kernel,
};
#[cfg(any(test, feature = "testing"))]
pub use kernel::{KernelIndex, lookup};
pub use model::{
    Action, Connector, KeyError, Mode, Policy, PortSet, Principal, PrincipalKind, PrincipalRef,
    ProtoSet, RuleKind, RuleMeta, WgKey, address_like, format_rfc3339, parse_rfc3339,
};
pub use nft::nft;
pub use parse::{Parsed, parse};
pub use peers::{Peer, PeerKind};
pub use policytest::{TestResult, run_tests};
pub use schema::json_schema;
pub use target::{
    Source, SourceError, Target, TargetError, parse_target, resolve_source, resolve_target,
};
