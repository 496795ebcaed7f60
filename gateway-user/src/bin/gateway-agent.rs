//! `gateway-agent`: the host agent of the zero-trust gateway.

use anyhow::Result;
use clap::{CommandFactory as _, Parser, Subcommand};
use gateway_logging::LogFormat;
use gateway_user::agent::{self, config::Config};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "gateway-agent",
    version,
    about = "Enforces the access policy on this host with XDP and TC programs",
    long_about = "Enforces the access policy on this host with XDP and TC programs.\n\n\
                  Programs, maps and links are pinned under the configured pin folder, so \
                  enforcement continues while the agent is stopped or restarting; \
                  `detach` removes them."
)]
struct Cli {
    /// How the agent's own messages are written on stderr: `text` (a line per event: time,
    /// level, message, fields) or `json` (an object per line). `RUST_LOG` picks which
    /// (default `info`; `RUST_LOG=debug`, `RUST_LOG=warn,kernel=info`). Connection logs
    /// are separate: `log_file` in the configuration.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach (or re-adopt) the programs, apply the policy file and keep it applied, and
    /// write connection logs, until SIGINT/SIGTERM. Programs stay attached on exit. SIGHUP
    /// reopens the log file (after logrotate renamed it) and reloads the policy file.
    Run {
        /// The agent configuration (see deploy/agent.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove the links (detaching the programs), program pins and map pins, also those of
    /// deleted interfaces. Refused while an agent runs on the pin folder: stop it first.
    Detach {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show whether an agent runs, each attachment (interface, native/generic XDP or tcx,
    /// program ids; stale ones of deleted interfaces), the active policy generation and
    /// counters, from pinned state.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// `text` or `json`.
        #[arg(long, short, default_value = "text")]
        output: String,
    },
    /// Print this host's tunnel public key (creating the key file on first use), for the
    /// policy's `public_key` (standalone mode) or to check enrollment.
    PublicKey {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Replace this host's tunnel key. The running agent switches within a second:
    /// sessions under the old key end at once. Managed agents register the new public key
    /// with the controller; in standalone mode, put the printed key in the policy.
    RotateKey {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read the pinned maps (which carry no BTF, so bpftool shows hex).
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
    /// Print a shell completion script for gateway-agent on stdout (bash, zsh, fish,
    /// elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (gateway-agent.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum MapsCommand {
    /// Decode every entry of the pinned maps: policy, flows, counters, configuration.
    Dump {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this map (repeatable); `FLOWS_TCP_V2`, `flows_tcp` and `FLOWS_TCP` all work.
        #[arg(long = "map", short, value_name = "NAME")]
        maps: Vec<String>,
        /// `text` (a header per map, a line per entry) or `json` (one object per map and
        /// line).
        #[arg(long, short, default_value = "text")]
        output: String,
        /// Entries shown per map, first by key; the rest are counted.
        #[arg(long, default_value_t = agent::dump::DEFAULT_LIMIT)]
        limit: usize,
    },
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_bytes(b: &[u8]) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().write_all(b) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    gateway_logging::init(cli.log_format, false);
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gateway-agent", &mut script);
            print_bytes(&script)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            Ok(())
        }
        Command::Run { config } => agent::run(Config::load(&config)?),
        Command::Detach { config } => {
            let cfg = Config::load(&config)?;
            let removed = agent::detach(&cfg)?;
            if removed.is_empty() {
                println!("nothing attached at {}", cfg.pin_dir.display());
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(())
        }
        Command::PublicKey { config } => {
            let cfg = Config::load(&config)?;
            let t = tunnel_of(&cfg)?;
            let (pair, created) = gateway_user::tunnel::keys::load_or_create(&t.private_key_file)?;
            if created {
                eprintln!("created {}", t.private_key_file.display());
            }
            println!("{}", pair.public_b64());
            Ok(())
        }
        Command::RotateKey { config } => {
            let cfg = Config::load(&config)?;
            let t = tunnel_of(&cfg)?;
            let pair = gateway_user::tunnel::keys::rotate(&t.private_key_file)?;
            println!("{}", pair.public_b64());
            eprintln!(
                "new key in {}; a running agent uses it within a second{}",
                t.private_key_file.display(),
                if cfg.controller.is_some() {
                    " and registers it with the controller"
                } else {
                    ". Put the public key above in the policy (`public_key` of this host)"
                }
            );
            Ok(())
        }
        Command::Status { config, output } => {
            let cfg = Config::load(&config)?;
            let st = agent::status(&cfg)?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&st)?),
                "text" => print_status(&st),
                other => anyhow::bail!("--output takes text or json, not {other:?}"),
            }
            Ok(())
        }
        Command::Maps {
            command:
                MapsCommand::Dump {
                    config,
                    maps,
                    output,
                    limit,
                },
        } => {
            if output != "text" && output != "json" {
                anyhow::bail!("--output takes text or json, not {output:?}");
            }
            let names = agent::dump::select(&maps)?;
            let cfg = Config::load(&config)?;
            let results = agent::dump::dump(&cfg, &names, limit)?;
            let text = if output == "json" {
                agent::dump::render_json_lines(&results)
            } else {
                agent::dump::render_text(&results)
            };
            print!("{text}");
            let failed: Vec<&str> = results
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(n, _)| *n)
                .collect();
            if !failed.is_empty() {
                anyhow::bail!("could not read {}", failed.join(", "));
            }
            Ok(())
        }
    }
}

fn tunnel_of(cfg: &Config) -> Result<&agent::config::TunnelConfig> {
    cfg.tunnel
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the configuration has no [tunnel] section"))
}

fn print_status(st: &serde_json::Value) {
    println!("host:               {}", st["host"].as_str().unwrap_or("?"));
    println!(
        "pin folder:         {}",
        st["pin_dir"].as_str().unwrap_or("?")
    );
    match &st["generation"] {
        serde_json::Value::Null => {
            println!("generation:         unknown (not recorded by the agent)")
        }
        g => println!("generation:         {g}"),
    }
    println!("map generation:     {}", st["local_generation"]);
    println!("principals:         {}", st["principals"]);
    println!("flows:              {}", st["flows"]);
    print_attachments(st);
    print_host_checks(&st["host_checks"]);
    print_tunnel(&st["tunnel"]);
    println!("verdicts:");
    if let Some(v) = st["verdicts"].as_object() {
        for (k, n) in v {
            if n.as_u64().unwrap_or(0) > 0 {
                println!("  {k:<24} {n}");
            }
        }
    }
}

/// `agent:` and one line per pinned link: hook, interface, mode or state, ids.
fn print_attachments(st: &serde_json::Value) {
    let atts = st["attachments"]
        .as_array()
        .map_or(&[][..], |a| a.as_slice());
    let live = atts
        .iter()
        .any(|a| matches!(a["state"].as_str(), Some("attached" | "other_namespace")));
    match (st["agent"]["pid"].as_u64(), live) {
        (Some(pid), _) => println!("agent:              running (pid {pid})"),
        (None, true) => {
            println!("agent:              not running (programs keep enforcing from pins)")
        }
        (None, false) => println!("agent:              not running (no program attached)"),
    }
    if atts.is_empty() {
        println!("attachments:        none");
        return;
    }
    println!("attachments:");
    for a in atts {
        let what = match a["state"].as_str() {
            Some("attached") => a["mode"].as_str().unwrap_or("?").to_string(),
            Some("stale") => {
                "stale: interface gone (`gateway-agent detach` removes it)".to_string()
            }
            Some("other_namespace") => {
                "in another network namespace (run status where the agent runs)".to_string()
            }
            _ => format!("unreadable: {}", a["error"].as_str().unwrap_or("?")),
        };
        let ids = match (a["link_id"].as_u64(), a["program_id"].as_u64()) {
            (Some(l), Some(p)) => format!(
                "  link {l} program {p}{}",
                a["program"]
                    .as_str()
                    .map_or(String::new(), |n| format!(" ({n})"))
            ),
            _ => String::new(),
        };
        println!(
            "  {:<12} {:<16} {what:<8}{ids}",
            a["hook"].as_str().unwrap_or("?"),
            a["interface"].as_str().unwrap_or("?")
        );
    }
}

fn print_tunnel(t: &serde_json::Value) {
    if t.is_null() {
        println!("tunnel:             off (no [tunnel] section)");
        return;
    }
    println!(
        "tunnel:             {} on {} (port {}, interface {})",
        t["transport"].as_str().unwrap_or("?"),
        t["interface"].as_str().unwrap_or("?"),
        t["listen_port"],
        if t["interface_present"] == true {
            "present"
        } else {
            "missing"
        }
    );
    if let Some(k) = t["public_key"].as_str() {
        println!("  public key        {k}");
    }
    if let Some(note) = t["note"].as_str() {
        println!("  {note}");
    }
    for p in t["peers"].as_array().map_or(&[][..], |a| a.as_slice()) {
        println!(
            "  peer {:<20} {} endpoint {} handshake {} ago, rx {} tx {} bytes",
            p["name"].as_str().unwrap_or("?"),
            p["public_key"].as_str().unwrap_or("?"),
            p["endpoint"].as_str().unwrap_or("-"),
            p["last_handshake_secs"]
                .as_u64()
                .map_or("never".to_string(), |s| format!("{s}s")),
            p["rx_bytes"],
            p["tx_bytes"]
        );
    }
    if let Some(d) = t["drops"].as_object() {
        for (k, n) in d {
            if n.as_u64().unwrap_or(0) > 0 {
                println!("  dropped {k:<18} {n}");
            }
        }
    }
}

fn print_host_checks(hc: &serde_json::Value) {
    let findings = hc["findings"].as_array().map_or(&[][..], |a| a.as_slice());
    println!(
        "host checks:        {} performed, {} risk{}",
        hc["checks"],
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    );
    for f in findings {
        println!(
            "  RISK {} = {}: {}",
            f["setting"].as_str().unwrap_or("?"),
            f["value"].as_str().unwrap_or("?"),
            f["why"].as_str().unwrap_or("?")
        );
        println!("       fix: {}", f["fix"].as_str().unwrap_or("?"));
    }
    for n in hc["info"].as_array().map_or(&[][..], |a| a.as_slice()) {
        println!("  info {}", n["text"].as_str().unwrap_or("?"));
    }
    for e in hc["errors"].as_array().map_or(&[][..], |a| a.as_slice()) {
        println!("  not checked: {}", e.as_str().unwrap_or("?"));
    }
}
