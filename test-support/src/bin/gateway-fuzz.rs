//! `gateway-fuzz --policies N --packets M [--seed S]`: stateful differential fuzzing of the
//! loaded data plane against the reference model (see `gateway_test_support::fuzz`). Prints
//! progress on stderr and one JSON line on stdout (`l3`: the tunnel interface); exits 1 on
//! any disagreement. Needs root.

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
                     For N random policies, runs sequences of about M packets in all (flows \
                     opened and answered, ICMP errors real and forged, fragments of real \
                     datagrams, policy swaps, time passing, malformed frames) through the \
                     loaded XDP/tcx programs and the reference model, then through the \
                     tunnel programs on a TUN device (packets from the IP header on); \
                     prints one JSON line with wrong_allow, wrong_deny and wrong_reason \
                     (l3: the same for the tunnel interface, and what never met a hook); \
                     exits 1 if any is not 0. Needs root."
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let report = gateway_test_support::fuzz::run(policies, packets, seed, |done, r| {
        eprintln!(
            "fuzz: {done}/{policies} policies, {} packets, {} wrong allow, {} wrong deny, {} wrong reason; \
             tunnel: {} packets ({} skipped), {} wrong allow, {} wrong deny, {} wrong reason",
            r.packets,
            r.judged.wrong_allow,
            r.judged.wrong_deny,
            r.judged.wrong_reason,
            r.l3.packets,
            r.l3.skipped_total(),
            r.l3.judged.wrong_allow,
            r.l3.judged.wrong_deny,
            r.l3.judged.wrong_reason
        );
    })?;
    println!("{}", serde_json::to_string(&report)?);
    for e in report.examples.iter().chain(&report.l3.examples) {
        eprintln!("disagreement: {e}");
    }
    if report.all_mismatches() > 0 {
        std::process::exit(1);
    }
    Ok(())
}
