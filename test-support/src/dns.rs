//! A small authoritative DNS server for tests (a zone whose answers a test changes while it
//! runs) and a client that asks one question.

use anyhow::{Context as _, Result};
pub use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A name's addresses and their TTL.
type Rrset = (Vec<IpAddr>, u32);

/// Names (lower case, no trailing dot) -> addresses and TTL. A name not in the zone is
/// NXDOMAIN; a name without addresses of the asked family is NOERROR with no records.
#[derive(Clone, Default)]
pub struct Zone {
    records: Arc<Mutex<HashMap<String, Rrset>>>,
    /// Queries answered, by name.
    asked: Arc<Mutex<HashMap<String, usize>>>,
    pub queries: Arc<AtomicUsize>,
}

impl Zone {
    pub fn set(&self, name: &str, addrs: &[&str], ttl: u32) {
        let addrs = addrs.iter().map(|a| a.parse().expect("address")).collect();
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_ascii_lowercase(), (addrs, ttl));
    }

    /// How many queries for `name` the server answered.
    pub fn asked(&self, name: &str) -> usize {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn answer(&self, q: &[u8]) -> Option<Vec<u8>> {
        let req = Message::from_vec(q).ok()?;
        let query = req.queries().first()?.clone();
        let name = query.name().to_ascii();
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.queries.fetch_add(1, Ordering::SeqCst);
        *self
            .asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        let mut m = Message::new();
        m.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true)
            .set_authoritative(true);
        m.add_query(query.clone());
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match records.get(&key) {
            None => {
                m.set_response_code(ResponseCode::NXDomain);
            }
            Some((addrs, ttl)) => {
                for a in addrs {
                    let data = match (a, query.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                        _ => continue,
                    };
                    m.add_answer(Record::from_rdata(query.name().clone(), *ttl, data));
                }
            }
        }
        m.to_vec().ok()
    }
}

/// Serves `zone` over UDP on `addr` inside `ns`, for ten minutes at most.
pub fn serve(ns: &crate::netns::NetNs, addr: &str, zone: &Zone) -> Result<()> {
    let addr: SocketAddr = addr.parse().context("zone server address")?;
    let sock = ns.run(|| UdpSocket::bind(addr))??;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let zone = zone.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut b = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut b)
                && let Some(a) = zone.answer(&b[..n])
            {
                let _ = sock.send_to(&a, from);
            }
        }
    });
    Ok(())
}

/// One answer as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub addrs: Vec<IpAddr>,
    pub ttl: Option<u32>,
}

/// Asks `server` (from inside `ns`) for `name`'s `A` (`v6` false) or `AAAA` records; `None`
/// when no answer came within `timeout`.
pub fn query(
    ns: &crate::netns::NetNs,
    server: &str,
    name: &str,
    v6: bool,
    timeout: Duration,
) -> Result<Option<Answer>> {
    let server: SocketAddr = server.parse().context("server address")?;
    let qname = Name::from_ascii(name).context("query name")?;
    let rtype = if v6 { RecordType::AAAA } else { RecordType::A };
    let mut m = Message::new();
    let id = (Instant::now().elapsed().subsec_nanos() & 0xffff) as u16 ^ 0x5a5a;
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname, rtype));
    let bytes = m.to_vec()?;
    ns.run(move || -> Result<Option<Answer>> {
        let any = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(any)?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(&bytes, server)?;
        let mut b = vec![0u8; 4096];
        let Ok((n, _)) = s.recv_from(&mut b) else {
            return Ok(None);
        };
        let r = Message::from_vec(&b[..n])?;
        let mut addrs = Vec::new();
        let mut ttl = None;
        for rec in r.answers() {
            match rec.data() {
                RData::A(a) => addrs.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => addrs.push(IpAddr::V6(a.0)),
                _ => continue,
            }
            ttl = Some(rec.ttl());
        }
        Ok(Some(Answer {
            rcode: r.response_code(),
            addrs,
            ttl,
        }))
    })?
}
