//! Compile-time scaling. The full target (100k principals x 10k resources x 1k groups in
//! < 1 s and < 200 MB) runs in release:
//! `cargo test --release -p policy-compiler --test scale -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use policy_compiler::*;

const NOW: i64 = 1_767_225_600;

/// `users` users with 2 devices each, `sas` service accounts with 10 keys each,
/// `resources` resources, `groups` groups, 2 grants of 5 resources per group; memberships
/// realistic or adversarial (see [`random::Scale`]).
fn big_policy(
    users: u32,
    sas: u32,
    resources: u32,
    groups: u32,
    random_membership: bool,
) -> String {
    let scale = random::Scale {
        users,
        service_accounts: sas,
        resources,
        groups,
        random_membership,
        ..random::Scale::TARGET
    };
    random::scaled_policy(&mut random::Rng(0x1234_5678_9abc_def1), &scale, NOW)
}

/// Counts live heap bytes and their peak, so the compile's own memory is measured
/// exactly (RSS would include the parser's freed-but-retained memory).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn run(
    users: u32,
    sas: u32,
    resources: u32,
    groups: u32,
    random_membership: bool,
) -> (f64, u64, HostView) {
    let text = big_policy(users, sas, resources, groups, random_membership);
    let t = Instant::now();
    let p = parse(&text, "big.toml", NOW)
        .map_err(|d| d[0].to_string())
        .unwrap()
        .policy;
    println!(
        "parse: {:.2}s ({} principals, {} resources, {} groups, {} rules)",
        t.elapsed().as_secs_f64(),
        p.principals.len(),
        p.resources.len(),
        p.groups.len(),
        p.rules.len()
    );
    drop(text);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t = Instant::now();
    let view = compile(&p, &Host::Connector("conn".into()), NOW).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak = (PEAK.load(Ordering::Relaxed) - before) as u64 / 1024;
    let k = to_kernel(&view, 1, |t| t as u64);
    println!(
        "compile: {secs:.3}s, peak heap {} MB (policy itself: {} MB); {} classes, {} src, {} + {} dst (trie + hosts), {} + {} rules entries (trie + exact)",
        peak / 1024,
        before / (1024 * 1024),
        view.classes,
        k.src.len(),
        k.dst.len(),
        k.dst_hosts.len(),
        k.rules.len(),
        k.rules_exact.len()
    );
    // A device view is small and quick.
    let t = Instant::now();
    let dv = compile(&p, &Host::Device("d0".into()), NOW).unwrap();
    println!(
        "device view: {:.3}s, {} rules entries",
        t.elapsed().as_secs_f64(),
        dv.rules.len()
    );
    (secs, peak, view)
}

#[test]
fn compile_scales_roughly_linearly_debug() {
    let (secs, _, view) = run(5_000, 100, 1_000, 100, false);
    assert_eq!(view.sources.len(), 11_000);
    assert!(secs < 10.0, "debug compile of 11k principals took {secs}s");
    // Adversarial memberships: ~every user its own class; still bounded.
    let (secs, _, view) = run(5_000, 100, 1_000, 100, true);
    assert!(view.classes > 4_000);
    assert!(secs < 20.0, "debug compile of 11k principals took {secs}s");
}

#[test]
#[ignore = "release-mode benchmark"]
fn compile_100k_principals_10k_resources_1k_groups() {
    let (secs, peak, view) = run(45_000, 1_000, 10_000, 1_000, false);
    assert!(view.sources.len() >= 100_000);
    assert!(secs < 1.0, "compile took {secs}s");
    assert!(peak < 200 * 1024, "compile peak heap {peak} kB");
}

#[test]
#[ignore = "release-mode benchmark (adversarial, reported only)"]
fn compile_100k_principals_random_memberships() {
    let _ = run(45_000, 1_000, 10_000, 1_000, true);
}
