//! The device's stub resolver for DNS resources.
//!
//! The agent embeds a [`Stub`]: it listens on UDP and TCP, answers `A`/`AAAA` queries for the
//! names of resources the device may reach with a **proxy address** that stands for that name
//! (one stable IPv4/IPv6 pair per name, from a [`Pool`]), and forwards every other query
//! upstream unchanged.
//!
//! * Which names are resources the device may reach is the agent's decision, through the
//!   [`Names`] trait (the crate knows no policies); the agent swaps it on policy updates with
//!   [`Stub::set_names`].
//! * Before the answer for a name is sent, the [`Intent`] hook runs (the agent writes the kernel
//!   map entry proxy -> resource and asks the connector to resolve the real name), so the first
//!   packet to the proxy address never races the map. The hook runs when the name is first
//!   answered, again when a query comes more than [`Config::reprepare_after`] after the last
//!   run, and again when the name's [`Matched`] changed; concurrent queries share one run. A
//!   failing or slow (past [`Config::prepare_timeout`]) hook gives SERVFAIL.
//!
//! The connector's half, [`resolve`], resolves a resource's name itself (A and AAAA
//! through its own resolvers, the TTL clamped).
//!
//! # No existence leak
//!
//! A name the device may **not** reach is treated exactly like a name that is no resource at all:
//! the query is forwarded upstream byte for byte and the upstream's answer is relayed byte for
//! byte (same ID, same flags, same records). The client therefore cannot tell from the answer
//! (NXDOMAIN vs. NOERROR, TTLs, timing of a hook) whether a resource with that name exists.
//! Only names the device may reach get a proxy address; for them every type other than `A` and
//! `AAAA` is answered NOERROR with no records (NODATA) and never forwarded, so no real address
//! leaks through `HTTPS`/`SVCB` hints or `ANY`.
//!
//! # Names
//!
//! Query names are canonicalized before [`Names::lookup`]: ASCII lower case, fully qualified.
//! A name with a label holding anything other than letters, digits, `-` and `_` (escaped dots,
//! non-ASCII bytes) and any class other than `IN` is never looked up: it is forwarded.

mod config;
mod pool;
mod resolve;
mod server;
mod wire;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

pub use config::Config;
pub use hickory_proto::rr::Name;
pub use pool::{Pool, PoolError};
pub use resolve::{Resolved, ResolverConfig, nameservers, resolve};
pub use server::{ShutdownHandle, Stats, Stub};

/// The resource a query name belongs to, as the agent's [`Names`] reports it. Opaque to this
/// crate: it is handed to [`Intent::prepare`] unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Matched {
    /// The resource's identifier.
    pub resource: String,
    /// The pattern of the resource that matched (`db.prod.internal.`, `*.corp.example.com.`...).
    pub pattern: String,
}

/// The names the device may reach.
pub trait Names: Send + Sync {
    /// The resource `qname` (lower-case, fully qualified) belongs to **and the device may reach**,
    /// else `None` (the query is then forwarded upstream unchanged).
    fn lookup(&self, qname: &Name) -> Option<Matched>;
}

/// The result of [`Intent::prepare`]: `Err` carries a message for the log.
pub type PrepareFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The hook run before a name's proxy addresses are answered.
pub trait Intent: Send + Sync {
    /// Make `v4`/`v6` usable for `name` (canonical: lower case, trailing dot). The answer waits for
    /// this future; an error or a timeout answers SERVFAIL.
    fn prepare(&self, name: &str, m: &Matched, v4: Ipv4Addr, v6: Ipv6Addr) -> PrepareFuture<'_>;
}
