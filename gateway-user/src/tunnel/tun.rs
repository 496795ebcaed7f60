//! The TUN device of the userspace backend, and the host configuration around the tunnel
//! (addresses, routes, forwarding, masquerade). Links and routes are set with iproute2
//! (`ip`), nftables with `nft`, as wg-quick does; every failure names the command.

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating when needed) the TUN device `name`: IP packets without a packet-info
/// header, non-blocking. The device is persistent: it outlives the agent, so the pinned
/// programs on it and its routes stay in force while the agent restarts; `detach`
/// removes it.
pub fn open(name: &str) -> Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is longer than 15 characters");
    }
    // SAFETY: a plain open(2) of a constant path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("opening /dev/net/tun (is the tun module available? is this root?)");
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `IfReq` lays out.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "creating TUN device {name} (an interface of another kind with this name \
                 exists?)"
            )
        });
    }
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("making TUN device {name} persistent"));
    }
    Ok(fd)
}

/// Runs `ip` (or `nft`) with `args`; an error carries the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Sets the MTU, brings the link up and gives it exactly `addresses` (host prefixes).
pub fn configure_link(name: &str, mtu: u16, addresses: &[IpAddr]) -> Result<()> {
    ip(&["link", "set", "dev", name, "mtu", &mtu.to_string(), "up"])?;
    let want: Vec<IpNet> = addresses.iter().map(|a| IpNet::from(*a)).collect();
    let have = link_addresses(name)?;
    for a in have.iter().filter(|a| !want.contains(a)) {
        ip(&["address", "del", &a.to_string(), "dev", name])?;
    }
    for a in want.iter().filter(|a| !have.contains(a)) {
        let s = a.to_string();
        let mut args = vec!["address", "add", &s, "dev", name];
        if a.addr().is_ipv6() {
            // No duplicate-address detection on a point-to-point tunnel.
            args.push("nodad");
        }
        ip(&args)?;
    }
    Ok(())
}

/// Global addresses of the link (link-local ones are the kernel's).
fn link_addresses(name: &str) -> Result<Vec<IpNet>> {
    let out = ip(&["-j", "address", "show", "dev", name])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("`ip -j address` output")?;
    let mut addrs = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "link" {
                continue;
            }
            if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64())
                && let Ok(net) = format!("{local}/{len}").parse::<IpNet>()
            {
                addrs.push(net);
            }
        }
    }
    Ok(addrs)
}

/// Makes the routes through the tunnel exactly `want`: each prefix via the tunnel device
/// (device: the protected networks of its connectors; connector: its devices' addresses).
pub fn sync_routes(name: &str, want: &[IpNet]) -> Result<()> {
    let mut have = Vec::new();
    for family in ["-4", "-6"] {
        let out = ip(&[
            "-j", family, "route", "show", "dev", name, "proto", "static",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("`ip -j route` output")?;
        for r in v.as_array().into_iter().flatten() {
            if let Some(dst) = r["dst"].as_str() {
                let net = if dst.contains('/') {
                    dst.parse::<IpNet>().ok()
                } else {
                    dst.parse::<IpAddr>().ok().map(IpNet::from)
                };
                have.extend(net);
            }
        }
    }
    for r in have.iter().filter(|r| !want.contains(r)) {
        ip(&[
            "route",
            "del",
            &r.to_string(),
            "dev",
            name,
            "proto",
            "static",
        ])?;
    }
    for r in want.iter().filter(|r| !have.contains(r)) {
        ip(&[
            "route",
            "replace",
            &r.to_string(),
            "dev",
            name,
            "proto",
            "static",
        ])?;
    }
    Ok(())
}

/// Deletes the (persistent) tunnel device; absent is fine.
pub fn delete_link(name: &str) -> Result<bool> {
    if !link_exists(name) {
        return Ok(false);
    }
    ip(&["link", "del", "dev", name])?;
    Ok(true)
}

/// Whether the calling thread's network namespace has an interface `name`. (Not
/// /sys/class/net: sysfs shows the namespace it was mounted in, which is not the current
/// one for a process that entered a namespace with setns, as `nsenter --net` does.)
pub fn link_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// The nftables table of the connector's masquerade.
pub const NAT_TABLE: &str = "zt_gateway_nat";

/// Connectors: traffic from the tunnel toward resources leaves with the connector's own
/// address (masquerade), so resources need no route back to device addresses. Replaces
/// the table as one nftables transaction.
pub fn install_masquerade(tun: &str) -> Result<()> {
    let script = format!(
        "table inet {NAT_TABLE} {{}}\n\
         delete table inet {NAT_TABLE}\n\
         table inet {NAT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tiifname \"{tun}\" oifname != \"{tun}\" masquerade\n\
         \t}}\n\
         }}\n"
    );
    nft_script(&script).context("installing the connector's masquerade")
}

pub fn remove_masquerade() -> Result<()> {
    nft_script(&format!(
        "table inet {NAT_TABLE} {{}}\ndelete table inet {NAT_TABLE}\n"
    ))
}

fn nft_script(script: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (is nftables installed?)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Connectors forward between the tunnel and the resource links.
pub fn enable_forwarding(v6: bool) -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("enabling IPv4 forwarding (net.ipv4.ip_forward)")?;
    if v6 {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
            .context("enabling IPv6 forwarding (net.ipv6.conf.all.forwarding)")?;
    }
    Ok(())
}
