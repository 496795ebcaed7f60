//! A client, a connector and a resource host in network namespaces, with real traffic.
//!
//! ```text
//!  alice (agent: device view)  ──veth──┐
//!                                       connector (agent: connector view, forwarding) ──veth── resources
//!  bob   (no agent)            ──veth──┘
//! ```
//!
//! The connector enforces with XDP on its client-facing interfaces (client -> resource)
//! and TC egress on the same interfaces (only replies leave toward clients); alice's host
//! enforces with TC egress (what she may not reach never leaves) and XDP ingress. Policy:
//! `tests/data/topology.toml`.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aya::programs::XdpMode;
use gateway_common::Reason;
use gateway_test_support::{
    netns::{NetNs, veth_pair},
    skip_unless_privileged,
    testkit::{self, load_policy, unix_now},
};
use gateway_user::Dataplane;
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

const POLICY: &str = include_str!("data/topology.toml");
const TIMEOUT: Duration = Duration::from_millis(700);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Topology {
    alice: NetNs,
    bob: NetNs,
    conn: NetNs,
    res: NetNs,
    alice_dp: Dataplane,
    conn_dp: Dataplane,
    /// alice's uplink, the connector's links to alice and bob.
    ifaces: (String, String, String),
}

fn build() -> Topology {
    let alice = NetNs::new("zga").unwrap();
    let bob = NetNs::new("zgb").unwrap();
    let conn = NetNs::new("zgc").unwrap();
    let res = NetNs::new("zgr").unwrap();
    let (a_if, ca_if) = veth_pair(&alice, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"]).unwrap();
    let (_b_if, cb_if) = veth_pair(
        &bob,
        &["198.19.2.11/24", "2001:db8:a2::11/64"],
        &conn,
        &["198.19.2.1/24", "2001:db8:a2::1/64"],
    )
    .unwrap();
    let (_cr_if, _r_if) = veth_pair(
        &conn,
        &["198.18.1.1/24", "2001:db8:1::1/64"],
        &res,
        &[
            "198.18.1.5/24",
            "198.18.1.10/24",
            "198.18.1.53/24",
            "2001:db8:1::5/64",
        ],
    )
    .unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    bob.ip(&["route", "add", "default", "via", "198.19.2.1"])
        .unwrap();
    bob.ip(&["-6", "route", "add", "default", "via", "2001:db8:a2::1"])
        .unwrap();
    res.ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    res.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();

    let now = unix_now();
    let mut conn_dp = Dataplane::load().unwrap();
    load_policy(&mut conn_dp, POLICY, "connector:conn", now).unwrap();
    let mut alice_dp = Dataplane::load().unwrap();
    load_policy(&mut alice_dp, POLICY, "device:alice-laptop", now).unwrap();
    Topology {
        alice,
        bob,
        conn,
        res,
        alice_dp,
        conn_dp,
        ifaces: (a_if.iface, ca_if.iface, cb_if.iface),
    }
}

/// Attaches the connector's programs to its client-facing links and alice's to her uplink.
fn attach(t: &mut Topology) {
    let (a, ca, cb) = t.ifaces.clone();
    let conn_dp = &mut t.conn_dp;
    t.conn
        .run(|| {
            for iface in [&ca, &cb] {
                conn_dp.attach_xdp(iface, XdpMode::Driver).unwrap();
                conn_dp.attach_tc_egress(iface).unwrap();
            }
        })
        .unwrap();
    let alice_dp = &mut t.alice_dp;
    t.alice
        .run(|| {
            alice_dp.attach_xdp(&a, XdpMode::Driver).unwrap();
            alice_dp.attach_tc_egress(&a).unwrap();
        })
        .unwrap();
}

/// A UDP datagram from `ns` to `dst` and its echo, bounded by `TIMEOUT`.
fn udp_works(ns: &NetNs, bind: &str, dst: &str) -> bool {
    let sock = ns.run(|| UdpSocket::bind(sa(bind)).unwrap()).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.send_to(b"q", sa(dst)).unwrap();
    let mut b = [0u8; 8];
    matches!(sock.recv_from(&mut b), Ok((1, _)))
}

/// Echo servers on the resource host; they stop when the namespace goes (the test ends).
fn serve(res: &NetNs) {
    for addr in [
        "198.18.1.5:443",
        "198.18.1.10:5432",
        "198.18.1.5:23",
        "[2001:db8:1::5]:443",
    ] {
        let l = res.run(|| TcpListener::bind(sa(addr)).unwrap()).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut b = [0u8; 1];
                c.set_read_timeout(Some(TIMEOUT)).ok();
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
    }
    let u = res
        .run(|| UdpSocket::bind(sa("198.18.1.53:53")).unwrap())
        .unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((n, from)) = u.recv_from(&mut b) {
            let _ = u.send_to(&b[..n], from);
        }
    });
}

#[test]
fn client_connector_resource() {
    if skip_unless_privileged!() {
        return;
    }
    let mut t = build();
    serve(&t.res);

    // Control: without the gateway every destination the assertions below call denied
    // answers (listeners and routes work), and unsolicited traffic reaches bob; so each
    // denial below is the gateway's doing, not a closed port or a missing route.
    for (who, ns, dst) in [
        ("alice", &t.alice, "198.18.1.5:23"),
        ("bob", &t.bob, "198.18.1.10:5432"),
    ] {
        assert_eq!(
            testkit::tcp_try(ns, dst, TIMEOUT),
            testkit::TcpOutcome::Echoed,
            "control: {who} -> {dst} must work without the gateway"
        );
    }
    assert!(
        udp_works(&t.bob, "198.19.2.11:0", "198.18.1.53:53"),
        "control: bob -> dns without the gateway"
    );
    {
        let bob_rx = t
            .bob
            .run(|| UdpSocket::bind(sa("198.19.2.11:7778")).unwrap())
            .unwrap();
        bob_rx.set_read_timeout(Some(TIMEOUT)).unwrap();
        let res_tx = t
            .res
            .run(|| UdpSocket::bind(sa("198.18.1.5:0")).unwrap())
            .unwrap();
        res_tx
            .send_to(b"unsolicited", sa("198.19.2.11:7778"))
            .unwrap();
        let mut b = [0u8; 32];
        assert!(
            bob_rx.recv_from(&mut b).is_ok(),
            "control: an unsolicited datagram reaches bob without the gateway"
        );
    }
    attach(&mut t);

    // Authorized: through both agents, replies included.
    assert!(tcp_echo_at(&t.alice, "198.18.1.5:443"), "alice -> web:443");
    assert!(
        tcp_echo_at(&t.alice, "198.18.1.10:5432"),
        "alice -> db:5432"
    );
    assert!(
        udp_works(&t.alice, "198.19.1.10:0", "198.18.1.53:53"),
        "alice -> dns:53"
    );
    assert!(tcp_echo_at(&t.bob, "198.18.1.5:443"), "bob -> web:443");
    assert!(
        tcp_echo_at(&t.bob, "[2001:db8:1::5]:443"),
        "bob -> web-v6:443"
    );

    // Unauthorized traffic from alice never leaves her host: her egress program drops
    // it, and the connector never sees it.
    let alice_before = t.alice_dp.verdict_stats().unwrap();
    let conn_before = t.conn_dp.verdict_stats().unwrap();
    assert!(
        testkit::tcp_dropped(&t.alice, "198.18.1.5:23", TIMEOUT),
        "alice -> web:23 must be dropped"
    );
    let alice_delta = t.alice_dp.verdict_stats().unwrap().since(&alice_before);
    let conn_delta = t.conn_dp.verdict_stats().unwrap().since(&conn_before);
    assert!(
        alice_delta.reason(Reason::DeniedNoGrant) >= 1,
        "{:?}",
        alice_delta.nonzero()
    );
    assert_eq!(
        conn_delta.reason(Reason::DeniedNoGrant) + conn_delta.reason(Reason::Allowed),
        0,
        "the connector saw alice's denied SYN: {:?}",
        conn_delta.nonzero()
    );

    // Unauthorized traffic from bob (no agent on his host) is stopped by the connector.
    let conn_before = t.conn_dp.verdict_stats().unwrap();
    assert!(
        testkit::tcp_dropped(&t.bob, "198.18.1.10:5432", TIMEOUT),
        "bob -> db must be dropped"
    );
    assert!(
        !udp_works(&t.bob, "198.19.2.11:0", "198.18.1.53:53"),
        "bob -> dns must fail"
    );
    let conn_delta = t.conn_dp.verdict_stats().unwrap().since(&conn_before);
    assert!(
        conn_delta.reason(Reason::DeniedNoGrant) >= 2,
        "{:?}",
        conn_delta.nonzero()
    );

    // Unsolicited traffic from protected space toward a client is dropped by the
    // connector's egress program.
    let conn_before = t.conn_dp.verdict_stats().unwrap();
    let bob_rx = t
        .bob
        .run(|| UdpSocket::bind(sa("198.19.2.11:7777")).unwrap())
        .unwrap();
    bob_rx.set_read_timeout(Some(TIMEOUT)).unwrap();
    let res_tx = t
        .res
        .run(|| UdpSocket::bind(sa("198.18.1.5:0")).unwrap())
        .unwrap();
    for _ in 0..3 {
        res_tx
            .send_to(b"unsolicited", sa("198.19.2.11:7777"))
            .unwrap();
    }
    let mut b = [0u8; 32];
    assert!(
        bob_rx.recv_from(&mut b).is_err(),
        "unsolicited datagram reached bob"
    );
    let conn_delta = t.conn_dp.verdict_stats().unwrap().since(&conn_before);
    assert!(
        conn_delta.reason(Reason::DeniedUnsolicited) >= 3,
        "{:?}",
        conn_delta.nonzero()
    );

    // The connector's own traffic toward a client is not protected traffic.
    let conn_tx = t
        .conn
        .run(|| UdpSocket::bind(sa("198.19.2.1:0")).unwrap())
        .unwrap();
    conn_tx.send_to(b"hello", sa("198.19.2.11:7777")).unwrap();
    assert!(
        matches!(bob_rx.recv_from(&mut b), Ok((5, _))),
        "connector -> bob datagram"
    );
}

fn tcp_echo_at(ns: &NetNs, dst: &str) -> bool {
    gateway_test_support::testkit::tcp_echo(ns, dst, TIMEOUT)
}
