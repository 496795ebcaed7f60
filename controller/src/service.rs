//! The gRPC services: thin adapters from requests to [`State`] calls, converting the
//! wire types to and from the domain types (see [`crate::wire`]).

use std::pin::Pin;
use std::sync::Arc;

use gateway_proto::v1::{self, admin_server::Admin, agent_server::Agent};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::model::{AgentCredential, Assertion, ChangeOpts, ConnectionEvent};
use crate::objects::Kind;
use crate::wire::{kind_from_wire, object_to_wire, role_from_wire, role_to_wire};
use crate::{Error, State, shown};

type R<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Runs blocking state work (SQLite, compiling) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(Status::from)
}

/// The caller, as authenticated by [`crate::auth::AdminGuard`].
#[allow(clippy::result_large_err)]
fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing credential"))
}

fn actor<T>(req: &Request<T>) -> Result<String, Status> {
    principal(req).map(|p| p.name)
}

/// Logs a refused policy change: who, what, and why (the status code and the first line
/// of its message; the change was not applied).
fn refused_change<T>(
    r: Result<T, Status>,
    actor: &str,
    action: &str,
    target: &str,
) -> Result<T, Status> {
    if let Err(s) = &r {
        info!(
            actor,
            action,
            target,
            code = ?s.code(),
            reason = %s.message().lines().next().unwrap_or_default(),
            "policy change refused"
        );
    }
    r
}

/// `KIND:NAME` of an object for logs (`KIND` when the request names none).
fn target_of(kind: Kind, name: &str) -> String {
    if name.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}:{}", shown(name))
    }
}

impl AdminService {
    /// One policy change (apply, create, update, delete): `f` runs on the blocking pool
    /// with `opts`; a refusal is logged as `action` on `target`, a committed change is
    /// timed until the agents acknowledge it (the push-latency metric).
    async fn change(
        &self,
        opts: ChangeOpts,
        action: &str,
        target: &str,
        f: impl FnOnce(&State, &ChangeOpts) -> Result<crate::model::Plan, Error> + Send + 'static,
    ) -> Result<crate::model::Plan, Status> {
        let (actor, dry_run) = (opts.actor.clone(), opts.dry_run);
        let s = self.state.clone();
        let plan = refused_change(blocking(move || f(&s, &opts)).await, &actor, action, target)?;
        if !dry_run {
            self.metrics.committed(&plan);
        }
        Ok(plan)
    }

    /// [`AdminService::change`] of one object: the request's `dry_run`, `expected_revision`
    /// and `skip_tests` as the options, the plan as the answer.
    async fn object_change(
        &self,
        actor: String,
        (dry_run, expected_revision, skip_tests): (bool, Option<u64>, bool),
        action: &str,
        target: &str,
        f: impl FnOnce(&State, &ChangeOpts) -> Result<crate::model::Plan, Error> + Send + 'static,
    ) -> R<v1::ChangeResponse> {
        let opts = ChangeOpts {
            dry_run,
            expected_revision,
            actor,
            skip_tests,
        };
        let plan = self.change(opts, action, target, f).await?;
        Ok(Response::new(v1::ChangeResponse {
            plan: Some(plan.into()),
            applied: !dry_run,
        }))
    }
}

/// The Admin service.
#[derive(Clone, Debug)]
pub struct AdminService {
    state: Arc<State>,
    metrics: Arc<Metrics>,
}

impl AdminService {
    pub fn new(state: Arc<State>) -> Self {
        Self::with_metrics(state, Arc::default())
    }

    /// [`AdminService::new`] counting into `metrics`.
    pub fn with_metrics(state: Arc<State>, metrics: Arc<Metrics>) -> Self {
        AdminService { state, metrics }
    }
}

fn object_arg(o: Option<v1::PolicyObject>) -> Result<(Kind, v1::PolicyObject), Status> {
    let o = o.ok_or_else(|| Status::invalid_argument("missing `object`"))?;
    Ok((kind_from_wire(o.kind)?, o))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply_policy(
        &self,
        req: Request<v1::ApplyPolicyRequest>,
    ) -> R<v1::ApplyPolicyResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let opts = ChangeOpts {
            dry_run: r.dry_run,
            expected_revision: r.expected_revision,
            actor: who,
            skip_tests: r.skip_tests,
        };
        let (text, file) = (r.policy_toml, r.file_name);
        let plan = self
            .change(opts, "apply_policy", "policy", move |s, o| {
                s.apply_policy(&text, &file, o)
            })
            .await?;
        Ok(Response::new(v1::ApplyPolicyResponse {
            plan: Some(plan.into()),
            applied: !r.dry_run,
        }))
    }

    async fn get_policy(&self, req: Request<v1::GetPolicyRequest>) -> R<v1::GetPolicyResponse> {
        let (policy_toml, revision) = self.state.policy_at(req.into_inner().revision)?;
        Ok(Response::new(v1::GetPolicyResponse {
            policy_toml,
            revision,
        }))
    }

    async fn list_policy_revisions(
        &self,
        req: Request<v1::ListPolicyRevisionsRequest>,
    ) -> R<v1::ListPolicyRevisionsResponse> {
        let r = req.into_inner();
        let revisions = self.state.policy_revisions(r.before, r.limit)?;
        Ok(Response::new(v1::ListPolicyRevisionsResponse {
            revisions: revisions
                .into_iter()
                .map(|r| v1::PolicyRevision {
                    revision: r.revision,
                    time_ms: r.time_ms,
                    actor: r.actor,
                    action: r.action,
                    bytes: r.bytes,
                })
                .collect(),
            current: self.state.revision(),
        }))
    }

    async fn get_object(&self, req: Request<v1::GetObjectRequest>) -> R<v1::GetObjectResponse> {
        let r = req.into_inner();
        let (o, revision) = self.state.object(kind_from_wire(r.kind)?, &r.name)?;
        Ok(Response::new(v1::GetObjectResponse {
            object: Some(object_to_wire(&o)),
            revision,
        }))
    }

    async fn list_objects(
        &self,
        req: Request<v1::ListObjectsRequest>,
    ) -> R<v1::ListObjectsResponse> {
        let r = req.into_inner();
        let kind = if r.kind == v1::ObjectKind::Unspecified as i32 {
            None
        } else {
            Some(kind_from_wire(r.kind)?)
        };
        let (list, revision) = self.state.objects(kind);
        Ok(Response::new(v1::ListObjectsResponse {
            objects: list.iter().map(object_to_wire).collect(),
            revision,
        }))
    }

    async fn create_object(&self, req: Request<v1::CreateObjectRequest>) -> R<v1::ChangeResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let (kind, o) = object_arg(r.object)?;
        let target = target_of(kind, &o.name);
        let args = (r.dry_run, r.expected_revision, r.skip_tests);
        self.object_change(who, args, "create_object", &target, move |s, opts| {
            s.create_object(kind, &o.toml, opts)
        })
        .await
    }

    async fn update_object(&self, req: Request<v1::UpdateObjectRequest>) -> R<v1::ChangeResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let (kind, o) = object_arg(r.object)?;
        let target = target_of(kind, &o.name);
        let args = (r.dry_run, r.expected_revision, r.skip_tests);
        self.object_change(who, args, "update_object", &target, move |s, opts| {
            s.update_object(kind, &o.name, &o.toml, opts)
        })
        .await
    }

    async fn delete_object(&self, req: Request<v1::DeleteObjectRequest>) -> R<v1::ChangeResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let kind = kind_from_wire(r.kind)?;
        let target = target_of(kind, &r.name);
        let args = (r.dry_run, r.expected_revision, r.skip_tests);
        let name = r.name;
        self.object_change(who, args, "delete_object", &target, move |s, opts| {
            s.delete_object(kind, &name, opts)
        })
        .await
    }

    async fn explain(&self, req: Request<v1::ExplainRequest>) -> R<v1::ExplainResponse> {
        let r = req.into_inner();
        let s = self.state.clone();
        Ok(Response::new(
            blocking(move || s.explain(&r.from, &r.to, r.at))
                .await?
                .into(),
        ))
    }

    async fn test_access(&self, req: Request<v1::TestAccessRequest>) -> R<v1::TestAccessResponse> {
        let r = req.into_inner();
        let assertions: Vec<Assertion> = r.assertions.into_iter().map(Into::into).collect();
        let s = self.state.clone();
        Ok(Response::new(
            blocking(move || s.test_access(&assertions, r.include_policy_tests))
                .await?
                .into(),
        ))
    }

    async fn query_events(
        &self,
        req: Request<v1::QueryEventsRequest>,
    ) -> R<v1::QueryEventsResponse> {
        let r = req.into_inner();
        let s = self.state.clone();
        let filter = r.filter.unwrap_or_default().into();
        let events = blocking(move || s.query_events(&filter, r.limit)).await?;
        Ok(Response::new(v1::QueryEventsResponse {
            events: events.into_iter().map(Into::into).collect(),
        }))
    }

    type FollowEventsStream = BoxStream<v1::StoredEvent>;

    async fn follow_events(
        &self,
        req: Request<v1::FollowEventsRequest>,
    ) -> R<Self::FollowEventsStream> {
        let who = principal(&req)?;
        let filter = req.into_inner().filter.unwrap_or_default().into();
        let rx = self.state.follow_events(filter, who);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|r| r.map(Into::into).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn audit_report(
        &self,
        req: Request<v1::AuditReportRequest>,
    ) -> R<v1::AuditReportResponse> {
        let r = req.into_inner();
        let s = self.state.clone();
        let records =
            blocking(move || s.audit_report(r.since_unix_ms, r.until_unix_ms, r.limit)).await?;
        Ok(Response::new(v1::AuditReportResponse {
            records: records.into_iter().map(Into::into).collect(),
        }))
    }

    async fn create_enrollment_token(
        &self,
        req: Request<v1::CreateEnrollmentTokenRequest>,
    ) -> R<v1::CreateEnrollmentTokenResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let s = self.state.clone();
        Ok(Response::new(
            blocking(move || s.create_token(&r.host, r.ttl_seconds, &who))
                .await?
                .into(),
        ))
    }

    async fn list_agents(&self, _: Request<v1::ListAgentsRequest>) -> R<v1::ListAgentsResponse> {
        // The state's lock may be held by a change being compiled: not on a worker.
        let s = self.state.clone();
        let agents = blocking(move || Ok(s.agents())).await?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents: agents.into_iter().map(Into::into).collect(),
        }))
    }

    async fn revoke_agent(
        &self,
        req: Request<v1::RevokeAgentRequest>,
    ) -> R<v1::RevokeAgentResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let s = self.state.clone();
        blocking(move || s.revoke_agent(&r.agent_id, &who)).await?;
        Ok(Response::new(v1::RevokeAgentResponse {}))
    }

    async fn verify_audit(
        &self,
        req: Request<v1::VerifyAuditRequest>,
    ) -> R<v1::VerifyAuditResponse> {
        let expect = req.into_inner().expect_head;
        let s = self.state.clone();
        Ok(Response::new(
            blocking(move || s.verify_audit(expect.as_deref()))
                .await?
                .into(),
        ))
    }

    async fn who_am_i(&self, req: Request<v1::WhoAmIRequest>) -> R<v1::WhoAmIResponse> {
        let p = principal(&req)?;
        Ok(Response::new(v1::WhoAmIResponse {
            principal: p.name,
            role: role_to_wire(p.role),
            expires_unix_ms: p.expires_ms,
        }))
    }

    async fn login(&self, req: Request<v1::LoginRequest>) -> R<v1::LoginResponse> {
        let peer = crate::auth::peer_of(req.extensions());
        let r = req.into_inner();
        Ok(Response::new(
            self.state
                .login(peer, &r.user, &r.password, &r.totp_code)
                .await?
                .into(),
        ))
    }

    async fn create_api_key(
        &self,
        req: Request<v1::CreateApiKeyRequest>,
    ) -> R<v1::CreateApiKeyResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let role = role_from_wire(r.role)
            .ok_or_else(|| Status::invalid_argument("`role` must be ADMIN, OPERATOR or AUDITOR"))?;
        let s = self.state.clone();
        let (key, info) =
            blocking(move || s.create_api_key_ttl(&r.name, role, r.ttl_seconds, &who)).await?;
        Ok(Response::new(v1::CreateApiKeyResponse {
            key,
            info: Some(info.into()),
        }))
    }

    async fn list_api_keys(
        &self,
        _: Request<v1::ListApiKeysRequest>,
    ) -> R<v1::ListApiKeysResponse> {
        Ok(Response::new(v1::ListApiKeysResponse {
            keys: self
                .state
                .list_api_keys()
                .into_iter()
                .map(Into::into)
                .collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<v1::RevokeApiKeyRequest>,
    ) -> R<v1::RevokeApiKeyResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let s = self.state.clone();
        blocking(move || s.revoke_api_key(&r.name, &who)).await?;
        Ok(Response::new(v1::RevokeApiKeyResponse {}))
    }

    async fn create_admin_user(
        &self,
        req: Request<v1::CreateAdminUserRequest>,
    ) -> R<v1::CreateAdminUserResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let role = role_from_wire(r.role)
            .ok_or_else(|| Status::invalid_argument("`role` must be ADMIN, OPERATOR or AUDITOR"))?;
        let s = self.state.clone();
        let permit = self.state.argon_permit().await;
        let (totp_secret, otpauth_uri) = blocking(move || {
            let _permit = permit;
            s.create_admin_user(&r.name, role, &r.password, &who)
        })
        .await?;
        Ok(Response::new(v1::CreateAdminUserResponse {
            totp_secret,
            otpauth_uri,
        }))
    }

    async fn list_admin_users(
        &self,
        _: Request<v1::ListAdminUsersRequest>,
    ) -> R<v1::ListAdminUsersResponse> {
        Ok(Response::new(v1::ListAdminUsersResponse {
            users: self
                .state
                .list_admin_users()
                .into_iter()
                .map(Into::into)
                .collect(),
        }))
    }

    async fn delete_admin_user(
        &self,
        req: Request<v1::DeleteAdminUserRequest>,
    ) -> R<v1::DeleteAdminUserResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let s = self.state.clone();
        blocking(move || s.delete_admin_user(&r.name, &who)).await?;
        Ok(Response::new(v1::DeleteAdminUserResponse {}))
    }

    async fn logout(&self, req: Request<v1::LogoutRequest>) -> R<v1::LogoutResponse> {
        let p = principal(&req)?;
        let s = self.state.clone();
        blocking(move || s.logout(&p)).await?;
        Ok(Response::new(v1::LogoutResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<v1::ChangePasswordRequest>,
    ) -> R<v1::ChangePasswordResponse> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let s = self.state.clone();
        let permit = self.state.argon_permit().await;
        let sessions_ended = blocking(move || {
            let _permit = permit;
            s.change_password(&p, &r.old_password, &r.new_password)
        })
        .await?;
        Ok(Response::new(v1::ChangePasswordResponse { sessions_ended }))
    }

    async fn reset_admin_user_totp(
        &self,
        req: Request<v1::ResetAdminUserTotpRequest>,
    ) -> R<v1::ResetAdminUserTotpResponse> {
        let who = actor(&req)?;
        let r = req.into_inner();
        let s = self.state.clone();
        let (totp_secret, otpauth_uri, sessions_ended) =
            blocking(move || s.reset_admin_user_totp(&r.name, &who)).await?;
        Ok(Response::new(v1::ResetAdminUserTotpResponse {
            totp_secret,
            otpauth_uri,
            sessions_ended,
        }))
    }
}

/// Held by a watch stream: says when it ends (the agent went away, fell behind or was
/// revoked, or the controller stops).
struct Connected {
    agent: String,
    host: String,
    metrics: Arc<Metrics>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.metrics.agent_disconnected(&self.agent);
        info!(agent = %self.agent, host = %self.host, "agent disconnected");
    }
}

/// The Agent service.
#[derive(Clone, Debug)]
pub struct AgentService {
    state: Arc<State>,
    metrics: Arc<Metrics>,
}

impl AgentService {
    pub fn new(state: Arc<State>) -> Self {
        Self::with_metrics(state, Arc::default())
    }

    /// [`AgentService::new`] counting into `metrics`.
    pub fn with_metrics(state: Arc<State>, metrics: Arc<Metrics>) -> Self {
        AgentService { state, metrics }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn enroll(&self, req: Request<v1::EnrollRequest>) -> R<v1::EnrollResponse> {
        let peer = crate::auth::peer_of(req.extensions());
        let r = req.into_inner();
        let expected = match &r.host {
            Some(h) => Some(
                gateway_proto::host_from_wire(h)
                    .map(|h| gateway_proto::host_name(&h))
                    .map_err(|_| Status::invalid_argument("invalid `host`"))?,
            ),
            None => None,
        };
        let s = self.state.clone();
        Ok(Response::new(
            blocking(move || {
                s.enroll(
                    &r.token,
                    &r.hostname,
                    expected.as_deref(),
                    &r.public_key,
                    peer,
                )
            })
            .await?
            .into(),
        ))
    }

    type WatchStream = BoxStream<v1::WatchResponse>;

    async fn watch(&self, req: Request<v1::WatchRequest>) -> R<Self::WatchStream> {
        let r = req.into_inner();
        let s = self.state.clone();
        let auth = r.auth.map(AgentCredential::from);
        let watch = blocking(move || s.watch(auth.as_ref(), r.generation)).await?;
        self.metrics.agent_connected(&watch.agent_id, &watch.host);
        let connected = Connected {
            agent: watch.agent_id,
            host: watch.host,
            metrics: self.metrics.clone(),
        };
        let stream = tokio_stream::wrappers::ReceiverStream::new(watch.updates).map(move |u| {
            let _connected = &connected;
            Ok(v1::WatchResponse::from(u))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, req: Request<v1::AckRequest>) -> R<v1::AckResponse> {
        let r = req.into_inner();
        let s = self.state.clone();
        let auth = r.auth.map(AgentCredential::from);
        let agent = auth.as_ref().map(|a| a.agent_id.clone());
        blocking(move || s.ack(auth.as_ref(), r.generation)).await?;
        if let Some(agent) = agent {
            self.metrics.acked(&agent, r.generation);
        }
        Ok(Response::new(v1::AckResponse {}))
    }

    async fn rotate_key(&self, req: Request<v1::RotateKeyRequest>) -> R<v1::RotateKeyResponse> {
        let r = req.into_inner();
        let s = self.state.clone();
        let auth = r.auth.map(AgentCredential::from);
        let generation = blocking(move || s.rotate_key(auth.as_ref(), &r.public_key)).await?;
        Ok(Response::new(v1::RotateKeyResponse { generation }))
    }

    async fn report_events(
        &self,
        req: Request<Streaming<v1::ReportEventsRequest>>,
    ) -> R<v1::ReportEventsResponse> {
        let mut stream = req.into_inner();
        let mut agent: Option<String> = None;
        let mut accepted = 0;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            // The agent is authenticated by the first message; every message is
            // stored as its host's, and a revoked agent's open stream stops too
            // (report_events checks it).
            let id = match &agent {
                Some(id) => id.clone(),
                None => {
                    let s = self.state.clone();
                    let auth = msg.auth.clone().map(AgentCredential::from);
                    let (id, _host) = blocking(move || s.check_agent(auth.as_ref())).await?;
                    agent = Some(id.clone());
                    id
                }
            };
            let s = self.state.clone();
            let events: Vec<ConnectionEvent> = msg.events.into_iter().map(Into::into).collect();
            accepted += blocking(move || s.report_events(&id, events)).await?;
        }
        Ok(Response::new(v1::ReportEventsResponse { accepted }))
    }
}
