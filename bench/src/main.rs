//! `bench [--quick] [--only decision,throughput,compile,apply,peers,tunnel,controller,ha,events,console] [--out DIR]`: the
//! gateway's benchmark suite (see bench/README.md). Writes `<out>/<run>.json|.md`,
//! `latest.*` copies and `latest-*.svg` plots; one progress line per step on stderr. Needs
//! root for the decision, throughput and apply suites (BPF, namespaces).

mod alloc;
mod apply;
mod compile_suite;
mod console_suite;
mod controller_suite;
mod decision;
mod events_suite;
mod ha_suite;
mod peer_change;
mod policies;
mod report;
mod throughput;
mod tunnel_suite;
mod working_set;

use anyhow::{Context as _, Result, bail};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

pub struct Opts {
    pub quick: bool,
    pub only: Option<Vec<String>>,
    pub out: PathBuf,
    /// `--iface`: the throughput suite runs on this interface only (see
    /// `throughput::run_nic`).
    pub iface: Option<String>,
    /// `--duration`: seconds per engine on `--iface`.
    pub duration: f64,
    /// `--rules`: policy size on `--iface`.
    pub rules: u32,
}

static START: OnceLock<Instant> = OnceLock::new();

/// One progress line on stderr, with the time since start.
pub fn progress(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench {t:7.1}s] {msg}");
}

fn args() -> Result<Opts> {
    let mut opts = Opts {
        quick: false,
        only: None,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
        iface: None,
        duration: 10.0,
        rules: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--only" => {
                let v = it.next().context("--only needs a list")?;
                opts.only = Some(v.split(',').map(str::to_string).collect());
            }
            "--out" => opts.out = PathBuf::from(it.next().context("--out needs a directory")?),
            "--iface" => opts.iface = Some(it.next().context("--iface needs an interface")?),
            "--duration" => {
                opts.duration = it
                    .next()
                    .context("--duration needs seconds")?
                    .parse()
                    .context("--duration: seconds, e.g. 10")?;
                if !(opts.duration > 0.0 && opts.duration <= 3600.0) {
                    bail!("--duration must be between 0 and 3600 seconds");
                }
            }
            "--rules" => {
                opts.rules = it
                    .next()
                    .context("--rules needs a number")?
                    .parse()
                    .context("--rules: a number of rules, e.g. 10000")?;
            }
            "--summarize" => {
                let n: usize = it
                    .next()
                    .context("--summarize needs a number of runs")?
                    .parse()
                    .context("--summarize: a number of runs, e.g. 3")?;
                let p = report::summarize(&opts.out, n)?;
                progress(&format!("wrote {}", p.display()));
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!(
                    "bench [--quick] [--only decision,throughput,compile,apply,peers,tunnel,controller,ha,events,console] [--out DIR]\n      \
                     [--iface IFACE [--duration SECONDS] [--rules N]]\n      \
                     bench --summarize N   goals over the newest N complete runs -> summary.md\n\n\
                     --iface IFACE   throughput on a real interface with your own traffic generator:\n\
                     \x20               the no-op, drop-all and gateway XDP programs are attached to IFACE\n\
                     \x20               in turn for --duration seconds each (default 10; policy of --rules\n\
                     \x20               rules, default 10000). Traffic on IFACE is dropped while drop-all\n\
                     \x20               runs: use a test interface. See bench/README.md."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(opts)
}

fn main() -> Result<()> {
    START.get_or_init(Instant::now);
    let opts = args()?;
    let wanted = |s: &str| opts.only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let mut r = report::Results {
        quick: opts.quick,
        ..report::Results::default()
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut suite = |name: &str, f: &mut dyn FnMut(&mut report::Results) -> Result<()>| {
        if !wanted(name) {
            return;
        }
        if !root
            && !matches!(
                name,
                "compile" | "controller" | "peers" | "events" | "ha" | "console"
            )
        {
            progress(&format!("{name}: SKIP needs root"));
            r.errors.push(format!("{name}: skipped, needs root"));
            return;
        }
        let t = Instant::now();
        progress(&format!("{name}: start"));
        if let Err(e) = f(&mut r) {
            progress(&format!("{name}: FAILED: {e:#}"));
            r.errors.push(format!("{name}: {e:#}"));
        }
        r.suite_seconds
            .insert(name.to_string(), t.elapsed().as_secs_f64());
        progress(&format!(
            "{name}: done in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    };
    suite("compile", &mut |r| {
        compile_suite::run(&opts, &mut r.compile)
    });
    suite("decision", &mut |r| {
        decision::run(&opts, &mut r.decision, &mut r.decision_checks)
    });
    suite("apply", &mut |r| apply::run(&opts, &mut r.apply_sizes));
    suite("throughput", &mut |r| match &opts.iface {
        Some(iface) => throughput::run_nic(iface, opts.duration, opts.rules, &mut r.throughput),
        None => throughput::run(&opts, &mut r.throughput),
    });
    suite("peers", &mut |r| {
        peer_change::run(&opts, &mut r.peer_change)
    });
    suite("tunnel", &mut |r| {
        tunnel_suite::run(&opts, r.tunnel.get_or_insert_with(Default::default))
    });
    suite("controller", &mut |r| {
        controller_suite::run(&opts, &mut r.controller)
    });
    suite("events", &mut |r| {
        events_suite::run(&opts, r.events.get_or_insert_with(Default::default))
    });
    suite("ha", &mut |r| ha_suite::run(opts.quick, &mut r.ha));
    suite("console", &mut |r| {
        console_suite::run(&opts, &mut r.console)
    });
    r.wall_seconds = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    let paths = report::write(&opts.out, &mut r, opts.only.is_some())?;
    for p in paths {
        progress(&format!("wrote {}", p.display()));
    }
    Ok(())
}
