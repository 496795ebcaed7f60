//! The connector's side: resolving a resource's name to its real addresses, with the TTL
//! clamped to a configured range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

/// Where and how the connector resolves.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Resolvers asked, in order (recursive resolvers: the connector's own).
    pub upstreams: Vec<SocketAddr>,
    /// Bound on one upstream's answer.
    pub timeout: Duration,
    /// The TTL used is the answer's, clamped to `[min_ttl, max_ttl]`. Defaults 30 s, 1 h.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl ResolverConfig {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            timeout: Duration::from_secs(2),
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// What a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// The answer's smallest TTL, clamped; resolve again after it.
    pub ttl: Duration,
}

impl Resolved {
    /// The first address of `v6`'s family, if any.
    pub fn first(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.v6.first().copied().map(IpAddr::V6)
        } else {
            self.v4.first().copied().map(IpAddr::V4)
        }
    }
}

/// The nameservers of a `resolv.conf` text.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Resolves `name` (A and AAAA) through the first upstream that answers. NXDOMAIN or no
/// address of either family is an error.
pub async fn resolve(cfg: &ResolverConfig, name: &str) -> Result<Resolved> {
    let qname = Name::from_ascii(name).with_context(|| format!("`{name}` is no DNS name"))?;
    let mut last = None;
    for up in &cfg.upstreams {
        let a = query(cfg, *up, &qname, RecordType::A).await;
        let aaaa = query(cfg, *up, &qname, RecordType::AAAA).await;
        match (a, aaaa) {
            (Err(e), Err(_)) => last = Some(e),
            (a, aaaa) => {
                let mut out = Resolved {
                    v4: Vec::new(),
                    v6: Vec::new(),
                    ttl: cfg.max_ttl,
                };
                let mut answered = false;
                for r in [a, aaaa].into_iter().flatten() {
                    answered = true;
                    out.v4.extend(r.0);
                    out.v6.extend(r.1);
                    if let Some(ttl) = r.2 {
                        out.ttl = out.ttl.min(ttl);
                    }
                }
                if !answered || (out.v4.is_empty() && out.v6.is_empty()) {
                    bail!("`{name}` has no address (asked {up})");
                }
                out.ttl = out.ttl.clamp(cfg.min_ttl, cfg.max_ttl);
                return Ok(out);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no upstream resolver configured")))
}

type Answer = (Vec<Ipv4Addr>, Vec<Ipv6Addr>, Option<Duration>);

async fn query(
    cfg: &ResolverConfig,
    up: SocketAddr,
    name: &Name,
    rtype: RecordType,
) -> Result<Answer> {
    let id: u16 = rand_id();
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), rtype));
    let bytes = m.to_vec().context("encoding a query")?;
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let sock = UdpSocket::bind(bind)
        .await
        .context("binding a UDP socket")?;
    sock.connect(up)
        .await
        .with_context(|| format!("connecting to {up}"))?;
    sock.send(&bytes)
        .await
        .with_context(|| format!("sending to {up}"))?;
    let mut buf = vec![0u8; 4096];
    let reply = tokio::time::timeout(cfg.timeout, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if let Ok(r) = Message::from_vec(&buf[..n])
                && r.id() == id
                && r.message_type() == MessageType::Response
            {
                return std::io::Result::Ok(r);
            }
        }
    })
    .await
    .with_context(|| format!("{up} did not answer within {:?}", cfg.timeout))??;
    let reply = if reply.truncated() {
        tcp_query(cfg, up, &bytes, id).await?
    } else {
        reply
    };
    match reply.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => bail!("`{name}` does not exist (NXDOMAIN from {up})"),
        other => bail!("{up} answered `{name}` with {other}"),
    }
    // The answer section: the chain of CNAMEs from the name, then its addresses.
    let mut owners = vec![name.clone()];
    let mut out: Answer = (Vec::new(), Vec::new(), None);
    for _ in 0..8 {
        let before = owners.len();
        for r in reply.answers() {
            if owners.iter().any(|o| o.eq_case(r.name()) || o == r.name())
                && let RData::CNAME(c) = r.data()
                && !owners.contains(&c.0)
            {
                owners.push(c.0.clone());
            }
        }
        if owners.len() == before {
            break;
        }
    }
    for r in reply.answers() {
        if !owners.iter().any(|o| o == r.name()) {
            continue;
        }
        let ttl = Duration::from_secs(u64::from(r.ttl()));
        match r.data() {
            RData::A(a) if rtype == RecordType::A => out.0.push(a.0),
            RData::AAAA(a) if rtype == RecordType::AAAA => out.1.push(a.0),
            _ => continue,
        }
        out.2 = Some(out.2.map_or(ttl, |t: Duration| t.min(ttl)));
    }
    Ok(out)
}

async fn tcp_query(cfg: &ResolverConfig, up: SocketAddr, bytes: &[u8], id: u16) -> Result<Message> {
    tokio::time::timeout(cfg.timeout, async {
        let mut s = TcpStream::connect(up).await?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await?;
        let len = s.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await?;
        let m = Message::from_vec(&buf).map_err(std::io::Error::other)?;
        if m.id() != id {
            return Err(std::io::Error::other("answer with another id"));
        }
        Ok(m)
    })
    .await
    .with_context(|| format!("{up} did not answer over TCP within {:?}", cfg.timeout))?
    .with_context(|| format!("asking {up} over TCP"))
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        // The id only pairs a reply with its query on a connected socket.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t as u16;
    }
    u16::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "# generated\nsearch corp.test\nnameserver 198.18.0.53\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\noptions ndots:1\n";
        assert_eq!(
            nameservers(text),
            vec![
                "198.18.0.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
            ]
        );
    }
}
