//! The Linux boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry: a bzImage (its
//! protected-mode kernel loaded at 1 MiB, entry at load address + 0x200) or an uncompressed
//! vmlinux ELF (entry = e_entry), a zero page (`boot_params`) at `layout::ZERO_PAGE` with the
//! image's own setup header, an e820 map, the command line and an optional initrd placed at the
//! top of RAM. The boot vCPU starts in long mode with rsi = zero page, as Firecracker does.
//!
//! The e820 map has RAM below the EBDA, the EBDA/ACPI/BIOS area (0x9FC00-1 MiB) reserved and RAM
//! from 1 MiB; `acpi_rsdp_addr` points at the RSDP of the tables `loader::acpi` wrote.
//!
//! virtio-mmio devices are announced on the command line the way
//! Firecracker-compatible kernels expect (`virtio_mmio.device=4K@0xd0001000:5`, see
//! [`virtio_mmio_arg`]). Invariant: every structure written lies inside RAM, the initrd never
//! overlaps the kernel, and a malformed image is an error, never a panic.

use super::{LoadError, LoadedImage};
use crate::layout;
use crate::memory::{self, GuestMemory};
use crate::vstate::vcpu::BootRegs;
use linux_loader::bootparam::{boot_e820_entry, boot_params};
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

/// Loads a Linux kernel (and initrd) and returns the boot vCPU's registers.
pub fn load(
    mem: &GuestMemory,
    kernel: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
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

    Ok(BootRegs {
        rip: loaded.entry,
        rsp: layout::BOOT_STACK,
        rdi: 0,
        rsi: layout::ZERO_PAGE,
        rdx: 0,
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

    #[test]
    fn virtio_devices_are_announced_firecracker_style() {
        assert_eq!(
            virtio_mmio_arg(0xd000_1000, 5),
            "virtio_mmio.device=4K@0xd0001000:5"
        );
    }
}
