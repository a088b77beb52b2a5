//! colo's test guest: a tiny CPL0 shim (`shim`) that prepares the machine and drops to ring
//! 3, where this `no_std` Rust program runs natively even under kvm_pvm.
//!
//! The VMM selects the workload on the command line (see `config`); output goes to the MMIO
//! console (`console`). Workloads: `counter`, `smp-counter` (every CPU of the MADT, started
//! by `smp`), `idle`, `net-server` (smoltcp over virtio-net,
//! `server`), `disk-writer` (virtio-blk, `disk`), `fault`; `colo_main` only parses and dispatches.

#![no_std]
#![no_main]

extern crate alloc;

mod abi;
mod clock;
mod config;
mod console;
mod counter;
mod disk;
mod heap;
mod idle;
mod irq;
mod kv;
mod rt;
mod server;
mod shim;
mod smp;
mod smp_counter;
mod virtio_blk;
mod virtio_mmio;
mod virtio_net;

unsafe extern "C" {
    static __heap_start: u8;
}

/// Ring-3 entry, called by the shim with the VMM's boot arguments.
#[unsafe(no_mangle)]
pub extern "C" fn colo_main(cmdline_addr: u64, mem_size: u64, cmdline_len: u64) -> ! {
    // Only the address of the linker-defined symbol is taken (no read: no unsafe needed).
    let heap_start = core::ptr::addr_of!(__heap_start) as usize;
    heap::init(heap_start, abi::WORKSET_BASE as usize);
    let cmdline = if cmdline_addr == 0 || cmdline_len == 0 {
        ""
    } else {
        // SAFETY: the VMM wrote cmdline_len bytes at cmdline_addr (identity-mapped RAM).
        let bytes =
            unsafe { core::slice::from_raw_parts(cmdline_addr as *const u8, cmdline_len as usize) };
        core::str::from_utf8(bytes).unwrap_or("")
    };
    let config = config::Config::parse(cmdline);
    match config.workload.as_str() {
        "counter" => counter::run(&config, mem_size),
        "smp-counter" => smp_counter::run(&config, mem_size),
        "idle" => idle::run(&config),
        "net-server" => server::run(&config),
        "disk-writer" => disk::run(&config),
        // Raises #UD at ring 3, so the VMM's fault reporting can be tested end to end.
        "fault" => {
            // SAFETY: ud2 only raises an exception; the shim reports it and stops the VM.
            unsafe { core::arch::asm!("ud2", options(nostack)) };
            unreachable!("the shim does not return from #UD")
        }
        other => panic!("unknown workload {other:?}"),
    }
}
