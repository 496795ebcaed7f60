//! The flow key every parsed packet is reduced to, and what the flow tables remember.

use crate::addr::Addr;

/// IP protocol numbers the data plane understands.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// One direction of a flow. IPv4 addresses are IPv4-mapped (see [`crate::addr`]); an IPv6
/// packet whose address is IPv4-mapped never gets a key (the parser refuses it), so the two
/// families cannot meet in one key.
///
/// For TCP and UDP the ports are the transport ports. For ICMP/ICMPv6 echo request and
/// reply, both ports hold the echo identifier, so different pings are different flows and
/// a reply's reversed key is its request's key; other ICMP messages have `src_port` 0 and
/// `dst_port` = `type << 8 | code`. Other protocols have both ports 0.
///
/// Aligned to 8 bytes (40 bytes, every field at the offset it had unaligned, so no map or
/// event layout changes): the kernel programs then copy, clear and compare keys and
/// addresses a word at a time instead of a byte at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
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
    /// Reserved (0).
    pub _pad: [u8; 2],
}

impl FlowKey {
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
            _pad: [0; 2],
        }
    }
}

/// Which way a packet travels relative to protected space (see docs/dataplane.md).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client toward protected space: the only direction that opens flows.
    Outbound = 1,
    /// Protected space toward a client: replies, related ICMP errors, unprotected traffic.
    Inbound = 2,
}

impl Direction {
    pub const fn from_u8(v: u8) -> Option<Direction> {
        match v {
            1 => Some(Direction::Outbound),
            2 => Some(Direction::Inbound),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Flow-table value: the cached decision of a flow and its counters.
///
/// A cached decision holds only while the policy generation it was taken under is still
/// active and its rule has not expired (`valid_until_ns`); otherwise the next packet is
/// decided again. Only passing decisions of known principals are cached: a denied packet is
/// decided every time, so an attacker cannot fill the table with denied flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    /// Packets and frame bytes in the flow's direction (the key's). Updated with atomic
    /// adds: several CPUs may carry one flow.
    pub packets: u64,
    pub bytes: u64,
    /// Packets and frame bytes of replies (the reversed key).
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Boot-clock nanoseconds: when the flow was first decided, and when it was last
    /// decided again. Packets of the fast path do not read the clock: user space tells an
    /// idle flow by counters that stopped moving.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The decision must be taken again from this boot-clock instant on (rule expiry).
    pub valid_until_ns: u64,
    /// Policy generation the decision was taken under.
    pub generation: u32,
    /// Rule id that decided.
    pub rule: u32,
    /// Principal id of the source.
    pub principal: u32,
    /// Destination address atom.
    pub atom: u32,
    /// Interface the flow was opened on.
    pub ifindex: u32,
    /// `FlowState::SEEN_*` bits.
    pub flags: u32,
    /// `crate::verdict::Reason` of the decision (`Allowed` or `Audit`).
    pub reason: u8,
    pub _pad: [u8; 7],
}

impl FlowState {
    /// A packet in the reply direction passed.
    pub const SEEN_REPLY: u32 = 1;
    /// TCP: a FIN from the client / from the resource.
    pub const SEEN_FIN_ORIG: u32 = 2;
    pub const SEEN_FIN_REPLY: u32 = 4;
    /// TCP: a RST in either direction.
    pub const SEEN_RST: u32 = 8;
    /// Connector tunnel interface: a flow toward a DNS resource's proxy address, whose
    /// packets are rewritten to the real address (the key keeps the proxy address; the
    /// real one is in `NAT`). docs/dataplane.md, "Names on the connector".
    pub const TRANSLATED: u32 = 16;
}

/// Names one fragmented datagram, so that its later fragments (which carry no ports) can
/// follow its first. IPv4 datagrams are named by (source, destination, protocol, 16-bit
/// id), IPv6 ones by (source, destination, 32-bit id) as their reassembly is (RFC 8200):
/// `proto` is 0 for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4: `[0, 0, id_hi, id_lo]`; IPv6: the 32-bit identification, big-endian.
    pub id: [u8; 4],
    pub proto: u8,
    pub family: u8,
    /// [`Direction`] the first fragment passed in.
    pub dir: u8,
    pub _pad: u8,
}

/// What a later fragment needs: the generation its first fragment passed under and the
/// flow it belongs to (its bytes are counted there).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragState {
    pub flow: FlowKey,
    pub generation: u32,
    /// Non-zero when `flow` is the reversed key (the datagram is a reply).
    pub reply: u8,
    pub _pad: [u8; 3],
}

/// One slot of a CPU's cache of repeated denials (`DENY_CACHE`, docs/dataplane.md
/// "Repeated denials"): a policy decision to deny `key` taken under `generation` while its
/// source was over its event limit, answered from here until `until_ns`: the first of the
/// rule's expiry and the ends of the source's deny and scan windows, on the coarse
/// monotonic clock (`bpf_ktime_get_coarse_ns`, one scheduler tick of resolution: the
/// precise boot clock costs a fifth of a repeated denial in a VM, where reading the TSC is
/// slow; `u64::MAX` = no end).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyCacheEntry {
    pub key: FlowKey,
    pub generation: u32,
    /// The `Reason` of the decision.
    pub reason: u8,
    pub _pad: [u8; 3],
    pub until_ns: u64,
    /// Denials answered from this slot and not yet added to the source's suppressed
    /// count (added when the slot stops answering for its tuple or is taken by another).
    pub suppressed: u32,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `repr(C)`, no implicit padding (explicit `_pad` fields).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyCacheEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowState>(), 7 * 8 + 6 * 4 + 8);
        assert_eq!(size_of::<FragKey>(), 16 + 16 + 4 + 4);
        assert_eq!(size_of::<FragState>(), size_of::<FlowKey>() + 8);
    }
}
