//! What the demo builds and expects: the hosts, their addresses, the services and
//! every probe with the outcome the policy implies.

use crate::prelude::*;

pub(crate) const CONNECTOR: &str = "demo-connector";
/// The connector's WireGuard port (its `endpoint` in the policy: the connector's address
/// on alice's link; bob reaches it through the connector's routing).
pub(crate) const WG_PORT: u16 = 51820;
/// The tunnel interface every agent creates.
pub(crate) const TUNNEL_IF: &str = "ztg0";
pub(crate) const NETWORK: &str = "corp";
pub(crate) const METRICS_PORT: u16 = 9464;
/// Flows idle this long get a flow_end record (TCP after its FIN, UDP and ICMP after any
/// packet).
pub(crate) const IDLE_TIMEOUT_SECS: u64 = 2;
/// Allowed exchanges get this long per step; denied attempts this long before counting as
/// dropped.
/// (The first exchange of a laptop includes the WireGuard handshake.)
pub(crate) const ALLOW_TIMEOUT: Duration = Duration::from_millis(3000);
pub(crate) const DENY_TIMEOUT: Duration = Duration::from_millis(700);
pub(crate) const SCAN_TIMEOUT: Duration = Duration::from_millis(800);
/// 30 well-known ports (443 left out: Bob's attempt on it is its own probe).
pub(crate) const SCAN_PORTS: [u16; 30] = [
    21, 22, 23, 25, 53, 80, 88, 110, 111, 135, 139, 143, 389, 445, 465, 587, 636, 993, 995, 1433,
    1521, 2049, 3306, 3389, 5900, 6379, 8080, 8443, 9200, 27017,
];
/// Servers in the resource namespace stop by themselves after this long at the latest.
pub(crate) const SERVER_LIFETIME: Duration = Duration::from_secs(170);

pub use gateway_test_support::records::{BASE_FIELDS, FLOW_END_FIELDS};
pub(crate) const EVENTS: [&str; 5] = ["flow_start", "flow_end", "deny", "audit", "scan_alert"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Who {
    Alice,
    Bob,
}

pub(crate) struct Client {
    pub(crate) name: &'static str,
    pub(crate) user: &'static str,
    pub(crate) device: &'static str,
    /// The laptop's physical address (its uplink to the connector): the tunnel's outer
    /// address, `public_ip` in the connector's log, no identity.
    pub(crate) ip: Ipv4Addr,
    pub(crate) gateway: Ipv4Addr,
    /// The device's overlay addresses in the policy (on its tunnel interface): its
    /// identity, `src_ip` in every log.
    pub(crate) overlay: Ipv4Addr,
    pub(crate) overlay6: &'static str,
}

pub(crate) const ALICE: Client = Client {
    name: "alice",
    user: "alice@example.com",
    device: "alice-laptop",
    ip: Ipv4Addr::new(198, 19, 1, 10),
    gateway: Ipv4Addr::new(198, 19, 1, 1),
    overlay: Ipv4Addr::new(100, 64, 0, 10),
    overlay6: "2001:db8:ff::10",
};
pub(crate) const BOB: Client = Client {
    name: "bob",
    user: "bob@example.com",
    device: "bob-laptop",
    ip: Ipv4Addr::new(198, 19, 2, 11),
    gateway: Ipv4Addr::new(198, 19, 2, 1),
    overlay: Ipv4Addr::new(100, 64, 0, 11),
    overlay6: "2001:db8:ff::11",
};

/// The placeholder keys of `examples/demo.toml` (valid keys: base64 of a readable text),
/// replaced by the public keys the agents create before the policy is applied: (host in
/// the policy, placeholder).
pub(crate) const KEY_PLACEHOLDERS: [(&str, &str); 3] = [
    (CONNECTOR, "ZGVtby1jb25uZWN0b3I6IGtleSBzZXQgYXQgcnVuLi4="),
    (
        "alice-laptop",
        "YWxpY2UtbGFwdG9wOiBrZXkgc2V0IGF0IHJ1bi4uLi4=",
    ),
    ("bob-laptop", "Ym9iLWxhcHRvcDoga2V5IHNldCBhdCBydW4uLi4uLi4="),
];

pub(crate) fn client(who: Who) -> &'static Client {
    match who {
        Who::Alice => &ALICE,
        Who::Bob => &BOB,
    }
}

pub(crate) const CONN_RES_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The controller's host, behind the connector (management network).
pub(crate) const CTL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 1);
pub(crate) const CONN_CTL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 2);
pub(crate) const CTL_PORT: u16 = 50051;

pub(crate) fn controller_url() -> String {
    format!("https://{CTL_IP}:{CTL_PORT}")
}
pub(crate) const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);
pub(crate) const DB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
pub(crate) const WIKI: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
pub(crate) const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 53);
/// The resource network's DNS server (a zone the demo serves): what the connector resolves
/// resources' names with.
pub(crate) const ZONE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 54);
/// Alice's own upstream resolver (on her loopback): names she may not reach go there.
pub(crate) const OUTSIDE_ZONE: &str = "127.0.0.1:5301";
/// Alice's IPv6 proxy addresses (documentation space, as everything in the demo).
pub(crate) const PROXY_V6: &str = "2001:db8:ffff::/107";
/// The DNS resource the names act adds: served by web's address, granted to engineering.
pub(crate) const INTRANET: &str = "intranet.corp.test";
/// A DNS resource granted to nobody, on the same server.
pub(crate) const PAYROLL: &str = "payroll.corp.test";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The services of the resource host: (name, address, protocol).
pub(crate) const SERVICES: [(&str, SocketAddrV4, Proto); 4] = [
    ("web", SocketAddrV4::new(WEB, 443), Proto::Tcp),
    ("db", SocketAddrV4::new(DB, 5432), Proto::Tcp),
    ("wiki", SocketAddrV4::new(WIKI, 80), Proto::Tcp),
    ("dns", SocketAddrV4::new(DNS, 53), Proto::Udp),
];

/// Where a denied attempt is stopped and logged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Where {
    /// The client's own agent, at tcx egress of its tunnel interface, before encryption:
    /// the attempt never leaves the laptop, the client's log holds the deny and the
    /// connector never sees it. (With the tunnel every laptop runs an agent and both ends
    /// compile the same policy, so nothing a laptop sends is denied only at the connector;
    /// what bypasses the tunnel meets the shields, see the teardown and the tunnel act.)
    ClientTunnelEgress,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    Allow {
        rule: &'static str,
    },
    Deny {
        at: Where,
        reason: &'static str,
        rule: Option<&'static str>,
    },
}

pub(crate) struct Probe {
    pub(crate) who: Who,
    pub(crate) what: &'static str,
    pub(crate) resource: &'static str,
    pub(crate) proto: Proto,
    pub(crate) dst: SocketAddrV4,
    pub(crate) expect: Expect,
}

/// An attempt on web 443/tcp (a listener that answers), denied for bob: what the teardown
/// repeats.
pub(crate) fn web_probe() -> Probe {
    Probe {
        who: Who::Bob,
        what: "web",
        resource: "web",
        proto: Proto::Tcp,
        dst: SocketAddrV4::new(WEB, 443),
        expect: Expect::Deny {
            at: Where::ClientTunnelEgress,
            reason: "denied_no_grant",
            rule: None,
        },
    }
}

pub(crate) fn probes() -> Vec<Probe> {
    use Expect::*;
    vec![
        Probe {
            who: Who::Alice,
            what: "web",
            resource: "web",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WEB, 443),
            expect: Allow {
                rule: "engineering-web",
            },
        },
        Probe {
            who: Who::Alice,
            what: "dns",
            resource: "dns",
            proto: Proto::Udp,
            dst: SocketAddrV4::new(DNS, 53),
            expect: Allow {
                rule: "engineering-dns",
            },
        },
        Probe {
            who: Who::Alice,
            what: "db",
            resource: "db",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(DB, 5432),
            expect: Deny {
                at: Where::ClientTunnelEgress,
                reason: "denied_no_grant",
                rule: None,
            },
        },
        Probe {
            who: Who::Alice,
            what: "web ssh",
            resource: "web",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WEB, 22),
            expect: Deny {
                at: Where::ClientTunnelEgress,
                reason: "denied_no_grant",
                rule: None,
            },
        },
        Probe {
            who: Who::Bob,
            what: "wiki",
            resource: "wiki",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WIKI, 80),
            expect: Allow {
                rule: "contractors-wiki",
            },
        },
        Probe {
            who: Who::Bob,
            what: "web",
            resource: "web",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WEB, 443),
            expect: Deny {
                at: Where::ClientTunnelEgress,
                reason: "denied_no_grant",
                rule: None,
            },
        },
        Probe {
            who: Who::Bob,
            what: "db",
            resource: "db",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(DB, 5432),
            expect: Deny {
                at: Where::ClientTunnelEgress,
                reason: "denied_by_rule",
                rule: Some("contractors-no-db"),
            },
        },
        Probe {
            who: Who::Bob,
            what: "dns",
            resource: "dns",
            proto: Proto::Udp,
            dst: SocketAddrV4::new(DNS, 53),
            expect: Deny {
                at: Where::ClientTunnelEgress,
                reason: "denied_no_grant",
                rule: None,
            },
        },
    ]
}
