//! `gateway-fuzz --policies N --packets M [--seed S]`: differential fuzzing of the loaded
//! data plane against the reference evaluator (see `gateway_user::fuzz`). Prints progress
//! on stderr and one JSON line on stdout; exits 1 on any mismatch. Needs root.

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let mut policies = 100usize;
    let mut packets = 10_000usize;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name} takes a whole number, got {v:?}"))
        };
        match arg.as_str() {
            "--policies" => policies = value("--policies")? as usize,
            "--packets" => packets = value("--packets")? as usize,
            "--seed" => seed = value("--seed")?,
            "-h" | "--help" => {
                println!(
                    "gateway-fuzz --policies N --packets M [--seed S]\n\n\
                     Runs N random policies with M random (valid and malformed) packets each \
                     through the loaded XDP/TC programs and the reference evaluator; prints \
                     one JSON line; exits 1 on any mismatch. Needs root."
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let report = gateway_user::fuzz::run(policies, packets, seed, |done, r| {
        eprintln!(
            "fuzz: {done}/{policies} policies, {} packets, {} mismatches",
            r.packets, r.mismatches
        );
    })?;
    println!("{}", serde_json::to_string(&report)?);
    if report.mismatches > 0 {
        std::process::exit(1);
    }
    Ok(())
}
