//! Test helpers: a fake upstream, a `Names` and an `Intent` for tests, clients.
#![allow(dead_code, clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_dns::{Config, Intent, Matched, Name, Names, PrepareFuture, Stub};
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A loopback resolver: `A` 198.18.0.53 (TTL 1234, plus a TXT "upstream" record) for every
/// name, NXDOMAIN for names whose first label starts with `nx`. Counts and keeps the queries.
pub struct Upstream {
    pub addr: SocketAddr,
    pub queries: Arc<Mutex<Vec<Vec<u8>>>>,
    pub count: Arc<AtomicUsize>,
}

pub fn upstream_answer(q: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(q).ok()?;
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    m.add_queries(req.queries().iter().cloned());
    let q = req.queries().first()?;
    if q.name().iter().next().is_some_and(|l| l.starts_with(b"nx")) {
        m.set_response_code(ResponseCode::NXDomain);
    } else {
        m.add_answer(Record::from_rdata(
            q.name().clone(),
            1234,
            RData::A(A(Ipv4Addr::new(198, 18, 0, 53))),
        ));
        m.add_answer(Record::from_rdata(
            q.name().clone(),
            77,
            RData::TXT(TXT::new(vec!["upstream".into()])),
        ));
    }
    m.to_vec().ok()
}

impl Upstream {
    pub async fn start() -> Upstream {
        // UDP and TCP on one port: the UDP port the kernel picks may be taken for TCP
        // (by another test's connection), so pick again, as `Stub::bind` does.
        let mut attempt = 0;
        let (udp, addr, tcp) = loop {
            attempt += 1;
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, addr, tcp),
                Err(e) if attempt >= 20 => panic!("no port free for UDP and TCP: {e}"),
                Err(_) => continue,
            }
        };
        let queries = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (qs, c) = (queries.clone(), count.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                qs.lock().unwrap().push(buf[..n].to_vec());
                c.fetch_add(1, Ordering::SeqCst);
                if let Some(a) = upstream_answer(&buf[..n]) {
                    let _ = udp.send_to(&a, peer).await;
                }
            }
        });
        let (qs, c) = (queries.clone(), count.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let (qs, c) = (qs.clone(), c.clone());
                tokio::spawn(async move {
                    while let Ok(len) = s.read_u16().await {
                        let mut b = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        qs.lock().unwrap().push(b.clone());
                        c.fetch_add(1, Ordering::SeqCst);
                        if let Some(a) = upstream_answer(&b) {
                            let mut out = (a.len() as u16).to_be_bytes().to_vec();
                            out.extend_from_slice(&a);
                            let _ = s.write_all(&out).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            queries,
            count,
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Exact names -> resource.
pub struct TestNames(pub HashMap<String, Matched>);

impl TestNames {
    pub fn new(names: &[(&str, &str)]) -> Arc<TestNames> {
        Arc::new(TestNames(
            names
                .iter()
                .map(|(n, r)| {
                    (
                        n.to_string(),
                        Matched {
                            resource: r.to_string(),
                            pattern: n.to_string(),
                        },
                    )
                })
                .collect(),
        ))
    }
}

impl Names for TestNames {
    fn lookup(&self, qname: &Name) -> Option<Matched> {
        self.0.get(&qname.to_ascii()).cloned()
    }
}

/// One call of the hook: name, addresses, when it started and ended.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub resource: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub started: Instant,
    pub ended: Instant,
}

/// Records calls. Names starting with `slow` take 300 ms, `fail` fails, `hang` takes 60 s,
/// `panic` panics (unrecorded).
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Call>>,
}

impl Recorder {
    pub fn calls_for(&self, name: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.name == name)
            .cloned()
            .collect()
    }
}

impl Intent for Recorder {
    fn prepare(&self, name: &str, m: &Matched, v4: Ipv4Addr, v6: Ipv6Addr) -> PrepareFuture<'_> {
        let name = name.to_owned();
        let resource = m.resource.clone();
        Box::pin(async move {
            let started = Instant::now();
            if name.starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(300)).await;
            } else if name.starts_with("hang") {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            if name.starts_with("panic") {
                panic!("the hook panicked (on purpose, in a test)");
            }
            let fail = name.starts_with("fail");
            self.calls.lock().unwrap().push(Call {
                name,
                resource,
                v4,
                v6,
                started,
                ended: Instant::now(),
            });
            if fail {
                Err("the connector refused".to_owned())
            } else {
                Ok(())
            }
        })
    }
}

pub fn config(upstreams: Vec<SocketAddr>) -> Config {
    let mut c = Config::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        upstreams,
        "2001:db8:5353::/107".parse().unwrap(),
    );
    c.v4_prefix = "100.96.0.0/24".parse().unwrap();
    c.upstream_timeout = Duration::from_millis(500);
    c.prepare_timeout = Duration::from_millis(1000);
    c
}

/// A running stub; shut down on drop.
pub struct Running {
    pub stub: Arc<Stub>,
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stub.shutdown_handle().shutdown();
    }
}

pub async fn start(cfg: Config, names: Arc<dyn Names>, intent: Arc<dyn Intent>) -> Running {
    let stub = Arc::new(Stub::bind(cfg, names, intent).await.unwrap());
    let addr = stub.local_addrs()[0];
    let s = stub.clone();
    let task = tokio::spawn(async move { s.run().await });
    Running { stub, addr, task }
}

pub fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(fastrand::u16(..)).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1400);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Sends one datagram from a fresh socket; the reply's bytes, or None after `wait`.
pub async fn udp_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn ask(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    let b = udp_raw(addr, &query(name, t, false), Duration::from_secs(5))
        .await
        .expect("an answer");
    Message::from_vec(&b).unwrap()
}

pub fn a_of(m: &Message) -> Vec<Ipv4Addr> {
    m.answers()
        .iter()
        .filter_map(|r| {
            if let RData::A(a) = r.data() {
                Some(a.0)
            } else {
                None
            }
        })
        .collect()
}

pub fn aaaa_of(m: &Message) -> Vec<Ipv6Addr> {
    m.answers()
        .iter()
        .filter_map(|r| {
            if let RData::AAAA(a) = r.data() {
                Some(a.0)
            } else {
                None
            }
        })
        .collect()
}

pub async fn tcp_exchange(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    s.write_all(&out).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut b = vec![0u8; usize::from(n)];
    s.read_exact(&mut b).await.unwrap();
    b
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gateway-dns-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
