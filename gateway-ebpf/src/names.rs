//! DNS resources on a connector's tunnel interface (docs/dataplane.md, "Names on the
//! connector"): a device sends to a per-device proxy address; `NAMES` gives, per (device,
//! proxy), the resource's atom (the decision is taken by it, never by the real address)
//! and the real address; `NAT` remembers, per translated flow, the real address its
//! original tuple is sent to and the proxy address its replies get back.
//!
//! Only the connector's tunnel programs come here (`Cx::names`); devices and physical links
//! never look these maps up.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::bpf_csum_diff,
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    Addr, FlowKey, Reason,
    flow::proto,
    names::{NameKey, NatValue},
    policy::AtomValue,
};

use crate::{
    decide::{Decision, decide_atom_into},
    maps::{NAMES, NAT},
    parse::Parsed,
};

/// Per-CPU room for the keys and values of this module (the stack has none to spare).
pub struct NameScratch {
    pub key: NameKey,
    pub real: Addr,
    pub proxy: Addr,
    pub atom: AtomValue,
    pub _pad: u32,
    pub nat_key: FlowKey,
    pub nat: NatValue,
}

/// True when `addr` is IPv4-mapped (an IPv4 address in the 16-byte form).
#[inline(always)]
pub fn is_v4(addr: &Addr) -> bool {
    addr[0]
        | addr[1]
        | addr[2]
        | addr[3]
        | addr[4]
        | addr[5]
        | addr[6]
        | addr[7]
        | addr[8]
        | addr[9]
        == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

/// The `NAMES` decision of `key` (device -> proxy), when `NAMES` has the pair: the atom of
/// the active slot decides, with the same rule lookups as any atom; `names.real` is the
/// real address. A real address of the other family is never translated: denied
/// (`denied_no_grant`). `None` when the pair is unknown.
#[inline(always)]
pub fn decide_name(
    slot: u8,
    key: &FlowKey,
    now: u64,
    candidate: bool,
    d: &mut Decision,
    names: &mut NameScratch,
) -> bool {
    names.key.device = key.src;
    names.key.proxy = key.dst;
    // SAFETY: plain data written whole by the agent into a map allocated per entry.
    let Some(v) = (unsafe { NAMES.get(&names.key) }) else {
        return false;
    };
    names.real = v.real;
    names.atom = if slot == 0 { v.atoms[0] } else { v.atoms[1] };
    if (key.family == 4) != is_v4(&names.real) {
        *d = Decision::simple(Reason::DeniedNoGrant);
        d.atom = names.atom.atom;
        return true;
    }
    let flags = (slot & 1) as u32 | if candidate { 2 } else { 0 };
    decide_atom_into(key, now, flags, &names.atom, d);
    true
}

/// The reply tuple of the translated flow `key` (device -> proxy) sent to `real`, as it
/// arrives from the resource: real -> device, ports swapped.
#[inline(always)]
fn reply_tuple(out: &mut FlowKey, key: &FlowKey, real: &Addr) {
    out.src = *real;
    out.dst = key.src;
    out.src_port = key.dst_port;
    out.dst_port = key.src_port;
    out.proto = key.proto;
    out.family = key.family;
    out._pad = [0; 2];
}

/// Records the translation of flow `key` toward `names.real`: `NAT[key]` only when absent
/// (an open flow keeps the real address it started with when the name re-resolves), then
/// the reply tuple of whatever real address `NAT[key]` holds. On return `names.real` is
/// that address: the one to rewrite the packet to.
#[inline(always)]
pub fn nat_insert(key: &FlowKey, names: &mut NameScratch) {
    names.nat.addr = names.real;
    let _ = NAT.insert(key, &names.nat, BPF_NOEXIST as u64);
    // SAFETY: plain data; read once.
    if let Some(v) = unsafe { NAT.get(key) } {
        names.real = v.addr;
    }
    let real = names.real;
    reply_tuple(&mut names.nat_key, key, &real);
    names.nat.addr = key.dst;
    let _ = NAT.insert(&names.nat_key, &names.nat, 0);
}

/// The real address of the translated flow `key` into `names.real`: `NAT[key]`, or, when
/// that entry went (evicted), `NAMES`' real address, and both entries made again. False
/// when neither knows it (or the families differ): the flow can no longer be translated.
#[inline(always)]
pub fn nat_real(key: &FlowKey, names: &mut NameScratch) -> bool {
    // SAFETY: plain data; read once.
    if let Some(v) = unsafe { NAT.get(key) } {
        names.real = v.addr;
        return true;
    }
    names.key.device = key.src;
    names.key.proxy = key.dst;
    // SAFETY: as in `decide_name`.
    let Some(v) = (unsafe { NAMES.get(&names.key) }) else {
        return false;
    };
    names.real = v.real;
    if (key.family == 4) != is_v4(&names.real) {
        return false;
    }
    nat_insert(key, names);
    true
}

/// Removes both `NAT` entries of the translated flow `key` (the kernel ended it).
#[inline(always)]
pub fn forget_nat(key: &FlowKey, names: &mut NameScratch) {
    // SAFETY: plain data; read once.
    if let Some(v) = unsafe { NAT.get(key) } {
        names.real = v.addr;
        let real = names.real;
        reply_tuple(&mut names.nat_key, key, &real);
        let _ = NAT.remove(&names.nat_key);
    }
    let _ = NAT.remove(key);
}

/// The proxy address a reply tuple (real -> device) of a translated flow gets, into
/// `names.proxy`; false when the tuple is no translated flow's.
#[inline(always)]
pub fn nat_reply(key: &FlowKey, names: &mut NameScratch) -> bool {
    // SAFETY: plain data; read once.
    match unsafe { NAT.get(key) } {
        Some(v) => {
            names.proxy = v.addr;
            true
        }
        None => false,
    }
}

/// Rewriting an address of the packet in place. Only the tunnel programs (tc, packets
/// from the IP header on) rewrite; XDP never gets here.
pub trait Rewrite {
    /// Replaces the destination (`dst`) or source address of the packet, `old`, by `new`
    /// (same family), with its checksums. False when a helper failed: the packet must not
    /// pass then.
    fn rewrite(&self, p: &Parsed, dst: bool, old: &Addr, new: &Addr) -> bool;
}

impl Rewrite for XdpContext {
    #[inline(always)]
    fn rewrite(&self, _p: &Parsed, _dst: bool, _old: &Addr, _new: &Addr) -> bool {
        false
    }
}

/// Offset of the transport checksum and whether it covers the pseudo header; `None`: no
/// checksum to fix (ICMPv4 covers only its own bytes; other protocols are not read).
#[inline(always)]
fn l4_csum(proto_nr: u8) -> Option<(usize, u64)> {
    match proto_nr {
        proto::TCP => Some((16, BPF_F_PSEUDO_HDR as u64)),
        // A UDP checksum 0 (none, IPv4) stays 0.
        proto::UDP => Some((6, (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64)),
        proto::ICMPV6 => Some((2, BPF_F_PSEUDO_HDR as u64)),
        _ => None,
    }
}

impl Rewrite for TcContext {
    #[inline(always)]
    fn rewrite(&self, p: &Parsed, dst: bool, old: &Addr, new: &Addr) -> bool {
        // The tunnel interface's packets start at the IP header: its fields at fixed offsets.
        let l4 = p.l4;
        if p.key.family == 4 {
            let from = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]) as u64;
            let to = u32::from_ne_bytes([new[12], new[13], new[14], new[15]]) as u64;
            if self.l3_csum_replace(10, from, to, 4).is_err() {
                return false;
            }
            if let Some((off, flags)) = l4_csum(p.key.proto)
                && self.l4_csum_replace(l4 + off, from, to, flags | 4).is_err()
            {
                return false;
            }
            let v4 = [new[12], new[13], new[14], new[15]];
            self.store(if dst { 16 } else { 12 }, &v4, 0).is_ok()
        } else {
            if let Some((off, flags)) = l4_csum(p.key.proto) {
                // SAFETY: both point to 16 readable bytes (map values: the per-CPU scratch);
                // the helper only reads them.
                let diff = unsafe {
                    bpf_csum_diff(
                        old.as_ptr() as *mut u32,
                        16,
                        new.as_ptr() as *mut u32,
                        16,
                        0,
                    )
                };
                if diff < 0
                    || self
                        .l4_csum_replace(l4 + off, 0, diff as u64, flags)
                        .is_err()
                {
                    return false;
                }
            }
            self.store(if dst { 24 } else { 8 }, new, 0).is_ok()
        }
    }
}
