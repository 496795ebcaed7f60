//! The echo servers on the resource host, which record every peer they saw.

use crate::prelude::*;

// ---------------------------------------------------------------- resource host

/// Echo servers in the resource namespace. They record every peer they saw (every
/// accepted connection, every datagram), stop when dropped, and stop by themselves after
/// `SERVER_LIFETIME`.
pub(crate) struct Services {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    pub(crate) seen: Arc<Mutex<Vec<(&'static str, IpAddr)>>>,
}

impl Services {
    pub(crate) fn start(res: &NetNs) -> Result<Services> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let deadline = Instant::now() + SERVER_LIFETIME;
        for (name, addr, proto) in SERVICES {
            let (stop, seen) = (stop.clone(), seen.clone());
            match proto {
                Proto::Tcp => {
                    let l = res
                        .run(move || TcpListener::bind(addr))?
                        .with_context(|| format!("binding {name} on {addr}"))?;
                    l.set_nonblocking(true)?;
                    threads.push(std::thread::spawn(move || {
                        let mut conns = Vec::new();
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            match l.accept() {
                                Ok((c, peer)) => {
                                    if let Ok(mut s) = seen.lock() {
                                        s.push((name, peer.ip()));
                                    }
                                    let stop = stop.clone();
                                    conns.push(std::thread::spawn(move || echo_tcp(c, &stop)));
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(10)),
                            }
                        }
                        for c in conns {
                            let _ = c.join();
                        }
                    }));
                }
                Proto::Udp => {
                    let u = res
                        .run(move || UdpSocket::bind(addr))?
                        .with_context(|| format!("binding {name} on {addr}"))?;
                    u.set_read_timeout(Some(Duration::from_millis(50)))?;
                    threads.push(std::thread::spawn(move || {
                        let mut b = [0u8; 512];
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            if let Ok((n, peer)) = u.recv_from(&mut b) {
                                if let Ok(mut s) = seen.lock() {
                                    s.push((name, peer.ip()));
                                }
                                let _ = u.send_to(&b[..n], peer);
                            }
                        }
                    }));
                }
            }
        }
        Ok(Services {
            stop,
            threads,
            seen,
        })
    }

    /// How many (service, peer) records there are so far.
    pub(crate) fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// How many datagrams (or connections) `name` has seen so far.
    pub(crate) fn count_of(&self, name: &str) -> usize {
        self.seen
            .lock()
            .map(|s| s.iter().filter(|(n, _)| *n == name).count())
            .unwrap_or(0)
    }

    /// The records after the first `n` (what a probe made the servers see).
    pub(crate) fn since(&self, n: usize) -> Vec<(&'static str, IpAddr)> {
        self.seen
            .lock()
            .map(|s| s.get(n..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }
}

/// Echoes one connection until EOF or the servers stop; an idle connection stays open
/// (the revocation check needs one that only the gateway can cut).
pub(crate) fn echo_tcp(c: TcpStream, stop: &AtomicBool) {
    let mut c = c;
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let mut b = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => {
                if c.write_all(&b[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
