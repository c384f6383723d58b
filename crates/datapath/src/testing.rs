//! For the workspace's privileged tests: the one root check that says loudly
//! why a test is skipped, unique names that parallel tests cannot collide on,
//! and a named network namespace that is deleted however the test ends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netlink::Netlink;
use crate::netns;

/// True as root. Otherwise prints, on stderr and stdout so that neither a
/// captured nor an uncaptured run can miss it, that the test is skipped and
/// what it needs root for; CI runs as root, where every test runs.
pub fn running_as_root(needs: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("\n*** SKIPPED: needs root ({needs}) ***\n");
    println!("SKIPPED: needs root ({needs})");
    false
}

/// Returns from the calling test, saying so loudly, unless it runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!("network namespaces, devices, BPF programs and bpffs")
    };
    ($needs:expr) => {
        if !$crate::testing::running_as_root($needs) {
            return;
        }
    };
}

/// `<tag>-<pid>-<n>`: unique across the tests of one process and across processes.
pub fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace (`unique(tag)`), deleted on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        netns::create_named(&name).expect("create namespace");
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        netns::named_path(&self.name)
    }

    pub fn netlink(&self) -> Netlink {
        Netlink::new_in(&self.path()).expect("netlink in namespace")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = netns::delete_named(&self.name) {
            eprintln!("cleanup: {e}");
        }
    }
}
