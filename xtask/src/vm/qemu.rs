//! The QEMU process: q35 under multi-threaded TCG (the machine's KVM cannot
//! run a stock kernel), no network card, the serial console to a file.
//! It is killed when the time limit passes, on Ctrl-C/SIGTERM, when this
//! process dies (parent-death signal) and when its guard is dropped.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::guest::Share;
use super::kernel::missing_tool;
use crate::interrupt;

pub const QEMU: &str = "qemu-system-x86_64";

/// One boot's configuration.
#[derive(Debug, Clone)]
pub struct Machine {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    pub append: String,
    pub shares: Vec<Share>,
    /// The guest's serial console.
    pub console: PathBuf,
    /// QEMU's own stdout and stderr.
    pub log: PathBuf,
}

/// How the QEMU process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// QEMU exited 0: the guest powered off (or panicked: -no-reboot).
    PoweredOff,
    /// QEMU exited with this code (or signal, as 128+N).
    Failed(i32),
    TimedOut(Duration),
    Interrupted,
    /// The caller's check stopped it: the guest did not boot in time.
    Stopped,
}

/// What the caller's periodic check wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Kill QEMU now.
    Stop,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PoweredOff => write!(f, "QEMU exited after the guest powered off or panicked"),
            Self::Failed(code) => write!(f, "QEMU failed with exit code {code}"),
            Self::TimedOut(t) => write!(f, "timed out after {} s, QEMU killed", t.as_secs()),
            Self::Interrupted => write!(f, "interrupted, QEMU killed"),
            Self::Stopped => write!(f, "the guest did not boot in time, QEMU killed"),
        }
    }
}

/// A path as part of a QEMU option list, where commas separate options.
fn opt_path(what: &str, p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{what} path {} is not UTF-8", p.display()))?;
    if s.contains(',') {
        bail!("{what} path {s:?} contains a comma, which QEMU's option syntax cannot take here");
    }
    Ok(s.to_string())
}

impl Machine {
    /// QEMU's command line.
    pub fn args(&self) -> Result<Vec<OsString>> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        for s in [
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ] {
            push(s);
        }
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        push("-serial");
        push(&format!("file:{}", opt_path("console", &self.console)?));
        push("-kernel");
        push(&opt_path("kernel", &self.kernel)?);
        push("-initrd");
        push(&opt_path("initramfs", &self.initrd)?);
        push("-append");
        push(&self.append);
        for s in &self.shares {
            push("-virtfs");
            push(&format!(
                "local,path={},mount_tag={},security_model=none{}",
                opt_path(s.tag, &s.host)?,
                s.tag,
                if s.readonly { ",readonly=on" } else { "" }
            ));
        }
        Ok(a)
    }
}

/// Kills and reaps QEMU unless it already exited.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Boots `m` and waits for QEMU to exit, at most `timeout`, calling `tick`
/// with the time since the start about four times a second (progress, and
/// whether to go on).
pub fn run(m: &Machine, timeout: Duration, tick: impl FnMut(Duration) -> Control) -> Result<Ended> {
    let log = File::create(&m.log).with_context(|| format!("creating {}", m.log.display()))?;
    let mut cmd = Command::new(QEMU);
    cmd.args(m.args()?).stdout(log.try_clone()?).stderr(log);
    supervise(cmd, timeout, tick)
}

/// Runs `cmd` (stdin closed) until it exits, the time limit passes, a
/// signal arrives or `tick` says stop; in the last three cases it is killed
/// and reaped.
pub fn supervise(
    mut cmd: Command,
    timeout: Duration,
    mut tick: impl FnMut(Duration) -> Control,
) -> Result<Ended> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    // Its own process group: Ctrl-C reaches us, and we kill QEMU, instead
    // of QEMU quitting under a guest that is mid-write.
    cmd.stdin(Stdio::null()).process_group(0);
    // SAFETY: the closure only makes one async-signal-safe prctl call.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().map_err(|e| missing_tool(&program, &e))?;
    let mut guard = Guard(child);
    let started = Instant::now();
    loop {
        if let Some(status) = guard.0.try_wait()? {
            let code = status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            });
            return Ok(if code == 0 {
                Ended::PoweredOff
            } else {
                Ended::Failed(code)
            });
        }
        if interrupt::interrupted() {
            return Ok(Ended::Interrupted);
        }
        if started.elapsed() >= timeout {
            return Ok(Ended::TimedOut(timeout));
        }
        if tick(started.elapsed()) == Control::Stop {
            return Ok(Ended::Stopped);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            kernel: "/c/root/boot/vmlinuz-6.12".into(),
            initrd: "/w/target/vm-test/initramfs.cpio".into(),
            memory_mib: 2048,
            cpus: 2,
            append: "console=ttyS0 quiet".into(),
            shares: super::super::guest::shares(
                Path::new("/c/root"),
                Path::new("/w"),
                Path::new("/w/r"),
            ),
            console: "/w/target/vm-test/console.log".into(),
            log: "/w/target/vm-test/qemu.log".into(),
        }
    }

    #[test]
    fn command_line_is_q35_tcg_without_network() {
        let args: Vec<String> = machine()
            .args()
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let line = args.join(" ");
        for part in [
            "-machine q35 -accel tcg,thread=multi -cpu max",
            "-nic none",
            "-m 2048 -smp 2",
            "-serial file:/w/target/vm-test/console.log",
            "-kernel /c/root/boot/vmlinuz-6.12 -initrd /w/target/vm-test/initramfs.cpio",
            "-virtfs local,path=/usr,mount_tag=hostusr,security_model=none,readonly=on",
            "-virtfs local,path=/w,mount_tag=workspace,security_model=none -virtfs",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        // The kernel command line stays one argument.
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "console=ttyS0 quiet");
    }

    #[test]
    fn commas_in_paths_are_refused_by_name() {
        let mut m = machine();
        m.shares[3].host = "/w,x".into();
        let err = m.args().unwrap_err().to_string();
        assert!(
            err.contains("workspace path \"/w,x\" contains a comma"),
            "{err}"
        );
    }

    #[test]
    fn qemu_failing_to_start_the_machine_is_a_failure() {
        // The kernel path does not exist: QEMU (from scripts/install-deps.sh)
        // exits at once with an error naming it.
        let dir = tempfile::tempdir().unwrap();
        let m = Machine {
            log: dir.path().join("log"),
            console: dir.path().join("console"),
            ..machine()
        };
        match run(&m, Duration::from_secs(30), |_| Control::Continue).unwrap() {
            Ended::Failed(code) => assert_ne!(code, 0),
            other => panic!("expected QEMU to fail on a missing kernel, got {other:?}"),
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(log.contains("vmlinuz-6.12"), "{log}");
    }

    #[test]
    fn a_process_past_its_time_limit_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo $$ > {}; exec sleep 30", pidfile.display()));
        let started = Instant::now();
        let mut ticks = 0;
        let ended = supervise(cmd, Duration::from_secs(1), |_| {
            ticks += 1;
            Control::Continue
        })
        .unwrap();
        assert_eq!(ended, Ended::TimedOut(Duration::from_secs(1)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(ticks >= 2, "{ticks}");
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "sleep {pid} still exists"
        );
    }

    #[test]
    fn a_check_saying_stop_kills_the_process() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let ended = supervise(cmd, Duration::from_secs(30), |elapsed| {
            if elapsed > Duration::from_millis(500) {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
        assert_eq!(ended, Ended::Stopped);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.arg("-c").arg(script);
            supervise(c, Duration::from_secs(30), |_| Control::Continue).unwrap()
        };
        assert_eq!(sh("exit 0"), Ended::PoweredOff);
        assert_eq!(sh("exit 3"), Ended::Failed(3));
        assert_eq!(sh("kill -9 $$"), Ended::Failed(137));
        let err = supervise(
            Command::new("/nonexistent/qemu"),
            Duration::from_secs(1),
            |_| Control::Continue,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("install-deps.sh"), "{err}");
    }
}
