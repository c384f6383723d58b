//! The VM suite's canary (`cargo xtask vm-test` runs it first): the guest
//! runs the kernel the suites were written for, and that kernel makes the
//! devices the host's cannot (ipvlan, geneve, netkit). When this fails the
//! VM is broken, not the datapath. Not a host test: `test = false`.

use std::process::Command;

use ciliate_datapath::testing::TestNetns;

/// Runs `ip -n NETNS ARGS` (the lab's own `ip` runner: it fails with ip's stderr).
fn ip(ns: &TestNetns, args: &[&str]) {
    let full: Vec<&str> = ["-n", ns.name.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    ciliate_lab::sys::ip("vm_smoke", &full).unwrap();
}

/// The kind (`linkinfo.info_kind`) of device `dev`, from `ip -j -d link show`.
fn kind(ns: &TestNetns, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "-d", "link", "show", "dev", dev])
        .output()
        .expect("running ip");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{dev}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    links[0]["linkinfo"]["info_kind"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn in_vm() {
    assert_eq!(
        std::env::var("CILIATE_VM").as_deref(),
        Ok("1"),
        "vm_smoke runs in the VM: cargo xtask vm-test --only ciliate-lab:vm_smoke"
    );
    ciliate_datapath::require_root!("creating devices");
}

#[test]
fn guest_runs_the_6_12_kernel() {
    in_vm();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(release.starts_with("6.12."), "kernel {release}");
}

#[test]
fn ipvlan_geneve_and_netkit_devices_can_be_made() {
    in_vm();
    let ns = TestNetns::new("vmsmoke");
    ip(
        &ns,
        &[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ],
    );
    ip(
        &ns,
        &[
            "link", "add", "link", "veth0", "name", "ipvl0", "type", "ipvlan", "mode", "l3",
        ],
    );
    ip(&ns, &["link", "add", "gnv0", "type", "geneve", "external"]);
    // iproute2 6.1 (the host's /usr) has no netkit options; the kernel's
    // defaults (L3 mode, the peer named nk%d, hence not nk0 here) prove it.
    ip(&ns, &["link", "add", "nkp0", "type", "netkit"]);
    for (dev, expected) in [("ipvl0", "ipvlan"), ("gnv0", "geneve"), ("nkp0", "netkit")] {
        assert_eq!(kind(&ns, dev), expected, "{dev}");
    }
    // Dropping the namespace deletes it with every device in it.
}
