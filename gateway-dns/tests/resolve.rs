//! The connector's resolver against a loopback upstream: addresses, the TTL clamped to the
//! configured range, NXDOMAIN and a silent upstream as errors, the next upstream tried.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::Upstream;
use gateway_dns::{ResolverConfig, resolve};

#[tokio::test]
async fn names_resolve_with_clamped_ttls_and_failures_are_errors() {
    let up = Upstream::start().await;
    let mut cfg = ResolverConfig::new(vec![up.addr]);
    let r = resolve(&cfg, "db.corp.test.").await.unwrap();
    assert_eq!(r.v4, vec![Ipv4Addr::new(198, 18, 0, 53)]);
    assert!(r.v6.is_empty());
    assert_eq!(
        r.ttl,
        Duration::from_secs(1234),
        "the answer's TTL, inside the range"
    );
    cfg.max_ttl = Duration::from_secs(600);
    assert_eq!(
        resolve(&cfg, "db.corp.test.").await.unwrap().ttl,
        Duration::from_secs(600)
    );
    cfg.min_ttl = Duration::from_secs(2000);
    cfg.max_ttl = Duration::from_secs(3600);
    assert_eq!(
        resolve(&cfg, "db.corp.test.").await.unwrap().ttl,
        Duration::from_secs(2000)
    );

    let e = resolve(&cfg, "nxhost.corp.test.").await.unwrap_err();
    assert!(format!("{e:#}").contains("NXDOMAIN"), "{e:#}");

    // A silent first upstream (a bound socket that never answers): the next one answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = ResolverConfig::new(vec![silent.local_addr().unwrap(), up.addr]);
    cfg.timeout = Duration::from_millis(200);
    let r = resolve(&cfg, "db.corp.test.").await.unwrap();
    assert_eq!(r.v4, vec![Ipv4Addr::new(198, 18, 0, 53)]);
    let only_silent = ResolverConfig {
        upstreams: vec![silent.local_addr().unwrap()],
        ..cfg
    };
    let e = resolve(&only_silent, "db.corp.test.").await.unwrap_err();
    assert!(format!("{e:#}").contains("did not answer"), "{e:#}");
}
