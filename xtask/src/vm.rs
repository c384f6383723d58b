//! `cargo xtask vm-test`: the test suites that need a newer kernel than the
//! host's (ipvlan, geneve, netkit, the 6.12 verifier) run in one QEMU boot of
//! a pinned Debian kernel, with the host's `/usr` and `/etc` shared in
//! read-only and the workspace read-write at its own path, so the host-built
//! test executables run unchanged inside.
//!
//! Steps: fetch and unpack the kernel through a private apt configuration
//! ([`kernel`], cached), build the binaries and test executables on the host
//! ([`build`]), pack an initramfs ([`initramfs`], [`cpio`]) whose init
//! ([`guest`]) mounts the shares and runs every suite in turn, boot it
//! ([`qemu`]) and print what each suite did ([`summary`]).

pub mod build;
pub mod cpio;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod summary;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::interrupt;
use summary::{Outcome, SuiteResult};

/// The Debian kernel the suites run on: bookworm-backports' 6.12 (ipvlan,
/// geneve, vxlan as modules; netkit and TCX built in; BTF). Pinned so that a
/// run is reproducible; when backports drops it, the error says so and this
/// pair moves to the new package (its name carries the ABI version).
pub const KERNEL_PACKAGE: &str = "linux-image-6.12.95+deb12-amd64-unsigned";
pub const KERNEL_VERSION: &str = "6.12.95-1~bpo12+1";

/// The kernel release the suites expect (`uname -r` starts with it).
pub const KERNEL_SERIES: &str = "6.12";

/// Test targets that need the VM's kernel, run in this order, each as
/// (package, test target). They are declared `test = false` in their crate so
/// the host's `cargo test --workspace` leaves them alone. `vm_smoke` is the
/// canary: when it fails, the VM itself is broken, not the datapath.
pub const SUITES: &[Suite] = &[
    Suite::new("ciliate-lab", "vm_smoke"),
    Suite::new("ciliate-datapath", "programs"),
    Suite::new("ciliate-datapath", "vm_devices"),
    Suite::new("ciliate-datapath", "vm_ipvlan_netns"),
    Suite::new("ciliate-cni", "vm_ipvlan"),
    Suite::new("ciliate-lab", "vm_ipvlan"),
    Suite::new("ciliate-lab", "vm_geneve_netkit"),
    // Last: five labs, the connectivity test in each datapath mode (20-25 min).
    Suite::new("ciliate-lab", "vm_modes"),
];

/// Boots tried before giving up: a guest that has not reached its suites
/// `--boot-timeout` after QEMU started is hung (under TCG on a loaded host, a
/// boot rarely stalls in the kernel with a vCPU's timer interrupt lost) and
/// is killed and booted again. A normal boot takes 10-25 s.
pub const BOOT_ATTEMPTS: u32 = 3;

/// Default for `--cache`.
pub const DEFAULT_CACHE: &str = "/var/cache/ciliate-vm";

/// One test target of one package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    pub package: &'static str,
    pub target: &'static str,
}

impl Suite {
    pub const fn new(package: &'static str, target: &'static str) -> Self {
        Self { package, target }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.package, self.target)
    }
}

/// What `cargo xtask vm-test` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the apt state, the unpacked kernel and busybox are kept.
    pub cache: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Overall limit for the boot, after which QEMU is killed.
    pub timeout: Duration,
    /// Limit for one boot to reach the suites, after which it is retried.
    pub boot_timeout: Duration,
    /// `PKG:TARGET` to run instead of [`SUITES`].
    pub only: Vec<String>,
    /// Passed to every test executable after `--test-threads=1` (filters).
    pub test_args: Vec<String>,
    /// Appended to the guest kernel's command line (e.g. `loglevel=7`).
    pub kernel_args: Vec<String>,
}

/// The workspace this xtask was built from.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest);
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// The suites `--only` names, or all of [`SUITES`]. `--only` may also name a
/// target not yet in the list (to try a new suite before adding it).
pub fn select(only: &[String]) -> Result<Vec<(String, String)>> {
    if only.is_empty() {
        return Ok(SUITES
            .iter()
            .map(|s| (s.package.to_string(), s.target.to_string()))
            .collect());
    }
    only.iter()
        .map(|spec| {
            parse_only(spec).with_context(|| {
                let listed: Vec<String> = SUITES.iter().map(ToString::to_string).collect();
                format!(
                    "--only {spec:?}: expected PACKAGE:TEST_TARGET (letters, digits, - and _), \
                     e.g. {}; the listed suites are {}",
                    SUITES[0],
                    listed.join(", ")
                )
            })
        })
        .collect()
}

/// `PACKAGE:TARGET`, both non-empty, of cargo's name characters.
fn parse_only(spec: &str) -> Option<(String, String)> {
    let (package, target) = spec.split_once(':')?;
    let name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    (name(package) && name(target)).then(|| (package.to_string(), target.to_string()))
}

/// Runs the suites; `Ok(true)` when every one passed.
pub fn run(opts: &Options) -> Result<bool> {
    let started = Instant::now();
    interrupt::install()?;
    let suites = select(&opts.only)?;
    let workspace = workspace_root();
    let targets = build::resolve(&workspace, &suites)?;

    eprintln!(
        "==> kernel {KERNEL_PACKAGE} {KERNEL_VERSION} (cache {})",
        opts.cache.display()
    );
    let kernel = kernel::prepare(&opts.cache)?;
    let kernel_secs = started.elapsed().as_secs_f64();
    interrupt::check()?;

    let build_started = Instant::now();
    let built = build::build(&workspace, &targets)?;
    let build_secs = build_started.elapsed().as_secs_f64();
    interrupt::check()?;

    // Everything of this run goes to target/vm-test, left there to look at.
    let out = workspace.join("target/vm-test");
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("removing the last run's {}", out.display()))?;
    }
    let share = out.join("results");
    std::fs::create_dir_all(&share).with_context(|| format!("creating {}", share.display()))?;

    let shares = guest::shares(&kernel.root, &workspace, &share);
    let initrd = out.join("initramfs.cpio");
    let image = initramfs::build(&kernel, &shares)?;
    std::fs::write(&initrd, image).with_context(|| format!("writing {}", initrd.display()))?;
    std::fs::write(
        share.join(guest::RUN_SCRIPT),
        guest::run_script(&built, &opts.test_args),
    )
    .context("writing the guest's run script")?;

    let names: Vec<String> = built.iter().map(|b| b.name.clone()).collect();
    let vm_started = Instant::now();
    eprintln!(
        "==> booting {} under QEMU ({} suite(s), {} MiB, timeout {} s)",
        kernel.release,
        names.len(),
        opts.memory_mib,
        opts.timeout.as_secs()
    );
    let machine = qemu::Machine {
        kernel: kernel.image.clone(),
        initrd,
        memory_mib: opts.memory_mib,
        cpus: 2,
        append: guest::kernel_cmdline(&opts.kernel_args),
        shares,
        console: out.join("console.log"),
        log: out.join("qemu.log"),
    };
    let mut progress = summary::Progress::new(&share, &names);
    let booted = share.join(guest::BOOTED);
    let mut attempt = 1;
    let ended = loop {
        let left = opts.timeout.saturating_sub(vm_started.elapsed());
        let ended = qemu::run(&machine, left, |elapsed| {
            progress.poll();
            if elapsed > opts.boot_timeout && !booted.exists() {
                qemu::Control::Stop
            } else {
                qemu::Control::Continue
            }
        })?;
        if ended != qemu::Ended::Stopped {
            break ended;
        }
        let tail = summary::tail(&std::fs::read(&machine.console).unwrap_or_default(), 12);
        eprintln!(
            "==> the guest did not boot within {} s (attempt {attempt} of {BOOT_ATTEMPTS}); console:\n{tail}",
            opts.boot_timeout.as_secs()
        );
        if attempt == BOOT_ATTEMPTS {
            break ended;
        }
        let kept = out.join(format!("console-attempt-{attempt}.log"));
        let _ = std::fs::rename(&machine.console, kept);
        attempt += 1;
    };
    progress.poll();
    let vm_secs = vm_started.elapsed().as_secs_f64();

    let results = summary::collect(&share, &names);
    let finished = share.join(guest::DONE).exists();
    let passed = report(&results, finished, ended, &machine.console);
    println!(
        "total wall time {:.0} s (kernel {kernel_secs:.0} s, host build {build_secs:.0} s, VM {vm_secs:.0} s); outputs in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(passed)
}

/// Prints the table, the output of every suite that did not pass, and the
/// console's tail when the guest did not finish; true when all passed.
fn report(results: &[SuiteResult], finished: bool, ended: qemu::Ended, console: &Path) -> bool {
    println!("\n{}", summary::table(results));
    for r in results {
        if matches!(r.outcome, Outcome::Failed(_) | Outcome::Unfinished) {
            println!("----- output of {} ({}) -----", r.name, r.outcome);
            println!("{}", r.output.trim_end());
            println!("----- end of {} -----", r.name);
        }
    }
    let all_passed = results.iter().all(|r| r.outcome == Outcome::Passed);
    if !finished || ended != qemu::Ended::PoweredOff {
        let tail = summary::tail(&std::fs::read(console).unwrap_or_default(), 60);
        println!("----- guest console (last lines; the guest did not finish: {ended}) -----");
        println!("{}", tail.trim_end());
        println!("----- end of console -----");
        return false;
    }
    all_passed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_defaults_to_the_list_in_order() {
        let all = select(&[]).unwrap();
        assert_eq!(all[0], ("ciliate-lab".into(), "vm_smoke".into()));
        assert_eq!(all.len(), SUITES.len());
    }

    #[test]
    fn select_parses_and_rejects_only() {
        let one = select(&["ciliate-datapath:programs".into()]).unwrap();
        assert_eq!(one, vec![("ciliate-datapath".into(), "programs".into())]);
        for bad in ["programs", ":programs", "ciliate-lab:", "a:b:c", "a b:c"] {
            let err = select(&[bad.into()]).unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.contains("PACKAGE:TEST_TARGET"),
                "{err}"
            );
        }
    }
}
