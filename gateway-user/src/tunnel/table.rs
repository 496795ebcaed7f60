//! Cryptokey routing: which peer an address belongs to. Outbound, the destination picks
//! the peer to encrypt for; inbound, a decrypted packet's source must belong to the peer
//! whose key decrypted it.

use ipnet::IpNet;
use std::{collections::HashMap, net::IpAddr};

/// Prefix -> peer slot, longest prefix first. Host prefixes (a connector's thousands of
/// device addresses) are one hash lookup; wider prefixes (a device's few protected
/// networks) a short scan.
#[derive(Debug, Default, Clone)]
pub struct AllowedIps {
    hosts: HashMap<IpAddr, u32>,
    /// Non-host prefixes, longest first.
    nets: Vec<(IpNet, u32)>,
}

impl AllowedIps {
    pub fn insert(&mut self, net: IpNet, slot: u32) {
        let net = net.trunc();
        if net.prefix_len() == net.max_prefix_len() {
            self.hosts.insert(net.addr(), slot);
        } else {
            self.nets.retain(|(n, _)| *n != net);
            self.nets.push((net, slot));
            self.nets
                .sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.0.cmp(&b.0)));
        }
    }

    pub fn remove_slot(&mut self, slot: u32) {
        self.hosts.retain(|_, s| *s != slot);
        self.nets.retain(|(_, s)| *s != slot);
    }

    /// The peer an address routes to. IPv4-mapped IPv6 addresses are not IPv4 addresses
    /// here: they match only IPv6 prefixes.
    pub fn lookup(&self, addr: IpAddr) -> Option<u32> {
        if let Some(s) = self.hosts.get(&addr) {
            return Some(*s);
        }
        self.nets
            .iter()
            .find(|(n, _)| n.contains(&addr))
            .map(|(_, s)| *s)
    }

    pub fn len(&self) -> usize {
        self.hosts.len() + self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn longest_prefix_wins_and_removal_is_complete() {
        let mut t = AllowedIps::default();
        t.insert(net("198.18.0.0/16"), 1);
        t.insert(net("198.18.1.0/24"), 2);
        t.insert(net("100.64.0.10/32"), 3);
        t.insert(net("2001:db8:1::/48"), 1);
        assert_eq!(t.lookup(ip("198.18.1.5")), Some(2));
        assert_eq!(t.lookup(ip("198.18.2.5")), Some(1));
        assert_eq!(t.lookup(ip("100.64.0.10")), Some(3));
        assert_eq!(t.lookup(ip("100.64.0.11")), None);
        assert_eq!(t.lookup(ip("2001:db8:1::5")), Some(1));
        assert_eq!(t.lookup(ip("::ffff:198.18.1.5")), None);
        t.remove_slot(2);
        assert_eq!(t.lookup(ip("198.18.1.5")), Some(1));
        t.remove_slot(1);
        t.remove_slot(3);
        assert!(t.is_empty());
    }
}
