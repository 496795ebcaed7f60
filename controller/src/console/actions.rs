//! The console's actions: apply a policy through its plan, revoke an agent, create and
//! revoke API keys, create and delete admin users. Each is authorized as its RPC
//! ([`Console::authorize`], CSRF first), then its fields are checked, then the sensitive
//! ones need a fresh TOTP code ([`State::check_fresh_totp`]); the change is made by the
//! same [`State`] operation as the RPC's, with the session user as the actor, and an
//! audit record says it came from the console.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use maud::{Markup, html};

use super::pages::{Fields, blocking, field, number, page};
use super::{Authed, Console, Peer, Reject};
use crate::auth::Role;
use crate::model::{ChangeOpts, Plan};

type Con = AxState<Arc<Console>>;
type PeerX = axum::Extension<Peer>;

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/policy/plan", post(plan))
        .route("/policy/apply", post(apply))
        .route("/agents/revoke", post(revoke_agent))
        .route("/keys/create", post(create_key))
        .route("/keys/revoke", post(revoke_key))
        .route("/users/create", post(create_user))
        .route("/users/delete", post(delete_user))
}

/// The longest policy text accepted (the body limit bounds it too).
const MAX_POLICY: usize = 512 * 1024;

/// Authorizes a POST as `rpc` (the form's `csrf` first).
fn authorize(
    c: &Console,
    headers: &HeaderMap,
    peer: Peer,
    rpc: &str,
    f: &Fields,
) -> Result<Authed, Reject> {
    let csrf = field(f, "csrf", 64)?;
    c.authorize(headers, peer.0, rpc, Some(&csrf))
}

/// Checks the form's fresh TOTP code (`totp`).
async fn fresh_totp(c: &Console, a: &Authed, peer: Peer, f: &Fields) -> Result<(), Reject> {
    let code = field(f, "totp", 16)?;
    let (s, p) = (c.state.clone(), a.principal.clone());
    blocking(move || s.check_fresh_totp(&p, &code, Some(peer.0))).await
}

/// The TOTP field of a sensitive form.
pub(super) fn totp_input(id: &str) -> Markup {
    html! {
        label for=(id) { "TOTP code (confirms this action)" }
        input id=(id) name="totp" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required;
    }
}

/// Records that the change came from the console.
fn audited(
    c: &Console,
    a: &Authed,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), Reject> {
    c.state
        .audit_console(&a.principal.name, action, target, detail)
        .map_err(Reject::from)
}

fn plan_view(p: &Plan) -> Markup {
    html! {
        p id="plan-revisions" { "Revision " (p.base_revision) " → " (p.new_revision) }
        @if p.objects.is_empty() { p { "No object changes." } }
        @else {
            table id="plan-objects" {
                thead { tr { th { "Change" } th { "Kind" } th { "Name" } th { "Fields" } } }
                tbody {
                    @for o in &p.objects {
                        tr {
                            td { (format!("{:?}", o.change).to_lowercase()) } td { (o.kind) } td { (o.name) }
                            td { @for fc in &o.fields { (fc.field) ": " (fc.before) " → " (fc.after) br; } }
                        }
                    }
                }
            }
        }
        @if !p.hosts.is_empty() {
            table id="plan-hosts" {
                thead { tr { th { "Host" } th { "Generation" } th { "Entries added" } th { "changed" } th { "removed" } th { "Agents connected" } } }
                tbody {
                    @for h in &p.hosts {
                        tr {
                            td { (h.host) } td { (h.base_generation) " → " (h.new_generation) }
                            td { (h.total.added) } td { (h.total.changed) } td { (h.total.removed) }
                            td { (h.connected_agents) }
                        }
                    }
                }
            }
        }
        @if !p.warnings.is_empty() {
            ul id="plan-warnings" { @for w in &p.warnings { li { (w) } } }
        }
    }
}

async fn plan(
    AxState(c): Con,
    axum::Extension(peer): PeerX,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let a = authorize(&c, &headers, peer, "ApplyPolicy", &f)?;
    let text = field(&f, "policy", MAX_POLICY)?;
    let opts = ChangeOpts {
        dry_run: true,
        expected_revision: None,
        actor: a.principal.name.clone(),
        skip_tests: false,
    };
    let (s, t) = (c.state.clone(), text.clone());
    let planned = blocking(move || s.apply_policy(&t, "console.toml", &opts)).await;
    let body = match planned {
        Ok(p) => html! {
            p class="notice" { "Nothing is applied yet: review the plan, then confirm with your TOTP code." }
            (plan_view(&p))
            form id="apply-form" method="post" action="/policy/apply" {
                input type="hidden" name="csrf" value=(a.csrf);
                input type="hidden" name="expected_revision" value=(p.base_revision);
                label for="apply-policy" { "Policy (as planned)" }
                textarea id="apply-policy" name="policy" rows="8" readonly { (text) }
                (totp_input("apply-totp"))
                p { button type="submit" { "Apply" } }
            }
        },
        Err(Reject::Page(code, m)) if code == StatusCode::BAD_REQUEST => html! {
            p class="error" role="alert" id="error" { "The policy was not planned: " }
            pre id="plan-error" { (m) }
            p { a href="/policy" { "Back to the policy" } }
        },
        Err(e) => return Err(e),
    };
    Ok(page("Plan", &a, body))
}

async fn apply(
    AxState(c): Con,
    axum::Extension(peer): PeerX,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let a = authorize(&c, &headers, peer, "ApplyPolicy", &f)?;
    let text = field(&f, "policy", MAX_POLICY)?;
    let expected = number(&f, "expected_revision", u64::MAX)?;
    fresh_totp(&c, &a, peer, &f).await?;
    let opts = ChangeOpts {
        dry_run: false,
        expected_revision: expected,
        actor: a.principal.name.clone(),
        skip_tests: false,
    };
    let s = c.state.clone();
    let p = blocking(move || s.apply_policy(&text, "console.toml", &opts)).await?;
    audited(
        &c,
        &a,
        "console_apply_policy",
        "policy",
        &format!(
            "ApplyPolicy from the admin console: revision {} → {}",
            p.base_revision, p.new_revision
        ),
    )?;
    let body = html! {
        p class="notice" id="applied" { "Applied: revision " (p.new_revision) "." }
        (plan_view(&p))
    };
    Ok(page("Policy applied", &a, body))
}

/// What one removal action is: its RPC, the form field naming the object, how the object is
/// named in the audit target (`KIND:NAME`) and on the page, and the past tense shown.
struct Removal {
    rpc: &'static str,
    field: &'static str,
    kind: &'static str,
    shown: &'static str,
    done: &'static str,
}

/// Revoke an agent, revoke an API key, delete an admin user: authorized as its RPC, the
/// object named by a form field, a fresh TOTP code, the same `State` call as the RPC's with
/// actor `user:NAME`, a `console_*` audit record, and a notice.
async fn remove(
    c: Arc<Console>,
    peer: Peer,
    headers: HeaderMap,
    f: Fields,
    r: Removal,
    op: impl FnOnce(&crate::State, &str, &str) -> Result<(), crate::Error> + Send + 'static,
) -> Result<Response, Reject> {
    let a = authorize(&c, &headers, peer, r.rpc, &f)?;
    let name = field(&f, r.field, 128)?;
    if name.is_empty() {
        return Err(Reject::bad(format!(
            "name the {} (`{}`)",
            r.shown.to_lowercase(),
            r.field
        )));
    }
    fresh_totp(&c, &a, peer, &f).await?;
    let (s, who, n) = (c.state.clone(), a.principal.name.clone(), name.clone());
    blocking(move || op(&s, &n, &who)).await?;
    audited(
        &c,
        &a,
        &format!("console_{}", snake(r.rpc)),
        &format!("{}:{name}", r.kind),
        &format!("{} from the admin console", r.rpc),
    )?;
    Ok(page(
        &format!("{} {}", r.shown, r.done),
        &a,
        html! { p class="notice" id="done" { (r.shown) " " (name) " " (r.done) "." } },
    ))
}

/// `RevokeApiKey` -> `revoke_api_key`.
fn snake(rpc: &str) -> String {
    let mut out = String::new();
    for (i, ch) in rpc.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

async fn revoke_agent(
    AxState(c): Con,
    axum::Extension(peer): PeerX,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let r = Removal {
        rpc: "RevokeAgent",
        field: "agent_id",
        kind: "agent",
        shown: "Agent",
        done: "revoked",
    };
    remove(c, peer, headers, f, r, |s, id, who| s.revoke_agent(id, who)).await
}

fn role_field(f: &Fields) -> Result<Role, Reject> {
    let r = field(f, "role", 16)?;
    Role::parse(&r).ok_or_else(|| {
        Reject::bad(format!(
            "the role `{}` is not one of admin, operator, auditor",
            crate::shown(&r)
        ))
    })
}

async fn create_key(
    AxState(c): Con,
    axum::Extension(peer): PeerX,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let a = authorize(&c, &headers, peer, "CreateApiKey", &f)?;
    let name = field(&f, "name", 64)?;
    let role = role_field(&f)?;
    let days = number(&f, "ttl_days", 730)?.unwrap_or(0);
    fresh_totp(&c, &a, peer, &f).await?;
    let (s, who, n) = (c.state.clone(), a.principal.name.clone(), name.clone());
    let (secret, _) = blocking(move || s.create_api_key_ttl(&n, role, days * 86_400, &who)).await?;
    audited(
        &c,
        &a,
        "console_create_api_key",
        &format!("api_key:{name}"),
        "CreateApiKey from the admin console",
    )?;
    let body = html! {
        p class="notice" { "API key " (name) " created (role " (role) "). Its secret is shown once: copy it now." }
        pre id="key-secret" { (secret) }
    };
    Ok(page("API key created", &a, body))
}

async fn revoke_key(
    AxState(c): Con,
    axum::Extension(peer): PeerX,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let r = Removal {
        rpc: "RevokeApiKey",
        field: "name",
        kind: "api_key",
        shown: "API key",
        done: "revoked",
    };
    remove(c, peer, headers, f, r, |s, n, who| s.revoke_api_key(n, who)).await
}

async fn create_user(
    AxState(c): Con,
    axum::Extension(peer): PeerX,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let a = authorize(&c, &headers, peer, "CreateAdminUser", &f)?;
    let name = field(&f, "name", 64)?;
    let role = role_field(&f)?;
    let password = field(&f, "password", 1024)?;
    fresh_totp(&c, &a, peer, &f).await?;
    let permit = c.state.argon_permit().await;
    let (s, who, n) = (c.state.clone(), a.principal.name.clone(), name.clone());
    let (secret, uri) = blocking(move || {
        let _permit = permit;
        s.create_admin_user(&n, role, &password, &who)
    })
    .await?;
    audited(
        &c,
        &a,
        "console_create_admin_user",
        &format!("user:{name}"),
        "CreateAdminUser from the admin console",
    )?;
    let body = html! {
        p class="notice" { "User " (name) " created (role " (role) "). Their TOTP secret is shown once: load it into their authenticator app." }
        pre id="user-totp" { (secret) }
        pre id="user-otpauth" { (uri) }
    };
    Ok(page("Admin user created", &a, body))
}

async fn delete_user(
    AxState(c): Con,
    axum::Extension(peer): PeerX,
    headers: HeaderMap,
    Form(f): Form<Fields>,
) -> Result<Response, Reject> {
    let r = Removal {
        rpc: "DeleteAdminUser",
        field: "name",
        kind: "user",
        shown: "User",
        done: "deleted",
    };
    remove(c, peer, headers, f, r, |s, n, who| {
        s.delete_admin_user(n, who)
    })
    .await
}
