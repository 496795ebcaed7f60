//! The admin console over HTTP against a real controller: the console security policy
//! (password + TOTP login, idle timeout and re-authentication, CSRF, allowed source
//! networks, security headers, plaintext only on loopback), the authorization of every
//! route (the equivalent RPC's permission), and escaping of names.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Controller, DEMO, tempdir};
use controller::auth::{self, Role};
use controller::console::{self, ConsoleOptions};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery staple";

/// A console served over a controller's state.
struct Site {
    base: String,
    _stop: oneshot::Sender<()>,
}

async fn site(ctl: &Controller, opts: ConsoleOptions) -> Site {
    let (tx, rx) = oneshot::channel();
    let (addr, _task) = console::spawn(
        "127.0.0.1:0".parse().unwrap(),
        ctl.state.clone(),
        opts,
        async {
            let _ = rx.await;
        },
    )
    .await
    .unwrap();
    Site {
        base: format!("http://{addr}"),
        _stop: tx,
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .map_or("", |v| v.to_str().unwrap())
    }
}

/// A browser stand-in: keeps cookies, sends forms.
struct Browser {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    cookies: HashMap<String, String>,
    set_cookies: Vec<String>,
}

impl Browser {
    fn new(site: &Site) -> Browser {
        Browser {
            base: site.base.clone(),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Resp {
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
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("answer in time")
            .expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap().to_string();
            let (kv, _) = v.split_once(';').unwrap_or((&v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            if val.is_empty() || v.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
            self.set_cookies.push(v.clone());
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&mut self, path: &str) -> Resp {
        if path.starts_with("/activity/stream") {
            // A stream: its status and headers, not its endless body.
            let resp = self.open_stream(path).await;
            return Resp {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: String::new(),
            };
        }
        self.send("GET", path, None).await
    }

    /// A GET whose body is read as it comes.
    async fn open_stream(&mut self, path: &str) -> hyper::Response<hyper::body::Incoming> {
        let c: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let req = hyper::Request::builder()
            .uri(format!("{}{path}", self.base))
            .header("cookie", c.join("; "))
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("answer in time")
            .expect("request")
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send("POST", path, Some(body)).await
    }

    /// Logs in through the login form; the response to the login POST.
    async fn login(&mut self, user: &str, password: &str, code: &str) -> Resp {
        let page = self.get("/login").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = csrf_of(&page.body);
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("user", user),
                ("password", password),
                ("totp", code),
            ],
        )
        .await
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The CSRF token of the first form of a page.
fn csrf_of(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    body[at..at + 64].to_string()
}

/// A new admin user of `role`: its name and TOTP secret.
fn user(ctl: &Controller, role: Role) -> (String, String) {
    let name = format!("{}-{}", role.as_str(), controller::random_hex(4));
    let (secret, _) = ctl
        .state
        .create_admin_user(&name, role, PASSWORD, "test")
        .unwrap();
    (name, secret)
}

fn code(secret: &str) -> String {
    auth::totp_code(secret, controller::now_unix())
}

/// A browser logged in as a new user of `role`.
async fn logged_in(ctl: &Controller, site: &Site, role: Role) -> (Browser, String) {
    let (b, name, _) = logged_in_totp(ctl, site, role).await;
    (b, name)
}

/// [`logged_in`], with the user's TOTP secret.
async fn logged_in_totp(ctl: &Controller, site: &Site, role: Role) -> (Browser, String, String) {
    let (name, secret) = user(ctl, role);
    let mut b = Browser::new(site);
    let r = b.login(&name, PASSWORD, &code(&secret)).await;
    assert_eq!(r.status, 303, "login: {}", r.body);
    assert_eq!(r.location(), "/");
    (b, name, secret)
}

/// The code of the next TOTP step (the login used this one's; one step of skew is
/// accepted).
fn next_code(secret: &str) -> String {
    auth::totp_code(secret, controller::now_unix() + 30)
}

/// Posts the apply form's fields.
async fn post_apply(b: &mut Browser, f: Vec<(String, String)>) -> Resp {
    let body = f
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    b.send("POST", "/policy/apply", Some(body)).await
}

/// A form's hidden `name` value in a page.
fn hidden(body: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + key.len();
    body[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn login_needs_password_and_a_right_totp_code() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (name, secret) = user(&ctl, Role::Admin);
    let mut b = Browser::new(&site);

    // Password only: refused, saying how to enroll TOTP; no session.
    let r = b.login(&name, PASSWORD, "").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("requires a TOTP code"), "{}", r.body);
    assert!(r.body.contains("gatewayctl users reset-totp"), "{}", r.body);
    assert!(!b.cookies.contains_key("zt-console"));
    assert_eq!(b.get("/").await.status, 303);

    // Password + wrong code: refused.
    let good = code(&secret);
    let wrong = if good == "000000" { "111111" } else { "000000" };
    let r = b.login(&name, PASSWORD, wrong).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("login failed"), "{}", r.body);
    assert!(!b.cookies.contains_key("zt-console"));
    let r = b.get("/").await;
    assert_eq!((r.status, r.location()), (303, "/login?why=none"));

    // Wrong password + right code: refused.
    let r = b.login(&name, "not the password at all", &good).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Password + right code: a session; the cookie's attributes.
    let r = b.login(&name, PASSWORD, &good).await;
    assert_eq!((r.status, r.location()), (303, "/"), "{}", r.body);
    let set = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("zt-console="))
        .unwrap();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let r = b.get("/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<h1>Overview</h1>"), "{}", r.body);
    assert!(r.body.contains(&format!("user:{name}")));

    // The same code again (another browser): refused (one use per step).
    let mut other = Browser::new(&site);
    let r = other.login(&name, PASSWORD, &good).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // The login is in the audit trail, saying it was the console.
    let audit = ctl.state.audit_report(None, None, 1000).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "console_login" && a.actor == format!("user:{name}")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn idle_timeout_and_reauthentication_force_a_new_login() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;

    // Idle timeout 2 s: used within it (every 0.5 s, 3 s in all: longer than the
    // timeout), the session lives; idle past it, it ends.
    let idle = site(
        &ctl,
        ConsoleOptions {
            idle: Duration::from_secs(2),
            ..ConsoleOptions::default()
        },
    )
    .await;
    let (mut b, name) = logged_in(&ctl, &idle, Role::Auditor).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b.get("/").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let r = b.get("/").await;
    assert_eq!((r.status, r.location()), (303, "/login?why=idle"));
    let r = b.get("/login?why=idle").await;
    assert!(r.body.contains("idle timeout"), "{}", r.body);
    // Ended for good, and its API session with it (recorded).
    assert_eq!(b.get("/").await.status, 303);
    let audit = ctl.state.audit_report(None, None, 1000).unwrap();
    assert!(audit.iter().any(|a| a.action == "console_session_end"
        && a.actor == format!("user:{name}")
        && a.after == "idle timeout"));

    // Re-authentication after 3 s, however active the session is.
    let reauth = site(
        &ctl,
        ConsoleOptions {
            reauth: Duration::from_secs(3),
            ..ConsoleOptions::default()
        },
    )
    .await;
    let (mut b, _) = logged_in(&ctl, &reauth, Role::Auditor).await;
    let t0 = std::time::Instant::now();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b.get("/").await.status, 200);
    }
    assert!(t0.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(3300).saturating_sub(t0.elapsed())).await;
    let r = b.get("/").await;
    assert_eq!((r.status, r.location()), (303, "/login?why=reauth"));
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_is_refused() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Operator).await;
    let page = b.get("/").await;
    assert_eq!(page.status, 200);
    let token = csrf_of(&page.body);

    // Logging out is a change: without the token, or with another, refused; the
    // session lives on.
    let r = b.post("/logout", &[]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("CSRF"), "{}", r.body);
    assert_eq!(b.get("/").await.status, 200);
    let wrong = "0".repeat(64);
    let r = b.post("/logout", &[("csrf", &wrong)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(b.get("/").await.status, 200);

    // Another session's token does not work either.
    let (mut other, _) = logged_in(&ctl, &site, Role::Operator).await;
    let other_token = csrf_of(&other.get("/").await.body);
    assert_ne!(other_token, token);
    let r = b.post("/logout", &[("csrf", &other_token)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(b.get("/").await.status, 200);

    // The same POST with the token works: the session ends.
    let r = b.post("/logout", &[("csrf", &token)]).await;
    assert_eq!((r.status, r.location()), (303, "/login?why=out"));
    assert_eq!(b.get("/").await.status, 303);
    assert_eq!(other.get("/").await.status, 200);

    // The login form has its own token: a login POST without it is refused.
    let (name, secret) = user(&ctl, Role::Admin);
    let mut fresh = Browser::new(&site);
    let r = fresh
        .post(
            "/login",
            &[
                ("user", &name),
                ("password", PASSWORD),
                ("totp", &code(&secret)),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!fresh.cookies.contains_key("zt-console"));
}

#[tokio::test]
async fn sources_outside_the_allowed_networks_are_refused() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let elsewhere = site(
        &ctl,
        ConsoleOptions {
            allow: vec!["198.18.0.0/15".parse().unwrap()],
            ..ConsoleOptions::default()
        },
    )
    .await;
    let mut b = Browser::new(&elsewhere);
    let r = b.get("/login").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("--console-allow"), "{}", r.body);
    assert!(r.body.contains("127.0.0.1"), "{}", r.body);
    let r = b.get(&console::asset_paths().0.clone()).await;
    assert_eq!(r.status, 403);

    // Positive control: the same console allowing loopback serves it.
    let here = site(
        &ctl,
        ConsoleOptions {
            allow: vec![
                "198.18.0.0/15".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            ..ConsoleOptions::default()
        },
    )
    .await;
    let mut b = Browser::new(&here);
    assert_eq!(b.get("/login").await.status, 200);
    logged_in(&ctl, &here, Role::Auditor).await;
}

#[tokio::test]
async fn plaintext_is_refused_off_loopback() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let e = console::spawn(
        "198.18.0.1:0".parse().unwrap(),
        ctl.state.clone(),
        ConsoleOptions::default(),
        async {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("refusing to serve the admin console in plaintext"),
        "{e}"
    );
    assert!(e.contains("--tls-dir"), "{e}");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Admin).await;
    let (css, js) = console::asset_paths().clone();
    let mut anonymous = Browser::new(&site);
    let mut responses = vec![
        ("/login (anonymous)", anonymous.get("/login").await),
        ("/ (anonymous)", anonymous.get("/").await),
        ("404", b.get("/no/such/page").await),
        ("css", b.get(&css).await),
        ("js", b.get(&js).await),
        ("bad form", b.post("/logout", &[]).await),
    ];
    for r in console::ROUTES.iter().filter(|r| r.method == "GET") {
        let path = r
            .path
            .replace("{kind}", "resource")
            .replace("{name}", "web")
            .replace("{revision}", "1");
        responses.push((r.path, b.get(&path).await));
    }
    for (what, r) in &responses {
        let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h("content-security-policy").as_deref(),
            Some(console::CSP),
            "{what}"
        );
        assert!(console::CSP.contains("script-src 'self'") && !console::CSP.contains("unsafe"));
        assert_eq!(
            h("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(
            h("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{what}"
        );
        let cache = h("cache-control").unwrap_or_default();
        if *what == "css" || *what == "js" {
            assert_eq!(r.status, 200, "{what}");
            assert!(cache.contains("immutable"), "{what}: {cache}");
        } else {
            assert_eq!(cache, "no-store", "{what}");
        }
        // No inline script or style in any page.
        assert!(
            !r.body.contains("<script>") && !r.body.contains("<style"),
            "{what}"
        );
        assert!(
            !r.body.contains(" style=") && !r.body.contains(" onclick="),
            "{what}"
        );
    }
    let page = &responses[0].1;
    assert!(
        page.body.contains(&format!("<script src=\"{js}\" defer>")),
        "{}",
        page.body
    );
    assert!(page.body.contains("<html lang=\"en\">"));
}

#[tokio::test]
async fn every_route_is_allowed_exactly_when_its_rpc_is() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, DEMO).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    for role in [Role::Admin, Role::Operator, Role::Auditor] {
        let (mut b, _) = logged_in(&ctl, &site, role).await;
        let mut posts = Vec::new();
        for r in console::ROUTES {
            if r.rpc == "Login" {
                continue;
            }
            let allowed = role.allows(auth::permission(r.rpc));
            let path = r
                .path
                .replace("{kind}", "resource")
                .replace("{name}", "web")
                .replace("{revision}", "1");
            if r.method == "POST" {
                posts.push((r, path, allowed));
                continue;
            }
            let resp = b.get(&path).await;
            if allowed {
                assert_eq!(resp.status, 200, "{role} GET {path}: {}", resp.body);
            } else {
                assert_eq!(resp.status, 403, "{role} GET {path}: {}", resp.body);
                assert!(resp.body.contains(r.rpc), "{}", resp.body);
            }
        }
        // The POSTs (logout last: it ends the session).
        posts.sort_by_key(|(r, _, _)| r.path == "/logout");
        for (r, path, allowed) in posts {
            let token = csrf_of(&b.get("/").await.body);
            let resp = b.post(&path, &[("csrf", &token)]).await;
            if allowed {
                assert_ne!(resp.status, 403, "{role} POST {path}: {}", resp.body);
            } else {
                assert_eq!(resp.status, 403, "{role} POST {path}: {}", resp.body);
                assert!(resp.body.contains(r.rpc), "{}", resp.body);
            }
        }
    }
}

#[tokio::test]
async fn names_are_escaped_in_every_page() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let evil = "<script>alert(1)</script>";
    let attr = "x\" onmouseover=\"alert(2)";
    let text = format!(
        "{DEMO}\n[[resource]]\nname = \"{evil}\"\nnetwork = \"corp\"\naddress = \"198.18.1.99\"\ntcp = [\"9\"]\n\n\
         [[resource]]\nname = '{attr}'\nnetwork = \"corp\"\naddress = \"198.18.1.98\"\ntcp = [\"9\"]\n"
    );
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, &text).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Admin).await;
    let pages = [
        "/objects/resource".to_string(),
        format!("/objects/resource?q={}", enc(evil)),
        format!("/objects/resource/{}", enc(evil)),
        format!("/objects/resource/{}", enc(attr)),
        "/policy".to_string(),
        format!("/explain?from={}&to={}", enc(evil), enc(attr)),
        format!("/activity?user={}&resource={}", enc(evil), enc(attr)),
        format!("/audit?actor={}", enc(attr)),
        format!("/objects/{}", enc(evil)),
    ];
    let mut seen = 0;
    for p in &pages {
        let r = b.get(p).await;
        assert!(!r.body.contains(evil), "{p}: {}", r.body);
        assert!(!r.body.contains("\" onmouseover=\""), "{p}: {}", r.body);
        if r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;") {
            seen += 1;
        }
    }
    // Positive control: the names are there, escaped.
    assert!(seen >= 6, "the name shows escaped on {seen} pages");
    let r = b.get("/objects/resource").await;
    assert!(
        r.body.contains("x&quot; onmouseover=&quot;alert(2)"),
        "{}",
        r.body
    );
    let _ = Arc::clone(&ctl.state);
}

#[tokio::test]
async fn a_policy_is_applied_through_its_plan_with_a_fresh_totp_code() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, DEMO).await;
    let before = ctl.state.revision();
    let site = site(&ctl, ConsoleOptions::default()).await;
    let text = format!(
        "{DEMO}\n[[resource]]\nname = \"console-added\"\nnetwork = \"corp\"\naddress = \"198.18.1.77\"\ntcp = [\"7\"]\n"
    );

    // The auditor may neither plan nor apply (403, nothing changed).
    let (mut aud, _, aud_secret) = logged_in_totp(&ctl, &site, Role::Auditor).await;
    let token = csrf_of(&aud.get("/").await.body);
    let r = aud
        .post("/policy/plan", &[("csrf", &token), ("policy", &text)])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = aud
        .post(
            "/policy/apply",
            &[
                ("csrf", &token),
                ("policy", &text),
                ("totp", &next_code(&aud_secret)),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(ctl.state.revision(), before);

    // An operator plans: the plan shows, nothing is applied.
    let (mut op, name, secret) = logged_in_totp(&ctl, &site, Role::Operator).await;
    let page = op.get("/policy").await;
    assert!(page.body.contains("id=\"plan-form\""), "{}", page.body);
    let token = csrf_of(&page.body);
    let r = op
        .post("/policy/plan", &[("csrf", &token), ("policy", &text)])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("console-added"), "{}", r.body);
    assert!(r.body.contains("<td>added</td>"), "{}", r.body);
    assert_eq!(ctl.state.revision(), before);
    let expected = hidden(&r.body, "expected_revision");
    assert_eq!(expected, before.to_string());

    // A bad policy: its located error, nothing applied.
    let r = op
        .post(
            "/policy/plan",
            &[("csrf", &token), ("policy", "[[resource]]\nname = 1\n")],
        )
        .await;
    assert!(r.body.contains("console.toml:"), "{}", r.body);
    assert_eq!(ctl.state.revision(), before);

    // Confirming with a wrong code: refused, nothing applied.
    let good = next_code(&secret);
    let wrong = if good == "000000" { "111111" } else { "000000" };
    let form = |totp: &str| {
        vec![
            ("csrf".to_string(), token.clone()),
            ("expected_revision".to_string(), expected.clone()),
            ("policy".to_string(), text.clone()),
            ("totp".to_string(), totp.to_string()),
        ]
    };
    let r = post_apply(&mut op, form(wrong)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(ctl.state.revision(), before);

    // With the right code: applied, audited with the user as actor, from the console.
    let r = post_apply(&mut op, form(&good)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"applied\""), "{}", r.body);
    assert!(ctl.state.revision() > before);
    assert!(
        ctl.state
            .object(controller::Kind::Resource, "console-added")
            .is_ok()
    );
    let audit = ctl.state.audit_report(None, None, 1000).unwrap();
    let actor = format!("user:{name}");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "apply_policy" && a.actor == actor),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.action == "console_apply_policy"
            && a.actor == actor
            && a.after.contains("admin console")),
        "{audit:?}"
    );

    // The same code again (a replay): refused, nothing applied.
    let now = ctl.state.revision();
    let replay = text.replace("198.18.1.77", "198.18.1.78");
    let mut f = form(&good);
    f[1].1 = now.to_string();
    f[2].1 = replay;
    let r = post_apply(&mut op, f).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("already used"), "{}", r.body);
    assert_eq!(ctl.state.revision(), now);
}

#[tokio::test]
async fn keys_users_and_agents_are_managed_by_admins_with_a_fresh_totp_code() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, DEMO).await;
    let agent = common::enroll(&ctl, "connector:demo-connector").await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let key_active = |name: &str| {
        ctl.state
            .list_api_keys()
            .iter()
            .any(|k| k.name == name && k.revoked_ms.is_none())
    };
    let revoked = || {
        ctl.state
            .agents()
            .iter()
            .any(|a| a.agent_id == agent.agent_id && a.revoked_ms.is_some())
    };
    async fn act(b: &mut Browser, path: &str, secret: &str, fields: &[(&str, &str)]) -> Resp {
        let token = csrf_of(&b.get("/").await.body);
        let totp = next_code(secret);
        let mut f = vec![("csrf", token.as_str()), ("totp", totp.as_str())];
        f.extend_from_slice(fields);
        b.post(path, &f).await
    }

    // Operator: refused on the admin-only actions (403, nothing changed).
    let (mut op, _, op_secret) = logged_in_totp(&ctl, &site, Role::Operator).await;
    let r = act(
        &mut op,
        "/keys/create",
        &op_secret,
        &[("name", "k1"), ("role", "auditor")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!key_active("k1"));
    let r = act(
        &mut op,
        "/agents/revoke",
        &op_secret,
        &[("agent_id", &agent.agent_id)],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!revoked());
    let r = act(
        &mut op,
        "/users/create",
        &op_secret,
        &[("name", "u1"), ("role", "auditor"), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(op.get("/keys").await.status == 403 && op.get("/users").await.status == 403);

    // Admin: creates a key (its secret shown once), audited from the console.
    let (mut a1, n1, s1) = logged_in_totp(&ctl, &site, Role::Admin).await;
    let r = act(
        &mut a1,
        "/keys/create",
        &s1,
        &[("name", "k1"), ("role", "auditor")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("zt-key-"), "{}", r.body);
    assert!(key_active("k1"));
    // The same code again: refused; the key stays.
    let token = csrf_of(&a1.get("/").await.body);
    let r = a1
        .post(
            "/keys/revoke",
            &[("csrf", &token), ("totp", &next_code(&s1)), ("name", "k1")],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(key_active("k1"));

    // Another admin revokes it, creates and deletes a user, revokes the agent.
    let (mut a2, _, s2) = logged_in_totp(&ctl, &site, Role::Admin).await;
    let r = act(&mut a2, "/keys/revoke", &s2, &[("name", "k1")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!key_active("k1"));
    let (mut a3, _, s3) = logged_in_totp(&ctl, &site, Role::Admin).await;
    let r = act(
        &mut a3,
        "/users/create",
        &s3,
        &[("name", "u1"), ("role", "auditor"), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("otpauth://"), "{}", r.body);
    assert!(ctl.state.list_admin_users().iter().any(|u| u.name == "u1"));
    let (mut a4, _, s4) = logged_in_totp(&ctl, &site, Role::Admin).await;
    let r = act(&mut a4, "/users/delete", &s4, &[("name", "u1")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!ctl.state.list_admin_users().iter().any(|u| u.name == "u1"));
    let (mut a5, n5, s5) = logged_in_totp(&ctl, &site, Role::Admin).await;
    assert!(
        a5.get("/agents")
            .await
            .body
            .contains(&format!("revoke-{}", agent.agent_id))
    );
    let r = act(
        &mut a5,
        "/agents/revoke",
        &s5,
        &[("agent_id", &agent.agent_id)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(revoked());

    let audit = ctl.state.audit_report(None, None, 1000).unwrap();
    for (action, actor) in [
        ("create_api_key", &n1),
        ("console_create_api_key", &n1),
        ("revoke_agent", &n5),
        ("console_revoke_agent", &n5),
    ] {
        assert!(
            audit
                .iter()
                .any(|a| a.action == action && a.actor == format!("user:{actor}")),
            "{action} by {actor}: {audit:?}"
        );
    }
}

/// The next `event: activity` data of an SSE body within `within` (`None`: none came).
async fn next_activity(
    body: &mut hyper::body::Incoming,
    buf: &mut String,
    within: Duration,
) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = buf.find("\n\n") {
            let msg: String = buf.drain(..end + 2).collect();
            if msg.lines().any(|l| l == "event: activity") {
                let data = msg.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                return Some(serde_json::from_str(data).unwrap());
            }
            continue;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .ok()??
            .ok()?;
        if let Ok(data) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn live_activity_arrives_within_a_second() {
    use gateway_proto::v1;
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, DEMO).await;
    let agent = common::enroll(&ctl, "connector:demo-connector").await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Auditor).await;
    let page = b.get("/activity?user=alice%40example.com").await;
    assert!(
        page.body
            .contains("data-stream=\"/activity/stream?user=alice%40example.com&amp;\""),
        "{}",
        page.body
    );
    let resp = b
        .open_stream("/activity/stream?user=alice%40example.com")
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut buf = String::new();

    let report = |user: &str, resource: &str, event: &str| {
        let ctl = &ctl;
        let agent = agent.clone();
        let e = v1::ConnectionEvent {
            timestamp: policy_compiler::format_rfc3339(controller::now_unix()),
            event: event.into(),
            verdict: "deny".into(),
            reason: "no_grant".into(),
            user: Some(user.into()),
            resource: Some(resource.into()),
            host: "connector:demo-connector".into(),
            ..Default::default()
        };
        async move {
            ctl.agent()
                .await
                .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
                    auth: Some(agent),
                    events: vec![e],
                }]))
                .await
                .unwrap();
        }
    };
    // Another user's event does not match the page's filter: nothing arrives.
    report("bob@example.com", "db", "deny").await;
    assert!(
        next_activity(&mut body, &mut buf, Duration::from_millis(1500))
            .await
            .is_none()
    );
    // Alice's arrives within a second of being reported.
    let t = std::time::Instant::now();
    report("alice@example.com", "web", "deny").await;
    let e = next_activity(&mut body, &mut buf, Duration::from_secs(1))
        .await
        .expect("the event within 1 s");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(e["user"], "alice@example.com");
    assert_eq!(e["resource"], "web");
    assert_eq!(e["verdict"], "deny");
    // The overview counts the last hour's denies and scan alerts.
    report("alice@example.com", "web", "scan_alert").await;
    let r = b.get("/").await;
    assert!(
        r.body
            .contains("3 denied connections, 1 scan alerts, 3 events"),
        "{}",
        r.body
    );

    // Logging out ends the stream.
    let token = csrf_of(&b.get("/").await.body);
    assert_eq!(b.post("/logout", &[("csrf", &token)]).await.status, 303);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends with the session");
}

/// One HTTPS request to the console at `addr` trusting only `ca_pem`, with `cookie`.
async fn https_get(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    path: &str,
    cookie: Option<&str>,
) -> hyper::Response<hyper::body::Incoming> {
    use rustls_pki_types::pem::PemObject as _;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the deployment's certificate");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .uri(path)
        .header("host", addr.to_string());
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    send.send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn with_the_deployments_certificate_it_serves_https_and_host_prefixed_cookies() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let (ca, _, cert, key) = controller::tls::generate_pem(&["127.0.0.1".into()]).unwrap();
    let opts = ConsoleOptions {
        tls: Some(console::tls_config_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
        ..ConsoleOptions::default()
    };
    let (tx, rx) = oneshot::channel::<()>();
    let (addr, _task) = console::spawn(
        "127.0.0.1:0".parse().unwrap(),
        ctl.state.clone(),
        opts,
        async {
            let _ = rx.await;
        },
    )
    .await
    .unwrap();
    let r = https_get(addr, &ca, "/login", None).await;
    assert_eq!(r.status(), 200);
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        set.iter().any(|c| c.starts_with("__Host-zt-console-login=")
            && c.contains("Secure")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Strict")
            && c.contains("Path=/")),
        "{set:?}"
    );
    assert!(r.headers().contains_key("strict-transport-security"));
    // Without a session: to the login page; a plaintext cookie name is not a session.
    let r = https_get(addr, &ca, "/", Some("zt-console=0123")).await;
    assert_eq!(r.status(), 303);
    // Plaintext HTTP to the TLS listener gets no page.
    let plain = Browser::new(&Site {
        base: format!("http://{addr}"),
        _stop: oneshot::channel().0,
    });
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        plain.client.request(
            hyper::Request::builder()
                .uri(format!("http://{addr}/login"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert!(r.is_err() || r.unwrap().status() != 200);
    drop(tx);
}

#[tokio::test]
async fn input_is_bounded_with_clear_errors_and_lists_are_paginated() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    let mut text = DEMO.to_string();
    for i in 0..7 {
        text.push_str(&format!(
            "\n[[resource]]\nname = \"page-{i}\"\nnetwork = \"corp\"\naddress = \"198.18.2.{i}\"\ntcp = [\"9\"]\n"
        ));
    }
    common::apply(&mut admin, &text).await;
    let before = ctl.state.revision();
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, name, secret) = logged_in_totp(&ctl, &site, Role::Admin).await;
    let token = csrf_of(&b.get("/").await.body);

    // A body over the limit: refused, nothing applied.
    let huge = "x".repeat(console::MAX_BODY + 1);
    let r = b
        .post(
            "/policy/apply",
            &[
                ("csrf", &token),
                ("totp", &next_code(&secret)),
                ("policy", &huge),
            ],
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(ctl.state.revision(), before);
    // A field over its length: a clear, located error.
    let long = "k".repeat(65);
    let r = b
        .post(
            "/keys/create",
            &[
                ("csrf", &token),
                ("totp", &next_code(&secret)),
                ("name", &long),
                ("role", "auditor"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("the field `name` has 65 characters; at most 64"),
        "{}",
        r.body
    );
    assert!(!ctl.state.list_api_keys().iter().any(|k| k.name == long));
    let r = b.get("/objects/resource?limit=100000").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("`limit`"), "{}", r.body);

    // Search and pages.
    let r = b.get("/objects/resource?q=page-&limit=3").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("7 of "), "{}", r.body);
    assert_eq!(r.body.matches("<pre>[[resource]]").count(), 3, "{}", r.body);
    assert!(
        r.body.contains("q=page-&amp;offset=3&amp;limit=3"),
        "{}",
        r.body
    );
    let r = b.get("/objects/resource?q=page-&offset=6&limit=3").await;
    assert_eq!(r.body.matches("<pre>[[resource]]").count(), 1, "{}", r.body);
    assert!(!r.body.contains("Next page"));
    assert!(r.body.contains("Previous page"));

    // Deleting the user ends their console session at once.
    assert_eq!(b.get("/").await.status, 200);
    ctl.state.delete_admin_user(&name, "test").unwrap();
    let r = b.get("/").await;
    assert_eq!((r.status, r.location()), (303, "/login?why=ended"));
}

#[tokio::test]
async fn the_controller_serves_the_console_with_its_flag() {
    let (_d, db) = tempdir();
    // Plaintext off loopback: refused at start, saying what to do.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .arg("run")
        .args(common::db_args(&db))
        .args(["--insecure-plaintext", "--listen", "127.0.0.1:0"])
        .args(["--console-listen", "198.18.0.1:8443"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--console-listen 198.18.0.1:8443"), "{err}");
    assert!(err.contains("plaintext"), "{err}");

    // On loopback it serves the login page.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-controller"))
        .arg("run")
        .args(common::db_args(&db))
        .args(["--insecure-plaintext", "--listen", "127.0.0.1:0"])
        .args(["--console-listen", &format!("127.0.0.1:{port}")])
        .args(["--console-idle", "60", "--console-allow", "127.0.0.0/8"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let site = Site {
        base: format!("http://127.0.0.1:{port}"),
        _stop: oneshot::channel().0,
    };
    let mut b = Browser::new(&site);
    let mut status = 0;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            status = b.get("/login").await.status;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_resource_page_shows_who_can_reach_it_and_through_which_connector() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, DEMO).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Operator).await;
    let row =
        |from: &str, verdict: &str| format!("<tr><td>{from}</td><td>device</td><td>{verdict}</td>");
    // The DEMO's grants: alice may use web, bob the wiki; nobody the database.
    let web = b.get("/objects/resource/web").await;
    assert_eq!(web.status, 200, "{}", web.body);
    assert!(
        web.body.contains("Through connector(s): demo-connector"),
        "{}",
        web.body
    );
    assert!(
        web.body.contains(&row("alice-laptop", "allow")),
        "{}",
        web.body
    );
    assert!(
        web.body.contains(&row("bob-laptop", "deny")),
        "{}",
        web.body
    );
    let wiki = b.get("/objects/resource/wiki").await;
    assert!(
        wiki.body.contains(&row("bob-laptop", "allow")),
        "{}",
        wiki.body
    );
    assert!(
        wiki.body.contains(&row("alice-laptop", "deny")),
        "{}",
        wiki.body
    );
    let dbp = b.get("/objects/resource/db").await;
    assert!(
        dbp.body.contains(&row("alice-laptop", "deny")),
        "{}",
        dbp.body
    );
    assert!(
        dbp.body.contains(&row("bob-laptop", "deny")),
        "{}",
        dbp.body
    );
    // The same decisions as Explain's.
    let e = ctl.state.explain("bob-laptop", "wiki", None).unwrap();
    assert_eq!(format!("{:?}", e.verdict).to_lowercase(), "allow");
}

#[tokio::test]
async fn a_live_stream_ends_when_its_session_goes_idle() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let site = site(
        &ctl,
        ConsoleOptions {
            idle: Duration::from_secs(2),
            ..ConsoleOptions::default()
        },
    )
    .await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Auditor).await;
    let resp = b.open_stream("/activity/stream").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let t0 = std::time::Instant::now();
    // Open while the session is not idle...
    let early = tokio::time::timeout(Duration::from_millis(1200), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(early.is_err(), "the stream ended too early");
    // ...and ended once it is (idle 2 s, checked every second).
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the idle timeout");
    assert!(t0.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_dropped() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let addr = site.base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the half-sent request still holds its connection"
    );
    assert!(t0.elapsed() >= Duration::from_secs(9), "{:?}", t0.elapsed());
    // Positive control: a whole request is answered.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn revisions_and_the_difference_between_two() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, DEMO).await;
    let evil = "<script>alert(1)</script>";
    let second = format!(
        "{DEMO}\n[[resource]]\nname = \"{evil}\"\nnetwork = \"corp\"\naddress = \"198.18.1.99\"\ntcp = [\"9\"]\n"
    );
    common::apply(&mut admin, &second).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Auditor).await;

    let list = b.get("/policy/revisions").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(
        list.body.contains("id=\"revisions-table\""),
        "{}",
        list.body
    );
    assert!(list.body.contains("href=\"/policy/revisions/1\""));
    assert!(list.body.contains(">2</a> (current)"), "{}", list.body);
    assert!(list.body.contains("apply_policy"));
    assert!(
        list.body.contains("/policy/diff?from=1&amp;to=2"),
        "{}",
        list.body
    );

    // Revision 1's text is what GetPolicy gave then: no evil resource.
    let one = b.get("/policy/revisions/1").await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert!(one.body.contains("name = &quot;web&quot;"), "{}", one.body);
    assert!(!one.body.contains("198.18.1.99"));
    let two = b.get("/policy/revisions/2").await;
    assert!(two.body.contains("198.18.1.99"));

    // The difference: the added resource's lines, escaped, and nothing removed.
    let d = b.get("/policy/diff?from=1&to=2").await;
    assert_eq!(d.status, 200, "{}", d.body);
    assert!(!d.body.contains(evil), "{}", d.body);
    assert!(
        d.body
            .contains("<span class=\"diff-add\">+name = &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;</span>"),
        "{}",
        d.body
    );
    assert!(
        d.body
            .contains("<span class=\"diff-add\">+address = &quot;198.18.1.99&quot;</span>")
    );
    assert!(!d.body.contains("class=\"diff-del\""), "{}", d.body);
    assert!(d.body.contains("lines added, 0 removed"), "{}", d.body);
    // Reversed: the same lines removed.
    let r = b.get("/policy/diff?from=2&to=1").await;
    assert!(
        r.body
            .contains("<span class=\"diff-del\">-address = &quot;198.18.1.99&quot;</span>")
    );
    let same = b.get("/policy/diff?from=2&to=2").await;
    assert!(same.body.contains("id=\"diff-none\""), "{}", same.body);
    let form = b.get("/policy/diff").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("id=\"diff-form\""));

    // Bad input: clear and located, nothing else.
    for (path, status, says) in [
        ("/policy/revisions/abc", 400, "is not a revision"),
        ("/policy/revisions/0", 400, "numbered from 1"),
        ("/policy/revisions/9", 404, "no revision 9"),
        ("/policy/diff?from=1&to=9", 404, "no revision 9"),
        ("/policy/diff?from=x&to=1", 400, "the field `from`"),
        ("/policy/diff?from=0&to=1", 400, "numbered from 1"),
        ("/policy/revisions?before=-1", 400, "the field `before`"),
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.body.contains(says), "{path}: {}", r.body);
    }
}

/// Reads what the server sends on `s` until it closes or `within` passes.
async fn read_all(s: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into_owned(), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn a_trickled_body_times_out_and_one_source_cannot_take_every_connection() {
    use tokio::io::AsyncWriteExt as _;
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let site = site(
        &ctl,
        ConsoleOptions {
            request_timeout: Duration::from_secs(1),
            per_source: 3,
            ..ConsoleOptions::default()
        },
    )
    .await;
    let addr = site.base.trim_start_matches("http://").to_string();
    let request = |body_len: usize, body: &str| {
        format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {body_len}\r\n\r\n{body}"
        )
    };

    // A body announced as 100 bytes, 5 sent: answered 408 (with the security headers)
    // and closed, within the timeout and not long after.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(request(100, "user=").as_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (got, closed) = read_all(&mut slow, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.to_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{got}"
    );
    assert!(closed, "the connection stayed open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Control: the whole request, at once, is answered (a login form error, not 408).
    let mut whole = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = "user=x&password=y&totp=123456&csrf=z";
    whole
        .write_all(request(body.len(), body).as_bytes())
        .await
        .unwrap();
    let (got, _) = read_all(&mut whole, Duration::from_secs(3)).await;
    assert!(
        got.starts_with("HTTP/1.1 ") && !got.starts_with("HTTP/1.1 408"),
        "{got}"
    );
    drop(whole);
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Three idle connections from this address hold its places: a fourth is closed at
    // once, unanswered; when one of the three goes, a new one is served.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = fourth
        .write_all(format!("GET /login HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await;
    let (got, closed) = read_all(&mut fourth, Duration::from_secs(3)).await;
    assert!(
        closed && got.is_empty(),
        "a fourth connection was served: {got}"
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = tokio::net::TcpStream::connect(&addr).await.unwrap();
    again
        .write_all(
            format!("GET /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let (got, _) = read_all(&mut again, Duration::from_secs(3)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn the_overview_says_when_the_revision_reached_every_agent() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, DEMO).await;
    let agent = common::enroll(&ctl, "connector:demo-connector").await;
    let auth = controller::model::AgentCredential {
        agent_id: agent.agent_id.clone(),
        credential: agent.credential.clone(),
    };
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Auditor).await;
    let revision_line = |body: &str| {
        let from = body
            .find("id=\"policy-revision\"")
            .expect("the revision line");
        body[from..from + body[from..].find("</p>").unwrap()].to_string()
    };

    // Not acknowledged yet: said so, and no time in the agent's row.
    let page = b.get("/").await;
    let line = revision_line(&page.body);
    assert!(line.contains("Policy revision 1, made "), "{line}");
    assert!(
        line.contains("1 of 1 agents have not acknowledged"),
        "{line}"
    );
    assert!(page.body.contains("<th>Acknowledged at</th>"));

    // The agent acknowledges its host's generation: in force on every agent, since then.
    let generation = ctl.state.generations()["connector:demo-connector"];
    let before = controller::now_ms();
    ctl.state.ack(Some(&auth), generation).unwrap();
    let page = b.get("/").await;
    let line = revision_line(&page.body);
    assert!(line.contains("in force on every agent since "), "{line}");
    assert!(line.contains(" ms after it was made)"), "{line}");
    let agents = ctl.state.agents();
    let acked = agents[0].acked_ms;
    assert!(acked >= before && acked <= controller::now_ms(), "{acked}");
    assert!(
        page.body
            .contains(&policy_compiler::format_rfc3339(acked.div_euclid(1000))),
        "the agent's row has its acknowledgement time"
    );

    // Kept across a restart of the controller (written with the acknowledgements), and
    // acknowledging the same generation again does not move it.
    ctl.state.flush_acks(false).unwrap();
    ctl.state.ack(Some(&auth), generation).unwrap();
    ctl.state.flush_acks(false).unwrap();
    assert_eq!(ctl.state.agents()[0].acked_ms, acked);
    let again = common::open_state(&db);
    assert_eq!(again.agents()[0].acked_ms, acked);

    // A new revision that changes the connector's view: behind again until acknowledged.
    common::apply(
        &mut admin,
        &DEMO.replacen("tcp = [\"443\"]", "tcp = [\"8443\"]", 1),
    )
    .await;
    let line = revision_line(&b.get("/").await.body);
    assert!(line.contains("Policy revision 2"), "{line}");
    assert!(
        line.contains("1 of 1 agents have not acknowledged"),
        "{line}"
    );
}

#[tokio::test]
async fn who_can_reach_a_resource_lists_service_account_keys_and_every_device() {
    let (_d, db) = tempdir();
    let ctl = Controller::start(&db).await;
    let text = format!(
        "{DEMO}\n[[service_account]]\nname = \"ci\"\nkeys = [{{ name = \"k1\", address = \"198.19.1.1\" }}, {{ name = \"k6\", address = \"2001:db8:ff::99\" }}]\n\n\
         [[allow]]\nname = \"ci-web\"\nprincipals = [\"ci\"]\nresources = [\"web\"]\n"
    );
    let mut admin = ctl.admin().await;
    common::apply(&mut admin, &text).await;
    let site = site(&ctl, ConsoleOptions::default()).await;
    let (mut b, _) = logged_in(&ctl, &site, Role::Auditor).await;
    let page = b.get("/objects/resource/web").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("id=\"reach-error\""), "{}", page.body);
    let table = {
        let from = page
            .body
            .find("id=\"reach-table\"")
            .expect("the reach table");
        page.body[from..from + page.body[from..].find("</table>").unwrap()].to_string()
    };
    let row = |who: &str| {
        let at = table
            .find(&format!("<td>{who}</td>"))
            .unwrap_or_else(|| panic!("no row for {who}: {table}"));
        table[at..at + table[at..].find("</tr>").unwrap()].to_string()
    };
    // The IPv4 key reaches web (its grant); the IPv6-only key has no address of web's
    // family: a denial that says why, not an error of the whole page.
    assert!(row("ci/k1").contains("<td>allow</td>"), "{}", row("ci/k1"));
    assert!(row("ci/k6").contains("<td>deny</td>"), "{}", row("ci/k6"));
    assert!(
        row("ci/k6").contains("has no IPv4 address"),
        "{}",
        row("ci/k6")
    );
    // Every device is listed, with the demo's own decisions.
    assert!(row("alice-laptop").contains("<td>allow</td>"));
    assert!(row("bob-laptop").contains("<td>deny</td>"));
}
