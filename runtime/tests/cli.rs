//! The `colo` binary: a VM saved to a state file by one process continues in another (with
//! its disk image when it has one: `--disk`), and
//! malformed inputs (missing KVM, unreadable or truncated image, too little memory, corrupt or
//! foreign-version state file) end with one clear error line.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn colo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_colo"))
        .args(args)
        .output()
        .expect("running colo")
}

fn guest() -> String {
    colo_runtime::vmm::guest::test_guest_path()
        .display()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn state_file_continues_the_vm_in_another_process() {
    if !common::kvm_available("state_file_continues_the_vm_in_another_process") {
        return;
    }
    let state = scratch("counter.state");
    let state_arg = state.display().to_string();
    let cmdline = "colo.workload=counter colo.pages=16 colo.print_every=2000";
    let first = colo(&[
        "run",
        "--guest",
        &guest(),
        "--memory",
        "64",
        "--cmdline",
        cmdline,
        "--save-after",
        "1000",
        "--state-out",
        &state_arg,
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let printed = common::steps(&String::from_utf8_lossy(&first.stdout));
    let last = *printed.last().expect("the first process printed progress");

    let second = colo(&["restore", "--state", &state_arg, "--timeout", "1.0"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = String::from_utf8_lossy(&second.stdout);
    let next = common::steps(&text);
    assert!(
        next.len() >= 2,
        "the restored VM printed too little: {text}"
    );
    assert_eq!(
        next[0],
        last + 2000,
        "restored counter does not continue: before {printed:?}, after {next:?}"
    );
    assert_eq!(next[1], last + 4000);
    assert!(!text.contains("PANIC"), "{text}");
}

#[test]
fn corrupt_and_foreign_state_files_are_refused() {
    if !common::kvm_available("corrupt_and_foreign_state_files_are_refused") {
        return;
    }
    let state = scratch("small.state");
    let state_arg = state.display().to_string();
    let saved = colo(&[
        "run",
        "--guest",
        &guest(),
        "--memory",
        "32",
        "--cmdline",
        "colo.pages=1",
        "--save-after",
        "50",
        "--state-out",
        &state_arg,
    ]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    let bytes = std::fs::read(&state).unwrap();

    let mut corrupt = bytes.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    std::fs::write(&state, &corrupt).unwrap();
    let out = colo(&["restore", "--state", &state_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("state file is corrupt"),
        "{}",
        stderr(&out)
    );

    let mut foreign = bytes.clone();
    foreign[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&state, &foreign).unwrap();
    let out = colo(&["restore", "--state", &state_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("state version 7 cannot be restored"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&state, &bytes[..bytes.len() / 3]).unwrap();
    let out = colo(&["restore", "--state", &state_arg]);
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
}

#[test]
fn malformed_inputs_give_one_clear_error_line() {
    let truncated = scratch("truncated.elf");
    let image = std::fs::read(colo_runtime::vmm::guest::test_guest_path()).unwrap();
    std::fs::write(&truncated, &image[..1000]).unwrap();
    let truncated = truncated.display().to_string();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--guest", "/nonexistent/guest.elf"],
            "cannot read guest image /nonexistent/guest.elf",
        ),
        (
            vec!["restore", "--state", "/nonexistent/vm.state"],
            "state file /nonexistent/vm.state",
        ),
        (
            vec![
                "--events",
                "/nonexistent/dir/events.jsonl",
                "keygen",
                "/nonexistent/k",
            ],
            "--events /nonexistent/dir/events.jsonl: cannot open for appending",
        ),
    ];
    for (args, expected) in cases {
        let out = colo(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("colo: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // Memory is checked before KVM is opened.
    let out = colo(&["run", "--guest", &guest(), "--memory", "4"]);
    assert!(
        stderr(&out).contains("4 MiB of memory is too little"),
        "{}",
        stderr(&out)
    );
    // A missing KVM device names itself.
    let out = Command::new(env!("CARGO_BIN_EXE_colo"))
        .args(["run", "--guest", &guest()])
        .env("COLO_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot open /nonexistent/kvm"),
        "{}",
        stderr(&out)
    );

    if common::kvm_available("malformed_inputs_give_one_clear_error_line (truncated ELF)") {
        let out = colo(&["run", "--guest", &truncated, "--memory", "32"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("not a loadable x86-64 ELF"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn run_boots_a_bzimage_as_linux_with_its_console_on_stdout() {
    if !common::kvm_available("run_boots_a_bzimage_as_linux_with_its_console_on_stdout") {
        return;
    }
    let kernel = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/linux/vmlinuz");
    if !kernel.exists() {
        assert_ne!(
            std::env::var("COLO_REQUIRE_LINUX_KERNEL").as_deref(),
            Ok("1"),
            "{} is required; run scripts/setup-guest-assets.sh",
            kernel.display()
        );
        eprintln!(
            "SKIPPED run_boots_a_bzimage_as_linux_with_its_console_on_stdout: no {}",
            kernel.display()
        );
        return;
    }
    // --kind auto recognises the bzImage; the decompressor's first line (see
    // tests/linux_boot.rs) must reach stdout before the timeout pauses the VM.
    let out = colo(&[
        "run",
        "--guest",
        &kernel.display().to_string(),
        "--memory",
        "256",
        "--cmdline",
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr",
        "--timeout",
        "10",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("KASLR disabled"),
        "stdout: {stdout:?}\nstderr: {}",
        stderr(&out)
    );
}

#[test]
fn disk_image_and_state_file_continue_the_disk_writer_in_another_process() {
    if !common::kvm_available(
        "disk_image_and_state_file_continue_the_disk_writer_in_another_process",
    ) {
        return;
    }
    let (state, image) = (scratch("disk.state"), scratch("disk.img"));
    let _ = std::fs::remove_file(&image);
    let (state_arg, image_arg) = (state.display().to_string(), image.display().to_string());
    let cmdline = "colo.workload=disk-writer colo.pages=8 colo.print_every=100";
    let first = colo(&[
        "run",
        "--guest",
        &guest(),
        "--memory",
        "64",
        "--cmdline",
        cmdline,
        "--disk",
        &image_arg,
        "--disk-size",
        "64K",
        "--save-after",
        "800",
        "--state-out",
        &state_arg,
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 10);
    let text = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(text.contains("colo-guest: disk step 100 "), "{text}");

    // The guest checks every slot at each progress line: it continues on the same image.
    let second = colo(&[
        "restore",
        "--state",
        &state_arg,
        "--disk",
        &image_arg,
        "--timeout",
        "1.0",
    ]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains("colo-guest: disk step "), "{text}");
    assert!(!text.contains("PANIC"), "{text}");

    // Without the image the guest's next disk request fails (IOERR) and it stops itself.
    let third = colo(&["restore", "--state", &state_arg, "--timeout", "5.0"]);
    assert!(!third.status.success());
    assert!(
        String::from_utf8_lossy(&third.stdout).contains("failed: Status(1)"),
        "{}",
        String::from_utf8_lossy(&third.stdout)
    );

    let bad = colo(&[
        "run",
        "--guest",
        &guest(),
        "--disk",
        &image_arg,
        "--disk-size",
        "1000",
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("multiple of 512"), "{}", stderr(&bad));
}

#[test]
fn duration_flags_take_a_unit_and_a_bad_one_is_a_usage_error() {
    let out = colo(&[
        "status",
        "--control",
        "/nonexistent.sock",
        "--timeout",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let err = stderr(&out);
    assert!(
        err.contains("'soon' for '--timeout")
            && err.contains("a number of seconds, or a duration with its unit"),
        "{err}"
    );
    if !common::kvm_available("duration_flags_take_a_unit_and_a_bad_one_is_a_usage_error") {
        return;
    }
    // The counter guest never exits by itself: the run ends at the timeout, given in ms.
    let out = colo(&[
        "run",
        "--guest",
        &guest(),
        "--memory",
        "32",
        "--timeout",
        "300ms",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("timeout reached"), "{}", stderr(&out));
}

#[test]
fn version_names_the_peer_protocol_and_the_state_file_version() {
    let out = colo(&["--version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!(
            "colo {} (peer protocol {}, state file version {})",
            env!("CARGO_PKG_VERSION"),
            colo_core::wire::PROTOCOL_VERSION,
            colo_runtime::vmm::persist::STATE_VERSION
        )
    );
}

#[test]
fn keygen_writes_an_owner_only_key_and_never_overwrites_it() {
    use std::os::unix::fs::PermissionsExt;
    let path = scratch("pair.key");
    let _ = std::fs::remove_file(&path);
    let path_arg = path.display().to_string();
    let out = colo(&["keygen", &path_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim_end().len(), 64, "{text}");
    assert!(text.trim_end().chars().all(|c| c.is_ascii_hexdigit()));

    let again = colo(&["keygen", &path_arg]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "kept as it was"
    );

    // A second key differs (32 fresh random bytes each time).
    let other = scratch("other.key");
    let _ = std::fs::remove_file(&other);
    assert!(
        colo(&["keygen", &other.display().to_string()])
            .status
            .success()
    );
    assert_ne!(std::fs::read_to_string(&other).unwrap(), text);
}

#[test]
fn bad_or_missing_key_files_are_clear_errors() {
    use std::os::unix::fs::PermissionsExt;
    let arbiter_with = |key: &str| colo(&["arbiter", "--listen", "127.0.0.1:0", "--key-file", key]);
    // Readable by others.
    let open = scratch("open.key");
    std::fs::write(&open, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = arbiter_with(&open.display().to_string());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("mode 0644") && stderr(&out).contains("chmod 600"),
        "{}",
        stderr(&out)
    );
    // The wrong length.
    let short = scratch("short.key");
    std::fs::write(&short, "abcd\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = arbiter_with(&short.display().to_string());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("64 hex digits"), "{}", stderr(&out));
    // Not hex.
    let text = scratch("text.key");
    std::fs::write(&text, "zz".repeat(32)).unwrap();
    std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = arbiter_with(&text.display().to_string());
    assert!(stderr(&out).contains("not a hex digit"), "{}", stderr(&out));
    // Not a file.
    let out = arbiter_with("/tmp");
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    // Missing file.
    let out = arbiter_with("/nonexistent/pair.key");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("key file /nonexistent/pair.key"),
        "{}",
        stderr(&out)
    );
    // A node without any key: refused at start, naming the flag and the command.
    let out = colo(&[
        "primary",
        "--listen",
        "127.0.0.1:0",
        "--arbiter",
        "127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("needs --key-file") && stderr(&out).contains("colo keygen"),
        "{}",
        stderr(&out)
    );
}
