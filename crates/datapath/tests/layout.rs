//! The C and Rust views of every shared struct must agree: this reads the BTF
//! of `bpf/layout.c` (compiled from the same headers as the programs) with
//! bpftool and compares sizes, member names and offsets with the Rust types.

use std::mem::{offset_of, size_of};

use ciliate_datapath::maps::{
    Ct4Entry, Ct4Key, DatapathConfig, EndpointInfo, EndpointKey, IpcacheKey, IpcacheValue,
    IpmasqKey, IpmasqValue, Lb4AffinityKey, Lb4AffinityValue, Lb4Backend, Lb4Key, Lb4ReverseNat,
    Lb4Service, MetricsValue, Nat4Entry, TraceEvent,
};

struct RustLayout {
    c_name: &'static str,
    size: usize,
    /// (C member name, Rust offset) in declaration order.
    members: Vec<(&'static str, usize)>,
}

fn rust_layouts() -> Vec<RustLayout> {
    vec![
        RustLayout {
            c_name: "endpoint_key",
            size: size_of::<EndpointKey>(),
            members: vec![("ip4", offset_of!(EndpointKey, ip4))],
        },
        RustLayout {
            c_name: "endpoint_info",
            size: size_of::<EndpointInfo>(),
            members: vec![
                ("ifindex", offset_of!(EndpointInfo, ifindex)),
                ("lxc_id", offset_of!(EndpointInfo, lxc_id)),
                ("flags", offset_of!(EndpointInfo, flags)),
                ("mac", offset_of!(EndpointInfo, mac)),
                ("node_mac", offset_of!(EndpointInfo, node_mac)),
                ("sec_identity", offset_of!(EndpointInfo, sec_identity)),
            ],
        },
        RustLayout {
            c_name: "datapath_config",
            size: size_of::<DatapathConfig>(),
            members: vec![
                ("router_ip", offset_of!(DatapathConfig, router_ip)),
                ("trace_enabled", offset_of!(DatapathConfig, trace_enabled)),
                ("tunnel_ifindex", offset_of!(DatapathConfig, tunnel_ifindex)),
                ("routing_mode", offset_of!(DatapathConfig, routing_mode)),
                ("identity", offset_of!(DatapathConfig, identity)),
                ("native_ifindex", offset_of!(DatapathConfig, native_ifindex)),
                ("node_ip", offset_of!(DatapathConfig, node_ip)),
                ("ct_timeout_tcp", offset_of!(DatapathConfig, ct_timeout_tcp)),
                (
                    "ct_timeout_tcp_syn",
                    offset_of!(DatapathConfig, ct_timeout_tcp_syn),
                ),
                (
                    "ct_timeout_tcp_fin",
                    offset_of!(DatapathConfig, ct_timeout_tcp_fin),
                ),
                ("ct_timeout_any", offset_of!(DatapathConfig, ct_timeout_any)),
                ("masquerade", offset_of!(DatapathConfig, masquerade)),
                (
                    "native_routing_cidr",
                    offset_of!(DatapathConfig, native_routing_cidr),
                ),
                (
                    "native_routing_prefixlen",
                    offset_of!(DatapathConfig, native_routing_prefixlen),
                ),
            ],
        },
        RustLayout {
            c_name: "ipcache_key",
            size: size_of::<IpcacheKey>(),
            members: vec![
                ("prefixlen", offset_of!(IpcacheKey, prefixlen)),
                ("ip4", offset_of!(IpcacheKey, ip4)),
            ],
        },
        RustLayout {
            c_name: "ipmasq_key",
            size: size_of::<IpmasqKey>(),
            members: vec![
                ("prefixlen", offset_of!(IpmasqKey, prefixlen)),
                ("ip4", offset_of!(IpmasqKey, ip4)),
            ],
        },
        RustLayout {
            c_name: "ipmasq_value",
            size: size_of::<IpmasqValue>(),
            members: vec![("flags", offset_of!(IpmasqValue, flags))],
        },
        RustLayout {
            c_name: "ipcache_value",
            size: size_of::<IpcacheValue>(),
            members: vec![
                ("sec_identity", offset_of!(IpcacheValue, sec_identity)),
                ("tunnel_endpoint", offset_of!(IpcacheValue, tunnel_endpoint)),
                ("flags", offset_of!(IpcacheValue, flags)),
                ("pad", offset_of!(IpcacheValue, pad)),
            ],
        },
        RustLayout {
            c_name: "metrics_value",
            size: size_of::<MetricsValue>(),
            members: vec![
                ("packets", offset_of!(MetricsValue, packets)),
                ("bytes", offset_of!(MetricsValue, bytes)),
            ],
        },
        RustLayout {
            c_name: "trace_event",
            size: size_of::<TraceEvent>(),
            members: vec![
                ("type", offset_of!(TraceEvent, kind)),
                ("reason", offset_of!(TraceEvent, reason)),
                ("dir", offset_of!(TraceEvent, dir)),
                ("proto", offset_of!(TraceEvent, proto)),
                ("ifindex", offset_of!(TraceEvent, ifindex)),
                ("src_ip", offset_of!(TraceEvent, src_ip)),
                ("dst_ip", offset_of!(TraceEvent, dst_ip)),
                ("sport", offset_of!(TraceEvent, sport)),
                ("dport", offset_of!(TraceEvent, dport)),
                ("src_ep", offset_of!(TraceEvent, src_ep)),
                ("dst_ep", offset_of!(TraceEvent, dst_ep)),
                ("len", offset_of!(TraceEvent, len)),
                ("dst_ifindex", offset_of!(TraceEvent, dst_ifindex)),
                ("eth_proto", offset_of!(TraceEvent, eth_proto)),
                ("nat_port", offset_of!(TraceEvent, nat_port)),
                ("src_identity", offset_of!(TraceEvent, src_identity)),
                ("nat_addr", offset_of!(TraceEvent, nat_addr)),
                ("ktime_ns", offset_of!(TraceEvent, ktime_ns)),
            ],
        },
        RustLayout {
            c_name: "lb4_key",
            size: size_of::<Lb4Key>(),
            members: vec![
                ("address", offset_of!(Lb4Key, address)),
                ("dport", offset_of!(Lb4Key, dport)),
                ("backend_slot", offset_of!(Lb4Key, backend_slot)),
                ("proto", offset_of!(Lb4Key, proto)),
                ("scope", offset_of!(Lb4Key, scope)),
                ("pad", offset_of!(Lb4Key, pad)),
            ],
        },
        RustLayout {
            c_name: "lb4_service",
            size: size_of::<Lb4Service>(),
            members: vec![
                ("backend_id", offset_of!(Lb4Service, backend_id)),
                ("rev_nat_index", offset_of!(Lb4Service, rev_nat_index)),
                ("count", offset_of!(Lb4Service, count)),
                ("flags", offset_of!(Lb4Service, flags)),
                ("affinity_timeout", offset_of!(Lb4Service, affinity_timeout)),
            ],
        },
        RustLayout {
            c_name: "lb4_backend",
            size: size_of::<Lb4Backend>(),
            members: vec![
                ("address", offset_of!(Lb4Backend, address)),
                ("port", offset_of!(Lb4Backend, port)),
                ("proto", offset_of!(Lb4Backend, proto)),
                ("state", offset_of!(Lb4Backend, state)),
            ],
        },
        RustLayout {
            c_name: "lb4_reverse_nat",
            size: size_of::<Lb4ReverseNat>(),
            members: vec![
                ("address", offset_of!(Lb4ReverseNat, address)),
                ("port", offset_of!(Lb4ReverseNat, port)),
                ("pad", offset_of!(Lb4ReverseNat, pad)),
            ],
        },
        RustLayout {
            c_name: "lb4_affinity_key",
            size: size_of::<Lb4AffinityKey>(),
            members: vec![
                ("client_ip", offset_of!(Lb4AffinityKey, client_ip)),
                ("rev_nat_index", offset_of!(Lb4AffinityKey, rev_nat_index)),
            ],
        },
        RustLayout {
            c_name: "lb4_affinity_value",
            size: size_of::<Lb4AffinityValue>(),
            members: vec![
                ("backend_id", offset_of!(Lb4AffinityValue, backend_id)),
                ("last_used", offset_of!(Lb4AffinityValue, last_used)),
            ],
        },
        RustLayout {
            c_name: "ct4_key",
            size: size_of::<Ct4Key>(),
            members: vec![
                ("daddr", offset_of!(Ct4Key, daddr)),
                ("saddr", offset_of!(Ct4Key, saddr)),
                ("dport", offset_of!(Ct4Key, dport)),
                ("sport", offset_of!(Ct4Key, sport)),
                ("proto", offset_of!(Ct4Key, proto)),
                ("flags", offset_of!(Ct4Key, flags)),
                ("pad", offset_of!(Ct4Key, pad)),
            ],
        },
        RustLayout {
            c_name: "ct4_entry",
            size: size_of::<Ct4Entry>(),
            members: vec![
                ("tx_packets", offset_of!(Ct4Entry, tx_packets)),
                ("tx_bytes", offset_of!(Ct4Entry, tx_bytes)),
                ("rx_packets", offset_of!(Ct4Entry, rx_packets)),
                ("rx_bytes", offset_of!(Ct4Entry, rx_bytes)),
                ("lifetime", offset_of!(Ct4Entry, lifetime)),
                ("created", offset_of!(Ct4Entry, created)),
                ("backend_id", offset_of!(Ct4Entry, backend_id)),
                ("rev_nat_index", offset_of!(Ct4Entry, rev_nat_index)),
                ("flags", offset_of!(Ct4Entry, flags)),
                ("tx_flags_seen", offset_of!(Ct4Entry, tx_flags_seen)),
                ("rx_flags_seen", offset_of!(Ct4Entry, rx_flags_seen)),
                ("frontend_addr", offset_of!(Ct4Entry, frontend_addr)),
            ],
        },
        RustLayout {
            c_name: "nat4_entry",
            size: size_of::<Nat4Entry>(),
            members: vec![
                ("to_addr", offset_of!(Nat4Entry, to_addr)),
                ("to_port", offset_of!(Nat4Entry, to_port)),
                ("flags", offset_of!(Nat4Entry, flags)),
                ("lifetime", offset_of!(Nat4Entry, lifetime)),
                ("created", offset_of!(Nat4Entry, created)),
            ],
        },
    ]
}

#[test]
fn rust_types_match_the_btf_of_the_c_headers() {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("layout.o");
    std::fs::write(&obj, ciliate_datapath::LAYOUT_OBJECT).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&obj)
        .arg("-j")
        .output()
        .expect("running bpftool (install Debian's bpftool; scripts/install-deps.sh does)");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let btf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let types = btf["types"].as_array().unwrap();

    for rust in rust_layouts() {
        let c = types
            .iter()
            .find(|t| t["kind"] == "STRUCT" && t["name"] == rust.c_name)
            .unwrap_or_else(|| panic!("struct {} missing from the BTF", rust.c_name));
        assert_eq!(
            c["size"].as_u64().unwrap() as usize,
            rust.size,
            "size of struct {}",
            rust.c_name
        );
        let members = c["members"].as_array().unwrap();
        let c_members: Vec<(String, usize)> = members
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["bits_offset"].as_u64().unwrap() as usize / 8,
                )
            })
            .collect();
        let r_members: Vec<(String, usize)> = rust
            .members
            .iter()
            .map(|(n, o)| ((*n).to_string(), *o))
            .collect();
        assert_eq!(
            c_members, r_members,
            "members of struct {} (C, then Rust)",
            rust.c_name
        );
    }
}
