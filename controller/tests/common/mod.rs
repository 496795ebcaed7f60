//! A real controller on 127.0.0.1 (ephemeral port) with a temporary database, and real
//! tonic clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use controller::auth::AuthedAdminClient;
use gateway_proto::v1::{self, admin_client::AdminClient, agent_client::AgentClient};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const DEMO: &str = include_str!("../../../examples/demo.toml");

pub struct Controller {
    pub addr: SocketAddr,
    pub state: Arc<controller::State>,
    /// An admin API key.
    pub admin_key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Controller {
    pub async fn start(db: &Path) -> Controller {
        let state = Arc::new(controller::State::open(db, 30).expect("open state"));
        let admin_key = state
            .bootstrap_admin_key(&format!("test-admin-{}", controller::random_hex(4)))
            .expect("admin key");
        let (tx, rx) = oneshot::channel();
        let (addr, task) =
            controller::spawn("127.0.0.1:0".parse().unwrap(), state.clone(), async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        Controller {
            addr,
            state,
            admin_key,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect")
    }

    /// An Admin client with an admin API key.
    pub async fn admin(&self) -> AuthedAdminClient {
        controller::auth::admin_client(self.channel().await, &self.admin_key)
    }

    /// An Admin client sending `secret`.
    pub async fn admin_as(&self, secret: &str) -> AuthedAdminClient {
        controller::auth::admin_client(self.channel().await, secret)
    }

    /// An Admin client without credentials.
    pub async fn anonymous(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn agent(&self) -> AgentClient<Channel> {
        AgentClient::new(self.channel().await)
    }

    /// Stops the server and waits for it (bounded).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.state.close_watchers();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server stops in time")
                .expect("join")
                .expect("server ok");
        }
    }
}

pub fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("controller.db");
    (d, p)
}

pub async fn apply(admin: &mut AuthedAdminClient, text: &str) -> v1::Plan {
    admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy_toml: text.into(),
            file_name: "policy.toml".into(),
            dry_run: false,
            expected_revision: None,
            skip_tests: false,
        })
        .await
        .expect("apply")
        .into_inner()
        .plan
        .unwrap()
}

/// Enrolls an agent for `host`; returns its auth.
pub async fn enroll(ctl: &Controller, host: &str) -> v1::AgentAuth {
    let mut admin = ctl.admin().await;
    let tok = admin
        .create_enrollment_token(v1::CreateEnrollmentTokenRequest {
            host: host.into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let r = ctl
        .agent()
        .await
        .enroll(v1::EnrollRequest {
            token: tok.token,
            hostname: format!("test-{host}"),
            public_key: wg_key(),
            host: None,
        })
        .await
        .unwrap()
        .into_inner();
    v1::AgentAuth {
        agent_id: r.agent_id,
        credential: r.credential,
    }
}

/// The next watch message, within `secs`.
pub async fn next(
    s: &mut tonic::Streaming<v1::WatchResponse>,
    secs: u64,
) -> Option<v1::WatchResponse> {
    tokio::time::timeout(Duration::from_secs(secs), s.message())
        .await
        .ok()
        .and_then(|r| r.expect("stream ok"))
}

/// Opens `auth`'s watch stream from generation 0 and reads its snapshot: the stream, the
/// view and its generation.
/// Opens an agent's watch stream from `generation` on `agent`'s connection.
#[allow(dead_code)] // not every test binary watches
pub async fn open_watch(
    agent: &mut AgentClient<Channel>,
    auth: &v1::AgentAuth,
    generation: u64,
) -> tonic::Streaming<v1::WatchResponse> {
    agent
        .watch(v1::WatchRequest {
            auth: Some(auth.clone()),
            generation,
        })
        .await
        .unwrap()
        .into_inner()
}

#[allow(dead_code)] // not every test binary watches
pub async fn watch_snapshot(
    ctl: &Controller,
    auth: &v1::AgentAuth,
) -> (
    tonic::Streaming<v1::WatchResponse>,
    policy_compiler::HostView,
    u64,
) {
    let mut stream = open_watch(&mut ctl.agent().await, auth, 0).await;
    let m = next(&mut stream, 5).await.expect("snapshot");
    assert_eq!(m.base_generation, 0);
    let Some(v1::watch_response::Update::Snapshot(v)) = m.update else {
        panic!("snapshot expected")
    };
    (
        stream,
        gateway_proto::view_from_wire(&v).unwrap(),
        m.generation,
    )
}

pub fn now() -> i64 {
    controller::now_unix()
}

/// The audit hash of databases from before the key (b4ae6b8): SHA-256 without a key,
/// which anyone can compute.
#[allow(clippy::too_many_arguments)]
pub fn unkeyed_hash(
    id: u64,
    time_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    before: &str,
    after: &str,
    revision: u64,
    prev_hash: &str,
) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"ztgw-audit-v1");
    for f in [
        id.to_string().as_str(),
        time_ms.to_string().as_str(),
        actor,
        action,
        target,
        before,
        after,
        revision.to_string().as_str(),
        prev_hash,
    ] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A WireGuard public key no other call in this test process returns.
pub fn wg_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut b = [0x42u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    policy_compiler::WgKey(b).to_string()
}
