//! Test and demo hosts: named network namespaces joined by veth pairs.
//!
//! A [`NetNs`] deletes its namespace when dropped, also while a panicking test unwinds;
//! deleting a namespace deletes the interfaces inside it, so a veth pair whose ends both
//! live in guarded namespaces needs no cleanup of its own. Names are unique per process and
//! call (`<prefix>-<pid>-<n>`), so parallel tests and a crashed earlier run never collide.
//!
//! Only the addresses tests may use go inside: 198.18.0.0/15 and 2001:db8::/32.

use anyhow::{Context as _, Result, bail};
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name: `<prefix><pid % 100000><n>`, at most 15 bytes for interface names.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    // Interface names are limited to IFNAMSIZ - 1 = 15 bytes.
    name.chars().take(15).collect()
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace that exists as long as this value.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named `<prefix>…` (unique) with its loopback up.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs a command inside the namespace and returns its output; fails on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// A `Command` that runs `program` in this network namespace only (see
    /// [`command_in`]).
    pub fn command_net_only(&self, program: impl AsRef<std::path::Path>) -> Result<Command> {
        command_in(&self.name, program.as_ref())
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Sockets created and
    /// programs attached (by interface name) inside `f` belong to the namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid namespace fd; it only affects this thread, which
                // ends when `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(anyhow::anyhow!(
                        "setns into {path}: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|panic| anyhow::anyhow!("thread in namespace panicked: {panic:?}"))?
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!(
                "warning: could not delete namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
}

/// A `Command` whose child enters the named network namespace — only the network
/// namespace, like `nsenter --net` — and gets SIGTERM if its parent dies. Unlike `ip netns
/// exec` it keeps the host's mounts, so /sys/fs/bpf is the host's bpffs and pins made by the
/// program outlive it (what an agent needs).
pub fn command_in(ns: &str, program: &std::path::Path) -> Result<Command> {
    use std::os::unix::process::CommandExt as _;
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe system calls (setns, prctl) run;
    // the namespace file was opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    Ok(cmd)
}

/// One end of a veth pair: its namespace, interface name and address with prefix length.
#[derive(Debug, Clone)]
pub struct VethEnd {
    pub iface: String,
    pub addrs: Vec<String>,
}

/// Creates a veth pair between two namespaces, assigns the given addresses (CIDR form,
/// e.g. `198.18.0.1/24`, `2001:db8::1/64`) and brings both ends up. IPv6 duplicate address
/// detection is disabled so addresses are usable at once.
pub fn veth_pair(
    a: &NetNs,
    a_addrs: &[&str],
    b: &NetNs,
    b_addrs: &[&str],
) -> Result<(VethEnd, VethEnd)> {
    let a_if = unique_name("va");
    let b_if = unique_name("vb");
    run(Command::new("ip").args([
        "link",
        "add",
        &a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        b.name(),
    ]))?;
    for (ns, iface, addrs) in [(a, &a_if, a_addrs), (b, &b_if, b_addrs)] {
        ns.exec(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{iface}.accept_dad=0")],
        )?;
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", iface, "nodad"])
                .or_else(|_| ns.ip(&["addr", "add", addr, "dev", iface]))?;
        }
        ns.ip(&["link", "set", iface, "up"])?;
    }
    Ok((
        VethEnd {
            iface: a_if,
            addrs: a_addrs.iter().map(|s| s.to_string()).collect(),
        },
        VethEnd {
            iface: b_if,
            addrs: b_addrs.iter().map(|s| s.to_string()).collect(),
        },
    ))
}

/// True if a namespace with this exact name exists (used by tests of the guard itself).
pub fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/run/netns/{name}")).exists()
}
