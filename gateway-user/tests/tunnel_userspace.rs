//! The userspace WireGuard tunnel on its own (no eBPF): a device reaches a resource behind
//! a connector only through the tunnel, the connector masquerades, and cryptokey routing
//! refuses a peer that sends with another peer's address. The control run switches
//! cryptokey routing off on the connector and shows the same spoof then gets through: the
//! spoof assertion can fail.
//!
//! Hosts: device `alice` and `bob` (physical 198.19.1.10 / .11, overlay 100.64.0.10 / .11
//! and 2001:db8:ff::10 / ::11), connector (198.19.1.1 on the client link, 198.18.1.1 on the
//! resource link), resource 198.18.1.5 / 2001:db8:1::5 with TCP echo on 443.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_test_support::tunnel::NsTunnel as Host;
use gateway_test_support::{
    net::{send_udp, tcp_dropped, tcp_echo, tcp_echo_servers, udp_counter},
    netns::{NetNs, unique_name},
    skip_unless_privileged,
};
use gateway_user::tunnel::{
    Options, PeerSpec, TunnelDrop,
    keys::KeyPair,
    tun::{configure_link, enable_forwarding, install_masquerade, sync_routes},
};
use ipnet::IpNet;
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

const T: Duration = Duration::from_millis(1500);

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn opts(iface: &str, port: u16, skip: bool) -> Options {
    Options {
        interface: iface.into(),
        listen_port: port,
        mtu: 1420,
        persistent_keepalive: None,
        skip_cryptokey_routing: skip,
    }
}

struct World {
    alice: NetNs,
    bob: NetNs,
    conn: NetNs,
    res: NetNs,
    tun: String,
}

fn world() -> World {
    let alice = NetNs::new("ta").unwrap();
    let bob = NetNs::new("tb").unwrap();
    let conn = NetNs::new("tc").unwrap();
    let res = NetNs::new("tr").unwrap();
    // A bridge in the connector joins the client link of both laptops.
    conn.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    conn.ip(&["addr", "add", "198.19.1.1/24", "dev", "br0"])
        .unwrap();
    conn.ip(&["link", "set", "br0", "up"]).unwrap();
    for (ns, addr) in [(&alice, "198.19.1.10/24"), (&bob, "198.19.1.11/24")] {
        let (a, b) = (unique_name("vc"), unique_name("vd"));
        std::process::Command::new("ip")
            .args([
                "link",
                "add",
                &a,
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                conn.name(),
            ])
            .status()
            .unwrap();
        ns.ip(&["addr", "add", addr, "dev", &a]).unwrap();
        ns.ip(&["link", "set", &a, "up"]).unwrap();
        conn.ip(&["link", "set", &b, "master", "br0", "up"])
            .unwrap();
    }
    gateway_test_support::netns::veth_pair(
        &conn,
        &["198.18.1.1/24", "2001:db8:1::1/64"],
        &res,
        &["198.18.1.5/24", "2001:db8:1::5/64"],
    )
    .unwrap();
    tcp_echo_servers(&res, &["198.18.1.5:443", "[2001:db8:1::5]:443"]).unwrap();
    World {
        alice,
        bob,
        conn,
        res,
        tun: unique_name("wg"),
    }
}

fn conn_endpoint() -> SocketAddr {
    "198.19.1.1:51820".parse().unwrap()
}

/// A device's tunnel: its overlay addresses, routes to the corp network through the
/// connector.
fn device(ns: &NetNs, tun: &str, keys: KeyPair, me: [&str; 2], connector: &KeyPair) -> Host {
    let tun = tun.to_string();
    let addrs: Vec<IpAddr> = me.iter().map(|a| a.parse().unwrap()).collect();
    let conn_key = *connector.public.as_bytes();
    Host::start(ns.name(), opts(&tun, 0, false), keys, move |t| {
        configure_link(&tun, 1420, &addrs)?;
        let corp = vec![net("198.18.1.0/24"), net("2001:db8:1::/48")];
        t.set_peers(&[PeerSpec {
            name: "conn".into(),
            public_key: conn_key,
            endpoint: Some(conn_endpoint()),
            allowed_ips: corp.clone(),
        }]);
        sync_routes(&tun, &corp)
    })
    .unwrap()
}

fn peer(name: &str, k: &KeyPair, addrs: [&str; 2]) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        public_key: *k.public.as_bytes(),
        endpoint: None,
        allowed_ips: addrs.iter().map(|a| net(a)).collect(),
    }
}

fn connector(w: &World, keys: KeyPair, peers: Vec<PeerSpec>, skip: bool) -> Host {
    let tun = w.tun.clone();
    Host::start(w.conn.name(), opts(&tun, 51820, skip), keys, move |t| {
        configure_link(&tun, 1420, &[])?;
        t.set_peers(&peers);
        let routes: Vec<IpNet> = peers.iter().flat_map(|p| p.allowed_ips.clone()).collect();
        sync_routes(&tun, &routes)?;
        enable_forwarding(true)?;
        install_masquerade(&tun)
    })
    .unwrap()
}

const ALICE: [&str; 2] = ["100.64.0.10/32", "2001:db8:ff::10/128"];
const BOB: [&str; 2] = ["100.64.0.11/32", "2001:db8:ff::11/128"];

fn run(skip_ckr: bool) -> (bool, bool, bool, u64) {
    let w = world();
    let (ka, kb, kc) = (
        KeyPair::generate().unwrap(),
        KeyPair::generate().unwrap(),
        KeyPair::generate().unwrap(),
    );
    let conn = connector(
        &w,
        kc.clone(),
        vec![peer("alice", &ka, ALICE), peer("bob", &kb, BOB)],
        skip_ckr,
    );
    let _alice = device(
        &w.alice,
        &w.tun,
        ka,
        ["100.64.0.10", "2001:db8:ff::10"],
        &kc,
    );
    let alice_v4 = tcp_echo(&w.alice, "198.18.1.5:443", T);
    let alice_v6 = tcp_echo(&w.alice, "[2001:db8:1::5]:443", T);
    // Bob configures Alice's overlay address on his own tunnel: his key, her address.
    let _bob = device(&w.bob, &w.tun, kb, ["100.64.0.10", "2001:db8:ff::10"], &kc);
    let spoof_dropped = tcp_dropped(&w.bob, "198.18.1.5:443", T);
    // What reaches the resource at all: a reply would go to Alice's tunnel, not Bob's, so
    // only a count at the resource tells whether the spoof got through one way.
    let sink = udp_counter(&w.res, "198.18.1.5:5353", None).unwrap();
    send_udp(&w.bob, None, "198.18.1.5:5353", b"spoof", 20).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reached = sink.load(std::sync::atomic::Ordering::Relaxed);
    let drops = conn
        .with(|t| {
            t.drops()
                .into_iter()
                .find(|(r, _)| *r == TunnelDrop::CryptokeyRouting)
                .map(|(_, n)| n)
                .unwrap_or(0)
        })
        .unwrap();
    (alice_v4, alice_v6, spoof_dropped && reached == 0, drops)
}

#[test]
fn tunnel_carries_alice_and_refuses_bob_as_alice() {
    if skip_unless_privileged!() {
        return;
    }
    let (v4, v6, spoof_dropped, drops) = run(false);
    assert!(v4, "alice reaches 198.18.1.5:443 through the tunnel");
    assert!(v6, "alice reaches [2001:db8:1::5]:443 through the tunnel");
    assert!(
        spoof_dropped,
        "bob sending as alice through his tunnel: no answer, and 0 packets at the resource"
    );
    assert!(drops > 0, "the connector counts cryptokey-routing drops");
}

/// Control: without cryptokey routing the same spoof gets through, so the assertion above
/// is about cryptokey routing and not about something else in the setup.
#[test]
fn control_without_cryptokey_routing_the_spoof_gets_through() {
    if skip_unless_privileged!() {
        return;
    }
    let (v4, _, spoof_dropped, drops) = run(true);
    assert!(v4);
    assert!(
        !spoof_dropped,
        "with cryptokey routing off, bob-as-alice reaches the resource"
    );
    assert_eq!(drops, 0);
}
