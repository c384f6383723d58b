//! The agent refuses, at start and before it sets anything up, a
//! `tunnelProtocol` or `datapathMode` whose device this kernel cannot make,
//! naming the key, the missing feature and the kernel. Where the kernel has
//! the feature (the VM suite's 6.12), the same start gets past the probe.
//!
//! Each test runs the agent in a namespace of its own, with a `bpf.root`
//! that is not a bpffs, so a start that passes the probe stops at the
//! datapath: nothing outside the test's namespace is touched either way.

use std::process::Command;

use ciliate_datapath::netlink::Netlink;
use ciliate_datapath::require_root;
use ciliate_datapath::testing::TestNetns;

/// Starts the agent in `ns` with `yaml` plus private paths; exit code and stderr.
fn start_in(ns: &TestNetns, yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let d = dir.path().display();
    let config = format!(
        "nodeName: probe\nipv4Range: 10.77.0.0/24\nenableHealthChecking: false\n\
         bpf: {{root: {d}/not-bpffs}}\nstateDir: {d}/state\nsocketPath: {d}/agent.sock\n{yaml}"
    );
    std::fs::write(&path, config).unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(env!("CARGO_BIN_EXE_ciliate-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the kernel can make the device: asked directly, in `ns`.
fn kernel_can(ns: &TestNetns, make: impl FnOnce(&Netlink) -> bool) -> bool {
    make(&ns.netlink())
}

/// `ext0` with 192.168.77.10/24, up: the node's native device.
fn native_device(nl: &Netlink) -> ciliate_datapath::netlink::Link {
    let native = nl.create_veth("ext0", "ext1", None).unwrap();
    nl.add_address(native.index, "192.168.77.10".parse().unwrap(), 24)
        .unwrap();
    nl.set_up(native.index).unwrap();
    native
}

/// Asserts the refusal where the kernel lacks the feature, and that the
/// probe passes (the start fails later, at the non-bpffs root) where it has it.
fn check(has_it: bool, code: Option<i32>, err: &str, key_value: &str, feature: &str) {
    assert_ne!(code, Some(0), "the agent must not run here: {err}");
    if has_it {
        assert!(
            !err.contains("cannot create one") && err.contains("not-bpffs"),
            "the kernel has {feature}: the agent should pass the probe and stop at bpf.root: {err}"
        );
    } else {
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy();
        assert!(
            err.contains(key_value)
                && err.contains(feature)
                && err.contains(release.as_ref())
                && err.contains("cannot create one"),
            "the refusal must name `{key_value}`, {feature} and kernel {release}: {err}"
        );
    }
}

#[test]
fn geneve_needs_the_kernels_geneve_device() {
    require_root!();
    let ns = TestNetns::new("kf-gnv");
    let has_it = kernel_can(&ns, |nl| {
        nl.create_geneve_external("gtest", 6081, None).is_ok()
    });
    ns.netlink().del_link_by_name("gtest").unwrap();
    let (code, err) = start_in(&ns, "routingMode: tunnel\ntunnelProtocol: geneve\n");
    check(
        has_it,
        code,
        &err,
        "tunnelProtocol: geneve",
        "CONFIG_GENEVE",
    );
    println!("geneve in this kernel: {has_it}; agent said: {err}");
}

#[test]
fn netkit_needs_the_kernels_netkit_device() {
    require_root!();
    let ns = TestNetns::new("kf-nk");
    let has_it = kernel_can(&ns, |nl| {
        nl.create_netkit_pair("nktest", "nkpeer", None, None)
            .is_ok()
    });
    ns.netlink().del_link_by_name("nktest").unwrap();
    let (code, err) = start_in(&ns, "datapathMode: netkit\n");
    check(has_it, code, &err, "datapathMode: netkit", "CONFIG_NETKIT");
    println!("netkit in this kernel: {has_it}; agent said: {err}");
}

#[test]
fn ipvlan_needs_the_kernels_ipvlan_device() {
    require_root!();
    let ns = TestNetns::new("kf-ipv");
    let nl = ns.netlink();
    let native = native_device(&nl);
    let has_it = kernel_can(&ns, |nl| {
        nl.create_ipvlan_l3("ivtest", native.index, None).is_ok()
    });
    nl.del_link_by_name("ivtest").unwrap();
    let (code, err) = start_in(
        &ns,
        "routingMode: native\nipv4NativeRoutingCIDR: 10.77.0.0/16\ndatapathMode: ipvlan\ndevices: [ext0]\n",
    );
    check(has_it, code, &err, "datapathMode: ipvlan", "CONFIG_IPVLAN");
    println!("ipvlan in this kernel: {has_it}; agent said: {err}");
}

#[test]
fn ipvlan_with_a_missing_master_device_is_refused() {
    require_root!();
    let ns = TestNetns::new("kf-ivm");
    native_device(&ns.netlink());
    let (code, err) = start_in(
        &ns,
        "routingMode: native\nipv4NativeRoutingCIDR: 10.77.0.0/16\ndatapathMode: ipvlan\ndevices: [ext0]\nipvlan: {masterDevice: nosuch0}\n",
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("ipvlan.masterDevice") && err.contains("nosuch0"),
        "{err}"
    );
}
