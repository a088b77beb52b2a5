//! The test guest's disk-writer workload on the virtio-blk device over a raw image file: its
//! writes reach the file, and a checkpoint plus a copy of the image lets another VM continue
//! with the guest's own per-step disk checks passing; a capture with a request in flight is
//! refused. Images live in a temp dir the test creates and removes.

mod common;

use colo_runtime::vmm::devices::console::OutputCapture;
use colo_runtime::vmm::devices::virtio::blk::{BlkCompletion, BlkOp, BlkRequest, BlockBackend};
use colo_runtime::vmm::disk::{ImageBackend, RawImage};
use colo_runtime::vmm::guest::disk_writer_cmdline;
use colo_runtime::vmm::vstate::thread::VcpuStop;
use colo_runtime::{CheckpointKind, ConsoleOutput, Machine};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const SLOTS: u64 = 8;
const DISK: u64 = 1 << 20;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("colo-disk-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn attach(machine: &Machine, path: &Path) {
    let image = RawImage::open(path, DISK).unwrap();
    machine
        .blk()
        .lock()
        .set_backend(Box::new(ImageBackend::new(Arc::new(image))), DISK);
}

/// The step numbers of the disk-writer's progress lines.
fn disk_steps(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("colo-guest: disk step "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Word 0 of each slot in the image: the step that last wrote it.
fn slot_steps(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    (0..SLOTS as usize)
        .map(|s| u64::from_le_bytes(bytes[s * 4096..s * 4096 + 8].try_into().unwrap()))
        .collect()
}

#[test]
fn disk_writer_guest_writes_reach_the_image_file() {
    if !common::kvm_available("disk_writer_guest_writes_reach_the_image_file") {
        return;
    }
    let dir = Scratch::new("file");
    let path = dir.0.join("disk.img");
    let (mut machine, capture) = common::guest_machine(64, &disk_writer_cmdline(SLOTS, 100, 25, 0));
    attach(&machine, &path);
    machine.resume();
    let stop = machine.wait_for_stop(Duration::from_secs(30));
    let text = capture.text();
    assert!(
        matches!(stop, Some((_, VcpuStop::GuestExit(0)))),
        "{stop:?}\n{text}"
    );
    assert_eq!(disk_steps(&text), vec![25, 50, 75, 100], "{text}");
    // Slot s was last written at the largest step <= 100 with step % 8 == s.
    let want: Vec<u64> = (0..SLOTS)
        .map(|s| 100 - (100 % SLOTS + SLOTS - s) % SLOTS)
        .collect();
    assert_eq!(slot_steps(&path), want);
    let stats = machine.blk().lock().stats();
    assert_eq!(stats.writes, 100);
    assert!(stats.reads >= 200, "{stats:?}");
    assert_eq!(stats.io_errors + stats.bad_requests + stats.bad_chains, 0);
}

#[test]
fn a_checkpoint_and_a_copy_of_the_image_let_another_vm_continue_the_disk_writer() {
    if !common::kvm_available(
        "a_checkpoint_and_a_copy_of_the_image_let_another_vm_continue_the_disk_writer",
    ) {
        return;
    }
    let dir = Scratch::new("copy");
    let (a, b) = (dir.0.join("a.img"), dir.0.join("b.img"));
    let (mut source, source_out) = common::guest_machine(64, &disk_writer_cmdline(SLOTS, 0, 50, 0));
    attach(&source, &a);
    source.resume();
    let (_, ok) = source_out.wait_until(Duration::from_secs(30), |t| disk_steps(t).len() >= 2);
    source.pause();
    assert!(ok, "{}", source_out.text());
    let (checkpoint, _) = source.capture(CheckpointKind::Full).unwrap();
    let last = *disk_steps(&source_out.text()).last().unwrap();
    std::fs::copy(&a, &b).unwrap();
    drop(source);

    let capture = OutputCapture::new();
    let mut target =
        Machine::from_checkpoint(&checkpoint, ConsoleOutput::Capture(capture.clone())).unwrap();
    attach(&target, &b);
    target.resume();
    let (text, ok) = capture.wait_until(Duration::from_secs(30), |t| disk_steps(t).len() >= 2);
    target.pause();
    assert!(ok, "{text} {:?}", target.wait_for_stop(Duration::ZERO));
    // The guest checks every slot at each progress line: it continued on the copied disk.
    let next = disk_steps(&text);
    assert!(next[0] > last, "{next:?} after {last}");
    assert!(!text.contains("PANIC"), "{text}");

    // The same checkpoint on an empty disk: the guest's own check catches the missing writes.
    let capture = OutputCapture::new();
    let mut blank =
        Machine::from_checkpoint(&checkpoint, ConsoleOutput::Capture(capture.clone())).unwrap();
    attach(&blank, &dir.0.join("blank.img"));
    blank.resume();
    let stop = blank.wait_for_stop(Duration::from_secs(30));
    assert!(
        !matches!(stop, Some((_, VcpuStop::GuestExit(0))) | None),
        "a guest on a blank disk must fail its check: {stop:?}\n{}",
        capture.text()
    );
}

/// A backend that completes nothing itself: it records each request for the test to complete
/// later through `BlkDevice::complete`, as the pair's node loop does.
struct Deferred(Arc<parking_lot::Mutex<Vec<BlkRequest>>>);

impl BlockBackend for Deferred {
    fn submit(&mut self, request: BlkRequest) -> Option<BlkCompletion> {
        self.0.lock().push(request);
        None
    }
}

#[test]
fn a_capture_with_a_block_request_in_flight_is_refused_until_it_completes() {
    if !common::kvm_available("a_capture_with_a_block_request_in_flight_is_refused") {
        return;
    }
    let (mut machine, capture) = common::guest_machine(64, &disk_writer_cmdline(SLOTS, 0, 50, 0));
    let requests = Arc::new(parking_lot::Mutex::new(Vec::new()));
    machine
        .blk()
        .lock()
        .set_backend(Box::new(Deferred(requests.clone())), DISK);
    machine.resume();
    // The guest posts its first write and spins on the used ring: it stays in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while machine.blk().lock().inflight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no request within 30 s: {}",
            capture.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    machine.pause();
    let err = machine.capture(CheckpointKind::Full).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 virtio-blk request(s) in flight"),
        "{err}"
    );
    // Completing it (a write: no bytes back) makes the capture possible, with nothing in
    // flight in the saved device state.
    let request = requests.lock().remove(0);
    assert!(matches!(request.op, BlkOp::Write { .. }), "{request:?}");
    machine.blk().lock().complete(request.id, Ok(Vec::new()));
    let (checkpoint, _) = machine
        .capture(CheckpointKind::Full)
        .expect("drained capture");
    assert!(checkpoint.devices.blk.iter().all(|b| b.inflight.is_empty()));
}
