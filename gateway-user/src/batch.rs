//! Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+): a few system calls for
//! a table of a quarter million flows, instead of two per entry (next key, then lookup)
//! that also race with the kernel's own inserts and deletes. aya 0.14 has no batch API,
//! so this is the one raw `bpf(2)` call in the project.

use anyhow::{Result, bail};
use aya::maps::MapData;
use std::os::fd::{AsFd as _, AsRawFd as _};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call: more than any hash bucket holds (else ENOSPC).
const CHUNK: u32 = 8192;

/// `union bpf_attr` for the batch commands (`struct { ... } batch`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The per-CPU `u64` counters of a per-CPU array, summed over CPUs, in index order: one
/// system call for the whole array (the agent and the fuzzer read them constantly).
pub fn per_cpu_sums(map: &MapData) -> Result<Vec<u64>> {
    let info = map.info()?;
    if info.key_size() != 4 || info.value_size() != 8 {
        bail!("map {:?} is not a per-CPU array of u64", info.name_as_str());
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("counting CPUs: {e}"))?;
    let n = info.max_entries() as usize;
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![0u8; n * 4];
    let mut values = vec![0u8; n * 8 * cpus];
    let mut token_out = [0u8; 8];
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: token_out.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: n as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: buffers sized for `n` keys and `n` per-CPU values, alive for the call.
    if let Err(e) = unsafe { lookup_batch(&mut attr) }
        && e.raw_os_error() != Some(libc::ENOENT)
    {
        bail!("BPF_MAP_LOOKUP_BATCH on {:?}: {e}", info.name_as_str());
    }
    let mut sums = vec![0u64; n];
    for i in 0..attr.count as usize {
        let key = u32::from_ne_bytes(keys[i * 4..i * 4 + 4].try_into()?) as usize;
        let mut sum = 0u64;
        for c in 0..cpus {
            let at = (i * cpus + c) * 8;
            sum = sum.wrapping_add(u64::from_ne_bytes(values[at..at + 8].try_into()?));
        }
        if let Some(s) = sums.get_mut(key) {
            *s = sum;
        }
    }
    Ok(sums)
}

/// Every (key, value) of a hash map (`BPF_MAP_TYPE_HASH` / `LRU_HASH`) whose key and
/// value types are `K` and `V`.
pub fn read_all<K: aya::Pod, V: aya::Pod>(map: &MapData) -> Result<Vec<(K, V)>> {
    let info = map.info()?;
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    if info.key_size() as usize != ks || info.value_size() as usize != vs {
        bail!(
            "map {:?}: key/value sizes {}/{} are not {ks}/{vs}",
            info.name_as_str(),
            info.key_size(),
            info.value_size()
        );
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![0u8; CHUNK as usize * ks];
    let mut values = vec![0u8; CHUNK as usize * vs];
    // The batch token of hash maps is a bucket index (u32); room for 8 bytes.
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    let mut out = Vec::new();
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` describes buffers that stay alive and are large enough for
        // `count` keys and values of the map's sizes (checked above) and for the token.
        let err = unsafe { lookup_batch(&mut attr) }.err();
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => bail!("BPF_MAP_LOOKUP_BATCH on {:?}: {e}", info.name_as_str()),
        };
        for i in 0..attr.count as usize {
            // SAFETY: the kernel wrote `count` whole keys and values; both are plain data
            // (`Pod`), read unaligned from byte buffers.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys[i * ks..].as_ptr().cast::<K>()),
                    std::ptr::read_unaligned(values[i * vs..].as_ptr().cast::<V>()),
                )
            };
            out.push((k, v));
        }
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// `BPF_MAP_LOOKUP_BATCH` with `attr`; the kernel updates `attr.count`.
///
/// # Safety
/// `attr` must point at key, value and token buffers that are alive for the call and large
/// enough for `attr.count` entries of the map's key and value sizes.
unsafe fn lookup_batch(attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: the caller vouches for the buffers `attr` points at.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
