//! What the pinned links are attached to, read from the kernel: for each link pin its
//! interface (by index, from the link itself), whether that interface still exists, the
//! XDP mode the interface reports, and the program ids. Used by `status`, by the agent's
//! stop message, and before attaching (an interface must exist, and its XDP hook must be
//! free or ours).

use super::host_check::{self, Link};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// The hook a link pin stands for, from its file name (`xdp-`, `tc-`, `tcin-`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcxEgress,
    TcxIngress,
}

impl Hook {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::TcxEgress => "tcx-egress",
            Self::TcxIngress => "tcx-ingress",
        }
    }

    /// The hook and interface of a link pin's file name.
    pub fn of_pin(file: &str) -> Option<(Hook, &str)> {
        for (prefix, hook) in [
            ("xdp-", Self::Xdp),
            ("tcin-", Self::TcxIngress),
            ("tc-", Self::TcxEgress),
        ] {
            if let Some(iface) = file.strip_prefix(prefix) {
                return Some((hook, iface));
            }
        }
        None
    }
}

/// What the kernel says about one pinned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub link_id: u32,
    pub prog_id: u32,
    /// The interface the link is attached to; 0 once that interface was deleted (the link
    /// is then defunct: it holds its program but runs it nowhere).
    pub ifindex: u32,
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised buffer at least as large as the union member
    // this command reads; the kernel reads and writes only within the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `bpf(BPF_OBJ_GET)` then `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a link pin. aya's `LinkInfo`
/// does not expose the interface index, which tells a live link from a defunct one.
pub fn link_facts(pin: &Path) -> std::io::Result<LinkFacts> {
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr, BPF_OBJ_GET: { u64 pathname; u32 bpf_fd; u32 file_flags; }
    let mut attr = [0u64; 4];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this new descriptor; it is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: { u32 type; u32 id; u32 prog_id; <pad>; union at 16 } where
    // both `xdp` and `tcx` start with `u32 ifindex`. Room for the whole struct.
    let mut info = [0u32; 64];
    let mut attr = [0u64; 4];
    // BPF_OBJ_GET_INFO_BY_FD: { u32 bpf_fd; u32 info_len; u64 info; }
    let head = [fd.as_raw_fd() as u32, std::mem::size_of_val(&info) as u32];
    attr[0] = u64::from_ne_bytes(bytemuck_pair(head));
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkFacts {
        link_id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}

/// Two `u32`s laid out in memory order, as the bytes of one `u64`.
fn bytemuck_pair(v: [u32; 2]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v[0].to_ne_bytes());
    b[4..].copy_from_slice(&v[1].to_ne_bytes());
    b
}

/// One pinned link and where it runs, as seen from this network namespace.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The pin's file name (`xdp-eth0`).
    pub pin: String,
    pub hook: Option<Hook>,
    pub iface: String,
    pub facts: Option<LinkFacts>,
    pub state: State,
    /// The program's name, when the kernel still has it.
    pub program: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Attached; `mode` is `native`, `generic` or `offload` for XDP, `tcx` for tcx.
    Attached { mode: &'static str },
    /// Attached to an interface with that index, but no interface of that name and index
    /// exists in this network namespace (the agent runs in another one).
    Elsewhere,
    /// The interface was deleted: the link runs nowhere. `detach` removes the pin.
    Gone,
    /// The pin could not be read.
    Unreadable(String),
}

impl Attachment {
    /// Whether its program still sees packets.
    pub fn live(&self) -> bool {
        matches!(self.state, State::Attached { .. } | State::Elsewhere)
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "pin": self.pin,
            "interface": self.iface,
            "state": match self.state {
                State::Attached { .. } => "attached",
                State::Elsewhere => "other_namespace",
                State::Gone => "stale",
                State::Unreadable(_) => "unreadable",
            },
        });
        let o = v.as_object_mut().expect("an object");
        if let Some(h) = self.hook {
            o.insert("hook".into(), json!(h.name()));
        }
        if let State::Attached { mode } = self.state {
            o.insert("mode".into(), json!(mode));
        }
        if let State::Unreadable(e) = &self.state {
            o.insert("error".into(), json!(e));
        }
        if let Some(f) = self.facts {
            o.insert("link_id".into(), json!(f.link_id));
            o.insert("program_id".into(), json!(f.prog_id));
        }
        if let Some(p) = &self.program {
            o.insert("program".into(), json!(p));
        }
        v
    }
}

/// The name of a loaded program, by id.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

/// Every link pin under `<pin_dir>/links`, with where it runs (as seen from this network
/// namespace), sorted by pin name.
pub fn inspect(pin_dir: &Path) -> Vec<Attachment> {
    let dir = pin_dir.join("links");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    // Without the interface list the mode is unknown; a link with an interface index
    // still runs there.
    let here = host_check::links();
    names
        .into_iter()
        .map(|pin| {
            let (hook, iface) = match Hook::of_pin(&pin) {
                Some((h, i)) => (Some(h), i.to_string()),
                None => (None, pin.clone()),
            };
            let facts = link_facts(&dir.join(&pin));
            let state = match (&facts, hook) {
                (Err(e), _) => State::Unreadable(e.to_string()),
                (Ok(f), _) if f.ifindex == 0 => State::Gone,
                (Ok(_), _) if here.is_err() => State::Attached { mode: "unknown" },
                (Ok(f), h) => match here
                    .iter()
                    .flatten()
                    .find(|l| l.name == iface && l.index == f.ifindex)
                {
                    None => State::Elsewhere,
                    Some(l) if h == Some(Hook::Xdp) => State::Attached {
                        mode: l
                            .xdp
                            .iter()
                            .find(|p| p.id == f.prog_id)
                            .map_or("unknown", |p| p.mode),
                    },
                    Some(_) => State::Attached { mode: "tcx" },
                },
            };
            let facts = facts.ok();
            Attachment {
                program: facts.and_then(|f| program_name(f.prog_id)),
                pin,
                hook,
                iface,
                facts,
                state,
            }
        })
        .collect()
}

/// Says on stop what keeps enforcing, from the links as they are now (they may have been
/// unpinned, or their interfaces deleted, while the agent ran).
pub fn stop_message(pin_dir: &Path, generation: u64, local_generation: u32) {
    let all = inspect(pin_dir);
    let (live, dead): (Vec<_>, Vec<_>) = all.iter().partition(|a| a.live());
    let names = |v: &[&Attachment]| {
        v.iter()
            .map(|a| a.pin.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if live.is_empty() {
        tracing::warn!(
            generation,
            local_generation,
            "stopping; no program of this agent is attached any more (no live pinned link): \
             nothing enforces the policy on this host until an agent starts again"
        );
    } else if dead.is_empty() {
        tracing::info!(
            generation,
            local_generation,
            "stopping; programs stay attached and keep enforcing ({}; `gateway-agent detach` \
             removes them)",
            names(&live)
        );
    } else {
        tracing::warn!(
            generation,
            local_generation,
            "stopping; programs stay attached and keep enforcing on {} only; not on {} \
             (`gateway-agent detach` removes them all)",
            names(&live),
            dead.iter()
                .map(|a| match &a.state {
                    State::Gone => format!("{}: interface gone", a.pin),
                    State::Unreadable(e) => format!("{}: unreadable, {e}", a.pin),
                    _ => a.pin.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Before anything is created: every configured interface exists here, and the XDP hook
/// of each XDP interface is free or held by this pin folder's own link.
pub fn check_interfaces(xdp: &[String], tc_egress: &[String], pin_dir: &Path) -> Result<()> {
    let links = host_check::links().map_err(|e| anyhow::anyhow!("listing interfaces: {e}"))?;
    let ours = |pin: String| {
        link_facts(&pin_dir.join("links").join(pin))
            .ok()
            .map(|f| f.prog_id)
    };
    check_against(&links, xdp, tc_egress, |iface| ours(format!("xdp-{iface}")))?;
    // tcx hooks take several programs, and the gateway attaches first in the chain (its
    // drops are final whatever runs after it): others are named, not refused.
    for iface in tc_egress {
        let mine = ours(format!("tc-{iface}"));
        let Ok((_, progs)) =
            aya::programs::SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Egress)
        else {
            continue;
        };
        for p in progs.iter().filter(|p| Some(p.id()) != mine) {
            tracing::info!(
                %iface,
                "tcx egress of {iface} also runs program {} (name {}), not the gateway's: both \
                 run (a new gateway link is attached first in the chain)",
                p.id(),
                p.name_as_str().unwrap_or("unknown")
            );
        }
    }
    Ok(())
}

/// [`check_interfaces`] on a given interface list; `ours(iface)` is the program id of this
/// pin folder's XDP link for `iface`, if it has one.
pub fn check_against(
    links: &[Link],
    xdp: &[String],
    tc_egress: &[String],
    ours: impl Fn(&str) -> Option<u32>,
) -> Result<()> {
    for iface in xdp.iter().chain(tc_egress) {
        if !links.iter().any(|l| l.name == *iface) {
            bail!("interface {iface} not found (ip link shows the names)");
        }
    }
    for iface in xdp {
        let Some(link) = links.iter().find(|l| l.name == *iface) else {
            continue;
        };
        let mine = ours(iface);
        if let Some(p) = link.xdp.iter().find(|p| Some(p.id) != mine) {
            bail!("{}", foreign_xdp_message(iface, p.id));
        }
    }
    Ok(())
}

/// What to say about an XDP program on `iface` that is not this agent's.
pub fn foreign_xdp_message(iface: &str, prog_id: u32) -> String {
    let name = program_name(prog_id).unwrap_or_else(|| "unknown".to_string());
    format!(
        "{iface} already has XDP program {prog_id} (name {name}): detach it (`ip link set dev \
         {iface} xdp off`; a program held by a bpf link goes when its owner removes the link, \
         `bpftool link` lists them) or choose another interface"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::host_check::XdpProgram;

    fn link(name: &str, xdp: &[(&'static str, u32)]) -> Link {
        Link {
            name: name.into(),
            kind: None,
            up: true,
            index: 7,
            xdp: xdp
                .iter()
                .map(|&(mode, id)| XdpProgram { mode, id })
                .collect(),
        }
    }

    fn err(r: Result<()>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn interfaces_must_exist_and_their_xdp_hook_be_free_or_ours() {
        let links = [
            link("eth0", &[]),
            link("cl0", &[("generic", 42)]),
            link("ours0", &[("native", 9)]),
        ];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ours = |iface: &str| (iface == "ours0").then_some(9);
        // Free, and held by this pin folder's own link (a restart re-adopts it).
        check_against(&links, &s(&["eth0", "ours0"]), &s(&["eth0"]), ours).unwrap();
        // Missing, in either list.
        let e = err(check_against(&links, &s(&["eth9"]), &[], ours));
        assert_eq!(e, "interface eth9 not found (ip link shows the names)");
        let e = err(check_against(&links, &[], &s(&["eth8"]), ours));
        assert!(e.starts_with("interface eth8 not found"), "{e}");
        // Another program on the XDP hook, whatever its mode.
        let e = err(check_against(&links, &s(&["cl0"]), &[], ours));
        assert!(
            e.starts_with("cl0 already has XDP program 42 (name "),
            "{e}"
        );
        assert!(e.contains("`ip link set dev cl0 xdp off`"), "{e}");
        assert!(e.ends_with("or choose another interface"), "{e}");
        // A program on ours0 that is not the pinned link's: someone else's.
        let e = err(check_against(&links, &s(&["ours0"]), &[], |_| Some(8)));
        assert!(e.starts_with("ours0 already has XDP program 9"), "{e}");
        // tc egress alone does not care about the XDP hook (tcx takes several programs).
        check_against(&links, &[], &s(&["cl0"]), ours).unwrap();
    }

    #[test]
    fn link_pins_name_their_hook_and_interface() {
        assert_eq!(Hook::of_pin("xdp-eth0"), Some((Hook::Xdp, "eth0")));
        assert_eq!(Hook::of_pin("tc-eth0"), Some((Hook::TcxEgress, "eth0")));
        assert_eq!(Hook::of_pin("tcin-ztg0"), Some((Hook::TcxIngress, "ztg0")));
        assert_eq!(Hook::of_pin("other"), None);
    }
}
