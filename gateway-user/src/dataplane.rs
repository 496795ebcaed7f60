//! The loaded eBPF object and typed access to its maps.
//!
//! Map and program names come from `gateway_common::maps` only; nothing else in user space
//! spells them. Maps are taken out of the object as owned, typed handles, so the policy
//! writer, the event reader and the statistics can hold them at the same time.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, PerCpuArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{SchedClassifier, Xdp, XdpMode, xdp::XdpLinkId},
};
use gateway_common::{
    DataplaneConfig, Event, FlowKey, FlowState, FragKey, FragState, ParseOutcome, Reason,
    event::Budget,
    maps::{self, FlowCounter, Ring},
    policy::{AtomValue, DstKey, RuleKey, RuleValue, SrcKey, SrcValue},
};
use std::path::Path;

/// The eBPF object built by `build.rs` from `gateway-ebpf`, embedded in this binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// The benchmark programs' object (no-op, drop-all, traffic generator, a tc pass-all), built
/// from the same crate, embedded only with the `testing` feature and never loaded by the
/// agent: only [`Dataplane::load_with_bench`] loads it.
#[cfg(feature = "testing")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-bench"));

/// The policy maps, written by [`crate::writer::PolicyWriter`].
pub struct PolicyMaps {
    pub active: Array<MapData, u32>,
    pub src: HashMap<MapData, SrcKey, SrcValue>,
    /// Destination prefixes shorter than a host; full hosts are in `dst_hosts`.
    pub dst: LpmTrie<MapData, DstKey, AtomValue>,
    pub dst_hosts: HashMap<MapData, DstKey, AtomValue>,
    /// Port blocks and rules without ports; single ports are in `rules_exact`.
    pub rules: LpmTrie<MapData, RuleKey, RuleValue>,
    pub rules_exact: HashMap<MapData, RuleKey, RuleValue>,
    /// Which addresses may be sources in `src` (`None`: maps opened from pins by a reader,
    /// without the object's filter); the writer adds a generation's sources before making
    /// it active.
    pub src_filter: Option<crate::src_filter::SourceFilter>,
}

/// The flow tables: TCP, everything else, and fragmented datagrams in flight.
pub struct FlowMaps {
    pub tcp: HashMap<MapData, FlowKey, FlowState>,
    pub other: HashMap<MapData, FlowKey, FlowState>,
    pub frags: HashMap<MapData, FragKey, FragState>,
}

impl FlowMaps {
    /// The table a flow of `proto` lives in.
    pub fn table(&self, proto: u8) -> &HashMap<MapData, FlowKey, FlowState> {
        if proto == gateway_common::flow::proto::TCP {
            &self.tcp
        } else {
            &self.other
        }
    }

    pub fn table_mut(&mut self, proto: u8) -> &mut HashMap<MapData, FlowKey, FlowState> {
        if proto == gateway_common::flow::proto::TCP {
            &mut self.tcp
        } else {
            &mut self.other
        }
    }

    /// Every flow of both tables (read in batches of the kernel's choosing).
    pub fn all(&self) -> Result<Vec<(FlowKey, FlowState)>> {
        let mut out = crate::batch::read_all(self.tcp.map())?;
        out.extend(crate::batch::read_all(self.other.map())?);
        Ok(out)
    }

    /// One flow, if a table has it.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowState>> {
        match self.table(key.proto).get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes one flow; `Ok(false)` when it was not there.
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool> {
        match self.table_mut(key.proto).remove(key) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Empties every table (tests: each packet a first decision).
    pub fn clear(&mut self) -> Result<()> {
        for (k, _) in self.all()? {
            self.remove(&k)?;
        }
        let frags: Vec<FragKey> = self.frags.keys().filter_map(|k| k.ok()).collect();
        for k in frags {
            let _ = self.frags.remove(&k);
        }
        Ok(())
    }

    /// Fragmented datagrams being followed.
    pub fn frags(&self) -> Result<Vec<(FragKey, FragState)>> {
        crate::batch::read_all(self.frags.map())
    }
}

/// The event rings: flow records, and denials/alerts.
pub struct EventRings {
    pub flow: RingBuf<MapData>,
    pub alert: RingBuf<MapData>,
}

/// The gateway's programs and maps, loaded into the kernel (not necessarily attached).
pub struct Dataplane {
    ebpf: Ebpf,
    /// The benchmark object, when loaded for benchmarks.
    #[cfg(feature = "testing")]
    bench: Option<Ebpf>,
    pub policy: PolicyMaps,
    pub flows: FlowMaps,
    /// DNS resources on a connector: `NAMES` and `NAT`.
    pub names: crate::names_map::NameMaps,
    config: Array<MapData, DataplaneConfig>,
    parse_stats: PerCpuArray<MapData, u64>,
    verdict_stats: PerCpuArray<MapData, u64>,
    flow_stats: PerCpuArray<MapData, u64>,
    budgets: PerCpuArray<MapData, Budget>,
    #[cfg(feature = "testing")]
    sources: HashMap<MapData, gateway_common::Addr, gateway_common::event::SourceState>,
    events: Option<EventRings>,
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
/// Flow-table counters, indexed like [`FlowCounter::ALL`].
pub type FlowStats = Counters<{ FlowCounter::ALL.len() }>;

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

    /// The one reason counted, when exactly one packet was counted.
    pub fn single(&self) -> Option<Reason> {
        (self.total() == 1)
            .then(|| Reason::ALL.into_iter().find(|r| self.0[*r as usize] == 1))
            .flatten()
    }
}

impl FlowStats {
    pub fn get(&self, c: FlowCounter) -> u64 {
        self.0[c as usize]
    }
}

/// The tc programs of the object: tcx egress of physical links, the shield's, and the
/// tunnel interface's ingress and egress.
const TC_PROGRAMS: [&str; 4] = [
    maps::PROG_TC_EGRESS,
    maps::PROG_SHIELD_TC_EGRESS,
    maps::PROG_TUN_INGRESS,
    maps::PROG_TUN_EGRESS,
];

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Sums a per-CPU array entry.
fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64> {
    Ok(map.get(&index, 0)?.iter().sum())
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

    /// [`Dataplane::load`] plus the benchmark object, whose programs [`Dataplane::xdp_named`]
    /// then finds too (benchmarks only).
    #[cfg(feature = "testing")]
    pub fn load_with_bench() -> Result<Self> {
        let mut dp = Self::load_with(None)?;
        let mut bench = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .context("loading the benchmark eBPF object")?;
        for name in [
            maps::bench::PROG_NOOP,
            maps::bench::PROG_DROP_ALL,
            maps::bench::PROG_DROP_READ,
            maps::bench::PROG_WORKING_SET,
        ] {
            let prog: &mut Xdp = bench
                .program_mut(name)
                .with_context(|| format!("{name} missing from the benchmark object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        dp.bench = Some(bench);
        Ok(dp)
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
        for name in [maps::PROG_XDP, maps::PROG_SHIELD_XDP] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("XDP program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        for name in TC_PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("TC program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel verifier rejected {name}"))?;
        }
        let policy = PolicyMaps {
            active: Array::try_from(take(&mut ebpf, maps::ACTIVE)?)?,
            src: HashMap::try_from(take(&mut ebpf, maps::SRC)?)?,
            dst: LpmTrie::try_from(take(&mut ebpf, maps::DST)?)?,
            dst_hosts: HashMap::try_from(take(&mut ebpf, maps::DST_HOSTS)?)?,
            rules: LpmTrie::try_from(take(&mut ebpf, maps::RULES)?)?,
            rules_exact: HashMap::try_from(take(&mut ebpf, maps::RULES_EXACT)?)?,
            src_filter: Some(crate::src_filter::SourceFilter::new(Array::try_from(
                take(&mut ebpf, maps::SRC_FILTER)?,
            )?)),
        };
        let flows = FlowMaps {
            tcp: HashMap::try_from(take(&mut ebpf, maps::FLOWS_TCP)?)?,
            other: HashMap::try_from(take(&mut ebpf, maps::FLOWS_OTHER)?)?,
            frags: HashMap::try_from(take(&mut ebpf, maps::FRAGS)?)?,
        };
        let names = crate::names_map::NameMaps::take(&mut ebpf)?;
        let mut dp = Self {
            names,
            config: Array::try_from(take(&mut ebpf, maps::CONFIG)?)?,
            parse_stats: PerCpuArray::try_from(take(&mut ebpf, maps::PARSE_STATS)?)?,
            verdict_stats: PerCpuArray::try_from(take(&mut ebpf, maps::VERDICT_STATS)?)?,
            flow_stats: PerCpuArray::try_from(take(&mut ebpf, maps::FLOW_STATS)?)?,
            budgets: PerCpuArray::try_from(take(&mut ebpf, maps::BUDGETS)?)?,
            #[cfg(feature = "testing")]
            sources: HashMap::try_from(take(&mut ebpf, maps::SOURCES)?)?,
            events: Some(EventRings {
                flow: RingBuf::try_from(take(&mut ebpf, maps::EVENTS_FLOW)?)?,
                alert: RingBuf::try_from(take(&mut ebpf, maps::EVENTS_ALERT)?)?,
            }),
            events_lost: PerCpuArray::try_from(take(&mut ebpf, maps::EVENTS_LOST)?)?,
            policy,
            flows,
            ebpf,
            #[cfg(feature = "testing")]
            bench: None,
        };
        // From what pinned maps already hold, before any program of this object runs.
        dp.rebuild_source_filter()?;
        Ok(dp)
    }

    /// Rebuilds the source filter from the maps (`crate::src_filter`): every source entry
    /// of both slots and every open flow's source. Done at load; again by whoever wrote the
    /// source map other than through the policy writer.
    pub fn rebuild_source_filter(&mut self) -> Result<()> {
        let mut sources: Vec<gateway_common::Addr> =
            crate::batch::read_all::<SrcKey, SrcValue>(self.policy.src.map())
                .context("reading the source map for the source filter")?
                .into_iter()
                .map(|(k, _)| k.addr)
                .collect();
        sources.extend(
            self.flows
                .all()
                .context("reading the flow tables for the source filter")?
                .into_iter()
                .map(|(k, _)| k.src),
        );
        match self.policy.src_filter.as_mut() {
            Some(f) => f.rebuild(sources),
            None => Ok(()),
        }
    }

    /// The share of the source filter's bits set (`crate::src_filter`).
    pub fn source_filter_fill(&self) -> Option<f64> {
        self.policy.src_filter.as_ref().map(|f| f.fill())
    }

    /// Writes the run-time configuration (role, tuning, hash key). The programs drop every
    /// IP packet until a role is set.
    pub fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<()> {
        self.config
            .set(0, *cfg, 0)
            .context("writing the data-plane configuration")
    }

    /// The configuration the programs read.
    pub fn config(&self) -> Result<DataplaneConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Source prefixes with event/scan state (the LRU the kernel grows on denials).
    #[cfg(feature = "testing")]
    pub fn source_states(&self) -> Result<usize> {
        Ok(
            crate::batch::read_all::<gateway_common::Addr, gateway_common::event::SourceState>(
                self.sources.map(),
            )?
            .len(),
        )
    }

    /// Forgets everything the programs learnt from traffic: flows, fragments, per-source
    /// event state, event budgets, waiting events. Policy and counters stay. For tests
    /// that run many independent cases on one loaded object.
    #[cfg(feature = "testing")]
    pub fn reset_traffic_state(&mut self) -> Result<()> {
        self.flows.clear()?;
        let sources: Vec<_> = self.sources.keys().filter_map(|k| k.ok()).collect();
        for k in sources {
            let _ = self.sources.remove(&k);
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?;
        for kind in 0..gateway_common::event::EVENT_KINDS {
            let zero = aya::maps::PerCpuValues::try_from(vec![Budget::default(); cpus])?;
            self.budgets.set(kind, zero, 0)?;
        }
        self.drain_events();
        Ok(())
    }

    /// The XDP program.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(maps::PROG_XDP)
            .context("XDP program missing from the object")?
            .try_into()?)
    }

    /// An XDP program by name: the gateway's, or (after [`Dataplane::load_with_bench`]) one
    /// of the benchmark object's.
    #[cfg(feature = "testing")]
    pub fn xdp_named(&mut self, name: &str) -> Result<&mut Xdp> {
        if name == maps::PROG_XDP {
            return self.xdp();
        }
        if name == maps::PROG_SHIELD_XDP {
            return self.shield_xdp();
        }
        let bench = self
            .bench
            .as_mut()
            .context("the benchmark object is not loaded (Dataplane::load_with_bench)")?;
        Ok(bench
            .program_mut(name)
            .with_context(|| format!("{name} missing from the benchmark object"))?
            .try_into()?)
    }

    /// The benchmark object (after [`Dataplane::load_with_bench`]): its maps.
    #[cfg(feature = "testing")]
    pub fn bench_object(&mut self) -> Result<&mut Ebpf> {
        self.bench
            .as_mut()
            .context("the benchmark object is not loaded (Dataplane::load_with_bench)")
    }

    /// Makes `maps::bench::PROG_WORKING_SET` tail-call the XDP program `name` (the
    /// gateway's or a benchmark program) after rewriting each frame.
    #[cfg(feature = "testing")]
    pub fn set_working_set_target(&mut self, name: &str) -> Result<()> {
        let fd = self
            .xdp_named(name)?
            .fd()
            .with_context(|| format!("{name} is not loaded"))?
            .try_clone()
            .context("duplicating a program fd")?;
        let bench = self.bench_object()?;
        let mut target = aya::maps::ProgramArray::try_from(
            bench
                .map_mut(maps::bench::WS_TARGET)
                .context("WS_TARGET missing from the benchmark object")?,
        )?;
        target
            .set(0, &fd, 0)
            .with_context(|| format!("putting {name} in the working-set program array"))?;
        Ok(())
    }

    /// The XDP program and the policy maps at once (a thread can run packets while
    /// another writes policy).
    pub fn xdp_and_policy(&mut self) -> Result<(&mut Xdp, &mut PolicyMaps)> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(maps::PROG_XDP)
            .context("XDP program missing from the object")?
            .try_into()?;
        Ok((xdp, &mut self.policy))
    }

    /// The TC egress program.
    pub fn tc(&mut self) -> Result<&mut SchedClassifier> {
        self.tc_named(maps::PROG_TC_EGRESS)
    }

    /// A tc program of the object by name (`maps::PROG_TC_EGRESS`,
    /// `maps::PROG_SHIELD_TC_EGRESS`, `maps::PROG_TUN_INGRESS`, `maps::PROG_TUN_EGRESS`).
    pub fn tc_named(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("TC program {name} missing from the object"))?
            .try_into()?)
    }

    /// The shield's XDP program (physical links of a host with the tunnel on).
    pub fn shield_xdp(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(maps::PROG_SHIELD_XDP)
            .context("shield XDP program missing from the object")?
            .try_into()?)
    }

    /// Attaches the tunnel interface's programs to `iface` with tcx, ingress and egress,
    /// first in each chain (in the calling thread's network namespace), unpinned: the
    /// links live as long as this object. The agent pins them instead
    /// (`agent::pins::attach_tunnel`).
    pub fn attach_tun(&mut self, iface: &str) -> Result<()> {
        use aya::programs::{LinkOrder, TcAttachType, tc::TcAttachOptions};
        for (name, at) in [
            (maps::PROG_TUN_INGRESS, TcAttachType::Ingress),
            (maps::PROG_TUN_EGRESS, TcAttachType::Egress),
        ] {
            self.tc_named(name)?
                .attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::first()))
                .with_context(|| format!("attaching {name} (tcx {at:?}) to {iface}"))?;
        }
        Ok(())
    }

    /// Attaches the XDP program to `iface` (in the calling thread's network namespace).
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.xdp()?
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP ({mode:?}) to {iface}"))
    }

    /// Attaches the TC program to `iface`'s egress with tcx, first in the chain (in the
    /// calling thread's network namespace). The program returns `TCX_NEXT` when it has no
    /// objection, so later programs still run; its drops are final.
    pub fn attach_tc_egress(&mut self, iface: &str) -> Result<()> {
        use aya::programs::{LinkOrder, TcAttachType, tc::TcAttachOptions};
        self.tc()?
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .with_context(|| format!("attaching TC egress (tcx) to {iface}"))?;
        Ok(())
    }

    /// Takes the kernel's diagnostics log (aya-log), printed on stderr as
    /// `gateway-agent: kernel: ...` each time [`aya_log::EbpfLogger::flush`] runs. The
    /// programs write to it only with `diagnostics` on in the configuration.
    pub fn take_kernel_log(&mut self) -> Result<aya_log::EbpfLogger<KernelLog>> {
        self.take_kernel_log_with(KernelLog)
    }

    /// [`Dataplane::take_kernel_log`] with another logger.
    pub fn take_kernel_log_with<L: log::Log>(
        &mut self,
        logger: L,
    ) -> Result<aya_log::EbpfLogger<L>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger)
            .context("the kernel diagnostics log (aya-log)")
    }

    /// Takes the event ring buffers (once) for an event reader.
    pub fn take_events(&mut self) -> Option<EventRings> {
        self.events.take()
    }

    /// Every event waiting in the ring buffers, flow ring first (none once taken).
    pub fn drain_events(&mut self) -> Vec<Event> {
        match self.events.as_mut() {
            Some(rings) => {
                let mut v = drain(&mut rings.flow);
                v.extend(drain(&mut rings.alert));
                v
            }
            None => Vec::new(),
        }
    }

    /// Parse-outcome counters, summed over CPUs.
    pub fn parse_stats(&self) -> Result<ParseStats> {
        let sums = crate::batch::per_cpu_sums(self.parse_stats.map())?;
        let mut stats = ParseStats::default();
        for (i, v) in stats.0.iter_mut().enumerate() {
            *v = sums.get(i).copied().unwrap_or(0);
        }
        Ok(stats)
    }

    /// Verdict-reason counters, summed over CPUs.
    pub fn verdict_stats(&self) -> Result<VerdictStats> {
        let sums = crate::batch::per_cpu_sums(self.verdict_stats.map())?;
        let mut stats = VerdictStats::default();
        for (i, v) in stats.0.iter_mut().enumerate() {
            *v = sums.get(i).copied().unwrap_or(0);
        }
        Ok(stats)
    }

    /// Flow-table counters, summed over CPUs.
    pub fn flow_stats(&self) -> Result<FlowStats> {
        let mut stats = FlowStats::default();
        for c in FlowCounter::ALL {
            stats.0[c as usize] = per_cpu_sum(&self.flow_stats, c as u32)?;
        }
        Ok(stats)
    }

    /// Events suppressed by the per-CPU budgets since the maps were created, by kind.
    pub fn suppressed(&self) -> Result<Vec<(gateway_common::EventKind, u64)>> {
        let mut out = Vec::new();
        for kind in gateway_common::EventKind::ALL {
            let per_cpu = self.budgets.get(&(kind as u32), 0)?;
            out.push((kind, per_cpu.iter().map(|b| b.suppressed_total).sum()));
        }
        Ok(out)
    }

    /// Every remembered denial of every CPU's `DENY_CACHE` (slots never written are left
    /// out).
    #[cfg(feature = "testing")]
    pub fn deny_cache(&self) -> Result<Vec<gateway_common::DenyCacheEntry>> {
        let map = self
            .ebpf
            .map(maps::DENY_CACHE)
            .context("DENY_CACHE missing from the object")?;
        let cache: aya::maps::PerCpuArray<_, gateway_common::DenyCacheEntry> =
            aya::maps::PerCpuArray::try_from(map)?;
        let mut out = Vec::new();
        for slot in 0..maps::DENY_CACHE_SLOTS {
            for e in cache.get(&slot, 0)?.iter() {
                if e.generation != 0 {
                    out.push(*e);
                }
            }
        }
        Ok(out)
    }

    /// Events lost to a full ring buffer, summed over CPUs: (flow ring, alert ring).
    pub fn events_lost(&self) -> Result<(u64, u64)> {
        Ok((
            per_cpu_sum(&self.events_lost, Ring::Flow as u32)?,
            per_cpu_sum(&self.events_lost, Ring::Alert as u32)?,
        ))
    }

    /// The loaded object, for pinning its programs.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The active policy generation.
    pub fn active_generation(&self) -> Result<u32> {
        Ok(self.policy.active.get(&0, 0)?)
    }
}

/// Prints the kernel programs' aya-log records on stderr.
#[derive(Debug, Clone, Copy)]
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(
            target: "kernel",
            level = %record.level(),
            "kernel: {}",
            record.args()
        );
    }

    fn flush(&self) {}
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
