//! Peer changes through the control plane: a real controller (in this process, plaintext
//! gRPC on 127.0.0.1) and 200 simulated agents (one connector, 199 devices, each enrolled
//! with its own WireGuard key and watching its view). Each round grants one more device a
//! resource behind the connector (CreateObject of an `[[allow]]`) and times, from the call,
//! until both ends hold each other as a peer: the connector's view has the device's key and
//! the device's view has the connector. What the agent adds after that (setting the peer:
//! microseconds) and the first handshake (see the handshake figures) is not in this number.

use crate::{Opts, progress};
use anyhow::{Context as _, Result, bail};
use gateway_proto::{apply_delta, v1, v1::watch_response::Update, view_from_wire};
use policy_compiler::{HostView, WgKey};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerChange {
    pub agents: usize,
    pub rounds: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

const DEVICES: usize = 199;

fn key(i: usize) -> WgKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    k[31] = 0x5a;
    WgKey(k)
}

fn policy() -> String {
    let mut s = format!(
        "[[remote_network]]\nname = \"corp\"\ncidrs = [\"198.18.1.0/24\"]\nconnectors = [\"conn\"]\n\n\
         [[connector]]\nname = \"conn\"\npublic_key = \"{}\"\nendpoint = \"192.0.2.1:51820\"\n\n\
         [[resource]]\nname = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"443\"]\n\n",
        key(10_000)
    );
    for i in 0..DEVICES {
        s.push_str(&format!(
            "[[user]]\nemail = \"u{i}@example.com\"\n\n[[device]]\nname = \"d{i}\"\nowner = \"u{i}@example.com\"\naddress = \"100.64.{}.{}\"\n\n",
            i / 200,
            i % 200 + 1
        ));
    }
    s
}

/// One watching agent: the views it builds are sent to the measuring task.
async fn watcher(
    url: String,
    auth: v1::AgentAuth,
    index: usize,
    tx: mpsc::UnboundedSender<(usize, HostView)>,
) -> Result<()> {
    let ch = tonic::transport::Channel::from_shared(url)?
        .connect()
        .await?;
    let mut client = v1::agent_client::AgentClient::new(ch);
    let mut stream = client
        .watch(v1::WatchRequest {
            auth: Some(auth),
            generation: 0,
        })
        .await?
        .into_inner();
    let mut view: Option<HostView> = None;
    while let Some(m) = stream.message().await? {
        match m.update {
            Some(Update::Snapshot(v)) => view = Some(view_from_wire(&v)?),
            Some(Update::Delta(d)) => {
                let v = view.as_mut().context("a delta before a snapshot")?;
                apply_delta(v, &d)?;
            }
            None => {}
        }
        if let Some(v) = &view {
            let _ = tx.send((index, v.clone()));
        }
    }
    Ok(())
}

pub fn run(opts: &Opts, out: &mut Option<PeerChange>) -> Result<()> {
    let rounds = if opts.quick { 20 } else { 100 };
    let dir = std::env::temp_dir().join(format!("zt-bench-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let local = crate::controller_suite::Local::start(&dir).await?;
        let (url, ch) = (local.url.clone(), local.channel.clone());
        let mut admin = local.admin();
        admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: policy(),
                file_name: "policy.toml".into(),
                dry_run: false,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .context("applying the policy")?;
        // Index 0: the connector; 1..=199: devices d0..d198.
        let hosts: Vec<(String, WgKey)> = std::iter::once(("connector:conn".to_string(), key(10_000)))
            .chain((0..DEVICES).map(|i| (format!("device:d{i}"), key(i))))
            .collect();
        let mut agent = v1::agent_client::AgentClient::new(ch);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (i, (host, k)) in hosts.iter().enumerate() {
            let auth = crate::controller_suite::enroll(
                &mut admin,
                &mut agent,
                host,
                &format!("bench-{i}"),
                &k.to_string(),
            )
            .await?;
            tokio::spawn(watcher(
                url.clone(),
                auth,
                i,
                tx.clone(),
            ));
        }
        let agents = hosts.len();
        progress(&format!("peers: {agents} agents enrolled and watching"));
        // Everyone has a first view.
        let mut seen = vec![false; agents];
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.iter().any(|s| !s) {
            let (i, _) = tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .context("agents' first views")?
                .context("watchers ended")?;
            seen[i] = true;
        }
        let mut ms = Vec::new();
        for r in 0..rounds.min(DEVICES) {
            let dev_key = key(r);
            let conn_key = key(10_000);
            let t0 = Instant::now();
            admin
                .create_object(v1::CreateObjectRequest {
                    object: Some(v1::PolicyObject {
                        kind: v1::ObjectKind::Grant as i32,
                        name: format!("g{r}"),
                        toml: format!(
                            "[[allow]]\nname = \"g{r}\"\nprincipals = [\"u{r}@example.com\"]\nresources = [\"web\"]\n"
                        ),
                    }),
                    expected_revision: None,
                    dry_run: false,
                    skip_tests: false,
                })
                .await
                .context("granting")?;
            let (mut conn_ok, mut dev_ok) = (false, false);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !(conn_ok && dev_ok) {
                let (i, v) = tokio::time::timeout_at(deadline.into(), rx.recv())
                    .await
                    .context("the peer change did not arrive within 10 s")?
                    .context("watchers ended")?;
                if i == 0 && v.peers.iter().any(|p| p.public_key == dev_key) {
                    conn_ok = true;
                }
                if i == r + 1 && v.peers.iter().any(|p| p.public_key == conn_key) {
                    dev_ok = true;
                }
            }
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        local.stop().await?;
        if ms.is_empty() {
            bail!("no rounds");
        }
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
        Ok::<_, anyhow::Error>(PeerChange {
            agents,
            rounds: ms.len(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: ms[ms.len() - 1],
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    progress(&format!(
        "peers: grant -> both peers, {} agents: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.agents, r.p50_ms, r.p99_ms, r.max_ms
    ));
    *out = Some(r);
    Ok(())
}
