//! Proxy addresses: one stable (IPv4, IPv6) pair per name.
//!
//! Slot `i` of the pool is the pair (`v4_prefix` + i, `v6_prefix` + i); the pool has as many
//! slots as the smaller prefix has addresses. A new name starts at a slot derived from its
//! name (FNV-1a) and takes the first free slot from there, so a name usually gets the same pair
//! even without the file. Slots are never given to another name, and a full pool refuses new
//! names ([`PoolError::Exhausted`]).
//!
//! With a file, every pair is written (JSON lines, temp file + rename) before its first answer,
//! and loaded at start: the first line is a header naming the prefixes, then one
//! `{"name":..,"v4":..,"v6":..}` per line.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

const FORMAT: &str = "gateway-dns proxy addresses";
const VERSION: u32 = 1;

/// A pool refused to allocate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every slot is taken by another name.
    #[error("the proxy address pool ({capacity} pairs) is exhausted")]
    Exhausted { capacity: u64 },
}

/// A name's pair and the change generation that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Alloc {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    v4_prefix: String,
    v6_prefix: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

#[derive(Debug, Default)]
struct State {
    by_name: HashMap<String, (u32, u64)>,
    by_slot: HashMap<u32, String>,
    generation: u64,
}

/// The proxy address pool. Shared (`&self` everywhere); see the module docs.
#[derive(Debug)]
pub struct Pool {
    v4: Ipv4Net,
    v6: Ipv6Net,
    capacity: u64,
    file: Option<PathBuf>,
    state: Mutex<State>,
    saved: AtomicU64,
    write_lock: tokio::sync::Mutex<()>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits depend only on the bytes' low bits; fold the high bits in (as the
    // MurmurHash3 finalizer does) before the slot is taken modulo the capacity.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Whether `name` is what the stub hands to the pool: lower-case ASCII letters, digits, `-`,
/// `_`, labels of 1..=63 bytes, ending with a dot.
pub(crate) fn is_canonical(name: &str) -> bool {
    let Some(body) = name.strip_suffix('.') else {
        return false;
    };
    !body.is_empty()
        && name.len() <= 254
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

impl Pool {
    /// A pool over the two prefixes, loading `file` if it exists (a missing file is created, empty;
    /// any other problem with it is an error naming the file and line).
    pub fn new(v4: Ipv4Net, v6: Ipv6Net, file: Option<PathBuf>) -> Result<Self> {
        let v4 = v4.trunc();
        let v6 = v6.trunc();
        let capacity = (1u64 << (32 - u32::from(v4.prefix_len())).min(32))
            .min(1u64 << (128 - u32::from(v6.prefix_len())).min(32))
            .min(u64::from(u32::MAX));
        let pool = Self {
            v4,
            v6,
            capacity,
            file,
            state: Mutex::new(State::default()),
            saved: AtomicU64::new(0),
            write_lock: tokio::sync::Mutex::new(()),
        };
        if let Some(path) = &pool.file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let state = pool.parse(path, &text)?;
                    *pool.lock() = state;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Written now, so that a path that cannot be written fails at start rather
                    // than at the first name.
                    write_atomically(path, pool.render().0.as_bytes())?;
                }
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!("reading the proxy address file {}", path.display())
                    });
                }
            }
        }
        Ok(pool)
    }

    /// How many names the pool can hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// How many names hold a pair.
    pub fn len(&self) -> usize {
        self.lock().by_name.len()
    }

    /// Whether no name holds a pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pair(&self, slot: u32) -> (Ipv4Addr, Ipv6Addr) {
        let v4 = Ipv4Addr::from(u32::from(self.v4.network()).wrapping_add(slot));
        let v6 = Ipv6Addr::from(u128::from(self.v6.network()).wrapping_add(u128::from(slot)));
        (v4, v6)
    }

    fn slot_of(&self, ip: IpAddr) -> Option<u32> {
        let slot = match ip {
            IpAddr::V4(a) if self.v4.contains(&a) => {
                u64::from(u32::from(a).wrapping_sub(u32::from(self.v4.network())))
            }
            IpAddr::V6(a) if self.v6.contains(&a) => {
                let off = u128::from(a).wrapping_sub(u128::from(self.v6.network()));
                u64::try_from(off).ok()?
            }
            _ => return None,
        };
        if slot < self.capacity {
            u32::try_from(slot).ok()
        } else {
            None
        }
    }

    /// The name's pair, if it has one.
    pub fn get(&self, name: &str) -> Option<(Ipv4Addr, Ipv6Addr)> {
        self.lock()
            .by_name
            .get(name)
            .map(|&(slot, _)| self.pair(slot))
    }

    /// The name a proxy address stands for (canonical form, trailing dot).
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let slot = self.slot_of(ip)?;
        self.lock().by_slot.get(&slot).cloned()
    }

    /// The name's pair, allocating one if it has none.
    pub(crate) fn get_or_alloc(&self, name: &str) -> Result<Alloc, PoolError> {
        let mut st = self.lock();
        if let Some(&(slot, generation)) = st.by_name.get(name) {
            let (v4, v6) = self.pair(slot);
            return Ok(Alloc { v4, v6, generation });
        }
        if st.by_slot.len() as u64 >= self.capacity {
            return Err(PoolError::Exhausted {
                capacity: self.capacity,
            });
        }
        let start = fnv1a(name.as_bytes()) % self.capacity;
        let mut slot = start;
        while st.by_slot.contains_key(&(slot as u32)) {
            slot = (slot + 1) % self.capacity;
        }
        let slot = slot as u32;
        st.generation += 1;
        let generation = st.generation;
        st.by_slot.insert(slot, name.to_owned());
        st.by_name.insert(name.to_owned(), (slot, generation));
        let (v4, v6) = self.pair(slot);
        Ok(Alloc { v4, v6, generation })
    }

    /// Writes the file (if any) so that it holds at least every pair up to `generation`.
    /// Concurrent callers share writes: one write covers every pair allocated before it started.
    pub(crate) async fn persist_through(&self, generation: u64) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        if self.saved.load(Ordering::Acquire) >= generation {
            return Ok(());
        }
        let _guard = self.write_lock.lock().await;
        if self.saved.load(Ordering::Acquire) >= generation {
            return Ok(());
        }
        let (text, upto) = self.render();
        let path = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes()))
            .await
            .map_err(|e| anyhow!("the pool file writer panicked: {e}"))??;
        self.saved.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    fn render(&self) -> (String, u64) {
        let st = self.lock();
        let header = Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            v4_prefix: self.v4.to_string(),
            v6_prefix: self.v6.to_string(),
        };
        let mut entries: Vec<(&String, u32)> =
            st.by_name.iter().map(|(n, &(s, _))| (n, s)).collect();
        entries.sort_unstable_by_key(|&(_, s)| s);
        let mut out = serde_json::to_string(&header).unwrap_or_default();
        out.push('\n');
        for (name, slot) in entries {
            let (v4, v6) = self.pair(slot);
            let e = Entry {
                name: name.clone(),
                v4,
                v6,
            };
            out.push_str(&serde_json::to_string(&e).unwrap_or_default());
            out.push('\n');
        }
        (out, st.generation)
    }

    fn parse(&self, path: &Path, text: &str) -> Result<State> {
        let at = |line: usize| format!("{} line {line}", path.display());
        let advice = "fix or delete the file (names then get new proxy addresses)";
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        let Some((_, first)) = lines.next() else {
            bail!(
                "{}: the file is empty, expected a header line; {advice}",
                at(1)
            );
        };
        let header: Header = serde_json::from_str(first)
            .map_err(|e| anyhow!("{}: not a proxy address file header ({e}); {advice}", at(1)))?;
        if header.format != FORMAT || header.version != VERSION {
            bail!(
                "{}: format {:?} version {} is not {FORMAT:?} version {VERSION}; {advice}",
                at(1),
                header.format,
                header.version
            );
        }
        if header.v4_prefix != self.v4.to_string() || header.v6_prefix != self.v6.to_string() {
            bail!(
                "{}: written for prefixes {} and {}, the configuration has {} and {}; restore \
                 the prefixes or delete the file (names then get new proxy addresses)",
                at(1),
                header.v4_prefix,
                header.v6_prefix,
                self.v4,
                self.v6
            );
        }
        let mut st = State::default();
        let mut line_of_slot: HashMap<u32, usize> = HashMap::new();
        for (n, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let e: Entry = serde_json::from_str(line)
                .map_err(|err| anyhow!("{}: not a proxy address entry ({err}); {advice}", at(n)))?;
            if !is_canonical(&e.name) {
                bail!(
                    "{}: name {:?} is not a lower-case fully qualified name (letters, digits, \
                     '-', '_', trailing dot); {advice}",
                    at(n),
                    e.name
                );
            }
            let (Some(s4), Some(s6)) = (
                self.slot_of(IpAddr::V4(e.v4)),
                self.slot_of(IpAddr::V6(e.v6)),
            ) else {
                bail!(
                    "{}: {} or {} of {:?} is outside the pool {} / {}; {advice}",
                    at(n),
                    e.v4,
                    e.v6,
                    e.name,
                    self.v4,
                    self.v6
                );
            };
            if s4 != s6 {
                bail!(
                    "{}: {} and {} of {:?} are not one pair (slot {s4} vs {s6}); {advice}",
                    at(n),
                    e.v4,
                    e.v6,
                    e.name
                );
            }
            if let Some(prev) = line_of_slot.get(&s4) {
                bail!(
                    "{}: {} is already given to another name on line {prev}; {advice}",
                    at(n),
                    e.v4
                );
            }
            if st.by_name.contains_key(&e.name) {
                bail!("{}: name {:?} appears twice; {advice}", at(n), e.name);
            }
            line_of_slot.insert(s4, n);
            st.by_slot.insert(s4, e.name.clone());
            st.by_name.insert(e.name, (s4, 0));
        }
        Ok(st)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let ctx = || format!("writing the proxy address file {}", path.display());
    let mut f = std::fs::File::create(&tmp).with_context(ctx)?;
    f.write_all(bytes).with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(file: Option<PathBuf>) -> Result<Pool> {
        Pool::new("100.96.0.0/30".parse()?, "2001:db8:1::/107".parse()?, file)
    }

    #[test]
    fn canonical_names() {
        assert!(is_canonical("app.corp.test."));
        assert!(is_canonical("_svc.a-b.test."));
        assert!(!is_canonical("App.corp.test."));
        assert!(!is_canonical("app.corp.test"));
        assert!(!is_canonical("a..test."));
        assert!(!is_canonical("."));
    }

    #[test]
    fn pairs_are_stable_distinct_and_bounded() -> Result<()> {
        let p = pool(None)?;
        assert_eq!(p.capacity(), 4);
        let a = p.get_or_alloc("a.test.")?;
        assert_eq!(p.get_or_alloc("a.test.")?, a);
        let mut seen = vec![a.v4];
        for n in ["b.test.", "c.test.", "d.test."] {
            let x = p.get_or_alloc(n)?;
            assert!(!seen.contains(&x.v4), "{n} reused {}", x.v4);
            assert_eq!(p.name_of(IpAddr::V4(x.v4)).as_deref(), Some(n));
            assert_eq!(p.name_of(IpAddr::V6(x.v6)).as_deref(), Some(n));
            seen.push(x.v4);
        }
        assert_eq!(
            p.get_or_alloc("e.test."),
            Err(PoolError::Exhausted { capacity: 4 })
        );
        assert_eq!(p.get_or_alloc("a.test.")?, a);
        assert_eq!(p.name_of("100.97.0.0".parse()?), None);
        Ok(())
    }

    #[test]
    fn colliding_names_probe_to_free_slots() -> Result<()> {
        let p = pool(None)?;
        let start = |n: &str| fnv1a(n.as_bytes()) % p.capacity();
        // Four names that all start at the same slot.
        let names: Vec<String> = (0..10_000)
            .map(|i| format!("n{i}.test."))
            .filter(|n| start(n) == start("n0.test."))
            .take(4)
            .collect();
        assert_eq!(names.len(), 4);
        let mut v4s: Vec<Ipv4Addr> = names
            .iter()
            .map(|n| p.get_or_alloc(n).map(|a| a.v4))
            .collect::<Result<_, _>>()?;
        for (n, a) in names.iter().zip(&v4s) {
            assert_eq!(p.name_of(IpAddr::V4(*a)).as_deref(), Some(n.as_str()));
        }
        v4s.sort();
        v4s.dedup();
        assert_eq!(v4s.len(), 4, "an address was given twice");
        Ok(())
    }

    #[test]
    fn bad_files_name_file_and_line() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("gateway-dns-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("pool.jsonl");
        let header = r#"{"format":"gateway-dns proxy addresses","version":1,"v4_prefix":"100.96.0.0/30","v6_prefix":"2001:db8:1::/107"}"#;
        let cases = [
            (
                format!("{header}\n{{\"name\":\"a.test.\",\"v4\":\"100.96.0.1\"\n"),
                "line 2",
            ),
            (
                format!(
                    "{header}\n{{\"name\":\"A.test.\",\"v4\":\"100.96.0.1\",\"v6\":\"2001:db8:1::1\"}}\n"
                ),
                "line 2",
            ),
            (
                format!(
                    "{header}\n\n{{\"name\":\"a.test.\",\"v4\":\"100.96.0.9\",\"v6\":\"2001:db8:1::9\"}}\n"
                ),
                "line 3",
            ),
            (
                format!(
                    "{header}\n{{\"name\":\"a.test.\",\"v4\":\"100.96.0.1\",\"v6\":\"2001:db8:1::2\"}}\n"
                ),
                "line 2",
            ),
            (
                format!(
                    "{header}\n{{\"name\":\"a.test.\",\"v4\":\"100.96.0.1\",\"v6\":\"2001:db8:1::1\"}}\n{{\"name\":\"b.test.\",\"v4\":\"100.96.0.1\",\"v6\":\"2001:db8:1::1\"}}\n"
                ),
                "line 3",
            ),
            (header.replace("/30", "/29"), "line 1"),
            (String::new(), "line 1"),
        ];
        for (text, want) in cases {
            std::fs::write(&path, &text)?;
            let err = format!("{:#}", pool(Some(path.clone())).expect_err(&text));
            assert!(
                err.contains(&path.display().to_string()) && err.contains(want),
                "{text}: {err}"
            );
        }
        // The positive control: a good file loads.
        std::fs::write(
            &path,
            format!(
                "{header}\n{{\"name\":\"a.test.\",\"v4\":\"100.96.0.1\",\"v6\":\"2001:db8:1::1\"}}\n"
            ),
        )?;
        let p = pool(Some(path.clone()))?;
        assert_eq!(
            p.get("a.test."),
            Some(("100.96.0.1".parse()?, "2001:db8:1::1".parse()?))
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
