//! `cargo xtask ARGS`: builds xtask in release, and for `bench` the binaries
//! its labs run in the same cargo invocation, then runs `xtask ARGS`.
//!
//! Why one invocation: cargo resolves features over the packages it builds
//! together. Built apart (xtask first, then the binaries from inside the
//! bench), shared crates such as serde_json, tracing and tokio get different
//! features, so they and everything above them compile twice; and each build
//! ends in a long serial tail on its own. Together they compile once and keep
//! the cores busy: on a fresh 2-core machine that is the difference between
//! about 11 minutes of building and about 9. The bench's own build (xtask's
//! `lab_binaries`) asks for the same packages, so it then finds them fresh.
//!
//! No dependencies: this is built before anything else.

mod bench_packages;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use bench_packages::BENCH_PACKAGES;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(["build", "--release", "-p", "xtask"]);
    if args.first().is_some_and(|a| a == "bench") {
        for package in BENCH_PACKAGES {
            build.args(["-p", package]);
        }
    }
    match build.status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("cargo xtask: building xtask failed ({status})");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("cargo xtask: cannot run cargo: {e}");
            return ExitCode::FAILURE;
        }
    }
    // xtask lands next to this launcher, in the same target/release.
    let xtask = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("xtask"),
        Err(e) => {
            eprintln!("cargo xtask: cannot find the launcher's own path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let e = Command::new(&xtask).args(&args).exec();
    eprintln!("cargo xtask: cannot run {}: {e}", xtask.display());
    ExitCode::FAILURE
}
