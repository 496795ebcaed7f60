//! A userspace tunnel (`gateway_user::tunnel::Tunnel`) run in-process inside a test
//! namespace, on a thread of its own with its own runtime: tests and benchmarks that play
//! a device, a connector or an attacker holding a key without a whole agent.

use anyhow::{Context as _, Result, anyhow};
use gateway_user::tunnel::{Options, Tunnel, keys::KeyPair};
use std::{os::fd::AsRawFd as _, sync::mpsc, time::Duration};

type Cmd = Box<dyn FnOnce(&Tunnel) + Send>;

/// A running tunnel inside a namespace. Commands run on its thread; dropping it stops the
/// tunnel (the TUN device is persistent: it goes with the namespace, or with
/// `tun::delete_link`).
pub struct NsTunnel {
    tx: Option<mpsc::Sender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsTunnel {
    /// Starts a tunnel in namespace `ns` (by name) and runs `setup` on it (addresses,
    /// peers, routes) before returning.
    pub fn start(
        ns: &str,
        opts: Options,
        keys: KeyPair,
        setup: impl FnOnce(&Tunnel) -> Result<()> + Send + 'static,
    ) -> Result<NsTunnel> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd, for this thread only; the runtime's
            // workers are spawned from it and inherit the namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(anyhow!("setns: {}", std::io::Error::last_os_error())));
                return;
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let tunnel = match rt.block_on(Tunnel::start(opts, keys)) {
                Ok(t) => t,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let r = setup(&tunnel);
            let ok = r.is_ok();
            let _ = ready_tx.send(r);
            if ok {
                while let Ok(cmd) = rx.recv() {
                    cmd(&tunnel);
                }
            }
            drop(tunnel);
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("the tunnel thread did not start")??;
        Ok(NsTunnel {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the tunnel and returns its result.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Tunnel) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .context("stopped")?
            .send(Box::new(move |t| {
                let _ = tx.send(f(t));
            }))
            .map_err(|_| anyhow!("the tunnel thread ended"))?;
        rx.recv_timeout(Duration::from_secs(10))
            .context("the tunnel thread did not answer")
    }
}

impl Drop for NsTunnel {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
