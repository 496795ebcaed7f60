//! A throwaway PostgreSQL cluster: its own data folder (in a fresh temporary folder), its
//! own port on 127.0.0.1 (`trust` there only), its socket in that folder; stopped
//! (`pg_ctl stop -m fast`) and its folder removed when dropped. `cargo xtask test` runs the
//! controller's suite on one, the bench's `events` suite measures on one.
//!
//! Standard library only: xtask, which has no dependency on this crate, includes this
//! file as a module of its own (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The newest installed PostgreSQL's server programs (`/usr/lib/postgresql/N/bin`, Debian's
/// layout), if any.
pub fn bin_dir() -> Option<PathBuf> {
    let base = Path::new("/usr/lib/postgresql");
    std::fs::read_dir(base)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, bin)| bin)
}

/// A running cluster (see the module docs).
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: PathBuf,
    /// The server runs as this user (initdb refuses root): `postgres` when running as
    /// root, else the current user.
    run_as: Option<String>,
    pub port: u16,
    /// How long initdb and the start took, in seconds.
    pub start_seconds: f64,
}

/// True when this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A random number (for unique folder names), from the standard library's hasher keys.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

impl Cluster {
    /// initdb and start a cluster with the server `settings` (`-c NAME=VALUE` each) on top
    /// of its own port, socket folder and `listen_addresses=127.0.0.1`. The error says
    /// what failed, with the server's log when it did not start.
    pub fn start(settings: &[(&str, &str)]) -> Result<Cluster, String> {
        let started = Instant::now();
        let bin = bin_dir().ok_or(
            "no /usr/lib/postgresql/*/bin/initdb (run `cargo xtask setup` as root)".to_string(),
        )?;
        sweep_abandoned(&bin);
        let dir = std::env::temp_dir().join(format!("zt-postgres-{:016x}", rand_u64()));
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // Whose cluster this is: a later start stops it if this process died without
        // stopping it (Ctrl-C, a kill), see `sweep_abandoned`.
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| format!("writing {}: {e}", dir.join("owner.pid").display()))?;
        // From here on, dropping it stops whatever was started and removes the folder.
        let mut cluster = Cluster {
            bin,
            dir,
            run_as: is_root().then(|| "postgres".to_string()),
            port: 0,
            start_seconds: 0.0,
        };
        if let Some(user) = &cluster.run_as {
            let ok = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "giving {} to the {user} user failed",
                    cluster.dir.display()
                ));
            }
        }
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth-host=trust",
                "--auth-local=peer",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        // A free port: bind one, let it go, give it to the server.
        cluster.port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))?
            .port();
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            cluster.port,
            cluster.dir.display()
        );
        for (k, v) in settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let log = cluster.dir.join("server.log");
        cluster
            .pg(
                "pg_ctl",
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )
            .map_err(|e| {
                format!(
                    "starting the server: {e}; its log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                )
            })?;
        cluster.start_seconds = started.elapsed().as_secs_f64();
        Ok(cluster)
    }

    /// Restarts the server (`pg_ctl restart -m fast`: every connection is closed, the
    /// data stays), waiting until it accepts connections again.
    pub fn restart(&self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ],
        )
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A superuser URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the server's programs (as `run_as`), quietly; its output is in the
    /// error when it fails.
    fn pg(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }
}

/// Stops and removes the clusters whose owner process is gone (a test run interrupted by
/// Ctrl-C or killed before it could stop its cluster): temporary folders
/// `zt-postgres-*` whose `owner.pid` names no running process.
fn sweep_abandoned(bin: &Path) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !e.file_name().to_string_lossy().starts_with("zt-postgres-") {
            continue;
        }
        let Some(owner) = std::fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let cluster = Cluster {
            bin: bin.to_path_buf(),
            run_as: is_root().then(|| "postgres".to_string()),
            dir: dir.clone(),
            port: 0,
            start_seconds: 0.0,
        };
        println!(
            "postgres: the cluster in {} outlived its owner (pid {owner}): stopping it",
            dir.display()
        );
        // Stopped and removed by its Drop.
        drop(cluster);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        if data.join("postmaster.pid").exists()
            && let Err(e) = self.pg(
                "pg_ctl",
                &["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"],
            )
        {
            println!("postgres: stopping the cluster failed: {e}");
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => println!("postgres: cluster stopped, {} removed", self.dir.display()),
            Err(e) => println!("postgres: removing {} failed: {e}", self.dir.display()),
        }
    }
}
