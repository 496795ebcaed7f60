//! DNS resources on a connector: a device reaches a name through a per-device *proxy
//! address* its stub resolver handed out; the connector's agent resolves the name and
//! tells the kernel, per (device, proxy), the real address and the resource's atom. The
//! tunnel programs decide such a flow by that atom and translate proxy <-> real
//! (docs/dataplane.md, "Names on the connector").

use crate::{addr::Addr, policy::AtomValue};

/// Key of the `NAMES` hash: a device's address and the proxy address it sent to (both in
/// the 16-byte form, IPv4 mapped). Proxy addresses collide across devices, so the device
/// is part of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NameKey {
    pub device: Addr,
    pub proxy: Addr,
}

/// Value of the `NAMES` hash: the real address the name resolved to (same family as the
/// proxy, or nothing is translated), and the resource's atom under each policy key slot
/// (`atoms[generation & 1]`; user space keeps both slots right across a policy flip).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NameValue {
    pub real: Addr,
    pub atoms: [AtomValue; 2],
}

/// Value of the `NAT` LRU hash: the address a translated flow's packets get (the real
/// address for the original tuple, the proxy address for the reply tuple).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NatValue {
    pub addr: Addr,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): plain-old-data, `repr(C)`, no padding (asserted below).
    unsafe impl aya::Pod for super::NameKey {}
    unsafe impl aya::Pod for super::NameValue {}
    unsafe impl aya::Pod for super::NatValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<NameKey>(), 32);
        assert_eq!(size_of::<NameValue>(), 16 + 2 * 12);
        assert_eq!(size_of::<NatValue>(), 16);
    }
}
