//! Real traffic through a veth pair with the XDP program attached in native mode.
//!
//! Two namespaces, `sender` and `receiver`, joined by a veth; the program sits on the
//! receiver's end under the test policy `testkit::OPEN_LAB` (the receiver's addresses are
//! protected, the sender is a device allowed everything there). UDP (IPv4 and IPv6) and
//! TCP traffic must arrive and be counted per parse outcome, per verdict and per flow.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aya::programs::XdpMode;
use gateway_common::{ParseOutcome, Reason};
use gateway_test_support::{
    netns::{self, NetNs, veth_pair},
    skip_unless_privileged,
    testkit::{L4, OPEN_LAB, expected_key, load_policy, unix_now},
};
use gateway_user::Dataplane;
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

const SENDER_V4: &str = "198.19.0.1";
const RECEIVER_V4: &str = "198.18.0.2";
const SENDER_V6: &str = "2001:db8:ff::1";
const RECEIVER_V6: &str = "2001:db8:1::2";
const DATAGRAMS: u64 = 50;

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test address"), port)
}

#[test]
fn udp_and_tcp_through_native_xdp_are_counted() {
    if skip_unless_privileged!() {
        return;
    }
    let sender = NetNs::new("zgs").unwrap();
    let receiver = NetNs::new("zgr").unwrap();
    let (_a, b) = veth_pair(
        &sender,
        &[&format!("{SENDER_V4}/15"), &format!("{SENDER_V6}/32")],
        &receiver,
        &[&format!("{RECEIVER_V4}/15"), &format!("{RECEIVER_V6}/32")],
    )
    .unwrap();

    let mut dp = Dataplane::load().unwrap();
    load_policy(&mut dp, OPEN_LAB, "connector:lab-connector", unix_now()).unwrap();
    receiver
        .run(|| dp.attach_xdp(&b.iface, XdpMode::Driver))
        .unwrap()
        .expect("native XDP attach on veth");
    let before = dp.parse_stats().unwrap();

    // Sockets belong to the namespace they are created in.
    let (udp4_rx, udp6_rx, tcp_rx) = receiver
        .run(|| {
            (
                UdpSocket::bind(sock(RECEIVER_V4, 9999)).unwrap(),
                UdpSocket::bind(sock(RECEIVER_V6, 9999)).unwrap(),
                TcpListener::bind(sock(RECEIVER_V4, 8080)).unwrap(),
            )
        })
        .unwrap();
    let (udp4_tx, udp6_tx) = sender
        .run(|| {
            (
                UdpSocket::bind(sock(SENDER_V4, 0)).unwrap(),
                UdpSocket::bind(sock(SENDER_V6, 0)).unwrap(),
            )
        })
        .unwrap();
    for s in [&udp4_rx, &udp6_rx] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }

    // UDP: a bounded number of datagrams, each of which must arrive.
    for (tx, rx, dst) in [
        (&udp4_tx, &udp4_rx, sock(RECEIVER_V4, 9999)),
        (&udp6_tx, &udp6_rx, sock(RECEIVER_V6, 9999)),
    ] {
        let mut buf = [0u8; 64];
        for i in 0..DATAGRAMS {
            tx.send_to(format!("datagram {i}").as_bytes(), dst).unwrap();
            let (n, _) = rx.recv_from(&mut buf).expect("datagram passed by XDP");
            assert_eq!(&buf[..n], format!("datagram {i}").as_bytes());
        }
    }

    // TCP: connect, send, read the echo.
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = tcp_rx.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&buf).unwrap();
        peer
    });
    let mut client = sender
        .run(|| {
            TcpStream::connect_timeout(&sock(RECEIVER_V4, 8080), Duration::from_secs(5)).unwrap()
        })
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");
    let client_addr = server.join().unwrap();

    let stats = dp.parse_stats().unwrap().since(&before);
    assert_eq!(stats.get(ParseOutcome::Ipv4Udp), DATAGRAMS, "{stats:?}");
    assert_eq!(stats.get(ParseOutcome::Ipv6Udp), DATAGRAMS, "{stats:?}");
    // SYN, the ACK of the handshake, data, and the ACK of the echo at least.
    assert!(stats.get(ParseOutcome::Ipv4Tcp) >= 3, "{stats:?}");
    assert_eq!(stats.get(ParseOutcome::Truncated), 0);
    assert_eq!(stats.get(ParseOutcome::Malformed), 0);
    // Three flows decided once each (UDP v4, UDP v6, TCP); the rest took the fast path.
    let verdicts = dp.verdict_stats().unwrap();
    assert_eq!(
        verdicts.reason(Reason::Allowed),
        3,
        "{:?}",
        verdicts.nonzero()
    );
    assert!(
        verdicts.reason(Reason::Established) >= 2 * (DATAGRAMS - 1),
        "{:?}",
        verdicts.nonzero()
    );

    // The flow table holds each flow under the exact 5-tuple, with its packet count.
    let udp4_src = udp4_tx.local_addr().unwrap();
    let udp4_flow = dp
        .flows
        .get(&expected_key(
            udp4_src.ip(),
            RECEIVER_V4.parse().unwrap(),
            L4::Udp {
                src: udp4_src.port(),
                dst: 9999,
            },
        ))
        .unwrap()
        .expect("UDP flow recorded");
    assert_eq!(udp4_flow.packets, DATAGRAMS);
    let tcp_flow = dp
        .flows
        .get(&expected_key(
            client_addr.ip(),
            RECEIVER_V4.parse::<IpAddr>().unwrap(),
            L4::Tcp {
                src: client_addr.port(),
                dst: 8080,
            },
        ))
        .unwrap()
        .expect("TCP flow recorded");
    assert!(tcp_flow.packets >= 3, "{tcp_flow:?}");
}

#[test]
fn namespaces_are_removed_even_when_the_test_panics() {
    if skip_unless_privileged!() {
        return;
    }
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = NetNs::new("zgp").unwrap();
        name = ns.name().to_string();
        assert!(netns::exists(&name));
        panic!("deliberate");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!netns::exists(&name), "namespace {name} left behind");
}
