//! Events the data plane sends to user space: once per flow (start, end, audit) on the flow
//! ring, and per denied packet (deny, scan alerts), limited, on the alert ring. Two rings,
//! so that a flood of denials never takes the room flow records need.

use crate::flow::FlowKey;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// First packet of an allowed flow.
    FlowStart = 1,
    /// The flow ended (reaped idle, revoked, evicted): counters are final. `detail` is a
    /// [`FlowEndCause`].
    FlowEnd = 2,
    /// A denied packet (rate-limited per source prefix and by a per-CPU budget).
    Deny = 3,
    /// First packet of a principal's flow passed in audit mode, or (rate-limited like
    /// denials) a packet of an unknown source passed in audit mode.
    Audit = 4,
    /// One source prefix hit the scan threshold within the window. `detail` is a
    /// [`ScanKind`], `count` the distinct ports or hosts seen.
    ScanAlert = 5,
}

/// Number of event kinds plus one (kinds start at 1): the size of the budget array.
pub const EVENT_KINDS: u32 = 6;

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        Self::FlowStart,
        Self::FlowEnd,
        Self::Deny,
        Self::Audit,
        Self::ScanAlert,
    ];

    pub const fn from_u8(v: u8) -> Option<EventKind> {
        match v {
            1 => Some(Self::FlowStart),
            2 => Some(Self::FlowEnd),
            3 => Some(Self::Deny),
            4 => Some(Self::Audit),
            5 => Some(Self::ScanAlert),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::FlowStart => "flow_start",
            Self::FlowEnd => "flow_end",
            Self::Deny => "deny",
            Self::Audit => "audit",
            Self::ScanAlert => "scan_alert",
        }
    }
}

/// Why a flow ended (`Event::detail` of a flow_end).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowEndCause {
    /// The agent reaped it after its idle timeout.
    Idle = 1,
    /// A policy change revoked it (the kernel removed it on its next packet).
    Revoked = 2,
    /// The flow table evicted it to make room (the agent noticed it gone).
    Evicted = 3,
    /// The agent removed it at shutdown or detach.
    Shutdown = 4,
}

impl FlowEndCause {
    pub const fn from_u8(v: u8) -> Option<FlowEndCause> {
        match v {
            1 => Some(Self::Idle),
            2 => Some(Self::Revoked),
            3 => Some(Self::Evicted),
            4 => Some(Self::Shutdown),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Revoked => "revoked",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What a scan alert counted (`Event::detail` of a scan_alert).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScanKind {
    /// Distinct destination ports (vertical scan).
    Ports = 1,
    /// Distinct protected destination hosts (horizontal scan).
    Hosts = 2,
}

impl ScanKind {
    pub const fn from_u8(v: u8) -> Option<ScanKind> {
        match v {
            1 => Some(Self::Ports),
            2 => Some(Self::Hosts),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Ports => "ports",
            Self::Hosts => "hosts",
        }
    }
}

/// One ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// [`EventKind`].
    pub kind: u8,
    /// [`crate::Reason`].
    pub reason: u8,
    /// [`crate::flow::Direction`] of the packet.
    pub dir: u8,
    /// flow_end: [`FlowEndCause`]; scan_alert: [`ScanKind`]; otherwise 0.
    pub detail: u8,
    pub rule: u32,
    pub principal: u32,
    pub atom: u32,
    pub ifindex: u32,
    pub generation: u32,
    /// The packet's flow key. For a denied malformed packet, the fields the parser could
    /// read (addresses at least; ports when the transport header's start was readable).
    pub key: FlowKey,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Boot-clock nanoseconds: the flow's first packet, and this event.
    pub first_seen_ns: u64,
    pub ts_ns: u64,
    /// Scan alerts: distinct ports or hosts seen in the window; deny events: events of this
    /// source prefix suppressed by its rate limit since its previous one.
    pub count: u32,
    /// Events of this kind this CPU suppressed (budget exhausted) since its previous one.
    pub suppressed: u32,
    /// flow_start/flow_end: the flow's `FlowState::SEEN_*` bits.
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// Per source prefix (/32 IPv4, /64 IPv6): deny rate limiting and scan detection (an LRU
/// map; new entries are not created while this CPU is over its deny budget, so a flood of
/// spoofed sources cannot evict the state of a real scanner).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceState {
    pub deny_window_start_ns: u64,
    pub scan_window_start_ns: u64,
    /// 256-bit sets of keyed hashes of denied destination ports and protected hosts.
    pub scan_ports: [u64; 4],
    pub scan_hosts: [u64; 4],
    pub deny_events: u32,
    pub deny_suppressed: u32,
    pub ports_distinct: u32,
    pub hosts_distinct: u32,
    /// `ScanKind` bits already alerted in this window.
    pub alerted: u32,
    pub _pad: u32,
}

/// Per-CPU budget of one event kind: events sent in the current one-second window, and
/// events suppressed since the last one sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Budget {
    pub window_start_ns: u64,
    pub sent: u32,
    pub suppressed: u32,
    /// Suppressed since the map was created (for metrics).
    pub suppressed_total: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): plain-old-data, `repr(C)`, explicit padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::Budget {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Event>(), 4 + 5 * 4 + 40 + 6 * 8 + 8 + 8);
        assert_eq!(size_of::<SourceState>(), 16 + 64 + 24);
        assert_eq!(size_of::<Budget>(), 24);
    }
}
