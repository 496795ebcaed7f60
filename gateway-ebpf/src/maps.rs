//! Every map of the production object, each named from `gateway_common::map_name!` (the
//! one table of map names, which user space reads through `gateway_common::maps`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use gateway_common::{
    Addr, DataplaneConfig, DenyCacheEntry, FlowKey, FlowState, FragKey, FragState,
    event::{Budget, EVENT_KINDS, SourceState},
    kernel_map,
    maps::{
        DENY_CACHE_SLOTS, DST_CAPACITY, DST_HOSTS_CAPACITY, EVENTS_ALERT_BYTES, EVENTS_FLOW_BYTES,
        FLOW_COUNTERS, FLOWS_OTHER_CAPACITY, FLOWS_TCP_CAPACITY, FRAGS_CAPACITY,
        HANDSHAKES_CAPACITY, HandshakeBucket, NAMES_CAPACITY, NAT_CAPACITY, RULES_CAPACITY,
        RULES_EXACT_CAPACITY, SOURCES_CAPACITY, SRC_CAPACITY, SRC_FILTER_WORDS,
    },
    names::{NameKey, NameValue, NatValue},
    parse::PARSE_OUTCOMES,
    policy::{AtomValue, DstKey, RuleKey, RuleValue, SrcKey, SrcValue},
    verdict::REASONS,
};

use crate::Scratch;

kernel_map! {
    pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);
}

kernel_map! {
    pub static PARSE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PARSE_OUTCOMES, 0);
}

kernel_map! {
    pub static VERDICT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASONS, 0);
}

kernel_map! {
    /// TCP flows apart from the rest: a burst of UDP or ICMP flows cannot evict idle TCP
    /// sessions.
    pub static FLOWS_TCP: LruHashMap<FlowKey, FlowState> =
        LruHashMap::with_max_entries(FLOWS_TCP_CAPACITY, 0);
}

kernel_map! {
    pub static FLOWS_OTHER: LruHashMap<FlowKey, FlowState> =
        LruHashMap::with_max_entries(FLOWS_OTHER_CAPACITY, 0);
}

kernel_map! {
    pub static FRAGS: LruHashMap<FragKey, FragState> = LruHashMap::with_max_entries(FRAGS_CAPACITY, 0);
}

kernel_map! {
    pub static FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FLOW_COUNTERS, 0);
}

kernel_map! {
    pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
}

kernel_map! {
    pub static SRC: HashMap<SrcKey, SrcValue> = HashMap::with_max_entries(SRC_CAPACITY, 0);
}

kernel_map! {
    pub static DST: LpmTrie<DstKey, AtomValue> = LpmTrie::with_max_entries(DST_CAPACITY, 0);
}

kernel_map! {
    /// The full hosts of `DST` (its key's data, all 136 bits significant), looked up first.
    /// Allocated per entry (`BPF_F_NO_PREALLOC`), like the trie: capacity costs no memory
    /// until a policy uses it, and a replaced value is freed only after an RCU grace period.
    pub static DST_HOSTS: HashMap<DstKey, AtomValue> =
        HashMap::with_max_entries(DST_HOSTS_CAPACITY, BPF_F_NO_PREALLOC);
}

kernel_map! {
    pub static RULES: LpmTrie<RuleKey, RuleValue> = LpmTrie::with_max_entries(RULES_CAPACITY, 0);
}

kernel_map! {
    /// The single-port entries of `RULES` (all 96 bits significant), looked up first.
    /// Allocated per entry, as `DST_HOSTS`.
    pub static RULES_EXACT: HashMap<RuleKey, RuleValue> =
        HashMap::with_max_entries(RULES_EXACT_CAPACITY, BPF_F_NO_PREALLOC);
}

kernel_map! {
    pub static SOURCES: LruHashMap<Addr, SourceState> =
        LruHashMap::with_max_entries(SOURCES_CAPACITY, 0);
}

kernel_map! {
    pub static EVENTS_FLOW: RingBuf = RingBuf::with_byte_size(EVENTS_FLOW_BYTES, 0);
}

kernel_map! {
    pub static EVENTS_ALERT: RingBuf = RingBuf::with_byte_size(EVENTS_ALERT_BYTES, 0);
}

kernel_map! {
    /// Events that found their ring full, per CPU, indexed by `gateway_common::maps::Ring`.
    pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
}

kernel_map! {
    pub static BUDGETS: PerCpuArray<Budget> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);
}

kernel_map! {
    /// The shield's WireGuard handshake buckets, per source prefix.
    pub static HANDSHAKES: LruHashMap<Addr, HandshakeBucket> =
        LruHashMap::with_max_entries(HANDSHAKES_CAPACITY, 0);
}

kernel_map! {
    /// Connector tunnel only: (device, proxy address) -> real address and atoms of a DNS
    /// resource, written by the agent. Allocated per entry, as `DST_HOSTS`: a replaced
    /// value is freed only after this run.
    pub static NAMES: HashMap<NameKey, NameValue> =
        HashMap::with_max_entries(NAMES_CAPACITY, BPF_F_NO_PREALLOC);
}

kernel_map! {
    /// Connector tunnel only: the address each translated flow's packets get, per
    /// direction's tuple (see `gateway_common::maps::NAT`).
    pub static NAT: LruHashMap<FlowKey, NatValue> = LruHashMap::with_max_entries(NAT_CAPACITY, 0);
}

kernel_map! {
    pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
}

kernel_map! {
    /// Recent denials of sources over their event limit, per CPU (see `events`).
    pub static DENY_CACHE: PerCpuArray<DenyCacheEntry> =
        PerCpuArray::with_max_entries(DENY_CACHE_SLOTS, 0);
}

kernel_map! {
    /// Which sources may be principals (`gateway_common::maps::SRC_FILTER`): written by
    /// user space only, read here.
    pub static SRC_FILTER: Array<u64> = Array::with_max_entries(SRC_FILTER_WORDS, 0);
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
