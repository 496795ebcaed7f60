//! The agent's start, stop, `detach` and `status` as an operator meets them, with the real
//! `gateway-agent` binary on a connector namespace, and its OCSF records checked against
//! the OCSF 1.1 Network Activity schema (a check written here from the schema, not from the
//! agent's code).
//!
//! ```text
//!  alice ──veth── conn (gateway-agent, connector "conn"; a bridge link too) ──veth── res
//! ```

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aya::{
    EbpfLoader,
    programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::TcAttachOptions},
};
use gateway_common::maps::bench;
use gateway_test_support::{
    netns::{NetNs, unique_name, veth_pair},
    process::AgentProcess,
    skip_unless_privileged,
};
use gateway_user::dataplane::BENCH_OBJECT;
use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

const POLICY: &str = include_str!("data/topology.toml");
const AGENT: &str = env!("CARGO_BIN_EXE_gateway-agent");
const TIMEOUT: Duration = Duration::from_millis(700);

/// alice, the connector and the resource host, with echo servers on web:443 (allowed) and
/// web:23 (denied), and a temp folder and a bpffs pin folder removed at the end.
struct Lab {
    alice: NetNs,
    conn: NetNs,
    _res: NetNs,
    /// The connector's client-facing veth end.
    client_if: String,
    tmp: PathBuf,
    pin: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever a failed test left pinned goes (links first: they hold programs).
        let cfg = self.tmp.join("agent.toml");
        if cfg.exists() {
            let _ = self
                .conn
                .command_net_only(AGENT)
                .map(|mut c| c.args(["detach", "--config"]).arg(&cfg).output());
        }
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn lab(tag: &str) -> Lab {
    let alice = NetNs::new(&format!("z{tag}a")).unwrap();
    let conn = NetNs::new(&format!("z{tag}c")).unwrap();
    let res = NetNs::new(&format!("z{tag}r")).unwrap();
    let (_a, ca) = veth_pair(&alice, &["198.19.1.10/24"], &conn, &["198.19.1.1/24"]).unwrap();
    veth_pair(&conn, &["198.18.1.1/24"], &res, &["198.18.1.5/24"]).unwrap();
    alice
        .ip(&["route", "add", "default", "via", "198.19.1.1"])
        .unwrap();
    res.ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    conn.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    gateway_test_support::testkit::tcp_echo_servers(&res, &["198.18.1.5:443", "198.18.1.5:23"])
        .unwrap();
    let name = unique_name(&format!("zgw{tag}"));
    let tmp = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("policy.toml"), POLICY).unwrap();
    Lab {
        alice,
        conn,
        _res: res,
        client_if: ca.iface,
        tmp,
        pin: PathBuf::from("/sys/fs/bpf").join(&name),
    }
}

impl Lab {
    /// Writes an agent configuration `file` (in the temp folder) and returns its path.
    fn config(&self, file: &str, xdp: &[&str], tc: &[&str], extra: &str) -> PathBuf {
        let list = |v: &[&str]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let path = self.tmp.join(file);
        // `extra` may set its own log_file.
        let log = if extra.contains("log_file") {
            String::new()
        } else {
            format!(
                "log_file = \"{}\"\n",
                self.tmp.join("connections.jsonl").display()
            )
        };
        std::fs::write(
            &path,
            format!(
                "role = \"connector\"\nname = \"conn\"\npolicy_file = \"{}\"\npin_dir = \"{}\"\n\
                 xdp_interfaces = [{}]\ntc_egress_interfaces = [{}]\n{log}\
                 policy_poll_ms = 100\n{extra}",
                self.tmp.join("policy.toml").display(),
                self.pin.display(),
                list(xdp),
                list(tc),
            ),
        )
        .unwrap();
        path
    }

    fn start(&self, cfg: &Path) -> AgentProcess {
        let mut a = AgentProcess::start(
            "conn",
            self.conn.name(),
            Path::new(AGENT),
            cfg,
            &self.tmp.join("agent.stderr"),
        )
        .unwrap();
        a.wait_ready(Duration::from_secs(30)).unwrap();
        a
    }

    /// Starts an agent that must refuse; returns what this run wrote on stderr.
    fn start_fails(&self, cfg: &Path) -> String {
        let stderr = self.tmp.join("agent.stderr");
        let before = std::fs::read_to_string(&stderr).unwrap_or_default().len();
        let a = AgentProcess::start("failing", self.conn.name(), Path::new(AGENT), cfg, &stderr)
            .unwrap();
        let st = a.wait_exit(Duration::from_secs(30)).unwrap();
        let text = std::fs::read_to_string(&stderr).unwrap_or_default()[before..].to_string();
        assert!(!st.success(), "the start must fail:\n{text}");
        assert!(!text.contains("ready:"), "{text}");
        text
    }

    /// `gateway-agent ARGS --config cfg` in the connector's namespace.
    fn agent_cmd(&self, args: &[&str], cfg: &Path) -> Output {
        self.conn
            .command_net_only(AGENT)
            .unwrap()
            .args(args)
            .arg("--config")
            .arg(cfg)
            .output()
            .unwrap()
    }

    fn status_json(&self, cfg: &Path) -> Value {
        let out = self.agent_cmd(&["status", "--output", "json"], cfg);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn status_text(&self, cfg: &Path) -> String {
        let out = self.agent_cmd(&["status"], cfg);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pin folder's contents (relative paths), or None when it does not exist.
    fn pins(&self) -> Option<BTreeSet<String>> {
        if !self.pin.exists() {
            return None;
        }
        let mut out = BTreeSet::new();
        let mut todo = vec![self.pin.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p.clone());
                }
                out.insert(p.strip_prefix(&self.pin).unwrap().display().to_string());
            }
        }
        Some(out)
    }

    fn denied_dropped(&self) -> bool {
        gateway_test_support::testkit::tcp_dropped(&self.alice, "198.18.1.5:23", TIMEOUT)
    }

    fn denied_answers(&self) -> bool {
        gateway_test_support::testkit::tcp_echo(&self.alice, "198.18.1.5:23", TIMEOUT)
    }

    fn allowed_answers(&self) -> bool {
        gateway_test_support::testkit::tcp_echo(&self.alice, "198.18.1.5:443", TIMEOUT)
    }

    /// A bridge interface on the connector (its driver has no native XDP).
    fn bridge(&self, tag: &str) -> String {
        let name = unique_name(tag);
        self.conn
            .ip(&["link", "add", &name, "type", "bridge"])
            .unwrap();
        self.conn.ip(&["link", "set", &name, "up"]).unwrap();
        name
    }

    /// `ip -d link show` of an interface on the connector.
    fn link_text(&self, iface: &str) -> String {
        String::from_utf8_lossy(&self.conn.ip(&["-d", "link", "show", iface]).unwrap().stdout)
            .into_owned()
    }
}

/// A `log_file` setting the agent cannot open: its folder would be inside a regular file.
/// The connection log is opened after the programs are attached, so a start with it fails
/// after attaching.
fn unopenable_log(tmp: &Path) -> String {
    let blocker = tmp.join("not-a-folder");
    std::fs::write(&blocker, b"").unwrap();
    format!(
        "log_file = \"{}\"\n",
        blocker.join("connections.jsonl").display()
    )
}

#[test]
fn failed_starts_say_why_and_leave_the_pins_as_they_were() {
    if skip_unless_privileged!() {
        return;
    }
    let lab = lab("fs");
    let ca = lab.client_if.clone();
    let dm = lab.bridge("zfsd");
    assert!(
        lab.denied_answers(),
        "control: web:23 answers without the agent"
    );

    // --- A wrong interface name: said plainly, nothing created.
    let cfg = lab.config("eth9.toml", &[&ca, "eth9"], &[&ca], "");
    let err = lab.start_fails(&cfg);
    assert!(
        err.contains("interface eth9 not found (ip link shows the names)"),
        "{err}"
    );
    assert!(!err.contains("native XDP is not available"), "{err}");
    assert_eq!(lab.pins(), None, "a failed fresh start left a pin folder");

    // --- An interface whose XDP hook holds another program: named, with the fix.
    let mut other = EbpfLoader::new().load(BENCH_OBJECT).unwrap();
    let noop: &mut Xdp = other
        .program_mut(bench::PROG_NOOP)
        .unwrap()
        .try_into()
        .unwrap();
    noop.load().unwrap();
    let info = noop.info().unwrap();
    let (foreign_id, foreign_name) = (info.id(), info.name_as_str().unwrap().to_string());
    let foreign = lab
        .conn
        .run(|| noop.attach(&dm, XdpMode::Skb).unwrap())
        .unwrap();
    let cfg = lab.config("busy.toml", &[&ca, &dm], &[&ca], "");
    let err = lab.start_fails(&cfg);
    assert!(
        err.contains(&format!(
            "{dm} already has XDP program {foreign_id} (name {foreign_name}): detach it"
        )) && err.contains("or choose another interface"),
        "{err}"
    );
    assert!(!err.contains("native XDP is not available"), "{err}");
    assert!(!err.contains("File exists"), "{err}");
    assert_eq!(lab.pins(), None, "a failed fresh start left a pin folder");
    assert!(
        lab.link_text(&dm).contains(&format!("id {foreign_id}")),
        "the other program must stay attached"
    );
    lab.conn.run(|| noop.detach(foreign).unwrap()).unwrap();

    // --- A start that fails after attaching (its connection log cannot be opened):
    // everything it created goes, and nothing stays attached.
    let bad_log = unopenable_log(&lab.tmp);
    let cfg = lab.config("log.toml", &[&ca], &[&ca], &bad_log);
    let err = lab.start_fails(&cfg);
    assert!(err.contains("not-a-folder"), "{err}");
    assert!(
        err.contains("attached xdp"),
        "the failure came after attaching: {err}"
    );
    assert!(err.contains("removed what it had created"), "{err}");
    assert_eq!(lab.pins(), None, "a failed fresh start left pins behind");
    assert!(!lab.link_text(&ca).contains("xdp"), "XDP left attached");
    assert!(
        lab.denied_answers(),
        "nothing may filter after a failed fresh start"
    );

    // --- A running state, left pinned by a stopped agent: enforcing.
    let good = lab.config("agent.toml", &[&ca], &[&ca], "");
    let agent = lab.start(&good);
    assert!(
        agent.stderr().contains("attached xdp"),
        "{}",
        agent.stderr()
    );
    assert_eq!(agent.stop_keeping_pins().unwrap(), "exited on SIGTERM");
    let state = lab.pins().unwrap();
    assert!(state.contains(&format!("links/xdp-{ca}")), "{state:?}");
    assert!(lab.denied_dropped() && lab.allowed_answers());

    // Failed starts on top of it: a wrong name, and a failure after attaching a new
    // interface (the bridge, in generic mode since its driver has no native XDP).
    let cfg = lab.config("eth9b.toml", &[&ca, "eth9"], &[&ca], "");
    let err = lab.start_fails(&cfg);
    assert!(err.contains("interface eth9 not found"), "{err}");
    assert_eq!(
        lab.pins().as_ref(),
        Some(&state),
        "the pinned state changed"
    );
    let cfg = lab.config("log2.toml", &[&ca, &dm], &[&ca], &bad_log);
    let err = lab.start_fails(&cfg);
    assert!(err.contains("not-a-folder"), "{err}");
    assert!(
        err.contains("native XDP is not available") && err.contains(&dm),
        "the bridge driver has no native XDP: {err}"
    );
    assert!(err.contains(&format!("links/xdp-{dm}")), "{err}");
    assert_eq!(
        lab.pins().as_ref(),
        Some(&state),
        "the pinned state changed"
    );
    assert!(!lab.link_text(&dm).contains("xdp"), "XDP left on {dm}");
    assert!(
        lab.denied_dropped() && lab.allowed_answers(),
        "the earlier state must keep enforcing"
    );

    // --- A valid start afterwards works, re-adopting the state. Another tcx program on
    // the egress hook is named, not refused (tcx runs several; the gateway's goes first).
    let pass: &mut SchedClassifier = other
        .program_mut(bench::PROG_TC_PASS)
        .unwrap()
        .try_into()
        .unwrap();
    pass.load().unwrap();
    let pass_id = pass.info().unwrap().id();
    lab.conn
        .run(|| {
            pass.attach_with_options(
                &ca,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap()
        })
        .unwrap();
    let cfg = lab.config("agent.toml", &[&ca, &dm], &[&ca], "");
    let agent = lab.start(&cfg);
    assert!(
        agent.stderr().contains(&format!(
            "tcx egress of {ca} also runs program {pass_id} (name "
        )),
        "{}",
        agent.stderr()
    );
    assert!(agent.stderr().contains("re-adopted"), "{}", agent.stderr());
    assert!(lab.denied_dropped() && lab.allowed_answers());
    let text = lab.status_text(&cfg);
    assert!(
        text.lines()
            .any(|l| l.contains("xdp") && l.contains(&ca) && l.contains("native")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("xdp") && l.contains(&dm) && l.contains("generic")),
        "{text}"
    );
    drop(agent);
    drop(other);
}

#[test]
fn detach_refuses_while_an_agent_runs_and_stop_says_what_enforces() {
    if skip_unless_privileged!() {
        return;
    }
    let lab = lab("dt");
    let ca = lab.client_if.clone();
    let dm = lab.bridge("zdtd");
    assert!(
        lab.denied_answers(),
        "control: web:23 answers without the agent"
    );
    let cfg = lab.config(
        "agent.toml",
        &[&ca, &dm],
        &[&ca],
        "log_format = \"ocsf\"\n[flow_timeouts]\ntcp_closing = 1\ntcp_reset = 1\n",
    );
    let mut agent = lab.start(&cfg);
    let pid = agent.pid().unwrap();
    assert!(lab.allowed_answers(), "web:443 is allowed");
    assert!(lab.denied_dropped(), "web:23 is denied");

    // --- status: the agent, and each attachment with its mode and program ids.
    let st = lab.status_json(&cfg);
    assert_eq!(st["agent"]["running"], true, "{st}");
    assert_eq!(st["agent"]["pid"], pid, "{st}");
    let att = |st: &Value, pin: &str| -> Value {
        st["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["pin"] == pin)
            .cloned()
            .unwrap_or_else(|| panic!("no attachment {pin} in {st}"))
    };
    let x = att(&st, &format!("xdp-{ca}"));
    assert_eq!(
        (x["hook"].as_str(), x["mode"].as_str()),
        (Some("xdp"), Some("native")),
        "{x}"
    );
    assert!(x["program_id"].as_u64().unwrap() > 0 && x["link_id"].as_u64().unwrap() > 0);
    assert!(
        lab.link_text(&ca)
            .contains(&format!("id {}", x["program_id"])),
        "{x}"
    );
    let t = att(&st, &format!("tc-{ca}"));
    assert_eq!(
        (t["hook"].as_str(), t["mode"].as_str()),
        (Some("tcx-egress"), Some("tcx"))
    );
    let d = att(&st, &format!("xdp-{dm}"));
    assert_eq!(d["mode"], "generic", "{d}");
    // The existing keys stay.
    assert_eq!(st["links"].as_array().unwrap().len(), 3, "{st}");
    let text = lab.status_text(&cfg);
    assert!(
        text.contains(&format!("agent:              running (pid {pid})")),
        "{text}"
    );

    // --- A deleted interface: its link is listed as stale.
    lab.conn.ip(&["link", "del", &dm]).unwrap();
    let st = lab.status_json(&cfg);
    assert_eq!(att(&st, &format!("xdp-{dm}"))["state"], "stale", "{st}");
    assert_eq!(att(&st, &format!("xdp-{ca}"))["state"], "attached", "{st}");
    let text = lab.status_text(&cfg);
    assert!(
        text.lines()
            .any(|l| l.contains(&dm) && l.contains("stale: interface gone")),
        "{text}"
    );

    // --- detach while the agent runs: refused, nothing removed, still enforcing.
    let pins_before = lab.pins();
    let out = lab.agent_cmd(&["detach"], &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "detach must refuse while an agent runs"
    );
    assert!(
        err.contains(&format!("an agent is running (pid {pid})")) && err.contains("stop it first"),
        "{err}"
    );
    assert_eq!(lab.pins(), pins_before, "a refused detach removed pins");
    assert!(
        lab.denied_dropped(),
        "still enforcing after a refused detach"
    );
    assert!(lab.allowed_answers(), "web:443 still allowed");

    // --- OCSF records the agent wrote for that traffic, a flow end among them.
    let log = lab.tmp.join("connections.jsonl");
    let deadline = Instant::now() + Duration::from_secs(15);
    let records = loop {
        let recs: Vec<Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let has = |a: i64| recs.iter().any(|r| r["activity_id"] == a);
        if has(1) && has(2) && has(5) {
            break recs;
        }
        assert!(
            Instant::now() < deadline,
            "no open, close and refuse records in {recs:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &records {
        let errors = ocsf::check(r);
        assert!(errors.is_empty(), "{errors:#?} in {r:#}");
    }
    let end = records.iter().find(|r| r["activity_id"] == 2).unwrap();
    assert_eq!(end["device"]["name"], "connector:conn", "{end}");
    assert_eq!(end["src_endpoint"]["name"], "alice-laptop", "{end}");
    assert_eq!(end["src_endpoint"]["ip"], "198.19.1.10", "{end}");
    assert_eq!(
        end["actor"]["user"]["email_addr"], "alice@example.com",
        "{end}"
    );
    assert_eq!(end["dst_endpoint"]["name"], "web", "{end}");
    assert_eq!(end["dst_endpoint"]["port"], 443, "{end}");
    let refuse = records.iter().find(|r| r["activity_id"] == 5).unwrap();
    assert_eq!(refuse["dst_endpoint"]["port"], 23, "{refuse}");
    assert_eq!(refuse["disposition_id"], 2, "{refuse}");

    // --- Stopping: what stays is said, and true.
    assert_eq!(agent.stop().unwrap(), "exited on SIGTERM");
    let err = agent.stderr();
    assert!(
        err.contains(&format!(
            "programs stay attached and keep enforcing on tc-{ca}, xdp-{ca} only; not on \
             xdp-{dm}: interface gone"
        )),
        "{err}"
    );
    let text = lab.status_text(&cfg);
    assert!(
        text.contains("agent:              not running (programs keep enforcing from pins)"),
        "{text}"
    );
    assert!(
        lab.denied_dropped(),
        "a stopped agent's programs keep enforcing"
    );

    // --- The interface made again under the same name: a restarted agent replaces the
    // defunct link with a new one there.
    lab.conn
        .ip(&["link", "add", &dm, "type", "bridge"])
        .unwrap();
    lab.conn.ip(&["link", "set", &dm, "up"]).unwrap();
    let again = lab.start(&cfg);
    assert!(
        again.stderr().contains("the pinned XDP link") && again.stderr().contains("defunct"),
        "{}",
        again.stderr()
    );
    let st = lab.status_json(&cfg);
    let d = att(&st, &format!("xdp-{dm}"));
    assert_eq!(
        (d["state"].as_str(), d["mode"].as_str()),
        (Some("attached"), Some("generic")),
        "{d}"
    );
    assert!(
        lab.link_text(&dm)
            .contains(&format!("id {}", d["program_id"])),
        "{d}"
    );
    assert_eq!(again.stop_keeping_pins().unwrap(), "exited on SIGTERM");
    let err = agent.stderr();
    let last = err.lines().rev().find(|l| l.contains("stopping;")).unwrap();
    assert!(
        last.contains(&format!(
            "programs stay attached and keep enforcing (tc-{ca}, xdp-{ca}, xdp-{dm};"
        )),
        "{last}"
    );
    lab.conn.ip(&["link", "del", &dm]).unwrap();

    // --- After the stop, detach works (the stale link too) and nothing filters.
    let removed = agent.detach().unwrap();
    assert!(
        removed
            .iter()
            .any(|r| r == &format!("removed link xdp-{dm}")),
        "{removed:?}"
    );
    assert_eq!(lab.pins(), None, "pins left after detach");
    assert!(lab.denied_answers(), "detached: web:23 answers");

    // --- A stop after the links were removed under the agent says nothing enforces.
    let cfg = lab.config("agent.toml", &[&ca], &[&ca], "");
    let mut agent = lab.start(&cfg);
    for e in std::fs::read_dir(lab.pin.join("links")).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    // The kernel releases an unpinned link from a work queue: a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.denied_answers() {
        assert!(
            Instant::now() < deadline,
            "links unpinned: nothing enforces"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(agent.stop().unwrap(), "exited on SIGTERM");
    let err = agent.stderr();
    let last = err.lines().rev().find(|l| l.contains("stopping;")).unwrap();
    assert!(
        last.contains("no program of this agent is attached any more"),
        "{last}"
    );
    assert!(!last.contains("keep enforcing"), "{last}");
}

#[test]
fn ocsf_records_of_every_kind_match_the_schema() {
    use gateway_common::{Event, EventKind, FlowKey, Reason, addr::from_v4, flow::proto};
    use gateway_user::{agent::logs, writer::BootClock};
    let text = include_str!("../../examples/company.toml");
    let now = 1_800_000_000;
    let policy = policy_compiler::parse(text, "company.toml", now)
        .unwrap()
        .policy;
    let view = policy_compiler::compile(
        &policy,
        &policy_compiler::Host::Connector("dc-connector-1".into()),
        now,
    )
    .unwrap();
    let cx = logs::Context {
        view: &view,
        host: "connector:dc-connector-1",
        clock: BootClock::new(),
        endpoints: None,
        names: None,
    };
    let principal = |name: &str| {
        *view
            .principals
            .iter()
            .find(|(_, p)| p.name == name)
            .unwrap_or_else(|| panic!("no principal {name}"))
            .0
    };
    let device = principal("alice-laptop");
    let base = Event {
        principal: device,
        key: FlowKey {
            src: from_v4([198, 19, 0, 10]),
            dst: from_v4([198, 18, 1, 5]),
            src_port: 40000u16.to_be_bytes(),
            dst_port: 22u16.to_be_bytes(),
            proto: proto::TCP,
            family: 4,
            ..FlowKey::default()
        },
        first_seen_ns: 1_000_000_000,
        ts_ns: 3_500_000_000,
        ..Event::default()
    };
    let mut cases = Vec::new();
    for kind in [
        EventKind::FlowStart,
        EventKind::FlowEnd,
        EventKind::Deny,
        EventKind::Audit,
        EventKind::ScanAlert,
    ] {
        let mut ev = base;
        ev.kind = kind as u8;
        ev.reason = match kind {
            EventKind::Deny | EventKind::ScanAlert => Reason::DeniedNoGrant as u8,
            EventKind::Audit => Reason::Audit as u8,
            _ => Reason::Allowed as u8,
        };
        if kind == EventKind::FlowEnd {
            (ev.packets, ev.bytes, ev.reply_packets, ev.reply_bytes) = (10, 1000, 8, 5000);
        }
        cases.push(ev);
        // The same from an unknown source, over ICMP (no ports, no principal).
        let mut anon = ev;
        anon.principal = 0;
        anon.key.proto = proto::ICMP;
        anon.key.src_port = [0; 2];
        anon.key.dst_port = [0; 2];
        cases.push(anon);
    }
    for ev in &cases {
        let r = logs::ocsf(ev, &cx).unwrap();
        let errors = ocsf::check(&r);
        assert!(errors.is_empty(), "{errors:#?} in {r:#}");
    }
    // Who is who: the reporting host is the device; the client is the source.
    let mut end = base;
    end.kind = EventKind::FlowEnd as u8;
    let r = logs::ocsf(&end, &cx).unwrap();
    assert_eq!(r["device"]["name"], "connector:dc-connector-1");
    assert_eq!(r["src_endpoint"]["name"], "alice-laptop");
    assert_eq!(r["duration"], 2500);
    // The check can fail: a null, a missing required attribute, a wrong type_uid.
    let mut bad = r.clone();
    bad["src_endpoint"]["port"] = Value::Null;
    assert!(!ocsf::check(&bad).is_empty());
    let mut bad = r.clone();
    bad.as_object_mut().unwrap().remove("duration");
    assert!(!ocsf::check(&bad).is_empty());
    let mut bad = r;
    bad["type_uid"] = 400_101.into();
    assert!(!ocsf::check(&bad).is_empty());
}

/// A compact check of OCSF 1.1 Network Activity (class 4001) records, written from the
/// schema's attribute list and enumerations.
mod ocsf {
    use serde_json::Value;

    const ACTIVITY: &[i64] = &[0, 1, 2, 3, 4, 5, 6, 99];
    const SEVERITY: &[i64] = &[0, 1, 2, 3, 4, 5, 6, 99];
    const STATUS: &[i64] = &[0, 1, 2, 99];
    const ACTION: &[i64] = &[0, 1, 2, 99];
    /// 0 Unknown … 27 Error, 99 Other.
    const DISPOSITION: &[i64] = &[
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 99,
    ];
    const DIRECTION: &[i64] = &[0, 1, 2, 3, 99];
    const IP_VERSION: &[i64] = &[0, 4, 6, 99];
    const DEVICE_TYPE: &[i64] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99];
    const USER_TYPE: &[i64] = &[0, 1, 2, 3, 99];

    fn nulls(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Null => out.push(format!("{at}: null")),
            Value::Object(o) => {
                for (k, x) in o {
                    nulls(x, &format!("{at}.{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    nulls(x, &format!("{at}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    fn get<'a>(r: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(r, |v, k| v.get(k))
    }

    /// Every problem found; empty when the record conforms.
    pub fn check(r: &Value) -> Vec<String> {
        let mut e = Vec::new();
        nulls(r, "$", &mut e);
        let int =
            |e: &mut Vec<String>, path: &str, required: bool, allowed: Option<&[i64]>| match get(
                r, path,
            ) {
                None if required => e.push(format!("{path}: required")),
                None => {}
                Some(v) => match v.as_i64() {
                    None => e.push(format!("{path}: not an integer: {v}")),
                    Some(n) => {
                        if let Some(a) = allowed
                            && !a.contains(&n)
                        {
                            e.push(format!("{path}: {n} not in {a:?}"));
                        }
                    }
                },
            };
        let string = |e: &mut Vec<String>, path: &str, required: bool| match get(r, path) {
            None if required => e.push(format!("{path}: required")),
            Some(v) if !v.is_string() => e.push(format!("{path}: not a string: {v}")),
            _ => {}
        };
        let object = |e: &mut Vec<String>, path: &str, required: bool| match get(r, path) {
            None if required => e.push(format!("{path}: required")),
            Some(v) if !v.is_object() => e.push(format!("{path}: not an object: {v}")),
            _ => {}
        };
        int(&mut e, "class_uid", true, Some(&[4001]));
        int(&mut e, "category_uid", true, Some(&[4]));
        int(&mut e, "activity_id", true, Some(ACTIVITY));
        int(&mut e, "severity_id", true, Some(SEVERITY));
        int(&mut e, "type_uid", true, None);
        if let (Some(c), Some(a), Some(t)) = (
            r["class_uid"].as_i64(),
            r["activity_id"].as_i64(),
            r["type_uid"].as_i64(),
        ) && t != c * 100 + a
        {
            e.push(format!("type_uid {t} is not class_uid * 100 + activity_id"));
        }
        // Milliseconds since the epoch, after 2020.
        int(&mut e, "time", true, None);
        if r["time"].as_i64().is_some_and(|t| t < 1_577_836_800_000) {
            e.push(format!("time {} is not in milliseconds", r["time"]));
        }
        object(&mut e, "metadata", true);
        if get(r, "metadata.version").and_then(Value::as_str) != Some("1.1.0") {
            e.push("metadata.version: must be \"1.1.0\"".into());
        }
        object(&mut e, "metadata.product", true);
        string(&mut e, "metadata.product.vendor_name", true);
        string(&mut e, "metadata.product.name", false);
        for s in [
            "class_name",
            "category_name",
            "activity_name",
            "type_name",
            "severity",
            "status",
            "action",
            "disposition",
            "message",
        ] {
            string(&mut e, s, false);
        }
        int(&mut e, "status_id", false, Some(STATUS));
        int(&mut e, "action_id", false, Some(ACTION));
        int(&mut e, "disposition_id", false, Some(DISPOSITION));
        for ep in ["src_endpoint", "dst_endpoint"] {
            object(&mut e, ep, true);
            match get(r, &format!("{ep}.ip"))
                .map(|v| v.as_str().map(str::parse::<std::net::IpAddr>))
            {
                Some(Some(Ok(_))) | None => {}
                Some(_) => e.push(format!("{ep}.ip: not an IP address")),
            }
            int(&mut e, &format!("{ep}.port"), false, None);
            if get(r, &format!("{ep}.port"))
                .and_then(Value::as_i64)
                .is_some_and(|p| !(0..=65535).contains(&p))
            {
                e.push(format!("{ep}.port out of range"));
            }
            string(&mut e, &format!("{ep}.name"), false);
            string(&mut e, &format!("{ep}.hostname"), false);
        }
        object(&mut e, "connection_info", false);
        int(&mut e, "connection_info.protocol_num", true, None);
        if r["connection_info"]["protocol_num"]
            .as_i64()
            .is_some_and(|p| !(0..=255).contains(&p))
        {
            e.push("connection_info.protocol_num out of range".into());
        }
        string(&mut e, "connection_info.protocol_name", false);
        int(
            &mut e,
            "connection_info.direction_id",
            false,
            Some(DIRECTION),
        );
        int(
            &mut e,
            "connection_info.protocol_ver_id",
            false,
            Some(IP_VERSION),
        );
        object(&mut e, "device", false);
        if r.get("device").is_some() {
            int(&mut e, "device.type_id", true, Some(DEVICE_TYPE));
            string(&mut e, "device.name", false);
            string(&mut e, "device.hostname", false);
        }
        object(&mut e, "actor", false);
        object(&mut e, "actor.user", false);
        if get(r, "actor.user").is_some() {
            string(&mut e, "actor.user.name", false);
            string(&mut e, "actor.user.email_addr", false);
            int(&mut e, "actor.user.type_id", false, Some(USER_TYPE));
        }
        object(&mut e, "policy", false);
        string(&mut e, "policy.name", false);
        string(&mut e, "policy.uid", false);
        object(&mut e, "traffic", false);
        for t in [
            "packets_in",
            "packets_out",
            "bytes_in",
            "bytes_out",
            "packets",
            "bytes",
        ] {
            int(&mut e, &format!("traffic.{t}"), false, None);
        }
        object(&mut e, "unmapped", false);
        // A connection's close carries its duration and its start and end.
        let close = r["activity_id"] == 2;
        int(&mut e, "duration", close, None);
        int(&mut e, "start_time", close, None);
        int(&mut e, "end_time", close, None);
        if let (Some(s), Some(t)) = (r["start_time"].as_i64(), r["end_time"].as_i64())
            && s > t
        {
            e.push(format!("start_time {s} after end_time {t}"));
        }
        if r["duration"].as_i64().is_some_and(|d| d < 0) {
            e.push("duration negative".into());
        }
        e
    }
}
