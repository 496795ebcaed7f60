//! Seeded sequences of steps for one policy and one host: packets in both directions,
//! policy swaps and time passing. Deterministic per seed (own PRNG; the policy comes from
//! `policy_compiler::random::gen_policy` with a few additions).
//!
//! A sequence opens flows from principals to granted and non-granted resources (IPv4 and
//! IPv6, dual-stack principals sending from the address of the destination's family), sends
//! replies, data, FIN and out-of-window RST, ICMP errors quoting real flows and forged ones
//! (outer addresses that do not match; from bob to db quoting alice's flow to web), real
//! fragments of datagrams larger than the MTU in both directions (a first fragment opening a
//! flow, later ones following; a second datagram on an open flow; later fragments alone or
//! before their first), unknown and spoofed sources (a protected source sent outbound, an
//! IPv4-mapped principal address, another principal's address on a device), source-routed
//! packets, other IP protocols, malformed frames from [`crate::wire::malformed`], 0-2 VLAN
//! tags, IPv6 extension headers and IPv4 options on ordinary packets. Policies carry
//! audit-mode resources and grants expiring shortly after the start; `Swap` steps remove or
//! add a grant or change a resource's ports; `Advance` steps let time pass over expiries.
//!
//! [`replay`] runs a sequence through the [`Model`] and gives the expected outcome of every
//! packet; a harness runs the same steps through the real data plane and compares.
//!
//! One file on purpose (over 800 lines): one generator whose steps share its state
//! (open flows, clock, policy versions).

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use policy_compiler::random::{Rng as PolicyRng, gen_policy, random_addr_in, sub_prefix};
use policy_compiler::{Mode, Packet, Policy, Verdict, evaluate, format_rfc3339, parse};

use crate::oracle::{Direction, Expected, Model, Role};
use crate::wire::{self, Ext, IcmpError, L4, V4, Vlan, flags};

/// The start of every generated sequence (unix seconds).
pub const START: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// One step of a sequence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A frame as on the wire meets the hook of `dir`.
    Packet {
        dir: Direction,
        frame: Vec<u8>,
        label: String,
    },
    /// The host's policy becomes this text (parsed at the current time): a new generation.
    Swap { policy_text: String },
    /// Time passes.
    Advance { seconds: i64 },
}

/// A generated sequence for one policy and one host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Scenario {
    pub seed: u64,
    pub policy_text: String,
    pub role: Role,
    /// Unix seconds at the first step.
    pub start: i64,
    pub steps: Vec<Step>,
}

/// Runs a sequence through the model: the expected outcome of each step (`None` for swaps
/// and time steps). Panics if a policy text does not parse (generated ones always do).
pub fn replay(s: &Scenario) -> Vec<Option<Expected>> {
    let policy = must_parse(&s.policy_text, s.start);
    let mut model = Model::new(policy, s.role.clone(), s.start);
    let mut now = s.start;
    s.steps
        .iter()
        .map(|step| match step {
            Step::Packet { dir, frame, .. } => Some(model.packet(*dir, frame, now)),
            Step::Swap { policy_text } => {
                model.apply(must_parse(policy_text, now), now);
                None
            }
            Step::Advance { seconds } => {
                now += seconds;
                None
            }
        })
        .collect()
}

fn must_parse(text: &str, now: i64) -> Policy {
    match parse(text, "scenario.toml", now) {
        Ok(p) => p.policy,
        Err(d) => panic!("scenario policy does not parse: {}\n{text}", d[0]),
    }
}

/// SplitMix64: small, seeded, deterministic.
#[derive(Clone, Debug)]
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> Option<&'a T> {
        if xs.is_empty() {
            None
        } else {
            Some(&xs[self.below(xs.len())])
        }
    }
}

/// A random policy and host, and a sequence of 200 steps for them.
pub fn generate(seed: u64) -> Scenario {
    let mut rng = Prng(seed ^ 0x5eed_5ca1_ab1e);
    let mut prng = PolicyRng(seed);
    loop {
        let mut text = gen_policy(&mut prng, START);
        add_extras(&mut rng, &mut text);
        let Ok(parsed) = parse(&text, "scenario.toml", START) else {
            continue;
        };
        let p = parsed.policy;
        let mut connectors: Vec<String> = p
            .networks
            .iter()
            .flat_map(|n| n.connectors.iter().cloned())
            .collect();
        connectors.sort();
        connectors.dedup();
        let role = if !p.devices.is_empty() && rng.chance(35) {
            Role::Device(
                rng.pick(&p.devices)
                    .map(|d| d.name.clone())
                    .unwrap_or_default(),
            )
        } else {
            match rng.pick(&connectors) {
                Some(c) => Role::Connector(c.clone()),
                None => continue,
            }
        };
        return generate_for(&text, role, START, rng.next(), 200);
    }
}

/// Additions to a random policy: an audit-mode resource, a grant expiring shortly after the
/// start, a service-account key expiring shortly after the start.
fn add_extras(rng: &mut Prng, text: &mut String) {
    if rng.chance(60) {
        let cidr = first_cidr(text);
        let addr = sub_prefix(&mut PolicyRng(rng.next()), &cidr);
        let _ = writeln!(
            text,
            "[[resource]]\nname = \"audit-extra\"\nnetwork = \"n0\"\naddress = \"{addr}\"\ntcp = [\"80\", \"443\"]\nudp = \"all\"\nicmp = true\nmode = \"audit\"\n"
        );
    }
    if rng.chance(70) && text.contains("[[resource]]\nname = \"r0\"") {
        let who = if text.contains("email = \"u1@x.test\"") && rng.chance(50) {
            "u1@x.test"
        } else {
            "u0@x.test"
        };
        let e = START + 30 + rng.below(200) as i64;
        let _ = writeln!(
            text,
            "[[allow]]\nname = \"jit\"\nprincipals = [\"{who}\"]\nresources = [\"r0\"]\nexpires_at = \"{}\"\n",
            format_rfc3339(e)
        );
    }
    if rng.chance(25) && text.contains("[[resource]]\nname = \"r0\"") {
        let e = START + 30 + rng.below(200) as i64;
        let _ = writeln!(
            text,
            "[[service_account]]\nname = \"sa-exp\"\nkeys = [{{ name = \"k\", addresses = [\"198.19.254.77\", \"2001:db8:ff::7777\"], expires_at = \"{}\" }}]\n\n[[allow]]\nname = \"sa-exp-r0\"\nprincipals = [\"service_account:sa-exp\"]\nresources = [\"r0\"]\n",
            format_rfc3339(e)
        );
    }
}

/// The first CIDR of network `n0` in a generated policy text.
fn first_cidr(text: &str) -> String {
    text.split("cidrs = [\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("198.18.0.0/24")
        .to_string()
}

/// What kind of conversation a flow attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Udp,
    Echo,
    Other(u8),
}

/// A flow attempt: client -> server.
#[derive(Clone, Debug)]
struct Conv {
    client: IpAddr,
    server: IpAddr,
    kind: Kind,
    /// Client port / echo identifier.
    cport: u16,
    /// Server port (unused for echo and other protocols).
    sport: u16,
    /// What the generator expected when it chose it.
    note: &'static str,
}

impl Conv {
    fn v6(&self) -> bool {
        self.server.is_ipv6()
    }

    /// The client's packet (`data`: with payload; for TCP an ACK|PSH segment).
    fn forward(&self, data: usize, tcp_flags: u8) -> L4 {
        match self.kind {
            Kind::Tcp => L4::tcp_data(
                self.cport,
                self.sport,
                tcp_flags,
                1000,
                if tcp_flags & flags::ACK != 0 { 5000 } else { 0 },
                vec![0x41; data],
            ),
            Kind::Udp => L4::udp(self.cport, self.sport, vec![0x42; data.max(12)]),
            Kind::Echo => L4::echo_request(self.v6(), self.cport, 1),
            Kind::Other(p) => L4::other(p, vec![0x43; data.max(24)]),
        }
    }

    /// The server's packet back.
    fn backward(&self, data: usize, tcp_flags: u8) -> L4 {
        match self.kind {
            Kind::Tcp => L4::tcp_data(
                self.sport,
                self.cport,
                tcp_flags,
                5000,
                1001,
                vec![0x61; data],
            ),
            Kind::Udp => L4::udp(self.sport, self.cport, vec![0x62; data.max(12)]),
            Kind::Echo => L4::echo_reply(self.v6(), self.cport, 1),
            Kind::Other(p) => L4::other(p, vec![0x63; data.max(24)]),
        }
    }

    fn describe(&self) -> String {
        let what = match self.kind {
            Kind::Tcp => format!("tcp {}->{}", self.cport, self.sport),
            Kind::Udp => format!("udp {}->{}", self.cport, self.sport),
            Kind::Echo => format!("echo id {}", self.cport),
            Kind::Other(p) => format!("proto {p}"),
        };
        format!("{} -> {} {what} ({})", self.client, self.server, self.note)
    }
}

struct Gen {
    rng: Prng,
    policy: Policy,
    text: String,
    role: Role,
    now: i64,
    protected: Vec<IpNet>,
    steps: Vec<Step>,
    convs: Vec<Conv>,
    port: u16,
    frag_id: u32,
    swaps: u32,
}

/// A sequence of about `len` steps for `policy_text` on the host `role`, from `start`.
pub fn generate_for(policy_text: &str, role: Role, start: i64, seed: u64, len: usize) -> Scenario {
    let policy = must_parse(policy_text, start);
    let mut g = Gen {
        rng: Prng(seed),
        protected: protected_of(&policy, &role),
        policy,
        text: policy_text.to_string(),
        role: role.clone(),
        now: start,
        steps: Vec::new(),
        convs: Vec::new(),
        port: 40000,
        frag_id: 0x100,
        swaps: 0,
    };
    while g.steps.len() < len {
        g.step();
    }
    Scenario {
        seed,
        policy_text: policy_text.to_string(),
        role,
        start,
        steps: g.steps,
    }
}

fn protected_of(p: &Policy, role: &Role) -> Vec<IpNet> {
    p.networks
        .iter()
        .filter(|n| match role {
            Role::Connector(c) => n.connectors.iter().any(|x| x == c),
            Role::Device(_) => true,
        })
        .flat_map(|n| n.cidrs.iter().copied())
        .collect()
}

const UNKNOWN4: Ipv4Addr = Ipv4Addr::new(198, 19, 254, 1);
const UNKNOWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfe, 0, 0, 0, 0, 1);
const INTERNET4: Ipv4Addr = Ipv4Addr::new(198, 19, 253, 1);
const INTERNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfd, 0, 0, 0, 0, 1);
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 19, 252, 1);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfc, 0, 0, 0, 0, 1);

fn family<T>(v6: bool, a: T, b: T) -> T {
    if v6 { b } else { a }
}

impl Gen {
    fn packet(&mut self, dir: Direction, datagram: &[u8], label: String) {
        let vlans: Vec<Vlan> = match self.rng.below(20) {
            0..3 => vec![Vlan::q(100)],
            3 => vec![Vlan::ad(10), Vlan::q(100)],
            _ => vec![],
        };
        self.steps.push(Step::Packet {
            dir,
            frame: wire::ether(datagram, &vlans),
            label,
        });
    }

    fn raw_frame(&mut self, dir: Direction, frame: Vec<u8>, label: String) {
        self.steps.push(Step::Packet { dir, frame, label });
    }

    /// Addresses of the principals the host's clients send from: every principal's on a
    /// connector, the device's own on a device.
    fn client_principals(&self) -> Vec<Vec<IpAddr>> {
        let mut out: Vec<Vec<IpAddr>> = Vec::new();
        for d in &self.policy.devices {
            if matches!(&self.role, Role::Device(n) if n != &d.name) {
                continue;
            }
            out.push(d.addresses.clone());
        }
        if matches!(self.role, Role::Connector(_)) {
            for sa in &self.policy.service_accounts {
                for k in &sa.keys {
                    out.push(k.addresses.clone());
                }
            }
        }
        out
    }

    /// Every principal's addresses (for spoofing on a device).
    fn all_principal_addrs(&self) -> Vec<IpAddr> {
        self.policy
            .devices
            .iter()
            .flat_map(|d| d.addresses.iter().copied())
            .chain(
                self.policy
                    .service_accounts
                    .iter()
                    .flat_map(|sa| sa.keys.iter().flat_map(|k| k.addresses.iter().copied())),
            )
            .collect()
    }

    fn any_client(&mut self, v6: bool) -> IpAddr {
        let clients = self.client_principals();
        let with: Vec<IpAddr> = clients
            .iter()
            .filter_map(|a| a.iter().copied().find(|x| x.is_ipv6() == v6))
            .collect();
        match self.rng.pick(&with) {
            Some(a) => *a,
            None => family(v6, UNKNOWN4.into(), UNKNOWN6.into()),
        }
    }

    /// A protected address: inside a resource of the host's view or anywhere in its space.
    fn protected_addr(&mut self, v6: Option<bool>) -> Option<IpAddr> {
        let resources: Vec<IpNet> = self
            .policy
            .resources
            .iter()
            .filter_map(|r| r.address.net())
            .filter(|a| {
                self.protected.iter().any(|c| c.contains(a))
                    && v6.is_none_or(|v| a.addr().is_ipv6() == v)
            })
            .collect();
        let space: Vec<IpNet> = self
            .protected
            .iter()
            .copied()
            .filter(|a| v6.is_none_or(|v| a.addr().is_ipv6() == v))
            .collect();
        let net = if self.rng.chance(75) && !resources.is_empty() {
            *self.rng.pick(&resources)?
        } else {
            *self.rng.pick(&space)?
        };
        Some(random_addr_in(&mut PolicyRng(self.rng.next()), &net))
    }

    fn next_port(&mut self) -> u16 {
        self.port = if self.port >= 60000 {
            40000
        } else {
            self.port + 1
        };
        self.port
    }

    fn next_frag_id(&mut self) -> u32 {
        self.frag_id += 1;
        self.frag_id
    }

    /// A new flow attempt, biased towards what the policy grants.
    fn choose_conv(&mut self) -> Option<Conv> {
        let clients = self.client_principals();
        let mut last = None;
        // Mostly allowed flows, some audited, some denied.
        let want = match self.rng.below(10) {
            0..6 => Verdict::Allow,
            6 => Verdict::Audit,
            _ => Verdict::Deny,
        };
        for _ in 0..16 {
            let server = self.protected_addr(None)?;
            let v6 = server.is_ipv6();
            let client = match self
                .rng
                .pick(&clients)
                .and_then(|a| a.iter().copied().find(|x| x.is_ipv6() == v6))
            {
                Some(c) => c,
                None => continue,
            };
            let covering: Vec<&policy_compiler::model::Resource> = self
                .policy
                .resources
                .iter()
                .filter(|r| r.address.contains(&server))
                .collect();
            let (kind, sport) = match self.rng.pick(&covering) {
                Some(r) if !r.ports.tcp.is_empty() && self.rng.chance(60) => {
                    (Kind::Tcp, port_in(&mut self.rng, r.ports.tcp.ranges()))
                }
                Some(r) if !r.ports.udp.is_empty() && self.rng.chance(60) => {
                    (Kind::Udp, port_in(&mut self.rng, r.ports.udp.ranges()))
                }
                Some(r) if r.ports.icmp => (Kind::Echo, 0),
                _ => match self.rng.below(3) {
                    0 => (Kind::Tcp, *self.rng.pick(&[22u16, 80, 443, 5432])?),
                    1 => (Kind::Udp, *self.rng.pick(&[53u16, 161, 8000])?),
                    _ => (Kind::Echo, 0),
                },
            };
            let cport = self.next_port();
            let (proto, dport) = match kind {
                Kind::Tcp => (6, sport),
                Kind::Udp => (17, sport),
                Kind::Echo => (family(v6, 1, 58), 0),
                Kind::Other(p) => (p, 0),
            };
            let d = evaluate(
                &self.policy,
                &Packet {
                    src: client,
                    dst: server,
                    proto,
                    src_port: cport,
                    dst_port: dport,
                },
                self.now,
            );
            let conv = Conv {
                client,
                server,
                kind,
                cport,
                sport,
                note: match d.verdict {
                    Verdict::Allow => "evaluator allows",
                    Verdict::Audit => "evaluator audits",
                    Verdict::Deny => "evaluator denies",
                },
            };
            if d.verdict == want {
                return Some(conv);
            }
            last = Some(conv);
        }
        last
    }

    fn conv(&mut self) -> Option<Conv> {
        if self.convs.is_empty() || self.rng.chance(10) {
            let c = self.choose_conv()?;
            self.open(&c);
            self.convs.push(c.clone());
            return Some(c);
        }
        let i = if self.rng.chance(60) {
            self.convs.len() - 1 - self.rng.below(self.convs.len().min(4))
        } else {
            self.rng.below(self.convs.len())
        };
        Some(self.convs[i].clone())
    }

    /// The opening packet of a conversation, sometimes with IPv6 extension headers or IPv4
    /// options that change nothing.
    fn open(&mut self, c: &Conv) {
        let l4 = c.forward(0, flags::SYN);
        let d = self.decorated(c.client, c.server, &l4);
        self.packet(Direction::Outbound, &d, format!("open {}", c.describe()));
    }

    fn decorated(&mut self, src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
        match (src, dst, self.rng.below(10)) {
            (IpAddr::V6(s), IpAddr::V6(d), 0) => wire::ipv6(
                s,
                d,
                &[Ext::HopByHop(vec![5, 2, 0, 0]), Ext::DestOpts(vec![])],
                l4,
            ),
            (IpAddr::V6(s), IpAddr::V6(d), 1) => wire::ipv6(s, d, &[Ext::srh(&[d], 0)], l4),
            (IpAddr::V4(s), IpAddr::V4(d), 0) => wire::ipv4(
                &V4 {
                    options: [wire::opt::router_alert(), wire::opt::record_route(2)].concat(),
                    ..V4::new(s, d)
                },
                l4,
            ),
            _ => wire::datagram(src, dst, l4),
        }
    }

    fn step(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..20 => {
                if let Some(c) = self.choose_conv() {
                    self.open(&c);
                    self.convs.push(c);
                }
            }
            20..32 => self.reply(),
            32..40 => self.data(),
            40..44 => self.fin_rst(),
            44..49 => self.icmp_error_inbound(),
            49..54 => self.icmp_error_outbound(),
            54..62 => self.fragments(),
            62..66 => self.strangers(),
            66..68 => self.source_routed(),
            68..71 => self.other_protocol(),
            71..76 => self.malformed(),
            76..77 => self.echo_request_inbound(),
            77..78 => self.neighbor_discovery(),
            78..82 => self.unprotected(),
            82..85 => self.swap(),
            85..90 => self.advance(),
            _ => {
                if let Some(c) = self.conv() {
                    let l4 = c.forward(32, flags::ACK | flags::PSH);
                    let d = wire::datagram(c.client, c.server, &l4);
                    self.packet(
                        Direction::Outbound,
                        &d,
                        format!("more data {}", c.describe()),
                    );
                }
            }
        }
    }

    fn reply(&mut self) {
        let Some(c) = self.conv() else { return };
        let l4 = c.backward(0, flags::SYN | flags::ACK);
        let d = wire::datagram(c.server, c.client, &l4);
        self.packet(Direction::Inbound, &d, format!("reply to {}", c.describe()));
    }

    fn data(&mut self) {
        let Some(c) = self.conv() else { return };
        let (dir, d, what) = if self.rng.chance(50) {
            let l4 = c.forward(100, flags::ACK | flags::PSH);
            (
                Direction::Outbound,
                wire::datagram(c.client, c.server, &l4),
                "data",
            )
        } else {
            let l4 = c.backward(100, flags::ACK | flags::PSH);
            (
                Direction::Inbound,
                wire::datagram(c.server, c.client, &l4),
                "reply data",
            )
        };
        self.packet(dir, &d, format!("{what} {}", c.describe()));
    }

    /// FIN or an out-of-window RST in either direction, then more data: FIN and RST never
    /// end a flow.
    fn fin_rst(&mut self) {
        let Some(c) = self.conv() else { return };
        if c.kind != Kind::Tcp {
            return;
        }
        let fl = *self
            .rng
            .pick(&[flags::FIN | flags::ACK, flags::RST, flags::RST | flags::ACK])
            .unwrap_or(&flags::RST);
        let seq = self.rng.next() as u32;
        let what = if fl & flags::FIN != 0 {
            "FIN"
        } else {
            "out-of-window RST"
        };
        if self.rng.chance(50) {
            let l4 = L4::tcp_data(c.cport, c.sport, fl, seq, 1, vec![]);
            let d = wire::datagram(c.client, c.server, &l4);
            self.packet(Direction::Outbound, &d, format!("{what} {}", c.describe()));
        } else {
            let l4 = L4::tcp_data(c.sport, c.cport, fl, seq, 1, vec![]);
            let d = wire::datagram(c.server, c.client, &l4);
            self.packet(
                Direction::Inbound,
                &d,
                format!("{what} back on {}", c.describe()),
            );
        }
        let l4 = c.forward(10, flags::ACK | flags::PSH);
        let d = wire::datagram(c.client, c.server, &l4);
        self.packet(
            Direction::Outbound,
            &d,
            format!("data after {what} {}", c.describe()),
        );
    }

    fn error_kind(&mut self) -> IcmpError {
        match self.rng.below(5) {
            0 => IcmpError::Unreachable(self.rng.below(4) as u8),
            1 => IcmpError::TooBig(1280),
            2 => IcmpError::TimeExceeded(0),
            3 => IcmpError::ParamProblem(6),
            _ => IcmpError::SourceQuench,
        }
    }

    /// An ICMP error toward the client quoting its packet: from the server or a router on
    /// the path; or forged (toward someone else, or quoting a flow that never was).
    fn icmp_error_inbound(&mut self) {
        let Some(c) = self.conv() else { return };
        let v6 = c.v6();
        let original = wire::datagram(c.client, c.server, &c.forward(0, flags::SYN));
        let err = self.error_kind();
        let (src, dst, quote, what) = match self.rng.below(5) {
            0 | 1 => (c.server, c.client, original, "from the server"),
            2 => {
                let router = match self.protected_addr(Some(v6)) {
                    Some(a) if self.rng.chance(50) => a,
                    _ => family(v6, ROUTER4.into(), ROUTER6.into()),
                };
                (router, c.client, original, "from a router")
            }
            3 => {
                let other = self.any_client(v6);
                (c.server, other, original, "forged: toward another client")
            }
            _ => {
                let fake = Conv {
                    cport: c.cport.wrapping_add(7),
                    ..c.clone()
                };
                let q = wire::datagram(c.client, c.server, &fake.forward(0, flags::SYN));
                (
                    c.server,
                    c.client,
                    q,
                    "forged: quoting a flow that never was",
                )
            }
        };
        let d = wire::icmp_error(src, dst, err, &quote);
        self.packet(
            Direction::Inbound,
            &d,
            format!("icmp error {err:?} {what} about {}", c.describe()),
        );
    }

    /// An ICMP error into protected space quoting the server's reply: from the client about
    /// the reply (related), or forged (another principal to another resource, the classic
    /// attack; a quoted original-direction packet; a truncated quote).
    fn icmp_error_outbound(&mut self) {
        let Some(c) = self.conv() else { return };
        let v6 = c.v6();
        let reply = wire::datagram(c.server, c.client, &c.backward(0, flags::SYN | flags::ACK));
        let err = self.error_kind();
        let d = match self.rng.below(5) {
            0 | 1 => {
                let d = wire::icmp_error(c.client, c.server, err, &reply);
                (d, "from the client about the server's reply".to_string())
            }
            2 => {
                let other = self.any_client(v6);
                let target = self.protected_addr(Some(v6)).unwrap_or(c.server);
                (
                    wire::icmp_error(other, target, err, &reply),
                    format!("forged: {other} -> {target} quoting the server's reply"),
                )
            }
            3 => {
                let original = wire::datagram(c.client, c.server, &c.forward(0, flags::SYN));
                (
                    wire::icmp_error(c.client, c.server, err, &original),
                    "quoting the client's own packet (not a reply)".to_string(),
                )
            }
            _ => {
                let q = wire::quote_of(&reply);
                let cut = q[..q.len().min(if v6 { 42 } else { 22 })].to_vec();
                (
                    wire::icmp_error_quoting(c.client, c.server, err, cut),
                    "quote cut before the ports".to_string(),
                )
            }
        };
        self.packet(
            Direction::Outbound,
            &d.0,
            format!("icmp error {err:?} {} of {}", d.1, c.describe()),
        );
    }

    /// A datagram larger than the MTU, fragmented by the sender: outbound opening a flow or
    /// on an open one, inbound as a reply; sometimes later fragments alone or first.
    fn fragments(&mut self) {
        let Some(mut c) = self.conv() else { return };
        if matches!(c.kind, Kind::Echo | Kind::Other(_)) {
            c = Conv {
                kind: Kind::Udp,
                sport: 53,
                ..c
            };
        }
        let inbound = self.rng.chance(30);
        let size = *self
            .rng
            .pick(&[1400usize, 2000, 3000, 5000])
            .unwrap_or(&2000);
        let (src, dst, l4) = if inbound {
            (
                c.server,
                c.client,
                c.backward(size, flags::ACK | flags::PSH),
            )
        } else {
            (c.client, c.server, c.forward(size, flags::ACK | flags::PSH))
        };
        let id = self.next_frag_id();
        let mtu = *self.rng.pick(&[1280usize, 1500, 576]).unwrap_or(&1280);
        let frags = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let h = V4 {
                    id: id as u16,
                    options: if self.rng.chance(20) {
                        [wire::opt::router_alert(), wire::opt::record_route(1)].concat()
                    } else {
                        Vec::new()
                    },
                    ..V4::new(s, d)
                };
                wire::fragment_v4(&wire::ipv4(&h, &l4), mtu)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext = match self.rng.below(4) {
                    0 => vec![Ext::DestOpts(vec![])],
                    1 => vec![Ext::HopByHop(vec![]), Ext::DestOpts(vec![])],
                    _ => vec![],
                };
                wire::fragment_v6(&wire::ipv6(s, d, &ext, &l4), mtu.max(1280), id)
            }
            _ => return,
        };
        let dir = if inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let n = frags.len();
        let mut order: Vec<usize> = (0..n).collect();
        let what = match self.rng.below(6) {
            0 => {
                order.remove(0);
                "later fragments without their first"
            }
            1 => {
                order.rotate_left(1);
                "later fragments before their first"
            }
            _ => "fragments in order",
        };
        for i in order {
            self.packet(
                dir,
                &frags[i],
                format!(
                    "{what}: fragment {}/{n} ({size} bytes, mtu {mtu}) {} {}",
                    i + 1,
                    if inbound { "back on" } else { "on" },
                    c.describe()
                ),
            );
        }
    }

    /// Sources that are no principal here, or lie about who they are.
    fn strangers(&mut self) {
        let Some(server) = self.protected_addr(None) else {
            return;
        };
        let v6 = server.is_ipv6();
        let port = *self.rng.pick(&[22u16, 80, 443, 5432]).unwrap_or(&22);
        let (src, dst, what) = match self.rng.below(5) {
            0 | 4 => (
                family(v6, UNKNOWN4.into(), UNKNOWN6.into()),
                server,
                "unknown source",
            ),
            1 => {
                let client = self.any_client(v6);
                (
                    server,
                    client,
                    "protected source sent outbound (spoofed reply)",
                )
            }
            2 => {
                let others = self.all_principal_addrs();
                let a = self.rng.pick(&others).copied().unwrap_or(family(
                    v6,
                    UNKNOWN4.into(),
                    UNKNOWN6.into(),
                ));
                let Some(dst) = self.protected_addr(Some(a.is_ipv6())) else {
                    return;
                };
                (
                    a,
                    dst,
                    "some principal's address (on a device: not its own)",
                )
            }
            _ => {
                let v4 = self.any_client(false);
                let dst = self.protected_addr(Some(true));
                match (v4, dst) {
                    (IpAddr::V4(a), Some(d)) => {
                        (wire::mapped(a), d, "IPv4-mapped principal address")
                    }
                    _ => (
                        family(v6, UNKNOWN4.into(), UNKNOWN6.into()),
                        server,
                        "unknown source",
                    ),
                }
            }
        };
        let l4 = L4::tcp(self.next_port(), port, flags::SYN);
        let d = wire::datagram(src, dst, &l4);
        self.packet(
            Direction::Outbound,
            &d,
            format!("{what}: {src} -> {dst}:{port}"),
        );
    }

    fn source_routed(&mut self) {
        let Some(c) = self.conv() else { return };
        let l4 = c.forward(0, flags::SYN);
        let (d, what) = match (c.client, c.server) {
            (IpAddr::V4(s), IpAddr::V4(dst)) => {
                let hop = Ipv4Addr::new(198, 18, 99, 1);
                let (o, w) = if self.rng.chance(50) {
                    (wire::opt::lsrr(&[hop]), "LSRR")
                } else {
                    (wire::opt::ssrr(&[hop]), "SSRR")
                };
                (
                    wire::ipv4(
                        &V4 {
                            options: o,
                            ..V4::new(s, dst)
                        },
                        &l4,
                    ),
                    w,
                )
            }
            (IpAddr::V6(s), IpAddr::V6(dst)) => {
                let left = self.rng.below(2) as u8;
                (
                    wire::ipv6(s, dst, &[Ext::srh(&[dst, ROUTER6], left)], &l4),
                    if left == 0 {
                        "routing header, segments left 0"
                    } else {
                        "routing header, segments left 1"
                    },
                )
            }
            _ => return,
        };
        let dir = if self.rng.chance(80) {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        self.packet(dir, &d, format!("source-routed ({what}) {}", c.describe()));
    }

    fn other_protocol(&mut self) {
        let Some(base) = self.choose_conv() else {
            return;
        };
        let p = *self
            .rng
            .pick(&[
                wire::proto::GRE,
                wire::proto::IPIP,
                wire::proto::ESP,
                wire::proto::SCTP,
            ])
            .unwrap_or(&47);
        let c = Conv {
            kind: Kind::Other(p),
            note: "other protocol",
            ..base
        };
        self.open(&c);
        self.convs.push(c);
    }

    fn malformed(&mut self) {
        let Some(c) = self.conv() else { return };
        let (src, dst, dir) = if self.rng.chance(75) {
            (c.client, c.server, Direction::Outbound)
        } else {
            (c.server, c.client, Direction::Inbound)
        };
        let catalog = wire::malformed(src, dst, c.cport, c.sport.max(1));
        if let Some(v) = self.rng.pick(&catalog).cloned() {
            self.raw_frame(
                dir,
                v.frame,
                format!("catalog: {} ({src} -> {dst})", v.label),
            );
        }
    }

    /// IPv6 neighbour discovery between a protected host and a client: a neighbour
    /// advertisement with hop limit 255 (on-link) or fewer (crossed a router), either way.
    fn neighbor_discovery(&mut self) {
        let Some(IpAddr::V6(server)) = self.protected_addr(Some(true)) else {
            return;
        };
        let client = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x2);
        let ty = *self.rng.pick(&[133u8, 134, 135, 136, 137]).unwrap_or(&136);
        let hop = if self.rng.chance(70) { 255 } else { 64 };
        let mut body = vec![ty, 0, 0, 0, 0x60, 0, 0, 0];
        body.extend_from_slice(&server.octets());
        let (src, dst, dir) = if self.rng.chance(50) {
            (server, client, Direction::Inbound)
        } else {
            (client, server, Direction::Outbound)
        };
        let mut d = wire::ipv6(src, dst, &[], &L4::other(wire::proto::ICMPV6, body));
        d[7] = hop;
        self.packet(
            dir,
            &d,
            format!("neighbour discovery type {ty} hop limit {hop} {src} -> {dst}"),
        );
    }

    /// An echo request from the server matching an echo flow's identifier: never a reply.
    fn echo_request_inbound(&mut self) {
        let echoes: Vec<Conv> = self
            .convs
            .iter()
            .filter(|c| c.kind == Kind::Echo)
            .cloned()
            .collect();
        let Some(c) = self.rng.pick(&echoes).cloned() else {
            return;
        };
        let l4 = L4::echo_request(c.v6(), c.cport, 9);
        let d = wire::datagram(c.server, c.client, &l4);
        self.packet(
            Direction::Inbound,
            &d,
            format!("echo request back with the identifier of {}", c.describe()),
        );
    }

    fn unprotected(&mut self) {
        let v6 = self.rng.chance(40);
        let client = self.any_client(v6);
        let internet: IpAddr = family(v6, INTERNET4.into(), INTERNET6.into());
        let port = self.next_port();
        match self.rng.below(5) {
            4 => {
                let (ethertype, what) = *self
                    .rng
                    .pick(&[
                        (0x0806u16, "ARP"),
                        (0x88cc, "LLDP"),
                        (0x8863, "PPPoE discovery"),
                    ])
                    .unwrap_or(&(0x0806, "ARP"));
                let dir = if self.rng.chance(50) {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                let vlans = if self.rng.chance(30) {
                    vec![Vlan::q(100)]
                } else {
                    vec![]
                };
                let frame = wire::ether_type(ethertype, &[0u8; 28], &vlans);
                self.raw_frame(dir, frame, format!("not IP: {what}"));
            }
            0 => {
                let d = wire::datagram(client, internet, &L4::tcp(port, 443, flags::SYN));
                self.packet(Direction::Outbound, &d, format!("{client} -> internet"));
            }
            1 => {
                let d = wire::datagram(internet, client, &L4::udp(53, port, vec![0; 30]));
                self.packet(Direction::Inbound, &d, format!("internet -> {client}"));
            }
            2 => {
                let Some(server) = self.protected_addr(Some(v6)) else {
                    return;
                };
                let d = wire::datagram(server, client, &L4::tcp(22, port, flags::SYN));
                self.packet(
                    Direction::Inbound,
                    &d,
                    format!("unsolicited from protected {server} -> {client}"),
                );
            }
            _ => {
                let Some(server) = self.protected_addr(Some(v6)) else {
                    return;
                };
                let d = wire::datagram(client, server, &L4::tcp(port, 22, flags::SYN));
                self.packet(
                    Direction::Inbound,
                    &d,
                    format!("client packet on the inbound hook {client} -> {server}"),
                );
            }
        }
    }

    fn advance(&mut self) {
        let s = *self.rng.pick(&[1i64, 10, 30, 45, 60, 120]).unwrap_or(&30);
        self.now += s;
        self.steps.push(Step::Advance { seconds: s });
    }

    /// A policy swap: a grant removed or added, or a resource's ports changed.
    fn swap(&mut self) {
        for _ in 0..10 {
            let Some(text) = self.mutated() else {
                continue;
            };
            if let Ok(p) = parse(&text, "scenario.toml", self.now) {
                self.protected = protected_of(&p.policy, &self.role);
                self.policy = p.policy;
                self.text = text.clone();
                self.steps.push(Step::Swap { policy_text: text });
                return;
            }
        }
    }

    fn mutated(&mut self) -> Option<String> {
        let blocks: Vec<String> = self
            .text
            .split("\n\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| b.trim().to_string())
            .collect();
        let grants: Vec<usize> = (0..blocks.len())
            .filter(|&i| blocks[i].starts_with("[[allow]]") || blocks[i].starts_with("[[deny]]"))
            .collect();
        let resources: Vec<usize> = (0..blocks.len())
            .filter(|&i| blocks[i].starts_with("[[resource]]"))
            .collect();
        let mut blocks = blocks;
        match self.rng.below(3) {
            0 if !grants.is_empty() => {
                let i = *self.rng.pick(&grants)?;
                blocks.remove(i);
            }
            1 if !resources.is_empty() => {
                let i = *self.rng.pick(&resources)?;
                let kept: Vec<&str> = blocks[i]
                    .lines()
                    .filter(|l| {
                        !l.starts_with("tcp =")
                            && !l.starts_with("udp =")
                            && !l.starts_with("icmp =")
                    })
                    .collect();
                let mut b = kept.join("\n");
                let items = ["22", "80", "443", "5432", "53", "8000-8100", "1-1024"];
                let t = *self.rng.pick(&items)?;
                let u = *self.rng.pick(&items)?;
                match self.rng.below(4) {
                    0 => {
                        let _ = write!(b, "\ntcp = [\"{t}\"]");
                    }
                    1 => {
                        let _ = write!(b, "\nudp = [\"{u}\"]\nicmp = true");
                    }
                    2 => {
                        let _ = write!(b, "\ntcp = \"all\"\nudp = [\"{u}\"]");
                    }
                    _ => {
                        let _ = write!(b, "\ntcp = [\"{t}\", \"{u}\"]\nicmp = true");
                    }
                }
                blocks[i] = b;
            }
            _ => {
                let mut refs: Vec<String> =
                    self.policy.users.iter().map(|u| u.email.clone()).collect();
                refs.extend(
                    self.policy
                        .service_accounts
                        .iter()
                        .map(|s| format!("service_account:{}", s.name)),
                );
                refs.extend(
                    self.policy
                        .groups
                        .iter()
                        .map(|g| format!("group:{}", g.name)),
                );
                let who = self.rng.pick(&refs)?.clone();
                let res = self.rng.pick(&self.policy.resources)?.name.clone();
                self.swaps += 1;
                let kind = if self.rng.chance(25) { "deny" } else { "allow" };
                let mut b = format!(
                    "[[{kind}]]\nname = \"swap-{}\"\nprincipals = [\"{who}\"]\nresources = [\"{res}\"]",
                    self.swaps
                );
                if self.rng.chance(30) {
                    let _ = write!(
                        b,
                        "\nexpires_at = \"{}\"",
                        format_rfc3339(self.now + 20 + self.rng.below(120) as i64)
                    );
                }
                blocks.push(b);
            }
        }
        let mut text = blocks.join("\n\n");
        text.push('\n');
        Some(text)
    }
}

/// A port of `ranges` (never 0): a range's first or last port, or one inside it.
fn port_in(rng: &mut Prng, ranges: &[(u16, u16)]) -> u16 {
    let Some(&(a, b)) = rng.pick(ranges) else {
        return 80;
    };
    let (a, b) = (a.max(1), b.max(1));
    match rng.below(3) {
        0 => a,
        1 => b,
        _ => a + (rng.next() % (u64::from(b - a) + 1)) as u16,
    }
}

/// Whether a policy has an audit-mode resource (for tests of the generator).
pub fn has_audit(p: &Policy) -> bool {
    p.resources.iter().any(|r| r.mode == Mode::Audit)
}
