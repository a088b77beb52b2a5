//! Save/restore and incremental checkpoints on real KVM with the test guest: a restored VM
//! continues exactly where the source stopped, and base + incrementals reproduce the source
//! byte for byte.

mod common;

use colo_runtime::vmm::devices::console::OutputCapture;
use colo_runtime::vmm::guest::counter_cmdline;
use colo_runtime::vmm::persist::PersistError;
use colo_runtime::vmm::vstate::thread::VcpuPhase;
use colo_runtime::{Checkpoint, CheckpointKind, ConsoleOutput, Machine, MachineError};
use std::time::Duration;

const PRINT_EVERY: u64 = 2000;

/// Runs the source until it has printed at least `lines` progress lines, then pauses it.
fn run_until_lines(machine: &mut Machine, capture: &OutputCapture, lines: usize) -> Vec<u64> {
    machine.resume();
    let (text, ok) =
        capture.wait_until(Duration::from_secs(20), |t| common::steps(t).len() >= lines);
    assert!(ok, "guest printed too little:\n{text}");
    machine.pause();
    assert_eq!(
        machine.wait_for_stop(Duration::ZERO),
        None,
        "guest stopped:\n{}",
        capture.text()
    );
    common::steps(&capture.text())
}

/// Resumes `machine` until it printed `more` further lines; returns them.
fn continue_lines(machine: &mut Machine, capture: &OutputCapture, more: usize) -> Vec<u64> {
    let before = common::steps(&capture.text()).len();
    machine.resume();
    let (text, ok) = capture.wait_until(Duration::from_secs(20), |t| {
        common::steps(t).len() >= before + more
    });
    machine.pause();
    assert!(
        ok,
        "restored guest printed too little (stop: {:?}):\n{text}",
        machine.wait_for_stop(Duration::ZERO)
    );
    common::steps(&capture.text())[before..].to_vec()
}

#[test]
fn restored_vm_continues_the_counter_in_the_same_process() {
    if !common::kvm_available("restored_vm_continues_the_counter_in_the_same_process") {
        return;
    }
    let (mut source, source_out) =
        common::guest_machine(64, &counter_cmdline(32, 0, PRINT_EVERY, 0));
    let printed = run_until_lines(&mut source, &source_out, 3);
    let last = *printed.last().unwrap();
    let (checkpoint, _) = source.capture(CheckpointKind::Full).unwrap();
    let digest = source.memory_digest();
    drop(source);

    let capture = OutputCapture::new();
    let mut restored =
        Machine::from_checkpoint(&checkpoint, ConsoleOutput::Capture(capture.clone())).unwrap();
    assert_eq!(
        restored.memory_digest(),
        digest,
        "restored memory differs from the source's"
    );
    let next = continue_lines(&mut restored, &capture, 3);
    assert_eq!(
        next,
        vec![
            last + PRINT_EVERY,
            last + 2 * PRINT_EVERY,
            last + 3 * PRINT_EVERY
        ]
    );
    assert!(!capture.text().contains("PANIC"), "{}", capture.text());
}

#[test]
fn base_and_ten_incrementals_reproduce_the_source_exactly() {
    if !common::kvm_available("base_and_ten_incrementals_reproduce_the_source_exactly") {
        return;
    }
    let (mut source, source_out) =
        common::guest_machine(64, &counter_cmdline(64, 0, PRINT_EVERY, 0));
    run_until_lines(&mut source, &source_out, 1);
    let (base, _) = source.capture(CheckpointKind::Full).unwrap();
    let capture = OutputCapture::new();
    let mut target =
        Machine::from_checkpoint(&base, ConsoleOutput::Capture(capture.clone())).unwrap();

    let mut incremental_pages = Vec::new();
    for i in 1..=10u64 {
        common::run_one_full_step(&mut source, 64);
        let (inc, stats) = source.capture(CheckpointKind::Incremental).unwrap();
        assert_eq!(inc.sequence, i);
        assert!(
            stats.pages < base.ranges.iter().map(|r| r.count).sum::<u64>(),
            "incremental carried everything"
        );
        incremental_pages.push(stats.pages);
        // Through the file format, as a real transfer would.
        let inc = Checkpoint::from_bytes(&inc.to_bytes()).unwrap();
        target.apply(&inc).unwrap();
    }
    // The guest rewrites its 64 working-set pages every step: each incremental holds them.
    assert!(
        incremental_pages.iter().all(|&p| p >= 64),
        "incremental sizes {incremental_pages:?}"
    );

    assert_eq!(
        target.memory_digest(),
        source.memory_digest(),
        "memory differs after base + 10 incrementals"
    );
    let a = source.save_devices().unwrap();
    let b = target.save_devices().unwrap();
    for (va, vb) in a.vcpus.iter().zip(&b.vcpus) {
        assert_eq!(
            va.architectural_bytes(),
            vb.architectural_bytes(),
            "vCPU state differs"
        );
        assert_eq!(va.xsave, vb.xsave, "xsave differs");
    }
    assert_eq!(
        a.vm.irqchip_bytes(),
        b.vm.irqchip_bytes(),
        "PIC/IOAPIC state differs"
    );
    assert_eq!(a.console, b.console);
    assert_eq!(a.serial, b.serial);

    // The source's last printed line, then the target continues from there.
    let last = *common::steps(&source_out.text()).last().unwrap();
    let next = continue_lines(&mut target, &capture, 2);
    assert_eq!(next, vec![last + PRINT_EVERY, last + 2 * PRINT_EVERY]);
    assert!(!capture.text().contains("PANIC"), "{}", capture.text());
    assert!(matches!(target.vcpu_phases()[0], VcpuPhase::Paused));
}

#[test]
fn incrementals_out_of_order_are_refused() {
    if !common::kvm_available("incrementals_out_of_order_are_refused") {
        return;
    }
    let (mut source, source_out) =
        common::guest_machine(64, &counter_cmdline(8, 0, PRINT_EVERY, 0));
    assert!(matches!(
        source.capture(CheckpointKind::Incremental),
        Err(MachineError::Persist(_))
    ));
    run_until_lines(&mut source, &source_out, 1);
    let (base, _) = source.capture(CheckpointKind::Full).unwrap();
    let (_first, _) = source.capture(CheckpointKind::Incremental).unwrap();
    let (second, _) = source.capture(CheckpointKind::Incremental).unwrap();
    let mut target = Machine::from_checkpoint(&base, ConsoleOutput::Null).unwrap();
    let err = target.apply(&second).unwrap_err();
    assert!(err.to_string().contains("cannot follow"), "{err}");
    // Nothing can be captured or applied while running.
    target.resume();
    assert!(matches!(
        target.capture(CheckpointKind::Full),
        Err(MachineError::NotPaused)
    ));
    target.pause();
}

#[test]
fn state_file_errors_are_clear() {
    if !common::kvm_available("state_file_errors_are_clear") {
        return;
    }
    let (mut source, _out) = common::guest_machine(32, &counter_cmdline(4, 0, PRINT_EVERY, 0));
    let (checkpoint, _) = source.capture(CheckpointKind::Full).unwrap();
    let bytes = checkpoint.to_bytes();
    assert!(Checkpoint::from_bytes(&bytes).is_ok());

    let mut corrupt = bytes.clone();
    corrupt[bytes.len() / 2] ^= 0x40;
    assert!(matches!(
        Checkpoint::from_bytes(&corrupt),
        Err(PersistError::Corrupt { .. })
    ));

    let mut future = bytes.clone();
    future[8..12].copy_from_slice(&99u32.to_le_bytes());
    let err = Checkpoint::from_bytes(&future).unwrap_err();
    assert!(
        matches!(
            err,
            PersistError::VersionMismatch {
                found: 99,
                supported: colo_runtime::vmm::persist::STATE_VERSION
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("version 99"), "{err}");

    assert!(matches!(
        Checkpoint::from_bytes(&bytes[..bytes.len() - 9]),
        Err(PersistError::Truncated { .. })
    ));
    assert!(matches!(
        Checkpoint::from_bytes(b"ELF or whatever"),
        Err(PersistError::NotAStateFile)
    ));

    let mut other_version = checkpoint.clone();
    other_version.version = 7;
    let err = Machine::from_checkpoint(&other_version, ConsoleOutput::Null).unwrap_err();
    assert!(err.to_string().contains("state version 7"), "{err}");
}

#[test]
fn two_vcpu_machine_pauses_saves_and_restores_every_vcpu() {
    if !common::kvm_available("two_vcpu_machine_pauses_saves_and_restores_every_vcpu") {
        return;
    }
    let capture = OutputCapture::new();
    let config = colo_runtime::MachineConfig {
        mem_mib: 64,
        vcpus: 2,
    };
    let mut source = Machine::new(config, ConsoleOutput::Capture(capture.clone())).unwrap();
    source
        .load_test_guest(
            &common::guest_image(),
            &counter_cmdline(8, 0, PRINT_EVERY, 0),
        )
        .unwrap();
    // The AP waits for INIT/SIPI inside KVM_RUN; pausing must still bring it out.
    let printed = run_until_lines(&mut source, &capture, 2);
    assert_eq!(
        source.vcpu_phases(),
        vec![VcpuPhase::Paused, VcpuPhase::Paused]
    );
    let (checkpoint, _) = source.capture(CheckpointKind::Full).unwrap();
    assert_eq!(checkpoint.devices.vcpus.len(), 2);
    assert_eq!(checkpoint.devices.vcpus[1].index, 1);
    drop(source);

    let out = OutputCapture::new();
    let mut restored =
        Machine::from_checkpoint(&checkpoint, ConsoleOutput::Capture(out.clone())).unwrap();
    let again = restored.save_devices().unwrap();
    for (a, b) in checkpoint.devices.vcpus.iter().zip(&again.vcpus) {
        assert_eq!(
            a.architectural_bytes(),
            b.architectural_bytes(),
            "vCPU {} differs",
            a.index
        );
    }
    let next = continue_lines(&mut restored, &out, 1);
    assert_eq!(next[0], printed.last().unwrap() + PRINT_EVERY);
}

#[test]
fn vmm_writes_into_guest_memory_are_in_the_next_incremental() {
    if !common::kvm_available("vmm_writes_into_guest_memory_are_in_the_next_incremental") {
        return;
    }
    use vm_memory::{Bytes, GuestAddress};
    let (mut source, _out) = common::guest_machine(64, &counter_cmdline(4, 0, PRINT_EVERY, 0));
    let (base, _) = source.capture(CheckpointKind::Full).unwrap();
    // KVM's dirty log never sees this write (it is not a vCPU write): the VMM bitmap must.
    let page = 40 << 8; // 40 MiB, far from anything the guest touches
    source
        .memory()
        .write_slice(b"device DMA", GuestAddress(page * 4096 + 100))
        .unwrap();
    let (inc, _) = source.capture(CheckpointKind::Incremental).unwrap();
    assert!(
        inc.ranges.iter().any(|r| r.first <= page && page < r.end()),
        "page {page:#x} missing from {:?}",
        inc.ranges
    );
    let mut target = Machine::from_checkpoint(&base, ConsoleOutput::Null).unwrap();
    target.apply(&inc).unwrap();
    let mut buf = [0u8; 10];
    target
        .memory()
        .read_slice(&mut buf, GuestAddress(page * 4096 + 100))
        .unwrap();
    assert_eq!(&buf, b"device DMA");
    assert_eq!(target.memory_digest(), source.memory_digest());

    // A checkpoint of another machine shape is refused, and only full ones create a VM.
    let mut other = base.clone();
    other.machine.mem_mib = 128;
    assert!(
        target
            .apply(&other)
            .unwrap_err()
            .to_string()
            .contains("machine")
    );
    assert!(Machine::from_checkpoint(&inc, ConsoleOutput::Null).is_err());
}
