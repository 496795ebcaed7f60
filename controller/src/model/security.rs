//! The security aggregate's types: what is shown of API keys and admin users, and a
//! session.

use crate::auth::Role;

/// An API key as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub name: String,
    /// `None`: a stored role this controller does not know.
    pub role: Option<Role>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    /// The principal that created it (`key:NAME`, `user:NAME`, `local:init`).
    pub created_by: String,
}

/// An admin user as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminUserInfo {
    pub name: String,
    /// `None`: a stored role this controller does not know.
    pub role: Option<Role>,
    pub created_ms: i64,
}

/// A session opened by a login (the token never appears in `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub token: String,
    pub expires_ms: i64,
    pub role: Role,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_ms", &self.expires_ms)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}
