//! What the demo builds and expects: the hosts, their addresses, the services and
//! every probe with the outcome the policy implies.

use crate::prelude::*;

pub(crate) const CONNECTOR: &str = "demo-connector";
pub(crate) const NETWORK: &str = "corp";
pub(crate) const METRICS_PORT: u16 = 9464;
/// Flows idle this long get a flow_end record (TCP after its FIN, UDP and ICMP after any
/// packet).
pub(crate) const IDLE_TIMEOUT_SECS: u64 = 2;
/// Allowed exchanges get this long per step; denied attempts this long before counting as
/// dropped.
pub(crate) const ALLOW_TIMEOUT: Duration = Duration::from_millis(1500);
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
    pub(crate) ip: Ipv4Addr,
    pub(crate) gateway: Ipv4Addr,
}

pub(crate) const ALICE: Client = Client {
    name: "alice",
    user: "alice@example.com",
    device: "alice-laptop",
    ip: Ipv4Addr::new(198, 19, 1, 10),
    gateway: Ipv4Addr::new(198, 19, 1, 1),
};
pub(crate) const BOB: Client = Client {
    name: "bob",
    user: "bob@example.com",
    device: "bob-laptop",
    ip: Ipv4Addr::new(198, 19, 2, 11),
    gateway: Ipv4Addr::new(198, 19, 2, 1),
};

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
pub(crate) const DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 53);

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
pub(crate) const SERVICES: [(&str, SocketAddrV4, Proto); 3] = [
    ("web", SocketAddrV4::new(WEB, 443), Proto::Tcp),
    ("db", SocketAddrV4::new(DB, 5432), Proto::Tcp),
    ("dns", SocketAddrV4::new(DNS, 53), Proto::Udp),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Where {
    /// The client's own agent (TC egress on its uplink).
    ClientEgress,
    /// The connector (XDP ingress on its client-facing link).
    Connector,
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
                at: Where::ClientEgress,
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
                at: Where::ClientEgress,
                reason: "denied_no_grant",
                rule: None,
            },
        },
        Probe {
            who: Who::Bob,
            what: "web",
            resource: "web",
            proto: Proto::Tcp,
            dst: SocketAddrV4::new(WEB, 443),
            expect: Deny {
                at: Where::Connector,
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
                at: Where::Connector,
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
                at: Where::Connector,
                reason: "denied_no_grant",
                rule: None,
            },
        },
    ]
}
