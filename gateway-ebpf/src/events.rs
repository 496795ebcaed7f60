//! Events: flow records on the flow ring, denials and scan alerts on the alert ring.
//!
//! Each kind has a per-CPU budget per second (from `CONFIG`); over budget an event is
//! counted, not sent, and the count travels on the next event of its kind. Denials are
//! also limited per source prefix (/32 IPv4, /64 IPv6). Per-source state lives in an LRU
//! map that is not grown while this CPU is over its deny budget: a flood of spoofed
//! sources cannot evict a real scanner's state (it is reported as suppressed events).

use aya_ebpf::maps::RingBuf;
use gateway_common::{
    Addr, DataplaneConfig, DenyCacheEntry, Event, EventKind, FlowKey, FlowState, Reason,
    event::{ScanKind, SourceState},
    flow::proto,
    maps::{DENY_CACHE_SLOTS, Ring},
};

use crate::maps::{BUDGETS, DENY_CACHE, EVENTS_ALERT, EVENTS_FLOW, EVENTS_LOST, SOURCES, bump};

const SECOND_NS: u64 = 1_000_000_000;

/// What an event says beyond the flow key; written straight into the ring buffer.
pub struct EventMeta {
    pub kind: EventKind,
    pub reason: Reason,
    pub dir: u8,
    pub detail: u8,
    pub rule: u32,
    pub principal: u32,
    pub atom: u32,
    pub generation: u32,
    pub ifindex: u32,
    pub count: u32,
}

/// Takes one event of budget `slot` (an `EventKind` value) on this CPU. `Some(n)`: send,
/// and `n` events of the slot were suppressed since the last one sent; `None`: suppressed.
#[inline(always)]
fn take_budget(cfg: &DataplaneConfig, slot: u32, now: u64) -> Option<u32> {
    let b = BUDGETS.get_ptr_mut(slot)?;
    let limit = match cfg.budget.get(slot as usize) {
        Some(l) => *l,
        None => return None,
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on one CPU.
    let b = unsafe { &mut *b };
    if now.wrapping_sub(b.window_start_ns) >= SECOND_NS {
        b.window_start_ns = now;
        b.sent = 0;
    }
    if b.sent < limit {
        b.sent += 1;
        let suppressed = b.suppressed;
        b.suppressed = 0;
        Some(suppressed)
    } else {
        b.suppressed = b.suppressed.wrapping_add(1);
        b.suppressed_total = b.suppressed_total.wrapping_add(1);
        None
    }
}

/// True while this CPU has used up its deny budget for the current second.
#[inline(always)]
fn flooding(cfg: &DataplaneConfig, now: u64) -> bool {
    let slot = EventKind::Deny as u32;
    let Some(b) = BUDGETS.get(slot) else {
        return true;
    };
    let limit = match cfg.budget.get(slot as usize) {
        Some(l) => *l,
        None => 0,
    };
    now.wrapping_sub(b.window_start_ns) < SECOND_NS && b.sent >= limit
}

/// Sends one event on `ring`. The record is written in place (no copy of it on the
/// 512-byte stack); every byte is written, padding included.
#[inline(always)]
fn emit(
    ring: &RingBuf,
    lost: Ring,
    meta: &EventMeta,
    suppressed: u32,
    key: &FlowKey,
    f: Option<&FlowState>,
    now: u64,
) {
    let Some(mut entry) = ring.reserve::<Event>(0) else {
        // Ring buffer full: counted, so the loss shows in the agent's metrics.
        bump(&EVENTS_LOST, lost as u32);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record of size_of::<Event>().
    unsafe {
        (*ev).kind = meta.kind as u8;
        (*ev).reason = meta.reason as u8;
        (*ev).dir = meta.dir;
        (*ev).detail = meta.detail;
        (*ev).rule = meta.rule;
        (*ev).principal = meta.principal;
        (*ev).atom = meta.atom;
        (*ev).ifindex = meta.ifindex;
        (*ev).generation = meta.generation;
        (*ev).key = *key;
        (*ev).count = meta.count;
        (*ev).suppressed = suppressed;
        (*ev).ts_ns = now;
        (*ev)._pad = [0; 7];
        match f {
            Some(f) => {
                (*ev).packets = f.packets;
                (*ev).bytes = f.bytes;
                (*ev).reply_packets = f.reply_packets;
                (*ev).reply_bytes = f.reply_bytes;
                (*ev).first_seen_ns = f.first_seen_ns;
                (*ev).flags = f.flags as u8;
            }
            None => {
                (*ev).packets = 1;
                (*ev).bytes = 0;
                (*ev).reply_packets = 0;
                (*ev).reply_bytes = 0;
                (*ev).first_seen_ns = now;
                (*ev).flags = 0;
            }
        }
    }
    entry.submit(0);
}

/// A flow record (flow_start, flow_end, audit of a principal's flow) on the flow ring.
/// Principals' audit records share the flow_start budget: they are flow records too.
#[inline(always)]
pub fn emit_flow(
    cfg: &DataplaneConfig,
    kind: EventKind,
    detail: u8,
    key: &FlowKey,
    f: &FlowState,
    dir: u8,
    now: u64,
) {
    let slot = match kind {
        EventKind::FlowEnd => EventKind::FlowEnd as u32,
        _ => EventKind::FlowStart as u32,
    };
    let Some(suppressed) = take_budget(cfg, slot, now) else {
        return;
    };
    let meta = EventMeta {
        kind,
        reason: Reason::from_u32(f.reason as u32),
        dir,
        detail,
        rule: f.rule,
        principal: f.principal,
        atom: f.atom,
        generation: f.generation,
        ifindex: f.ifindex,
        count: 0,
    };
    emit(
        &EVENTS_FLOW,
        Ring::Flow,
        &meta,
        suppressed,
        key,
        Some(f),
        now,
    );
}

/// The per-source state key: the source's /32 (IPv4) or /64 (IPv6) prefix.
#[inline(always)]
pub fn source_prefix(key: &FlowKey) -> Addr {
    let mut p = key.src;
    if key.family == 6 {
        p[8] = 0;
        p[9] = 0;
        p[10] = 0;
        p[11] = 0;
        p[12] = 0;
        p[13] = 0;
        p[14] = 0;
        p[15] = 0;
    }
    p
}

/// A keyed hash into 0..=255 (multiply-shift with the per-boot key of `CONFIG`).
#[inline(always)]
fn hash8(cfg: &DataplaneConfig, a: u64, b: u64) -> u32 {
    let m = cfg.hash_key[1] | 1;
    let mut x = (a ^ cfg.hash_key[0]).wrapping_mul(m);
    x ^= b;
    x = x.wrapping_mul(m);
    (x >> 56) as u32
}

#[inline(always)]
fn addr_words(a: &Addr) -> (u64, u64) {
    (
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

/// Sets bit `h` of a 256-bit set; true when it was not set.
#[inline(always)]
fn set_bit(set: &mut [u64; 4], h: u32) -> bool {
    let bit = 1u64 << (h & 63);
    let Some(word) = set.get_mut((h >> 6) as usize & 3) else {
        return false;
    };
    if *word & bit == 0 {
        *word |= bit;
        true
    } else {
        false
    }
}

/// A limited record (deny, or audit of an unknown source) on the alert ring, limited per
/// source prefix and per CPU; for denials, scan detection. `ports` says whether the key's
/// ports were read; `dst_protected` whether the destination is protected (hosts scanned).
/// `Some(end)` when the source is over its event limit in the current deny and scan windows
/// (the record was counted on the source, not sent): `end` is when the first of those
/// windows ends. `None` otherwise.
#[inline(always)]
pub fn on_limited(
    cfg: &DataplaneConfig,
    meta: &mut EventMeta,
    key: &FlowKey,
    ports: bool,
    dst_protected: bool,
    now: u64,
) -> Option<u64> {
    let prefix = source_prefix(key);
    let state = match SOURCES.get_ptr_mut(&prefix) {
        Some(s) => Some(s),
        None if !flooding(cfg, now) => {
            let _ = SOURCES.insert(&prefix, &SourceState::default(), 0);
            SOURCES.get_ptr_mut(&prefix)
        }
        None => None,
    };
    let Some(state) = state else {
        // Flooding and unknown: only the per-CPU budget applies.
        if let Some(suppressed) = take_budget(cfg, meta.kind as u32, now) {
            emit(&EVENTS_ALERT, Ring::Alert, meta, suppressed, key, None, now);
        }
        return None;
    };
    // SAFETY: pointer from a successful lookup, valid for this run (RCU). Other CPUs may
    // update the same source at once: the counters are approximate, never unsafe.
    let s = unsafe { &mut *state };
    if now.wrapping_sub(s.deny_window_start_ns) >= cfg.deny_window_ns {
        s.deny_window_start_ns = now;
        s.deny_events = 0;
    }
    let over_limit = s.deny_events >= cfg.deny_per_source;
    if !over_limit {
        s.deny_events += 1;
        if let Some(suppressed) = take_budget(cfg, meta.kind as u32, now) {
            meta.count = s.deny_suppressed;
            s.deny_suppressed = 0;
            emit(&EVENTS_ALERT, Ring::Alert, meta, suppressed, key, None, now);
        } else {
            s.deny_suppressed = s.deny_suppressed.wrapping_add(1);
        }
    } else {
        s.deny_suppressed = s.deny_suppressed.wrapping_add(1);
    }
    if meta.kind != EventKind::Deny {
        return None;
    }

    // Scan detection: distinct denied ports (vertical) and protected hosts (horizontal)
    // per source prefix within the window, counted in keyed-hash bit sets.
    if now.wrapping_sub(s.scan_window_start_ns) >= cfg.scan_window_ns {
        s.scan_window_start_ns = now;
        s.scan_ports = [0; 4];
        s.scan_hosts = [0; 4];
        s.ports_distinct = 0;
        s.hosts_distinct = 0;
        s.alerted = 0;
    }
    if ports && (key.proto == proto::TCP || key.proto == proto::UDP) {
        let h = hash8(cfg, key.dst_port() as u64, key.proto as u64);
        if set_bit(&mut s.scan_ports, h) {
            s.ports_distinct += 1;
            if s.ports_distinct >= cfg.scan_ports && s.alerted & 1 == 0 {
                s.alerted |= 1;
                scan_alert(cfg, meta, key, ScanKind::Ports, s.ports_distinct, now);
            }
        }
    }
    if dst_protected {
        let (a, b) = addr_words(&key.dst);
        let h = hash8(cfg, a, b);
        if set_bit(&mut s.scan_hosts, h) {
            s.hosts_distinct += 1;
            if s.hosts_distinct >= cfg.scan_hosts && s.alerted & 2 == 0 {
                s.alerted |= 2;
                scan_alert(cfg, meta, key, ScanKind::Hosts, s.hosts_distinct, now);
            }
        }
    }
    if !over_limit {
        return None;
    }
    let deny_end = s.deny_window_start_ns.wrapping_add(cfg.deny_window_ns);
    let scan_end = s.scan_window_start_ns.wrapping_add(cfg.scan_window_ns);
    Some(if deny_end < scan_end {
        deny_end
    } else {
        scan_end
    })
}

/// The slot of `key` in this CPU's `DENY_CACHE` (keyed multiply-shift hash: an attacker
/// cannot aim its tuples at one slot).
#[inline(always)]
fn deny_slot(cfg: &DataplaneConfig, key: &FlowKey) -> u32 {
    let (a, b) = addr_words(&key.src);
    let (c, d) = addr_words(&key.dst);
    let p = u64::from(u32::from_ne_bytes([
        key.src_port[0],
        key.src_port[1],
        key.dst_port[0],
        key.dst_port[1],
    ])) | (u64::from(key.proto) << 32);
    let m = cfg.hash_key[1] | 1;
    let mut x = (a ^ cfg.hash_key[0]).wrapping_mul(m);
    x = (x ^ b).wrapping_mul(m);
    x = (x ^ c).wrapping_mul(m);
    x = (x ^ d).wrapping_mul(m);
    x = (x ^ p).wrapping_mul(m);
    (x >> 40) as u32 & (DENY_CACHE_SLOTS - 1)
}

/// Whether a denial may be remembered: a policy decision on a TCP or UDP packet (decided
/// from addresses, protocol and port alone; ICMP errors depend on open flows).
#[inline(always)]
pub fn cacheable(key: &FlowKey, reason: Reason) -> bool {
    (key.proto == proto::TCP || key.proto == proto::UDP)
        && matches!(
            reason,
            Reason::DeniedUnknownSource
                | Reason::DeniedNoGrant
                | Reason::DeniedByRule
                | Reason::DeniedUnsolicited
        )
}

/// The coarse monotonic clock of `DenyCacheEntry::until_ns`.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

/// Adds the denials a slot answered to its source's suppressed count, and zeroes them.
#[inline(always)]
fn settle(e: &mut DenyCacheEntry) {
    if e.suppressed == 0 {
        return;
    }
    if let Some(s) = SOURCES.get_ptr_mut(&source_prefix(&e.key)) {
        // SAFETY: pointer from a successful lookup, valid for this run (RCU); approximate
        // counters as in `on_limited`.
        let s = unsafe { &mut *s };
        s.deny_suppressed = s.deny_suppressed.wrapping_add(e.suppressed);
    }
    e.suppressed = 0;
}

/// Remembers a denial of a source over its event limit (docs/dataplane.md, "Repeated
/// denials") until `until_ns` (boot clock, `now` the time of the decision): the first of
/// the rule's expiry and the end of the source's windows ([`on_limited`]). Takes the slot
/// from whatever it held, whose count is settled.
#[inline(always)]
pub fn remember_denial(
    cfg: &DataplaneConfig,
    key: &FlowKey,
    generation: u32,
    reason: Reason,
    until_ns: u64,
    now: u64,
) {
    let Some(e) = DENY_CACHE.get_ptr_mut(deny_slot(cfg, key)) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on one CPU.
    let e = unsafe { &mut *e };
    settle(e);
    e.key = *key;
    e.generation = generation;
    e.reason = reason as u8;
    e._pad = [0; 3];
    // The same span on the coarse clock the fast path reads.
    e.until_ns = if until_ns == u64::MAX {
        u64::MAX
    } else {
        coarse_now().saturating_add(until_ns.saturating_sub(now))
    };
    e._pad2 = 0;
}

/// A repeated denial: the same tuple denied before under this generation, with the rule
/// not expired and its source still over its event limit in the windows it was over it
/// in (`until_ns`). The full path would change nothing but the source's suppressed count
/// (a repeated tuple adds no port or host to scan detection), so that is all this does,
/// on this CPU's slot alone: no flow table, no source lookup. `None`: decide in full (a
/// slot past its time settles its count first, so the full path reports it).
///
/// Asked before the flow table: a remembered denial under the active generation means no
/// flow of that tuple exists under it (a flow is made only by an allow under the
/// generation it carries, and the same tuple under the same generation decides the same
/// until `until_ns`), so the answer is the one the full path would give.
#[inline(always)]
pub fn repeated_denial(cfg: &DataplaneConfig, key: &FlowKey, generation: u32) -> Option<Reason> {
    if key.proto != proto::TCP && key.proto != proto::UDP {
        return None;
    }
    let e = DENY_CACHE.get_ptr_mut(deny_slot(cfg, key))?;
    // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on one CPU.
    let e = unsafe { &mut *e };
    if e.key.src != key.src
        || e.key.dst != key.dst
        || e.key.src_port != key.src_port
        || e.key.dst_port != key.dst_port
        || e.key.proto != key.proto
        || e.key.family != key.family
    {
        return None;
    }
    if e.generation != generation || coarse_now() >= e.until_ns {
        settle(e);
        return None;
    }
    e.suppressed = e.suppressed.wrapping_add(1);
    Some(Reason::from_u32(u32::from(e.reason)))
}

#[inline(always)]
fn scan_alert(
    cfg: &DataplaneConfig,
    meta: &mut EventMeta,
    key: &FlowKey,
    kind: ScanKind,
    count: u32,
    now: u64,
) {
    let Some(suppressed) = take_budget(cfg, EventKind::ScanAlert as u32, now) else {
        return;
    };
    meta.kind = EventKind::ScanAlert;
    meta.detail = kind as u8;
    meta.count = count;
    emit(&EVENTS_ALERT, Ring::Alert, meta, suppressed, key, None, now);
    meta.kind = EventKind::Deny;
    meta.detail = 0;
}
