//! The VM suite's canary (`cargo xtask vm-test` runs it first): the guest
//! runs the kernel the suites were written for, and that kernel makes the
//! devices the host's cannot (ipvlan, geneve, netkit). When this fails the
//! VM is broken, not the datapath. Not a host test: `test = false`.

use std::process::Command;

use ciliate_datapath::testing::TestNetns;

/// Runs `ip -n NETNS ARGS`; panics with its output when it fails.
fn ip(ns: &TestNetns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(&ns.name)
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "`ip -n {} {}` failed ({}): {}",
        ns.name,
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    for (dev, kind) in [("ipvl0", "ipvlan"), ("gnv0", "geneve"), ("nkp0", "netkit")] {
        let json = ip(&ns, &["-j", "-d", "link", "show", "dev", dev]);
        let links: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(links[0]["linkinfo"]["info_kind"], kind, "{dev}: {json}");
    }
    // Dropping the namespace deletes it with every device in it.
}
