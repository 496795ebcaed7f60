//! Host settings that can deliver a packet somewhere other than where the gateway decided.
//!
//! The data plane decides on a packet's outer destination at the hooks of the enforcing
//! interfaces. Some kernel settings make the host deliver a packet elsewhere afterwards
//! (source routing, segment routing), and a tunnel that terminates on the host hands out
//! decapsulated packets on its own interface, where the gateway's hooks never run. This
//! module checks those settings for the network namespace of the calling thread and says
//! what it found, why it matters and how to fix it.
//!
//! A sans-IO core, [`assess`], turns what was observed ([`Observed`]) into a [`Report`]; the
//! IO shell, [`gather`], reads `/proc/sys/net` (whose entries belong to the network
//! namespace of the thread that opens them) and dumps the links over rtnetlink.
//!
//! How the kernel combines the `all` and per-interface values (the reason some non-zero
//! values are not findings):
//!
//! * `net.ipv4.conf.*.accept_source_route`: in effect on an interface only when both `all`
//!   and the interface's value are non-zero (`IN_DEV_ANDCONF`). The kernel's own default is
//!   `all = 0`, `default = 1` (so every interface has 1): harmless until `all` is set.
//! * `net.ipv6.conf.*.seg6_enabled`: the smaller of `all` and the receiving interface's.
//! * `net.ipv6.conf.all.accept_source_route`: above 0, type 0 routing headers are accepted
//!   (0 accepts only type 2, for Mobile IPv6; below 0 none).
//! * `rp_filter`: the larger of `all` and the interface's; reported, not judged.

use super::config::Config;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// A sysctl this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sysctl {
    Ipv4AcceptSourceRoute,
    Ipv6Seg6Enabled,
    Ipv6AcceptSourceRoute,
    RpFilter,
}

impl Sysctl {
    /// The `check` label of a finding (and of `gateway_host_risk`).
    pub const fn check(self) -> &'static str {
        match self {
            Self::Ipv4AcceptSourceRoute => "ipv4_accept_source_route",
            Self::Ipv6Seg6Enabled => "ipv6_seg6_enabled",
            Self::Ipv6AcceptSourceRoute => "ipv6_accept_source_route",
            Self::RpFilter => "rp_filter",
        }
    }

    const fn family(self) -> &'static str {
        match self {
            Self::Ipv4AcceptSourceRoute | Self::RpFilter => "ipv4",
            Self::Ipv6Seg6Enabled | Self::Ipv6AcceptSourceRoute => "ipv6",
        }
    }

    const fn leaf(self) -> &'static str {
        match self {
            Self::Ipv4AcceptSourceRoute | Self::Ipv6AcceptSourceRoute => "accept_source_route",
            Self::Ipv6Seg6Enabled => "seg6_enabled",
            Self::RpFilter => "rp_filter",
        }
    }

    /// The file under `/proc/sys` for `scope` (`all`, `default` or an interface).
    pub fn path(self, scope: &str) -> String {
        format!(
            "/proc/sys/net/{}/conf/{scope}/{}",
            self.family(),
            self.leaf()
        )
    }

    /// The name `sysctl` takes (a dot in an interface name is written `/`).
    pub fn name(self, scope: &str) -> String {
        format!(
            "net.{}.conf.{}.{}",
            self.family(),
            scope.replace('.', "/"),
            self.leaf()
        )
    }
}

/// Link kinds (`ip -d link` "kind") that decapsulate: what arrives through them appears on
/// their own interface. The brief list plus the IPv6 and IPsec variants of the same idea.
pub const TUNNEL_KINDS: &[&str] = &[
    "vxlan",
    "geneve",
    "gre",
    "gretap",
    "ip6gre",
    "ip6gretap",
    "ipip",
    "sit",
    "ip6tnl",
    "erspan",
    "ip6erspan",
    "wireguard",
    "l2tp",
    "bareudp",
    "fou",
    "vti",
    "vti6",
    "xfrm",
];

/// One interface as rtnetlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// `IFLA_INFO_KIND`, when the link has one (physical interfaces have none).
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`). A tunnel that is down decapsulates nothing.
    pub up: bool,
    /// The interface index (in this network namespace).
    pub index: u32,
    /// The XDP programs attached to it (`IFLA_XDP`), by mode.
    pub xdp: Vec<XdpProgram>,
}

/// An XDP program attached to an interface, as rtnetlink reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    /// `native` (driver), `generic` (skb) or `offload` (hardware).
    pub mode: &'static str,
    pub id: u32,
}

/// The XDP programs of one `IFLA_XDP` attribute: one mode with `IFLA_XDP_PROG_ID`, or
/// several (`XDP_ATTACHED_MULTI`) with an id per mode.
fn xdp_programs(attrs: &[netlink_packet_route::link::LinkXdp]) -> Vec<XdpProgram> {
    use netlink_packet_route::link::{LinkXdp, XdpAttached};
    let mut single = None;
    let mut out = Vec::new();
    let mut attached = None;
    for a in attrs {
        match a {
            LinkXdp::Attached(m) => attached = Some(*m),
            LinkXdp::ProgId(id) => single = Some(*id),
            LinkXdp::DrvProgId(id) => out.push(XdpProgram {
                mode: "native",
                id: *id,
            }),
            LinkXdp::SkbProgId(id) => out.push(XdpProgram {
                mode: "generic",
                id: *id,
            }),
            LinkXdp::HwProgId(id) => out.push(XdpProgram {
                mode: "offload",
                id: *id,
            }),
            _ => {}
        }
    }
    if out.is_empty()
        && let Some(id) = single
    {
        let mode = match attached {
            Some(XdpAttached::Driver) => "native",
            Some(XdpAttached::SocketBuffer) => "generic",
            Some(XdpAttached::Hardware) => "offload",
            _ => "unknown",
        };
        out.push(XdpProgram { mode, id });
    }
    out.retain(|p| p.id != 0);
    out
}

/// What the IO shell saw: every sysctl it tried (value or why it could not be read), and
/// the links (or why they could not be listed).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The interfaces the gateway's programs are attached to (configured), deduplicated.
    pub enforcing: Vec<String>,
    pub sysctls: Vec<(Sysctl, String, Result<i64, String>)>,
    pub links: Option<Result<Vec<Link>, String>>,
}

impl Observed {
    fn value(&self, s: Sysctl, scope: &str) -> Option<i64> {
        self.sysctls
            .iter()
            .find(|(k, sc, _)| *k == s && sc == scope)
            .and_then(|(_, _, v)| v.as_ref().ok().copied())
    }
}

/// A setting that lets a packet go where the gateway did not decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `ipv4_accept_source_route`, `ipv6_seg6_enabled`, `ipv6_accept_source_route`, `tunnel`.
    pub check: &'static str,
    /// `all`, `default` or an interface name.
    pub iface: String,
    /// The sysctl name, or `link <name> (<kind>)`.
    pub setting: String,
    pub value: String,
    pub why: String,
    pub fix: String,
}

/// An observation worth showing that is not judged a risk (rp_filter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub check: &'static str,
    pub iface: String,
    /// The value in effect, and its name (`off`, `strict`, `loose`).
    pub value: i64,
    pub word: &'static str,
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Settings read (each sysctl, and the link list as one).
    pub checks: usize,
    pub findings: Vec<Finding>,
    pub notes: Vec<Note>,
    /// What could not be checked, and why.
    pub errors: Vec<String>,
}

/// The sysctls to read for these enforcing interfaces.
pub fn plan(enforcing: &[String]) -> Vec<(Sysctl, String)> {
    let mut out = Vec::new();
    let scopes = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .map(|s| s.to_string())
            .chain(enforcing.iter().cloned())
            .collect()
    };
    for scope in scopes(&["all", "default"]) {
        out.push((Sysctl::Ipv4AcceptSourceRoute, scope));
    }
    for scope in scopes(&["all", "default"]) {
        out.push((Sysctl::Ipv6Seg6Enabled, scope));
    }
    out.push((Sysctl::Ipv6AcceptSourceRoute, "all".to_string()));
    for scope in scopes(&["all"]) {
        out.push((Sysctl::RpFilter, scope));
    }
    out
}

fn scope_text(scope: &str) -> String {
    match scope {
        "all" => "every interface whose own value is not 0".to_string(),
        "default" => "interfaces created from now on".to_string(),
        iface => format!("interface {iface}"),
    }
}

/// A setting in effect only when `all` and the interface's own value are both on: when
/// `all` is on, one finding for `all` and one per interface (and `default`) that is on.
fn scoped_findings(obs: &Observed, r: &mut Report, s: Sysctl, why: impl Fn(&str) -> String) {
    let Some(all) = obs.value(s, "all").filter(|v| *v != 0) else {
        return;
    };
    let scopes = ["all".to_string(), "default".to_string()]
        .into_iter()
        .chain(obs.enforcing.iter().cloned());
    for scope in scopes {
        let v = if scope == "all" {
            Some(all)
        } else {
            obs.value(s, &scope)
        };
        if let Some(v) = v.filter(|v| *v != 0) {
            let text = why(&scope_text(&scope));
            r.findings.push(sysctl_finding(s, &scope, v, text));
        }
    }
}

fn sysctl_finding(s: Sysctl, scope: &str, value: i64, why: String) -> Finding {
    Finding {
        check: s.check(),
        iface: scope.to_string(),
        setting: s.name(scope),
        value: value.to_string(),
        why,
        fix: format!(
            "sysctl -w {}=0 (and the same in /etc/sysctl.d/ to keep it)",
            s.name(scope)
        ),
    }
}

/// The findings for what was observed. Pure: the rules of the module comment, nothing else.
pub fn assess(obs: &Observed) -> Report {
    let mut r = Report::default();
    for (s, scope, v) in &obs.sysctls {
        match v {
            Ok(_) => r.checks += 1,
            Err(e) => r
                .errors
                .push(format!("could not check {}: {e}", s.name(scope))),
        }
    }

    // IPv4 source routing: `all` AND the receiving interface.
    scoped_findings(obs, &mut r, Sysctl::Ipv4AcceptSourceRoute, |scope| {
        format!(
            "IPv4 source-routed packets (LSRR/SSRR options) are accepted on {scope}: the kernel \
             sends such a packet on to an address listed in its options, not to the \
             destination the gateway decided on"
        )
    });
    // SRv6: the smaller of `all` and the receiving interface.
    scoped_findings(obs, &mut r, Sysctl::Ipv6Seg6Enabled, |scope| {
        format!(
            "IPv6 segment routing is on for {scope}: a packet with a segment routing header \
             addressed to this host is forwarded to its next segment, an address the gateway \
             never decided on"
        )
    });

    let s = Sysctl::Ipv6AcceptSourceRoute;
    if let Some(v) = obs.value(s, "all").filter(|v| *v > 0) {
        r.findings.push(sysctl_finding(
            s,
            "all",
            v,
            "IPv6 type 0 routing headers are accepted (accept_source_route > 0): the kernel \
             forwards such a packet to the next address of its header, not to the destination \
             the gateway decided on"
                .to_string(),
        ));
    }

    // Reverse-path filtering: reported, the larger of `all` and the interface is in effect.
    let all_rp = obs.value(Sysctl::RpFilter, "all");
    for iface in &obs.enforcing {
        let Some(v) = obs.value(Sysctl::RpFilter, iface) else {
            continue;
        };
        let effective = all_rp.map_or(v, |a| a.max(v));
        let (word, meaning) = match effective {
            0 => (
                "off",
                "packets whose source address does not route back through this interface are \
                 accepted",
            ),
            1 => (
                "strict",
                "a packet is accepted only when its source routes back through this interface",
            ),
            2 => (
                "loose",
                "a packet is accepted when its source is reachable through any interface",
            ),
            _ => ("unknown", "not a value the kernel documents"),
        };
        r.notes.push(Note {
            check: Sysctl::RpFilter.check(),
            iface: iface.clone(),
            value: effective,
            word,
            text: format!(
                "rp_filter on {iface}: {effective} in effect ({word}: {meaning}; {iface} {v}, \
                 all {})",
                all_rp.map_or("?".to_string(), |a| a.to_string())
            ),
        });
    }

    // Tunnels that are up and are not themselves enforcing interfaces.
    match &obs.links {
        None => {}
        Some(Err(e)) => r.errors.push(format!("could not check tunnels: {e}")),
        Some(Ok(links)) => {
            r.checks += 1;
            let enforcing = obs.enforcing.join(", ");
            for l in links {
                let Some(kind) = l.kind.as_deref() else {
                    continue;
                };
                if !l.up || !TUNNEL_KINDS.contains(&kind) || obs.enforcing.contains(&l.name) {
                    continue;
                }
                r.findings.push(Finding {
                    check: "tunnel",
                    iface: l.name.clone(),
                    setting: format!("link {} ({kind})", l.name),
                    value: "up".to_string(),
                    why: format!(
                        "tunnel interface {name} ({kind}) terminates on this host: packets \
                         decapsulated from it arrive on {name}, which carries none of the \
                         gateway's hooks (they are on {enforcing}), so the gateway decides \
                         nothing about them",
                        name = l.name
                    ),
                    fix: format!(
                        "remove it if it is not needed (ip link del {name}), or enforce on it \
                         too (add {name} to xdp_interfaces and tc_egress_interfaces)",
                        name = l.name
                    ),
                });
            }
        }
    }
    r
}

impl Report {
    /// One line per finding: what, why it matters, how to fix it.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .findings
            .iter()
            .map(|f| {
                if f.check == "tunnel" {
                    format!("{}; fix: {}", f.why, f.fix)
                } else {
                    format!(
                        "host setting {} = {}: {}; fix: {}",
                        f.setting, f.value, f.why, f.fix
                    )
                }
            })
            .collect();
        out.extend(self.errors.iter().cloned());
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "checks": self.checks,
            "findings": self.findings.iter().map(|f| json!({
                "check": f.check,
                "iface": f.iface,
                "setting": f.setting,
                "value": f.value,
                "why": f.why,
                "fix": f.fix,
            })).collect::<Vec<_>>(),
            "info": self.notes.iter().map(|n| json!({
                "check": n.check,
                "iface": n.iface,
                "value": n.value,
                "meaning": n.word,
                "text": n.text,
            })).collect::<Vec<_>>(),
            "errors": self.errors,
        })
    }

    /// `(check, iface)` of every finding, for `gateway_host_risk`.
    pub fn risks(&self) -> Vec<(String, String)> {
        self.findings
            .iter()
            .map(|f| (f.check.to_string(), f.iface.clone()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// IO: this thread's network namespace.

/// The configured enforcing interfaces, each once.
pub fn enforcing(cfg: &Config) -> Vec<String> {
    let mut seen = BTreeSet::new();
    cfg.xdp_interfaces
        .iter()
        .chain(cfg.tc_egress_interfaces.iter())
        // The agent's own tunnel interface carries the tunnel programs.
        .chain(cfg.tunnel.iter().map(|t| &t.interface))
        .filter(|i| seen.insert(i.as_str()))
        .cloned()
        .collect()
}

fn read_sysctl(s: Sysctl, scope: &str) -> Result<i64, String> {
    let path = s.path(scope);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if scope != "all" && scope != "default" => {
            format!("{path} does not exist (no interface {scope} here, or its family is off)")
        }
        _ => format!("reading {path}: {e}"),
    })?;
    text.trim()
        .parse()
        .map_err(|e| format!("{path} holds {:?}: {e}", text.trim()))
}

/// Every link of this thread's network namespace, over rtnetlink (`RTM_GETLINK` dump).
pub fn links() -> Result<Vec<Link>, String> {
    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    };
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    let mut socket =
        Socket::new(NETLINK_ROUTE).map_err(|e| format!("opening a netlink socket: {e}"))?;
    socket
        .bind_auto()
        .map_err(|e| format!("binding the netlink socket: {e}"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| format!("connecting the netlink socket: {e}"))?;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .map_err(|e| format!("sending RTM_GETLINK: {e}"))?;

    let mut out = Vec::new();
    // Dump parts are at most 32 KiB each; room for more.
    let mut rx = vec![0u8; 1 << 17];
    loop {
        let n = socket
            .recv(&mut &mut rx[..], 0)
            .map_err(|e| format!("reading the link dump: {e}"))?;
        let mut at = 0;
        while at < n {
            let msg: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&rx[at..n])
                .map_err(|e| format!("decoding the link dump: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(format!("the kernel refused the link dump: {e}"));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    let mut l = Link {
                        name: String::new(),
                        kind: None,
                        up: link.header.flags.contains(LinkFlags::Up),
                        index: link.header.index,
                        xdp: Vec::new(),
                    };
                    for a in link.attributes {
                        match a {
                            LinkAttribute::IfName(name) => l.name = name,
                            LinkAttribute::Xdp(x) => l.xdp = xdp_programs(&x),
                            LinkAttribute::LinkInfo(infos) => {
                                for i in infos {
                                    if let LinkInfo::Kind(k) = i {
                                        l.kind = Some(k.to_string());
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    out.push(l);
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// The XDP attach mode of each interface with an XDP program (`native`, `generic`,
/// `offload`, `multi`), from the link dump's `IFLA_XDP`; empty when the dump fails.
pub fn xdp_modes() -> std::collections::BTreeMap<String, &'static str> {
    links()
        .map(|ls| {
            ls.into_iter()
                .filter_map(|l| {
                    // More than one program (several modes at once) reads as "multi".
                    let mode = match l.xdp.as_slice() {
                        [] => return None,
                        [one] => one.mode,
                        _ => "multi",
                    };
                    Some((l.name, mode))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads everything [`assess`] needs, in the calling thread's network namespace.
pub fn gather(enforcing: &[String]) -> Observed {
    let sysctls = plan(enforcing)
        .into_iter()
        .map(|(s, scope)| {
            let v = read_sysctl(s, &scope);
            (s, scope, v)
        })
        .collect();
    Observed {
        enforcing: enforcing.to_vec(),
        sysctls,
        links: Some(links()),
    }
}

/// Gathers and assesses the settings of `cfg`'s interfaces, here.
pub fn check(cfg: &Config) -> Report {
    assess(&gather(&enforcing(cfg)))
}

/// At start: one warning line per finding on stderr, a summary line, and the metrics.
pub fn at_start(cfg: &Config, metrics: &super::metrics::Shared) {
    let report = check(cfg);
    for w in report.warnings() {
        tracing::warn!("{w}");
    }
    let notes: Vec<String> = report
        .notes
        .iter()
        .map(|n| format!("{} {} ({})", n.iface, n.value, n.word))
        .collect();
    tracing::info!(
        "host checks: {} performed, {} risk{}{}",
        report.checks,
        report.findings.len(),
        if report.findings.len() == 1 { "" } else { "s" },
        if notes.is_empty() {
            String::new()
        } else {
            format!("; rp_filter in effect: {}", notes.join(", "))
        }
    );
    if let Ok(mut m) = metrics.lock() {
        m.host_checks = report.checks as u64;
        m.host_risks = report.risks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(enforcing: &[&str], values: &[(Sysctl, &str, i64)], links: Vec<Link>) -> Observed {
        let enforcing: Vec<String> = enforcing.iter().map(|s| s.to_string()).collect();
        // Kernel defaults for everything planned, then the given values.
        let mut sysctls: Vec<(Sysctl, String, Result<i64, String>)> = plan(&enforcing)
            .into_iter()
            .map(|(s, scope)| {
                let v = match (s, scope.as_str()) {
                    (Sysctl::Ipv4AcceptSourceRoute, "all") => 0,
                    (Sysctl::Ipv4AcceptSourceRoute, _) => 1,
                    _ => 0,
                };
                (s, scope, Ok(v))
            })
            .collect();
        for (s, scope, v) in values {
            match sysctls.iter_mut().find(|(k, sc, _)| k == s && sc == scope) {
                Some(e) => e.2 = Ok(*v),
                None => sysctls.push((*s, scope.to_string(), Ok(*v))),
            }
        }
        Observed {
            enforcing,
            sysctls,
            links: Some(Ok(links)),
        }
    }

    fn link(name: &str, kind: Option<&str>, up: bool) -> Link {
        Link {
            name: name.into(),
            kind: kind.map(Into::into),
            up,
            index: 0,
            xdp: Vec::new(),
        }
    }

    fn keys(r: &Report) -> Vec<(&str, &str)> {
        r.findings
            .iter()
            .map(|f| (f.check, f.iface.as_str()))
            .collect()
    }

    #[test]
    fn kernel_defaults_are_no_finding() {
        let r = assess(&observed(
            &["eth1"],
            &[],
            vec![
                link("lo", None, true),
                link("eth1", None, true),
                link("veth0", Some("veth"), true),
                // Fallback tunnels the modules create in every namespace, down.
                link("gre0", Some("gre"), false),
                link("erspan0", Some("erspan"), false),
            ],
        ));
        assert_eq!(r.findings, vec![], "{r:#?}");
        assert!(r.errors.is_empty());
        // 3 + 3 + 1 + 2 sysctls, and the link list.
        assert_eq!(r.checks, 10);
        assert_eq!(r.notes.len(), 1);
        assert!(
            r.notes[0].text.starts_with("rp_filter on eth1: 0"),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn ipv4_source_route_counts_where_all_and_the_interface_agree() {
        use Sysctl::Ipv4AcceptSourceRoute as S;
        let r = assess(&observed(
            &["eth1", "eth2"],
            &[(S, "all", 1), (S, "eth2", 0)],
            vec![],
        ));
        assert_eq!(
            keys(&r),
            vec![
                ("ipv4_accept_source_route", "all"),
                ("ipv4_accept_source_route", "default"),
                ("ipv4_accept_source_route", "eth1"),
            ]
        );
        let f = &r.findings[2];
        assert_eq!(f.setting, "net.ipv4.conf.eth1.accept_source_route");
        assert!(
            f.fix
                .starts_with("sysctl -w net.ipv4.conf.eth1.accept_source_route=0")
        );
        assert!(f.why.contains("interface eth1"), "{}", f.why);
        // `all` off: the interface values (1 by kernel default) are not in effect.
        let r = assess(&observed(
            &["eth1"],
            &[(S, "eth1", 1), (S, "default", 1)],
            vec![],
        ));
        assert_eq!(keys(&r), vec![]);
    }

    #[test]
    fn seg6_and_ipv6_source_route() {
        let r = assess(&observed(
            &["eth1.100"],
            &[
                (Sysctl::Ipv6Seg6Enabled, "all", 1),
                (Sysctl::Ipv6Seg6Enabled, "eth1.100", 1),
                (Sysctl::Ipv6AcceptSourceRoute, "all", 1),
            ],
            vec![],
        ));
        assert_eq!(
            keys(&r),
            vec![
                ("ipv6_seg6_enabled", "all"),
                ("ipv6_seg6_enabled", "eth1.100"),
                ("ipv6_accept_source_route", "all"),
            ]
        );
        // A VLAN interface's dot is a slash in sysctl's names.
        assert_eq!(r.findings[1].setting, "net.ipv6.conf.eth1/100.seg6_enabled");
        // The interface alone does not accept SRv6; -1 (no routing header at all) is fine.
        let r = assess(&observed(
            &["eth1"],
            &[
                (Sysctl::Ipv6Seg6Enabled, "eth1", 1),
                (Sysctl::Ipv6AcceptSourceRoute, "all", -1),
            ],
            vec![],
        ));
        assert_eq!(keys(&r), vec![]);
    }

    #[test]
    fn tunnels_up_and_not_enforcing_are_findings() {
        let r = assess(&observed(
            &["eth1", "wg0"],
            &[],
            vec![
                link("vx42", Some("vxlan"), true),
                link("gre1", Some("gre"), true),
                link("gre2", Some("gre"), false),
                link("wg0", Some("wireguard"), true),
                link("br0", Some("bridge"), true),
            ],
        ));
        assert_eq!(keys(&r), vec![("tunnel", "vx42"), ("tunnel", "gre1")]);
        let w = r.warnings();
        assert_eq!(w.len(), 2);
        assert!(
            w[0].starts_with("tunnel interface vx42 (vxlan) terminates on this host"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("(they are on eth1, wg0)"), "{}", w[0]);
        assert!(w[0].contains("ip link del vx42"), "{}", w[0]);
        assert_eq!(
            r.risks(),
            vec![
                ("tunnel".to_string(), "vx42".to_string()),
                ("tunnel".to_string(), "gre1".to_string())
            ]
        );
    }

    #[test]
    fn what_cannot_be_read_is_said_not_guessed() {
        let mut obs = observed(&["eth1"], &[], vec![]);
        obs.links = Some(Err("netlink: permission denied".into()));
        for e in obs.sysctls.iter_mut() {
            if e.0 == Sysctl::Ipv6Seg6Enabled {
                e.2 = Err("no IPv6".into());
            }
        }
        let r = assess(&obs);
        assert_eq!(r.findings, vec![]);
        assert_eq!(r.checks, 6);
        assert!(
            r.errors
                .contains(&"could not check tunnels: netlink: permission denied".to_string())
        );
        assert!(
            r.errors
                .contains(&"could not check net.ipv6.conf.all.seg6_enabled: no IPv6".to_string())
        );
        assert!(
            r.warnings()
                .iter()
                .any(|w| w.contains("could not check tunnels"))
        );
        let j = r.to_json();
        assert_eq!(j["findings"], json!([]));
        assert_eq!(j["errors"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn rp_filter_in_effect_is_the_larger() {
        let r = assess(&observed(
            &["eth1"],
            &[(Sysctl::RpFilter, "all", 2), (Sysctl::RpFilter, "eth1", 1)],
            vec![],
        ));
        assert_eq!(r.notes[0].value, 2);
        assert_eq!(r.notes[0].word, "loose");
        assert!(
            r.notes[0].text.ends_with("; eth1 1, all 2)"),
            "{}",
            r.notes[0].text
        );
        assert!(r.findings.is_empty());
    }
}
