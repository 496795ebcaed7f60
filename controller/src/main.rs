//! `gateway-controller`: the zt-gateway control plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gateway-controller",
    version,
    about = "The zt-gateway controller: keeps the policy (SQLite), compiles it for every host, \
        and streams each host's compiled view to its agents over gRPC.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prepares a deployment: creates the database, an admin API key (printed once, on
    /// stdout) and, with --tls-dir, the deployment's CA and the controller's certificate.
    /// Run again on an existing database to mint another admin key (break-glass).
    Init {
        /// The SQLite database file (created with its directory if missing).
        #[arg(long, default_value = "/var/lib/zt-gateway/controller.db")]
        db: PathBuf,
        /// Write ca.pem, ca.key, server.pem, server.key here (must not exist yet).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// A DNS name or IP address agents use to reach the controller (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Name of the admin API key (unique; names are never reused).
        #[arg(long, default_value = "bootstrap-admin")]
        key_name: String,
    },
    /// Serve the Admin and Agent gRPC services (plus grpc.health.v1 and reflection).
    Run {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The SQLite database file (created with its directory if missing).
        #[arg(long, default_value = "/var/lib/zt-gateway/controller.db")]
        db: PathBuf,
        /// Serve TLS with server.pem and server.key from this directory (see `init`).
        #[arg(long, required_unless_present = "insecure_plaintext")]
        tls_dir: Option<PathBuf>,
        /// Serve plaintext gRPC (tests on loopback only: credentials travel in clear).
        #[arg(long, conflicts_with = "tls_dir")]
        insecure_plaintext: bool,
        /// Lifetime of interactive admin sessions, in seconds (then log in again).
        #[arg(long, default_value_t = controller::state::DEFAULT_SESSION_TTL_SECS)]
        session_ttl: u64,
        /// Connection events older than this many days are deleted (checked hourly).
        #[arg(long, default_value_t = 30)]
        event_retention_days: u32,
    },
    /// Verifies the admin audit trail's hash chain; exit status 1 names the first bad
    /// record.
    AuditVerify {
        #[arg(long, default_value = "/var/lib/zt-gateway/controller.db")]
        db: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init {
            db,
            tls_dir,
            sans,
            key_name,
        } => {
            if let Some(dir) = &tls_dir {
                controller::tls::generate(dir, &sans)?;
                eprintln!(
                    "gateway-controller: wrote the CA and server certificate ({}) to {}; \
                     agents and gatewayctl pin {}",
                    sans.join(", "),
                    dir.display(),
                    dir.join(controller::tls::CA_CERT).display()
                );
            } else if !sans.is_empty() {
                bail!("--san needs --tls-dir");
            }
            let state = controller::State::open(&db, 30)?;
            let key = state
                .bootstrap_admin_key(&key_name)
                .context("creating the admin API key")?;
            eprintln!(
                "gateway-controller: admin API key `{key_name}` (shown once; valid {} days):",
                controller::state::DEFAULT_KEY_TTL_SECS / 86_400
            );
            println!("{key}");
            Ok(())
        }
        Command::Run {
            listen,
            db,
            tls_dir,
            insecure_plaintext,
            session_ttl,
            event_retention_days,
        } => {
            let tls = match &tls_dir {
                Some(dir) => Some(controller::tls::server_config(dir)?),
                None => None,
            };
            let state = Arc::new(controller::State::open(&db, event_retention_days)?);
            state.set_session_ttl(session_ttl);
            let (addr, task) = controller::spawn_tls(listen, state, tls, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            eprintln!(
                "gateway-controller: listening on {addr} ({}; database {})",
                if insecure_plaintext {
                    "PLAINTEXT, for tests only"
                } else {
                    "TLS"
                },
                db.display()
            );
            task.await??;
            eprintln!("gateway-controller: stopped");
            Ok(())
        }
        Command::AuditVerify { db } => {
            if !db.exists() {
                bail!("{} does not exist", db.display());
            }
            let v = controller::Store::open(&db)?.verify_audit()?;
            if v.ok {
                println!(
                    "audit trail ok: {} records, head {}",
                    v.records, v.head_hash
                );
                Ok(())
            } else {
                eprintln!(
                    "audit trail BROKEN at record {}: {}",
                    v.first_bad_id.unwrap_or(0),
                    v.reason
                );
                std::process::exit(1);
            }
        }
    }
}
