//! Atomic policy swap under real traffic through the tunnel. The connector's programs on
//! its tunnel interface enforce while its policy is swapped hundreds of times between
//! variants that agree on what alice (100.64.0.10, the device at the other end of the
//! tunnel) may do — web:80 yes, web:22 and web:443 no — but hand out class ids in a
//! different order, so a mix of two variants (sources of one, rules of another) would let
//! her reach web:22 or deny her web:80. Meanwhile an open connection and new connections
//! to :80 must all be answered, and connections to :22 (a listener that answers: the
//! control before the programs attach shows it) must never be.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_test_support::{
    net::{TcpOutcome, tcp_echo_servers, tcp_try},
    skip_unless_privileged,
    testkit::{load_policy, unix_now},
    tunnel::{LAB_TUN, Lab},
};
use gateway_user::Dataplane;
use policy_compiler::{Host, HostView};
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

fn variant(order: usize) -> String {
    let users =
        ["alice", "bob", "carol"].map(|u| format!("[[user]]\nemail = \"{u}@example.com\"\n"));
    let devices = [("alice", 10), ("bob", 11), ("carol", 12)].map(|(u, n)| {
        format!(
            "[[device]]\nname = \"{u}-laptop\"\nowner = \"{u}@example.com\"\naddress = \"100.64.0.{n}\"\n"
        )
    });
    let grants = [("alice", 80), ("bob", 22), ("carol", 443)].map(|(u, p)| {
        format!(
            "[[allow]]\nname = \"{u}-{p}\"\nprincipals = [\"{u}@example.com\"]\nresources = [\"web\"]\ntcp = [\"{p}\"]\n"
        )
    });
    let perm: [usize; 3] = match order {
        0 => [0, 1, 2],
        1 => [1, 0, 2],
        _ => [2, 1, 0],
    };
    let mut s = String::from(
        "[[remote_network]]\nname = \"corp\"\ncidrs = [\"198.18.1.0/24\"]\nconnectors = [\"conn\"]\n\n\
         [[resource]]\nname = \"web\"\nnetwork = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [\"22\", \"80\", \"443\"]\n\n",
    );
    for part in [&users, &devices, &grants] {
        for i in perm {
            s += &part[i];
            s += "\n";
        }
    }
    s
}

fn compile(order: usize, now: i64) -> HostView {
    let parsed = policy_compiler::parse(&variant(order), "swap.toml", now).unwrap();
    policy_compiler::compile(&parsed.policy, &Host::Connector("conn".into()), now).unwrap()
}

#[test]
fn swaps_under_tunnel_traffic_never_mix_policies() {
    if skip_unless_privileged!() {
        return;
    }
    let lab = Lab::new().unwrap();
    tcp_echo_servers(
        &lab.res,
        &["198.18.1.5:80", "198.18.1.5:22", "198.18.1.5:443"],
    )
    .unwrap();
    let (_dev, _conn) = lab.tunnels().unwrap();
    let t = Duration::from_millis(1500);
    // Control: without programs every port answers through the tunnel.
    for dst in ["198.18.1.5:80", "198.18.1.5:22", "198.18.1.5:443"] {
        assert_eq!(
            tcp_try(&lab.dev, dst, t),
            TcpOutcome::Echoed,
            "control: {dst}"
        );
    }

    let now = unix_now();
    let views: Vec<HostView> = (0..3).map(|o| compile(o, now)).collect();
    let mut dp = Dataplane::load().unwrap();
    let mut loaded = load_policy(&mut dp, &variant(0), "connector:conn", now).unwrap();
    lab.conn.run(|| dp.attach_tun(LAB_TUN)).unwrap().unwrap();
    assert_eq!(
        tcp_try(&lab.dev, "198.18.1.5:22", t),
        TcpOutcome::Silent,
        "web:22 denied"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (stream_ok, stream_bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (new_ok, new_bad, leaked) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    std::thread::scope(|s| {
        // One open connection, a byte echoed every few ms.
        s.spawn(|| {
            let mut c = lab
                .dev
                .run(|| TcpStream::connect_timeout(&"198.18.1.5:80".parse().unwrap(), t))
                .unwrap()
                .unwrap();
            c.set_read_timeout(Some(t)).unwrap();
            let mut b = [0u8; 1];
            while !stop.load(Ordering::Relaxed) {
                let ok = c.write_all(b"x").is_ok() && c.read_exact(&mut b).is_ok();
                let n = if ok { &stream_ok } else { &stream_bad };
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // New flows, each decided under whatever policy is in force.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let n = match tcp_try(&lab.dev, "198.18.1.5:80", t) {
                    TcpOutcome::Echoed => &new_ok,
                    _ => &new_bad,
                };
                n.fetch_add(1, Ordering::Relaxed);
                if tcp_try(&lab.dev, "198.18.1.5:22", Duration::from_millis(200))
                    != TcpOutcome::Silent
                {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        for i in 0..300 {
            loaded
                .writer
                .apply(&mut dp.policy, &views[(i + 1) % 3])
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (so, sb) = (
        stream_ok.load(Ordering::Relaxed),
        stream_bad.load(Ordering::Relaxed),
    );
    let (no, nb, l) = (
        new_ok.load(Ordering::Relaxed),
        new_bad.load(Ordering::Relaxed),
        leaked.load(Ordering::Relaxed),
    );
    eprintln!(
        "open connection: {so} echoes, {sb} failed; new :80 flows {no} ok, {nb} failed; :22 leaked {l}"
    );
    assert!(so > 100 && no > 10, "traffic ran during the swaps");
    assert_eq!(sb, 0, "the open connection never stalled");
    assert_eq!(nb, 0, "every new :80 flow was answered");
    assert_eq!(l, 0, "no :22 attempt got through");
}
