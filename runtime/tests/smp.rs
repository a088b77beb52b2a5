//! Several vCPUs on real KVM with the test guest's smp-counter workload: the guest finds its
//! processors in the MADT the loader wrote, starts the AP with INIT + SIPI into its real-mode
//! trampoline, and every vCPU rewrites and checks its own slice of the working set (a page
//! lost or torn on ANY vCPU makes the guest panic). Checked here: both vCPUs progress; a full
//! checkpoint plus incrementals, applied into a second VM, give equal memory at every step
//! and the second VM continues on both vCPUs; the AP's own writes are in the dirty log; and
//! `colo run --vcpus 2` runs the workload to its end through the real binary.

mod common;

use colo_runtime::vmm::devices::console::OutputCapture;
use colo_runtime::vmm::layout::{GUEST_WORKSET_BASE, PAGE_SIZE};
use colo_runtime::vmm::vstate::thread::VcpuPhase;
use colo_runtime::{Checkpoint, CheckpointKind, ConsoleOutput, Machine, MachineConfig};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// Working-set pages per vCPU.
const PAGES: u64 = 16;

fn smp_cmdline(pages: u64, steps: u64, print_every: u64) -> String {
    format!(
        "colo.workload=smp-counter colo.pages={pages} colo.steps={steps} colo.print_every={print_every}"
    )
}

fn smp_machine(vcpus: u8, print_every: u64) -> (Machine, OutputCapture) {
    let capture = OutputCapture::new();
    let mut machine = Machine::new(
        MachineConfig { mem_mib: 64, vcpus },
        ConsoleOutput::Capture(capture.clone()),
    )
    .expect("creating a VM");
    // The guest's TSC rate, so it can report the AP start in microseconds.
    let cmdline = format!(
        "{} colo.tsc_khz={}",
        smp_cmdline(PAGES, 0, print_every),
        machine.tsc_khz().expect("KVM_GET_TSC_KHZ")
    );
    machine
        .load_test_guest(&common::guest_image(), &cmdline)
        .expect("loading the test guest");
    (machine, capture)
}

/// vCPU `cpu`'s step: word 0 of the last page of its working-set slice.
fn cpu_step(machine: &Machine, cpu: u64) -> u64 {
    let gpa = GUEST_WORKSET_BASE + ((cpu + 1) * PAGES - 1) * PAGE_SIZE;
    machine
        .memory()
        .read_obj::<u64>(GuestAddress(gpa))
        .expect("working set inside RAM")
}

fn cpu_steps(machine: &Machine, vcpus: u64) -> Vec<u64> {
    (0..vcpus).map(|cpu| cpu_step(machine, cpu)).collect()
}

/// Resumes `machine` until every one of its `vcpus` vCPUs has completed at least two more
/// steps (so each rewrote its whole slice at least once after the resume), then pauses it.
/// Returns the steps at the pause. Waits on the guest's own progress, never on a sleep.
fn run_until_all_progress(machine: &mut Machine, capture: &OutputCapture, vcpus: u64) -> Vec<u64> {
    let start = cpu_steps(machine, vcpus);
    machine.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cpu_steps(machine, vcpus)
        .iter()
        .zip(&start)
        .any(|(now, before)| *now < before + 2)
    {
        if Instant::now() > deadline || machine.wait_for_stop(Duration::ZERO).is_some() {
            let stop = machine.wait_for_stop(Duration::ZERO);
            machine.pause();
            panic!(
                "not every vCPU progressed from {start:?} (now {:?}, stop {stop:?}):\n{}",
                cpu_steps(machine, vcpus),
                capture.text()
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    machine.pause();
    cpu_steps(machine, vcpus)
}

/// The per-vCPU steps printed on each progress line (`... cpu-steps 500 435`).
fn printed_cpu_steps(text: &str) -> Vec<Vec<u64>> {
    text.lines()
        .filter_map(|l| l.split_once(" cpu-steps "))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|n| n.parse().expect("a step number"))
                .collect()
        })
        .collect()
}

fn assert_healthy(machine: &Machine, capture: &OutputCapture) {
    let text = capture.text();
    assert!(!text.contains("PANIC"), "{text}");
    assert_eq!(machine.wait_for_stop(Duration::ZERO), None, "{text}");
}

#[test]
fn guest_starts_its_ap_from_the_madt_and_both_vcpus_progress() {
    if !common::kvm_available("guest_starts_its_ap_from_the_madt_and_both_vcpus_progress") {
        return;
    }
    let (mut machine, out) = smp_machine(2, 200);
    machine.resume();
    let (text, ok) = out.wait_until(Duration::from_secs(20), |t| printed_cpu_steps(t).len() >= 3);
    let stop = machine.wait_for_stop(Duration::ZERO);
    machine.pause();
    assert!(ok, "too little progress (stop {stop:?}):\n{text}");
    assert!(
        text.contains("MADT APIC ids [0, 1]"),
        "the guest read the MADT:\n{text}"
    );
    assert!(text.contains("2 cpus online"), "{text}");
    eprintln!(
        "{}",
        text.lines().find(|l| l.contains("cpus online")).unwrap()
    );
    let lines = printed_cpu_steps(&text);
    assert!(lines.iter().all(|l| l.len() == 2), "{lines:?}");
    let ap: Vec<u64> = lines.iter().map(|l| l[1]).collect();
    assert!(
        ap.windows(2).all(|w| w[0] <= w[1]) && ap.last() > ap.first(),
        "the AP's counter did not advance: {ap:?}"
    );
    // Memory agrees: both slices hold at least the steps last printed.
    let steps = cpu_steps(&machine, 2);
    assert!(steps[0] >= lines.last().unwrap()[0] && steps[1] >= ap[ap.len() - 1]);
    assert_eq!(
        machine.vcpu_phases(),
        vec![VcpuPhase::Paused, VcpuPhase::Paused]
    );
    assert_healthy(&machine, &out);
}

#[test]
fn full_and_incremental_checkpoints_of_both_vcpus_continue_in_a_second_vm() {
    if !common::kvm_available(
        "full_and_incremental_checkpoints_of_both_vcpus_continue_in_a_second_vm",
    ) {
        return;
    }
    let (mut source, source_out) = smp_machine(2, 1_000_000);
    run_until_all_progress(&mut source, &source_out, 2);
    let (base, _) = source.capture(CheckpointKind::Full).unwrap();
    assert_eq!(base.devices.vcpus.len(), 2);
    let target_out = OutputCapture::new();
    let mut target =
        Machine::from_checkpoint(&base, ConsoleOutput::Capture(target_out.clone())).unwrap();
    assert_eq!(
        target.memory_digest(),
        source.memory_digest(),
        "after the base"
    );

    let ap_slice =
        GUEST_WORKSET_BASE / PAGE_SIZE + PAGES..GUEST_WORKSET_BASE / PAGE_SIZE + 2 * PAGES;
    for i in 1..=5u64 {
        let steps = run_until_all_progress(&mut source, &source_out, 2);
        let (inc, _) = source.capture(CheckpointKind::Incremental).unwrap();
        assert_eq!(inc.sequence, i);
        assert!(
            ap_slice
                .clone()
                .all(|p| inc.ranges.iter().any(|r| (r.first..r.end()).contains(&p))),
            "incremental {i} lacks pages of the AP's slice"
        );
        let inc = Checkpoint::from_bytes(&inc.to_bytes()).unwrap();
        target.apply(&inc).unwrap();
        assert_eq!(
            target.memory_digest(),
            source.memory_digest(),
            "memory differs after incremental {i}"
        );
        assert_eq!(cpu_steps(&target, 2), steps);
        let (a, b) = (
            source.save_devices().unwrap(),
            target.save_devices().unwrap(),
        );
        for (va, vb) in a.vcpus.iter().zip(&b.vcpus) {
            assert_eq!(
                va.architectural_bytes(),
                vb.architectural_bytes(),
                "vCPU {} differs after incremental {i}",
                va.index
            );
        }
    }
    assert_healthy(&source, &source_out);

    // The second VM continues on both vCPUs; each checks its slice (a lost page panics).
    let at_apply = cpu_steps(&target, 2);
    let after = run_until_all_progress(&mut target, &target_out, 2);
    assert!(after[0] >= at_apply[0] + 2 && after[1] >= at_apply[1] + 2);
    assert_healthy(&target, &target_out);
}

#[test]
fn pages_written_only_by_the_ap_are_in_the_dirty_log() {
    if !common::kvm_available("pages_written_only_by_the_ap_are_in_the_dirty_log") {
        return;
    }
    let (mut machine, out) = smp_machine(2, 1_000_000);
    run_until_all_progress(&mut machine, &out, 2);
    machine.take_dirty().unwrap();
    assert!(
        machine.take_dirty().unwrap().ranges().is_empty(),
        "a paused VM writes nothing"
    );
    run_until_all_progress(&mut machine, &out, 2);
    let dirty = machine.take_dirty().unwrap();
    let first = GUEST_WORKSET_BASE / PAGE_SIZE;
    let dirty_in = |pages: std::ops::Range<u64>| {
        pages
            .filter(|p| {
                dirty
                    .ranges()
                    .iter()
                    .any(|r| (r.first..r.end()).contains(p))
            })
            .count() as u64
    };
    // vCPU 1 alone writes pages PAGES..2*PAGES of the working set.
    assert_eq!(dirty_in(first + PAGES..first + 2 * PAGES), PAGES);
    assert_eq!(dirty_in(first..first + PAGES), PAGES);
    assert_healthy(&machine, &out);
}

#[test]
fn colo_run_with_two_vcpus_runs_the_smp_counter_to_its_end() {
    if !common::kvm_available("colo_run_with_two_vcpus_runs_the_smp_counter_to_its_end") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colo"))
        .args([
            "run",
            "--guest",
            &colo_runtime::vmm::guest::test_guest_path()
                .display()
                .to_string(),
            "--memory",
            "64",
            "--vcpus",
            "2",
            "--timeout",
            "60",
            "--cmdline",
            &smp_cmdline(PAGES, 3000, 1000),
        ])
        .output()
        .expect("running colo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("done after 3000 steps on 2 cpus"), "{text}");
    let lines = printed_cpu_steps(&text);
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| l.len() == 2 && l[1] > 0), "{text}");
}

/// `checkpoint` without the pages in `drop` (page frame numbers), ranges split as needed.
fn without_pages(checkpoint: &Checkpoint, drop: std::ops::Range<u64>) -> Checkpoint {
    let mut out = checkpoint.clone();
    out.ranges.clear();
    out.pages.clear();
    let mut offset = 0usize;
    for r in &checkpoint.ranges {
        for p in r.first..r.end() {
            let bytes = &checkpoint.pages[offset..offset + PAGE_SIZE as usize];
            offset += PAGE_SIZE as usize;
            if drop.contains(&p) {
                continue;
            }
            match out.ranges.last_mut() {
                Some(last) if last.end() == p => last.count += 1,
                _ => out
                    .ranges
                    .push(colo_core::ids::PageRange { first: p, count: 1 }),
            }
            out.pages.extend_from_slice(bytes);
        }
    }
    out
}

#[test]
fn a_checkpoint_that_loses_the_aps_pages_makes_the_ap_fail_its_check() {
    if !common::kvm_available("a_checkpoint_that_loses_the_aps_pages_makes_the_ap_fail_its_check") {
        return;
    }
    let (mut source, source_out) = smp_machine(2, 1_000_000);
    run_until_all_progress(&mut source, &source_out, 2);
    let (base, _) = source.capture(CheckpointKind::Full).unwrap();
    let target_out = OutputCapture::new();
    let mut target =
        Machine::from_checkpoint(&base, ConsoleOutput::Capture(target_out.clone())).unwrap();
    run_until_all_progress(&mut source, &source_out, 2);
    let (inc, _) = source.capture(CheckpointKind::Incremental).unwrap();
    let first = GUEST_WORKSET_BASE / PAGE_SIZE;
    target
        .apply(&without_pages(&inc, first + PAGES..first + 2 * PAGES))
        .unwrap();
    assert_ne!(target.memory_digest(), source.memory_digest());
    target.resume();
    let (text, ok) = target_out.wait_until(Duration::from_secs(20), |t| t.contains("PANIC"));
    let stop = target.wait_for_stop(Duration::from_secs(5));
    target.pause();
    assert!(ok, "the AP did not notice its lost pages:\n{text}");
    assert!(
        text.contains("PANIC: panicked at") && text.contains("cpu 1 page"),
        "{text}"
    );
    assert!(
        matches!(
            stop,
            Some((
                1,
                colo_runtime::vmm::vstate::thread::VcpuStop::GuestExit(0xdead)
            ))
        ),
        "{stop:?}"
    );
}

/// The uncompressed Debian cloud kernel (`assets/linux/vmlinux`, extracted from the bzImage by
/// scripts/setup-guest-assets.sh) or `$COLO_LINUX_VMLINUX`; `None` means skip (or fail under
/// COLO_REQUIRE_LINUX_KERNEL=1, where CI must have it).
/// Debian's vmlinux bytes (skipped or required as `common::linux::vmlinux` says).
fn vmlinux(test: &str) -> Option<Vec<u8>> {
    let path = common::linux::vmlinux(test)?;
    Some(std::fs::read(&path).expect("reading the vmlinux"))
}

#[test]
fn linux_takes_its_cpus_and_interrupt_wiring_from_the_madt() {
    let test = "linux_takes_its_cpus_and_interrupt_wiring_from_the_madt";
    if !common::kvm_available(test) {
        return;
    }
    let Some(kernel) = vmlinux(test) else {
        return;
    };
    let capture = OutputCapture::new();
    let mut machine = Machine::new(
        MachineConfig {
            mem_mib: 256,
            vcpus: 2,
        },
        ConsoleOutput::Capture(capture.clone()),
    )
    .unwrap();
    // Early boot only (the emulator is slow, see linux_boot.rs): the ACPI lines come from
    // setup_arch, a few guest seconds in.
    machine
        .load_linux(
            &kernel,
            "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr noxsave clearcpuid=cx16 ignore_loglevel",
            None,
        )
        .unwrap();
    let start = Instant::now();
    machine.resume();
    let (text, ok) = capture.wait_until(Duration::from_secs(120), |t| t.contains("hotplug CPUs"));
    let stop = machine.wait_for_stop(Duration::ZERO);
    machine.pause();
    eprintln!("MADT lines after {:?}", start.elapsed());
    assert!(
        ok,
        "Linux did not get to its CPU count (stop {stop:?}):\n{text}"
    );
    for line in [
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: FACP 0x",
        "ACPI: DSDT 0x",
        "ACPI: APIC 0x",
        "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
        "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 dfl dfl)",
        "ACPI: LAPIC_NMI (acpi_id[0xff] dfl dfl lint[0x1])",
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    assert!(!text.contains("ACPI BIOS Error"), "{text}");
}

#[test]
fn four_vcpus_come_online_one_after_another_and_all_progress() {
    if !common::kvm_available("four_vcpus_come_online_one_after_another_and_all_progress") {
        return;
    }
    let (mut machine, out) = smp_machine(4, 1_000_000);
    let steps = run_until_all_progress(&mut machine, &out, 4);
    let text = out.text();
    assert!(text.contains("MADT APIC ids [0, 1, 2, 3]"), "{text}");
    assert!(text.contains("4 cpus online"), "{text}");
    // Reported for the docs, not asserted (no timing claims in tests).
    eprintln!(
        "{}",
        text.lines().find(|l| l.contains("cpus online")).unwrap()
    );
    assert!(steps.iter().all(|&s| s >= 2), "{steps:?}");
    // The MADT's ids are the ones each vCPU's CPUID and LAPIC report.
    for v in machine.save_devices().unwrap().vcpus {
        let want = u32::from(colo_runtime::vmm::loader::acpi::apic_id(v.index));
        let leaf1 = v
            .cpuid
            .iter()
            .find(|e| e.function == 1)
            .expect("CPUID leaf 1");
        let id_reg: [i8; 4] = v.lapic.regs[0x20..0x24].try_into().unwrap();
        let lapic_id = u32::from_le_bytes(id_reg.map(|b| b as u8)) >> 24;
        assert_eq!(
            (leaf1.ebx >> 24, lapic_id),
            (want, want),
            "vCPU {}",
            v.index
        );
        assert_eq!(want, v.index as u32);
    }
    let before = steps;
    let after = run_until_all_progress(&mut machine, &out, 4);
    assert!(after.iter().zip(&before).all(|(a, b)| a >= &(b + 2)));
    assert_healthy(&machine, &out);
}

#[test]
fn a_two_vcpu_state_file_continues_on_both_vcpus_in_another_process() {
    if !common::kvm_available("a_two_vcpu_state_file_continues_on_both_vcpus_in_another_process") {
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("smp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("smp.state").display().to_string();
    let colo = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_colo"))
            .args(args)
            .output()
            .expect("running colo")
    };
    let first = colo(&[
        "run",
        "--guest",
        &colo_runtime::vmm::guest::test_guest_path()
            .display()
            .to_string(),
        "--memory",
        "64",
        "--vcpus",
        "2",
        "--cmdline",
        &smp_cmdline(PAGES, 0, 2000),
        "--save-after",
        "1000",
        "--state-out",
        &state,
    ]);
    let text = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let saved = printed_cpu_steps(&text);
    let saved = saved.last().expect("the first process printed progress");

    let second = colo(&["restore", "--state", &state, "--timeout", "1.0"]);
    let text = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(
        second.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(!text.contains("PANIC"), "{text}");
    let next = printed_cpu_steps(&text);
    assert!(
        next.len() >= 2,
        "the restored VM printed too little: {text}"
    );
    // CPU 0's lines continue where the saved run's stopped; the AP counts on from its own.
    assert_eq!(next[0][0], saved[0] + 2000, "{saved:?} then {next:?}");
    assert!(next[0][1] >= saved[1], "{saved:?} then {next:?}");
    assert!(next.windows(2).all(|w| w[1][1] > w[0][1]), "{next:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
