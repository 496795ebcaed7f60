//! 200 simulated device agents plus a connector agent (real gRPC watch streams on
//! loopback, no kernel: each applies its updates to an in-memory HostView and acks).
//! Measures, over 20 policy changes, the time from the start of `ApplyPolicy` until every
//! affected agent has acknowledged the new generation; prints p50/p99 and checks that
//! every agent converges to exactly a fresh compile and that unaffected agents get
//! nothing.
//!
//! `cargo test -p controller --release --test scale -- --nocapture` prints the figures.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gateway_proto::v1::{self, watch_response::Update};
use gateway_proto::{apply_delta, parse_host, view_from_wire};
use policy_compiler::{HostView, compile, parse, to_kernel};
use tokio::sync::mpsc;

const DEVICES: usize = 200;
const GROUPS: usize = 10;
const CHANGES: usize = 20;

/// The policy of change `k`: resource `r{k % GROUPS}` gets an extra port (affects that
/// group's 20 devices and the connector); for k in 5..=9 and 15..=19 an extra resource exists as well
/// (adding/removing it changes every host's DST entries).
fn policy(k: usize) -> String {
    let mut s = String::from(
        "[[remote_network]]\nname = \"corp\"\ncidrs = [\"198.18.0.0/16\"]\nconnectors = [\"c1\"]\n\n",
    );
    for r in 0..GROUPS {
        let extra = if k > 0 && k % GROUPS == r {
            format!(", \"{}\"", 8000 + k)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "[[resource]]\nname = \"r{r}\"\nnetwork = \"corp\"\naddress = \"198.18.1.{}\"\ntcp = [\"443\"{extra}]\n",
            r + 1
        );
    }
    if (k / 5) % 2 == 1 {
        s.push_str("[[resource]]\nname = \"extra\"\nnetwork = \"corp\"\naddress = \"198.18.9.0/24\"\ntcp = [\"22\"]\n\n");
    }
    for u in 0..DEVICES {
        let _ = writeln!(
            s,
            "[[user]]\nemail = \"u{u}@example.com\"\n\n[[device]]\nname = \"d{u}\"\nowner = \"u{u}@example.com\"\naddress = \"198.19.{}.{}\"\n",
            u / 250,
            u % 250 + 1
        );
    }
    for g in 0..GROUPS {
        let members: Vec<String> = (0..DEVICES)
            .filter(|u| u % GROUPS == g)
            .map(|u| format!("\"u{u}@example.com\""))
            .collect();
        let _ = writeln!(
            s,
            "[[group]]\nname = \"g{g}\"\nmembers = [{}]\n\n[[allow]]\nname = \"a{g}\"\nprincipals = [\"g{g}\"]\nresources = [\"r{g}\"]\n",
            members.join(", ")
        );
    }
    s
}

type Views = Arc<Mutex<HashMap<String, (u64, HostView, usize)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_change_to_all_acked_latency() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    apply(&mut admin, &policy(0)).await;

    let mut hosts: Vec<String> = (0..DEVICES).map(|i| format!("device:d{i}")).collect();
    hosts.push("connector:c1".into());
    let views: Views = Arc::new(Mutex::new(HashMap::new()));
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(String, u64, Instant)>();
    let mut tasks = Vec::new();
    for host in &hosts {
        let auth = enroll(&ctl, host).await;
        // One connection per agent, like real agents.
        let mut agent = ctl.agent().await;
        let mut stream = agent
            .watch(v1::WatchRequest {
                auth: Some(auth.clone()),
                generation: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let (host, views, ack_tx) = (host.clone(), views.clone(), ack_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut view: Option<HostView> = None;
            let mut received = 0usize;
            // Bounded: the stream ends at shutdown; no message for 60 s ends it too.
            while let Ok(Ok(Some(m))) =
                tokio::time::timeout(Duration::from_secs(60), stream.message()).await
            {
                received += 1;
                match m.update {
                    Some(Update::Snapshot(v)) => view = Some(view_from_wire(&v).unwrap()),
                    Some(Update::Delta(d)) => apply_delta(view.as_mut().unwrap(), &d).unwrap(),
                    None => panic!("empty update"),
                }
                agent
                    .ack(v1::AckRequest {
                        auth: Some(auth.clone()),
                        generation: m.generation,
                    })
                    .await
                    .unwrap();
                views.lock().unwrap().insert(
                    host.clone(),
                    (m.generation, view.clone().unwrap(), received),
                );
                let _ = ack_tx.send((host.clone(), m.generation, Instant::now()));
            }
        }));
    }
    // Every agent has its snapshot.
    let deadline = Instant::now() + Duration::from_secs(60);
    while views.lock().unwrap().len() < hosts.len() {
        assert!(Instant::now() < deadline, "snapshots not all acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while ack_rx.try_recv().is_ok() {}

    let mut expected_msgs: BTreeMap<String, usize> = hosts.iter().map(|h| (h.clone(), 1)).collect();
    let mut latencies = Vec::new();
    let mut affected = Vec::new();
    for k in 1..=CHANGES {
        let t0 = Instant::now();
        let plan = apply(&mut admin, &policy(k)).await;
        let mut waiting: HashMap<String, u64> = plan
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.new_generation))
            .collect();
        affected.push(waiting.len());
        for h in waiting.keys() {
            *expected_msgs.get_mut(h).unwrap() += 1;
        }
        let mut last = t0;
        while !waiting.is_empty() {
            let (h, g, at) = tokio::time::timeout(Duration::from_secs(30), ack_rx.recv())
                .await
                .expect("acks arrive in time")
                .unwrap();
            if waiting.get(&h) == Some(&g) {
                waiting.remove(&h);
                last = last.max(at);
            }
        }
        latencies.push(last - t0);
    }
    // Converged: every agent holds exactly a fresh compile of the final policy, and got
    // exactly one message per change of its own view.
    let text = admin
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policy_toml;
    let final_policy = parse(&text, "p", now()).unwrap().policy;
    {
        let views = views.lock().unwrap();
        let gens = ctl.state.generations();
        for h in &hosts {
            let (g, v, received) = &views[h];
            assert_eq!(*g, gens[h], "{h} at the current generation");
            let fresh = compile(&final_policy, &parse_host(h).unwrap(), now()).unwrap();
            assert_eq!(
                to_kernel(v, 0, |t| t as u64),
                to_kernel(&fresh, 0, |t| t as u64),
                "{h}"
            );
            assert_eq!(
                *received, expected_msgs[h],
                "{h}: one message per change of its view"
            );
        }
    }
    let agents = admin
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert!(
        agents
            .iter()
            .all(|a| a.connected && a.acked_generation == a.current_generation)
    );

    let mut sorted = latencies.clone();
    sorted.sort();
    let pct =
        |p: f64| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "200 agents (+1 connector), {CHANGES} changes, hosts affected per change {affected:?}\n\
         change -> all affected agents acknowledged: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal p99 < 50 ms)",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*sorted.last().unwrap())
    );
    ctl.stop().await;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
}
