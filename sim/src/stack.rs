//! `NetStack`: one smoltcp TCP/IP stack on a queue-backed Ethernet device, driven by the
//! simulation's clock. Guests, clients and the upstream server each own one.
//!
//! Invariant kept: the stack never reads a clock or an entropy source of its own. Time is the
//! caller's `colo_core::time::Instant` (converted to smoltcp's microsecond instant, rounding
//! down, so a deadline smoltcp reports is rounded *up* back into simulation time and a wake-up
//! is never early); randomness (TCP initial sequence numbers, ephemeral ports) comes only from
//! `random_seed`, chosen by the owner. The device is two FIFOs: frames the owner hands in and
//! frames smoltcp emitted, drained by the owner (deps-spike.md section 3: this shape ran
//! deterministically under madsim).

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use colo_core::time::Instant;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// The simulated links' MTU (an Ethernet frame of at most 1514 bytes without FCS).
pub const MTU: usize = 1514;

/// Converts simulation time to smoltcp time (microseconds, rounding down).
pub fn to_smol(now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((now.as_nanos() / 1_000) as i64)
}

/// Converts a smoltcp instant to simulation time (never negative).
pub fn from_smol(t: smoltcp::time::Instant) -> Instant {
    Instant::from_nanos(
        u64::try_from(t.total_micros())
            .unwrap_or(0)
            .saturating_mul(1_000),
    )
}

/// An Ethernet device made of two queues.
#[derive(Debug, Default)]
pub struct QueueDevice {
    /// Frames waiting to be read by smoltcp.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames smoltcp transmitted, waiting for the owner.
    pub tx: VecDeque<Vec<u8>>,
}

impl Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MTU;
        caps.medium = Medium::Ethernet;
        caps
    }

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }
}

/// A received frame handed to smoltcp.
#[derive(Debug)]
pub struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// A slot for one frame smoltcp transmits.
#[derive(Debug)]
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

/// A network identity on the simulated LAN (one /24 in the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    /// Ethernet address (must be unicast).
    pub mac: [u8; 6],
    /// IPv4 address.
    pub ip: Ipv4Addr,
}

impl Addr {
    /// `02:00:00:00:00:<n>` (locally administered) and `10.0.0.<n>`.
    pub const fn lan(n: u8) -> Addr {
        Addr {
            mac: [0x02, 0, 0, 0, 0, n],
            ip: Ipv4Addr::new(10, 0, 0, n),
        }
    }
}

/// A smoltcp interface, its socket set and its device.
pub struct NetStack {
    /// The interface (ARP cache, IP state, the PRNG behind ISNs).
    pub iface: Interface,
    /// Every socket of this stack.
    pub sockets: SocketSet<'static>,
    /// The queue device.
    pub device: QueueDevice,
}

impl std::fmt::Debug for NetStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetStack")
            .field("ip_addrs", &self.iface.ip_addrs())
            .field("sockets", &self.sockets.iter().count())
            .field("device", &self.device)
            .finish()
    }
}

impl NetStack {
    /// A stack with address `addr` (prefix /24) whose PRNG starts from `random_seed`.
    pub fn new(addr: Addr, random_seed: u64, now: Instant) -> NetStack {
        let mut device = QueueDevice::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(addr.mac)));
        config.random_seed = random_seed;
        let mut iface = Interface::new(config, &mut device, to_smol(now));
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(addr.ip), 24))
                .expect("a fresh interface has room for one address");
        });
        NetStack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
        }
    }

    /// Queues a frame received from the network (processed at the next `poll`).
    pub fn receive(&mut self, frame: Vec<u8>) {
        self.device.rx.push_back(frame);
    }

    /// Lets smoltcp process received frames, timers and socket buffers at `now`.
    pub fn poll(&mut self, now: Instant) {
        self.iface
            .poll(to_smol(now), &mut self.device, &mut self.sockets);
    }

    /// The next frame smoltcp transmitted.
    pub fn pop_transmit(&mut self) -> Option<Vec<u8>> {
        self.device.tx.pop_front()
    }

    /// When smoltcp next needs a `poll` (rounded up to simulation time), if ever.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface
            .poll_at(to_smol(now), &self.sockets)
            .map(|t| from_smol(t).max(now))
    }
}
