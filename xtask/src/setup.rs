//! `cargo xtask setup`: everything a fresh machine needs to build and test, installed only
//! when missing, each step saying what it found or did. A second run only checks.

use crate::util::{self, is_root, output};
use anyhow::{Context as _, Result, bail};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

/// bpf-linker release we build; 0.13 links against one LLVM major, chosen by feature.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Toolchain that builds the eBPF crate (needs `-Z build-std=core`).
const EBPF_TOOLCHAIN: &str = "nightly";

/// Debian packages the tests and the demo use: (command that proves it is there, package).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
    ("sysctl", "procps"),
    // `cargo xtask bench`: tunnel goodput.
    ("iperf3", "iperf3"),
    // Namespace tests: ICMP echo through the tunnel.
    ("ping", "iputils-ping"),
    // agent_ops: `systemd-analyze verify` of the units in deploy/.
    ("systemd-analyze", "systemd"),
    // The Admin Console's real-browser test: the system Chromium, driven from Node.
    ("chromium", "chromium"),
    ("node", "nodejs"),
    ("npm", "npm"),
];

/// The browser test's Node packages (package.json and package-lock.json committed there).
pub const BROWSER_TEST_DIR: &str = "controller/tests/console-browser";

pub fn run() -> Result<()> {
    let started = Instant::now();
    step("Debian packages", debian_packages)?;
    step("PostgreSQL", postgresql)?;
    step("nightly toolchain", nightly_toolchain)?;
    step("rust-src (nightly)", rust_src)?;
    step("bpf-linker", bpf_linker)?;
    step("browser test packages (npm)", browser_packages)?;
    println!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
    match f() {
        Ok(what) => {
            println!("setup: {name}: {what}");
            Ok(())
        }
        Err(e) => Err(e.context(format!("setup step '{name}' failed"))),
    }
}

fn has_command(cmd: &str) -> bool {
    // `command -v` also finds /usr/sbin tools when PATH lacks sbin for non-root users.
    output(
        "sh",
        &[
            "-c",
            &format!("command -v {cmd} || test -x /usr/sbin/{cmd}"),
        ],
    )
    .is_some()
}

fn debian_packages() -> Result<String> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(cmd, _)| !has_command(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        let all: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(_, p)| *p).collect();
        return Ok(format!("present ({})", all.join(", ")));
    }
    if !is_root() {
        // Building needs none of them; only the privileged tests do, and those skip when
        // not root outside CI.
        return Ok(format!(
            "missing {} (not root: install with `sudo apt-get install -y {}`)",
            missing.join(", "),
            missing.join(" ")
        ));
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    apt_install(&missing)?;
    Ok(format!("installed {}", missing.join(", ")))
}

/// `npm ci` in [`BROWSER_TEST_DIR`] when its packages are missing or older than its lock
/// file: playwright-core (which never downloads a browser here: the test points it at the
/// system Chromium) and axe-core, at the versions the lock file pins.
fn browser_packages() -> Result<String> {
    let dir = util::root().join(BROWSER_TEST_DIR);
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(have), Some(want)) = (modified(&installed), modified(&lock))
        && have >= want
    {
        return Ok(format!("present ({})", dir.join("node_modules").display()));
    }
    if !has_command("npm") {
        return Ok(
            "npm missing (not root: install nodejs and npm; the console's browser test \
                   skips without them, and fails in CI)"
                .into(),
        );
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&dir),
    )
    .context("npm ci of the console's browser test packages")?;
    Ok(format!(
        "installed into {}",
        dir.join("node_modules").display()
    ))
}

/// `apt-get update`, then `apt-get install --no-install-recommends PACKAGES` (root only).
fn apt_install(packages: &[&str]) -> Result<()> {
    util::run(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The newest installed PostgreSQL's `bin/` folder (Debian: `/usr/lib/postgresql/N/bin`),
/// where `initdb` and `pg_ctl` are.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    crate::pg_cluster::bin_dir()
}

/// PostgreSQL's server binaries: `cargo xtask test` runs the controller's suite a second
/// time on a throwaway cluster of its own.
fn postgresql() -> Result<String> {
    if let Some(bin) = postgres_bin_dir() {
        return Ok(format!("present ({})", bin.display()));
    }
    if !is_root() {
        return Ok(
            "missing (not root: install with `sudo apt-get install -y --no-install-recommends \
             postgresql`; the controller's PostgreSQL tests skip without it, and fail in CI)"
                .into(),
        );
    }
    println!("setup: installing Debian package: postgresql");
    apt_install(&["postgresql"])?;
    let bin = postgres_bin_dir()
        .context("postgresql was installed, but /usr/lib/postgresql/*/bin/initdb is missing")?;
    Ok(format!("installed ({})", bin.display()))
}

fn nightly_toolchain() -> Result<String> {
    if let Some(v) = output("rustc", &[&format!("+{EBPF_TOOLCHAIN}"), "--version"]) {
        return Ok(format!("present ({v})"));
    }
    println!("setup: installing the {EBPF_TOOLCHAIN} toolchain (minimal profile)");
    util::run(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
    ]))?;
    Ok("installed".into())
}

fn rust_src() -> Result<String> {
    let installed = output(
        "rustup",
        &[
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok("present".into());
    }
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    Ok("installed".into())
}

/// The nightly toolchain's own LLVM: its major version and shared library.
struct NightlyLlvm {
    major: u32,
    /// e.g. `.../lib/libLLVM.so.22.1-rust-1.97.0-nightly`
    library: PathBuf,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = output("rustc", &[&format!("+{EBPF_TOOLCHAIN}"), "-vV"])
        .context("`rustc +nightly -vV` failed")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` prints no LLVM version")?;
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("unreadable LLVM version {version:?}"))?;
    let sysroot = output(
        "rustc",
        &[&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"],
    )
    .context("`rustc +nightly --print sysroot` failed")?;
    let lib_dir = Path::new(&sysroot).join("lib");
    // The real library is `libLLVM.so.<major>.<minor>-rust-<version>`; the
    // `libLLVM-<major>-rust-*.so` next to it is a linker script, not a library.
    let library = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.{major}* in {} (the nightly toolchain ships one; reinstall it)",
                lib_dir.display()
            )
        })?;
    Ok(NightlyLlvm { major, library })
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("zt-gateway")
}

fn bpf_linker() -> Result<String> {
    let llvm = nightly_llvm()?;
    let soname = llvm
        .library
        .file_name()
        .and_then(|n| n.to_str())
        .context("library name")?
        .to_string();
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{} {soname}",
        llvm.major
    );
    let stamp_file = cache_dir().join("bpf-linker.stamp");

    let runs = output("bpf-linker", &["--version"]);
    let stamped = std::fs::read_to_string(&stamp_file).ok();
    if let Some(v) = &runs
        && v.contains(BPF_LINKER_VERSION)
        && stamped.as_deref().map(str::trim) == Some(stamp.as_str())
    {
        return Ok(format!("present ({v}, LLVM {})", llvm.major));
    }

    // bpf-linker's llvm-sys finds LLVM under LLVM_PREFIX; give it a prefix whose lib/ holds
    // libLLVM.so and the library's own soname, both pointing at the nightly's library, and
    // bake that folder into the binary's rpath so it runs without LD_LIBRARY_PATH.
    let prefix = cache_dir().join("llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm.library, &link)
            .with_context(|| format!("symlinking {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {} ({}); this takes a few minutes",
        llvm.major,
        llvm.library.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", llvm.major),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env("LD_LIBRARY_PATH", &lib)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
        )
        // Build it with the stable toolchain whatever toolchain runs xtask.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    let v = output("bpf-linker", &["--version"])
        .context("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)")?;
    std::fs::write(&stamp_file, &stamp)
        .with_context(|| format!("writing {}", stamp_file.display()))?;
    Ok(format!("installed ({v}, LLVM {})", llvm.major))
}
