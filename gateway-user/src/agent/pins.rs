//! Programs, maps and links pinned on bpffs, so enforcement outlives the agent.
//!
//! Layout under the pin folder (readable with `bpftool map/prog/link show pinned ...`):
//!
//! ```text
//! <pin_dir>/maps/<MAP>_V1       every persistent map (policy, flows, counters, events)
//! <pin_dir>/progs/<program>     the programs currently attached
//! <pin_dir>/links/xdp-<iface>   one link per attachment; a link holds its program
//! <pin_dir>/links/tc-<iface>      attached even when no process has it open (tc-: tcx
//! <pin_dir>/links/tcin-<iface>    egress, tcin-: tcx ingress, the tunnel interface's)
//! ```
//!
//! With `[tunnel]`, the physical links (`xdp_interfaces`, `tc_egress_interfaces`) run the
//! shield programs and the tunnel interface runs the policy (docs/dataplane.md, "Tunnel
//! interface" and "Shield"); a restart that turns the tunnel on or off swaps the programs
//! of the existing links.
//!
//! A starting agent loads the programs against the pinned maps (state re-adopted), then
//! for each configured interface either swaps the new program into the existing pinned
//! link (`bpf_link_update`: atomic, no gap) or attaches and pins a new link. Killing the
//! agent — even with SIGKILL — leaves the links, programs and maps in place.

use super::config::{Config, XdpModeSetting};
use crate::Dataplane;
use anyhow::{Context as _, Result, bail};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};
use gateway_common::maps;
use std::path::{Path, PathBuf};

pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn progs_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("progs")
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: valid C string and a zeroed statfs buffer for the kernel to fill.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The nearest existing ancestor of `path` (or `path`).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    p
}

/// Where the pin folder really is for this process.
///
/// `ip netns exec` runs its command in a private mount namespace with a fresh /sys, where
/// /sys/fs/bpf is not mounted; a bpffs mounted there would be a new, private instance, and
/// pins made in it would vanish with the process. When the host's bpffs is reachable
/// through PID 1's root instead, the pin folder is used through `/proc/1/root`, so pins
/// stay on the host's bpffs and outlive the agent.
pub fn resolve(pin_dir: &Path) -> PathBuf {
    if is_bpffs(&existing_ancestor(pin_dir)) {
        return pin_dir.to_path_buf();
    }
    let via_init = Path::new("/proc/1/root").join(pin_dir.strip_prefix("/").unwrap_or(pin_dir));
    if is_bpffs(&existing_ancestor(&via_init)) {
        return via_init;
    }
    pin_dir.to_path_buf()
}

/// Makes sure the pin folder is on a bpffs (mounting /sys/fs/bpf when nothing is there)
/// and its sub-folders exist. Returns the folder to use (see [`resolve`]).
pub fn prepare(pin_dir: &Path) -> Result<PathBuf> {
    let mut dir = resolve(pin_dir);
    if !is_bpffs(&existing_ancestor(&dir)) {
        if !pin_dir.starts_with("/sys/fs/bpf") {
            bail!(
                "{} is not on a bpffs: mount one (mount -t bpf bpf <dir>) or use a folder \
                 under /sys/fs/bpf",
                pin_dir.display()
            );
        }
        tracing::info!(
            "mounting bpffs on /sys/fs/bpf (note: in a private mount namespace, such as `ip \
             netns exec` makes, pins last only as long as this process; run the agent in the \
             host's mount namespace)"
        );
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .context("running mount -t bpf")?;
        if !status.success() {
            bail!("could not mount bpffs on /sys/fs/bpf ({status})");
        }
        dir = pin_dir.to_path_buf();
    }
    if dir != pin_dir {
        tracing::warn!(
            "/sys/fs/bpf is not mounted in this mount namespace (ip netns exec?); pinning on \
             the host's bpffs through {}",
            dir.display()
        );
    }
    for d in [
        dir.clone(),
        maps_dir(&dir),
        links_dir(&dir),
        progs_dir(&dir),
    ] {
        secure_dir(&d)?;
    }
    Ok(dir)
}

/// One agent per pin folder: an exclusive `flock` on the folder itself, held as long as the
/// returned file stays open (the agent's whole run; the kernel drops it when the process
/// ends, even by SIGKILL). A second agent with the same `pin_dir` would otherwise adopt the
/// first one's maps and swap its programs in under it.
pub fn lock(pin_dir: &Path) -> Result<std::fs::File> {
    match try_lock(pin_dir)? {
        Ok(f) => Ok(f),
        Err(holder) => bail!(
            "an agent is already running with pin folder {} ({holder}): stop it first, or give \
             this one another pin_dir",
            pin_dir.display()
        ),
    }
}

/// The lock of [`lock`], or who holds it (`pid N`, or `another process`).
pub fn try_lock(pin_dir: &Path) -> Result<std::result::Result<std::fs::File, String>> {
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::io::AsRawFd as _;
    let dir = std::fs::File::open(pin_dir)
        .with_context(|| format!("opening the pin folder {}", pin_dir.display()))?;
    // SAFETY: a valid open descriptor; flock has no memory arguments.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Ok(dir));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err).with_context(|| format!("locking the pin folder {}", pin_dir.display()));
    }
    Ok(Err(dir
        .metadata()
        .ok()
        .and_then(|m| lock_holder(m.ino()))
        .map_or_else(
            || "another process".to_string(),
            |pid| format!("pid {pid}"),
        )))
}

/// The pid of the agent holding the pin folder's lock, read from /proc/locks without
/// taking the lock (so a status query never makes a starting agent refuse).
pub fn running_agent(pin_dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    lock_holder(std::fs::metadata(pin_dir).ok()?.ino())
}

/// What a pin folder held before an agent started: every path under it, and whether it
/// existed. [`undo_start`] removes what a failed start added, and only that.
#[derive(Debug, Default)]
pub struct Snapshot {
    existed: bool,
    paths: std::collections::BTreeSet<PathBuf>,
}

/// Every file and folder under `dir` (three levels: the pin layout), relative to it.
fn listing(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            let r = rel.join(e.file_name());
            if e.file_type().is_ok_and(|t| t.is_dir()) && r.components().count() < 3 {
                todo.push(r.clone());
            }
            out.insert(r);
        }
    }
    out
}

pub fn snapshot(pin_dir: &Path) -> Snapshot {
    Snapshot {
        existed: pin_dir.exists(),
        paths: listing(pin_dir),
    }
}

/// Removes what a start created when it fails before `ready` (dropped armed); disarmed
/// once the agent enforces. The agent declares it after taking the lock, so it runs while
/// the lock is held.
pub struct StartGuard {
    pub pin_dir: PathBuf,
    pub before: Snapshot,
    pub armed: bool,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let removed = undo_start(&self.pin_dir, &self.before);
        if removed.is_empty() {
            tracing::info!("the failed start created no pins; the pin folder is as it was");
        } else {
            tracing::info!(
                "the failed start removed what it had created: {}",
                removed.join(", ")
            );
        }
    }
}

/// After a failed start: removes the links (detaching their programs), program and map
/// pins and folders that were not there at `before`. Links go first, so no program of this
/// start keeps running on maps about to be unpinned. Returns what it removed.
pub fn undo_start(pin_dir: &Path, before: &Snapshot) -> Vec<String> {
    let now = listing(pin_dir);
    let mut added: Vec<&PathBuf> = now.difference(&before.paths).collect();
    // Links, then other files, then folders deepest first.
    let rank = |p: &PathBuf| {
        let is_dir = pin_dir.join(p).is_dir();
        let link = p.starts_with("links");
        (is_dir, !link, std::cmp::Reverse(p.components().count()))
    };
    added.sort_by_key(|p| rank(p));
    let mut removed = Vec::new();
    for rel in added {
        let path = pin_dir.join(rel);
        let r = if path.is_dir() {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => removed.push(rel.display().to_string()),
            Err(e) => tracing::warn!("could not remove {}: {e}", path.display()),
        }
    }
    if !before.existed && std::fs::remove_dir(pin_dir).is_ok() {
        removed.push(pin_dir.display().to_string());
    }
    removed
}

/// The process holding a `flock` on the inode `ino`, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`).
fn lock_holder(ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flock = f.get(1) == Some(&"FLOCK");
        let same = f
            .get(5)
            .and_then(|dev_ino| dev_ino.rsplit(':').next())
            .and_then(|i| i.parse::<u64>().ok())
            == Some(ino);
        if flock && same {
            f.get(4)?.parse().ok()
        } else {
            None
        }
    })
}

/// Makes sure a pin folder is the agent's own: creates it mode 0700 when missing, and
/// refuses one that is a symbolic link or not a folder, belongs to another user, or
/// that group or others may write to. (Under a world-writable /sys/fs/bpf, another
/// local user could otherwise create `links/` first and later unlink the link pins,
/// detaching enforcement.)
pub fn secure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    let m = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating pin folder {}", dir.display()))?;
            std::fs::symlink_metadata(dir)
                .with_context(|| format!("pin folder {}", dir.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("pin folder {}", dir.display())),
        Ok(m) => m,
    };
    if m.file_type().is_symlink() || !m.is_dir() {
        bail!(
            "pin folder {} is not a folder (a symbolic link or a file): refusing it",
            dir.display()
        );
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        bail!(
            "pin folder {} belongs to uid {}, not to this agent (uid {me}): refusing it; \
             remove it (someone else may have created it to tamper with the pins)",
            dir.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "pin folder {} has mode {:o}: group or others may write to it; refusing it \
             (chmod go-w it after checking its contents)",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// What happened to one attachment.
#[derive(Debug)]
pub enum Attached {
    /// A new link, pinned.
    New { mode: &'static str },
    /// An existing pinned link now runs the new program (atomic replace).
    Replaced,
}

/// The programs a host runs on its physical links, and on its tunnel interface if any.
struct Programs {
    xdp: &'static str,
    tc_egress: &'static str,
    tunnel: bool,
}

fn programs(cfg: &Config) -> Programs {
    match cfg.tunnel {
        Some(_) => Programs {
            xdp: maps::PROG_SHIELD_XDP,
            tc_egress: maps::PROG_SHIELD_TC_EGRESS,
            tunnel: true,
        },
        None => Programs {
            xdp: maps::PROG_XDP,
            tc_egress: maps::PROG_TC_EGRESS,
            tunnel: false,
        },
    }
}

/// Writes the tunnel's part of the kernel configuration (on/off, WireGuard port, handshake
/// limits) from `cfg.tunnel` into the `CONFIG` map, keeping the rest as the agent wrote it.
/// [`attach_all`] calls it before attaching anything.
pub fn write_tunnel_config(dp: &mut Dataplane, cfg: &Config) -> Result<()> {
    let current = dp.config()?;
    let next = match &cfg.tunnel {
        Some(t) => current.with_tunnel(t.listen_port, t.handshakes_per_source, t.handshake_burst),
        None => current.without_tunnel(),
    };
    dp.set_config(&next)
}

/// Attaches (or re-adopts) every configured interface and pins the programs. With
/// `[tunnel]` (its interface already created), the tunnel interface gets the policy
/// programs and the physical links the shield's.
pub fn attach_all(dp: &mut Dataplane, cfg: &Config) -> Result<Vec<(String, Attached)>> {
    write_tunnel_config(dp, cfg)?;
    let progs = programs(cfg);
    let mut out = Vec::new();
    // The tunnel first: by the time the physical links stop enforcing the policy, the
    // tunnel interface does.
    if progs.tunnel {
        out.extend(attach_tunnel_links(dp, cfg)?);
    }
    for iface in &cfg.xdp_interfaces {
        let r = attach_xdp(dp, cfg, progs.xdp, iface).with_context(|| format!("XDP on {iface}"))?;
        out.push((format!("xdp {iface} ({})", progs.xdp), r));
    }
    for iface in &cfg.tc_egress_interfaces {
        let pin = links_dir(&cfg.pin_dir).join(format!("tc-{iface}"));
        let r = attach_tcx(dp, progs.tc_egress, iface, TcAttachType::Egress, &pin)
            .with_context(|| format!("TC egress on {iface}"))?;
        out.push((format!("tc-egress {iface} ({})", progs.tc_egress), r));
    }
    pin_programs(dp, cfg)?;
    Ok(out)
}

/// Attaches (or re-adopts) the tunnel interface's programs, tcx ingress and egress, and
/// pins them. For the agent when it (re)creates the TUN device after [`attach_all`]: a
/// link whose device was deleted is replaced by a new one on the device of that name.
pub fn attach_tunnel(dp: &mut Dataplane, cfg: &Config) -> Result<Vec<(String, Attached)>> {
    write_tunnel_config(dp, cfg)?;
    let out = attach_tunnel_links(dp, cfg)?;
    pin_programs(dp, cfg)?;
    Ok(out)
}

fn attach_tunnel_links(dp: &mut Dataplane, cfg: &Config) -> Result<Vec<(String, Attached)>> {
    let Some(tunnel) = &cfg.tunnel else {
        bail!("no [tunnel] in the configuration");
    };
    let iface = &tunnel.interface;
    let links = links_dir(&cfg.pin_dir);
    let mut out = Vec::new();
    for (name, at, pin, what) in [
        (
            maps::PROG_TUN_INGRESS,
            TcAttachType::Ingress,
            links.join(format!("tcin-{iface}")),
            "tun-ingress",
        ),
        (
            maps::PROG_TUN_EGRESS,
            TcAttachType::Egress,
            links.join(format!("tc-{iface}")),
            "tun-egress",
        ),
    ] {
        let r = attach_tcx(dp, name, iface, at, &pin)
            .with_context(|| format!("{what} (tcx) on the tunnel interface {iface}"))?;
        out.push((format!("{what} {iface}"), r));
    }
    Ok(out)
}

fn attach_xdp(dp: &mut Dataplane, cfg: &Config, name: &str, iface: &str) -> Result<Attached> {
    let pin = links_dir(&cfg.pin_dir).join(format!("xdp-{iface}"));
    let prog: &mut Xdp = match name {
        maps::PROG_SHIELD_XDP => dp.shield_xdp()?,
        _ => dp.xdp()?,
    };
    if pin.exists() {
        // A link whose interface was deleted (and maybe made again) runs nowhere and cannot
        // take a new program: it is unpinned and a new link made.
        let defunct = super::attachments::link_facts(&pin).is_ok_and(|f| f.ifindex == 0);
        if defunct {
            tracing::info!(
                %iface,
                "the pinned XDP link {} is defunct (its interface was deleted); attaching anew",
                pin.display()
            );
            std::fs::remove_file(&pin)
                .with_context(|| format!("unpinning the defunct link {}", pin.display()))?;
        } else {
            let link: FdLink = PinnedLink::from_pin(&pin)
                .with_context(|| format!("opening pinned link {}", pin.display()))?
                .into();
            let link = XdpLink::try_from(link).context("pinned link is not an XDP link")?;
            prog.attach_to_link(link)
                .context("replacing the program of the pinned XDP link")?;
            return Ok(Attached::Replaced);
        }
    }
    let (id, mode) = match cfg.xdp_mode {
        XdpModeSetting::Generic => (prog.attach(iface, XdpMode::Skb)?, "generic"),
        XdpModeSetting::Native => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            // Only a driver without XDP support says "not supported"; anything else (a
            // program attached meanwhile, a missing interface) is an error of its own.
            Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    %iface,
                    "native XDP is not available: the driver does not support it ({e}: {}); \
                     falling back to generic mode, which is slower",
                    std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)
                );
                (prog.attach(iface, XdpMode::Skb)?, "generic")
            }
            Err(e) => {
                let held = super::host_check::links().ok().and_then(|ls| {
                    ls.into_iter()
                        .find(|l| l.name == iface)
                        .and_then(|l| l.xdp.first().map(|p| p.id))
                });
                return Err(match held {
                    Some(id) => anyhow::anyhow!(super::attachments::foreign_xdp_message(iface, id)),
                    None => {
                        anyhow::Error::new(e).context(format!("attaching XDP (native) to {iface}"))
                    }
                });
            }
        },
    };
    let link: FdLink = prog.take_link(id)?.try_into().context(
        "the kernel gave a netlink XDP attachment, which cannot be pinned (kernel < 5.9?)",
    )?;
    link.pin(&pin)
        .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
    Ok(Attached::New { mode })
}

/// The OS error number somewhere in an error's chain of sources.
fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(n) = io.raw_os_error()
        {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

/// Attaches tc program `name` at `at` of `iface` with tcx, or swaps it into the link pinned
/// at `pin`. A pinned link whose device is gone (a recreated TUN device) cannot take a new
/// program: it is unpinned and a new link made.
fn attach_tcx(
    dp: &mut Dataplane,
    name: &str,
    iface: &str,
    at: TcAttachType,
    pin: &Path,
) -> Result<Attached> {
    let prog: &mut SchedClassifier = dp.tc_named(name)?;
    if pin.exists() {
        let pinned = PinnedLink::from_pin(pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        let link: FdLink = pinned.into();
        let link = SchedClassifierLink::try_from(link).context("pinned link is not a tcx link")?;
        match prog.attach_to_link(link) {
            Ok(_) => return Ok(Attached::Replaced),
            Err(e) => {
                tracing::info!(
                    %iface,
                    "the pinned tcx link {} is defunct ({e}); attaching anew",
                    pin.display()
                );
                std::fs::remove_file(pin)
                    .with_context(|| format!("unpinning the defunct link {}", pin.display()))?;
            }
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            at,
            // First in the chain: a program before the gateway's that passes a packet would
            // end the chain before the gateway saw it.
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .context("tcx attach (needs Linux 6.6 or newer)")?;
    let link: FdLink = prog.take_link(id)?.try_into().context("tcx link")?;
    link.pin(pin)
        .with_context(|| format!("pinning the tcx link at {}", pin.display()))?;
    Ok(Attached::New { mode: "tcx" })
}

/// Pins the attached programs for bpftool, replacing older pins (also those of programs
/// this configuration no longer runs, such as the policy XDP program once the tunnel is on).
fn pin_programs(dp: &mut Dataplane, cfg: &Config) -> Result<()> {
    let dir = progs_dir(&cfg.pin_dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let progs = programs(cfg);
    let mut names = vec![progs.xdp, progs.tc_egress];
    if progs.tunnel {
        names.extend([maps::PROG_TUN_INGRESS, maps::PROG_TUN_EGRESS]);
    }
    for name in names {
        let path = dir.join(name);
        dp.ebpf_mut()
            .program_mut(name)
            .with_context(|| format!("{name} missing"))?
            .pin(&path)
            .with_context(|| format!("pinning {name} at {}", path.display()))?;
    }
    Ok(())
}

/// Removes map pins this agent does not use: maps of an older layout (another name
/// version), which the programs just swapped in no longer reference. Called after
/// attaching, so the old programs kept their maps until the new ones took over.
pub fn remove_stale(pin_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(maps_dir(pin_dir)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !maps::PERSISTENT.contains(&name.as_str()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(
                    map = %name,
                    "removed a map pin left by an agent with another map layout"
                ),
                Err(err) => tracing::warn!(map = %name, "could not remove a stale pin: {err}"),
            }
        }
    }
}

/// Removes every link (which detaches the programs), program pin and map pin.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let links = links_dir(pin_dir);
    if let Ok(entries) = std::fs::read_dir(&links) {
        for e in entries.flatten() {
            let path = e.path();
            let link = PinnedLink::from_pin(&path)
                .with_context(|| format!("opening pinned link {}", path.display()))?;
            // Unpinning drops the last reference: the kernel detaches the program.
            drop(
                link.unpin()
                    .with_context(|| format!("unpinning {}", path.display()))?,
            );
            removed.push(format!("link {}", e.file_name().to_string_lossy()));
        }
    }
    for dir in [progs_dir(pin_dir), maps_dir(pin_dir)] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                removed.push(format!(
                    "{} {}",
                    dir.file_name().unwrap_or_default().to_string_lossy(),
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    for dir in [
        links,
        progs_dir(pin_dir),
        maps_dir(pin_dir),
        pin_dir.to_path_buf(),
    ] {
        let _ = std::fs::remove_dir(&dir);
    }
    if pin_dir.exists() {
        bail!(
            "{} still holds files the agent did not create; left in place",
            pin_dir.display()
        );
    }
    Ok(removed)
}

/// The pinned links, by file name (`xdp-eth0`, `tc-eth0`).
pub fn pinned_links(pin_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(links_dir(pin_dir))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn pin_folders_are_created_private_and_foreign_ones_refused() {
        let base = std::env::temp_dir().join(format!("zgw-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

        // Created: 0700, and accepted again.
        let pins = base.join("pins").join("links");
        secure_dir(&pins).unwrap();
        assert_eq!(mode(&pins), 0o700);
        secure_dir(&pins).unwrap();

        // Writable by others: refused.
        let loose = base.join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = format!("{:#}", secure_dir(&loose).unwrap_err());
        assert!(e.contains("group or others may write"), "{e}");

        // A symbolic link (to a folder of ours): refused.
        let link = base.join("link");
        std::os::unix::fs::symlink(&pins, &link).unwrap();
        let e = format!("{:#}", secure_dir(&link).unwrap_err());
        assert!(e.contains("not a folder"), "{e}");

        // Another user's folder: refused. As root, one handed to `nobody`; otherwise
        // root's own /usr (this user is not root).
        // SAFETY: geteuid has no preconditions.
        let foreign = if unsafe { libc::geteuid() } == 0 {
            let f = base.join("foreign");
            std::fs::create_dir(&f).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&f, Some(65_534), Some(65_534)).unwrap();
            f
        } else {
            PathBuf::from("/usr")
        };
        let e = format!("{:#}", secure_dir(&foreign).unwrap_err());
        assert!(e.contains("belongs to uid"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
