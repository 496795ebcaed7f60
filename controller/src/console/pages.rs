//! The console's pages and forms (maud: every interpolated value is HTML-escaped).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use super::actions::totp_input;
use super::session::{cookie, cookie_name, login_cookie_name, same, set_cookie};
use super::{Authed, Console, Peer, Reject, asset_paths};
use crate::auth::{self, Role};
use crate::model::EventFilter;
use crate::objects::{KINDS, Kind};

type Con = AxState<Arc<Console>>;
pub(super) type Fields = Vec<(String, String)>;

/// Rows on one page of a list at most (and the default).
pub const PAGE_MAX: usize = 200;
pub const PAGE_DEFAULT: usize = 50;
/// Events one export returns at most.
pub const EXPORT_MAX: u32 = 10_000;
/// Longest password field read (Login refuses longer ones itself).
const MAX_PASSWORD: usize = 1024;

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(overview))
        .route("/objects/{kind}", get(objects))
        .route("/objects/{kind}/{name}", get(object))
        .route("/policy", get(policy))
        .route("/policy/revisions", get(revisions))
        .route("/policy/revisions/{revision}", get(revision))
        .route("/policy/diff", get(diff))
        .route("/explain", get(explain))
        .route("/activity", get(activity))
        .route("/activity/export", get(activity_export))
        .route("/activity/stream", get(activity_stream))
        .route("/agents", get(agents))
        .route("/audit", get(audit))
        .route("/audit/export", get(audit_export))
        .route("/keys", get(keys))
        .route("/users", get(users))
}

// ------------------------------------------------------------------ fields

/// The value of field `name` (empty when absent), at most `max` characters: a longer
/// one is a clear 400.
pub(super) fn field(f: &Fields, name: &str, max: usize) -> Result<String, Reject> {
    let v = f
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str());
    let n = v.chars().count();
    if n > max {
        return Err(Reject::bad(format!(
            "the field `{name}` has {n} characters; at most {max} are accepted: shorten it"
        )));
    }
    Ok(v.to_string())
}

/// An optional number field (`None` when empty), at most `max`.
pub(super) fn number(f: &Fields, name: &str, max: u64) -> Result<Option<u64>, Reject> {
    let v = field(f, name, 20)?;
    if v.trim().is_empty() {
        return Ok(None);
    }
    match v.trim().parse::<u64>() {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(Reject::bad(format!(
            "the field `{name}` is `{}`: give a whole number from 0 to {max}",
            crate::shown(&v)
        ))),
    }
}

/// The page size (`limit`) and offset (`offset`) of a list.
fn paging(f: &Fields) -> Result<(usize, usize), Reject> {
    let limit = number(f, "limit", PAGE_MAX as u64)?.map_or(PAGE_DEFAULT, |n| n as usize);
    let offset = number(f, "offset", 1_000_000_000)?.unwrap_or(0) as usize;
    Ok((limit.max(1), offset))
}

fn time(ms: i64) -> String {
    policy_compiler::format_rfc3339(ms.div_euclid(1000))
}

// ------------------------------------------------------------------ layout

/// The navigation: (path, label, equivalent RPC); a link shows when the role may use it.
const NAV: &[(&str, &str, &str)] = &[
    ("/", "Overview", "ListAgents"),
    ("/objects/resource", "Resources", "ListObjects"),
    ("/objects/remote_network", "Remote networks", "ListObjects"),
    ("/objects/connector", "Connectors", "ListObjects"),
    ("/objects/user", "Users", "ListObjects"),
    ("/objects/group", "Groups", "ListObjects"),
    ("/objects/device", "Devices", "ListObjects"),
    (
        "/objects/service_account",
        "Service accounts",
        "ListObjects",
    ),
    ("/policy", "Policy", "GetPolicy"),
    ("/explain", "Explain", "Explain"),
    ("/activity", "Activity", "QueryEvents"),
    ("/agents", "Agents", "ListAgents"),
    ("/audit", "Admin actions", "AuditReport"),
    ("/keys", "API keys", "ListApiKeys"),
    ("/users", "Admin users", "ListAdminUsers"),
];

fn layout(title: &str, who: Option<&Authed>, body: Markup) -> Markup {
    let (css, js) = asset_paths();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · zt-gateway console" }
                link rel="stylesheet" href=(css);
                script src=(js) defer {}
            }
            body {
                header {
                    strong { "zt-gateway console" }
                    @if let Some(a) = who {
                        nav aria-label="Main" {
                            ul {
                                @for (path, label, rpc) in NAV {
                                    @if a.principal.role.allows(auth::permission(rpc)) {
                                        li { a href=(path) { (label) } }
                                    }
                                }
                            }
                        }
                        form id="logout-form" class="logout" method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(a.csrf);
                            span { (a.principal.name) " (" (a.principal.role) ") " }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub(super) fn page(title: &str, who: &Authed, body: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        layout(title, Some(who), body).into_string(),
    )
        .into_response()
}

pub(super) fn error_page(code: StatusCode, msg: &str) -> Response {
    let body = html! {
        p class="error" role="alert" id="error" { (msg) }
        p { a href="/" { "Back to the overview" } }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        layout(code.canonical_reason().unwrap_or("Error"), None, body).into_string(),
    )
        .into_response()
}

/// Links to the previous and next page of a list.
fn pager(base: &str, keep: &[(&str, &str)], offset: usize, limit: usize, more: bool) -> Markup {
    let link = |off: usize| {
        let mut q: Vec<String> = keep
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        q.push(format!("offset={off}"));
        q.push(format!("limit={limit}"));
        format!("{base}?{}", q.join("&"))
    };
    html! {
        nav aria-label="Pages" class="pager" {
            @if offset > 0 { a href=(link(offset.saturating_sub(limit))) { "Previous page" } " " }
            @if more { a href=(link(offset + limit)) { "Next page" } }
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------ login

const LOGIN_WHY: &[(&str, &str)] = &[
    ("none", "Log in to use the console."),
    ("ended", "Your session ended: log in again."),
    (
        "idle",
        "Your console session was idle too long (idle timeout): log in again.",
    ),
    (
        "reauth",
        "Your console session reached its re-authentication interval: log in again.",
    ),
    ("out", "You logged out."),
];

fn login_form(console: &Console, notice: Option<&str>, error: Option<&str>) -> Response {
    let token = match crate::try_random_hex(32) {
        Ok(t) => t,
        Err(e) => return Reject::from(e).into_response(),
    };
    let tls = console.opts.tls.is_some();
    let body = html! {
        @if let Some(n) = notice { p class="notice" id="notice" { (n) } }
        @if let Some(e) = error { p class="error" role="alert" id="error" { (e) } }
        p {
            "The console requires your password and the current code of your authenticator \
             app (TOTP)."
        }
        form id="login-form" method="post" action="/login" {
            input type="hidden" name="csrf" value=(token);
            label for="login-user" { "User" }
            input id="login-user" name="user" type="text" autocomplete="username" maxlength="64" required;
            label for="login-password" { "Password" }
            input id="login-password" name="password" type="password" autocomplete="current-password" maxlength="1024" required;
            label for="login-totp" { "TOTP code" }
            input id="login-totp" name="totp" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required;
            p { button type="submit" { "Log in" } }
        }
    };
    let mut r = (
        if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        layout("Log in", None, body).into_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(login_cookie_name(tls), &token, Some(3600))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(AxState(c): Con, Query(q): Query<Fields>) -> Response {
    let why = field(&q, "why", 16).unwrap_or_default();
    let notice = LOGIN_WHY.iter().find(|(k, _)| *k == why).map(|(_, m)| *m);
    login_form(&c, notice, None)
}

async fn login(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Response {
    match login_inner(&c, peer, &headers, &f).await {
        Ok(r) => r,
        Err(Reject::Page(code, msg)) if code == StatusCode::UNAUTHORIZED => {
            login_form(&c, None, Some(&msg))
        }
        Err(e) => e.into_response(),
    }
}

async fn login_inner(
    c: &Arc<Console>,
    peer: IpAddr,
    headers: &HeaderMap,
    f: &Fields,
) -> Result<Response, Reject> {
    let tls = c.opts.tls.is_some();
    let token = field(f, "csrf", 64)?;
    let want = cookie(headers, login_cookie_name(tls)).unwrap_or("");
    if want.is_empty() || !same(&token, want) {
        return Err(Reject::Page(
            StatusCode::FORBIDDEN,
            "this login form did not come from this console (CSRF check): open /login and \
             log in from there"
                .into(),
        ));
    }
    let user = field(f, "user", 64)?;
    let password = field(f, "password", MAX_PASSWORD)?;
    let code = field(f, "totp", 16)?;
    if code.trim().is_empty() {
        c.state.refused(
            "console_login_refused",
            format!("user:{}", crate::shown(&user)),
            "console".into(),
            "no TOTP code".into(),
        );
        return Err(Reject::Page(
            StatusCode::UNAUTHORIZED,
            "the console requires a TOTP code with the password (two factors are mandatory \
             here). Every admin user has a TOTP secret, printed once by `gatewayctl users \
             create`; if you have no authenticator app set up with it, ask an admin to run \
             `gatewayctl users reset-totp YOUR-NAME` and load the secret it prints into your \
             authenticator."
                .into(),
        ));
    }
    let gate = c.state.admit_login(Some(peer))?;
    let Ok(Ok(_permit)) = tokio::time::timeout(auth::LOGIN_QUEUE_WAIT, gate.acquire_owned()).await
    else {
        return Err(Reject::Page(
            StatusCode::TOO_MANY_REQUESTS,
            "too many logins in progress: try again later".into(),
        ));
    };
    let session = c
        .state
        .login(Some(peer), &user, &password, &code)
        .await
        .map_err(|e| match e {
            crate::Error::InvalidArgument(m) => Reject::Page(StatusCode::UNAUTHORIZED, m),
            other => Reject::from(other),
        })?;
    let principal = c
        .state
        .authorize(Some(&format!("Bearer {}", session.token)), auth::Perm::Any)?;
    let name = principal.name.clone();
    let id = c.sessions.open(session.token, principal)?;
    c.state.audit_console(
        &name,
        "console_login",
        "session",
        &format!(
            "admin console session from {peer} (re-authentication after {} s, idle timeout {} s)",
            c.opts.reauth.as_secs(),
            c.opts.idle.as_secs()
        ),
    )?;
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(cookie_name(tls), &id, None)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&set_cookie(login_cookie_name(tls), "", Some(0))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

async fn logout(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let csrf = field(&f, "csrf", 64)?;
    c.authorize(&headers, peer, "Logout", Some(&csrf))?;
    if let Some(p) = c.sessions.remove(&headers) {
        c.state.end_console_session(&p, "logged out");
    }
    let tls = c.opts.tls.is_some();
    let mut r = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/login?why=out")],
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(cookie_name(tls), "", Some(0))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

// ------------------------------------------------------------------ views

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, Reject> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            Reject::Page(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("task failed: {e}"),
            )
        })?
        .map_err(Reject::from)
}

async fn overview(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "ListAgents", None)?;
    let s = c.state.clone();
    let (agents, revision, revised_ms, events) = blocking(move || {
        let hour = crate::now_ms() - 3_600_000;
        let f = EventFilter {
            since_ms: Some(hour),
            ..EventFilter::default()
        };
        let events = s.query_events(&f, EXPORT_MAX)?;
        let revision = s.revision();
        // When the current revision was made (its kept text's time), if it is kept.
        let revised_ms = s
            .policy_revisions(0, 1)?
            .first()
            .filter(|r| r.revision == revision)
            .map(|r| r.time_ms);
        Ok((s.agents(), revision, revised_ms, events))
    })
    .await?;
    let live: Vec<_> = agents.iter().filter(|x| x.revoked_ms.is_none()).collect();
    let online = live.iter().filter(|x| x.connected).count();
    let behind = live
        .iter()
        .filter(|x| x.acked_generation != x.current_generation)
        .count();
    // Every live agent at its host's current generation: the revision reached them all
    // when the last of them acknowledged (or when it was made, if none had to).
    let reached = (behind == 0 && !live.is_empty()).then(|| {
        let last_ack = live.iter().map(|x| x.acked_ms).max().unwrap_or(0);
        revised_ms.map_or(last_ack, |r| r.max(last_ack))
    });
    let count = |what: &str| {
        events
            .iter()
            .filter(|e| {
                e.event
                    .as_ref()
                    .is_some_and(|e| e.verdict == what || e.event == what)
            })
            .count()
    };
    let body = html! {
        section aria-labelledby="agents-h" {
            h2 id="agents-h" { "Agents" }
            p id="agents-summary" { (online) " online, " (live.len() - online) " offline" }
            p id="policy-revision" {
                "Policy revision " (revision)
                @if let Some(t) = revised_ms { ", made " (time(t)) }
                ": "
                @if live.is_empty() { "no agents enrolled" }
                @else if let Some(at) = reached {
                    "in force on every agent since " (time(at))
                    @if let Some(t) = revised_ms { @if at >= t { " (" (at - t) " ms after it was made)" } }
                }
                @else { (behind) " of " (live.len()) " agents have not acknowledged their current generation" }
            }
            table id="overview-agents" {
                thead { tr { th { "Agent" } th { "Host" } th { "Online" } th { "Acknowledged generation" } th { "Acknowledged at" } th { "Current generation" } th { "Last seen" } } }
                tbody {
                    @for x in &live {
                        tr {
                            td { (x.agent_id) } td { (x.host) }
                            td { @if x.connected { "yes" } @else { "no" } }
                            td { (x.acked_generation) }
                            td { @if x.acked_ms > 0 { (time(x.acked_ms)) } @else { "-" } }
                            td { (x.current_generation) }
                            td { (time(x.last_seen_ms)) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="events-h" {
            h2 id="events-h" { "Last hour" }
            p id="events-summary" {
                (count("deny")) " denied connections, " (count("scan_alert")) " scan alerts, "
                (events.len()) " events"
            }
        }
    };
    Ok(page("Overview", &a, body))
}

fn kind_arg(kind: &str) -> Result<Kind, Reject> {
    Kind::parse(kind).ok_or_else(|| {
        Reject::Page(
            StatusCode::NOT_FOUND,
            format!(
                "no object kind `{}`: one of {}",
                crate::shown(kind),
                KINDS
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

async fn objects(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "ListObjects", None)?;
    let kind = kind_arg(&kind)?;
    let search = field(&q, "q", 128)?;
    let (limit, offset) = paging(&q)?;
    let (list, revision) = c.state.objects(Some(kind));
    let needle = search.to_lowercase();
    let matching: Vec<_> = list
        .iter()
        .filter(|o| needle.is_empty() || o.name.to_lowercase().contains(&needle))
        .collect();
    let shown: Vec<_> = matching.iter().skip(offset).take(limit).collect();
    let more = matching.len() > offset + shown.len();
    let base = format!("/objects/{kind}");
    let body = html! {
        form id="objects-search" method="get" action=(base) role="search" {
            label for="objects-q" { "Search by name" }
            input id="objects-q" name="q" type="search" value=(search) maxlength="128";
            button type="submit" { "Search" }
        }
        p { (matching.len()) " of " (list.len()) " at revision " (revision) }
        table id="objects-table" {
            thead { tr { th { "Name" } th { "Definition" } } }
            tbody {
                @for o in &shown {
                    tr {
                        td { a href=(format!("{base}/{}", urlencode(&o.name))) title=(o.name) { (o.name) } }
                        td { pre { (o.toml) } }
                    }
                }
            }
        }
        (pager(&base, &[("q", &search)], offset, limit, more))
    };
    Ok(page(&format!("Objects: {kind}"), &a, body))
}

async fn object(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "GetObject", None)?;
    let kind = kind_arg(&kind)?;
    let (o, revision) = c.state.object(kind, &name)?;
    let reach = if kind == Kind::Resource {
        Some(reach(&c, &o).await)
    } else {
        None
    };
    let body = html! {
        p { "Revision " (revision) }
        pre id="object-toml" { (o.toml) }
        @match &reach {
            Some(Ok((rows, connectors, more))) => {
                h2 { "Who can reach it" }
                p id="reach-connectors" {
                    "Through connector(s): "
                    @if connectors.is_empty() { "none (its remote network names no connector)" }
                    @else { (connectors.join(", ")) }
                }
                table id="reach-table" {
                    thead { tr { th { "From" } th { "Kind" } th { "Verdict" } th { "Reason" } th { "Rule" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { (r.0) } td { (r.1) } td { (format!("{:?}", r.2.got).to_lowercase()) }
                                td { (r.2.reason) } td { @if r.2.rule_id > 0 { (r.2.rule_id) } }
                            }
                        }
                    }
                }
                @if *more { p { "Only the first " (REACH_MAX) " devices and service accounts are shown." } }
            }
            Some(Err(m)) => { p class="error" id="reach-error" { "Who can reach it could not be decided: " (m) } }
            None => {}
        }
    };
    Ok(page(&format!("{kind} {}", o.name), &a, body))
}

async fn policy(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "GetPolicy", None)?;
    let (text, revision) = c.state.policy();
    let may_apply = a.principal.role.allows(auth::permission("ApplyPolicy"));
    let body = html! {
        p { "Revision " (revision) " — "
            a href="/policy/revisions" { "revisions and their changes" } }
        (diff_form(revision.saturating_sub(1), revision))
        pre id="policy-text" { (text) }
        @if may_apply {
            h2 { "Apply a new policy" }
            form id="plan-form" method="post" action="/policy/plan" {
                input type="hidden" name="csrf" value=(a.csrf);
                label for="plan-policy" { "Policy text (the whole policy; you see its plan before anything is applied)" }
                textarea id="plan-policy" name="policy" rows="20" required { (text) }
                p { button type="submit" { "Plan" } }
            }
        }
    };
    Ok(page("Policy", &a, body))
}

/// Kept revisions one revisions page lists.
const REVISIONS_PAGE: u32 = 50;
/// Diff lines one diff page shows at most (the rest: `gatewayctl revisions diff`).
pub const DIFF_LINES_MAX: usize = 5000;
/// How long one diff may search for the smallest difference (past it, a correct but
/// larger diff is shown).
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// The form comparing two revisions (GET /policy/diff).
fn diff_form(from: u64, to: u64) -> Markup {
    html! {
        form id="diff-form" method="get" action="/policy/diff" {
            label for="diff-from" { "Compare revision" }
            input id="diff-from" name="from" type="number" min="1" value=(from.max(1)) required;
            label for="diff-to" { "with revision" }
            input id="diff-to" name="to" type="number" min="1" value=(to.max(1)) required;
            button type="submit" { "Show the difference" }
        }
    }
}

async fn revisions(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "ListPolicyRevisions", None)?;
    let before = number(&q, "before", i64::MAX as u64)?.unwrap_or(0);
    let s = c.state.clone();
    let (list, current) = blocking(move || {
        // One more than shown: is there a next page?
        Ok((
            s.policy_revisions(before, REVISIONS_PAGE + 1)?,
            s.revision(),
        ))
    })
    .await?;
    let more = list.len() > REVISIONS_PAGE as usize;
    let shown = &list[..list.len().min(REVISIONS_PAGE as usize)];
    let body = html! {
        p { "The policy is at revision " (current) ". The controller keeps the texts of the last "
            (crate::store::REVISIONS_KEPT) " revisions." }
        (diff_form(current.saturating_sub(1), current))
        @if shown.is_empty() {
            p id="revisions-none" { "No revision texts are kept yet." }
        } @else {
            table id="revisions-table" {
                thead { tr { th { "Revision" } th { "Time" } th { "Actor" } th { "Change" } th { "Bytes" } th { "Difference" } } }
                tbody {
                    @for r in shown {
                        tr {
                            td { a href=(format!("/policy/revisions/{}", r.revision)) { (r.revision) }
                                 @if r.revision == current { " (current)" } }
                            td { (time(r.time_ms)) }
                            td { @if r.actor.is_empty() { "-" } @else { (r.actor) } }
                            td { (r.action) }
                            td { (r.bytes) }
                            td {
                                @if r.revision > 1 {
                                    a href=(format!("/policy/diff?from={}&to={}", r.revision - 1, r.revision)) { "from " (r.revision - 1) }
                                }
                                @if r.revision != current {
                                    " " a href=(format!("/policy/diff?from={}&to={current}", r.revision)) { "to current" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if more {
            @if let Some(last) = shown.last() {
                nav aria-label="Pages" class="pager" {
                    a href=(format!("/policy/revisions?before={}", last.revision)) { "Older revisions" }
                }
            }
        }
    };
    Ok(page("Policy revisions", &a, body))
}

/// A revision number from the path (a clear 400 otherwise).
fn revision_arg(v: &str) -> Result<u64, Reject> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Reject::bad(format!(
            "`{}` is not a revision: revisions are numbered from 1",
            crate::shown(v)
        ))),
    }
}

async fn revision(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Path(n): Path<String>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "GetPolicy", None)?;
    let n = revision_arg(&n)?;
    let s = c.state.clone();
    let ((text, at), current) = blocking(move || Ok((s.policy_at(n)?, s.revision()))).await?;
    let body = html! {
        p { "Revision " (at) @if at == current { " (current)" } " — "
            a href="/policy/revisions" { "all revisions" } }
        (diff_form(at, current))
        pre id="revision-text" { (text) }
    };
    Ok(page(&format!("Policy revision {at}"), &a, body))
}

/// One line of a rendered diff: its class (`add`, `del`, `ctx`, `hunk`) and text.
type DiffLine = (&'static str, String);

/// The unified diff of two texts as lines (hunk headers included), at most
/// `DIFF_LINES_MAX`, and how many more there were.
fn diff_lines(old: &str, new: &str) -> (Vec<DiffLine>, usize, usize, usize) {
    use similar::ChangeTag;
    let d = similar::TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old, new);
    let (mut out, mut more, mut added, mut removed) = (Vec::new(), 0, 0, 0);
    // The hunks of a unified diff with 3 lines of context (`gatewayctl revisions diff`'s).
    for hunk in d.unified_diff().context_radius(3).iter_hunks() {
        let mut lines = vec![("hunk", hunk.header().to_string())];
        for ch in hunk.iter_changes() {
            let (class, sign) = match ch.tag() {
                ChangeTag::Insert => {
                    added += 1;
                    ("add", '+')
                }
                ChangeTag::Delete => {
                    removed += 1;
                    ("del", '-')
                }
                ChangeTag::Equal => ("ctx", ' '),
            };
            let line = ch.value();
            lines.push((
                class,
                format!("{sign}{}", line.strip_suffix('\n').unwrap_or(line)),
            ));
        }
        for l in lines {
            if out.len() < DIFF_LINES_MAX {
                out.push(l);
            } else {
                more += 1;
            }
        }
    }
    (out, more, added, removed)
}

async fn diff(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "GetPolicy", None)?;
    let current = c.state.revision();
    let (from, to) = (
        number(&q, "from", i64::MAX as u64)?,
        number(&q, "to", i64::MAX as u64)?,
    );
    let (Some(from), Some(to)) = (from, to) else {
        let body = html! {
            p { "Choose two revisions (the policy is at revision " (current) ")." }
            (diff_form(current.saturating_sub(1), current))
        };
        return Ok(page("Policy difference", &a, body));
    };
    if from == 0 || to == 0 {
        return Err(Reject::bad("revisions are numbered from 1"));
    }
    let s = c.state.clone();
    let (lines, more, added, removed) = blocking(move || {
        let (old, _) = s.policy_at(from)?;
        let (new, _) = s.policy_at(to)?;
        Ok(diff_lines(&old, &new))
    })
    .await?;
    let body = html! {
        p { "From revision " a href=(format!("/policy/revisions/{from}")) { (from) }
            " to revision " a href=(format!("/policy/revisions/{to}")) { (to) } ": "
            span id="diff-summary" { (added) " lines added, " (removed) " removed" } }
        (diff_form(from, to))
        @if lines.is_empty() {
            p id="diff-none" { "The two revisions' texts are the same." }
        } @else {
            pre id="diff" class="diff" {
                @for (class, line) in &lines {
                    span class=(format!("diff-{class}")) { (line) } "\n"
                }
            }
            @if more > 0 {
                p id="diff-truncated" class="notice" {
                    (more) " more lines are not shown; the whole difference: "
                    code { "gatewayctl revisions diff " (from) " " (to) }
                }
            }
        }
    };
    Ok(page(&format!("Policy difference {from} → {to}"), &a, body))
}

async fn explain(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "Explain", None)?;
    let from = field(&q, "from", 256)?;
    let to = field(&q, "to", 256)?;
    let result = if from.is_empty() && to.is_empty() {
        None
    } else {
        let s = c.state.clone();
        let (f, t) = (from.clone(), to.clone());
        Some(blocking(move || s.explain(&f, &t, None)).await)
    };
    let body = html! {
        form id="explain-form" method="get" action="/explain" {
            label for="explain-from" { "From (device, user or service account)" }
            input id="explain-from" name="from" type="text" value=(from) maxlength="256" required;
            label for="explain-to" { "To (ADDR:PORT/PROTO, e.g. 198.18.1.5:22/tcp)" }
            input id="explain-to" name="to" type="text" value=(to) maxlength="256" required;
            p { button type="submit" { "Explain" } }
        }
        @match &result {
            Some(Ok(e)) => {
                p id="explain-verdict" { "Verdict: " strong { (format!("{:?}", e.verdict)) } " (" (e.reason) ")" }
                @if !e.rule.is_empty() { p id="explain-rule" { "Decided by: " (e.rule) } }
                pre id="explain-text" { (e.text) }
            }
            Some(Err(Reject::Page(_, m))) => { p class="error" role="alert" id="error" { (m) } }
            Some(Err(Reject::Login(_))) | None => {}
        }
    };
    Ok(page("Explain", &a, body))
}

/// The event filter of the Activity page's query (user, device, resource, connector,
/// verdict, event, host, before).
fn event_filter(q: &Fields) -> Result<(EventFilter, String), Reject> {
    let opt = |name: &str| -> Result<Option<String>, Reject> {
        let v = field(q, name, 256)?;
        Ok((!v.trim().is_empty()).then(|| v.trim().to_string()))
    };
    let before = number(q, "before", i64::MAX as u64)?;
    let f = EventFilter {
        user: opt("user")?,
        device: opt("device")?,
        resource: opt("resource")?,
        verdict: opt("verdict")?,
        event: opt("event")?,
        host: opt("host")?,
        until_ms: before.map(|b| b as i64),
        ..EventFilter::default()
    };
    Ok((f, opt("connector")?.unwrap_or_default()))
}

fn connector_of(e: &crate::model::EventRecord) -> &str {
    e.event
        .as_ref()
        .and_then(|c| c.connector.as_deref())
        .unwrap_or("")
}

async fn query_activity(
    c: &Console,
    q: &Fields,
    limit: u32,
) -> Result<(Vec<crate::model::EventRecord>, EventFilter, String), Reject> {
    let (f, connector) = event_filter(q)?;
    let s = c.state.clone();
    let f2 = f.clone();
    // The connector is not a stored filter: read more and filter here (bounded).
    let want = if connector.is_empty() {
        limit
    } else {
        EXPORT_MAX
    };
    let mut events = blocking(move || s.query_events(&f2, want)).await?;
    if !connector.is_empty() {
        events.retain(|e| connector_of(e) == connector);
        events.truncate(limit as usize);
    }
    Ok((events, f, connector))
}

async fn activity(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "QueryEvents", None)?;
    let (limit, _) = paging(&q)?;
    let (events, f, connector) = query_activity(&c, &q, limit as u32).await?;
    let keep: Vec<(&str, String)> = vec![
        ("user", f.user.clone().unwrap_or_default()),
        ("device", f.device.clone().unwrap_or_default()),
        ("resource", f.resource.clone().unwrap_or_default()),
        ("connector", connector.clone()),
        ("verdict", f.verdict.clone().unwrap_or_default()),
    ];
    let query: String = keep
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}&", urlencode(v)))
        .collect();
    let older = events
        .iter()
        .map(|e| e.time_ms)
        .min()
        .filter(|_| events.len() >= limit);
    let body = html! {
        form id="activity-filter" method="get" action="/activity" {
            @for (k, v) in &keep {
                label for=(format!("activity-{k}")) { (k) }
                input id=(format!("activity-{k}")) name=(k) type="text" value=(v) maxlength="256";
            }
            p { button type="submit" { "Filter" } }
        }
        p {
            a id="export-csv" href=(format!("/activity/export?{query}format=csv")) { "Export CSV" } " · "
            a id="export-json" href=(format!("/activity/export?{query}format=json")) { "Export JSON" }
        }
        p id="activity-live" data-stream=(format!("/activity/stream?{query}")) aria-live="polite" { "live: off (needs JavaScript)" }
        table id="activity-table" {
            thead { tr {
                th { "Time" } th { "Host" } th { "Event" } th { "Verdict" } th { "User" }
                th { "Device" } th { "Resource" } th { "Connector" } th { "Destination" } th { "Reason" }
            } }
            tbody {
                @for e in &events {
                    @let ev = e.event.clone().unwrap_or_default();
                    tr {
                        td { (time(e.time_ms)) } td { (ev.host) } td { (ev.event) } td { (ev.verdict) }
                        td { (ev.user.unwrap_or_default()) } td { (ev.device.unwrap_or_default()) }
                        td { (ev.resource.unwrap_or_default()) } td { (ev.connector.unwrap_or_default()) }
                        td { (ev.dst_ip.unwrap_or_default()) ":" (ev.dst_port.unwrap_or(0)) "/" (ev.protocol.unwrap_or_default()) }
                        td { (ev.reason) }
                    }
                }
            }
        }
        @if let Some(t) = older {
            nav aria-label="Pages" { a href=(format!("/activity?{query}before={}&limit={limit}", t - 1)) { "Older events" } }
        }
    };
    Ok(page("Activity", &a, body))
}

fn csv_cell(s: &str) -> String {
    // Quoted; a leading formula character is neutralised for spreadsheets.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn activity_export(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    c.authorize(&headers, peer, "QueryEvents", None)?;
    let format = field(&q, "format", 8)?;
    let limit = number(&q, "limit", u64::from(EXPORT_MAX))?.map_or(EXPORT_MAX, |n| n as u32);
    let (events, _, _) = query_activity(&c, &q, limit.max(1)).await?;
    let rows: Vec<[String; 12]> = events
        .iter()
        .map(|e| {
            let ev = e.event.clone().unwrap_or_default();
            [
                e.id.to_string(),
                time(e.time_ms),
                ev.host,
                ev.event,
                ev.verdict,
                ev.user.unwrap_or_default(),
                ev.device.unwrap_or_default(),
                ev.resource.unwrap_or_default(),
                ev.connector.unwrap_or_default(),
                format!(
                    "{}:{}/{}",
                    ev.dst_ip.unwrap_or_default(),
                    ev.dst_port.unwrap_or(0),
                    ev.protocol.unwrap_or_default()
                ),
                ev.rule.unwrap_or_default(),
                ev.reason,
            ]
        })
        .collect();
    const COLS: [&str; 12] = [
        "id",
        "time",
        "host",
        "event",
        "verdict",
        "user",
        "device",
        "resource",
        "connector",
        "destination",
        "rule",
        "reason",
    ];
    export(&format, "activity", &COLS, &rows)
}

fn export<const N: usize>(
    format: &str,
    name: &str,
    cols: &[&str; N],
    rows: &[[String; N]],
) -> Result<Response, Reject> {
    let (ctype, body, ext) = match format {
        "csv" | "" => {
            let mut out = cols.join(",");
            out.push('\n');
            for r in rows {
                out.push_str(&r.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            ("text/csv; charset=utf-8", out, "csv")
        }
        "json" => {
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::Value::Object(
                        cols.iter()
                            .zip(r.iter())
                            .map(|(k, v)| ((*k).to_string(), serde_json::Value::String(v.clone())))
                            .collect(),
                    )
                })
                .collect();
            let text = serde_json::to_string_pretty(&list)
                .map_err(|e| Reject::Page(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            ("application/json", text, "json")
        }
        other => {
            return Err(Reject::bad(format!(
                "unknown export format `{}`: give format=csv (the default) or format=json",
                crate::shown(other)
            )));
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}

async fn agents(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "ListAgents", None)?;
    let (limit, offset) = paging(&q)?;
    let s = c.state.clone();
    let list = blocking(move || Ok(s.agents())).await?;
    let may_revoke = a.principal.role.allows(auth::permission("RevokeAgent"));
    let shown: Vec<_> = list.iter().skip(offset).take(limit).collect();
    let more = list.len() > offset + shown.len();
    let body = html! {
        table id="agents-table" {
            thead { tr {
                th { "Agent" } th { "Host" } th { "Hostname" } th { "Status" } th { "Controller" }
                th { "Acknowledged generation" } th { "Current generation" } th { "Last seen" }
                @if may_revoke { th { "Revoke" } }
            } }
            tbody {
                @for x in &shown {
                    tr {
                        td { (x.agent_id) } td { (x.host) } td { (x.hostname) }
                        td { @if x.revoked_ms.is_some() { "revoked" } @else if x.connected { "online" } @else { "offline" } }
                        td { (x.controller) }
                        td { (x.acked_generation) } td { (x.current_generation) } td { (time(x.last_seen_ms)) }
                        @if may_revoke {
                            td {
                                @if x.revoked_ms.is_none() {
                                    form id=(format!("revoke-{}", x.agent_id)) method="post" action="/agents/revoke" {
                                        input type="hidden" name="csrf" value=(a.csrf);
                                        input type="hidden" name="agent_id" value=(x.agent_id);
                                        (totp_input(&format!("revoke-totp-{}", x.agent_id)))
                                        button type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (pager("/agents", &[], offset, limit, more))
    };
    Ok(page("Agents", &a, body))
}

/// The audit records of the query (`actor`, `action` filters; `limit`).
async fn audit_records(
    c: &Console,
    q: &Fields,
    limit: u32,
) -> Result<(Vec<crate::model::AuditRecord>, String, String), Reject> {
    let actor = field(q, "actor", 128)?;
    let action = field(q, "action", 64)?;
    let s = c.state.clone();
    let want = if actor.is_empty() && action.is_empty() {
        limit
    } else {
        EXPORT_MAX
    };
    let mut records = blocking(move || s.audit_report(None, None, want)).await?;
    records.retain(|r| {
        (actor.is_empty() || r.actor.contains(&actor))
            && (action.is_empty() || r.action.contains(&action))
    });
    records.truncate(limit as usize);
    Ok((records, field(q, "actor", 128)?, field(q, "action", 64)?))
}

async fn audit(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "AuditReport", None)?;
    let (limit, _) = paging(&q)?;
    let (records, actor, action) = audit_records(&c, &q, limit as u32).await?;
    let s = c.state.clone();
    let v = blocking(move || s.verify_audit(None)).await?;
    let body = html! {
        p id="audit-chain" {
            @if v.ok { "Chain verified: " (v.records) " records, head " code { (v.head_hash) } }
            @else { strong { "Chain BROKEN" } " at record " (v.first_bad_id.unwrap_or(0)) ": " (v.reason) }
        }
        form id="audit-filter" method="get" action="/audit" {
            label for="audit-actor" { "Actor" }
            input id="audit-actor" name="actor" type="text" value=(actor) maxlength="128";
            label for="audit-action" { "Action" }
            input id="audit-action" name="action" type="text" value=(action) maxlength="64";
            p { button type="submit" { "Filter" } }
        }
        p {
            a id="audit-export-csv" href=(format!("/audit/export?actor={}&action={}&format=csv", urlencode(&actor), urlencode(&action))) { "Export CSV" } " · "
            a id="audit-export-json" href=(format!("/audit/export?actor={}&action={}&format=json", urlencode(&actor), urlencode(&action))) { "Export JSON" }
        }
        table id="audit-table" {
            thead { tr { th { "Id" } th { "Time" } th { "Actor" } th { "Action" } th { "Target" } th { "Revision" } th { "After" } } }
            tbody {
                @for r in &records {
                    tr {
                        td { (r.id) } td { (time(r.time_ms)) } td { (r.actor) } td { (r.action) }
                        td { (r.target) } td { (r.revision) } td { pre { (r.after) } }
                    }
                }
            }
        }
    };
    Ok(page("Admin actions", &a, body))
}

async fn audit_export(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    c.authorize(&headers, peer, "AuditReport", None)?;
    let format = field(&q, "format", 8)?;
    let (records, _, _) = audit_records(&c, &q, EXPORT_MAX).await?;
    let rows: Vec<[String; 9]> = records
        .into_iter()
        .map(|r| {
            [
                r.id.to_string(),
                time(r.time_ms),
                r.actor,
                r.action,
                r.target,
                r.revision.to_string(),
                r.before,
                r.after,
                r.hash,
            ]
        })
        .collect();
    const COLS: [&str; 9] = [
        "id", "time", "actor", "action", "target", "revision", "before", "after", "hash",
    ];
    export(&format, "audit", &COLS, &rows)
}

async fn keys(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "ListApiKeys", None)?;
    let s = c.state.clone();
    let list = blocking(move || Ok(s.list_api_keys())).await?;
    let body = html! {
        table id="keys-table" {
            thead { tr { th { "Name" } th { "Role" } th { "Created" } th { "Created by" } th { "Expires" } th { "Status" } th { "Revoke" } } }
            tbody {
                @for k in &list {
                    tr {
                        td { (k.name) } td { (k.role.map_or("unknown", Role::as_str)) }
                        td { (time(k.created_ms)) } td { (k.created_by) } td { (time(k.expires_ms)) }
                        td { @if k.revoked_ms.is_some() { "revoked" } @else { "active" } }
                        td {
                            @if k.revoked_ms.is_none() {
                                form id=(format!("revoke-key-{}", k.name)) method="post" action="/keys/revoke" {
                                    input type="hidden" name="csrf" value=(a.csrf);
                                    input type="hidden" name="name" value=(k.name);
                                    (totp_input(&format!("revoke-key-totp-{}", k.name)))
                                    button type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Create an API key" }
        form id="key-create-form" method="post" action="/keys/create" {
            input type="hidden" name="csrf" value=(a.csrf);
            label for="key-name" { "Name (letters, digits, -_.@)" }
            input id="key-name" name="name" type="text" maxlength="64" required;
            (role_select("key-role"))
            label for="key-ttl" { "Lifetime in days (empty: 90)" }
            input id="key-ttl" name="ttl_days" type="number" min="1" max="730";
            (totp_input("key-totp"))
            p { button type="submit" { "Create" } }
        }
    };
    Ok(page("API keys", &a, body))
}

async fn users(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let a = c.authorize(&headers, peer, "ListAdminUsers", None)?;
    let list = c.state.list_admin_users();
    let body = html! {
        table id="users-table" {
            thead { tr { th { "Name" } th { "Role" } th { "Created" } th { "Delete" } } }
            tbody {
                @for u in &list {
                    tr {
                        td { (u.name) } td { (u.role.map_or("unknown", Role::as_str)) } td { (time(u.created_ms)) }
                        td {
                            form id=(format!("delete-user-{}", u.name)) method="post" action="/users/delete" {
                                input type="hidden" name="csrf" value=(a.csrf);
                                input type="hidden" name="name" value=(u.name);
                                (totp_input(&format!("delete-user-totp-{}", u.name)))
                                button type="submit" { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Create an admin user" }
        form id="user-create-form" method="post" action="/users/create" {
            input type="hidden" name="csrf" value=(a.csrf);
            label for="user-name" { "Name (letters, digits, -_.@)" }
            input id="user-name" name="name" type="text" maxlength="64" required;
            (role_select("user-role"))
            label for="user-password" { "Initial password (at least 12 characters)" }
            input id="user-password" name="password" type="password" autocomplete="new-password" minlength="12" maxlength="1024" required;
            (totp_input("user-totp"))
            p { button type="submit" { "Create" } }
        }
    };
    Ok(page("Admin users", &a, body))
}

fn role_select(id: &str) -> Markup {
    html! {
        label for=(id) { "Role" }
        select id=(id) name="role" {
            option value="auditor" { "auditor" }
            option value="operator" { "operator" }
            option value="admin" { "admin" }
        }
    }
}

/// One event as the live Activity page shows it (JSON of the `activity` SSE event).
fn event_json(e: &crate::model::EventRecord) -> String {
    let ev = e.event.clone().unwrap_or_default();
    serde_json::json!({
        "id": e.id,
        "time": time(e.time_ms),
        "host": ev.host,
        "event": ev.event,
        "verdict": ev.verdict,
        "user": ev.user.unwrap_or_default(),
        "device": ev.device.unwrap_or_default(),
        "resource": ev.resource.unwrap_or_default(),
        "connector": ev.connector.unwrap_or_default(),
        "dst": format!(
            "{}:{}/{}",
            ev.dst_ip.unwrap_or_default(),
            ev.dst_port.unwrap_or(0),
            ev.protocol.unwrap_or_default()
        ),
        "reason": ev.reason,
    })
    .to_string()
}

/// Live activity (FollowEvents): the events matching the page's filters as they are
/// stored, as server-sent events (`event: activity`, JSON data), until the session ends
/// or reaches its re-authentication interval, or the API session behind it ends.
async fn activity_stream(
    AxState(c): Con,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Fields>,
) -> Result<Response, Reject> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let a = c.authorize(&headers, peer, "FollowEvents", None)?;
    let (filter, connector) = event_filter(&q)?;
    let mut rx = c.state.follow_events(filter, a.principal);
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(256);
    let console = c.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tx.closed() => break,
                _ = tick.tick() => {
                    if !console.sessions.alive(&console, &headers) {
                        break;
                    }
                }
                r = rx.recv() => match r {
                    Some(Ok(e)) => {
                        if !connector.is_empty() && connector_of(&e) != connector {
                            continue;
                        }
                        let ev = Event::default().event("activity").id(e.id.to_string()).data(event_json(&e));
                        if tx.send(Ok(ev)).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(_)) | None => break,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Devices and service accounts a resource page decides at most.
const REACH_MAX: usize = 200;

/// Who can reach a resource: for each device and service account (at most
/// [`REACH_MAX`]), the decision of the published policy for it and the resource, as
/// TestAccess computes it (one evaluation of the policy's own evaluator, no second one);
/// and the connectors of the resource's remote network.
async fn reach(
    c: &Console,
    o: &crate::Object,
) -> Result<
    (
        Vec<(String, Kind, crate::model::TestOutcome)>,
        Vec<String>,
        bool,
    ),
    String,
> {
    let table: toml::Table = o.toml.parse().map_err(|e| format!("{e}"))?;
    let section = table
        .values()
        .find_map(|v| {
            v.as_array()
                .and_then(|a| a.first())
                .and_then(|t| t.as_table())
                .cloned()
        })
        .unwrap_or_default();
    let network = section
        .get("network")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let connectors: Vec<String> = c
        .state
        .object(Kind::RemoteNetwork, network)
        .ok()
        .and_then(|(n, _)| n.toml.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.values().find_map(|v| {
                v.as_array()
                    .and_then(|a| a.first())
                    .and_then(|t| t.as_table())
                    .cloned()
            })
        })
        .and_then(|t| t.get("connectors").and_then(|v| v.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    // Devices and service-account keys, each decided as Explain decides it (the
    // published policy's own evaluator; no parse per request).
    let mut from = c.state.principal_names();
    let more = from.len() > REACH_MAX;
    from.truncate(REACH_MAX);
    let s = c.state.clone();
    let to = o.name.clone();
    let rows = tokio::task::spawn_blocking(move || {
        from.into_iter()
            .map(|(f, k)| {
                let outcome = match s.explain(&f, &to, None) {
                    Ok(e) => crate::model::TestOutcome {
                        name: f.clone(),
                        passed: e.verdict != policy_compiler::Verdict::Deny,
                        expected: policy_compiler::Verdict::Allow,
                        got: e.verdict,
                        reason: e.reason,
                        rule_id: e.rule_id,
                        message: String::new(),
                    },
                    // A principal without an address of the resource's family cannot
                    // reach it: said as a denial with the reason.
                    Err(err) => crate::model::TestOutcome {
                        name: f.clone(),
                        passed: false,
                        expected: policy_compiler::Verdict::Allow,
                        got: policy_compiler::Verdict::Deny,
                        reason: err.to_string(),
                        rule_id: 0,
                        message: String::new(),
                    },
                };
                (f, k, outcome)
            })
            .collect()
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok((rows, connectors, more))
}
