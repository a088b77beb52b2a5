//! `SimDisk`: the simulated guest's block device, a sparse map of fixed-size blocks.
//!
//! It owns the bytes the guest application wrote and keeps one invariant: [`SimDisk::hash`]
//! is a function of the disk's content alone (blocks never written read as zeros and hash the
//! same as blocks written with zeros), so the state-equality checker can compare the primary's
//! and the secondary's disks by hash, the way TigerBeetle's VOPR compares replicas' data files.
//! Every write is also reported as a [`DiskWrite`] so the host side (later: the DiskReplicator
//! model) can forward it, as QEMU's COLO block replication forwards each primary write.

use std::collections::BTreeMap;

use crate::hash::Fnv64;

/// Size of one simulated disk block.
pub const BLOCK_SIZE: usize = 512;

/// One block write the guest issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskWrite {
    /// Block number.
    pub block: u64,
    /// Exactly [`BLOCK_SIZE`] bytes.
    pub data: Vec<u8>,
}

/// A sparse block device of `blocks` blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDisk {
    blocks: u64,
    data: BTreeMap<u64, Vec<u8>>,
    writes: u64,
}

impl SimDisk {
    /// An all-zero disk of `blocks` blocks (at least one).
    pub fn new(blocks: u64) -> SimDisk {
        SimDisk {
            blocks: blocks.max(1),
            data: BTreeMap::new(),
            writes: 0,
        }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Writes `bytes` (truncated or zero-padded to a block) at `block % blocks`, returning the
    /// write as issued.
    pub fn write(&mut self, block: u64, bytes: &[u8]) -> DiskWrite {
        let block = block % self.blocks;
        let mut data = vec![0; BLOCK_SIZE];
        let n = bytes.len().min(BLOCK_SIZE);
        data[..n].copy_from_slice(&bytes[..n]);
        self.apply(&DiskWrite {
            block,
            data: data.clone(),
        });
        DiskWrite { block, data }
    }

    /// Applies a write issued elsewhere (a replica applying the primary's write).
    pub fn apply(&mut self, w: &DiskWrite) {
        self.writes += 1;
        if w.data.iter().all(|b| *b == 0) {
            self.data.remove(&(w.block % self.blocks));
        } else {
            self.data.insert(w.block % self.blocks, w.data.clone());
        }
    }

    /// The content of `block` (zeros if never written).
    pub fn read(&self, block: u64) -> Vec<u8> {
        self.data
            .get(&(block % self.blocks))
            .cloned()
            .unwrap_or_else(|| vec![0; BLOCK_SIZE])
    }

    /// Writes applied so far (a statistic, not content: excluded from `hash`).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Digest of the content: every non-zero block with its number, in block order.
    pub fn hash(&self) -> u64 {
        let mut h = Fnv64::new();
        h.write_u64(self.blocks);
        for (block, data) in &self.data {
            h.write_u64(*block);
            h.write(data);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_content_only() {
        let mut a = SimDisk::new(8);
        let mut b = SimDisk::new(8);
        a.write(3, b"hello");
        b.write(3, b"other");
        b.write(3, b"hello");
        assert_eq!(a.hash(), b.hash(), "same content, different write history");
        b.write(4, b"x");
        assert_ne!(a.hash(), b.hash());
        b.write(4, &[]);
        assert_eq!(
            a.hash(),
            b.hash(),
            "a zeroed block equals a never-written one"
        );
    }

    #[test]
    fn replica_applying_the_writes_matches() {
        let mut primary = SimDisk::new(16);
        let mut replica = SimDisk::new(16);
        for i in 0..40u64 {
            let w = primary.write(i * 7, format!("block {i}").as_bytes());
            replica.apply(&w);
        }
        assert_eq!(primary.hash(), replica.hash());
        assert_eq!(primary.read(7 + 16), replica.read(7), "block numbers wrap");
        assert_eq!(primary.read(100).len(), BLOCK_SIZE);
    }
}
