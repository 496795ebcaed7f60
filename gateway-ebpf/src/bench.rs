//! Benchmark-only programs, in their own object (`gateway-bench`) so that no agent ever
//! loads them: a no-op XDP program (the floor of any XDP program's cost, and "no filter"),
//! a drop-all one (the ceiling of a drop path), and a traffic generator for throughput runs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use gateway_common::kernel_map;

/// Passes every frame untouched.
#[xdp]
pub fn bench_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame.
#[xdp]
pub fn bench_drop_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

kernel_map! {
    /// Interface index the traffic generator redirects to (one entry, set by user space).
    static TRAFFICGEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);
}

/// Traffic generator: run with BPF_PROG_TEST_RUN in live-frames mode, it transmits each
/// frame out of the interface in `TGEN_TARGET` (as xdp-trafficgen does), fast enough not to
/// be the bottleneck of the receiving side.
#[xdp]
pub fn bench_trafficgen(_ctx: XdpContext) -> u32 {
    let Some(ifindex) = TRAFFICGEN_TARGET.get(0).copied() else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the helper has no memory preconditions; it returns an XDP action.
    unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
}

kernel_map! {
    /// Runs of `bench_tc_pass`, per CPU.
    static TC_PASS_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
}

/// A tc program that counts and passes every packet with `TC_ACT_OK` (in tcx: TCX_PASS,
/// which ends the chain). Tests put it beside the gateway's program to check the order.
#[classifier]
pub fn bench_tc_pass(_ctx: TcContext) -> i32 {
    if let Some(n) = TC_PASS_RUNS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *n += 1 };
    }
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
