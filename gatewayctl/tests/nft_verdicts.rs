//! Differential test: the nftables ruleset `gatewayctl policy nft` prints gives the
//! reference evaluator's verdicts on real packets.
//!
//! Topology (three network namespaces this test creates and always deletes):
//!
//! ```text
//!   S (sender)  ──veth──  R (connector, ruleset loaded)  ──veth──  T (behind the connector)
//!   every device/SA-key   local: bastions, monitoring,           local: prod-db, build farm
//!   address + unknowns    legacy intranet, unprotected           (reached through `forward`)
//!                         (reached through `input`)
//! ```
//!
//! S holds every source address of `examples/company.toml` (plus two unknown ones); R and T
//! accept the destinations locally (`ip route add local <prefix> dev lo`), so wildcard
//! sockets see every datagram that arrives. Neighbours are static (no ARP/NDP). For each
//! sample packet the test sends a UDP datagram, a TCP SYN (connect with a timeout; a
//! connection or a reset both prove arrival) or an ICMP echo request from the source
//! address, and compares "arrived" with `evaluate` (allow/audit: arrives; deny: does not;
//! destinations outside the loaded host's protected space: arrive).
//!
//! Only 198.18.0.0/15 and 2001:db8::/32 are used; the host's own interfaces are never
//! touched (veths are created inside the namespaces).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatewayctl::{Target, proto, resolve_from, resolve_to};
use ipnet::IpNet;
use policy_compiler::{Host, Policy, Verdict, compile, evaluate, parse, parse_rfc3339};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long a packet that should arrive may take (veth, same machine: microseconds).
const WAIT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The one root/CI rule every privileged test follows (gateway_test_support::privileges): run as
/// root; skip, reported as skipped, when not root outside CI; fail in CI.
fn needs_root(name: &str) -> bool {
    gateway_test_support::privileges::gate(name) == gateway_test_support::privileges::Gate::Run
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_stdin(cmd: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Network namespaces created by this test; deleted on drop (also when a test panics).
struct Namespaces {
    names: Vec<String>,
}

/// Process-wide, so tests running in parallel never pick the same name.
static NEXT_NAME: AtomicU64 = AtomicU64::new(0);

impl Namespaces {
    fn new() -> Namespaces {
        Namespaces { names: Vec::new() }
    }

    /// A unique name (`zgn<pid>x<n>`), usable for namespaces and interfaces (≤ 15 chars).
    fn unique(&mut self) -> String {
        let n = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
        format!("zgn{}x{n}", std::process::id())
    }

    fn add(&mut self) -> String {
        let name = self.unique();
        run("ip", &["netns", "add", &name]);
        self.names.push(name.clone());
        // Namespaced sysctls only: no DAD (addresses usable at once), no reverse-path
        // filter (sources are routed explicitly), loopback up.
        for kv in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            run("ip", &["netns", "exec", &name, "sysctl", "-qw", kv]);
        }
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets created there
/// stay in `ns` wherever they are used later).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
            // SAFETY: setns on a valid namespace fd; it only changes this thread's netns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

const MAC_S: &str = "02:00:5e:10:00:01";
const MAC_RS: &str = "02:00:5e:10:00:02";
const MAC_RT: &str = "02:00:5e:10:00:03";
const MAC_T: &str = "02:00:5e:10:00:04";

/// Destinations served by R (local) and by T (behind R), from examples/company.toml.
const R_LOCAL: &[&str] = &[
    "198.18.0.0/23",      // ssh-bastions
    "198.18.10.0/24",     // monitoring-subnet
    "198.18.20.0/24",     // legacy-intranet (audit)
    "198.18.30.0/24",     // datacenter, no resource
    "198.19.200.0/24",    // unprotected
    "2001:db8:1::/64",    // ssh-bastion-v6
    "2001:db8:1:10::/64", // monitoring-v6
    "2001:db8:2::/48",    // unprotected
];
const T_LOCAL: &[&str] = &[
    "198.18.2.0/24",     // prod-db
    "198.19.64.0/24",    // build farm
    "2001:db8:1:2::/64", // prod-db-v6
    "2001:db8:40::/48",  // build farm v6
];
const SOURCE_NETS: &[&str] = &["198.19.0.0/24", "198.19.1.0/24", "2001:db8:ff::/64"];

struct Lab {
    s: String,
    r: String,
    t: String,
}

fn build_lab(ns: &mut Namespaces, sources: &[IpAddr]) -> Lab {
    let s = ns.add();
    let r = ns.add();
    let t = ns.add();
    for kv in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        run("ip", &["netns", "exec", &r, "sysctl", "-qw", kv]);
    }
    let (vs, vrs, vrt, vt) = (ns.unique(), ns.unique(), ns.unique(), ns.unique());
    // veths are created inside the namespaces (never in the host's).
    run(
        "ip",
        &[
            "-n", &s, "link", "add", &vs, "address", MAC_S, "type", "veth", "peer", "name", &vrs,
            "address", MAC_RS, "netns", &r,
        ],
    );
    run(
        "ip",
        &[
            "-n", &r, "link", "add", &vrt, "address", MAC_RT, "type", "veth", "peer", "name", &vt,
            "address", MAC_T, "netns", &t,
        ],
    );
    for (n, dev) in [(&s, &vs), (&r, &vrs), (&r, &vrt), (&t, &vt)] {
        run(
            "ip",
            &[
                "netns",
                "exec",
                n,
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{dev}.rp_filter=0"),
            ],
        );
        run("ip", &["-n", n, "link", "set", dev, "up"]);
    }
    // S: the source addresses; everything in the test ranges goes to R.
    for a in sources {
        let (plen, extra): (&str, &[&str]) = if a.is_ipv6() {
            ("128", &["nodad"])
        } else {
            ("32", &[])
        };
        let addr = format!("{a}/{plen}");
        let mut args = vec!["-n", &s, "addr", "add", &addr, "dev", &vs];
        args.extend_from_slice(extra);
        run("ip", &args);
    }
    let route = |n: &str, prefix: &str, gw: &str, dev: &str, mac: &str| {
        if prefix.contains(':') {
            run(
                "ip",
                &["-n", n, "-6", "route", "add", prefix, "via", gw, "dev", dev],
            );
            run(
                "ip",
                &[
                    "-n",
                    n,
                    "-6",
                    "neigh",
                    "replace",
                    gw,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            );
        } else {
            run(
                "ip",
                &[
                    "-n", n, "route", "add", prefix, "via", gw, "dev", dev, "onlink",
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    n,
                    "neigh",
                    "replace",
                    gw,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            );
        }
    };
    route(&s, "198.18.0.0/15", "198.18.255.254", &vs, MAC_RS);
    route(&s, "2001:db8::/32", "fe80::2", &vs, MAC_RS);
    // R: local destinations, T's destinations through T, sources back through S.
    for p in R_LOCAL {
        let fam = if p.contains(':') { "-6" } else { "-4" };
        run(
            "ip",
            &["-n", &r, fam, "route", "add", "local", p, "dev", "lo"],
        );
    }
    for p in T_LOCAL {
        let (gw, mac) = if p.contains(':') {
            ("fe80::4", MAC_T)
        } else {
            ("198.18.255.253", MAC_T)
        };
        route(&r, p, gw, &vrt, mac);
    }
    for p in SOURCE_NETS {
        let gw = if p.contains(':') {
            "fe80::1"
        } else {
            "198.18.255.251"
        };
        route(&r, p, gw, &vrs, MAC_S);
    }
    // T: its local destinations; sources back through R.
    for p in T_LOCAL {
        let fam = if p.contains(':') { "-6" } else { "-4" };
        run(
            "ip",
            &["-n", &t, fam, "route", "add", "local", p, "dev", "lo"],
        );
    }
    for p in SOURCE_NETS {
        let gw = if p.contains(':') {
            "fe80::3"
        } else {
            "198.18.255.252"
        };
        route(&t, p, gw, &vt, MAC_RT);
    }
    Lab { s, r, t }
}

/// Sockets that observe arrivals in R and T.
struct Receivers {
    /// (namespace, is v6, port) -> socket.
    udp: Vec<(String, bool, u16, UdpSocket)>,
    /// (namespace, is v6) -> raw ICMP/ICMPv6 socket.
    icmp: Vec<(String, bool, Socket)>,
}

fn receiver_ns(lab: &Lab, dst: IpAddr) -> &str {
    if R_LOCAL.iter().any(|p| net(p).contains(&dst)) {
        &lab.r
    } else if T_LOCAL.iter().any(|p| net(p).contains(&dst)) {
        &lab.t
    } else {
        panic!("sample destination {dst} is served by neither R nor T; add it to R_LOCAL/T_LOCAL")
    }
}

fn receivers(lab: &Lab, targets: &[Target]) -> Receivers {
    let mut rx = Receivers {
        udp: Vec::new(),
        icmp: Vec::new(),
    };
    for ns in [&lab.r, &lab.t] {
        for v6 in [false, true] {
            let sock = in_ns(ns, || {
                let (d, p) = if v6 {
                    (Domain::IPV6, Protocol::ICMPV6)
                } else {
                    (Domain::IPV4, Protocol::ICMPV4)
                };
                let s = Socket::new(d, Type::RAW, Some(p)).expect("raw icmp socket");
                s.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                s
            });
            rx.icmp.push((ns.clone(), v6, sock));
        }
    }
    for t in targets.iter().filter(|t| t.proto == proto::UDP) {
        let ns = receiver_ns(lab, t.addr).to_string();
        let v6 = t.addr.is_ipv6();
        if rx
            .udp
            .iter()
            .any(|(n, f, p, _)| *n == ns && *f == v6 && *p == t.port)
        {
            continue;
        }
        let sock = in_ns(&ns, || {
            let d = if v6 { Domain::IPV6 } else { Domain::IPV4 };
            let s = Socket::new(d, Type::DGRAM, Some(Protocol::UDP)).expect("udp socket");
            if v6 {
                s.set_only_v6(true).expect("v6only");
            }
            let any: SocketAddr = if v6 {
                (std::net::Ipv6Addr::UNSPECIFIED, t.port).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, t.port).into()
            };
            s.bind(&any.into()).expect("bind udp receiver");
            let u: UdpSocket = s.into();
            u.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            u
        });
        rx.udp.push((ns, v6, t.port, sock));
    }
    rx
}

static NONCE: AtomicU64 = AtomicU64::new(1);

fn payload() -> Vec<u8> {
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    format!("zgn-{}-{n:08}", std::process::id()).into_bytes()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads from `recv` until a buffer containing `needle` shows up or `WAIT` passes.
fn wait_for(needle: &[u8], mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match recv(&mut buf) {
            Ok(n) if contains(&buf[..n], needle) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("receive: {e}"),
        }
    }
    false
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one packet from `src` to `t` and reports whether it arrived.
fn send(lab: &Lab, rx: &Receivers, src: IpAddr, t: &Target) -> bool {
    let v6 = t.addr.is_ipv6();
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let ns = receiver_ns(lab, t.addr);
    let data = payload();
    match t.proto {
        proto::TCP => in_ns(&lab.s, || {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).expect("tcp socket");
            s.bind(&SocketAddr::new(src, 0).into())
                .expect("bind source");
            match s.connect_timeout(&SocketAddr::new(t.addr, t.port).into(), CONNECT_TIMEOUT) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => true,
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => false,
                Err(e) => panic!("connect {src} -> {t}: {e}"),
            }
        }),
        proto::UDP => {
            let sock = in_ns(&lab.s, || {
                let s = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind source");
                s.set_write_timeout(Some(CONNECT_TIMEOUT)).expect("timeout");
                s
            });
            sock.send_to(&data, SocketAddr::new(t.addr, t.port))
                .expect("send udp");
            let (_, _, _, r) = rx
                .udp
                .iter()
                .find(|(n, f, p, _)| n == ns && *f == v6 && *p == t.port)
                .expect("udp receiver");
            wait_for(&data, |b| r.recv(b))
        }
        proto::ICMP | proto::ICMPV6 => {
            let sock = in_ns(&lab.s, || {
                let p = if v6 {
                    Protocol::ICMPV6
                } else {
                    Protocol::ICMPV4
                };
                let s = Socket::new(domain, Type::RAW, Some(p)).expect("raw socket");
                s.bind(&SocketAddr::new(src, 0).into())
                    .expect("bind source");
                s.set_write_timeout(Some(CONNECT_TIMEOUT)).expect("timeout");
                s
            });
            // Echo request: type, code, checksum, id, sequence, payload.
            let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0x5a, 0x47, 0, 1];
            pkt.extend_from_slice(&data);
            if !v6 {
                // ICMPv6 checksums are filled in by the kernel.
                let c = checksum(&pkt);
                pkt[2..4].copy_from_slice(&c.to_be_bytes());
            }
            sock.send_to(&pkt, &SockAddr::from(SocketAddr::new(t.addr, 0)))
                .expect("send icmp");
            let (_, _, r) = rx
                .icmp
                .iter()
                .find(|(n, f, _)| n == ns && *f == v6)
                .expect("icmp receiver");
            wait_for(&data, |b| (&*r).read(b))
        }
        other => panic!("no sender for protocol {other}"),
    }
}

fn gatewayctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .args(args)
        .output()
        .expect("run gatewayctl");
    assert!(
        out.status.success(),
        "gatewayctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn company_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/company.toml").to_string()
}

fn load_policy(at: i64) -> Policy {
    let text = std::fs::read_to_string(company_path()).expect("read company.toml");
    parse(&text, "company.toml", at)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .policy
}

/// (from, to) sample packets: allowed, denied, deny-over-allow, audit, unprotected,
/// unknown source, narrowing, expiry; both families; local and forwarded destinations.
const SAMPLES: &[(&str, &str)] = &[
    ("alice-laptop", "198.18.1.5:22/tcp"),
    ("alice-laptop", "198.18.1.5:23/tcp"),
    ("alice-laptop", "198.18.1.1/icmp"),
    ("bob-laptop", "198.18.1.2:22/tcp"),
    ("alice-laptop", "prod-db"),
    ("bob-laptop", "prod-db"),
    ("carol-laptop", "prod-db"),
    ("ci-cd/runner-1", "prod-db"),
    ("ci-cd/runner-1", "198.19.64.10:8080/tcp"),
    ("ci-cd/runner-1", "198.19.64.10:443/tcp"),
    ("alice-laptop", "198.19.64.10:22/tcp"),
    ("carol-laptop", "198.18.10.7/icmp"),
    ("carol-laptop", "198.18.10.7:161/udp"),
    ("alice-laptop", "198.18.10.7:161/udp"),
    ("alice-laptop", "198.18.10.7/icmp"),
    ("alice-laptop", "198.18.20.80:80/tcp"),
    ("carol-laptop", "198.18.20.80:8080/tcp"),
    ("198.19.0.99", "198.18.1.5:22/tcp"),
    ("198.19.0.99", "198.18.20.80:80/tcp"),
    ("alice-laptop", "198.18.30.1:80/tcp"),
    ("alice-laptop", "198.19.200.1:443/tcp"),
    ("198.19.0.99", "198.19.200.1:53/udp"),
    ("alice-desktop", "[2001:db8:1::10]:22/tcp"),
    ("alice-desktop", "[2001:db8:1::10]:80/tcp"),
    ("alice-desktop", "[2001:db8:1:2::20]:5432/tcp"),
    ("bob-tablet", "[2001:db8:1:2::20]:5432/tcp"),
    ("carol-phone", "[2001:db8:1:2::20]:5432/tcp"),
    ("carol-phone", "2001:db8:1:10::7/icmp"),
    ("carol-phone", "[2001:db8:1:10::7]:161/udp"),
    ("alice-desktop", "2001:db8:1:10::7/icmp"),
    ("alice-desktop", "[2001:db8:1:10::7]:161/udp"),
    ("ci-cd/runner-2", "[2001:db8:40::10]:8000/tcp"),
    ("ci-cd/runner-2", "[2001:db8:40::10]:443/tcp"),
    ("2001:db8:ff::99", "[2001:db8:1::10]:22/tcp"),
    ("carol-phone", "[2001:db8:2::1]:443/tcp"),
    ("2001:db8:ff::99", "[2001:db8:2::1]:53/udp"),
];

fn arrives(v: Verdict) -> bool {
    matches!(v, Verdict::Allow | Verdict::Audit)
}

#[test]
fn nft_rulesets_are_accepted_by_nft() {
    if !needs_root("nft_rulesets_are_accepted_by_nft") {
        return;
    }
    let at = "2026-01-01T00:00:00Z";
    let policy = load_policy(parse_rfc3339(at).expect("at"));
    let mut hosts: Vec<String> = gatewayctl::connector_names(&policy)
        .into_iter()
        .map(|c| format!("connector:{c}"))
        .collect();
    hosts.extend(policy.devices.iter().map(|d| format!("device:{}", d.name)));
    let mut ns = Namespaces::new();
    let n = ns.add();
    for h in &hosts {
        let rules = gatewayctl(&["policy", "nft", &company_path(), "--host", h, "--at", at]);
        if let Err(e) = run_stdin("ip", &["netns", "exec", &n, "nft", "-c", "-f", "-"], &rules) {
            panic!("nft -c rejects the ruleset of {h}: {e}\n{rules}");
        }
    }
}

#[test]
fn nft_verdicts_match_the_evaluator() {
    if !needs_root("nft_verdicts_match_the_evaluator") {
        return;
    }
    let at = parse_rfc3339("2026-01-01T00:00:00Z").expect("at");
    let after_expiry = parse_rfc3339("2030-06-01T00:00:00Z").expect("at");
    let policy = load_policy(at);

    let mut packets: Vec<(&str, &str, IpAddr, Target)> = Vec::new();
    for &(from, to) in SAMPLES {
        let t = resolve_to(&policy, to).expect("to");
        let src = resolve_from(&policy, from, t.addr).expect("from");
        assert_eq!(
            src.is_ipv6(),
            t.addr.is_ipv6(),
            "{from} -> {to}: mixed families"
        );
        packets.push((from, to, src, t));
    }
    assert!(packets.len() >= 20);
    assert!(packets.iter().any(|p| p.2.is_ipv6()) && packets.iter().any(|p| !p.2.is_ipv6()));

    let mut sources: Vec<IpAddr> = policy
        .principals
        .iter()
        .flat_map(|p| p.addresses.iter().copied())
        .collect();
    sources.extend(["198.19.0.99", "2001:db8:ff::99"].map(|a| a.parse::<IpAddr>().expect("ip")));
    for s in &sources {
        assert!(
            SOURCE_NETS.iter().any(|p| net(p).contains(s)),
            "source {s} outside SOURCE_NETS"
        );
    }

    let mut ns = Namespaces::new();
    let lab = build_lab(&mut ns, &sources);
    let targets: Vec<Target> = packets.iter().map(|p| p.3.clone()).collect();
    let rx = receivers(&lab, &targets);

    // Sanity: with no ruleset every sample arrives (the lab itself drops nothing).
    for (from, to, src, t) in &packets {
        assert!(
            send(&lab, &rx, *src, t),
            "lab broken: {from} -> {to} does not arrive without a ruleset"
        );
    }

    let mut compared = 0;
    let mut mismatches = Vec::new();
    let mut seen = [false; 2]; // a dropped and an arriving protected packet
    for (host, now) in [
        ("connector:dc-connector-1", at),
        ("connector:build-connector", at),
        ("connector:dc-connector-1", after_expiry),
    ] {
        let when = policy_compiler::format_rfc3339(now);
        let rules = gatewayctl(&[
            "policy",
            "nft",
            &company_path(),
            "--host",
            host,
            "--at",
            &when,
        ]);
        run("ip", &["netns", "exec", &lab.r, "nft", "flush", "ruleset"]);
        if let Err(e) = run_stdin("ip", &["netns", "exec", &lab.r, "nft", "-f", "-"], &rules) {
            panic!("nft -f rejects the ruleset of {host}: {e}\n{rules}");
        }
        let policy_now = load_policy(now);
        let h = gatewayctl::resolve_host(&policy_now, host).expect("host");
        let view = compile(&policy_now, &h, now).expect("compile");
        assert!(matches!(h, Host::Connector(_)));
        for (from, to, src, t) in &packets {
            let d = evaluate(&policy_now, &t.packet(*src), now);
            let governed = view.protected.iter().any(|p| p.contains(&t.addr));
            let expected = !governed || arrives(d.verdict);
            let got = send(&lab, &rx, *src, t);
            compared += 1;
            if governed {
                seen[usize::from(expected)] = true;
            }
            let line = format!(
                "{host} at {when}: {from} ({src}) -> {to} ({t}): evaluator {:?} ({:?}){}, nft {}",
                d.verdict,
                d.reason,
                if governed {
                    ""
                } else {
                    " [not this host's network: must pass]"
                },
                if got { "arrived" } else { "dropped" }
            );
            println!("{line}");
            if got != expected {
                mismatches.push(line);
            }
        }
    }
    assert!(
        seen[0] && seen[1],
        "samples must include dropped and arriving protected packets"
    );

    // The comparison has teeth: without the `input` hook, packets to the connector's own
    // protected addresses (R's local destinations) that the evaluator denies get through.
    let rules = gatewayctl(&[
        "policy",
        "nft",
        &company_path(),
        "--host",
        "connector:dc-connector-1",
        "--at",
        &policy_compiler::format_rfc3339(at),
    ]);
    let start = rules.find("\tchain filter_input {").expect("input chain");
    let end = start + rules[start..].find("\t}\n").expect("end of chain") + 3;
    let forward_only = format!("{}{}", &rules[..start], &rules[end..]);
    assert!(forward_only.contains("hook forward") && !forward_only.contains("hook input"));
    run("ip", &["netns", "exec", &lab.r, "nft", "flush", "ruleset"]);
    run_stdin(
        "ip",
        &["netns", "exec", &lab.r, "nft", "-f", "-"],
        &forward_only,
    )
    .expect("forward-only ruleset loads");
    let mut leaked = 0;
    for (_, _, src, t) in packets
        .iter()
        .filter(|p| receiver_ns(&lab, p.3.addr) == lab.r)
    {
        let d = evaluate(&policy, &t.packet(*src), at);
        if !arrives(d.verdict) && send(&lab, &rx, *src, t) {
            leaked += 1;
        }
    }
    assert!(
        leaked > 0,
        "a forward-only ruleset should let local denied packets through"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {compared} packets disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
