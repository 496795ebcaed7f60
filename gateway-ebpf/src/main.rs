//! The gateway's kernel programs: XDP ingress (connector and client hosts) and TC egress
//! (client hosts), both enforcing the compiled policy with the same decision code.
//!
//! Every program has the same shape: a thin entry point that calls [`process`] and maps
//! the [`Reason`] it returns to an action through `Reason::passes`, the one place where a
//! reason becomes pass or drop. All packet access goes through the bounds-checked helpers
//! in [`parse`]; a frame the parser cannot read is never allowed.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    Addr, Event, EventKind, FlowKey, FlowState, ParseOutcome, Reason,
    event::{DENY_EVENTS_PER_WINDOW, DENY_WINDOW_NS, SCAN_THRESHOLD, SCAN_WINDOW_NS, SourceState},
    flow::proto,
    maps::{
        DST_CAPACITY, EVENTS_BYTES, FLOWS_CAPACITY, RULES_CAPACITY, SOURCES_CAPACITY, SRC_CAPACITY,
    },
    parse::PARSE_OUTCOMES,
    policy::{
        AtomValue, DST_KEY_FIXED_BITS, DstKey, RULE_DEFAULT_DENY, RULE_KEY_FIXED_BITS, RuleKey,
        RuleValue, SrcKey, SrcValue, Verdict,
    },
    verdict::REASONS,
};
use parse::{Frame, Parsed, TCP_FIN, TCP_RST};

#[map(name = "PARSE_STATS_V1")]
static PARSE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PARSE_OUTCOMES, 0);

#[map(name = "VERDICT_STATS_V1")]
static VERDICT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASONS, 0);

#[map(name = "FLOWS_V1")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(FLOWS_CAPACITY, 0);

#[map(name = "ACTIVE_V1")]
static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "SRC_V1")]
static SRC: HashMap<SrcKey, SrcValue> = HashMap::with_max_entries(SRC_CAPACITY, 0);

#[map(name = "DST_V1")]
static DST: LpmTrie<DstKey, AtomValue> = LpmTrie::with_max_entries(DST_CAPACITY, 0);

#[map(name = "RULES_V1")]
static RULES: LpmTrie<RuleKey, RuleValue> = LpmTrie::with_max_entries(RULES_CAPACITY, 0);

#[map(name = "SOURCES_V1")]
static SOURCES: LruHashMap<Addr, SourceState> = LruHashMap::with_max_entries(SOURCES_CAPACITY, 0);

/// Per-CPU scratch space for values too big for the 512-byte stack: the parsed packet,
/// the keys derived from it, and a flow state to insert.
struct Scratch {
    parsed: Parsed,
    reversed: FlowKey,
    inner: FlowKey,
    state: FlowState,
}

#[map(name = "SCRATCH_V1")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Events that found the ring buffer full (per CPU), for the agent's loss metric.
#[map(name = "EVENTS_LOST_V1")]
static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "EVENTS_V1")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Bytes of headers TC makes linear before parsing (Ethernet, two VLAN tags, IPv6 with
/// extension headers, transport header, quoted headers of ICMP errors).
const TC_PULL_BYTES: u32 = 256;

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    if process(&ctx, len, ifindex).passes() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Passes every frame untouched: the floor of benchmarks (the cost of running any XDP
/// program), and "no filter" in throughput comparisons.
#[xdp]
pub fn gateway_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: the ceiling of what an XDP drop path can do on an interface.
#[xdp]
pub fn gateway_drop_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Interface index the traffic generator redirects to (one entry, set by user space).
#[map(name = "TRAFFICGEN_TARGET_V1")]
static TRAFFICGEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// Traffic generator for throughput benchmarks: run with BPF_PROG_TEST_RUN in live-frames
/// mode, it transmits each frame out of the interface in `TRAFFICGEN_TARGET` (as
/// xdp-trafficgen does), fast enough not to be the bottleneck of the receiving side.
#[xdp]
pub fn gateway_trafficgen(_ctx: XdpContext) -> u32 {
    let Some(ifindex) = TRAFFICGEN_TARGET.get(0).copied() else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the helper has no memory preconditions; it returns an XDP action.
    unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
}

#[classifier]
pub fn gateway_tc_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // Headers may sit in paged data; make them linear so direct packet access reaches them.
    // If that fails, the parser finds the frame truncated and the packet is not allowed.
    let _ = ctx.pull_data(if len < TC_PULL_BYTES {
        len
    } else {
        TC_PULL_BYTES
    });
    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if process(&ctx, len as u64, ifindex).passes() {
        TC_ACT_OK as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

/// Decides one packet and counts the reason.
#[inline(always)]
fn process<C: Frame>(ctx: &C, len: u64, ifindex: u32) -> Reason {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a one-entry per-CPU array); never allow on the impossible.
        bump(&VERDICT_STATS, Reason::DeniedMalformed as u32);
        return Reason::DeniedMalformed;
    };
    // SAFETY: this CPU's scratch slot; programs do not nest on one CPU for XDP/TC.
    let scratch = unsafe { &mut *scratch };
    let outcome = parse::parse(ctx, &mut scratch.parsed);
    bump(&PARSE_STATS, outcome as u32);
    let reason = if outcome.has_flow() {
        enforce(ctx, scratch, len, ifindex)
    } else if outcome == ParseOutcome::NotIp {
        Reason::NotIp
    } else {
        Reason::DeniedMalformed
    };
    bump(&VERDICT_STATS, reason as u32);
    reason
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The active policy generation, read once per packet: every lookup of this packet uses
/// the key slot `generation & 1`, so it sees one policy, never a mix of two.
#[inline(always)]
fn active_generation() -> u32 {
    ACTIVE.get(0).copied().unwrap_or(0)
}

/// A policy decision for a new flow.
struct Decision {
    reason: Reason,
    rule: u32,
    principal: u32,
    atom: u32,
    /// The decision must be taken again from this instant (rule expiry).
    valid_until_ns: u64,
}

impl Decision {
    const fn simple(reason: Reason) -> Self {
        Decision {
            reason,
            rule: RULE_DEFAULT_DENY,
            principal: 0,
            atom: 0,
            valid_until_ns: u64::MAX,
        }
    }
}

#[inline(always)]
fn protected(slot: u8, addr: &Addr) -> Option<&'static AtomValue> {
    DST.get(Key::new(
        DST_KEY_FIXED_BITS + 128,
        DstKey {
            generation: slot,
            addr: *addr,
        },
    ))
}

/// Three lookups, each independent of the policy's size: source -> class, destination
/// -> atom, (class, atom, protocol, port) -> verdict. Precedence (deny over allow, audit,
/// expiry) was resolved by the compiler into the entries; a miss means the atom's default.
///
/// A separate BPF function (not inlined) with an out parameter, so its keys do not add to
/// the caller's stack frame.
#[inline(never)]
fn decide_into(slot: u8, key: &FlowKey, now: u64, out: &mut Decision) {
    *out = decide(slot, key, now);
}

#[inline(always)]
fn decide(slot: u8, key: &FlowKey, now: u64) -> Decision {
    let Some(atom) = protected(slot, &key.dst) else {
        // Not toward protected space. From it, only replies (handled before) may pass.
        return if protected(slot, &key.src).is_some() {
            Decision::simple(Reason::DeniedUnsolicited)
        } else {
            Decision::simple(Reason::Unprotected)
        };
    };
    let src = SrcKey {
        generation: slot,
        _pad: [0; 3],
        addr: key.src,
    };
    // SAFETY: values are plain data written whole by the agent; a concurrent update can at
    // worst give this packet the neighbouring generation's value of the same slot.
    let Some(src) = (unsafe { SRC.get(&src) }) else {
        let audit = Verdict::from_u8(atom.default_verdict) == Verdict::Audit;
        return Decision {
            reason: if audit {
                Reason::Audit
            } else {
                Reason::DeniedUnknownSource
            },
            rule: if audit { atom.default_rule } else { 0 },
            principal: 0,
            atom: atom.atom,
            valid_until_ns: u64::MAX,
        };
    };
    let port = match key.proto {
        proto::TCP | proto::UDP => key.dst_port,
        _ => [0, 0],
    };
    let rule_key = Key::new(
        RULE_KEY_FIXED_BITS + 16,
        RuleKey {
            generation: slot,
            proto: key.proto,
            class: src.class.to_be_bytes(),
            atom: atom.atom.to_be_bytes(),
            port,
        },
    );
    let (verdict, rule, valid_until_ns) = match RULES.get(rule_key) {
        Some(v) => {
            let (verdict, rule) = v.at(now);
            let until = if now < v.valid_until_ns {
                v.valid_until_ns
            } else {
                u64::MAX
            };
            (verdict, rule, until)
        }
        None => (
            Verdict::from_u8(atom.default_verdict),
            atom.default_rule,
            u64::MAX,
        ),
    };
    let reason = match verdict {
        Verdict::Allow => Reason::Allowed,
        Verdict::Audit => Reason::Audit,
        Verdict::Deny if rule != RULE_DEFAULT_DENY => Reason::DeniedByRule,
        Verdict::Deny => Reason::DeniedNoGrant,
    };
    Decision {
        reason,
        rule,
        principal: src.principal,
        atom: atom.atom,
        valid_until_ns,
    }
}

/// True when `key` names a flow allowed under `generation` and not expired.
#[inline(always)]
fn allowed_flow(key: &FlowKey, generation: u32, now: u64) -> bool {
    // SAFETY: read-only look at plain data.
    match unsafe { FLOWS.get(key) } {
        Some(f) => f.generation == generation && now < f.valid_until_ns,
        None => false,
    }
}

#[inline(always)]
fn enforce<C: Frame>(ctx: &C, scratch: &mut Scratch, len: u64, ifindex: u32) -> Reason {
    let parsed = &scratch.parsed;
    let generation = active_generation();
    let slot = (generation & 1) as u8;
    let key = &parsed.key;
    let fragment = key.flags & FlowKey::FLAG_FRAGMENT != 0;
    let ends = parsed.tcp_flags & (TCP_FIN | TCP_RST) != 0;

    // 1. Fast path: one lookup for a flow (or fragmented datagram) already allowed under
    //    the active generation. The clock (a quarter of this path's cost) is read only for
    //    flows whose rule expires and when a flow ends; user space tells idle flows by
    //    their counters, not by a per-packet timestamp.
    let cached = FLOWS.get_ptr_mut(key);
    if let Some(flow) = cached {
        // SAFETY: pointer from a successful lookup, valid for this run (RCU).
        let f = unsafe { &mut *flow };
        if f.generation == generation
            && (f.valid_until_ns == u64::MAX || now_ns() < f.valid_until_ns)
        {
            f.packets = f.packets.wrapping_add(1);
            f.bytes = f.bytes.wrapping_add(len);
            if ends {
                let now = now_ns();
                f.last_seen_ns = now;
                flow_end(key, f, ifindex, now);
            }
            return if fragment {
                Reason::FragmentAllowed
            } else {
                Reason::Established
            };
        }
        // Stale: taken under another generation or expired. Decided again below.
    }
    let now = now_ns();

    if fragment {
        // A later fragment whose datagram was not allowed (or not seen): it carries no
        // ports, so it cannot be decided on its own.
        let protected_space =
            protected(slot, &key.dst).is_some() || protected(slot, &key.src).is_some();
        return if protected_space {
            Reason::DeniedFragment
        } else {
            Reason::Unprotected
        };
    }

    // 2. Replies of an allowed flow. A reply of a flow decided under another generation
    //    makes the flow be decided again: a revoked grant stops replies too.
    scratch.reversed = key.reversed();
    let reversed = &scratch.reversed;
    if let Some(flow) = FLOWS.get_ptr_mut(reversed) {
        // SAFETY: as above.
        let f = unsafe { &mut *flow };
        if f.generation != generation || now >= f.valid_until_ns {
            let mut d = Decision::simple(Reason::DeniedMalformed);
            decide_into(slot, reversed, now, &mut d);
            if !d.reason.passes() || d.reason == Reason::Unprotected {
                let _ = FLOWS.remove(reversed);
                return Reason::DeniedEstablished;
            }
            f.generation = generation;
            f.valid_until_ns = d.valid_until_ns;
            f.rule = d.rule;
            f.reason = d.reason as u8;
        }
        f.reply_packets = f.reply_packets.wrapping_add(1);
        f.reply_bytes = f.reply_bytes.wrapping_add(len);
        f.last_seen_ns = now;
        if ends {
            flow_end(reversed, f, ifindex, now);
        }
        if scratch.parsed.first_fragment {
            let until = f.valid_until_ns;
            follow_fragments(scratch, generation, until, now);
        }
        return Reason::Reply;
    }

    // 3. ICMP errors about an allowed flow, in either direction.
    if parse::is_icmp_error(key)
        && parse::quoted_key(ctx, parsed.l4, key.family, &mut scratch.inner)
    {
        if allowed_flow(&scratch.inner, generation, now) {
            return Reason::IcmpErrorRelated;
        }
        scratch.reversed = scratch.inner.reversed();
        if allowed_flow(&scratch.reversed, generation, now) {
            return Reason::IcmpErrorRelated;
        }
    }

    // 4. A new flow (or one to decide again): the policy.
    let mut d = Decision::simple(Reason::DeniedMalformed);
    decide_into(slot, key, now, &mut d);
    match d.reason {
        Reason::Allowed | Reason::Audit => {
            match cached {
                Some(flow) => {
                    // SAFETY: as above; the flow keeps its counters.
                    let f = unsafe { &mut *flow };
                    f.packets = f.packets.wrapping_add(1);
                    f.bytes = f.bytes.wrapping_add(len);
                    f.last_seen_ns = now;
                    f.valid_until_ns = d.valid_until_ns;
                    f.generation = generation;
                    f.rule = d.rule;
                    f.reason = d.reason as u8;
                }
                None => {
                    let state = &mut scratch.state;
                    *state = FlowState {
                        packets: 1,
                        bytes: len,
                        first_seen_ns: now,
                        last_seen_ns: now,
                        valid_until_ns: d.valid_until_ns,
                        generation,
                        rule: d.rule,
                        principal: d.principal,
                        atom: d.atom,
                        reason: d.reason as u8,
                        ..FlowState::default()
                    };
                    // A full table evicts its least recently used flow.
                    let _ = FLOWS.insert(key, &*state, 0);
                    let kind = if d.reason == Reason::Audit {
                        EventKind::Audit
                    } else {
                        EventKind::FlowStart
                    };
                    emit_flow(kind, key, state, ifindex, now);
                }
            }
            if scratch.parsed.first_fragment {
                follow_fragments(scratch, generation, d.valid_until_ns, now);
            }
        }
        Reason::Unprotected => {}
        _ => {
            if cached.is_some() {
                // An open flow whose grant was revoked: forget it.
                let _ = FLOWS.remove(key);
            }
            on_deny(key, &d, generation, ifindex, now);
        }
    }
    d.reason
}

/// Lets the later fragments of an allowed first fragment through.
#[inline(always)]
fn follow_fragments(scratch: &mut Scratch, generation: u32, valid_until_ns: u64, now: u64) {
    scratch.inner = scratch.parsed.frag_key();
    let state = &mut scratch.state;
    *state = FlowState {
        first_seen_ns: now,
        last_seen_ns: now,
        valid_until_ns,
        generation,
        reason: Reason::FragmentAllowed as u8,
        ..FlowState::default()
    };
    let _ = FLOWS.insert(&scratch.inner, &scratch.state, 0);
}

#[inline(always)]
fn flow_end(key: &FlowKey, f: &mut FlowState, ifindex: u32, now: u64) {
    if f.flags & FlowState::FLAG_ENDED == 0 {
        f.flags |= FlowState::FLAG_ENDED;
        emit_flow(EventKind::FlowEnd, key, f, ifindex, now);
    }
}

/// What an event says beyond the flow key; written straight into the ring buffer.
struct EventMeta {
    kind: EventKind,
    reason: Reason,
    rule: u32,
    principal: u32,
    atom: u32,
    generation: u32,
    count: u32,
}

/// Sends one event. The record is written in place in the ring buffer (no copy of it on
/// the 512-byte stack); every byte is written, padding included.
#[inline(always)]
fn emit(meta: &EventMeta, key: &FlowKey, f: Option<&FlowState>, ifindex: u32, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        // Ring buffer full: counted, so the loss shows in the agent's metrics.
        bump(&EVENTS_LOST, 0);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record of size_of::<Event>().
    unsafe {
        (*ev).kind = meta.kind as u8;
        (*ev).reason = meta.reason as u8;
        (*ev)._pad = [0; 2];
        (*ev).rule = meta.rule;
        (*ev).principal = meta.principal;
        (*ev).atom = meta.atom;
        (*ev).ifindex = ifindex;
        (*ev).generation = meta.generation;
        (*ev).key = *key;
        (*ev).count = meta.count;
        (*ev)._pad2 = 0;
        (*ev).ts_ns = now;
        match f {
            Some(f) => {
                (*ev).packets = f.packets;
                (*ev).bytes = f.bytes;
                (*ev).reply_packets = f.reply_packets;
                (*ev).reply_bytes = f.reply_bytes;
                (*ev).first_seen_ns = f.first_seen_ns;
            }
            None => {
                (*ev).packets = 1;
                (*ev).bytes = 0;
                (*ev).reply_packets = 0;
                (*ev).reply_bytes = 0;
                (*ev).first_seen_ns = now;
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn emit_flow(kind: EventKind, key: &FlowKey, f: &FlowState, ifindex: u32, now: u64) {
    let meta = EventMeta {
        kind,
        reason: Reason::from_u32(f.reason as u32),
        rule: f.rule,
        principal: f.principal,
        atom: f.atom,
        generation: f.generation,
        count: 0,
    };
    emit(&meta, key, Some(f), ifindex, now);
}

/// Deny events, rate-limited per source, and port-scan detection: distinct denied
/// destination ports per source within a window, one alert per window.
#[inline(always)]
fn on_deny(key: &FlowKey, d: &Decision, generation: u32, ifindex: u32, now: u64) {
    let state = match SOURCES.get_ptr_mut(&key.src) {
        Some(s) => s,
        None => {
            let _ = SOURCES.insert(&key.src, &SourceState::default(), 0);
            match SOURCES.get_ptr_mut(&key.src) {
                Some(s) => s,
                None => return,
            }
        }
    };
    // SAFETY: pointer from a successful lookup, valid for this run (RCU).
    let s = unsafe { &mut *state };
    let mut meta = EventMeta {
        kind: EventKind::Deny,
        reason: d.reason,
        rule: d.rule,
        principal: d.principal,
        atom: d.atom,
        generation,
        count: 0,
    };
    if now.wrapping_sub(s.deny_window_start_ns) >= DENY_WINDOW_NS {
        s.deny_window_start_ns = now;
        s.deny_events = 0;
    }
    if s.deny_events < DENY_EVENTS_PER_WINDOW {
        s.deny_events += 1;
        meta.count = s.deny_suppressed;
        s.deny_suppressed = 0;
        emit(&meta, key, None, ifindex, now);
    } else {
        s.deny_suppressed = s.deny_suppressed.wrapping_add(1);
    }

    if key.proto != proto::TCP && key.proto != proto::UDP {
        return;
    }
    if now.wrapping_sub(s.scan_window_start_ns) >= SCAN_WINDOW_NS {
        s.scan_window_start_ns = now;
        s.scan_ports = [0; 4];
        s.scan_distinct = 0;
        s.scan_alerted = 0;
    }
    // A 256-bit set of hashed ports: distinct ports are counted without a list.
    let h = (key.dst_port() as u32).wrapping_mul(2_654_435_761) >> 24;
    let bit = 1u64 << (h & 63);
    let Some(word) = s.scan_ports.get_mut((h >> 6) as usize & 3) else {
        return;
    };
    if *word & bit == 0 {
        *word |= bit;
        s.scan_distinct += 1;
        if s.scan_distinct >= SCAN_THRESHOLD && s.scan_alerted == 0 {
            s.scan_alerted = 1;
            meta.kind = EventKind::ScanAlert;
            meta.count = s.scan_distinct;
            emit(&meta, key, None, ifindex, now);
        }
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
