//! The gateway's kernel programs.
//!
//! Every program has the same shape: a thin entry point that calls `try_*` and maps an
//! error to a deliberate action, with all packet access going through the bounds-checked
//! helpers in [`parse`].
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_boot_ns,
    macros::{map, xdp},
    maps::{LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{
    FlowKey, FlowStats, ParseOutcome, maps::FLOWS_CAPACITY, parse::PARSE_OUTCOMES,
};

/// Per-CPU count of every parse outcome, indexed by `ParseOutcome`.
#[map(name = "PARSE_STATS_V1")]
static PARSE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PARSE_OUTCOMES, 0);

/// Flows seen, with counters.
#[map(name = "FLOWS_V1")]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(FLOWS_CAPACITY, 0);

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let outcome = match parse::parse(&ctx) {
        Ok(parsed) => {
            record_flow(&parsed.key, (ctx.data_end() - ctx.data()) as u64);
            parsed.outcome
        }
        Err(outcome) => outcome,
    };
    count(outcome);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(outcome: ParseOutcome) {
    if let Some(counter) = PARSE_STATS.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn record_flow(key: &FlowKey, bytes: u64) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful lookup and stays valid for this run
        // of the program (RCU). The update is not atomic (the BPF target has no 64-bit
        // fetch-add in core): a flow's packets normally land on one CPU (RSS), and a lost
        // increment under a rare race only makes statistics approximate.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            (*stats).last_seen_ns = now;
        }
    } else {
        let stats = FlowStats {
            packets: 1,
            bytes,
            first_seen_ns: now,
            last_seen_ns: now,
        };
        // A full LRU evicts its oldest flow; a failed insert only loses statistics.
        let _ = FLOWS.insert(key, &stats, 0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
