//! An nftables ruleset with the same verdicts as a compiled view (decisions at `now`;
//! expired grants are gone, grants expiring later are in until the next regeneration).
//!
//! Shape: a `protected_v4/v6` interval set selects traffic the policy governs (everything
//! else is accepted by the base chain's policy); `src_class_v4/v6` verdict maps jump from
//! the source address to one chain per principal class; each class chain looks the
//! destination up in concatenated interval verdict maps (`daddr . l4proto . dport` and
//! `daddr` for ICMP) built from the disjoint address atoms; whatever no class entry
//! decides falls through to the per-atom default map (audit ranges) and then `drop`.
//!
//! Hooks: a connector's ruleset filters both forwarded traffic (`forward`) and traffic to
//! the connector's own addresses (`input`), so protected addresses it serves itself are
//! covered too; a device's filters what it sends (`output`). All at filter priority.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

use gateway_common::flow::proto;
use gateway_common::policy::Verdict;
use ipnet::IpNet;

use crate::compile::{CompileError, Host, HostView, compile};
use crate::model::{Policy, format_rfc3339};

/// (first port, last port, verdict).
type PortInterval = (u16, u16, Verdict);
/// A map element with its sort key: (address range, proto, first port, text).
type Element = (Range, u8, u16, String);

/// An inclusive address range in one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    v6: bool,
    lo: u128,
    hi: u128,
}

fn bounds(p: &IpNet) -> Range {
    match p {
        IpNet::V4(n) => Range {
            v6: false,
            lo: u128::from(u32::from(n.network())),
            hi: u128::from(u32::from(n.broadcast())),
        },
        IpNet::V6(n) => Range {
            v6: true,
            lo: u128::from(n.network()),
            hi: u128::from(n.broadcast()),
        },
    }
}

fn fmt_addr(v6: bool, a: u128) -> String {
    if v6 {
        Ipv6Addr::from(a).to_string()
    } else {
        Ipv4Addr::from(a as u32).to_string()
    }
}

fn fmt_range(r: &Range) -> String {
    // A range that is exactly a prefix is written as one.
    let size = r.hi - r.lo;
    if size == 0 {
        return fmt_addr(r.v6, r.lo);
    }
    if (size.wrapping_add(1)).is_power_of_two() && r.lo & size == 0 {
        let bits = if r.v6 { 128 } else { 32 };
        let len = bits - (size.count_ones());
        return format!("{}/{len}", fmt_addr(r.v6, r.lo));
    }
    format!("{}-{}", fmt_addr(r.v6, r.lo), fmt_addr(r.v6, r.hi))
}

/// For each emitted prefix, the address ranges it decides (itself minus more specific
/// emitted prefixes), as LPM would.
fn regions(view: &HostView) -> BTreeMap<IpNet, Vec<Range>> {
    let mut prefixes: Vec<IpNet> = view.atoms.iter().map(|a| a.prefix).collect();
    prefixes.sort_by_key(|p| (bounds(p).v6, bounds(p).lo, p.prefix_len()));
    let mut children: BTreeMap<IpNet, Vec<Range>> = BTreeMap::new();
    let mut stack: Vec<IpNet> = Vec::new();
    for p in &prefixes {
        while stack.last().is_some_and(|top| !top.contains(p)) {
            stack.pop();
        }
        if let Some(parent) = stack.last() {
            children.entry(*parent).or_default().push(bounds(p));
        }
        stack.push(*p);
    }
    let mut out = BTreeMap::new();
    for p in prefixes {
        let b = bounds(&p);
        let mut ranges = Vec::new();
        let mut cursor = Some(b.lo);
        for c in children.get(&p).map_or(&[][..], Vec::as_slice) {
            if let Some(cur) = cursor {
                if c.lo > cur {
                    ranges.push(Range {
                        v6: b.v6,
                        lo: cur,
                        hi: c.lo - 1,
                    });
                }
                cursor = c.hi.checked_add(1).filter(|&n| n <= b.hi);
            }
        }
        if let Some(cur) = cursor {
            ranges.push(Range {
                v6: b.v6,
                lo: cur,
                hi: b.hi,
            });
        }
        out.insert(p, ranges);
    }
    out
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "accept",
        Verdict::Deny => "drop",
        Verdict::Audit => "jump audit",
    }
}

fn write_elements(s: &mut String, elems: &[String]) {
    if elems.is_empty() {
        return;
    }
    s.push_str("\t\telements = {\n");
    for (i, e) in elems.iter().enumerate() {
        let sep = if i + 1 < elems.len() { "," } else { "" };
        let _ = writeln!(s, "\t\t\t{e}{sep}");
    }
    s.push_str("\t\t}\n");
}

fn family(v6: bool) -> (&'static str, &'static str, &'static str) {
    if v6 {
        ("v6", "ip6", "ipv6_addr")
    } else {
        ("v4", "ip", "ipv4_addr")
    }
}

/// Generates the ruleset (`table inet zt_gateway`) for `host` at `now`.
pub fn nft(policy: &Policy, host: &Host, now: i64) -> Result<String, CompileError> {
    let view = compile(policy, host, now)?;
    Ok(render(&view, now))
}

/// Renders a compiled view as an nftables ruleset.
pub fn render(view: &HostView, now: i64) -> String {
    let regions = regions(view);
    let mut atom_ranges: BTreeMap<u32, Vec<Range>> = BTreeMap::new();
    let mut atom_default: BTreeMap<u32, Verdict> = BTreeMap::new();
    for a in &view.atoms {
        atom_ranges
            .entry(a.atom)
            .or_default()
            .extend(regions.get(&a.prefix).cloned().unwrap_or_default());
        atom_default.insert(a.atom, a.default_verdict);
    }
    for v in atom_ranges.values_mut() {
        v.sort();
    }
    // Port intervals per (class, atom, proto) with the decision at `now`.
    let mut intervals: BTreeMap<(u32, u32, u8), Vec<PortInterval>> = BTreeMap::new();
    for r in &view.rules {
        let (verdict, _) = r.value.at(now);
        let lst = intervals
            .entry((r.key.class, r.key.atom, r.key.proto))
            .or_default();
        let (lo, hi) = (r.key.port, r.key.last_port());
        match lst.last_mut() {
            Some(last) if last.2 == verdict && u32::from(last.1) + 1 == u32::from(lo) => {
                last.1 = hi
            }
            _ => lst.push((lo, hi, verdict)),
        }
    }
    // A connector decides traffic it forwards into the remote network and traffic to its
    // own addresses in protected space (the same `protected` chain from `forward` and
    // `input`); a device decides what it sends (`output`).
    let (hooks, what): (&[(&str, &str)], String) = match &view.host {
        Host::Connector(c) => (
            &[("filter", "forward"), ("filter_input", "input")],
            format!("connector \"{c}\""),
        ),
        Host::Device(d) => (&[("filter", "output")], format!("device \"{d}\"")),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by policy-compiler for {what} at {}; do not edit.",
        format_rfc3339(now)
    );
    let _ = writeln!(s, "# Remote networks: {}.", view.networks.join(", "));
    // The ruleset holds decisions at `now`: it must be regenerated at the first expiry.
    if let Some(r) = view
        .rules
        .iter()
        .filter_map(|r| r.value.valid_until_unix)
        .min()
    {
        let _ = writeln!(
            s,
            "# Regenerate at {} (a grant expires).",
            format_rfc3339(r)
        );
    }
    s.push_str("table inet zt_gateway {\n");
    for v6 in [false, true] {
        let (fam, _, ty) = family(v6);
        let elems: Vec<String> = view
            .protected
            .iter()
            .filter(|p| matches!(p, IpNet::V6(_)) == v6)
            .map(|p| p.to_string())
            .collect();
        let _ = writeln!(
            s,
            "\tset protected_{fam} {{\n\t\ttype {ty}\n\t\tflags interval"
        );
        write_elements(&mut s, &elems);
        s.push_str("\t}\n\n");
        let elems: Vec<String> = view
            .sources
            .iter()
            .filter(|x| x.addr.is_ipv6() == v6)
            .map(|x| format!("{} : jump class_{}", x.addr, x.class))
            .collect();
        let _ = writeln!(s, "\tmap src_class_{fam} {{\n\t\ttype {ty} : verdict");
        write_elements(&mut s, &elems);
        s.push_str("\t}\n\n");
        let mut elems: Vec<(Range, String)> = Vec::new();
        for (atom, ranges) in &atom_ranges {
            if atom_default.get(atom) == Some(&Verdict::Audit) {
                elems.extend(
                    ranges
                        .iter()
                        .filter(|r| r.v6 == v6)
                        .map(|r| (*r, format!("{} : jump audit", fmt_range(r)))),
                );
            }
        }
        elems.sort();
        let _ = writeln!(
            s,
            "\tmap default_{fam} {{\n\t\ttype {ty} : verdict\n\t\tflags interval"
        );
        write_elements(&mut s, &elems.into_iter().map(|e| e.1).collect::<Vec<_>>());
        s.push_str("\t}\n\n");
    }
    // Per-class maps.
    let mut class_maps: BTreeMap<u32, [Vec<Element>; 4]> = BTreeMap::new();
    for c in 1..=view.classes {
        class_maps.insert(c, Default::default());
    }
    for ((class, atom, pr), ivs) in &intervals {
        let default = atom_default.get(atom).copied().unwrap_or(Verdict::Deny);
        let Some(ranges) = atom_ranges.get(atom) else {
            continue;
        };
        let maps = class_maps.entry(*class).or_default();
        for r in ranges {
            for &(lo, hi, v) in ivs {
                if v == default {
                    continue;
                }
                let icmp = matches!(*pr, proto::ICMP | proto::ICMPV6);
                let slot = usize::from(r.v6) * 2 + usize::from(icmp);
                let e = if icmp {
                    format!("{} : {}", fmt_range(r), verdict_str(v))
                } else {
                    let ports = if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    };
                    let pname = if *pr == proto::TCP { "tcp" } else { "udp" };
                    format!("{} . {pname} . {ports} : {}", fmt_range(r), verdict_str(v))
                };
                maps[slot].push((*r, *pr, lo, e));
            }
        }
    }
    for (class, maps) in &mut class_maps {
        for (slot, elems) in maps.iter_mut().enumerate() {
            let v6 = slot >= 2;
            let icmp = slot % 2 == 1;
            let (fam, _, ty) = family(v6);
            elems.sort();
            if icmp {
                let _ = writeln!(
                    s,
                    "\tmap class_{class}_icmp_{fam} {{\n\t\ttype {ty} : verdict\n\t\tflags interval"
                );
            } else {
                let _ = writeln!(
                    s,
                    "\tmap class_{class}_ports_{fam} {{\n\t\ttype {ty} . inet_proto . inet_service : verdict\n\t\tflags interval"
                );
            }
            write_elements(
                &mut s,
                &elems.iter().map(|e| e.3.clone()).collect::<Vec<_>>(),
            );
            s.push_str("\t}\n\n");
        }
    }
    s.push_str("\tchain audit {\n\t\tcounter log prefix \"zt-audit \" level info accept\n\t}\n\n");
    for (class, maps) in &class_maps {
        let _ = writeln!(s, "\tchain class_{class} {{");
        for v6 in [false, true] {
            let (fam, ipk, _) = family(v6);
            let slot = usize::from(v6) * 2;
            if !maps[slot].is_empty() {
                let _ = writeln!(
                    s,
                    "\t\tmeta l4proto {{ tcp, udp }} {ipk} daddr . meta l4proto . th dport vmap @class_{class}_ports_{fam}"
                );
            }
            if !maps[slot + 1].is_empty() {
                let icmp = if v6 { "ipv6-icmp" } else { "icmp" };
                let _ = writeln!(
                    s,
                    "\t\tmeta l4proto {icmp} {ipk} daddr vmap @class_{class}_icmp_{fam}"
                );
            }
        }
        s.push_str("\t}\n\n");
    }
    s.push_str("\tchain protected {\n");
    s.push_str("\t\tip saddr vmap @src_class_v4\n\t\tip6 saddr vmap @src_class_v6\n");
    s.push_str("\t\tip daddr vmap @default_v4\n\t\tip6 daddr vmap @default_v6\n");
    s.push_str("\t\tcounter drop\n\t}\n\n");
    for (i, (chain, hook)) in hooks.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority filter; policy accept;"
        );
        s.push_str("\t\tip daddr @protected_v4 jump protected\n\t\tip6 daddr @protected_v6 jump protected\n\t}\n");
    }
    s.push_str("}\n");
    s
}
