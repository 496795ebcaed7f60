//! The control plane under a mixed load: 20 clients for 30 s (5 s with `--quick`)
//! against a real controller (in this process, plaintext gRPC on 127.0.0.1, SQLite in a
//! temporary folder) holding a ~1 KB policy. Each client has its own connection and
//! loops over: GetPolicy (6 of 20 calls), ListObjects (4), GetObject (2), Explain (2),
//! WhoAmI (2), UpdateObject of a resource's ports (2: every host is recompiled, the
//! change committed and audited), ReportEvents of 10 events (2). Latencies are taken
//! per call on the client side.

use crate::{Opts, progress};
use anyhow::{Context as _, Result};
use gateway_proto::v1;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latency figures of one kind of call.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub calls: usize,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub clients: usize,
    pub seconds: f64,
    pub policy_bytes: usize,
    /// Every read (GetPolicy, ListObjects, GetObject, Explain, WhoAmI).
    pub reads: Stats,
    /// GetPolicy alone: the ~1 KB policy text.
    pub get_policy: Stats,
    /// UpdateObject (a policy change).
    pub writes: Stats,
    /// ReportEvents (10 events a call).
    pub events: Stats,
    /// Every kind of call on its own.
    pub by_call: std::collections::BTreeMap<String, Stats>,
    /// Calls that failed (should be 0).
    pub errors: usize,
}

const DEMO: &str = include_str!("../../examples/demo.toml");

/// The demo policy without its tests and comments: about 1 KB.
pub(crate) fn policy() -> String {
    DEMO.split("# ---------------------------------------------------------------- tests")
        .next()
        .unwrap_or(DEMO)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

pub(crate) fn stats(mut ms: Vec<f64>, seconds: f64) -> Stats {
    if ms.is_empty() {
        return Stats::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Stats {
        calls: ms.len(),
        per_sec: ms.len() as f64 / seconds,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: ms[ms.len() - 1],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    GetPolicy,
    ListObjects,
    GetObject,
    Explain,
    WhoAmI,
    Update,
    Report,
}

/// One client's sequence of calls (repeated).
const MIX: [Op; 20] = [
    Op::GetPolicy,
    Op::ListObjects,
    Op::GetPolicy,
    Op::GetObject,
    Op::GetPolicy,
    Op::Explain,
    Op::ListObjects,
    Op::WhoAmI,
    Op::GetPolicy,
    Op::Update,
    Op::GetPolicy,
    Op::ListObjects,
    Op::GetObject,
    Op::Report,
    Op::GetPolicy,
    Op::Explain,
    Op::ListObjects,
    Op::WhoAmI,
    Op::Update,
    Op::Report,
];

pub(crate) fn event() -> v1::ConnectionEvent {
    v1::ConnectionEvent {
        timestamp: "2026-01-01T10:00:00.000Z".into(),
        event: "flow_start".into(),
        verdict: "allow".into(),
        reason: "granted".into(),
        user: Some("alice@example.com".into()),
        device: Some("alice-laptop".into()),
        src_ip: Some("198.19.1.10".into()),
        src_port: Some(40000),
        resource: Some("web".into()),
        dst_ip: Some("198.18.1.5".into()),
        protocol: Some("tcp".into()),
        dst_port: Some(443),
        connector: Some("demo-connector".into()),
        remote_network: Some("corp".into()),
        rule: Some("engineering-web".into()),
        rule_id: 1,
        ..Default::default()
    }
}

async fn client(
    url: String,
    key: String,
    agent: v1::AgentAuth,
    id: usize,
    until: Instant,
) -> Result<(Vec<(Op, f64)>, usize)> {
    let ch = tonic::transport::Channel::from_shared(url)?
        .connect()
        .await?;
    let mut admin = controller::auth::admin_client(ch.clone(), &key);
    let mut agents = v1::agent_client::AgentClient::new(ch);
    let mut out = Vec::new();
    let mut errors = 0;
    let mut i = id;
    while Instant::now() < until {
        let op = MIX[i % MIX.len()];
        i += 1;
        let t = Instant::now();
        let ok = match op {
            Op::GetPolicy => admin
                .get_policy(v1::GetPolicyRequest::default())
                .await
                .is_ok(),
            Op::ListObjects => admin
                .list_objects(v1::ListObjectsRequest::default())
                .await
                .is_ok(),
            Op::GetObject => admin
                .get_object(v1::GetObjectRequest {
                    kind: v1::ObjectKind::Resource as i32,
                    name: "web".into(),
                })
                .await
                .is_ok(),
            Op::Explain => admin
                .explain(v1::ExplainRequest {
                    from: "alice-laptop".into(),
                    to: "198.18.1.5:443/tcp".into(),
                    at: None,
                })
                .await
                .is_ok(),
            Op::WhoAmI => admin.who_am_i(v1::WhoAmIRequest {}).await.is_ok(),
            Op::Update => {
                let ports = if i.is_multiple_of(2) {
                    "\"443\""
                } else {
                    "\"443\", \"8443\""
                };
                admin
                    .update_object(v1::UpdateObjectRequest {
                        object: Some(v1::PolicyObject {
                            kind: v1::ObjectKind::Resource as i32,
                            name: "web".into(),
                            toml: format!(
                                "name = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [{ports}]\nicmp = true\n"
                            ),
                        }),
                        expected_revision: None,
                        dry_run: false,
                        skip_tests: false,
                    })
                    .await
                    .is_ok()
            }
            Op::Report => agents
                .report_events(tokio_stream::iter([v1::ReportEventsRequest {
                    auth: Some(agent.clone()),
                    events: vec![event(); 10],
                }]))
                .await
                .is_ok_and(|r| r.into_inner().accepted == 10),
        };
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if ok {
            out.push((op, ms));
        } else {
            errors += 1;
        }
    }
    Ok((out, errors))
}

/// Mints an enrollment token for `host` through `admin` and enrolls an agent with it
/// through `agent` (`public_key`: base64, empty for none): the agent's credentials.
pub(crate) async fn enroll(
    admin: &mut controller::auth::AuthedAdminClient,
    agent: &mut v1::agent_client::AgentClient<tonic::transport::Channel>,
    host: &str,
    hostname: &str,
    public_key: &str,
) -> Result<v1::AgentAuth> {
    let token = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: host.into(),
            ttl_seconds: 600,
        })
        .await?
        .into_inner()
        .token;
    let e = agent
        .enroll(v1::EnrollRequest {
            token,
            hostname: hostname.into(),
            public_key: public_key.into(),
            host: None,
        })
        .await?
        .into_inner();
    Ok(v1::AgentAuth {
        agent_id: e.agent_id,
        credential: e.credential,
    })
}

/// A controller in this process (plaintext gRPC on 127.0.0.1, SQLite in `dir`) with an
/// admin key, for the control-plane suites.
pub(crate) struct Local {
    pub state: Arc<controller::State>,
    pub url: String,
    pub channel: tonic::transport::Channel,
    pub admin_key: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Local {
    pub(crate) async fn start(dir: &std::path::Path) -> Result<Local> {
        Local::start_state(
            controller::State::open(dir.join("controller.db"), 30)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
        .await
    }

    /// A controller serving `state`.
    pub(crate) async fn start_state(state: controller::State) -> Result<Local> {
        let state = Arc::new(state);
        let admin_key = state
            .bootstrap_admin_key("bench")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = controller::spawn("127.0.0.1:0".parse()?, state.clone(), async move {
            let _ = stopped.await;
        })
        .await?;
        let url = format!("http://{addr}");
        let channel = tonic::transport::Channel::from_shared(url.clone())?
            .connect()
            .await?;
        Ok(Local {
            state,
            url,
            channel,
            admin_key,
            stop,
            task,
        })
    }

    pub(crate) fn admin(&self) -> controller::auth::AuthedAdminClient {
        controller::auth::admin_client(self.channel.clone(), &self.admin_key)
    }

    pub(crate) async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.state.close_watchers();
        self.task.await??;
        Ok(())
    }
}

pub fn run(opts: &Opts, out: &mut Option<Summary>) -> Result<()> {
    let (clients, seconds) = if opts.quick { (20, 5.0) } else { (20, 30.0) };
    let dir = std::env::temp_dir().join(format!("zt-bench-controller-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let local = Local::start(&dir).await?;
        // The bench is one address making every call: no login or event limits here.
        local.state.set_event_quota(1e9, 1e9);
        let (url, key, ch) = (
            local.url.clone(),
            local.admin_key.clone(),
            local.channel.clone(),
        );
        let mut admin = local.admin();
        let text = policy();
        admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: text,
                file_name: "policy.toml".into(),
                dry_run: false,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .context("applying the policy")?;
        let policy_bytes = admin
            .get_policy(v1::GetPolicyRequest::default())
            .await?
            .into_inner()
            .policy_toml
            .len();
        let agent = enroll(
            &mut admin,
            &mut v1::agent_client::AgentClient::new(ch),
            "connector:demo-connector",
            "bench",
            "aGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGg=",
        )
        .await?;
        progress(&format!(
            "controller: {clients} clients for {seconds:.0} s, policy {policy_bytes} bytes"
        ));
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = (0..clients)
            .map(|id| {
                tokio::spawn(client(
                    url.clone(),
                    key.clone(),
                    agent.clone(),
                    id * 7,
                    until,
                ))
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (calls, e) = t.await??;
            all.extend(calls);
            errors += e;
        }
        let elapsed = start.elapsed().as_secs_f64();
        local.stop().await?;
        let pick = |f: &dyn Fn(Op) -> bool| -> Vec<f64> {
            all.iter()
                .filter(|(op, _)| f(*op))
                .map(|(_, ms)| *ms)
                .collect()
        };
        Ok::<_, anyhow::Error>(Summary {
            clients,
            seconds: elapsed,
            policy_bytes,
            reads: stats(
                pick(&|op| {
                    matches!(
                        op,
                        Op::GetPolicy | Op::ListObjects | Op::GetObject | Op::Explain | Op::WhoAmI
                    )
                }),
                elapsed,
            ),
            get_policy: stats(pick(&|op| op == Op::GetPolicy), elapsed),
            writes: stats(pick(&|op| op == Op::Update), elapsed),
            events: stats(pick(&|op| op == Op::Report), elapsed),
            by_call: [
                Op::GetPolicy,
                Op::ListObjects,
                Op::GetObject,
                Op::Explain,
                Op::WhoAmI,
                Op::Update,
                Op::Report,
            ]
            .into_iter()
            .map(|o| (format!("{o:?}"), stats(pick(&|op| op == o), elapsed)))
            .collect(),
            errors,
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    let s = result?;
    progress(&format!(
        "controller: reads p50 {:.2} ms p99 {:.2} ms ({} calls), GetPolicy p99 {:.2} ms, \
         writes p50 {:.2} ms p99 {:.2} ms ({}), events p99 {:.2} ms, {} errors",
        s.reads.p50_ms,
        s.reads.p99_ms,
        s.reads.calls,
        s.get_policy.p99_ms,
        s.writes.p50_ms,
        s.writes.p99_ms,
        s.writes.calls,
        s.events.p99_ms,
        s.errors
    ));
    *out = Some(s);
    Ok(())
}
