//! ACPI tables for every VM: RSDP, XSDT, FADT, an empty DSDT and the MADT, written into the
//! BIOS area below 1 MiB (`layout::ACPI_RSDP` .. `layout::ACPI_END`) where a PC firmware
//! leaves them, so an OS finds its processors and interrupt controllers without an MP table.
//!
//! The MADT lists one enabled Processor Local APIC per vCPU with the APIC id the VMM's CPUID
//! gives that vCPU and KVM gives its LAPIC ([`apic_id`]), KVM's IOAPIC at `layout::IOAPIC_BASE` with GSI base 0,
//! the PC's interrupt source override ISA IRQ 0 -> GSI 2 (the VM's GSI routing puts the PIT
//! on IOAPIC pin 2 to match, `vstate::vm`), and LINT1 of every processor as NMI. The FADT
//! declares a hardware-reduced ACPI platform (no PM timer, no SCI, no fixed-feature registers:
//! nothing the VMM does not emulate) and points at the DSDT, which has no AML: Linux needs
//! both present to keep ACPI enabled. The same tables serve Linux (`boot_params.acpi_rsdp_addr`
//! and the 0xE0000 scan) and the test guest (which scans for the RSDP itself).
//!
//! Invariant: every table's bytes sum to zero (the RSDP's first 20 bytes and all 36 of them
//! too), every table lies inside `ACPI_RSDP..ACPI_END`, and the loaders' e820 maps mark that
//! range reserved, never RAM.

use super::LoadError;
use crate::vmm::layout;
use crate::vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const OEM_ID: &[u8; 6] = b"COLOVM";
const CREATOR_ID: &[u8; 4] = b"COLO";
const SDT_HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
/// ACPI 6.5 FADT: revision 6, minor version 5, 276 bytes.
const FADT_LEN: usize = 276;
const FADT_REVISION: u8 = 6;
const FADT_MINOR_VERSION: u8 = 5;
/// FADT flags: PWR_BUTTON (4) and SLP_BUTTON (5) "are control methods" (there are none), and
/// HW_REDUCED_ACPI (20).
const FADT_FLAGS: u32 = (1 << 4) | (1 << 5) | (1 << 20);
/// FADT IA-PC boot architecture flags: no VGA (2), MSI not supported (3), no CMOS RTC (5).
const FADT_IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
const MADT_REVISION: u8 = 5;
/// MADT flags: PCAT_COMPAT (the VM has the two 8259s, which the OS must mask).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_ENABLED: u32 = 1;
/// The IOAPIC's id (KVM's IOAPIC resets to id 0, as QEMU's ACPI declares it).
const IOAPIC_ID: u8 = 0;
/// Tables start 16-byte aligned (the RSDP must be; the others are for tidiness).
const ALIGN: u64 = 16;

/// The APIC id of vCPU `index`: KVM gives vCPU n LAPIC id n (`KVM_CREATE_VCPU`'s id) and
/// `vcpu::configure` reports the index in CPUID leaves 1 and 0xb, so it is the index. A VM has
/// at most 255 vCPUs, so the id stays 0..=254 and never is the xAPIC broadcast id 0xff
/// (`tests/smp.rs` reads CPUID and the LAPIC of every vCPU back against it).
pub fn apic_id(index: u64) -> u8 {
    u8::try_from(index.min(254)).expect("at most 254")
}

/// One table: its guest-physical address and its bytes.
pub type Table = (u64, Vec<u8>);

/// Where each table went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiLayout {
    /// The RSDP (`boot_params.acpi_rsdp_addr`).
    pub rsdp: u64,
    /// The XSDT.
    pub xsdt: u64,
    /// The FADT.
    pub fadt: u64,
    /// The DSDT.
    pub dsdt: u64,
    /// The MADT.
    pub madt: u64,
    /// First byte after the last table.
    pub end: u64,
}

/// The byte sum's complement: the value that makes `bytes` (with this byte at 0) sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// A system description table: header with `signature` and `revision`, then `body`.
fn sdt(signature: &[u8; 4], revision: u8, table_id: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(SDT_HEADER_LEN + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((SDT_HEADER_LEN + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(table_id);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes, below
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+ (XSDT)
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum, below
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(layout::LAPIC_BASE as u32).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for index in 0..vcpus {
        // Processor UID = vCPU index, APIC id as CPUID reports it; 8 bytes.
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, index]);
        body.push(apic_id(u64::from(index)));
        body.extend_from_slice(&MADT_ENABLED.to_le_bytes());
    }
    // I/O APIC: 12 bytes.
    body.extend_from_slice(&[MADT_IO_APIC, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&(layout::IOAPIC_BASE as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    // ISA IRQ 0 (the PIT) -> GSI 2, polarity and trigger as the bus defines (0): 10 bytes.
    body.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, 0]);
    body.extend_from_slice(&layout::PIT_GSI.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    // LINT1 of every processor (UID 0xff) is NMI, as the VMM programs it: 6 bytes.
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff]);
    body.extend_from_slice(&0u16.to_le_bytes());
    body.push(1);
    sdt(b"APIC", MADT_REVISION, b"COLOMADT", &body)
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut t = vec![0u8; FADT_LEN];
    t[40..44].copy_from_slice(&(dsdt as u32).to_le_bytes()); // DSDT (32-bit copy)
    t[109..111].copy_from_slice(&FADT_IAPC_BOOT_ARCH.to_le_bytes());
    t[112..116].copy_from_slice(&FADT_FLAGS.to_le_bytes());
    t[131] = FADT_MINOR_VERSION;
    t[140..148].copy_from_slice(&dsdt.to_le_bytes()); // X_DSDT
    t[268..276].copy_from_slice(b"COLOKVM\0"); // hypervisor vendor identity
    sdt(b"FACP", FADT_REVISION, b"COLOFADT", &t[SDT_HEADER_LEN..])
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, b"COLOXSDT", &body)
}

fn align(addr: u64) -> u64 {
    addr.div_ceil(ALIGN) * ALIGN
}

/// Builds the tables for a VM with `vcpus` vCPUs: (guest-physical address, bytes) pairs and
/// where each went. Pure: [`write`] puts them into guest memory.
pub fn build(vcpus: u8) -> Result<(AcpiLayout, Vec<Table>), LoadError> {
    if vcpus == 0 {
        return Err(LoadError::Acpi {
            reason: "a VM without vCPUs has no MADT".to_string(),
        });
    }
    let rsdp_at = layout::ACPI_RSDP;
    let xsdt_at = align(rsdp_at + RSDP_LEN as u64);
    // The XSDT has two entries (FADT, MADT).
    let fadt_at = align(xsdt_at + SDT_HEADER_LEN as u64 + 16);
    let dsdt_at = align(fadt_at + FADT_LEN as u64);
    let dsdt = sdt(b"DSDT", 2, b"COLODSDT", &[]);
    let madt_at = align(dsdt_at + dsdt.len() as u64);
    let madt = madt(vcpus);
    let end = madt_at + madt.len() as u64;
    if end > layout::ACPI_END {
        return Err(LoadError::Acpi {
            reason: format!(
                "the tables for {vcpus} vCPUs end at {end:#x}, past {:#x}",
                layout::ACPI_END
            ),
        });
    }
    let tables = vec![
        (rsdp_at, rsdp(xsdt_at)),
        (xsdt_at, xsdt(&[fadt_at, madt_at])),
        (fadt_at, fadt(dsdt_at)),
        (dsdt_at, dsdt),
        (madt_at, madt),
    ];
    let placed = AcpiLayout {
        rsdp: rsdp_at,
        xsdt: xsdt_at,
        fadt: fadt_at,
        dsdt: dsdt_at,
        madt: madt_at,
        end,
    };
    Ok((placed, tables))
}

/// Writes the ACPI tables for `vcpus` vCPUs into `mem`.
pub fn write(mem: &GuestMemory, vcpus: u8) -> Result<AcpiLayout, LoadError> {
    let (placed, tables) = build(vcpus)?;
    for (gpa, bytes) in tables {
        mem.write_slice(&bytes, GuestAddress(gpa))
            .map_err(|_| LoadError::GuestMemory {
                what: "the ACPI tables",
                gpa,
            })?;
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory;

    fn read(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        buf
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x)) == 0
    }

    /// Reads the table at `gpa` back, checking its signature, length field and checksum.
    fn table(mem: &GuestMemory, gpa: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, gpa, SDT_HEADER_LEN);
        assert_eq!(&header[..4], signature, "signature at {gpa:#x}");
        let len = u32_at(&header, 4) as usize;
        assert!(len >= SDT_HEADER_LEN, "{signature:?} length {len}");
        let t = read(mem, gpa, len);
        assert!(sums_to_zero(&t), "{signature:?} checksum");
        assert!(gpa + len as u64 <= layout::ACPI_END);
        t
    }

    /// Finds the RSDP the way Linux's fallback does: 16-byte steps over 0xE0000-0xFFFFF.
    fn scan_for_rsdp(mem: &GuestMemory) -> Option<u64> {
        (0xe_0000u64..0x10_0000)
            .step_by(16)
            .find(|&a| read(mem, a, 8) == b"RSD PTR " && sums_to_zero(&read(mem, a, 20)))
    }

    /// The MADT's entries as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut o = SDT_HEADER_LEN + 8;
        while o < madt.len() {
            let (kind, len) = (madt[o], usize::from(madt[o + 1]));
            assert!(len >= 2 && o + len <= madt.len(), "entry at {o} overruns");
            entries.push((kind, madt[o..o + len].to_vec()));
            o += len;
        }
        entries
    }

    #[test]
    fn tables_parse_back_with_valid_checksums_for_each_vcpu_count() {
        for vcpus in [1u8, 2, 4, 255] {
            let mem = memory::create(32 << 20).unwrap();
            let placed = write(&mem, vcpus).unwrap();
            let rsdp_at = scan_for_rsdp(&mem).expect("the BIOS-area scan finds the RSDP");
            assert_eq!(rsdp_at, placed.rsdp);
            let rsdp = read(&mem, rsdp_at, RSDP_LEN);
            assert!(sums_to_zero(&rsdp), "extended checksum");
            assert_eq!((rsdp[15], u32_at(&rsdp, 20)), (2, RSDP_LEN as u32));

            let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
            let entries: Vec<u64> = (SDT_HEADER_LEN..xsdt.len())
                .step_by(8)
                .map(|o| u64_at(&xsdt, o))
                .collect();
            assert_eq!(entries, vec![placed.fadt, placed.madt]);

            let fadt = table(&mem, entries[0], b"FACP");
            assert_eq!((fadt.len(), fadt[8], fadt[131]), (FADT_LEN, 6, 5));
            assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "hardware-reduced");
            assert_eq!(u64_at(&fadt, 140), u64::from(u32_at(&fadt, 40)));
            let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
            assert_eq!(dsdt.len(), SDT_HEADER_LEN);

            let madt = table(&mem, entries[1], b"APIC");
            assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
            assert_eq!(u32_at(&madt, 40) & 1, 1, "PCAT_COMPAT");
            let entries = madt_entries(&madt);
            let cpus: Vec<(u8, u8, u32)> = entries
                .iter()
                .filter(|(k, _)| *k == MADT_LOCAL_APIC)
                .map(|(_, e)| (e[2], e[3], u32_at(e, 4)))
                .collect();
            let expected: Vec<(u8, u8, u32)> =
                (0..vcpus).map(|i| (i, apic_id(u64::from(i)), 1)).collect();
            assert_eq!(cpus, expected, "one enabled local APIC per vCPU");
            let ioapics: Vec<&Vec<u8>> = entries
                .iter()
                .filter(|(k, _)| *k == MADT_IO_APIC)
                .map(|(_, e)| e)
                .collect();
            assert_eq!(ioapics.len(), 1);
            assert_eq!(
                (u32_at(ioapics[0], 4), u32_at(ioapics[0], 8)),
                (0xfec0_0000, 0)
            );
            let overrides: Vec<(u8, u8, u32)> = entries
                .iter()
                .filter(|(k, _)| *k == MADT_INTERRUPT_OVERRIDE)
                .map(|(_, e)| (e[2], e[3], u32_at(e, 4)))
                .collect();
            assert_eq!(overrides, vec![(0, 0, 2)], "ISA IRQ 0 -> GSI 2");
            assert_eq!(
                entries.len(),
                usize::from(vcpus) + 3,
                "CPUs, IOAPIC, override, NMI"
            );
            assert!(placed.end <= layout::ACPI_END);
        }
    }

    #[test]
    fn apic_ids_are_unique_and_never_the_broadcast_id() {
        let ids: Vec<u8> = (0..=254u64).map(apic_id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(!ids.contains(&0xff));
    }

    #[test]
    fn no_vcpus_is_an_error_and_memory_too_small_is_reported() {
        assert!(matches!(build(0), Err(LoadError::Acpi { .. })));
        let mem = memory::create(512 << 10).unwrap();
        let err = write(&mem, 1).unwrap_err();
        assert!(
            matches!(err, LoadError::GuestMemory { gpa, .. } if gpa >= layout::ACPI_RSDP),
            "{err}"
        );
    }
}
