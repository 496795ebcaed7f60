//! Builds the eBPF programs (crate `gateway-ebpf`, target bpfel-unknown-none) with aya-build
//! and leaves the object in OUT_DIR, where `src/ebpf.rs` embeds it. `cargo build` and
//! `cargo test` need no other step once `cargo xtask setup` has installed the toolchain.
use std::{path::Path, process::Command};

fn main() -> anyhow::Result<()> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest_dir.join("../gateway-ebpf");
    let common_dir = manifest_dir.join("../gateway-common");
    // The kernel side is compiled against gateway-common's layouts: rebuild when they change.
    println!("cargo:rerun-if-changed={}", common_dir.display());

    // Fail with the fix, not with a linker error three screens up.
    let has_linker = Command::new("bpf-linker").arg("--version").output().is_ok();
    if !has_linker {
        anyhow::bail!(
            "bpf-linker is not installed (or not on PATH). Run `cargo xtask setup` once; it \
             installs the nightly rust-src component and bpf-linker built against the \
             nightly toolchain's LLVM."
        );
    }

    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
