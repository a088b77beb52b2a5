//! The VM description of `colo primary|secondary` (`--guest`/`--kernel`, `--initrd`,
//! `--cmdline`, `--memory`, `--vcpus`, `--disk`, `--net`): bad flags, unreadable files and a
//! tap that cannot be opened are one clear error each; both nodes print the same `vm` line for the same
//! description; and a secondary described for another VM is refused by the primary at the
//! handshake (the secondary exits with an error naming the cause, the primary keeps waiting and
//! pairs with a matching secondary), instead of becoming a corrupt replica.

mod common;

use colo_runtime::pair::events::Milestone;
use common::procs::{COLO, Procs, args, free_addr};
use std::process::Command;
use std::time::Duration;

/// Runs `colo ARGS` to its end (a node with a pair key of its own: these tests are about the
/// VM description); returns (exit code, stderr).
fn colo(words: &[&str]) -> (Option<i32>, String) {
    let key = common::procs::TestKey::new();
    let out = Command::new(COLO)
        .args(words)
        .args(["--key-file", key.path()])
        .output()
        .expect("running colo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_vm_descriptions_are_clear_errors() {
    let node = |extra: &[&str]| {
        let mut words = vec![
            "primary",
            "--listen",
            "127.0.0.1:1",
            "--arbiter",
            "127.0.0.1:2",
        ];
        words.extend_from_slice(extra);
        colo(&words)
    };
    // Exit code 2: clap refused the flags; 1: colo refused the description.
    for (extra, code, needle) in [
        (
            &["--kernel", "/nonexistent/colo-vmlinux"][..],
            1,
            "cannot read kernel /nonexistent/colo-vmlinux",
        ),
        (
            &["--guest", "test-guest", "--kernel", "/x"][..],
            2,
            "cannot be used with",
        ),
        (&["--guest", "windows"][..], 2, "invalid value 'windows'"),
        (&["--initrd", "/x"][..], 2, "--kernel"),
        (&["--net", "tap=t0,mac=zz"][..], 2, "six octets"),
        (&["--net", "mac=52:54:00:00:00:01"][..], 2, "no tap=NAME"),
        (&["--disk", "/tmp/a.img,rw"][..], 2, "bad option \"rw\""),
        (
            &[
                "--disk",
                "/tmp/colo-a.img",
                "--disk",
                "/tmp/colo-b.img",
                "--disk",
                "/tmp/colo-c.img",
                "--disk",
                "/tmp/colo-d.img",
                "--disk",
                "/tmp/colo-e.img",
            ][..],
            1,
            "at most 4 disks",
        ),
        (
            &["--net", "tap=t0", "--net", "tap=t1"][..],
            1,
            "two NICs with MAC 52:54:00:c0:10:01",
        ),
        (&["--vcpus", "0"][..], 1, "at least one vCPU"),
        (
            &["--disk", "/nonexistent/colo-ro.img,readonly"][..],
            1,
            "read-only disk: disk image /nonexistent/colo-ro.img: open:",
        ),
    ] {
        let (got, stderr) = node(extra);
        assert_eq!(got, Some(code), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

#[test]
fn secondary_described_for_another_vm_is_refused_and_a_matching_one_pairs() {
    if !common::kvm_available(
        "secondary_described_for_another_vm_is_refused_and_a_matching_one_pairs",
    ) {
        return;
    }
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let common_args = ["--arbiter", &arbiter, "--run-for", "60"];
    let mut p = args(&[
        "primary",
        "--listen",
        &peer,
        "--memory",
        "32",
        "--cmdline",
        "colo.note=1",
    ]);
    p.extend(args(&common_args));
    let p = procs.spawn(&p);
    let primary_vm = procs.wait_for(Duration::from_secs(30), |w, l| {
        w == p && l.starts_with("primary: vm test-guest")
    });

    // Another memory size, then another command line: each is refused.
    for (i, extra) in [
        ["--memory", "48", "--cmdline", "colo.note=1"],
        ["--memory", "32", "--cmdline", "colo.note=2"],
    ]
    .iter()
    .enumerate()
    {
        let mut s = args(&[
            "secondary",
            "--peer",
            &peer,
            "--node-id",
            &(10 + i).to_string(),
        ]);
        s.extend(args(extra));
        s.extend(args(&common_args));
        let s = procs.spawn(&s);
        let refusals = |procs: &Procs| {
            let seen = |who: usize, text: &str| {
                procs
                    .log
                    .iter()
                    .filter(|l| l.starts_with(&format!("[{who}] ")) && l.contains(text))
                    .count()
            };
            (
                seen(p, "refused a secondary whose VM description differs"),
                seen(s, "the primary refused this node: its VM description"),
            )
        };
        procs.wait_for(Duration::from_secs(30), |w, l| {
            w == s && l.contains("the primary refused this node: its VM description")
        });
        let status = procs.wait_exit(s, Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{}", procs.log.join("\n"));
        if refusals(&procs).0 < i + 1 {
            procs.wait_for(Duration::from_secs(10), |w, l| {
                w == p && l.contains("refused a secondary whose VM description differs")
            });
        }
        assert_eq!(refusals(&procs).0, i + 1, "{}", procs.log.join("\n"));
    }

    // The same description: same `vm` line, and the pair replicates.
    let mut s = args(&[
        "secondary",
        "--peer",
        &peer,
        "--memory",
        "32",
        "--cmdline",
        "colo.note=1",
    ]);
    s.extend(args(&common_args));
    let s = procs.spawn(&s);
    let secondary_vm = procs.wait_for(Duration::from_secs(30), |w, l| {
        w == s && l.starts_with("secondary: vm test-guest")
    });
    assert_eq!(
        primary_vm.strip_prefix("primary: "),
        secondary_vm.strip_prefix("secondary: ")
    );
    procs.wait_until(Duration::from_secs(60), s, |m| {
        matches!(m, Milestone::Applied { .. })
    });
}

#[test]
fn a_tap_that_cannot_be_opened_is_a_clear_error() {
    if !common::kvm_available("a_tap_that_cannot_be_opened_is_a_clear_error")
        || !common::net_available("a_tap_that_cannot_be_opened_is_a_clear_error")
    {
        return;
    }
    // `lo` exists in every namespace and is not a tap.
    let (code, stderr) = colo(&[
        "primary",
        "--listen",
        &free_addr(),
        "--arbiter",
        &free_addr(),
        "--net",
        "tap=lo",
        "--control",
        &common::control_path(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("client tap lo: cannot create or attach tap lo")
            && stderr.contains("is not a tap"),
        "{stderr}"
    );
}

#[test]
fn an_initrd_too_large_for_memory_is_a_clear_error() {
    if !common::kvm_available("an_initrd_too_large_for_memory_is_a_clear_error") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("colo-initrd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // An ELF kernel (the test guest's image will do: the loader only places it) and a 40 MiB
    // initrd for a 32 MiB VM.
    let kernel = dir.join("kernel.elf");
    std::fs::write(
        &kernel,
        std::fs::read(colo_runtime::vmm::guest::test_guest_path()).unwrap(),
    )
    .unwrap();
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, vec![0u8; 40 << 20]).unwrap();
    let (code, stderr) = colo(&[
        "primary",
        "--listen",
        &free_addr(),
        "--arbiter",
        &free_addr(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "32",
        "--control",
        &common::control_path(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("with initrd {}", initrd.display()))
            && stderr.contains("needs memory up to")
            && stderr.contains("--memory 32 MiB"),
        "{stderr}"
    );
}
