//! The built agent's masquerading against a real etcd, in a node namespace:
//! ip-masq-agent's list follows the store's ConfigMap, the file and the
//! agent's own config into `ciliate_ipmasq4` (BPF mode), a bad entry is
//! refused with the previous list kept; iptables mode installs its
//! `CILIATE_POST_nat` chain idempotently, rewrites it on reload and removes
//! it on shutdown and when the agent comes back in BPF mode; the
//! masquerading settings reach the datapath's config map.

mod cluster;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use ciliate_api::IpMasqState;
use ciliate_datapath::maps::{be_addr, MASQ_F_BPF, MASQ_F_IPTABLES, MASQ_F_IP_MASQ_AGENT};
use ciliate_datapath::require_root;
use ciliate_store::Store;
use cluster::{wait_for, Agent, Net, NODE_IP, WAIT};
use k8s_openapi::api::core::v1::ConfigMap;

fn config(net: &Net, extra: &str) -> String {
    format!(
        "ipv4Range: 172.20.5.0/24\netcd: {{endpoints: [\"{}\"]}}\ndevices: [eth0]\n{extra}",
        net.endpoint()
    )
}

/// Sets `bpf.masquerade` in the agent's file (the harness writes `bpf.root`).
fn set_bpf_masquerade(agent: &Agent, on: bool) {
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("  masquerade:"))
        .map(str::to_string)
        .collect();
    let root = out.iter().position(|l| l.starts_with("  root:")).unwrap();
    out.insert(root + 1, format!("  masquerade: {on}"));
    std::fs::write(&agent.config, out.join("\n") + "\n").unwrap();
}

fn put_configmap(net: &Net, config: &str) {
    let mut cm = ConfigMap::default();
    cm.metadata.namespace = Some("kube-system".into());
    cm.metadata.name = Some("ip-masq-agent".into());
    cm.data = Some([("config".to_string(), config.to_string())].into());
    net.client
        .call(move |rt, store: &Store| rt.block_on(store.put(&cm)))
        .unwrap();
}

fn delete_configmap(net: &Net) {
    net.client
        .call(|rt, store: &Store| {
            rt.block_on(store.delete::<ConfigMap>(Some("kube-system"), "ip-masq-agent"))
        })
        .unwrap();
}

fn ipmasq(agent: &Agent) -> IpMasqState {
    agent.client().get("/v1/ipmasq").expect("GET /v1/ipmasq")
}

/// Waits until the state satisfies `pred`.
#[track_caller]
fn wait_state(agent: &Agent, what: &str, pred: impl Fn(&IpMasqState) -> bool) -> IpMasqState {
    wait_for(
        what,
        WAIT,
        || format!("{:?}\n{}", ipmasq(agent), agent.log_text()),
        || Some(ipmasq(agent)).filter(|s| pred(s)),
    )
}

/// Every prefix of the pinned `ciliate_ipmasq4`.
fn map_prefixes(agent: &Agent) -> BTreeSet<String> {
    let maps = agent.maps();
    maps.ipmasq4
        .keys()
        .map(|k| {
            let k = k.unwrap();
            format!(
                "{}/{}",
                Ipv4Addr::from(k.data().to_ne_bytes()),
                k.prefix_len()
            )
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

#[test]
fn ip_masq_agent_follows_the_configmap_the_file_and_the_config() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ip-masq-agent.yaml");
    let mut agent = Agent::new(
        &net.node,
        &config(
            &net,
            &format!(
                "enableHealthChecking: false\nipv4NativeRoutingCIDR: 172.20.0.0/16\nipMasqAgent:\n  enabled: true\n  configPath: {}\n  config:\n    nonMasqueradeCIDRs: [10.1.0.0/16]\n",
                file.display()
            ),
        ),
    );
    agent.spawn();
    let status = agent.wait_ready();
    let m = &status.masquerading;
    assert!(m.enabled && m.ip_masq_agent, "{m:?}");
    assert_eq!(m.mode, "BPF");
    assert_eq!(
        (m.devices[0].name.as_str(), m.devices[0].ip),
        ("eth0", NODE_IP)
    );
    assert_eq!(m.snat_exclusion_cidr.as_deref(), Some("172.20.0.0/16"));
    let dp = agent.maps().config.get(&0, 0).unwrap();
    assert_eq!(dp.masquerade, MASQ_F_BPF | MASQ_F_IP_MASQ_AGENT);
    assert_eq!(
        (dp.native_routing_cidr, dp.native_routing_prefixlen),
        (be_addr(Ipv4Addr::new(172, 20, 0, 0)), 16)
    );

    // No ConfigMap, no file: the agent's own list, with link-local.
    let s = wait_state(&agent, "the config's list", |s| s.generation >= 1);
    assert_eq!(s.source, "config");
    assert_eq!(s.cidrs, ["10.1.0.0/16", "169.254.0.0/16"]);
    assert!(s.enabled && s.last_error.is_none());
    assert_eq!(
        map_prefixes(&agent),
        set(&["10.1.0.0/16", "169.254.0.0/16"])
    );

    // The file appears: it wins over the config.
    std::fs::write(
        &file,
        "nonMasqueradeCIDRs: [10.2.0.0/16]\nmasqLinkLocal: true\n",
    )
    .unwrap();
    let s = wait_state(&agent, "the file's list", |s| s.source.starts_with("file "));
    assert_eq!(s.source, format!("file {}", file.display()));
    assert_eq!(s.cidrs, ["10.2.0.0/16"]);
    assert!(s.masq_link_local);
    assert_eq!(map_prefixes(&agent), set(&["10.2.0.0/16"]));

    // The ConfigMap wins over the file.
    put_configmap(
        &net,
        r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"]}"#,
    );
    let s = wait_state(&agent, "the ConfigMap's list", |s| {
        s.source.starts_with("configmap")
    });
    assert_eq!(s.source, "configmap kube-system/ip-masq-agent");
    let good = set(&["10.10.1.0/24", "10.10.2.0/24", "169.254.0.0/16"]);
    assert_eq!(map_prefixes(&agent), good);

    // A bad entry: the whole update is refused, the previous list stays.
    put_configmap(
        &net,
        r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.3.0/24","10.10.1.0/33"]}"#,
    );
    let refused = wait_state(&agent, "the refusal", |s| s.last_error.is_some());
    let error = refused.last_error.clone().unwrap();
    assert!(
        error.contains(r#"nonMasqueradeCIDRs[2] "10.10.1.0/33""#)
            && error.contains("configmap kube-system/ip-masq-agent"),
        "{error}"
    );
    assert_eq!(refused.generation, s.generation);
    assert_eq!(refused.cidrs, s.cidrs);
    assert_eq!(map_prefixes(&agent), good);
    assert!(
        agent.log_text().contains("10.10.1.0/33"),
        "{}",
        agent.log_text()
    );

    // The ConfigMap goes: back to the file, the error with it.
    delete_configmap(&net);
    let s = wait_state(&agent, "the file's list again", |s| {
        s.source.starts_with("file ") && s.last_error.is_none()
    });
    assert_eq!(map_prefixes(&agent), set(&["10.2.0.0/16"]));

    // A bad file is refused too.
    std::fs::write(&file, "nonMasqueradeCIDRs: [10.2.0.0/16, banana]\n").unwrap();
    let refused = wait_state(&agent, "the file's refusal", |s| s.last_error.is_some());
    assert!(
        refused
            .last_error
            .as_deref()
            .unwrap()
            .contains(r#"nonMasqueradeCIDRs[1] "banana""#),
        "{refused:?}"
    );
    assert_eq!(refused.generation, s.generation);
    assert_eq!(map_prefixes(&agent), set(&["10.2.0.0/16"]));

    // The file goes: the config's list again.
    std::fs::remove_file(&file).unwrap();
    wait_state(&agent, "the config's list again", |s| {
        s.source == "config" && s.last_error.is_none()
    });
    assert_eq!(
        map_prefixes(&agent),
        set(&["10.1.0.0/16", "169.254.0.0/16"])
    );

    // A restart puts the store's list in force first, not the config's.
    put_configmap(
        &net,
        "nonMasqueradeCIDRs: [10.10.9.0/24]\nmasqLinkLocal: true\n",
    );
    wait_state(&agent, "the new ConfigMap", |s| {
        s.source.starts_with("configmap")
    });
    agent.stop(false);
    agent.spawn();
    agent.wait_ready();
    let s = wait_state(&agent, "the list after the restart", |s| s.generation >= 1);
    assert_eq!(
        (s.generation, s.source.as_str()),
        (1, "configmap kube-system/ip-masq-agent")
    );
    assert_eq!(map_prefixes(&agent), set(&["10.10.9.0/24"]));
}

/// `iptables-save -t nat` in the node namespace: the jumps to our chain from
/// POSTROUTING, and our chain's rules.
fn nat_rules(net: &Net) -> (Vec<String>, Vec<String>) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.node.name,
            "iptables-save",
            "-t",
            "nat",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let jumps = text
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING") && l.contains("CILIATE_POST_nat"))
        .map(str::to_string)
        .collect();
    let rules = text
        .lines()
        .filter(|l| l.starts_with("-A CILIATE_POST_nat ") || l.starts_with(":CILIATE_POST_nat"))
        .map(str::to_string)
        .collect();
    (jumps, rules)
}

const JUMP: &str =
    r#"-A POSTROUTING -m comment --comment "ciliate-feeder: CILIATE_POST_nat" -j CILIATE_POST_nat"#;
const MASQ: &str = r#"-A CILIATE_POST_nat -s 172.20.5.0/24 -o eth0 -m comment --comment "ciliate masquerade non-cluster" -j MASQUERADE"#;

fn ret(cidr: &str, why: &str) -> String {
    format!(r#"-A CILIATE_POST_nat -d {cidr} -m comment --comment "ciliate: {why}" -j RETURN"#)
}

#[test]
fn iptables_mode_owns_its_chain() {
    require_root!("network namespaces, devices, a bpffs, etcd and iptables");
    let net = Net::new();
    let mut agent = Agent::new(
        &net.node,
        &config(
            &net,
            "enableHealthChecking: true\nipMasqAgent:\n  enabled: true\n  config:\n    nonMasqueradeCIDRs: [10.10.1.0/24]\n",
        ),
    );
    set_bpf_masquerade(&agent, false);
    agent.spawn();
    let status = agent.wait_ready();
    assert_eq!(status.masquerading.mode, "IPTables");
    assert_eq!(
        status.masquerading.snat_exclusion_cidr.as_deref(),
        Some("172.20.5.0/24")
    );
    let dp = agent.maps().config.get(&0, 0).unwrap();
    assert_eq!(dp.masquerade, MASQ_F_IPTABLES | MASQ_F_IP_MASQ_AGENT);
    assert_eq!(dp.native_routing_prefixlen, 0);
    wait_state(&agent, "the first list", |s| s.generation >= 1);
    let first = vec![
        ":CILIATE_POST_nat - [0:0]".to_string(),
        ret("10.10.1.0/24", "ip-masq-agent nonMasqueradeCIDRs"),
        ret("169.254.0.0/16", "ip-masq-agent nonMasqueradeCIDRs"),
        ret("172.20.5.0/24", "cluster pods"),
        MASQ.to_string(),
    ];
    assert_eq!(nat_rules(&net), (vec![JUMP.to_string()], first.clone()));
    // The map is BPF mode's; nothing in it here.
    assert!(map_prefixes(&agent).is_empty());
    // The stack forwards what the datapath hands it from the pods.
    wait_for(
        "the health endpoint",
        WAIT,
        || agent.log_text(),
        || (net.node.sysctl("net/ipv4/conf/lxc_health/forwarding") == "1").then_some(()),
    );

    // A reload rewrites the chain.
    put_configmap(
        &net,
        r#"{"nonMasqueradeCIDRs":["10.10.2.0/24"],"masqLinkLocal":true}"#,
    );
    wait_state(&agent, "the ConfigMap's list", |s| {
        s.source.starts_with("configmap")
    });
    let second = vec![
        ":CILIATE_POST_nat - [0:0]".to_string(),
        ret("10.10.2.0/24", "ip-masq-agent nonMasqueradeCIDRs"),
        ret("172.20.5.0/24", "cluster pods"),
        MASQ.to_string(),
    ];
    assert_eq!(nat_rules(&net), (vec![JUMP.to_string()], second.clone()));

    // A crash leaves the chain; the next start rewrites it, one jump still.
    agent.stop(true);
    assert_eq!(nat_rules(&net).1, second);
    agent.spawn();
    agent.wait_ready();
    wait_state(&agent, "the list after a crash", |s| s.generation >= 1);
    assert_eq!(nat_rules(&net), (vec![JUMP.to_string()], second.clone()));

    // A clean stop removes everything of ours.
    agent.stop(false);
    assert_eq!(nat_rules(&net), (vec![], vec![]));
    assert!(agent.log_text().contains("removed the masquerading chain"));

    // Back in iptables mode, then a crash, then BPF mode: the leftover goes.
    agent.spawn();
    agent.wait_ready();
    wait_state(&agent, "the list again", |s| s.generation >= 1);
    assert_eq!(nat_rules(&net).0.len(), 1);
    agent.stop(true);
    set_bpf_masquerade(&agent, true);
    agent.spawn();
    let status = agent.wait_ready();
    assert_eq!(status.masquerading.mode, "BPF");
    assert_eq!(nat_rules(&net), (vec![], vec![]));
    let dp = agent.maps().config.get(&0, 0).unwrap();
    assert_eq!(dp.masquerade, MASQ_F_BPF | MASQ_F_IP_MASQ_AGENT);
    wait_state(&agent, "the BPF list", |s| s.generation >= 1);
    assert_eq!(map_prefixes(&agent), set(&["10.10.2.0/24"]));
    assert_eq!(net.node.sysctl("net/ipv4/conf/lxc_health/forwarding"), "0");
}

#[test]
fn masquerade_off_writes_no_flags() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let mut agent = Agent::new(
        &net.node,
        &config(
            &net,
            "enableHealthChecking: false\nenableIPv4Masquerade: false\nroutingMode: native\n",
        ),
    );
    agent.spawn();
    let status = agent.wait_ready();
    assert!(!status.masquerading.enabled);
    let dp = agent.maps().config.get(&0, 0).unwrap();
    assert_eq!(dp.masquerade, 0);
    let s = ipmasq(&agent);
    assert!(!s.enabled && s.cidrs.is_empty(), "{s:?}");
}
