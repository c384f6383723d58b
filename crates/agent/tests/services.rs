//! The built agent with `kubeProxyReplacement: true` against a real etcd:
//! Services and EndpointSlices written to the store become entries of the
//! pinned service maps; updates keep ids, a restart keeps ids, deletes
//! remove everything; the conntrack GC removes expired entries and keeps live
//! ones.

mod cluster;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ciliate_api::ServiceEntry;
use ciliate_datapath::maps::{
    be_addr, monotonic_seconds, Ct4Entry, Ct4Key, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service,
    Nat4Entry, BE_STATE_ACTIVE, BE_STATE_TERMINATING, CT_KEY_SERVICE, IPPROTO_TCP, IPPROTO_UDP,
    LB_SCOPE_EXTERNAL, LB_SCOPE_INTERNAL, NAT_DIR_EGRESS, SVC_F_AFFINITY, SVC_F_CLUSTER_IP,
    SVC_F_NODEPORT, SVC_F_TWO_SCOPES,
};
use ciliate_datapath::require_root;
use ciliate_store::Store;
use cluster::{wait_for, Agent, Net, NODE_IP, WAIT};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn config(net: &Net, extra: &str) -> String {
    format!(
        "ipv4Range: 172.20.5.0/24\netcd: {{endpoints: [\"{}\"]}}\ndevices: [eth0]\nenableHealthChecking: false\n{extra}",
        net.endpoint()
    )
}

fn put_service(net: &Net, yaml: &str) {
    let svc: Service = serde_yaml::from_str(yaml).unwrap();
    net.client
        .call(move |rt, store: &Store| rt.block_on(store.put(&svc)))
        .unwrap();
}

fn put_slice(net: &Net, yaml: &str) {
    let slice: EndpointSlice = serde_yaml::from_str(yaml).unwrap();
    net.client
        .call(move |rt, store: &Store| rt.block_on(store.put(&slice)))
        .unwrap();
}

fn delete_service(net: &Net, name: &str) {
    let name = name.to_string();
    net.client
        .call(move |rt, store: &Store| rt.block_on(store.delete::<Service>(Some("shop"), &name)))
        .unwrap();
}

fn delete_slice(net: &Net, name: &str) {
    let name = name.to_string();
    net.client
        .call(move |rt, store: &Store| {
            rt.block_on(store.delete::<EndpointSlice>(Some("shop"), &name))
        })
        .unwrap();
}

const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
";

/// Endpoints of `web`: `local` on this node, the rest on node1.
fn web_slice(node: &str, endpoints: &[(&str, &str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]\nendpoints:\n",
    );
    for (ip, where_, conditions) in endpoints {
        let node = if *where_ == "local" { node } else { "node1" };
        let _ = writeln!(
            yaml,
            "- {{addresses: [{ip}], nodeName: {node}, conditions: {conditions}}}"
        );
    }
    yaml
}

const READY: &str = "{ready: true}";
const TERMINATING: &str = "{ready: false, serving: true, terminating: true}";

/// Everything in the three service maps.
#[derive(Debug, PartialEq, Eq)]
struct LbMaps {
    services: BTreeMap<Lb4Key, Lb4Service>,
    backends: BTreeMap<u32, Lb4Backend>,
    rev: BTreeMap<u32, Lb4ReverseNat>,
}

fn lb_maps(agent: &Agent) -> LbMaps {
    let maps = agent.maps();
    LbMaps {
        services: maps.lb4_services.iter().map(Result::unwrap).collect(),
        backends: maps.lb4_backends.iter().map(Result::unwrap).collect(),
        rev: maps.lb4_reverse_nat.iter().map(Result::unwrap).collect(),
    }
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// The backend addresses in a scope's slots, from the maps.
fn slots(m: &LbMaps, fe: &str, port: u16, proto: u8, scope: u8) -> Vec<String> {
    let head = m.services[&Lb4Key::new(ip(fe), port, proto, scope, 0)];
    let mut out: Vec<String> = (1..=head.count)
        .map(|slot| {
            let id = m.services[&Lb4Key::new(ip(fe), port, proto, scope, slot)].backend_id;
            let b = m.backends[&id];
            format!("{}:{}", b.ip(), b.port())
        })
        .collect();
    out.sort();
    out
}

fn backend_id(m: &LbMaps, addr: &str, port: u16) -> Option<u32> {
    m.backends
        .iter()
        .find(|(_, b)| b.ip() == ip(addr) && b.port() == port && b.proto == IPPROTO_TCP)
        .map(|(id, _)| *id)
}

fn services(agent: &Agent) -> Vec<ServiceEntry> {
    agent.client().get("/v1/service").expect("GET /v1/service")
}

#[test]
fn services_become_map_entries_with_stable_ids() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let mut agent = Agent::new(
        &net.node,
        &config(
            &net,
            "kubeProxyReplacement: true\nbpfCTTimeoutRegularTCP: 3600\nbpfCTTimeoutRegularAny: 30\n",
        ),
    );
    agent.spawn();
    let status = agent.wait_ready();
    let kpr = &status.kube_proxy_replacement;
    assert!(kpr.enabled);
    assert_eq!(
        (kpr.devices[0].name.as_str(), kpr.devices[0].ip),
        ("eth0", NODE_IP)
    );
    let dp = agent.maps().config.get(&0, 0).unwrap();
    assert_eq!(dp.node_ip, be_addr(NODE_IP));
    assert_eq!((dp.ct_timeout_tcp, dp.ct_timeout_any), (3600, 30));
    assert_eq!((dp.ct_timeout_tcp_syn, dp.ct_timeout_tcp_fin), (60, 10));

    let node = agent.name.clone();
    put_service(&net, WEB);
    put_slice(
        &net,
        &web_slice(
            &node,
            &[
                ("172.20.5.10", "local", READY),
                ("172.20.6.10", "remote", READY),
            ],
        ),
    );
    // A Service with a NodePort outside nodePort.range is refused, by field.
    put_service(
        &net,
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {type: NodePort, clusterIP: 10.96.0.99, ports: [{port: 80, nodePort: 80}]}\n",
    );
    let listed = wait_for(
        "four frontends with two backends each",
        WAIT,
        || format!("{:?}\n{}", services(&agent), agent.log_text()),
        || {
            let list = services(&agent);
            (list.len() == 4 && list.iter().all(|s| s.backends.len() == 2)).then_some(list)
        },
    );
    assert!(
        agent.log_text().contains("spec.ports[0].nodePort"),
        "{}",
        agent.log_text()
    );
    let http = listed
        .iter()
        .find(|s| s.frontend == "10.96.0.10:80/TCP")
        .unwrap();
    assert_eq!(
        (http.kind.as_str(), http.service.as_str()),
        ("ClusterIP", "shop/web")
    );
    assert!(http.session_affinity);
    let np = listed
        .iter()
        .find(|s| s.frontend == "0.0.0.0:30080/TCP")
        .unwrap();
    assert_eq!(
        (np.kind.as_str(), np.traffic_policy.as_str()),
        ("NodePort", "Local")
    );

    let m = lb_maps(&agent);
    let cip = m.services[&Lb4Key::new(ip("10.96.0.10"), 80, IPPROTO_TCP, LB_SCOPE_EXTERNAL, 0)];
    assert_eq!(cip.flags, SVC_F_CLUSTER_IP | SVC_F_AFFINITY);
    assert_eq!((cip.count, cip.affinity_timeout), (2, 10_800));
    assert_eq!(cip.rev_nat_index, http.id);
    assert_eq!(m.rev[&http.id], Lb4ReverseNat::new(ip("10.96.0.10"), 80));
    assert_eq!(
        slots(&m, "10.96.0.10", 80, IPPROTO_TCP, LB_SCOPE_EXTERNAL),
        ["172.20.5.10:8080", "172.20.6.10:8080"]
    );
    // NodePort: the wildcard, local backends outside, all inside.
    let wild = m.services[&Lb4Key::new(Ipv4Addr::UNSPECIFIED, 30080, IPPROTO_TCP, 0, 0)];
    assert_eq!(
        wild.flags,
        SVC_F_NODEPORT | SVC_F_AFFINITY | SVC_F_TWO_SCOPES
    );
    assert_eq!(
        m.rev[&wild.rev_nat_index],
        Lb4ReverseNat::new(Ipv4Addr::UNSPECIFIED, 30080)
    );
    assert_eq!(
        slots(&m, "0.0.0.0", 30080, IPPROTO_TCP, LB_SCOPE_EXTERNAL),
        ["172.20.5.10:8080"]
    );
    assert_eq!(
        slots(&m, "0.0.0.0", 30080, IPPROTO_TCP, LB_SCOPE_INTERNAL).len(),
        2
    );
    assert_eq!(
        slots(&m, "10.96.0.10", 53, IPPROTO_UDP, LB_SCOPE_EXTERNAL),
        ["172.20.5.10:5353", "172.20.6.10:5353"]
    );
    assert_eq!(m.backends.len(), 4, "{:?}", m.backends);
    assert!(
        !m.services.keys().any(|k| k.ip() == ip("10.96.0.99")),
        "the refused service has no entries"
    );

    // Update: 172.20.6.10 terminates, 172.20.6.11 arrives.
    let id_local = backend_id(&m, "172.20.5.10", 8080).unwrap();
    let id_term = backend_id(&m, "172.20.6.10", 8080).unwrap();
    put_slice(
        &net,
        &web_slice(
            &node,
            &[
                ("172.20.5.10", "local", READY),
                ("172.20.6.10", "remote", TERMINATING),
                ("172.20.6.11", "remote", READY),
            ],
        ),
    );
    let m = wait_for(
        "the update in the maps",
        WAIT,
        || format!("{:?}\n{}", lb_maps(&agent), agent.log_text()),
        || {
            // The whole update, not just the first frontend written: no
            // slot of any frontend names the terminating backend any more.
            let m = lb_maps(&agent);
            let done = slots(&m, "10.96.0.10", 80, IPPROTO_TCP, 0)
                == ["172.20.5.10:8080", "172.20.6.11:8080"]
                && !m
                    .services
                    .iter()
                    .any(|(k, v)| k.backend_slot > 0 && v.backend_id == id_term);
            done.then_some(m)
        },
    );
    assert_eq!(backend_id(&m, "172.20.5.10", 8080), Some(id_local));
    assert_eq!(backend_id(&m, "172.20.6.10", 8080), Some(id_term));
    assert_eq!(m.backends[&id_term].state, BE_STATE_TERMINATING);
    assert_eq!(m.backends[&id_local].state, BE_STATE_ACTIVE);
    let after = m.services[&Lb4Key::new(ip("10.96.0.10"), 80, IPPROTO_TCP, 0, 0)];
    assert_eq!(after.rev_nat_index, http.id, "the frontend keeps its id");
    let list = services(&agent);
    let http_after = list
        .iter()
        .find(|s| s.frontend == "10.96.0.10:80/TCP")
        .unwrap();
    assert!(http_after
        .backends
        .iter()
        .any(|b| b.address == "172.20.6.10:8080/TCP" && b.state == "terminating"));

    // A restart keeps every id: the maps are exactly as they were.
    agent.stop(true);
    agent.spawn();
    agent.wait_ready();
    wait_for(
        "the restarted agent to sync",
        WAIT,
        || agent.log_text(),
        || {
            (agent
                .log_text()
                .matches("services synced with the store")
                .count()
                >= 2)
                .then_some(())
        },
    );
    assert_eq!(lb_maps(&agent), m);
    assert_eq!(services(&agent), list);
    let log = agent.log_text();
    let second_run = &log[log.rfind("starting").unwrap()..];
    assert!(
        !second_run.contains("service maps updated"),
        "the restarted agent rewrote entries:\n{second_run}"
    );

    // The terminating endpoint goes: its backend goes, the others stay.
    put_slice(
        &net,
        &web_slice(
            &node,
            &[
                ("172.20.5.10", "local", READY),
                ("172.20.6.11", "remote", READY),
            ],
        ),
    );
    let m = wait_for(
        "the gone backend to leave the maps",
        WAIT,
        || format!("{:?}", lb_maps(&agent)),
        || {
            let m = lb_maps(&agent);
            (backend_id(&m, "172.20.6.10", 8080).is_none()).then_some(m)
        },
    );
    assert_eq!(backend_id(&m, "172.20.5.10", 8080), Some(id_local));

    // Deleting the service and its slice removes everything.
    delete_service(&net, "web");
    delete_slice(&net, "web-1");
    wait_for(
        "empty service maps",
        WAIT,
        || format!("{:?}\n{}", lb_maps(&agent), agent.log_text()),
        || {
            let m = lb_maps(&agent);
            (m.services.is_empty() && m.backends.is_empty() && m.rev.is_empty()).then_some(())
        },
    );
    assert!(services(&agent).is_empty());
}

#[test]
fn a_service_deleted_while_the_agent_is_down_goes_after_the_list() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let mut agent = Agent::new(&net.node, &config(&net, "kubeProxyReplacement: true\n"));
    agent.spawn();
    agent.wait_ready();
    put_service(
        &net,
        "apiVersion: v1\nkind: Service\nmetadata: {name: gone, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n",
    );
    put_service(
        &net,
        "apiVersion: v1\nkind: Service\nmetadata: {name: kept, namespace: shop}\nspec: {clusterIP: 10.96.0.21, ports: [{port: 80}]}\n",
    );
    wait_for(
        "two frontends",
        WAIT,
        || agent.log_text(),
        || (services(&agent).len() == 2).then_some(()),
    );
    let kept_id = services(&agent)
        .iter()
        .find(|s| s.service == "shop/kept")
        .unwrap()
        .id;
    agent.stop(true);
    delete_service(&net, "gone");
    agent.spawn();
    agent.wait_ready();
    wait_for(
        "the stale frontend to go",
        WAIT,
        || format!("{:?}\n{}", lb_maps(&agent), agent.log_text()),
        || {
            let m = lb_maps(&agent);
            (!m.services.keys().any(|k| k.ip() == ip("10.96.0.20"))).then_some(())
        },
    );
    let m = lb_maps(&agent);
    assert_eq!(
        m.services[&Lb4Key::new(ip("10.96.0.21"), 80, IPPROTO_TCP, 0, 0)].rev_nat_index,
        kept_id
    );
    assert_eq!(m.rev.len(), 1);
}

#[test]
fn conntrack_gc_removes_expired_entries_and_keeps_live_ones() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let mut agent = Agent::new(&net.node, &config(&net, "conntrackGCInterval: 1\n"));
    agent.spawn();
    let status = agent.wait_ready();
    assert!(!status.kube_proxy_replacement.enabled);

    let mut maps = agent.maps();
    let now = monotonic_seconds();
    let client = ip("172.20.5.10");
    let key = |sport: u16, proto: u8| Ct4Key::new(client, sport, ip("10.96.0.10"), 80, proto, 0);
    let ct = |lifetime: u32| Ct4Entry {
        lifetime,
        created: now,
        ..Ct4Entry::default()
    };
    maps.ct4_tcp
        .insert(key(1000, IPPROTO_TCP), ct(now - 5), 0)
        .unwrap();
    maps.ct4_tcp
        .insert(key(1001, IPPROTO_TCP), ct(now + 3600), 0)
        .unwrap();
    let service_key = Ct4Key {
        flags: CT_KEY_SERVICE,
        ..key(1001, IPPROTO_TCP)
    };
    maps.ct4_tcp.insert(service_key, ct(now + 3600), 0).unwrap();
    maps.ct4_any
        .insert(key(2000, IPPROTO_UDP), ct(now - 1), 0)
        .unwrap();
    maps.ct4_any
        .insert(key(2001, IPPROTO_UDP), ct(now + 3600), 0)
        .unwrap();
    let nat = |lifetime: u32| Nat4Entry {
        to_addr: be_addr(NODE_IP),
        to_port: 40000u16.to_be(),
        flags: 0,
        lifetime,
        created: now,
    };
    let nat_key = |sport: u16| {
        Ct4Key::new(
            client,
            sport,
            ip("1.1.1.1"),
            80,
            IPPROTO_TCP,
            NAT_DIR_EGRESS,
        )
    };
    maps.snat4.insert(nat_key(3000), nat(now - 5), 0).unwrap();
    maps.snat4
        .insert(nat_key(3001), nat(now + 3600), 0)
        .unwrap();

    wait_for(
        "the expired entries to be collected",
        WAIT,
        || agent.log_text(),
        || {
            (maps.ct4_tcp.get(&key(1000, IPPROTO_TCP), 0).is_err()
                && maps.ct4_any.get(&key(2000, IPPROTO_UDP), 0).is_err()
                && maps.snat4.get(&nat_key(3000), 0).is_err())
            .then_some(())
        },
    );
    assert!(maps.ct4_tcp.get(&key(1001, IPPROTO_TCP), 0).is_ok());
    assert!(maps.ct4_tcp.get(&service_key, 0).is_ok());
    assert!(maps.ct4_any.get(&key(2001, IPPROTO_UDP), 0).is_ok());
    assert!(maps.snat4.get(&nat_key(3001), 0).is_ok());
}
