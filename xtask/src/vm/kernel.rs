//! The guest's kernel and busybox, fetched with apt through a private
//! configuration in the cache directory (the host's /etc/apt is only read,
//! for proxies and the like, never written) and unpacked with `dpkg -x`.
//! A stamp file names what was unpacked: the next run with the same pin
//! uses the cache without network, apt or depmod.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{KERNEL_PACKAGE, KERNEL_VERSION};

/// The busybox the initramfs runs before the host's /usr is mounted.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Debian suites the private sources list has: backports for the kernel.
pub const SUITES: &[&str] = &["bookworm", "bookworm-updates", "bookworm-backports"];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const STAMP: &str = "ready";

/// An unpacked kernel package (its modules depmod'ed) and busybox.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, the directory under lib/modules.
    pub release: String,
    /// The package's root: boot/, lib/modules/RELEASE (shared into the guest).
    pub root: PathBuf,
    pub image: PathBuf,
    pub busybox: PathBuf,
}

/// The sources list: the three suites from deb.debian.org, signed by
/// Debian's archive keyring.
pub fn sources_list() -> String {
    let mut list = String::new();
    for s in SUITES {
        let _ = writeln!(list, "deb [signed-by={KEYRING}] {MIRROR} {s} main");
    }
    list
}

/// apt.conf pointing every piece of state apt writes into `dir`.
pub fn apt_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "// Written by cargo xtask vm-test: apt state for the VM's kernel, apart from the host's.\n\
         Dir::Etc::SourceList \"{d}/sources.list\";\n\
         Dir::Etc::SourceParts \"/nonexistent\";\n\
         Dir::State::Lists \"{d}/lists\";\n\
         Dir::Cache \"{d}/cache\";\n\
         Acquire::Languages \"none\";\n\
         // The cache is root's; apt's unprivileged _apt user could not write it.\n\
         APT::Sandbox::User \"root\";\n"
    )
}

/// The directory of one pinned kernel in the cache.
pub fn pin_dir(cache: &Path) -> PathBuf {
    cache.join(format!("{KERNEL_PACKAGE}_{KERNEL_VERSION}"))
}

fn stamp_text() -> String {
    format!("{KERNEL_PACKAGE} {KERNEL_VERSION}\n{BUSYBOX_PACKAGE}\n")
}

/// The pinned kernel from the cache, fetching and unpacking it first when
/// the cache does not have it.
pub fn prepare(cache: &Path) -> Result<Kernel> {
    let dir = pin_dir(cache);
    let stamp = dir.join(STAMP);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text().as_str()) {
        return locate(&dir);
    }
    std::fs::create_dir_all(cache).with_context(|| {
        format!(
            "creating the VM cache {} (pass --cache DIR or set CILIATE_VM_CACHE to use another)",
            cache.display()
        )
    })?;
    let apt = cache.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(sub))
            .with_context(|| format!("creating {}", apt.join(sub).display()))?;
    }
    let conf = apt.join("apt.conf");
    std::fs::write(apt.join("sources.list"), sources_list())?;
    std::fs::write(&conf, apt_conf(&apt))?;

    eprintln!(
        "    apt-get update (private configuration {})",
        conf.display()
    );
    let update = tool("apt-get")
        .arg("-c")
        .arg(&conf)
        .args(["-q", "update"])
        .output()
        .map_err(|e| missing_tool("apt-get", &e))?;
    if !update.status.success() {
        bail!(
            "apt-get update with {} failed: {}{}",
            conf.display(),
            String::from_utf8_lossy(&update.stdout),
            String::from_utf8_lossy(&update.stderr)
        );
    }

    // A fresh directory: whatever a failed run left is redone.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    eprintln!("    apt-get download {KERNEL_PACKAGE}={KERNEL_VERSION} {BUSYBOX_PACKAGE}");
    let pinned = format!("{KERNEL_PACKAGE}={KERNEL_VERSION}");
    let download = tool("apt-get")
        .arg("-c")
        .arg(&conf)
        .args(["-q", "download", &pinned, BUSYBOX_PACKAGE])
        .current_dir(&debs)
        .output()
        .map_err(|e| missing_tool("apt-get", &e))?;
    if !download.status.success() {
        let offered = tool("apt-cache")
            .arg("-c")
            .arg(&conf)
            .args(["madison", KERNEL_PACKAGE])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        bail!(
            "apt could not download the pinned kernel {KERNEL_PACKAGE} version {KERNEL_VERSION} \
             from bookworm-backports (it offers: {}); move KERNEL_PACKAGE/KERNEL_VERSION in \
             xtask/src/vm.rs to a kernel apt has. apt said: {}",
            if offered.is_empty() {
                "no version of that package"
            } else {
                &offered
            },
            String::from_utf8_lossy(&download.stderr).trim()
        );
    }

    let root = dir.join("root");
    let busybox = dir.join("busybox");
    unpack(&find_deb(&debs, KERNEL_PACKAGE)?, &root)?;
    unpack(&find_deb(&debs, BUSYBOX_PACKAGE)?, &busybox)?;
    let release = release(&root)?;
    eprintln!("    depmod {release}");
    run(tool("depmod").arg("-b").arg(&root).arg(&release), "depmod")?;
    // The packages are unpacked; 100 MB of .debs are not worth keeping.
    std::fs::remove_dir_all(&debs).with_context(|| format!("removing {}", debs.display()))?;
    let kernel = locate(&dir)?;
    std::fs::write(&stamp, stamp_text()).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(kernel)
}

/// The kernel files in an unpacked pin directory.
fn locate(dir: &Path) -> Result<Kernel> {
    let root = dir.join("root");
    let release = release(&root)?;
    let image = root.join("boot").join(format!("vmlinuz-{release}"));
    let busybox = dir.join("busybox/bin/busybox");
    for f in [&image, &busybox] {
        if !f.is_file() {
            bail!(
                "{} is missing from the VM cache; remove {} to fetch it again",
                f.display(),
                dir.display()
            );
        }
    }
    Ok(Kernel {
        release,
        root,
        image,
        busybox,
    })
}

/// The one directory under lib/modules: the kernel's release.
fn release(root: &Path) -> Result<String> {
    let modules = root.join("lib/modules");
    let names: Vec<String> = std::fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{} should hold exactly one kernel release, it holds {names:?}",
            modules.display()
        ),
    }
}

/// `PACKAGE_*.deb` in `dir` (apt escapes the version's epoch in the name).
fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
                && p.extension().is_some_and(|e| e == "deb")
        })
        .with_context(|| {
            format!(
                "apt-get download left no {prefix}*.deb in {}",
                dir.display()
            )
        })
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    run(tool("dpkg").arg("-x").arg(deb).arg(into), "dpkg -x").map(drop)
}

fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    // apt and dpkg messages in English, whatever the host's locale: the
    // errors above quote them.
    c.env("LC_ALL", "C");
    c
}

/// Runs a command to completion; the error carries its output.
pub fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| missing_tool(&name, &e))?;
    if !out.status.success() {
        bail!(
            "{what} ({cmd:?}) failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The error for a command that could not start, naming where to get it.
pub fn missing_tool(name: &str, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("`{name}` is not installed: ./scripts/install-deps.sh installs what cargo xtask vm-test needs")
    } else {
        anyhow::anyhow!("starting `{name}`: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_the_three_suites_signed_by_debian() {
        let list = sources_list();
        assert_eq!(
            list,
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main\n"
        );
    }

    #[test]
    fn apt_conf_keeps_all_state_in_the_cache() {
        let conf = apt_conf(Path::new("/c/apt"));
        for line in [
            "Dir::Etc::SourceList \"/c/apt/sources.list\";",
            "Dir::Etc::SourceParts \"/nonexistent\";",
            "Dir::State::Lists \"/c/apt/lists\";",
            "Dir::Cache \"/c/apt/cache\";",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line} missing from:\n{conf}"
            );
        }
        // Nothing may point at the host's apt state.
        assert!(!conf.contains("/etc/apt") && !conf.contains("/var/lib/apt"));
    }

    #[test]
    fn pin_dir_is_keyed_by_package_and_version() {
        let d = pin_dir(Path::new("/c"));
        assert_eq!(
            d,
            Path::new("/c/linux-image-6.12.95+deb12-amd64-unsigned_6.12.95-1~bpo12+1")
        );
    }

    #[test]
    fn finds_debs_by_package_prefix_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("busybox-static_1%3a1.35.0-4_amd64.deb"), "").unwrap();
        std::fs::write(dir.path().join("busybox_1%3a1.35.0-4_amd64.deb"), "").unwrap();
        let found = find_deb(dir.path(), "busybox-static").unwrap();
        assert!(found.ends_with("busybox-static_1%3a1.35.0-4_amd64.deb"));
        let err = find_deb(dir.path(), "linux-image-x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux-image-x_*.deb"), "{err}");

        std::fs::create_dir_all(dir.path().join("lib/modules/6.12.95+deb12-amd64")).unwrap();
        assert_eq!(release(dir.path()).unwrap(), "6.12.95+deb12-amd64");
        std::fs::create_dir_all(dir.path().join("lib/modules/6.1.0")).unwrap();
        assert!(release(dir.path())
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
    }
}
