//! What runs inside the guest: the initramfs's `/init` (busybox sh: mounts,
//! then the run script, then power off) and the run script (bash from the
//! host's /usr: each suite in turn, its output and exit code into the
//! results share). Both are generated here so they can be tested as text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::build::BuiltSuite;

/// Mount point of the results share in the guest.
pub const RESULTS: &str = "/results";
/// The run script's name in the results share.
pub const RUN_SCRIPT: &str = "run.sh";
/// Written by init (the run script's exit code) when every suite ran.
pub const DONE: &str = "done";
/// The run script's own output.
pub const GUEST_LOG: &str = "guest.log";
/// Written by init once everything is mounted, just before the suites.
pub const BOOTED: &str = "booted";

/// A host directory the guest mounts over 9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The 9p mount tag, QEMU's name for the share.
    pub tag: &'static str,
    pub host: PathBuf,
    pub guest: PathBuf,
    pub readonly: bool,
    /// Extra mount options: cache=loose for trees that do not change while
    /// the guest runs (executables start much faster from the page cache).
    pub cache: bool,
}

/// The shares, in the order init mounts them: the host's /usr and /etc
/// (read-only: the guest runs the host's tools and libraries), the kernel's
/// modules (for modprobe), the workspace at its own path (so paths compiled
/// into the test executables hold) and the results.
pub fn shares(kernel_root: &Path, workspace: &Path, results: &Path) -> Vec<Share> {
    let share = |tag, host: &Path, guest: &Path, readonly, cache| Share {
        tag,
        host: host.to_path_buf(),
        guest: guest.to_path_buf(),
        readonly,
        cache,
    };
    vec![
        share("hostusr", Path::new("/usr"), Path::new("/usr"), true, true),
        share("hostetc", Path::new("/etc"), Path::new("/etc"), true, false),
        share("kroot", kernel_root, Path::new("/kroot"), true, true),
        share("workspace", workspace, workspace, false, false),
        share("results", results, Path::new(RESULTS), false, false),
    ]
}

/// The kernel command line: the serial console, quiet (the serial port is
/// slow under TCG), a panic powers off at once (QEMU runs with -no-reboot),
/// then `extra`.
pub fn kernel_cmdline(extra: &[String]) -> String {
    let mut line = "console=ttyS0 quiet panic=-1 rdinit=/init".to_string();
    for a in extra {
        line.push(' ');
        line.push_str(a);
    }
    line
}

/// `s` as one word of sh/bash.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The initramfs's `/init`. `modules` are the .ko names under /modules, in
/// load order (9p and what it needs).
pub fn init_script(modules: &[String], shares: &[Share]) -> String {
    let mut s = String::from(
        "#!/busybox sh\n\
         # Written by cargo xtask vm-test (xtask/src/vm/guest.rs): mounts what the\n\
         # suites need, runs /results/run.sh and powers off.\n\
         B=/busybox\n\
         # Each line carries the guest's uptime, to see where boot time goes.\n\
         say() { read -r up _ < /proc/uptime; echo \"ciliate-vm: [$up s] $*\" > /dev/console; }\n\
         # Powering off at once beats the host waiting for its timeout.\n\
         die() { say \"FATAL: $*\"; $B sync; $B poweroff -f; }\n\
         $B mount -t proc proc /proc\n\
         $B mount -t sysfs sys /sys\n\
         $B mount -t devtmpfs dev /dev\n",
    );
    for m in modules {
        let _ = writeln!(s, "$B insmod /modules/{m}.ko || die \"insmod {m}\"");
    }
    s.push_str("say \"modules loaded\"\n");
    // The guest's scratch trees come before the shares: a workspace checked
    // out under one of them (CI's clone in /tmp) is mounted on top, not hidden.
    s.push_str(
        "for d in /tmp /run /var /root; do $B mount -t tmpfs -o mode=0755 tmpfs $d || die \"tmpfs $d\"; done\n\
         $B chmod 1777 /tmp\n",
    );
    for sh in shares {
        let mut opts = "trans=virtio,version=9p2000.L,msize=512000".to_string();
        if sh.readonly {
            opts.push_str(",ro");
        }
        if sh.cache {
            opts.push_str(",cache=loose");
        }
        let guest = quote(&sh.guest.to_string_lossy());
        let _ = writeln!(
            s,
            "$B mkdir -p {guest} && $B mount -t 9p -o {opts} {} {guest} || die \"mounting share {}\"",
            sh.tag, sh.tag
        );
    }
    s.push_str(
        "say \"shares mounted\"\n\
         $B mkdir -p /var/tmp /var/lib /var/log /var/cache /run/lock /dev/pts /dev/shm\n\
         $B chmod 1777 /var/tmp\n\
         $B ln -s /run /var/run\n\
         $B mount -t devpts devpts /dev/pts\n\
         $B mount -t tmpfs -o mode=1777 shm /dev/shm\n\
         $B ln -sf /proc/self/fd /dev/fd\n\
         $B ln -sf /proc/self/fd/0 /dev/stdin\n\
         $B ln -sf /proc/self/fd/1 /dev/stdout\n\
         $B ln -sf /proc/self/fd/2 /dev/stderr\n\
         $B mount -t cgroup2 cgroup2 /sys/fs/cgroup || die \"cgroup2\"\n\
         $B mount -t bpf bpf /sys/fs/bpf || die \"bpffs\"\n\
         $B hostname ciliate-vm\n\
         $B ip link set lo up\n\
         # The kernel asks for modules (ipvlan, geneve, ...) through this: the\n\
         # host's modprobe, on the shared module tree.\n\
         printf '#!/bin/sh\\nexec /usr/sbin/modprobe -d /kroot \"$@\"\\n' > /run/modprobe\n\
         $B chmod 755 /run/modprobe\n\
         echo /run/modprobe > /proc/sys/kernel/modprobe\n\
         export CILIATE_VM=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root TERM=dumb\n\
         : > /results/booted\n\
         say \"running the suites\"\n\
         cd /\n\
         /usr/bin/bash /results/run.sh > /results/guest.log 2>&1\n\
         echo $? > /results/done\n\
         $B sync\n\
         say \"done, powering off\"\n\
         $B poweroff -f\n",
    );
    s
}

/// The file stem of a suite's files in the results share.
pub fn stem(index: usize, name: &str) -> String {
    format!("{index:02}-{}", name.replace(':', "-"))
}

/// The run script: each suite's executable in turn, from its crate's
/// directory (as cargo runs tests), one test at a time, its output to
/// `STEM.out` and `rc start end` (times from the guest's clock) to
/// `STEM.done`, written last and atomically so the host can poll for it.
pub fn run_script(suites: &[BuiltSuite], test_args: &[String]) -> String {
    let mut s = String::from(
        "# Written by cargo xtask vm-test (xtask/src/vm/guest.rs): runs each suite in turn.\n\
         set -u\n\
         R=/results\n\
         export RUST_BACKTRACE=1\n\
         suite() {\n\
         \x20 local stem=$1 label=$2 dir=$3\n\
         \x20 shift 3\n\
         \x20 echo \"ciliate-vm: $label\" > /dev/console\n\
         \x20 : > \"$R/$stem.start\"\n\
         \x20 local t0=$EPOCHREALTIME\n\
         \x20 (cd \"$dir\" && export CARGO_MANIFEST_DIR=\"$dir\" && exec \"$@\") > \"$R/$stem.out\" 2>&1 < /dev/null\n\
         \x20 local rc=$?\n\
         \x20 echo \"$rc $t0 $EPOCHREALTIME\" > \"$R/$stem.tmp\" && mv \"$R/$stem.tmp\" \"$R/$stem.done\"\n\
         }\n",
    );
    for (i, b) in suites.iter().enumerate() {
        let label = format!("[{}/{}] {}", i + 1, suites.len(), b.name);
        let mut args = vec![
            quote(&stem(i, &b.name)),
            quote(&label),
            quote(&b.crate_dir.to_string_lossy()),
            quote(&b.executable.to_string_lossy()),
            quote("--test-threads=1"),
        ];
        args.extend(test_args.iter().map(|a| quote(a)));
        let _ = writeln!(s, "suite {}", args.join(" "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(name: &str, dir: &str, exe: &str) -> BuiltSuite {
        BuiltSuite {
            name: name.into(),
            crate_dir: dir.into(),
            executable: exe.into(),
        }
    }

    #[test]
    fn quote_survives_single_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn init_loads_modules_in_order_then_mounts_every_share() {
        let shares = shares(
            Path::new("/c/k/root"),
            Path::new("/w s"),
            Path::new("/w s/target/vm-test/results"),
        );
        let init = init_script(&["netfs".into(), "9pnet".into()], &shares);
        assert!(init.starts_with("#!/busybox sh\n"));
        let netfs = init.find("insmod /modules/netfs.ko").unwrap();
        let p9 = init.find("insmod /modules/9pnet.ko").unwrap();
        let usr = init.find(" hostusr '/usr'").unwrap();
        assert!(netfs < p9 && p9 < usr, "{init}");
        assert!(init.contains(
            "$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose hostusr '/usr'"
        ));
        // The workspace is writable, at its own (quoted) path, uncached.
        assert!(init.contains("$B mkdir -p '/w s' && $B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 workspace '/w s' ||"), "{init}");
        assert!(init.contains(" results '/results' "));
        // A workspace under /tmp (CI's clone) is mounted over the guest's tmpfs.
        let tmpfs = init.find("mount -t tmpfs -o mode=0755 tmpfs $d").unwrap();
        let workspace = init.find(" workspace '/w s'").unwrap();
        assert!(
            tmpfs < workspace,
            "the tmpfs mounts must not hide the workspace:\n{init}"
        );
        for needed in [
            "echo /run/modprobe > /proc/sys/kernel/modprobe",
            "exec /usr/sbin/modprobe -d /kroot",
            "export CILIATE_VM=1 ",
            "mount -t cgroup2",
            "mount -t bpf bpf /sys/fs/bpf",
            "mount -t devpts",
            ": > /results/booted\n",
            "/usr/bin/bash /results/run.sh > /results/guest.log 2>&1\necho $? > /results/done\n",
        ] {
            assert!(init.contains(needed), "{needed} missing from:\n{init}");
        }
        assert!(init.trim_end().ends_with("$B poweroff -f"));
    }

    #[test]
    fn shares_mount_read_only_host_trees() {
        let s = shares(Path::new("/k"), Path::new("/w"), Path::new("/r"));
        let tags: Vec<_> = s.iter().map(|s| (s.tag, s.readonly)).collect();
        assert_eq!(
            tags,
            [
                ("hostusr", true),
                ("hostetc", true),
                ("kroot", true),
                ("workspace", false),
                ("results", false)
            ]
        );
        assert_eq!(s[3].guest, Path::new("/w"));
    }

    #[test]
    fn run_script_runs_each_suite_from_its_crate_one_thread() {
        let script = run_script(
            &[
                built(
                    "ciliate-lab:vm_smoke",
                    "/w/crates/lab",
                    "/w/target/debug/deps/vm_smoke-1",
                ),
                built(
                    "ciliate-datapath:programs",
                    "/w/crates/datapath",
                    "/w/target/debug/deps/programs-2",
                ),
            ],
            &["arp".into(), "--exact".into()],
        );
        assert!(script.contains(
            "suite '00-ciliate-lab-vm_smoke' '[1/2] ciliate-lab:vm_smoke' '/w/crates/lab' '/w/target/debug/deps/vm_smoke-1' '--test-threads=1' 'arp' '--exact'\n"
        ), "{script}");
        assert!(script.contains("suite '01-ciliate-datapath-programs' '[2/2] ciliate-datapath:programs' '/w/crates/datapath' "));
        assert!(script.contains("export CARGO_MANIFEST_DIR=\"$dir\""));
        // The result is written last and atomically.
        let out = script.find("> \"$R/$stem.out\"").unwrap();
        let done = script
            .find("mv \"$R/$stem.tmp\" \"$R/$stem.done\"")
            .unwrap();
        assert!(out < done);
    }

    #[test]
    fn script_runs_under_bash_and_records_results() {
        // The real script on the host, results in a temporary directory,
        // two stand-in "test executables": one passes, one fails.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, rc) in [("ok", 0), ("bad", 3)] {
            let exe = d.join(name);
            std::fs::write(
                &exe,
                format!("#!/bin/sh\necho in $PWD $CARGO_MANIFEST_DIR $*\nexit {rc}\n"),
            )
            .unwrap();
            std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let ok = d.join("ok").to_string_lossy().into_owned();
        let bad = d.join("bad").to_string_lossy().into_owned();
        let script = run_script(
            &[built("p:ok", "/", &ok), built("p:bad", "/tmp", &bad)],
            &["f".into()],
        )
        .replace("R=/results", &format!("R={}", quote(&d.to_string_lossy())))
        .replace("> /dev/console", "> /dev/null");
        let st = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        assert!(st.success());
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read("00-p-ok.out"), "in / / --test-threads=1 f\n");
        assert_eq!(read("01-p-bad.out"), "in /tmp /tmp --test-threads=1 f\n");
        let done: Vec<String> = read("01-p-bad.done")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(done[0], "3");
        let (t0, t1): (f64, f64) = (done[1].parse().unwrap(), done[2].parse().unwrap());
        assert!(t1 >= t0 && t0 > 1e9, "{done:?}");
        assert!(read("00-p-ok.done").starts_with("0 "));
        assert!(d.join("00-p-ok.start").exists());
    }
}
