//! Latency of the stub on loopback: `cargo run --release -p gateway-dns --example latency`.
//!
//! A stub with 10k names (hook: no-op), a fake upstream; 20k queries of already-allocated names
//! from one client (sequential) and from 8 concurrent clients, and forwarded queries for
//! comparison. Prints p50/p99/max in microseconds. With `-- --pool-file`, the pairs are also
//! persisted (a file in the temp directory, rewritten and fsynced before each new name's answer).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gateway_dns::{Config, Intent, Matched, Name, Names, PrepareFuture, Stub};
use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

const NAMES: usize = 10_000;
const QUERIES: usize = 20_000;
const CLIENTS: usize = 8;
const FORWARDED: usize = 2_000;

struct AllNames(HashMap<String, Matched>);

impl Names for AllNames {
    fn lookup(&self, qname: &Name) -> Option<Matched> {
        self.0.get(&qname.to_ascii()).cloned()
    }
}

struct NoOp;

impl Intent for NoOp {
    fn prepare(&self, _: &str, _: &Matched, _: Ipv4Addr, _: Ipv6Addr) -> PrepareFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

fn name(i: usize) -> String {
    format!("host{i}.corp.test.")
}

fn query(name: &str, id: u16) -> Result<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

/// Sends `bytes` and waits for the answer with the same ID; the round trip.
fn exchange(sock: &UdpSocket, bytes: &[u8], buf: &mut [u8]) -> Result<Duration> {
    let t = Instant::now();
    sock.send(bytes)?;
    loop {
        let n = sock.recv(buf).context("no answer within 2 s")?;
        if n >= 2 && buf[..2] == bytes[..2] {
            return Ok(t.elapsed());
        }
    }
}

fn client(addr: SocketAddr) -> Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    println!(
        "{what:<44} n={:<6} p50={:>7.1} us  p99={:>7.1} us  max={:>8.1} us",
        v.len(),
        us(at(0.50)),
        us(at(0.99)),
        us(v[v.len() - 1])
    );
}

/// The fake upstream: one A record for any name, on its own thread.
fn upstream() -> Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let addr = s.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut m = Message::new();
            m.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true);
            m.add_queries(req.queries().iter().cloned());
            if let Some(q) = req.queries().first() {
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(198, 18, 0, 1))),
                ));
            }
            if let Ok(b) = m.to_vec() {
                let _ = s.send_to(&b, peer);
            }
        }
    });
    Ok(addr)
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let up = upstream()?;
    let names: HashMap<String, Matched> = (0..NAMES)
        .map(|i| {
            (
                name(i),
                Matched {
                    resource: format!("r{}", i % 100),
                    pattern: name(i),
                },
            )
        })
        .collect();
    let mut cfg = Config::new(
        vec!["127.0.0.1:0".parse()?],
        vec![up],
        "2001:db8:5353::/107".parse()?,
    );
    cfg.reprepare_after = Duration::from_secs(3600);
    let pool_file = std::env::args().any(|a| a == "--pool-file").then(|| {
        std::env::temp_dir().join(format!("gateway-dns-latency-{}.jsonl", std::process::id()))
    });
    cfg.pool_file = pool_file.clone();
    let stub = Arc::new(rt.block_on(Stub::bind(cfg, Arc::new(AllNames(names)), Arc::new(NoOp)))?);
    let addr = stub.local_addrs()[0];
    let running = stub.clone();
    rt.spawn(async move { running.run().await });

    let mut buf = vec![0u8; 65535];
    let c = client(addr)?;
    // First queries: allocation + the (no-op) hook before the answer.
    let mut first = Vec::with_capacity(NAMES);
    for i in 0..NAMES {
        first.push(exchange(&c, &query(&name(i), i as u16)?, &mut buf)?);
    }
    if stub.pool().len() != NAMES {
        bail!("{} names allocated, expected {NAMES}", stub.pool().len());
    }
    report(
        if pool_file.is_some() {
            "first query of a name (alloc + file + hook)"
        } else {
            "first query of a name (alloc + no-op hook)"
        },
        first,
    );

    let mut rng = fastrand::Rng::with_seed(19);
    let qs: Vec<Vec<u8>> = (0..QUERIES)
        .map(|i| query(&name(rng.usize(..NAMES)), i as u16))
        .collect::<Result<_>>()?;
    let mut seq = Vec::with_capacity(QUERIES);
    for q in &qs {
        seq.push(exchange(&c, q, &mut buf)?);
    }
    report("cached answer, 1 client sequential", seq);

    let per = QUERIES / CLIENTS;
    let mut threads = Vec::new();
    for k in 0..CLIENTS {
        let mine: Vec<Vec<u8>> = qs[k * per..(k + 1) * per].to_vec();
        threads.push(std::thread::spawn(move || -> Result<Vec<Duration>> {
            let c = client(addr)?;
            let mut buf = vec![0u8; 65535];
            mine.iter().map(|q| exchange(&c, q, &mut buf)).collect()
        }));
    }
    let mut conc = Vec::with_capacity(QUERIES);
    for t in threads {
        conc.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    report(
        &format!("cached answer, {CLIENTS} concurrent clients"),
        conc,
    );

    let mut fwd = Vec::with_capacity(FORWARDED);
    for i in 0..FORWARDED {
        fwd.push(exchange(
            &c,
            &query(&format!("other{i}.example.test."), i as u16)?,
            &mut buf,
        )?);
    }
    report("forwarded to the fake upstream (loopback)", fwd);
    let mut direct = Vec::with_capacity(FORWARDED);
    let d = client(up)?;
    for i in 0..FORWARDED {
        direct.push(exchange(
            &d,
            &query(&format!("other{i}.example.test."), i as u16)?,
            &mut buf,
        )?);
    }
    report("the fake upstream directly (no stub)", direct);
    println!("{:?}", stub.stats());
    stub.shutdown_handle().shutdown();
    if let Some(f) = pool_file {
        std::fs::remove_file(f)?;
    }
    Ok(())
}
