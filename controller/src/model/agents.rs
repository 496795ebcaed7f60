//! The agents aggregate's types: enrollment, an agent's credential and state, and the
//! updates of a watch stream.

use std::sync::Arc;

use gateway_proto::v1;
use policy_compiler::{Host, HostView};
use tokio::sync::mpsc;

/// What an agent authenticates its calls with (the credential never appears in `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct AgentCredential {
    pub agent_id: String,
    pub credential: String,
}

impl std::fmt::Debug for AgentCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredential")
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

/// A one-time enrollment token (shown once).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    pub token: String,
    pub host: String,
    pub expires_ms: i64,
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("host", &self.host)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// A new agent's identity (its credential shown once).
#[derive(Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub agent_id: String,
    pub host: Host,
    pub credential: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("agent_id", &self.agent_id)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// An agent and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub agent_id: String,
    /// `connector:NAME` / `device:NAME`.
    pub host: String,
    /// The host name the agent gave when it enrolled.
    pub hostname: String,
    /// Whether it has a watch stream open (on this controller, or on another one of the
    /// database that said so in the last 15 s).
    pub connected: bool,
    /// The controller the stream is on (its listen address), when connected.
    pub controller: String,
    pub acked_generation: u64,
    /// When it acknowledged `acked_generation` (unix ms; 0: never, or before this was
    /// recorded).
    pub acked_ms: i64,
    /// The current generation of its host.
    pub current_generation: u64,
    pub last_seen_ms: i64,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    /// The registered WireGuard public key (base64; empty: none registered).
    pub public_key: String,
}

/// The change from one compiled view of a host to the next, in the form agents apply it
/// (`gateway_proto::apply_delta`). It is computed once per change, kept for agents that
/// resume, stored, and sent to every agent of the host as it is: its representation is
/// therefore the agents' own (the `gateway_proto` delta message), shared, and opaque
/// here.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewDelta(Arc<v1::ViewDelta>);

impl ViewDelta {
    /// The change from `old` to `new` (same host).
    pub fn between(old: &HostView, new: &HostView) -> ViewDelta {
        ViewDelta(Arc::new(gateway_proto::delta_to_wire(old, new)))
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        gateway_proto::delta_is_empty(&self.0)
    }

    /// Whether the view's metadata (names, principals, resources) changes.
    pub fn metadata_changed(&self) -> bool {
        self.0.meta.is_some()
    }

    /// The delta as agents receive it.
    pub fn as_wire(&self) -> &v1::ViewDelta {
        &self.0
    }

    /// A delta received or stored in the agents' form.
    pub fn from_wire(d: v1::ViewDelta) -> ViewDelta {
        ViewDelta(Arc::new(d))
    }
}

/// What a watch stream carries: a whole view (the catch-up of an agent that cannot
/// resume, or a host's first view) or the delta from the agent's generation.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewUpdate {
    Snapshot(Arc<HostView>),
    Delta(ViewDelta),
}

/// One message of a watch stream: the view at `generation`, from `base_generation`
/// (0 for a snapshot).
#[derive(Clone, Debug, PartialEq)]
pub struct WatchUpdate {
    pub generation: u64,
    pub base_generation: u64,
    pub update: ViewUpdate,
}

/// An open watch: the updates of the agent's host, catch-up first. The stream ends when
/// the agent is revoked, falls too far behind, or the controller stops.
#[derive(Debug)]
pub struct Watch {
    pub agent_id: String,
    pub host: String,
    /// The generation the watch started at (after its catch-up).
    pub generation: u64,
    pub updates: mpsc::Receiver<WatchUpdate>,
}
