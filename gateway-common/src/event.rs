//! Events the data plane sends to user space through the ring buffer: once per flow (start,
//! end), deny (rate-limited per source), audit, and port-scan alerts.

use crate::flow::FlowKey;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// First packet of an allowed flow.
    FlowStart = 1,
    /// A FIN or RST was seen (or the agent reaped an idle flow): counters are final.
    FlowEnd = 2,
    /// A denied packet (at most `DENY_EVENTS_PER_WINDOW` per source and window).
    Deny = 3,
    /// First packet of a flow passed in audit mode.
    Audit = 4,
    /// One source hit `SCAN_THRESHOLD` distinct denied ports within `SCAN_WINDOW_NS`.
    ScanAlert = 5,
}

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

/// One ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// [`EventKind`].
    pub kind: u8,
    /// [`crate::Reason`].
    pub reason: u8,
    pub _pad: [u8; 2],
    pub rule: u32,
    pub principal: u32,
    pub atom: u32,
    pub ifindex: u32,
    pub generation: u32,
    pub key: FlowKey,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Boot-clock nanoseconds: the flow's first packet, and this event.
    pub first_seen_ns: u64,
    pub ts_ns: u64,
    /// Scan alerts: distinct denied ports seen in the window; deny events: events of this
    /// source suppressed by the rate limit since the previous one.
    pub count: u32,
    pub _pad2: u32,
}

/// Per-source state for deny rate limiting and port-scan detection (LRU by source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceState {
    pub deny_window_start_ns: u64,
    pub scan_window_start_ns: u64,
    /// 256-bit set of hashed denied destination ports in the current scan window.
    pub scan_ports: [u64; 4],
    pub deny_events: u32,
    pub deny_suppressed: u32,
    pub scan_distinct: u32,
    pub scan_alerted: u32,
}

/// Deny events per source per window.
pub const DENY_EVENTS_PER_WINDOW: u32 = 5;
/// Deny rate-limit window.
pub const DENY_WINDOW_NS: u64 = 1_000_000_000;
/// Distinct denied destination ports from one source that raise a scan alert.
pub const SCAN_THRESHOLD: u32 = 12;
/// Port-scan detection window.
pub const SCAN_WINDOW_NS: u64 = 10_000_000_000;

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): plain-old-data, `repr(C)`, explicit padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SourceState {}
}
