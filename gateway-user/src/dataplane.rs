//! The loaded eBPF object and typed access to its maps.
//!
//! Map and program names come from `gateway_common::maps` only; nothing else in user space
//! spells them. Maps are taken out of the object as owned, typed handles, so the policy
//! writer, the event reader and the statistics can hold them at the same time.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SchedClassifier, Xdp, XdpMode, xdp::XdpLinkId},
};
use gateway_common::{
    Event, FlowKey, FlowState, ParseOutcome, Reason, maps,
    policy::{AtomValue, DstKey, RuleKey, RuleValue, SrcKey, SrcValue},
};
use std::path::Path;

/// The eBPF object built by `build.rs` from `gateway-ebpf`, embedded in this binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// The policy maps, written by [`crate::writer::PolicyWriter`].
pub struct PolicyMaps {
    pub active: Array<MapData, u32>,
    pub src: HashMap<MapData, SrcKey, SrcValue>,
    pub dst: LpmTrie<MapData, DstKey, AtomValue>,
    pub rules: LpmTrie<MapData, RuleKey, RuleValue>,
}

/// The gateway's programs and maps, loaded into the kernel (not necessarily attached).
pub struct Dataplane {
    ebpf: Ebpf,
    pub policy: PolicyMaps,
    pub flows: HashMap<MapData, FlowKey, FlowState>,
    parse_stats: PerCpuArray<MapData, u64>,
    verdict_stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    events_lost: PerCpuArray<MapData, u64>,
}

/// Per-CPU counters summed over CPUs, indexed by an enum's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters<const N: usize>(pub [u64; N]);

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters([0; N])
    }
}

impl<const N: usize> Counters<N> {
    /// Counter-wise difference `self - earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut d = Self::default();
        for (i, v) in d.0.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(earlier.0[i]);
        }
        d
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Parse-outcome counters, indexed like [`ParseOutcome::ALL`].
pub type ParseStats = Counters<{ ParseOutcome::ALL.len() }>;
/// Verdict-reason counters, indexed like [`Reason::ALL`].
pub type VerdictStats = Counters<{ Reason::ALL.len() }>;

impl ParseStats {
    pub fn get(&self, outcome: ParseOutcome) -> u64 {
        self.0[outcome as usize]
    }
}

impl VerdictStats {
    pub fn reason(&self, reason: Reason) -> u64 {
        self.0[reason as usize]
    }

    /// Non-zero counters by name, for messages.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .filter(|r| self.0[**r as usize] > 0)
            .map(|r| (r.name(), self.0[*r as usize]))
            .collect()
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

impl Dataplane {
    /// Loads the embedded object and its programs into the kernel without attaching them.
    pub fn load() -> Result<Self> {
        Self::load_with(None)
    }

    /// Like [`Dataplane::load`], but the maps of `maps::PERSISTENT` are pinned in
    /// `map_dir`: existing pins are re-adopted (state survives the agent), missing ones are
    /// created and pinned.
    pub fn load_pinned(map_dir: &Path) -> Result<Self> {
        Self::load_with(Some(map_dir))
    }

    fn load_with(map_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        if let Some(dir) = map_dir {
            for name in maps::PERSISTENT {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the gateway eBPF object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut(maps::PROG_XDP_INGRESS)
                .context("XDP program missing from the object")?
                .try_into()?;
            prog.load()
                .context("the kernel verifier rejected the XDP program")?;
        }
        for name in [
            maps::PROG_XDP_NOOP,
            maps::PROG_XDP_DROP_ALL,
            maps::PROG_XDP_TRAFFICGEN,
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(maps::PROG_TC_EGRESS)
                .context("TC program missing from the object")?
                .try_into()?;
            prog.load()
                .context("the kernel verifier rejected the TC program")?;
        }
        let policy = PolicyMaps {
            active: Array::try_from(take(&mut ebpf, maps::ACTIVE)?)?,
            src: HashMap::try_from(take(&mut ebpf, maps::SRC)?)?,
            dst: LpmTrie::try_from(take(&mut ebpf, maps::DST)?)?,
            rules: LpmTrie::try_from(take(&mut ebpf, maps::RULES)?)?,
        };
        Ok(Self {
            flows: HashMap::try_from(take(&mut ebpf, maps::FLOWS)?)?,
            parse_stats: PerCpuArray::try_from(take(&mut ebpf, maps::PARSE_STATS)?)?,
            verdict_stats: PerCpuArray::try_from(take(&mut ebpf, maps::VERDICT_STATS)?)?,
            events: Some(RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?),
            events_lost: PerCpuArray::try_from(take(&mut ebpf, maps::EVENTS_LOST)?)?,
            policy,
            ebpf,
        })
    }

    /// The XDP ingress program.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(maps::PROG_XDP_INGRESS)
            .context("XDP program missing from the object")?
            .try_into()?)
    }

    /// Another XDP program of the object by name (`maps::PROG_XDP_NOOP`, ...).
    pub fn xdp_named(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?)
    }

    /// The XDP program and the policy maps at once (a thread can run packets while
    /// another writes policy).
    pub fn xdp_and_policy(&mut self) -> Result<(&mut Xdp, &mut PolicyMaps)> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(maps::PROG_XDP_INGRESS)
            .context("XDP program missing from the object")?
            .try_into()?;
        Ok((xdp, &mut self.policy))
    }

    /// The TC egress program.
    pub fn tc(&mut self) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(maps::PROG_TC_EGRESS)
            .context("TC program missing from the object")?
            .try_into()?)
    }

    /// Attaches the XDP program to `iface` (in the calling thread's network namespace).
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.xdp()?
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP ({mode:?}) to {iface}"))
    }

    /// Attaches the TC program to `iface`'s egress with tcx (in the calling thread's
    /// network namespace).
    pub fn attach_tc_egress(&mut self, iface: &str) -> Result<()> {
        use aya::programs::{LinkOrder, TcAttachType, tc::TcAttachOptions};
        self.tc()?
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching TC egress (tcx) to {iface}"))?;
        Ok(())
    }

    /// Takes the event ring buffer (once) for an event reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Every event waiting in the ring buffer (none once the buffer was taken).
    pub fn drain_events(&mut self) -> Vec<Event> {
        match self.events.as_mut() {
            Some(rb) => drain(rb),
            None => Vec::new(),
        }
    }

    /// Parse-outcome counters, summed over CPUs.
    pub fn parse_stats(&self) -> Result<ParseStats> {
        let mut stats = ParseStats::default();
        for outcome in ParseOutcome::ALL {
            let per_cpu = self.parse_stats.get(&(outcome as u32), 0)?;
            stats.0[outcome as usize] = per_cpu.iter().sum();
        }
        Ok(stats)
    }

    /// Verdict-reason counters, summed over CPUs.
    pub fn verdict_stats(&self) -> Result<VerdictStats> {
        let mut stats = VerdictStats::default();
        for reason in Reason::ALL {
            let per_cpu = self.verdict_stats.get(&(reason as u32), 0)?;
            stats.0[reason as usize] = per_cpu.iter().sum();
        }
        Ok(stats)
    }

    /// Events lost to a full ring buffer, summed over CPUs.
    pub fn events_lost(&self) -> Result<u64> {
        Ok(self.events_lost.get(&0, 0)?.iter().sum())
    }

    /// The loaded object, for pinning its programs.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Every flow in the flow table.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowState)>> {
        self.flows
            .iter()
            .map(|r| r.map_err(anyhow::Error::from))
            .collect()
    }

    /// The state of one flow, if the table has it.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowState>> {
        match self.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The active policy generation.
    pub fn active_generation(&self) -> Result<u32> {
        Ok(self.policy.active.get(&0, 0)?)
    }
}

/// Reads every event waiting in `rb`. Records of the wrong size are skipped (they cannot
/// come from this object's programs).
pub fn drain(rb: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        if item.len() == std::mem::size_of::<Event>() {
            // SAFETY: the record is exactly one `Event` (plain data, any bit pattern valid);
            // read unaligned because the ring buffer only guarantees 8-byte alignment.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
    }
    out
}

/// An LPM trie key, for callers that build keys by hand.
pub fn lpm_key<K: aya::Pod>(prefix_len: u32, data: K) -> Key<K> {
    Key::new(prefix_len, data)
}
