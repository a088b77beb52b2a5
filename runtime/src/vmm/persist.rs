//! Snapshots and checkpoints: the Persist states of every device composed into one
//! [`Checkpoint`] (device state + page ranges + their bytes), and its file format.
//!
//! A full checkpoint carries every page; an incremental one the pages dirtied since the
//! previous checkpoint. Applying a full checkpoint and then incrementals 1, 2, ... n in order
//! reproduces the source VM at the pause of n (checked by the machine: sequences must follow
//! each other). Invariant of the file format: nothing is decoded before the magic, the
//! version and a crc32c over the whole file have been checked, so a corrupt or foreign file
//! is a clear error and never a panic or a half-restored VM.
//!
//! File layout (little endian): `COLOSNAP` | version u32 | header length u64 | header
//! (bincode 2 of [`Checkpoint`] without the page bytes) | page bytes length u64 | page bytes
//! | crc32c u32 of everything before it.

use crate::vmm::devices::console::ConsoleState;
use crate::vmm::devices::serial::SerialPortState;
use crate::vmm::devices::virtio::blk::BlkState;
use crate::vmm::devices::virtio::net::NetState;
use crate::vmm::layout::PAGE_SIZE;
use crate::vmm::vstate::vcpu::VcpuState;
use crate::vmm::vstate::vm::VmState;
use colo_core::ids::PageRange;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Version of every state struct below and of the file format. Bump it on any change.
pub const STATE_VERSION: u32 = 4;
const MAGIC: &[u8; 8] = b"COLOSNAP";
/// Largest header the decoder accepts (device state of many vCPUs plus a page-range table).
const HEADER_LIMIT: usize = 64 << 20;

/// Errors reading, writing or applying states.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The file cannot be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with colo's magic.
    #[error("not a colo state file (bad magic)")]
    NotAStateFile,
    /// The state was written by a different version of colo.
    #[error("state version {found} cannot be restored by this colo (it reads version {supported})")]
    VersionMismatch {
        /// Version in the state.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file ends early.
    #[error("state file is truncated: {needed} bytes needed, {have} present")]
    Truncated {
        /// Bytes the headers announce.
        needed: u64,
        /// Bytes present.
        have: u64,
    },
    /// The checksum does not match: the file was damaged.
    #[error("state file is corrupt: checksum {stored:#010x} stored, {computed:#010x} computed")]
    Corrupt {
        /// Stored crc32c.
        stored: u32,
        /// Computed crc32c.
        computed: u32,
    },
    /// The header does not decode.
    #[error("state header does not decode: {0}")]
    Decode(String),
    /// The parts of a state contradict each other or the target VM.
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
}

/// The shape of the VM a state belongs to; a restore creates a VM of this shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
}

/// Every device's Persist state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceState {
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// PICs, IOAPIC, PIT, clock.
    pub vm: VmState,
    /// The MMIO console.
    pub console: ConsoleState,
    /// The 16550.
    pub serial: SerialPortState,
    /// The virtio-net devices, in device order (queues, features, status).
    pub net: Vec<NetState>,
    /// The virtio-blk devices, in device order (queue, features, status, requests in flight).
    pub blk: Vec<BlkState>,
}

impl DeviceState {
    /// Encodes the state alone (bincode, no pages): the bulk of a peer `DeviceState` frame,
    /// whose integrity the wire trailer's crc32c already covers.
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode_config()).expect("state structs always encode")
    }

    /// Decodes a state written by [`DeviceState::to_bytes`]; bytes from a peer are bounded by
    /// the same limit as a file header and every fault is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<DeviceState, PersistError> {
        let config = bincode_config().with_limit::<HEADER_LIMIT>();
        let (state, used): (DeviceState, usize) = bincode::serde::decode_from_slice(bytes, config)
            .map_err(|e| PersistError::Decode(e.to_string()))?;
        if used != bytes.len() {
            return Err(PersistError::Decode(format!(
                "{} unused device-state bytes",
                bytes.len() - used
            )));
        }
        Ok(state)
    }
}

/// Full or incremental.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointKind {
    /// Every page of guest RAM.
    Full,
    /// The pages dirtied since the previous checkpoint.
    Incremental,
}

/// One checkpoint: device state, page ranges and their bytes.
#[derive(Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// 0 for a full checkpoint, then 1, 2, ... for the incrementals that follow it.
    pub sequence: u64,
    /// The VM's shape.
    pub machine: MachineConfig,
    /// Device state at the pause.
    pub devices: DeviceState,
    /// Pages carried, sorted.
    pub ranges: Vec<PageRange>,
    /// The pages' bytes, concatenated in `ranges` order (stored raw in files).
    #[serde(skip)]
    pub pages: Vec<u8>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("kind", &self.kind)
            .field("sequence", &self.sequence)
            .field("ranges", &self.ranges.len())
            .field("page_bytes", &self.pages.len())
            .finish_non_exhaustive()
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

impl Checkpoint {
    /// Checks what can be checked without a VM: version and that the bytes match the ranges.
    pub fn validate(&self) -> Result<(), PersistError> {
        if self.version != STATE_VERSION {
            return Err(PersistError::VersionMismatch {
                found: self.version,
                supported: STATE_VERSION,
            });
        }
        let expected: u64 = self
            .ranges
            .iter()
            .map(|r| r.count.saturating_mul(PAGE_SIZE))
            .sum();
        if expected != self.pages.len() as u64 {
            return Err(PersistError::Inconsistent(format!(
                "{} page bytes for ranges covering {expected}",
                self.pages.len()
            )));
        }
        if self.devices.vcpus.len() != usize::from(self.machine.vcpus) {
            return Err(PersistError::Inconsistent(format!(
                "{} vCPU states for a machine of {} vCPUs",
                self.devices.vcpus.len(),
                self.machine.vcpus
            )));
        }
        Ok(())
    }

    /// Encodes the checkpoint in the file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = bincode::serde::encode_to_vec(self, bincode_config())
            .expect("state structs always encode");
        let mut out = Vec::with_capacity(8 + 4 + 8 + header.len() + 8 + self.pages.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.pages.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.pages);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a checkpoint from the file format (see the module doc for the checks).
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, PersistError> {
        let have = bytes.len() as u64;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(PersistError::NotAStateFile);
        }
        let mut at = MAGIC.len();
        let take = |at: &mut usize, n: usize| -> Result<&[u8], PersistError> {
            let end =
                at.checked_add(n)
                    .filter(|&e| e <= bytes.len())
                    .ok_or(PersistError::Truncated {
                        needed: (*at as u64).saturating_add(n as u64),
                        have,
                    })?;
            let s = &bytes[*at..end];
            *at = end;
            Ok(s)
        };
        let version = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4 bytes"));
        if version != STATE_VERSION {
            return Err(PersistError::VersionMismatch {
                found: version,
                supported: STATE_VERSION,
            });
        }
        let header_len = u64::from_le_bytes(take(&mut at, 8)?.try_into().expect("8 bytes"));
        let header = take(&mut at, usize::try_from(header_len).unwrap_or(usize::MAX))?;
        let pages_len = u64::from_le_bytes(take(&mut at, 8)?.try_into().expect("8 bytes"));
        let pages = take(&mut at, usize::try_from(pages_len).unwrap_or(usize::MAX))?;
        let body_end = at;
        let stored = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(&bytes[..body_end]);
        if stored != computed {
            return Err(PersistError::Corrupt { stored, computed });
        }
        if at != bytes.len() {
            return Err(PersistError::Inconsistent(format!(
                "{} trailing bytes",
                bytes.len() - at
            )));
        }
        // The limit bounds what a crafted header (valid checksum, absurd sequence lengths) can
        // make the decoder allocate.
        let config = bincode_config().with_limit::<HEADER_LIMIT>();
        let (mut checkpoint, used): (Checkpoint, usize) =
            bincode::serde::decode_from_slice(header, config)
                .map_err(|e| PersistError::Decode(e.to_string()))?;
        if used != header.len() {
            return Err(PersistError::Decode(format!(
                "{} unused header bytes",
                header.len() - used
            )));
        }
        checkpoint.pages = pages.to_vec();
        checkpoint.validate()?;
        Ok(checkpoint)
    }

    /// Writes the checkpoint to `path` (via a temporary file and a rename, so a crash never
    /// leaves a half-written state under the final name).
    pub fn save_file(&self, path: &Path) -> Result<(), PersistError> {
        let io = |source| PersistError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&self.to_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a checkpoint from `path`.
    pub fn load_file(path: &Path) -> Result<Checkpoint, PersistError> {
        let bytes = std::fs::read(path).map_err(|source| PersistError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Checkpoint::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};

    fn checkpoint(pages: u64) -> Checkpoint {
        Checkpoint {
            version: STATE_VERSION,
            kind: CheckpointKind::Incremental,
            sequence: 3,
            machine: MachineConfig {
                mem_mib: 32,
                vcpus: 0,
            },
            devices: DeviceState {
                vcpus: Vec::new(),
                vm: VmState {
                    pic_master: kvm_irqchip::default(),
                    pic_slave: kvm_irqchip::default(),
                    ioapic: kvm_irqchip::default(),
                    pit: kvm_pit_state2::default(),
                    clock: kvm_clock_data {
                        clock: 12345,
                        ..Default::default()
                    },
                },
                console: ConsoleState {
                    bytes_written: 77,
                    ..Default::default()
                },
                serial: SerialPortState::default(),
                net: vec![NetState::default()],
                blk: vec![BlkState::default()],
            },
            ranges: vec![PageRange {
                first: 5,
                count: pages,
            }],
            pages: (0..pages * PAGE_SIZE).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn file_format_round_trips() {
        let cp = checkpoint(2);
        let back = Checkpoint::from_bytes(&cp.to_bytes()).unwrap();
        assert_eq!(back.pages, cp.pages);
        assert_eq!(back.ranges, cp.ranges);
        assert_eq!(
            (back.kind, back.sequence, back.machine),
            (cp.kind, cp.sequence, cp.machine)
        );
        assert_eq!(back.devices.console, cp.devices.console);
        assert_eq!(back.devices.vm.clock.clock, 12345);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = checkpoint(1).to_bytes();
        for len in 0..bytes.len() {
            assert!(
                Checkpoint::from_bytes(&bytes[..len]).is_err(),
                "truncated to {len} bytes"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = checkpoint(1).to_bytes();
        // Every position of the headers and a stride through the pages and checksum.
        let positions = (0..400)
            .chain((400..bytes.len()).step_by(97))
            .chain(bytes.len() - 4..bytes.len());
        for at in positions {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                Checkpoint::from_bytes(&damaged).is_err(),
                "flip at {at} went unnoticed"
            );
        }
    }

    #[test]
    fn pages_that_do_not_match_ranges_are_inconsistent() {
        let mut cp = checkpoint(2);
        cp.pages.truncate(100);
        assert!(matches!(cp.validate(), Err(PersistError::Inconsistent(_))));
        // Written anyway (a buggy writer), the reader refuses it after the checksum passes.
        assert!(matches!(
            Checkpoint::from_bytes(&cp.to_bytes()),
            Err(PersistError::Inconsistent(_))
        ));
    }

    #[test]
    fn absurd_lengths_do_not_allocate_or_panic() {
        let mut bytes = checkpoint(0).to_bytes();
        bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Checkpoint::from_bytes(&bytes),
            Err(PersistError::Truncated { .. })
        ));
    }
}
