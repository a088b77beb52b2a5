//! Interrupts seen from ring 3: enabling the local APIC, routing an IOAPIC input to a vector,
//! and the shim's halt-until-interrupt service.
//!
//! The APIC and IOAPIC are KVM's in-kernel devices at their PC default addresses, reached by
//! MMIO from ring 3 through the shim's identity map (pvm-guest-spike.md section 1(d) measured
//! this path with a ring-0 guest). The shim's handler counts every external interrupt in
//! `shim_irq_count`; the invariant kept here is that `halt_until_interrupt(seen)` returns as
//! soon as that count differs from `seen`, so a wake-up is never lost.

const LAPIC_SVR: u64 = 0xfee0_00f0;
const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOAPIC_WINDOW: u64 = 0x10;

unsafe extern "C" {
    static shim_irq_count: u64;
}

/// External interrupts handled so far.
pub fn count() -> u64 {
    // SAFETY: shim_irq_count is an aligned u64 in the shim's data, written only by its
    // interrupt handler; a volatile read sees the latest value.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(shim_irq_count)) }
}

pub fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: addr is a register of KVM's in-kernel LAPIC or IOAPIC, identity-mapped with
    // the U bit by the shim; the store exits to KVM and touches no guest memory.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Software-enables the local APIC (SVR: enable bit, spurious vector 0xff).
pub fn enable_lapic() {
    mmio_write32(LAPIC_SVR, 0x1ff);
}

/// Routes IOAPIC input `gsi` to `vector` on APIC 0: fixed delivery, edge triggered, unmasked.
pub fn route(gsi: u32, vector: u8) {
    let low = 0x10 + 2 * gsi;
    mmio_write32(IOAPIC_BASE, low + 1);
    mmio_write32(IOAPIC_BASE + IOAPIC_WINDOW, 0); // destination APIC id 0
    mmio_write32(IOAPIC_BASE, low);
    mmio_write32(IOAPIC_BASE + IOAPIC_WINDOW, u32::from(vector));
}

/// Halts the vCPU until an interrupt arrives, unless one arrived since `seen` was read.
pub fn halt_until_interrupt(seen: u64) {
    // SAFETY: `hlt` at ring 3 raises #GP, which the shim turns into its halt service: it
    // halts (or not, see above), skips the instruction and returns with every register intact.
    unsafe { core::arch::asm!("hlt", in("rdi") seen, options(nostack)) }
}
