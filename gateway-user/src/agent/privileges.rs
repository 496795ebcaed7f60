//! Capabilities only the start needs are dropped once the agent is ready.
//!
//! Loading programs, creating maps and pins and attaching links take `CAP_SYS_ADMIN` and
//! `CAP_PERFMON` on top of `CAP_BPF` and `CAP_NET_ADMIN`. After that the agent writes maps
//! through descriptors it holds and reads pins (`CAP_BPF`), and changes the tunnel's routes,
//! peers and nftables masquerade (`CAP_NET_ADMIN`): those two stay, the other two go, from
//! the effective, permitted, inheritable and ambient sets, so nothing the process runs later
//! can take them back.
//!
//! Linux keeps capabilities per thread. The thread that calls [`drop_start_capabilities`]
//! drops them at once; every runtime thread drops them the next time it parks or, for a
//! thread started later, when it starts ([`on_runtime_thread`], installed as the runtime's
//! `on_thread_park` and `on_thread_start` hooks). Threads spawned later inherit the sets of
//! the thread that spawns them.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use caps::{CapSet, Capability};

/// What the agent gives up once ready.
pub const DROPPED: [Capability; 2] = [Capability::CAP_SYS_ADMIN, Capability::CAP_PERFMON];

static DROP: AtomicBool = AtomicBool::new(false);

thread_local! {
    static DONE: Cell<bool> = const { Cell::new(false) };
}

/// From now on every thread of the process drops [`DROPPED`]: this one at once, the
/// runtime's workers as they park ([`drop_on_every_thread`] wakes them until
/// `/proc/self/task` shows none left holding them).
/// Call it on the thread that runs the agent's loop (it drops them there at once), then
/// run [`drop_on_every_thread`].
pub fn drop_start_capabilities() -> bool {
    DROP.store(true, Ordering::SeqCst);
    match drop_here() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("could not drop CAP_SYS_ADMIN and CAP_PERFMON: {e}");
            false
        }
    }
}

/// Wakes the runtime's workers until none holds [`DROPPED`] (each drops as it parks
/// again), for at most a second, and says how it went.
pub async fn drop_on_every_thread() {
    let mut holding = Vec::new();
    for _ in 0..100 {
        holding = threads_holding();
        if holding.is_empty() {
            tracing::info!(
                "dropped CAP_SYS_ADMIN and CAP_PERFMON on every thread (needed only to load \
                 and attach); CAP_BPF and CAP_NET_ADMIN stay for policy and tunnel changes"
            );
            return;
        }
        // An idle worker parks again after running one of these, and drops on parking.
        for _ in 0..4 {
            tokio::spawn(tokio::task::yield_now());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::warn!(
        threads = ?holding,
        "these threads still hold CAP_SYS_ADMIN or CAP_PERFMON"
    );
}

/// Threads of this process whose effective or permitted set still holds one of
/// [`DROPPED`] (`/proc/self/task/TID/status`), by id.
fn threads_holding() -> Vec<String> {
    let mask = DROPPED.iter().fold(0u64, |m, c| m | (1u64 << c.index()));
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("status")).is_ok_and(|status| {
                status.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        (k == "CapEff" || k == "CapPrm")
                            && u64::from_str_radix(v.trim(), 16).is_ok_and(|b| b & mask != 0)
                    })
                })
            })
        })
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The runtime's thread hook: drops [`DROPPED`] on this thread once the agent is ready.
pub fn on_runtime_thread() {
    if DROP.load(Ordering::Relaxed) && !DONE.with(Cell::get) {
        let _ = drop_here();
    }
}

fn drop_here() -> Result<(), caps::errors::CapsError> {
    let mut result = Ok(());
    for cap in DROPPED {
        // Ambient and inheritable first: a capability cannot stay ambient once it left
        // the permitted or inheritable set.
        for set in [
            CapSet::Ambient,
            CapSet::Inheritable,
            CapSet::Effective,
            CapSet::Permitted,
        ] {
            if let Err(e) = caps::drop(None, set, cap) {
                result = Err(e);
            }
        }
    }
    DONE.with(|d| d.set(true));
    result
}
