//! Tests of the window update after a clamp (`compare::window_update`): when the secondary
//! opens its window after a primary segment left clamped, the client is told at once with a
//! pure ACK built from that segment (valid checksums, its ACK number, no payload), never
//! beyond either guest's edge, never twice for the same edge; a checkpoint announces the
//! primary's window; IPv6 flows get the same.

use super::*;
use crate::packet::checksum::{L4Checksum, ipv4_header_range, verify_ipv4_header, verify_l4};
use crate::packet::tcp_flags::{ACK, PSH};
use crate::packet::{Kind, TcpInfo};

/// A segment from the VM with this ACK number, window field and payload.
fn seg_with(h: Headers, seq: u32, ack: u32, window: u16, payload: &[u8]) -> Vec<u8> {
    let flags = if payload.is_empty() { ACK } else { ACK | PSH };
    testkit::tcp(&Headers { window, ..h }, seq, ack, flags, payload)
}

fn seg(seq: u32, ack: u32, window: u16, payload: &[u8]) -> Vec<u8> {
    seg_with(Headers::default(), seq, ack, window, payload)
}

pub(super) fn updates(out: &[CompareOutput]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|o| match o {
            CompareOutput::WindowUpdate(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// The TCP summary of a built frame, with every checksum verified.
fn checked(frame: &[u8]) -> TcpInfo {
    let classified = crate::packet::classify(frame).expect("an update parses");
    assert_eq!(verify_l4(frame, &classified), L4Checksum::Valid);
    if let Some(r) = ipv4_header_range(frame) {
        assert!(verify_ipv4_header(&frame[r]), "IPv4 header checksum");
    }
    let Kind::Tcp(info) = classified.kind else {
        panic!("a TCP frame")
    };
    info
}

/// Both guests at ACK 1000 with a full buffer, then both acknowledge 2000: the primary's
/// buffer drained (window 30000), the secondary's did not (0), so the primary's ACK leaves
/// clamped to a zero window.
fn clamped_to_zero(h: Headers) -> Comparator {
    let mut c = comparator();
    c.handle_primary(t(0), seg_with(h, 1, 1000, 0, &[]));
    c.handle_secondary(t(0), seg_with(h, 1, 1000, 0, &[]));
    settle(&mut c);
    c.handle_secondary(t(1), seg_with(h, 1, 2000, 0, &[]));
    c.handle_primary(t(1), seg_with(h, 1, 2000, 30000, &[]));
    let out = settle(&mut c);
    let released = releases(&out);
    assert_eq!(released.len(), 1);
    let info = checked(&released[0]);
    assert_eq!(
        (info.ack.0, info.window),
        (2000, 0),
        "clamped to the secondary's zero window"
    );
    assert!(updates(&out).is_empty());
    c
}

#[test]
fn the_secondary_opening_after_a_clamped_zero_window_is_announced_at_once() {
    let mut c = clamped_to_zero(Headers::default());
    c.handle_secondary(t(2), seg(1, 2000, 30000, &[]));
    let out = settle(&mut c);
    assert!(
        releases(&out).is_empty(),
        "the secondary's own update never leaves"
    );
    let sent = updates(&out);
    assert_eq!(sent.len(), 1, "the client is told the window opened");
    let info = checked(&sent[0]);
    assert_eq!((info.ack.0, info.window), (2000, 30000));
    assert_eq!(info.flags, ACK, "a pure ACK");
    assert_eq!(info.payload_len(), 0);
    assert_eq!(info.seq.0, 1, "at the end of what the client has");
    assert_eq!(&sent[0][..12], &seg(1, 2000, 0, &[])[..12], "same MACs");
    assert_eq!(c.stats().window_updates, 1);
    // The same window again tells nothing new.
    c.handle_secondary(t(3), seg(1, 2000, 30000, &[]));
    assert!(updates(&settle(&mut c)).is_empty());
}

#[test]
fn a_partial_opening_announces_the_lower_edge_and_never_passes_the_primary_s() {
    let mut c = clamped_to_zero(Headers::default());
    c.handle_secondary(t(2), seg(1, 2000, 4096, &[]));
    let sent = updates(&settle(&mut c));
    assert_eq!(sent.len(), 1);
    assert_eq!(checked(&sent[0]).window, 4096, "the secondary's edge");
    c.handle_secondary(t(3), seg(1, 2000, 50000, &[]));
    let sent = updates(&settle(&mut c));
    assert_eq!(sent.len(), 1);
    assert_eq!(
        checked(&sent[0]).window,
        30000,
        "the primary's edge bounds it"
    );
    c.handle_secondary(t(4), seg(1, 2000, 60000, &[]));
    assert!(updates(&settle(&mut c)).is_empty());
}

#[test]
fn a_data_segment_released_clamped_leaves_an_update_after_its_payload() {
    let mut c = comparator();
    c.handle_secondary(t(0), seg(100, 700, 0, b"reply"));
    c.handle_primary(t(0), seg(100, 700, 8192, b"reply"));
    let out = settle(&mut c);
    assert_eq!(releases(&out).len(), 1);
    c.handle_secondary(t(1), seg(105, 700, 8192, &[]));
    let sent = updates(&settle(&mut c));
    assert_eq!(sent.len(), 1);
    let info = checked(&sent[0]);
    assert_eq!((info.seq.0, info.ack.0, info.window), (105, 700, 8192));
    assert_eq!(info.payload_len(), 0, "the payload is not sent again");
}

#[test]
fn the_update_follows_the_last_of_many_clamped_releases_and_is_sent_again_rebuilt() {
    // Every reply leaves clamped (the secondary's window is smaller, its edge unmoved) and
    // replaces the kept headers; only the last one's become the update, after its payload.
    let mut c = comparator();
    for i in 0..3u32 {
        let (at, ack) = (100 + 5 * i, 720);
        c.handle_secondary(t(i.into()), seg(at, ack, 1000, b"reply"));
        c.handle_primary(t(i.into()), seg(at, ack, 8192, b"reply"));
        let out = settle(&mut c);
        assert_eq!(releases(&out).len(), 1);
        assert!(updates(&out).is_empty());
    }
    c.handle_secondary(t(5), seg(115, 720, 4000, &[]));
    let sent = updates(&settle(&mut c));
    assert_eq!(sent.len(), 1);
    let info = checked(&sent[0]);
    assert_eq!((info.seq.0, info.ack.0, info.window), (115, 720, 4000));
    // A second opening reuses the pure ACK already built, with the new window.
    c.handle_secondary(t(6), seg(115, 720, 8192, &[]));
    let sent = updates(&settle(&mut c));
    assert_eq!(sent.len(), 1);
    let info = checked(&sent[0]);
    assert_eq!((info.seq.0, info.ack.0, info.window), (115, 720, 8192));
}

#[test]
fn an_unclamped_release_or_a_new_connection_ends_the_debt() {
    let mut c = clamped_to_zero(Headers::default());
    // The primary's next ACK waits for the secondary's, then leaves unclamped.
    c.handle_primary(t(2), seg(1, 3000, 10000, &[]));
    c.handle_secondary(t(2), seg(1, 3000, 20000, &[]));
    let out = settle(&mut c);
    assert_eq!(releases(&out).len(), 1);
    assert!(
        updates(&out).is_empty(),
        "the release itself carried the news"
    );
    c.handle_secondary(t(3), seg(1, 3000, 40000, &[]));
    assert!(updates(&settle(&mut c)).is_empty(), "nothing is owed");
}

#[test]
fn a_primary_segment_alone_never_triggers_an_update() {
    // The secondary opens far, the primary then moves its own edge: its segment carries its
    // own news (released, clamped or not); the comparator adds nothing on a primary frame.
    let mut c = clamped_to_zero(Headers::default());
    c.handle_primary(t(2), seg(1, 2000, 40000, &[]));
    let out = settle(&mut c);
    assert!(updates(&out).is_empty());
    assert!(
        releases(&out).is_empty(),
        "a pure update the secondary has not matched waits"
    );
}

#[test]
fn a_checkpoint_announces_the_primary_s_window_the_client_was_denied() {
    let mut c = clamped_to_zero(Headers::default());
    c.checkpoint_done(t(5));
    let sent = updates(&settle(&mut c));
    assert_eq!(sent.len(), 1, "the secondary is now the primary's copy");
    assert_eq!(checked(&sent[0]).window, 30000);
}

#[test]
fn a_checkpoint_that_flushes_primary_segments_owes_nothing() {
    let mut c = clamped_to_zero(Headers::default());
    // A primary ACK the secondary has not reached waits; the checkpoint releases it as sent.
    c.handle_primary(t(2), seg(1, 2500, 30000, &[]));
    assert!(releases(&settle(&mut c)).is_empty());
    c.checkpoint_done(t(5));
    let out = settle(&mut c);
    assert_eq!(releases(&out).len(), 1);
    assert!(updates(&out).is_empty());
}

#[test]
fn an_ipv6_flow_gets_the_same_update() {
    let h = Headers {
        ipv6: true,
        ..Headers::default()
    };
    let mut c = clamped_to_zero(h);
    c.handle_secondary(t(2), seg_with(h, 1, 2000, 30000, &[]));
    let sent = updates(&settle(&mut c));
    assert_eq!(sent.len(), 1);
    let info = checked(&sent[0]);
    assert_eq!(
        (info.ack.0, info.window, info.payload_len()),
        (2000, 30000, 0)
    );
}
