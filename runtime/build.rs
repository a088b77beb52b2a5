//! Builds colo's test guest (`runtime/guest`, its own crate outside the workspace) with its
//! own cargo configuration and target directory, and tells the runtime where the ELF is
//! (`COLO_TEST_GUEST`). The guest is never committed as a binary: every build makes it.
//!
//! The nested cargo must not inherit the outer build's compiler wrappers (clippy-driver) or
//! flags: the guest's static, nostdlib flags live in its own `.cargo/config.toml`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest_dir = manifest.join("guest");
    let target_dir = out.join("guest-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the test guest (runtime/guest)");
    assert!(
        status.success(),
        "building the test guest (runtime/guest) failed: {status}"
    );

    let elf = target_dir.join("x86_64-unknown-linux-gnu/release/colo-guest");
    println!("cargo:rustc-env=COLO_TEST_GUEST={}", elf.display());
    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "guest/link.ld",
        "guest/build.rs",
        "guest/.cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
