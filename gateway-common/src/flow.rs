//! The flow key every parsed packet is reduced to.

use crate::addr::Addr;

/// IP protocol numbers the data plane understands.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// One direction of a flow. IPv4 addresses are IPv4-mapped (see [`crate::addr`]).
///
/// For TCP and UDP the ports are the transport ports. For ICMP/ICMPv6 echo request and
/// reply, both ports hold the echo identifier, so different pings are different flows and
/// a reply's reversed key is its request's key; other ICMP messages have `src_port` 0 and
/// `dst_port` = `type << 8 | code`. Fragments after the first carry no
/// transport header: their key has [`FlowKey::FLAG_FRAGMENT`] (see there).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Big-endian.
    pub src_port: [u8; 2],
    /// Big-endian.
    pub dst_port: [u8; 2],
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub flags: u8,
    pub _pad: u8,
}

impl FlowKey {
    /// Set on keys of fragments. Such a key names the fragmented datagram, not a flow: the
    /// ports hold the fragment identification (IPv4: `dst_port` = 16-bit id; IPv6:
    /// `src_port`:`dst_port` = 32-bit id), so later fragments can follow the first.
    pub const FLAG_FRAGMENT: u8 = 1;

    pub const fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.src_port)
    }

    pub const fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }

    /// The key of the opposite direction (for replies).
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            family: self.family,
            flags: self.flags,
            _pad: 0,
        }
    }
}

/// Flow-table value: the cached decision of a flow and its counters.
///
/// A cached decision holds only while the policy generation it was taken under is still
/// active and its rule has not expired (`valid_until_ns`); otherwise the next packet is
/// decided again. Only passing decisions are cached: a denied packet is decided every
/// time, so an attacker cannot fill the table with denied flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    /// Packets and frame bytes in the flow's direction (the key's).
    pub packets: u64,
    pub bytes: u64,
    /// Packets and frame bytes of replies (the reversed key).
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Boot-clock nanoseconds: when the flow was first decided, and when it was last
    /// decided, answered or ended. Packets of the fast path do not read the clock: user
    /// space tells an idle flow by counters that stopped moving.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The decision must be taken again from this boot-clock instant on (rule expiry).
    pub valid_until_ns: u64,
    /// Policy generation the decision was taken under.
    pub generation: u32,
    /// Rule id that decided.
    pub rule: u32,
    /// Principal id of the source (0 when unknown).
    pub principal: u32,
    /// Destination address atom.
    pub atom: u32,
    /// `crate::verdict::Reason` of the decision (`Allowed` or `Audit`).
    pub reason: u8,
    /// `FLOW_*` flags.
    pub flags: u8,
    pub _pad: [u8; 6],
}

impl FlowState {
    /// A FIN or RST was seen; the flow-end event was sent.
    pub const FLAG_ENDED: u8 = 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `repr(C)`, no implicit padding (explicit `_pad` fields).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowState {}
}
