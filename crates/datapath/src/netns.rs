//! Network namespaces: create and delete named ones (`/run/netns/NAME`, as
//! iproute2 does), and enter one for the current thread behind a guard that
//! restores the previous namespace on drop.
//!
//! Entering changes only the calling thread. Never enter on a tokio worker
//! thread: use [`run_in`], which does the work on a thread of its own.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named namespaces live, as with `ip netns`.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist or cannot be opened")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("returning to the original network namespace")]
    Restore(#[source] nix::Error),
    #[error("creating network namespace {name}: {step}")]
    Create {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("deleting network namespace {name}")]
    Delete {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the namespace worker thread panicked")]
    Thread,
}

/// The path of a named namespace.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Opens a namespace file; the error names the path.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })
}

/// While alive, the current thread is in another network namespace.
pub struct NetnsGuard {
    original: File,
}

/// Moves the current thread into the namespace at `path` until the guard drops.
pub fn enter(path: &Path) -> Result<NetnsGuard, NetnsError> {
    let original = open(Path::new("/proc/thread-self/ns/net"))?;
    let target = open(path)?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: path.to_owned(),
        source,
    })?;
    Ok(NetnsGuard { original })
}

impl NetnsGuard {
    /// Returns to the original namespace, reporting failure instead of aborting.
    pub fn restore(self) -> Result<(), NetnsError> {
        let result =
            setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Restore);
        std::mem::forget(self);
        result
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // A thread left in the wrong namespace would silently misroute every
        // later netlink call; stopping is the only safe answer.
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("fatal: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Runs `f` on a fresh thread inside the namespace at `path`.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = path.to_owned();
    std::thread::spawn(move || {
        let guard = enter(&path)?;
        let out = f();
        guard.restore()?;
        Ok(out)
    })
    .join()
    .map_err(|_| NetnsError::Thread)?
}

/// Creates `/run/netns/NAME` holding a new, empty network namespace.
pub fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    let err = |step: &'static str| {
        let name = name.to_string();
        move |source: std::io::Error| NetnsError::Create { name, step, source }
    };
    let dir = Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(err("creating /run/netns"))?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(err("creating the mount point (does it exist already?)"))?;
    let target = path.clone();
    // unshare() moves the calling thread; do it on a throwaway thread so the
    // caller's thread keeps its namespace.
    let result = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")));
    if let Err(source) = result {
        let _ = std::fs::remove_file(&path);
        return Err(err("unshare and bind mount")(source));
    }
    Ok(path)
}

/// Removes a named namespace. Devices in it go away with its last user.
/// Deleting a namespace that does not exist succeeds.
pub fn delete_named(name: &str) -> Result<(), NetnsError> {
    let path = named_path(name);
    if !path.exists() {
        return Ok(());
    }
    let _ = umount2(&path, MntFlags::MNT_DETACH);
    std::fs::remove_file(&path).map_err(|source| NetnsError::Delete {
        name: name.to_string(),
        source,
    })
}

/// The inode that identifies a namespace, for comparing with `/proc/PID/ns/net`.
pub fn inode(path: &Path) -> Result<u64, NetnsError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })
}
