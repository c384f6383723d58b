//! Kernel parameters through `/proc/sys`.
//!
//! The `net.*` keys belong to the network namespace of the thread that opens
//! the file, so call these while inside the namespace you mean (within
//! [`crate::netns::run_in`] or with a [`crate::netns::enter`] guard alive).
//!
//! Keys are written as `sysctl(8)` takes them: with dots
//! (`net.ipv4.conf.all.forwarding`) or, when a part contains a dot itself
//! (a VLAN device `eth0.100`), with slashes (`net/ipv4/conf/eth0.100/forwarding`).

use std::io::{self, Write};
use std::path::PathBuf;

pub const PROC_SYS: &str = "/proc/sys";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("invalid sysctl key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("reading sysctl {key} ({})", path.display())]
    Read {
        key: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting sysctl {key} to {value:?} ({})", path.display())]
    Write {
        key: String,
        value: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SysctlError {
    /// The key does not exist (in this namespace, or on this kernel).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Read { source, .. } | Self::Write { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
            }
            Self::InvalidKey { .. } => false,
        }
    }
}

/// The file under `/proc/sys` for a key.
pub fn path(key: &str) -> Result<PathBuf, SysctlError> {
    let invalid = |reason| SysctlError::InvalidKey {
        key: key.to_string(),
        reason,
    };
    let relative = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() {
        return Err(invalid("it is empty"));
    }
    if relative
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(invalid("it has an empty, `.` or `..` component"));
    }
    Ok(PathBuf::from(PROC_SYS).join(relative))
}

/// The current value, without the trailing newline.
pub fn get(key: &str) -> Result<String, SysctlError> {
    let path = path(key)?;
    std::fs::read_to_string(&path)
        .map(|v| v.trim_end_matches('\n').to_string())
        .map_err(|source| SysctlError::Read {
            key: key.to_string(),
            path,
            source,
        })
}

/// Writes `value` to the key.
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    let path = path(key)?;
    let err = |path: PathBuf, source| SysctlError::Write {
        key: key.to_string(),
        value: value.to_string(),
        path,
        source,
    };
    // Not `create`: a missing key must fail, not make a file.
    let mut file = match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(file) => file,
        Err(source) => return Err(err(path, source)),
    };
    file.write_all(value.as_bytes())
        .map_err(|source| err(path, source))
}

/// Like [`set`], but a key that does not exist (IPv6 disabled on the kernel,
/// a device without the directory) is not an error: returns whether it was written.
pub fn set_if_exists(key: &str, value: &str) -> Result<bool, SysctlError> {
    match set(key, value) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys() {
        assert_eq!(
            path("net.ipv4.conf.all.forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/all/forwarding")
        );
        assert_eq!(
            path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in ["", "net/../../etc/passwd", "net..ipv4", "/"] {
            let err = path(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn missing_keys_are_told_apart() {
        let key = "net/ipv4/conf/no-such-device-ciliate/forwarding";
        let err = set(key, "1").unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains(key), "{err}");
        assert!(!set_if_exists(key, "1").unwrap());
        assert!(get(key).unwrap_err().is_not_found());
    }

    #[test]
    fn reads_a_key() {
        let v = get("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v:?}");
    }
}
