//! Wire conversions: snapshots round-trip exactly, and a snapshot followed by deltas
//! ends at exactly the entries (and metadata) of a fresh compile.

use std::collections::BTreeSet;

use gateway_proto::{apply_delta, delta_is_empty, delta_to_wire, view_from_wire, view_to_wire};
use policy_compiler::random::{Rng, gen_policy};
use policy_compiler::{Host, HostView, Policy, compile, parse, to_kernel};
use prost::Message as _;

const NOW: i64 = 1_900_000_000;

fn hosts(p: &Policy) -> BTreeSet<Host> {
    Host::all(p).into_iter().collect()
}

/// `n` valid random policies (the generator sometimes makes invalid ones).
fn random_policies(seed: u64, n: usize) -> Vec<Policy> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for _ in 0..n * 10 {
        if out.len() == n {
            break;
        }
        if let Ok(p) = parse(&gen_policy(&mut rng, NOW), "r.toml", NOW) {
            out.push(p.policy);
        }
    }
    assert_eq!(out.len(), n);
    out
}

fn view(p: &Policy, h: &Host, now: i64) -> HostView {
    compile(p, h, now).unwrap_or_else(|_| gateway_proto::empty_view(h, now))
}

fn demo() -> Policy {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/demo.toml"
    ))
    .expect("examples/demo.toml");
    parse(&text, "demo.toml", NOW)
        .expect("demo policy parses")
        .policy
}

#[test]
fn snapshot_round_trip_demo() {
    let p = demo();
    for h in hosts(&p) {
        let v = view(&p, &h, NOW);
        let w = view_to_wire(&v);
        // Through the encoding too.
        let w2 = gateway_proto::v1::HostView::decode(w.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(w, w2);
        assert_eq!(view_from_wire(&w2).expect("valid"), v, "{h:?}");
    }
}

#[test]
fn snapshot_round_trip_random() {
    for p in random_policies(7, 60) {
        for h in hosts(&p) {
            let v = view(&p, &h, NOW);
            assert_eq!(view_from_wire(&view_to_wire(&v)).expect("valid"), v);
        }
    }
}

#[test]
fn snapshot_plus_deltas_equals_fresh_compile() {
    let policies = random_policies(11, 40);
    let all: BTreeSet<Host> = policies.iter().flat_map(hosts).collect();
    let (mut nonempty, mut peer_deltas) = (0, 0);
    for h in &all {
        // The agent starts from a snapshot of the first policy, then follows deltas.
        let first = view(&policies[0], h, NOW);
        let mut agent = view_from_wire(&view_to_wire(&first)).expect("valid");
        let mut prev = first;
        for (i, p) in policies.iter().enumerate().skip(1) {
            let now = NOW + i as i64;
            let next = view(p, h, now);
            let d = delta_to_wire(&prev, &next);
            if !delta_is_empty(&d) {
                nonempty += 1;
            }
            if !d.peers_upserted.is_empty() || !d.peers_removed.is_empty() {
                peer_deltas += 1;
            }
            // Through the encoding, as the agent receives it.
            let d =
                gateway_proto::v1::ViewDelta::decode(d.encode_to_vec().as_slice()).expect("decode");
            apply_delta(&mut agent, &d).expect("delta applies");
            assert_eq!(
                to_kernel(&agent, 1, |t| t as u64),
                to_kernel(&next, 1, |t| t as u64),
                "{h:?} after policy {i}"
            );
            assert!(gateway_proto::same_meta(&agent, &next));
            assert_eq!(
                (&agent.sources, &agent.atoms, &agent.rules),
                (&next.sources, &next.atoms, &next.rules)
            );
            // Exactly the new view (`compiled_at` travels with the metadata only).
            let mut exact = agent.clone();
            exact.compiled_at = next.compiled_at;
            assert_eq!(exact, next, "{h:?} after policy {i}");
            prev = next;
        }
    }
    assert!(nonempty > 20, "deltas exercised: {nonempty}");
    assert!(peer_deltas > 10, "peer deltas exercised: {peer_deltas}");
}

#[test]
fn rotated_key_is_one_removal_and_one_addition() {
    let p = random_policies(3, 80)
        .into_iter()
        .find(|p| {
            hosts(p)
                .iter()
                .any(|h| matches!(h, Host::Connector(_)) && !view(p, h, NOW).peers.is_empty())
        })
        .expect("a connector with peers");
    let h = hosts(&p)
        .into_iter()
        .find(|h| matches!(h, Host::Connector(_)) && !view(&p, h, NOW).peers.is_empty())
        .unwrap();
    let old = view(&p, &h, NOW);
    let mut new = old.clone();
    let rotated = policy_compiler::WgKey([0xab; 32]);
    let was = new.peers[0].public_key;
    new.peers[0].public_key = rotated;
    new.peers.sort_by_key(|x| x.public_key);
    let d = delta_to_wire(&old, &new);
    assert_eq!(d.peers_removed, vec![was.to_string()]);
    assert_eq!(d.peers_upserted.len(), 1);
    assert_eq!(d.peers_upserted[0].public_key, rotated.to_string());
    let mut agent = old.clone();
    apply_delta(&mut agent, &d).expect("applies");
    assert_eq!(agent, new);
    // A malformed key in a delta is refused and changes nothing.
    let mut bad = d.clone();
    bad.peers_removed = vec!["AAAA".into()];
    let mut agent = old.clone();
    assert!(apply_delta(&mut agent, &bad).is_err());
    assert_eq!(agent, old);
}

#[test]
fn unchanged_view_gives_empty_delta() {
    let p = demo();
    for h in hosts(&p) {
        let a = view(&p, &h, NOW);
        let b = view(&p, &h, NOW + 5);
        assert!(delta_is_empty(&delta_to_wire(&a, &b)));
    }
}

#[test]
fn hosts_parse() {
    for h in [
        Host::Connector("c".into()),
        Host::Device("alice-laptop".into()),
    ] {
        assert_eq!(
            gateway_proto::parse_host(&gateway_proto::host_name(&h)),
            Ok(h)
        );
    }
    assert!(gateway_proto::parse_host("laptop").is_err());
    assert!(gateway_proto::parse_host("device:").is_err());
}

#[test]
fn plaintext_only_to_loopback() {
    use gateway_proto::{plaintext_allowed, url_host};
    assert_eq!(url_host("http://127.0.0.1:50051"), Some("127.0.0.1"));
    assert_eq!(url_host("https://[::1]:1/"), Some("::1"));
    assert_eq!(url_host("http://ctl.example"), Some("ctl.example"));
    for ok in [
        "http://127.0.0.1:50051",
        "http://127.9.9.9:1",
        "http://[::1]:50051",
        "http://localhost:50051",
    ] {
        assert!(plaintext_allowed(ok), "{ok}");
    }
    for bad in [
        "http://10.0.0.5:50051",
        "http://[2001:db8::1]:1",
        "http://ctl.example:50051",
        "http://127.0.0.1.evil.example:1",
        "http://localhost.evil.example:1",
        "http://evil.example@127.0.0.1x:1",
        "127.0.0.1:50051",
    ] {
        assert!(!plaintext_allowed(bad), "{bad}");
    }
}

#[test]
fn name_atoms_travel_in_snapshots_and_deltas() {
    let base = r#"[[remote_network]]
name = "corp"
cidrs = ["198.18.0.0/16"]
connectors = ["conn-1"]

[[resource]]
name = "server"
network = "corp"
address = "198.18.2.10"
tcp = ["8080"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
address = "198.19.0.10"

[[allow]]
name = "alice-server"
principals = ["alice@example.com"]
resources = ["server"]
"#;
    let named = format!(
        "{base}
[[resource]]
name = \"app\"
network = \"corp\"
address = \"app.corp.test\"
tcp = [\"8080\"]

[[resource]]
name = \"wild\"
network = \"corp\"
address = \"*.wild.test\"
tcp = [\"443\"]
mode = \"audit\"

[[allow]]
name = \"alice-app\"
principals = [\"alice@example.com\"]
resources = [\"app\"]
"
    );
    let parse = |t: &str| policy_compiler::parse(t, "n.toml", NOW).unwrap().policy;
    for h in [
        Host::Device("alice-laptop".into()),
        Host::Connector("conn-1".into()),
    ] {
        let without = view(&parse(base), &h, NOW);
        let with = view(&parse(&named), &h, NOW + 1);
        assert!(without.names.is_empty());
        assert_eq!(
            with.names
                .iter()
                .map(|n| n.pattern.as_str())
                .collect::<Vec<_>>(),
            ["*.wild.test", "app.corp.test"],
            "{h:?}"
        );
        assert_eq!(
            with.names[0].default_verdict,
            policy_compiler::Verdict::Audit
        );
        assert_eq!(
            view_from_wire(&view_to_wire(&with)).expect("valid"),
            with,
            "{h:?}"
        );
        // A delta adds them (they are metadata), and removes them again.
        let mut agent = view_from_wire(&view_to_wire(&without)).expect("valid");
        let d = delta_to_wire(&without, &with);
        assert!(!delta_is_empty(&d));
        apply_delta(&mut agent, &d).expect("applies");
        assert_eq!(agent.names, with.names, "{h:?}");
        assert_eq!(agent.atom_meta, with.atom_meta);
        let d = delta_to_wire(&with, &without);
        apply_delta(&mut agent, &d).expect("applies");
        assert!(agent.names.is_empty());
    }
    // A pattern that is no pattern does not decode.
    let v = view(&parse(&named), &Host::Connector("conn-1".into()), NOW);
    let mut w = view_to_wire(&v);
    w.meta.as_mut().unwrap().names[0].pattern = "a..b".into();
    assert!(view_from_wire(&w).is_err());
}
