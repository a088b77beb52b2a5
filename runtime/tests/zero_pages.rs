//! Zero pages on the peer link with real KVM guests, a real loopback socket and an
//! authenticated link: the primary's page path (`PeerWriter::send_pages`) marks all-zero pages
//! in the frame's zero map instead of sending them, and the secondary's RAM cache and apply
//! (`RamCache::store`, `apply_checkpoint`) still make the secondary's memory byte-for-byte the
//! primary's, both after a full copy (the initial copy / re-protection, `SyncPages`) and after
//! a checkpoint (`PageBatch`). The secondary starts with junk where the primary has zeros, so a
//! receiver that skipped zero pages instead of writing them would be caught.

mod common;

use colo_core::ids::{Epoch, PageRange, Term};
use colo_core::wire::auth::{Nonces, session};
use colo_core::wire::{FrameDecoder, Limits, LinkSide, Message, PAGE_SIZE};
use colo_runtime::Machine;
use colo_runtime::pair::peer::{PagesSent, PeerWriter, read_frames};
use colo_runtime::vmm::checkpoint::{RamCache, apply_checkpoint};
use colo_runtime::vmm::guest::counter_cmdline;
use colo_runtime::vmm::layout::GUEST_WORKSET_BASE;
use colo_runtime::vmm::memory::DirtyPages;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

const MEM_MIB: u64 = 32;
const WORKSET: u64 = 8;

/// What the secondary's reader reports for each frame.
enum Received {
    /// A page frame stored into the cache: its pages and bulk bytes.
    Pages { pages: u64, bulk: u64 },
    /// The marker the primary sends after a page stream.
    Marker(u64),
    /// The cache refused a frame, or the link ended.
    Failed(String),
}

/// The two ends of an authenticated loopback link: the primary's writer, and a reader thread
/// storing page frames into `cache` as the node loop does.
fn link(cache: Arc<Mutex<RamCache>>) -> (PeerWriter, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    let nonces = Nonces {
        connector: [3; 32],
        acceptor: [4; 32],
    };
    let key = [9u8; 32];
    let writer = PeerWriter::sealed(client, session(&key, LinkSide::Connector, &nonces).send);
    let decoder = FrameDecoder::sealed(
        Limits::default(),
        session(&key, LinkSide::Acceptor, &nonces).receive,
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let closed = read_frames(&mut server, decoder, &mut |message, bulk| {
            let report = match message.pages() {
                Some((ranges, zero)) => match cache.lock().unwrap().store(ranges, zero, bulk) {
                    Ok(()) => Received::Pages {
                        pages: ranges.iter().map(|r| r.count).sum(),
                        bulk: bulk.len() as u64,
                    },
                    Err(e) => Received::Failed(format!("cache refused {message:?}: {e}")),
                },
                None => match message {
                    Message::Ack { seq } => Received::Marker(seq),
                    other => Received::Failed(format!("unexpected {other:?}")),
                },
            };
            tx.send(report).is_ok()
        });
        let _ = tx.send(Received::Failed(format!("link closed: {closed}")));
    });
    (writer, rx)
}

/// Waits for marker `seq`; returns the pages and bulk bytes stored before it.
fn until_marker(rx: &mpsc::Receiver<Received>, seq: u64) -> (u64, u64) {
    let (mut pages, mut bulk) = (0, 0);
    loop {
        match rx
            .recv_timeout(Duration::from_secs(30))
            .expect("reader alive")
        {
            Received::Pages { pages: p, bulk: b } => {
                pages += p;
                bulk += b;
            }
            Received::Marker(m) if m == seq => return (pages, bulk),
            Received::Marker(m) => panic!("marker {m} while waiting for {seq}"),
            Received::Failed(why) => panic!("{why}"),
        }
    }
}

/// Runs the counter guest until its working set has been rewritten a few times, then pauses.
fn run_a_little(machine: &mut Machine) {
    let before = common::guest_step(machine, WORKSET);
    machine.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while common::guest_step(machine, WORKSET) < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    machine.pause();
}

fn page_addr(page: u64) -> GuestAddress {
    GuestAddress(page * PAGE_SIZE)
}

fn page_is_zero(machine: &Machine, page: u64) -> bool {
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    machine
        .memory()
        .read_slice(&mut buf, page_addr(page))
        .unwrap();
    buf.iter().all(|&b| b == 0)
}

#[test]
fn zero_pages_left_off_the_link_still_make_the_secondary_identical() {
    if !common::kvm_available("zero_pages_left_off_the_link_still_make_the_secondary_identical") {
        return;
    }
    let cmdline = counter_cmdline(WORKSET, 0, 1_000_000, 0);
    let (mut primary, _p_out) = common::guest_machine(MEM_MIB, &cmdline);
    let (mut secondary, _s_out) = common::guest_machine(MEM_MIB, &cmdline);
    run_a_little(&mut primary);
    // Junk in the secondary wherever the primary's memory is zero (one page in 16): the
    // zero pages of the copy must overwrite it.
    let pages = primary.mem_bytes() / PAGE_SIZE;
    let junked: Vec<u64> = (0..pages)
        .step_by(16)
        .filter(|&p| page_is_zero(&primary, p))
        .collect();
    assert!(junked.len() > 100, "a mostly empty guest: {}", junked.len());
    for &p in &junked {
        secondary
            .memory()
            .write_slice(&[0x5a; PAGE_SIZE as usize], page_addr(p))
            .unwrap();
    }
    assert_ne!(primary.memory_digest(), secondary.memory_digest());

    let cache = Arc::new(Mutex::new(RamCache::new(primary.mem_bytes())));
    let (mut writer, rx) = link(cache.clone());

    // The full copy (initial copy / re-protection): every page, as SyncPages.
    primary.take_dirty().unwrap();
    let all = DirtyPages::all(primary.memory());
    let sent = writer
        .send_pages(primary.memory(), all.ranges(), |batch, ranges, zero| {
            Message::SyncPages {
                term: Term(1),
                batch,
                ranges,
                zero,
            }
        })
        .expect("full copy sent");
    writer.send(&Message::Ack { seq: 1 }, &[]).unwrap();
    assert_eq!(until_marker(&rx, 1), (sent.pages, sent.bytes));
    let PagesSent {
        pages: copied,
        zero_pages,
        bytes,
        ..
    } = sent;
    assert_eq!(copied, pages);
    assert!(
        zero_pages > 0 && zero_pages < pages,
        "both kinds of page: {zero_pages} zero of {pages}"
    );
    assert_eq!(bytes, (pages - zero_pages) * PAGE_SIZE);
    let state = primary.save_devices().unwrap();
    apply_checkpoint(&mut secondary, &mut cache.lock().unwrap(), &state).expect("apply");
    assert_eq!(
        primary.memory_digest(),
        secondary.memory_digest(),
        "after the full copy"
    );
    for &p in &junked {
        assert!(page_is_zero(&secondary, p), "page {p} still holds junk");
    }

    // A checkpoint: the guest runs on; the VMM zeroes a page that held data (the guest's
    // last working-set page but one) and writes data into a page that was zero; the SVM
    // scribbles on a page of its own (the apply must revert it).
    primary.take_dirty().unwrap();
    run_a_little(&mut primary);
    let zeroed = GUEST_WORKSET_BASE / PAGE_SIZE + WORKSET - 2;
    assert!(!page_is_zero(&primary, zeroed));
    primary
        .memory()
        .write_slice(&[0u8; PAGE_SIZE as usize], page_addr(zeroed))
        .unwrap();
    let filled = junked[junked.len() / 2];
    primary
        .memory()
        .write_slice(b"data in a page that was zero", page_addr(filled))
        .unwrap();
    secondary
        .memory()
        .write_slice(b"svm scribble", page_addr(junked[1]))
        .unwrap();
    let dirty = primary.take_dirty().unwrap();
    let in_dirty = |page: u64| {
        dirty
            .ranges()
            .iter()
            .any(|r: &PageRange| r.first <= page && page < r.end())
    };
    assert!(in_dirty(zeroed) && in_dirty(filled), "{:?}", dirty.ranges());
    let sent = writer
        .send_pages(primary.memory(), dirty.ranges(), |batch, ranges, zero| {
            Message::PageBatch {
                epoch: Epoch(2),
                batch,
                ranges,
                zero,
            }
        })
        .expect("checkpoint pages sent");
    writer.send(&Message::Ack { seq: 2 }, &[]).unwrap();
    assert_eq!(until_marker(&rx, 2), (sent.pages, sent.bytes));
    assert!(
        sent.zero_pages >= 1 && sent.zero_pages < sent.pages,
        "the zeroed page travels as a zero page: {sent:?}"
    );
    assert_eq!(sent.bytes, (sent.pages - sent.zero_pages) * PAGE_SIZE);
    let state = primary.save_devices().unwrap();
    apply_checkpoint(&mut secondary, &mut cache.lock().unwrap(), &state).expect("apply");
    assert_eq!(
        primary.memory_digest(),
        secondary.memory_digest(),
        "after the checkpoint"
    );
    assert!(page_is_zero(&secondary, zeroed));
    writer.close();
}
