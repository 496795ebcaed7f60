//! The tunnel interface's programs on a real TUN device (docs/dataplane.md, "Tunnel
//! interface"): tcx attaches to a TUN device, the programs see packets from the IP header
//! on, at ingress (a packet written into the TUN file descriptor, as the tunnel's userspace
//! writes a decrypted one) and at egress (what the host's stack routes into the tunnel),
//! and `skb->protocol` must agree with the packet.
//!
//! Every denial here has its twin that passes on the same path, and the passes are seen
//! where they land: a UDP socket receives what ingress let through, the TUN file descriptor
//! yields what egress let through.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::Reason;
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{self, L4, Tun, load_policy, strip_ethernet, unix_now},
};
use gateway_user::Dataplane;
use std::{
    net::{IpAddr, UdpSocket},
    time::Duration,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An IP packet (no Ethernet) with its ethertype, checksums right.
fn packet(src: &str, dst: &str, l4: L4, payload: &[u8]) -> (u16, Vec<u8>) {
    let f = testkit::frame(ip(src), ip(dst), l4, &[], payload);
    let (ty, p) = strip_ethernet(&f).unwrap();
    (ty, p.to_vec())
}

/// The reason counted for what `f` does to the data plane (exactly one packet decided).
fn decided(dp: &Dataplane, f: impl FnOnce()) -> Option<Reason> {
    let before = dp.verdict_stats().unwrap();
    f();
    let got = dp.verdict_stats().unwrap().since(&before);
    assert!(
        got.total() <= 1,
        "more than one packet decided: {:?}",
        got.nonzero()
    );
    got.single()
}

/// Connector `lab-connector` of OPEN_LAB: protected 198.18.0.0/16 and 2001:db8:1::/48,
/// principal `tester` at 198.19.0.1 and 2001:db8:ff::1. On a connector the tunnel
/// interface's ingress is outbound (decrypted device traffic toward resources) and its
/// egress inbound (replies toward devices).
fn connector() -> Dataplane {
    let mut dp = Dataplane::load().unwrap();
    load_policy(
        &mut dp,
        testkit::OPEN_LAB,
        "connector:lab-connector",
        unix_now(),
    )
    .unwrap();
    dp
}

#[test]
fn tcx_on_a_tun_device_sees_ip_packets_both_ways() {
    if skip_unless_privileged!() {
        return;
    }
    let mut dp = connector();
    // IFF_TUN | IFF_NO_PI, as the tunnel's userspace opens it: the kernel derives the
    // protocol from the version nibble.
    let tun = Tun::new(&mut dp, false).unwrap();
    // A resource address inside the namespace, reached through the tunnel; devices are
    // routed back into it.
    tun.ns
        .ip(&["addr", "add", "198.18.1.1/32", "dev", &tun.name])
        .unwrap();
    tun.ns
        .ip(&["route", "add", "198.19.0.0/16", "dev", &tun.name])
        .unwrap();
    let sock = tun
        .ns
        .run(|| UdpSocket::bind("198.18.1.1:5353").unwrap())
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];

    // Ingress, IPv4: the principal's datagram is allowed and reaches the socket.
    let (_, allowed) = packet(
        "198.19.0.1",
        "198.18.1.1",
        L4::Udp {
            src: 40_000,
            dst: 5353,
        },
        b"hello",
    );
    assert_eq!(
        decided(&dp, || tun.ingress(ETH_P_IP, &allowed).unwrap()),
        Some(Reason::Allowed)
    );
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("the allowed datagram arrives");
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from.to_string(), "198.19.0.1:40000");

    // Ingress, IPv4, an unknown source: dropped before the stack sees it.
    let (_, unknown) = packet(
        "198.19.0.99",
        "198.18.1.1",
        L4::Udp {
            src: 40_000,
            dst: 5353,
        },
        b"let me in",
    );
    assert_eq!(
        decided(&dp, || tun.ingress(ETH_P_IP, &unknown).unwrap()),
        Some(Reason::DeniedUnknownSource)
    );
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a denied datagram reached the socket"
    );

    // Egress through the host's stack: the reply of the allowed flow leaves into the
    // tunnel; a datagram to a device that opened nothing is dropped at egress.
    let _ = tun.read_all();
    assert_eq!(
        decided(&dp, || {
            sock.send_to(b"hi back", "198.19.0.1:40000").unwrap();
        }),
        Some(Reason::Reply)
    );
    let out = tun.read_all();
    assert_eq!(out.len(), 1, "the reply left into the tunnel");
    assert_eq!(out[0][0] >> 4, 4, "egress packets start at the IP header");
    assert!(out[0].ends_with(b"hi back"));
    assert_eq!(
        decided(&dp, || {
            // UDP reports no error for a packet dropped below it.
            let _ = sock.send_to(b"unsolicited", "198.19.0.2:40000");
        }),
        Some(Reason::DeniedUnsolicited)
    );
    assert!(tun.read_all().is_empty(), "the unsolicited datagram left");

    // Ingress, IPv6 (IPv6 is off on the device, the hook runs before the stack anyway).
    let (_, allowed6) = packet(
        "2001:db8:ff::1",
        "2001:db8:1::1",
        L4::Tcp {
            src: 40_000,
            dst: 22,
        },
        b"",
    );
    assert_eq!(
        decided(&dp, || tun.ingress(ETH_P_IPV6, &allowed6).unwrap()),
        Some(Reason::Allowed)
    );
    let (_, unknown6) = packet(
        "2001:db8:ff::99",
        "2001:db8:1::1",
        L4::Tcp {
            src: 40_000,
            dst: 22,
        },
        b"",
    );
    assert_eq!(
        decided(&dp, || tun.ingress(ETH_P_IPV6, &unknown6).unwrap()),
        Some(Reason::DeniedUnknownSource)
    );
    // Egress, IPv6, through a packet socket: the reply of the allowed flow passes.
    let (_, reply6) = packet(
        "2001:db8:1::1",
        "2001:db8:ff::1",
        L4::TcpFlags {
            src: 22,
            dst: 40_000,
            flags: 0x12,
        },
        b"",
    );
    let mut passed = false;
    assert_eq!(
        decided(&dp, || passed = tun.egress(ETH_P_IPV6, &reply6).unwrap()),
        Some(Reason::Reply)
    );
    assert!(passed);
}

#[test]
fn the_protocol_must_agree_with_the_packet() {
    if skip_unless_privileged!() {
        return;
    }
    let mut dp = connector();
    // With packet information, the writer claims the protocol: it may lie.
    let tun = Tun::new(&mut dp, true).unwrap();
    let (_, v4) = packet("198.19.0.1", "198.18.1.1", L4::Tcp { src: 1, dst: 22 }, b"");
    let (_, v6) = packet(
        "2001:db8:ff::1",
        "2001:db8:1::1",
        L4::Tcp { src: 1, dst: 22 },
        b"",
    );
    let ingress = |ty: u16, p: &[u8]| decided(&dp, || tun.ingress(ty, p).unwrap());
    // Controls: the truth is allowed.
    assert_eq!(ingress(ETH_P_IP, &v4), Some(Reason::Allowed));
    assert_eq!(ingress(ETH_P_IPV6, &v6), Some(Reason::Allowed));
    // An IPv4 packet claimed as IPv6, and the reverse: malformed.
    assert_eq!(ingress(ETH_P_IPV6, &v4), Some(Reason::DeniedMalformed));
    assert_eq!(ingress(ETH_P_IP, &v6), Some(Reason::DeniedMalformed));
    // Anything but IP on an L3 device is malformed, not "not IP".
    assert_eq!(ingress(ETH_P_ARP, &v4), Some(Reason::DeniedMalformed));
    // A VLAN tag claimed in front of an allowed packet: the kernel takes the tag off
    // before the hook, which finds a tag where an L3 device has none: malformed.
    let mut tagged = vec![0x00, 0x07, 0x08, 0x00];
    tagged.extend_from_slice(&v4);
    assert_eq!(ingress(ETH_P_8021Q, &tagged), Some(Reason::DeniedMalformed));
    // The same at egress, where the drop is seen by the sender.
    let (_, reply) = packet(
        "198.18.1.1",
        "198.19.0.1",
        L4::TcpFlags {
            src: 22,
            dst: 1,
            flags: 0x12,
        },
        b"",
    );
    let mut passed = None;
    assert_eq!(
        decided(&dp, || passed = Some(tun.egress(ETH_P_IP, &reply).unwrap())),
        Some(Reason::Reply)
    );
    assert_eq!(passed, Some(true));
    assert_eq!(
        decided(&dp, || passed =
            Some(tun.egress(ETH_P_IPV6, &reply).unwrap())),
        Some(Reason::DeniedMalformed)
    );
    assert_eq!(passed, Some(false));
    assert_eq!(
        decided(&dp, || passed =
            Some(tun.egress(ETH_P_ARP, &reply).unwrap())),
        Some(Reason::DeniedMalformed)
    );
    assert_eq!(passed, Some(false));
}

/// The agent's attachment with `[tunnel]`: the tunnel interface gets the policy programs
/// (pinned links `tcin-<tun>`, `tc-<tun>`), the physical link the shield's; a recreated
/// TUN device is attached anew by `attach_tunnel`; a restart re-adopts every link; detach
/// removes them all.
#[test]
fn the_agent_attaches_the_tunnel_and_the_shield_with_pins() {
    use gateway_user::agent::{config::Config, pins};
    if skip_unless_privileged!() {
        return;
    }
    let ns = gateway_test_support::netns::NetNs::new("ztp").unwrap();
    ns.ip(&[
        "link", "add", "phys0", "type", "veth", "peer", "name", "phys1",
    ])
    .unwrap();
    ns.ip(&["link", "set", "phys0", "up"]).unwrap();
    let tun_name = gateway_test_support::netns::unique_name("ztg");
    let dir = std::env::temp_dir().join(gateway_test_support::netns::unique_name("ztcfg"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.toml"), testkit::OPEN_LAB).unwrap();
    let pin_dir = format!(
        "/sys/fs/bpf/{}",
        gateway_test_support::netns::unique_name("ztpin")
    );
    let text = format!(
        "role = \"connector\"\nname = \"lab-connector\"\npolicy_file = \"{}\"\n\
         pin_dir = \"{pin_dir}\"\nxdp_interfaces = [\"phys0\"]\n\
         tc_egress_interfaces = [\"phys0\"]\nxdp_mode = \"generic\"\n\n[tunnel]\n\
         interface = \"{tun_name}\"\nlisten_port = 51820\n",
        dir.join("policy.toml").display()
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    // Whatever a failed run leaves pinned goes too.
    struct Cleanup(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = pins::detach(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _cleanup = Cleanup(pin_dir.clone().into(), dir.clone());
    let mut cfg = Config::load(&dir.join("agent.toml")).unwrap();
    cfg.pin_dir = pins::prepare(&cfg.pin_dir).unwrap();

    let load = |cfg: &Config| {
        let mut dp = Dataplane::load_pinned(&pins::maps_dir(&cfg.pin_dir)).unwrap();
        load_policy(
            &mut dp,
            testkit::OPEN_LAB,
            "connector:lab-connector",
            unix_now(),
        )
        .unwrap();
        dp
    };
    let mut dp = load(&cfg);
    // The agent's tunnel code creates the device before attaching.
    let tun = ns
        .run(|| testkit::open_tun(&tun_name, false))
        .unwrap()
        .unwrap();
    ns.ip(&["link", "set", &tun_name, "up"]).unwrap();
    let attached = ns.run(|| pins::attach_all(&mut dp, &cfg)).unwrap().unwrap();
    let names: Vec<&str> = attached.iter().map(|(w, _)| w.as_str()).collect();
    assert!(
        attached
            .iter()
            .all(|(_, a)| matches!(a, pins::Attached::New { .. })),
        "{attached:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("gateway_shield_xdp")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("gateway_shield_tc")),
        "{names:?}"
    );
    let mut links = pins::pinned_links(&cfg.pin_dir);
    links.sort();
    let mut want = vec![
        "tc-phys0".to_string(),
        format!("tc-{tun_name}"),
        format!("tcin-{tun_name}"),
        "xdp-phys0".to_string(),
    ];
    want.sort();
    assert_eq!(links, want);
    let c = dp.config().unwrap();
    assert_eq!((c.tunnel, c.wg_port()), (1, 51_820));
    assert_eq!(
        (c.handshakes_per_source, c.handshake_burst),
        (
            cfg.tunnel.as_ref().unwrap().handshakes_per_source,
            cfg.tunnel.as_ref().unwrap().handshake_burst
        )
    );

    let write = |fd: &std::os::fd::OwnedFd, p: &[u8]| {
        use std::os::fd::AsRawFd as _;
        // SAFETY: writes from a buffer we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), p.as_ptr().cast(), p.len()) };
        assert_eq!(n, p.len() as isize);
    };
    let (_, allowed) = packet("198.19.0.1", "198.18.1.1", L4::Tcp { src: 1, dst: 22 }, b"");
    let (_, unknown) = packet(
        "198.19.0.99",
        "198.18.1.1",
        L4::Tcp { src: 1, dst: 22 },
        b"",
    );
    assert_eq!(
        decided(&dp, || write(&tun, &allowed)),
        Some(Reason::Allowed)
    );
    assert_eq!(
        decided(&dp, || write(&tun, &unknown)),
        Some(Reason::DeniedUnknownSource)
    );

    // The tunnel's code recreates the device: the old links are defunct, new ones made.
    drop(tun);
    // The kernel unregisters the old device after the last descriptor closes, not always
    // before this returns: until then the name is busy (EBUSY), so try for a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let tun = loop {
        match ns.run(|| testkit::open_tun(&tun_name, false)).unwrap() {
            Ok(t) => break t,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("reopening {tun_name}: {e:#}"),
        }
    };
    ns.ip(&["link", "set", &tun_name, "up"]).unwrap();
    // Control: nothing enforces on the new device until it is attached.
    assert_eq!(decided(&dp, || write(&tun, &unknown)), None);
    let again = ns
        .run(|| pins::attach_tunnel(&mut dp, &cfg))
        .unwrap()
        .unwrap();
    assert_eq!(again.len(), 2);
    assert!(
        again
            .iter()
            .all(|(_, a)| matches!(a, pins::Attached::New { .. })),
        "{again:?}"
    );
    assert_eq!(
        decided(&dp, || write(&tun, &unknown)),
        Some(Reason::DeniedUnknownSource)
    );

    // A restart: every link re-adopted, the new programs swapped in.
    drop(dp);
    let mut dp = load(&cfg);
    let readopted = ns.run(|| pins::attach_all(&mut dp, &cfg)).unwrap().unwrap();
    assert_eq!(readopted.len(), 4);
    assert!(
        readopted
            .iter()
            .all(|(_, a)| matches!(a, pins::Attached::Replaced)),
        "{readopted:?}"
    );
    assert_eq!(
        decided(&dp, || write(&tun, &allowed)),
        Some(Reason::Allowed)
    );
    drop(dp);
    let removed = pins::detach(&cfg.pin_dir).unwrap();
    assert!(
        removed
            .iter()
            .any(|r| r.contains(&format!("tcin-{tun_name}"))),
        "{removed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
