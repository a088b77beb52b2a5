//! The guest <-> VMM contract, mirrored by colo-runtime's `devices::console` and `layout`.
//!
//! Ring 3 cannot use port I/O under kvm_pvm (shared/research/pvm-guest-spike.md), so the
//! test guest talks to the VMM only through MMIO writes to an address without a memslot. One
//! write is one exit (~33 µs here), hence a whole line per exit.

/// Guest-physical base of the MMIO console (no memslot there: every access exits).
pub const CONSOLE_BASE: u64 = 0xd000_0000;
/// Write one byte (for guests without a line buffer; the test guest writes whole lines).
#[allow(dead_code)]
pub const REG_PUTC: u64 = 0x00;
/// Write a buffer: value = guest-physical address | (length << 48).
pub const REG_WRITE: u64 = 0x08;
/// Stop the VM with this exit code.
pub const REG_EXIT: u64 = 0x10;
/// Report a CPU exception (vector | error code << 8) and stop; written last by the shim.
pub const REG_FAULT: u64 = 0x18;
/// Faulting instruction pointer (written before REG_FAULT).
pub const REG_FAULT_RIP: u64 = 0x20;
/// CR2 at the time of the fault (written before REG_FAULT).
pub const REG_FAULT_ADDR: u64 = 0x28;
/// Local APIC end-of-interrupt register (default APIC base).
pub const LAPIC_EOI: u64 = 0xfee0_00b0;
/// First byte of the working set rewritten by the counter workload (16 MiB).
pub const WORKSET_BASE: u64 = 0x100_0000;
/// The guest's page size.
pub const PAGE_SIZE: u64 = 4096;
/// Guest-physical base of the virtio-mmio network device (mirrors `layout::VIRTIO_NET_BASE`).
pub const VIRTIO_NET_BASE: u64 = 0xd000_1000;
/// The network device's IOAPIC input (mirrors `layout::VIRTIO_NET_GSI`).
pub const VIRTIO_NET_GSI: u32 = 6;
/// Guest-physical base of the virtio-mmio block device (mirrors `layout::VIRTIO_BLK_BASE`).
pub const VIRTIO_BLK_BASE: u64 = 0xd000_2000;
/// Most CPUs the test guest starts (the shim has this many TSSs and kernel stacks).
pub const MAX_CPUS: usize = 16;
/// Page the real-mode AP trampoline is copied to (SIPI vector 3; mirrors
/// `layout::GUEST_AP_TRAMPOLINE`, where the VMM writes nothing).
pub const AP_TRAMPOLINE: u64 = 0x3000;
/// The AP parameter block, inside the trampoline page (read by the trampoline and the shim).
pub const AP_PARAMS: u64 = AP_TRAMPOLINE + 0xf00;
/// Offset of the page-table root (CR3) in the parameter block.
pub const AP_PARAM_CR3: u64 = 0;
/// Offset of the 64-bit entry (`shim_ap_entry`).
pub const AP_PARAM_ENTRY: u64 = 8;
/// Offset of the CPU index the AP takes.
pub const AP_PARAM_CPU: u64 = 16;
/// Offset of the AP's ring-3 stack top.
pub const AP_PARAM_STACK: u64 = 24;
/// Local APIC base (the MADT's address; every CPU sees its own APIC there).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
