//! The loaded data plane under test: BPF_PROG_TEST_RUN helpers and a policy loaded through
//! the real compiler and map writer.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use std::time::Duration;

/// XDP return codes (uapi `enum xdp_action`).
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// Runs `frame` through `prog` once and returns the XDP action.
pub fn run_xdp(prog: &mut Xdp, frame: &[u8]) -> Result<u32> {
    Ok(run_xdp_repeat(prog, frame, 1)?.0)
}

/// Runs `frame` through `prog` `repeat` times in the kernel; returns the action and the
/// kernel-measured mean time per run.
pub fn run_xdp_repeat(prog: &mut Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration))
}

/// Parses `host` as `connector:NAME` or `device:NAME`.
pub fn parse_host(host: &str) -> Result<policy_compiler::Host> {
    match host.split_once(':') {
        Some(("connector", name)) => Ok(policy_compiler::Host::Connector(name.to_string())),
        Some(("device", name)) => Ok(policy_compiler::Host::Device(name.to_string())),
        _ => anyhow::bail!("host must be connector:NAME or device:NAME, got {host:?}"),
    }
}

pub use gateway_user::writer::unix_now;

/// The data-plane configuration of a host of this kind, with default tuning.
pub fn config_for(host: &policy_compiler::Host) -> gateway_common::DataplaneConfig {
    let role = match host {
        policy_compiler::Host::Connector(_) => gateway_common::Role::Connector,
        policy_compiler::Host::Device(_) => gateway_common::Role::Device,
    };
    gateway_common::DataplaneConfig {
        role: role as u8,
        ..gateway_common::DataplaneConfig::DEFAULT
    }
}

/// A policy loaded into a data plane through the real compiler and map writer.
pub struct LoadedPolicy {
    pub policy: policy_compiler::Policy,
    pub view: policy_compiler::HostView,
    pub writer: gateway_user::writer::PolicyWriter,
}

/// Parses `toml`, compiles it for `host` at `now` and applies it to `dp`.
pub fn load_policy(
    dp: &mut gateway_user::Dataplane,
    toml: &str,
    host: &str,
    now: i64,
) -> Result<LoadedPolicy> {
    let parsed = policy_compiler::parse(toml, "test-policy.toml", now).map_err(|diags| {
        anyhow::anyhow!(
            "policy does not parse:\n{}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let host = parse_host(host)?;
    let view = policy_compiler::compile(&parsed.policy, &host, now)?;
    dp.set_config(&config_for(&host))?;
    let mut writer = gateway_user::writer::PolicyWriter::new(
        dp.active_generation()?,
        gateway_user::writer::BootClock::new(),
    );
    writer.apply(&mut dp.policy, &view)?;
    Ok(LoadedPolicy {
        policy: parsed.policy,
        view,
        writer,
    })
}

/// Protected: 198.18.0.0/16 and 2001:db8:1::/48, every port and ICMP as one resource per
/// family; the device `tester` (198.19.0.1 and 2001:db8:ff::1) may reach all of it.
pub const OPEN_LAB: &str = r#"
[[remote_network]]
name = "lab"
cidrs = ["198.18.0.0/16", "2001:db8:1::/48"]
connectors = ["lab-connector"]

[[resource]]
name = "lab-v4"
network = "lab"
address = "198.18.0.0/16"
tcp = "all"
udp = "all"
icmp = true

[[resource]]
name = "lab-v6"
network = "lab"
address = "2001:db8:1::/48"
tcp = "all"
udp = "all"
icmp = true

[[user]]
email = "tester@example.com"

[[device]]
name = "tester-v4"
owner = "tester@example.com"
address = "198.19.0.1"

[[device]]
name = "tester-v6"
owner = "tester@example.com"
address = "2001:db8:ff::1"

[[allow]]
name = "tester-everything"
principals = ["tester@example.com"]
resources = ["lab-v4", "lab-v6"]
"#;

/// TC return codes (tcx): the gateway returns `NEXT` when it has no objection (later
/// programs in the chain still run) and `SHOT` to drop.
pub mod tc_action {
    pub const NEXT: i32 = -1;
    pub const SHOT: i32 = 2;
}

/// Runs `frame` through a TC program once and returns its return code.
pub fn run_tc(prog: &mut aya::programs::SchedClassifier, frame: &[u8]) -> Result<i32> {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN (tc)")?;
    Ok(result.return_value as i32)
}

/// The tunnel interface under test: a TUN device in a namespace of its own, with the data
/// plane's tunnel programs attached at its tcx ingress and egress. BPF_PROG_TEST_RUN cannot
/// run an L3 tc program (it always hands the program an Ethernet frame), so packets go
/// through the real device: [`Tun::ingress`] writes one into the TUN file descriptor, as
/// the tunnel's userspace does with a decrypted packet (the program runs inside the
/// write); [`Tun::egress`] sends one out of the device through a packet socket, as the
/// host's stack does (the program runs inside the send, and a drop fails it).
pub struct Tun {
    /// The TUN file descriptor (non-blocking).
    pub fd: std::os::fd::OwnedFd,
    /// A packet socket bound to nothing, sending on the device.
    tx: std::os::fd::OwnedFd,
    pub ifindex: i32,
    pub name: String,
    /// Whether writes carry the 4-byte packet-information header (flags, protocol): then
    /// any protocol can be claimed for any bytes.
    pub pi: bool,
    // Last: the namespace goes after the device.
    pub ns: crate::netns::NetNs,
}

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens `/dev/net/tun` and creates TUN device `name` in the calling thread's namespace.
pub fn open_tun(name: &str, pi: bool) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let path = c"/dev/net/tun";
    // O_CLOEXEC: a child process another test spawns meanwhile must not keep the device.
    // SAFETY: a valid C string; the returned fd is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
    }
    // SAFETY: `fd` is a fresh descriptor this function owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TUN | if pi { 0 } else { IFF_NO_PI };
    use std::os::fd::AsRawFd as _;
    // SAFETY: TUNSETIFF reads an ifreq we own.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(fd)
}

impl Tun {
    /// A namespace with a TUN device (`pi`: with packet information), up, MTU 9000, IPv6
    /// off on it (no router solicitations of its own leave through the programs), and the
    /// tunnel programs of `dp` attached to it.
    pub fn new(dp: &mut gateway_user::Dataplane, pi: bool) -> Result<Tun> {
        let ns = crate::netns::NetNs::new("ztt")?;
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        let name = crate::netns::unique_name("ztg");
        let (fd, tx, ifindex) = ns.run(|| -> Result<_> {
            use std::os::fd::FromRawFd as _;
            let fd = open_tun(&name, pi)?;
            // SAFETY: plain socket call; the fd is checked.
            let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) };
            if s < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            // SAFETY: a fresh descriptor.
            let tx = unsafe { std::os::fd::OwnedFd::from_raw_fd(s) };
            let c = std::ffi::CString::new(name.clone())?;
            // SAFETY: a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
            Ok((fd, tx, ifindex))
        })??;
        ns.ip(&["link", "set", &name, "mtu", "9000", "up"])?;
        let tun = Tun {
            fd,
            tx,
            ifindex,
            name,
            pi,
            ns,
        };
        let name = tun.name.clone();
        tun.ns.run(|| dp.attach_tun(&name))??;
        Ok(tun)
    }

    /// Writes `packet` into the device as received from the tunnel, claiming `protocol`
    /// (an ethertype) when the device carries packet information.
    pub fn ingress(&self, protocol: u16, packet: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let mut buf = Vec::with_capacity(packet.len() + 4);
        if self.pi {
            buf.extend_from_slice(&[0, 0]);
            buf.extend_from_slice(&protocol.to_be_bytes());
        }
        buf.extend_from_slice(packet);
        // SAFETY: writes from a buffer we own.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("writing into the TUN device");
        }
        Ok(())
    }

    /// Sends `packet` out of the device with `skb->protocol` = `protocol`. `Ok(true)`: the
    /// egress hook let it go (it was queued for the tunnel); `Ok(false)`: it was dropped
    /// there (the send fails with ENOBUFS).
    pub fn egress(&self, protocol: u16, packet: &[u8]) -> Result<bool> {
        Ok(self.egress_read(protocol, packet)?.is_some())
    }

    /// [`Tun::egress`], returning what left the device: `Some(packets)` (as the egress
    /// hook left them: rewritten ones rewritten) when the hook let it go, `None` when it
    /// was dropped there.
    pub fn egress_read(&self, protocol: u16, packet: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = protocol.to_be();
        sa.sll_ifindex = self.ifindex;
        // SAFETY: sends from a buffer we own to an address we own.
        let n = unsafe {
            libc::sendto(
                self.tx.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        let passed = if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(e).context("sending on the TUN device");
            }
            false
        } else {
            true
        };
        let out = self.read_all();
        Ok(passed.then_some(out))
    }

    /// Every packet waiting in the TUN file descriptor (what left through egress), without
    /// packet information.
    pub fn read_all(&self) -> Vec<Vec<u8>> {
        use std::os::fd::AsRawFd as _;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            // SAFETY: reads into a buffer we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let skip = if self.pi { 4 } else { 0 };
            out.push(buf[skip.min(n as usize)..n as usize].to_vec());
        }
        out
    }
}

/// An Ethernet frame's IP packet and its ethertype (after at most two VLAN tags): what a
/// TUN device would carry. `None` for a frame too short for its headers.
pub fn strip_ethernet(frame: &[u8]) -> Option<(u16, &[u8])> {
    let mut off = 12;
    loop {
        let ty = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
        if (ty == 0x8100 || ty == 0x88a8) && off < 20 {
            off += 4;
            continue;
        }
        return Some((ty, &frame[off + 2..]));
    }
}

/// Pins the calling thread to the CPU it runs on, for tests of per-CPU state (the deny
/// cache, the event budgets): BPF_PROG_TEST_RUN and a TUN write run the programs on the
/// caller's CPU, and a thread the scheduler moves between two packets would find another
/// CPU's slots.
pub fn pin_to_current_cpu() -> Result<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    anyhow::ensure!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    let cpu = cpu as usize;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (a CPU number the kernel gave).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    anyhow::ensure!(
        rc == 0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(cpu)
}
