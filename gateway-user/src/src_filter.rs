//! The source filter (`SRC_FILTER`): which addresses may be principals' sources, so the
//! programs decide a packet from any other source without the flow table or the source
//! map (docs/dataplane.md, "Sources no principal has"). A flood from spoofed sources costs
//! one read of a 256 KiB array instead of two hash lookups that miss the CPU caches.
//!
//! It is a Bloom filter with one keyed hash (`gateway_common::maps::src_filter_bit`), and
//! it only ever grows while the object is loaded: a bit is set for every source a policy
//! generation puts in the source map, before that generation is made active, and at load
//! for every source the source map holds (both slots) and every open flow's source. So a
//! clear bit proves the address has no flow under any generation and no source entry: the
//! programs' shortcut answers what the full path would. A set bit proves nothing (another
//! address may have set it): the packet takes the full path.
//!
//! Never cleared: a source that leaves the policy keeps its bit, so its open flows are still
//! found and ended as revoked. A host whose principals churn a lot fills the filter over
//! time, which makes it useless, never wrong; the next load (agent restart) starts from the
//! present sources. [`SourceFilter::fill`] says how full it is (the agent's metrics).

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, MapData};
use gateway_common::{
    Addr,
    maps::{SRC_FILTER_WORDS, src_filter_bit},
};

/// The bit words (the map's entries from 2 on).
const BIT_WORDS: usize = SRC_FILTER_WORDS as usize - 2;

/// The filter map with a copy of its bits, so adding sources writes only changed words.
pub struct SourceFilter {
    map: Array<MapData, u64>,
    key: u64,
    mul: u64,
    bits: Vec<u64>,
    set: u32,
}

impl SourceFilter {
    /// The filter of a freshly loaded object (all zero: off until [`SourceFilter::rebuild`]).
    pub fn new(map: Array<MapData, u64>) -> Self {
        SourceFilter {
            map,
            key: 0,
            mul: 1,
            bits: vec![0; BIT_WORDS],
            set: 0,
        }
    }

    /// Makes the filter hold exactly `sources` (every source the source map holds, both
    /// slots, and every open flow's source), under a key drawn afresh from the OS. The
    /// programs skip the filter while it is rewritten: its key word is zeroed first and
    /// written last, so they never read bits of one key with the other.
    pub fn rebuild(&mut self, sources: impl IntoIterator<Item = Addr>) -> Result<()> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| anyhow!("drawing the source-filter key: {e}"))?;
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_ne_bytes(w)
        };
        self.map
            .set(0, 0, 0)
            .context("turning the source filter off")?;
        self.key = 0;
        // Word 0 is the "on" mark: never zero. The multiplier is odd.
        let key = word(&raw[..8]) | 1 << 63;
        let mul = word(&raw[8..]) | 1;
        let mut bits = vec![0u64; BIT_WORDS];
        for a in sources {
            let bit = src_filter_bit(key, mul, &a) as usize;
            bits[bit / 64] |= 1u64 << (bit % 64);
        }
        for (i, (new, old)) in bits.iter().zip(self.bits.iter_mut()).enumerate() {
            if new != old {
                self.map
                    .set(2 + i as u32, *new, 0)
                    .context("writing the source filter")?;
                *old = *new;
            }
        }
        self.set = bits.iter().map(|w| w.count_ones()).sum();
        self.map
            .set(1, mul, 0)
            .context("writing the source filter's key")?;
        self.map
            .set(0, key, 0)
            .context("writing the source filter's key")?;
        (self.key, self.mul) = (key, mul);
        Ok(())
    }

    /// Adds sources (a generation about to be made active): writes the words whose bits
    /// changed. The copy takes a word only once the map has it, so a failed write is
    /// written again by the next call. Returns how many words were written.
    pub fn add<'a>(&mut self, sources: impl IntoIterator<Item = &'a Addr>) -> Result<usize> {
        if self.key == 0 {
            // Off: the programs do not read it; the next rebuild reads the source map.
            return Ok(0);
        }
        let mut words: std::collections::BTreeMap<usize, u64> = std::collections::BTreeMap::new();
        for a in sources {
            let bit = src_filter_bit(self.key, self.mul, a) as usize;
            let (w, b) = (bit / 64, 1u64 << (bit % 64));
            let old = self.bits.get(w).copied().unwrap_or(u64::MAX);
            if old & b != 0 {
                // Already in the map (every apply adds the whole policy's sources).
                continue;
            }
            let word = words.entry(w).or_insert(old);
            *word |= b;
        }
        let mut written = 0;
        for (w, word) in words {
            if self.bits.get(w) == Some(&word) {
                continue;
            }
            self.map
                .set(2 + w as u32, word, 0)
                .context("writing the source filter")?;
            self.set += (word & !self.bits[w]).count_ones();
            self.bits[w] = word;
            written += 1;
        }
        Ok(written)
    }

    /// Whether `a` passes the filter (its bit is set, or the filter is off): the programs
    /// then look its flows and its source entry up.
    pub fn may_hold(&self, a: &Addr) -> bool {
        if self.key == 0 {
            return true;
        }
        let bit = src_filter_bit(self.key, self.mul, a) as usize;
        self.bits[bit / 64] & 1u64 << (bit % 64) != 0
    }

    /// The share of bits set: the chance that a source no principal has still takes the
    /// full path.
    pub fn fill(&self) -> f64 {
        f64::from(self.set) / (BIT_WORDS * 64) as f64
    }
}
