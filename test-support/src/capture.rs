//! Packet capture in a test namespace (AF_PACKET, like tcpdump): what crossed a link, for
//! assertions such as "only WireGuard UDP, no cleartext".

use anyhow::{Context as _, Result, bail};
use std::{
    fs::File,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

/// (IP protocol, source port, destination port, holds the marker) of one IPv4/IPv6 frame.
pub type Frame = (u8, u16, u16, bool);

/// Captures every frame on `iface` in namespace `ns` until `stop`, noting which hold
/// `marker` anywhere (a cleartext payload would).
pub fn capture(
    ns: &crate::netns::NetNs,
    iface: &str,
    marker: &'static [u8],
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Vec<Frame>>> {
    let path = format!("/run/netns/{}", ns.name());
    let iface = iface.to_string();
    std::thread::spawn(move || {
        let f = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a valid namespace fd; it affects this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {path}: {}", std::io::Error::last_os_error());
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned here.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(iface.clone())?;
        // SAFETY: a valid NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if idx == 0 {
            bail!("no interface {iface} in {path}");
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = idx as i32;
        // SAFETY: binding to a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!(
                "binding the capture to {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: a receive timeout with a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: recv into a buffer of the length given.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 14 {
                continue;
            }
            let frame = &buf[..n as usize];
            let marked = frame.windows(marker.len()).any(|w| w == marker);
            let (proto, l4) = match u16::from_be_bytes([frame[12], frame[13]]) {
                0x0800 if frame.len() > 23 => (frame[23], 14 + usize::from(frame[14] & 0x0f) * 4),
                0x86dd if frame.len() > 20 => (frame[20], 54),
                _ => continue,
            };
            let ports = match frame.get(l4..l4 + 4) {
                Some(p) => (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                ),
                None => (0, 0),
            };
            seen.push((proto, ports.0, ports.1, marked));
        }
        Ok(seen)
    })
}
