//! Datagrams larger than the MTU, fragmented by the hosts' own IP stacks, through a device's
//! programs and a connector's: a 4000-byte UDP datagram and a 4000-byte ping (and their
//! replies, fragmented by the resource host) pass an allowed flow, IPv4 and IPv6, and are
//! dropped on a denied one. A control run without the gateway shows the denied ones would
//! have been answered.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aya::programs::XdpMode;
use gateway_common::Reason;
use gateway_test_support::{
    netns::{NetNs, veth_pair},
    skip_unless_privileged,
    testkit::{load_policy, unix_now},
};
use gateway_user::Dataplane;
use socket2::{Domain, Protocol, Socket, Type};
use std::{
    mem::MaybeUninit,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_millis(800);
const SIZE: usize = 4000;

const POLICY: &str = r#"
[[remote_network]]
name = "corp"
cidrs = ["198.18.1.0/24", "2001:db8:1::/64"]
connectors = ["conn"]

[[resource]]
name = "ok"
network = "corp"
address = "198.18.1.5"
udp = ["5353"]
icmp = true

[[resource]]
name = "ok6"
network = "corp"
address = "2001:db8:1::5"
udp = ["5353"]
icmp = true

[[resource]]
name = "closed"
network = "corp"
address = "198.18.1.6"
udp = ["5353"]

[[resource]]
name = "closed6"
network = "corp"
address = "2001:db8:1::6"
udp = ["5353"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["198.19.1.10", "2001:db8:a1::10"]

[[allow]]
name = "alice-ok"
principals = ["alice@example.com"]
resources = ["ok", "ok6"]
"#;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Net {
    alice: NetNs,
    conn: NetNs,
    res: NetNs,
    alice_if: String,
    conn_ifs: String,
}

fn build() -> Net {
    let alice = NetNs::new("zfa").unwrap();
    let conn = NetNs::new("zfc").unwrap();
    let res = NetNs::new("zfr").unwrap();
    let (a_if, ca_if) = veth_pair(
        &alice,
        &["198.19.1.10/24", "2001:db8:a1::10/64"],
        &conn,
        &["198.19.1.1/24", "2001:db8:a1::1/64"],
    )
    .unwrap();
    veth_pair(
        &conn,
        &["198.18.1.1/24", "2001:db8:1::1/64"],
        &res,
        &[
            "198.18.1.5/24",
            "198.18.1.6/24",
            "2001:db8:1::5/64",
            "2001:db8:1::6/64",
        ],
    )
    .unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    alice
        .ip(&["-6", "route", "add", "default", "via", "2001:db8:a1::1"])
        .unwrap();
    res.ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    res.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    // IPv6 addresses must finish duplicate address detection before they carry traffic.
    let start = std::time::Instant::now();
    while [&alice, &conn, &res].iter().any(|ns| {
        let out = ns.ip(&["-6", "addr", "show", "tentative"]).unwrap();
        !out.stdout.is_empty()
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "IPv6 DAD did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Net {
        alice,
        conn,
        res,
        alice_if: a_if.iface,
        conn_ifs: ca_if.iface,
    }
}

/// UDP echo servers on the resource host (every datagram back, whole).
fn serve(res: &NetNs) {
    for addr in [
        "198.18.1.5:5353",
        "198.18.1.5:5354",
        "198.18.1.6:5353",
        "[2001:db8:1::5]:5353",
        "[2001:db8:1::5]:5354",
        "[2001:db8:1::6]:5353",
    ] {
        let u = res.run(|| UdpSocket::bind(sa(addr)).unwrap()).unwrap();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 65536];
            while let Ok((n, from)) = u.recv_from(&mut b) {
                let _ = u.send_to(&b[..n], from);
            }
        });
    }
}

/// A `SIZE`-byte UDP datagram to `dst` and its echo, whole.
fn udp_big(ns: &NetNs, dst: &str) -> bool {
    let bind = if dst.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = ns.run(|| UdpSocket::bind(sa(bind)).unwrap()).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    // Dropped by the host's own egress program: the send reports it (ENOBUFS).
    if let Err(e) = sock.send_to(&payload, sa(dst)) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "udp {dst}: {e}");
        return false;
    }
    let mut b = vec![0u8; 65536];
    matches!(sock.recv_from(&mut b), Ok((n, _)) if b[..n] == payload[..])
}

/// A small UDP datagram to `dst` and its echo.
fn udp_small(ns: &NetNs, dst: &str) -> bool {
    let bind = if dst.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = ns.run(|| UdpSocket::bind(sa(bind)).unwrap()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock.send_to(b"ready?", sa(dst)).unwrap();
    let mut b = [0u8; 16];
    matches!(sock.recv_from(&mut b), Ok((6, _)))
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A ping with `SIZE` bytes of data to `dst` (a raw ICMP socket: the kernel adds the IP
/// header and fragments the datagram) and its whole reply.
fn ping_big(ns: &NetNs, dst: &str) -> bool {
    let addr: std::net::IpAddr = dst.parse().unwrap();
    let v6 = addr.is_ipv6();
    let sock = ns
        .run(|| {
            if v6 {
                Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            } else {
                Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            }
        })
        .unwrap()
        .expect("raw ICMP socket (root)");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let id: u16 = 0x5a00 | (std::process::id() as u16 & 0xff);
    let mut msg = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend((0..SIZE).map(|i| (i % 239) as u8));
    if !v6 {
        // ICMPv6 checksums are the kernel's on raw sockets; ICMP's are ours.
        let c = checksum(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    // A datagram the host's own egress program drops fails the send (the qdisc layer
    // reports the drop: ENOBUFS): not delivered.
    if let Err(e) = sock.send_to(&msg, &SocketAddr::new(addr, 0).into()) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "ping {addr}: {e}");
        return false;
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut b = vec![MaybeUninit::new(0u8); 65536];
    while std::time::Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut b) else {
            continue;
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let got: Vec<u8> = b[..n].iter().map(|x| unsafe { x.assume_init() }).collect();
        // IPv4 raw sockets deliver the IP header too; IPv6 ones only the ICMPv6 message.
        let icmp = if v6 {
            &got[..]
        } else {
            &got[usize::from(got[0] & 0x0f) * 4..]
        };
        let reply = if v6 { 129 } else { 0 };
        if icmp.len() == msg.len() && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
            return icmp[8..] == msg[8..];
        }
    }
    false
}

fn attach_connector(net: &Net, conn_dp: &mut Dataplane) {
    net.conn
        .run(|| {
            conn_dp.attach_xdp(&net.conn_ifs, XdpMode::Driver).unwrap();
            conn_dp.attach_tc_egress(&net.conn_ifs).unwrap();
        })
        .unwrap();
}

fn attach_device(net: &Net, alice_dp: &mut Dataplane) {
    net.alice
        .run(|| {
            alice_dp.attach_xdp(&net.alice_if, XdpMode::Driver).unwrap();
            alice_dp.attach_tc_egress(&net.alice_if).unwrap();
        })
        .unwrap();
}

#[test]
fn datagrams_larger_than_the_mtu() {
    if skip_unless_privileged!() {
        return;
    }
    let net = build();
    serve(&net.res);
    let allowed = [
        ("udp v4", "198.18.1.5:5353"),
        ("udp v6", "[2001:db8:1::5]:5353"),
    ];
    let denied = [
        ("udp v4, port not granted", "198.18.1.5:5354"),
        ("udp v6, port not granted", "[2001:db8:1::5]:5354"),
        ("udp v4, resource not granted", "198.18.1.6:5353"),
        ("udp v6, resource not granted", "[2001:db8:1::6]:5353"),
    ];
    let pings_allowed = ["198.18.1.5", "2001:db8:1::5"];
    let pings_denied = ["198.18.1.6", "2001:db8:1::6"];

    // A fresh link's IPv6 needs a moment (neighbour discovery) before it carries traffic:
    // wait until a small datagram goes through both ways, for each family.
    for dst in ["198.18.1.5:5353", "[2001:db8:1::5]:5353"] {
        let start = std::time::Instant::now();
        while !udp_small(&net.alice, dst) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{dst} never answered"
            );
        }
    }
    // Control: without the gateway, everything answers, big datagrams included.
    for (what, dst) in allowed.iter().chain(denied.iter()) {
        assert!(
            udp_big(&net.alice, dst),
            "control: {what} ({dst}) without the gateway"
        );
    }
    for dst in pings_allowed.iter().chain(pings_denied.iter()) {
        assert!(
            ping_big(&net.alice, dst),
            "control: ping {dst} without the gateway"
        );
    }

    let now = unix_now();
    let mut conn_dp = Dataplane::load().unwrap();
    load_policy(&mut conn_dp, POLICY, "connector:conn", now).unwrap();
    let mut alice_dp = Dataplane::load().unwrap();
    load_policy(&mut alice_dp, POLICY, "device:alice-laptop", now).unwrap();

    // 1. The connector alone (as for a client without an agent): it follows the fragments
    // of allowed datagrams both ways and drops every fragment of denied ones.
    attach_connector(&net, &mut conn_dp);
    let c0 = conn_dp.verdict_stats().unwrap();
    for (what, dst) in allowed {
        assert!(
            udp_big(&net.alice, dst),
            "connector: {what} ({dst}) must pass"
        );
    }
    for dst in pings_allowed {
        assert!(ping_big(&net.alice, dst), "connector: ping {dst} must pass");
    }
    let c1 = conn_dp.verdict_stats().unwrap().since(&c0);
    // 4 datagrams out and 4 back, each with 2 later fragments.
    assert!(
        c1.reason(Reason::FragmentAllowed) >= 16,
        "{:?}",
        c1.nonzero()
    );
    for (what, dst) in denied {
        assert!(
            !udp_big(&net.alice, dst),
            "connector: {what} ({dst}) must be dropped"
        );
    }
    for dst in pings_denied {
        assert!(
            !ping_big(&net.alice, dst),
            "connector: ping {dst} must be dropped"
        );
    }
    let c2 = conn_dp.verdict_stats().unwrap().since(&c0).since(&c1);
    // 6 first fragments denied by policy, their 12 later fragments for want of a first.
    assert!(
        c2.reason(Reason::DeniedNoGrant) >= 6 && c2.reason(Reason::DeniedFragment) >= 12,
        "{:?}",
        c2.nonzero()
    );

    // 2. With alice's own programs too: allowed datagrams pass both hosts; denied ones
    // never leave her host (the first fragment is dropped at her egress, and her stack
    // sends no more of that datagram), so the connector sees none of them.
    attach_device(&net, &mut alice_dp);
    let (conn0, alice0) = (
        conn_dp.verdict_stats().unwrap(),
        alice_dp.verdict_stats().unwrap(),
    );
    for (what, dst) in allowed {
        assert!(
            udp_big(&net.alice, dst),
            "{what} ({dst}) must pass, fragments and all"
        );
    }
    for dst in pings_allowed {
        assert!(
            ping_big(&net.alice, dst),
            "ping {dst} must pass, fragments and all"
        );
    }
    let conn1 = conn_dp.verdict_stats().unwrap().since(&conn0);
    let alice1 = alice_dp.verdict_stats().unwrap().since(&alice0);
    for (host, d) in [("connector", &conn1), ("alice", &alice1)] {
        assert!(
            d.reason(Reason::FragmentAllowed) >= 16,
            "{host} followed too few fragments: {:?}",
            d.nonzero()
        );
        for r in [Reason::DeniedFragment, Reason::DeniedMalformed] {
            assert_eq!(d.reason(r), 0, "{host}: {:?}", d.nonzero());
        }
    }
    let conn1 = conn_dp.verdict_stats().unwrap();
    for (what, dst) in denied {
        assert!(!udp_big(&net.alice, dst), "{what} ({dst}) must be dropped");
    }
    for dst in pings_denied {
        assert!(!ping_big(&net.alice, dst), "ping {dst} must be dropped");
    }
    let alice2 = alice_dp
        .verdict_stats()
        .unwrap()
        .since(&alice0)
        .since(&alice1);
    assert!(
        alice2.reason(Reason::DeniedNoGrant) >= 6,
        "{:?}",
        alice2.nonzero()
    );
    let conn2 = conn_dp.verdict_stats().unwrap().since(&conn1);
    assert_eq!(
        conn2.reason(Reason::DeniedNoGrant) + conn2.reason(Reason::DeniedFragment),
        0,
        "the connector saw alice's denied datagrams: {:?}",
        conn2.nonzero()
    );
}
