//! Benchmark-only programs, in their own object (`gateway-bench`) so that no agent ever
//! loads them: a no-op XDP program (the floor of any XDP program's cost, and "no filter"),
//! a drop-all one (the ceiling of a drop path), and a traffic generator for throughput runs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    kernel_map,
    maps::bench::{WS_CAPACITY, WS_NEW_PORT, WsConfig, WsFlow},
};

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

/// Reads what any filter must read before it can decide (the EtherType, then the IPv4 or
/// IPv6 destination address and the transport ports) and drops the frame: the floor of a
/// drop path that looks at the packet. On a veth the frame was written on another CPU, so
/// this costs the cache misses `bench_drop_all` never takes.
#[xdp]
pub fn bench_drop_read(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH + 40 + 4 > end {
        return xdp_action::XDP_DROP;
    }
    let p = data as *const u8;
    // SAFETY: every byte read lies in [data, data + ETH + 44), checked above.
    let sum = unsafe {
        let ethertype = u16::from_be_bytes([*p.add(12), *p.add(13)]);
        let (dst, ports) = if ethertype == 0x86dd {
            (ETH + 24, ETH + 40)
        } else {
            (ETH + 16, ETH + 20)
        };
        let mut x = u32::from(ethertype);
        for k in 0..4 {
            x = x.wrapping_add(u32::from(*p.add(dst + k)));
            x = x.wrapping_add(u32::from(*p.add(ports + k)));
        }
        x
    };
    // The sum decides nothing, but its reads cannot be optimized away.
    if sum == u32::MAX {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

kernel_map! {
    /// Interface index the traffic generator redirects to (one entry, set by user space).
    static TRAFFICGEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);
}

kernel_map! {
    /// The working set's flows (`maps::bench::WsFlow`), filled by user space.
    static WS_FLOWS: Array<WsFlow> = Array::with_max_entries(WS_CAPACITY, 0);
}

kernel_map! {
    static WS_CONFIG: Array<WsConfig> = Array::with_max_entries(1, 0);
}

kernel_map! {
    static WS_COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
}

kernel_map! {
    static WS_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);
}

/// Ethernet header bytes (frames of the working set are untagged).
const ETH: usize = 14;

/// Rewrites the frame in place to the next flow of the working set (addresses, ports, and
/// the IPv4 header checksum; a UDP checksum becomes 0, "none", for IPv4; TCP checksums are
/// left as they are: nothing on the path checks them before the receiver's stack, and TCP
/// is only sent through test_run). False when the frame is not what the configuration
/// says.
#[inline(always)]
fn rewrite(ctx: &XdpContext) -> bool {
    let Some(cfg) = WS_CONFIG.get(0) else {
        return false;
    };
    let flows = cfg[0] as u64;
    if flows == 0 {
        return true;
    }
    let Some(counter) = WS_COUNTER.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; programs do not nest on one CPU.
    let i = unsafe {
        let i = *counter;
        *counter = i + 1;
        i
    };
    let index = (i % flows) as u32;
    let Some(flow) = WS_FLOWS.get(index) else {
        return false;
    };
    let pass = i / flows;
    let data = ctx.data();
    let end = ctx.data_end();
    let v6 = cfg[1] == 6;
    let (l4, need) = if v6 {
        (ETH + 40, ETH + 40 + 8)
    } else {
        (ETH + 20, ETH + 20 + 8)
    };
    if data + need > end {
        return false;
    }
    let p = data as *mut u8;
    // SAFETY: every byte written below lies in [data, data + need), checked above.
    unsafe {
        if v6 {
            for k in 0..32 {
                *p.add(ETH + 8 + k) = flow[k];
            }
        } else {
            for k in 0..4 {
                *p.add(ETH + 12 + k) = flow[12 + k];
                *p.add(ETH + 16 + k) = flow[28 + k];
            }
        }
        let mut sport = [flow[32], flow[33]];
        if cfg[2] == WS_NEW_PORT {
            let step = (pass as u32).wrapping_mul(cfg[3]) as u16;
            sport = u16::from_be_bytes(sport).wrapping_add(step).to_be_bytes();
        }
        *p.add(l4) = sport[0];
        *p.add(l4 + 1) = sport[1];
        *p.add(l4 + 2) = flow[34];
        *p.add(l4 + 3) = flow[35];
        if !v6 {
            // UDP: no checksum (IPv4 allows it).
            if *p.add(ETH + 9) == 17 {
                *p.add(l4 + 6) = 0;
                *p.add(l4 + 7) = 0;
            }
            *p.add(ETH + 10) = 0;
            *p.add(ETH + 11) = 0;
            let mut sum: u32 = 0;
            for k in 0..10 {
                sum += (u32::from(*p.add(ETH + 2 * k)) << 8) | u32::from(*p.add(ETH + 2 * k + 1));
            }
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            let c = !(sum as u16);
            *p.add(ETH + 10) = (c >> 8) as u8;
            *p.add(ETH + 11) = c as u8;
        }
    }
    true
}

/// Working set for BPF_PROG_TEST_RUN: rewrites the frame to the next flow of `WS_FLOWS`
/// and tail-calls the program in `WS_TARGET` (the gateway's, or the no-op for the
/// baseline), so that one `repeat` loop walks many flows.
#[xdp]
pub fn bench_working_set(ctx: XdpContext) -> u32 {
    if !rewrite(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a tail call; on failure control comes back here.
    unsafe { WS_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Traffic generator: run with BPF_PROG_TEST_RUN in live-frames mode, it transmits each
/// frame out of the interface in `TGEN_TARGET` (as xdp-trafficgen does), fast enough not to
/// be the bottleneck of the receiving side. With a working set configured (`WS_CONFIG`)
/// every frame is first rewritten to the set's next flow.
#[xdp]
pub fn bench_trafficgen(ctx: XdpContext) -> u32 {
    let Some(ifindex) = TRAFFICGEN_TARGET.get(0).copied() else {
        return xdp_action::XDP_ABORTED;
    };
    if !rewrite(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
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
