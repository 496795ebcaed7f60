//! Where the domain types ([`crate::model`], [`Kind`], [`Role`]) meet the wire types of
//! `gateway_proto::v1`: the conversions the gRPC services ([`crate::service`]) make, and
//! the encodings the database keeps for views, deltas and events (the protobuf
//! messages, unchanged since the first schema, so older databases still load).

use gateway_proto::{self as gp, v1};
use policy_compiler::HostView;
use prost::Message as _;

use crate::Error;
use crate::auth::Role;
use crate::model::{
    AdminUserInfo, AgentCredential, AgentInfo, ApiKeyInfo, Assertion, AuditRecord,
    AuditVerification, ChangeKind, ConnectionEvent, Consideration, Enrollment, EnrollmentToken,
    EntryCounts, EventFilter, EventRecord, Explanation, FieldChange, HostChange, ObjectChange,
    Plan, Session, TestOutcome, TestReport, ViewDelta, ViewUpdate, WatchUpdate,
};
use crate::objects::{Kind, Object};

// ------------------------------------------------------------------ objects, roles

/// The object kind of a request (`INVALID_ARGUMENT` for an unknown or unspecified one).
pub fn kind_from_wire(k: i32) -> Result<Kind, Error> {
    use v1::ObjectKind as O;
    Ok(match O::try_from(k) {
        Ok(O::RemoteNetwork) => Kind::RemoteNetwork,
        Ok(O::Resource) => Kind::Resource,
        Ok(O::User) => Kind::User,
        Ok(O::Device) => Kind::Device,
        Ok(O::ServiceAccount) => Kind::ServiceAccount,
        Ok(O::Group) => Kind::Group,
        Ok(O::Grant) => Kind::Grant,
        Ok(O::Test) => Kind::Test,
        Ok(O::Connector) => Kind::Connector,
        _ => return Err(Error::InvalidArgument(format!("invalid object kind {k}"))),
    })
}

pub fn kind_to_wire(k: Kind) -> i32 {
    use v1::ObjectKind as O;
    (match k {
        Kind::RemoteNetwork => O::RemoteNetwork,
        Kind::Resource => O::Resource,
        Kind::User => O::User,
        Kind::Device => O::Device,
        Kind::ServiceAccount => O::ServiceAccount,
        Kind::Group => O::Group,
        Kind::Grant => O::Grant,
        Kind::Test => O::Test,
        Kind::Connector => O::Connector,
    }) as i32
}

pub fn object_to_wire(o: &Object) -> v1::PolicyObject {
    v1::PolicyObject {
        kind: kind_to_wire(o.kind),
        name: o.name.clone(),
        toml: o.toml.clone(),
    }
}

pub fn role_to_wire(r: Role) -> i32 {
    (match r {
        Role::Admin => v1::Role::Admin,
        Role::Operator => v1::Role::Operator,
        Role::Auditor => v1::Role::Auditor,
    }) as i32
}

/// The role of a request (`None` for an unknown or unspecified one).
pub fn role_from_wire(r: i32) -> Option<Role> {
    match v1::Role::try_from(r).ok()? {
        v1::Role::Admin => Some(Role::Admin),
        v1::Role::Operator => Some(Role::Operator),
        v1::Role::Auditor => Some(Role::Auditor),
        v1::Role::Unspecified => None,
    }
}

/// A role as listed: `ROLE_UNSPECIFIED` for a stored role this controller does not know.
fn listed_role(r: Option<Role>) -> i32 {
    r.map_or(v1::Role::Unspecified as i32, role_to_wire)
}

// ------------------------------------------------------------------ policy

impl From<ChangeKind> for v1::ChangeKind {
    fn from(c: ChangeKind) -> Self {
        match c {
            ChangeKind::Added => v1::ChangeKind::Added,
            ChangeKind::Changed => v1::ChangeKind::Changed,
            ChangeKind::Removed => v1::ChangeKind::Removed,
        }
    }
}

impl From<EntryCounts> for v1::EntryCounts {
    fn from(c: EntryCounts) -> Self {
        v1::EntryCounts {
            added: c.added,
            changed: c.changed,
            removed: c.removed,
        }
    }
}

impl From<ObjectChange> for v1::ObjectChange {
    fn from(c: ObjectChange) -> Self {
        v1::ObjectChange {
            kind: kind_to_wire(c.kind),
            name: c.name,
            change: v1::ChangeKind::from(c.change) as i32,
            before: c.before,
            after: c.after,
            fields: c.fields.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<FieldChange> for v1::FieldChange {
    fn from(f: FieldChange) -> Self {
        v1::FieldChange {
            field: f.field,
            before: f.before,
            after: f.after,
            element: f.element,
        }
    }
}

impl From<HostChange> for v1::HostChange {
    fn from(h: HostChange) -> Self {
        v1::HostChange {
            host: h.host,
            base_generation: h.base_generation,
            new_generation: h.new_generation,
            src: Some(h.src.into()),
            dst: Some(h.dst.into()),
            rules: Some(h.rules.into()),
            total: Some(h.total.into()),
            metadata_changed: h.metadata_changed,
            connected_agents: h.connected_agents,
            peers: Some(h.peers.into()),
        }
    }
}

impl From<Plan> for v1::Plan {
    fn from(p: Plan) -> Self {
        v1::Plan {
            base_revision: p.base_revision,
            new_revision: p.new_revision,
            objects: p.objects.into_iter().map(Into::into).collect(),
            hosts: p.hosts.into_iter().map(Into::into).collect(),
            warnings: p.warnings,
        }
    }
}

impl From<Consideration> for v1::Consideration {
    fn from(c: Consideration) -> Self {
        v1::Consideration {
            rule: c.rule,
            grant: c.grant,
            action: c.action,
            resource: c.resource,
            outcome: c.outcome,
            detail: c.detail,
        }
    }
}

impl From<Explanation> for v1::ExplainResponse {
    fn from(e: Explanation) -> Self {
        v1::ExplainResponse {
            verdict: gp::verdict_to_wire(e.verdict),
            reason: e.reason,
            rule_id: e.rule_id,
            rule: e.rule,
            principal: e.principal,
            resources: e.resources,
            considered: e.considered.into_iter().map(Into::into).collect(),
            text: e.text,
            at: e.at,
        }
    }
}

impl From<v1::Assertion> for Assertion {
    fn from(a: v1::Assertion) -> Self {
        Assertion {
            name: a.name,
            from: a.from,
            to: a.to,
            expect: a.expect,
            at: a.at,
        }
    }
}

impl From<TestOutcome> for v1::TestResult {
    fn from(r: TestOutcome) -> Self {
        v1::TestResult {
            name: r.name,
            passed: r.passed,
            expected: gp::verdict_to_wire(r.expected),
            got: gp::verdict_to_wire(r.got),
            reason: r.reason,
            rule_id: r.rule_id,
            message: r.message,
        }
    }
}

impl From<TestReport> for v1::TestAccessResponse {
    fn from(r: TestReport) -> Self {
        v1::TestAccessResponse {
            results: r.results.into_iter().map(Into::into).collect(),
            passed: r.passed,
            failed: r.failed,
        }
    }
}

// ------------------------------------------------------------------ agents

impl From<v1::AgentAuth> for AgentCredential {
    fn from(a: v1::AgentAuth) -> Self {
        AgentCredential {
            agent_id: a.agent_id,
            credential: a.credential,
        }
    }
}

impl From<EnrollmentToken> for v1::CreateEnrollmentTokenResponse {
    fn from(t: EnrollmentToken) -> Self {
        v1::CreateEnrollmentTokenResponse {
            token: t.token,
            host: t.host,
            expires_unix_ms: t.expires_ms,
        }
    }
}

impl From<Enrollment> for v1::EnrollResponse {
    fn from(e: Enrollment) -> Self {
        v1::EnrollResponse {
            agent_id: e.agent_id,
            host: Some(gp::host_to_wire(&e.host)),
            credential: e.credential,
        }
    }
}

impl From<AgentInfo> for v1::AgentInfo {
    fn from(a: AgentInfo) -> Self {
        v1::AgentInfo {
            agent_id: a.agent_id,
            host: a.host,
            hostname: a.hostname,
            connected: a.connected,
            acked_generation: a.acked_generation,
            acked_unix_ms: a.acked_ms,
            current_generation: a.current_generation,
            last_seen_unix_ms: a.last_seen_ms,
            enrolled_unix_ms: a.enrolled_ms,
            revoked_unix_ms: a.revoked_ms,
            public_key: a.public_key,
            controller: a.controller,
        }
    }
}

impl From<WatchUpdate> for v1::WatchResponse {
    fn from(u: WatchUpdate) -> Self {
        v1::WatchResponse {
            generation: u.generation,
            base_generation: u.base_generation,
            update: Some(match u.update {
                ViewUpdate::Snapshot(view) => {
                    v1::watch_response::Update::Snapshot(gp::view_to_wire(&view))
                }
                ViewUpdate::Delta(d) => v1::watch_response::Update::Delta(d.as_wire().clone()),
            }),
        }
    }
}

// ------------------------------------------------------------------ events

impl From<v1::ConnectionEvent> for ConnectionEvent {
    fn from(e: v1::ConnectionEvent) -> Self {
        ConnectionEvent {
            timestamp: e.timestamp,
            event: e.event,
            verdict: e.verdict,
            reason: e.reason,
            user: e.user,
            device: e.device,
            service_account: e.service_account,
            public_ip: e.public_ip,
            src_ip: e.src_ip,
            src_port: e.src_port,
            resource: e.resource,
            dst_ip: e.dst_ip,
            protocol: e.protocol,
            dst_port: e.dst_port,
            connector: e.connector,
            remote_network: e.remote_network,
            rule: e.rule,
            rule_id: e.rule_id,
            host: e.host,
            packets: e.packets,
            bytes: e.bytes,
            reply_packets: e.reply_packets,
            reply_bytes: e.reply_bytes,
            duration_ms: e.duration_ms,
        }
    }
}

impl From<ConnectionEvent> for v1::ConnectionEvent {
    fn from(e: ConnectionEvent) -> Self {
        v1::ConnectionEvent {
            timestamp: e.timestamp,
            event: e.event,
            verdict: e.verdict,
            reason: e.reason,
            user: e.user,
            device: e.device,
            service_account: e.service_account,
            public_ip: e.public_ip,
            src_ip: e.src_ip,
            src_port: e.src_port,
            resource: e.resource,
            dst_ip: e.dst_ip,
            protocol: e.protocol,
            dst_port: e.dst_port,
            connector: e.connector,
            remote_network: e.remote_network,
            rule: e.rule,
            rule_id: e.rule_id,
            host: e.host,
            packets: e.packets,
            bytes: e.bytes,
            reply_packets: e.reply_packets,
            reply_bytes: e.reply_bytes,
            duration_ms: e.duration_ms,
        }
    }
}

impl From<EventRecord> for v1::StoredEvent {
    fn from(e: EventRecord) -> Self {
        v1::StoredEvent {
            id: e.id,
            time_unix_ms: e.time_ms,
            received_unix_ms: e.received_ms,
            agent_id: e.agent_id,
            event: e.event.map(Into::into),
        }
    }
}

impl From<v1::EventFilter> for EventFilter {
    fn from(f: v1::EventFilter) -> Self {
        EventFilter {
            since_ms: f.since_unix_ms,
            until_ms: f.until_unix_ms,
            user: f.user,
            device: f.device,
            resource: f.resource,
            event: f.event,
            verdict: f.verdict,
            host: f.host,
        }
    }
}

// ------------------------------------------------------------------ audit, security

impl From<AuditRecord> for v1::AuditRecord {
    fn from(r: AuditRecord) -> Self {
        v1::AuditRecord {
            id: r.id,
            time_unix_ms: r.time_ms,
            actor: r.actor,
            action: r.action,
            target: r.target,
            before: r.before,
            after: r.after,
            revision: r.revision,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

impl From<AuditVerification> for v1::VerifyAuditResponse {
    fn from(v: AuditVerification) -> Self {
        v1::VerifyAuditResponse {
            ok: v.ok,
            records: v.records,
            first_bad_id: v.first_bad_id,
            reason: v.reason,
            head_hash: v.head_hash,
            expected_head_id: v.expected_head_id,
        }
    }
}

impl From<ApiKeyInfo> for v1::ApiKeyInfo {
    fn from(k: ApiKeyInfo) -> Self {
        v1::ApiKeyInfo {
            name: k.name,
            role: listed_role(k.role),
            created_unix_ms: k.created_ms,
            expires_unix_ms: k.expires_ms,
            revoked_unix_ms: k.revoked_ms,
            created_by: k.created_by,
        }
    }
}

impl From<AdminUserInfo> for v1::AdminUserInfo {
    fn from(u: AdminUserInfo) -> Self {
        v1::AdminUserInfo {
            name: u.name,
            role: listed_role(u.role),
            created_unix_ms: u.created_ms,
        }
    }
}

impl From<Session> for v1::LoginResponse {
    fn from(s: Session) -> Self {
        v1::LoginResponse {
            session_token: s.token,
            expires_unix_ms: s.expires_ms,
            role: role_to_wire(s.role),
        }
    }
}

// ------------------------------------------------------------------ stored encodings

/// A compiled view as the database keeps it (the snapshot message).
pub fn encode_view(v: &HostView) -> Vec<u8> {
    gp::view_to_wire(v).encode_to_vec()
}

/// A stored view.
pub fn decode_view(blob: &[u8]) -> Result<HostView, String> {
    let w = v1::HostView::decode(blob).map_err(|e| e.to_string())?;
    gp::view_from_wire(&w).map_err(|e| e.to_string())
}

/// A delta as the database keeps it.
pub fn encode_delta(d: &ViewDelta) -> Vec<u8> {
    d.as_wire().encode_to_vec()
}

/// A stored delta.
pub fn decode_delta(blob: &[u8]) -> Result<ViewDelta, String> {
    v1::ViewDelta::decode(blob)
        .map(ViewDelta::from_wire)
        .map_err(|e| e.to_string())
}

/// An event as the database keeps it; returns the event back (no copy is made).
pub fn encode_event(e: ConnectionEvent) -> (Vec<u8>, ConnectionEvent) {
    let w = v1::ConnectionEvent::from(e);
    let blob = w.encode_to_vec();
    (blob, w.into())
}

/// A stored event (`None` when it does not decode).
pub fn decode_event(blob: &[u8]) -> Option<ConnectionEvent> {
    v1::ConnectionEvent::decode(blob).ok().map(Into::into)
}
