//! `gateway-controller`: the zt-gateway control plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Serve the Admin and Agent gRPC services (plus grpc.health.v1 and reflection).
    Run {
        /// Address to listen on (plaintext gRPC; TLS comes later).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The SQLite database file (created with its directory if missing).
        #[arg(long, default_value = "/var/lib/zt-gateway/controller.db")]
        db: PathBuf,
        /// Connection events older than this many days are deleted (checked hourly).
        #[arg(long, default_value_t = 30)]
        event_retention_days: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            listen,
            db,
            event_retention_days,
        } => {
            let state = Arc::new(controller::State::open(&db, event_retention_days)?);
            let (addr, task) = controller::spawn(listen, state, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            eprintln!(
                "gateway-controller: listening on {addr} (database {})",
                db.display()
            );
            task.await??;
            eprintln!("gateway-controller: stopped");
            Ok(())
        }
    }
}
