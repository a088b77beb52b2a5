//! ELF loading for colo's test guest: PT_LOAD segments go to their physical addresses
//! (linux-loader's `Elf`), the command line goes to `layout::CMDLINE`, and the boot registers
//! carry (command line address, memory size, command line length) as the guest's shim
//! expects (`runtime/guest/src/shim.rs`).
//!
//! Invariant: every byte of the image lands inside guest RAM below the first MiB-aligned
//! byte the VM does not have; a segment outside RAM is a `DoesNotFit` error, not a crash.

use super::{LoadError, LoadedImage};
use crate::vmm::layout;
use crate::vmm::memory::{self, GuestMemory};
use crate::vmm::vstate::vcpu::BootRegs;
use linux_loader::loader::{Elf, KernelLoader};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress};

const ELF_HEADER_LEN: usize = 64;

/// Loads `image` into `mem`.
pub fn load(mem: &GuestMemory, image: &[u8]) -> Result<LoadedImage, LoadError> {
    if image.len() < ELF_HEADER_LEN {
        return Err(LoadError::MalformedElf {
            reason: format!(
                "{} bytes is shorter than an ELF64 header ({ELF_HEADER_LEN})",
                image.len()
            ),
        });
    }
    let mut cursor = Cursor::new(image);
    let result = Elf::load(
        mem,
        None,
        &mut cursor,
        Some(GuestAddress(layout::HIMEM_START)),
    )
    .map_err(|e| {
        let mem_size = memory::size(mem);
        match e {
            linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage)
                if segments_end(image).is_some_and(|end| end > mem_size) =>
            {
                LoadError::DoesNotFit {
                    end: segments_end(image).unwrap_or(0),
                    mem: mem_size,
                }
            }
            other => LoadError::MalformedElf {
                reason: other.to_string(),
            },
        }
    })?;
    let end = result.kernel_end;
    if end > memory::size(mem) {
        return Err(LoadError::DoesNotFit {
            end,
            mem: memory::size(mem),
        });
    }
    Ok(LoadedImage {
        entry: result.kernel_load.0,
        end,
    })
}

/// End of the highest PT_LOAD segment (p_paddr + p_memsz), read from the raw headers; used
/// only to tell "does not fit" apart from "truncated" in error messages.
fn segments_end(image: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| {
        image
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        image
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let phoff = u64_at(0x20)? as usize;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut end = 0u64;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = image
            .get(ph..ph + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))?;
        if p_type == 1 {
            end = end.max(u64_at(ph + 0x18)?.checked_add(u64_at(ph + 0x28)?)?);
        }
    }
    Some(end)
}

/// Writes the test guest's command line and returns the boot registers for `loaded`.
pub fn boot_regs(
    mem: &GuestMemory,
    loaded: &LoadedImage,
    cmdline: &str,
) -> Result<BootRegs, LoadError> {
    if cmdline.len() > layout::CMDLINE_MAX {
        return Err(LoadError::Cmdline {
            reason: format!(
                "{} bytes, at most {} allowed",
                cmdline.len(),
                layout::CMDLINE_MAX
            ),
        });
    }
    if cmdline.contains('\0') {
        return Err(LoadError::Cmdline {
            reason: "contains a NUL byte".to_string(),
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE))
        .map_err(|_| LoadError::GuestMemory {
            what: "the command line",
            gpa: layout::CMDLINE,
        })?;
    Ok(BootRegs {
        rip: loaded.entry,
        rsp: layout::BOOT_STACK,
        rdi: layout::CMDLINE,
        rsi: memory::size(mem),
        rdx: cmdline.len() as u64,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Vec<u8> {
        std::fs::read(crate::vmm::guest::test_guest_path())
            .expect("the build script built the test guest")
    }

    #[test]
    fn guest_image_loads_at_its_link_address() {
        let mem = memory::create(32 << 20).unwrap();
        let loaded = load(&mem, &guest()).unwrap();
        assert_eq!(loaded.entry, 0x20_0000);
        assert!(loaded.end > loaded.entry && loaded.end < layout::GUEST_WORKSET_BASE);
        let mut first = [0u8; 3];
        mem.read_slice(&mut first, GuestAddress(loaded.entry))
            .unwrap();
        // The shim's first instruction: mov r12, rdi (49 89 fc).
        assert_eq!(first, [0x49, 0x89, 0xfc]);
    }

    #[test]
    fn truncated_elf_is_a_clear_error() {
        let mem = memory::create(32 << 20).unwrap();
        let image = guest();
        for len in [0, 10, 63, 200, image.len() / 2] {
            let err = load(&mem, &image[..len]).unwrap_err();
            assert!(
                matches!(err, LoadError::MalformedElf { .. }),
                "len {len}: {err}"
            );
            assert!(
                err.to_string().contains("not a loadable x86-64 ELF"),
                "{err}"
            );
        }
    }

    #[test]
    fn image_beyond_memory_does_not_fit() {
        let mem = memory::create(1 << 20).unwrap();
        let err = load(&mem, &guest()).unwrap_err();
        assert!(matches!(err, LoadError::DoesNotFit { .. }), "{err}");
    }

    #[test]
    fn garbage_is_not_an_elf() {
        let mem = memory::create(32 << 20).unwrap();
        let err = load(&mem, &[0x42u8; 4096]).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }

    #[test]
    fn command_line_goes_to_memory_and_registers() {
        let mem = memory::create(32 << 20).unwrap();
        let loaded = LoadedImage {
            entry: 0x20_0000,
            end: 0x30_0000,
        };
        let regs = boot_regs(&mem, &loaded, "colo.pages=4").unwrap();
        assert_eq!(
            (regs.rip, regs.rdi, regs.rsi, regs.rdx),
            (0x20_0000, layout::CMDLINE, 32 << 20, 12)
        );
        let mut buf = [0u8; 13];
        mem.read_slice(&mut buf, GuestAddress(layout::CMDLINE))
            .unwrap();
        assert_eq!(&buf, b"colo.pages=4\0");
        assert!(boot_regs(&mem, &loaded, "a\0b").is_err());
        assert!(boot_regs(&mem, &loaded, &"x".repeat(5000)).is_err());
    }
}
