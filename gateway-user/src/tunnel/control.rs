//! The control channel between a device's agent and a connector's agent, inside the
//! tunnel: small messages in IPv4/UDP packets to or from [`CONTROL_ADDR`]:[`CONTROL_PORT`],
//! encrypted and authenticated by the peers' WireGuard session like any other packet, and
//! consumed by the tunnel task on receipt: they never reach the tunnel interface, so the
//! programs and the host's stack never see them.
//!
//! * A device sends from its own overlay address to the control address. The connector
//!   accepts it only when the source is one of the sending peer's addresses (cryptokey
//!   routing, as for every packet) and hands it to its agent with the peer's name.
//! * A connector answers from the control address to the device's overlay address; the
//!   device accepts control packets from its connector peers only.
//!
//! The agents' messages are JSON (`agent/names.rs`).

use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr};

/// The address control packets are sent to (device -> connector) and from (connector ->
/// device). IPv4 link-local: it is on no interface and is never routed.
pub const CONTROL_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
/// The UDP port of the control channel, on both sides.
pub const CONTROL_PORT: u16 = 5353;
/// Largest payload of one control message.
pub const MAX_CONTROL_PAYLOAD: usize = 1200;

/// One control message as it arrived.
#[derive(Clone, Debug)]
pub struct ControlMessage {
    /// The sending peer's name (a device, `service-account/key`, or a connector).
    pub peer: String,
    /// The sender's overlay address (a device's) or [`CONTROL_ADDR`] (a connector's).
    pub from: IpAddr,
    pub payload: Bytes,
}

/// Where a control packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device -> connector: to [`CONTROL_ADDR`].
    ToConnector,
    /// Connector -> device: from [`CONTROL_ADDR`].
    ToDevice,
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for c in chunks {
        let mut it = c.chunks_exact(2);
        for w in &mut it {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = it.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet from `src` to `dst`, both ports [`CONTROL_PORT`], carrying `payload`
/// (at most [`MAX_CONTROL_PAYLOAD`] bytes).
pub fn build(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return None;
    }
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&CONTROL_PORT.to_be_bytes());
    p[22..24].copy_from_slice(&CONTROL_PORT.to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let sum = match checksum(&[&pseudo, &p[20..]]) {
        0 => 0xffff,
        s => s,
    };
    p[26..28].copy_from_slice(&sum.to_be_bytes());
    Some(p)
}

/// The payload of `packet` when it is a whole, unfragmented control packet in `dir`
/// (options-free IPv4, UDP between the control ports, lengths consistent), with its source.
pub fn parse(packet: &[u8], dir: Direction) -> Option<(Ipv4Addr, &[u8])> {
    if packet.len() < 28 || packet[0] != 0x45 || packet[9] != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if total != packet.len() || frag & 0x3fff != 0 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let ours = match dir {
        Direction::ToConnector => dst == CONTROL_ADDR,
        Direction::ToDevice => src == CONTROL_ADDR,
    };
    let sport = u16::from_be_bytes([packet[20], packet[21]]);
    let dport = u16::from_be_bytes([packet[22], packet[23]]);
    let udp_len = usize::from(u16::from_be_bytes([packet[24], packet[25]]));
    if !ours || sport != CONTROL_PORT || dport != CONTROL_PORT || udp_len != total - 20 {
        return None;
    }
    Some((src, &packet[28..]))
}

/// Whether `packet` is addressed to or from the control address at all: such a packet is
/// never written to the tunnel interface, whether or not it parses.
pub fn is_control(packet: &[u8]) -> bool {
    packet.len() >= 20
        && packet[0] >> 4 == 4
        && (packet[12..16] == CONTROL_ADDR.octets() || packet[16..20] == CONTROL_ADDR.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_packet_parses_back_and_checksums_verify() {
        let src = Ipv4Addr::new(100, 64, 0, 2);
        let p = build(src, CONTROL_ADDR, b"{\"id\":1}").expect("fits");
        assert_eq!(checksum(&[&p[..20]]), 0, "IP header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&CONTROL_ADDR.octets());
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0, "UDP checksum");
        assert_eq!(
            parse(&p, Direction::ToConnector),
            Some((src, &b"{\"id\":1}"[..]))
        );
        assert_eq!(parse(&p, Direction::ToDevice), None, "wrong direction");
        assert!(is_control(&p));
    }

    #[test]
    fn anything_else_is_not_a_control_packet() {
        let src = Ipv4Addr::new(100, 64, 0, 2);
        let good = build(src, CONTROL_ADDR, b"x").expect("fits");
        let mut truncated = good.clone();
        truncated.pop();
        assert_eq!(parse(&truncated, Direction::ToConnector), None);
        let mut fragment = good.clone();
        fragment[7] = 1;
        assert_eq!(parse(&fragment, Direction::ToConnector), None);
        let mut port = good.clone();
        port[23] ^= 1;
        assert_eq!(parse(&port, Direction::ToConnector), None);
        let other = build(src, Ipv4Addr::new(198, 18, 0, 1), b"x").expect("fits");
        assert_eq!(parse(&other, Direction::ToConnector), None);
        assert!(!is_control(&other));
        assert!(build(src, CONTROL_ADDR, &[0; MAX_CONTROL_PAYLOAD + 1]).is_none());
    }
}
