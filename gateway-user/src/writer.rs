//! Writes compiled policy into the kernel maps, atomically.
//!
//! Every policy key carries a one-byte key slot; the `ACTIVE` array holds the active
//! generation, whose low bit is the slot packets read. Applying a policy:
//!
//! 1. brings the *inactive* slot from whatever it holds to the new entries — only the
//!    difference is written, so applying a small change costs a small number of map
//!    operations (double buffering with incremental sync);
//! 2. flips `ACTIVE` to the next generation (one 4-byte array write: packets see the old
//!    policy or the new one, never a mix);
//! 3. leaves the previous slot as it is: it is the base of the next apply's difference.
//!
//! A packet reads `ACTIVE` once and then looks up keys of that slot, so a program run that
//! read the old generation just before the flip may still be reading the old slot after
//! it. The old slot is therefore rewritten (by the next apply) only after an RCU grace
//! period has passed since the flip: XDP and TC programs run inside RCU read-side
//! sections, so every run that could have read the old generation has finished.
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for one (`synchronize_rcu`, a few ms); it
//! runs on a thread right after the flip, so an apply waits only when the previous one
//! was moments ago.
//!
//! Flows cached under the previous generation are decided again on their next packet.
//! Both slots share each map, so one policy may use only half of a map
//! ([`usable_capacity`]): a policy larger than that is refused before any map is
//! touched. If writing the inactive slot fails (a full map, say), `ACTIVE` is not touched: the old
//! policy stays in force whole, and the slot is rewritten from scratch next time.

use crate::dataplane::PolicyMaps;
use anyhow::{Context as _, Result, bail};
use aya::maps::{IterableMap as _, MapError, lpm_trie::Key};
use gateway_common::{
    maps,
    policy::{AtomValue, DstKey, RuleKey, RuleValue, SrcKey, SrcValue},
};
use policy_compiler::{HostView, KernelEntries, RuleOrder, to_kernel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Converts unix time to the boot clock the kernel reads (`bpf_ktime_get_boot_ns`), with an
/// offset measured once so the same instant always converts to the same value.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// unix ns - boot ns, measured at creation.
    offset_ns: i128,
}

impl BootClock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        BootClock {
            offset_ns: unix - boot_ns() as i128,
        }
    }

    /// A clock with a given offset (unix ns - boot ns): tests that map boot time onto a
    /// chosen unix time.
    pub fn with_offset(offset_ns: i128) -> Self {
        BootClock { offset_ns }
    }

    /// The boot-clock instant of unix second `t` (0 if before boot, saturating).
    pub fn unix_to_boot_ns(&self, t: i64) -> u64 {
        let ns = i128::from(t) * 1_000_000_000 - self.offset_ns;
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// Unix seconds of a boot-clock instant.
    pub fn boot_to_unix_ns(&self, boot: u64) -> i128 {
        i128::from(boot) + self.offset_ns
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// CLOCK_BOOTTIME in nanoseconds, the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// The generation now active.
    pub generation: u32,
    /// Map entries inserted or overwritten, and deleted, in the inactive slot.
    pub written: usize,
    pub deleted: usize,
    /// Entries of the new policy.
    pub entries: usize,
    pub elapsed: Duration,
}

/// Waits for an RCU grace period: every BPF program run that started before the call
/// has finished when it returns. Falls back to a 100 ms sleep where membarrier cannot
/// (nohz_full kernels).
pub fn rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers; MEMBARRIER_CMD_GLOBAL with flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the DNS resources add to every apply ([`PolicyWriter::set_hook`]): a device's
/// proxy addresses as destination entries of their names' atoms, and a connector's name
/// translations pointed at the new generation's atoms before it is switched on.
pub trait ApplyHook: Send {
    /// Destination entries written with `view`'s own.
    fn extra_atoms(&self, view: &HostView) -> Vec<policy_compiler::DstEntry>;
    /// Runs after key slot `slot` holds `view` and before it becomes active.
    fn before_flip(&self, view: &HostView, slot: u8) -> Result<()>;
}

/// Applies compiled views to a host's policy maps.
pub struct PolicyWriter {
    hook: Option<Box<dyn ApplyHook>>,
    clock: BootClock,
    generation: u32,
    /// What each key slot holds, when known.
    slots: [Option<KernelEntries>; 2],
    /// The grace period after the last flip, running on its own thread; `None` once
    /// joined. A writer made for maps it did not flip itself starts with one pending.
    grace: Option<std::thread::JoinHandle<()>>,
}

impl PolicyWriter {
    /// A writer for maps whose active generation is `generation` and whose slot contents
    /// are unknown (they are read back from the maps on first use).
    pub fn new(generation: u32, clock: BootClock) -> Self {
        PolicyWriter {
            hook: None,
            clock,
            generation,
            slots: [None, None],
            grace: Some(std::thread::spawn(rcu_grace_period)),
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn clock(&self) -> BootClock {
        self.clock
    }

    /// Converts expiries with another clock from the next apply on.
    pub fn set_clock(&mut self, clock: BootClock) {
        self.clock = clock;
    }

    /// The entries the active generation holds, when known.
    pub fn active_entries(&self) -> Option<&KernelEntries> {
        self.slots[(self.generation & 1) as usize].as_ref()
    }

    /// Adds `hook` to every apply from now on.
    pub fn set_hook(&mut self, hook: Box<dyn ApplyHook>) {
        self.hook = Some(hook);
    }

    /// Makes `view` the enforced policy, atomically (see the module docs).
    pub fn apply(&mut self, maps: &mut PolicyMaps, view: &HostView) -> Result<ApplyStats> {
        let mut extra = self
            .hook
            .as_ref()
            .map(|h| h.extra_atoms(view))
            .unwrap_or_default();
        // The view's own prefixes win (the agent keeps proxy space out of them).
        extra.retain(|e| !view.atoms.iter().any(|a| a.prefix == e.prefix));
        if extra.is_empty() {
            return self.apply_view(maps, view);
        }
        let mut with = view.clone();
        with.atoms.extend(extra);
        with.atoms.sort();
        with.atoms.dedup();
        self.apply_view(maps, &with)
    }

    fn apply_view(&mut self, maps: &mut PolicyMaps, view: &HostView) -> Result<ApplyStats> {
        let started = Instant::now();
        let next = next_generation(self.generation);
        let slot = (next & 1) as u8;
        let clock = self.clock;
        let new = to_kernel(view, slot, |t| clock.unix_to_boot_ns(t));
        check_fits(&new).with_context(|| format!("policy generation {next} not applied"))?;
        // Packets that read the generation before the last flip may still read this slot.
        if let Some(g) = self.grace.take() {
            let _ = g.join();
        }
        let old = match self.slots[slot as usize].take() {
            Some(old) => old,
            None => {
                // Both slots in one pass: the next apply then reads nothing back.
                let [s0, s1] = read_slots(maps).context("reading the policy slots back")?;
                let (this, other) = if slot == 0 { (s0, s1) } else { (s1, s0) };
                let other_slot = usize::from(1 - slot);
                if self.slots[other_slot].is_none() {
                    self.slots[other_slot] = Some(other);
                }
                this
            }
        };
        let (written, deleted) = sync_slot(maps, &old, &new)
            .with_context(|| format!("writing policy generation {next} (slot {slot})"))?;
        // Its sources pass the source filter before the generation is active.
        if let Some(filter) = maps.src_filter.as_mut() {
            filter
                .add(new.src.iter().map(|(k, _)| &k.addr))
                .with_context(|| format!("policy generation {next} not applied"))?;
        }
        if let Some(h) = &self.hook {
            h.before_flip(view, slot)
                .with_context(|| format!("policy generation {next} not applied"))?;
        }
        maps.active
            .set(0, next, 0)
            .context("switching the active policy generation")?;
        self.generation = next;
        self.grace = Some(std::thread::spawn(rcu_grace_period));
        let entries = new.len();
        let first_fill = old.is_empty() && entries > 0;
        self.slots[slot as usize] = Some(new);
        if first_fill {
            self.mirror(maps, view);
        }
        Ok(ApplyStats {
            generation: next,
            written,
            deleted,
            entries,
            elapsed: started.elapsed(),
        })
    }
}

impl PolicyWriter {
    /// After a first fill (the policy written into an empty slot: a fresh start), writes the
    /// same policy into the other slot too, once no packet reads it any more, so the next
    /// change writes only its difference instead of the whole policy. The other slot is
    /// not in force: a failure here leaves it unknown (the next apply reads it back), never
    /// a packet decided from it.
    fn mirror(&mut self, maps: &mut PolicyMaps, view: &HostView) {
        let other = ((self.generation & 1) ^ 1) as u8;
        if let Some(g) = self.grace.take() {
            let _ = g.join();
        }
        let clock = self.clock;
        let new = to_kernel(view, other, |t| clock.unix_to_boot_ns(t));
        let old = match self.slots[usize::from(other)].take() {
            Some(old) => old,
            None => match read_slot(maps, other) {
                Ok(old) => old,
                Err(_) => return,
            },
        };
        if sync_slot(maps, &old, &new).is_ok() {
            self.slots[usize::from(other)] = Some(new);
        }
    }
}

/// Entries one policy may hold in each policy map: half the map, since the slot being
/// written and the slot in force live in it together. Names are the metrics' labels.
pub fn usable_capacity() -> [(&'static str, u32); 5] {
    [
        ("src", maps::SRC_CAPACITY / 2),
        ("dst", maps::DST_CAPACITY / 2),
        ("dst_hosts", maps::DST_HOSTS_CAPACITY / 2),
        ("rules", maps::RULES_CAPACITY / 2),
        ("rules_exact", maps::RULES_EXACT_CAPACITY / 2),
    ]
}

/// Entries of `e` per policy map, in the order of [`usable_capacity`].
pub fn entry_counts(e: &KernelEntries) -> [usize; 5] {
    [
        e.src.len(),
        e.dst.len(),
        e.dst_hosts.len(),
        e.rules.len(),
        e.rules_exact.len(),
    ]
}

/// Refuses entries that would not fit beside the policy in force.
pub fn check_fits(new: &KernelEntries) -> Result<()> {
    let sizes = entry_counts(new);
    for ((map, cap), n) in usable_capacity().into_iter().zip(sizes) {
        if n > cap as usize {
            bail!(
                "the compiled policy needs {n} {map} entries for this host; the map holds \
                 {cap} per policy (half its {} entries, the other half keeps the policy in \
                 force while the next one is written)",
                cap * 2
            );
        }
    }
    Ok(())
}

/// The generation after `g`: the next number, skipping 0 ("no policy yet") and keeping the
/// alternation of key slots across the wrap (u32::MAX is slot 1, so the next is 2, slot 0).
pub fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 2,
        n => n,
    }
}

/// Reads every entry of key slot `slot` back from the maps, each list from its own map:
/// entries written before the exact-match hashes existed (full hosts and single ports in
/// the tries) are read where they are, so the next [`sync_slot`] moves them.
pub fn read_slot(maps: &PolicyMaps, slot: u8) -> Result<KernelEntries> {
    let [s0, s1] = read_slots(maps)?;
    Ok(if slot & 1 == 0 { s0 } else { s1 })
}

/// Both key slots in one pass over the maps (as [`read_slot`] reads one): the hashes in
/// batches, the tries entry by entry (they have no batch read).
pub fn read_slots(maps: &PolicyMaps) -> Result<[KernelEntries; 2]> {
    let mut out = [0u8, 1].map(|generation| KernelEntries {
        generation,
        ..KernelEntries::default()
    });
    let at = |generation: u8| usize::from(generation & 1);
    for (k, v) in crate::batch::read_all::<SrcKey, SrcValue>(maps.src.map())? {
        out[at(k.generation)].src.push((k, v));
    }
    for item in maps.dst.iter() {
        let (k, v) = item?;
        out[at(k.data().generation)]
            .dst
            .push(policy_compiler::LpmEntry {
                prefix_len: k.prefix_len(),
                key: k.data(),
                value: v,
            });
    }
    for (k, v) in crate::batch::read_all::<DstKey, AtomValue>(maps.dst_hosts.map())? {
        out[at(k.generation)].dst_hosts.push((k, v));
    }
    for item in maps.rules.iter() {
        let (k, v) = item?;
        out[at(k.data().generation)]
            .rules
            .push(policy_compiler::LpmEntry {
                prefix_len: k.prefix_len(),
                key: k.data(),
                value: v,
            });
    }
    for (k, v) in crate::batch::read_all::<RuleKey, RuleValue>(maps.rules_exact.map())? {
        out[at(k.generation)].rules_exact.push((k, v));
    }
    for e in &mut out {
        e.sort();
    }
    Ok(out)
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// An LPM entry as a (key, value) pair for [`merge_diff`].
fn lpm<K: Copy, V: Copy>(e: &policy_compiler::LpmEntry<K, V>) -> ((u32, K), V) {
    ((e.prefix_len, e.key), e.value)
}

/// A `RULES` entry as an ordered (key, value) pair for [`merge_diff`].
fn rule(e: &policy_compiler::LpmEntry<RuleKey, RuleValue>) -> (RuleOrder, RuleValue) {
    (RuleOrder::of(e.prefix_len, e.key), e.value)
}

/// A `RULES_EXACT` entry as an ordered (key, value) pair for [`merge_diff`].
fn rule_exact(e: &(RuleKey, RuleValue)) -> (RuleOrder, RuleValue) {
    (
        RuleOrder::of(policy_compiler::RULE_EXACT_PREFIX_LEN, e.0),
        e.1,
    )
}

/// Walks two key-sorted entry lists together and calls `op` with `(k, None)` for keys only
/// in `old` (delete) and `(k, Some(v))` for keys only in `new` or whose value changed
/// (write). O(n), no allocation.
fn merge_diff<K: Ord + Copy, V: PartialEq + Copy>(
    old: impl IntoIterator<Item = (K, V)>,
    new: impl IntoIterator<Item = (K, V)>,
    mut op: impl FnMut(K, Option<V>) -> Result<(), MapError>,
) -> Result<(usize, usize), MapError> {
    use std::cmp::Ordering::*;
    let (mut written, mut deleted) = (0, 0);
    let mut old = old.into_iter().peekable();
    let mut new = new.into_iter().peekable();
    loop {
        match (old.peek().copied(), new.peek().copied()) {
            (None, None) => break,
            (Some((ko, _)), None) => {
                op(ko, None)?;
                deleted += 1;
                old.next();
            }
            (None, Some((kn, vn))) => {
                op(kn, Some(vn))?;
                written += 1;
                new.next();
            }
            (Some((ko, vo)), Some((kn, vn))) => match ko.cmp(&kn) {
                Less => {
                    op(ko, None)?;
                    deleted += 1;
                    old.next();
                }
                Greater => {
                    op(kn, Some(vn))?;
                    written += 1;
                    new.next();
                }
                Equal => {
                    if vo != vn {
                        op(kn, Some(vn))?;
                        written += 1;
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
    Ok((written, deleted))
}

/// Brings one slot from `old` to `new` (both sorted, as `to_kernel` and `read_slot` make
/// them): deletes what is gone, writes what is new or changed, map by map (an entry that
/// moved from a trie to its hash is deleted from one and written to the other). Returns
/// (written, deleted).
fn sync_slot(
    maps: &mut PolicyMaps,
    old: &KernelEntries,
    new: &KernelEntries,
) -> Result<(usize, usize)> {
    let PolicyMaps {
        src,
        dst,
        dst_hosts,
        rules,
        rules_exact,
        ..
    } = maps;
    let (w1, d1) = merge_diff(
        old.src.iter().copied(),
        new.src.iter().copied(),
        |k, v| match v {
            Some(v) => src.insert(k, v, 0),
            None => ignore_missing(src.remove(&k)),
        },
    )?;
    let (w2, d2) = merge_diff(
        old.dst.iter().map(lpm),
        new.dst.iter().map(lpm),
        |(p, k), v| match v {
            Some(v) => dst.insert(&Key::new(p, k), v, 0),
            None => ignore_missing(dst.remove(&Key::new(p, k))),
        },
    )?;
    let (w3, d3) = merge_diff(
        old.dst_hosts.iter().copied(),
        new.dst_hosts.iter().copied(),
        |k, v| match v {
            Some(v) => dst_hosts.insert(k, v, 0),
            None => ignore_missing(dst_hosts.remove(&k)),
        },
    )?;
    // Rules in the order the lists keep them (`RuleOrder`).
    let (w4, d4) = merge_diff(
        old.rules.iter().map(rule),
        new.rules.iter().map(rule),
        |o, v| {
            let k = Key::new(o.prefix_len, o.key());
            match v {
                Some(v) => rules.insert(&k, v, 0),
                None => ignore_missing(rules.remove(&k)),
            }
        },
    )?;
    let (w5, d5) = merge_diff(
        old.rules_exact.iter().map(rule_exact),
        new.rules_exact.iter().map(rule_exact),
        |o, v| match v {
            Some(v) => rules_exact.insert(o.key(), v, 0),
            None => ignore_missing(rules_exact.remove(&o.key())),
        },
    )?;
    Ok((w1 + w2 + w3 + w4 + w5, d1 + d2 + d3 + d4 + d5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_over_half_a_map_is_refused_whole() {
        let mut e = KernelEntries::default();
        let half = (maps::SRC_CAPACITY / 2) as usize;
        let entry = e_src();
        e.src = vec![entry; half];
        assert!(check_fits(&e).is_ok(), "exactly half fits");
        e.src.push(entry);
        let err = check_fits(&e).unwrap_err().to_string();
        assert!(err.contains(&format!("{} src entries", half + 1)), "{err}");
        assert!(err.contains(&format!("holds {half} per policy")), "{err}");
    }

    fn e_src() -> (
        gateway_common::policy::SrcKey,
        gateway_common::policy::SrcValue,
    ) {
        (Default::default(), Default::default())
    }

    #[test]
    fn merge_diff_writes_only_the_difference() {
        let old = [(1, 'a'), (2, 'b'), (4, 'd'), (6, 'f')];
        let new = [(2, 'b'), (3, 'c'), (4, 'D'), (7, 'g')];
        let mut ops = Vec::new();
        let (written, deleted) = merge_diff(old, new, |k, v| {
            ops.push((k, v));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            ops,
            vec![
                (1, None),
                (3, Some('c')),
                (4, Some('D')),
                (6, None),
                (7, Some('g'))
            ]
        );
        assert_eq!((written, deleted), (3, 2));
    }

    #[test]
    fn generations_alternate_slots_across_the_wrap() {
        let mut g = u32::MAX - 3;
        for _ in 0..8 {
            let n = next_generation(g);
            assert_ne!(n, 0, "0 means no policy");
            assert_ne!(n & 1, g & 1, "{g} -> {n} reuses the active slot");
            g = n;
        }
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(u32::MAX), 2);
    }

    #[test]
    fn merge_diff_of_equal_lists_does_nothing() {
        let v = [(1, 1), (5, 5)];
        let (w, d) = merge_diff(v, v, |_, _| panic!("no operation expected")).unwrap();
        assert_eq!((w, d), (0, 0));
    }
}
