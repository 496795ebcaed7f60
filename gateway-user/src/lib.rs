//! The host agent (`gateway-agent`): loading the eBPF object and reading its maps
//! ([`dataplane`], [`batch`]), writing compiled policy into them atomically ([`writer`]), and
//! the agent itself ([`agent`]), the userspace WireGuard tunnel ([`tunnel`]). The test harness lives in `gateway-test-support`, the demo in
//! `gateway-demo`: nothing of them ships with the agent.

pub mod agent;
pub mod batch;
pub mod dataplane;
pub mod names_map;
pub mod src_filter;
pub mod tunnel;
pub mod writer;

pub use dataplane::Dataplane;
