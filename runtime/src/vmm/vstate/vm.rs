//! The KVM VM: file descriptor, in-kernel irqchip (two 8259 PICs and the IOAPIC), PIT,
//! memslots with dirty logging, and the VM-level part of a snapshot (`VmState`).
//!
//! GSI routing is KVM's default (GSI n -> PIC pin n for n < 16, IOAPIC pin n) except that GSI
//! 0, the PIT, reaches IOAPIC pin 2 and nothing else reaches pin 2: a PC's wiring, which the
//! MADT's interrupt source override (ISA IRQ 0 -> GSI 2, `loader::acpi`) announces.
//!
//! Invariant: the irqchip and the PIT exist before any vCPU is created (KVM requires it) and
//! every RAM region is registered with `KVM_MEM_LOG_DIRTY_PAGES`, so the dirty log covers all
//! of guest memory from the first instruction on.

use super::{KvmOpError, KvmResultExt};
use crate::vmm::layout;
use crate::vmm::memory::GuestMemory;
use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY, kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
// The GSI routing table (`pc_gsi_routing`).
use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KvmIrqRouting, kvm_irq_routing_entry, kvm_irq_routing_irqchip,
};
use std::fmt;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The KVM device cannot be opened.
    #[error(
        "cannot open {path} ({source}); colo needs KVM: load the kvm module and check permissions"
    )]
    KvmUnavailable {
        /// The device path.
        path: String,
        /// The open error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmOpError),
}

/// The KVM device: `/dev/kvm`, or `$COLO_KVM_DEVICE` if set (lets tests and operators point
/// colo at another node, e.g. a missing one to check the error path).
pub fn kvm_device_path() -> String {
    std::env::var("COLO_KVM_DEVICE").unwrap_or_else(|_| "/dev/kvm".to_string())
}

/// IOAPIC inputs of KVM's IOAPIC.
const IOAPIC_PINS: u32 = 24;

/// The routing table described in the module doc.
fn pc_gsi_routing() -> KvmIrqRouting {
    let route = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
        e
    };
    let mut entries = Vec::new();
    for gsi in 0..16 {
        let (chip, pin) = if gsi < 8 {
            (KVM_IRQCHIP_PIC_MASTER, gsi)
        } else {
            (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
        };
        entries.push(route(gsi, chip, pin));
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => entries.push(route(0, KVM_IRQCHIP_IOAPIC, layout::PIT_GSI)),
            g if g == layout::PIT_GSI => {}
            g => entries.push(route(g, KVM_IRQCHIP_IOAPIC, g)),
        }
    }
    KvmIrqRouting::from_entries(&entries).expect("40 routes fit a kvm_irq_routing")
}

/// A KVM VM with its in-kernel devices.
pub struct KvmVm {
    kvm: Kvm,
    fd: VmFd,
}

impl fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmVm").finish_non_exhaustive()
    }
}

impl KvmVm {
    /// Opens the KVM device ([`kvm_device_path`]) and creates a VM with irqchip and PIT.
    pub fn new() -> Result<KvmVm, VmError> {
        let path = kvm_device_path();
        let cpath = std::ffi::CString::new(path.clone()).map_err(|_| VmError::KvmUnavailable {
            path: path.clone(),
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let kvm = Kvm::new_with_path(&cpath)
            .map_err(|source| VmError::KvmUnavailable { path, source })?;
        let fd = kvm.create_vm().op("KVM_CREATE_VM")?;
        fd.set_tss_address(layout::KVM_TSS as usize)
            .op("KVM_SET_TSS_ADDR")?;
        fd.create_irq_chip().op("KVM_CREATE_IRQCHIP")?;
        fd.set_gsi_routing(&pc_gsi_routing())
            .op("KVM_SET_GSI_ROUTING")?;
        // The speaker port is emulated as a dummy so guests probing port 0x61 do not exit.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).op("KVM_CREATE_PIT2")?;
        Ok(KvmVm { kvm, fd })
    }

    /// The /dev/kvm handle (system ioctls: supported CPUID, MSR list).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `mem` as a memslot (slot = region index) with dirty logging.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .expect("a region's start address is inside guest memory");
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: KVM_MEM_LOG_DIRTY_PAGES,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is the region's live mmap, owned by `mem`; the caller
            // keeps `mem` alive as long as this VM (the machine owns both and drops the VM
            // first), so KVM never accesses unmapped host memory.
            unsafe { self.fd.set_user_memory_region(desc) }.op("KVM_SET_USER_MEMORY_REGION")?;
        }
        Ok(())
    }

    /// The dirty log of memory slot `slot` (`bytes` long): the pages the vCPUs wrote since
    /// the last call, one bit per page. KVM_GET_DIRTY_LOG clears the log and write-protects
    /// the pages again. `memory::take_dirty` merges it with the VMM's own bitmap.
    pub fn dirty_log(&self, slot: u32, bytes: u64) -> Result<Vec<u64>, KvmOpError> {
        self.fd
            .get_dirty_log(slot, bytes as usize)
            .op("KVM_GET_DIRTY_LOG")
    }

    /// The current kvmclock (KVM_GET_CLOCK), in guest nanoseconds.
    pub fn clock_ns(&self) -> Result<u64, KvmOpError> {
        Ok(self.fd.get_clock().op("KVM_GET_CLOCK")?.clock)
    }

    /// Saves both PICs, the IOAPIC, the PIT and the clock. The vCPUs must be paused.
    pub fn save_state(&self) -> Result<VmState, KvmOpError> {
        let chip = |id| -> Result<kvm_irqchip, KvmOpError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).op("KVM_GET_IRQCHIP")?;
            Ok(c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().op("KVM_GET_PIT2")?,
            clock: self.fd.get_clock().op("KVM_GET_CLOCK")?,
        })
    }

    /// Restores what [`KvmVm::save_state`] saved.
    pub fn restore_state(&self, state: &VmState) -> Result<(), KvmOpError> {
        self.fd
            .set_irqchip(&state.pic_master)
            .op("KVM_SET_IRQCHIP (PIC master)")?;
        self.fd
            .set_irqchip(&state.pic_slave)
            .op("KVM_SET_IRQCHIP (PIC slave)")?;
        self.fd
            .set_irqchip(&state.ioapic)
            .op("KVM_SET_IRQCHIP (IOAPIC)")?;
        self.fd.set_pit2(&state.pit).op("KVM_SET_PIT2")?;
        // Clock policy (docs/vmm.md "Clocks"): the guest resumes at exactly the saved
        // kvmclock value, as the vCPUs resume at exactly their saved IA32_TSC. No flags:
        // KVM_GET_CLOCK's TSC_STABLE/HOST_TSC are refused by KVM_SET_CLOCK, and REALTIME
        // (add the wall-clock time since the save) would tie a COLO secondary's guest clock
        // to the skew between the two hosts' wall clocks and make it jump by that much at
        // every checkpoint; without it the secondary lags the primary by the apply latency
        // only, and never runs backwards from what the guest (the primary's memory) saw.
        let mut clock = state.clock;
        clock.flags = 0;
        clock.realtime = 0;
        clock.host_tsc = 0;
        self.fd.set_clock(&clock).op("KVM_SET_CLOCK")?;
        Ok(())
    }
}

/// The VM-level device state of a snapshot.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// Master 8259.
    pub pic_master: kvm_irqchip,
    /// Slave 8259.
    pub pic_slave: kvm_irqchip,
    /// IOAPIC.
    pub ioapic: kvm_irqchip,
    /// i8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

impl fmt::Debug for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmState")
            .field("clock_ns", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

impl VmState {
    /// The interrupt controllers' state as bytes (for equality checks: bindgen unions have
    /// no `PartialEq`).
    pub fn irqchip_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            out.extend(
                bincode::serde::encode_to_vec(chip, bincode::config::standard())
                    .unwrap_or_default(),
            );
        }
        out
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;

    fn ioapic_pins_of(gsi: u32) -> Vec<u32> {
        pc_gsi_routing()
            .as_slice()
            .iter()
            .filter(|e| e.gsi == gsi && e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            .filter_map(|e| {
                // SAFETY: every entry built by pc_gsi_routing is an irqchip route.
                let chip = unsafe { e.u.irqchip };
                (chip.irqchip == KVM_IRQCHIP_IOAPIC).then_some(chip.pin)
            })
            .collect()
    }

    #[test]
    fn the_pit_reaches_ioapic_pin_2_as_the_madt_override_says() {
        assert_eq!(ioapic_pins_of(0), vec![layout::PIT_GSI]);
        assert_eq!(ioapic_pins_of(layout::PIT_GSI), Vec::<u32>::new());
        let disks =
            (0..layout::MAX_DISKS).filter_map(|i| layout::virtio_blk_window(i).map(|w| w.1));
        for gsi in [1, 4, layout::VIRTIO_NET_GSI, 23].into_iter().chain(disks) {
            assert_eq!(ioapic_pins_of(gsi), vec![gsi], "GSI {gsi}");
        }
        let pic_routes = pc_gsi_routing()
            .as_slice()
            .iter()
            .filter(|e| {
                // SAFETY: every entry built by pc_gsi_routing is an irqchip route.
                unsafe { e.u.irqchip }.irqchip != KVM_IRQCHIP_IOAPIC
            })
            .count();
        assert_eq!(pic_routes, 16, "the 8259s keep GSIs 0-15");
    }
}
