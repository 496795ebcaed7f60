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
/// For TCP and UDP the ports are the transport ports. For ICMP/ICMPv6, `src_port` is the
/// echo identifier (0 for other messages) and `dst_port` is `type << 8 | code`, so echo
/// requests of different pings are different flows. Fragments after the first carry no
/// transport header: both ports are 0 and `flags` has [`FlowKey::FLAG_FRAGMENT`].
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
    /// Set on keys of non-first fragments (no ports).
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

/// Per-flow counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: u64,
    /// Frame bytes as seen by XDP (L2 included).
    pub bytes: u64,
    /// Boot-clock nanoseconds of the first and the latest packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `repr(C)`, no implicit padding (explicit `_pad` fields).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
}
