//! The vCPU threads: one OS thread per vCPU running KVM_RUN in an explicit state loop, and
//! the handle the machine uses to resume, pause and stop it.
//!
//! Phases of one vCPU (`VcpuPhase`), each transition made by exactly one side:
//! ```text
//!   Paused --resume (controller)--> Running
//!   Running --pause request seen, pending I/O completed (thread)--> Paused
//!   Running --guest exit, fault, shutdown, KVM error (thread)--> Stopped(why)
//!   Stopped --resume after a restore (controller)--> Running
//!   any --quit (controller, on drop)--> thread ends
//! ```
//! Pausing: the controller sets `pause_requested`, then `kvm_run.immediate_exit`, then sends
//! the kick signal. Whatever the thread is doing, KVM_RUN returns EINTR: in the guest, the
//! signal interrupts it; not yet entered, immediate_exit makes it return at once. If the last
//! exit was an MMIO or PIO access, the thread enters KVM_RUN once more with immediate_exit
//! set, so KVM completes that access before the state is read (KVM API docs, "immediate_exit";
//! deps-spike.md section 4). Only then does it publish `Paused` and release the vCPU fd, so a
//! paused vCPU's state is always complete. The same invariant is why the controller reads or
//! writes vCPU state only while the phase is not `Running`.

use crate::vmm::devices::{Bus, DeviceAction};
use kvm_ioctls::{VcpuExit, VcpuFd};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

/// Offset from SIGRTMIN of the signal that kicks a vCPU out of KVM_RUN (Firecracker uses
/// SIGRTMIN + 0 as well).
const KICK_SIGNAL_OFFSET: i32 = 0;

/// Why a vCPU stopped running on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest asked to stop (test guest's EXIT register).
    GuestExit(u64),
    /// The guest reported an exception it could not handle.
    GuestFault {
        /// Exception vector.
        vector: u8,
        /// Error code.
        error_code: u64,
        /// Faulting instruction.
        rip: u64,
        /// CR2.
        addr: u64,
    },
    /// Triple fault or reset request.
    Shutdown,
    /// `hlt` reached userspace (only without an in-kernel irqchip).
    Halted,
    /// KVM could not emulate an instruction (kvm_pvm's emulator lacks many).
    InternalError {
        /// `kvm_run.internal.suberror` (1 = emulation failure).
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// A system event (shutdown, reset, crash) from the guest.
    SystemEvent {
        /// KVM_SYSTEM_EVENT_* type.
        kind: u32,
    },
    /// An exit the VMM does not handle.
    Unhandled(String),
    /// KVM_RUN itself failed.
    KvmError(String),
}

/// The phase of one vCPU (see the module doc for the transitions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuPhase {
    /// Not running; its state may be read and written.
    Paused,
    /// In (or about to enter) KVM_RUN.
    Running,
    /// Stopped on its own; its state may be read and written.
    Stopped(VcpuStop),
}

/// Where a stop is reported to the machine: the first stop of any vCPU.
#[derive(Debug, Default)]
pub struct StopReport {
    first: Mutex<Option<(u64, VcpuStop)>>,
    changed: Condvar,
}

impl StopReport {
    fn report(&self, index: u64, stop: VcpuStop) {
        let mut first = self.first.lock();
        if first.is_none() {
            *first = Some((index, stop));
        }
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for a vCPU to stop; returns its index and reason.
    pub fn wait(&self, timeout: Duration) -> Option<(u64, VcpuStop)> {
        let mut first = self.first.lock();
        self.changed
            .wait_while_for(&mut first, |f| f.is_none(), timeout);
        first.clone()
    }

    /// Forgets a reported stop (after the machine was restored into a runnable state).
    pub fn clear(&self) {
        *self.first.lock() = None;
    }
}

/// Pointer to `kvm_run.immediate_exit` of one vCPU.
struct ImmediateExit(NonNull<AtomicU8>);

// SAFETY: the pointer targets the vCPU's kvm_run mapping, which lives as long as the VcpuFd;
// the VcpuFd is owned by the same `VcpuThread` that owns this pointer and is dropped after
// the thread is joined. All userspace accesses go through `AtomicU8`, so sharing it between
// the controller and the vCPU thread is free of data races.
unsafe impl Send for ImmediateExit {}
// SAFETY: see `Send` above.
unsafe impl Sync for ImmediateExit {}

impl ImmediateExit {
    fn set(&self, value: u8) {
        // SAFETY: valid for the VcpuFd's lifetime (see the Send impl); the VcpuFd outlives
        // every caller.
        unsafe { self.0.as_ref() }.store(value, Ordering::SeqCst);
    }
}

struct Control {
    phase: VcpuPhase,
    quit: bool,
}

struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
    pause_requested: AtomicBool,
    /// Mirror of `control.phase == Running`, written under the mutex together with the phase,
    /// so `request_pause` can skip a vCPU that is not running without taking the mutex.
    running: AtomicBool,
    immediate_exit: ImmediateExit,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock()
    }
}

/// The buses a vCPU dispatches its MMIO and PIO exits to.
#[derive(Clone, Debug)]
pub struct Buses {
    /// Memory-mapped I/O.
    pub mmio: Arc<Bus>,
    /// Port I/O.
    pub pio: Arc<Bus>,
}

/// A vCPU and its thread.
pub struct VcpuThread {
    index: u64,
    fd: Arc<Mutex<VcpuFd>>,
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VcpuThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuThread")
            .field("index", &self.index)
            .field("phase", &self.phase())
            .finish()
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivering the signal is what makes KVM_RUN return EINTR.
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, on_kick)
            .expect("installing the vCPU kick signal handler");
    });
}

impl VcpuThread {
    /// Starts the thread of vCPU `index` in the `Paused` phase.
    pub fn spawn(
        index: u64,
        mut fd: VcpuFd,
        buses: Buses,
        stops: Arc<StopReport>,
    ) -> std::io::Result<VcpuThread> {
        install_kick_handler();
        let ptr = NonNull::from(&mut fd.get_kvm_run().immediate_exit);
        // SAFETY: u8 and AtomicU8 have the same size and alignment; from here on every
        // userspace access to this byte is atomic (through ImmediateExit).
        let atomic = unsafe { AtomicU8::from_ptr(ptr.as_ptr()) };
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                phase: VcpuPhase::Paused,
                quit: false,
            }),
            changed: Condvar::new(),
            pause_requested: AtomicBool::new(false),
            running: AtomicBool::new(false),
            immediate_exit: ImmediateExit(NonNull::from(atomic)),
        });
        let fd = Arc::new(Mutex::new(fd));
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn({
                let (fd, shared) = (fd.clone(), shared.clone());
                move || thread_main(index, &fd, &shared, &buses, &stops)
            })?;
        Ok(VcpuThread {
            index,
            fd,
            shared,
            handle: Some(handle),
        })
    }

    /// The vCPU index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The current phase.
    pub fn phase(&self) -> VcpuPhase {
        self.shared.lock().phase.clone()
    }

    /// Paused --> Running (also Stopped --> Running after a restore).
    pub fn resume(&self) {
        let mut c = self.shared.lock();
        if c.phase != VcpuPhase::Running {
            c.phase = VcpuPhase::Running;
            self.shared.running.store(true, Ordering::SeqCst);
            self.shared.changed.notify_all();
        }
    }

    /// Running --> Paused; returns once the vCPU is paused (or stopped on its own) with its
    /// pending I/O completed.
    pub fn pause(&self) {
        if self.request_pause() {
            self.wait_paused();
        }
    }

    /// First half of [`VcpuThread::pause`]: asks a running vCPU to pause and kicks it out of
    /// KVM_RUN, without waiting. Returns false (and does nothing) if it is not running. A
    /// machine kicks all its vCPUs first and then waits for each, so their exits overlap.
    pub fn request_pause(&self) -> bool {
        if !self.shared.running.load(Ordering::SeqCst) {
            return false;
        }
        self.shared.pause_requested.store(true, Ordering::SeqCst);
        self.shared.immediate_exit.set(1);
        self.kick();
        true
    }

    /// Second half of [`VcpuThread::pause`]: waits until the vCPU has left `Running`, then
    /// withdraws the request.
    pub fn wait_paused(&self) {
        let mut c = self.shared.lock();
        while c.phase == VcpuPhase::Running {
            // Kick again on every wake-up: a signal that arrived between the thread's last
            // check and KVM_RUN is covered by immediate_exit, but a fresh kick costs nothing.
            self.kick();
            self.shared
                .changed
                .wait_for(&mut c, Duration::from_millis(10));
        }
        self.shared.pause_requested.store(false, Ordering::SeqCst);
    }

    fn kick(&self) {
        if let Some(handle) = &self.handle {
            // The thread may already have left KVM_RUN; a failed kill only means it is gone.
            let _ = handle.kill(SIGRTMIN() + KICK_SIGNAL_OFFSET);
        }
    }

    /// Runs `f` on the vCPU fd. Panics if the vCPU is running (a caller-contract violation:
    /// vCPU state may only be touched while paused or stopped).
    pub fn with_fd<T>(&self, f: impl FnOnce(&VcpuFd) -> T) -> T {
        assert!(
            self.phase() != VcpuPhase::Running,
            "vCPU {} state touched while it runs: pause it first",
            self.index
        );
        let fd = self.fd.lock();
        f(&fd)
    }
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        self.pause();
        {
            let mut c = self.shared.lock();
            c.quit = true;
            self.shared.changed.notify_all();
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn thread_main(index: u64, fd: &Mutex<VcpuFd>, shared: &Shared, buses: &Buses, stops: &StopReport) {
    loop {
        {
            let mut c = shared.lock();
            while c.phase != VcpuPhase::Running && !c.quit {
                shared.changed.wait(&mut c);
            }
            if c.quit {
                return;
            }
        }
        let outcome = {
            let mut fd = fd.lock();
            run_until_paused(&mut fd, shared, buses)
        };
        let mut c = shared.lock();
        shared.running.store(false, Ordering::SeqCst);
        c.phase = match outcome {
            // Running --pause request seen, I/O completed--> Paused
            None => VcpuPhase::Paused,
            // Running --guest or KVM stop--> Stopped
            Some(stop) => {
                stops.report(index, stop.clone());
                VcpuPhase::Stopped(stop)
            }
        };
        shared.changed.notify_all();
    }
}

/// Runs the vCPU until a pause is requested (`None`) or it stops (`Some`).
fn run_until_paused(fd: &mut VcpuFd, shared: &Shared, buses: &Buses) -> Option<VcpuStop> {
    let mut io_pending = false;
    loop {
        if shared.pause_requested.load(Ordering::SeqCst) {
            if io_pending {
                // Let KVM finish the last MMIO/PIO access, then return at once.
                shared.immediate_exit.set(1);
                match fd.run() {
                    Err(e) if e.errno() == libc::EINTR => {}
                    Ok(exit) => {
                        if let Some(stop) = handle_exit(exit, buses) {
                            return Some(stop);
                        }
                        continue;
                    }
                    Err(e) => return Some(VcpuStop::KvmError(e.to_string())),
                }
            }
            shared.immediate_exit.set(0);
            return None;
        }
        match fd.run() {
            Ok(exit) => {
                io_pending = true;
                if let Some(stop) = handle_exit(exit, buses) {
                    let stop = match stop {
                        VcpuStop::InternalError { .. } => {
                            // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit, KVM filled the
                            // `internal` member of the kvm_run union.
                            let suberror =
                                unsafe { fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                            VcpuStop::InternalError { suberror }
                        }
                        other => other,
                    };
                    return Some(stop);
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                io_pending = false;
                if !shared.pause_requested.load(Ordering::SeqCst) {
                    // A stale kick (from a pause that found us already paused): rearm.
                    shared.immediate_exit.set(0);
                }
            }
            Err(e) => return Some(VcpuStop::KvmError(e.to_string())),
        }
    }
}

fn device_stop(action: DeviceAction) -> Option<VcpuStop> {
    match action {
        DeviceAction::Continue => None,
        DeviceAction::Exit(code) => Some(VcpuStop::GuestExit(code)),
        DeviceAction::Fault {
            vector,
            error_code,
            rip,
            addr,
        } => Some(VcpuStop::GuestFault {
            vector,
            error_code,
            rip,
            addr,
        }),
    }
}

fn handle_exit(exit: VcpuExit<'_>, buses: &Buses) -> Option<VcpuStop> {
    match exit {
        VcpuExit::MmioRead(addr, data) => {
            buses.mmio.read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => device_stop(buses.mmio.write(addr, data)),
        VcpuExit::IoIn(port, data) => {
            buses.pio.read(u64::from(port), data);
            None
        }
        VcpuExit::IoOut(port, data) => device_stop(buses.pio.write(u64::from(port), data)),
        VcpuExit::Hlt => Some(VcpuStop::Halted),
        VcpuExit::Shutdown => Some(VcpuStop::Shutdown),
        VcpuExit::FailEntry(reason, _cpu) => Some(VcpuStop::FailEntry { reason }),
        VcpuExit::InternalError => Some(VcpuStop::InternalError { suberror: 0 }),
        VcpuExit::SystemEvent(kind, _) => Some(VcpuStop::SystemEvent { kind }),
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => None,
        other => Some(VcpuStop::Unhandled(format!("{other:?}"))),
    }
}
