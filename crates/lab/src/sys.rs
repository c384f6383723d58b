//! Processes, mounts, sysctls and `ip` calls: the lab's contact with the system.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, LabError, Result};
use crate::state::ProcessRecord;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A program by path, or looked up in `PATH` when it is a bare name.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `ip ARGS...` and fails with its stderr.
pub fn ip(what: &str, ip_args: &[&str]) -> Result<()> {
    run_checked(what, Command::new("ip").args(ip_args))
}

/// Runs a command to its end (stdin from /dev/null) and fails with its
/// stderr when it exits unsuccessfully; `what` says why it ran.
pub fn run_checked(what: &str, cmd: &mut Command) -> Result<()> {
    let argv: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            what: what.to_string(),
            argv: argv.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            what: what.to_string(),
            argv,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Sets sysctls (`net.ipv4.ip_forward` style keys) inside a network namespace:
/// `/proc/sys/net` shows the namespace of the thread that opens it.
pub fn sysctls_in(netns: &Path, settings: &[(&str, &str)]) -> Result<()> {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    ciliate_datapath::netns::run_in(netns, move || {
        for (key, value) in settings {
            let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value.as_bytes()).map_err(io_err("setting sysctl", path))?;
        }
        Ok(())
    })?
}

/// Identity of a namespace file: (device, inode).
pub type NsId = (u64, u64);

pub fn ns_id(path: &Path) -> Option<NsId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Opens a namespace to enter in a child before exec.
pub fn open_netns(netns: &Path) -> Result<File> {
    File::open(netns).map_err(|source| {
        LabError::Netns(ciliate_datapath::netns::NetnsError::Open {
            path: netns.to_owned(),
            source,
        })
    })
}

/// A command whose process starts inside the network namespace at `netns`
/// (entered with setns between fork and exec; the mount namespace is left
/// alone, unlike `ip netns exec`). Dispositions of SIGINT/SIGQUIT are reset
/// to default in the child so a parent that ignores them does not pass that on.
pub fn command_in(netns: &Path, program: &str) -> Result<Command> {
    let ns = open_netns(netns)?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    Ok(cmd)
}

/// What to start detached.
pub struct Detached<'a> {
    pub what: String,
    pub netns: &'a Path,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub env_remove: &'a [&'a str],
    pub cwd: Option<&'a Path>,
    pub log: &'a Path,
}

/// Starts a process in its own session inside a namespace, stdin from
/// /dev/null, stdout and stderr appended to a log. A thread reaps it when it
/// exits, so a long-lived caller (a test) leaves no zombies.
pub fn spawn_detached(d: &Detached<'_>) -> Result<ProcessRecord> {
    let Some((program, args)) = d.argv.split_first() else {
        return Err(LabError::Invalid {
            field: format!("command of {}", d.what),
            value: String::new(),
            allowed: "a program and its arguments".into(),
        });
    };
    let log = File::options()
        .create(true)
        .append(true)
        .open(d.log)
        .map_err(io_err("opening log", d.log))?;
    let log2 = log.try_clone().map_err(io_err("opening log", d.log))?;
    let mut cmd = command_in(d.netns, program)?;
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
    for (k, v) in d.env {
        cmd.env(k, v);
    }
    for k in d.env_remove {
        cmd.env_remove(k);
    }
    cmd.current_dir(d.cwd.unwrap_or_else(|| Path::new("/")));
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        what: d.what.clone(),
        argv: d.argv.to_vec(),
        source,
    })?;
    let pid = child.id() as i32;
    let start_time = start_time(pid).unwrap_or(0);
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(ProcessRecord {
        pid,
        start_time,
        argv: d.argv.to_vec(),
        log: d.log.to_owned(),
    })
}

/// The start time of a process (clock ticks after boot) and whether it is a zombie.
fn stat(pid: i32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&"Z" | &"X"));
    // Field 22 of the whole line is the start time; `rest` begins at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(s, _)| s)
}

/// Whether the recorded process still runs (same pid, same start time, not a zombie).
pub fn alive(rec: &ProcessRecord) -> bool {
    matches!(stat(rec.pid), Some((start, false)) if start == rec.start_time)
}

/// Kills a process this lab started and recorded, with SIGKILL as a crash
/// would, and waits (up to 5 s) for it to be gone. Only signals it while it
/// is still that process (same pid and start time): a pid the kernel has
/// since given to another process is left alone. Returns whether it was
/// still running.
pub fn kill_recorded(rec: &ProcessRecord) -> bool {
    if rec.pid <= 1 || rec.pid == std::process::id() as i32 {
        return false;
    }
    // A pidfd pins the process: checked after opening it, the signal cannot
    // reach a process that took the pid over in between.
    // SAFETY: pidfd_open(2) with a pid and no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, rec.pid, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the fd was just returned to us and is owned here only.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    if !alive(rec) {
        return false;
    }
    // SAFETY: pidfd_send_signal(2) on an open pidfd, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
    drop(fd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(rec) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn pid_running(pid: i32) -> bool {
    matches!(stat(pid), Some((_, false)))
}

/// Every process with its network namespace (or that of any of its threads)
/// in `namespaces`. Never includes the calling process.
pub fn pids_in_namespaces(namespaces: &BTreeSet<NsId>) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    if namespaces.is_empty() {
        return pids;
    }
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let main = entry.path().join("ns/net");
        let hit = ns_id(&main).is_some_and(|id| namespaces.contains(&id))
            || std::fs::read_dir(entry.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|task| {
                    ns_id(&task.path().join("ns/net")).is_some_and(|id| namespaces.contains(&id))
                });
        if hit {
            pids.insert(pid);
        }
    }
    pids
}

/// SIGTERM, then SIGKILL after `grace`, to each process. Returns the pids
/// still running afterwards. Never signals the calling process or init.
pub fn terminate(pids: &BTreeSet<i32>, grace: Duration) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let targets: BTreeSet<i32> = pids
        .iter()
        .copied()
        .filter(|p| *p > 1 && *p != me)
        .collect();
    let signal_all = |sig: libc::c_int| {
        for &pid in &targets {
            // SAFETY: plain kill(2).
            unsafe {
                libc::kill(pid, sig);
            }
        }
    };
    let wait = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            let left: BTreeSet<i32> = targets
                .iter()
                .copied()
                .filter(|p| pid_running(*p))
                .collect();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    if targets.is_empty() {
        return targets;
    }
    signal_all(libc::SIGTERM);
    if wait(grace).is_empty() {
        return BTreeSet::new();
    }
    signal_all(libc::SIGKILL);
    wait(Duration::from_secs(5))
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts a private bpffs at `dir`.
pub fn mount_bpffs(dir: &Path) -> Result<()> {
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| io_err("mounting bpffs at", dir)(e.into()))
}

/// Unmounts everything at or under `dir` (stacked mounts included).
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    for _ in 0..16 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return failures;
        }
        for m in mounts {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                failures.push(format!("umount {}: {e}", m.display()));
            }
        }
    }
    failures.extend(
        mounts_under(dir)
            .iter()
            .map(|m| format!("mount {}", m.display())),
    );
    failures
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                "  (empty)".to_string()
            } else {
                all[start..]
                    .iter()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("  (cannot read: {e})"),
    }
}
