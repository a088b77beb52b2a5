//! Several CPUs from ring 3: find the processors in the ACPI MADT the VMM wrote, start each
//! application processor (AP) the way an OS does (INIT, then SIPI, through the local APIC's
//! ICR, into the shim's real-mode trampoline), and run a function on every AP.
//!
//! Invariants: APs start one at a time, and the shared parameter block (`abi::AP_PARAMS`) is
//! rewritten only after the previous AP set its `online` flag, so no AP reads another's
//! parameters. APs never allocate (the heap is single-CPU, `heap`): their ring-3 stacks are
//! allocated here, on the boot CPU, before they start. Everything the CPUs share lives in
//! `CPUS` and is accessed through atomics.

use crate::abi;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// RSDP search range: the BIOS area, 16-byte steps (ACPI 6.5 section 5.2.5.1).
const BIOS_AREA: core::ops::Range<u64> = 0xe_0000..0x10_0000;
/// Longest table accepted (the VMM's MADT for 255 CPUs is about 2 KiB).
const TABLE_MAX: u32 = 64 << 10;
/// Tables are accepted only below this address (low memory, under the image and working set).
const TABLES_END: u64 = 0x10_0000;
const LAPIC_ID: u64 = abi::LAPIC_BASE + 0x20;
const LAPIC_ICR_LOW: u64 = abi::LAPIC_BASE + 0x300;
const LAPIC_ICR_HIGH: u64 = abi::LAPIC_BASE + 0x310;
/// ICR: INIT, level assert.
const ICR_INIT: u32 = 0x4500;
/// ICR: start-up (SIPI), level assert; the low byte is the trampoline's page number.
const ICR_SIPI: u32 = 0x4600;
/// Ring-3 stack of each AP.
const AP_STACK: usize = 64 << 10;

unsafe extern "C" {
    static shim_tramp_start: u8;
    static shim_tramp_end: u8;
    static shim_pml4: u8;
    fn shim_ap_entry();
}

/// What every CPU publishes: 64-byte slots so CPUs do not share cache lines.
#[repr(C, align(64))]
pub struct CpuSlot {
    /// Set by the AP as its first ring-3 act.
    pub online: AtomicU64,
    /// The CPU's progress counter (the workload's).
    pub step: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: CpuSlot = CpuSlot {
    online: AtomicU64::new(0),
    step: AtomicU64::new(0),
};

/// One slot per CPU index (0 = the boot CPU).
pub static CPUS: [CpuSlot; abi::MAX_CPUS] = [EMPTY_SLOT; abi::MAX_CPUS];

/// The function every AP runs (set before the first AP starts).
static AP_MAIN: AtomicU64 = AtomicU64::new(0);

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses inside the BIOS area or inside ACPI tables checked to lie
    // below TABLES_END; all of low memory is RAM, identity-mapped with the U bit.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn sums_to_zero(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |s, i| s.wrapping_add(read::<u8>(addr + i))) == 0
}

fn find_rsdp() -> Option<u64> {
    BIOS_AREA
        .step_by(16)
        .find(|&a| read::<[u8; 8]>(a) == *b"RSD PTR " && sums_to_zero(a, 20))
}

/// The length of the table at `addr` if its header is sane and its checksum holds.
fn table_len(addr: u64) -> Option<u32> {
    if !header_in_range(addr) {
        return None;
    }
    let len = read::<u32>(addr + 4);
    let in_range = addr
        .checked_add(u64::from(len))
        .is_some_and(|e| e <= TABLES_END);
    ((36..=TABLE_MAX).contains(&len) && in_range && sums_to_zero(addr, u64::from(len)))
        .then_some(len)
}

/// True if a 36-byte table header at `addr` lies below `TABLES_END` (so reading it touches
/// RAM only, whatever address a table pointed to).
fn header_in_range(addr: u64) -> bool {
    addr.checked_add(36).is_some_and(|e| e <= TABLES_END)
}

/// The APIC ids of the enabled processors in the MADT, in table order; panics with the reason
/// if the tables are missing or malformed (the guest cannot do anything sensible then).
pub fn madt_apic_ids() -> Vec<u8> {
    let rsdp = find_rsdp().expect("no ACPI RSDP in the BIOS area");
    let (root, entry_size) = if read::<u8>(rsdp + 15) >= 2 && read::<u64>(rsdp + 24) != 0 {
        (read::<u64>(rsdp + 24), 8)
    } else {
        (u64::from(read::<u32>(rsdp + 16)), 4)
    };
    let root_len = table_len(root).expect("the XSDT/RSDT is malformed");
    let madt = (36..u64::from(root_len))
        .step_by(entry_size)
        .map(|o| {
            if entry_size == 8 {
                read::<u64>(root + o)
            } else {
                u64::from(read::<u32>(root + o))
            }
        })
        .find(|&t| header_in_range(t) && read::<[u8; 4]>(t) == *b"APIC")
        .expect("no MADT in the XSDT");
    let len = u64::from(table_len(madt).expect("the MADT is malformed"));
    let mut ids = Vec::new();
    let mut o = 44;
    while o + 2 <= len {
        let (kind, entry_len) = (read::<u8>(madt + o), u64::from(read::<u8>(madt + o + 1)));
        assert!(
            entry_len >= 2 && o + entry_len <= len,
            "MADT entry at {o} overruns"
        );
        // Processor Local APIC, enabled.
        if kind == 0 && entry_len >= 8 && read::<u32>(madt + o + 4) & 1 == 1 {
            ids.push(read::<u8>(madt + o + 3));
        }
        o += entry_len;
    }
    ids
}

/// This CPU's local APIC id (the APIC ID register, bits 31:24).
pub fn my_apic_id() -> u8 {
    // SAFETY: the LAPIC page is identity-mapped with the U bit; reading the ID register is an
    // MMIO load handled by KVM's in-kernel APIC.
    let id = unsafe { core::ptr::read_volatile(LAPIC_ID as *const u32) };
    (id >> 24) as u8
}

fn send_ipi(apic_id: u8, low: u32) {
    crate::irq::mmio_write32(LAPIC_ICR_HIGH, u32::from(apic_id) << 24);
    crate::irq::mmio_write32(LAPIC_ICR_LOW, low);
}

fn write_param(offset: u64, value: u64) {
    // SAFETY: the parameter block is in the trampoline page (RAM, identity-mapped with the U
    // bit), which only this code and the starting AP use.
    unsafe { core::ptr::write_volatile((abi::AP_PARAMS + offset) as *mut u64, value) }
}

/// Starts every AP listed in `apic_ids` except this CPU (CPU indices 1, 2, ... in table
/// order, at most `abi::MAX_CPUS` CPUs in all) running `ap_main(cpu)`, and waits until each
/// is online. `spin_limit` bounds the wait per AP in TSC ticks. Returns the CPU count and
/// the TSC ticks the slowest AP took from its INIT to its `online` flag.
pub fn start_aps(
    apic_ids: &[u8],
    ap_main: extern "C" fn(u64) -> !,
    spin_limit: u64,
) -> (usize, u64) {
    AP_MAIN.store(ap_main as *const () as u64, Ordering::SeqCst);
    let start = core::ptr::addr_of!(shim_tramp_start) as usize;
    let end = core::ptr::addr_of!(shim_tramp_end) as usize;
    assert!(
        end - start <= 0xf00,
        "the trampoline overlaps its parameter block"
    );
    // SAFETY: the trampoline is end - start bytes of the shim's text; its destination page is
    // reserved for it (abi::AP_TRAMPOLINE: the VMM writes nothing there) and RAM.
    unsafe {
        core::ptr::copy_nonoverlapping(
            start as *const u8,
            abi::AP_TRAMPOLINE as *mut u8,
            end - start,
        );
    }
    write_param(abi::AP_PARAM_CR3, core::ptr::addr_of!(shim_pml4) as u64);
    write_param(abi::AP_PARAM_ENTRY, shim_ap_entry as *const () as u64);
    let me = my_apic_id();
    let mut cpus = 1;
    let mut slowest = 0;
    for &apic in apic_ids.iter().filter(|&&id| id != me) {
        if cpus == abi::MAX_CPUS {
            crate::println!(
                "colo-guest: more than {} CPUs, APIC id {apic} and later stay off",
                abi::MAX_CPUS
            );
            break;
        }
        let layout = core::alloc::Layout::from_size_align(AP_STACK, 4096).expect("valid layout");
        // SAFETY: a non-zero-sized layout; the stack is never freed (the AP runs forever).
        let stack = unsafe { alloc::alloc::alloc(layout) };
        assert!(!stack.is_null(), "no memory for an AP stack");
        write_param(abi::AP_PARAM_CPU, cpus as u64);
        write_param(abi::AP_PARAM_STACK, stack as u64 + AP_STACK as u64);
        let t0 = rdtsc();
        send_ipi(apic, ICR_INIT);
        send_ipi(apic, ICR_SIPI | (abi::AP_TRAMPOLINE >> 12) as u32);
        while CPUS[cpus].online.load(Ordering::Acquire) == 0 {
            assert!(
                rdtsc() - t0 < spin_limit,
                "the AP with APIC id {apic} did not come online"
            );
            core::hint::spin_loop();
        }
        slowest = slowest.max(rdtsc() - t0);
        cpus += 1;
    }
    (cpus, slowest)
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter (allowed at ring 3).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Ring-3 entry of every AP (from `shim_ap_entry`): announce, then run the workload's AP
/// function.
#[unsafe(no_mangle)]
pub extern "C" fn colo_ap_main(cpu: u64) -> ! {
    let cpu_index = cpu as usize;
    assert!(cpu_index < abi::MAX_CPUS, "AP started with CPU index {cpu}");
    CPUS[cpu_index].online.store(1, Ordering::Release);
    let f = AP_MAIN.load(Ordering::SeqCst);
    // SAFETY: start_aps stored a valid `extern "C" fn(u64) -> !` before starting any AP.
    let f: extern "C" fn(u64) -> ! = unsafe { core::mem::transmute(f as usize) };
    f(cpu)
}
