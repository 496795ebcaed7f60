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

/// Three hosts for tunnel tests and benchmarks: a device (198.19.1.10, overlay
/// 100.64.0.10), a connector (198.19.1.1 toward the device, 198.18.1.1 toward the
/// resource, forwarding on) and a resource host (198.18.1.5) with no route back to the
/// overlay.
pub struct Lab {
    pub dev: crate::netns::NetNs,
    pub conn: crate::netns::NetNs,
    pub res: crate::netns::NetNs,
    /// The connector's device-facing link.
    pub conn_link: String,
    /// The device's uplink.
    pub dev_link: String,
}

/// The tunnel interface name the lab's tunnels use.
pub const LAB_TUN: &str = "ztgl";

impl Lab {
    pub fn new() -> Result<Lab> {
        use crate::netns::{NetNs, veth_pair};
        let dev = NetNs::new("lbd")?;
        let conn = NetNs::new("lbc")?;
        let res = NetNs::new("lbr")?;
        let (d, c) = veth_pair(&dev, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"])?;
        veth_pair(&conn, &["198.18.1.1/24"], &res, &["198.18.1.5/24"])?;
        dev.ip(&["route", "add", "default", "via", "198.19.1.1"])?;
        conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Lab {
            dev,
            conn,
            res,
            conn_link: c.iface,
            dev_link: d.iface,
        })
    }

    /// Userspace tunnels on the device and the connector ([`LAB_TUN`]): the device routes
    /// 198.18.1.0/24 into its tunnel, the connector masquerades toward the resource.
    /// Returns (device tunnel, connector tunnel).
    pub fn tunnels(&self) -> Result<(NsTunnel, NsTunnel)> {
        use gateway_user::tunnel::{
            PeerSpec,
            tun::{configure_link, enable_forwarding, install_masquerade, sync_routes},
        };
        let (kd, kc) = (KeyPair::generate()?, KeyPair::generate()?);
        let (dpub, cpub) = (*kd.public.as_bytes(), *kc.public.as_bytes());
        let opts = |port| Options {
            interface: LAB_TUN.into(),
            listen_port: port,
            mtu: 1420,
            persistent_keepalive: None,
            skip_cryptokey_routing: false,
        };
        let conn = NsTunnel::start(self.conn.name(), opts(51820), kc, move |t| {
            configure_link(LAB_TUN, 1420, &[])?;
            t.set_peers(&[PeerSpec {
                name: "dev".into(),
                public_key: dpub,
                endpoint: None,
                allowed_ips: vec!["100.64.0.10/32".parse()?],
            }]);
            sync_routes(LAB_TUN, &["100.64.0.10/32".parse()?])?;
            enable_forwarding(false)?;
            install_masquerade(LAB_TUN)
        })?;
        let dev = NsTunnel::start(self.dev.name(), opts(0), kd, move |t| {
            configure_link(LAB_TUN, 1420, &["100.64.0.10".parse()?])?;
            t.set_peers(&[PeerSpec {
                name: "conn".into(),
                public_key: cpub,
                endpoint: Some("198.19.1.1:51820".parse()?),
                allowed_ips: vec!["198.18.1.0/24".parse()?],
            }]);
            sync_routes(LAB_TUN, &["198.18.1.0/24".parse()?])
        })?;
        Ok((dev, conn))
    }
}
