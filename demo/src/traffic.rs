//! Client traffic: TCP and UDP exchanges told apart as answered, refused or silently
//! dropped, and bob's port scan.

use crate::prelude::*;

// ---------------------------------------------------------------- traffic

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Connected (TCP) / answered (UDP), every message echoed.
    Exchanged {
        messages: usize,
        bytes: usize,
        ms: u128,
    },
    /// Nothing came back within the timeout: dropped on the way.
    NoAnswer { ms: u128 },
    /// The local stack refused to send (a drop reported to the sender).
    SendBlocked(String),
    /// Reset / port unreachable: the packet reached the resource host.
    Refused,
    /// Anything else (a broken exchange, an unexpected error).
    Failed(String),
}

impl Outcome {
    pub(crate) fn reached(&self) -> bool {
        matches!(self, Outcome::Exchanged { .. } | Outcome::Refused)
    }

    pub(crate) fn blocked(&self) -> bool {
        matches!(self, Outcome::NoAnswer { .. } | Outcome::SendBlocked(_))
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Outcome::Exchanged {
                messages,
                bytes,
                ms,
            } => format!("{messages} messages ({bytes} B) echoed in {ms} ms"),
            Outcome::NoAnswer { ms } => format!("no answer within {ms} ms"),
            Outcome::SendBlocked(e) => format!("sending failed locally: {e}"),
            Outcome::Refused => "refused by the resource host (the packet got through!)".into(),
            Outcome::Failed(e) => format!("failed: {e}"),
        }
    }
}

pub(crate) fn classify(e: &std::io::Error, t0: Instant) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => Outcome::NoAnswer {
            ms: t0.elapsed().as_millis(),
        },
        ConnectionRefused | ConnectionReset => Outcome::Refused,
        _ if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOBUFS)) => {
            Outcome::SendBlocked(e.to_string())
        }
        _ => Outcome::Failed(e.to_string()),
    }
}

pub(crate) fn messages(who: &Client, what: &str) -> Vec<String> {
    (1..=3)
        .map(|i| format!("{} -> {what}: request {i}\n", who.name))
        .collect()
}

/// Connect, send three messages and read each echo, close cleanly (FIN both ways).
pub(crate) fn tcp_exchange(dst: SocketAddrV4, msgs: &[String], timeout: Duration) -> Outcome {
    let t0 = Instant::now();
    let mut s = match TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e, t0),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut bytes = 0;
    for m in msgs {
        if let Err(e) = s.write_all(m.as_bytes()) {
            return Outcome::Failed(format!("connected, then sending failed: {e}"));
        }
        let mut b = vec![0u8; m.len()];
        if let Err(e) = s.read_exact(&mut b) {
            return Outcome::Failed(format!("connected, then no echo: {e}"));
        }
        if b != m.as_bytes() {
            return Outcome::Failed("connected, echo differs".into());
        }
        bytes += m.len();
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Outcome::Exchanged {
        messages: msgs.len(),
        bytes,
        ms: t0.elapsed().as_millis(),
    }
}

/// Send three datagrams from `src`, each answered by its echo.
pub(crate) fn udp_exchange(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    msgs: &[String],
    timeout: Duration,
) -> Outcome {
    let t0 = Instant::now();
    let sock = match UdpSocket::bind(SocketAddrV4::new(src, 0)) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("bind: {e}")),
    };
    if let Err(e) = sock.connect(dst) {
        return Outcome::Failed(format!("connect: {e}"));
    }
    let _ = sock.set_read_timeout(Some(timeout));
    let mut bytes = 0;
    for m in msgs {
        if let Err(e) = sock.send(m.as_bytes()) {
            return classify(&e, t0);
        }
        let mut b = [0u8; 512];
        match sock.recv(&mut b) {
            Ok(n) if &b[..n] == m.as_bytes() => bytes += n,
            Ok(_) => return Outcome::Failed("answer differs from the query".into()),
            Err(e) => return classify(&e, t0),
        }
    }
    Outcome::Exchanged {
        messages: msgs.len(),
        bytes,
        ms: t0.elapsed().as_millis(),
    }
}

pub(crate) fn probe_once(ns: &NetNs, p: &Probe) -> Result<Outcome> {
    let c = client(p.who);
    let allowed = matches!(p.expect, Expect::Allow { .. });
    let timeout = if allowed { ALLOW_TIMEOUT } else { DENY_TIMEOUT };
    // A denied attempt sends one message: one SYN or datagram is enough to be dropped.
    let mut msgs = messages(c, p.what);
    if !allowed {
        msgs.truncate(1);
    }
    // UDP from the overlay address (the tunnel's; TCP gets it from the route).
    let (dst, proto, src) = (p.dst, p.proto, c.overlay);
    ns.run(move || match proto {
        Proto::Tcp => tcp_exchange(dst, &msgs, timeout),
        Proto::Udp => udp_exchange(src, dst, &msgs, timeout),
    })
}

/// Connect attempts to every port at once; returns (port, outcome) pairs.
pub(crate) fn scan(ns: &NetNs, target: Ipv4Addr) -> Result<Vec<(u16, Outcome)>> {
    ns.run(move || {
        // Threads started here inherit this thread's network namespace.
        std::thread::scope(|s| {
            let handles: Vec<_> = SCAN_PORTS
                .iter()
                .map(|&port| {
                    s.spawn(move || {
                        let t0 = Instant::now();
                        let dst = SocketAddr::V4(SocketAddrV4::new(target, port));
                        let o = match TcpStream::connect_timeout(&dst, SCAN_TIMEOUT) {
                            Ok(_) => Outcome::Exchanged {
                                messages: 0,
                                bytes: 0,
                                ms: t0.elapsed().as_millis(),
                            },
                            Err(e) => classify(&e, t0),
                        };
                        (port, o)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or((0, Outcome::Failed("scan thread panicked".into())))
                })
                .collect()
        })
    })
}
