//! One address representation for both families.
//!
//! Map keys hold IPv6 addresses as-is and IPv4 addresses as IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), so one map and one lookup serve both families.
//! Bytes are in network order.

/// A 16-byte address in network byte order; IPv4 is stored IPv4-mapped.
pub type Addr = [u8; 16];

/// The 12-byte prefix of an IPv4-mapped IPv6 address.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Number of leading bits an IPv4 prefix length is offset by inside a mapped address.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Maps an IPv4 address (network byte order) into the shared 16-byte form.
#[inline(always)]
pub const fn from_v4(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Returns the IPv4 octets if `addr` is IPv4-mapped.
#[inline(always)]
pub fn to_v4(addr: &Addr) -> Option<[u8; 4]> {
    if addr[..12] == V4_MAPPED_PREFIX {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}
