//! Hop timestamps of the client's TCP data through a node, for `colo bench --breakdown`: with
//! `COLO_TRACE_HOPS=1` in a node's environment, each point a data-carrying TCP frame passes
//! (client tap, loop, peer link out and in, guest in and out, release to the tap) is recorded
//! with the frame's key (FNV-1a of its TCP payload, the same in both guests' copies of a reply
//! and in the mirrored copy of a request; for a bare ACK its ACK number) and the host's `CLOCK_MONOTONIC`, which every process
//! on the host shares, so the bench can line up one request's hops across processes.
//!
//! Invariant: with the variable unset a hop costs one relaxed load and nothing is recorded or
//! printed. With it set, recording is a short mutex push on the frame's thread; a printer
//! thread writes the records as `hop point=P key=K t_ns=T seq=S ack=A win=W flags=F len=L`
//! lines (the TCP header fields, see [`TcpFields`]) every 50 ms, off the frames'
//! path (a `println!` per hop would itself add microseconds to the measured path).

use colo_core::packet::{Kind, TcpInfo, classify, tcp_flags};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// 0: not read yet, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
/// One record: the point, the frame's key, the time (ns) and its TCP header fields.
type Record = (&'static str, u64, u64, Option<TcpFields>);
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// The TCP header fields of a recorded frame, for the window and retransmission analysis of
/// `colo bench --breakdown` (the windows each guest advertises and the comparator releases,
/// the client's retransmissions and probes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFields {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// The window field, unscaled.
    pub window: u16,
    /// The flag byte.
    pub flags: u8,
    /// Payload length.
    pub len: u32,
}

/// The TCP segment of a frame, as the comparator classifies it (`colo_core::packet`).
fn tcp_info(frame: &[u8]) -> Option<TcpInfo> {
    match classify(frame).ok()?.kind {
        Kind::Tcp(tcp) => Some(tcp),
        _ => None,
    }
}

/// The TCP header fields of a TCP frame.
pub fn tcp_fields(frame: &[u8]) -> Option<TcpFields> {
    let tcp = tcp_info(frame)?;
    Some(TcpFields {
        seq: tcp.seq.0,
        ack: tcp.ack.0,
        window: tcp.window,
        flags: tcp.flags,
        len: u32::try_from(tcp.payload_len()).ok()?,
    })
}

/// FNV-1a, 64 bits.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The host's monotonic clock in nanoseconds (`CLOCK_MONOTONIC`, shared by all processes).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Keys of frames without payload: this bit plus the ACK number (the guests' ACKs of the
/// client's bytes carry the same number in both guests).
pub const ACK_KEY: u64 = 1 << 63;

/// The key of a TCP payload: its FNV-1a without the [`ACK_KEY`] bit.
pub fn payload_key(payload: &[u8]) -> u64 {
    fnv64(payload) & !ACK_KEY
}

/// The key of a frame: [`payload_key`] of its TCP payload, or [`ACK_KEY`] | its ACK number for a TCP
/// segment without payload that carries ACK; `None` for anything else.
pub fn frame_key(frame: &[u8]) -> Option<u64> {
    let tcp = tcp_info(frame)?;
    if tcp.payload_len() > 0 {
        Some(payload_key(&frame[tcp.payload_start..tcp.payload_end]))
    } else {
        (tcp.flags & tcp_flags::ACK != 0).then_some(ACK_KEY | u64::from(tcp.ack.0))
    }
}

/// The TCP payload of a frame, if it carries any.
pub fn tcp_payload(frame: &[u8]) -> Option<&[u8]> {
    let tcp = tcp_info(frame)?;
    (tcp.payload_len() > 0).then(|| &frame[tcp.payload_start..tcp.payload_end])
}

fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var_os("COLO_TRACE_HOPS").is_some_and(|v| v == "1");
            if STATE
                .compare_exchange(
                    0,
                    if on { 2 } else { 1 },
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
                && on
            {
                let _ = std::thread::Builder::new()
                    .name("colo-hops".to_string())
                    .spawn(print_records);
            }
            on
        }
    }
}

fn print_records() {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let records = std::mem::take(&mut *RECORDS.lock());
        for (point, key, t, tcp) in records {
            match tcp {
                Some(f) => println!(
                    "hop point={point} key={key:016x} t_ns={t} seq={} ack={} win={} flags={} len={}",
                    f.seq, f.ack, f.window, f.flags, f.len
                ),
                None => println!("hop point={point} key={key:016x} t_ns={t}"),
            }
        }
    }
}

/// Records that `frame` passed `point`, if tracing is on and it has a key ([`frame_key`]).
pub fn mark(point: &'static str, frame: &[u8]) {
    if !enabled() {
        return;
    }
    if let Some(key) = frame_key(frame) {
        let t = now_ns();
        RECORDS.lock().push((point, key, t, tcp_fields(frame)));
    }
}

/// Records that a step keyed by `key` (not a frame: a checkpoint message of epoch `key`,
/// `timeline.rs`) passed `point`, if tracing is on.
pub fn mark_key(point: &'static str, key: u64) {
    if !enabled() {
        return;
    }
    let t = now_ns();
    RECORDS.lock().push((point, key, t, None));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        let total = (40 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[23] = 6;
        f[34 + 12] = 5 << 4;
        f.extend_from_slice(payload);
        // Ethernet padding after the IP datagram is not payload.
        f.extend_from_slice(&[0; 6]);
        f
    }

    #[test]
    fn the_key_is_the_tcp_payload_without_padding() {
        let f = tcp_frame(b"7 INCR n\n");
        assert_eq!(tcp_payload(&f), Some(&b"7 INCR n\n"[..]));
        assert_eq!(
            tcp_payload(&tcp_frame(b"")),
            None,
            "a bare ACK has no payload"
        );
        assert_eq!(
            frame_key(&tcp_frame(b"7 INCR n\n")),
            Some(fnv64(b"7 INCR n\n"))
        );
    }

    #[test]
    fn a_bare_ack_is_keyed_by_its_ack_number() {
        let mut f = tcp_frame(b"");
        f[34 + 8..34 + 12].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(frame_key(&f), None, "no ACK flag: no key");
        f[34 + 13] = 0x10;
        assert_eq!(frame_key(&f), Some(ACK_KEY | 0x0102_0304));
    }

    #[test]
    fn tcp_fields_read_the_header_and_the_payload_length() {
        let mut f = tcp_frame(b"hello");
        f[34 + 4..34 + 8].copy_from_slice(&7u32.to_be_bytes());
        f[34 + 8..34 + 12].copy_from_slice(&9u32.to_be_bytes());
        f[34 + 13] = 0x18;
        f[34 + 14..34 + 16].copy_from_slice(&512u16.to_be_bytes());
        assert_eq!(
            tcp_fields(&f),
            Some(TcpFields {
                seq: 7,
                ack: 9,
                window: 512,
                flags: 0x18,
                len: 5
            })
        );
        let mut udp = tcp_frame(b"x");
        udp[23] = 17;
        assert_eq!(tcp_fields(&udp), None);
    }

    #[test]
    fn frames_that_are_not_ipv4_tcp_have_no_key() {
        let mut f = tcp_frame(b"x");
        f[23] = 17;
        assert_eq!(tcp_payload(&f), None);
        assert_eq!(tcp_payload(&[0u8; 10]), None);
        let mut arp = tcp_frame(b"x");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(tcp_payload(&arp), None);
    }
}
