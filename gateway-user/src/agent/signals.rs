//! The agent's signals and its state changes for systemd: SIGHUP reopens the connection
//! log and reloads the policy file; SIGTERM and SIGINT stop the run loop (in `mod.rs`).
//! With `NOTIFY_SOCKET` set (systemd `Type=notify`), the agent sends `READY=1` once its
//! policy is live in the kernel, `RELOADING=1` then `READY=1` around a SIGHUP, and
//! `STOPPING=1` when it stops.

use super::{Active, Sink, config::Config, metrics};
use crate::{Dataplane, writer::PolicyWriter};

/// A state change for systemd (`Type=notify`); nothing without `NOTIFY_SOCKET`.
pub(super) fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("notifying systemd (NOTIFY_SOCKET): {e}");
    }
}

/// SIGHUP, logrotate's convention: the connection log is reopened at its configured path
/// (the old file was renamed), and the policy file is read again as if it had changed (a
/// broken one is reported with its location and the policy in force stays). Managed
/// agents have no policy file: their policy comes from the controller.
pub(super) fn on_sighup(
    cfg: &Config,
    sink: &mut Sink,
    dp: &mut Dataplane,
    writer: &mut PolicyWriter,
    active: &mut Option<Active>,
    metrics: &metrics::Shared,
) {
    let reloading = sd_notify::NotifyState::monotonic_usec_now();
    match &reloading {
        Ok(usec) => notify(&[sd_notify::NotifyState::Reloading, usec.clone()]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
    match sink.out.reopen() {
        Ok(Some(path)) => tracing::info!(path = %path.display(), "SIGHUP: connection log reopened"),
        Ok(None) => tracing::info!("SIGHUP: connection log on stdout, nothing to reopen"),
        Err(e) => tracing::error!(
            "SIGHUP: {e:#}; records keep going to the file opened before (check the folder and \
             its permissions, then send SIGHUP again)"
        ),
    }
    if cfg.policy_file.is_some() {
        tracing::info!("SIGHUP: reloading the policy file");
        super::reload_if_changed(cfg, dp, writer, active, metrics, true);
    }
}
