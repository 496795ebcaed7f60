//! Map and program names and sizes, one definition for kernel and user space. Map names
//! live in the [`map_name!`](crate::map_name) table: the constants below expand it, and the
//! kernel names its map statics with it (an attribute value may be a macro call that
//! expands to a literal); `gateway-user`'s test `object_map_names` also reads the built
//! object and checks that its maps are exactly these.
//!
//! A name carries a layout version (`_V2`): when the layout of a pinned map changes, its
//! name changes too, so an agent never re-adopts a map it would misread. Names fit the
//! kernel's 15-character limit (`BPF_OBJ_NAME_LEN`), so `bpftool` shows them whole.

/// The one table of map names: `map_name!(CONFIG)` is `"CONFIG_V3"`. The constants below
/// and the kernel's map statics (`#[unsafe(export_name = map_name!(…))]`) both take their
/// names from here.
#[macro_export]
macro_rules! map_name {
    (PARSE_STATS) => {
        "PARSE_STATS_V2"
    };
    (VERDICT_STATS) => {
        "VERDICTS_V4"
    };
    (FLOWS_TCP) => {
        "FLOWS_TCP_V2"
    };
    (FLOWS_OTHER) => {
        "FLOWS_OTHER_V2"
    };
    (FRAGS) => {
        "FRAGS_V2"
    };
    (FLOW_STATS) => {
        "FLOW_STATS_V2"
    };
    (ACTIVE) => {
        "ACTIVE_V1"
    };
    (SRC) => {
        "SRC_V1"
    };
    (DST) => {
        "DST_V1"
    };
    (DST_HOSTS) => {
        "DST_HOSTS_V1"
    };
    (RULES) => {
        "RULES_V1"
    };
    (RULES_EXACT) => {
        "RULES_EXACT_V1"
    };
    (SOURCES) => {
        "SOURCES_V2"
    };
    (EVENTS_FLOW) => {
        "EVENTS_FLOW_V2"
    };
    (EVENTS_ALERT) => {
        "EVENTS_ALERT_V2"
    };
    (EVENTS_LOST) => {
        "EVENTS_LOST_V2"
    };
    (BUDGETS) => {
        "BUDGETS_V2"
    };
    (CONFIG) => {
        "CONFIG_V3"
    };
    (HANDSHAKES) => {
        "HANDSHAKES_V1"
    };
    (NAMES) => {
        "NAMES_V1"
    };
    (NAT) => {
        "NAT_V1"
    };
    (SCRATCH) => {
        "SCRATCH_V2"
    };
    (DENY_CACHE) => {
        "DENY_CACHE_V1"
    };
    (SRC_FILTER) => {
        "SRC_FILTER_V1"
    };
    (TRAFFICGEN_TARGET) => {
        "TGEN_TARGET"
    };
    (TC_PASS_RUNS) => {
        "TC_PASS_RUNS"
    };
    (WS_FLOWS) => {
        "WS_FLOWS"
    };
    (WS_CONFIG) => {
        "WS_CONFIG"
    };
    (WS_COUNTER) => {
        "WS_COUNTER"
    };
    (WS_TARGET) => {
        "WS_TARGET"
    };
}

/// Declares a kernel map static under its name from [`map_name!`](crate::map_name), keyed by
/// the static's own identifier: `kernel_map! { pub static CONFIG: Array<…> = …; }`. It
/// emits what aya-ebpf's `#[map]` emits (the static in the `maps` section, exported under
/// the map's name); that attribute only takes a literal name, which would be a second copy.
#[macro_export]
macro_rules! kernel_map {
    ($(#[$attr:meta])* $vis:vis static $id:ident : $ty:ty = $init:expr;) => {
        $(#[$attr])*
        #[unsafe(link_section = "maps")]
        #[unsafe(export_name = $crate::map_name!($id))]
        $vis static $id: $ty = $init;
    };
}

/// Per-CPU array of `u64`, indexed by [`crate::ParseOutcome`].
pub const PARSE_STATS: &str = map_name!(PARSE_STATS);
/// Per-CPU array of `u64`, indexed by [`crate::Reason`].
pub const VERDICT_STATS: &str = map_name!(VERDICT_STATS);
/// LRU hash [`crate::FlowKey`] -> [`crate::FlowState`] of TCP flows.
pub const FLOWS_TCP: &str = map_name!(FLOWS_TCP);
/// LRU hash [`crate::FlowKey`] -> [`crate::FlowState`] of UDP, ICMP and other flows.
pub const FLOWS_OTHER: &str = map_name!(FLOWS_OTHER);
/// LRU hash [`crate::FragKey`] -> [`crate::FragState`]: fragmented datagrams in flight.
pub const FRAGS: &str = map_name!(FRAGS);
/// Per-CPU array of `u64`, indexed by [`FlowCounter`].
pub const FLOW_STATS: &str = map_name!(FLOW_STATS);
/// Array with one `u32`: the active policy generation (its low bit is the key slot).
pub const ACTIVE: &str = map_name!(ACTIVE);
/// Hash [`crate::policy::SrcKey`] -> [`crate::policy::SrcValue`].
pub const SRC: &str = map_name!(SRC);
/// LPM trie of [`crate::policy::DstKey`] -> [`crate::policy::AtomValue`]: the prefixes
/// shorter than a host (full hosts are in [`DST_HOSTS`]).
pub const DST: &str = map_name!(DST);
/// Hash [`crate::policy::DstKey`] -> [`crate::policy::AtomValue`]: the `DST` entries that
/// are a full host (/32, /128), looked up before the trie.
pub const DST_HOSTS: &str = map_name!(DST_HOSTS);
/// LPM trie of [`crate::policy::RuleKey`] -> [`crate::policy::RuleValue`]: port blocks
/// wider than one port, and rules without ports (full ports are in [`RULES_EXACT`]).
pub const RULES: &str = map_name!(RULES);
/// Hash [`crate::policy::RuleKey`] -> [`crate::policy::RuleValue`]: the `RULES` entries
/// of a single port, looked up before the trie.
pub const RULES_EXACT: &str = map_name!(RULES_EXACT);
/// LRU hash source prefix ([`crate::Addr`], /32 or /64) -> [`crate::event::SourceState`].
pub const SOURCES: &str = map_name!(SOURCES);
/// Ring buffer of [`crate::Event`]: flow_start, flow_end, audit of principals.
pub const EVENTS_FLOW: &str = map_name!(EVENTS_FLOW);
/// Ring buffer of [`crate::Event`]: deny, scan_alert, audit of unknown sources.
pub const EVENTS_ALERT: &str = map_name!(EVENTS_ALERT);
/// Per-CPU array of `u64`, indexed by [`Ring`]: events lost to a full ring buffer.
pub const EVENTS_LOST: &str = map_name!(EVENTS_LOST);
/// Per-CPU array of [`crate::event::Budget`], indexed by [`crate::EventKind`].
pub const BUDGETS: &str = map_name!(BUDGETS);
/// Array with one [`crate::DataplaneConfig`].
pub const CONFIG: &str = map_name!(CONFIG);
/// LRU hash source prefix ([`crate::Addr`], /32 or /64) -> [`HandshakeBucket`]: the
/// shield's token bucket of WireGuard handshake initiations.
pub const HANDSHAKES: &str = map_name!(HANDSHAKES);
/// Hash [`crate::names::NameKey`] -> [`crate::names::NameValue`]: on a connector, which real
/// address and atom a device's proxy address for a DNS resource stands for (written by
/// the agent; docs/dataplane.md, "Names on the connector").
pub const NAMES: &str = map_name!(NAMES);
/// LRU hash [`crate::FlowKey`] -> [`crate::names::NatValue`]: per translated flow, its
/// original tuple (device -> proxy) -> the real address, and its reply tuple as it
/// arrives (real -> device) -> the proxy address.
pub const NAT: &str = map_name!(NAT);

/// Maps that carry state across agent restarts: pinned in the agent's pin folder and
/// re-adopted by the next agent (a restart keeps policy, flows and counters).
pub const PERSISTENT: &[&str] = &PINNED;
const PINNED: [&str; 21] = [
    CONFIG,
    ACTIVE,
    SRC,
    DST,
    DST_HOSTS,
    RULES,
    RULES_EXACT,
    FLOWS_TCP,
    FLOWS_OTHER,
    FRAGS,
    FLOW_STATS,
    SOURCES,
    VERDICT_STATS,
    PARSE_STATS,
    EVENTS_FLOW,
    EVENTS_ALERT,
    EVENTS_LOST,
    BUDGETS,
    HANDSHAKES,
    NAMES,
    NAT,
];

/// Per-CPU scratch space of the programs (not pinned: it holds nothing between packets).
pub const SCRATCH: &str = map_name!(SCRATCH);

/// Per-CPU array of [`crate::DenyCacheEntry`], [`DENY_CACHE_SLOTS`] slots: recent
/// denials of sources over their event limit (not pinned: a cache, checked against the
/// active generation).
pub const DENY_CACHE: &str = map_name!(DENY_CACHE);
/// Slots of [`DENY_CACHE`] per CPU (a power of two).
pub const DENY_CACHE_SLOTS: u32 = 1024;

/// Array of `u64`, [`SRC_FILTER_WORDS`] entries: the source filter, a one-hash Bloom filter
/// of every address the source map held since the object was loaded and of every open
/// flow's source at load ([`src_filter_bit`]). Words 0 and 1 are its hash key (word 0 is
/// zero until user space has built it: the programs skip the filter then), the bits follow.
/// Not pinned: each load builds its own.
pub const SRC_FILTER: &str = map_name!(SRC_FILTER);
/// Bits of [`SRC_FILTER`] (2^21: 256 KiB, in a core's L2 cache; a policy of 110k sources
/// sets about 5 % of them).
pub const SRC_FILTER_BITS_LOG2: u32 = 21;
/// Entries of [`SRC_FILTER`]: the two key words, then the bits.
pub const SRC_FILTER_WORDS: u32 = 2 + (1 << SRC_FILTER_BITS_LOG2) / 64;

/// The bit of [`SRC_FILTER`] an address sets (an index into the bits, which start at word
/// 2): a multiply-shift hash keyed by the filter's two key words (`mul` odd), so a sender
/// cannot aim its addresses at set bits.
#[inline(always)]
pub fn src_filter_bit(key: u64, mul: u64, addr: &crate::Addr) -> u32 {
    let a = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let b = u64::from_ne_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let mut x = (a ^ key).wrapping_mul(mul);
    x = (x ^ b).wrapping_mul(mul);
    (x >> (64 - SRC_FILTER_BITS_LOG2)) as u32
}

/// Every map of the production object: the persistent ones, [`SCRATCH`], [`DENY_CACHE`]
/// and [`SRC_FILTER`].
pub const ALL: &[&str] = &{
    let mut all = [SCRATCH; PINNED.len() + 3];
    all[PINNED.len() + 1] = DENY_CACHE;
    all[PINNED.len() + 2] = SRC_FILTER;
    let mut i = 0;
    while i < PINNED.len() {
        all[i] = PINNED[i];
        i += 1;
    }
    all
};

/// The rings of [`EVENTS_LOST`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    Flow = 0,
    Alert = 1,
}

impl Ring {
    pub const ALL: [Ring; 2] = [Self::Flow, Self::Alert];

    /// Stable name, as in the `ring` label of `gateway_events_lost_total`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Alert => "alert",
        }
    }
}

/// Indices of [`FLOW_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowCounter {
    /// Flows inserted into the TCP / other table.
    InsertTcp = 0,
    InsertOther = 1,
    /// Inserts the kernel refused (an LRU insert fails only when every CPU's free list and
    /// the map are exhausted under contention).
    InsertFailed = 2,
    /// Flows the kernel removed (revoked).
    Removed = 3,
    /// Fragment datagrams recorded.
    InsertFrag = 4,
}

pub const FLOW_COUNTERS: u32 = 5;

impl FlowCounter {
    pub const ALL: [FlowCounter; FLOW_COUNTERS as usize] = [
        Self::InsertTcp,
        Self::InsertOther,
        Self::InsertFailed,
        Self::Removed,
        Self::InsertFrag,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::InsertTcp => "insert_tcp",
            Self::InsertOther => "insert_other",
            Self::InsertFailed => "insert_failed",
            Self::Removed => "removed",
            Self::InsertFrag => "insert_frag",
        }
    }
}

pub const FLOWS_TCP_CAPACITY: u32 = 262_144;
pub const FLOWS_OTHER_CAPACITY: u32 = 131_072;
pub const FRAGS_CAPACITY: u32 = 16_384;
/// Both generations' principals.
pub const SRC_CAPACITY: u32 = 262_144;
pub const DST_CAPACITY: u32 = 131_072;
/// As large as the trie it relieves: a policy may consist of hosts only.
pub const DST_HOSTS_CAPACITY: u32 = DST_CAPACITY;
pub const RULES_CAPACITY: u32 = 1_048_576;
/// As large as the trie it relieves: a policy may consist of single ports only.
pub const RULES_EXACT_CAPACITY: u32 = 2 * RULES_CAPACITY;
pub const SOURCES_CAPACITY: u32 = 65_536;
pub const HANDSHAKES_CAPACITY: u32 = 65_536;
/// (device, proxy address) pairs of DNS resources on a connector.
pub const NAMES_CAPACITY: u32 = 65_536;
/// Two entries per translated flow: 65,536 open flows to DNS resources at once (an LRU
/// map is allocated whole, on every host; the least recently used translation goes first,
/// and its flow then takes the name's current address).
pub const NAT_CAPACITY: u32 = 131_072;
/// Bytes of each event ring buffer (a power of two, multiple of the page size).
pub const EVENTS_FLOW_BYTES: u32 = 1 << 22;
pub const EVENTS_ALERT_BYTES: u32 = 1 << 20;

/// XDP program (ingress on connector and device hosts).
pub const PROG_XDP: &str = "gateway_xdp";
/// TC program for tcx egress (connector client-facing links, device uplinks).
pub const PROG_TC_EGRESS: &str = "gateway_tc_egress";

/// tcx ingress and egress of the tunnel interface (packets start at the IP header).
pub const PROG_TUN_INGRESS: &str = "gateway_tun_ingress";
pub const PROG_TUN_EGRESS: &str = "gateway_tun_egress";
/// The shield on the physical links of a host with the tunnel on: XDP ingress, tcx egress.
pub const PROG_SHIELD_XDP: &str = "gateway_shield_xdp";
pub const PROG_SHIELD_TC_EGRESS: &str = "gateway_shield_tc";

/// The token bucket of one source prefix in [`HANDSHAKES`]: `credit_ns` is time-valued
/// credit (one initiation costs `1e9 / handshakes_per_source` ns; the bucket holds at most
/// `handshake_burst` of them), refilled by the time elapsed since `last_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HandshakeBucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `repr(C)`, no padding.
    unsafe impl aya::Pod for super::HandshakeBucket {}
}

/// The benchmark object's programs (a separate object the agent never loads).
pub mod bench {
    /// XDP program that passes every frame (benchmark floor, "no filter").
    pub const PROG_NOOP: &str = "bench_noop";
    /// XDP program that drops every frame (benchmark ceiling of the drop path).
    pub const PROG_DROP_ALL: &str = "bench_drop_all";
    /// XDP program that reads the EtherType, the destination address and the ports, then
    /// drops: the ceiling of a drop path that looks at the packet.
    pub const PROG_DROP_READ: &str = "bench_drop_read";
    /// XDP traffic generator (BPF_PROG_TEST_RUN live frames, redirects out of an interface).
    pub const PROG_TRAFFICGEN: &str = "bench_trafficgen";
    /// Array with one `u32`: the interface index the traffic generator transmits on.
    pub const TRAFFICGEN_TARGET: &str = map_name!(TRAFFICGEN_TARGET);
    /// tc program that counts packets and returns TC_ACT_OK (TCX_PASS): ordering tests.
    pub const PROG_TC_PASS: &str = "bench_tc_pass";
    /// Per-CPU array with one `u64`: runs of `PROG_TC_PASS`.
    pub const TC_PASS_RUNS: &str = map_name!(TC_PASS_RUNS);
    /// XDP program that rewrites the frame to the next flow of the working set
    /// (`WS_FLOWS`) and tail-calls the program in `WS_TARGET` slot 0.
    pub const PROG_WORKING_SET: &str = "bench_working_set";
    /// Array of [`WsFlow`]: the flows of the working set, in the order they are sent.
    pub const WS_FLOWS: &str = map_name!(WS_FLOWS);
    /// Array with one [`WsConfig`].
    pub const WS_CONFIG: &str = map_name!(WS_CONFIG);
    /// Per-CPU array with one `u64`: frames rewritten so far (the flow index is this
    /// counter modulo the working set).
    pub const WS_COUNTER: &str = map_name!(WS_COUNTER);
    /// Program array with one slot: the program `PROG_WORKING_SET` runs after rewriting.
    pub const WS_TARGET: &str = map_name!(WS_TARGET);
    /// Flows a working set may hold.
    pub const WS_CAPACITY: u32 = 1 << 20;

    /// One flow of a working set, in wire order: source and destination (16 bytes each;
    /// an IPv4 address in the last 4), source and destination port (big-endian).
    pub type WsFlow = [u8; 36];

    /// How the working-set programs rewrite frames: `[flows, family, mode, stride]`.
    /// `flows` 0 leaves frames untouched; `family` 4 or 6 (the frame's; untagged Ethernet,
    /// IPv4 without options or IPv6 without extension headers, then TCP or UDP); `mode`
    /// [`WS_SAME_PORT`] sends each flow with its own source port every time (after the
    /// first pass every packet belongs to an open flow), [`WS_NEW_PORT`] adds
    /// `pass * stride` to the source port on pass `pass` over the set (every packet opens a
    /// new flow; `stride` is the number of source ports the set itself uses).
    pub type WsConfig = [u32; 4];
    pub const WS_SAME_PORT: u32 = 0;
    pub const WS_NEW_PORT: u32 = 1;
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_kernel_limit() {
        for name in super::ALL
            .iter()
            .chain([super::bench::TRAFFICGEN_TARGET].iter())
        {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
        }
    }
}
