//! Which CNI ADDs are in flight on this node, so that reclaiming addresses
//! no endpoint uses (CNI DEL and GC, the agent's restart) never takes one an
//! ADD has allocated and is still wiring up.
//!
//! The plugin holds an exclusive `flock` on `<socket dir>/cni-add/<container
//! id>` for as long as its ADD runs; the kernel drops it when the process
//! exits, however it exits, so a crashed ADD is never "in flight". Shared by
//! the plugin and the agent through the socket's directory, which both see.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// The directory of the locks, beside the agent's socket.
pub fn dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("cni-add")
}

/// A container id as a file name: CNI ids are `[A-Za-z0-9_.-]`, anything
/// else (never a path separator) becomes `_`.
fn file_name(container_id: &str) -> String {
    let name: String = container_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    }
}

/// An ADD in flight: held until dropped (or the process ends).
#[derive(Debug)]
pub struct AddLock {
    path: PathBuf,
    _file: File,
}

impl AddLock {
    /// Marks the ADD of `container_id` in flight, waiting for another ADD of
    /// the same container (a runtime runs one at a time) to finish.
    pub fn hold(socket: &Path, container_id: &str) -> io::Result<Self> {
        let dir = dir(socket);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(file_name(container_id));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(Self { path, _file: file })
    }
}

impl Drop for AddLock {
    fn drop(&mut self) {
        // Removed while still held: whoever opened it before learns it is
        // free once this process lets go; nobody waits on a stale file.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether an ADD of `container_id` is running now.
pub fn in_flight(socket: &Path, container_id: &str) -> bool {
    let path = dir(socket).join(file_name(container_id));
    held(&path)
}

/// Whether any ADD is running now.
pub fn any_in_flight(socket: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir(socket)) else {
        return false;
    };
    entries.flatten().any(|e| held(&e.path()))
}

fn held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            // Left by an ADD that ended without removing it.
            let _ = std::fs::remove_file(path);
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_in_flight_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ciliate.sock");
        assert!(!in_flight(&socket, "abc"));
        assert!(!any_in_flight(&socket));
        let lock = AddLock::hold(&socket, "abc").unwrap();
        assert!(in_flight(&socket, "abc"));
        assert!(!in_flight(&socket, "abd"));
        assert!(any_in_flight(&socket));
        drop(lock);
        assert!(!in_flight(&socket, "abc"));
        assert!(!any_in_flight(&socket));
    }

    #[test]
    fn container_ids_never_leave_the_directory() {
        assert_eq!(file_name("../x/y"), "_.._x_y");
        assert_eq!(file_name("a.b-c_D9"), "a.b-c_D9");
    }
}
