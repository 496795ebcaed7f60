//! Map and program names and sizes, the single place both sides take them from.
//!
//! A name carries a layout version (`_V1`): when the layout of a pinned map changes, its
//! name changes too, so an agent never re-adopts a map it would misread.

/// Per-CPU array of `u64`, indexed by [`crate::ParseOutcome`].
pub const PARSE_STATS: &str = "PARSE_STATS_V1";
/// Per-CPU array of `u64`, indexed by [`crate::Reason`].
pub const VERDICT_STATS: &str = "VERDICT_STATS_V1";
/// LRU hash [`crate::FlowKey`] -> [`crate::FlowState`].
pub const FLOWS: &str = "FLOWS_V1";
/// Array with one `u32`: the active policy generation (its low bit is the key slot).
pub const ACTIVE: &str = "ACTIVE_V1";
/// Hash [`crate::policy::SrcKey`] -> [`crate::policy::SrcValue`].
pub const SRC: &str = "SRC_V1";
/// LPM trie of [`crate::policy::DstKey`] -> [`crate::policy::AtomValue`].
pub const DST: &str = "DST_V1";
/// LPM trie of [`crate::policy::RuleKey`] -> [`crate::policy::RuleValue`].
pub const RULES: &str = "RULES_V1";
/// LRU hash source address -> [`crate::event::SourceState`].
pub const SOURCES: &str = "SOURCES_V1";
/// Ring buffer of [`crate::Event`].
pub const EVENTS: &str = "EVENTS_V1";
/// Per-CPU array with one `u64`: events lost to a full ring buffer.
pub const EVENTS_LOST: &str = "EVENTS_LOST_V1";

/// Maps that carry state across agent restarts: pinned in the agent's pin folder and
/// re-adopted by the next agent (a restart keeps policy, flows and counters).
pub const PERSISTENT: &[&str] = &[
    ACTIVE,
    SRC,
    DST,
    RULES,
    FLOWS,
    SOURCES,
    VERDICT_STATS,
    PARSE_STATS,
    EVENTS,
    EVENTS_LOST,
];

pub const FLOWS_CAPACITY: u32 = 262_144;
/// Both generations' principals.
pub const SRC_CAPACITY: u32 = 262_144;
pub const DST_CAPACITY: u32 = 131_072;
pub const RULES_CAPACITY: u32 = 1_048_576;
pub const SOURCES_CAPACITY: u32 = 65_536;
/// Bytes of the event ring buffer (a power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 22;

/// The XDP program (ingress on connector and client hosts).
pub const PROG_XDP_INGRESS: &str = "gateway_xdp";
/// The TC program (egress on client hosts, attached with tcx).
pub const PROG_TC_EGRESS: &str = "gateway_tc_egress";
/// XDP program that passes every frame (benchmark floor, "no filter").
pub const PROG_XDP_NOOP: &str = "gateway_noop";
/// XDP program that drops every frame (benchmark ceiling of the drop path).
pub const PROG_XDP_DROP_ALL: &str = "gateway_drop_all";
/// XDP traffic generator (BPF_PROG_TEST_RUN live frames, redirects out of an interface).
pub const PROG_XDP_TRAFFICGEN: &str = "gateway_trafficgen";
/// Array with one `u32`: the interface index the traffic generator transmits on.
pub const TRAFFICGEN_TARGET: &str = "TRAFFICGEN_TARGET_V1";
