//! Why the data plane passed or dropped a packet: one enum, one per-CPU counter each.

/// The reason behind every data-plane decision. The value indexes the per-CPU
/// `VERDICT_STATS` array. Each reason maps to exactly one action in [`Reason::passes`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Neither address is in protected space: not the gateway's business.
    Unprotected = 0,
    /// Not IP (ARP, LLDP, ...).
    NotIp = 1,
    /// First packet of a flow, allowed by a grant.
    Allowed = 2,
    /// Packet of a flow already allowed under the current policy generation (fast path).
    Established = 3,
    /// Reply direction of an allowed flow.
    Reply = 4,
    /// ICMP/ICMPv6 error quoting an allowed flow.
    IcmpErrorRelated = 5,
    /// Would be denied, but the resource is in audit mode: passed and reported.
    Audit = 6,
    /// Non-first fragment of a datagram whose first fragment passed with a flow.
    FragmentAllowed = 7,
    /// A deny grant matched.
    DeniedByRule = 8,
    /// Known principal, no grant for this destination, protocol and port.
    DeniedNoGrant = 9,
    /// Source address is no principal this host knows.
    DeniedUnknownSource = 10,
    /// From protected space toward a client and not a reply of an open flow; or, at an
    /// outbound hook, a packet claiming a protected source toward unprotected space.
    DeniedUnsolicited = 11,
    /// Non-first fragment whose first fragment was not seen or opened no flow.
    DeniedFragment = 12,
    /// Truncated or malformed headers, too many VLAN tags or extension headers.
    DeniedMalformed = 13,
    /// An established flow whose cached verdict is denied (a revoked grant, re-decided).
    DeniedEstablished = 14,
    /// An IPv6 packet with an IPv4-mapped source or destination: never an identity.
    DeniedMappedAddress = 15,
    /// Source routing (IPv4 LSRR/SSRR, an IPv6 routing header with segments left): the
    /// packet's real destination is not the one the gateway would decide on.
    DeniedSourceRoute = 16,
    /// Toward protected space at an inbound hook, which never opens flows.
    DeniedDirection = 17,
    /// The host's role is not configured: every IP packet is dropped.
    DeniedUnconfigured = 18,
    /// IPv6 neighbour discovery (ICMPv6 133-137 with hop limit 255: it never crossed a
    /// router): the link's own business, passed in both directions.
    NeighborDiscovery = 19,
    /// Shield (a physical link of a host with the tunnel on): the packet's source or
    /// destination is in protected space. Protected traffic crosses physical links only
    /// encrypted, inside the tunnel; whatever address this one claims, it did not.
    DeniedUntunneled = 20,
    /// Shield ingress: a WireGuard handshake initiation over its source prefix's token
    /// bucket (/32 IPv4, /64 IPv6).
    HandshakeRateLimited = 21,
    /// Tunnel interface: a packet outside protected space (neither address in it). Through
    /// the tunnel a device reaches protected space and nothing else: not the connector's own
    /// addresses, not the networks beyond it.
    DeniedOutsideProtected = 22,
}

/// Number of reasons (size of the per-CPU counter array).
pub const REASONS: u32 = 23;

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Reason; REASONS as usize] = [
        Self::Unprotected,
        Self::NotIp,
        Self::Allowed,
        Self::Established,
        Self::Reply,
        Self::IcmpErrorRelated,
        Self::Audit,
        Self::FragmentAllowed,
        Self::DeniedByRule,
        Self::DeniedNoGrant,
        Self::DeniedUnknownSource,
        Self::DeniedUnsolicited,
        Self::DeniedFragment,
        Self::DeniedMalformed,
        Self::DeniedEstablished,
        Self::DeniedMappedAddress,
        Self::DeniedSourceRoute,
        Self::DeniedDirection,
        Self::DeniedUnconfigured,
        Self::NeighborDiscovery,
        Self::DeniedUntunneled,
        Self::HandshakeRateLimited,
        Self::DeniedOutsideProtected,
    ];

    /// The single place where a reason becomes an action.
    #[inline(always)]
    pub const fn passes(self) -> bool {
        match self {
            Self::Unprotected
            | Self::NotIp
            | Self::Allowed
            | Self::Established
            | Self::Reply
            | Self::IcmpErrorRelated
            | Self::Audit
            | Self::FragmentAllowed
            | Self::NeighborDiscovery => true,
            Self::DeniedByRule
            | Self::DeniedNoGrant
            | Self::DeniedUnknownSource
            | Self::DeniedUnsolicited
            | Self::DeniedFragment
            | Self::DeniedMalformed
            | Self::DeniedEstablished
            | Self::DeniedMappedAddress
            | Self::DeniedSourceRoute
            | Self::DeniedDirection
            | Self::DeniedUnconfigured
            | Self::DeniedUntunneled
            | Self::HandshakeRateLimited
            | Self::DeniedOutsideProtected => false,
        }
    }

    /// Decodes a stored value; anything unknown is malformed (and so denied).
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Reason {
        if v < REASONS {
            Self::ALL[v as usize]
        } else {
            Self::DeniedMalformed
        }
    }

    /// Stable snake_case name for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unprotected => "unprotected",
            Self::NotIp => "not_ip",
            Self::Allowed => "allowed",
            Self::Established => "established",
            Self::Reply => "reply",
            Self::IcmpErrorRelated => "icmp_error_related",
            Self::Audit => "audit",
            Self::FragmentAllowed => "fragment_allowed",
            Self::DeniedByRule => "denied_by_rule",
            Self::DeniedNoGrant => "denied_no_grant",
            Self::DeniedUnknownSource => "denied_unknown_source",
            Self::DeniedUnsolicited => "denied_unsolicited",
            Self::DeniedFragment => "denied_fragment",
            Self::DeniedMalformed => "denied_malformed",
            Self::DeniedEstablished => "denied_established",
            Self::DeniedMappedAddress => "denied_mapped_address",
            Self::DeniedSourceRoute => "denied_source_route",
            Self::DeniedDirection => "denied_direction",
            Self::DeniedUnconfigured => "denied_unconfigured",
            Self::NeighborDiscovery => "neighbor_discovery",
            Self::DeniedUntunneled => "denied_untunneled",
            Self::HandshakeRateLimited => "handshake_rate_limited",
            Self::DeniedOutsideProtected => "denied_outside_protected",
        }
    }
}
