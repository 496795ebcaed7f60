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
    /// Non-zero: this host carries protected traffic in the WireGuard tunnel; the fields
    /// below are set. The shield programs on the physical links read them (which programs
    /// run where is fixed by what the agent attached, not by this flag).
    pub tunnel: u8,
    pub _pad3: u8,
    /// UDP port of the tunnel's WireGuard listener, in network byte order (as it sits in
    /// the UDP header). `[0, 0]`: no listener, no handshake limit.
    pub wg_port: [u8; 2],
    /// Handshake initiations accepted per source prefix (/32 IPv4, /64 IPv6) per second at
    /// a shield's ingress, and the burst above that rate. 0: no limit.
    pub handshakes_per_source: u32,
    pub handshake_burst: u32,
    pub _pad4: u32,
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
        tunnel: 0,
        _pad3: 0,
        wg_port: [0; 2],
        handshakes_per_source: 0,
        handshake_burst: 0,
        _pad4: 0,
    };

    /// This configuration with the tunnel on: WireGuard listening on UDP `wg_port` (0:
    /// none), `handshakes_per_source` initiations per source prefix per second accepted
    /// at a shield's ingress, `handshake_burst` above that rate.
    pub const fn with_tunnel(
        mut self,
        wg_port: u16,
        handshakes_per_source: u32,
        handshake_burst: u32,
    ) -> DataplaneConfig {
        self.tunnel = 1;
        self.wg_port = wg_port.to_be_bytes();
        self.handshakes_per_source = handshakes_per_source;
        self.handshake_burst = handshake_burst;
        self
    }

    /// This configuration with the tunnel off (its fields cleared).
    pub const fn without_tunnel(mut self) -> DataplaneConfig {
        self.tunnel = 0;
        self.wg_port = [0; 2];
        self.handshakes_per_source = 0;
        self.handshake_burst = 0;
        self
    }

    /// The WireGuard port as a number.
    pub const fn wg_port(&self) -> u16 {
        u16::from_be_bytes(self.wg_port)
    }
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
            8 + 16 + 16 + 16 + 24 + 16
        );
    }
}
