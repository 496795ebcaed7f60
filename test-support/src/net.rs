//! Traffic between test namespaces: TCP echo clients and servers that tell a gateway's
//! silent drop from a closed port's reset.

use anyhow::{Context as _, Result};
use std::time::Duration;

/// What became of a TCP connection attempt with one byte echoed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Connected, the byte came back.
    Echoed,
    /// A reset answered the SYN: a host said nothing listens there. Never what the gateway
    /// does (it drops silently).
    Refused,
    /// No answer within the timeout: dropped on the way (the gateway's way of denying).
    Silent,
    /// Anything else (unreachable, reset after connecting, wrong byte).
    Other(String),
}

/// A TCP connection from inside `ns` to `dst` (`addr:port`), one byte sent and echoed
/// back, every step bounded by `timeout`.
pub fn tcp_try(ns: &crate::netns::NetNs, dst: &str, timeout: Duration) -> TcpOutcome {
    use std::io::{ErrorKind, Read as _, Write as _};
    let Ok(dst) = dst.parse::<std::net::SocketAddr>() else {
        return TcpOutcome::Other(format!("bad address {dst}"));
    };
    let mut s = match ns.run(|| std::net::TcpStream::connect_timeout(&dst, timeout)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => return TcpOutcome::Refused,
        Ok(Err(e)) if e.kind() == ErrorKind::TimedOut => return TcpOutcome::Silent,
        Ok(Err(e)) => return TcpOutcome::Other(e.to_string()),
        Err(e) => return TcpOutcome::Other(format!("{e:#}")),
    };
    let mut b = [0u8; 1];
    if let Err(e) = s.set_read_timeout(Some(timeout)) {
        return TcpOutcome::Other(e.to_string());
    }
    if let Err(e) = s.write_all(b"x") {
        return TcpOutcome::Other(e.to_string());
    }
    match s.read_exact(&mut b) {
        Ok(()) if b == *b"x" => TcpOutcome::Echoed,
        Ok(()) => TcpOutcome::Other(format!("echoed {b:?}")),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            TcpOutcome::Silent
        }
        Err(e) => TcpOutcome::Other(e.to_string()),
    }
}

/// True when a TCP echo to `dst` worked.
pub fn tcp_echo(ns: &crate::netns::NetNs, dst: &str, timeout: Duration) -> bool {
    tcp_try(ns, dst, timeout) == TcpOutcome::Echoed
}

/// True when the connection was dropped silently, the way the gateway denies. A test that
/// asserts this must have a listener at `dst` that would answer (and a control run showing
/// it does without the gateway): a port nobody listens on answers with a reset, and a
/// reset is not a denial.
pub fn tcp_dropped(ns: &crate::netns::NetNs, dst: &str, timeout: Duration) -> bool {
    tcp_try(ns, dst, timeout) == TcpOutcome::Silent
}

/// TCP echo servers (every byte back, until EOF) listening on `addrs` inside `ns`, each
/// connection on its own thread. They end with the process (tests) or when the namespace
/// and its addresses go.
pub fn tcp_echo_servers(ns: &crate::netns::NetNs, addrs: &[&str]) -> Result<()> {
    use std::io::{Read as _, Write as _};
    for addr in addrs {
        let addr: std::net::SocketAddr = addr.parse().context("echo server address")?;
        let l = ns.run(|| std::net::TcpListener::bind(addr))??;
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut b = [0u8; 256];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    Ok(())
}

/// Counts datagrams arriving at `addr` inside `ns` (those holding `marker`, when given),
/// for two minutes at most: a listener that would answer, so "0 arrived" means dropped.
pub fn udp_counter(
    ns: &crate::netns::NetNs,
    addr: &str,
    marker: Option<&'static [u8]>,
) -> Result<std::sync::Arc<std::sync::atomic::AtomicU64>> {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let addr: std::net::SocketAddr = addr.parse().context("counter address")?;
    let sock = ns.run(|| std::net::UdpSocket::bind(addr))??;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let n = Arc::new(AtomicU64::new(0));
    let counter = n.clone();
    std::thread::spawn(move || {
        let mut b = vec![0u8; 65536];
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            if let Ok((len, _)) = sock.recv_from(&mut b)
                && marker.is_none_or(|m| b[..len].windows(m.len()).any(|w| w == m))
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(n)
}

/// Sends `count` datagrams of `payload` from inside `ns` to `to`, from address `from`
/// (any when `None`), 10 ms apart; returns how many the socket took.
pub fn send_udp(
    ns: &crate::netns::NetNs,
    from: Option<std::net::IpAddr>,
    to: &str,
    payload: &[u8],
    count: usize,
) -> Result<usize> {
    let to: std::net::SocketAddr = to.parse().context("destination")?;
    let from = from.unwrap_or(if to.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    });
    ns.run(move || -> Result<usize> {
        let s = std::net::UdpSocket::bind((from, 0))?;
        let mut sent = 0;
        for _ in 0..count {
            if s.send_to(payload, to).is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(sent)
    })?
}
