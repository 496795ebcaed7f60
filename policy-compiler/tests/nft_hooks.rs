//! Which netfilter hooks the generated rulesets use.

use policy_compiler::{Host, nft, parse};

const TEXT: &str = include_str!("data/company.toml");
const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

#[test]
fn connector_rulesets_filter_forwarded_and_local_traffic() {
    let p = parse(TEXT, "company.toml", NOW).expect("parse").policy;
    let s = nft(&p, &Host::Connector("dc-connector-1".into()), NOW).expect("nft");
    // One base chain per hook, both sending protected destinations to the same chain.
    for (chain, hook) in [("filter", "forward"), ("filter_input", "input")] {
        let head = format!(
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n\t\tip daddr @protected_v4 jump protected\n\t\tip6 daddr @protected_v6 jump protected\n\t}}\n"
        );
        assert!(s.contains(&head), "{chain}/{hook} missing:\n{s}");
    }
    assert_eq!(s.matches("type filter hook").count(), 2);
    assert!(s.ends_with("\t}\n}\n"));
}

#[test]
fn device_rulesets_filter_what_the_device_sends() {
    let p = parse(TEXT, "company.toml", NOW).expect("parse").policy;
    let s = nft(&p, &Host::Device("alice-laptop".into()), NOW).expect("nft");
    assert!(s.contains("type filter hook output priority filter; policy accept;"));
    assert_eq!(s.matches("type filter hook").count(), 1);
}
