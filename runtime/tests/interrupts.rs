//! Interrupts into a ring-3 guest on real KVM: an irqfd raises an IOAPIC input, the guest's
//! shim wakes from its halt service, and a halted guest saved and restored into a fresh VM
//! keeps its interrupt routing (IOAPIC, LAPIC and mp_state restore); and the PIT's interrupt
//! arrives on IOAPIC pin 2, as the MADT's override IRQ 0 -> GSI 2 says (`vstate::vm` routing).

mod common;

use colo_runtime::vmm::devices::console::OutputCapture;
use colo_runtime::vmm::guest::idle_cmdline;
use colo_runtime::vmm::vstate::thread::VcpuStop;
use colo_runtime::{CheckpointKind, ConsoleOutput, Machine};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

const GSI: u32 = 5;

fn wakes(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("colo-guest: woke "))
        .count()
}

/// Raises the line and waits for the guest to report wake-up number `n`.
fn wake(machine: &mut Machine, line: &EventFd, capture: &OutputCapture, n: usize) {
    line.write(1).unwrap();
    let (text, ok) = capture.wait_until(Duration::from_secs(10), |t| wakes(t) >= n);
    if !ok {
        machine.pause();
        let s = machine.save_devices().unwrap();
        let v = &s.vcpus[0];
        let reg = |o: usize| u32::from_le_bytes(std::array::from_fn(|i| v.lapic.regs[o + i] as u8));
        panic!(
            "no wake-up {n} after raising GSI {GSI}:\n{text}\nstop {:?} rip {:#x} rflags {:#x} cs {:#x} mp {:?} \
             irr1 {:#x} isr1 {:#x} svr {:#x} events {:?}",
            machine.wait_for_stop(Duration::ZERO),
            v.regs.rip,
            v.regs.rflags,
            v.sregs.cs.selector,
            v.mp_state,
            reg(0x210),
            reg(0x110),
            reg(0xf0),
            v.events
        );
    }
}

#[test]
fn irqfd_wakes_the_halted_guest() {
    if !common::kvm_available("irqfd_wakes_the_halted_guest") {
        return;
    }
    let (mut machine, capture) = common::guest_machine(32, &idle_cmdline(GSI, 3));
    let line = machine.irq_line(GSI).unwrap();
    machine.resume();
    let (text, ok) = capture.wait_until(Duration::from_secs(10), |t| {
        t.contains("waiting for interrupts")
    });
    assert!(ok, "{text}");
    for n in 1..=3 {
        wake(&mut machine, &line, &capture, n);
    }
    assert_eq!(
        machine.wait_for_stop(Duration::from_secs(10)),
        Some((0, VcpuStop::GuestExit(0)))
    );
    assert!(
        capture.text().contains("colo-guest: woke 3 interrupts 3"),
        "{}",
        capture.text()
    );
}

#[test]
fn halted_guest_restored_elsewhere_still_receives_interrupts() {
    if !common::kvm_available("halted_guest_restored_elsewhere_still_receives_interrupts") {
        return;
    }
    let (mut source, source_out) = common::guest_machine(32, &idle_cmdline(GSI, 0));
    let line = source.irq_line(GSI).unwrap();
    source.resume();
    let (text, ok) = source_out.wait_until(Duration::from_secs(10), |t| {
        t.contains("waiting for interrupts")
    });
    assert!(ok, "{text}");
    wake(&mut source, &line, &source_out, 1);
    wake(&mut source, &line, &source_out, 2);
    // Let the guest go back into its halt, then pause it there (KVM_RUN is blocked in the
    // kernel: only the kick signal gets it out).
    std::thread::sleep(Duration::from_millis(20));
    source.pause();
    let (checkpoint, _) = source.capture(CheckpointKind::Full).unwrap();
    drop(source);

    let capture = OutputCapture::new();
    let mut restored =
        Machine::from_checkpoint(&checkpoint, ConsoleOutput::Capture(capture.clone())).unwrap();
    let line = restored.irq_line(GSI).unwrap();
    restored.resume();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        wakes(&capture.text()),
        0,
        "restored guest woke without an interrupt: {}",
        capture.text()
    );
    wake(&mut restored, &line, &capture, 1);
    restored.pause();
    assert!(
        capture.text().contains("colo-guest: woke 3 interrupts 3"),
        "{}",
        capture.text()
    );
}

/// Starts the PIT's channel 0 as a 100 Hz rate generator (mode 2) in a paused `machine`, the
/// way KVM_SET_PIT2 loads a guest's programming.
fn start_pit(machine: &mut Machine) {
    let mut state = machine.save_devices().unwrap();
    let ch = &mut state.vm.pit.channels[0];
    ch.count = 11_932; // 1.193182 MHz / 100
    ch.mode = 2;
    ch.gate = 1;
    ch.rw_mode = 3;
    ch.read_state = 3;
    ch.write_state = 3;
    state.vm.pit.flags = 0;
    machine.restore_devices(&state).unwrap();
}

/// Boots the idle guest waiting on IOAPIC input `pin`, starts the PIT, and returns the
/// console text after `window` or once the guest reported 3 wake-ups.
fn idle_on_pin_with_the_pit_running(pin: u32, window: Duration) -> String {
    let (mut machine, capture) = common::guest_machine(32, &idle_cmdline(pin, 0));
    machine.resume();
    let (text, ok) = capture.wait_until(Duration::from_secs(10), |t| {
        t.contains("waiting for interrupts")
    });
    assert!(ok, "{text}");
    machine.pause();
    start_pit(&mut machine);
    machine.resume();
    let (text, _) = capture.wait_until(window, |t| wakes(t) >= 3);
    machine.pause();
    assert_eq!(machine.wait_for_stop(Duration::ZERO), None, "{text}");
    text
}

#[test]
fn the_pit_interrupts_on_ioapic_pin_2_as_the_madt_override_says() {
    if !common::kvm_available("the_pit_interrupts_on_ioapic_pin_2_as_the_madt_override_says") {
        return;
    }
    let text = idle_on_pin_with_the_pit_running(
        colo_runtime::vmm::layout::PIT_GSI,
        Duration::from_secs(10),
    );
    assert!(wakes(&text) >= 3, "no PIT interrupt on pin 2:\n{text}");
    // Pin 0, where KVM's default routing would put the PIT, stays silent for 30 ticks.
    let text = idle_on_pin_with_the_pit_running(0, Duration::from_millis(300));
    assert_eq!(wakes(&text), 0, "the PIT reached pin 0:\n{text}");
}
