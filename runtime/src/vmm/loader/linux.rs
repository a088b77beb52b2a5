//! The Linux boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry: a bzImage (its
//! protected-mode kernel loaded at 1 MiB, entry at load address + 0x200) or an uncompressed
//! vmlinux ELF (entry = e_entry), a zero page (`boot_params`) at `layout::ZERO_PAGE` with the
//! image's own setup header, an e820 map, the command line and an optional initrd placed at the
//! top of RAM. The boot vCPU starts in long mode with rsi = zero page, as Firecracker does,
//! except for a vmlinux carrying the PVH note: it is entered at its 32-bit PVH entry with a
//! start info (`pvh`) unless the caller asks for the 64-bit entry (`LinuxEntry`).
//!
//! The e820 map has RAM below the EBDA, the EBDA/ACPI/BIOS area (0x9FC00-1 MiB) reserved and RAM
//! from 1 MiB; `acpi_rsdp_addr` points at the RSDP of the tables `loader::acpi` wrote.
//!
//! virtio-mmio devices are announced on the command line the way
//! Firecracker-compatible kernels expect (`virtio_mmio.device=4K@0xd0001000:5`, see
//! [`virtio_mmio_arg`]). Invariant: every structure written lies inside RAM, the initrd never
//! overlaps the kernel, and a malformed image is an error, never a panic.

use super::{LoadError, LoadedImage, pvh};
use crate::vmm::layout;
use crate::vmm::memory::{self, GuestMemory};
use crate::vmm::vstate::vcpu::BootRegs;
use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// "HdrS", the setup header's magic (boot.rst).
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Offset of the magic in a bzImage file.
const HDRS_OFFSET: usize = 0x202;
/// `type_of_loader` = 0xff: "undefined" loader (boot.rst), what Firecracker uses.
const LOADER_UNDEFINED: u8 = 0xff;
/// 64-bit entry point offset from the protected-mode kernel's load address (boot.rst).
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// The kind of a Linux kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A compressed bzImage (setup header with "HdrS").
    BzImage,
    /// An uncompressed vmlinux ELF.
    Elf,
}

/// Recognises an image by its magic, or `None`.
pub fn detect(image: &[u8]) -> Option<KernelFormat> {
    if image.starts_with(b"\x7fELF") {
        return Some(KernelFormat::Elf);
    }
    let magic = image.get(HDRS_OFFSET..HDRS_OFFSET + 4)?;
    (u32::from_le_bytes(magic.try_into().ok()?) == HDRS_MAGIC).then_some(KernelFormat::BzImage)
}

/// The kernel command-line argument announcing one virtio-mmio device.
pub fn virtio_mmio_arg(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Which entry of a kernel the boot vCPU starts at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinuxEntry {
    /// The PVH 32-bit entry when the image is a vmlinux with `XEN_ELFNOTE_PHYS32_ENTRY`,
    /// else the 64-bit entry (the default; docs/vmm.md "PVH boot").
    #[default]
    PvhIfPresent,
    /// Always the 64-bit entry with a zero page.
    Long64,
}

/// Loads a Linux kernel (and initrd) and returns the boot vCPU's registers, at the default
/// entry ([`LinuxEntry::PvhIfPresent`]).
pub fn load(
    mem: &GuestMemory,
    kernel: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<BootRegs, LoadError> {
    load_with_entry(mem, kernel, cmdline, initrd, LinuxEntry::default())
}

/// [`load`] with the entry chosen by the caller. The zero page is written in both cases (a
/// PVH kernel ignores it).
pub fn load_with_entry(
    mem: &GuestMemory,
    kernel: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
    entry: LinuxEntry,
) -> Result<BootRegs, LoadError> {
    let mem_size = memory::size(mem);
    let format = detect(kernel).ok_or_else(|| LoadError::MalformedKernel {
        reason: "neither a bzImage (no HdrS setup header) nor an ELF".to_string(),
    })?;
    let mut cursor = Cursor::new(kernel);
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    let malformed = |e: linux_loader::loader::Error| LoadError::MalformedKernel {
        reason: e.to_string(),
    };
    let mut pvh_entry = None;
    let (loaded, header) = match format {
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut cursor, highmem).map_err(malformed)?;
            (
                LoadedImage {
                    entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY,
                    end: r.kernel_end,
                },
                r.setup_header,
            )
        }
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut cursor, highmem).map_err(malformed)?;
            if let PvhBootCapability::PvhEntryPresent(addr) = r.pvh_boot_cap {
                pvh_entry = Some(addr.0);
            }
            (
                LoadedImage {
                    entry: r.kernel_load.0,
                    end: r.kernel_end,
                },
                r.setup_header,
            )
        }
    };
    if loaded.end > mem_size {
        return Err(LoadError::DoesNotFit {
            end: loaded.end,
            mem: mem_size,
        });
    }

    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.kernel_alignment = KERNEL_ALIGNMENT;

    if cmdline.len() > layout::CMDLINE_MAX || cmdline.contains('\0') {
        return Err(LoadError::Cmdline {
            reason: format!(
                "at most {} bytes without NUL are allowed",
                layout::CMDLINE_MAX
            ),
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE))
        .map_err(|_| LoadError::GuestMemory {
            what: "the command line",
            gpa: layout::CMDLINE,
        })?;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = bytes.len() as u32;

    if let Some(initrd) = initrd {
        // Top of RAM, page aligned, above the kernel (as Firecracker and QEMU place it).
        let len = initrd.len() as u64;
        let addr = mem_size
            .checked_sub(len)
            .map(|a| a & !(layout::PAGE_SIZE - 1));
        match addr {
            Some(addr) if addr >= loaded.end => {
                mem.write_slice(initrd, GuestAddress(addr)).map_err(|_| {
                    LoadError::GuestMemory {
                        what: "the initrd",
                        gpa: addr,
                    }
                })?;
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = len as u32;
            }
            _ => {
                return Err(LoadError::DoesNotFit {
                    end: loaded.end + len,
                    mem: mem_size,
                });
            }
        }
    }

    let e820 = [
        boot_e820_entry {
            addr: 0,
            size: layout::EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: layout::RESERVED_LOW_START,
            size: layout::HIMEM_START - layout::RESERVED_LOW_START,
            r#type: E820_RESERVED,
        },
        boot_e820_entry {
            addr: layout::HIMEM_START,
            size: mem_size - layout::HIMEM_START,
            r#type: E820_RAM,
        },
    ];
    params.e820_table[..e820.len()].copy_from_slice(&e820);
    params.e820_entries = e820.len() as u8;
    // Machine::new wrote the ACPI tables; protocol 2.14+ kernels take the RSDP from here.
    params.acpi_rsdp_addr = layout::ACPI_RSDP;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE))
        .map_err(|_| LoadError::GuestMemory {
            what: "the zero page",
            gpa: layout::ZERO_PAGE,
        })?;

    if let (Some(pvh_entry), LinuxEntry::PvhIfPresent) = (pvh_entry, entry) {
        let initrd = (params.hdr.ramdisk_size != 0).then(|| {
            (
                u64::from(params.hdr.ramdisk_image),
                u64::from(params.hdr.ramdisk_size),
            )
        });
        let info = pvh::StartInfo {
            cmdline_paddr: layout::CMDLINE,
            initrd,
            // Xen's memmap types are e820's (1 RAM, 2 reserved): the reserved BIOS/ACPI area
            // stays reserved for a PVH guest too.
            memmap: e820.iter().map(|e| (e.addr, e.size, e.r#type)).collect(),
            // The ACPI tables `loader::acpi` wrote for every VM (MADT: the vCPUs, the IOAPIC).
            rsdp_paddr: layout::ACPI_RSDP,
        };
        return pvh::write_start_info(mem, pvh_entry, &info);
    }

    Ok(BootRegs {
        rip: loaded.entry,
        rsp: layout::BOOT_STACK,
        rsi: layout::ZERO_PAGE,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: setup header with HdrS, protocol 2.15, one setup sector, a
    /// 64 KiB "protected-mode kernel" of 0x90 bytes.
    fn fake_bzimage() -> Vec<u8> {
        let mut image = vec![0u8; 2 * 512 + 0x10000];
        image[0x1f1] = 1; // setup_sects
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
        image[0x211] = 0x01; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        for b in &mut image[1024..] {
            *b = 0x90;
        }
        image
    }

    #[test]
    fn bzimage_gets_zero_page_e820_and_cmdline() {
        let mem = memory::create(64 << 20).unwrap();
        let regs = load(&mem, &fake_bzimage(), "console=ttyS0", Some(&[7u8; 5000])).unwrap();
        assert_eq!(regs.rip, layout::HIMEM_START + BZIMAGE_64BIT_ENTRY);
        assert_eq!(regs.rsi, layout::ZERO_PAGE);
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE as u32);
        assert_eq!({ params.e820_entries }, 3);
        let reserved = { params.e820_table[1] };
        assert_eq!(
            ({ reserved.addr }, { reserved.size }, { reserved.r#type }),
            (
                layout::EBDA_START,
                layout::HIMEM_START - layout::EBDA_START,
                2
            ),
            "the EBDA, ACPI tables and BIOS area are reserved"
        );
        assert!(
            layout::ACPI_RSDP >= reserved.addr && layout::ACPI_END <= reserved.addr + reserved.size
        );
        assert_eq!({ params.acpi_rsdp_addr }, layout::ACPI_RSDP);
        let top = { params.e820_table[2] };
        assert_eq!(
            ({ top.addr }, { top.size }),
            (layout::HIMEM_START, (64 << 20) - layout::HIMEM_START)
        );
        let (image, size) = ({ hdr.ramdisk_image }, { hdr.ramdisk_size });
        assert_eq!(size, 5000);
        assert_eq!(u64::from(image) % layout::PAGE_SIZE, 0);
        assert!(u64::from(image) + 5000 <= 64 << 20);
        let mut kernel_byte = [0u8; 1];
        mem.read_slice(&mut kernel_byte, GuestAddress(layout::HIMEM_START))
            .unwrap();
        assert_eq!(kernel_byte, [0x90]);
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(layout::CMDLINE))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    #[test]
    fn unknown_and_truncated_kernels_are_clear_errors() {
        let mem = memory::create(64 << 20).unwrap();
        let err = load(&mem, &[0u8; 4096], "", None).unwrap_err();
        assert!(err.to_string().contains("neither a bzImage"), "{err}");
        let image = fake_bzimage();
        let err = load(&mem, &image[..0x300], "", None).unwrap_err();
        assert!(matches!(err, LoadError::MalformedKernel { .. }), "{err}");
    }

    #[test]
    fn initrd_too_large_does_not_fit() {
        let mem = memory::create(32 << 20).unwrap();
        let err = load(&mem, &fake_bzimage(), "", Some(&vec![0u8; 40 << 20])).unwrap_err();
        assert!(matches!(err, LoadError::DoesNotFit { .. }), "{err}");
    }

    /// A minimal vmlinux-like ELF64: one PT_LOAD of 0x100 bytes at 16 MiB (entry there) and,
    /// with `pvh_entry`, a PT_NOTE holding one "Xen" note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY)
    /// whose descriptor is the 32-bit entry; `desc_len` below 4 makes the note malformed.
    fn fake_vmlinux(pvh_entry: Option<u32>, desc_len: u32) -> Vec<u8> {
        let mut image = vec![0u8; 0x300];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 2; // ELFCLASS64
        image[5] = 1; // little endian
        image[6] = 1; // EV_CURRENT
        let put16 = |img: &mut Vec<u8>, at: usize, v: u16| {
            img[at..at + 2].copy_from_slice(&v.to_le_bytes())
        };
        let put32 = |img: &mut Vec<u8>, at: usize, v: u32| {
            img[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        let put64 = |img: &mut Vec<u8>, at: usize, v: u64| {
            img[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        put16(&mut image, 16, 2); // ET_EXEC
        put16(&mut image, 18, 0x3e); // EM_X86_64
        put32(&mut image, 20, 1);
        put64(&mut image, 24, 0x100_0000); // e_entry
        put64(&mut image, 32, 64); // e_phoff
        put16(&mut image, 52, 64); // e_ehsize
        put16(&mut image, 54, 56); // e_phentsize
        put16(&mut image, 56, if pvh_entry.is_some() { 2 } else { 1 });
        // PT_LOAD: file 0x200..0x300 -> 16 MiB.
        let ph = 64;
        put32(&mut image, ph, 1);
        put32(&mut image, ph + 4, 5);
        put64(&mut image, ph + 8, 0x200);
        put64(&mut image, ph + 16, 0xffff_ffff_8100_0000);
        put64(&mut image, ph + 24, 0x100_0000);
        put64(&mut image, ph + 32, 0x100);
        put64(&mut image, ph + 40, 0x100);
        if let Some(entry) = pvh_entry {
            // PT_NOTE at 0x180: namesz 4, descsz, type 18, "Xen\0", the entry.
            let ph = 64 + 56;
            put32(&mut image, ph, 4);
            put64(&mut image, ph + 8, 0x180);
            put64(&mut image, ph + 32, 20);
            put64(&mut image, ph + 40, 20);
            put32(&mut image, 0x180, 4);
            put32(&mut image, 0x184, desc_len);
            put32(&mut image, 0x188, 18);
            image[0x18c..0x190].copy_from_slice(b"Xen\0");
            put32(&mut image, 0x190, entry);
        }
        for b in &mut image[0x200..] {
            *b = 0xf4;
        }
        image
    }

    #[test]
    fn a_vmlinux_with_a_pvh_note_is_entered_at_its_32_bit_entry_with_a_start_info() {
        use crate::vmm::vstate::vcpu::BootMode;
        let mem = memory::create(64 << 20).unwrap();
        let image = fake_vmlinux(Some(0x100_0040), 4);
        let regs = load(&mem, &image, "console=ttyS0", Some(&[9u8; 3000])).unwrap();
        assert_eq!(regs.mode, BootMode::Protected32);
        assert_eq!((regs.rip, regs.rbx), (0x100_0040, pvh::START_INFO));
        let magic: u32 = mem.read_obj(GuestAddress(pvh::START_INFO)).unwrap();
        assert_eq!(magic, pvh::XEN_HVM_START_MAGIC_VALUE);
        let cmdline: u64 = mem.read_obj(GuestAddress(pvh::START_INFO + 24)).unwrap();
        assert_eq!(cmdline, layout::CMDLINE);
        let entries: u32 = mem.read_obj(GuestAddress(pvh::START_INFO + 48)).unwrap();
        assert_eq!(entries, 3, "RAM, the reserved BIOS/ACPI area, RAM");
        let reserved: u32 = mem.read_obj(GuestAddress(pvh::MEMMAP + 24 + 16)).unwrap();
        assert_eq!(reserved, pvh::XEN_HVM_MEMMAP_TYPE_RESERVED);
        let rsdp: u64 = mem.read_obj(GuestAddress(pvh::START_INFO + 32)).unwrap();
        assert_eq!(
            rsdp,
            layout::ACPI_RSDP,
            "the MADT's tables reach a PVH guest"
        );
        let modules: u32 = mem.read_obj(GuestAddress(pvh::START_INFO + 12)).unwrap();
        assert_eq!(modules, 1);
        let initrd_size: u64 = mem.read_obj(GuestAddress(pvh::MODLIST + 8)).unwrap();
        assert_eq!(initrd_size, 3000);
        let top_size: u64 = mem
            .read_obj(GuestAddress(pvh::MEMMAP + 2 * 24 + 8))
            .unwrap();
        assert_eq!(top_size, (64 << 20) - layout::HIMEM_START);

        let regs = load_with_entry(&mem, &image, "", None, LinuxEntry::Long64).unwrap();
        assert_eq!(regs.mode, BootMode::Long64);
        assert_eq!((regs.rip, regs.rsi), (0x100_0000, layout::ZERO_PAGE));
    }

    #[test]
    fn a_vmlinux_without_a_pvh_note_uses_the_64_bit_entry() {
        use crate::vmm::vstate::vcpu::BootMode;
        let mem = memory::create(64 << 20).unwrap();
        let regs = load(&mem, &fake_vmlinux(None, 4), "", None).unwrap();
        assert_eq!(regs.mode, BootMode::Long64);
        assert_eq!(regs.rip, 0x100_0000);
    }

    #[test]
    fn a_pvh_note_too_short_for_an_entry_is_a_clear_error() {
        let mem = memory::create(64 << 20).unwrap();
        let err = load(&mem, &fake_vmlinux(Some(0x100_0040), 2), "", None).unwrap_err();
        assert!(matches!(err, LoadError::MalformedKernel { .. }), "{err}");
    }

    #[test]
    fn virtio_devices_are_announced_firecracker_style() {
        assert_eq!(
            virtio_mmio_arg(0xd000_1000, 5),
            "virtio_mmio.device=4K@0xd0001000:5"
        );
    }
}
