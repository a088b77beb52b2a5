//! The machine: one VM with its memory, devices and vCPU threads, and the operations a COLO
//! checkpoint needs from it (pause, capture full or incremental state, apply, resume).
//!
//! Phases of the machine (`MachinePhase`):
//! ```text
//!   Paused (created; loaders and restores happen here) --resume--> Running
//!   Running --pause: every vCPU paused, pending I/O completed--> Paused
//!   Running --a vCPU stopped on its own (guest exit, fault)--> observed by wait_for_stop;
//!            pause() then brings the remaining vCPUs to Paused
//! ```
//! Invariants: vCPU and device state is only read or written in `Paused`; drop order is
//! vCPU threads, then devices, then the KVM VM, then guest memory (KVM must never see an
//! unmapped memslot); every capture leaves the dirty logs cleared, so the next incremental
//! holds exactly the pages written after this capture's pause.

use crate::vmm::devices::console::Console;
use crate::vmm::devices::gate::OutputGate;
use crate::vmm::devices::serial::{COM1_BASE, COM1_IRQ, SerialPort};
use crate::vmm::devices::virtio::blk::BlkDevice;
use crate::vmm::devices::virtio::net::NetDevice;
use crate::vmm::devices::{Bus, BusDevice};
use crate::vmm::layout;
use crate::vmm::loader::{self, LoadError};
use crate::vmm::memory::{self, DirtyPages, GuestMemory, MemoryError};
use crate::vmm::persist::{
    Checkpoint, CheckpointKind, DeviceState, MachineConfig, PersistError, STATE_VERSION,
};
use crate::vmm::vstate::thread::{Buses, StopReport, VcpuPhase, VcpuStop, VcpuThread};
use crate::vmm::vstate::vcpu::{self, VcpuError, VcpuState};
use crate::vmm::vstate::vm::{KvmVm, VmError};
use crate::vmm::vstate::{KvmOpError, KvmResultExt};
use parking_lot::Mutex;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// Errors of machine operations.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Less memory than the guest needs.
    #[error("{requested} MiB of memory is too little: at least {minimum} MiB are needed")]
    TooLittleMemory {
        /// Requested MiB.
        requested: u64,
        /// Minimum MiB.
        minimum: u64,
    },
    /// More memory than fits below the MMIO hole.
    #[error("{requested} MiB of memory is too much: at most {maximum} MiB are supported")]
    TooMuchMemory {
        /// Requested MiB.
        requested: u64,
        /// Maximum MiB.
        maximum: u64,
    },
    /// Zero vCPUs.
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    /// A network-device count outside 1..=maximum.
    #[error("{requested} network devices: a VM has 1 to {maximum}")]
    TooManyNics {
        /// Requested devices.
        requested: usize,
        /// Most supported.
        maximum: usize,
    },
    /// A block-device count outside 1..=maximum.
    #[error("{requested} block devices: a VM has 1 to {maximum}")]
    TooManyDisks {
        /// Requested devices.
        requested: usize,
        /// Most supported.
        maximum: usize,
    },
    /// Creating or configuring the KVM VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmOpError),
    /// vCPU configuration or state transfer failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the guest image failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A state could not be applied.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// A capture would carry block requests in flight (drain them first, see
    /// `node_loop/drain.rs`).
    #[error(
        "cannot save the VM with {count} virtio-blk request(s) in flight: they must complete before the capture"
    )]
    BlkInFlight {
        /// Requests popped from the queue and not completed.
        count: usize,
    },
    /// An operation that needs a paused machine was called while it runs.
    #[error("the VM must be paused for this operation")]
    NotPaused,
    /// Spawning a vCPU thread or an eventfd failed.
    #[error("cannot create {what}: {source}")]
    Os {
        /// What.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The machine's phase (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachinePhase {
    /// No vCPU runs; state may be read and written.
    Paused,
    /// vCPUs run.
    Running,
}

/// Where console and serial output goes.
#[derive(Clone, Debug)]
pub enum ConsoleOutput {
    /// The process's stdout.
    Stdout,
    /// An in-memory capture.
    Capture(crate::vmm::devices::console::OutputCapture),
    /// Discarded.
    Null,
}

impl ConsoleOutput {
    fn writer(&self) -> Box<dyn Write + Send> {
        match self {
            ConsoleOutput::Stdout => Box::new(std::io::stdout()),
            ConsoleOutput::Capture(c) => c.writer(),
            ConsoleOutput::Null => Box::new(std::io::sink()),
        }
    }
}

/// Time and size of one capture (for the benchmark and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Pages carried.
    pub pages: u64,
    /// Dirty-log harvest (KVM log + VMM bitmap).
    pub harvest: Duration,
    /// Device (vCPU, irqchip, PIT, clock, console) state read.
    pub devices: Duration,
    /// Page copy.
    pub copy: Duration,
}

/// One VM.
pub struct Machine {
    // Field order is drop order (see the module invariant).
    vcpus: Vec<VcpuThread>,
    console: Arc<Mutex<Console>>,
    serial: Arc<Mutex<SerialPort>>,
    serial_irq: EventFd,
    /// The virtio-net devices, in device order (at least one).
    nets: Vec<Arc<Mutex<NetDevice>>>,
    /// The virtio-blk devices, in device order (at least one).
    blks: Vec<Arc<Mutex<BlkDevice>>>,
    vm: KvmVm,
    mem: GuestMemory,
    config: MachineConfig,
    /// Between the console devices and `ConsoleOutput` (devices/gate.rs).
    gate: OutputGate,
    save_layout: vcpu::SaveLayout,
    stops: Arc<StopReport>,
    phase: MachinePhase,
    /// Sequence of the last checkpoint captured (source) or applied (target).
    sequence: Option<u64>,
    /// A page buffer handed back by [`Machine::recycle`], reused by the next capture.
    spare_pages: Vec<u8>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("config", &self.config)
            .field("phase", &self.phase)
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Creates a paused VM of the given shape with its devices; no image is loaded yet.
    pub fn new(config: MachineConfig, output: ConsoleOutput) -> Result<Machine, MachineError> {
        Machine::with_devices(config, output, 1, 1)
    }

    /// Creates a paused VM with `disks` virtio-blk devices (1 to `layout::MAX_DISKS`) and
    /// `nets` virtio-net devices (1 to `layout::MAX_NICS`).
    pub fn with_devices(
        config: MachineConfig,
        output: ConsoleOutput,
        disks: usize,
        nets: usize,
    ) -> Result<Machine, MachineError> {
        if config.mem_mib < layout::MIN_MEMORY_MIB {
            return Err(MachineError::TooLittleMemory {
                requested: config.mem_mib,
                minimum: layout::MIN_MEMORY_MIB,
            });
        }
        if config.mem_mib > layout::MAX_MEMORY_MIB {
            return Err(MachineError::TooMuchMemory {
                requested: config.mem_mib,
                maximum: layout::MAX_MEMORY_MIB,
            });
        }
        if config.vcpus == 0 {
            return Err(MachineError::NoVcpus);
        }
        if nets == 0 || nets > layout::MAX_NICS {
            return Err(MachineError::TooManyNics {
                requested: nets,
                maximum: layout::MAX_NICS,
            });
        }
        if disks == 0 || disks > layout::MAX_DISKS {
            return Err(MachineError::TooManyDisks {
                requested: disks,
                maximum: layout::MAX_DISKS,
            });
        }
        // Memory first: on an error below, locals drop in reverse order, so the VM (and its
        // memslot) goes before the mapping it points to.
        let mem = memory::create(config.mem_mib << 20)?;
        // Every VM gets ACPI tables describing its vCPUs and interrupt controllers, whatever
        // is loaded later (the loaders' e820 maps reserve their area).
        loader::acpi::write(&mem, config.vcpus)?;
        let vm = KvmVm::new()?;
        vm.register_memory(&mem)?;

        let gate = OutputGate::new(output.writer());
        let console = Arc::new(Mutex::new(Console::new(mem.clone(), gate.writer())));
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MachineError::Os {
            what: "an eventfd",
            source,
        })?;
        vm.fd()
            .register_irqfd(&serial_irq, COM1_IRQ)
            .op("KVM_IRQFD")?;
        let serial = Arc::new(Mutex::new(SerialPort::new(
            serial_irq.try_clone().map_err(|source| MachineError::Os {
                what: "an eventfd",
                source,
            })?,
            gate.writer(),
        )));
        let mut net_devices = Vec::with_capacity(nets);
        for index in 0..nets {
            let (_, gsi) = layout::virtio_net_window(index).expect("count checked above");
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MachineError::Os {
                what: "an eventfd",
                source,
            })?;
            vm.fd().register_irqfd(&irq, gsi).op("KVM_IRQFD")?;
            net_devices.push(Arc::new(Mutex::new(NetDevice::new(
                mem.clone(),
                layout::DEFAULT_MAC,
                Some(irq),
            ))));
        }
        let mut blks = Vec::with_capacity(disks);
        for index in 0..disks {
            let (_, gsi) = layout::virtio_blk_window(index).ok_or(MachineError::TooManyDisks {
                requested: disks,
                maximum: layout::MAX_DISKS,
            })?;
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MachineError::Os {
                what: "an eventfd",
                source,
            })?;
            vm.fd().register_irqfd(&irq, gsi).op("KVM_IRQFD")?;
            blks.push(Arc::new(Mutex::new(BlkDevice::new(mem.clone(), Some(irq)))));
        }
        let mut mmio = Bus::default();
        mmio.insert(
            layout::CONSOLE_BASE,
            layout::CONSOLE_SIZE,
            console.clone() as Arc<Mutex<dyn BusDevice>>,
        )
        .expect("empty bus");
        for (index, net) in net_devices.iter().enumerate() {
            let (base, _) = layout::virtio_net_window(index).expect("count checked above");
            mmio.insert(
                base,
                layout::VIRTIO_MMIO_SIZE,
                net.clone() as Arc<Mutex<dyn BusDevice>>,
            )
            .expect("every network device has its own window");
        }
        for (index, blk) in blks.iter().enumerate() {
            let (base, _) = layout::virtio_blk_window(index).expect("checked above");
            mmio.insert(
                base,
                layout::VIRTIO_MMIO_SIZE,
                blk.clone() as Arc<Mutex<dyn BusDevice>>,
            )
            .expect("every block device has its own window");
        }
        let mut pio = Bus::default();
        pio.insert(
            u64::from(COM1_BASE),
            8,
            serial.clone() as Arc<Mutex<dyn BusDevice>>,
        )
        .expect("empty bus");
        let buses = Buses {
            mmio: Arc::new(mmio),
            pio: Arc::new(pio),
        };

        let stops = Arc::new(StopReport::default());
        let mut vcpus = Vec::new();
        let mut save_layout = vcpu::SaveLayout::default();
        for index in 0..u64::from(config.vcpus) {
            let fd = vm.fd().create_vcpu(index).op("KVM_CREATE_VCPU")?;
            vcpu::configure(vm.kvm(), &fd, index, &mem, None)?;
            if index == 0 {
                save_layout = vcpu::probe_save_layout(vm.kvm(), vm.fd(), &fd)?;
            }
            let thread =
                VcpuThread::spawn(index, fd, buses.clone(), stops.clone()).map_err(|source| {
                    MachineError::Os {
                        what: "a vCPU thread",
                        source,
                    }
                })?;
            vcpus.push(thread);
        }
        Ok(Machine {
            vcpus,
            console,
            serial,
            serial_irq,
            nets: net_devices,
            blks,
            vm,
            mem,
            config,
            gate,
            save_layout,
            stops,
            phase: MachinePhase::Paused,
            sequence: None,
            spare_pages: Vec::new(),
        })
    }

    /// Loads colo's test guest (or any ELF with the same entry contract) with `cmdline` and
    /// points the boot vCPU at it.
    pub fn load_test_guest(&mut self, image: &[u8], cmdline: &str) -> Result<(), MachineError> {
        self.require_paused()?;
        let loaded = loader::elf::load(&self.mem, image)?;
        if loaded.end > self.mem_bytes() {
            return Err(LoadError::DoesNotFit {
                end: loaded.end,
                mem: self.mem_bytes(),
            }
            .into());
        }
        let regs = loader::elf::boot_regs(&self.mem, &loaded, cmdline)?;
        let (vm, mem) = (&self.vm, &self.mem);
        self.vcpus[0].with_fd(|fd| vcpu::configure(vm.kvm(), fd, 0, mem, Some(regs)))?;
        Ok(())
    }

    /// Loads a Linux kernel (bzImage or vmlinux) with `cmdline` and an optional initrd, and
    /// points the boot vCPU at its 64-bit entry. The machine's virtio-mmio devices are announced
    /// by appending [`Machine::device_cmdline`] to `cmdline` (the convention of Linux's
    /// virtio_mmio driver and Firecracker-compatible kernels), so users never write them.
    pub fn load_linux(
        &mut self,
        kernel: &[u8],
        cmdline: &str,
        initrd: Option<&[u8]>,
    ) -> Result<(), MachineError> {
        self.require_paused()?;
        let cmdline = format!("{} {}", cmdline.trim_end(), self.device_cmdline());
        let regs = loader::linux::load(&self.mem, kernel, cmdline.trim_start(), initrd)?;
        let (vm, mem) = (&self.vm, &self.mem);
        self.vcpus[0].with_fd(|fd| vcpu::configure(vm.kvm(), fd, 0, mem, Some(regs)))?;
        Ok(())
    }

    /// The kernel command-line arguments announcing every virtio-mmio device the machine has
    /// (`virtio_mmio.device=4K@<base>:<irq>`): the network devices, then the block devices,
    /// each in order. A block device without a medium shows as an empty disk.
    pub fn device_cmdline(&self) -> String {
        let nets = (0..self.nets.len()).map(layout::virtio_net_window);
        let blks = (0..self.blks.len()).map(layout::virtio_blk_window);
        nets.chain(blks)
            .map(|w| {
                let (base, gsi) = w.expect("placed at creation");
                loader::linux::virtio_mmio_arg(base, gsi)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// An interrupt line: an eventfd registered as KVM irqfd on `gsi` (IOAPIC input). Each
    /// `write(1)` raises an edge on that input; the registration lives as long as the VM.
    pub fn irq_line(&self, gsi: u32) -> Result<EventFd, MachineError> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MachineError::Os {
            what: "an eventfd",
            source,
        })?;
        self.vm.fd().register_irqfd(&fd, gsi).op("KVM_IRQFD")?;
        Ok(fd)
    }

    /// The first virtio-blk device (at `layout::VIRTIO_BLK_BASE`, GSI `layout::VIRTIO_BLK_GSI`),
    /// without a medium until `set_backend`.
    pub fn blk(&self) -> Arc<Mutex<BlkDevice>> {
        self.blks[0].clone()
    }

    /// Every virtio-blk device, in device order (`layout::virtio_blk_window` places them).
    pub fn blks(&self) -> &[Arc<Mutex<BlkDevice>>] {
        &self.blks
    }

    /// The virtio-net device (at `layout::VIRTIO_NET_BASE`, GSI `layout::VIRTIO_NET_GSI`):
    /// set its sink and MAC, deliver frames to the guest, read its counters. A delivery writes
    /// guest RAM through vm-memory, so its pages are in the next `take_dirty`.
    pub fn net(&self) -> Arc<Mutex<NetDevice>> {
        self.nets[0].clone()
    }

    /// Every virtio-net device, in device order (`layout::virtio_net_window` places them).
    pub fn nets(&self) -> &[Arc<Mutex<NetDevice>>] {
        &self.nets
    }

    /// The vCPUs' TSC frequency in kHz (`KVM_GET_TSC_KHZ`): the test guest's only clock
    /// source, passed to it as `colo.tsc_khz`. Paused only.
    pub fn tsc_khz(&self) -> Result<u32, MachineError> {
        self.require_paused()?;
        Ok(self.vcpus[0]
            .with_fd(|fd| fd.get_tsc_khz())
            .op("KVM_GET_TSC_KHZ")?)
    }

    /// The gate the console and the serial port write through: a replicated secondary holds
    /// its speculative output there (devices/gate.rs).
    pub fn output_gate(&self) -> OutputGate {
        self.gate.clone()
    }

    /// The VM's shape.
    pub fn config(&self) -> MachineConfig {
        self.config
    }

    /// Guest RAM size in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.config.mem_mib << 20
    }

    /// Guest memory (read it only while paused for a consistent view).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The phase.
    pub fn phase(&self) -> MachinePhase {
        self.phase
    }

    fn require_paused(&self) -> Result<(), MachineError> {
        if self.phase == MachinePhase::Paused {
            Ok(())
        } else {
            Err(MachineError::NotPaused)
        }
    }

    /// Paused --> Running.
    pub fn resume(&mut self) {
        for vcpu in &self.vcpus {
            vcpu.resume();
        }
        self.phase = MachinePhase::Running;
    }

    /// Running --> Paused: every vCPU is out of KVM_RUN with its pending I/O completed.
    pub fn pause(&mut self) {
        // Kick every running vCPU first, then wait for each: their exits overlap.
        let requested: Vec<bool> = self.vcpus.iter().map(VcpuThread::request_pause).collect();
        for (vcpu, requested) in self.vcpus.iter().zip(requested) {
            if requested {
                vcpu.wait_paused();
            }
        }
        self.phase = MachinePhase::Paused;
    }

    /// Waits up to `timeout` for a vCPU to stop on its own (guest exit, fault, error).
    pub fn wait_for_stop(&self, timeout: Duration) -> Option<(u64, VcpuStop)> {
        self.stops.wait(timeout)
    }

    /// The phase of every vCPU.
    pub fn vcpu_phases(&self) -> Vec<VcpuPhase> {
        self.vcpus.iter().map(VcpuThread::phase).collect()
    }

    /// virtio-blk requests popped from a queue and not completed yet, over every disk.
    pub fn blk_in_flight(&self) -> usize {
        self.blks.iter().map(|b| b.lock().inflight()).sum()
    }

    /// Reads every device's state. Paused only; refused while a block request is in flight.
    pub fn save_devices(&self) -> Result<DeviceState, MachineError> {
        self.require_paused()?;
        let count = self.blk_in_flight();
        if count > 0 {
            return Err(MachineError::BlkInFlight { count });
        }
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for v in &self.vcpus {
            vcpus.push(v.with_fd(|fd| VcpuState::save(v.index(), fd, &self.save_layout))?);
        }
        Ok(DeviceState {
            vcpus,
            vm: self.vm.save_state()?,
            console: self.console.lock().save(),
            serial: self.serial.lock().save(),
            net: self.nets.iter().map(|n| n.lock().save()).collect(),
            blk: self.blks.iter().map(|b| b.lock().save()).collect(),
        })
    }

    /// Writes every device's state. Paused only.
    pub fn restore_devices(&mut self, state: &DeviceState) -> Result<(), MachineError> {
        self.require_paused()?;
        for (saved, here, what) in [
            (state.vcpus.len(), self.vcpus.len(), "vCPU"),
            (state.net.len(), self.nets.len(), "network device"),
            (state.blk.len(), self.blks.len(), "block device"),
        ] {
            if saved != here {
                return Err(PersistError::Inconsistent(format!(
                    "{saved} {what} states for a VM with {here} {what}s"
                ))
                .into());
            }
        }
        for (v, s) in self.vcpus.iter().zip(&state.vcpus) {
            v.with_fd(|fd| s.restore(fd))?;
        }
        self.vm.restore_state(&state.vm)?;
        self.console.lock().restore(&state.console);
        let irq = self
            .serial_irq
            .try_clone()
            .map_err(|source| MachineError::Os {
                what: "an eventfd",
                source,
            })?;
        let port = SerialPort::restore(irq, self.gate.writer(), &state.serial)
            .map_err(|e| PersistError::Inconsistent(format!("serial state: {e:?}")))?;
        *self.serial.lock() = port;
        for (net, saved) in self.nets.iter().zip(&state.net) {
            net.lock().restore(saved);
        }
        for (blk, saved) in self.blks.iter().zip(&state.blk) {
            blk.lock().restore(saved);
        }
        self.stops.clear();
        Ok(())
    }

    /// Pages written since the last capture (vCPU writes from KVM's dirty log, VMM writes
    /// from the memory bitmap), clearing both.
    pub fn take_dirty(&self) -> Result<DirtyPages, MachineError> {
        Ok(memory::take_dirty(&self.mem, |slot, bytes| {
            self.vm.dirty_log(slot, bytes)
        })?)
    }

    /// Captures a checkpoint. Paused only. A full one carries every page and restarts the
    /// sequence at 0; an incremental one carries the pages dirtied since the previous capture
    /// and needs one before it.
    pub fn capture(
        &mut self,
        kind: CheckpointKind,
    ) -> Result<(Checkpoint, CaptureStats), MachineError> {
        self.require_paused()?;
        let t0 = std::time::Instant::now();
        let dirty = self.take_dirty()?;
        let (ranges, sequence) = match kind {
            CheckpointKind::Full => (DirtyPages::all(&self.mem).ranges().to_vec(), 0),
            CheckpointKind::Incremental => {
                let Some(prev) = self.sequence else {
                    return Err(PersistError::Inconsistent(
                        "an incremental checkpoint needs a full one before it".to_string(),
                    )
                    .into());
                };
                (dirty.ranges().to_vec(), prev + 1)
            }
        };
        let t1 = std::time::Instant::now();
        let devices = self.save_devices()?;
        let t2 = std::time::Instant::now();
        let mut pages = std::mem::take(&mut self.spare_pages);
        memory::read_pages_into(&self.mem, &ranges, &mut pages)?;
        let t3 = std::time::Instant::now();
        self.sequence = Some(sequence);
        let stats = CaptureStats {
            pages: pages.len() as u64 / layout::PAGE_SIZE,
            harvest: t1 - t0,
            devices: t2 - t1,
            copy: t3 - t2,
        };
        let checkpoint = Checkpoint {
            version: STATE_VERSION,
            kind,
            sequence,
            machine: self.config,
            devices,
            ranges,
            pages,
        };
        Ok((checkpoint, stats))
    }

    /// Gives a checkpoint's page buffer back for the next capture (once it has been sent or
    /// applied), so captures do not allocate and first-touch fresh memory each time.
    pub fn recycle(&mut self, checkpoint: Checkpoint) {
        if checkpoint.pages.capacity() > self.spare_pages.capacity() {
            self.spare_pages = checkpoint.pages;
        }
    }

    /// Applies a checkpoint: its pages into memory, then its device state. Paused only. A full
    /// checkpoint may always be applied; an incremental one only right after the checkpoint
    /// it follows (atomic, ordered application: architecture.md invariant 2).
    pub fn apply(&mut self, checkpoint: &Checkpoint) -> Result<(), MachineError> {
        self.require_paused()?;
        checkpoint.validate()?;
        if checkpoint.machine != self.config {
            return Err(PersistError::Inconsistent(format!(
                "state of a {:?} machine applied to a {:?} machine",
                checkpoint.machine, self.config
            ))
            .into());
        }
        if checkpoint.kind == CheckpointKind::Incremental
            && self.sequence.map(|s| s + 1) != Some(checkpoint.sequence)
        {
            return Err(PersistError::Inconsistent(format!(
                "incremental checkpoint {} cannot follow {:?}",
                checkpoint.sequence, self.sequence
            ))
            .into());
        }
        memory::write_pages(&self.mem, &checkpoint.ranges, &checkpoint.pages)?;
        self.restore_devices(&checkpoint.devices)?;
        // What this VM holds now is the checkpoint: forget its own writes before it.
        self.take_dirty()?;
        self.sequence = Some(checkpoint.sequence);
        Ok(())
    }

    /// Creates a paused VM from a full checkpoint.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        output: ConsoleOutput,
    ) -> Result<Machine, MachineError> {
        checkpoint.validate()?;
        if checkpoint.kind != CheckpointKind::Full {
            return Err(PersistError::Inconsistent(
                "a VM can only be created from a full checkpoint".to_string(),
            )
            .into());
        }
        let (disks, nets) = (checkpoint.devices.blk.len(), checkpoint.devices.net.len());
        let mut machine = Machine::with_devices(checkpoint.machine, output, disks, nets)?;
        machine.apply(checkpoint)?;
        Ok(machine)
    }

    /// crc32c of all guest RAM (read it paused for a meaningful value).
    pub fn memory_digest(&self) -> u32 {
        memory::digest(&self.mem)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Join the vCPU threads before the VM and memory go away (field order does the rest).
        self.vcpus.clear();
    }
}
