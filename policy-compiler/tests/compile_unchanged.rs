//! The compiled view does not change when the compiler is made faster: the JSON of the
//! `HostView` of random policies (every connector and device host, now and after the
//! first expiries) and of scaled policies (the benchmark's generator) hashes to the
//! values recorded with the compiler of issue 15's baseline. A deliberate change of the
//! compiled output re-records them: run with `PRINT_VIEW_HASHES=1 -- --nocapture`.

#![allow(clippy::unwrap_used)]

use policy_compiler::random::*;
use policy_compiler::*;
use sha2::{Digest, Sha256};

const NOW: i64 = 1_700_000_000;

fn view_json(policy: &Policy, host: &Host, now: i64) -> Vec<u8> {
    let view = compile(policy, host, now).unwrap();
    serde_json::to_vec(&view).unwrap()
}

fn hex(h: Sha256) -> String {
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

fn check(case: &str, got: String, want: &str) {
    if std::env::var("PRINT_VIEW_HASHES").is_ok() {
        println!("{case}: {got}");
        return;
    }
    assert_eq!(
        got, want,
        "the compiled view of {case} changed (hash of its JSON); if that is deliberate, \
         re-record with PRINT_VIEW_HASHES=1"
    );
}

/// `n` random policies from `seed`, every host, at `NOW` and 90 minutes later.
fn random_policies(seed: u64, n: usize) -> (String, usize) {
    let mut rng = Rng(seed);
    let mut h = Sha256::new();
    let (mut done, mut views) = (0, 0);
    while done < n {
        let text = gen_policy(&mut rng, NOW);
        let Ok(parsed) = parse(&text, "random.toml", NOW) else {
            continue;
        };
        let policy = parsed.policy;
        done += 1;
        let hosts = Host::all(&policy);
        for host in &hosts {
            for t in [NOW, NOW + 5400] {
                h.update(view_json(&policy, host, t));
                views += 1;
            }
        }
    }
    (hex(h), views)
}

#[test]
fn random_policy_views_are_unchanged() {
    let cases: [(u64, &str); 3] = [
        (
            0x5eed_0001,
            "8cbed51b537369eb7c9934f169f2cd17629a138c9accca69947777e9f9d016a8",
        ),
        (
            0x5eed_0002,
            "f9fe036f88a025411eb3b9edae70710e9923de3522448012a469ec9ae1e9e51b",
        ),
        (
            0x0bad_cafe,
            "153a9a15017b5bece07ad2076818bd940f244e8a6776caf5abc093c8c665b4f6",
        ),
    ];
    for (seed, want) in cases {
        let (got, views) = random_policies(seed, 150);
        assert!(views > 300, "only {views} views compiled");
        check(
            &format!("150 random policies from seed {seed:#x}"),
            got,
            want,
        );
    }
}

#[test]
fn scaled_policy_views_are_unchanged() {
    let cases: [(u32, bool, &str); 4] = [
        (
            300,
            false,
            "f89145aad30f02fc2492a78e36457b8f290c42ddbc62ed70925f133b812d9acb",
        ),
        (
            2_000,
            false,
            "c02e9d04a9e726931f29b084933fe76f1a848fb9b4847533a72c1b27649153b0",
        ),
        (
            2_000,
            true,
            "cbfa2f12fa4d769c3d13b48fc5b3d6c15457d41e408dec43231e783bbf66205d",
        ),
        (
            10_000,
            false,
            "911810a98b546b402ccb6849eef3aa762a6b4da4a90adfc32e5b6cb85de52828",
        ),
    ];
    for (rules, random_membership, want) in cases {
        let scale = Scale {
            random_membership,
            ..Scale::for_rules(rules)
        };
        let text = scaled_policy(&mut Rng(0xa991 + u64::from(rules)), &scale, NOW);
        let policy = parse(&text, "scaled.toml", NOW).unwrap().policy;
        let mut h = Sha256::new();
        let mut hosts = vec![Host::Connector("conn".into())];
        // Devices of the first, a middle and the last user.
        let devices = policy.devices.len();
        for i in [0, 1, devices / 2, devices - 1] {
            hosts.push(Host::Device(policy.devices[i].name.clone()));
        }
        for host in &hosts {
            // Now, and after the first grants expired (every 13th group's, after 1 h).
            for t in [NOW, NOW + 5400] {
                h.update(view_json(&policy, host, t));
            }
        }
        check(
            &format!("the scaled policy of {rules} rules (random membership: {random_membership})"),
            hex(h),
            want,
        );
    }
}
