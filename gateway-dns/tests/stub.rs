//! The stub over real sockets on loopback, against a fake upstream.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gateway_dns::{Names, Stub};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::net::TcpStream;

fn names() -> Arc<TestNames> {
    TestNames::new(&[
        ("app.corp.test.", "app"),
        ("db.corp.test.", "db"),
        ("slow.corp.test.", "slow"),
        ("fail.corp.test.", "fail"),
        ("hang.corp.test.", "hang"),
        ("panic.corp.test.", "panic"),
    ])
}

fn in_pool(v4: Ipv4Addr) -> bool {
    "100.96.0.0/24".parse::<Ipv4Net>().unwrap().contains(&v4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matched_names_get_stable_distinct_proxy_addresses_across_restarts() {
    let up = Upstream::start().await;
    let dir = temp_dir("stable");
    let file = dir.join("pool.jsonl");
    let mut cfg = config(vec![up.addr]);
    cfg.pool_file = Some(file.clone());
    let intent = Arc::new(Recorder::default());
    let run = start(cfg.clone(), names(), intent.clone()).await;

    let raw = query("app.corp.test.", RecordType::A, true);
    let a = Message::from_vec(
        &udp_raw(run.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap(),
    )
    .unwrap();
    let req = Message::from_vec(&raw).unwrap();
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert_eq!(a.id(), req.id());
    assert!(a.recursion_desired() && a.recursion_available() && !a.authoritative());
    assert_eq!(a.queries(), req.queries(), "the question is echoed");
    assert!(
        a.extensions().is_some(),
        "a query with OPT gets an answer with OPT"
    );
    assert_eq!(a.answers().len(), 1);
    assert_eq!(a.answers()[0].ttl(), 30);
    let v4 = a_of(&a)[0];
    assert!(in_pool(v4), "{v4}");
    // The pair is on disk before the answer was sent.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("\"app.corp.test.\"") && text.contains(&v4.to_string()),
        "{text}"
    );

    let aaaa = ask(run.addr, "app.corp.test.", RecordType::AAAA).await;
    let v6 = aaaa_of(&aaaa)[0];
    assert!(
        "2001:db8:5353::/107"
            .parse::<Ipv6Net>()
            .unwrap()
            .contains(&v6),
        "{v6}"
    );
    // Case-insensitive, and without OPT no OPT.
    let upper = ask(run.addr, "APP.Corp.TEST.", RecordType::A).await;
    assert_eq!(a_of(&upper), vec![v4]);
    assert!(upper.extensions().is_none());
    assert_eq!(
        upper.queries()[0].name().to_ascii(),
        "APP.Corp.TEST.",
        "the question is echoed as asked"
    );
    // Another name: another pair.
    let db = a_of(&ask(run.addr, "db.corp.test.", RecordType::A).await)[0];
    assert!(in_pool(db) && db != v4, "{db} vs {v4}");
    assert_eq!(
        run.stub.pool().name_of(IpAddr::V4(v4)).as_deref(),
        Some("app.corp.test.")
    );
    assert_eq!(
        run.stub.pool().name_of(IpAddr::V6(v6)).as_deref(),
        Some("app.corp.test.")
    );
    assert_eq!(
        run.stub.pool().name_of(IpAddr::V4(db)).as_deref(),
        Some("db.corp.test.")
    );
    // The hook ran once per name (four queries of app), with the answered addresses.
    let calls = intent.calls_for("app.corp.test.");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].v4, calls[0].v6, calls[0].resource.as_str()),
        (v4, v6, "app")
    );
    assert_eq!(up.count(), 0, "nothing was forwarded");
    assert_eq!(run.stub.stats().answered, 4);
    drop(run);

    // A restart with the file: the pairs are loaded before any query, and answered again
    // (db first this time).
    let run = start(cfg, names(), Arc::new(Recorder::default())).await;
    assert_eq!(run.stub.pool().get("app.corp.test."), Some((v4, v6)));
    assert_eq!(
        a_of(&ask(run.addr, "db.corp.test.", RecordType::A).await),
        vec![db]
    );
    assert_eq!(
        a_of(&ask(run.addr, "app.corp.test.", RecordType::A).await),
        vec![v4]
    );
    drop(run);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_waits_for_the_hook_and_a_failing_or_slow_hook_gives_servfail() {
    let up = Upstream::start().await;
    let mut cfg = config(vec![up.addr]);
    cfg.reprepare_after = Duration::from_millis(400);
    let intent = Arc::new(Recorder::default());
    let run = start(cfg, names(), intent.clone()).await;

    // Five concurrent queries for a new name whose hook takes 300 ms: one hook run, and every
    // answer arrives after it ended, with the addresses it saw.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let addr = run.addr;
        tasks.push(tokio::spawn(async move {
            let m = ask(addr, "slow.corp.test.", RecordType::A).await;
            (m, Instant::now())
        }));
    }
    let calls = {
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let calls = intent.calls_for("slow.corp.test.");
        assert_eq!(
            calls.len(),
            1,
            "concurrent queries share one hook run: {calls:?}"
        );
        for (m, at) in &answers {
            assert_eq!(m.response_code(), ResponseCode::NoError);
            assert_eq!(
                a_of(m),
                vec![calls[0].v4],
                "the hook saw the answered address"
            );
            assert!(
                *at >= calls[0].ended,
                "an answer arrived before the hook ended"
            );
        }
        calls
    };
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Within `reprepare_after`: no new run, answered at once.
    let t1 = Instant::now();
    assert_eq!(
        a_of(&ask(run.addr, "slow.corp.test.", RecordType::A).await),
        vec![calls[0].v4]
    );
    assert!(
        t1.elapsed() < Duration::from_millis(250),
        "{:?}",
        t1.elapsed()
    );
    assert_eq!(intent.calls_for("slow.corp.test.").len(), 1);
    // After it: the hook runs again before the answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = ask(run.addr, "slow.corp.test.", RecordType::A).await;
    let calls = intent.calls_for("slow.corp.test.");
    assert_eq!(calls.len(), 2);
    assert_eq!(a_of(&m), vec![calls[1].v4]);
    assert_eq!(calls[1].v4, calls[0].v4, "the same pair");

    // A failing hook: SERVFAIL, and again (it is retried) on the next query.
    for _ in 0..2 {
        let m = ask(run.addr, "fail.corp.test.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert!(m.answers().is_empty());
    }
    assert_eq!(intent.calls_for("fail.corp.test.").len(), 2);
    // A hook slower than `prepare_timeout` (1 s): SERVFAIL after about the timeout.
    let t2 = Instant::now();
    let m = ask(run.addr, "hang.corp.test.", RecordType::AAAA).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(
        t2.elapsed() >= Duration::from_millis(900) && t2.elapsed() < Duration::from_secs(3),
        "{:?}",
        t2.elapsed()
    );
    let s = run.stub.stats();
    assert_eq!((s.prepare_failures, s.servfail), (3, 3), "{s:?}");
    // Positive control in the same stub: a plain name is answered.
    assert_eq!(
        ask(run.addr, "app.corp.test.", RecordType::A)
            .await
            .response_code(),
        ResponseCode::NoError
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_not_reachable_are_relayed_byte_for_byte() {
    let up = Upstream::start().await;
    let run = start(
        config(vec![up.addr]),
        names(),
        Arc::new(Recorder::default()),
    )
    .await;
    // `admin.corp.test.` is a resource this device may not reach: `Names` says None, like for
    // any other name. NXDOMAIN is relayed as such.
    for (name, t, edns) in [
        ("admin.corp.test.", RecordType::A, false),
        ("admin.corp.test.", RecordType::AAAA, true),
        ("www.example.test.", RecordType::MX, false),
        ("nxdomain.corp.test.", RecordType::A, true),
        ("app.corp.test.bad.", RecordType::A, false),
    ] {
        let raw = query(name, t, edns);
        let before = up.count();
        let via_stub = udp_raw(run.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(up.count(), before + 1);
        assert_eq!(
            up.queries.lock().unwrap().last().unwrap(),
            &raw,
            "the upstream saw the query unchanged"
        );
        let direct = udp_raw(up.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            via_stub, direct,
            "{name} {t}: the stub changed the upstream's answer"
        );
    }
    assert_eq!(run.stub.stats().forwarded, 5);
    // An escaped dot makes a different name that prints like a matched one: forwarded, not matched.
    let mut m = Message::new();
    m.set_id(7).set_recursion_desired(true);
    let tricky = Name::from_labels(vec![&b"app.corp"[..], &b"test"[..]]).unwrap();
    m.add_query(Query::query(tricky, RecordType::A));
    let raw = m.to_vec().unwrap();
    let via_stub = udp_raw(run.addr, &raw, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        via_stub,
        udp_raw(up.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap()
    );
    // The positive control: a name the device may reach gets a proxy address, not the upstream's.
    let m = ask(run.addr, "app.corp.test.", RecordType::A).await;
    assert!(in_pool(a_of(&m)[0]));

    // After a policy update removing app, it is relayed like any other name.
    run.stub
        .set_names(TestNames::new(&[("db.corp.test.", "db")]) as Arc<dyn Names>);
    let raw = query("app.corp.test.", RecordType::A, false);
    let via_stub = udp_raw(run.addr, &raw, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        via_stub,
        udp_raw(up.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_types_for_matched_names_are_nodata_and_never_forwarded() {
    let up = Upstream::start().await;
    let run = start(
        config(vec![up.addr]),
        names(),
        Arc::new(Recorder::default()),
    )
    .await;
    for t in [
        RecordType::MX,
        RecordType::TXT,
        RecordType::HTTPS,
        RecordType::SVCB,
        RecordType::ANY,
        RecordType::CNAME,
    ] {
        let m = ask(run.addr, "app.corp.test.", t).await;
        assert_eq!(m.response_code(), ResponseCode::NoError, "{t}");
        assert!(
            m.answers().is_empty() && m.name_servers().is_empty(),
            "{t}: {m:?}"
        );
        assert_eq!(m.queries()[0].query_type(), t);
    }
    assert_eq!(up.count(), 0, "a matched name's query was forwarded");
    assert_eq!(run.stub.stats().nodata, 6);
    // The positive control: the same types for an unmatched name reach the upstream.
    for t in [RecordType::MX, RecordType::HTTPS] {
        let m = ask(run.addr, "other.corp.test.", t).await;
        assert!(!m.answers().is_empty());
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_and_relays_two_queries_on_one_connection() {
    let up = Upstream::start().await;
    let run = start(
        config(vec![up.addr]),
        names(),
        Arc::new(Recorder::default()),
    )
    .await;
    let mut s = TcpStream::connect(run.addr).await.unwrap();
    let m = Message::from_vec(
        &tcp_exchange(&mut s, &query("App.corp.test.", RecordType::AAAA, false)).await,
    )
    .unwrap();
    let v6 = aaaa_of(&m)[0];
    assert_eq!(run.stub.pool().get("app.corp.test.").unwrap().1, v6);
    let raw = query("admin.corp.test.", RecordType::A, true);
    let via_stub = tcp_exchange(&mut s, &raw).await;
    assert_eq!(up.queries.lock().unwrap().last().unwrap(), &raw);
    let mut direct = TcpStream::connect(up.addr).await.unwrap();
    assert_eq!(via_stub, tcp_exchange(&mut direct, &raw).await);
    // And the same name over UDP gets the same address.
    assert_eq!(
        aaaa_of(&ask(run.addr, "app.corp.test.", RecordType::AAAA).await),
        vec![v6]
    );
    // A length over `tcp_max_message` closes the connection, without an answer.
    s.write_all(&[0xff, 0xff]).await.unwrap();
    let mut b = [0u8; 2];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection stays open");
}

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_breaks_the_stub() {
    let up = Upstream::start().await;
    let run = start(
        config(vec![up.addr]),
        names(),
        Arc::new(Recorder::default()),
    )
    .await;
    let wait = Duration::from_millis(300);
    let good = query("app.corp.test.", RecordType::A, false);

    // QR set: dropped; the same bytes with QR clear: answered.
    let mut qr = good.clone();
    qr[2] |= 0x80;
    assert_eq!(udp_raw(run.addr, &qr, wait).await, None);
    assert!(udp_raw(run.addr, &good, wait).await.is_some());
    // Shorter than a header: dropped.
    assert_eq!(udp_raw(run.addr, &good[..11], wait).await, None);
    // A header, then garbage: FORMERR.
    let mut broken = good[..12].to_vec();
    broken.extend_from_slice(&[0xc0, 0xff, 1, 2]);
    let m = Message::from_vec(&udp_raw(run.addr, &broken, wait).await.unwrap()).unwrap();
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    // Two questions: FORMERR.
    let mut two = Message::from_vec(&good).unwrap();
    two.add_query(Query::query(
        Name::from_ascii("db.corp.test.").unwrap(),
        RecordType::A,
    ));
    let m = Message::from_vec(
        &udp_raw(run.addr, &two.to_vec().unwrap(), wait)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    // Opcodes other than QUERY: NOTIMP.
    for op in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut m = Message::from_vec(&good).unwrap();
        m.set_op_code(op);
        let r = Message::from_vec(&udp_raw(run.addr, &m.to_vec().unwrap(), wait).await.unwrap())
            .unwrap();
        assert_eq!(r.response_code(), ResponseCode::NotImp, "{op:?}");
        assert_eq!(r.id(), m.id());
    }
    let s = run.stub.stats();
    assert_eq!((s.dropped, s.formerr, s.notimp), (2, 2, 3), "{s:?}");

    // Thousands of random and mutated datagrams from one socket (answers not awaited).
    let mut rng = fastrand::Rng::with_seed(0x5eed_d115);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let t0 = Instant::now();
    for i in 0..6000 {
        let b: Vec<u8> = if i % 2 == 0 {
            (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect()
        } else {
            let mut b = query(
                if i % 4 == 1 {
                    "app.corp.test."
                } else {
                    "x.example.test."
                },
                RecordType::A,
                i % 3 == 0,
            );
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..b.len());
                b[at] = rng.u8(..);
            }
            b.truncate(rng.usize(0..=b.len()));
            b
        };
        sock.send_to(&b, run.addr).await.unwrap();
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Over TCP too: random frames on a few connections.
    for _ in 0..20 {
        let mut s = TcpStream::connect(run.addr).await.unwrap();
        let len = rng.usize(12..300);
        let mut frame = (len as u16).to_be_bytes().to_vec();
        frame.extend((0..len).map(|_| rng.u8(..)));
        let _ = s.write_all(&frame).await;
    }
    assert!(!run.task.is_finished(), "the stub stopped");
    // Still answering, promptly.
    let m = ask(run.addr, "app.corp.test.", RecordType::A).await;
    assert!(in_pool(a_of(&m)[0]));
    let raw = query("after.example.test.", RecordType::A, false);
    assert_eq!(
        udp_raw(run.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap(),
        udp_raw(up.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_gives_servfail_and_keeps_existing_pairs() {
    let up = Upstream::start().await;
    let mut cfg = config(vec![up.addr]);
    cfg.v4_prefix = "100.96.0.8/30".parse().unwrap();
    let list: Vec<String> = (0..6).map(|i| format!("n{i}.corp.test.")).collect();
    let pairs: Vec<(&str, &str)> = list.iter().map(|n| (n.as_str(), "wild")).collect();
    let run = start(cfg, TestNames::new(&pairs), Arc::new(Recorder::default())).await;
    let mut got = Vec::new();
    for n in &list[..4] {
        let m = ask(run.addr, n, RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NoError, "{n}");
        got.push(a_of(&m)[0]);
    }
    let mut uniq = got.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 4, "an address was reused: {got:?}");
    assert!(
        got.iter()
            .all(|a| "100.96.0.8/30".parse::<Ipv4Net>().unwrap().contains(a))
    );
    for n in &list[4..] {
        let m = ask(run.addr, n, RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail, "{n}");
        assert!(run.stub.pool().get(n).is_none());
    }
    for (n, a) in list[..4].iter().zip(&got) {
        assert_eq!(
            a_of(&ask(run.addr, n, RecordType::A).await),
            vec![*a],
            "{n} lost its address"
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_or_silent_gives_servfail_within_the_timeout() {
    let up = Upstream::start().await;
    // A port nobody listens on (refused at once) and a socket that never answers.
    let closed: SocketAddr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();

    let run = start(config(vec![closed]), names(), Arc::new(Recorder::default())).await;
    let t0 = Instant::now();
    let m = ask(run.addr, "x.example.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(
        t0.elapsed() < Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
    let s = run.stub.stats();
    assert_eq!(
        (s.upstream_errors, s.servfail, s.forwarded),
        (1, 1, 0),
        "{s:?}"
    );
    drop(run);

    let run = start(
        config(vec![silent_addr]),
        names(),
        Arc::new(Recorder::default()),
    )
    .await;
    let t0 = Instant::now();
    let m = ask(run.addr, "x.example.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(run.stub.stats().upstream_timeouts, 1);
    drop(run);

    // The positive control: a silent upstream first, then a good one: answered by the second.
    let run = start(
        config(vec![silent_addr, up.addr]),
        names(),
        Arc::new(Recorder::default()),
    )
    .await;
    let raw = query("x.example.test.", RecordType::A, false);
    let via_stub = udp_raw(run.addr, &raw, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        via_stub,
        udp_raw(up.addr, &raw, Duration::from_secs(5))
            .await
            .unwrap()
    );
    let s = run.stub.stats();
    assert_eq!(
        (s.upstream_timeouts, s.forwarded, s.servfail),
        (1, 1, 0),
        "{s:?}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_hook_gives_servfail_and_is_tried_again() {
    let up = Upstream::start().await;
    let intent = Arc::new(Recorder::default());
    let run = start(config(vec![up.addr]), names(), intent.clone()).await;
    for i in 1..=2 {
        let m = ask(run.addr, "panic.corp.test.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert_eq!(run.stub.stats().prepares, i, "the hook was not run again");
    }
    // The positive control: another name in the same stub is answered.
    assert!(in_pool(
        a_of(&ask(run.addr, "app.corp.test.", RecordType::A).await)[0]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_beyond_max_inflight_get_servfail_at_once() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(vec![silent.local_addr().unwrap()]);
    cfg.max_inflight = 2;
    cfg.upstream_timeout = Duration::from_millis(800);
    let run = start(cfg, names(), Arc::new(Recorder::default())).await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        let addr = run.addr;
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let m = ask(addr, &format!("q{i}.example.test."), RecordType::A).await;
            (m.response_code(), t.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fast = 0;
    for t in tasks {
        let (rcode, took) = t.await.unwrap();
        assert_eq!(rcode, ResponseCode::ServFail);
        if took < Duration::from_millis(400) {
            fast += 1;
        }
    }
    let s = run.stub.stats();
    assert_eq!(
        (fast, s.overloaded, s.upstream_timeouts),
        (3, 3, 2),
        "{s:?}"
    );
    // The positive control: with the slots free again, a query is served.
    assert!(in_pool(
        a_of(&ask(run.addr, "app.corp.test.", RecordType::A).await)[0]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed_and_ipv6_loopback_works() {
    let up = Upstream::start().await;
    let mut cfg = config(vec![up.addr]);
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    cfg.tcp_idle_timeout = Duration::from_millis(300);
    let run = start(cfg, names(), Arc::new(Recorder::default())).await;
    let v6 = run.stub.local_addrs()[1];
    assert!(v6.is_ipv6());
    let over_v6 =
        Message::from_vec(&udp_raw6(v6, &query("app.corp.test.", RecordType::A, false)).await)
            .unwrap();
    let over_v4 = ask(run.addr, "app.corp.test.", RecordType::A).await;
    assert_eq!(a_of(&over_v6), a_of(&over_v4));
    // A connection in use stays open; an idle one is closed after the timeout.
    let mut s = TcpStream::connect(v6).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tcp_exchange(&mut s, &query("app.corp.test.", RecordType::A, false)).await;
    }
    let t = Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
}

async fn udp_raw6(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let s = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    s.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf[..n].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_file_that_cannot_be_written_fails_at_bind() {
    let up = Upstream::start().await;
    let dir = temp_dir("unwritable");
    let mut cfg = config(vec![up.addr]);
    cfg.pool_file = Some(dir.join("missing-dir").join("pool.jsonl"));
    let err = format!(
        "{:#}",
        Stub::bind(cfg.clone(), names(), Arc::new(Recorder::default()))
            .await
            .unwrap_err()
    );
    assert!(err.contains("missing-dir/pool.jsonl"), "{err}");
    // The positive control: a writable path is created at bind, with the header.
    cfg.pool_file = Some(dir.join("pool.jsonl"));
    let stub = Stub::bind(cfg, names(), Arc::new(Recorder::default()))
        .await
        .unwrap();
    assert!(
        std::fs::read_to_string(dir.join("pool.jsonl"))
            .unwrap()
            .contains("gateway-dns proxy addresses")
    );
    drop(stub);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_edns_version_gets_badvers() {
    let up = Upstream::start().await;
    let run = start(
        config(vec![up.addr]),
        names(),
        Arc::new(Recorder::default()),
    )
    .await;
    for (version, want) in [(1, ResponseCode::BADVERS), (0, ResponseCode::NoError)] {
        let mut m = Message::from_vec(&query("app.corp.test.", RecordType::A, true)).unwrap();
        m.extensions_mut().as_mut().unwrap().set_version(version);
        let r = Message::from_vec(
            &udp_raw(run.addr, &m.to_vec().unwrap(), Duration::from_secs(5))
                .await
                .unwrap(),
        )
        .unwrap();
        // 16 is BADVERS in an answer to a query (hickory reads it as its twin BADSIG).
        assert_eq!(
            u16::from(r.response_code()),
            u16::from(want),
            "version {version}"
        );
        assert_eq!(r.extensions().as_ref().map(|e| e.version()), Some(0));
        assert_eq!(r.answers().is_empty(), version == 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_moving_to_another_resource_runs_the_hook_again() {
    let up = Upstream::start().await;
    let intent = Arc::new(Recorder::default());
    let run = start(config(vec![up.addr]), names(), intent.clone()).await;
    let a = a_of(&ask(run.addr, "app.corp.test.", RecordType::A).await);
    assert_eq!(
        a_of(&ask(run.addr, "app.corp.test.", RecordType::A).await),
        a
    );
    assert_eq!(
        intent.calls_for("app.corp.test.").len(),
        1,
        "the same resource: no new run"
    );
    run.stub
        .set_names(TestNames::new(&[("app.corp.test.", "app-v2")]) as Arc<dyn Names>);
    assert_eq!(
        a_of(&ask(run.addr, "app.corp.test.", RecordType::A).await),
        a,
        "the pair stays"
    );
    let calls = intent.calls_for("app.corp.test.");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].resource, "app-v2");
}
