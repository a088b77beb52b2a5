//! Disk replication in the replicated pair on real KVM, over loopback only: `colo arbiter`,
//! `colo primary --workload disk-writer --disk` and `colo secondary --disk` as child
//! processes. What is proven: after each checkpoint the secondary's disk as the SVM sees it
//! (parent + overlays) hashes equal to the primary's image at that checkpoint's pause, and the
//! disk changed between checkpoints; after the primary is killed the survivor merges its
//! overlays and its guest keeps running its own disk checks (every write it saw completed is
//! there, none from the dead primary's lost epoch), with no I/O error. Images live in a temp
//! dir the test creates and removes.

mod common;

use colo_runtime::pair::events::Milestone;
use common::procs::{Procs, args, free_addr};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("colo-pair-disk-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Arbiter, primary (disk-writer over `p.img`) and secondary (`s.img`), plus `extra` args.
fn start_pair(dir: &Scratch, extra: &[&str]) -> (Procs, [usize; 3]) {
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let common = [
        "--disk-size",
        "1M",
        "--checkpoint-interval-ms",
        "200",
        "--heartbeat-misses",
        "20",
    ];
    let (pimg, simg) = (dir.path("p.img"), dir.path("s.img"));
    let mut p = args(&["primary", "--listen", &peer, "--arbiter", &arbiter]);
    p.extend(args(&["--workload", "disk-writer", "--pages", "16"]));
    p.extend(args(&["--print-every", "20", "--disk", &pimg]));
    p.extend(args(&common));
    p.extend(args(extra));
    let p = procs.spawn(&p);
    let mut s = args(&["secondary", "--peer", &peer, "--arbiter", &arbiter]);
    s.extend(args(&["--disk", &simg]));
    s.extend(args(&common));
    s.extend(args(extra));
    let s = procs.spawn(&s);
    (procs, [a, p, s])
}

/// Waits for `count` checkpoints at which the secondary emptied its overlays and checks its
/// disk view's digest (`disk-reset`) against the primary's at that epoch's pause, and that the
/// disk changed between them (the workload writes).
fn compare_disk_digests(procs: &mut Procs, p: usize, s: usize, count: usize) {
    let mut primary: BTreeMap<u64, String> = BTreeMap::new();
    let mut compared = Vec::new();
    while compared.len() < count {
        let (who, record) = procs.wait_event(Duration::from_secs(30), |w, r| {
            (w == p && matches!(r.milestone, Milestone::Paused { .. }))
                || (w == s && matches!(r.milestone, Milestone::DiskReset { .. }))
        });
        let (epoch, digest) = match record.milestone {
            Milestone::Paused {
                epoch, disk_digest, ..
            }
            | Milestone::DiskReset { epoch, disk_digest } => {
                (epoch, disk_digest.expect("disk digests are on"))
            }
            other => unreachable!("{other:?}"),
        };
        if who == p {
            primary.insert(epoch, digest);
        } else {
            assert_eq!(
                Some(&digest),
                primary.get(&epoch),
                "epoch {epoch}: the secondary's disk view differs from the primary's image\n{}",
                procs.log.join("\n")
            );
            compared.push(digest);
        }
    }
    compared.dedup();
    assert!(
        compared.len() > 2,
        "the disk did not change between checkpoints: {compared:?}"
    );
}

#[test]
fn secondary_disk_view_equals_the_primary_image_at_every_checkpoint() {
    if !common::kvm_available("secondary_disk_view_equals_the_primary_image_at_every_checkpoint") {
        return;
    }
    let dir = Scratch::new("digest");
    let (mut procs, [_, p, s]) = start_pair(&dir, &["--digests"]);
    compare_disk_digests(&mut procs, p, s, 6);
    // Captures happen with no block request in flight: the pause's completion waits for them
    // (node_loop/drain.rs), so no save is refused and no pause gives up.
    let drains: Vec<&String> = procs
        .log
        .iter()
        .filter(|l| l.contains("primary: drained "))
        .collect();
    eprintln!("pauses that waited for block requests: {drains:?}");
    assert!(
        !procs
            .log
            .iter()
            .any(|l| l.contains("in flight") || l.contains("pause failed")),
        "{}",
        procs.log.join("\n")
    );
    assert!(
        !procs
            .log
            .iter()
            .any(|l| l.contains("PANIC") || l.contains(": error:")),
        "{}",
        procs.log.join("\n")
    );
}

#[test]
fn after_a_primary_kill_the_survivor_disk_keeps_every_completed_write() {
    if !common::kvm_available("after_a_primary_kill_the_survivor_disk_keeps_every_completed_write")
    {
        return;
    }
    let dir = Scratch::new("kill");
    let (mut procs, [_, p, s]) = start_pair(&dir, &[]);
    for _ in 0..4 {
        procs.wait_until(Duration::from_secs(30), s, |m| {
            matches!(m, Milestone::DiskReset { .. })
        });
    }
    procs.kill(p);
    // The merge runs inside the takeover, before or after the failed-over line.
    let mut seen = (false, false);
    while seen != (true, true) {
        match procs.wait_until(Duration::from_secs(15), s, |m| {
            matches!(
                m,
                Milestone::FailedOver { .. } | Milestone::DiskMerged { .. }
            )
        }) {
            Milestone::FailedOver { .. } => seen.0 = true,
            _ => seen.1 = true,
        }
    }
    // The survivor's guest checks every slot at each progress line: three more lines mean the
    // merged disk holds exactly what the guest's history says.
    let mut last = 0u64;
    for _ in 0..3 {
        let line = procs.wait_for(Duration::from_secs(20), |w, l| {
            w == s && (l.starts_with("colo-guest: disk step ") || l.contains("PANIC"))
        });
        assert!(!line.contains("PANIC"), "{}", procs.log.join("\n"));
        let step: u64 = line
            .strip_prefix("colo-guest: disk step ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(step > last, "{line} after {last}");
        last = step;
    }
    let command_errors = procs.wait_milestone(Duration::from_secs(10), s, |m| match m {
        Milestone::Disk { command_errors, .. } => Some(*command_errors),
        _ => None,
    });
    assert_eq!(command_errors, 0);
}

/// The primary's or survivor's disk `file`: every one of its first `slots` 4 KiB slots was
/// written by the guest (word 0 is the step that wrote it, a step of that slot).
fn assert_slots_written(file: &str, slots: u64) {
    let bytes = std::fs::read(file).unwrap();
    for slot in 0..slots {
        let at = (slot * 4096) as usize;
        let step = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        assert!(
            step > 0 && step % slots == slot,
            "{file}: slot {slot} holds step {step}"
        );
    }
}

#[test]
fn three_disks_replicate_as_one_volume_and_survive_a_primary_kill() {
    if !common::kvm_available("three_disks_replicate_as_one_volume_and_survive_a_primary_kill") {
        return;
    }
    let dir = Scratch::new("three");
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    // 520K is not a multiple of the 64 KiB overlay block: one block straddles two files.
    let disks = |who: &str| -> Vec<String> {
        [("0", "1M"), ("1", "520K"), ("2", "256K")]
            .iter()
            .flat_map(|(i, size)| {
                [
                    "--disk".to_string(),
                    format!("{},size={size}", dir.path(&format!("{who}{i}.img"))),
                ]
            })
            .collect()
    };
    let common = [
        "--checkpoint-interval-ms",
        "200",
        "--heartbeat-misses",
        "20",
        "--digests",
        "--pages",
        "8",
        "--print-every",
        "200",
    ];
    let mut p = args(&["primary", "--listen", &peer, "--arbiter", &arbiter]);
    p.extend(disks("p"));
    p.extend(args(&common));
    let p = procs.spawn(&p);
    let mut s = args(&["secondary", "--peer", &peer, "--arbiter", &arbiter]);
    s.extend(disks("s"));
    s.extend(args(&common));
    let s = procs.spawn(&s);

    compare_disk_digests(&mut procs, p, s, 5);
    // A progress line every 200 steps: by then every one of the 16 slots of each disk was
    // written (one slot per step).
    procs.wait_for(Duration::from_secs(60), |w, l| {
        w == p && l.starts_with("colo-guest: step ")
    });
    for i in 0..3 {
        assert_slots_written(&dir.path(&format!("p{i}.img")), 16);
    }

    procs.kill(p);
    procs.wait_until(Duration::from_secs(15), s, |m| {
        matches!(m, Milestone::FailedOver { .. })
    });
    // The survivor's counter checks each disk's slots at every step: more progress lines mean
    // every write it saw completed is on each disk, in its own file.
    for _ in 0..2 {
        let line = procs.wait_for(Duration::from_secs(30), |w, l| {
            w == s && (l.starts_with("colo-guest: step ") || l.contains("PANIC"))
        });
        assert!(!line.contains("PANIC"), "{}", procs.log.join("\n"));
    }
    for i in 0..3 {
        assert_slots_written(&dir.path(&format!("s{i}.img")), 16);
    }
    assert!(
        !procs.log.iter().any(|l| l.contains(": error:")),
        "{}",
        procs.log.join("\n")
    );
}

#[test]
fn a_read_only_disk_is_served_from_each_node_and_never_written() {
    if !common::kvm_available("a_read_only_disk_is_served_from_each_node_and_never_written") {
        return;
    }
    let dir = Scratch::new("ro");
    let ro = dir.path("ro.img");
    let content: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&ro, &content).unwrap();
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let common = [
        "--checkpoint-interval-ms",
        "200",
        "--heartbeat-misses",
        "20",
        "--pages",
        "8",
        "--print-every",
        "200",
    ];
    let node = |role: &str, endpoint: &str, addr: &str, img: &str| {
        let mut v = args(&[role, endpoint, addr, "--arbiter", &arbiter]);
        v.extend(args(&["--disk", &format!("{},size=1M", dir.path(img))]));
        v.extend(args(&["--disk", &format!("{ro},readonly")]));
        v.extend(args(&common));
        v
    };
    let p = procs.spawn(&node("primary", "--listen", &peer, "p.img"));
    let s = procs.spawn(&node("secondary", "--peer", &peer, "s.img"));
    let vm = procs.wait_for(Duration::from_secs(30), |w, l| {
        w == p && l.starts_with("primary: vm ")
    });
    assert!(vm.contains("disks=[1048576B 262144B,ro]"), "{vm}");
    for _ in 0..3 {
        procs.wait_until(Duration::from_secs(30), s, |m| {
            matches!(m, Milestone::Applied { .. })
        });
    }
    procs.kill(p);
    procs.wait_until(Duration::from_secs(15), s, |m| {
        matches!(m, Milestone::FailedOver { .. })
    });
    let line = procs.wait_for(Duration::from_secs(30), |w, l| {
        w == s && (l.starts_with("colo-guest: step ") || l.contains("PANIC"))
    });
    assert!(!line.contains("PANIC"), "{}", procs.log.join("\n"));
    assert_slots_written(&dir.path("s.img"), 16);
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        content,
        "the read-only image changed"
    );
}
