//! The data plane's run-time configuration: one entry of the `CONFIG` array, written by the
//! agent before it attaches any program (from `[dataplane]` in agent.toml). Tuning values
//! live here rather than in the object, so changing them needs no rebuild.

/// The host's role; it fixes each hook's direction (docs/dataplane.md). 0 = not
/// configured: the programs drop every IP packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Connector = 1,
    Device = 2,
}

impl Role {
    pub const fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Connector),
            2 => Some(Role::Device),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// [`Role`] as a byte (0: unconfigured).
    pub role: u8,
    /// Non-zero: the kernel programs write diagnostics through aya-log (off the hot path).
    pub diagnostics: u8,
    pub _pad: [u8; 6],
    /// Key of the hash that places ports and hosts in the scan sets, drawn by the agent
    /// from the OS CSPRNG at start: a scanner cannot pick ports that collide.
    pub hash_key: [u64; 2],
    /// Deny events per source prefix per `deny_window_ns`.
    pub deny_per_source: u32,
    /// Distinct denied ports / protected hosts per source prefix within `scan_window_ns`
    /// that raise a scan alert.
    pub scan_ports: u32,
    pub scan_hosts: u32,
    pub _pad2: u32,
    pub deny_window_ns: u64,
    pub scan_window_ns: u64,
    /// Events per CPU per second, indexed by `EventKind` (index 0 unused). Over budget,
    /// events are counted, not sent.
    pub budget: [u32; crate::event::EVENT_KINDS as usize],
}

impl DataplaneConfig {
    pub const DEFAULT: DataplaneConfig = DataplaneConfig {
        role: 0,
        diagnostics: 0,
        _pad: [0; 6],
        hash_key: [0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9],
        deny_per_source: 5,
        scan_ports: 12,
        scan_hosts: 12,
        _pad2: 0,
        deny_window_ns: 1_000_000_000,
        scan_window_ns: 10_000_000_000,
        // unused, flow_start, flow_end, deny, audit, scan_alert
        budget: [0, 50_000, 50_000, 2_000, 2_000, 100],
    };
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `repr(C)`, explicit padding.
    unsafe impl aya::Pod for super::DataplaneConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_implicit_padding() {
        assert_eq!(
            core::mem::size_of::<DataplaneConfig>(),
            8 + 16 + 16 + 16 + 24
        );
    }
}
