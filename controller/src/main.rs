//! `gateway-controller`: the zt-gateway control plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, Parser, Subcommand};
use controller::store::Db;
use gateway_logging::LogFormat;
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "gateway-controller",
    version,
    about = "The zt-gateway controller: keeps the policy (SQLite or PostgreSQL), compiles it for every host, \
        and streams each host's compiled view to its agents over gRPC.",
    long_about = None
)]
struct Cli {
    /// How logs are written on stderr: `text` (one line per event: time, level, message,
    /// fields) or `json` (one object per line). Which events: `RUST_LOG` (default
    /// `info`; e.g. `RUST_LOG=debug` or `RUST_LOG=info,controller::state=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prepares a deployment: creates the database, an admin API key (printed once, on
    /// stdout) and, with --tls-dir, the deployment's CA and the controller's certificate.
    /// Run again on an existing database to mint another admin key (break-glass): it gets
    /// the next free name (`bootstrap-admin-2`, ...; its name is logged on stderr) and
    /// works at once, also while the controller runs on that database.
    Init {
        /// The database: a SQLite file (created with its directory if missing), or a
        /// PostgreSQL URL `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (the database
        /// must exist; its tables are created; --key-file is then required).
        #[arg(
            long,
            default_value = "/var/lib/zt-gateway/controller.db",
            value_name = "PATH|URL"
        )]
        db: String,
        /// Write ca.pem, ca.key, server.pem, server.key here (must not exist yet).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// A DNS name or IP address agents use to reach the controller (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Name of the admin API key (unique; names are never reused, and an existing
        /// name is refused). [default: `bootstrap-admin`, or the first free one of
        /// `bootstrap-admin-2`, `bootstrap-admin-3`, ...]
        #[arg(long)]
        key_name: Option<String>,
        /// The controller's secret key file (created, mode 0600, when missing): keys the
        /// audit chain and seals TOTP secrets. Keep it where the database's readers and
        /// writers cannot read it. Required with a PostgreSQL --db (every controller on
        /// that database needs the same file). [default: controller.key next to a SQLite
        /// database]
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Serve the Admin and Agent gRPC services (plus grpc.health.v1 and reflection).
    Run {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The database: a SQLite file (created with its directory if missing; one
        /// controller per file, held by a lock file next to it), or a PostgreSQL URL
        /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (--key-file required; several
        /// controllers may run on one PostgreSQL database).
        #[arg(
            long,
            default_value = "/var/lib/zt-gateway/controller.db",
            value_name = "PATH|URL"
        )]
        db: String,
        /// Serve TLS with server.pem and server.key from this directory (see `init`).
        #[arg(long, required_unless_present = "insecure_plaintext")]
        tls_dir: Option<PathBuf>,
        /// Serve plaintext gRPC (tests only: refused unless --listen is a loopback
        /// address; credentials travel in clear).
        #[arg(long, conflicts_with = "tls_dir")]
        insecure_plaintext: bool,
        /// The key file of the database (see `init --key-file`); required with a
        /// PostgreSQL --db. [default: controller.key next to a SQLite database]
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Append the audit chain's head (time, record id, hash) to this file whenever
        /// it changed, every --audit-head-every seconds; it is also printed on stderr.
        /// Keep it, or ship it, where the controller's host cannot rewrite it, and check
        /// it later with `gatewayctl audit verify --expect-head HASH`.
        #[arg(long)]
        audit_head_file: Option<PathBuf>,
        /// Seconds between audit head exports.
        #[arg(long, default_value_t = 300)]
        audit_head_every: u64,
        /// Connections open at once (more wait until one closes).
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Lifetime of interactive admin sessions, in seconds (then log in again).
        #[arg(long, default_value_t = controller::state::DEFAULT_SESSION_TTL_SECS)]
        session_ttl: u64,
        /// Connection events older than this many days are deleted (checked hourly).
        #[arg(long, default_value_t = 30)]
        event_retention_days: u32,
        /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP; e.g.
        /// 127.0.0.1:9478): gRPC calls and latencies by method and code, agents
        /// connected, policy push latency, build info. Off by default.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Serve the admin console (web pages for admins and auditors) at ADDR: HTTPS
        /// with --tls-dir's certificate; with --insecure-plaintext, loopback addresses
        /// only. Off by default.
        #[arg(long, value_name = "ADDR")]
        console_listen: Option<SocketAddr>,
        /// Console sessions must log in again (password + TOTP) this many seconds after
        /// logging in. A console session also ends with the API session behind it
        /// (--session-ttl): the shorter of the two applies.
        #[arg(long, value_name = "SECS", default_value_t = controller::console::DEFAULT_REAUTH.as_secs())]
        console_reauth: u64,
        /// Console sessions unused for this many seconds end.
        #[arg(long, value_name = "SECS", default_value_t = controller::console::DEFAULT_IDLE.as_secs())]
        console_idle: u64,
        /// Only these source networks may use the console (CIDR, repeatable; default:
        /// any).
        #[arg(long, value_name = "CIDR")]
        console_allow: Vec<ipnet::IpNet>,
    },
    /// Verifies the admin audit trail's hash chain; exit status 1 names the first bad
    /// record.
    AuditVerify {
        /// The database: a SQLite file or a PostgreSQL URL (see `run --db`).
        #[arg(
            long,
            default_value = "/var/lib/zt-gateway/controller.db",
            value_name = "PATH|URL"
        )]
        db: String,
        /// The database's key file; required with a PostgreSQL --db. [default:
        /// controller.key next to a SQLite database]
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// A head hash kept outside earlier (from `audit verify` or --audit-head-file):
        /// it must still be in the chain.
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
    },
    /// Print a shell completion script for gateway-controller on stdout (bash, zsh,
    /// fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (gateway-controller.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Raises the soft file-descriptor limit to the hard one and keeps `wanted` connections
/// below it (with room for the database, the listener and the runtime), so connections
/// can never take the descriptors everything else needs.
fn connections_within_fd_limit(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer, on this process.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return wanted;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let room = usize::try_from(lim.rlim_cur)
        .unwrap_or(usize::MAX)
        .saturating_sub(128)
        .max(16);
    if wanted > room {
        warn!(
            requested = wanted,
            allowed = room,
            fd_limit = lim.rlim_cur,
            "--max-connections lowered below the file descriptor limit"
        );
        room
    } else {
        wanted
    }
}

/// The default name of an `init` key: `bootstrap-admin`, or the first of
/// `bootstrap-admin-2`, `bootstrap-admin-3`, ... that no key (also no revoked one) has.
fn free_key_name(state: &controller::State) -> anyhow::Result<String> {
    const BASE: &str = "bootstrap-admin";
    let taken: std::collections::HashSet<String> =
        state.list_api_keys().into_iter().map(|k| k.name).collect();
    std::iter::once(BASE.to_string())
        .chain((2..=10_000).map(|i| format!("{BASE}-{i}")))
        .find(|n| !taken.contains(n))
        .context(
            "every name from bootstrap-admin to bootstrap-admin-10000 is taken: give --key-name",
        )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gateway_logging::init(cli.log_format, true);
    match cli.command {
        Command::Completions { shell } => {
            use std::io::Write as _;
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gateway-controller",
                &mut script,
            );
            // A reader that went away (`| head`) is not an error.
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            Ok(())
        }
        Command::Init {
            db,
            tls_dir,
            sans,
            key_name,
            key_file,
        } => {
            // Parsed here, not by clap, whose error would echo the URL's password.
            let db = Db::parse(&db)?;
            if let Some(dir) = &tls_dir {
                controller::tls::generate(dir, &sans)?;
                info!(
                    dir = %dir.display(),
                    sans = %sans.join(", "),
                    ca = %dir.join(controller::tls::CA_CERT).display(),
                    "wrote the CA and the server certificate; agents and gatewayctl pin the CA"
                );
            } else if !sans.is_empty() {
                bail!("--san needs --tls-dir");
            }
            let state = controller::State::open_with(
                &db,
                &controller::state::Options {
                    retention_days: 30,
                    key_file,
                },
            )?;
            let key_name = match key_name {
                Some(n) => n,
                None => free_key_name(&state)?,
            };
            let key = state
                .bootstrap_admin_key(&key_name)
                .with_context(|| format!("creating the admin API key `{key_name}`"))?;
            info!(
                key = %key_name,
                valid_days = controller::state::DEFAULT_KEY_TTL_SECS / 86_400,
                "admin API key created: printed once on stdout"
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
            key_file,
            audit_head_file,
            audit_head_every,
            max_connections,
            metrics_listen,
            console_listen,
            console_reauth,
            console_idle,
            console_allow,
        } => {
            // Parsed here, not by clap, whose error would echo the URL's password.
            let db = Db::parse(&db)?;
            if insecure_plaintext && !controller::plaintext_allowed(&listen) {
                bail!(
                    "--insecure-plaintext serves loopback addresses only (127.0.0.1, ::1), not \
                     {listen}: credentials would cross the network in clear; use --tls-dir"
                );
            }
            let tls = match &tls_dir {
                Some(dir) => Some(controller::tls::server_config(dir)?),
                None => None,
            };
            // One controller per SQLite file, checked before anything opens or migrates it.
            // (Several controllers on one PostgreSQL database is what PostgreSQL is for.)
            let _lock = match db.sqlite_path() {
                Some(path) => Some(controller::lock_db(path)?),
                None => None,
            };
            let state = Arc::new(controller::State::open_with(
                &db,
                &controller::state::Options {
                    retention_days: event_retention_days,
                    key_file,
                },
            )?);
            state.set_session_ttl(session_ttl);
            let metrics = Arc::new(controller::metrics::Metrics::new());
            if let Some(addr) = metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--metrics-listen {addr}"))?;
                let local = listener.local_addr()?;
                let m = metrics.clone();
                tokio::spawn(async move {
                    let stop = async {
                        let _ = tokio::signal::ctrl_c().await;
                    };
                    if let Err(e) = controller::metrics::serve(listener, m, stop).await {
                        error!(error = %e, "the metrics listener failed");
                    }
                });
                info!(addr = %local, "serving metrics at /metrics");
            }
            if let Some(addr) = console_listen {
                if console_reauth == 0 || console_idle == 0 {
                    bail!("--console-reauth and --console-idle must be at least 1 second");
                }
                let copts = controller::console::ConsoleOptions {
                    tls: match &tls_dir {
                        Some(dir) => Some(controller::console::tls_config(dir)?),
                        None => None,
                    },
                    reauth: std::time::Duration::from_secs(console_reauth),
                    idle: std::time::Duration::from_secs(console_idle),
                    allow: console_allow,
                    ..controller::console::ConsoleOptions::default()
                };
                let (local, _task) =
                    controller::console::spawn(addr, state.clone(), copts, async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await
                    .with_context(|| format!("--console-listen {addr}"))?;
                info!(addr = %local, "serving the admin console");
            }
            let opts = controller::ServeOptions {
                max_connections: connections_within_fd_limit(max_connections),
                audit_head_file,
                audit_head_every: std::time::Duration::from_secs(audit_head_every),
                metrics: Some(metrics),
                ..controller::ServeOptions::default()
            };
            let mut sigterm =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            let (addr, task) = controller::spawn_with(listen, state, tls, opts, async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = sigterm.recv() => {}
                }
                // systemd (Type=notify): stopping.
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            })
            .await?;
            info!(
                %addr,
                transport = if insecure_plaintext {
                    "PLAINTEXT, for tests only"
                } else {
                    "TLS"
                },
                db = %db,
                "listening"
            );
            // systemd (Type=notify): ready once the listener is bound.
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                warn!("notifying systemd (NOTIFY_SOCKET): {e}");
            }
            task.await??;
            info!("stopped");
            Ok(())
        }
        Command::AuditVerify {
            db,
            key_file,
            expect_head,
        } => {
            // Parsed here, not by clap, whose error would echo the URL's password.
            let db = Db::parse(&db)?;
            let key_file = match (&db, key_file) {
                (Db::Sqlite(path), key_file) => {
                    if !path.exists() {
                        bail!("{} does not exist", path.display());
                    }
                    key_file.unwrap_or_else(|| controller::keys::default_key_file(path))
                }
                (Db::Postgres(_), Some(k)) => k,
                (Db::Postgres(url), None) => {
                    bail!("--key-file is required with a PostgreSQL database ({url})")
                }
            };
            if !key_file.exists() {
                bail!(
                    "the key file {} does not exist: the audit chain is keyed (--key-file)",
                    key_file.display()
                );
            }
            let keys = Arc::new(controller::keys::Keys::load(&key_file)?);
            let v = controller::Store::open(&db, keys)?.verify_audit(expect_head.as_deref())?;
            if v.ok {
                println!(
                    "audit trail ok: {} records, head {}",
                    v.records, v.head_hash
                );
                if let Some(id) = v.expected_head_id {
                    println!("the anchored head is record {id}");
                }
                Ok(())
            } else {
                let id = v.first_bad_id.unwrap_or(0);
                error!(
                    first_bad_id = id,
                    "audit trail BROKEN at record {id}: {}", v.reason
                );
                std::process::exit(1);
            }
        }
    }
}
