//! `gateway-agent maps dump` on real pinned maps: the data plane is loaded with its maps
//! pinned in a fresh bpffs folder, given the topology policy through the real compiler and
//! writer, and fed a few packets with BPF_PROG_TEST_RUN; the dump must then name what those
//! packets did (a flow's 5-tuple, the principal's address, the verdict counters), and refuse
//! a map name it does not know.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_common::maps;
use gateway_test_support::{
    netns::unique_name,
    skip_unless_privileged,
    testkit::{self, L4, action, frame, load_policy, unix_now},
};
use gateway_user::Dataplane;
use serde_json::Value;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const POLICY: &str = include_str!("data/topology.toml");
const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");

/// A temp folder (agent.toml) and a bpffs pin folder, removed at the end.
struct Dirs {
    tmp: PathBuf,
    pin: PathBuf,
}

impl Dirs {
    fn new(prefix: &str) -> Dirs {
        let name = unique_name(prefix);
        let d = Dirs {
            tmp: std::env::temp_dir().join(&name),
            pin: PathBuf::from("/sys/fs/bpf").join(&name),
        };
        std::fs::create_dir_all(&d.tmp).unwrap();
        std::fs::write(
            d.config(),
            format!(
                "role = \"connector\"\nname = \"conn\"\npolicy_file = \"{}\"\n\
                 pin_dir = \"{}\"\nxdp_interfaces = [\"lo\"]\n",
                d.tmp.join("policy.toml").display(),
                d.pin.display()
            ),
        )
        .unwrap();
        d
    }

    fn config(&self) -> PathBuf {
        self.tmp.join("agent.toml")
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
        // Unlinking the pins frees the maps once the test's data plane is gone.
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

fn agent(cfg: &Path, args: &[&str]) -> Output {
    Command::new(AGENT)
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "gateway-agent failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// `--output json`: one object per map and line, by map name.
fn dump_json(cfg: &Path, extra: &[&str]) -> std::collections::BTreeMap<String, Value> {
    let mut args = vec!["maps", "dump", "--output", "json"];
    args.extend_from_slice(extra);
    stdout(&agent(cfg, &args))
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["map"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn entries<'a>(dump: &'a std::collections::BTreeMap<String, Value>, map: &str) -> &'a [Value] {
    dump[map]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{map}: {}", dump[map]))
}

fn counter(dump: &std::collections::BTreeMap<String, Value>, map: &str, name: &str) -> u64 {
    entries(dump, map)
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no counter {name} in {map}"))["value"]
        .as_u64()
        .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn maps_dump_decodes_pinned_state() {
    if skip_unless_privileged!() {
        return;
    }
    let dirs = Dirs::new("zgwdump");
    let map_dir = dirs.pin.join("maps");
    std::fs::create_dir_all(&map_dir).unwrap();
    let mut dp = Dataplane::load_pinned(&map_dir).unwrap();
    load_policy(&mut dp, POLICY, "connector:conn", unix_now()).unwrap();

    // XDP on a connector's client-facing link decides client -> resource packets.
    let alice = ip("198.19.1.10");
    let packets = [
        // Allowed (eng-web): opens a TCP flow.
        (
            frame(
                alice,
                ip("198.18.1.5"),
                L4::Tcp {
                    src: 40000,
                    dst: 443,
                },
                &[],
                b"",
            ),
            action::PASS,
        ),
        // Allowed (alice-dns): opens a UDP flow.
        (
            frame(
                alice,
                ip("198.18.1.53"),
                L4::Udp { src: 5353, dst: 53 },
                &[],
                b"q",
            ),
            action::PASS,
        ),
        // No grant for port 23: denied, counted, and the source is remembered.
        (
            frame(
                alice,
                ip("198.18.1.5"),
                L4::Tcp {
                    src: 40001,
                    dst: 23,
                },
                &[],
                b"",
            ),
            action::DROP,
        ),
    ];
    for (f, expected) in &packets {
        assert_eq!(testkit::run_xdp(dp.xdp().unwrap(), f).unwrap(), *expected);
    }

    let dump = dump_json(&dirs.config(), &[]);
    assert_eq!(
        dump.keys().collect::<std::collections::BTreeSet<_>>(),
        maps::PERSISTENT
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect(),
        "one object per persistent map"
    );

    // CONFIG: the role, never the hash key (testkit writes the public default key).
    let cfg = &entries(&dump, maps::CONFIG)[0];
    assert_eq!(cfg["role"], "connector");
    assert_eq!(cfg["hash_key"], "unset");
    let active = &entries(&dump, maps::ACTIVE)[0];
    let slot = active["slot"].as_u64().unwrap();
    assert_eq!(active["generation"].as_u64().unwrap() & 1, slot);

    // SRC: alice's address, in the active slot.
    let src = entries(&dump, maps::SRC);
    assert!(
        src.iter()
            .any(|e| e["addr"] == "198.19.1.10" && e["active"] == true && e["slot"] == slot),
        "{src:#?}"
    );
    assert!(
        src.iter().any(|e| e["addr"] == "2001:db8:a2::11"),
        "{src:#?}"
    );

    // DST_HOSTS and RULES_EXACT: web's /32 and its port 443 grant; the tries keep the
    // shorter prefixes (the network's /16) and hold no full host or single port.
    let hosts = entries(&dump, maps::DST_HOSTS);
    assert!(
        hosts.iter().any(|e| e["prefix"] == "198.18.1.5/32"),
        "{hosts:#?}"
    );
    let dst = entries(&dump, maps::DST);
    assert!(
        dst.iter().any(|e| e["prefix"] == "198.18.0.0/16"),
        "{dst:#?}"
    );
    assert!(
        !dst.iter().any(|e| e["prefix"] == "198.18.1.5/32"),
        "{dst:#?}"
    );
    let exact = entries(&dump, maps::RULES_EXACT);
    assert!(
        exact
            .iter()
            .any(|e| e["protocol"] == "tcp" && e["ports"] == "443-443" && e["verdict"] == "allow"),
        "{exact:#?}"
    );
    let rules = entries(&dump, maps::RULES);
    assert!(!rules.iter().any(|e| e["ports"] == "443-443"), "{rules:#?}");

    // The flows the packets opened, by 5-tuple.
    let tcp = entries(&dump, maps::FLOWS_TCP);
    assert_eq!(dump[maps::FLOWS_TCP]["count"], 1, "{tcp:#?}");
    let f = &tcp[0];
    assert_eq!(f["flow"], "198.19.1.10:40000 -> 198.18.1.5:443 tcp");
    assert_eq!(
        (&f["src"], &f["src_port"], &f["dst"], &f["dst_port"]),
        (
            &Value::from("198.19.1.10"),
            &Value::from(40000),
            &Value::from("198.18.1.5"),
            &Value::from(443)
        )
    );
    assert_eq!(f["packets"], 1);
    assert_eq!(f["reason"], "allowed");
    assert_eq!(f["flags"], serde_json::json!([]));
    let other = entries(&dump, maps::FLOWS_OTHER);
    assert!(
        other
            .iter()
            .any(|e| e["flow"] == "198.19.1.10:5353 -> 198.18.1.53:53 udp"),
        "{other:#?}"
    );

    // The verdict and parse counters of exactly these packets (fresh maps).
    assert_eq!(counter(&dump, maps::VERDICT_STATS, "allowed"), 2);
    assert_eq!(counter(&dump, maps::VERDICT_STATS, "denied_no_grant"), 1);
    assert_eq!(counter(&dump, maps::PARSE_STATS, "ipv4_tcp"), 2);
    assert_eq!(counter(&dump, maps::PARSE_STATS, "ipv4_udp"), 1);
    assert_eq!(counter(&dump, maps::FLOW_STATS, "insert_tcp"), 1);
    assert_eq!(counter(&dump, maps::FLOW_STATS, "insert_other"), 1);
    assert_eq!(counter(&dump, maps::EVENTS_LOST, "flow"), 0);
    let sources = entries(&dump, maps::SOURCES);
    assert!(
        sources
            .iter()
            .any(|e| e["prefix"] == "198.19.1.10/32" && e["deny_events"] == 1),
        "{sources:#?}"
    );
    assert_eq!(
        dump[maps::EVENTS_FLOW]["size_bytes"],
        maps::EVENTS_FLOW_BYTES
    );

    // --limit caps entries and says how many it left out; --map selects by any spelling.
    let small = dump_json(&dirs.config(), &["--map", "src", "--limit", "1"]);
    assert_eq!(small.len(), 1);
    let s = &small[maps::SRC];
    assert_eq!(s["shown"], 1);
    assert_eq!(
        s["omitted"].as_u64().unwrap(),
        s["count"].as_u64().unwrap() - 1
    );
    assert!(s["count"].as_u64().unwrap() >= 3, "{s}");

    // The text form: a header per map, one line per entry (all of it shown with
    // --nocapture).
    println!(
        "{}",
        stdout(&agent(&dirs.config(), &["maps", "dump", "--limit", "4"]))
    );
    let text = stdout(&agent(
        &dirs.config(),
        &[
            "maps",
            "dump",
            "--map",
            "FLOWS_TCP",
            "--map",
            "verdicts",
            "--map",
            "SRC_V1",
        ],
    ));
    assert!(
        text.contains("== FLOWS_TCP_V2 (lru_hash): 1 entry, capacity 262144\n"),
        "{text}"
    );
    assert!(
        text.contains("\n  198.19.1.10:40000 -> 198.18.1.5:443 tcp  allowed  pkts 1/0"),
        "{text}"
    );
    assert!(text.contains("\n  allowed                  2\n"), "{text}");
    assert!(
        text.contains("\n  198.19.1.10      slot 1 (active)"),
        "{text}"
    );

    // An unknown map name fails and lists the valid ones.
    let bad = agent(&dirs.config(), &["maps", "dump", "--map", "FLOWZ"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("no map named \"FLOWZ\""), "{err}");
    for m in maps::PERSISTENT {
        assert!(err.contains(m), "{m} not listed in: {err}");
    }

    // `status` still reads the same pins, and now carries the host checks.
    let st: Value = serde_json::from_str(&stdout(&agent(
        &dirs.config(),
        &["status", "--output", "json"],
    )))
    .unwrap();
    assert_eq!(st["verdicts"]["allowed"], 2, "{st}");
    assert_eq!(st["flows"]["tcp"], 1, "{st}");
    assert!(st["host_checks"]["checks"].as_u64().unwrap() > 0, "{st}");
    drop(dp);
}

#[test]
fn nothing_pinned_is_said_plainly() {
    // No BPF needed: the pin folder does not exist.
    let dirs = Dirs::new("zgwnopin");
    let out = agent(&dirs.config(), &["maps", "dump"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "nothing pinned at {}: the agent has not attached on this host",
            dirs.pin.display()
        )),
        "{err}"
    );
}
