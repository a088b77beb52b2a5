//! Completeness of a vCPU's and a VM's saved state against real KVM: state a guest OS would
//! program (control and segment registers, FPU/SSE/AVX, debug registers, pending events, MP
//! state, LAPIC with its timer in one-shot and TSC-deadline mode, and every MSR Linux uses:
//! SYSENTER/SYSCALL, PAT, MTRRs, MISC_ENABLE, TSC, TSC_ADJUST, TSC_DEADLINE and KVM's
//! paravirtual MSRs) is written into a paused vCPU through KVM directly, saved with
//! `VcpuState::save`, restored into a vCPU of a second VM, and read back from KVM there.
//! The clock tests check the restore policy of docs/vmm.md ("Clocks"): kvmclock and TSC resume
//! at the saved values, not at the saved values plus the time spent between save and restore.
//!
//! Invariant: every value checked here is read back from the second VM's KVM, never from the
//! saved struct alone.

mod common;

use colo_runtime::vmm::memory::{self, GuestMemory};
use colo_runtime::vmm::vstate::vcpu::{
    self, BootRegs, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, SaveLayout, VcpuState,
};
use colo_runtime::vmm::vstate::vm::KvmVm;
use kvm_bindings::{KVM_MP_STATE_HALTED, KVM_VCPUEVENT_VALID_SHADOW, Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;
use std::time::Duration;

/// One VM with one configured vCPU. Fields drop in order: vCPU, VM, then the memory KVM
/// points at.
struct Rig {
    vcpu: VcpuFd,
    vm: KvmVm,
    _mem: GuestMemory,
    layout: SaveLayout,
}

fn rig(boot: Option<BootRegs>) -> Rig {
    let mem = memory::create(64 << 20).expect("guest memory");
    let vm = KvmVm::new().expect("a KVM VM");
    vm.register_memory(&mem).expect("memslot");
    let vcpu = vm.fd().create_vcpu(0).expect("vCPU");
    vcpu::configure(vm.kvm(), &vcpu, 0, &mem, boot).expect("configure");
    let layout = vcpu::probe_save_layout(vm.kvm(), vm.fd(), &vcpu).expect("save layout");
    Rig {
        vcpu,
        vm,
        _mem: mem,
        layout,
    }
}

fn set_msrs(vcpu: &VcpuFd, entries: &[(u32, u64)]) {
    for &(index, data) in entries {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .expect("one MSR");
        let written = vcpu.set_msrs(&msrs).expect("KVM_SET_MSRS");
        assert_eq!(written, 1, "KVM refused MSR {index:#x} = {data:#x}");
    }
}

fn get_msr(vcpu: &VcpuFd, index: u32) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .expect("one MSR");
    let read = vcpu.get_msrs(&mut msrs).expect("KVM_GET_MSRS");
    assert_eq!(read, 1, "KVM cannot read MSR {index:#x}");
    msrs.as_slice()[0].data
}

fn lapic_reg(lapic: &kvm_bindings::kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| lapic.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(lapic: &mut kvm_bindings::kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as i8;
    }
}

const APIC_TPR: usize = 0x80;
const APIC_SVR: usize = 0xf0;
const APIC_LVTT: usize = 0x320;
const APIC_TMICT: usize = 0x380;
const APIC_TMCCT: usize = 0x390;
const APIC_TDCR: usize = 0x3e0;

/// The MSRs a Linux guest programs, with values KVM accepts: (index, value). Order matters
/// only for the aliases (see the legacy kvmclock pair below).
fn guest_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0x10),                        // SYSENTER_CS
        (0x175, 0xffff_8000_0000_1000),       // SYSENTER_ESP
        (0x176, 0xffff_8000_0000_2000),       // SYSENTER_EIP
        (0xc000_0081, 0x0023_0010_0000_0000), // STAR
        (0xc000_0082, 0xffff_ffff_8100_0000), // LSTAR
        (0xc000_0083, 0xffff_ffff_8100_1000), // CSTAR
        (0xc000_0084, 0x4_7700),              // FMASK
        (0xc000_0102, 0xffff_8880_0000_0000), // KERNEL_GS_BASE
        (0x277, 0x0007_0106_0007_0106),       // PAT with write-combining entries
        (0x2ff, 0xc06),                       // MTRR default type: enabled, fixed enabled, WB
        (0x200, 0x6),                         // MTRR PHYSBASE0: 0, WB
        (0x201, 0xf_c000_0800),               // MTRR PHYSMASK0: 1 GiB, valid
        (0x250, 0x0606_0606_0606_0606),       // MTRR FIX64K_00000
        (0x26f, 0x0505_0505_0505_0505),       // MTRR FIX4K_F8000 (write-protect)
        (0x1a0, 0x1),                         // MISC_ENABLE: fast strings
        (0x3b, 12_345),                       // TSC_ADJUST
        // The legacy kvmclock MSRs alias the new ones in KVM (one per-vCPU system-time and one
        // per-VM wall-clock value): written first, the new ones overwrite them.
        (0x12, 0x1_0000 | 1),              // MSR_KVM_SYSTEM_TIME (legacy)
        (0x11, 0x1_1000),                  // MSR_KVM_WALL_CLOCK (legacy)
        (0x4b56_4d01, 0x2_0000 | 1),       // MSR_KVM_SYSTEM_TIME_NEW, enabled
        (0x4b56_4d00, 0x2_1000),           // MSR_KVM_WALL_CLOCK_NEW
        (0x4b56_4d06, 0xf3),               // MSR_KVM_ASYNC_PF_INT: vector
        (0x4b56_4d02, 0x2_2000 | 0x8 | 1), // MSR_KVM_ASYNC_PF_EN: as interrupt, enabled
        (0x4b56_4d03, 0x2_3000 | 1),       // MSR_KVM_STEAL_TIME, enabled
        (0x4b56_4d04, 0x2_4000 | 1),       // MSR_KVM_PV_EOI_EN, enabled
        (0x4b56_4d05, 1),                  // MSR_KVM_POLL_CONTROL
    ]
}

#[test]
fn probed_msr_list_holds_every_msr_a_linux_guest_programs() {
    if !common::kvm_available("probed_msr_list_holds_every_msr_a_linux_guest_programs") {
        return;
    }
    let r = rig(None);
    let mut wanted: Vec<u32> = guest_msrs().iter().map(|(i, _)| *i).collect();
    wanted.extend([MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE]);
    for index in wanted {
        assert!(
            r.layout.msrs.contains(&index),
            "MSR {index:#x} is not in the probed save list {:x?}",
            r.layout.msrs
        );
    }
    assert!(r.layout.xsave_bytes >= vcpu::LEGACY_XSAVE_BYTES);
}

#[test]
fn a_restored_vcpu_reads_back_every_register_msr_and_lapic_field_written_into_the_source() {
    if !common::kvm_available("a_restored_vcpu_reads_back_every_register_msr_and_lapic_field") {
        return;
    }
    let boot = BootRegs {
        rip: 0x20_0000,
        rsp: 0x8ff0,
        rdi: 1,
        rsi: 2,
        rdx: 3,
        ..Default::default()
    };
    let a = rig(Some(boot));

    // General-purpose and control registers.
    let mut regs = a.vcpu.get_regs().unwrap();
    regs.rax = 0x1111_2222_3333_4444;
    regs.r15 = 0x5555_6666_7777_8888;
    regs.rflags = 0x202;
    a.vcpu.set_regs(&regs).unwrap();
    let mut sregs = a.vcpu.get_sregs().unwrap();
    sregs.cr2 = 0xdead_b000;
    sregs.fs.base = 0x7f00_0000_1000;
    sregs.gs.base = 0xffff_8880_0010_0000;
    a.vcpu.set_sregs(&sregs).unwrap();

    // FPU, SSE and AVX: XCR0 = x87|SSE|AVX, then an xmm register and a ymm upper half.
    let mut xcrs = a.vcpu.get_xcrs().unwrap();
    xcrs.xcrs[0].value = 0x7;
    a.vcpu.set_xcrs(&xcrs).unwrap();
    let mut fpu = a.vcpu.get_fpu().unwrap();
    fpu.fpr[3] = [7; 16];
    fpu.fcw = 0x27f;
    fpu.xmm[5] = [0xa5; 16];
    fpu.mxcsr = 0x1fa0;
    a.vcpu.set_fpu(&fpu).unwrap();
    let mut xsave = a.vcpu.get_xsave().unwrap();
    // XSTATE_BV (byte 512) gets the AVX bit; YMM_Hi128 of ymm2 lives at byte 576 + 2 * 16.
    xsave.region[512 / 4] |= 0x4;
    for w in 0..4 {
        xsave.region[(576 + 2 * 16) / 4 + w] = 0x0bad_f00d + w as u32;
    }
    // SAFETY: a legacy-sized kvm_xsave read from this vCPU; no dynamic xfeatures enabled.
    unsafe { a.vcpu.set_xsave(&xsave) }.unwrap();

    // Debug registers.
    let mut debug = a.vcpu.get_debug_regs().unwrap();
    debug.db = [0x1000, 0x2000, 0x3000, 0x4000];
    debug.dr7 = 0x0000_0455;
    a.vcpu.set_debug_regs(&debug).unwrap();

    // LAPIC: enabled, a TPR, the timer one-shot at divide-by-16 with a long count.
    let mut lapic = a.vcpu.get_lapic().unwrap();
    set_lapic_reg(&mut lapic, APIC_SVR, 0x1ff);
    set_lapic_reg(&mut lapic, APIC_TPR, 0x20);
    set_lapic_reg(&mut lapic, APIC_TDCR, 0x3);
    set_lapic_reg(&mut lapic, APIC_LVTT, 0xec);
    set_lapic_reg(&mut lapic, APIC_TMICT, 0xffff_0000);
    // KVM_SET_LAPIC (re)starts the timer from TMCCT, the remaining count (as KVM_GET_LAPIC
    // reports it), not from TMICT: a fresh count has both equal.
    set_lapic_reg(&mut lapic, APIC_TMCCT, 0xffff_0000);
    a.vcpu.set_lapic(&lapic).unwrap();

    // MSRs, MP state and events last (a halted vCPU in an STI shadow with NMIs masked).
    set_msrs(&a.vcpu, &guest_msrs());
    set_msrs(&a.vcpu, &[(MSR_IA32_TSC, 1 << 40)]);
    let tsc_before_save = get_msr(&a.vcpu, MSR_IA32_TSC);
    let mut mp = a.vcpu.get_mp_state().unwrap();
    mp.mp_state = KVM_MP_STATE_HALTED;
    a.vcpu.set_mp_state(mp).unwrap();
    let mut events = a.vcpu.get_vcpu_events().unwrap();
    events.nmi.masked = 1;
    events.interrupt.shadow = 1;
    events.flags |= KVM_VCPUEVENT_VALID_SHADOW;
    a.vcpu.set_vcpu_events(&events).unwrap();

    let saved = VcpuState::save(0, &a.vcpu, &a.layout).expect("save");
    // The save goes through bincode, as in a state file or a checkpoint frame.
    let cfg = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&saved, cfg).expect("encode");
    let (saved, _): (VcpuState, usize) =
        bincode::serde::decode_from_slice(&bytes, cfg).expect("decode");

    let b = rig(None);
    saved.restore(&b.vcpu).expect("restore into a fresh VM");
    let back = VcpuState::save(0, &b.vcpu, &b.layout).expect("save of the restored vCPU");

    assert_eq!(
        saved.architectural_bytes(),
        back.architectural_bytes(),
        "regs/sregs/FPU/XCRs/debug/MP state differ"
    );
    assert_eq!(back.regs.rax, 0x1111_2222_3333_4444);
    assert_eq!(back.sregs.cr2, 0xdead_b000);
    assert_eq!(back.sregs.gs.base, 0xffff_8880_0010_0000);
    assert_eq!(back.sregs.efer, sregs.efer, "EFER travels in sregs");
    assert_eq!(
        back.sregs.apic_base, sregs.apic_base,
        "APIC_BASE travels in sregs"
    );
    assert_eq!(back.fpu.xmm[5], [0xa5; 16]);
    assert_eq!(back.fpu.fpr[3], [7; 16]);
    assert_eq!(back.xcrs.xcrs[0].value, 0x7);
    assert_eq!(back.xsave, saved.xsave, "xsave area differs");
    assert_eq!(
        back.xsave[(576 + 32) / 4],
        0x0bad_f00d,
        "ymm2 upper half lost"
    );
    assert_eq!(back.debug_regs.db, [0x1000, 0x2000, 0x3000, 0x4000]);
    assert_eq!(back.debug_regs.dr7 & 0xffff, 0x0455);
    assert_eq!(back.mp_state.mp_state, KVM_MP_STATE_HALTED);
    assert_eq!(back.events.nmi.masked, 1);
    assert_eq!(back.events.interrupt.shadow, 1);

    // MSRs, read from KVM on the restored vCPU. The legacy kvmclock pair reads as the new one.
    let expect = |index: u32| -> u64 {
        let alias = match index {
            0x12 => 0x4b56_4d01,
            0x11 => 0x4b56_4d00,
            other => other,
        };
        guest_msrs()
            .iter()
            .find(|(i, _)| *i == alias)
            .map(|(_, v)| *v)
            .expect("listed")
    };
    for (index, _) in guest_msrs() {
        assert_eq!(
            get_msr(&b.vcpu, index),
            expect(index),
            "MSR {index:#x} differs after restore"
        );
    }
    let tsc_saved = saved
        .msrs
        .iter()
        .find(|e| e.index == MSR_IA32_TSC)
        .expect("TSC saved")
        .data;
    assert!(
        tsc_saved >= tsc_before_save,
        "the source's TSC was not saved"
    );
    assert!(
        get_msr(&b.vcpu, MSR_IA32_TSC) >= tsc_saved,
        "TSC went backwards"
    );

    // LAPIC: registers equal, the timer still armed with at most the saved remaining count.
    for reg in [APIC_SVR, APIC_TPR, APIC_TDCR, APIC_LVTT, APIC_TMICT] {
        assert_eq!(
            lapic_reg(&back.lapic, reg),
            lapic_reg(&saved.lapic, reg),
            "LAPIC register {reg:#x} differs"
        );
    }
    let tmcct_saved = lapic_reg(&saved.lapic, APIC_TMCCT);
    let tmcct_back = lapic_reg(&back.lapic, APIC_TMCCT);
    assert!(tmcct_saved > 0, "the source's timer was not running");
    assert!(
        tmcct_back > 0 && tmcct_back <= tmcct_saved,
        "restored timer count {tmcct_back:#x} is not in (0, saved {tmcct_saved:#x}]"
    );
}

#[test]
fn a_tsc_deadline_timer_is_restored_after_the_lapic_and_the_tsc() {
    if !common::kvm_available("a_tsc_deadline_timer_is_restored_after_the_lapic_and_the_tsc") {
        return;
    }
    let a = rig(None);
    let cpuid = a
        .vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
    assert_ne!(
        leaf1.ecx & (1 << 24),
        0,
        "TSC-deadline not advertised in CPUID"
    );

    let mut lapic = a.vcpu.get_lapic().unwrap();
    set_lapic_reg(&mut lapic, APIC_SVR, 0x1ff);
    // LVTT mode bits 18:17 = 0b10: TSC-deadline.
    set_lapic_reg(&mut lapic, APIC_LVTT, (2 << 17) | 0xec);
    a.vcpu.set_lapic(&lapic).unwrap();
    set_msrs(&a.vcpu, &[(MSR_IA32_TSC, 1 << 40)]);
    // Relative to the TSC as read (kvm_pvm ignores the write above: its guests see the
    // host's TSC), about an hour ahead at GHz rates.
    let tsc = get_msr(&a.vcpu, MSR_IA32_TSC);
    let deadline = tsc + 10_000_000_000_000;
    set_msrs(&a.vcpu, &[(MSR_IA32_TSC_DEADLINE, deadline)]);
    assert_eq!(get_msr(&a.vcpu, MSR_IA32_TSC_DEADLINE), deadline);

    let saved = VcpuState::save(0, &a.vcpu, &a.layout).expect("save");
    // A state with the deadline listed before the TSC must still restore it (restore_order).
    let mut reversed = saved.clone();
    reversed.msrs.reverse();
    let b = rig(None);
    reversed.restore(&b.vcpu).expect("restore");
    assert_eq!(
        get_msr(&b.vcpu, MSR_IA32_TSC_DEADLINE),
        deadline,
        "TSC deadline lost"
    );
    let back = b.vcpu.get_lapic().unwrap();
    assert_eq!(lapic_reg(&back, APIC_LVTT), (2 << 17) | 0xec);
    assert!(get_msr(&b.vcpu, MSR_IA32_TSC) >= tsc);
}

#[test]
fn a_saved_xsave_area_shorter_than_the_legacy_one_is_refused() {
    if !common::kvm_available("a_saved_xsave_area_shorter_than_the_legacy_one_is_refused") {
        return;
    }
    let a = rig(None);
    let mut saved = VcpuState::save(0, &a.vcpu, &a.layout).expect("save");
    saved.xsave.truncate(100);
    let err = saved.restore(&a.vcpu).expect_err("a cut xsave area");
    assert!(err.to_string().contains("xsave"), "{err}");
}

/// Whether this host's KVM applies a host-initiated IA32_TSC write. kvm_pvm does not: its
/// guests read the host's TSC (CPL3 code runs natively without a TSC offset), so a written
/// value is accepted and has no effect (measured: three writes of 2^40 and 2^41, the reads
/// continued the host TSC).
fn tsc_writes_take_effect(r: &Rig) -> bool {
    let target = get_msr(&r.vcpu, MSR_IA32_TSC).wrapping_add(1 << 50);
    set_msrs(&r.vcpu, &[(MSR_IA32_TSC, target)]);
    let read = get_msr(&r.vcpu, MSR_IA32_TSC);
    read >= target && read - target < 1 << 40
}

/// The kvmclock of `vm`, read `n` times: every read is at least the one before.
fn assert_monotonic(vm: &KvmVm, n: usize) -> u64 {
    let mut last = vm.clock_ns().expect("KVM_GET_CLOCK");
    for _ in 0..n {
        let now = vm.clock_ns().expect("KVM_GET_CLOCK");
        assert!(now >= last, "kvmclock ran backwards: {last} then {now}");
        last = now;
    }
    last
}

#[test]
fn kvmclock_and_tsc_resume_at_the_saved_values_not_plus_the_time_between_save_and_restore() {
    if !common::kvm_available("kvmclock_and_tsc_resume_at_the_saved_values") {
        return;
    }
    // The target exists first, so its own clock is ahead of the source's: the restore must
    // set it back to the source's (a COLO secondary that ran ahead takes the primary's clock).
    let b = rig(None);
    std::thread::sleep(Duration::from_millis(200));
    let a = rig(None);
    std::thread::sleep(Duration::from_millis(50));
    set_msrs(&a.vcpu, &[(MSR_IA32_TSC, 1 << 40)]);
    let vm_saved = a.vm.save_state().expect("VM state");
    let vcpu_saved = VcpuState::save(0, &a.vcpu, &a.layout).expect("vCPU state");
    let tsc_saved = vcpu_saved
        .msrs
        .iter()
        .find(|e| e.index == MSR_IA32_TSC)
        .unwrap()
        .data;
    assert!(
        b.vm.clock_ns().unwrap() > vm_saved.clock.clock,
        "the target's clock should start ahead"
    );

    let gap = Duration::from_millis(500);
    std::thread::sleep(gap);
    vcpu_saved.restore(&b.vcpu).expect("vCPU restore");
    b.vm.restore_state(&vm_saved).expect("VM restore");

    let clock = b.vm.clock_ns().unwrap();
    let tsc = get_msr(&b.vcpu, MSR_IA32_TSC);
    assert!(
        clock >= vm_saved.clock.clock,
        "kvmclock went back: {clock} < {}",
        vm_saved.clock.clock
    );
    // The policy bound: resuming at the saved value means the restored clock is ahead of it
    // by the ioctl latency, not by the gap slept between save and restore.
    assert!(
        clock - vm_saved.clock.clock < gap.as_nanos() as u64,
        "kvmclock caught up the save-to-restore gap: {} ns ahead",
        clock - vm_saved.clock.clock
    );
    let tsc_khz = u64::from(b.vcpu.get_tsc_khz().expect("KVM_GET_TSC_KHZ"));
    let gap_cycles = gap.as_millis() as u64 * tsc_khz;
    assert!(tsc >= tsc_saved, "TSC went back");
    if tsc_writes_take_effect(&rig(None)) {
        assert!(
            tsc - tsc_saved < gap_cycles,
            "TSC caught up the gap: {} cycles ahead",
            tsc - tsc_saved
        );
    } else {
        // kvm_pvm: the guest TSC is the host's, so it kept running through the gap; the
        // bound cannot hold, monotonicity (checked above and below) still must.
        eprintln!(
            "note: this KVM ignores IA32_TSC writes (kvm_pvm); the TSC ran {} cycles through the gap",
            tsc - tsc_saved
        );
    }
    let last = assert_monotonic(&b.vm, 1000);
    assert!(last >= clock);
    let mut tsc_last = tsc;
    for _ in 0..100 {
        let now = get_msr(&b.vcpu, MSR_IA32_TSC);
        assert!(now >= tsc_last, "TSC ran backwards");
        tsc_last = now;
    }
}

#[test]
fn pics_ioapic_and_pit_programmed_in_the_source_are_read_back_from_a_restored_vm() {
    if !common::kvm_available("pics_ioapic_and_pit_programmed_in_the_source") {
        return;
    }
    use kvm_bindings::{
        KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, kvm_ioapic_state, kvm_irqchip,
        kvm_irqchip__bindgen_ty_1, kvm_pic_state,
    };
    let a = rig(None);
    let fresh = a.vm.save_state().expect("fresh VM state");
    // Master PIC as Linux leaves it (vectors at 0x30, all masked but the cascade), and an
    // IOAPIC with input 4 routed to vector 0x24, edge, unmasked, fixed to APIC 0.
    let pic = kvm_irqchip {
        chip_id: KVM_IRQCHIP_PIC_MASTER,
        chip: kvm_irqchip__bindgen_ty_1 {
            pic: kvm_pic_state {
                imr: 0xfb,
                irq_base: 0x30,
                elcr_mask: 0xf8,
                ..Default::default()
            },
        },
        ..Default::default()
    };
    a.vm.fd().set_irqchip(&pic).expect("PIC");
    let mut ioapic_state = kvm_ioapic_state {
        base_address: 0xfec0_0000,
        ..Default::default()
    };
    ioapic_state.redirtbl[4].bits = 0x24;
    for entry in ioapic_state.redirtbl.iter_mut().skip(5) {
        entry.bits = 1 << 16; // masked
    }
    let ioapic = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        chip: kvm_irqchip__bindgen_ty_1 {
            ioapic: ioapic_state,
        },
        ..Default::default()
    };
    a.vm.fd().set_irqchip(&ioapic).expect("IOAPIC");
    let mut pit = a.vm.fd().get_pit2().expect("PIT");
    pit.channels[0].count = 0x1234;
    pit.channels[0].mode = 2;
    pit.channels[0].rw_mode = 3;
    a.vm.fd().set_pit2(&pit).expect("PIT");

    let saved = a.vm.save_state().expect("VM state");
    assert_ne!(
        saved.irqchip_bytes(),
        fresh.irqchip_bytes(),
        "the programmed state must differ from a fresh VM's"
    );
    let b = rig(None);
    b.vm.restore_state(&saved).expect("restore");
    let back = b.vm.save_state().expect("VM state of the restored VM");
    assert_eq!(
        back.irqchip_bytes(),
        saved.irqchip_bytes(),
        "PIC/IOAPIC differ"
    );
    let ch = back.pit.channels[0];
    assert_eq!(
        (ch.count, ch.mode, ch.rw_mode),
        (0x1234, 2, 3),
        "PIT channel 0"
    );
}
