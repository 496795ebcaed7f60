//! The gateway's kernel programs, enforcing the compiled policy with one decision path: XDP
//! ingress and tcx egress on physical links, tcx ingress and egress on the tunnel interface
//! (packets start at the IP header there), and the shield that replaces the physical links'
//! programs on a host with the tunnel on ([`shield`]). The contract they implement is docs/dataplane.md; each step
//! below names the rule it implements.
//!
//! Every program has the same shape: a thin entry point that calls [`process`] and maps
//! the [`Reason`] it returns to an action through `Reason::passes`, the one place where a
//! reason becomes pass or drop. All packet access goes through the bounds-checked helpers
//! in [`parse`]; a frame the parser cannot read is never allowed.
//!
//! Modules: [`parse`] (frames to keys), [`maps`] (every map), [`decide`] (the policy
//! lookups), [`events`] (ring buffers, budgets, scan detection); flows and fragments are
//! here, with the order of the steps.
#![no_std]
#![no_main]
// Atomic adds on map memory: the BPF target's `core` has no atomic types with fetch
// operations; the intrinsic lowers to BPF's atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod decide;
mod events;
mod maps;
mod names;
mod parse;
mod shield;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action},
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, xdp},
    maps::LruHashMap,
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    DataplaneConfig, Direction, EventKind, FlowKey, FlowState, FragKey, FragState, ParseOutcome,
    Reason, Role, event::FlowEndCause, flow::proto, maps::FlowCounter,
};

use decide::{Decision, audit_address, decide_into, is_protected, maybe_principal};
use events::{EventMeta, cacheable, emit_flow, on_limited, remember_denial, repeated_denial};
use maps::{
    ACTIVE, CONFIG, FLOW_STATS, FLOWS_OTHER, FLOWS_TCP, FRAGS, PARSE_STATS, SCRATCH, VERDICT_STATS,
    bump,
};
use names::{NameScratch, Rewrite, decide_name, forget_nat, nat_insert, nat_real, nat_reply};
use parse::{Frame, Parsed, Start, TCP_FIN, TCP_RST};

/// Per-CPU scratch space for values too big for the 512-byte stack: the parsed packet,
/// the keys derived from it, and values to insert.
pub struct Scratch {
    parsed: Parsed,
    reversed: FlowKey,
    inner: FlowKey,
    state: FlowState,
    frag_key: FragKey,
    frag_state: FragState,
    names: NameScratch,
}

/// Bytes of headers TC makes linear before parsing (Ethernet, two VLAN tags, IPv6 with
/// extension headers, transport header, quoted headers of ICMP errors).
const TC_PULL_BYTES: u32 = 256;

/// Where a program runs; with the host's role it gives the direction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Ingress,
    Egress,
}

/// What a program enforces: the policy (physical links without a tunnel, and the tunnel
/// interface), or the shield (physical links of a host with the tunnel on).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Policy,
    Shield,
}

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    xdp_entry(&ctx, Mode::Policy)
}

/// The shield at XDP ingress of a physical link (docs/dataplane.md, "Shield").
#[xdp]
pub fn gateway_shield_xdp(ctx: XdpContext) -> u32 {
    xdp_entry(&ctx, Mode::Shield)
}

/// tcx egress. The gateway attaches first in the chain and returns `TCX_NEXT` when it has
/// no objection, so programs after it still run; a drop is final.
#[classifier]
pub fn gateway_tc_egress(ctx: TcContext) -> i32 {
    tc_entry(&ctx, Hook::Egress, Start::Ethernet, Mode::Policy)
}

/// The shield at tcx egress of a physical link.
#[classifier]
pub fn gateway_shield_tc(ctx: TcContext) -> i32 {
    tc_entry(&ctx, Hook::Egress, Start::Ethernet, Mode::Shield)
}

/// tcx ingress of the tunnel interface: decrypted packets, from the IP header on
/// (docs/dataplane.md, "Tunnel interface").
#[classifier]
pub fn gateway_tun_ingress(ctx: TcContext) -> i32 {
    tc_entry(&ctx, Hook::Ingress, l3_start(&ctx), Mode::Policy)
}

/// tcx egress of the tunnel interface: packets before encryption, from the IP header on.
#[classifier]
pub fn gateway_tun_egress(ctx: TcContext) -> i32 {
    tc_entry(&ctx, Hook::Egress, l3_start(&ctx), Mode::Policy)
}

#[inline(always)]
fn xdp_entry(ctx: &XdpContext, mode: Mode) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    if process(ctx, len, ifindex, Hook::Ingress, Start::Ethernet, mode).passes() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// A packet on an L3 device starts at its IP header; `skb->protocol` (network byte order)
/// says which. A VLAN tag has no place there: a writer that claims 802.1Q gets its tag
/// taken off by the kernel before the hook (and `skb->protocol` set to what followed it);
/// such a packet is malformed (protocol 0).
#[inline(always)]
fn l3_start(ctx: &TcContext) -> Start {
    // SAFETY: `skb` is the context pointer the kernel passed to this program.
    let (raw, vlan) = unsafe { ((*ctx.skb.skb).protocol, (*ctx.skb.skb).vlan_present) };
    Start::L3 {
        protocol: if vlan != 0 {
            0
        } else {
            u16::from_be(raw as u16)
        },
    }
}

#[inline(always)]
fn tc_entry(ctx: &TcContext, hook: Hook, start: Start, mode: Mode) -> i32 {
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
    if process(ctx, len as u64, ifindex, hook, start, mode).passes() {
        TCX_NEXT
    } else {
        TC_ACT_SHOT as i32
    }
}

/// docs/dataplane.md, "Hooks and directions".
#[inline(always)]
fn direction(role: Role, hook: Hook) -> Direction {
    match (role, hook) {
        (Role::Connector, Hook::Ingress) | (Role::Device, Hook::Egress) => Direction::Outbound,
        (Role::Connector, Hook::Egress) | (Role::Device, Hook::Ingress) => Direction::Inbound,
    }
}

/// Decides one packet and counts the reason.
#[inline(always)]
fn process<C: Frame + Rewrite + aya_ebpf::EbpfContext>(
    ctx: &C,
    len: u64,
    ifindex: u32,
    hook: Hook,
    start: Start,
    mode: Mode,
) -> Reason {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a one-entry per-CPU array); never allow on the impossible.
        bump(&VERDICT_STATS, Reason::DeniedMalformed as u32);
        return Reason::DeniedMalformed;
    };
    // SAFETY: this CPU's scratch slot; programs do not nest on one CPU for XDP/TC.
    let scratch = unsafe { &mut *scratch };
    let outcome = parse::parse(ctx, start, &mut scratch.parsed);
    bump(&PARSE_STATS, outcome as u32);
    let reason = if outcome == ParseOutcome::NotIp {
        Reason::NotIp
    } else {
        match CONFIG.get(0) {
            Some(cfg) => match Role::from_u8(cfg.role) {
                Some(role) => {
                    let dir = direction(role, hook);
                    let generation = ACTIVE.get(0).copied().unwrap_or(0);
                    let cx = Cx {
                        cfg,
                        len,
                        ifindex,
                        dir,
                        generation,
                        slot: (generation & 1) as u8,
                        // Names are translated on a connector's tunnel interface only.
                        names: role == Role::Connector && matches!(start, Start::L3 { .. }),
                    };
                    if !outcome.has_flow() {
                        refused(&cx, scratch, outcome)
                    } else if mode == Mode::Shield {
                        shield::shield(ctx, &cx, scratch, hook == Hook::Ingress)
                    } else if parse::is_neighbor_discovery(&scratch.parsed) {
                        Reason::NeighborDiscovery
                    } else if scratch.parsed.later_fragment {
                        later_fragment(&cx, scratch)
                    } else if dir == Direction::Outbound {
                        outbound(ctx, &cx, scratch)
                    } else {
                        inbound(ctx, &cx, scratch)
                    }
                }
                None => Reason::DeniedUnconfigured,
            },
            None => Reason::DeniedUnconfigured,
        }
    };
    // Through the tunnel, protected space and nothing else (docs/dataplane.md, "Tunnel
    // interface"): what would pass as outside it on a physical link is dropped here.
    let reason = if reason == Reason::Unprotected && matches!(start, Start::L3 { .. }) {
        Reason::DeniedOutsideProtected
    } else {
        reason
    };
    bump(&VERDICT_STATS, reason as u32);
    diagnose(ctx, scratch, reason);
    reason
}

/// Diagnostics (`[dataplane] diagnostics = true`): every drop, through aya-log, read and
/// printed by the agent. Off by default: one array read and a branch per dropped packet.
#[inline(always)]
fn diagnose<C: Frame + aya_ebpf::EbpfContext>(ctx: &C, scratch: &Scratch, reason: Reason) {
    if reason.passes() {
        return;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    if cfg.diagnostics == 0 {
        return;
    }
    let key = &scratch.parsed.key;
    aya_log_ebpf::warn!(
        ctx,
        "drop {}: {:i} -> {:i} proto {} ports {} {}",
        reason.name(),
        key.src,
        key.dst,
        key.proto,
        key.src_port(),
        key.dst_port()
    );
}

/// What every step needs to know about the packet beyond its headers.
struct Cx<'a> {
    cfg: &'a DataplaneConfig,
    len: u64,
    ifindex: u32,
    dir: Direction,
    /// The active policy generation, read once per packet: every lookup of this packet
    /// uses the key slot `generation & 1`, so it sees one policy, never a mix of two.
    generation: u32,
    slot: u8,
    /// A connector's tunnel interface: DNS resources' proxy addresses are decided by
    /// `NAMES` and translated (docs/dataplane.md, "Names on the connector"). Constant false
    /// on physical links, where the compiler drops every branch it guards.
    names: bool,
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The flow table of a protocol: TCP apart from the rest.
#[inline(always)]
fn flows(proto_nr: u8) -> &'static LruHashMap<FlowKey, FlowState> {
    if proto_nr == proto::TCP {
        &FLOWS_TCP
    } else {
        &FLOWS_OTHER
    }
}

/// True when a cached decision still holds: taken under the active generation and before
/// its rule's expiry. The clock is read only for flows whose rule expires.
#[inline(always)]
fn current(f: &FlowState, generation: u32) -> bool {
    f.generation == generation && (f.valid_until_ns == u64::MAX || now_ns() < f.valid_until_ns)
}

/// Adds a packet to a flow's counters. Several CPUs may carry one flow: atomic adds.
#[inline(always)]
fn count(packets: &mut u64, bytes: &mut u64, len: u64) {
    // SAFETY: both point into a map value (8-byte aligned) valid for this run.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, len);
    }
}

/// Records what a packet tells about its flow's lifetime: a reply, FIN, RST.
#[inline(always)]
fn note(f: &mut FlowState, tcp_flags: u8, reply: bool) {
    let mut bits = if reply { FlowState::SEEN_REPLY } else { 0 };
    if tcp_flags & TCP_FIN != 0 {
        bits |= if reply {
            FlowState::SEEN_FIN_REPLY
        } else {
            FlowState::SEEN_FIN_ORIG
        };
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= FlowState::SEEN_RST;
    }
    // Written only when a bit is new, so rarely. Not atomic: the object is built for the
    // generic BPF CPU, whose only atomic is a 64-bit add; two CPUs setting different bits
    // at the same instant could lose one, which only lengthens an idle timeout.
    if f.flags & bits != bits {
        f.flags |= bits;
    }
}

/// True when `key` names a flow decided under the active generation and not expired, and
/// not translated: an ICMP error about a translated flow would quote addresses the other
/// side never saw, and is not translated (docs/dataplane.md, "Names on the connector").
#[inline(always)]
fn open_flow(key: &FlowKey, generation: u32) -> bool {
    // SAFETY: read-only look at plain data.
    match unsafe { flows(key.proto).get(key) } {
        Some(f) => current(f, generation) && f.flags & FlowState::TRANSLATED == 0,
        None => false,
    }
}

/// The key of this packet's datagram in `FRAGS`: the same for its first fragment (which
/// records the decision) and its later ones (which look it up), in this hook's direction.
#[inline(always)]
fn frag_key(p: &Parsed, cx: &Cx) -> FragKey {
    FragKey {
        src: p.key.src,
        dst: p.key.dst,
        id: p.frag_id,
        proto: p.frag_proto,
        family: p.key.family,
        dir: cx.dir as u8,
        _pad: 0,
    }
}

/// Lets the later fragments of this packet's datagram through this hook, as part of the
/// flow `flow` (`reply`: the datagram travels in the flow's reply direction).
#[inline(always)]
fn follow_fragments(cx: &Cx, scratch: &mut Scratch, reply: bool) {
    let p = &scratch.parsed;
    scratch.frag_key = frag_key(p, cx);
    scratch.frag_state = FragState {
        flow: if reply { p.key.reversed() } else { p.key },
        generation: cx.generation,
        reply: reply as u8,
        _pad: [0; 3],
    };
    if FRAGS
        .insert(&scratch.frag_key, &scratch.frag_state, 0)
        .is_ok()
    {
        bump(&FLOW_STATS, FlowCounter::InsertFrag as u32);
    } else {
        bump(&FLOW_STATS, FlowCounter::InsertFailed as u32);
    }
}

/// Ends a flow the kernel stops: its final record, then it leaves the table.
#[inline(always)]
fn end_flow(cx: &Cx, key: &FlowKey, f: &FlowState, now: u64) {
    emit_flow(
        cx.cfg,
        EventKind::FlowEnd,
        FlowEndCause::Revoked as u8,
        key,
        f,
        Direction::Outbound as u8,
        now,
    );
    if flows(key.proto).remove(key).is_ok() {
        bump(&FLOW_STATS, FlowCounter::Removed as u32);
    }
}

#[inline(always)]
fn deny_meta(cx: &Cx, kind: EventKind, d: &Decision) -> EventMeta {
    EventMeta {
        kind,
        reason: d.reason,
        dir: cx.dir as u8,
        detail: 0,
        rule: d.rule,
        principal: d.principal,
        atom: d.atom,
        generation: cx.generation,
        ifindex: cx.ifindex,
        count: 0,
    }
}

/// A limited event (deny, or audit of what has no flow) for this packet.
#[inline(always)]
fn report(cx: &Cx, scratch: &Scratch, kind: EventKind, d: &Decision) {
    let dst_protected = is_protected(cx.slot, &scratch.parsed.key.dst);
    report_at(cx, scratch, kind, d, dst_protected, now_ns());
}

/// [`report`] when the caller knows whether the destination is protected and the time.
/// `Some(end)` when the source is over its event limit until `end` ([`on_limited`]).
#[inline(always)]
fn report_at(
    cx: &Cx,
    scratch: &Scratch,
    kind: EventKind,
    d: &Decision,
    dst_protected: bool,
    now: u64,
) -> Option<u64> {
    let mut meta = deny_meta(cx, kind, d);
    on_limited(
        cx.cfg,
        &mut meta,
        &scratch.parsed.key,
        scratch.parsed.ports,
        dst_protected,
        now,
    )
}

/// A packet the parser refused: dropped; reported when it touches protected space.
#[inline(always)]
fn refused(cx: &Cx, scratch: &Scratch, outcome: ParseOutcome) -> Reason {
    let reason = match outcome {
        ParseOutcome::MappedAddress => Reason::DeniedMappedAddress,
        ParseOutcome::SourceRoute => Reason::DeniedSourceRoute,
        _ => Reason::DeniedMalformed,
    };
    let key = &scratch.parsed.key;
    if scratch.parsed.addrs && (is_protected(cx.slot, &key.dst) || is_protected(cx.slot, &key.src))
    {
        report(cx, scratch, EventKind::Deny, &Decision::simple(reason));
    }
    reason
}

/// docs/dataplane.md, step 1 of both directions: later fragments follow their first.
#[inline(always)]
fn later_fragment(cx: &Cx, scratch: &mut Scratch) -> Reason {
    let p = &scratch.parsed;
    scratch.frag_key = frag_key(p, cx);
    // SAFETY: read-only look at plain data.
    if let Some(fs) = unsafe { FRAGS.get(&scratch.frag_key) }
        && fs.generation == cx.generation
    {
        if let Some(flow) = flows(fs.flow.proto).get_ptr_mut(&fs.flow) {
            // SAFETY: pointer from a successful lookup, valid for this run (RCU).
            let f = unsafe { &mut *flow };
            if fs.reply != 0 {
                count(&mut f.reply_packets, &mut f.reply_bytes, cx.len);
            } else {
                count(&mut f.packets, &mut f.bytes, cx.len);
            }
        }
        return Reason::FragmentAllowed;
    }
    let key = &scratch.parsed.key;
    let dst = is_protected(cx.slot, &key.dst);
    let src = is_protected(cx.slot, &key.src);
    if !dst && !src {
        // A later fragment toward a proxy address: never translated (it has no ports to
        // find its flow by), dropped.
        if cx.names && cx.dir == Direction::Outbound {
            scratch.names.key.device = key.src;
            scratch.names.key.proxy = key.dst;
            // SAFETY: read-only look at plain data.
            if let Some(v) = unsafe { maps::NAMES.get(&scratch.names.key) } {
                scratch.names.atom = if cx.slot == 0 { v.atoms[0] } else { v.atoms[1] };
                let mut d = Decision::simple(Reason::DeniedFragment);
                d.atom = scratch.names.atom.atom;
                report(cx, scratch, EventKind::Deny, &d);
                return Reason::DeniedFragment;
            }
        }
        return Reason::Unprotected;
    }
    let toward = if cx.dir == Direction::Outbound {
        &key.dst
    } else {
        &key.src
    };
    if audit_address(cx.slot, toward) {
        report(
            cx,
            scratch,
            EventKind::Audit,
            &Decision::simple(Reason::Audit),
        );
        return Reason::Audit;
    }
    report(
        cx,
        scratch,
        EventKind::Deny,
        &Decision::simple(Reason::DeniedFragment),
    );
    Reason::DeniedFragment
}

/// docs/dataplane.md, "Outbound hooks, in order".
#[inline(always)]
fn outbound<C: Frame + Rewrite>(ctx: &C, cx: &Cx, scratch: &mut Scratch) -> Reason {
    let key = &scratch.parsed.key;
    // 2a. A repeated denial of a source over its event limit: the decision remembered
    //     (docs/dataplane.md, "Repeated denials"); one slot of a per-CPU array.
    if let Some(reason) = repeated_denial(cx.cfg, key, cx.generation) {
        return reason;
    }
    // 2b. A source no principal has, now or since the object was loaded, and no open flow
    //     has (docs/dataplane.md, "Sources no principal has"): no flow to look up, no
    //     source entry to ask for; the steps below decide it without either.
    let candidate = maybe_principal(&key.src);
    // 2c. Established: one lookup for a flow decided under the active generation.
    let cached = if candidate {
        flows(key.proto).get_ptr_mut(key)
    } else {
        None
    };
    if let Some(flow) = cached {
        // SAFETY: pointer from a successful lookup, valid for this run (RCU).
        let f = unsafe { &mut *flow };
        if current(f, cx.generation) {
            if cx.names && f.flags & FlowState::TRANSLATED != 0 {
                return established_translated(ctx, cx, scratch, f);
            }
            count(&mut f.packets, &mut f.bytes, cx.len);
            note(f, scratch.parsed.tcp_flags, false);
            if scratch.parsed.first_fragment {
                follow_fragments(cx, scratch, false);
            }
            return Reason::Established;
        }
        // Stale: decided under another generation or past expiry. Decided again below.
    }
    let now = now_ns();

    // 3. ICMP errors into protected space: about a reply of an open flow, sent by that
    //    flow's client to that flow's resource (so from a possible principal).
    if candidate
        && parse::is_icmp_error(&scratch.parsed)
        && parse::quoted_key(
            ctx,
            scratch.parsed.l4,
            scratch.parsed.key.family,
            &mut scratch.inner,
        )
    {
        let key = &scratch.parsed.key;
        let inner = &scratch.inner;
        if key.dst == inner.src && key.src == inner.dst {
            scratch.reversed = inner.reversed();
            if open_flow(&scratch.reversed, cx.generation) {
                return Reason::IcmpErrorRelated;
            }
        }
    }

    // 4. Policy.
    let key = &scratch.parsed.key;
    let mut d = Decision::simple(Reason::DeniedMalformed);
    decide_into(cx.slot, key, now, candidate, &mut d);
    // Toward no protected address: a DNS resource's proxy address on a connector's tunnel
    // interface is decided by its atom in `NAMES` (never an ICMP error: not translated).
    let named = cx.names
        && d.atom == 0
        && matches!(d.reason, Reason::Unprotected | Reason::DeniedUnsolicited)
        && !parse::is_icmp_error(&scratch.parsed)
        && decide_name(cx.slot, key, now, candidate, &mut d, &mut scratch.names);
    if named {
        if scratch.parsed.first_fragment {
            // Its later fragments could not be rewritten: no fragment is translated.
            d.reason = Reason::DeniedFragment;
            report_at(cx, scratch, EventKind::Deny, &d, true, now);
            return Reason::DeniedFragment;
        }
        if d.principal == 0 && d.reason == Reason::Audit {
            // Names are principals' flows; an unknown source is never translated.
            d.reason = Reason::DeniedUnknownSource;
        }
    }
    let principal_passes = d.principal != 0 && matches!(d.reason, Reason::Allowed | Reason::Audit);
    if principal_passes {
        match cached {
            Some(flow) => {
                // SAFETY: as above; the flow keeps its counters.
                let f = unsafe { &mut *flow };
                count(&mut f.packets, &mut f.bytes, cx.len);
                note(f, scratch.parsed.tcp_flags, false);
                f.last_seen_ns = now;
                f.valid_until_ns = d.valid_until_ns;
                f.generation = cx.generation;
                f.rule = d.rule;
                f.principal = d.principal;
                f.atom = d.atom;
                f.reason = d.reason as u8;
                if named {
                    f.flags |= FlowState::TRANSLATED;
                }
            }
            None => {
                let mut flags = if named { FlowState::TRANSLATED } else { 0 };
                if scratch.parsed.tcp_flags & TCP_FIN != 0 {
                    flags |= FlowState::SEEN_FIN_ORIG;
                }
                if scratch.parsed.tcp_flags & TCP_RST != 0 {
                    flags |= FlowState::SEEN_RST;
                }
                scratch.state = FlowState {
                    packets: 1,
                    bytes: cx.len,
                    first_seen_ns: now,
                    last_seen_ns: now,
                    valid_until_ns: d.valid_until_ns,
                    generation: cx.generation,
                    rule: d.rule,
                    principal: d.principal,
                    atom: d.atom,
                    ifindex: cx.ifindex,
                    flags,
                    reason: d.reason as u8,
                    ..FlowState::default()
                };
                // A full table evicts its least recently used flow.
                let counter = match flows(key.proto).insert(key, &scratch.state, 0) {
                    Ok(()) if key.proto == proto::TCP => FlowCounter::InsertTcp,
                    Ok(()) => FlowCounter::InsertOther,
                    Err(_) => FlowCounter::InsertFailed,
                };
                bump(&FLOW_STATS, counter as u32);
                let kind = if d.reason == Reason::Audit {
                    EventKind::Audit
                } else {
                    EventKind::FlowStart
                };
                emit_flow(cx.cfg, kind, 0, key, &scratch.state, cx.dir as u8, now);
            }
        }
        if named {
            // Sent to the real address this flow started with (`NAT`), the name's now for a
            // new flow.
            nat_insert(&scratch.parsed.key, &mut scratch.names);
            let p = &scratch.parsed;
            if !ctx.rewrite(p, true, &p.key.dst, &scratch.names.real) {
                return Reason::DeniedMalformed;
            }
            return d.reason;
        }
        if scratch.parsed.first_fragment {
            follow_fragments(cx, scratch, false);
        }
        return d.reason;
    }
    // Anything else ends a stale flow: it is no principal's allowed flow any more.
    let mut translated = false;
    let revoked = match cached {
        Some(flow) => {
            // SAFETY: as above.
            let f = unsafe { &*flow };
            translated = cx.names && f.flags & FlowState::TRANSLATED != 0;
            end_flow(cx, key, f, now);
            if translated {
                forget_nat(&scratch.parsed.key, &mut scratch.names);
            }
            true
        }
        None => false,
    };
    // The decision names an atom exactly when the destination is protected.
    let dst_protected = d.atom != 0;
    match d.reason {
        // A translated flow whose name went from `NAMES`: ended, and so is its packet.
        Reason::Unprotected if translated => {
            d.reason = Reason::DeniedEstablished;
            report_at(cx, scratch, EventKind::Deny, &d, dst_protected, now);
            Reason::DeniedEstablished
        }
        Reason::Unprotected => Reason::Unprotected,
        Reason::Audit => {
            // An unknown source toward an audit-mode address: passed, reported, no flow.
            report_at(cx, scratch, EventKind::Audit, &d, dst_protected, now);
            Reason::Audit
        }
        _ => {
            if revoked {
                d.reason = Reason::DeniedEstablished;
            }
            let over_limit = report_at(cx, scratch, EventKind::Deny, &d, dst_protected, now);
            // `NAMES` changes without a new generation: its decisions are not remembered.
            if let Some(windows_end) = over_limit
                && !revoked
                && !(cx.names && (named || d.atom == 0))
                && cacheable(&scratch.parsed.key, d.reason)
            {
                remember_denial(
                    cx.cfg,
                    &scratch.parsed.key,
                    cx.generation,
                    d.reason,
                    d.valid_until_ns.min(windows_end),
                    now,
                );
            }
            d.reason
        }
    }
}

/// An established translated flow (connector tunnel, docs/dataplane.md "Names on the
/// connector"): its packet goes to the real address it started with.
#[inline(always)]
fn established_translated<C: Rewrite>(
    ctx: &C,
    cx: &Cx,
    scratch: &mut Scratch,
    f: &mut FlowState,
) -> Reason {
    if scratch.parsed.first_fragment {
        // Its later fragments could not be rewritten: no fragment is translated.
        let mut d = Decision::simple(Reason::DeniedFragment);
        d.atom = f.atom;
        d.principal = f.principal;
        report(cx, scratch, EventKind::Deny, &d);
        return Reason::DeniedFragment;
    }
    if !nat_real(&scratch.parsed.key, &mut scratch.names) {
        // Neither `NAT` nor `NAMES` knows where it goes: ended.
        let now = now_ns();
        let mut d = Decision::simple(Reason::DeniedEstablished);
        d.atom = f.atom;
        d.principal = f.principal;
        end_flow(cx, &scratch.parsed.key, f, now);
        report_at(cx, scratch, EventKind::Deny, &d, true, now);
        return Reason::DeniedEstablished;
    }
    let p = &scratch.parsed;
    if !ctx.rewrite(p, true, &p.key.dst, &scratch.names.real) {
        return Reason::DeniedMalformed;
    }
    count(&mut f.packets, &mut f.bytes, cx.len);
    note(f, scratch.parsed.tcp_flags, false);
    Reason::Established
}

/// docs/dataplane.md, "Inbound hooks, in order".
#[inline(always)]
fn inbound<C: Frame + Rewrite>(ctx: &C, cx: &Cx, scratch: &mut Scratch) -> Reason {
    // 1b. A reply of a translated flow (connector tunnel): from the real address, it gets
    //     the proxy address back, in the packet and in its key; the steps below see the
    //     flow's own tuple (docs/dataplane.md, "Names on the connector").
    if cx.names && nat_reply(&scratch.parsed.key, &mut scratch.names) {
        if scratch.parsed.first_fragment {
            report(
                cx,
                scratch,
                EventKind::Deny,
                &Decision::simple(Reason::DeniedFragment),
            );
            return Reason::DeniedFragment;
        }
        let p = &scratch.parsed;
        if !ctx.rewrite(p, false, &p.key.src, &scratch.names.proxy) {
            return Reason::DeniedMalformed;
        }
        scratch.parsed.key.src = scratch.names.proxy;
    }
    scratch.reversed = scratch.parsed.key.reversed();
    let mut revoked = false;
    // 2. Replies of an open flow (an echo request is never a reply), toward a possible
    //    principal: every flow's client is one.
    let candidate = maybe_principal(&scratch.parsed.key.dst);
    if candidate
        && !parse::is_echo_request(&scratch.parsed)
        && let Some(flow) = flows(scratch.reversed.proto).get_ptr_mut(&scratch.reversed)
    {
        // SAFETY: pointer from a successful lookup, valid for this run (RCU).
        let f = unsafe { &mut *flow };
        let mut live = true;
        if !current(f, cx.generation) {
            // Decided under another generation: decide the flow again; a revoked grant
            // stops its replies too.
            let now = now_ns();
            let mut d = Decision::simple(Reason::DeniedMalformed);
            decide_into(cx.slot, &scratch.reversed, now, true, &mut d);
            let translated = cx.names && f.flags & FlowState::TRANSLATED != 0;
            // A translated flow is decided again by its name (`NAMES`): a removed name
            // or a revoked grant ends it.
            if translated
                && d.atom == 0
                && matches!(d.reason, Reason::Unprotected | Reason::DeniedUnsolicited)
                && !decide_name(
                    cx.slot,
                    &scratch.reversed,
                    now,
                    true,
                    &mut d,
                    &mut scratch.names,
                )
            {
                d = Decision::simple(Reason::DeniedEstablished);
            }
            if d.principal != 0 && matches!(d.reason, Reason::Allowed | Reason::Audit) {
                f.generation = cx.generation;
                f.valid_until_ns = d.valid_until_ns;
                f.rule = d.rule;
                f.principal = d.principal;
                f.atom = d.atom;
                f.reason = d.reason as u8;
                f.last_seen_ns = now;
            } else {
                end_flow(cx, &scratch.reversed, f, now);
                if translated {
                    forget_nat(&scratch.reversed, &mut scratch.names);
                }
                live = false;
                // A denial revokes; a flow that is merely no longer ours (unprotected, or
                // an unknown source toward audit mode) is forgotten and the packet goes on.
                revoked = !d.reason.passes();
            }
        }
        if live {
            count(&mut f.reply_packets, &mut f.reply_bytes, cx.len);
            note(f, scratch.parsed.tcp_flags, true);
            if scratch.parsed.first_fragment {
                follow_fragments(cx, scratch, true);
            }
            return Reason::Reply;
        }
    }

    // 3. ICMP errors toward a client: about an original-direction packet of an open flow,
    //    sent to that flow's client (a possible principal).
    if candidate
        && parse::is_icmp_error(&scratch.parsed)
        && parse::quoted_key(
            ctx,
            scratch.parsed.l4,
            scratch.parsed.key.family,
            &mut scratch.inner,
        )
        && scratch.parsed.key.dst == scratch.inner.src
        && open_flow(&scratch.inner, cx.generation)
    {
        return Reason::IcmpErrorRelated;
    }

    // 4. Nothing else from or to protected space.
    let key = &scratch.parsed.key;
    let reason = if is_protected(cx.slot, &key.src) {
        if revoked {
            Reason::DeniedEstablished
        } else if audit_address(cx.slot, &key.src) {
            report(
                cx,
                scratch,
                EventKind::Audit,
                &Decision::simple(Reason::Audit),
            );
            return Reason::Audit;
        } else {
            Reason::DeniedUnsolicited
        }
    } else if is_protected(cx.slot, &key.dst) {
        Reason::DeniedDirection
    } else {
        return Reason::Unprotected;
    };
    report(cx, scratch, EventKind::Deny, &Decision::simple(reason));
    reason
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
