//! Time for the net-server workload: the TSC read at ring 3 (`rdtsc` is native under
//! kvm_pvm) scaled by the frequency the VMM passes as `colo.tsc_khz`, and the local APIC's
//! one-shot timer to wake the halted vCPU when smoltcp has a timer due.
//!
//! Invariant: `now_us` never goes backwards (the TSC is monotonic on one vCPU, and a
//! checkpoint restores it with the rest of the vCPU state). KVM's LAPIC timer counts at its
//! 1 GHz bus clock (APIC_BUS_CYCLE_NS = 1) with divide-by-1, so one count is one nanosecond.

use crate::irq;

const LAPIC_LVT_TIMER: u64 = 0xfee0_0320;
const LAPIC_TIMER_INITIAL: u64 = 0xfee0_0380;
const LAPIC_TIMER_DIVIDE: u64 = 0xfee0_03e0;
/// Divide configuration 0b1011: divide by 1.
const DIVIDE_BY_1: u32 = 0xb;

/// TSC-based microsecond clock.
pub struct Clock {
    tsc_per_us: u64,
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter (CR4.TSD is clear: ring 3 may use it).
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Clock {
    /// A clock for a TSC of `tsc_khz` kHz (at least 1 MHz is assumed if the VMM gave none).
    pub fn new(tsc_khz: u64) -> Clock {
        Clock {
            tsc_per_us: (tsc_khz / 1000).max(1),
        }
    }

    /// Microseconds since the TSC's zero.
    pub fn now_us(&self) -> u64 {
        rdtsc() / self.tsc_per_us
    }

    /// Raw TSC (a value outside the checkpointed guest state's control: it differs between
    /// the primary's and the secondary's runs).
    pub fn raw(&self) -> u64 {
        rdtsc()
    }
}

/// Programs the LAPIC timer as one-shot on `vector`, divide by 1 (call once).
pub fn timer_init(vector: u8) {
    irq::mmio_write32(LAPIC_TIMER_DIVIDE, DIVIDE_BY_1);
    irq::mmio_write32(LAPIC_LVT_TIMER, u32::from(vector));
}

/// Arms the one-shot timer to fire after `us` microseconds (capped at 4 s by the counter).
pub fn timer_arm(us: u64) {
    let ns = us.saturating_mul(1000).clamp(1, u64::from(u32::MAX));
    irq::mmio_write32(LAPIC_TIMER_INITIAL, ns as u32);
}
