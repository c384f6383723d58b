//! The initramfs: busybox, the modules 9p needs (the kernel has them as
//! modules, and /usr comes over 9p, so they must be loaded from here),
//! the mount points and `/init`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cpio::Archive;
use super::guest::{self, Share};
use super::kernel::{self, Kernel};

/// What the shares need: the virtio transport and the 9p filesystem.
/// Their dependencies (netfs, 9pnet) come from modprobe.
pub const ROOT_MODULES: &[&str] = &["9pnet_virtio", "9p"];

/// A module file and its name (what insmod logs and init loads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: PathBuf,
}

/// The image for `kernel` whose init mounts `shares`.
pub fn build(kernel: &Kernel, shares: &[Share]) -> Result<Vec<u8>> {
    let mut modules = Vec::new();
    for m in ROOT_MODULES {
        let out = kernel::run(
            Command::new("modprobe").arg("-d").arg(&kernel.root).args([
                "-S",
                &kernel.release,
                "--show-depends",
                m,
            ]),
            &format!("resolving the dependencies of module {m}"),
        )?;
        for dep in parse_show_depends(&String::from_utf8_lossy(&out)) {
            if !modules.contains(&dep) {
                modules.push(dep);
            }
        }
    }
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();

    let mut a = Archive::new();
    for d in [
        "dev", "proc", "sys", "tmp", "run", "var", "root", "usr", "etc", "kroot", "modules",
    ] {
        a.dir(d);
    }
    a.char_device("dev/console", 0o600, 5, 1);
    // The host's /usr is mounted over /usr: these make its binaries' paths
    // (/bin/sh, /lib64/ld-linux-x86-64.so.2) resolve, as on a merged-/usr host.
    for d in ["bin", "sbin", "lib", "lib64"] {
        a.symlink(d, &format!("usr/{d}"));
    }
    let busybox = std::fs::read(&kernel.busybox)
        .with_context(|| format!("reading {}", kernel.busybox.display()))?;
    a.file("busybox", 0o755, &busybox);
    for m in &modules {
        a.file(
            &format!("modules/{}.ko", m.name),
            0o644,
            &decompress(&m.path)?,
        );
    }
    a.file("init", 0o755, guest::init_script(&names, shares).as_bytes());
    Ok(a.finish())
}

/// The modules `modprobe --show-depends` would insert, in order
/// (built-in ones are skipped: there is nothing to load).
pub fn parse_show_depends(out: &str) -> Vec<Module> {
    out.lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|p| {
            let path = PathBuf::from(p);
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = file.split(".ko").next().unwrap_or(&file).to_string();
            Module { name, path }
        })
        .collect()
}

/// A module's bytes, decompressed: busybox's insmod passes the file to
/// init_module, which takes only plain ELF.
fn decompress(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("ko") => {
            return std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        }
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        other => bail!(
            "module {}: unknown compression {other:?} (known: .ko, .ko.xz, .ko.zst, .ko.gz)",
            path.display()
        ),
    };
    kernel::run(
        Command::new(tool).arg("-dc").arg(path),
        &format!("decompressing {}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_depends_gives_modules_in_load_order() {
        let out = "builtin virtio\n\
                   insmod /c/root/lib/modules/6.12.95+deb12-amd64/kernel/fs/netfs/netfs.ko.xz \n\
                   insmod /c/root/lib/modules/6.12.95+deb12-amd64/kernel/net/9p/9pnet.ko.xz \n\
                   insmod /c/root/lib/modules/6.12.95+deb12-amd64/kernel/fs/9p/9p.ko.xz opt=1\n";
        let mods = parse_show_depends(out);
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["netfs", "9pnet", "9p"]);
        assert_eq!(
            mods[2].path,
            Path::new("/c/root/lib/modules/6.12.95+deb12-amd64/kernel/fs/9p/9p.ko.xz")
        );
        assert!(parse_show_depends("builtin virtio_ring\n").is_empty());
    }

    #[test]
    fn decompresses_xz_and_reads_plain_modules() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.ko");
        std::fs::write(&plain, b"\x7fELF-module").unwrap();
        assert_eq!(decompress(&plain).unwrap(), b"\x7fELF-module");
        let st = Command::new("xz").arg("-k").arg(&plain).status().unwrap();
        assert!(st.success());
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(
            decompress(&dir.path().join("a.ko.xz")).unwrap(),
            b"\x7fELF-module"
        );
        let err = decompress(&dir.path().join("a.ko.lz4"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.ko.lz4") && err.contains(".ko.xz"), "{err}");
    }
}
