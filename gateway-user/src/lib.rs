//! User side of the gateway: loading the eBPF object, reading its maps, and the test
//! harness (network namespaces, privilege checks, packet fixtures) shared by the tests,
//! benchmarks and the demo.

pub mod agent;
pub mod batch;
pub mod dataplane;
pub mod demo;
pub mod netns;
pub mod privileges;
pub mod testkit;
pub mod writer;

pub use dataplane::Dataplane;
