//! The test harness of the gateway, in a crate of its own so that nothing of it ships with
//! the agent (aya keeps its integration harness apart the same way).
//!
//! * [`privileges`]: the one root/CI rule every privileged test follows (skips are counted
//!   as skips; in CI they fail);
//! * [`postgres`]: a fresh PostgreSQL database per test (the cluster `cargo xtask test`
//!   starts), skipped like a privileged test when there is none;
//! * [`netns`]: network namespaces and veth pairs a test creates and removes;
//! * [`testkit`]: frames, the loaded data plane under test (BPF_PROG_TEST_RUN, policy
//!   loading), and traffic helpers that tell a silent drop from a refusal;
//! * [`process`]: `gateway-agent` and `gateway-controller` run as processes in namespaces,
//!   supervised, stopped and cleaned up (tests and the demo share them);
//! * [`capture`]: what crossed a link (AF_PACKET);
//! * [`cli_docs`]: the shell completions and man pages every binary ships;
//! * [`records`]: the fields a connection record must carry;
//! * [`tunnel`]: a userspace tunnel run in-process inside a namespace;
//! * [`fuzz`]: stateful differential fuzzing of the loaded programs against the reference
//!   model (`gateway-model`), behind `cargo xtask fuzz-dataplane`.

pub mod capture;
pub mod cli_docs;
pub mod dns;
pub mod frames;
pub mod fuzz;
pub mod load;
pub mod net;
pub mod netns;
pub mod pg_cluster;
pub mod postgres;
pub mod privileges;
pub mod process;
pub mod records;
pub mod tunnel;

/// Everything a data-plane test usually needs, in one place.
pub mod testkit {
    pub use crate::frames::*;
    pub use crate::load::*;
    pub use crate::net::*;
}
