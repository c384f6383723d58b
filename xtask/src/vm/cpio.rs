//! A writer of the "newc" cpio format the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst): written
//! from memory, so the image needs no staging directory, no device-node
//! privileges and no `cpio` tool, and is the same bytes every run.

/// An archive being built; entries are added in order, parents first.
#[derive(Default)]
pub struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, S_IFDIR | 0o755, (0, 0), b"")
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(path, S_IFCHR | (mode & 0o7777), (major, minor), b"")
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, (0, 0), 0, 1);
        self.buf
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> &mut Self {
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        self.header(path, mode, rdev, data.len() as u32, nlink);
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn header(&mut self, name: &str, mode: u32, rdev: (u32, u32), size: u32, nlink: u32) {
        self.next_ino += 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the image is reproducible
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check (only for "070702")
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::process::{Command, Stdio};

    #[test]
    fn header_layout_matches_newc() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"hi");
        let bytes = a.finish();
        let head = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            head,
            "070701\
             00000001000081ED000000000000000000000001\
             0000000000000002000000000000000000000000\
             000000000000000500000000"
        );
        // 110-byte header + "init\0" = 115, padded to 116, then data padded to 120.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..120], b"hi\0\0");
        assert_eq!(&bytes[120..126], b"070701");
        assert!(bytes.windows(11).any(|w| w == b"TRAILER!!!\0"));
        assert_eq!(bytes.len() % 4, 0);
    }

    /// GNU cpio (scripts/install-deps.sh installs it) reads back what we wrote.
    #[test]
    fn gnu_cpio_extracts_the_archive() {
        let mut a = Archive::new();
        a.dir("etc")
            .file("etc/hello", 0o644, b"hello\n")
            .file("init", 0o755, b"#!/bin/sh\n")
            .symlink("bin", "usr/bin");
        let bytes = a.finish();
        let dir = tempfile::tempdir().unwrap();
        let mut cpio = Command::new("cpio")
            .args(["-i", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .expect("cpio (scripts/install-deps.sh installs it)");
        cpio.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(cpio.wait().unwrap().success());
        let p = dir.path();
        assert_eq!(
            std::fs::read_to_string(p.join("etc/hello")).unwrap(),
            "hello\n"
        );
        let mode = std::fs::metadata(p.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(p.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
    }

    /// As root, cpio also makes the console device node the archive carries.
    #[test]
    fn char_devices_round_trip_as_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: making device nodes needs root");
            return;
        }
        let mut a = Archive::new();
        a.dir("dev").char_device("dev/console", 0o600, 5, 1);
        let bytes = a.finish();
        let dir = tempfile::tempdir().unwrap();
        let mut cpio = Command::new("cpio")
            .args(["-i", "--quiet"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        cpio.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(cpio.wait().unwrap().success());
        let meta = std::fs::metadata(dir.path().join("dev/console")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), nix::libc::makedev(5, 1));
    }
}
