//! Parse and compile one scaled policy (the benchmark's generator), for profilers:
//!
//! ```sh
//! cargo build --release -p policy-compiler --features testing --example profile_compile
//! valgrind --tool=callgrind target/release/examples/profile_compile 10000
//! ```
//!
//! Prints the policy's size, the parse and compile times and the entry counts. The
//! instruction counts of callgrind are the repeatable measure on a shared machine.

use policy_compiler::random::{Rng, Scale, scaled_policy};
use policy_compiler::{Host, compile, parse};

fn main() {
    let rules: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let now = 1_800_000_000;
    let text = scaled_policy(
        &mut Rng(0xa991 + u64::from(rules)),
        &Scale::for_rules(rules),
        now,
    );
    let t0 = std::time::Instant::now();
    let parsed = match parse(&text, "policy.toml", now) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("the generated policy does not parse: {d:?}");
            std::process::exit(1);
        }
    };
    let t1 = std::time::Instant::now();
    let view = match compile(&parsed.policy, &Host::Connector("conn".into()), now) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("the generated policy does not compile: {e}");
            std::process::exit(1);
        }
    };
    let t2 = std::time::Instant::now();
    println!(
        "{rules} rules: {} bytes of policy, parse {:.1} ms, compile {:.1} ms, {} sources, {} \
         destinations, {} rule entries",
        text.len(),
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        view.sources.len(),
        view.atoms.len(),
        view.rules.len()
    );
}
