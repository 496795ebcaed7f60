//! The loaded eBPF object and typed access to its maps.
//!
//! Map names come from `gateway_common::maps` only; nothing else in user space spells them.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use gateway_common::{FlowKey, FlowStats, ParseOutcome, maps};

/// The eBPF object built by `build.rs` from `gateway-ebpf`, embedded in this binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// The gateway's programs and maps, loaded into the kernel (not necessarily attached).
pub struct Dataplane {
    ebpf: Ebpf,
}

/// Parse-outcome counters summed over CPUs, indexed like [`ParseOutcome::ALL`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats(pub [u64; ParseOutcome::ALL.len()]);

impl ParseStats {
    pub fn get(&self, outcome: ParseOutcome) -> u64 {
        self.0[outcome as usize]
    }

    /// Counter-wise difference `self - earlier`.
    pub fn since(&self, earlier: &ParseStats) -> ParseStats {
        let mut d = ParseStats::default();
        for (i, v) in d.0.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(earlier.0[i]);
        }
        d
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Dataplane {
    /// Loads the embedded object and its XDP program into the kernel without attaching it.
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .context("loading the gateway eBPF object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        let prog: &mut Xdp = ebpf
            .program_mut(maps::PROG_XDP_INGRESS)
            .context("XDP program missing from the object")?
            .try_into()?;
        prog.load()
            .context("the kernel verifier rejected the XDP program")?;
        Ok(Self { ebpf })
    }

    /// The XDP ingress program.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(maps::PROG_XDP_INGRESS)
            .context("XDP program missing from the object")?
            .try_into()?)
    }

    /// Attaches the XDP program to `iface` (in the calling thread's network namespace).
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.xdp()?
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP ({mode:?}) to {iface}"))
    }

    /// Parse-outcome counters, summed over CPUs.
    pub fn parse_stats(&self) -> Result<ParseStats> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::PARSE_STATS)
                .context("PARSE_STATS map missing")?,
        )?;
        let mut stats = ParseStats::default();
        for outcome in ParseOutcome::ALL {
            let per_cpu = map.get(&(outcome as u32), 0)?;
            stats.0[outcome as usize] = per_cpu.iter().sum();
        }
        Ok(stats)
    }

    /// Every flow in the flow table.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowStats)>> {
        let map: HashMap<&MapData, FlowKey, FlowStats> =
            HashMap::try_from(self.ebpf.map(maps::FLOWS).context("FLOWS map missing")?)?;
        map.iter().map(|r| r.map_err(anyhow::Error::from)).collect()
    }

    /// The counters of one flow, if the table has it.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowStats>> {
        let map: HashMap<&MapData, FlowKey, FlowStats> =
            HashMap::try_from(self.ebpf.map(maps::FLOWS).context("FLOWS map missing")?)?;
        match map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
