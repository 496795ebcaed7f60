//! BIG TCP: with a GSO size above 64 KiB, the stack hands tcx egress IPv6 packets whose
//! payload length is 0 (the real length is the packet's). The gateway must read such a
//! packet's length from the packet, not call it malformed: an allowed TCP stream with BIG
//! TCP on must go through a device's egress program whole.
//!
//! (IPv4 BIG TCP — total length 0 — is handled the same way; this machine's iproute2 cannot
//! switch it on (`gso_ipv4_max_size`), so only IPv6 is exercised here.)

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aya::programs::XdpMode;
use gateway_common::Reason;
use gateway_test_support::{
    netns::{NetNs, veth_pair},
    skip_unless_privileged,
    testkit::{load_policy, unix_now},
};
use gateway_user::Dataplane;
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

const POLICY: &str = r#"
[[remote_network]]
name = "corp"
cidrs = ["2001:db8:77:1::/64"]
connectors = ["conn"]

[[resource]]
name = "bulk"
network = "corp"
address = "2001:db8:77:1::2"
tcp = ["5001"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
address = "2001:db8:77:2::1"

[[allow]]
name = "alice-bulk"
principals = ["alice@example.com"]
resources = ["bulk"]
"#;

const MB: usize = 1 << 20;

#[test]
fn big_tcp_streams_pass_egress() {
    if skip_unless_privileged!() {
        return;
    }
    let alice = NetNs::new("zbt").unwrap();
    let res = NetNs::new("zbr").unwrap();
    let (a_if, r_if) = veth_pair(
        &alice,
        &["2001:db8:77:2::1/48"],
        &res,
        &["2001:db8:77:1::2/48"],
    )
    .unwrap();
    alice
        .ip(&["link", "set", &a_if.iface, "gso_max_size", "185000"])
        .unwrap();
    res.ip(&["link", "set", &r_if.iface, "gro_max_size", "185000"])
        .unwrap();

    let now = unix_now();
    let mut dp = Dataplane::load().unwrap();
    load_policy(&mut dp, POLICY, "device:alice-laptop", now).unwrap();
    alice
        .run(|| {
            dp.attach_tc_egress(&a_if.iface).unwrap();
            dp.attach_xdp(&a_if.iface, XdpMode::Driver).unwrap();
        })
        .unwrap();
    let before = dp.verdict_stats().unwrap();

    let addr: SocketAddr = "[2001:db8:77:1::2]:5001".parse().unwrap();
    let listener = res.run(|| TcpListener::bind(addr).unwrap()).unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut n = 0usize;
        let mut b = vec![0u8; MB];
        while let Ok(k) = c.read(&mut b) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    let mut s = alice
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap())
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![7u8; MB];
    for _ in 0..32 {
        s.write_all(&chunk).unwrap();
    }
    drop(s);
    assert_eq!(
        receiver.join().unwrap(),
        32 * MB,
        "the stream arrived whole"
    );

    let d = dp.verdict_stats().unwrap().since(&before);
    assert_eq!(d.reason(Reason::DeniedMalformed), 0, "{:?}", d.nonzero());
    // Superpackets went through: the flow's bytes per packet exceed what a 16-bit length
    // can describe.
    let flows = dp.flows.all().unwrap();
    let out = flows
        .iter()
        .find(|(k, _)| k.dst_port() == 5001)
        .expect("the stream's flow");
    assert!(
        out.1.bytes / out.1.packets.max(1) > 65_535,
        "no BIG TCP packet seen ({} bytes in {} packets): the test proves nothing",
        out.1.bytes,
        out.1.packets
    );
}
