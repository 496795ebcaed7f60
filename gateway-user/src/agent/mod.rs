//! The host agent (`gateway-agent`): loads and pins the programs, re-adopts pinned state,
//! keeps the local policy file applied, and turns ring-buffer events into connection logs
//! and Prometheus metrics.

pub mod attachments;
pub mod config;
pub mod dump;
pub mod flows;
pub mod host_check;
pub mod logs;
pub mod managed;
pub mod metrics;
pub mod names;
pub mod pins;
mod privileges;
mod signals;
pub mod tunnel;

use crate::{
    Dataplane,
    dataplane::drain,
    writer::{BootClock, PolicyWriter, boot_ns, unix_now},
};
use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray, RingBuf};
use config::{Config, LogFormat};
use gateway_common::{
    Event, FlowKey, FlowState, ParseOutcome, Reason, maps,
    policy::{SrcKey, SrcValue},
};
use policy_compiler::HostView;
use serde_json::json;
use std::{
    io::Write as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::{io::unix::AsyncFd, sync::mpsc};

/// A compiled policy in force, with what is needed to notice the next change.
struct Active {
    view: HostView,
    /// Fingerprint of the policy file the view came from (modification time, length,
    /// content).
    source: Option<(SystemTime, u64, String)>,
}

/// Reads, parses and compiles the policy file. Errors come back as one message with every
/// located diagnostic.
fn compile_file(cfg: &Config, now: i64) -> Result<(HostView, String)> {
    let path = cfg
        .policy_file
        .as_ref()
        .context("no policy_file in the configuration")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the policy {}", path.display()))?;
    let file = path.display().to_string();
    let parsed = policy_compiler::parse(&text, &file, now).map_err(|diags| {
        anyhow::anyhow!(
            "the policy has errors:\n{}",
            diags
                .iter()
                .map(|d| format!("  {d}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    for w in &parsed.warnings {
        tracing::warn!("{w}");
    }
    let failing: Vec<String> = policy_compiler::run_tests(&parsed.policy)
        .iter()
        .filter(|t| !t.passed)
        .map(|t| t.render(&parsed.policy))
        .collect();
    if !failing.is_empty() {
        if !cfg.skip_policy_tests {
            bail!(
                "{} of the policy's [[test]] blocks failed (set `skip_policy_tests = true` \
                 in the agent configuration to enforce it anyway):\n{}",
                failing.len(),
                failing
                    .iter()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for l in &failing {
            tracing::warn!("{l} (enforced anyway: skip_policy_tests)");
        }
    }
    let view = policy_compiler::compile(&parsed.policy, &cfg.host(), now)
        .with_context(|| format!("compiling the policy for {}", cfg.host_label()))?;
    Ok((view, text))
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Where connection records go.
struct Sink {
    out: logs::LogOutput,
    format: LogFormat,
    /// With a tunnel: a device's real address and port, from its overlay address.
    endpoints: Option<logs::Endpoints>,
    /// With DNS resources: a flow's name and resolved address.
    names: Option<logs::NameLookup>,
}

impl Sink {
    fn open(cfg: &Config) -> Result<Sink> {
        Ok(Sink {
            out: logs::LogOutput::open(cfg.log_file.as_deref())?,
            format: cfg.log_format,
            endpoints: None,
            names: None,
        })
    }

    fn write(&mut self, ev: &Event, cx: &logs::Context) -> Option<serde_json::Value> {
        let own = logs::record(ev, cx)?;
        let line = match self.format {
            LogFormat::Json => own.clone(),
            LogFormat::Ocsf => logs::ocsf(ev, cx)?,
        };
        if let Err(e) = writeln!(self.out, "{line}") {
            tracing::error!(error = %e, "writing the connection log");
        }
        Some(own)
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

/// `gateway-agent run`: attach, enforce, log, until SIGINT/SIGTERM. Programs stay attached
/// when it exits: enforcement does not depend on the agent.
pub fn run(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Capabilities are per thread: each drops the start's once the agent is ready.
        .on_thread_start(privileges::on_runtime_thread)
        .on_thread_park(privileges::on_runtime_thread)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cfg))
}

async fn run_async(mut cfg: Config) -> Result<()> {
    // What the pin folder holds before anything is touched: a failed start leaves it so.
    let before = pins::snapshot(&pins::resolve(&cfg.pin_dir));
    cfg.pin_dir = pins::prepare(&cfg.pin_dir)?;
    // Held until this function returns: no second agent on these pins meanwhile.
    // Refused by the lock: the pins are the running agent's, and stay untouched.
    let _lock = pins::lock(&cfg.pin_dir)?;
    // Declared after the lock, so dropped (undoing a failed start) while it is held.
    let mut guard = pins::StartGuard {
        pin_dir: cfg.pin_dir.clone(),
        before,
        armed: true,
    };
    // Interfaces exist and their XDP hook is free (or ours), before anything is loaded.
    attachments::check_interfaces(&cfg.xdp_interfaces, &cfg.tc_egress_interfaces, &cfg.pin_dir)?;
    let mut dp = Dataplane::load_pinned(&pins::maps_dir(&cfg.pin_dir))?;
    // The role and tuning go in before anything is attached (programs without a role drop
    // every IP packet). The scan-hash key is drawn afresh: a scanner cannot learn it.
    let mut hash_key = [0u8; 16];
    getrandom::fill(&mut hash_key)
        .map_err(|e| anyhow::anyhow!("drawing the scan-hash key from the OS: {e}"))?;
    let hash_key = [
        u64::from_ne_bytes(hash_key[..8].try_into().unwrap_or_default()),
        u64::from_ne_bytes(hash_key[8..].try_into().unwrap_or_default()),
    ];
    dp.set_config(&cfg.dataplane.kernel_config(cfg.role, hash_key))?;
    // The tunnel fields too, before anything attaches (the handshake limit included).
    pins::write_tunnel_config(&mut dp, &cfg)?;
    // The tunnel key exists before enrollment, which registers its public half.
    let tunnel_key = match &cfg.tunnel {
        Some(t) => Some(crate::tunnel::keys::load_or_create(&t.private_key_file)?),
        None => None,
    };
    let wg_public = tunnel_key
        .as_ref()
        .map(|(pair, _)| policy_compiler::WgKey(*pair.public.as_bytes()));
    let adopted = dp.active_generation()?;
    let clock = BootClock::new();
    let mut writer = PolicyWriter::new(adopted, clock);
    let metrics: metrics::Shared = Arc::default();
    // /metrics, /healthz and /readyz answer from here on; /readyz says what is awaited.
    metrics::listen(&cfg, &metrics).await?;
    metrics::set_not_ready(&metrics, "loading the policy and attaching the programs");
    let generation_file = cfg.controller.as_ref().map(managed::generation_file);

    // The policy goes in before any attachment, so a fresh host never runs the programs
    // on empty maps. On a restart, a broken or unreachable source leaves the pinned policy
    // enforced.
    let now = unix_now();
    let mut managed_rx: Option<mpsc::Receiver<managed::Update>> = None;
    let mut events_tx: Option<mpsc::Sender<gateway_proto::v1::ConnectionEvent>> = None;
    // Where a rotated tunnel key is registered (managed mode).
    let mut registrar: Option<(managed::Link, managed::Identity)> = None;
    let mut active = if let Some(ctl) = &cfg.controller {
        let link = managed::Link::new(ctl)?;
        let was_enrolled = ctl.identity_file.exists();
        let id = managed::identity(&link, ctl, &cfg.host_label(), wg_public.as_ref()).await?;
        // An agent enrolled before it had this key (a new [tunnel], a lost key file)
        // registers it now.
        if let (true, Some((_, true)), Some(k)) = (was_enrolled, &tunnel_key, &wg_public) {
            managed::rotate_key(&link, &id, k)
                .await
                .context("registering the new tunnel key with the controller")?;
        }
        registrar = Some((link.clone(), id.clone()));
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(managed::watch(link.clone(), id.clone(), tx));
        let (etx, erx) = mpsc::channel(65_536);
        tokio::spawn(managed::report(link, id, erx));
        events_tx = Some(etx);
        let first = if adopted == 0 {
            let controllers = ctl.urls().collect::<Vec<_>>().join(" or ");
            tracing::info!(controller = %controllers, "waiting for this host's view");
            metrics::set_not_ready(
                &metrics,
                &format!("waiting for this host's view from the controller at {controllers}"),
            );
            let update = rx.recv().await.context("the controller watch ended")?;
            let first =
                managed::apply_update(&mut dp, &mut writer, update, &metrics, &generation_file);
            if first.is_none() {
                bail!("the controller's first view could not be applied");
            }
            first
        } else {
            // The controller's generation of the pinned policy, when this agent wrote it.
            let known = generation_file
                .as_deref()
                .and_then(|f| managed::read_generation(f, adopted));
            if let (Some(g), Ok(mut m)) = (known, metrics.lock()) {
                m.controller_generation = Some(g);
            }
            tracing::info!(
                generation = known,
                local_generation = adopted,
                "enforcing the pinned policy until the controller sends this host's view"
            );
            None
        };
        managed_rx = Some(rx);
        first
    } else {
        match compile_file(&cfg, now) {
            Ok((view, text)) => {
                let stats = writer.apply(&mut dp.policy, &view)?;
                tracing::info!(
                    generation = stats.generation,
                    entries = stats.entries,
                    map_writes = stats.written + stats.deleted,
                    ms = stats.elapsed.as_secs_f64() * 1e3,
                    "policy applied"
                );
                if let Ok(mut m) = metrics.lock() {
                    m.observe_apply(stats.elapsed.as_secs_f64());
                    m.last_apply_unix = now as f64;
                }
                let fp = cfg.policy_file.as_deref().and_then(fingerprint);
                Some(Active {
                    view,
                    source: fp.map(|(t, l)| (t, l, text)),
                })
            }
            Err(e) if adopted != 0 => {
                tracing::error!(
                    generation = adopted,
                    "{e:#}; the pinned policy stays in force until the file is fixed"
                );
                None
            }
            Err(e) => return Err(e.context("no policy to enforce")),
        }
    };

    // The tunnel device exists before the programs attach to it; its peers come after.
    let mut tunnel = tunnel::AgentTunnel::start(&cfg).await?;
    let attached = pins::attach_all(&mut dp, &cfg)?;
    metrics::record_attachments(&attached, &metrics);
    for (what, how) in &attached {
        match how {
            pins::Attached::New { mode } => tracing::info!(%mode, "attached {what}"),
            pins::Attached::Replaced => {
                tracing::info!("re-adopted {what} (program replaced atomically)")
            }
        }
    }

    host_check::at_start(&cfg, &metrics);

    // DNS resources: the writer's hook and the control channel, before the first tunnel
    // configuration (a device routes its proxy space into the tunnel).
    let kernel_names = match cfg.role {
        config::Role::Connector if tunnel.is_some() => {
            Some(names::kernel_names(&pins::maps_dir(&cfg.pin_dir))?)
        }
        _ => None,
    };
    let mut names = names::AgentNames::start(
        cfg.role,
        cfg.names.as_ref(),
        tunnel.as_mut(),
        kernel_names,
        &mut writer,
    )?;
    if let (Some(t), Some(a)) = (tunnel.as_mut(), active.as_ref()) {
        t.apply(&a.view).await.context("configuring the tunnel")?;
    }
    if let (Some(n), Some(a)) = (names.as_mut(), active.as_ref()) {
        n.after_apply(&a.view).await;
    }
    let mut sink = Sink::open(&cfg)?;
    sink.endpoints = tunnel.as_ref().map(|t| t.endpoint_resolver());
    sink.names = names.as_ref().map(|n| n.lookup());
    let mut reapply_rx = names.as_mut().and_then(|n| n.reapply.take());
    let host = cfg.host_label();
    let rings = dp.take_events().context("event ring buffers")?;
    let register = |rb: RingBuf<MapData>| {
        // SAFETY: the ring buffer owns its fd, which stays open and the same until the
        // `AsyncFd` (which owns the ring buffer) is dropped.
        unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling an event ring buffer: {e}"))
    };
    let mut flow_ring = register(rings.flow)?;
    let mut alert_ring = register(rings.alert)?;
    // Kernel diagnostics (aya-log), when switched on: printed as they come.
    let mut kernel_log = if cfg.dataplane.diagnostics {
        let logger = dp.take_kernel_log()?;
        tracing::warn!("kernel diagnostics on: every drop is logged (not for production)");
        // SAFETY: the logger owns its ring buffer's fd, open until the AsyncFd is dropped.
        Some(
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("polling the kernel diagnostics log: {e}"))?,
        )
    } else {
        None
    };
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.policy_poll_ms.max(50)));
    let mut last_reap = Instant::now();
    let mut reaper = flows::Reaper::default();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // SIGHUP: reopen the connection log and reload the policy file (see `on_sighup`).
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    // From here on the pins are this agent's state: they outlive it.
    guard.armed = false;
    // After everything else: a failed start must not have removed an older layout's maps.
    pins::remove_stale(&cfg.pin_dir);
    refresh_metrics(&dp, &writer, &reaper, &metrics);
    let generation = metrics::user_generation(writer.generation(), &metrics);
    let enforcing = match (cfg.controller.is_some(), generation) {
        (true, 0) => "the pinned policy until the controller's view arrives".to_string(),
        _ => format!("policy generation {generation}"),
    };
    metrics::set_ready(&metrics, &format!("enforcing {enforcing}"));
    tracing::info!(%host, generation, local_generation = writer.generation(), "ready: enforcing");
    // systemd (Type=notify): started once the policy is live and the programs attached.
    signals::notify(&[sd_notify::NotifyState::Ready]);
    // Loaded, attached and live: what only that needed goes.
    if privileges::drop_start_capabilities() {
        tokio::spawn(privileges::drop_on_every_thread());
    }

    loop {
        tokio::select! {
            guard = flow_ring.readable_mut() => {
                let mut guard = guard.context("flow event ring buffer")?;
                let batch = drain(guard.get_inner_mut());
                guard.clear_ready();
                reaper.note_events(&batch, boot_ns());
                if let Some(a) = &active {
                    log_events(&batch, a, &host, clock, &mut sink, &metrics, events_tx.as_ref());
                }
            }
            Some(guard) = kernel_log_ready(&mut kernel_log) => {
                let mut guard = guard.context("kernel diagnostics log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = alert_ring.readable_mut() => {
                let mut guard = guard.context("alert event ring buffer")?;
                let batch = drain(guard.get_inner_mut());
                guard.clear_ready();
                if let Some(a) = &active {
                    log_events(&batch, a, &host, clock, &mut sink, &metrics, events_tx.as_ref());
                }
            }
            Some(done) = next_reapply(&mut reapply_rx) => {
                // The stub answered a new name: its proxy addresses go in with the view in
                // force (the writer's hook adds them), before the answer is sent.
                let r = match &active {
                    Some(a) => writer
                        .apply(&mut dp.policy, &a.view)
                        .map(|_| ())
                        .map_err(|e| format!("{e:#}")),
                    None => Err("no policy in force yet".to_string()),
                };
                let _ = done.send(r);
            }
            Some(update) = next_update(&mut managed_rx) => {
                if let Some(a) = managed::apply_update(&mut dp, &mut writer, update, &metrics, &generation_file) {
                    apply_tunnel(tunnel.as_mut(), &a.view).await;
                    if let Some(n) = names.as_mut() {
                        n.after_apply(&a.view).await;
                    }
                    active = Some(a);
                }
            }
            _ = sighup.recv() => {
                let before = writer.generation();
                signals::on_sighup(&cfg, &mut sink, &mut dp, &mut writer, &mut active, &metrics);
                if writer.generation() != before && let Some(a) = &active {
                    apply_tunnel(tunnel.as_mut(), &a.view).await;
                    if let Some(n) = names.as_mut() {
                        n.after_apply(&a.view).await;
                    }
                }
                signals::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = tick.tick() => {
                if let Ok(mut m) = metrics.lock() {
                    m.health.beat = Some(Instant::now());
                }
                if cfg.policy_file.is_some() {
                    let before = writer.generation();
                    reload_if_changed(&cfg, &mut dp, &mut writer, &mut active, &metrics, false);
                    if writer.generation() != before && let Some(a) = &active {
                        apply_tunnel(tunnel.as_mut(), &a.view).await;
                    if let Some(n) = names.as_mut() {
                        n.after_apply(&a.view).await;
                    }
                    }
                }
                if let Some(t) = tunnel.as_mut()
                    && let Some(pair) = t.check_rotation()
                    && let Some((link, id)) = &registrar
                {
                    let key = policy_compiler::WgKey(*pair.public.as_bytes());
                    // The controller replaces the old key in every peer's view at once.
                    if let Err(e) = managed::rotate_key(link, id, &key).await {
                        tracing::error!(
                            "registering the rotated tunnel key failed: {e:#}; peers keep the \
                             old key until it is registered (retry: gateway-agent rotate-key)"
                        );
                    }
                }
                if last_reap.elapsed() >= Duration::from_secs(2) {
                    last_reap = Instant::now();
                    if let Some(a) = &active {
                        let up = events_tx.as_ref();
                        let mut out = Output { host: &host, clock, sink: &mut sink, metrics: &metrics, upstream: up };
                        reap(&mut dp, &mut reaper, &cfg, a, flow_ring.get_mut(), &mut out);
                    }
                    tend_source_filter(&mut dp);
                    refresh_metrics(&dp, &writer, &reaper, &metrics);
                    if let Some(t) = &tunnel {
                        t.write_status();
                        if let Ok(mut m) = metrics.lock() {
                            m.tunnel = Some(t.metrics());
                        }
                    }
                    if let Some(st) = names.as_ref().and_then(|n| n.stub_stats())
                        && let Ok(mut m) = metrics.lock()
                    {
                        m.dns = Some(st);
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Whatever is still buffered is logged before leaving.
    let mut batch = drain(flow_ring.get_mut());
    batch.extend(drain(alert_ring.get_mut()));
    if let Some(a) = &active {
        log_events(
            &batch,
            a,
            &host,
            clock,
            &mut sink,
            &metrics,
            events_tx.as_ref(),
        );
    }
    signals::notify(&[sd_notify::NotifyState::Stopping]);
    metrics::set_not_ready(&metrics, "stopping");
    sink.flush();
    attachments::stop_message(
        &cfg.pin_dir,
        metrics::user_generation(writer.generation(), &metrics),
        writer.generation(),
    );
    Ok(())
}

type KernelLogFd = AsyncFd<aya_log::EbpfLogger<crate::dataplane::KernelLog>>;

/// The kernel log's readiness, or never when diagnostics are off.
async fn kernel_log_ready(
    log: &mut Option<KernelLogFd>,
) -> Option<
    std::io::Result<
        tokio::io::unix::AsyncFdReadyMutGuard<'_, aya_log::EbpfLogger<crate::dataplane::KernelLog>>,
    >,
> {
    match log {
        Some(fd) => Some(fd.readable_mut().await),
        None => std::future::pending().await,
    }
}

/// Brings the tunnel's peers, addresses and routes to `view`. A failure is logged; the
/// data plane still enforces the view, and the next view retries.
async fn apply_tunnel(tunnel: Option<&mut tunnel::AgentTunnel>, view: &HostView) {
    if let Some(t) = tunnel
        && let Err(e) = t.apply(view).await
    {
        tracing::error!("configuring the tunnel for the new policy: {e:#}");
    }
}

/// The next view from the controller, or never in standalone mode.
async fn next_reapply(
    rx: &mut Option<mpsc::Receiver<names::ReapplyDone>>,
) -> Option<names::ReapplyDone> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_update(rx: &mut Option<mpsc::Receiver<managed::Update>>) -> Option<managed::Update> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn log_events(
    batch: &[Event],
    a: &Active,
    host: &str,
    clock: BootClock,
    sink: &mut Sink,
    metrics: &metrics::Shared,
    upstream: Option<&mpsc::Sender<gateway_proto::v1::ConnectionEvent>>,
) {
    if batch.is_empty() {
        return;
    }
    let endpoints = sink.endpoints.clone();
    let names = sink.names.clone();
    let cx = logs::Context {
        view: &a.view,
        host,
        clock,
        endpoints: endpoints.as_deref(),
        names: names.as_deref(),
    };
    let mut counted = Vec::new();
    for ev in batch {
        if let Some(rec) = sink.write(ev, &cx) {
            if let Some(tx) = upstream {
                // A full queue drops the upstream copy only; the local log has the record.
                let _ = tx.try_send(managed::wire_event(&rec));
            }
            counted.push(rec);
        }
    }
    sink.flush();
    if let Ok(mut m) = metrics.lock() {
        for rec in &counted {
            m.count_record(rec);
        }
    }
}

/// Applies the policy file when it changed, and recompiles when the view asks for it
/// (an expiry's second change point). A broken edit is reported and changes nothing.
/// `force` (SIGHUP): read the file even if its time and length did not change.
fn reload_if_changed(
    cfg: &Config,
    dp: &mut Dataplane,
    writer: &mut PolicyWriter,
    active: &mut Option<Active>,
    metrics: &metrics::Shared,
    force: bool,
) {
    let now = unix_now();
    let fp = cfg.policy_file.as_deref().and_then(fingerprint);
    let file_changed = force
        || match (active.as_ref().and_then(|a| a.source.as_ref()), fp) {
            (Some((t, l, _)), Some((t2, l2))) => *t != t2 || *l != l2,
            (None, Some(_)) => true,
            (_, None) => false,
        };
    let due = active
        .as_ref()
        .and_then(|a| a.view.recompile_at)
        .is_some_and(|at| now >= at);
    if !file_changed && !due {
        return;
    }
    let started = Instant::now();
    match compile_file(cfg, now) {
        Ok((view, text)) => {
            let same_text = active
                .as_ref()
                .and_then(|a| a.source.as_ref())
                .is_some_and(|(_, _, old)| *old == text);
            let source = fp.map(|(t, l)| (t, l, text));
            if same_text && !due {
                // Touched, not changed.
                if force {
                    tracing::info!(
                        generation = writer.generation(),
                        "the policy file is unchanged; the policy in force stays"
                    );
                }
                if let Some(a) = active.as_mut() {
                    a.source = source;
                }
                return;
            }
            match writer.apply(&mut dp.policy, &view) {
                Ok(stats) => {
                    let secs = started.elapsed().as_secs_f64();
                    tracing::info!(
                        generation = stats.generation,
                        map_writes = stats.written + stats.deleted,
                        ms = secs * 1e3,
                        cause = if due && !file_changed {
                            "expiry"
                        } else {
                            "file"
                        },
                        "policy applied"
                    );
                    if let Ok(mut m) = metrics.lock() {
                        m.observe_apply(secs);
                        m.last_apply_unix = now as f64;
                    }
                    *active = Some(Active { view, source });
                }
                Err(e) => {
                    tracing::error!(
                        "applying the new policy failed, the previous one stays in force: {e:#}"
                    );
                    if let Ok(mut m) = metrics.lock() {
                        m.policy_errors += 1;
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(
                generation = writer.generation(),
                "{e:#}; the previous policy stays in force"
            );
            if let Ok(mut m) = metrics.lock() {
                m.policy_errors += 1;
            }
            // Do not report the same broken file again until it changes.
            if let (Some(a), Some((t, l))) = (active.as_mut(), fp) {
                let text = a.source.take().map(|s| s.2).unwrap_or_default();
                a.source = Some((t, l, text));
            }
        }
    }
}

/// Where records go: the local log, metrics, and the controller.
struct Output<'a> {
    host: &'a str,
    clock: BootClock,
    sink: &'a mut Sink,
    metrics: &'a metrics::Shared,
    upstream: Option<&'a mpsc::Sender<gateway_proto::v1::ConnectionEvent>>,
}

/// Ends idle and evicted flows (see [`flows`]) and logs their flow_end records. The flow
/// ring is drained between the table read and the eviction check, so a revocation the
/// kernel recorded is never taken for an eviction.
fn reap(
    dp: &mut Dataplane,
    reaper: &mut flows::Reaper,
    cfg: &Config,
    a: &Active,
    flow_ring: &mut RingBuf<MapData>,
    out: &mut Output,
) {
    let now = boot_ns();
    let mut pending = Vec::new();
    let result = reaper.scan(&mut dp.flows, &mut dp.names, &cfg.flow_timeouts, now, |r| {
        pending = drain(flow_ring);
        r.note_events(&pending, now);
    });
    log_events(
        &pending,
        a,
        out.host,
        out.clock,
        out.sink,
        out.metrics,
        out.upstream,
    );
    let (ended, stats) = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("reading the flow tables: {e:#}");
            return;
        }
    };
    log_events(
        &ended,
        a,
        out.host,
        out.clock,
        out.sink,
        out.metrics,
        out.upstream,
    );
    if let Ok(mut m) = out.metrics.lock() {
        m.maps.insert(
            "flows",
            (
                stats.live,
                u64::from(maps::FLOWS_TCP_CAPACITY + maps::FLOWS_OTHER_CAPACITY),
            ),
        );
    }
}

/// Share of the source filter's bits above which it is rebuilt from the present sources
/// (it only grows; a policy alone sets at most ~12 %: 2 x 131k sources in 2^21 bits).
const SOURCE_FILTER_REBUILD_FILL: f64 = 0.25;

/// Rebuilds the source filter when principals' churn has filled it (`crate::src_filter`):
/// a full filter is never wrong, only no longer a shortcut.
fn tend_source_filter(dp: &mut Dataplane) {
    let Some(fill) = dp.source_filter_fill() else {
        return;
    };
    if fill <= SOURCE_FILTER_REBUILD_FILL {
        return;
    }
    match dp.rebuild_source_filter() {
        Ok(()) => tracing::info!(
            "source filter rebuilt from the present sources: {:.1} % of its bits were set, now {:.1} %",
            fill * 100.0,
            dp.source_filter_fill().unwrap_or(0.0) * 100.0
        ),
        Err(e) => tracing::warn!("rebuilding the source filter: {e:#}"),
    }
}

fn refresh_metrics(
    dp: &Dataplane,
    writer: &PolicyWriter,
    reaper: &flows::Reaper,
    metrics: &metrics::Shared,
) {
    let verdicts = dp.verdict_stats().ok();
    let parse = dp.parse_stats().ok();
    let lost = dp.events_lost().ok();
    let flow_stats = dp.flow_stats().ok();
    let suppressed = dp.suppressed().ok();
    let Ok(mut m) = metrics.lock() else {
        return;
    };
    if let Some(v) = verdicts {
        m.verdicts = v.0;
    }
    if let Some(p) = parse {
        m.parse = p.0;
    }
    if let Some((flow, alert)) = lost {
        m.events_lost = [flow, alert];
    }
    if let Some(f) = flow_stats {
        m.flow_stats = f.0;
    }
    if let Some(s) = suppressed {
        m.suppressed = s.iter().map(|(k, n)| (k.name(), *n)).collect();
    }
    m.source_filter_fill = dp.source_filter_fill().unwrap_or(0.0);
    m.flows_evicted = reaper.evicted_total;
    m.flows_idle_ended = reaper.idle_total;
    m.local_generation = writer.generation();
    m.generation = match (m.managed, m.controller_generation) {
        (true, g) => g.unwrap_or(0),
        (false, _) => u64::from(m.local_generation),
    };
    if let Some(e) = writer.active_entries() {
        let used = crate::writer::entry_counts(e);
        for ((map, usable), n) in crate::writer::usable_capacity().into_iter().zip(used) {
            m.maps.insert(map, (n as u64, u64::from(usable)));
        }
    }
}

/// `gateway-agent detach`: removes links (detaching the programs), programs and maps.
pub fn detach(cfg: &Config) -> Result<Vec<String>> {
    let dir = pins::resolve(&cfg.pin_dir);
    let mut removed = if dir.exists() {
        // Held while detaching: no agent starts on these pins meanwhile. A running agent
        // would go on running its programs from the links it holds open.
        let _lock = match pins::try_lock(&dir)? {
            Ok(l) => l,
            Err(holder) => bail!(
                "an agent is running ({holder}) with pin folder {}: stop it first (`systemctl \
                 stop gateway-agent`), then detach",
                dir.display()
            ),
        };
        pins::detach(&dir)?
    } else {
        Vec::new()
    };
    // The tunnel device is persistent (it carries the pinned tunnel programs across
    // restarts); detaching removes it, its routes and the connector's masquerade.
    if let Some(t) = &cfg.tunnel {
        if crate::tunnel::tun::delete_link(&t.interface)? {
            removed.push(format!("tunnel interface {}", t.interface));
        }
        if cfg.role == config::Role::Connector && t.masquerade {
            crate::tunnel::tun::remove_masquerade()?;
            removed.push(format!("nftables table {}", crate::tunnel::tun::NAT_TABLE));
        }
    }
    Ok(removed)
}

fn pinned_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pins::maps_dir(pin_dir).join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is the agent attached?)", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// `gateway-agent status`: attachments, generation and counters, from the pinned state
/// (works while the agent is stopped).
pub fn status(cfg: &Config) -> Result<serde_json::Value> {
    let mut cfg = cfg.clone();
    cfg.pin_dir = pins::resolve(&cfg.pin_dir);
    let cfg = &cfg;
    if !cfg.pin_dir.exists() {
        bail!(
            "nothing pinned at {}: the agent has not attached on this host",
            cfg.pin_dir.display()
        );
    }
    let active: Array<MapData, u32> = pinned_map(&cfg.pin_dir, maps::ACTIVE)?.try_into()?;
    let generation = active.get(&0, 0)?;
    let slot = (generation & 1) as u8;
    let verdicts: PerCpuArray<MapData, u64> =
        pinned_map(&cfg.pin_dir, maps::VERDICT_STATS)?.try_into()?;
    let parse: PerCpuArray<MapData, u64> =
        pinned_map(&cfg.pin_dir, maps::PARSE_STATS)?.try_into()?;
    let tcp: HashMap<MapData, FlowKey, FlowState> =
        pinned_map(&cfg.pin_dir, maps::FLOWS_TCP)?.try_into()?;
    let other: HashMap<MapData, FlowKey, FlowState> =
        pinned_map(&cfg.pin_dir, maps::FLOWS_OTHER)?.try_into()?;
    let src: HashMap<MapData, SrcKey, SrcValue> =
        pinned_map(&cfg.pin_dir, maps::SRC)?.try_into()?;
    let mut reasons = serde_json::Map::new();
    for r in Reason::ALL {
        let n: u64 = verdicts.get(&(r as u32), 0)?.iter().sum();
        reasons.insert(r.name().into(), json!(n));
    }
    let mut outcomes = serde_json::Map::new();
    for o in ParseOutcome::ALL {
        let n: u64 = parse.get(&(o as u32), 0)?.iter().sum();
        outcomes.insert(o.name().into(), json!(n));
    }
    // The generation users see: the controller's (managed mode, when this agent recorded
    // it for the policy in the kernel; null otherwise), the local one in standalone mode.
    let user_generation = match &cfg.controller {
        Some(ctl) => managed::read_generation(&managed::generation_file(ctl), generation)
            .map_or(serde_json::Value::Null, |g| json!(g)),
        None => json!(generation),
    };
    let principals = src
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.generation == slot)
        .count();
    let attached = attachments::inspect(&cfg.pin_dir);
    let agent = match pins::running_agent(&cfg.pin_dir) {
        Some(pid) => json!({ "running": true, "pid": pid }),
        None => json!({ "running": false }),
    };
    Ok(json!({
        "host": cfg.host_label(),
        "pin_dir": cfg.pin_dir.display().to_string(),
        "agent": agent,
        "links": pins::pinned_links(&cfg.pin_dir),
        "generation": user_generation,
        "local_generation": generation,
        // The local generation under its first name, for scripts written before.
        "attachments": attached.iter().map(attachments::Attachment::to_json).collect::<Vec<_>>(),
        "policy_generation": generation,
        "principals": principals,
        "flows": {
            "tcp": crate::batch::read_all::<FlowKey, FlowState>(tcp.map())?.len(),
            "other": crate::batch::read_all::<FlowKey, FlowState>(other.map())?.len(),
        },
        "verdicts": reasons,
        "parse_outcomes": outcomes,
        "host_checks": host_check::check(cfg).to_json(),
        "tunnel": tunnel::status(cfg),
    }))
}
