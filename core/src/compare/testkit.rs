//! Frame builders for the comparator's tests, property tests, fuzz body, benchmark and demo.
//!
//! They build well-formed Ethernet frames (checksums included) with etherparse's
//! `PacketBuilder`, between two fixed hosts, so every user describes only what matters to the
//! comparator: sequence numbers, flags, payload, and the header fields that must be ignored
//! (TTL, window). Invariant kept: a builder never panics for any input it accepts (payloads
//! are limited to what fits one IP packet).

use crate::packet::tcp_flags;
use etherparse::PacketBuilder;

/// MAC of the protected VM (source of every built frame).
pub const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// MAC of the client.
pub const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
/// IPv4 address of the protected VM.
pub const VM_IP4: [u8; 4] = [10, 0, 0, 2];
/// IPv4 address of the client.
pub const CLIENT_IP4: [u8; 4] = [10, 0, 0, 1];
/// IPv6 address of the protected VM.
pub const VM_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// IPv6 address of the client.
pub const CLIENT_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Largest payload a builder accepts (fits an IPv4 or IPv6 packet).
pub const MAX_PAYLOAD: usize = 60_000;

/// Header fields of a built TCP or UDP frame that do not change the flow's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// 802.1Q VLAN id (0..=4095), if tagged.
    pub vlan: Option<u16>,
    /// IPv6 instead of IPv4.
    pub ipv6: bool,
    /// Source port (the VM's).
    pub src_port: u16,
    /// Destination port (the client's).
    pub dst_port: u16,
    /// IPv4 TTL / IPv6 hop limit (ignored by the comparator).
    pub ttl: u8,
    /// TCP window (ignored by the comparator).
    pub window: u16,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            vlan: None,
            ipv6: false,
            src_port: 80,
            dst_port: 40000,
            ttl: 64,
            window: 65535,
        }
    }
}

fn ip_layer(h: &Headers) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(VM_MAC, CLIENT_MAC);
    match (h.vlan, h.ipv6) {
        (Some(vlan), false) => eth
            .single_vlan(etherparse::VlanId::try_new(vlan & 0x0fff).unwrap_or_default())
            .ipv4(VM_IP4, CLIENT_IP4, h.ttl),
        (Some(vlan), true) => eth
            .single_vlan(etherparse::VlanId::try_new(vlan & 0x0fff).unwrap_or_default())
            .ipv6(VM_IP6, CLIENT_IP6, h.ttl),
        (None, false) => eth.ipv4(VM_IP4, CLIENT_IP4, h.ttl),
        (None, true) => eth.ipv6(VM_IP6, CLIENT_IP6, h.ttl),
    }
}

/// A TCP segment from the VM to the client. `flags` uses [`tcp_flags`]; the ACK number is
/// written only with [`tcp_flags::ACK`].
pub fn tcp(h: &Headers, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
    let mut b = ip_layer(h).tcp(h.src_port, h.dst_port, seq, h.window);
    if flags & tcp_flags::SYN != 0 {
        b = b.syn();
    }
    if flags & tcp_flags::FIN != 0 {
        b = b.fin();
    }
    if flags & tcp_flags::RST != 0 {
        b = b.rst();
    }
    if flags & tcp_flags::PSH != 0 {
        b = b.psh();
    }
    if flags & tcp_flags::ACK != 0 {
        b = b.ack(ack);
    }
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload)
        .expect("writing a bounded TCP frame into a Vec cannot fail");
    frame
}

/// A data segment (ACK and PSH set) on the default flow.
pub fn tcp_data(seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    tcp(
        &Headers::default(),
        seq,
        ack,
        tcp_flags::ACK | tcp_flags::PSH,
        payload,
    )
}

/// A UDP datagram from the VM to the client.
pub fn udp(h: &Headers, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
    let b = ip_layer(h).udp(h.src_port, h.dst_port);
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload)
        .expect("writing a bounded UDP frame into a Vec cannot fail");
    frame
}

/// An ARP frame (EtherType 0x0806) with the given body (not validated: compared whole).
pub fn arp(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + body.len());
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&VM_MAC);
    frame.extend_from_slice(&crate::packet::ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}
