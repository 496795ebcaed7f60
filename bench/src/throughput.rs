//! Throughput: a traffic generator in one namespace, the engine under test on the
//! receiving end of a veth pair in another.
//!
//! Sender: `gateway_trafficgen` run with BPF_PROG_TEST_RUN in live-frames mode redirects
//! every frame out of the sender's veth end (bounded count, one syscall). Receiver: the
//! veth's NAPI poll runs the engine — `none` (gateway_noop: every frame to the stack),
//! `floor` (gateway_drop_all), `xdp` (gateway_xdp with the policy) or `nft` (no XDP
//! program; the `policy_compiler::nft` ruleset in the receiving namespace, whose
//! connector ruleset filters `input` as well as `forward`). The receiver delivers what it
//! lets through locally (`local 198.18.0.0/16` route), so "delivered" is `Ip InDelivers`
//! for every engine. Not forwarding: live-frames pages are recycled with whatever the
//! stack wrote into them, and forwarding rewrites TTL and MAC addresses in place, so
//! after one trip round the page pool the frames were no longer for the receiver. The veth's NAPI runs threaded,
//! pinned to the other CPU than the generator when both exist.

use crate::policies::{self, NOW, Probe};
use crate::working_set::{self, Tuple};
use crate::{Opts, progress};
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use gateway_common::{
    Reason,
    maps::{self, bench::WS_SAME_PORT},
};
use gateway_test_support::{
    netns::{NetNs, veth_pair},
    testkit::load_policy,
};
use gateway_user::{Dataplane, dataplane::BENCH_OBJECT};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub rules: u32,
    pub engine: &'static str,
    pub traffic: &'static str,
    /// Distinct flows the generator cycles through (1: one tuple, the best case).
    pub working_set: u32,
    /// Ethernet frame bytes on the wire, FCS included (without preamble and gap).
    pub frame_bytes: u32,
    /// `pps` in Gbit/s of frames (`frame_bytes` each).
    pub gbps: f64,
    /// Packets per second the receiver dropped (`measure` = dropped) or forwarded
    /// (`delivered`).
    pub pps: f64,
    pub measure: &'static str,
    /// Frames the generator offered per second (sent or refused by a full veth ring).
    pub offered_pps: f64,
    /// Frames the receiving veth processed per second.
    pub processed_pps: f64,
    pub frames: u64,
    pub seconds: f64,
    /// Runs of which `pps` is the median.
    pub rounds: usize,
}

/// Sender side: the trafficgen program of a second copy of the object.
struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    fn new(ifindex: u32) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .context("loading the object for the generator")?;
        let prog: &mut Xdp = ebpf
            .program_mut(maps::bench::PROG_TRAFFICGEN)
            .context("trafficgen missing")?
            .try_into()?;
        prog.load()?;
        let mut target: Array<_, u32> = Array::try_from(
            ebpf.map_mut(maps::bench::TRAFFICGEN_TARGET)
                .context("TRAFFICGEN_TARGET missing")?,
        )?;
        target.set(0, ifindex, 0)?;
        Ok(Generator { ebpf })
    }

    /// Sends `count` copies of `frame` from inside `ns`, on CPU 0; returns seconds taken.
    fn send(&mut self, ns: &NetNs, frame: &[u8], count: u32) -> Result<f64> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(maps::bench::PROG_TRAFFICGEN)
            .context("trafficgen missing")?
            .try_into()?;
        ns.run(move || -> Result<f64> {
            pin_self(0);
            let t = Instant::now();
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: count,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN live frames")?;
            Ok(t.elapsed().as_secs_f64())
        })?
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pin(pid: i32, cpu: usize) {
    if cpus() < 2 {
        return;
    }
    // SAFETY: a zeroed cpu_set_t with one bit set, passed by pointer with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub(crate) fn pin_self(cpu: usize) {
    pin(0, cpu);
}

/// Threaded NAPI for `iface` in `ns`, its kernel threads pinned to CPU 1. Returns whether
/// a NAPI thread was found.
fn threaded_napi(ns: &NetNs, iface: &str) -> bool {
    let _ = ns.exec(
        "sh",
        &["-c", &format!("echo 1 > /sys/class/net/{iface}/threaded")],
    );
    let prefix = format!("napi/{iface}");
    let prefix: String = prefix.chars().take(15).collect();
    let mut found = false;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                && comm.trim_end().starts_with(&prefix)
            {
                pin(pid, 1);
                found = true;
            }
        }
    }
    found
}

/// GRO on/off for `iface` (ETHTOOL_SGRO): on a veth without an XDP program, GRO enables
/// the NAPI poll that XDP-redirected frames need.
fn set_gro(ns: &NetNs, iface: &str, on: bool) -> Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    let iface = iface.to_string();
    ns.run(move || -> Result<()> {
        let mut val = EthtoolValue {
            cmd: ETHTOOL_SGRO,
            data: u32::from(on),
        };
        let mut ifr = Ifreq {
            name: [0; libc::IFNAMSIZ],
            data: (&raw mut val).cast(),
            _pad: [0; 16],
        };
        for (d, s) in ifr.name.iter_mut().zip(iface.bytes()) {
            *d = s;
        }
        // SAFETY: plain socket; the ioctl reads `ifr` and the ethtool_value it points to,
        // both alive for the call.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                bail!("ETHTOOL_SGRO on {iface}: {err}");
            }
        }
        Ok(())
    })?
}

fn link_stats(ns: &NetNs, iface: &str) -> Result<(u64, u64)> {
    let out = ns.ip(&["-j", "-s", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let s = &v[0]["stats64"];
    let rx = s["rx"]["packets"]
        .as_u64()
        .ok_or_else(|| anyhow!("no rx stats for {iface}"))?;
    let tx = s["tx"]["packets"]
        .as_u64()
        .ok_or_else(|| anyhow!("no tx stats for {iface}"))?;
    Ok((rx, tx))
}

/// The nft table of an engine: (family, name).
fn nft_table(engine: &str) -> (&'static str, &'static str) {
    if engine == "nft-netdev" {
        ("netdev", "zt_gateway_ingress")
    } else {
        ("inet", "zt_gateway")
    }
}

/// Sum of the packet counters in the nft `protected` chain (its final `counter drop`).
fn nft_dropped(ns: &NetNs, engine: &str) -> Result<u64> {
    let (family, table) = nft_table(engine);
    let out = ns.exec("nft", &["-j", "list", "chain", family, table, "protected"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    fn walk(v: &serde_json::Value, sum: &mut u64) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(c) = m.get("counter")
                    && let Some(p) = c.get("packets").and_then(|p| p.as_u64())
                {
                    *sum += p;
                }
                m.values().for_each(|x| walk(x, sum));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, sum)),
            _ => {}
        }
    }
    let mut sum = 0;
    walk(&v, &mut sum);
    Ok(sum)
}

/// `Ip: InDelivers` of the namespace: datagrams handed to the transport layer.
fn in_delivers(ns: &NetNs) -> Result<u64> {
    let out = ns.exec("cat", &["/proc/net/snmp"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
        bail!("no Ip lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InDelivers")
        .and_then(|(_, v)| v.parse().ok())
        .context("no Ip InDelivers")
}

fn denied(dp: &Dataplane) -> Result<u64> {
    let s = dp.verdict_stats()?;
    Ok(Reason::ALL
        .iter()
        .filter(|r| !r.passes())
        .map(|r| s.reason(*r))
        .sum())
}

struct Topology {
    tx: NetNs,
    rx: NetNs,
    rx_if: String,
    tx_ifindex: u32,
}

fn topology() -> Result<Topology> {
    let tx = NetNs::new("zbt")?;
    let rx = NetNs::new("zbr")?;
    let (a, b) = veth_pair(&tx, &["198.19.254.1/24"], &rx, &["198.19.254.2/24"])?;
    tx.ip(&[
        "link",
        "set",
        "dev",
        &a.iface,
        "address",
        "02:00:00:00:00:0a",
    ])?;
    rx.ip(&[
        "link",
        "set",
        "dev",
        &b.iface,
        "address",
        "02:00:00:00:00:0b",
    ])?;
    // Everything toward the protected space is delivered locally (see the module docs).
    rx.ip(&["route", "add", "local", "198.18.0.0/16", "dev", "lo"])?;
    let name = a.iface.clone();
    let tx_ifindex = tx.run(move || {
        let c = std::ffi::CString::new(name).unwrap_or_default();
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    })?;
    if tx_ifindex == 0 {
        bail!("sender veth has no ifindex");
    }
    Ok(Topology {
        tx,
        rx,
        rx_if: b.iface,
        tx_ifindex,
    })
}

/// The resource and grant allowed throughput traffic uses: every service account may send
/// UDP to it (many allowed sources for the working-set cases).
fn udp_grant(p: &policy_compiler::Policy) -> String {
    let principals: Vec<String> = p
        .service_accounts
        .iter()
        .map(|s| format!("\"service_account:{}\"", s.name))
        .collect();
    format!(
        "
[[resource]]
name = \"bench-udp\"
network = \"dc\"
address = \"198.18.250.250\"
udp = [\"9000\"]

[[allow]]
name = \"bench-udp\"
principals = [{}]
resources = [\"bench-udp\"]
",
        principals.join(", ")
    )
}

/// One kind of traffic: what the generator sends.
struct Traffic {
    /// Name in the results (`deny`, `deny-spoofed`, `allow`, `allow-flows`).
    name: &'static str,
    /// The tuples the frames are rewritten to (one tuple: the frame as built).
    tuples: Vec<Tuple>,
    /// Distinct flows sent.
    flows: u32,
    /// Ethernet frame bytes on the wire, FCS included (64, 512, 1518).
    frame_bytes: u32,
    deny: bool,
}

/// UDP payload bytes for a wire frame of `frame_bytes` (14 Ethernet + 20 IPv4 + 8 UDP +
/// payload + 4 FCS).
fn payload_for(frame_bytes: u32) -> usize {
    frame_bytes.saturating_sub(14 + 20 + 8 + 4) as usize
}

/// Engines the suite compares.
const ENGINES: [&str; 6] = ["none", "floor", "floor-read", "xdp", "nft", "nft-netdev"];

/// The stateless netdev-ingress equivalent of the connector's ruleset: the same sets,
/// verdict maps and class chains (the deny side is decided entirely there: source class,
/// then destination and port), in a `netdev` table whose one base chain hooks `ingress` of
/// the client-facing device, the earliest hook nftables has. No conntrack runs before it.
fn netdev_ruleset(inet: &str, device: &str) -> Result<String> {
    let body_start = inet
        .find("table inet zt_gateway {\n")
        .context("no inet table in the ruleset")?;
    let base = inet
        .find("\tchain filter {")
        .context("no base chain in the ruleset")?;
    let mut s = String::new();
    s.push_str("table netdev zt_gateway_ingress {\n");
    s.push_str(&inet[body_start + "table inet zt_gateway {\n".len()..base]);
    s.push_str(&format!(
        "\tchain ingress {{\n\t\ttype filter hook ingress device \"{device}\" priority filter; policy accept;\n\t\tip daddr @protected_v4 jump protected\n\t\tip6 daddr @protected_v6 jump protected\n\t}}\n}}\n"
    ));
    Ok(s)
}

pub fn run(opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let (secs, rounds) = if opts.quick { (1.0, 3) } else { (3.0, 5) };
    let topo = topology()?;
    let mut generator = Generator::new(topo.tx_ifindex)?;
    let sizes: &[u32] = &[10, 1_000, 10_000];
    for &rules in sizes {
        let largest = rules == *sizes.last().unwrap_or(&rules);
        let (g, probes, udp_allow, allowed) = bench_policy(rules)?;
        let mut rng = policy_compiler::random::Rng(0x7c00_5eed ^ u64::from(rules));
        let spoofed = working_set::spoofed(&g.policy, NOW(), 65_536, &mut rng)?;
        let mut dp = Dataplane::load_with_bench()?;
        load_policy(&mut dp, &g.text, "connector:conn", NOW())?;
        let t = Instant::now();
        let ruleset = policy_compiler::nft(
            &g.policy,
            &policy_compiler::Host::Connector("conn".into()),
            NOW(),
        )?;
        let nft_path =
            std::env::temp_dir().join(format!("zt-bench-{}-{rules}.nft", std::process::id()));
        std::fs::write(&nft_path, &ruleset)?;
        let netdev_path = std::env::temp_dir().join(format!(
            "zt-bench-{}-{rules}-netdev.nft",
            std::process::id()
        ));
        std::fs::write(&netdev_path, netdev_ruleset(&ruleset, &topo.rx_if)?)?;
        progress(&format!(
            "throughput: {rules} rules: policy loaded, nft ruleset {} KB rendered in {:.1}s; {} allowed UDP sources",
            ruleset.len() / 1024,
            t.elapsed().as_secs_f64(),
            allowed.len()
        ));
        let one = |name, probe: &Probe, frame_bytes, deny| Traffic {
            name,
            tuples: vec![Tuple {
                src: probe.src,
                dst: probe.dst,
                dst_port: probe.dst_port,
            }],
            flows: 1,
            frame_bytes,
            deny,
        };
        let mut traffic = vec![
            one("deny", &probes.udp_deny, 64, true),
            Traffic {
                name: "deny-spoofed",
                tuples: spoofed.clone(),
                flows: 65_536,
                frame_bytes: 64,
                deny: true,
            },
            one("allow", &udp_allow, 64, false),
            Traffic {
                name: "allow-flows",
                tuples: allowed.clone(),
                flows: 65_536,
                frame_bytes: 64,
                deny: false,
            },
        ];
        if largest {
            // Frame sizes, and more flows than the flow table holds.
            for size in [512, 1518] {
                traffic.push(one("allow", &udp_allow, size, false));
                traffic.push(one("deny", &probes.udp_deny, size, true));
            }
            traffic.push(Traffic {
                name: "allow-flows",
                tuples: allowed.clone(),
                flows: 2 * maps::FLOWS_OTHER_CAPACITY,
                frame_bytes: 64,
                deny: false,
            });
        }
        for engine in ENGINES {
            // Set the engine up.
            let mut link = None;
            match engine {
                "nft" | "nft-netdev" => {
                    set_gro(&topo.rx, &topo.rx_if, true)?;
                    let path = if engine == "nft" {
                        &nft_path
                    } else {
                        &netdev_path
                    };
                    let path = path.to_string_lossy().to_string();
                    let t = Instant::now();
                    topo.rx.exec("timeout", &["300", "nft", "-f", &path])?;
                    progress(&format!(
                        "throughput: {rules} rules: {engine}: nft -f took {:.1}s",
                        t.elapsed().as_secs_f64()
                    ));
                }
                _ => {
                    let prog = match engine {
                        "none" => maps::bench::PROG_NOOP,
                        "floor" => maps::bench::PROG_DROP_ALL,
                        "floor-read" => maps::bench::PROG_DROP_READ,
                        _ => maps::PROG_XDP,
                    };
                    let iface = topo.rx_if.clone();
                    let p = dp.xdp_named(prog)?;
                    link = Some((
                        prog,
                        topo.rx.run(move || p.attach(&iface, XdpMode::Driver))??,
                    ));
                }
            }
            let threaded = threaded_napi(&topo.rx, &topo.rx_if);
            for tr in &traffic {
                if engine == "floor-read" && !tr.deny {
                    // A reference for the drop path only.
                    continue;
                }
                let frame = policies::frame(&tr.tuples[0].probe(17), payload_for(tr.frame_bytes));
                if tr.flows > 1 {
                    let flows = working_set::flows(&tr.tuples, tr.flows);
                    working_set::install(&mut generator.ebpf, &flows, 4, WS_SAME_PORT, 0)?;
                } else {
                    working_set::clear(&mut generator.ebpf)?;
                }
                // Warm up (for the flow cases: every flow opened once) and calibrate the
                // count for about `secs` seconds.
                let warm = 100_000u32.max(tr.flows);
                let w = generator.send(&topo.tx, &frame, warm)?;
                if engine == "xdp" {
                    let _ = dp.drain_events();
                }
                let count =
                    ((f64::from(warm) / w.max(1e-6)) * secs).clamp(100_000.0, 30_000_000.0) as u32;
                // Median of `rounds` runs (by the measured rate).
                let mut runs: Vec<(f64, &'static str, f64, u64)> = Vec::new();
                for _ in 0..rounds {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    let (rx0, _) = link_stats(&topo.rx, &topo.rx_if)?;
                    let fwd0 = in_delivers(&topo.rx)?;
                    let deny0 = if engine == "xdp" { denied(&dp)? } else { 0 };
                    let elapsed = generator.send(&topo.tx, &frame, count)?;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    let (rx1, _) = link_stats(&topo.rx, &topo.rx_if)?;
                    let fwd1 = in_delivers(&topo.rx)?;
                    let processed = rx1.saturating_sub(rx0);
                    let forwarded = fwd1.saturating_sub(fwd0);
                    let (measure, n) = match (engine, tr.deny) {
                        ("floor" | "floor-read", _) => ("dropped", processed),
                        ("xdp", true) => ("dropped", denied(&dp)?.saturating_sub(deny0)),
                        // Everything the nft engines did not deliver, they dropped (the
                        // deny traffic has no other way out; listing the ruleset's counter
                        // would cost seconds at 10k rules). Checked against the ruleset's
                        // own drop counter once per engine below.
                        ("nft" | "nft-netdev", true) => {
                            ("dropped", processed.saturating_sub(forwarded))
                        }
                        _ => ("delivered", forwarded),
                    };
                    if engine == "xdp" {
                        let _ = dp.drain_events();
                    }
                    runs.push((n as f64 / elapsed, measure, elapsed, processed));
                }
                runs.sort_by(|x, y| x.0.total_cmp(&y.0));
                let (pps, measure, elapsed, processed) = runs[runs.len() / 2];
                let gbps = pps * f64::from(tr.frame_bytes) * 8.0 / 1e9;
                progress(&format!(
                    "throughput: {rules} rules {engine:>10} {:>12} {:>4}B x{:<6}: {:.3} Mpps {gbps:.2} Gbit/s {measure} (offered {:.3}, processed {:.3} Mpps, {count} frames in {elapsed:.2}s, napi thread: {threaded})",
                    tr.name,
                    tr.frame_bytes,
                    tr.flows,
                    pps / 1e6,
                    f64::from(count) / elapsed / 1e6,
                    processed as f64 / elapsed / 1e6
                ));
                rows.push(Row {
                    rules,
                    engine,
                    traffic: tr.name,
                    working_set: tr.flows,
                    frame_bytes: tr.frame_bytes,
                    pps,
                    gbps,
                    measure,
                    offered_pps: f64::from(count) / elapsed,
                    processed_pps: processed as f64 / elapsed,
                    frames: u64::from(count),
                    rounds,
                    seconds: elapsed,
                });
            }
            working_set::clear(&mut generator.ebpf)?;
            if engine.starts_with("nft") {
                // The ruleset's final `counter drop` saw the deny traffic: at least the
                // dropped frames counted above went through it.
                let counted = nft_dropped(&topo.rx, engine)?;
                let claimed: f64 = rows
                    .iter()
                    .filter(|r| r.rules == rules && r.engine == engine && r.measure == "dropped")
                    .map(|r| r.pps * r.seconds)
                    .sum();
                if (counted as f64) < claimed * 0.99 {
                    bail!(
                        "{engine} at {rules} rules: its drop counter says {counted}, the runs claimed {claimed:.0} drops"
                    );
                }
            }
            // Tear the engine down.
            match link {
                Some((prog, id)) => {
                    let p = dp.xdp_named(prog)?;
                    topo.rx.run(move || p.detach(id))??;
                }
                None => {
                    let (family, table) = nft_table(engine);
                    topo.rx.exec("nft", &["delete", "table", family, table])?;
                    set_gro(&topo.rx, &topo.rx_if, false)?;
                }
            }
        }
        let _ = std::fs::remove_file(&nft_path);
        let _ = std::fs::remove_file(&netdev_path);
    }
    Ok(())
}

/// The throughput policy of `rules` rules: the generated one plus `bench-udp` (allowed
/// traffic is UDP: a TCP SYN delivered locally would cost a RST each), its probes, the
/// allowed UDP probe and every allowed UDP source.
fn bench_policy(rules: u32) -> Result<(policies::Generated, policies::Probes, Probe, Vec<Tuple>)> {
    let mut g = policies::for_rules(rules, 0x7c00 + u64::from(rules))?;
    let grant = udp_grant(&g.policy);
    g.text.push_str(&grant);
    g.policy = policies::parse(&g.text, NOW())?;
    let probes = policies::probes(&g.policy, NOW())?;
    let udp_allow = policies::udp_allow_probe(&g.policy, NOW())?;
    let allowed = allowed_udp(&g.policy)?;
    Ok((g, probes, udp_allow, allowed))
}

/// The allowed UDP tuples toward `bench-udp`: every IPv4 address of every service-account
/// key (the grant of [`udp_grant`]), each checked with the reference evaluator.
fn allowed_udp(p: &policy_compiler::Policy) -> Result<Vec<Tuple>> {
    let mut out = Vec::new();
    for sa in &p.service_accounts {
        for k in &sa.keys {
            for a in k.addresses.iter().filter(|a| a.is_ipv4()) {
                let t = Tuple {
                    src: *a,
                    dst: std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 250, 250)),
                    dst_port: 9000,
                };
                let pkt = policy_compiler::Packet {
                    src: t.src,
                    dst: t.dst,
                    proto: 17,
                    src_port: 20_000,
                    dst_port: 9000,
                };
                if policy_compiler::evaluate(p, &pkt, NOW()).reason
                    == policy_compiler::Reason::Granted
                {
                    out.push(t);
                }
            }
        }
    }
    if out.is_empty() {
        bail!("no service-account key may send UDP to bench-udp");
    }
    Ok(out)
}

/// `--iface IFACE --duration S`: the engines on a real interface, for a network engineer's
/// own NIC and traffic generator (not run in CI). Each engine (`none`, `floor`, `xdp`) is
/// attached to `iface` in turn for `duration` seconds, native XDP where the driver has it
/// (generic otherwise, said in the row); what the interface received and what the engine
/// dropped are read from the interface's counters and the gateway's verdict counters.
/// The policy is the generated one of `rules` rules plus `bench-udp`; the addresses an
/// external generator should send are printed first.
pub fn run_nic(iface: &str, duration: f64, rules: u32, rows: &mut Vec<Row>) -> Result<()> {
    let ifindex = {
        let c = std::ffi::CString::new(iface)?;
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    };
    if ifindex == 0 {
        bail!("interface {iface} not found");
    }
    let (g, probes, udp_allow, allowed) = bench_policy(rules)?;
    progress(&format!(
        "nic: {iface}: policy of {rules} rules (connector view). Send from your generator: \
         allowed UDP {} -> {}:{} (or any of {} service-account sources to that address and \
         port), denied UDP {} -> {}:{}, spoofed: any source outside 198.18.0.0/16 toward \
         {} (protected space 198.18.0.0/16)",
        udp_allow.src,
        udp_allow.dst,
        udp_allow.dst_port,
        allowed.len(),
        probes.udp_deny.src,
        probes.udp_deny.dst,
        probes.udp_deny.dst_port,
        probes.udp_deny.dst,
    ));
    let mut dp = Dataplane::load_with_bench()?;
    load_policy(&mut dp, &g.text, "connector:conn", NOW())?;
    let stat = |name: &str| -> Result<u64> {
        let p = format!("/sys/class/net/{iface}/statistics/{name}");
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {p}"))?
            .trim()
            .parse()?)
    };
    for engine in ["none", "floor", "xdp"] {
        let prog = match engine {
            "none" => maps::bench::PROG_NOOP,
            "floor" => maps::bench::PROG_DROP_ALL,
            _ => maps::PROG_XDP,
        };
        let p = dp.xdp_named(prog)?;
        let (id, mode) = match p.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                progress(&format!(
                    "nic: {iface}: native XDP refused ({e}); attaching generic (skb) XDP"
                ));
                (p.attach(iface, XdpMode::Skb)?, "generic")
            }
        };
        let rx0 = stat("rx_packets")?;
        let deny0 = denied(&dp)?;
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < duration {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = dp.drain_events();
        }
        let elapsed = t.elapsed().as_secs_f64();
        let processed = stat("rx_packets")?.saturating_sub(rx0);
        let dropped = match engine {
            "none" => 0,
            "floor" => processed,
            _ => denied(&dp)?.saturating_sub(deny0),
        };
        dp.xdp_named(prog)?.detach(id)?;
        let passed = processed.saturating_sub(dropped);
        progress(&format!(
            "nic: {iface} {engine:>5} ({mode}): {:.3} Mpps received, {:.3} Mpps dropped by the engine, {:.3} Mpps passed, over {elapsed:.1}s",
            processed as f64 / elapsed / 1e6,
            dropped as f64 / elapsed / 1e6,
            passed as f64 / elapsed / 1e6,
        ));
        for (traffic, n, measure) in [
            ("external-dropped", dropped, "dropped"),
            ("external-passed", passed, "passed"),
        ] {
            rows.push(Row {
                rules,
                engine,
                traffic,
                working_set: 0,
                frame_bytes: 0,
                pps: n as f64 / elapsed,
                gbps: 0.0,
                measure,
                offered_pps: 0.0,
                processed_pps: processed as f64 / elapsed,
                frames: processed,
                rounds: 1,
                seconds: elapsed,
            });
        }
    }
    Ok(())
}
