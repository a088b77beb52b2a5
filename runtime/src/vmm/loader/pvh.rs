//! The PVH boot protocol (xen docs misc/pvh.html; Xen's public arch-x86/hvm/start_info.h;
//! Linux arch/x86/platform/pvh/enlighten.c): a vmlinux ELF carrying the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note (type 18, found by linux-loader's `Elf::load`) is entered at
//! that 32-bit physical address in protected mode with paging off and flat 4 GiB segments
//! (`vcpu::BootMode::Protected32`), EBX pointing at an `hvm_start_info` that names the command
//! line, the initrd (a one-entry module list) and the memory map.
//!
//! Invariant: the start info, the module list and the memory map sit in one page below the
//! zero page (`START_INFO`..`MEMMAP + MEMMAP_MAX * 24` < `layout::ZERO_PAGE`), inside RAM,
//! and their layout is the version-1 one: `hvm_start_info` 56 bytes, `hvm_modlist_entry` 32,
//! `hvm_memmap_table_entry` 24 (linux-loader's bindings, checked against Xen's header by size
//! and by the field offsets in the unit tests).

use super::LoadError;
use crate::vmm::layout;
use crate::vmm::vstate::vcpu::{BootMode, BootRegs};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

/// `hvm_start_info.magic`: "xEn3" with the top bit of the 'x' cleared (start_info.h).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// The start-info version written (1: has the memory map fields).
pub const START_INFO_VERSION: u32 = 1;
/// `hvm_memmap_table_entry.type` for usable RAM (the e820 type numbers, start_info.h).
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `hvm_memmap_table_entry.type` for reserved ranges.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;

/// Where the `hvm_start_info` is written.
pub const START_INFO: u64 = 0x6000;
/// The module list (the initrd), right after the start info.
pub const MODLIST: u64 = 0x6040;
/// The memory map, after the module list.
pub const MEMMAP: u64 = 0x6080;
/// Most memory-map entries written (the page ends below the zero page).
pub const MEMMAP_MAX: usize = 32;

const _: () = assert!(MEMMAP + (MEMMAP_MAX as u64) * 24 <= layout::ZERO_PAGE);

/// A memory-map entry: `(addr, size, type)`.
pub type MemmapEntry = (u64, u64, u32);

/// What the start info describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartInfo {
    /// Guest-physical address of the NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    /// The initrd: `(address, size)`.
    pub initrd: Option<(u64, u64)>,
    /// The memory map, in address order.
    pub memmap: Vec<MemmapEntry>,
    /// The ACPI RSDP, or 0 when the VM has no ACPI tables (the guest then probes the legacy
    /// BIOS areas). A `Machine` always has the tables of `loader::acpi`: `layout::ACPI_RSDP`.
    pub rsdp_paddr: u64,
}

// linux-loader implements `ByteValued` for the three bindings (configurator/x86_64/pvh.rs).

/// Writes the start info, module list and memory map into guest memory and returns the
/// registers for the 32-bit entry `entry`.
pub fn write_start_info<M: Bytes<GuestAddress>>(
    mem: &M,
    entry: u64,
    info: &StartInfo,
) -> Result<BootRegs, LoadError> {
    if info.memmap.len() > MEMMAP_MAX {
        return Err(LoadError::GuestMemory {
            what: "a PVH memory map longer than 32 entries",
            gpa: MEMMAP,
        });
    }
    if entry > u64::from(u32::MAX) {
        return Err(LoadError::MalformedKernel {
            reason: format!("PVH entry {entry:#x} is above 4 GiB"),
        });
    }
    let write_err = |what: &'static str, gpa: u64| LoadError::GuestMemory { what, gpa };
    for (i, &(addr, size, type_)) in info.memmap.iter().enumerate() {
        let gpa = MEMMAP + i as u64 * 24;
        let entry = hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(gpa))
            .map_err(|_| write_err("the PVH memory map", gpa))?;
    }
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        cmdline_paddr: info.cmdline_paddr,
        rsdp_paddr: info.rsdp_paddr,
        memmap_paddr: MEMMAP,
        memmap_entries: info.memmap.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST))
            .map_err(|_| write_err("the PVH module list", MODLIST))?;
        start.nr_modules = 1;
        start.modlist_paddr = MODLIST;
    }
    mem.write_obj(start, GuestAddress(START_INFO))
        .map_err(|_| write_err("the PVH start info", START_INFO))?;
    Ok(BootRegs {
        mode: BootMode::Protected32,
        rbx: START_INFO,
        rip: entry,
        rsp: layout::BOOT_STACK,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory;

    fn read_u32(mem: &memory::GuestMemory, gpa: u64) -> u32 {
        mem.read_obj(GuestAddress(gpa)).unwrap()
    }
    fn read_u64(mem: &memory::GuestMemory, gpa: u64) -> u64 {
        mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    #[test]
    fn start_info_has_xen_version_1_layout_at_the_offsets_of_start_info_h() {
        let mem = memory::create(64 << 20).unwrap();
        let info = StartInfo {
            cmdline_paddr: layout::CMDLINE,
            initrd: Some((0x300_0000, 5000)),
            memmap: vec![
                (0, layout::EBDA_START, XEN_HVM_MEMMAP_TYPE_RAM),
                (layout::HIMEM_START, (63 << 20), XEN_HVM_MEMMAP_TYPE_RAM),
            ],
            rsdp_paddr: 0,
        };
        let regs = write_start_info(&mem, 0x100_0850, &info).unwrap();
        assert_eq!(regs.mode, BootMode::Protected32);
        assert_eq!((regs.rip, regs.rbx), (0x100_0850, START_INFO));
        // Offsets from start_info.h: magic 0, version 4, flags 8, nr_modules 12,
        // modlist_paddr 16, cmdline_paddr 24, rsdp_paddr 32, memmap_paddr 40,
        // memmap_entries 48.
        assert_eq!(read_u32(&mem, START_INFO), 0x336e_c578);
        assert_eq!(read_u32(&mem, START_INFO + 4), 1);
        assert_eq!(read_u32(&mem, START_INFO + 8), 0);
        assert_eq!(read_u32(&mem, START_INFO + 12), 1);
        assert_eq!(read_u64(&mem, START_INFO + 16), MODLIST);
        assert_eq!(read_u64(&mem, START_INFO + 24), layout::CMDLINE);
        assert_eq!(read_u64(&mem, START_INFO + 32), 0);
        assert_eq!(read_u64(&mem, START_INFO + 40), MEMMAP);
        assert_eq!(read_u32(&mem, START_INFO + 48), 2);
        // hvm_modlist_entry: paddr 0, size 8, cmdline_paddr 16.
        assert_eq!(read_u64(&mem, MODLIST), 0x300_0000);
        assert_eq!(read_u64(&mem, MODLIST + 8), 5000);
        assert_eq!(read_u64(&mem, MODLIST + 16), 0);
        // hvm_memmap_table_entry: addr 0, size 8, type 16; 24 bytes each.
        assert_eq!(read_u64(&mem, MEMMAP + 24), layout::HIMEM_START);
        assert_eq!(read_u64(&mem, MEMMAP + 24 + 8), 63 << 20);
        assert_eq!(read_u32(&mem, MEMMAP + 24 + 16), XEN_HVM_MEMMAP_TYPE_RAM);
    }

    #[test]
    fn no_initrd_means_no_module_list() {
        let mem = memory::create(64 << 20).unwrap();
        write_start_info(&mem, 0x100_0000, &StartInfo::default()).unwrap();
        assert_eq!(read_u32(&mem, START_INFO + 12), 0);
        assert_eq!(read_u64(&mem, START_INFO + 16), 0);
    }

    #[test]
    fn an_entry_above_4_gib_and_an_oversized_memory_map_are_errors() {
        let mem = memory::create(64 << 20).unwrap();
        let err = write_start_info(&mem, 1 << 32, &StartInfo::default()).unwrap_err();
        assert!(err.to_string().contains("above 4 GiB"), "{err}");
        let info = StartInfo {
            memmap: vec![(0, 4096, 1); MEMMAP_MAX + 1],
            ..Default::default()
        };
        assert!(write_start_info(&mem, 0x100_0000, &info).is_err());
    }
}
