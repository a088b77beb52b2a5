//! The idle workload: halt until an interrupt, print each wake-up. It exercises what the
//! virtio devices need: interrupt delivery through KVM's irqfd, IOAPIC and
//! LAPIC to a ring-3 guest, and the shim's race-free halt service.

use crate::config::Config;
use crate::{irq, println};

/// The vector the routed interrupt arrives on.
const VECTOR: u8 = 0x30;

pub fn run(config: &Config) -> ! {
    irq::enable_lapic();
    irq::route(config.irq, VECTOR);
    // Read the count before announcing readiness: the VMM may raise the line as soon as it
    // sees the line below, and that interrupt must count as new.
    let mut seen = irq::count();
    println!(
        "colo-guest: idle workload, waiting for interrupts on GSI {}",
        config.irq
    );
    let mut wakes = 0u64;
    loop {
        irq::halt_until_interrupt(seen);
        let now = irq::count();
        if now != seen {
            wakes += 1;
            seen = now;
            println!("colo-guest: woke {wakes} interrupts {now}");
        }
        if config.steps != 0 && wakes >= config.steps {
            println!("colo-guest: done after {wakes} wake-ups");
            crate::console::exit(0);
        }
    }
}
