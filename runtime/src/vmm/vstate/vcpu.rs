//! One vCPU's architectural state: boot-time configuration (CPUID, MSRs, long-mode or, for
//! the PVH entry, flat 32-bit protected-mode registers, FPU, LAPIC LINT pins) and the
//! Persist-style `save` / `restore` of everything KVM keeps for it.
//!
//! Invariant: `restore` writes state in the order KVM needs (deps-spike.md pitfalls, as
//! Firecracker and QEMU do): CPUID first (it decides which MSRs and xsave features exist),
//! then mp_state, regs, sregs, fpu, xsave, xcrs, debug registers, LAPIC, MSRs (all must be
//! accepted; IA32_TSC first and IA32_TSC_DEADLINE last, after the LAPIC's LVTT mode, as QEMU's
//! kvm_put_tscdeadline_msr), and vcpu events last (they may carry a pending exception that
//! refers to the registers above). The MSR list and the xsave size are probed once per
//! machine (`SaveLayout`).

use super::{KvmOpError, KvmResultExt};
use crate::vmm::layout;
use crate::vmm::memory::GuestMemory;
use kvm_bindings::Xsave;
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use std::fmt;
use vm_memory::{Bytes, GuestAddress};

/// Errors configuring, saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmOpError),
    /// KVM accepted only part of the MSR list.
    #[error("KVM_SET_MSRS wrote {written} of {expected} MSRs (first refused: {refused:#x})")]
    MsrsRefused {
        /// MSRs written.
        written: usize,
        /// MSRs offered.
        expected: usize,
        /// Index of the first refused MSR.
        refused: u32,
    },
    /// A saved xsave area has the wrong size.
    #[error("saved xsave area has {len} words, fewer than the legacy 1024")]
    BadXsave {
        /// Words in the saved area.
        len: usize,
    },
    /// Writing boot structures into guest memory failed.
    #[error("cannot write the boot {what} at {gpa:#x} into guest memory")]
    BootMemory {
        /// Which structure.
        what: &'static str,
        /// Where.
        gpa: u64,
    },
}

/// The processor mode a loader's entry point expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootMode {
    /// 64-bit long mode, paging on with the VMM's identity map of the first GiB (Linux boot
    /// protocol's 64-bit entry, the test guest).
    #[default]
    Long64,
    /// 32-bit protected mode, paging off, flat 4 GiB code and data segments (the PVH entry,
    /// xen docs misc/pvh.html): `rbx` holds the `hvm_start_info` address.
    Protected32,
}

/// The boot-time register values a loader chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootRegs {
    /// Processor mode at the entry.
    pub mode: BootMode,
    /// PVH: the `hvm_start_info` address (EBX).
    pub rbx: u64,
    /// Entry point.
    pub rip: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// First argument (test guest: command-line address).
    pub rdi: u64,
    /// Second argument (Linux: zero page; test guest: memory size).
    pub rsi: u64,
    /// Third argument (test guest: command-line length).
    pub rdx: u64,
}

// x86 architectural constants (Intel SDM vol. 3A, 2.5 and 4.5).
const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

// MSRs outside KVM_GET_MSR_INDEX_LIST that a guest OS programs and KVM keeps per vCPU: the
// MTRRs (KVM emulates 8 variable pairs and the 11 fixed-range registers; QEMU saves the same
// set in kvm_put_msrs). EFER and IA32_APIC_BASE travel in `kvm_sregs` (QEMU does the same), so
// they are not listed. Each is kept only if the probe below can read it.
const MTRR_MSRS: [u32; 28] = [
    0x200,
    0x201,
    0x202,
    0x203,
    0x204,
    0x205,
    0x206,
    0x207,
    0x208,
    0x209,
    0x20a,
    0x20b,
    0x20c,
    0x20d,
    0x20e,
    0x20f, // IA32_MTRR_PHYSBASE0..PHYSMASK7
    0x250,
    0x258,
    0x259, // FIX64K_00000, FIX16K_80000, FIX16K_A0000
    0x268,
    0x269,
    0x26a,
    0x26b,
    0x26c,
    0x26d,
    0x26e,
    0x26f, // FIX4K_C0000..F8000
    MSR_MTRR_DEF_TYPE,
];
/// IA32_TSC: written first on restore (the TSC deadline is relative to it).
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: written last on restore, after KVM_SET_LAPIC has put LVTT in
/// TSC-deadline mode (KVM drops a deadline written while the timer is in another mode, and
/// reads it back as 0 then; QEMU writes it after the LAPIC for the same reason).
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The MSR indices KVM can both read and write on this host: `KVM_GET_MSR_INDEX_LIST`
/// (which includes KVM's emulated and paravirtual MSRs: kvmclock, async PF, steal time, PV
/// EOI, TSC_ADJUST, TSC_DEADLINE, MISC_ENABLE), the feature MSRs of
/// `KVM_GET_MSR_FEATURE_INDEX_LIST`, and the MTRRs, filtered by probing (KVM_GET_MSRS stops
/// at the first index it cannot read; that index is dropped and the probe repeated, as
/// measured in deps-spike.md section 1). Duplicates are removed, first occurrence kept.
pub fn probe_msr_list(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, KvmOpError> {
    let mut list: Vec<u32> = kvm
        .get_msr_index_list()
        .op("KVM_GET_MSR_INDEX_LIST")?
        .as_slice()
        .to_vec();
    // Older kernels have no feature list (EINVAL/ENOTTY): nothing to add then.
    if let Ok(features) = kvm.get_msr_feature_index_list() {
        list.extend_from_slice(features.as_slice());
    }
    list.extend_from_slice(&MTRR_MSRS);
    let mut seen = std::collections::HashSet::new();
    list.retain(|index| seen.insert(*index));
    loop {
        let mut msrs = msr_request(&list);
        let read = vcpu.get_msrs(&mut msrs).op("KVM_GET_MSRS")?;
        if read >= list.len() {
            return Ok(list);
        }
        list.remove(read);
    }
}

/// What a vCPU save reads beyond the fixed-size structures, probed once per machine: the MSR
/// indices and the size of the xsave area.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveLayout {
    /// MSRs to save ([`probe_msr_list`]).
    pub msrs: Vec<u32>,
    /// Bytes of the xsave area: `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` when the host reports
    /// more than the legacy 4 KiB (AMX tile data), else 4096.
    pub xsave_bytes: usize,
}

/// The legacy `kvm_xsave` region in bytes.
pub const LEGACY_XSAVE_BYTES: usize = 4096;

/// Probes the [`SaveLayout`] on a configured vCPU of `vm`.
pub fn probe_save_layout(kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd) -> Result<SaveLayout, KvmOpError> {
    let xsave2 = vm.check_extension_int(Cap::Xsave2);
    let xsave_bytes = usize::try_from(xsave2).unwrap_or(0).max(LEGACY_XSAVE_BYTES);
    Ok(SaveLayout {
        msrs: probe_msr_list(kvm, vcpu)?,
        xsave_bytes,
    })
}

fn read_xsave(vcpu: &VcpuFd, bytes: usize) -> Result<Vec<u32>, KvmOpError> {
    if bytes <= LEGACY_XSAVE_BYTES {
        return Ok(vcpu.get_xsave().op("KVM_GET_XSAVE")?.region.to_vec());
    }
    let extra = (bytes - LEGACY_XSAVE_BYTES).div_ceil(4);
    let mut xsave = Xsave::new(extra).map_err(|_| KvmOpError {
        op: "KVM_GET_XSAVE2 (buffer)",
        source: kvm_ioctls::Error::new(libc::ENOMEM),
    })?;
    // SAFETY: `xsave` holds the 4 KiB header plus `extra` words, i.e. at least the
    // KVM_CAP_XSAVE2 size the kernel writes.
    unsafe { vcpu.get_xsave2(&mut xsave) }.op("KVM_GET_XSAVE2")?;
    let mut out = xsave.as_fam_struct_ref().xsave.region.to_vec();
    out.extend_from_slice(xsave.as_slice());
    Ok(out)
}

fn write_xsave(vcpu: &VcpuFd, words: &[u32]) -> Result<(), VcpuError> {
    let legacy = LEGACY_XSAVE_BYTES / 4;
    if words.len() < legacy {
        return Err(VcpuError::BadXsave { len: words.len() });
    }
    if words.len() == legacy {
        let mut xsave = kvm_xsave::default();
        xsave.region.copy_from_slice(words);
        // SAFETY: `xsave` is a complete legacy 4 KiB kvm_xsave. KVM_SET_XSAVE reads the
        // vCPU's uabi size, which is 4 KiB unless the process enabled dynamic xfeatures
        // (AMX) with arch_prctl, which colo never does.
        unsafe { vcpu.set_xsave(&xsave) }.op("KVM_SET_XSAVE")?;
        return Ok(());
    }
    let mut xsave =
        Xsave::new(words.len() - legacy).map_err(|_| VcpuError::BadXsave { len: words.len() })?;
    // SAFETY: only the fixed `region` array is written; the FAM length stays as allocated.
    unsafe { xsave.as_mut_fam_struct() }
        .xsave
        .region
        .copy_from_slice(&words[..legacy]);
    xsave.as_mut_slice().copy_from_slice(&words[legacy..]);
    // SAFETY: the buffer holds every word that was saved with KVM_GET_XSAVE2 on a host
    // reporting this size; KVM_SET_XSAVE reads at most the vCPU's uabi size, which is that
    // size on a host of the same kind (a smaller host would read only a prefix).
    unsafe { vcpu.set_xsave2(&xsave) }.op("KVM_SET_XSAVE (xsave2 size)")?;
    Ok(())
}

/// Configures a fresh vCPU: CPUID, boot MSRs, FPU, LAPIC LINT pins; on the boot vCPU also
/// the entry state `boot.mode` asks for (`Long64`: the long-mode segments, the VMM's boot GDT
/// and identity page tables of the first GiB, for Linux's 64-bit entry and the test guest;
/// `Protected32`: the flat 32-bit GDT, paging off, for the PVH entry) and the registers.
pub fn configure(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    index: u64,
    mem: &GuestMemory,
    boot: Option<BootRegs>,
) -> Result<(), VcpuError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .op("KVM_GET_SUPPORTED_CPUID")?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    patch_cpuid(&mut cpuid, index, tsc_deadline);
    vcpu.set_cpuid2(&cpuid).op("KVM_SET_CPUID2")?;

    let boot_msrs = [
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        },
        // MTRRs enabled, default type write-back (Linux checks this; Firecracker sets it too).
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: (1 << 11) | 6,
            ..Default::default()
        },
    ];
    let msrs = Msrs::from_entries(&boot_msrs).expect("two MSRs fit");
    let written = vcpu.set_msrs(&msrs).op("KVM_SET_MSRS")?;
    if written != boot_msrs.len() {
        return Err(VcpuError::MsrsRefused {
            written,
            expected: boot_msrs.len(),
            refused: boot_msrs[written].index,
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).op("KVM_SET_FPU")?;

    // LINT0 = ExtINT (the PIC), LINT1 = NMI: what a PC's BIOS leaves for the OS.
    let mut lapic = vcpu.get_lapic().op("KVM_GET_LAPIC")?;
    set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).op("KVM_SET_LAPIC")?;

    if let Some(regs) = boot {
        let mut sregs = vcpu.get_sregs().op("KVM_GET_SREGS")?;
        match regs.mode {
            BootMode::Long64 => {
                write_boot_tables(mem)?;
                long_mode_sregs(&mut sregs);
            }
            BootMode::Protected32 => {
                write_gdt(mem, &FLAT32_GDT)?;
                flat32_sregs(&mut sregs);
            }
        }
        vcpu.set_sregs(&sregs).op("KVM_SET_SREGS")?;
        let kregs = kvm_regs {
            rip: regs.rip,
            rbx: regs.rbx,
            rsp: regs.rsp,
            rbp: regs.rsp,
            rdi: regs.rdi,
            rsi: regs.rsi,
            rdx: regs.rdx,
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&kregs).op("KVM_SET_REGS")?;
    }
    Ok(())
}

/// Gives each vCPU its own APIC id in the CPUID leaves that report it, and advertises the
/// LAPIC's TSC-deadline mode when KVM emulates it (KVM_CAP_TSC_DEADLINE_TIMER: KVM leaves the
/// bit out of KVM_GET_SUPPORTED_CPUID and lets the VMM decide; QEMU and Firecracker set it).
fn patch_cpuid(cpuid: &mut CpuId, index: u64, tsc_deadline: bool) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            // Leaf 1: EBX[31:24] = initial APIC id; ECX[24] = TSC-deadline timer.
            1 => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | ((index as u32) << 24);
                if tsc_deadline {
                    entry.ecx |= 1 << 24;
                }
            }
            // Leaf 0xb: EDX = x2APIC id.
            0xb => entry.edx = index as u32,
            _ => {}
        }
    }
}

fn set_lvt_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = lapic.regs[reg + i] as u8;
    }
    let value = u32::from_le_bytes(bytes);
    let value = (value & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *b as i8;
    }
}

/// Boot GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18), as Firecracker's.
const BOOT_GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0080_8b00_0000_ffff,
];

/// The `kvm_segment` a GDT descriptor loads. KVM takes the limit in bytes: a page-granular
/// (G=1) descriptor's 20-bit limit is scaled as the CPU does (limit << 12 | 0xfff). Long mode
/// ignores limits; the PVH entry's flat 32-bit segments need the full 4 GiB.
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// PVH boot GDT: null, flat 32-bit code (0x08, base 0, limit 4 GiB, execute/read), flat data
/// (0x10, read/write), a 32-bit busy TSS (0x18, limit 0x67), the segments misc/pvh.html asks
/// for at the 32-bit entry.
const FLAT32_GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

fn put_boot_word(
    mem: &GuestMemory,
    what: &'static str,
    gpa: u64,
    value: u64,
) -> Result<(), VcpuError> {
    mem.write_obj(value, GuestAddress(gpa))
        .map_err(|_| VcpuError::BootMemory { what, gpa })
}

fn write_gdt(mem: &GuestMemory, gdt: &[u64; 4]) -> Result<(), VcpuError> {
    for (i, entry) in gdt.iter().enumerate() {
        put_boot_word(mem, "GDT", layout::BOOT_GDT + i as u64 * 8, *entry)?;
    }
    put_boot_word(mem, "IDT", layout::BOOT_IDT, 0)
}

/// Protected mode without paging, flat segments from [`FLAT32_GDT`], CR4 and EFER clear.
fn flat32_sregs(sregs: &mut kvm_sregs) {
    load_boot_segments(sregs, &FLAT32_GDT);
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !(CR0_PG | CR0_CD | CR0_NW);
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

fn write_boot_tables(mem: &GuestMemory) -> Result<(), VcpuError> {
    let put = |what: &'static str, gpa: u64, value: u64| put_boot_word(mem, what, gpa, value);
    write_gdt(mem, &BOOT_GDT)?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD = 512 x 2 MiB pages: identity map of the first GiB.
    put("PML4", layout::BOOT_PML4, layout::BOOT_PDPT | 0x3)?;
    put("PDPT", layout::BOOT_PDPT, layout::BOOT_PD | 0x3)?;
    for i in 0..512u64 {
        put("PD", layout::BOOT_PD + i * 8, (i << 21) | 0x83)?;
    }
    Ok(())
}

/// The boot GDT `gdt` (written at `layout::BOOT_GDT`: null, code, data, TSS) and the empty
/// boot IDT loaded, with every segment register taken from it.
fn load_boot_segments(sregs: &mut kvm_sregs, gdt: &[u64]) {
    sregs.gdt.base = layout::BOOT_GDT;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT;
    sregs.idt.limit = 7;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
}

fn long_mode_sregs(sregs: &mut kvm_sregs) {
    load_boot_segments(sregs, &BOOT_GDT);
    sregs.cr3 = layout::BOOT_PML4;
    sregs.cr4 |= CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    // The reset value has caching disabled (CD|NW); a 64-bit entry expects a normal cache.
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG) & !(CR0_CD | CR0_NW);
    sregs.efer |= EFER_LME | EFER_LMA | EFER_NXE;
}

/// The legacy FPU/SSE state (`kvm_fpu` has no serde support in kvm-bindings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 registers.
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM registers.
    pub xmm: [[u8; 16]; 16],
    /// SSE control/status.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> FpuState {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> kvm_fpu {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// Everything KVM keeps for one vCPU (the Persist state of a vCPU).
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (APIC id).
    pub index: u64,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Legacy FPU/SSE state.
    pub fpu: FpuState,
    /// Extended state (AVX, AVX-512, AMX...): the `kvm_xsave` region, 1024 words, or more when
    /// the host's KVM_CAP_XSAVE2 size is larger (read with KVM_GET_XSAVE2).
    pub xsave: Vec<u32>,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// MSRs (the probed list).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
}

impl fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// The saved MSRs in the order KVM_SET_MSRS must see them: IA32_TSC first (the per-vCPU TSC
/// offset is set from it; the deadline below is relative to it), IA32_TSC_DEADLINE last (the
/// LAPIC, restored before the MSRs, must already be in TSC-deadline mode), the rest in the
/// probed order.
fn restore_order(saved: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let rank = |e: &kvm_msr_entry| match e.index {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    };
    let mut out = saved.to_vec();
    // A stable sort keeps the probed order within each rank.
    out.sort_by_key(rank);
    out
}

/// A `KVM_GET_MSRS` request for every index of `list` (values zeroed, filled by KVM).
fn msr_request(list: &[u32]) -> Msrs {
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).expect("MSR list fits a kvm_msrs")
}

impl VcpuState {
    /// Reads the whole state. The vCPU must be paused with its pending I/O completed
    /// (`immediate_exit`, see `thread`).
    pub fn save(index: u64, vcpu: &VcpuFd, layout: &SaveLayout) -> Result<VcpuState, KvmOpError> {
        let mut msrs = msr_request(&layout.msrs);
        let read = vcpu.get_msrs(&mut msrs).op("KVM_GET_MSRS")?;
        let msrs = msrs.as_slice()[..read].to_vec();
        Ok(VcpuState {
            index,
            cpuid: vcpu
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .op("KVM_GET_CPUID2")?
                .as_slice()
                .to_vec(),
            mp_state: vcpu.get_mp_state().op("KVM_GET_MP_STATE")?,
            regs: vcpu.get_regs().op("KVM_GET_REGS")?,
            sregs: vcpu.get_sregs().op("KVM_GET_SREGS")?,
            fpu: FpuState::from(&vcpu.get_fpu().op("KVM_GET_FPU")?),
            xsave: read_xsave(vcpu, layout.xsave_bytes)?,
            xcrs: vcpu.get_xcrs().op("KVM_GET_XCRS")?,
            debug_regs: vcpu.get_debug_regs().op("KVM_GET_DEBUGREGS")?,
            lapic: vcpu.get_lapic().op("KVM_GET_LAPIC")?,
            msrs,
            events: vcpu.get_vcpu_events().op("KVM_GET_VCPU_EVENTS")?,
        })
    }

    /// Writes the state into a vCPU of a VM whose irqchip exists (see the module invariant
    /// for the order).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VcpuError> {
        let cpuid = CpuId::from_entries(&self.cpuid).expect("saved CPUID fits a kvm_cpuid2");
        vcpu.set_cpuid2(&cpuid).op("KVM_SET_CPUID2")?;
        vcpu.set_mp_state(self.mp_state).op("KVM_SET_MP_STATE")?;
        vcpu.set_regs(&self.regs).op("KVM_SET_REGS")?;
        vcpu.set_sregs(&self.sregs).op("KVM_SET_SREGS")?;
        vcpu.set_fpu(&kvm_fpu::from(&self.fpu)).op("KVM_SET_FPU")?;
        write_xsave(vcpu, &self.xsave)?;
        vcpu.set_xcrs(&self.xcrs).op("KVM_SET_XCRS")?;
        vcpu.set_debug_regs(&self.debug_regs)
            .op("KVM_SET_DEBUGREGS")?;
        vcpu.set_lapic(&self.lapic).op("KVM_SET_LAPIC")?;
        let ordered = restore_order(&self.msrs);
        let msrs = Msrs::from_entries(&ordered).expect("saved MSRs fit a kvm_msrs");
        let written = vcpu.set_msrs(&msrs).op("KVM_SET_MSRS")?;
        if written != ordered.len() {
            return Err(VcpuError::MsrsRefused {
                written,
                expected: ordered.len(),
                refused: ordered[written].index,
            });
        }
        vcpu.set_vcpu_events(&self.events)
            .op("KVM_SET_VCPU_EVENTS")?;
        Ok(())
    }

    /// The architectural register state as bytes, without the parts that move on their own
    /// while a VM is paused (TSC and other time MSRs): what must be identical between a
    /// source VM and a VM restored from it.
    pub fn architectural_bytes(&self) -> Vec<u8> {
        let cfg = bincode::config::standard();
        let mut out = Vec::new();
        let mut put = |bytes: Result<Vec<u8>, bincode::error::EncodeError>| {
            out.extend(bytes.expect("kvm state structs always encode"));
        };
        put(bincode::serde::encode_to_vec(&self.cpuid, cfg));
        put(bincode::serde::encode_to_vec(self.mp_state, cfg));
        put(bincode::serde::encode_to_vec(self.regs, cfg));
        put(bincode::serde::encode_to_vec(self.sregs, cfg));
        put(bincode::serde::encode_to_vec(&self.fpu, cfg));
        put(bincode::serde::encode_to_vec(self.xcrs, cfg));
        put(bincode::serde::encode_to_vec(self.debug_regs, cfg));
        out
    }
}
