//! The pair config file end to end through the `colo` binary: `colo config check` accepts a
//! good file and names the key and line of a bad one; `colo primary|secondary --config FILE
//! --host NAME` run a pair from one shared file, a flag given on the command line overriding
//! the file's value, and a host whose role is the other command's is refused.

mod common;

use colo_runtime::pair::events::Milestone;
use common::procs::{COLO, Procs, args, free_addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("colo-config-{tag}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pair_file(arbiter: &str, peer: &str, key_file: &str) -> String {
    format!(
        r#"
# The test guest on both hosts, checkpoints every 200 ms.
[vm]
guest = "test-guest"
memory_mib = 32

[pair]
arbiter = "{arbiter}"
key_file = "{key_file}"
checkpoint_interval_ms = 200

[host.a]
role = "primary"
listen = "{peer}"
node_id = 1

[host.b]
role = "secondary"
peer = "{peer}"
node_id = 2
"#
    )
}

#[test]
fn config_check_accepts_a_good_file_and_names_the_line_of_a_bad_one() {
    let good = TempFile::new(
        "good",
        &pair_file("127.0.0.1:1", "127.0.0.1:2", "/etc/colo/pair.key"),
    );
    let out = Command::new(COLO)
        .args(["config", "check", good.path()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("vm test-guest memory_mib=32 vcpus=1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pair: key_file=/etc/colo/pair.key"),
        "{stdout}"
    );
    assert!(
        stdout.contains("host a: role=primary listen=127.0.0.1:2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("host b: role=secondary listen=- peer=127.0.0.1:2"),
        "{stdout}"
    );

    let bad = TempFile::new(
        "bad",
        "[pair]\ncheckpoint_interval_ms = 200\nheartbeat_mises = 3\n",
    );
    let out = Command::new(COLO)
        .args(["config", "check", bad.path()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("unknown field `heartbeat_mises`"),
        "{stderr}"
    );
}

#[test]
fn a_pair_runs_from_one_shared_file_with_command_line_overrides() {
    if !common::kvm_available("a_pair_runs_from_one_shared_file_with_command_line_overrides") {
        return;
    }
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    let file = TempFile::new("pair", &pair_file(&arbiter, &peer, procs.key.path()));
    // The wrong command for a host is refused before anything starts.
    let out = Command::new(COLO)
        .args(["secondary", "--config", file.path(), "--host", "a"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[host.a] is the primary, not the secondary"),
        "{stderr}"
    );

    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    // --memory on the command line beats the file's 32 (on both, or the VMs would differ).
    let node = |role: &str, host: &str| {
        args(&[
            role,
            "--config",
            file.path(),
            "--host",
            host,
            "--memory",
            "48",
            "--run-for",
            "60",
        ])
    };
    let p = procs.spawn(&node("primary", "a"));
    let s = procs.spawn(&node("secondary", "b"));
    let vm = procs.wait_for(Duration::from_secs(30), |w, l| {
        w == p && l.starts_with("primary: vm ")
    });
    assert!(vm.contains("memory_mib=48"), "{vm}");
    // The file's 200 ms interval: several checkpoints applied within a few seconds.
    for _ in 0..3 {
        procs.wait_until(Duration::from_secs(30), s, |m| {
            matches!(m, Milestone::Applied { .. })
        });
    }
}
