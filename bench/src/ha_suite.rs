//! The control plane at fleet scale: 1000 simulated agents (one watch stream each, its own
//! connection, acknowledging every generation as the real agent does, failing over to the
//! next controller URL when its stream ends) on `gateway-controller` processes.
//!
//! * **delivery**: a policy change (UpdateObject of a resource every host's view depends
//!   on: every agent gets a delta) sent to each controller in turn; per agent and change,
//!   the time from the call's start until the agent holds the new generation
//!   (`delivered`) and until its Ack returned (`acknowledged`). Three controllers on one
//!   PostgreSQL database, then one controller on SQLite for comparison.
//! * **kill**: the same change sent to a controller that is killed (`SIGKILL`) while it
//!   applies; its agents fail over. Per round: whether the admin's call succeeded, that a
//!   change acknowledged to the admin is on every controller and agent, that no agent is
//!   left behind the current generation, and each of the killed controller's agents'
//!   failover time (kill to its next watch stream open). The killed controller is started
//!   again before the next round.
//!
//! The PostgreSQL cluster is one of the run's own (`GATEWAY_BENCH_POSTGRES`, a superuser
//! URL, names another); the controllers are the release `gateway-controller` next to this
//! binary (`cargo xtask bench` builds it).

use crate::progress;
use anyhow::{Context as _, Result, bail};
use gateway_proto::v1;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The variable naming a cluster to use instead of one of the run's own.
pub const POSTGRES_ENV: &str = "GATEWAY_BENCH_POSTGRES";

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The percentiles of `ms` (the controller suite's, without a rate).
fn latency(ms: Vec<f64>) -> Latency {
    let s = crate::controller_suite::stats(ms, 1.0);
    Latency {
        samples: s.calls,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        max_ms: s.max_ms,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// `postgres` or `sqlite`.
    pub store: String,
    pub controllers: usize,
    pub agents: usize,
    pub changes: usize,
    /// The UpdateObject call (commit of every host's new view included).
    pub apply: Latency,
    /// Call start to the agent holding the new generation (one sample per agent and change).
    pub delivered: Latency,
    /// Call start to the agent's Ack of it returned.
    pub acknowledged: Latency,
    /// Agents that did not have a change within 30 s (should be 0).
    pub missing: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Kill {
    pub rounds: usize,
    pub agents: usize,
    /// The admin's call returned OK / failed (the controller died under it).
    pub applies_ok: usize,
    pub applies_failed: usize,
    /// Rounds whose change is in the database afterwards (OK or not: a change may commit
    /// just before its controller dies).
    pub committed: usize,
    /// Changes acknowledged to the admin but missing on a controller or an agent (must be 0).
    pub lost: usize,
    /// Agents not on their host's current generation 15 s after the kill (must be 0).
    pub agents_stuck: usize,
    /// Rounds where the surviving controllers disagreed on the revision (must be 0).
    pub controllers_disagree: usize,
    /// Each of the killed controller's agents: kill to its next watch stream open.
    pub failover: Latency,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub agents: usize,
    pub delivery: Vec<Delivery>,
    pub kill: Option<Kill>,
    /// Enrolling the agents, per store.
    pub enroll_seconds: HashMap<String, f64>,
}

/// A `gateway-controller run` process.
struct Proc {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(bin: &Path, db: &str, key: &Path, log: PathBuf) -> Result<Proc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let args = vec![
            "run".to_string(),
            "--db".into(),
            db.into(),
            "--key-file".into(),
            key.to_string_lossy().into_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--insecure-plaintext".into(),
            "--max-connections".into(),
            "4096".into(),
        ];
        let mut p = Proc {
            child: None,
            port,
            args,
            log,
        };
        p.spawn(bin)?;
        Ok(p)
    }

    fn spawn(&mut self, bin: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(bin)
                .args(&self.args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `url` answers gRPC (bounded).
async fn ready(url: &str) -> Result<Channel> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Channel::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
        {
            return Ok(ch);
        }
        if Instant::now() > until {
            bail!("the controller at {url} did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One resource every device may reach, and `devices` devices of `devices / 10` users,
/// all in one group: a change of the resource changes every host's view.
fn policy(devices: usize) -> String {
    let users = devices.div_ceil(10);
    let mut p = String::from(
        "[[remote_network]]\nname = \"corp\"\ncidrs = [\"198.18.0.0/16\"]\nconnectors = [\"c\"]\n\n\
         [[connector]]\nname = \"c\"\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\n\
         endpoint = \"198.19.1.1:51820\"\n\n\
         [[resource]]\nname = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"443\"]\n\n",
    );
    for u in 0..users {
        p.push_str(&format!("[[user]]\nemail = \"u{u}@bench.test\"\n\n"));
    }
    for d in 0..devices {
        p.push_str(&format!(
            "[[device]]\nname = \"d{d}\"\nowner = \"u{}@bench.test\"\naddresses = [\"100.64.{}.{}\"]\n\n",
            d / 10,
            d / 250,
            d % 250 + 1
        ));
    }
    p.push_str("[[group]]\nname = \"everyone\"\nmembers = [");
    for u in 0..users {
        p.push_str(&format!("\"u{u}@bench.test\", "));
    }
    p.push_str("]\n\n[[allow]]\nname = \"everyone-web\"\nprincipals = [\"everyone\"]\nresources = [\"web\"]\n");
    p
}

fn web(n: usize) -> v1::PolicyObject {
    v1::PolicyObject {
        kind: v1::ObjectKind::Resource as i32,
        name: "web".into(),
        toml: format!(
            "name = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"443\", \"{}\"]\n",
            9000 + n
        ),
    }
}

/// What one simulated agent saw.
#[derive(Default)]
struct Seen {
    /// (generation, received, Ack returned).
    log: Mutex<Vec<(u64, Instant, Instant)>>,
    /// The newest generation it holds.
    generation: AtomicU64,
    /// When each of its watch streams opened.
    opened: Mutex<Vec<Instant>>,
    /// The controller (index) its open stream is on.
    on: std::sync::atomic::AtomicUsize,
}

struct Sim {
    auth: v1::AgentAuth,
    host: String,
    seen: Arc<Seen>,
}

/// One agent: watch from its generation on `urls[first]`, Ack every generation, and on
/// any failure the next URL.
async fn agent(
    auth: v1::AgentAuth,
    urls: Arc<Vec<String>>,
    first: usize,
    seen: Arc<Seen>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut idx = first;
    let mut generation = 0u64;
    while !*stop.borrow() {
        let attempt = async {
            let ch = Channel::from_shared(urls[idx].clone())
                .ok()?
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await
                .ok()?;
            let mut client = v1::agent_client::AgentClient::new(ch);
            let stream = client
                .watch(v1::WatchRequest {
                    auth: Some(auth.clone()),
                    generation,
                })
                .await
                .ok()?
                .into_inner();
            Some((client, stream))
        };
        let Some((mut client, mut stream)) = attempt.await else {
            idx = (idx + 1) % urls.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        seen.on.store(idx, Ordering::Relaxed);
        seen.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Instant::now());
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(m)) => {
                        let received = Instant::now();
                        generation = m.generation;
                        seen.generation.store(generation, Ordering::Relaxed);
                        if client
                            .ack(v1::AckRequest { auth: Some(auth.clone()), generation })
                            .await
                            .is_ok()
                        {
                            seen.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((generation, received, Instant::now()));
                        }
                    }
                    _ => break,
                },
                _ = stop.changed() => return,
            }
        }
        idx = (idx + 1) % urls.len();
    }
}

/// A deployment under test: its controllers, an admin key, its agents.
struct Fleet {
    bin: PathBuf,
    procs: Vec<Proc>,
    key: String,
    urls: Arc<Vec<String>>,
    sims: Vec<Sim>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    async fn start(
        bin: &Path,
        dir: &Path,
        db: &str,
        controllers: usize,
        agents: usize,
        summary: &mut Summary,
        store: &str,
    ) -> Result<Fleet> {
        let key_file = dir.join("controller.key");
        let init = Command::new(bin)
            .args(["init", "--db", db, "--key-file"])
            .arg(&key_file)
            .env("RUST_LOG", "warn")
            .output()
            .context("gateway-controller init")?;
        if !init.status.success() {
            bail!(
                "gateway-controller init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let key = String::from_utf8(init.stdout)?.trim().to_string();
        let mut procs = Vec::new();
        for i in 0..controllers {
            procs.push(Proc::start(
                bin,
                db,
                &key_file,
                dir.join(format!("controller-{i}.log")),
            )?);
        }
        let urls: Arc<Vec<String>> = Arc::new(procs.iter().map(Proc::url).collect());
        let mut channels = Vec::new();
        for u in urls.iter() {
            channels.push(ready(u).await?);
        }
        let mut admin = controller::auth::admin_client(channels[0].clone(), &key);
        admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: policy(agents - 1),
                file_name: "bench.toml".into(),
                dry_run: false,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .context("applying the bench policy")?;
        // Enrolled through every controller in turn, eight at a time.
        let t = Instant::now();
        let hosts: Vec<String> = std::iter::once("connector:c".to_string())
            .chain((0..agents - 1).map(|d| format!("device:d{d}")))
            .collect();
        let mut enrolled = Vec::new();
        for chunk in hosts.chunks(8) {
            let mut batch = Vec::new();
            for (i, host) in chunk.iter().enumerate() {
                let ch = channels[(enrolled.len() + i) % channels.len()].clone();
                let (key, host) = (key.clone(), host.clone());
                batch.push(tokio::spawn(async move {
                    let auth = crate::controller_suite::enroll(
                        &mut controller::auth::admin_client(ch.clone(), &key),
                        &mut v1::agent_client::AgentClient::new(ch),
                        &host,
                        &format!("sim-{host}"),
                        "",
                    )
                    .await?;
                    Ok::<_, anyhow::Error>(Sim {
                        auth,
                        host,
                        seen: Arc::new(Seen::default()),
                    })
                }));
            }
            for b in batch {
                enrolled.push(b.await??);
            }
        }
        summary
            .enroll_seconds
            .insert(store.to_string(), t.elapsed().as_secs_f64());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = enrolled
            .iter()
            .enumerate()
            .map(|(i, s)| {
                tokio::spawn(agent(
                    s.auth.clone(),
                    urls.clone(),
                    i % urls.len(),
                    s.seen.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        let fleet = Fleet {
            bin: bin.to_path_buf(),
            procs,
            key,
            urls,
            sims: enrolled,
            stop,
            tasks,
        };
        // Every agent has its snapshot.
        fleet
            .wait(|s| s.seen.generation.load(Ordering::Relaxed) > 0, 60)
            .await
            .context("agents' first snapshots")?;
        Ok(fleet)
    }

    async fn admin(&self, i: usize) -> Result<controller::auth::AuthedAdminClient> {
        let ch = Channel::from_shared(self.urls[i].clone())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?;
        Ok(controller::auth::admin_client(ch, &self.key))
    }

    /// The policy revision controller `i` serves.
    async fn revision(&self, i: usize) -> Result<u64> {
        Ok(self
            .admin(i)
            .await?
            .get_policy(v1::GetPolicyRequest::default())
            .await?
            .into_inner()
            .revision)
    }

    /// Waits until `f` holds for every agent (bounded); the number that never did.
    async fn wait(&self, f: impl Fn(&Sim) -> bool, secs: u64) -> Result<usize> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let behind = self.sims.iter().filter(|s| !f(s)).count();
            if behind == 0 || Instant::now() > until {
                return Ok(behind);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The current generation of every host, as controller `i` says.
    async fn generations(&self, i: usize) -> Result<HashMap<String, u64>> {
        let agents = self
            .admin(i)
            .await?
            .list_agents(v1::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        Ok(agents
            .into_iter()
            .map(|a| (a.host, a.current_generation))
            .collect())
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        drop(self.procs);
    }
}

/// Policy changes through each controller in turn; latencies per agent.
async fn delivery(fleet: &Fleet, store: &str, changes: usize) -> Result<Delivery> {
    let (mut apply, mut delivered, mut acked) = (Vec::new(), Vec::new(), Vec::new());
    let mut missing = 0;
    for n in 0..changes {
        let mut admin = fleet.admin(n % fleet.urls.len()).await?;
        let t0 = Instant::now();
        let plan = admin
            .update_object(v1::UpdateObjectRequest {
                object: Some(web(n)),
                expected_revision: None,
                dry_run: false,
                skip_tests: false,
            })
            .await
            .context("the policy change")?
            .into_inner()
            .plan
            .context("no plan")?;
        apply.push(t0.elapsed().as_secs_f64() * 1000.0);
        let target: HashMap<String, u64> = plan
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.new_generation))
            .collect();
        let want = |s: &Sim| target.get(&s.host).copied().unwrap_or(0);
        missing += fleet
            .wait(
                |s| {
                    s.seen
                        .log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .last()
                        .is_some_and(|l| l.0 >= want(s))
                },
                30,
            )
            .await?;
        for s in &fleet.sims {
            let w = want(s);
            if w == 0 {
                continue;
            }
            if let Some(&(_, r, a)) = s
                .seen
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .find(|l| l.0 >= w)
            {
                delivered.push(r.saturating_duration_since(t0).as_secs_f64() * 1000.0);
                acked.push(a.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(Delivery {
        store: store.to_string(),
        controllers: fleet.urls.len(),
        agents: fleet.sims.len(),
        changes,
        apply: latency(apply),
        delivered: latency(delivered),
        acknowledged: latency(acked),
        missing,
    })
}

/// Kill -9 of the controller a change was sent to, while it applies.
async fn kill_rounds(fleet: &mut Fleet, rounds: usize) -> Result<Kill> {
    let mut k = Kill {
        rounds,
        agents: fleet.sims.len(),
        ..Kill::default()
    };
    let mut failover = Vec::new();
    for r in 0..rounds {
        let victim = r % fleet.urls.len();
        let other = (victim + 1) % fleet.urls.len();
        let before = fleet.revision(other).await?;
        // The agents whose stream is on the victim, and how many streams each opened.
        let moved: Vec<usize> = (0..fleet.sims.len())
            .filter(|&i| fleet.sims[i].seen.on.load(Ordering::Relaxed) == victim)
            .collect();
        let opened_before: Vec<usize> = fleet
            .sims
            .iter()
            .map(|s| {
                s.seen
                    .opened
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .collect();
        let mut admin = fleet.admin(victim).await?;
        let call = tokio::spawn(async move {
            admin
                .update_object(v1::UpdateObjectRequest {
                    object: Some(web(1000 + r)),
                    expected_revision: None,
                    dry_run: false,
                    skip_tests: false,
                })
                .await
        });
        // Mid-apply: the call is under way (its compile and commit take about a hundred
        // ms at 1000 hosts); the rounds spread the kill over that time and past it, so
        // some changes die before their commit, some after it and before their answer,
        // some after the answer.
        tokio::time::sleep(Duration::from_millis(10 + (r as u64 * 97) % 400)).await;
        fleet.procs[victim].kill();
        let killed = Instant::now();
        let ok = matches!(call.await, Ok(Ok(_)));
        if ok {
            k.applies_ok += 1;
        } else {
            k.applies_failed += 1;
        }
        // Every agent of the victim opens a stream elsewhere.
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until
            && moved.iter().any(|&i| {
                fleet.sims[i]
                    .seen
                    .opened
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
                    <= opened_before[i]
            })
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for &i in &moved {
            let opened = fleet.sims[i]
                .seen
                .opened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if opened.len() > opened_before[i]
                && let Some(t) = opened.last()
            {
                failover.push(t.saturating_duration_since(killed).as_secs_f64() * 1000.0);
            }
        }
        // The survivors agree; every agent reaches its host's generation.
        let after = fleet.revision(other).await?;
        let after3 = fleet.revision((victim + 2) % fleet.urls.len()).await?;
        if after != after3 {
            k.controllers_disagree += 1;
        }
        let committed = after > before;
        if committed {
            k.committed += 1;
        }
        let gens = fleet.generations(other).await?;
        let stuck = fleet
            .wait(
                |s| {
                    gens.get(&s.host)
                        .is_none_or(|&g| s.seen.generation.load(Ordering::Relaxed) >= g)
                },
                15,
            )
            .await?;
        k.agents_stuck += stuck;
        if ok && (!committed || stuck > 0) {
            k.lost += 1;
        }
        // The victim comes back for the next round.
        let bin = fleet.bin.clone();
        fleet.procs[victim].spawn(&bin)?;
        ready(&fleet.urls[victim]).await?;
        progress(&format!(
            "ha: kill round {r}: controller {victim} killed {} the change ({}), {} agents failed over",
            if ok {
                "after acknowledging"
            } else {
                "before acknowledging"
            },
            if committed {
                "committed"
            } else {
                "not committed"
            },
            moved.len()
        ));
    }
    k.failover = latency(failover);
    Ok(k)
}

pub fn run(quick: bool, out: &mut Option<Summary>) -> Result<()> {
    // A cluster of this run's own unless one is given.
    let own;
    let cluster = match std::env::var(POSTGRES_ENV).ok().filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => {
            own = gateway_test_support::pg_cluster::Cluster::start(&[])
                .map_err(|e| anyhow::anyhow!("starting a PostgreSQL cluster: {e}"))?;
            own.url()
        }
    };
    let bin = std::env::current_exe()?
        .parent()
        .context("the bench binary's folder")?
        .join("gateway-controller");
    if !bin.exists() {
        bail!(
            "{} is missing: `cargo build --release -p controller` (cargo xtask bench does)",
            bin.display()
        );
    }
    let agents = 1000;
    let (changes, rounds) = if quick { (10, 4) } else { (30, 12) };
    let dir = std::env::temp_dir().join(format!("zt-bench-ha-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut summary = Summary {
        agents,
        ..Summary::default()
    };
    let result = rt.block_on(async {
        // PostgreSQL, three controllers.
        let db = fresh_database(&cluster)?;
        let pg_dir = dir.join("pg");
        std::fs::create_dir_all(&pg_dir)?;
        progress(&format!(
            "ha: 3 controllers on PostgreSQL, enrolling {agents} agents"
        ));
        let mut fleet =
            Fleet::start(&bin, &pg_dir, &db, 3, agents, &mut summary, "postgres").await?;
        progress(&format!(
            "ha: {changes} changes through each controller in turn"
        ));
        summary
            .delivery
            .push(delivery(&fleet, "postgres", changes).await?);
        progress(&format!("ha: {rounds} rounds of kill -9 mid-apply"));
        summary.kill = Some(kill_rounds(&mut fleet, rounds).await?);
        fleet.stop().await;
        // SQLite, one controller.
        let lite_dir = dir.join("sqlite");
        std::fs::create_dir_all(&lite_dir)?;
        let file = lite_dir
            .join("controller.db")
            .to_string_lossy()
            .into_owned();
        progress(&format!(
            "ha: 1 controller on SQLite, enrolling {agents} agents"
        ));
        let fleet = Fleet::start(&bin, &lite_dir, &file, 1, agents, &mut summary, "sqlite").await?;
        summary
            .delivery
            .push(delivery(&fleet, "sqlite", changes).await?);
        fleet.stop().await;
        Ok::<_, anyhow::Error>(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    for d in &summary.delivery {
        progress(&format!(
            "ha: {} x{}: acknowledged p50 {:.1} ms p99 {:.1} ms (apply p50 {:.1} ms), missing {}",
            d.store,
            d.controllers,
            d.acknowledged.p50_ms,
            d.acknowledged.p99_ms,
            d.apply.p50_ms,
            d.missing
        ));
    }
    *out = Some(summary);
    result
}

/// A new database in the cluster (the bench's own; it goes with the cluster).
fn fresh_database(cluster: &str) -> Result<String> {
    let name = format!("bench_ha_{}", std::process::id());
    let conn = controller::store::Db::parse(cluster)
        .and_then(|d| d.connect())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    conn.sql()
        .batch(&format!("CREATE DATABASE {name}"))
        .map_err(|e| anyhow::anyhow!("creating the database {name}: {e}"))?;
    match cluster.rsplit_once('/') {
        Some((base, _)) => Ok(format!("{base}/{name}")),
        None => bail!("{cluster}: not a postgres://.../DATABASE URL"),
    }
}
