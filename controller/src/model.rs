//! The controller's domain types: what [`crate::State`] takes and returns and what the
//! store keeps, by aggregate. None of them is a wire type: [`crate::wire`] converts them
//! to and from `gateway_proto::v1` for the gRPC services and for the few encodings the
//! database stores (views, deltas, events).
//!
//! One exception is deliberate: a [`ViewDelta`] holds the delta in the form agents apply
//! it, computed once per change and sent to every agent of the host as it is (see its
//! docs).

pub mod agents;
pub mod audit;
pub mod events;
pub mod policy;
pub mod security;

pub use agents::{
    AgentCredential, AgentInfo, Enrollment, EnrollmentToken, ViewDelta, ViewUpdate, Watch,
    WatchUpdate,
};
pub use audit::{AuditEntry, AuditRecord, AuditVerification, GENESIS_HASH};
pub use events::{ConnectionEvent, EventFilter, EventRecord};
pub use policy::{
    Assertion, ChangeKind, ChangeOpts, Consideration, EntryCounts, Explanation, FieldChange,
    HostChange, ObjectChange, Plan, TestOutcome, TestReport,
};
pub use security::{AdminUserInfo, ApiKeyInfo, Session};
