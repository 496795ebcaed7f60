//! Every map of the production object. Names are literals here (the attribute wants a
//! literal) and constants in `gateway_common::maps`; a user-side test checks the built
//! object against those constants.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use gateway_common::{
    Addr, DataplaneConfig, FlowKey, FlowState, FragKey, FragState,
    event::{Budget, EVENT_KINDS, SourceState},
    maps::{
        DST_CAPACITY, EVENTS_ALERT_BYTES, EVENTS_FLOW_BYTES, FLOW_COUNTERS, FLOWS_OTHER_CAPACITY,
        FLOWS_TCP_CAPACITY, FRAGS_CAPACITY, RULES_CAPACITY, SOURCES_CAPACITY, SRC_CAPACITY,
    },
    parse::PARSE_OUTCOMES,
    policy::{AtomValue, DstKey, RuleKey, RuleValue, SrcKey, SrcValue},
    verdict::REASONS,
};

use crate::Scratch;

#[map(name = "CONFIG_V2")]
pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map(name = "PARSE_STATS_V2")]
pub static PARSE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PARSE_OUTCOMES, 0);

#[map(name = "VERDICTS_V2")]
pub static VERDICT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASONS, 0);

/// TCP flows apart from the rest: a burst of UDP or ICMP flows cannot evict idle TCP
/// sessions.
#[map(name = "FLOWS_TCP_V2")]
pub static FLOWS_TCP: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(FLOWS_TCP_CAPACITY, 0);

#[map(name = "FLOWS_OTHER_V2")]
pub static FLOWS_OTHER: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(FLOWS_OTHER_CAPACITY, 0);

#[map(name = "FRAGS_V2")]
pub static FRAGS: LruHashMap<FragKey, FragState> = LruHashMap::with_max_entries(FRAGS_CAPACITY, 0);

#[map(name = "FLOW_STATS_V2")]
pub static FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FLOW_COUNTERS, 0);

#[map(name = "ACTIVE_V1")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "SRC_V1")]
pub static SRC: HashMap<SrcKey, SrcValue> = HashMap::with_max_entries(SRC_CAPACITY, 0);

#[map(name = "DST_V1")]
pub static DST: LpmTrie<DstKey, AtomValue> = LpmTrie::with_max_entries(DST_CAPACITY, 0);

#[map(name = "RULES_V1")]
pub static RULES: LpmTrie<RuleKey, RuleValue> = LpmTrie::with_max_entries(RULES_CAPACITY, 0);

#[map(name = "SOURCES_V2")]
pub static SOURCES: LruHashMap<Addr, SourceState> =
    LruHashMap::with_max_entries(SOURCES_CAPACITY, 0);

#[map(name = "EVENTS_FLOW_V2")]
pub static EVENTS_FLOW: RingBuf = RingBuf::with_byte_size(EVENTS_FLOW_BYTES, 0);

#[map(name = "EVENTS_ALERT_V2")]
pub static EVENTS_ALERT: RingBuf = RingBuf::with_byte_size(EVENTS_ALERT_BYTES, 0);

/// Events that found their ring full, per CPU, indexed by `gateway_common::maps::Ring`.
#[map(name = "EVENTS_LOST_V2")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[map(name = "BUDGETS_V2")]
pub static BUDGETS: PerCpuArray<Budget> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

#[map(name = "SCRATCH_V2")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
