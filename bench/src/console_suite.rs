//! The Admin Console's page times (issue 18, "Measured"), against a controller in this
//! process (SQLite in a temporary folder, plaintext gRPC and the console's HTTP on
//! 127.0.0.1) holding:
//!
//! * a policy of 10,000 resources (`policy_compiler::random::scaled_policy`: 250 users
//!   with 2 devices each, 60 service accounts of 10 keys, 60 groups with 2 grants of up to
//!   5 resources) and 120 policy tests, so that every list of more than 50 objects has
//!   several pages (50 rows a page). Fewer principals than the compile target's 100k:
//!   every device is a host the controller compiles a view for, and applying this policy
//!   with 4,000 devices had not finished after 15 minutes (500: 22-30 s);
//! * 120 enrolled agents (one connector, 119 devices) and 100,000 connection events over
//!   the last 24 hours, stored through `ReportEvents` from the connector's agent in
//!   messages of 1,000 (the path an agent's events take; names drawn from the policy, so
//!   that the store's name check keeps them all);
//! * an admin user with TOTP, created through the Admin API, who logs in to the console
//!   over HTTP with password and code like a browser (cookie and CSRF token kept).
//!
//! Then:
//!
//! * **pages**: every GET page of `controller::console::ROUTES` (each object kind's list,
//!   first page and a far page, a search, one object per kind, the overview, policy,
//!   Activity without and with each filter and its older page, agents, audit, keys,
//!   users, the explain form and an answer, the login form), requested 50 times each
//!   (200 without `--quick`) one after the other on one kept-alive connection; a sample
//!   is the time from sending the request to the last byte of the body on the client.
//!   Each answer is checked (status 200 and what the page must show, e.g. the object's
//!   name), so a broken page cannot look fast. The worst page (by p99) is requested
//!   again by 4 clients at once. The two CSV downloads (up to 10,000 rows) are timed
//!   too, apart from the pages.
//! * **event to row**: the Activity page's live stream (`/activity/stream`, server-sent
//!   events, read by the HTTP client) is open; 200 denied-connection events are reported
//!   one at a time, 20 a second, through `ReportEvents` (the clock read just before the
//!   call); a sample is the time until the stream delivers the event (matched by its
//!   destination port, unique per event). That the page draws a row from it is the
//!   browser test's (controller/tests/console_browser.rs), not timed here.

use crate::controller_suite::{Local, Stats, enroll, stats};
use crate::progress;
use anyhow::{Context as _, Result, bail};
use controller::Kind;
use gateway_proto::v1;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// One page's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    /// What is requested, e.g. `objects/resource far page`.
    pub page: String,
    pub path: String,
    /// Bytes of the answer's body.
    pub bytes: usize,
    pub latency: Stats,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub resources: u32,
    pub users: u32,
    pub devices: u32,
    pub service_accounts: u32,
    pub groups: u32,
    pub grants: usize,
    pub tests: u32,
    pub agents: usize,
    /// Events stored before the pages were read.
    pub events: u64,
    /// Bytes of the policy text.
    pub policy_bytes: usize,
    pub setup_seconds: f64,
    /// Requests per page.
    pub requests: usize,
    /// Every page, one client.
    pub pages: Vec<Page>,
    /// The exports (downloads of up to 10,000 rows; not pages, not in the goal).
    pub downloads: Vec<Page>,
    /// The page with the highest p99 and that p99.
    pub worst_page: String,
    pub worst_p99_ms: f64,
    /// The worst page requested by `concurrent_clients` clients at once (every sample).
    pub concurrent_clients: usize,
    pub concurrent: Option<Page>,
    /// Events reported for the event-to-row measure, a second.
    pub stream_events: usize,
    pub stream_pace_per_sec: f64,
    /// From the ReportEvents call's start to the event's arrival in the page's stream.
    pub event_to_row: Stats,
}

const RESOURCES: u32 = 10_000;
const USERS: u32 = 250;
const SERVICE_ACCOUNTS: u32 = 60;
const GROUPS: u32 = 60;
const TESTS: u32 = 120;
const DEVICE_AGENTS: u32 = 119;
const EVENTS: u32 = 100_000;
const EVENTS_PER_MESSAGE: u32 = 1_000;
const STREAM_EVENTS: usize = 200;
const STREAM_PACE: Duration = Duration::from_millis(50);
const CLIENTS: usize = 4;
const PASSWORD: &str = "bench console password";
const DAY_MS: i64 = 86_400_000;

/// The policy: [`scaled_policy`](policy_compiler::random::scaled_policy) of the sizes
/// above, and tests expecting denials of an address of the remote network that no
/// resource covers.
fn policy_text() -> String {
    use policy_compiler::random::{Rng, Scale, scaled_policy};
    let scale = Scale {
        users: USERS,
        service_accounts: SERVICE_ACCOUNTS,
        keys_per_account: 10,
        resources: RESOURCES,
        groups: GROUPS,
        grants_per_group: 2,
        resources_per_grant: 5,
        random_membership: false,
    };
    let mut s = scaled_policy(&mut Rng(18), &scale, controller::now_unix());
    for t in 0..TESTS {
        s.push_str(&format!(
            "[[test]]\nname = \"t{t}\"\nfrom = \"d{}\"\nto = \"[2001:db8:1::ff:{:x}]:9/tcp\"\nexpect = \"deny\"\n\n",
            t * 7 % (USERS * 2),
            t + 1
        ));
    }
    s
}

/// A browser stand-in: one HTTP/1.1 client (its kept-alive connections), the session's
/// cookies.
#[derive(Clone)]
struct Browser {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    cookies: BTreeMap<String, String>,
}

struct Answer {
    status: u16,
    location: String,
    body: String,
    ms: f64,
}

fn form(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the first hidden field `name` of a page.
fn hidden(body: &str, name: &str) -> Option<String> {
    let key = format!("name=\"{name}\" value=\"");
    let at = body.find(&key)? + key.len();
    body[at..].split('"').next().map(str::to_string)
}

impl Browser {
    fn new(base: &str) -> Browser {
        Browser {
            base: base.to_string(),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            cookies: BTreeMap::new(),
        }
    }

    /// Another client (its own connection) with the same session, like a second tab.
    fn tab(&self) -> Browser {
        Browser {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            ..self.clone()
        }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<hyper::Request<Full<Bytes>>> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", c.join("; "));
        }
        if body.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        Ok(req.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
    }

    /// One request; `ms` from sending it to the body's last byte.
    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Result<Answer> {
        let req = self.request(method, path, body)?;
        let t = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .with_context(|| format!("{method} {path}: no answer in 30 s"))?
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{method} {path}: reading the body"))?
            .to_bytes();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap_or_default();
            let kv = v.split(';').next().unwrap_or_default();
            if let Some((k, val)) = kv.split_once('=') {
                if val.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), val.to_string());
                }
            }
        }
        Ok(Answer {
            status,
            location: headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
            ms,
        })
    }

    /// Logs in through the login form (password and TOTP code).
    async fn login(&mut self, user: &str, password: &str, code: &str) -> Result<()> {
        let page = self.send("GET", "/login", None).await?;
        if page.status != 200 {
            bail!("GET /login: {}: {}", page.status, page.body);
        }
        let csrf = hidden(&page.body, "csrf").context("the login form has no csrf field")?;
        let body = form(&[
            ("csrf", &csrf),
            ("user", user),
            ("password", password),
            ("totp", code),
        ]);
        let r = self.send("POST", "/login", Some(body)).await?;
        if r.status != 303 || r.location != "/" {
            bail!(
                "console login: {} to {:?}: {}",
                r.status,
                r.location,
                r.body
            );
        }
        Ok(())
    }
}

/// A page to time: its name, path, and texts every answer must contain.
struct Check {
    name: String,
    path: String,
    must: Vec<String>,
}

fn check(name: impl Into<String>, path: impl Into<String>, must: &[&str]) -> Check {
    Check {
        name: name.into(),
        path: path.into(),
        must: must.iter().map(|s| (*s).to_string()).collect(),
    }
}

/// `path` requested `n` times by `b`, every answer checked.
async fn time_page(b: &mut Browser, c: &Check, n: usize) -> Result<(Stats, usize)> {
    let t0 = Instant::now();
    let (ms, bytes) = samples(b, c, n).await?;
    Ok((stats(ms, t0.elapsed().as_secs_f64()), bytes))
}

/// The samples of [`time_page`].
async fn samples(b: &mut Browser, c: &Check, n: usize) -> Result<(Vec<f64>, usize)> {
    let mut ms = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let r = b.send("GET", &c.path, None).await?;
        if r.status != 200 {
            bail!(
                "{} (GET {}): status {} (location {:?}): {}",
                c.name,
                c.path,
                r.status,
                r.location,
                r.body.chars().take(400).collect::<String>()
            );
        }
        for m in &c.must {
            if !r.body.contains(m.as_str()) {
                bail!(
                    "{} (GET {}): the page does not show {m:?} ({} bytes)",
                    c.name,
                    c.path,
                    r.body.len()
                );
            }
        }
        bytes = r.body.len();
        ms.push(r.ms);
    }
    Ok((ms, bytes))
}

/// HTML text as the pages escape it (maud).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn url(s: &str) -> String {
    form(&[("x", s)])[2..].to_string()
}

/// The pages to time, with what each must show.
fn pages(local: &Local, admin_name: &str, agent_ids: &[String]) -> Vec<Check> {
    let mut out = vec![
        check("login form", "/login", &["name=\"password\""]),
        check(
            "overview",
            "/",
            &[
                "<h1>Overview</h1>",
                "Policy revision",
                "events</p>",
                &agent_ids[0],
            ],
        ),
    ];
    for kind in controller::objects::KINDS {
        let (list, _) = local.state.objects(Some(kind));
        let Some(first) = list.first() else { continue };
        let base = format!("/objects/{kind}");
        let total = format!("{} of {} at revision", list.len(), list.len());
        out.push(check(
            format!("objects/{kind} page 1"),
            base.clone(),
            &[&total, &esc(&first.name)],
        ));
        if list.len() > 50 {
            // The last full page.
            let off = (list.len() - 1) / 50 * 50;
            out.push(check(
                format!("objects/{kind} far page (offset {off})"),
                format!("{base}?offset={off}&limit=50"),
                &[&esc(&list[off].name), "Previous page"],
            ));
        }
        // A resource page decides who can reach it; the generated devices have IPv6
        // addresses only, so an IPv6 resource (an IPv4 one shows "could not be decided").
        let mid = if kind == Kind::Resource {
            list[list.len() / 2..]
                .iter()
                .find(|o| o.toml.contains("2001:db8"))
                .unwrap_or(&list[list.len() / 2])
        } else {
            &list[list.len() / 2]
        };
        let mut must = vec![esc(&mid.toml)];
        if kind == Kind::Resource {
            must.push("id=\"reach-table\"".into());
        }
        out.push(Check {
            name: format!("object {kind}"),
            path: format!("{base}/{}", url(&mid.name)),
            must,
        });
    }
    // A search: "r99" is in r99, r990-r999 and r9900-r9999 (111 resources).
    out.push(check(
        "objects/resource search",
        "/objects/resource?q=r99",
        &["111 of 10000", ">r9900<", "Next page"],
    ));
    out.push(check(
        "policy",
        "/policy",
        &[
            "id=\"policy-text\"",
            &format!("name = &quot;r{}&quot;", RESOURCES - 1),
        ],
    ));
    let activity_row = "<td>connector:conn</td>";
    out.push(check(
        "activity",
        "/activity",
        &["id=\"activity-table\"", activity_row, "Older events"],
    ));
    let (u, d, r) = fill_names(1234);
    for (filter, value, shown) in [
        ("user", u.as_str(), format!("<td>{u}</td>")),
        ("device", d.as_str(), format!("<td>{d}</td>")),
        ("resource", r.as_str(), format!("<td>{r}</td>")),
        ("connector", "conn", "<td>conn</td>".to_string()),
        ("verdict", "deny", "<td>deny</td>".to_string()),
        ("event", "flow_end", "<td>flow_end</td>".to_string()),
        ("host", "connector:conn", activity_row.to_string()),
    ] {
        out.push(check(
            format!("activity by {filter}"),
            format!("/activity?{filter}={}", url(value)),
            &["id=\"activity-table\"", &shown],
        ));
    }
    let day_ago = controller::now_ms() - DAY_MS / 2;
    out.push(check(
        "activity older page (12 h ago)",
        format!("/activity?before={day_ago}&limit=50"),
        &["id=\"activity-table\"", activity_row],
    ));
    out.push(check(
        "agents page 1",
        "/agents",
        &["id=\"agents-table\"", &agent_ids[0], "Next page"],
    ));
    let off = (agent_ids.len() - 1) / 50 * 50;
    out.push(check(
        format!("agents far page (offset {off})"),
        format!("/agents?offset={off}&limit=50"),
        &["Previous page"],
    ));
    out.push(check(
        "audit",
        "/audit",
        &["Chain verified", "console_login"],
    ));
    out.push(check(
        "audit by action",
        "/audit?action=enroll_agent",
        &["Chain verified", "<td>enroll_agent</td>"],
    ));
    out.push(check(
        "keys",
        "/keys",
        &["id=\"keys-table\"", "<td>bench</td>"],
    ));
    out.push(check(
        "users",
        "/users",
        &["id=\"users-table\"", &format!("<td>{admin_name}</td>")],
    ));
    out.push(check("explain form", "/explain", &["id=\"explain-form\""]));
    out.push(check(
        "explain answer",
        format!("/explain?from=d0&to={}", url("[2001:db8:1::ff:1]:9/tcp")),
        &["id=\"explain-verdict\"", "Deny"],
    ));
    out
}

/// The user, device and resource named by fill event `i` (names of the policy).
fn fill_names(i: u32) -> (String, String, String) {
    let u = i * 7 % USERS;
    (
        format!("u{u}@x.test"),
        format!("d{}", 2 * u + i % 2),
        format!("r{}", i * 3 % RESOURCES),
    )
}

/// Fill event `i` of [`EVENTS`], at `time_ms`.
fn fill_event(i: u32, time_ms: i64) -> v1::ConnectionEvent {
    let (user, device, resource) = fill_names(i);
    let deny = i % 10 == 9;
    // The addresses scaled_policy gives the device and the resource.
    let dev: u32 = device[1..].parse().unwrap_or(0);
    let j = i * 3 % RESOURCES;
    let dst = if j % 10 == 9 {
        format!("2001:db8:1::{j:x}")
    } else if j.is_multiple_of(100) {
        format!("198.18.{}.1", (j / 100) % 256)
    } else {
        format!("198.18.{}.{}", (j / 250) % 256, j % 250 + 1)
    };
    v1::ConnectionEvent {
        timestamp: policy_compiler::format_rfc3339(time_ms / 1000),
        event: if deny {
            "deny"
        } else if i.is_multiple_of(2) {
            "flow_start"
        } else {
            "flow_end"
        }
        .into(),
        verdict: if deny { "deny" } else { "allow" }.into(),
        reason: if deny { "no_grant" } else { "granted" }.into(),
        user: Some(user),
        device: Some(device),
        src_ip: Some(format!("2001:db8:ff::{:x}:{:x}", dev >> 16, dev & 0xffff)),
        src_port: Some(30_000 + i % 30_000),
        resource: Some(resource),
        dst_ip: Some(dst),
        protocol: Some("tcp".into()),
        dst_port: Some(443),
        connector: Some("conn".into()),
        remote_network: Some("dc".into()),
        ..Default::default()
    }
}

/// Stores [`EVENTS`] events over the last 24 hours through `ReportEvents`.
async fn fill(local: &Local, agent: &v1::AgentAuth) -> Result<u64> {
    let mut api = v1::agent_client::AgentClient::new(local.channel.clone());
    let end = controller::now_ms() - 60_000;
    let step = DAY_MS / i64::from(EVENTS);
    let mut stored = 0;
    for start in (0..EVENTS).step_by(EVENTS_PER_MESSAGE as usize) {
        let events: Vec<_> = (start..(start + EVENTS_PER_MESSAGE).min(EVENTS))
            .map(|i| fill_event(i, end - DAY_MS + i64::from(i) * step))
            .collect();
        let n = events.len() as u64;
        let got = api
            .report_events(tokio_stream::iter([v1::ReportEventsRequest {
                auth: Some(agent.clone()),
                events,
            }]))
            .await
            .context("ReportEvents")?
            .into_inner()
            .accepted;
        if got != n {
            let why = local
                .state
                .audit_report(None, None, 10)
                .unwrap_or_default()
                .into_iter()
                .find(|a| a.action == "agent_events_rejected")
                .map(|a| a.after)
                .unwrap_or_default();
            bail!("ReportEvents stored {got} of {n} events: {why}");
        }
        stored += got;
    }
    Ok(stored)
}

/// Event `i` of the event-to-row measure: a denied connection, destination port
/// `40000 + i` (the key matched in the stream).
fn probe(i: usize) -> (v1::ConnectionEvent, String) {
    let port = 40_000 + i as u32;
    let ev = v1::ConnectionEvent {
        timestamp: policy_compiler::format_rfc3339(controller::now_unix()),
        event: "deny".into(),
        verdict: "deny".into(),
        reason: "no_grant".into(),
        user: Some("u0@x.test".into()),
        device: Some("d0".into()),
        src_ip: Some("2001:db8:ff::1".into()),
        src_port: Some(50_000),
        dst_ip: Some("2001:db8:1::ff:1".into()),
        protocol: Some("tcp".into()),
        dst_port: Some(port),
        connector: Some("conn".into()),
        remote_network: Some("dc".into()),
        ..Default::default()
    };
    (ev, format!("2001:db8:1::ff:1:{port}/tcp"))
}

/// Opens the Activity page's live stream and reports [`STREAM_EVENTS`] events one at a
/// time; the time from each call's start to the event's arrival in the stream.
async fn event_to_row(local: &Local, b: &Browser, agent: &v1::AgentAuth) -> Result<Vec<f64>> {
    let page = b.clone().send("GET", "/activity", None).await?;
    let stream_path = page
        .body
        .split("data-stream=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("the Activity page names no live stream (data-stream)")?
        .replace("&amp;", "&");
    let req = b.request("GET", &stream_path, None)?;
    let mut req = req;
    req.headers_mut()
        .insert("accept", "text/event-stream".parse()?);
    let resp = tokio::time::timeout(Duration::from_secs(10), b.client.request(req))
        .await
        .context("the live stream did not answer in 10 s")??;
    if resp.status() != 200 {
        bail!("GET {stream_path}: {}", resp.status());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let reader = tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buf = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let at = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(json) = line.strip_prefix("data:")
                        && let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim())
                        && let Some(dst) = v["dst"].as_str()
                        && tx.send((dst.to_string(), at)).is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let mut api = v1::agent_client::AgentClient::new(local.channel.clone());
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut arrived: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(STREAM_PACE);
    for i in 0..STREAM_EVENTS {
        tick.tick().await;
        let (ev, key) = probe(i);
        let t = Instant::now();
        let got = api
            .report_events(tokio_stream::iter([v1::ReportEventsRequest {
                auth: Some(agent.clone()),
                events: vec![ev],
            }]))
            .await?
            .into_inner()
            .accepted;
        if got != 1 {
            bail!("event {i} of the stream measure was not stored");
        }
        sent.insert(key, t);
        while let Ok((k, at)) = rx.try_recv() {
            arrived.insert(k, at);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.len() < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((k, at))) => {
                arrived.insert(k, at);
            }
            _ => break,
        }
    }
    reader.abort();
    let missing = sent.keys().filter(|k| !arrived.contains_key(*k)).count();
    if missing > 0 {
        bail!(
            "{missing} of {} events reported never reached the Activity page's stream in 10 s",
            sent.len()
        );
    }
    Ok(sent
        .iter()
        .map(|(k, t)| arrived[k].saturating_duration_since(*t).as_secs_f64() * 1000.0)
        .collect())
}

pub fn run(opts: &crate::Opts, out: &mut Option<Summary>) -> Result<()> {
    let n = if opts.quick { 50 } else { 200 };
    let dir = std::env::temp_dir().join(format!("zt-bench-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let t0 = Instant::now();
        let local = Local::start(&dir).await?;
        // One agent reports every event here: no per-agent event quota.
        local.state.set_event_quota(1e9, 1e9);
        let mut admin = local.admin();
        let text = policy_text();
        progress(&format!("console: applying a policy of {} bytes", text.len()));
        admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy_toml: text.clone(),
                file_name: "policy.toml".into(),
                dry_run: false,
                expected_revision: None,
                skip_tests: false,
            })
            .await
            .context("applying the 10k-resource policy")?;
        progress(&format!(
            "console: policy of {RESOURCES} resources applied ({} bytes, {:.1} s)",
            text.len(),
            t0.elapsed().as_secs_f64()
        ));
        let mut agent_api = v1::agent_client::AgentClient::new(local.channel.clone());
        let conn = enroll(&mut admin, &mut agent_api, "connector:conn", "bench-conn", "").await?;
        for d in 0..DEVICE_AGENTS {
            enroll(
                &mut admin,
                &mut agent_api,
                &format!("device:d{d}"),
                &format!("bench-d{d}"),
                "",
            )
            .await?;
        }
        let agent_ids: Vec<String> = local.state.agents().into_iter().map(|a| a.agent_id).collect();
        let t = Instant::now();
        let events = fill(&local, &conn).await?;
        progress(&format!(
            "console: {} agents enrolled, {events} events stored through ReportEvents in {:.1} s",
            agent_ids.len(),
            t.elapsed().as_secs_f64()
        ));
        let admin_name = "bench-console-admin";
        let secret = admin
            .create_admin_user(v1::CreateAdminUserRequest {
                name: admin_name.into(),
                role: v1::Role::Admin as i32,
                password: PASSWORD.into(),
            })
            .await
            .context("CreateAdminUser")?
            .into_inner()
            .totp_secret;
        let (addr, console_task) = controller::console::spawn(
            "127.0.0.1:0".parse()?,
            local.state.clone(),
            controller::console::ConsoleOptions::default(),
            std::future::pending(),
        )
        .await?;
        let mut b = Browser::new(&format!("http://{addr}"));
        let code = controller::auth::totp_code(&secret, controller::now_unix());
        b.login(admin_name, PASSWORD, &code).await?;
        let setup_seconds = t0.elapsed().as_secs_f64();
        progress(&format!(
            "console: logged in on http://{addr} ({setup_seconds:.1} s of setup); timing pages, {n} requests each"
        ));

        let checks = pages(&local, admin_name, &agent_ids);
        let mut timed = Vec::new();
        for c in &checks {
            let (latency, bytes) = time_page(&mut b, c, n).await?;
            progress(&format!(
                "console: {:<40} p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms  ({bytes} bytes)",
                c.name, latency.p50_ms, latency.p99_ms, latency.max_ms
            ));
            timed.push(Page {
                page: c.name.clone(),
                path: c.path.clone(),
                bytes,
                latency,
            });
        }
        let mut downloads = Vec::new();
        for c in [
            check("activity export CSV (10,000 rows)", "/activity/export?format=csv", &["\"connector:conn\""]),
            check("audit export CSV", "/audit/export?format=csv", &["\"console_login\""]),
        ] {
            let (latency, bytes) = time_page(&mut b, &c, n.min(20)).await?;
            progress(&format!(
                "console: {:<40} p50 {:7.2} ms  p99 {:7.2} ms  ({bytes} bytes)",
                c.name, latency.p50_ms, latency.p99_ms
            ));
            downloads.push(Page {
                page: c.name,
                path: c.path,
                bytes,
                latency,
            });
        }
        let worst = timed
            .iter()
            .max_by(|a, b| a.latency.p99_ms.total_cmp(&b.latency.p99_ms))
            .context("no pages")?
            .clone();
        // The worst page from 4 clients at once (one session, like 4 tabs).
        let c = checks
            .iter()
            .find(|c| c.name == worst.page)
            .context("the worst page")?;
        let mut tasks = Vec::new();
        let t = Instant::now();
        for _ in 0..CLIENTS {
            let mut tab = b.tab();
            let c = Check {
                name: c.name.clone(),
                path: c.path.clone(),
                must: c.must.clone(),
            };
            tasks.push(tokio::spawn(async move { samples(&mut tab, &c, n).await }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??.0);
        }
        let concurrent = Page {
            page: worst.page.clone(),
            path: worst.path.clone(),
            bytes: worst.bytes,
            latency: stats(all, t.elapsed().as_secs_f64()),
        };
        progress(&format!(
            "console: worst page {} p99 {:.2} ms; with {CLIENTS} clients p50 {:.2} ms p99 {:.2} ms",
            worst.page, worst.latency.p99_ms, concurrent.latency.p50_ms, concurrent.latency.p99_ms
        ));

        let t = Instant::now();
        let e2r = event_to_row(&local, &b, &conn).await?;
        let pace = STREAM_EVENTS as f64 / t.elapsed().as_secs_f64();
        let event_to_row = stats(e2r, t.elapsed().as_secs_f64());
        progress(&format!(
            "console: event to Activity stream p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} events, {pace:.0}/s)",
            event_to_row.p50_ms, event_to_row.p99_ms, event_to_row.max_ms, event_to_row.calls
        ));
        console_task.abort();
        local.stop().await?;
        let grants = text.matches("[[allow]]").count() + text.matches("[[deny]]").count();
        Ok::<_, anyhow::Error>(Summary {
            resources: RESOURCES,
            users: USERS,
            devices: USERS * 2,
            service_accounts: SERVICE_ACCOUNTS,
            groups: GROUPS,
            grants,
            tests: TESTS,
            agents: agent_ids.len(),
            events,
            policy_bytes: text.len(),
            setup_seconds,
            requests: n,
            worst_page: worst.page.clone(),
            worst_p99_ms: worst.latency.p99_ms,
            pages: timed,
            downloads,
            concurrent_clients: CLIENTS,
            concurrent: Some(concurrent),
            stream_events: STREAM_EVENTS,
            stream_pace_per_sec: pace,
            event_to_row,
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    *out = Some(result?);
    Ok(())
}
