//! Test support for the data plane, never shipped: a stateful reference model written from
//! the contract (`docs/dataplane.md`), frame builders that look like the wire, and a seeded
//! generator of packet sequences.
//!
//! ```text
//! oracle     Model::new(policy, role, now) · apply(policy, now) · packet(dir, frame, now) -> Expected
//!            packet_l3(dir, protocol, packet, now) (tunnel interface) · set_tunnel · shield(hook, frame, now_ns)
//! wire       frames: Ethernet/VLAN, IPv4 (+options), IPv6 (+extension headers), TCP/UDP/ICMP,
//!            ICMP errors quoting a packet, host-like fragmentation, a catalog of malformed frames
//! scenario   generate(seed) -> Scenario { policy_text, role, start, steps } · replay(&scenario)
//! ```
//!
//! The model depends on the policy model and the reference evaluator
//! (`policy_compiler::{Policy, evaluate}`) only: never on the compiler's output, the shared
//! kernel layouts or the kernel programs it judges.

pub mod oracle;
pub mod scenario;
pub mod wire;

pub use oracle::{Direction, Expected, Model, Role, ShieldHook, Tunnel};
pub use scenario::{Scenario, Step, generate, replay};
