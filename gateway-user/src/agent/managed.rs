//! Managed mode: the agent enrolls with the controller once, then watches its host's
//! compiled view (a snapshot, then deltas, each with a generation), applies every update
//! through the same atomic writer as standalone mode, acknowledges it, and streams its
//! connection events up. When the controller is unreachable it keeps enforcing the last
//! policy and reconnects with backoff, resuming from the generation it has.
//!
//! Transport: with `ca_file` in `[controller]` (production), TLS to an `https://` URL
//! that trusts only the deployment's CA; without, plaintext `http://` to a loopback
//! address only (tests). The agent authenticates with the credential it received at
//! enrollment, in every call.
//!
//! WireGuard: the agent registers its public key at enrollment ([`enroll`]) and when it
//! rotates it ([`rotate_key`]); its view carries its peers (`HostView::peers`, rebuilt
//! from snapshots and deltas like the map entries) and its own overlay addresses
//! (`HostView::tunnel_addresses`).

use super::config::ControllerConfig;
use anyhow::{Context as _, Result, anyhow, bail};
use gateway_proto::v1::{
    self, AckRequest, AgentAuth, EnrollRequest, ReportEventsRequest, RotateKeyRequest,
    WatchRequest, agent_client::AgentClient, watch_response::Update as WireUpdate,
};
use policy_compiler::{HostView, WgKey};
use serde::{Deserialize, Serialize};
use std::{collections::VecDeque, path::Path, time::Duration};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// What enrollment gave this agent; kept in `identity_file` (mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub agent_id: String,
    pub credential: String,
    /// `connector:NAME` or `device:NAME`.
    pub host: String,
}

impl Identity {
    fn auth(&self) -> AgentAuth {
        AgentAuth {
            agent_id: self.agent_id.clone(),
            credential: self.credential.clone(),
        }
    }
}

/// A view to apply; the main loop answers on `done` once it is live in the kernel.
pub struct Update {
    pub generation: u64,
    pub view: HostView,
    pub done: oneshot::Sender<Result<(), String>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Events kept while the controller is unreachable (oldest dropped beyond).
const EVENT_BUFFER: usize = 50_000;

/// Writes the identity atomically: a new temporary file (mode 0600, `O_EXCL`: never
/// through a file or link someone else placed there) renamed over the identity file;
/// the folder is created mode 0700.
fn save_identity(path: &Path, id: &Identity) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    // A leftover of a crashed run (ours: same name); unlinking never follows a link.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, serde_json::to_string_pretty(id)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Where a managed agent keeps the controller's generation of the policy it last wrote
/// (next to the identity: `<identity_file>.generation`), for `gateway-agent status`.
pub fn generation_file(cfg: &ControllerConfig) -> std::path::PathBuf {
    let mut p = cfg.identity_file.as_os_str().to_owned();
    p.push(".generation");
    std::path::PathBuf::from(p)
}

/// What [`generation_file`] holds.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Generations {
    /// The controller's generation (`gatewayctl agents`).
    generation: u64,
    /// The agent's own counter in the kernel's `ACTIVE` map when it wrote that policy.
    local_generation: u32,
}

/// Records that controller generation `generation` is in the kernel as local generation
/// `local` (written to a temporary file, then renamed over the old one).
pub fn save_generation(path: &Path, generation: u64, local: u32) -> Result<()> {
    let text = serde_json::to_string(&Generations {
        generation,
        local_generation: local,
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("recording the policy generation in {}", path.display()));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The controller's generation of the policy in the kernel, if `path` recorded it for
/// local generation `local` (none: not recorded, or another policy was written since).
pub fn read_generation(path: &Path, local: u32) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let g: Generations = serde_json::from_str(&text).ok()?;
    (g.local_generation == local).then_some(g.generation)
}

/// How to reach the controller: its URLs (`url`, then `fallback_urls`), which one is in
/// use, and, for `https://`, the pinned CA certificate. Clones share the one in use, so
/// the watch and the event report follow the same controller.
#[derive(Clone, Debug)]
pub struct Link {
    urls: Vec<String>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ca: Option<Vec<u8>>,
}

impl Link {
    /// Reads `ca_file` (if any) from the configuration. Plaintext (no CA) is refused
    /// unless the URL is a loopback address.
    pub fn new(cfg: &ControllerConfig) -> Result<Link> {
        for url in cfg.urls() {
            if cfg.ca_file.is_none() && !gateway_proto::plaintext_allowed(url) {
                bail!(
                    "`{url}`: plaintext is for loopback addresses only; use https:// with `ca_file`"
                );
            }
        }
        let ca = match &cfg.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading the controller CA {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Link {
            urls: cfg.urls().map(str::to_string).collect(),
            current: Default::default(),
            ca,
        })
    }

    /// The URL of the controller in use (the last one that answered).
    pub fn url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.urls.get(i).map_or("", String::as_str)
    }

    /// A client of the controller in use or, when it does not answer, of the next one
    /// that does (in the configured order, wrapping around); that one is in use after.
    /// With one URL this is [`Link::connect_to`] of it.
    async fn connect(&self) -> Result<AgentClient<Channel>> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.urls.len().max(1);
        let start = self.current.load(Relaxed) % n;
        // With somewhere else to go, give up on an address that does not answer sooner.
        let timeout = Duration::from_secs(if n > 1 { 3 } else { 10 });
        let mut failed = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let Some(url) = self.urls.get(i) else {
                break;
            };
            match self.connect_to(url, timeout).await {
                Ok(client) => {
                    if i != start {
                        self.current.store(i, Relaxed);
                        tracing::warn!(
                            controller = %url,
                            unreachable = %failed.join("; "),
                            "switched to another controller"
                        );
                    }
                    return Ok(client);
                }
                Err(e) => failed.push(format!("{url}: {e:#}")),
            }
        }
        if n == 1 {
            bail!("{}", failed.join("; "));
        }
        bail!("no controller answers: {}", failed.join("; "))
    }

    /// A client of `url`: TLS with the pinned CA for https URLs (refused without one),
    /// plaintext for http URLs (tests).
    async fn connect_to(&self, url: &str, timeout: Duration) -> Result<AgentClient<Channel>> {
        let mut ep = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("invalid controller URL `{url}`"))?
            .connect_timeout(timeout);
        match &self.ca {
            Some(ca) => {
                ep = ep.tls_config(
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.clone())),
                )?;
            }
            None if url.starts_with("https://") => {
                bail!("`{url}` is https but no CA is pinned for it (`ca_file`)")
            }
            None => {}
        }
        Ok(AgentClient::new(ep.connect().await?))
    }
}

/// The stored identity, or a new one from the enrollment token (`enrollment_token` or
/// `enrollment_token_file`, see [`enroll`]). The identity's host must be the host this
/// agent is configured as; the controller refuses a token for another host without using
/// it up. Enrolling needs the agent's WireGuard public key (`public_key`): without one,
/// an agent that is not enrolled yet stops with an error saying so.
pub async fn identity(
    link: &Link,
    cfg: &ControllerConfig,
    host: &str,
    public_key: Option<&WgKey>,
) -> Result<Identity> {
    if cfg.identity_file.exists() {
        let text = std::fs::read_to_string(&cfg.identity_file)
            .with_context(|| format!("reading {}", cfg.identity_file.display()))?;
        let id: Identity = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", cfg.identity_file.display()))?;
        if id.host != host {
            bail!(
                "{} holds the identity of {}, but this agent is configured as {host}",
                cfg.identity_file.display(),
                id.host
            );
        }
        return Ok(id);
    }
    enroll(link, cfg, host, public_key).await
}

/// Enrolls with the token of `[controller]` (`enrollment_token` or
/// `enrollment_token_file`), registering `public_key` as this agent's WireGuard key (none:
/// an agent without a tunnel), and
/// stores the identity in `identity_file`. The controller refuses (and leaves the token
/// unused) a token for another host than `host`, and a key that is malformed or already
/// used by another agent or host.
pub async fn enroll(
    link: &Link,
    cfg: &ControllerConfig,
    host: &str,
    public_key: Option<&WgKey>,
) -> Result<Identity> {
    let token = cfg.token()?;
    let token = token.as_deref().ok_or_else(|| {
        anyhow!(
            "not enrolled yet ({} does not exist) and no `enrollment_token` or \
             `enrollment_token_file` in [controller]",
            cfg.identity_file.display()
        )
    })?;
    let configured =
        gateway_proto::parse_host(host).map_err(|e| anyhow!("this agent's host `{host}`: {e}"))?;
    let mut client = link.connect().await.with_context(|| {
        format!(
            "connecting to the controller at {}",
            cfg.urls().collect::<Vec<_>>().join(" or ")
        )
    })?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let resp = client
        .enroll(EnrollRequest {
            token: token.to_string(),
            hostname,
            host: Some(gateway_proto::host_to_wire(&configured)),
            public_key: public_key.map(ToString::to_string).unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow!("enrollment refused: {}: {}", code(&s), s.message()))?
        .into_inner();
    let wire_host = resp.host.context("enrollment answer without a host")?;
    let enrolled = gateway_proto::host_name(&gateway_proto::host_from_wire(&wire_host)?);
    if enrolled != host {
        bail!("the token enrolls {enrolled}, but this agent is configured as {host}");
    }
    let id = Identity {
        agent_id: resp.agent_id,
        credential: resp.credential,
        host: enrolled,
    };
    save_identity(&cfg.identity_file, &id)?;
    match public_key {
        Some(k) => {
            tracing::info!(agent_id = %id.agent_id, host = %id.host, public_key = %k, "enrolled")
        }
        None => {
            tracing::info!(agent_id = %id.agent_id, host = %id.host, "enrolled (no tunnel key)")
        }
    }
    Ok(id)
}

/// Registers `public_key` as this agent's new WireGuard key. The controller drops the
/// old key from every peer's view in the same step as it adds the new one, so call this
/// only once the tunnel answers with the new private key. Returns the host's generation
/// after the change (the agent's own view does not change by a rotation).
pub async fn rotate_key(link: &Link, id: &Identity, public_key: &WgKey) -> Result<u64> {
    let mut client = link.connect().await.context("connecting")?;
    let resp = client
        .rotate_key(RotateKeyRequest {
            auth: Some(id.auth()),
            public_key: public_key.to_string(),
        })
        .await
        .map_err(|s| anyhow!("key rotation refused: {}: {}", code(&s), s.message()))?
        .into_inner();
    tracing::info!(agent_id = %id.agent_id, public_key = %public_key, "WireGuard key rotated");
    Ok(resp.generation)
}

fn code(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

/// Watches the view forever: reconnects with backoff, resuming from the last applied
/// generation, and passes every update to the main loop through `tx`.
pub async fn watch(link: Link, id: Identity, tx: mpsc::Sender<Update>) {
    let mut view: Option<HostView> = None;
    let mut generation = 0u64;
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = watch_once(&link, &id, &mut view, &mut generation, &tx, &mut backoff).await;
        let url = link.url();
        match result {
            Ok(()) => tracing::warn!(controller = %url, "the controller closed the watch stream"),
            Err(e) => tracing::warn!(
                controller = %url,
                generation,
                retry_ms = backoff.as_millis() as u64,
                "{e:#}; enforcing the last policy and retrying"
            ),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn watch_once(
    link: &Link,
    id: &Identity,
    view: &mut Option<HostView>,
    generation: &mut u64,
    tx: &mpsc::Sender<Update>,
    backoff: &mut Duration,
) -> Result<()> {
    let mut client = link.connect().await.context("connecting")?;
    let mut stream = client
        .watch(WatchRequest {
            auth: Some(id.auth()),
            generation: *generation,
        })
        .await
        .map_err(|s| anyhow!("watch refused: {}: {}", code(&s), s.message()))?
        .into_inner();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| anyhow!("watch stream: {}: {}", code(&s), s.message()))?
    {
        let next = match msg.update {
            Some(WireUpdate::Snapshot(v)) => gateway_proto::view_from_wire(&v)?,
            Some(WireUpdate::Delta(d)) => {
                let base = view
                    .as_ref()
                    .filter(|_| msg.base_generation == *generation)
                    .ok_or_else(|| {
                        anyhow!(
                            "delta for generation {} on top of {} but this agent has {}",
                            msg.generation,
                            msg.base_generation,
                            generation
                        )
                    })?;
                let mut v = base.clone();
                gateway_proto::apply_delta(&mut v, &d)?;
                v
            }
            None => bail!(
                "update {} carries neither snapshot nor delta",
                msg.generation
            ),
        };
        let (done, applied) = oneshot::channel();
        tx.send(Update {
            generation: msg.generation,
            view: next.clone(),
            done,
        })
        .await
        .map_err(|_| anyhow!("agent shutting down"))?;
        match applied.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("applying generation {} failed: {e}", msg.generation),
            Err(_) => bail!("agent shutting down"),
        }
        *view = Some(next);
        *generation = msg.generation;
        *backoff = BACKOFF_MIN;
        client
            .ack(AckRequest {
                auth: Some(id.auth()),
                generation: msg.generation,
            })
            .await
            .map_err(|s| anyhow!("ack refused: {}: {}", code(&s), s.message()))?;
    }
    Ok(())
}

/// Applies a view from the controller and answers the watcher (which then acknowledges
/// the generation). A failure leaves the previous policy in force.
/// The controller's generation is the one users see (`gatewayctl agents`, `status`,
/// metrics); the writer's own counter is logged as `local_generation`, and kept with the
/// controller's in `generation_file` so that `status` can name both.
pub(super) fn apply_update(
    dp: &mut crate::Dataplane,
    writer: &mut crate::writer::PolicyWriter,
    update: Update,
    metrics: &super::metrics::Shared,
    generation_file: &Option<std::path::PathBuf>,
) -> Option<super::Active> {
    let started = std::time::Instant::now();
    match writer.apply(&mut dp.policy, &update.view) {
        Ok(stats) => {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                generation = update.generation,
                local_generation = stats.generation,
                map_writes = stats.written + stats.deleted,
                ms = secs * 1e3,
                "policy from the controller applied"
            );
            if let Some(f) = generation_file
                && let Err(e) = save_generation(f, update.generation, stats.generation)
            {
                tracing::warn!(
                    "{e:#}; `gateway-agent status` will not know generation {}",
                    update.generation
                );
            }
            if let Ok(mut m) = metrics.lock() {
                m.observe_apply(secs);
                m.last_apply_unix = crate::writer::unix_now() as f64;
                m.controller_generation = Some(update.generation);
                m.generation = update.generation;
                m.local_generation = stats.generation;
            }
            let _ = update.done.send(Ok(()));
            Some(super::Active {
                view: update.view,
                source: None,
            })
        }
        Err(e) => {
            tracing::error!(
                generation = update.generation,
                "applying the controller's policy failed, the previous policy stays in force: {e:#}"
            );
            if let Ok(mut m) = metrics.lock() {
                m.policy_errors += 1;
            }
            let _ = update.done.send(Err(format!("{e:#}")));
            None
        }
    }
}

/// The wire form of one of the agent's own JSON log records.
pub fn wire_event(rec: &serde_json::Value) -> v1::ConnectionEvent {
    let s = |k: &str| rec[k].as_str().map(str::to_string);
    let u32_ = |k: &str| rec[k].as_u64().and_then(|v| u32::try_from(v).ok());
    let u64_ = |k: &str| rec[k].as_u64();
    v1::ConnectionEvent {
        timestamp: s("timestamp").unwrap_or_default(),
        event: s("event").unwrap_or_default(),
        verdict: s("verdict").unwrap_or_default(),
        reason: s("reason").unwrap_or_default(),
        user: s("user"),
        device: s("device"),
        service_account: s("service_account"),
        public_ip: s("public_ip"),
        src_ip: s("src_ip"),
        src_port: u32_("src_port"),
        resource: s("resource"),
        dst_ip: s("dst_ip"),
        protocol: s("protocol"),
        dst_port: u32_("dst_port"),
        connector: s("connector"),
        remote_network: s("remote_network"),
        rule: s("rule"),
        rule_id: u32_("rule_id").unwrap_or(0),
        host: s("host").unwrap_or_default(),
        packets: u64_("packets"),
        bytes: u64_("bytes"),
        reply_packets: u64_("reply_packets"),
        reply_bytes: u64_("reply_bytes"),
        duration_ms: u64_("duration_ms"),
    }
}

/// Streams connection events to the controller in batches; while it is unreachable,
/// events wait in a bounded buffer (the local log has every one in any case).
pub async fn report(link: Link, id: Identity, mut rx: mpsc::Receiver<v1::ConnectionEvent>) {
    let mut pending: VecDeque<v1::ConnectionEvent> = VecDeque::new();
    let mut dropped = 0u64;
    let mut backoff = BACKOFF_MIN;
    let mut client: Option<AgentClient<Channel>> = None;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(ev) => pending.push_back(ev),
                None => return,
            }
        }
        // Gather what else is waiting, up to one batch.
        while pending.len() < 1024 {
            match rx.try_recv() {
                Ok(ev) => pending.push_back(ev),
                Err(_) => break,
            }
        }
        while pending.len() > EVENT_BUFFER {
            pending.pop_front();
            dropped += 1;
        }
        if client.is_none() {
            client = link.connect().await.ok();
        }
        let batch: Vec<_> = pending.iter().take(1024).cloned().collect();
        let sent = match client.as_mut() {
            Some(c) => c
                .report_events(tokio_stream::iter([ReportEventsRequest {
                    auth: Some(id.auth()),
                    events: batch.clone(),
                }]))
                .await
                .is_ok(),
            None => false,
        };
        if sent {
            pending.drain(..batch.len());
            backoff = BACKOFF_MIN;
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "events not reported to the controller (buffer full)"
                );
                dropped = 0;
            }
        } else {
            client = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_generation_counts_only_for_the_policy_it_was_written_with() {
        let d = std::env::temp_dir().join(format!("zgw-generation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("identity.json.generation");
        assert_eq!(read_generation(&f, 10), None, "nothing recorded yet");
        save_generation(&f, 3, 10).unwrap();
        assert_eq!(read_generation(&f, 10), Some(3));
        assert_eq!(
            read_generation(&f, 11),
            None,
            "another policy was written since"
        );
        save_generation(&f, 4, 11).unwrap();
        assert_eq!(read_generation(&f, 11), Some(4));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_identity_is_never_written_through_a_planted_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = std::env::temp_dir().join(format!("zgw-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("identity.json");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // Links where a temporary file could be expected: the old fixed name and ours.
        let mut ours = path.as_os_str().to_owned();
        ours.push(format!(".tmp-{}", std::process::id()));
        for tmp in [path.with_extension("tmp"), std::path::PathBuf::from(ours)] {
            std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        }
        let id = Identity {
            agent_id: "agent-1".into(),
            credential: "zt-agent-secret".into(),
            host: "device:x".into(),
        };
        save_identity(&path, &id).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("zt-agent-secret")
        );
        assert_eq!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
