//! Outcomes of the packet parser, one per-CPU counter each.

/// What the parser made of a frame. The value indexes the per-CPU `PARSE_STATS` array.
///
/// Every frame gets exactly one outcome. Outcomes from [`ParseOutcome::Truncated`] on are
/// frames the parser could not turn into a flow key; the data plane never allows those
/// into protected space.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParseOutcome {
    /// IPv4 TCP with both ports.
    Ipv4Tcp = 0,
    /// IPv4 UDP with both ports.
    Ipv4Udp = 1,
    /// IPv4 ICMP with type and code.
    Ipv4Icmp = 2,
    /// IPv4 with another transport protocol (no ports).
    Ipv4Other = 3,
    /// IPv4 fragment other than the first: it carries no transport header.
    Ipv4Fragment = 4,
    /// IPv6 TCP with both ports.
    Ipv6Tcp = 5,
    /// IPv6 UDP with both ports.
    Ipv6Udp = 6,
    /// ICMPv6 with type and code.
    Ipv6Icmp = 7,
    /// IPv6 with another transport protocol (no ports).
    Ipv6Other = 8,
    /// IPv6 fragment other than the first: it carries no transport header.
    Ipv6Fragment = 9,
    /// Not IP (ARP, LLDP, ...). Passed untouched.
    NotIp = 10,
    /// A header runs past the end of the frame.
    Truncated = 11,
    /// A header field is impossible: wrong IP version, IHL < 5, TCP data offset < 5,
    /// IPv4 total length shorter than its header, a malformed IPv4 option, a misplaced
    /// hop-by-hop header, two fragment headers, a first fragment too short for its
    /// transport header.
    Malformed = 12,
    /// More than [`MAX_VLAN_TAGS`] VLAN tags.
    TooManyVlans = 13,
    /// More than [`MAX_IPV6_EXT_HEADERS`] IPv6 extension headers.
    TooManyExtHeaders = 14,
    /// IPv6 with an IPv4-mapped source or destination address.
    MappedAddress = 15,
    /// IPv4 source-route option (LSRR/SSRR) or IPv6 routing header with segments left.
    SourceRoute = 16,
}

/// Number of parse outcomes (size of the per-CPU counter array).
pub const PARSE_OUTCOMES: u32 = 17;

/// VLAN tags (802.1Q / 802.1ad) the parser walks before giving up.
pub const MAX_VLAN_TAGS: usize = 2;

/// IPv6 extension headers the parser walks before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

impl ParseOutcome {
    /// Every outcome, in counter-index order.
    pub const ALL: [ParseOutcome; PARSE_OUTCOMES as usize] = [
        Self::Ipv4Tcp,
        Self::Ipv4Udp,
        Self::Ipv4Icmp,
        Self::Ipv4Other,
        Self::Ipv4Fragment,
        Self::Ipv6Tcp,
        Self::Ipv6Udp,
        Self::Ipv6Icmp,
        Self::Ipv6Other,
        Self::Ipv6Fragment,
        Self::NotIp,
        Self::Truncated,
        Self::Malformed,
        Self::TooManyVlans,
        Self::TooManyExtHeaders,
        Self::MappedAddress,
        Self::SourceRoute,
    ];

    /// Stable snake_case name, used in metrics and test output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4Tcp => "ipv4_tcp",
            Self::Ipv4Udp => "ipv4_udp",
            Self::Ipv4Icmp => "ipv4_icmp",
            Self::Ipv4Other => "ipv4_other",
            Self::Ipv4Fragment => "ipv4_fragment",
            Self::Ipv6Tcp => "ipv6_tcp",
            Self::Ipv6Udp => "ipv6_udp",
            Self::Ipv6Icmp => "ipv6_icmp",
            Self::Ipv6Other => "ipv6_other",
            Self::Ipv6Fragment => "ipv6_fragment",
            Self::NotIp => "not_ip",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::TooManyVlans => "too_many_vlans",
            Self::TooManyExtHeaders => "too_many_ext_headers",
            Self::MappedAddress => "mapped_address",
            Self::SourceRoute => "source_route",
        }
    }

    /// True when the frame yielded a usable flow key.
    pub const fn has_flow(self) -> bool {
        (self as u32) < Self::NotIp as u32
    }
}
