//! Tests of the disk files on temp files: image and overlay rules, the store's commands against
//! an in-memory oracle of three byte layers (random sequences), and the store driven by
//! colo-core's real `SecondaryDisk` through forwarded writes, SVM requests, checkpoints and a
//! failover, checked against a byte model of the primary's disk and the SVM's view.

use super::*;
use crate::vmm::disk::{OverlayImage, RawImage};
use colo_core::disk::{
    DataSource, DiskCommand, DiskConfig, DiskIoError, DiskOutput, GuestIoId, Layer, OpId,
    SecondaryDisk,
};
use colo_core::ids::Epoch;
use colo_core::wire::message::{DiskResult, WriteId};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

const BLOCK: u64 = 4096;
const SIZE: u64 = 16 * BLOCK + 1024; // a short last block

/// A fresh directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "colo-disk-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A secondary store over two parent files, the first ending inside a block (so
    /// copy-before-write and merges of that block touch both files).
    fn secondary(&self) -> DiskStore {
        let first = 5 * BLOCK + 1536;
        DiskStore::secondary_volume(
            &[
                (self.path("parent0.img"), first),
                (self.path("parent1.img"), SIZE - first),
            ],
            &self.path("hidden.img"),
            &self.path("active.img"),
            BLOCK,
        )
        .unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8)
        .collect()
}

#[test]
fn raw_image_is_created_sparse_and_refuses_ranges_outside_it() {
    let s = Scratch::new("raw");
    let img = RawImage::open(&s.path("a.img"), SIZE).unwrap();
    let mut buf = vec![1u8; 100];
    img.read_at(SIZE - 100, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    img.write_at(10, b"hello").unwrap();
    assert!(matches!(
        img.write_at(SIZE - 2, b"abc"),
        Err(ImageError::OutOfRange { .. })
    ));
    assert!(matches!(
        img.read_at(u64::MAX - 1, &mut buf),
        Err(ImageError::OutOfRange { .. })
    ));
    drop(img);
    // Reopening keeps the data and may grow the disk, never shrink it.
    let img = RawImage::open(&s.path("a.img"), 2 * SIZE).unwrap();
    let mut five = [0u8; 5];
    img.read_at(10, &mut five).unwrap();
    assert_eq!(&five, b"hello");
    let err = RawImage::open(&s.path("a.img"), SIZE).unwrap_err();
    assert!(err.to_string().contains("more than the disk size"), "{err}");
}

#[test]
fn overlay_reads_zero_for_unwritten_blocks_and_a_reset_frees_its_space() {
    let s = Scratch::new("overlay");
    let mut o = OverlayImage::create(&s.path("o.img"), SIZE, BLOCK).unwrap();
    o.write_at(BLOCK - 10, &[7u8; 20]).unwrap();
    assert_eq!(o.blocks().collect::<Vec<_>>(), vec![0, 1]);
    let mut buf = vec![0u8; 30];
    o.read_at(BLOCK - 20, &mut buf).unwrap();
    assert_eq!(&buf[..10], &[0; 10]);
    assert_eq!(&buf[10..], &[7; 20]);
    o.write_at(5 * BLOCK, &vec![9u8; BLOCK as usize]).unwrap();
    assert!(o.allocated().unwrap() >= BLOCK);
    o.reset().unwrap();
    assert_eq!(o.blocks().count(), 0);
    assert_eq!(o.allocated().unwrap(), 0, "an empty overlay is a hole");
    o.read_at(BLOCK - 20, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn commands_with_unstaged_data_or_missing_layers_fail_without_a_panic() {
    let s = Scratch::new("errors");
    let mut primary = DiskStore::primary(&s.path("p.img"), SIZE).unwrap();
    let write = DiskCommand::Write {
        op: OpId(1),
        layer: Layer::Parent,
        offset: 0,
        len: 512,
        data: DataSource::Guest(GuestIoId(9)),
    };
    assert_eq!(primary.execute(write), Err(DiskIoError::Io));
    assert!(primary.last_error().unwrap().contains("never staged"));
    let hidden = DiskCommand::CopyBlock {
        op: OpId(2),
        from: Layer::Parent,
        to: Layer::Hidden,
        block: 0,
        offset: 0,
        len: BLOCK,
    };
    assert_eq!(primary.execute(hidden), Err(DiskIoError::Io));
    assert_eq!(
        primary.execute(DiskCommand::ResetOverlays { op: OpId(3) }),
        Err(DiskIoError::Io)
    );
    primary.stage_guest_write(GuestIoId(4), SIZE - 512, vec![1; 1024]);
    let past = DiskCommand::Write {
        op: OpId(4),
        layer: Layer::Parent,
        offset: SIZE - 512,
        len: 1024,
        data: DataSource::Guest(GuestIoId(4)),
    };
    assert_eq!(primary.execute(past), Err(DiskIoError::Io));
    assert!(primary.last_error().unwrap().contains("outside"));
}

/// One step of the oracle test.
#[derive(Clone, Debug)]
enum Step {
    Write { layer: u8, offset: u64, len: u64 },
    Copy { from: u8, to: u8, block: u64 },
    Read { layer: u8, offset: u64, len: u64 },
    Reset,
}

fn layer(i: u8) -> Layer {
    [Layer::Parent, Layer::Hidden, Layer::Active][usize::from(i % 3)]
}

fn step() -> impl Strategy<Value = Step> {
    let range = (0..SIZE).prop_flat_map(|o| (Just(o), 1..=(SIZE - o).min(3 * BLOCK)));
    prop_oneof![
        4 => (0u8..3, range.clone()).prop_map(|(layer, (offset, len))| Step::Write { layer, offset, len }),
        2 => (0u8..3, 0u8..3, 0..=SIZE / BLOCK).prop_map(|(from, to, block)| Step::Copy { from, to, block }),
        3 => (0u8..3, range).prop_map(|(layer, (offset, len))| Step::Read { layer, offset, len }),
        1 => Just(Step::Reset),
    ]
}

/// The oracle: three byte layers and which overlay blocks hold data.
struct Oracle {
    layers: [Vec<u8>; 3],
    held: [std::collections::BTreeSet<u64>; 3],
}

impl Oracle {
    fn write(&mut self, l: usize, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.layers[l][o..o + data.len()].copy_from_slice(data);
        if l > 0 && !data.is_empty() {
            let last = (offset + data.len() as u64 - 1) / BLOCK;
            self.held[l].extend(offset / BLOCK..=last);
        }
    }

    fn view(&self) -> Vec<u8> {
        let mut v = self.layers[0].clone();
        for b in 0..SIZE.div_ceil(BLOCK) {
            let (a, e) = ((b * BLOCK) as usize, ((b + 1) * BLOCK).min(SIZE) as usize);
            if self.held[2].contains(&b) {
                v[a..e].copy_from_slice(&self.layers[2][a..e]);
            } else if self.held[1].contains(&b) {
                v[a..e].copy_from_slice(&self.layers[1][a..e]);
            }
        }
        v
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn store_matches_a_three_layer_byte_oracle(steps in proptest::collection::vec(step(), 1..40)) {
        let s = Scratch::new("oracle");
        let mut store = s.secondary();
        let n = SIZE as usize;
        let mut oracle = Oracle {
            layers: [vec![0; n], vec![0; n], vec![0; n]],
            held: Default::default(),
        };
        for (i, st) in steps.into_iter().enumerate() {
            let op = OpId(i as u64);
            let io = GuestIoId(i as u64);
            match st {
                Step::Write { layer: l, offset, len } => {
                    let data = bytes(len as usize, i as u64);
                    // The write's data starts a block earlier when it can: commands may name a
                    // piece of a larger request.
                    let start = offset - offset % BLOCK;
                    let mut staged = vec![0u8; (offset - start) as usize];
                    staged.extend_from_slice(&data);
                    store.stage_guest_write(io, start, staged);
                    let cmd = DiskCommand::Write { op, layer: layer(l), offset, len, data: DataSource::Guest(io) };
                    prop_assert_eq!(store.execute(cmd), Ok(()));
                    store.finish_guest(io);
                    oracle.write(usize::from(l), offset, &data);
                }
                Step::Copy { from, to, block } => {
                    let offset = block * BLOCK;
                    let len = BLOCK.min(SIZE - offset);
                    let cmd = DiskCommand::CopyBlock { op, from: layer(from), to: layer(to), block, offset, len };
                    prop_assert_eq!(store.execute(cmd), Ok(()));
                    let (a, e) = (offset as usize, (offset + len) as usize);
                    let piece = if from == 0 || oracle.held[usize::from(from)].contains(&block) {
                        oracle.layers[usize::from(from)][a..e].to_vec()
                    } else {
                        vec![0; e - a]
                    };
                    oracle.write(usize::from(to), offset, &piece);
                }
                Step::Read { layer: l, offset, len } => {
                    store.begin_read(io, offset, len);
                    let cmd = DiskCommand::Read { op, io, layer: layer(l), offset, len };
                    prop_assert_eq!(store.execute(cmd), Ok(()));
                    let got = store.finish_guest(io).unwrap();
                    let (a, e) = (offset as usize, (offset + len) as usize);
                    let mut want = oracle.layers[usize::from(l)][a..e].to_vec();
                    if l > 0 {
                        for (k, byte) in want.iter_mut().enumerate() {
                            if !oracle.held[usize::from(l)].contains(&((offset + k as u64) / BLOCK)) {
                                *byte = 0;
                            }
                        }
                    }
                    prop_assert_eq!(got, want);
                }
                Step::Reset => {
                    prop_assert_eq!(store.execute(DiskCommand::ResetOverlays { op }), Ok(()));
                    for l in 1..3 {
                        oracle.layers[l].fill(0);
                        oracle.held[l].clear();
                    }
                }
            }
            let mut view = vec![0u8; n];
            store.view_read(0, &mut view).unwrap();
            prop_assert!(view == oracle.view(), "the SVM view differs after step {}", i);
        }
    }
}

/// Runs the core's secondary disk machine over a real store until it is idle; returns the
/// guest requests it completed (with their read bytes) and the acks.
fn drive(disk: &mut SecondaryDisk, store: &mut DiskStore) -> Vec<(GuestIoId, Option<Vec<u8>>)> {
    let mut done = Vec::new();
    while let Some(out) = disk.poll_output() {
        match out {
            DiskOutput::Command(cmd) => {
                let result = store.execute(cmd);
                assert_eq!(result, Ok(()), "{:?}", store.last_error());
                disk.handle_op_done(cmd.op(), result);
            }
            DiskOutput::GuestDone { io, result } => {
                assert_eq!(result, Ok(()));
                done.push((io, store.finish_guest(io)));
            }
            DiskOutput::Ack { write_id, result } => {
                assert_eq!(result, DiskResult::Written);
                store.finish_peer(write_id);
            }
            DiskOutput::Event(_) | DiskOutput::Forward { .. } => {}
        }
    }
    done
}

/// One step of the replication test.
#[derive(Clone, Debug)]
enum Rep {
    Forward { offset: u64, len: u64 },
    SvmWrite { offset: u64, len: u64 },
    SvmRead { offset: u64, len: u64 },
    Checkpoint,
}

fn rep() -> impl Strategy<Value = Rep> {
    let range = (0..SIZE / 512)
        .prop_flat_map(|s| (Just(s * 512), 1..=((SIZE / 512 - s).min(20))))
        .prop_map(|(o, n)| (o, n * 512));
    prop_oneof![
        4 => range.clone().prop_map(|(offset, len)| Rep::Forward { offset, len }),
        3 => range.clone().prop_map(|(offset, len)| Rep::SvmWrite { offset, len }),
        3 => range.prop_map(|(offset, len)| Rep::SvmRead { offset, len }),
        1 => Just(Rep::Checkpoint),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The secondary's files under the core's machine: the SVM reads its own model, the view
    /// equals the primary's disk after each checkpoint, the parent always mirrors the primary,
    /// and a failover merge leaves the parent equal to the SVM's view.
    #[test]
    fn secondary_files_under_the_core_keep_the_replication_invariants(
        steps in proptest::collection::vec(rep(), 1..40),
    ) {
        let s = Scratch::new("rep");
        let mut store = s.secondary();
        let config = DiskConfig { disk_size: SIZE, block_size: BLOCK };
        let mut disk = SecondaryDisk::new(config, Epoch(0)).unwrap();
        let n = SIZE as usize;
        let mut primary = vec![0u8; n]; // the primary's disk
        let mut svm = vec![0u8; n]; // what the SVM must read
        let mut epoch = 0u64;
        for (i, st) in steps.into_iter().enumerate() {
            let id = i as u64;
            match st {
                Rep::Forward { offset, len } => {
                    let data = bytes(len as usize, id);
                    primary[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                    store.stage_peer_write(WriteId(id), offset, data);
                    disk.handle_peer_write(WriteId(id), Epoch(epoch + 1), offset, len as u32);
                }
                Rep::SvmWrite { offset, len } => {
                    let data = bytes(len as usize, id ^ 0xff);
                    svm[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                    store.stage_guest_write(GuestIoId(id), offset, data);
                    disk.handle_guest_write(GuestIoId(id), offset, len);
                }
                Rep::SvmRead { offset, len } => {
                    store.begin_read(GuestIoId(id), offset, len);
                    disk.handle_guest_read(GuestIoId(id), offset, len);
                    let done = drive(&mut disk, &mut store);
                    let got = done.into_iter().find(|(io, _)| *io == GuestIoId(id)).unwrap().1.unwrap();
                    prop_assert!(got == svm[offset as usize..(offset + len) as usize], "SVM read at step {}", i);
                }
                Rep::Checkpoint => {
                    epoch += 1;
                    disk.handle_checkpoint(Epoch(epoch));
                    drive(&mut disk, &mut store);
                    svm.clone_from(&primary);
                    let mut view = vec![0u8; n];
                    store.view_read(0, &mut view).unwrap();
                    prop_assert!(view == primary, "view after checkpoint {}", epoch);
                    prop_assert_eq!(store.overlay_blocks(), (0, 0));
                }
            }
            drive(&mut disk, &mut store);
            let mut parent = vec![0u8; n];
            store.parent().read_at(0, &mut parent).unwrap();
            prop_assert!(parent == primary, "parent mirrors the primary after step {}", i);
            let mut view = vec![0u8; n];
            store.view_read(0, &mut view).unwrap();
            prop_assert!(view == svm, "the files' view is the SVM's disk after step {}", i);
        }
        disk.handle_failover();
        drive(&mut disk, &mut store);
        let mut parent = vec![0u8; n];
        store.parent().read_at(0, &mut parent).unwrap();
        prop_assert!(parent == svm, "after the merge the parent is the SVM's disk");
        prop_assert_eq!(store.parent().digest().unwrap(), store.view_digest().unwrap());
    }
}

fn volume(dir: &Scratch, sizes: &[u64]) -> Volume {
    let disks: Vec<(PathBuf, u64)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| (dir.path(&format!("d{i}.img")), s))
        .collect();
    Volume::open(&disks).unwrap()
}

#[test]
fn bytes_land_in_the_file_of_their_disk() {
    let dir = Scratch::new("split");
    let v = volume(&dir, &[1024, 512, 2048]);
    assert_eq!(v.size(), 3584);
    assert_eq!(
        (v.base(0), v.base(1), v.base(2), v.base(3)),
        (Some(0), Some(1024), Some(1536), None)
    );
    // One write across all three files.
    let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    v.write_at(1000, &data).unwrap();
    let mut back = vec![0u8; 2000];
    v.read_at(1000, &mut back).unwrap();
    assert_eq!(back, data);
    let file = |i: usize| std::fs::read(dir.path(&format!("d{i}.img"))).unwrap();
    assert_eq!(&file(0)[1000..1024], &data[..24]);
    assert_eq!(file(1), data[24..536].to_vec());
    assert_eq!(&file(2)[..1464], &data[536..]);
    assert!(file(2)[1464..].iter().all(|&b| b == 0));
}

#[test]
fn a_range_leaving_the_volume_is_refused_whole() {
    let dir = Scratch::new("range");
    let v = volume(&dir, &[512, 512]);
    let err = v.write_at(1000, &[7u8; 100]).unwrap_err();
    assert!(
        matches!(err, ImageError::OutOfRange { size: 1024, .. }),
        "{err}"
    );
    // Nothing was written to the second file.
    let second = std::fs::read(dir.path("d1.img")).unwrap();
    assert!(second.iter().all(|&b| b == 0));
    assert!(v.read_at(u64::MAX - 1, &mut [0u8; 4]).is_err());
}

#[test]
fn digest_covers_the_disks_in_order() {
    let dir = Scratch::new("digest");
    let v = volume(&dir, &[512, 1024]);
    v.write_at(0, &[1u8; 512]).unwrap();
    v.write_at(512, &[2u8; 1024]).unwrap();
    let mut all = vec![1u8; 512];
    all.extend([2u8; 1024]);
    assert_eq!(v.digest().unwrap(), crc32c::crc32c(&all));
    v.flush().unwrap();
}
