//! Working sets: many distinct flows instead of one, so that lookups pay for cache misses
//! and large tables as they do under real traffic.
//!
//! A working set is a list of flows the benchmark programs (`bench_working_set` for
//! BPF_PROG_TEST_RUN, `bench_trafficgen` for live frames) rewrite frames to, one after the
//! other: source and destination address, source and destination port. The decision
//! tuples (source, destination, port) come from the policy and are checked with the
//! reference evaluator; when a working set holds more flows than the policy has distinct
//! tuples of a kind, the tuples repeat with other source ports (still distinct flows, as a
//! client opening several connections).

use crate::policies::{Probe, devices_by_owner, principal_sources};
use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, MapData};
use gateway_common::maps::bench::{WS_CAPACITY, WsConfig, WsFlow};
use gateway_user::Dataplane;
use policy_compiler::{Action, Packet, Policy, Reason, evaluate, random::Rng};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Working-set sizes of the decision suite.
pub const SIZES: [u32; 4] = [1, 1_000, 65_536, 1_048_576];

/// One decision tuple: TCP or UDP from `src` to `dst` port `dst_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl Tuple {
    fn packet(&self, proto: u8) -> Packet {
        Packet {
            src: self.src,
            dst: self.dst,
            proto,
            src_port: 40_000,
            dst_port: self.dst_port,
        }
    }

    pub fn probe(&self, proto: u8) -> Probe {
        Probe {
            src: self.src,
            dst: self.dst,
            proto,
            dst_port: self.dst_port,
        }
    }
}

fn host(address: &policy_compiler::model::Address) -> IpAddr {
    let Some(net) = address.net() else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    match net {
        ipnet::IpNet::V4(n) if n.prefix_len() < 32 => {
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1))
        }
        n => n.addr(),
    }
}

/// Up to `max` distinct TCP tuples `judge` allows, in family `v6`, drawn across the allow
/// grants (round robin over grants, so sources and resources spread), shuffled. `judge` is
/// fast (a model of the kernel's lookups); [`check_sample`] then asks the reference
/// evaluator about a sample.
pub fn allowed(
    p: &Policy,
    v6: bool,
    max: usize,
    rng: &mut Rng,
    judge: &dyn Fn(&Tuple, u8) -> Judged,
) -> Vec<Tuple> {
    let owners = devices_by_owner(p);
    let mut per_grant: Vec<Vec<Tuple>> = Vec::new();
    for g in &p.grants {
        if g.action != Action::Allow {
            continue;
        }
        let mut list = Vec::new();
        let srcs: Vec<IpAddr> = g
            .principals
            .iter()
            .flat_map(|r| principal_sources(p, &owners, r, usize::MAX))
            .filter(|a| a.is_ipv6() == v6)
            .collect();
        for (ri, &r) in g.resources.iter().enumerate() {
            let res = &p.resources[r];
            if res.address.net().is_none_or(|n| n.addr().is_ipv6() != v6) {
                continue;
            }
            let Some(port) = g.effective[ri].tcp.first() else {
                continue;
            };
            for &src in &srcs {
                list.push(Tuple {
                    src,
                    dst: host(&res.address),
                    dst_port: port,
                });
            }
        }
        if !list.is_empty() {
            per_grant.push(list);
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut i = 0;
    // Round robin over grants; each candidate checked by the evaluator (a deny grant or an
    // expiry may override an allow).
    let mut budget = max.saturating_mul(4).max(10_000);
    // Round robin over grants; each candidate judged (a deny grant or an expiry may
    // override an allow).
    while out.len() < max && budget > 0 {
        let mut any = false;
        for list in &per_grant {
            if let Some(t) = list.get(i) {
                any = true;
                budget = budget.saturating_sub(1);
                if seen.insert(*t) && judge(t, 6) == Judged::Allow {
                    out.push(*t);
                    if out.len() >= max {
                        break;
                    }
                }
            }
        }
        if !any {
            break;
        }
        i += 1;
    }
    shuffle(&mut out, rng);
    out
}

/// How [`allowed`] and [`denied`] are told a tuple's fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    Allow,
    Deny,
    Other,
}

/// Asks the reference evaluator about every `step`-th tuple (at most `n`): each must
/// satisfy `want`. The working-set cases then check every packet's reason in the kernel.
pub fn check_sample(
    p: &Policy,
    now: i64,
    tuples: &[Tuple],
    proto: u8,
    n: usize,
    want: fn(Reason) -> bool,
) -> Result<usize> {
    let step = tuples.len().div_ceil(n.max(1)).max(1);
    let mut asked = 0;
    for t in tuples.iter().step_by(step) {
        let r = evaluate(p, &t.packet(proto), now).reason;
        if !want(r) {
            bail!("working-set tuple {t:?} (protocol {proto}): the reference evaluator says {r:?}");
        }
        asked += 1;
    }
    Ok(asked)
}

/// Up to `max` distinct UDP tuples from principals to resources that `judge` denies (no
/// grant covers UDP there, or a deny grant), shuffled.
pub fn denied(
    p: &Policy,
    max: usize,
    rng: &mut Rng,
    judge: &dyn Fn(&Tuple, u8) -> Judged,
) -> Vec<Tuple> {
    let owners = devices_by_owner(p);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let v4: Vec<&policy_compiler::model::Resource> = p
        .resources
        .iter()
        .filter(|r| r.address.net().is_some_and(|n| n.addr().is_ipv4()))
        .collect();
    if v4.is_empty() {
        return out;
    }
    let mut tries = max.saturating_mul(4).max(10_000);
    let principals: Vec<IpAddr> = p
        .grants
        .iter()
        .flat_map(|g| g.principals.iter())
        .flat_map(|r| principal_sources(p, &owners, r, usize::MAX))
        .filter(IpAddr::is_ipv4)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if principals.is_empty() {
        return out;
    }
    while out.len() < max && tries > 0 {
        tries -= 1;
        let t = Tuple {
            src: principals[rng.below(principals.len())],
            dst: host(&v4[rng.below(v4.len())].address),
            dst_port: 1 + rng.below(60_000) as u16,
        };
        if seen.insert(t) && judge(&t, 17) == Judged::Deny {
            out.push(t);
        }
    }
    out
}

/// The evaluator's reasons a denied tuple may have.
pub fn is_deny(r: Reason) -> bool {
    matches!(r, Reason::NoGrant | Reason::DeniedByRule)
}

/// `n` distinct spoofed sources (198.19.0.0/16 and up: outside protected space, no
/// principal's) sending TCP to random IPv4 resources in enforce mode on random ports; the
/// evaluator is asked for a sample.
pub fn spoofed(p: &Policy, now: i64, n: usize, rng: &mut Rng) -> Result<Vec<Tuple>> {
    let principals: HashSet<IpAddr> = p
        .principals
        .iter()
        .flat_map(|pr| pr.addresses.iter().copied())
        .collect();
    let targets: Vec<IpAddr> = p
        .resources
        .iter()
        .filter(|r| r.address.net().is_some_and(|n| n.addr().is_ipv4()) && r.audit_rule.is_none())
        .map(|r| host(&r.address))
        .collect();
    if targets.is_empty() {
        bail!("no IPv4 resource in enforce mode");
    }
    let mut out = Vec::with_capacity(n);
    let mut k: u32 = 0;
    while out.len() < n {
        let src = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + k));
        k += 1;
        if principals.contains(&src) {
            continue;
        }
        out.push(Tuple {
            src,
            dst: targets[rng.below(targets.len())],
            dst_port: 1 + rng.below(60_000) as u16,
        });
    }
    for t in out.iter().step_by((n / 64).max(1)) {
        let r = evaluate(p, &t.packet(6), now).reason;
        if r != Reason::UnknownSource {
            bail!("spoofed tuple {t:?} evaluates to {r:?}, not an unknown source");
        }
    }
    shuffle(&mut out, rng);
    Ok(out)
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `n` flows over `tuples` (cycled; each cycle with other source ports).
pub fn flows(tuples: &[Tuple], n: u32) -> Vec<WsFlow> {
    (0..n as usize)
        .map(|i| {
            let t = &tuples[i % tuples.len()];
            let sport = 20_000u16.wrapping_add((i / tuples.len()) as u16);
            let mut f = [0u8; 36];
            f[..16].copy_from_slice(&addr16(t.src));
            f[16..32].copy_from_slice(&addr16(t.dst));
            f[32..34].copy_from_slice(&sport.to_be_bytes());
            f[34..36].copy_from_slice(&t.dst_port.to_be_bytes());
            f
        })
        .collect()
}

/// Writes a working set into a benchmark object's maps (`WS_FLOWS`, `WS_CONFIG`).
pub fn install(
    bench: &mut aya::Ebpf,
    flows: &[WsFlow],
    family: u32,
    mode: u32,
    stride: u32,
) -> Result<()> {
    use gateway_common::maps::bench as b;
    if flows.len() > WS_CAPACITY as usize {
        bail!("{} flows: the working set holds {WS_CAPACITY}", flows.len());
    }
    let t = Instant::now();
    {
        let mut arr: Array<&mut MapData, WsFlow> =
            Array::try_from(bench.map_mut(b::WS_FLOWS).context("WS_FLOWS missing")?)?;
        for (i, f) in flows.iter().enumerate() {
            arr.set(i as u32, f, 0)?;
        }
    }
    let mut cfg: Array<&mut MapData, WsConfig> =
        Array::try_from(bench.map_mut(b::WS_CONFIG).context("WS_CONFIG missing")?)?;
    cfg.set(0, [flows.len() as u32, family, mode, stride], 0)?;
    if t.elapsed() > Duration::from_secs(5) {
        crate::progress(&format!(
            "working set: {} flows written in {:.1}s",
            flows.len(),
            t.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// Turns the working set off (frames go through untouched).
pub fn clear(bench: &mut aya::Ebpf) -> Result<()> {
    use gateway_common::maps::bench as b;
    let mut cfg: Array<&mut MapData, WsConfig> =
        Array::try_from(bench.map_mut(b::WS_CONFIG).context("WS_CONFIG missing")?)?;
    cfg.set(0, [0, 0, 0, 0], 0)?;
    Ok(())
}

/// [`install`] into the data plane's benchmark object.
pub fn install_dp(
    dp: &mut Dataplane,
    flows: &[WsFlow],
    family: u32,
    mode: u32,
    stride: u32,
) -> Result<()> {
    install(dp.bench_object()?, flows, family, mode, stride)
}

/// Source ports a set of `n` flows over `tuples` distinct tuples uses ([`flows`]).
pub fn stride(tuples: usize, n: u32) -> u32 {
    (n as usize).div_ceil(tuples.max(1)) as u32
}
