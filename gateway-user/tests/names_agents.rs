//! DNS resources end to end: a device and a connector, both `gateway-agent`s with
//! `[tunnel]` and `[names]`, a resource host serving two names on one address, and two
//! zone servers (the connector's resolver beside the resources, the device's own
//! upstream on its loopback):
//!
//! ```text
//!  alice 198.19.1.10 (device, overlay 100.64.0.10, stub on 100.64.0.10:53) ──veth── conn ──veth── res
//!        upstream zone 127.0.0.1:5301                                       198.18.1.1    198.18.1.5 (app, admin)
//!                                                                                         198.18.1.6 (app, later)
//!                                                                                         zone 198.18.1.53:53
//! ```
//!
//! What a user relies on (issue 19's "done when"):
//! - alice may reach `app.corp.test` (tcp 443) and not `admin.corp.test` (tcp 8443), both on
//!   198.18.1.5: app works through its proxy address; admin gets nothing, through the real
//!   address, through app's proxy address (a hosts-file entry), or through a proxy
//!   address nobody handed out. The control: granting alice admin makes admin answer on
//!   the same path, and the listeners answer the connector directly.
//! - `*.w.corp.test` covers `a.w.corp.test` and `b.w.corp.test`, not `w.corp.test` nor
//!   `x.a.w.corp.test` (their queries are answered as upstream would).
//! - app re-resolves to 198.18.1.6 mid-connection: the open connection stays on .5, a new
//!   one goes to .6.
//! - The connection logs name the DNS name and the address it resolved to.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use gateway_test_support::{
    dns::{self, Zone},
    net::{TcpOutcome, tcp_echo_servers, tcp_try},
    netns::{NetNs, unique_name, veth_pair},
    process::AgentProcess,
    skip_unless_privileged,
};
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const T: Duration = Duration::from_millis(1500);
const STUB: &str = "100.64.0.10:53";

struct Host {
    ns: NetNs,
    cfg: PathBuf,
    key: PathBuf,
    log: PathBuf,
    err: PathBuf,
}

struct World {
    tmp: PathBuf,
    alice: Host,
    conn: Host,
    _res: NetNs,
    conn_link: String,
    /// The connector's resolver's zone (what the connector resolves names with).
    inside: Zone,
    /// The device's upstream (what names alice may not reach are answered with).
    outside: Zone,
}

impl Drop for World {
    fn drop(&mut self) {
        for h in [&self.alice, &self.conn] {
            let _ = Command::new(AGENT)
                .args(["detach", "--config"])
                .arg(&h.cfg)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn host(tmp: &Path, name: &str, ns: NetNs) -> Host {
    Host {
        ns,
        cfg: tmp.join(format!("{name}.toml")),
        key: tmp.join(format!("keys-{name}/wireguard.key")),
        log: tmp.join(format!("{name}.log")),
        err: tmp.join(format!("{name}.err")),
    }
}

fn link_of(ns: &NetNs) -> String {
    let out = ns.ip(&["-o", "link", "show", "type", "veth"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split(": ")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string()
}

fn write_cfg(w: &World, h: &Host, device: bool) {
    let (role, name, link, port, names) = if device {
        (
            "device",
            "alice-laptop",
            link_of(&h.ns),
            0,
            format!(
                "[names]\nupstreams = [\"127.0.0.1:5301\"]\nproxy_v6 = \"2001:db8:ffff::/107\"\n\
                 pool_file = \"{}\"\n",
                w.tmp.join("names.json").display()
            ),
        )
    } else {
        (
            "connector",
            "conn",
            w.conn_link.clone(),
            51820,
            "[names]\nupstreams = [\"198.18.1.53:53\"]\nmin_ttl_secs = 1\nmax_names_per_device = 4\n"
                .to_string(),
        )
    };
    let pin = format!("/sys/fs/bpf/{}", unique_name("ztgn"));
    std::fs::write(
        &h.cfg,
        format!(
            "role = \"{role}\"\nname = \"{name}\"\npolicy_file = \"{}\"\n\
             pin_dir = \"{pin}\"\nxdp_interfaces = [\"{link}\"]\ntc_egress_interfaces = [\"{link}\"]\n\
             xdp_mode = \"generic\"\nlog_file = \"{}\"\npolicy_poll_ms = 100\n\n\
             [tunnel]\ntransport = \"userspace\"\ninterface = \"ztg0\"\nlisten_port = {port}\n\
             private_key_file = \"{}\"\n\n{names}",
            w.tmp.join("policy.toml").display(),
            h.log.display(),
            h.key.display(),
        ),
    )
    .unwrap();
}

fn public_key(h: &Host) -> String {
    let out = Command::new(AGENT)
        .args(["public-key", "--config"])
        .arg(&h.cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `admin_granted`: alice may also reach `admin` by name and 198.18.1.5:8443 by address
/// (the control: the same paths answer when the policy says so).
fn policy(conn: &str, alice: &str, admin_granted: bool) -> String {
    let admin = if admin_granted {
        ", \"admin\", \"admin-ip\""
    } else {
        ""
    };
    format!(
        r#"
[[remote_network]]
name = "corp"
cidrs = ["198.18.1.0/24"]
connectors = ["conn"]

[[connector]]
name = "conn"
public_key = "{conn}"
endpoint = "198.19.1.1:51820"

[[resource]]
name = "app"
network = "corp"
address = "app.corp.test"
tcp = ["443"]

[[resource]]
name = "admin"
network = "corp"
address = "admin.corp.test"
tcp = ["8443"]

[[resource]]
name = "wild"
network = "corp"
address = "*.w.corp.test"
tcp = ["443"]

[[resource]]
name = "admin-ip"
network = "corp"
address = "198.18.1.5"
tcp = ["8443"]

[[user]]
email = "alice@example.com"

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["100.64.0.10"]
public_key = "{alice}"

[[allow]]
name = "alice-apps"
principals = ["alice@example.com"]
resources = ["app", "wild"{admin}]
"#
    )
}

/// A TCP server on `addr` that first sends its own address and a newline, then echoes:
/// which real address a connection reached.
fn tagged_server(ns: &NetNs, addr: &str) {
    let a: SocketAddr = addr.parse().unwrap();
    let l = ns.run(|| TcpListener::bind(a)).unwrap().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let tag = format!("{}\n", a.ip());
                if c.write_all(tag.as_bytes()).is_err() {
                    return;
                }
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

/// Connects from `ns` to `dst` and reads the server's tag.
fn connect_tagged(ns: &NetNs, dst: SocketAddr) -> Option<(TcpStream, String)> {
    let mut c = ns
        .run(|| TcpStream::connect_timeout(&dst, T))
        .unwrap()
        .ok()?;
    c.set_read_timeout(Some(T)).unwrap();
    let mut tag = Vec::new();
    let mut b = [0u8; 1];
    while c.read_exact(&mut b).is_ok() && b[0] != b'\n' {
        tag.push(b[0]);
    }
    Some((c, String::from_utf8_lossy(&tag).to_string()))
}

fn echo_once(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    c.write_all(b"z").is_ok() && c.read_exact(&mut b).is_ok() && b == *b"z"
}

fn world() -> World {
    let tmp = std::env::temp_dir().join(unique_name("ztg-names"));
    std::fs::create_dir_all(&tmp).unwrap();
    let alice = NetNs::new("zna").unwrap();
    let conn = NetNs::new("znc").unwrap();
    let res = NetNs::new("znr").unwrap();
    let (_, ca) = veth_pair(&alice, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"]).unwrap();
    veth_pair(
        &conn,
        &["198.18.1.1/24"],
        &res,
        &["198.18.1.5/24", "198.18.1.6/24", "198.18.1.53/24"],
    )
    .unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    alice.ip(&["link", "set", "lo", "up"]).unwrap();
    tagged_server(&res, "198.18.1.5:443");
    tagged_server(&res, "198.18.1.6:443");
    tcp_echo_servers(&res, &["198.18.1.5:8443", "198.18.1.6:8443"]).unwrap();
    let inside = Zone::default();
    for n in [
        "admin.corp.test",
        "a.w.corp.test",
        "b.w.corp.test",
        "c.w.corp.test",
    ] {
        inside.set(n, &["198.18.1.5"], 300);
    }
    // A short TTL: the connector renews app's resolution every 2 s.
    inside.set("app.corp.test", &["198.18.1.5"], 2);
    dns::serve(&res, "198.18.1.53:53", &inside).unwrap();
    let outside = Zone::default();
    for n in [
        "app.corp.test",
        "admin.corp.test",
        "w.corp.test",
        "x.a.w.corp.test",
        "a.w.corp.test",
    ] {
        outside.set(n, &["198.18.1.5"], 300);
    }
    dns::serve(&alice, "127.0.0.1:5301", &outside).unwrap();
    World {
        alice: host(&tmp, "alice", alice),
        conn: host(&tmp, "conn", conn),
        tmp,
        _res: res,
        conn_link: ca.iface,
        inside,
        outside,
    }
}

fn start(h: &Host, label: &str) -> AgentProcess {
    let mut a = AgentProcess::start(label, h.ns.name(), Path::new(AGENT), &h.cfg, &h.err).unwrap();
    a.wait_ready(Duration::from_secs(30)).unwrap();
    a
}

fn ask(w: &World, name: &str, v6: bool) -> dns::Answer {
    dns::query(&w.alice.ns, STUB, name, v6, Duration::from_secs(6))
        .unwrap()
        .unwrap_or_else(|| panic!("no answer from the stub for {name}"))
}

fn proxy_v4(a: &dns::Answer) -> Option<IpAddr> {
    a.addrs.iter().copied().find(
        |ip| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 100 && (v4.octets()[1] & 0xe0) == 96),
    )
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_record(path: &Path, f: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        if let Some(r) = records(path).into_iter().find(&f) {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn dns_resources_reach_only_the_named_resource() {
    if skip_unless_privileged!() {
        return;
    }
    let w = world();
    write_cfg(&w, &w.alice, true);
    write_cfg(&w, &w.conn, false);
    let (kc, ka) = (public_key(&w.conn), public_key(&w.alice));
    std::fs::write(w.tmp.join("policy.toml"), policy(&kc, &ka, false)).unwrap();
    let mut conn = start(&w.conn, "conn");
    let mut alice = start(&w.alice, "alice");
    alice
        .wait_for("DNS stub resolver up", Duration::from_secs(10))
        .unwrap();

    // app: a proxy address, answered only after the connector resolved the name.
    let first = Instant::now();
    let app = ask(&w, "app.corp.test", false);
    let first = first.elapsed();
    let app_proxy = proxy_v4(&app).unwrap_or_else(|| {
        panic!(
            "app.corp.test: {app:?}\n{}\n{}",
            alice.stderr_tail(30),
            conn.stderr_tail(30)
        )
    });
    assert_eq!(app.addrs.len(), 1, "one proxy address: {app:?}");
    assert!(
        w.inside.asked("app.corp.test") >= 1,
        "the connector resolved app"
    );
    assert_eq!(
        w.outside.asked("app.corp.test"),
        0,
        "a reachable name never goes upstream"
    );
    let again = ask(&w, "app.corp.test", false);
    assert_eq!(proxy_v4(&again), Some(app_proxy), "stable proxy address");
    // Reported, not asserted (timings belong to benchmarks): the first answer of a new name
    // (the connector's resolution, the apply) against cached answers.
    let mut cached: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let a = ask(&w, "app.corp.test", false);
            assert_eq!(proxy_v4(&a), Some(app_proxy));
            t.elapsed()
        })
        .collect();
    cached.sort();
    let ready = alice
        .stderr()
        .lines()
        .find(|l| l.contains("name ready") && l.contains("app.corp.test"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "names latency: first answer of a new name {first:?}; cached answers p50 {:?} p99 {:?} \
         (200, one client in the device's namespace); the device's log: {ready}",
        cached[100], cached[197]
    );
    let app_v6 = ask(&w, "app.corp.test", true);
    assert!(
        app_v6
            .addrs
            .iter()
            .all(|a| a.to_string().starts_with("2001:db8:ffff:")),
        "AAAA: a proxy address from proxy_v6: {app_v6:?}"
    );

    // admin: answered as upstream answers it (the real address), never a proxy address.
    let admin = ask(&w, "admin.corp.test", false);
    assert_eq!(admin.addrs, vec!["198.18.1.5".parse::<IpAddr>().unwrap()]);
    assert_eq!(w.outside.asked("admin.corp.test"), 1, "forwarded upstream");
    assert_eq!(
        w.inside.asked("admin.corp.test"),
        0,
        "never resolved by the connector"
    );

    // Through app's proxy address: app's port works, and it reached 198.18.1.5.
    let (mut held, tag) = connect_tagged(&w.alice.ns, SocketAddr::new(app_proxy, 443))
        .unwrap_or_else(|| {
            panic!(
                "app via its proxy\n{}\n{}",
                alice.stderr_tail(30),
                conn.stderr_tail(30)
            )
        });
    assert_eq!(tag, "198.18.1.5");
    assert!(echo_once(&mut held), "app echoes");

    // admin gets nothing: real address (its port and app's), app's proxy address with
    // admin's port (a hosts-file entry `admin.corp.test -> app's proxy`), a proxy address
    // nobody handed out.
    for dst in [
        "198.18.1.5:8443".to_string(),
        "198.18.1.5:443".to_string(),
        format!("{app_proxy}:8443"),
        "100.96.0.250:8443".to_string(),
        "100.96.0.250:443".to_string(),
    ] {
        assert_eq!(
            tcp_try(&w.alice.ns, &dst, T),
            TcpOutcome::Silent,
            "alice -> {dst}"
        );
    }
    // The listeners answer: from the connector itself (no gateway on that path).
    for dst in ["198.18.1.5:8443", "198.18.1.5:443"] {
        assert_ne!(
            tcp_try(&w.conn.ns, dst, T),
            TcpOutcome::Silent,
            "control: {dst} answers the connector"
        );
    }

    // Wildcard: one label under w.corp.test, not the base, not two labels.
    for n in ["a.w.corp.test", "b.w.corp.test"] {
        let a = ask(&w, n, false);
        let p = proxy_v4(&a).unwrap_or_else(|| panic!("{n}: {a:?}"));
        assert_ne!(p, app_proxy, "{n} has its own proxy address");
        let (_, tag) = connect_tagged(&w.alice.ns, SocketAddr::new(p, 443))
            .unwrap_or_else(|| panic!("{n} via its proxy"));
        assert_eq!(tag, "198.18.1.5", "{n}");
    }
    for n in ["w.corp.test", "x.a.w.corp.test"] {
        let a = ask(&w, n, false);
        assert_eq!(proxy_v4(&a), None, "{n} is not covered: {a:?}");
        assert_eq!(w.outside.asked(n), 1, "{n} forwarded upstream");
    }

    // Logs: the name and the address it resolved to, on both hosts.
    let on_conn = wait_record(&w.conn.log, |r| {
        r["dns_name"] == "app.corp.test" && r["event"] == "flow_start"
    })
    .unwrap_or_else(|| panic!("connector log: {:?}", records(&w.conn.log)));
    assert_eq!(on_conn["resolved_ip"], "198.18.1.5");
    assert_eq!(on_conn["resource"], "app");
    assert_eq!(on_conn["device"], "alice-laptop");
    let on_alice = wait_record(&w.alice.log, |r| r["dns_name"] == "app.corp.test")
        .unwrap_or_else(|| panic!("device log: {:?}", records(&w.alice.log)));
    assert_eq!(on_alice["resolved_ip"], "198.18.1.5");

    // Re-resolution: app moves to .6; the held connection stays on .5, a new one goes to .6.
    w.inside.set("app.corp.test", &["198.18.1.6"], 1);
    conn.wait_for("name re-resolved", Duration::from_secs(20))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut moved = false;
    while Instant::now() < deadline && !moved {
        if let Some((_, tag)) = connect_tagged(&w.alice.ns, SocketAddr::new(app_proxy, 443)) {
            moved = tag == "198.18.1.6";
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert!(
        moved,
        "new flows go to the new address\n{}",
        conn.stderr_tail(30)
    );
    assert!(
        echo_once(&mut held),
        "the open flow continues on its address"
    );

    // Control on the same path: granted admin, its name gets a proxy address that works.
    std::fs::write(w.tmp.join("policy.toml"), policy(&kc, &ka, true)).unwrap();
    alice
        .wait_for_count("policy applied", 2, Duration::from_secs(10))
        .ok();
    std::thread::sleep(Duration::from_millis(500));
    let admin = ask(&w, "admin.corp.test", false);
    let admin_proxy = proxy_v4(&admin).unwrap_or_else(|| panic!("granted admin: {admin:?}"));
    assert_eq!(
        tcp_try(&w.alice.ns, &format!("{admin_proxy}:8443"), T),
        TcpOutcome::Echoed,
        "control: admin answers once granted"
    );
    assert_eq!(
        tcp_try(&w.alice.ns, "198.18.1.5:8443", T),
        TcpOutcome::Echoed,
        "control: the real address answers once granted by address"
    );
    // A device holds a bounded number of names (here 4: app, a.w, b.w, admin): a fifth,
    // which resolves on the connector, is refused and answered SERVFAIL.
    let fifth = ask(&w, "c.w.corp.test", false);
    assert_eq!(fifth.rcode, dns::ResponseCode::ServFail, "{fifth:?}");
    assert!(fifth.addrs.is_empty());
    conn.wait_for("max_names_per_device", Duration::from_secs(5))
        .unwrap();
    drop(held);
    let _ = alice.stop();
    let _ = conn.stop();
}
