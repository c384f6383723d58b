//! Netlink and sysctl against the real kernel, in network namespaces made for
//! the test (unique names, removed by a guard even when a test fails).
//! Needs root; without it every test says loudly that it skipped.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ciliate_datapath::netlink::{format_mac, parse_mac, Netlink, Route};
use ciliate_datapath::{netns, sysctl};

use ciliate_datapath::require_root;

/// Named namespaces that are deleted when the test ends, however it ends.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new() -> Self {
        Self(Vec::new())
    }

    /// Creates `/run/netns/cnl-<tag>-<pid>-<n>` and returns its name.
    fn create(&mut self, tag: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("cnl-{tag}-{}-{n}", std::process::id());
        netns::create_named(&name).expect("create namespace");
        self.0.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Err(e) = netns::delete_named(name) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// `ip -n NS -j ARGS...` parsed.
fn ip_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["-n", ns, "-j"])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ip -j output")
}

fn ip_link(ns: &str, dev: &str) -> serde_json::Value {
    ip_json(ns, &["-d", "link", "show", "dev", dev])[0].clone()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

#[test]
fn veth_addresses_routes_and_namespaces() {
    require_root!();
    let mut spaces = Namespaces::new();
    let a = spaces.create("a");
    let b = spaces.create("b");
    let a_path = netns::named_path(&a);
    let b_path = netns::named_path(&b);
    let nl = Netlink::new_in(&a_path).unwrap();

    // A fresh namespace has only lo, down.
    let links = nl.links().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].name, "lo");
    assert!(!links[0].up);
    let lo = nl.link_by_name("lo").unwrap().unwrap();
    nl.set_up(lo.index).unwrap();
    assert!(nl.link_by_index(lo.index).unwrap().unwrap().up);

    // A veth with both ends here.
    let va = nl.create_veth("va0", "vb0", Some(1400)).unwrap();
    assert_eq!(va.name, "va0");
    assert_eq!(va.mtu, 1400);
    assert_eq!(va.kind.as_deref(), Some("veth"));
    assert!(!va.up);
    let vb = nl.link_by_name("vb0").unwrap().expect("peer exists");
    assert_eq!(vb.mtu, 1400);
    assert_eq!(va.link, Some(vb.index));
    let json = ip_link(&a, "va0");
    assert_eq!(json["mtu"], 1400);
    assert_eq!(json["address"], format_mac(va.mac.unwrap()));
    assert_eq!(json["linkinfo"]["info_kind"], "veth");

    // Creating it again names the device and the errno.
    let err = nl.create_veth("va0", "vb9", None).unwrap_err();
    assert!(err.is_exists(), "{err}");
    let text = chain(&err);
    assert!(
        text.contains("creating veth pair va0 / vb9") && text.contains("File exists"),
        "{text}"
    );

    // Move the peer to namespace b, then work on it there.
    let b_file = netns::open(&b_path).unwrap();
    nl.set_netns(vb.index, b_file.as_fd()).unwrap();
    assert!(nl.link_by_name("vb0").unwrap().is_none());
    let nlb = Netlink::new_in(&b_path).unwrap();
    let vb = nlb.link_by_name("vb0").unwrap().expect("peer moved to b");
    nlb.set_name(vb.index, "eth0").unwrap();
    nlb.set_mtu(vb.index, 1300).unwrap();
    let mac = parse_mac("02:00:0a:c9:00:05").unwrap();
    nlb.set_mac(vb.index, mac).unwrap();
    nlb.set_up(vb.index).unwrap();
    let eth0 = nlb.link_by_index(vb.index).unwrap().unwrap();
    assert_eq!(
        (eth0.name.as_str(), eth0.mtu, eth0.mac, eth0.up),
        ("eth0", 1300, Some(mac), true)
    );
    let json = ip_link(&b, "eth0");
    assert_eq!(json["address"], "02:00:0a:c9:00:05");
    assert_eq!(json["mtu"], 1300);
    assert!(json["flags"].as_array().unwrap().iter().any(|f| f == "UP"));

    // Addresses: add, add again (EEXIST, distinct), idempotent variant, list.
    let pod_ip = Ipv4Addr::new(10, 201, 0, 5);
    let router = Ipv4Addr::new(10, 201, 0, 1);
    nlb.add_address(eth0.index, pod_ip, 32).unwrap();
    let err = nlb.add_address(eth0.index, pod_ip, 32).unwrap_err();
    assert!(err.is_exists());
    assert_eq!(err.device(), Some("eth0"));
    assert_eq!(
        chain(&err),
        "adding address 10.201.0.5/32 to eth0 (kernel: ipv4: Address already assigned): \
         File exists (os error 17)"
    );
    assert!(!nlb.ensure_address(eth0.index, pod_ip, 32).unwrap());
    assert!(nlb
        .ensure_address(eth0.index, Ipv4Addr::new(10, 201, 0, 6), 32)
        .unwrap());
    let addrs = nlb.addresses(eth0.index).unwrap();
    assert!(
        addrs.contains(&(pod_ip, 32)) && addrs.len() == 2,
        "{addrs:?}"
    );
    let json = ip_json(&b, &["-4", "addr", "show", "dev", "eth0"]);
    let ips: Vec<_> = json[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["local"].clone())
        .collect();
    assert!(ips.contains(&serde_json::json!("10.201.0.5")), "{ips:?}");
    nlb.del_address(eth0.index, Ipv4Addr::new(10, 201, 0, 6), 32)
        .unwrap();
    assert_eq!(nlb.addresses(eth0.index).unwrap(), vec![(pod_ip, 32)]);

    // Routes: the pod's two, as the CNI plugin installs them.
    let to_router = Route::link_scope(Ipv4Addr::new(10, 201, 0, 1).into(), eth0.index);
    let default = Route::via("0.0.0.0/0".parse().unwrap(), router, eth0.index);
    nlb.add_route(&to_router).unwrap();
    nlb.add_route(&default).unwrap();
    assert!(nlb.add_route(&default).unwrap_err().is_exists());
    nlb.replace_route(&default).unwrap();
    let listed = nlb.routes().unwrap();
    assert!(listed.contains(&to_router), "{listed:?}");
    assert!(listed.contains(&default), "{listed:?}");
    let json = ip_json(&b, &["-4", "route", "show"]);
    let has = |dst: &str, gw: Option<&str>, scope: Option<&str>| {
        json.as_array().unwrap().iter().any(|r| {
            r["dst"] == dst
                && r["dev"] == "eth0"
                && r["gateway"].as_str() == gw
                && r["scope"].as_str() == scope
        })
    };
    assert!(has("default", Some("10.201.0.1"), None), "{json}");
    assert!(has("10.201.0.1", None, Some("link")), "{json}");
    nlb.del_route(&default).unwrap();
    let err = nlb.del_route(&default).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        chain(&err).starts_with("deleting route default via 10.201.0.1 dev eth0: "),
        "{}",
        chain(&err)
    );
    assert!(!nlb.routes().unwrap().contains(&default));

    // A gateway that is not reachable: the kernel's own words come through.
    let bad = Route::via(
        "192.0.2.0/24".parse().unwrap(),
        Ipv4Addr::new(198, 51, 100, 1),
        eth0.index,
    );
    let err = nlb.add_route(&bad).unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("adding route 192.0.2.0/24 via 198.51.100.1 dev eth0"),
        "{text}"
    );
    // ... unless it is declared on-link.
    nlb.add_route(&Route {
        onlink: true,
        mtu: None,
        ..bad.clone()
    })
    .unwrap();
    assert!(nlb
        .routes()
        .unwrap()
        .iter()
        .any(|r| r.dst == bad.dst && r.onlink));

    // sysctl inside namespace b.
    let key = "net/ipv4/conf/eth0/forwarding";
    netns::run_in(&b_path, move || sysctl::set(key, "1"))
        .unwrap()
        .unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b,
            "cat",
            "/proc/sys/net/ipv4/conf/eth0/forwarding",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert!(!netns::run_in(&a_path, || sysctl::set_if_exists(
        "net/ipv4/conf/eth0/forwarding",
        "1"
    ))
    .unwrap()
    .unwrap());

    // Down, delete (the peer goes too), delete again.
    nlb.set_down(eth0.index).unwrap();
    assert!(!nlb.link_by_index(eth0.index).unwrap().unwrap().up);
    nl.del_link(va.index).unwrap();
    assert!(nlb.link_by_name("eth0").unwrap().is_none());
    assert!(!nl.del_link_by_name("va0").unwrap());
    let err = nl.del_link(va.index).unwrap_err();
    assert!(err.is_not_found());
    assert!(chain(&err).contains(&format!("deleting device index {}", va.index)));
}

#[test]
fn veth_born_with_its_peer_in_another_namespace() {
    require_root!();
    let mut spaces = Namespaces::new();
    let host = spaces.create("host");
    let pod = spaces.create("pod");
    let nl = Netlink::new_in(&netns::named_path(&host)).unwrap();
    let pod_file = netns::open(&netns::named_path(&pod)).unwrap();
    let lxc = nl
        .create_veth_with_peer_in("lxc0123456789a", "eth0", Some(1450), pod_file.as_fd())
        .unwrap();
    assert_eq!(lxc.mtu, 1450);
    assert!(nl.link_by_name("eth0").unwrap().is_none());
    let nlp = Netlink::new_in(&netns::named_path(&pod)).unwrap();
    let eth0 = nlp.link_by_name("eth0").unwrap().expect("peer in pod");
    assert_eq!(eth0.mtu, 1450);
    assert_eq!(ip_link(&pod, "eth0")["mtu"], 1450);
    assert!(nl.del_link_by_name("lxc0123456789a").unwrap());
    assert!(nlp.link_by_name("eth0").unwrap().is_none());
}

#[test]
fn missing_devices() {
    require_root!();
    let mut spaces = Namespaces::new();
    let ns = spaces.create("missing");
    let nl = Netlink::new_in(&netns::named_path(&ns)).unwrap();
    assert!(nl.link_by_name("nope0").unwrap().is_none());
    assert!(nl.link_by_index(4242).unwrap().is_none());
    assert!(!nl.del_link_by_name("nope0").unwrap());
    let err = nl.set_mtu(4242, 1500).unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(
        chain(&err),
        "setting MTU 1500 on device index 4242: No such device (os error 19)"
    );
    let err =
        Netlink::new_in(std::path::Path::new("/run/netns/does-not-exist-ciliate")).unwrap_err();
    assert!(
        chain(&err).contains("/run/netns/does-not-exist-ciliate"),
        "{}",
        chain(&err)
    );
}

/// Read-only: every device and route of the machine's own namespace decodes
/// (real NICs, bridges and tunnels carry attributes our namespaces do not).
#[test]
fn decodes_the_machines_own_devices_and_routes() {
    require_root!();
    let nl = Netlink::new().unwrap();
    let links = nl.links().unwrap();
    assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
    for link in &links {
        assert_eq!(
            nl.link_by_index(link.index)
                .unwrap()
                .as_ref()
                .map(|l| &l.name),
            Some(&link.name)
        );
        nl.addresses(link.index).unwrap();
    }
    nl.routes().unwrap();
}
