//! Guest-physical memory layout shared by the loaders, the boot vCPU set-up and the devices.
//!
//! Invariant: the fixed boot structures (GDT, page tables, zero page, command line, ACPI
//! tables, the test guest's AP trampoline page) all sit below 1 MiB without overlapping, the kernel or test-guest image above it, and no RAM is placed at or above
//! `MMIO_GAP_START`, so MMIO addresses never alias a memslot (an access there always exits).
//! The low addresses follow Firecracker's x86_64 layout (arch/src/x86_64/layout.rs).

/// Size of a guest page (dirty tracking granularity): the wire's page size, one definition for
/// core, runtime and simulator.
pub use colo_core::wire::PAGE_SIZE;
/// Boot GDT written by the VMM for the 64-bit entry.
pub const BOOT_GDT: u64 = 0x500;
/// Empty boot IDT (right after the GDT).
pub const BOOT_IDT: u64 = 0x520;
/// The test guest's real-mode AP trampoline page (mirrors `runtime/guest/src/abi.rs`): the
/// guest copies it there and sends it as the SIPI vector (0x3000 >> 12 = 3). The VMM writes
/// nothing here.
pub const GUEST_AP_TRAMPOLINE: u64 = 0x3000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Boot page tables: PML4, PDPT and one PD of 2 MiB pages (identity map of the first GiB).
pub const BOOT_PML4: u64 = 0x9000;
/// See [`BOOT_PML4`].
pub const BOOT_PDPT: u64 = 0xa000;
/// See [`BOOT_PML4`].
pub const BOOT_PD: u64 = 0xb000;
/// Kernel / test-guest command line.
pub const CMDLINE: u64 = 0x20000;
/// Longest command line accepted (bytes, without the terminating NUL).
pub const CMDLINE_MAX: usize = 4095;
/// First address above the legacy low memory area (kernels load at or above it).
pub const HIMEM_START: u64 = 0x10_0000;
/// End of usable low memory for the e820 map (EBDA starts here).
pub const EBDA_START: u64 = 0x9_fc00;
/// The RSDP, at the start of the BIOS area Linux scans (0xE0000-0xFFFFF, 16-byte steps); the
/// other ACPI tables follow it (`loader::acpi`).
pub const ACPI_RSDP: u64 = 0xe_0000;
/// End of the ACPI tables' area (the BIOS area ends at 1 MiB).
pub const ACPI_END: u64 = HIMEM_START;
/// Start of the range the e820 map reserves (EBDA, ACPI tables, BIOS area) up to 1 MiB.
pub const RESERVED_LOW_START: u64 = EBDA_START;
/// The local APIC's default base (every vCPU's, as the MADT says).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// KVM's IOAPIC (GSI base 0, 24 inputs).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The IOAPIC input (ACPI GSI) the PIT's ISA IRQ 0 arrives on: pin 2, as on a PC (the MADT's
/// interrupt source override; `vstate::vm` routes KVM's GSI 0 there).
pub const PIT_GSI: u32 = 2;
/// Start of the MMIO hole: no RAM at or above it (below 4 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// The test guest's MMIO console (mirrors `runtime/guest/src/abi.rs`).
pub const CONSOLE_BASE: u64 = 0xd000_0000;
/// Size of the console's register window.
pub const CONSOLE_SIZE: u64 = 0x1000;
/// Where virtio-mmio devices are placed, one 4 KiB window each.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_1000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The virtio-net device: the first virtio-mmio window.
pub const VIRTIO_NET_BASE: u64 = VIRTIO_MMIO_BASE;
/// The virtio-net device's interrupt (IOAPIC input; the 16550 has 4).
pub const VIRTIO_NET_GSI: u32 = 6;
/// The virtio-blk device: the second virtio-mmio window.
pub const VIRTIO_BLK_BASE: u64 = VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE;
/// The virtio-blk device's interrupt (IOAPIC input 7: free on the test machine; `tests/interrupts.rs` drives input 5).
pub const VIRTIO_BLK_GSI: u32 = 7;
/// Most virtio-net devices a VM has.
pub const MAX_NICS: usize = 4;
/// IOAPIC inputs of the virtio-net devices, in device order.
const VIRTIO_NET_GSIS: [u32; MAX_NICS] = [VIRTIO_NET_GSI, 13, 14, 15];

/// Window base and interrupt of virtio-net device `index` (< [`MAX_NICS`]): the first at
/// [`VIRTIO_NET_BASE`], the others after the block devices' windows.
pub fn virtio_net_window(index: usize) -> Option<(u64, u32)> {
    let gsi = *VIRTIO_NET_GSIS.get(index)?;
    let base = match index {
        0 => VIRTIO_NET_BASE,
        i => VIRTIO_BLK_BASE + (MAX_DISKS + i - 1) as u64 * VIRTIO_MMIO_SIZE,
    };
    Some((base, gsi))
}

/// Most virtio-blk devices a VM has.
pub const MAX_DISKS: usize = 4;
/// IOAPIC inputs of the virtio-blk devices, in device order (9 is left to ACPI's SCI).
const VIRTIO_BLK_GSIS: [u32; MAX_DISKS] = [VIRTIO_BLK_GSI, 10, 11, 12];

/// Window base and interrupt of virtio-blk device `index` (< [`MAX_DISKS`]): the first at
/// [`VIRTIO_BLK_BASE`], the others in the windows after it (after the net device's and the
/// first disk's), each with its own IOAPIC input.
pub fn virtio_blk_window(index: usize) -> Option<(u64, u32)> {
    let gsi = *VIRTIO_BLK_GSIS.get(index)?;
    Some((VIRTIO_BLK_BASE + index as u64 * VIRTIO_MMIO_SIZE, gsi))
}
/// The guest NIC's MAC unless the caller sets one (locally administered, QEMU's 52:54:00).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xc0, 0x10, 0x01];
/// KVM's three-page TSS region, just below the BIOS area (as QEMU and Firecracker place it).
pub const KVM_TSS: u64 = 0xfffb_d000;
/// The test guest's working set base (mirrors `runtime/guest/src/abi.rs`).
pub const GUEST_WORKSET_BASE: u64 = 0x100_0000;
/// Smallest VM accepted: the test guest needs its image, stack, heap and 16 MiB base.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest VM accepted: RAM must end below the MMIO hole (one memslot, no high RAM yet).
pub const MAX_MEMORY_MIB: u64 = MMIO_GAP_START >> 20;

// The ACPI tables lie inside the range the e820 map reserves; the command line below it.
const _: () = assert!(ACPI_RSDP >= RESERVED_LOW_START && ACPI_END <= HIMEM_START);
const _: () = assert!(CMDLINE + (CMDLINE_MAX as u64) < RESERVED_LOW_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_low_structures_are_below_1_mib_and_do_not_overlap() {
        let mut regions = [
            ("boot GDT", BOOT_GDT, 0x20),
            ("boot IDT", BOOT_IDT, 8),
            ("AP trampoline", GUEST_AP_TRAMPOLINE, PAGE_SIZE),
            ("zero page", ZERO_PAGE, PAGE_SIZE),
            ("boot stack", BOOT_STACK + 0x10 - PAGE_SIZE, PAGE_SIZE),
            ("boot page tables", BOOT_PML4, 3 * PAGE_SIZE),
            ("command line", CMDLINE, CMDLINE_MAX as u64 + 1),
            ("ACPI tables", ACPI_RSDP, ACPI_END - ACPI_RSDP),
        ];
        regions.sort_by_key(|r| r.1);
        for pair in regions.windows(2) {
            let ((a, a_start, a_len), (b, b_start, _)) = (pair[0], pair[1]);
            assert!(a_start + a_len <= b_start, "{a} overlaps {b}");
        }
        for (name, start, len) in regions {
            assert!(start + len <= HIMEM_START, "{name} is above 1 MiB");
        }
    }
}
