//! The test guest boots on real KVM, prints over the MMIO console, and exits cleanly; faults
//! and malformed images are reported, not crashed on.

mod common;

use colo_runtime::vmm::guest::counter_cmdline;
use colo_runtime::vmm::vstate::thread::VcpuStop;
use colo_runtime::{ConsoleOutput, Machine, MachineConfig, MachineError};
use std::time::Duration;

#[test]
fn guest_boots_prints_and_exits() {
    if !common::kvm_available("guest_boots_prints_and_exits") {
        return;
    }
    let (mut machine, capture) = common::guest_machine(64, &counter_cmdline(16, 50, 10, 0));
    machine.resume();
    let stop = machine.wait_for_stop(Duration::from_secs(20));
    let text = capture.text();
    assert_eq!(stop, Some((0, VcpuStop::GuestExit(0))), "console:\n{text}");
    assert!(
        text.starts_with("colo-guest: counter workload, pages 16, steps 50"),
        "console:\n{text}"
    );
    assert_eq!(
        common::steps(&text),
        vec![10, 20, 30, 40, 50],
        "console:\n{text}"
    );
    assert!(
        text.ends_with("colo-guest: done after 50 steps\n"),
        "console:\n{text}"
    );
}

#[test]
fn guest_panic_is_reported_as_exit_code() {
    if !common::kvm_available("guest_panic_is_reported_as_exit_code") {
        return;
    }
    // 32 MiB leave room for only 4096 pages above the 16 MiB working-set base.
    let (mut machine, capture) = common::guest_machine(32, &counter_cmdline(5000, 1, 1, 0));
    machine.resume();
    let stop = machine.wait_for_stop(Duration::from_secs(20));
    let text = capture.text();
    assert_eq!(
        stop,
        Some((0, VcpuStop::GuestExit(0xdead))),
        "console:\n{text}"
    );
    assert!(
        text.contains("PANIC") && text.contains("working set of 5000 pages"),
        "console:\n{text}"
    );
}

#[test]
fn too_little_memory_is_refused_before_touching_kvm() {
    let err = Machine::new(
        MachineConfig {
            mem_mib: 8,
            vcpus: 1,
        },
        ConsoleOutput::Null,
    )
    .unwrap_err();
    assert!(
        matches!(err, MachineError::TooLittleMemory { requested: 8, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("too little"), "{err}");
    let err = Machine::new(
        MachineConfig {
            mem_mib: 64,
            vcpus: 0,
        },
        ConsoleOutput::Null,
    )
    .unwrap_err();
    assert!(matches!(err, MachineError::NoVcpus), "{err}");
}

#[test]
fn truncated_image_is_refused_by_the_machine() {
    if !common::kvm_available("truncated_image_is_refused_by_the_machine") {
        return;
    }
    let mut machine = Machine::new(
        MachineConfig {
            mem_mib: 32,
            vcpus: 1,
        },
        ConsoleOutput::Null,
    )
    .unwrap();
    let image = common::guest_image();
    let err = machine
        .load_test_guest(&image[..image.len() / 3], "")
        .unwrap_err();
    assert!(
        err.to_string().contains("not a loadable x86-64 ELF"),
        "{err}"
    );
}

#[test]
fn guest_cpu_fault_is_reported_with_vector_and_rip() {
    if !common::kvm_available("guest_cpu_fault_is_reported_with_vector_and_rip") {
        return;
    }
    let (mut machine, capture) = common::guest_machine(32, "colo.workload=fault");
    machine.resume();
    let stop = machine.wait_for_stop(Duration::from_secs(20));
    let Some((
        0,
        VcpuStop::GuestFault {
            vector,
            error_code,
            rip,
            ..
        },
    )) = stop
    else {
        panic!(
            "expected a #UD report, got {stop:?}; console:\n{}",
            capture.text()
        );
    };
    assert_eq!(
        (vector, error_code),
        (6, 0),
        "#UD has vector 6 and no error code"
    );
    assert!(
        (0x20_0000..0x30_0000).contains(&rip),
        "rip {rip:#x} is not in the guest's text"
    );
}
