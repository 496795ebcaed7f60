//! DNS resources on a connector's tunnel interface (docs/dataplane.md, "Names on the
//! connector"): a device sends to a per-device proxy address; `NAMES` gives the resource's
//! atom (the decision) and the real address; the tunnel programs translate proxy -> real on
//! the way in and real -> proxy on replies.
//!
//! The real tunnel programs run on a TUN device (`Tun`): what ingress lets through is
//! forwarded by the namespace's stack to a second TUN device, read back whole (its
//! destination and checksums checked here, independently of the kernel's helpers); what
//! egress lets through is read from the tunnel's own descriptor.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::{FlowKey, Reason, policy::AtomValue, policy::DstKey};
use gateway_test_support::{
    skip_unless_privileged,
    testkit::{self, L4, Tun, load_policy, open_tun, strip_ethernet, unix_now},
};
use gateway_user::{Dataplane, names_map::addr_of};
use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

const POLICY: &str = r#"
[[remote_network]]
name = "lab"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["lab-connector"]

[[resource]]
name = "db"
network = "lab"
address = "198.18.5.10"
tcp = ["5432"]
icmp = true

[[resource]]
name = "db6"
network = "lab"
address = "2001:db8:1::10"
tcp = ["5432"]
udp = ["53"]

[[resource]]
name = "web"
network = "lab"
address = "198.18.7.7"
tcp = ["80"]

[[user]]
email = "tester@example.com"

[[user]]
email = "other@example.com"

[[device]]
name = "tester-v4"
owner = "tester@example.com"
address = "198.19.0.1"

[[device]]
name = "tester-v6"
owner = "tester@example.com"
address = "2001:db8:ff::1"

[[device]]
name = "other-v4"
owner = "other@example.com"
address = "198.19.0.2"

[[allow]]
name = "tester-db"
principals = ["tester@example.com"]
resources = ["db", "db6"]

[[allow]]
name = "other-web"
principals = ["other@example.com"]
resources = ["web"]
"#;

const HOST: &str = "connector:lab-connector";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// Devices, proxy addresses (per device), real addresses.
const D1: &str = "198.19.0.1";
const D1V6: &str = "2001:db8:ff::1";
const D2: &str = "198.19.0.2";
const P: &str = "100.96.0.7";
const P_UNKNOWN: &str = "100.96.0.99";
const P_WEB: &str = "100.96.0.8";
const P6: &str = "2001:db8:96::7";
const R_DB: &str = "198.18.5.10";
const R_DB2: &str = "198.18.5.11";
const R_WEB: &str = "198.18.7.7";
const R_DB6: &str = "2001:db8:1::10";

/// An IP packet (no Ethernet), checksums right.
fn packet(src: &str, dst: &str, l4: L4, payload: &[u8]) -> Vec<u8> {
    let f = testkit::frame(ip(src), ip(dst), l4, &[], payload);
    strip_ethernet(&f).unwrap().1.to_vec()
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    packet(
        src,
        dst,
        L4::Tcp {
            src: sport,
            dst: dport,
        },
        b"names",
    )
}

fn key(src: &str, sport: u16, dst: &str, dport: u16) -> FlowKey {
    testkit::expected_key(
        ip(src),
        ip(dst),
        L4::Tcp {
            src: sport,
            dst: dport,
        },
    )
}

fn ones(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Source and destination of an IP packet.
fn addrs(p: &[u8]) -> (IpAddr, IpAddr) {
    if p[0] >> 4 == 4 {
        (
            IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).unwrap()),
            IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).unwrap()),
        )
    } else {
        (
            IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap()),
            IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap()),
        )
    }
}

/// Recomputes every checksum of `p` (IPv4 header; TCP, UDP, ICMP, ICMPv6 with their
/// pseudo headers) and fails when one does not verify.
fn assert_checksums(p: &[u8]) {
    if p[0] >> 4 == 4 {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        assert_eq!(fold(ones(&p[..ihl])), 0xffff, "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let proto = p[9];
        let l4 = &p[ihl..total];
        if proto == 17 && l4[6..8] == [0, 0] {
            return;
        }
        let pseudo = if proto == 1 {
            0
        } else {
            ones(&p[12..20]) + u32::from(proto) + l4.len() as u32
        };
        assert_eq!(
            fold(pseudo + ones(l4)),
            0xffff,
            "transport checksum (proto {proto})"
        );
    } else {
        let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
        let next = p[6];
        let l4 = &p[40..40 + plen];
        let pseudo = ones(&p[8..40]) + plen as u32 + u32::from(next);
        assert_eq!(
            fold(pseudo + ones(l4)),
            0xffff,
            "transport checksum (next header {next})"
        );
    }
}

/// A connector with POLICY on a TUN device, and a second TUN device the namespace routes
/// protected space to: what ingress lets through is forwarded there and read back.
struct Lab {
    /// The forwarding target's descriptor (first: it goes before the namespace).
    out: OwnedFd,
    tun: Tun,
    dp: Dataplane,
    writer: gateway_user::writer::PolicyWriter,
}

fn lab() -> Lab {
    let mut dp = Dataplane::load().unwrap();
    let loaded = load_policy(&mut dp, POLICY, HOST, unix_now()).unwrap();
    let tun = Tun::new(&mut dp, false).unwrap();
    let out_name = gateway_test_support::netns::unique_name("ztr");
    let n = out_name.clone();
    let out = tun.ns.run(move || open_tun(&n, false)).unwrap().unwrap();
    for dev in [tun.name.as_str(), out_name.as_str()] {
        tun.ns
            .exec(
                "sysctl",
                &[
                    "-qw",
                    &format!("net.ipv6.conf.{dev}.addr_gen_mode=1"),
                    &format!("net.ipv6.conf.{dev}.disable_ipv6=0"),
                    &format!("net.ipv4.conf.{dev}.rp_filter=0"),
                ],
            )
            .unwrap();
    }
    tun.ns
        .exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )
        .unwrap();
    tun.ns.ip(&["link", "set", &out_name, "up"]).unwrap();
    for net in ["198.18.0.0/16", "2001:db8:1::/48"] {
        tun.ns.ip(&["route", "add", net, "dev", &out_name]).unwrap();
    }
    let mut lab = Lab {
        out,
        tun,
        dp,
        writer: loaded.writer,
    };
    lab.drain();
    lab
}

impl Lab {
    fn drain(&mut self) {
        let _ = self.read_out(Duration::ZERO);
        let _ = self.tun.read_all();
    }

    /// Packets forwarded to the second device within `wait`.
    fn read_out(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65_536];
        let mut got = Vec::new();
        loop {
            // SAFETY: reads into a buffer we own.
            let n = unsafe { libc::read(self.out.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let p = buf[..n as usize].to_vec();
                // The namespace's own noise (IPv6 multicast) is not ours.
                if p[0] >> 4 == 4 || p[24] != 0xff {
                    got.push(p);
                }
                continue;
            }
            if !got.is_empty() || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes `p` into the tunnel (connector outbound); returns the reasons counted and
    /// what the stack forwarded.
    fn send(&mut self, p: &[u8]) -> (gateway_user::dataplane::VerdictStats, Vec<Vec<u8>>) {
        let before = self.dp.verdict_stats().unwrap();
        self.tun.ingress(0, p).unwrap();
        let out = self.read_out(Duration::from_millis(300));
        (self.dp.verdict_stats().unwrap().since(&before), out)
    }

    /// Sends `p` and expects it forwarded, once, with destination `real` and checksums
    /// right; returns it.
    fn passes_to(&mut self, p: &[u8], real: &str, reason: Reason) -> Vec<u8> {
        let (stats, out) = self.send(p);
        assert_eq!(stats.reason(reason), 1, "reasons {:?}", stats.nonzero());
        assert_eq!(out.len(), 1, "forwarded packets: {out:?}");
        let got = out.into_iter().next().unwrap();
        let (src, dst) = addrs(p);
        assert_eq!(
            addrs(&got),
            (src, ip(real)),
            "rewritten to the real address"
        );
        assert_ne!(dst, ip(real));
        assert_checksums(&got);
        got
    }

    /// Sends `p` and expects it dropped with `reason`, nothing forwarded.
    fn dropped(&mut self, p: &[u8], reason: Reason) {
        let (stats, out) = self.send(p);
        if reason == Reason::DeniedOutsideProtected {
            // The namespace's own IPv6 chatter leaving the tunnel is dropped so too.
            assert!(stats.reason(reason) >= 1, "reasons {:?}", stats.nonzero());
        } else {
            assert_eq!(stats.reason(reason), 1, "reasons {:?}", stats.nonzero());
        }
        assert!(out.is_empty(), "nothing may leave: {out:?}");
    }

    /// A reply from the resource side into the tunnel (connector inbound): `Some` with what
    /// left the device, `None` when dropped.
    fn reply(&mut self, p: &[u8]) -> Option<Vec<u8>> {
        let proto = if p[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
        let out = self.tun.egress_read(proto, p).unwrap()?;
        let mine: Vec<Vec<u8>> = out
            .into_iter()
            .filter(|q| q[0] >> 4 == 4 || q[24] != 0xff)
            .collect();
        assert_eq!(mine.len(), 1, "replies that left: {mine:?}");
        mine.into_iter().next()
    }

    /// The atom of a resource host in policy key slot `slot`.
    fn atom(&self, slot: u8, host: &str) -> AtomValue {
        self.dp
            .policy
            .dst_hosts
            .get(
                &DstKey {
                    generation: slot,
                    addr: addr_of(ip(host)),
                },
                0,
            )
            .unwrap()
    }

    fn slot(&self) -> u8 {
        (self.dp.active_generation().unwrap() & 1) as u8
    }

    /// Maps `device`'s `proxy` to `real` with the atom of resource host `resource` in the
    /// active slot (both slots).
    fn name(&mut self, device: &str, proxy: &str, real: &str, resource: &str) {
        let a = self.atom(self.slot(), resource);
        self.dp
            .names
            .set(ip(device), ip(proxy), ip(real), [a, a])
            .unwrap();
    }

    /// Applies `toml` (a new generation: the other key slot becomes active).
    fn apply(&mut self, toml: &str) {
        let now = unix_now();
        let parsed = policy_compiler::parse(toml, "test-policy.toml", now)
            .map_err(|d| format!("{d:?}"))
            .unwrap();
        let host = testkit::parse_host(HOST).unwrap();
        let view = policy_compiler::compile(&parsed.policy, &host, now).unwrap();
        self.writer.apply(&mut self.dp.policy, &view).unwrap();
    }
}

#[test]
fn an_allowed_name_is_translated_both_ways() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    let out = lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    assert_eq!(&out[out.len() - 5..], b"names", "payload untouched");
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Established);
    // The flow is keyed by the proxy address, and translated.
    let k = key(D1, 40_000, P, 5432);
    let flow = lab
        .dp
        .flows
        .get(&k)
        .unwrap()
        .expect("the flow is keyed D -> P");
    assert_ne!(flow.flags & gateway_common::FlowState::TRANSLATED, 0);
    assert_eq!(lab.dp.names.nat_real(&k).unwrap(), Some(ip(R_DB)));

    // The reply from the real address leaves with the proxy address.
    let before = lab.dp.verdict_stats().unwrap();
    let back = lab
        .reply(&tcp(R_DB, 5432, D1, 40_000))
        .expect("the reply passes");
    assert_eq!(
        lab.dp
            .verdict_stats()
            .unwrap()
            .since(&before)
            .reason(Reason::Reply),
        1
    );
    assert_eq!(addrs(&back), (ip(P), ip(D1)));
    assert_checksums(&back);

    // ICMP (no pseudo header): an echo to the name.
    let echo = packet(D1, P, L4::EchoRequest { id: 77 }, b"ping");
    lab.passes_to(&echo, R_DB, Reason::Allowed);
    let back = lab
        .reply(&packet(R_DB, D1, L4::EchoReply { id: 77 }, b"ping"))
        .expect("the echo reply passes");
    assert_eq!(addrs(&back), (ip(P), ip(D1)));
    assert_checksums(&back);

    // The agent forgets a flow: both NAT entries go.
    lab.dp.names.forget_flow(&k).unwrap();
    assert_eq!(lab.dp.names.nat_real(&k).unwrap(), None);
    let reply_tuple = key(R_DB, 5432, D1, 40_000);
    assert!(
        lab.dp
            .names
            .nat_entries()
            .unwrap()
            .iter()
            .all(|(nk, _)| *nk != reply_tuple),
        "the reply tuple's entry went too"
    );
    // An open flow whose NAT entries went is translated again from NAMES.
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Established);
}

#[test]
fn unknown_names_other_atoms_and_strangers_are_dropped() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    // No NAMES entry: an address outside protected space.
    lab.dropped(
        &tcp(D1, 40_001, P_UNKNOWN, 5432),
        Reason::DeniedOutsideProtected,
    );
    // A name whose atom the device has no grant for: dropped, not translated.
    lab.name(D1, P_WEB, R_WEB, R_WEB);
    lab.dropped(&tcp(D1, 40_002, P_WEB, 80), Reason::DeniedNoGrant);
    assert_eq!(
        lab.dp.names.nat_real(&key(D1, 40_002, P_WEB, 80)).unwrap(),
        None
    );
    assert!(lab.dp.names.nat_entries().unwrap().is_empty());
    // A port the grant does not name.
    lab.name(D1, P, R_DB, R_DB);
    lab.dropped(&tcp(D1, 40_003, P, 22), Reason::DeniedNoGrant);
    // The real address itself, unsolicited from the resource: no NAT entry, dropped.
    assert_eq!(lab.reply(&tcp(R_DB, 5432, D1, 40_999)), None);
    // A reply from the resource to a flow that was never translated: dropped.
    assert_eq!(lab.reply(&tcp(R_DB, 5432, D1, 40_003)), None);
}

#[test]
fn devices_sharing_a_proxy_address_stay_apart() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    lab.name(D2, P, R_WEB, R_WEB);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    lab.passes_to(&tcp(D2, 40_000, P, 80), R_WEB, Reason::Allowed);
    // Each device only its own name's grants.
    lab.dropped(&tcp(D2, 40_001, P, 5432), Reason::DeniedNoGrant);
    lab.dropped(&tcp(D1, 40_001, P, 80), Reason::DeniedNoGrant);
    // Replies find their own device's proxy.
    let back = lab.reply(&tcp(R_WEB, 80, D2, 40_000)).unwrap();
    assert_eq!(addrs(&back), (ip(P), ip(D2)));
    let back = lab.reply(&tcp(R_DB, 5432, D1, 40_000)).unwrap();
    assert_eq!(addrs(&back), (ip(P), ip(D1)));
    // The other device's real address does not answer for this one.
    assert_eq!(lab.reply(&tcp(R_WEB, 80, D1, 40_000)), None);
}

#[test]
fn an_open_flow_keeps_its_real_address_when_the_name_resolves_again() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    // The name now resolves elsewhere (same resource, same atom).
    lab.name(D1, P, R_DB2, R_DB);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Established);
    lab.passes_to(&tcp(D1, 40_001, P, 5432), R_DB2, Reason::Allowed);
    // A stale re-decision (a new generation) does not move the open flow either.
    lab.apply(&format!("{POLICY}\n# another generation\n"));
    let a = lab.atom(lab.slot(), R_DB);
    lab.dp
        .names
        .set_slot_atoms(lab.slot(), |_, _| Some(a))
        .unwrap();
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    lab.passes_to(&tcp(D1, 40_001, P, 5432), R_DB2, Reason::Allowed);
    // Both flows' replies find their proxy.
    let back = lab.reply(&tcp(R_DB, 5432, D1, 40_000)).unwrap();
    assert_eq!(addrs(&back), (ip(P), ip(D1)));
    let back = lab.reply(&tcp(R_DB2, 5432, D1, 40_001)).unwrap();
    assert_eq!(addrs(&back), (ip(P), ip(D1)));
}

/// POLICY without tester's grant.
fn revoked_policy() -> String {
    POLICY.replace("resources = [\"db\", \"db6\"]", "resources = [\"db6\"]")
}

#[test]
fn a_policy_flip_keeps_or_revokes_named_flows() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    lab.passes_to(&tcp(D1, 40_001, P, 5432), R_DB, Reason::Allowed);

    // Same grants, new generation: the flows go on (decided again by the name's atom).
    lab.apply(&format!("{POLICY}\n# unchanged grants\n"));
    let slot = lab.slot();
    let a = lab.atom(slot, R_DB);
    lab.dp.names.set_slot_atoms(slot, |_, _| Some(a)).unwrap();
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Established);

    // The grant revoked: the next packet of an open flow ends it; replies too.
    lab.apply(&revoked_policy());
    let slot = lab.slot();
    let a = lab.atom(slot, R_DB);
    lab.dp.names.set_slot_atoms(slot, |_, _| Some(a)).unwrap();
    lab.dropped(&tcp(D1, 40_000, P, 5432), Reason::DeniedEstablished);
    let k = key(D1, 40_000, P, 5432);
    assert_eq!(lab.dp.flows.get(&k).unwrap(), None, "the flow ended");
    assert_eq!(
        lab.dp.names.nat_real(&k).unwrap(),
        None,
        "its NAT entries went"
    );
    assert_eq!(
        lab.reply(&tcp(R_DB, 5432, D1, 40_001)),
        None,
        "a reply of the other flow"
    );
    lab.dropped(&tcp(D1, 40_001, P, 5432), Reason::DeniedNoGrant);

    // Back to the grant, then the name removed for the new slot (`None`): flows end.
    lab.apply(POLICY);
    let slot = lab.slot();
    let a = lab.atom(slot, R_DB);
    lab.dp.names.set_slot_atoms(slot, |_, _| Some(a)).unwrap();
    lab.passes_to(&tcp(D1, 40_002, P, 5432), R_DB, Reason::Allowed);
    lab.apply(&format!("{POLICY}\n# the name leaves\n"));
    let slot = lab.slot();
    lab.dp.names.set_slot_atoms(slot, |_, _| None).unwrap();
    assert!(lab.dp.names.entries().unwrap().is_empty());
    lab.dropped(&tcp(D1, 40_002, P, 5432), Reason::DeniedEstablished);
}

#[test]
fn fragments_toward_a_proxy_are_dropped() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    let big = testkit::frame(
        ip(D1),
        ip(P),
        L4::Tcp {
            src: 40_000,
            dst: 5432,
        },
        &[],
        &[7u8; 200],
    );
    let frags = testkit::fragment_v4(&big, 96, 0x4242);
    assert!(frags.len() >= 2);
    for f in &frags {
        let (_, p) = strip_ethernet(f).unwrap();
        lab.dropped(p, Reason::DeniedFragment);
    }
    // Also of an open translated flow.
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    let (_, first) = strip_ethernet(&frags[0]).unwrap();
    lab.dropped(first, Reason::DeniedFragment);
    // A reply's fragment from the real address: dropped too.
    let big = testkit::frame(
        ip(R_DB),
        ip(D1),
        L4::Tcp {
            src: 5432,
            dst: 40_000,
        },
        &[],
        &[7u8; 200],
    );
    for f in testkit::fragment_v4(&big, 96, 0x4343) {
        let (_, p) = strip_ethernet(&f).unwrap();
        assert_eq!(lab.reply(p), None);
    }
}

#[test]
fn ipv6_names_are_translated_both_ways() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1V6, P6, R_DB6, R_DB6);
    lab.passes_to(&tcp(D1V6, 40_000, P6, 5432), R_DB6, Reason::Allowed);
    let udp = packet(
        D1V6,
        P6,
        L4::Udp {
            src: 40_053,
            dst: 53,
        },
        b"query",
    );
    lab.passes_to(&udp, R_DB6, Reason::Allowed);
    let back = lab.reply(&tcp(R_DB6, 5432, D1V6, 40_000)).unwrap();
    assert_eq!(addrs(&back), (ip(P6), ip(D1V6)));
    assert_checksums(&back);
    let back = lab
        .reply(&packet(
            R_DB6,
            D1V6,
            L4::Udp {
                src: 53,
                dst: 40_053,
            },
            b"answer",
        ))
        .unwrap();
    assert_eq!(addrs(&back), (ip(P6), ip(D1V6)));
    assert_checksums(&back);
    // No name, another port, unsolicited: dropped.
    lab.dropped(
        &tcp(D1V6, 40_001, "2001:db8:96::99", 5432),
        Reason::DeniedOutsideProtected,
    );
    lab.dropped(&tcp(D1V6, 40_002, P6, 22), Reason::DeniedNoGrant);
    assert_eq!(lab.reply(&tcp(R_DB6, 5432, D1V6, 40_999)), None);
    // A fragment toward the proxy.
    let big = testkit::frame(
        ip(D1V6),
        ip(P6),
        L4::Udp {
            src: 40_054,
            dst: 53,
        },
        &[],
        &[9u8; 300],
    );
    for f in testkit::fragment_v6(&big, 160, 0x4444) {
        let (_, p) = strip_ethernet(&f).unwrap();
        lab.dropped(p, Reason::DeniedFragment);
    }
    // A proxy of one family never stands for a real address of the other.
    assert!(
        lab.dp
            .names
            .set(ip(D1V6), ip(P6), ip(R_DB), [AtomValue::default(); 2])
            .is_err()
    );
}

#[test]
fn truncated_headers_toward_a_proxy_never_pass() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    for cut in [24usize, 30, 39] {
        // The TCP header cut short, the IP length saying so (no lost end).
        let mut p = tcp(D1, 40_000, P, 5432);
        p.truncate(cut);
        p[2..4].copy_from_slice(&(cut as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(ones(&p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        lab.dropped(&p, Reason::DeniedMalformed);
        let mut r = tcp(R_DB, 5432, D1, 40_000);
        r.truncate(cut);
        r[2..4].copy_from_slice(&(cut as u16).to_be_bytes());
        r[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(ones(&r[..20]));
        r[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(lab.reply(&r), None);
    }
    let mut p6 = tcp(D1V6, 40_000, P6, 5432);
    lab.name(D1V6, P6, R_DB6, R_DB6);
    p6.truncate(50);
    p6[4..6].copy_from_slice(&10u16.to_be_bytes());
    lab.dropped(&p6, Reason::DeniedMalformed);
}

#[test]
fn the_reaper_forgets_a_translated_flows_nat_entries() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    assert!(lab.reply(&tcp(R_DB, 5432, D1, 40_000)).is_some());
    assert_eq!(lab.dp.names.nat_entries().unwrap().len(), 2);
    // Every timeout 0: the agent's next scan ends the flow as idle.
    let none = gateway_user::agent::config::FlowTimeouts {
        tcp_unreplied: 0,
        tcp_established: 0,
        tcp_closing: 0,
        tcp_reset: 0,
        udp_unreplied: 0,
        udp_replied: 0,
        other: 0,
        fragments: 0,
    };
    let mut reaper = gateway_user::agent::flows::Reaper::default();
    let Lab { dp, .. } = &mut lab;
    let (ended, _) = reaper
        .scan(&mut dp.flows, &mut dp.names, &none, 1, |_| {})
        .unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(
        ended[0].key,
        key(D1, 40_000, P, 5432),
        "flow_end keeps D -> P"
    );
    assert!(
        lab.dp.names.nat_entries().unwrap().is_empty(),
        "both NAT entries went"
    );
    // The reply has no way back any more.
    assert_eq!(lab.reply(&tcp(R_DB, 5432, D1, 40_000)), None);
}

#[test]
fn icmp_errors_about_translated_flows_are_not_translated() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    lab.name(D1, P, R_DB, R_DB);
    lab.passes_to(&tcp(D1, 40_000, P, 5432), R_DB, Reason::Allowed);
    let reply = testkit::frame(
        ip(P),
        ip(D1),
        L4::Tcp {
            src: 5432,
            dst: 40_000,
        },
        &[],
        b"",
    );
    // The device about the flow's reply, toward the proxy address: not related, dropped.
    let err = testkit::icmp_error(ip(D1), ip(P), &reply);
    let (_, err) = strip_ethernet(&err).unwrap();
    let (stats, out) = lab.send(err);
    assert_eq!(
        stats.reason(Reason::IcmpErrorRelated),
        0,
        "{:?}",
        stats.nonzero()
    );
    assert!(
        stats.reason(Reason::DeniedOutsideProtected) >= 1,
        "{:?}",
        stats.nonzero()
    );
    assert!(out.is_empty());
    // A router about the flow's packet (as the proxy or as the real address): dropped.
    for quoted_dst in [P, R_DB] {
        let orig = testkit::frame(
            ip(D1),
            ip(quoted_dst),
            L4::Tcp {
                src: 40_000,
                dst: 5432,
            },
            &[],
            b"",
        );
        let err = testkit::icmp_error(ip("100.64.0.1"), ip(D1), &orig);
        let (_, err) = strip_ethernet(&err).unwrap();
        assert_eq!(lab.reply(err), None, "an error quoting {quoted_dst}");
    }
}

#[test]
fn a_real_address_of_the_other_family_is_never_translated() {
    if skip_unless_privileged!() {
        return;
    }
    let mut lab = lab();
    let a = lab.atom(lab.slot(), R_DB);
    // Written past NameMaps::set, which refuses it.
    lab.dp
        .names
        .names
        .insert(
            gateway_common::names::NameKey {
                device: addr_of(ip(D1)),
                proxy: addr_of(ip(P)),
            },
            gateway_common::names::NameValue {
                real: addr_of(ip(R_DB6)),
                atoms: [a, a],
            },
            0,
        )
        .unwrap();
    lab.dropped(&tcp(D1, 40_000, P, 5432), Reason::DeniedNoGrant);
    assert!(lab.dp.names.nat_entries().unwrap().is_empty());
    // A slot whose atom was never written fails closed.
    lab.dp
        .names
        .set(ip(D1), ip(P), ip(R_DB), [AtomValue::default(); 2])
        .unwrap();
    lab.dropped(&tcp(D1, 40_001, P, 5432), Reason::DeniedNoGrant);
    assert!(lab.dp.names.nat_entries().unwrap().is_empty());
}
