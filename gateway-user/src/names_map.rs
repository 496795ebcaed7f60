//! The connector's DNS-resource maps (docs/dataplane.md, "Names on the connector"):
//! `NAMES` says, per (device, proxy address), which real address and atom a device's proxy
//! address stands for; `NAT` holds, per translated flow, the real address it was sent to
//! and the proxy address its replies get back. The agent writes `NAMES` and forgets a
//! flow's `NAT` entries when it ends the flow; the kernel writes `NAT`.
//!
//! Both maps are pinned with the others (`maps::PERSISTENT`): an agent re-adopts them, and
//! [`NameMaps::from_pins`] opens them from a pin folder.

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use gateway_common::{
    Addr, FlowKey,
    addr::{from_v4, to_v4},
    maps,
    names::{NameKey, NameValue, NatValue},
    policy::AtomValue,
};
use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

/// One `NAMES` entry: (device, proxy, real address, atoms per key slot).
pub type NameEntry = (IpAddr, IpAddr, IpAddr, [AtomValue; 2]);

/// `NAMES` and `NAT`, typed.
pub struct NameMaps {
    pub names: HashMap<MapData, NameKey, NameValue>,
    pub nat: HashMap<MapData, FlowKey, NatValue>,
}

/// An address in the maps' 16-byte form (IPv4 mapped).
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => from_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte form stands for.
pub fn ip_of(a: &Addr) -> IpAddr {
    match to_v4(a) {
        Some(o) => IpAddr::from(o),
        None => IpAddr::V6(Ipv6Addr::from(*a)),
    }
}

fn key(device: IpAddr, proxy: IpAddr) -> NameKey {
    NameKey {
        device: addr_of(device),
        proxy: addr_of(proxy),
    }
}

/// The reply tuple of translated flow `k` (device -> proxy) sent to `real`, as the kernel
/// keys it: real -> device, ports swapped.
fn reply_tuple(k: &FlowKey, real: &Addr) -> FlowKey {
    FlowKey {
        src: *real,
        dst: k.src,
        src_port: k.dst_port,
        dst_port: k.src_port,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    }
}

fn missing_ok<T>(r: Result<T, aya::maps::MapError>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl NameMaps {
    /// Takes both maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let names = ebpf
            .take_map(maps::NAMES)
            .with_context(|| format!("map {} missing from the eBPF object", maps::NAMES))?;
        let nat = ebpf
            .take_map(maps::NAT)
            .with_context(|| format!("map {} missing from the eBPF object", maps::NAT))?;
        Ok(NameMaps {
            names: HashMap::try_from(names)?,
            nat: HashMap::try_from(nat)?,
        })
    }

    /// Opens both maps from their pins in `map_dir` (the agent's maps folder).
    pub fn from_pins(map_dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = map_dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(NameMaps {
            names: HashMap::try_from(open(maps::NAMES)?)?,
            nat: HashMap::try_from(open(maps::NAT)?)?,
        })
    }

    /// Device `device` reaches the name behind `proxy` at `real`; `atoms[slot]` is the
    /// resource's atom under policy key slot `slot`. Proxy and real must be of one family
    /// (the kernel never translates across families).
    pub fn set(
        &mut self,
        device: IpAddr,
        proxy: IpAddr,
        real: IpAddr,
        atoms: [AtomValue; 2],
    ) -> Result<()> {
        if proxy.is_ipv4() != real.is_ipv4() || device.is_ipv4() != proxy.is_ipv4() {
            bail!("{device} -> {proxy} -> {real}: the addresses are not of one family");
        }
        let v = NameValue {
            real: addr_of(real),
            atoms,
        };
        self.names.insert(key(device, proxy), v, 0)?;
        Ok(())
    }

    /// Forgets (device, proxy); `Ok(false)` when it was not there.
    pub fn remove(&mut self, device: IpAddr, proxy: IpAddr) -> Result<bool> {
        match self.names.remove(&key(device, proxy)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The real address and atoms of (device, proxy).
    pub fn get(&self, device: IpAddr, proxy: IpAddr) -> Result<Option<(IpAddr, [AtomValue; 2])>> {
        Ok(missing_ok(self.names.get(&key(device, proxy), 0))?.map(|v| (ip_of(&v.real), v.atoms)))
    }

    /// Every entry: (device, proxy, real, atoms).
    pub fn entries(&self) -> Result<Vec<NameEntry>> {
        let all: Vec<(NameKey, NameValue)> = crate::batch::read_all(self.names.map())?;
        Ok(all
            .into_iter()
            .map(|(k, v)| (ip_of(&k.device), ip_of(&k.proxy), ip_of(&v.real), v.atoms))
            .collect())
    }

    /// Rewrites `atoms[slot]` of every entry with `f(device, proxy)`; `None` removes the
    /// entry. Called for the inactive slot before a policy flip (and for the old one after
    /// it), as the policy maps are.
    pub fn set_slot_atoms(
        &mut self,
        slot: u8,
        f: impl Fn(IpAddr, IpAddr) -> Option<AtomValue>,
    ) -> Result<()> {
        let slot = usize::from(slot & 1);
        let all: Vec<(NameKey, NameValue)> = crate::batch::read_all(self.names.map())?;
        for (k, mut v) in all {
            match f(ip_of(&k.device), ip_of(&k.proxy)) {
                Some(atom) => {
                    if v.atoms[slot] != atom {
                        v.atoms[slot] = atom;
                        self.names.insert(k, v, 0)?;
                    }
                }
                None => match self.names.remove(&k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(e.into()),
                },
            }
        }
        Ok(())
    }

    /// The real address translated flow `flow` (its key: device -> proxy) was sent to.
    pub fn nat_real(&self, flow: &FlowKey) -> Result<Option<IpAddr>> {
        Ok(missing_ok(self.nat.get(flow, 0))?.map(|v| ip_of(&v.addr)))
    }

    /// Removes both `NAT` entries of translated flow `flow` (its key: device -> proxy).
    pub fn forget_flow(&mut self, flow: &FlowKey) -> Result<()> {
        if let Some(v) = missing_ok(self.nat.get(flow, 0))? {
            match self.nat.remove(&reply_tuple(flow, &v.addr)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match self.nat.remove(flow) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every `NAT` entry (tests and dumps).
    pub fn nat_entries(&self) -> Result<Vec<(FlowKey, IpAddr)>> {
        let all: Vec<(FlowKey, NatValue)> = crate::batch::read_all(self.nat.map())?;
        Ok(all.into_iter().map(|(k, v)| (k, ip_of(&v.addr))).collect())
    }
}
