//! The tunnel: goodput of one TCP stream (iperf3) from a device namespace through a
//! connector namespace to a resource namespace, on three paths measured in the same run:
//! `plain` (routed veths, no tunnel), `tunnel` (userspace WireGuard on both ends, no
//! programs) and `tunnel+enforcement` (the same with the policy programs on both tunnel
//! interfaces). CPU per Gbit is the whole machine's busy time (/proc/stat) over the bits
//! moved, iperf3 included, the same for every path.
//!
//! Handshakes: how many initiations per second the connector's tunnel answers (from
//! distinct valid peers, no shield: the userspace cost), and what a flood of bogus
//! initiations from one source costs with the shield on the connector's link (how many
//! reach the tunnel, whether a real device still handshakes, and how long it takes).

use crate::{Opts, progress};
use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use boringtun::noise::{Tunn, TunnResult};
use gateway_test_support::{
    netns::{NetNs, command_in},
    testkit::{load_policy, unix_now},
    tunnel::{LAB_TUN, Lab, NsTunnel},
};
use gateway_user::{
    Dataplane,
    tunnel::{Options, PeerSpec, TunnelDrop, keys::KeyPair, tun::configure_link},
};
use serde::Serialize;
use std::{
    net::UdpSocket,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

#[derive(Clone, Debug, Serialize)]
pub struct Goodput {
    pub path: &'static str,
    pub gbps: f64,
    /// Machine CPU-seconds per Gbit moved.
    pub cpu_s_per_gbit: f64,
    pub seconds: f64,
    pub retransmits: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Handshakes {
    /// Initiations answered with a handshake response per second (distinct valid peers,
    /// no shield).
    pub answered_per_s: f64,
    /// Initiations answered with a cookie (the tunnel's under-load defence) per second.
    pub cookies_per_s: f64,
    /// Bogus initiations sent per second from one source during the flood.
    pub flood_sent_per_s: f64,
    /// Of those, dropped by the shield's per-source bucket in XDP.
    pub flood_dropped_by_shield: u64,
    /// Of those, that reached the userspace tunnel (and were refused there).
    pub flood_reached_tunnel: u64,
    pub flood_sent: u64,
    /// A real device's handshake (first packet through) during the flood, ms; null when it
    /// did not get through.
    pub handshake_during_flood_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub goodput: Vec<Goodput>,
    pub handshakes: Option<Handshakes>,
}

const POLICY: &str = r#"
[[remote_network]]
name = "corp"
cidrs = ["198.18.1.0/24"]
connectors = ["conn"]

[[resource]]
name = "iperf"
network = "corp"
address = "198.18.1.5"
tcp = ["5201"]

[[user]]
email = "dev@example.com"

[[device]]
name = "dev"
owner = "dev@example.com"
address = "100.64.0.10"

[[allow]]
name = "dev-iperf"
principals = ["dev@example.com"]
resources = ["iperf"]
"#;

type Net = Lab;

fn net() -> Result<Net> {
    Lab::new()
}

fn busy_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| v.get(*i))
        .sum()
}

/// One iperf3 run from `dev` to 198.18.1.5:5201: (Gbit/s received, CPU s per Gbit,
/// retransmits).
fn iperf(n: &Net, secs: u64) -> Result<(f64, f64, u64)> {
    let mut server = command_in(n.res.name(), Path::new("iperf3"))?
        .args(["-s", "-1", "-B", "198.18.1.5", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 (cargo xtask setup installs it)")?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = busy_jiffies();
    let out = gateway_test_support::process::run_bounded(
        {
            let mut c = command_in(n.dev.name(), Path::new("iperf3"))?;
            c.args([
                "-c",
                "198.18.1.5",
                "-p",
                "5201",
                "-t",
                &secs.to_string(),
                "-J",
            ]);
            c
        },
        Duration::from_secs(secs + 20),
    );
    let busy = busy_jiffies().saturating_sub(t0);
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")?;
    let bits = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) * 8.0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = busy as f64 / hz;
    let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, cpu_s / (bits / 1e9).max(1e-9), retr))
}

fn opts(iface: &str, port: u16) -> Options {
    Options {
        interface: iface.into(),
        listen_port: port,
        mtu: 1420,
        persistent_keepalive: None,
        skip_cryptokey_routing: false,
    }
}

fn goodput(opts: &Opts, out: &mut Summary) -> Result<()> {
    let secs = if opts.quick { 3 } else { 8 };
    // Plain: routed, the resource routes back through the connector.
    {
        let n = net()?;
        n.res
            .ip(&["route", "add", "default", "via", "198.18.1.1"])?;
        let (gbps, cpu, retr) = iperf(&n, secs)?;
        progress(&format!("tunnel: plain {gbps:.2} Gbit/s"));
        out.goodput.push(Goodput {
            path: "plain",
            gbps,
            cpu_s_per_gbit: cpu,
            seconds: secs as f64,
            retransmits: retr,
        });
    }
    for enforce in [false, true] {
        let n = net()?;
        let (_dev, _conn) = n.tunnels()?;
        let mut dps = Vec::new();
        if enforce {
            let now = unix_now();
            for (ns, host) in [(&n.dev, "device:dev"), (&n.conn, "connector:conn")] {
                let mut dp = Dataplane::load()?;
                load_policy(&mut dp, POLICY, host, now)?;
                ns.run(|| dp.attach_tun(LAB_TUN))??;
                dps.push(dp);
            }
        }
        let (gbps, cpu, retr) = iperf(&n, secs)?;
        let path = if enforce {
            "tunnel+enforcement"
        } else {
            "tunnel"
        };
        progress(&format!("tunnel: {path} {gbps:.2} Gbit/s"));
        out.goodput.push(Goodput {
            path,
            gbps,
            cpu_s_per_gbit: cpu,
            seconds: secs as f64,
            retransmits: retr,
        });
        drop(dps);
    }
    Ok(())
}

/// A peer of the connector driven by hand (boringtun's `Tunn`), for handshakes.
struct Client {
    tunn: Tunn,
}

fn handshakes(opts: &Opts, out: &mut Summary) -> Result<()> {
    let n = net()?;
    let kc = KeyPair::generate()?;
    let cpub = kc.public;
    let peers: Vec<KeyPair> = (0..256)
        .map(|_| KeyPair::generate())
        .collect::<Result<_>>()?;
    let specs: Vec<PeerSpec> = peers
        .iter()
        .enumerate()
        .map(|(i, k)| PeerSpec {
            name: format!("d{i}"),
            public_key: *k.public.as_bytes(),
            endpoint: None,
            allowed_ips: vec![ipnet::IpNet::from(std::net::IpAddr::from([
                100,
                64,
                (i / 250) as u8,
                (i % 250 + 1) as u8,
            ]))],
        })
        .collect();
    let conn = NsTunnel::start(n.conn.name(), opts_port(), kc, move |t| {
        configure_link("ztgb", 1420, &[])?;
        t.set_peers(&specs);
        Ok(())
    })?;
    let mut clients: Vec<Client> = peers
        .iter()
        .enumerate()
        .map(|(i, k)| Client {
            tunn: Tunn::new(k.secret.clone(), cpub, None, None, i as u32 + 1, None),
        })
        .collect();
    let secs = if opts.quick { 2.0 } else { 5.0 };
    // Closed loop: one initiation per peer in flight, round robin.
    let (answered, cookies, elapsed) = n.dev.run(|| -> Result<(u64, u64, f64)> {
        let sock = UdpSocket::bind("198.19.1.10:0")?;
        sock.connect("198.19.1.1:51820")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = vec![0u8; 2048];
        let mut rbuf = vec![0u8; 2048];
        let (mut answered, mut cookies) = (0u64, 0u64);
        let start = Instant::now();
        let mut i = 0usize;
        while start.elapsed().as_secs_f64() < secs {
            let c = &mut clients[i % 256];
            i += 1;
            if let TunnResult::WriteToNetwork(p) =
                c.tunn.format_handshake_initiation(&mut buf, true)
            {
                sock.send(p)?;
            }
            if let Ok(len) = sock.recv(&mut rbuf) {
                match rbuf.first() {
                    Some(2) if len == 92 => answered += 1,
                    Some(3) if len == 64 => cookies += 1,
                    _ => {}
                }
            }
        }
        Ok((answered, cookies, start.elapsed().as_secs_f64()))
    })??;
    let mut h = Handshakes {
        answered_per_s: answered as f64 / elapsed,
        cookies_per_s: cookies as f64 / elapsed,
        ..Handshakes::default()
    };
    progress(&format!(
        "tunnel: {:.0} handshakes/s answered, {:.0} cookies/s",
        h.answered_per_s, h.cookies_per_s
    ));

    // Flood with the shield on the connector's link: bogus initiations from one source.
    let mut dp = Dataplane::load()?;
    load_policy(&mut dp, POLICY, "connector:conn", unix_now())?;
    let cfg = dp.config()?.with_tunnel(51820, 20, 40);
    dp.set_config(&cfg)?;
    let link = n.conn_link.clone();
    n.conn.run(|| {
        dp.shield_xdp()
            .and_then(|p| Ok(p.attach(&link, XdpMode::Skb)?))
    })??;
    let before_invalid = conn.with(|t| drop_count(t.drops(), TunnelDrop::Invalid))?;
    let before_shield = dp
        .verdict_stats()?
        .reason(gateway_common::Reason::HandshakeRateLimited);
    let flood_secs = if opts.quick { 1.0 } else { 3.0 };
    let legit = peers[0].clone();
    let (sent, flood_elapsed, hs_ms) =
        std::thread::scope(|s| -> Result<(u64, f64, Option<f64>)> {
            let flood = s.spawn(|| {
                n.dev.run(|| -> Result<(u64, f64)> {
                    let sock = UdpSocket::bind("198.19.1.10:0")?;
                    sock.connect("198.19.1.1:51820")?;
                    let mut pkt = [0u8; 148];
                    pkt[0] = 1;
                    let start = Instant::now();
                    let mut sent = 0u64;
                    while start.elapsed().as_secs_f64() < flood_secs {
                        pkt[4..8].copy_from_slice(&(sent as u32).to_le_bytes());
                        if sock.send(&pkt).is_ok() {
                            sent += 1;
                        }
                    }
                    Ok((sent, start.elapsed().as_secs_f64()))
                })
            });
            // Meanwhile a real device from another address handshakes.
            std::thread::sleep(Duration::from_millis(200));
            n.dev
                .ip(&["addr", "add", "198.19.1.11/24", "dev", &link_of(&n.dev)?])?;
            let hs = n.dev.run(|| -> Result<Option<f64>> {
                let sock = UdpSocket::bind("198.19.1.11:0")?;
                sock.connect("198.19.1.1:51820")?;
                sock.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut t = Tunn::new(legit.secret.clone(), cpub, None, None, 9999, None);
                let mut buf = vec![0u8; 2048];
                let mut rbuf = vec![0u8; 2048];
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(3) {
                    if let TunnResult::WriteToNetwork(p) =
                        t.format_handshake_initiation(&mut buf, true)
                    {
                        sock.send(p)?;
                    }
                    if let Ok(len) = sock.recv(&mut rbuf)
                        && rbuf[0] == 2
                        && len == 92
                    {
                        return Ok(Some(start.elapsed().as_secs_f64() * 1e3));
                    }
                }
                Ok(None)
            })??;
            let (sent, el) = flood
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread"))???;
            Ok((sent, el, hs))
        })?;
    std::thread::sleep(Duration::from_millis(300));
    h.flood_sent = sent;
    h.flood_sent_per_s = sent as f64 / flood_elapsed;
    h.flood_dropped_by_shield = dp
        .verdict_stats()?
        .reason(gateway_common::Reason::HandshakeRateLimited)
        - before_shield;
    h.flood_reached_tunnel =
        conn.with(|t| drop_count(t.drops(), TunnelDrop::Invalid))? - before_invalid;
    h.handshake_during_flood_ms = hs_ms;
    progress(&format!(
        "tunnel: flood {:.0}/s from one source, {} dropped by the shield, {} reached the tunnel; real handshake {:?} ms",
        h.flood_sent_per_s,
        h.flood_dropped_by_shield,
        h.flood_reached_tunnel,
        h.handshake_during_flood_ms
    ));
    out.handshakes = Some(h);
    drop(conn);
    Ok(())
}

fn opts_port() -> Options {
    opts("ztgb", 51820)
}

fn drop_count(d: Vec<(TunnelDrop, u64)>, r: TunnelDrop) -> u64 {
    d.into_iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| n)
}

fn link_of(ns: &NetNs) -> Result<String> {
    let out = ns.ip(&["-o", "link", "show", "type", "veth"])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split(": ")
        .nth(1)
        .and_then(|s| s.split('@').next())
        .map(str::to_string)
        .context("no veth")
}

pub fn run(opts: &Opts, out: &mut Summary) -> Result<()> {
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is not installed (cargo xtask setup installs it)");
    }
    goodput(opts, out)?;
    handshakes(opts, out)?;
    Ok(())
}
