//! WireGuard keys and peers: the policy grammar (`public_key`, `[[connector]]`, each error
//! located), least knowledge of the peers the compiler gives each host, and an oracle test
//! that asks the reference evaluator which principals could send anything through which
//! connector, for random policies.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use policy_compiler::random::{Rng, gen_policy, test_key};
use policy_compiler::*;

const NOW: i64 = 1_767_225_600;

fn key(n: usize) -> String {
    test_key(9, n).to_string()
}

/// Two networks, one connector each (`dc-2` is listed second in `dc` and has no
/// declaration), devices of alice (ssh on the bastion), bob (denied), carol (web in the
/// lab, expiring) and a CI key.
fn base(extra: &str) -> String {
    format!(
        r#"
[[remote_network]]
name = "dc"
cidrs = ["10.1.0.0/16", "fd00:1::/48"]
connectors = ["dc-2", "dc-1"]

[[remote_network]]
name = "lab"
cidrs = ["10.2.0.0/16"]
connectors = ["lab-1"]

[[resource]]
name = "bastion"
network = "dc"
address = "10.1.0.10"
tcp = [22]

[[resource]]
name = "web"
network = "lab"
address = "10.2.0.0/24"
tcp = [443]

[[user]]
email = "alice@x.test"

[[user]]
email = "bob@x.test"

[[user]]
email = "carol@x.test"

[[device]]
name = "alice-laptop"
owner = "alice@x.test"
addresses = ["100.64.0.1", "fd00:ff::1"]
public_key = "{k1}"

[[device]]
name = "bob-laptop"
owner = "bob@x.test"
address = "100.64.0.2"
public_key = "{k2}"

[[device]]
name = "carol-laptop"
owner = "carol@x.test"
address = "100.64.0.3"
public_key = "{k3}"

[[device]]
name = "keyless"
owner = "alice@x.test"
address = "100.64.0.9"

[[service_account]]
name = "ci"
keys = [{{ name = "old", address = "100.64.1.1", public_key = "{k4}", expires_at = 2025-01-01T00:00:00Z }},
        {{ name = "new", address = "100.64.1.2", public_key = "{k5}" }}]

[[connector]]
name = "dc-1"
public_key = "{k6}"
endpoint = "203.0.113.1:51820"

[[connector]]
name = "lab-1"
public_key = "{k7}"
endpoint = "lab.example.net:51820"

[[allow]]
name = "ssh"
principals = ["alice@x.test", "ci"]
resources = ["bastion"]

[[deny]]
name = "no-bob"
principals = ["bob@x.test"]
resources = ["bastion", "web"]

[[allow]]
name = "bob-web"
principals = ["bob@x.test"]
resources = ["web"]

[[allow]]
name = "carol-web"
principals = ["carol@x.test"]
resources = ["web"]
expires_at = 2026-01-02T00:00:00Z
{extra}
"#,
        k1 = key(1),
        k2 = key(2),
        k3 = key(3),
        k4 = key(4),
        k5 = key(5),
        k6 = key(6),
        k7 = key(7),
    )
}

fn policy(text: &str) -> Policy {
    match parse(text, "peers.toml", NOW) {
        Ok(p) => p.policy,
        Err(d) => panic!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn names(v: &HostView) -> Vec<String> {
    let mut n: Vec<String> = v.peers.iter().map(|p| p.name.clone()).collect();
    n.sort();
    n
}

fn conn(p: &Policy, c: &str, now: i64) -> HostView {
    compile(p, &Host::Connector(c.into()), now).unwrap()
}

fn dev(p: &Policy, d: &str, now: i64) -> HostView {
    compile(p, &Host::Device(d.into()), now).unwrap()
}

// ------------------------------------------------------------------ grammar

fn errors(text: &str) -> Vec<String> {
    match parse(text, "peers.toml", NOW) {
        Ok(_) => panic!("must not parse:\n{text}"),
        Err(d) => d
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                assert!(d.help.is_some(), "{d}");
                d.short()
            })
            .collect(),
    }
}

/// The base policy with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    let b = base("");
    assert!(b.contains(from), "{from}");
    b.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn keys_and_connectors_parse() {
    let p = policy(&base(""));
    assert_eq!(p.devices[0].public_key, Some(test_key(9, 1)));
    assert_eq!(p.devices[3].public_key, None);
    assert_eq!(
        p.service_accounts[0].keys[1].public_key,
        Some(test_key(9, 5))
    );
    assert_eq!(p.connectors.len(), 2);
    let c = p.connector("dc-1").unwrap();
    assert_eq!(c.public_key, test_key(9, 6));
    assert_eq!(c.endpoint, "203.0.113.1:51820");
    assert_eq!(c.line as usize, line_of(&base(""), "name = \"dc-1\"") - 1);
    // The key survives a text round trip.
    assert_eq!(key(6).parse::<WgKey>().unwrap(), test_key(9, 6));
}

#[test]
fn key_errors_are_located() {
    let k1 = key(1);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            edited(&k1, "not-base64!"),
            "not-base64!",
            "invalid public_key of device `alice-laptop`: `not-base64!` is not standard base64",
        ),
        (
            edited(&k1, "AAAA"),
            "\"AAAA\"",
            "invalid public_key of device `alice-laptop`: `AAAA` decodes to 3 bytes, a WireGuard key has 32",
        ),
        (
            edited(&k1, &WgKey([0; 32]).to_string()),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "invalid public_key of device `alice-laptop`: the all-zero key is no public key",
        ),
        (
            edited(&key(7), &key(1)),
            "name = \"lab-1\"",
            "public_key of connector `lab-1` is already used by device `alice-laptop`",
        ),
        (
            edited(&key(5), &key(2)),
            "name = \"new\"",
            "public_key of service-account key `ci/new` is already used by device `bob-laptop`",
        ),
    ];
    for (text, needle, msg) in cases {
        // The connector's key is on the line after its name.
        let line = line_of(&text, needle) + usize::from(needle.starts_with("name = \"lab"));
        let got = errors(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(&format!("{line}:")) && got[0].ends_with(msg),
            "{got:?} vs {line}: {msg}"
        );
    }
}

#[test]
fn connector_errors_are_located() {
    let block = |name: &str, k: &str, endpoint: &str| {
        format!(
            "\n[[connector]]\nname = \"{name}\"\npublic_key = \"{k}\"\nendpoint = \"{endpoint}\"\n"
        )
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            block("nowhere", &key(20), "192.0.2.1:51820"),
            "\"nowhere\"",
            "unknown connector `nowhere`: no [[remote_network]] lists it",
        ),
        (
            block("dc-1", &key(20), "192.0.2.1:51820"),
            "name = \"dc-1\"",
            "duplicate [[connector]] `dc-1`",
        ),
        (
            block("dc-2", &key(20), "192.0.2.1"),
            "\"192.0.2.1\"",
            "invalid endpoint `192.0.2.1`: the port is missing",
        ),
        (
            block("dc-2", &key(20), "192.0.2.1:70000"),
            "192.0.2.1:70000",
            "invalid endpoint `192.0.2.1:70000`: port 70000 is outside 1-65535",
        ),
        (
            block("dc-2", &key(20), "2001:db8::1:51820"),
            "2001:db8::1:51820",
            "invalid endpoint `2001:db8::1:51820`: an IPv6 address is written in brackets: `[2001:db8::7]:51820`",
        ),
        (
            block("dc-2", &key(20), "bad_host:51820"),
            "bad_host",
            "invalid endpoint `bad_host:51820`: `bad_host` is not a DNS name",
        ),
        (
            block("dc-2", &key(20), "[fd00:1::7]:51820"),
            "[fd00:1::7]:51820",
            "invalid endpoint `[fd00:1::7]:51820`: the address is inside remote network `dc`, \
             which is reached only through the tunnel; give the address devices reach the \
             connector at from outside",
        ),
        (
            "\n[[connector]]\nname = \"dc-2\"\nendpoint = \"192.0.2.1:1\"\n".to_string(),
            "[[connector]]\nname = \"dc-2\"",
            "missing key `public_key` in [[connector]]",
        ),
    ];
    for (extra, needle, msg) in cases {
        let text = base(&extra);
        // The last occurrence: the added block.
        let at = text.rfind(needle).unwrap();
        let line = text[..at].matches('\n').count() + 1;
        let got = errors(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(&format!("{line}:")) && got[0].ends_with(msg),
            "{got:?} vs {line}: {msg}"
        );
    }
}

#[test]
fn policies_without_keys_compile_as_before() {
    let text = include_str!("../../examples/company.toml");
    let p = parse(text, "company.toml", NOW).unwrap().policy;
    assert!(p.connectors.is_empty());
    for n in &p.networks {
        for c in &n.connectors {
            let v = conn(&p, c, NOW);
            assert!(v.peers.is_empty() && v.tunnel_addresses.is_empty());
        }
    }
    for d in &p.devices {
        let v = dev(&p, &d.name, NOW);
        assert!(v.peers.is_empty());
        assert_eq!(v.tunnel_addresses, d.addresses);
    }
}

// ------------------------------------------------------------------ least knowledge

#[test]
fn connector_learns_exactly_the_principals_that_may_reach_it() {
    let p = policy(&base(""));
    // dc: alice (ssh) and ci/new; not bob (deny-only there), not carol (lab only), not
    // the keyless device, not the expired ci/old, no connector.
    let dc = conn(&p, "dc-1", NOW);
    assert_eq!(names(&dc), ["alice-laptop", "ci/new"]);
    let alice = dc.peers.iter().find(|x| x.name == "alice-laptop").unwrap();
    assert_eq!(alice.kind, PeerKind::Device);
    assert_eq!(alice.endpoint, None);
    assert_eq!(
        alice.allowed_ips,
        [
            "100.64.0.1/32".parse::<IpNet>().unwrap(),
            "fd00:ff::1/128".parse().unwrap()
        ]
    );
    let keys: Vec<WgKey> = dc.peers.iter().map(|x| x.public_key).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted by key");
    // dc-2 is listed first but undeclared: it still learns its principals (it enforces
    // for `dc`), the devices just do not tunnel to it.
    assert_eq!(names(&conn(&p, "dc-2", NOW)), ["alice-laptop", "ci/new"]);
    // lab: carol (until her grant expires); bob's allow on web loses to his deny.
    let lab = conn(&p, "lab-1", NOW);
    assert_eq!(names(&lab), ["carol-laptop"]);
    assert_eq!(lab.peers[0].kind, PeerKind::Device);
}

#[test]
fn device_learns_only_connectors_of_networks_it_can_reach() {
    let p = policy(&base(""));
    let alice = dev(&p, "alice-laptop", NOW);
    assert_eq!(alice.peers.len(), 1);
    let c = &alice.peers[0];
    assert_eq!(
        (c.name.as_str(), c.kind, c.endpoint.as_deref()),
        ("dc-1", PeerKind::Connector, Some("203.0.113.1:51820"))
    );
    assert_eq!(
        c.allowed_ips,
        [
            "10.1.0.0/16".parse::<IpNet>().unwrap(),
            "fd00:1::/48".parse().unwrap()
        ]
    );
    assert_eq!(alice.tunnel_addresses, p.devices[0].addresses);
    // Deny-only: no peers at all.
    assert!(dev(&p, "bob-laptop", NOW).peers.is_empty());
    let carol = dev(&p, "carol-laptop", NOW);
    assert_eq!(names(&carol), ["lab-1"]);
    assert_eq!(
        carol.peers[0].allowed_ips,
        ["10.2.0.0/16".parse::<IpNet>().unwrap()]
    );
    // A device with no key still gets its peers (the controller may supply its key).
    assert_eq!(names(&dev(&p, "keyless", NOW)), ["dc-1"]);
}

#[test]
fn audit_resources_let_every_active_principal_through() {
    let p = policy(&base(
        "[[resource]]\nname = \"probe\"\nnetwork = \"lab\"\naddress = \"10.2.9.9\"\nicmp = true\nmode = \"audit\"\n",
    ));
    // Everyone with a key and no enforcing deny covering 10.2.9.9 may send there.
    assert_eq!(
        names(&conn(&p, "lab-1", NOW)),
        ["alice-laptop", "bob-laptop", "carol-laptop", "ci/new"]
    );
    assert_eq!(names(&dev(&p, "bob-laptop", NOW)), ["lab-1"]);
}

#[test]
fn revoked_or_expired_access_removes_the_peer() {
    let text = base("");
    let p = policy(&text);
    // Carol's grant expires: the lab connector must be recompiled then, and then has no
    // peer; carol's device loses its connector.
    let expiry = parse_rfc3339("2026-01-02T00:00:00Z").unwrap();
    let lab = conn(&p, "lab-1", NOW);
    assert!(
        lab.recompile_at.is_some_and(|r| r <= expiry),
        "{:?}",
        lab.recompile_at
    );
    assert!(conn(&p, "lab-1", expiry).peers.is_empty());
    let carol = dev(&p, "carol-laptop", NOW);
    assert!(carol.recompile_at.is_some_and(|r| r <= expiry));
    assert!(dev(&p, "carol-laptop", expiry).peers.is_empty());
    // Removing alice's grant removes her from the connector (ci stays).
    let p = policy(&text.replace(
        "principals = [\"alice@x.test\", \"ci\"]",
        "principals = [\"ci\"]",
    ));
    assert_eq!(names(&conn(&p, "dc-1", NOW)), ["ci/new"]);
    assert!(dev(&p, "alice-laptop", NOW).peers.is_empty());
    // A key expiring later: a peer until then, and `recompile_at` says when.
    let later = NOW + 3600;
    let p = policy(&text.replace(
        &format!("{{ name = \"new\", address = \"100.64.1.2\", public_key = \"{}\" }}", key(5)),
        &format!(
            "{{ name = \"new\", address = \"100.64.1.2\", public_key = \"{}\", expires_at = \"{}\" }}",
            key(5),
            format_rfc3339(later)
        ),
    ));
    let dc = conn(&p, "dc-1", NOW);
    assert_eq!(names(&dc), ["alice-laptop", "ci/new"]);
    assert!(dc.recompile_at.is_some_and(|r| r <= later));
    assert_eq!(names(&conn(&p, "dc-1", later)), ["alice-laptop"]);
}

#[test]
fn diff_counts_peers() {
    let text = base("");
    let a = conn(&policy(&text), "dc-1", NOW);
    let b = conn(
        &policy(&text.replace(
            "principals = [\"alice@x.test\", \"ci\"]",
            "principals = [\"alice@x.test\"]",
        )),
        "dc-1",
        NOW,
    );
    let d = diff(&a, &b);
    assert_eq!(
        (
            d.peers.added.len(),
            d.peers.changed.len(),
            d.peers.removed.len()
        ),
        (0, 0, 1)
    );
    assert_eq!(d.peers.removed[0].1.name, "ci/new");
    assert!(diff(&a, &a).is_empty());
}

// ------------------------------------------------------------------ oracle

/// One peer as the oracle sees it: (name, kind, key, endpoint, allowed ips).
type P = (String, &'static str, WgKey, Option<String>, Vec<IpNet>);

fn first_last(n: &IpNet) -> (IpAddr, Option<IpAddr>) {
    match n {
        IpNet::V4(n) => (
            IpAddr::V4(n.network()),
            u32::from(n.broadcast())
                .checked_add(1)
                .map(|x| IpAddr::V4(x.into())),
        ),
        IpNet::V6(n) => (
            IpAddr::V6(n.network()),
            u128::from(n.broadcast())
                .checked_add(1)
                .map(|x| IpAddr::V6(x.into())),
        ),
    }
}

/// Every destination at which what the evaluator decides can change (starts of the
/// regions covered by the same resources and cidrs), inside `space`.
fn destinations(p: &Policy, space: &[IpNet]) -> Vec<IpAddr> {
    let mut cuts = BTreeSet::new();
    let all = p
        .resources
        .iter()
        .filter_map(|r| r.address.net())
        .chain(p.networks.iter().flat_map(|n| n.cidrs.iter().copied()));
    for n in all {
        let (a, b) = first_last(&n);
        cuts.insert(a);
        cuts.extend(b);
    }
    cuts.into_iter()
        .filter(|a| space.iter().any(|c| c.contains(a)))
        .collect()
}

/// Every port at which what the evaluator decides can change, per protocol.
fn ports(p: &Policy, tcp: bool) -> Vec<u16> {
    let pick = |s: &ProtoSet| if tcp { s.tcp.clone() } else { s.udp.clone() };
    let mut cuts = BTreeSet::from([0u16]);
    let sets = p.resources.iter().map(|r| pick(&r.ports)).chain(
        p.grants
            .iter()
            .filter_map(|g| g.narrowing.as_ref().map(pick)),
    );
    for s in sets {
        for &(a, b) in s.ranges() {
            cuts.insert(a);
            cuts.extend(b.checked_add(1));
        }
    }
    cuts.into_iter().collect()
}

/// Whether some TCP, UDP or ICMP packet from `src` to a destination in `space` passes at `t`.
fn can_pass(p: &Policy, src: IpAddr, space: &[IpNet], t: i64) -> bool {
    let (tcp, udp) = (ports(p, true), ports(p, false));
    destinations(p, space).into_iter().any(|dst| {
        let passes = |pkt: Packet| evaluate(p, &pkt, t).verdict != Verdict::Deny;
        passes(Packet::icmp(src, dst))
            || tcp.iter().any(|&port| passes(Packet::tcp(src, dst, port)))
            || udp.iter().any(|&port| passes(Packet::udp(src, dst, port)))
    })
}

/// Devices and service-account keys with a key, active at `t`: (name, kind, key, addresses).
fn keyed(p: &Policy, t: i64) -> Vec<(String, &'static str, WgKey, Vec<IpAddr>)> {
    let mut out = Vec::new();
    for d in &p.devices {
        if let Some(k) = d.public_key {
            out.push((d.name.clone(), "device", k, d.addresses.clone()));
        }
    }
    for sa in &p.service_accounts {
        for k in &sa.keys {
            if let Some(key) = k.public_key
                && k.expires_at.is_none_or(|e| t < e)
            {
                let name = format!("{}/{}", sa.name, k.name);
                out.push((name, "service_account_key", key, k.addresses.clone()));
            }
        }
    }
    out
}

fn expected(p: &Policy, host: &Host, t: i64) -> BTreeSet<P> {
    let mut out = BTreeSet::new();
    match host {
        Host::Connector(c) => {
            let space: Vec<IpNet> = p
                .networks
                .iter()
                .filter(|n| n.connectors.contains(c))
                .flat_map(|n| n.cidrs.iter().copied())
                .collect();
            for (name, kind, key, addrs) in keyed(p, t) {
                if can_pass(p, addrs[0], &space, t) {
                    let mut ips: Vec<IpNet> = addrs.iter().map(|a| IpNet::from(*a)).collect();
                    ips.sort();
                    out.insert((name, kind, key, None, ips));
                }
            }
        }
        Host::Device(d) => {
            let dev = p.devices.iter().find(|x| &x.name == d).unwrap();
            let mut by: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
            for n in &p.networks {
                if !can_pass(p, dev.addresses[0], &n.cidrs, t) {
                    continue;
                }
                let declared = n
                    .connectors
                    .iter()
                    .find(|c| p.connectors.iter().any(|x| &x.name == *c));
                if let Some(c) = declared {
                    by.entry(c.clone())
                        .or_default()
                        .extend(n.cidrs.iter().copied());
                }
            }
            for (c, cidrs) in by {
                let decl = p.connectors.iter().find(|x| x.name == c).unwrap();
                out.insert((
                    c,
                    "connector",
                    decl.public_key,
                    Some(decl.endpoint.clone()),
                    cidrs.into_iter().collect(),
                ));
            }
        }
    }
    out
}

fn got(v: &HostView) -> BTreeSet<P> {
    v.peers
        .iter()
        .map(|x| {
            (
                x.name.clone(),
                x.kind.as_str(),
                x.public_key,
                x.endpoint.clone(),
                x.allowed_ips.clone(),
            )
        })
        .collect()
}

#[test]
fn peers_match_the_reference_evaluator() {
    let mut rng = Rng(0x00be_e75e_ed00_0014);
    let (mut policies, mut peers, mut later_checks, mut changed) = (0usize, 0usize, 0usize, 0usize);
    let mut tries = 0;
    while policies < 250 {
        tries += 1;
        assert!(tries < 2000, "the generator makes invalid policies");
        let text = gen_policy(&mut rng, NOW);
        let Ok(parsed) = parse(&text, "random.toml", NOW) else {
            continue;
        };
        let p = parsed.policy;
        policies += 1;
        let hosts = Host::all(&p);
        // Times: now, and around every grant and key expiry.
        let mut times = vec![NOW];
        let expiries = p
            .grants
            .iter()
            .filter_map(|g| g.expires_at)
            .chain(p.principals.iter().filter_map(|x| x.expires_at));
        for e in expiries {
            times.extend([e - 1, e, e + 1]);
        }
        times.retain(|&t| t >= NOW);
        times.sort_unstable();
        times.dedup();
        for host in &hosts {
            let view = compile(&p, host, NOW).unwrap();
            let now_set = got(&view);
            assert_eq!(
                now_set,
                expected(&p, host, NOW),
                "{host:?} at {NOW}\n{text}"
            );
            peers += now_set.len();
            // Until `recompile_at` the view's peers stay right.
            for &t in &times {
                if t == NOW || view.recompile_at.is_some_and(|r| t >= r) {
                    continue;
                }
                later_checks += 1;
                assert_eq!(
                    now_set,
                    expected(&p, host, t),
                    "{host:?} at {t} (recompile_at {:?})\n{text}",
                    view.recompile_at
                );
            }
            if view.recompile_at.is_some()
                && got(&compile(&p, host, view.recompile_at.unwrap()).unwrap()) != now_set
            {
                changed += 1;
            }
        }
    }
    eprintln!(
        "{policies} policies, {peers} peers, {later_checks} later checks, {changed} views whose peers change at recompile_at"
    );
    assert!(peers > 200 && later_checks > 50 && changed > 5);
}

/// Overlapping networks behind different tunnel connectors: a located warning (a device
/// can route each address into one tunnel only); the same overlap behind one connector, or
/// disjoint networks, draw none.
#[test]
fn overlapping_networks_behind_different_connectors_are_a_warning() {
    let warnings = |text: &str| -> Vec<String> {
        parse(text, "peers.toml", NOW)
            .unwrap()
            .warnings
            .iter()
            .filter(|d| d.message.contains("overlap"))
            .map(|d| d.to_string())
            .collect()
    };
    assert!(warnings(&base("")).is_empty(), "disjoint networks");
    let text = edited(
        "cidrs = [\"10.2.0.0/16\"]",
        "cidrs = [\"10.2.0.0/16\", \"10.1.128.0/17\"]",
    );
    let w = warnings(&text);
    assert_eq!(w.len(), 1, "{w:?}");
    let line = line_of(&text, "name = \"lab-1\"");
    assert!(
        w[0].contains(&format!(":{line}:"))
            && w[0].contains(
                "remote networks `dc` (10.1.0.0/16) and `lab` (10.1.128.0/17) overlap but reach \
                 devices through different connectors (`dc-1`, `lab-1`)"
            ),
        "{w:?}"
    );
    // The same overlap behind one connector: no warning.
    let same = text.replace(
        "connectors = [\"lab-1\"]",
        "connectors = [\"dc-1\", \"lab-1\"]",
    );
    assert!(warnings(&same).is_empty(), "{:?}", warnings(&same));
}
