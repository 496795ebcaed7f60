use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use ipnet::{Ipv4Net, Ipv6Net};

/// The stub's configuration. [`Config::new`] fills in the defaults documented on each field.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on, UDP and TCP each (port 0: any free port; see [`crate::Stub::local_addrs`]).
    pub listen: Vec<SocketAddr>,
    /// Upstream resolvers, tried in order for queries that are not answered with a proxy address.
    pub upstreams: Vec<SocketAddr>,
    /// Proxy IPv4 addresses. Default 100.96.0.0/11.
    pub v4_prefix: Ipv4Net,
    /// Proxy IPv6 addresses (a ULA /107 in deployments). No default.
    pub v6_prefix: Ipv6Net,
    /// Where the name -> proxy address pairs are kept across restarts (`None`: memory only).
    pub pool_file: Option<PathBuf>,
    /// TTL of proxy answers. Default 30 s.
    pub ttl: Duration,
    /// Bound on one run of the [`crate::Intent`] hook (and the pool file write). Default 5 s.
    pub prepare_timeout: Duration,
    /// A query for a name prepared longer ago than this runs the hook again. Default 30 s.
    pub reprepare_after: Duration,
    /// How long to wait for one upstream before trying the next. Default 2 s.
    pub upstream_timeout: Duration,
    /// Queries waiting at once (forwarded upstream or for a hook); beyond: SERVFAIL. Default 512.
    pub max_inflight: usize,
    /// Open TCP client connections at once; beyond: the connection is closed. Default 128.
    pub max_tcp_connections: usize,
    /// A TCP client connection idle longer than this is closed. Default 10 s.
    pub tcp_idle_timeout: Duration,
    /// Largest query accepted over TCP, in bytes. Default 4096.
    pub tcp_max_message: usize,
    /// EDNS UDP payload size the stub advertises and honours at most. Default 1232.
    pub edns_payload: u16,
}

impl Config {
    /// A configuration with the defaults.
    pub fn new(listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>, v6_prefix: Ipv6Net) -> Self {
        Self {
            listen,
            upstreams,
            v4_prefix: Ipv4Net::new(Ipv4Addr::new(100, 96, 0, 0), 11).expect("valid prefix"),
            v6_prefix,
            pool_file: None,
            ttl: Duration::from_secs(30),
            prepare_timeout: Duration::from_secs(5),
            reprepare_after: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(2),
            max_inflight: 512,
            max_tcp_connections: 128,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_message: 4096,
            edns_payload: 1232,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.listen.is_empty() {
            bail!("dns stub config: `listen` is empty; give at least one address to listen on");
        }
        if self.upstreams.is_empty() {
            bail!("dns stub config: `upstreams` is empty; give at least one upstream resolver");
        }
        if self.ttl.as_secs() > u64::from(i32::MAX as u32) {
            bail!(
                "dns stub config: `ttl` {:?} is too large (at most 2^31-1 s)",
                self.ttl
            );
        }
        if self.max_inflight == 0 || self.max_tcp_connections == 0 {
            bail!("dns stub config: `max_inflight` and `max_tcp_connections` must be at least 1");
        }
        if self.tcp_max_message < 12 || self.tcp_max_message > usize::from(u16::MAX) {
            bail!(
                "dns stub config: `tcp_max_message` {} must be between 12 and 65535",
                self.tcp_max_message
            );
        }
        if self.edns_payload < 512 {
            bail!(
                "dns stub config: `edns_payload` {} must be at least 512",
                self.edns_payload
            );
        }
        Ok(())
    }
}
