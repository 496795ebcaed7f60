//! Types shared by the eBPF programs (`gateway-ebpf`) and user space.
//!
//! Everything that crosses the kernel/user boundary lives here, so both sides are compiled
//! against the very same layout:
//!
//! * every map key and value is `#[repr(C)]` with explicit padding (padding bytes would
//!   otherwise become part of a hash key);
//! * multi-byte fields that the kernel compares bitwise (addresses, ports) are stored as
//!   big-endian byte arrays, so neither side can get the byte order wrong;
//! * map names carry a version suffix: changing a pinned map's layout means a new name.
//!
//! With the `user` feature, every map type implements `aya::Pod`.
#![no_std]

pub mod addr;
pub mod config;
pub mod event;
pub mod flow;
pub mod maps;
pub mod names;
pub mod parse;
pub mod policy;
pub mod verdict;

pub use addr::Addr;
pub use config::{DataplaneConfig, Role};
pub use event::{Event, EventKind};
pub use flow::{DenyCacheEntry, Direction, FlowKey, FlowState, FragKey, FragState};
pub use parse::ParseOutcome;
pub use verdict::Reason;
