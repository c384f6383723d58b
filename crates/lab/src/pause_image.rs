//! The sandbox ("pause") image containerd needs for every pod. No registry is
//! reachable, so it is made here: a static pause binary compiled from the C
//! below with `cc -static`, in a hand-made OCI image layout packed as a tar
//! archive that `ctr images import` takes.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{io_err, Result};
use crate::sys::run_checked as run;

/// The name containerd knows the image by (`sandbox_image`).
pub const IMAGE: &str = "localhost/ciliate/pause:1";

/// What a pod's infra container runs: sleeps until told to stop, reaping
/// children (it is PID 1 of the pod's PID namespace).
const PAUSE_C: &str = r"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
";

/// Builds the image archive in `dir` (once: an existing archive is reused)
/// and returns its path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let archive = dir.join("pause-image.tar");
    if archive.is_file() {
        return Ok(archive);
    }
    let work = dir.join("pause-build");
    let rootfs = work.join("rootfs");
    let layout = work.join("oci");
    let blobs = layout.join("blobs").join("sha256");
    for d in [&rootfs, &blobs] {
        std::fs::create_dir_all(d).map_err(io_err("creating", d))?;
    }
    let source = work.join("pause.c");
    std::fs::write(&source, PAUSE_C).map_err(io_err("writing", &source))?;
    let binary = rootfs.join("pause");
    run(
        "compiling the pause binary (needs gcc and libc6-dev: scripts/install-deps.sh)",
        Command::new("cc")
            .args(["-static", "-Os", "-o"])
            .arg(&binary)
            .arg(&source),
    )?;

    let layer_tar = work.join("layer.tar");
    run(
        "packing the pause image's layer",
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer_tar)
            .arg("pause"),
    )?;
    let layer = std::fs::read(&layer_tar).map_err(io_err("reading", &layer_tar))?;
    let layer_digest = put_blob(&blobs, &layer)?;

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config = serde_json::to_vec(&config).expect("JSON values serialize");
    let config_digest = put_blob(&blobs, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest).expect("JSON values serialize");
    let manifest_digest = put_blob(&blobs, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": IMAGE,
                "org.opencontainers.image.ref.name": IMAGE.rsplit(':').next().unwrap_or("1"),
            },
        }],
    });
    write(
        &layout.join("index.json"),
        &serde_json::to_vec(&index).expect("JSON values serialize"),
    )?;
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    // Written aside and renamed: a half-written archive is never reused.
    let partial = dir.join("pause-image.tar.partial");
    run(
        "packing the pause image",
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&partial)
            .args(["oci-layout", "index.json", "blobs"]),
    )?;
    std::fs::rename(&partial, &archive).map_err(io_err("renaming", &partial))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(archive)
}

/// Stores a blob under its digest; returns `sha256:<hex>`.
fn put_blob(blobs: &Path, data: &[u8]) -> Result<String> {
    let hex = format!("{:x}", Sha256::digest(data));
    write(&blobs.join(&hex), data)?;
    Ok(format!("sha256:{hex}"))
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(io_err("writing", path))
}
