//! Map names and sizes, the single place both sides take them from.
//!
//! A name carries a layout version (`_v1`): when the layout of a pinned map changes, its
//! name changes too, so an agent never re-adopts a map it would misread.

/// Per-CPU array of `u64`, indexed by [`crate::ParseOutcome`].
pub const PARSE_STATS: &str = "PARSE_STATS_V1";
/// LRU hash [`crate::FlowKey`] -> [`crate::FlowStats`].
pub const FLOWS: &str = "FLOWS_V1";

/// Capacity of the flow table.
pub const FLOWS_CAPACITY: u32 = 65_536;

/// Name of the XDP ingress program in the object file.
pub const PROG_XDP_INGRESS: &str = "gateway_xdp";
