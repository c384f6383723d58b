//! The lab's Service handling without a lab: manifest checks, clusterIP and
//! nodePort assignment, EndpointSlices from pods, and what the agents are
//! expected to program from them.

use std::net::Ipv4Addr;

use ciliate_lab::lab::{pod_object, set_condition};
use ciliate_lab::manifest::{self, Object};
use ciliate_lab::services::{self, assign, endpoint_slices, expected_frontends};
use ciliate_lab::{PodCondition, PodInfo};
use k8s_openapi::api::core::v1::Service;

fn service(yaml: &str) -> Service {
    let m = manifest::parse(yaml).unwrap();
    match m.objects.into_iter().next().unwrap() {
        Object::Service(s) => *s,
        other => panic!("not a service: {other:?}"),
    }
}

fn parse_err(yaml: &str) -> String {
    manifest::parse(yaml).unwrap_err().to_string()
}

const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
";

#[test]
fn services_are_checked_like_the_api_server_does() {
    let svc = service(WEB);
    assert_eq!(services::key_of(&svc.metadata), "shop/web");
    // The namespace defaults to `default`.
    let plain = service(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n",
    );
    assert_eq!(services::key_of(&plain.metadata), "default/a");

    let bad = |spec: &str| {
        parse_err(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {spec}\n"
        ))
    };
    let e = bad("{ports: [{port: 80, nodePort: 30001}]}");
    assert!(
        e.contains("spec.ports[0].nodePort") && e.contains("type ClusterIP"),
        "{e}"
    );
    let e = bad("{type: NodePort, ports: [{port: 80, nodePort: 80}]}");
    assert!(e.contains("30000 to 32767"), "{e}");
    let e = bad("{clusterIP: 10.0.0.1, ports: [{port: 80}]}");
    assert!(
        e.contains("spec.clusterIP") && e.contains("10.96.0.0/16"),
        "{e}"
    );
    let e = bad("{ports: [{port: 80}, {port: 81}]}");
    assert!(
        e.contains("spec.ports[0].name") && e.contains("multi-port"),
        "{e}"
    );
    let e = bad("{ports: [{port: 80, protocol: SCTP}]}");
    assert!(e.contains("SCTP") && e.contains("TCP or UDP"), "{e}");
    let e = bad("{ports: []}");
    assert!(
        e.contains("spec.ports") && e.contains("at least one"),
        "{e}"
    );
    let e = bad("{type: ExternalName, ports: [{port: 80}]}");
    assert!(e.contains("spec.type") && e.contains("ExternalName"), "{e}");
    let e = bad("{ports: [{port: 70000}]}");
    assert!(
        e.contains("spec.ports[0].port") && e.contains("70000"),
        "{e}"
    );
    let e = parse_err("apiVersion: v2\nkind: Service\nmetadata: {name: x}\n");
    assert!(e.contains("apiVersion") && e.contains("v1"), "{e}");
}

#[test]
fn cluster_ips_and_node_ports_are_assigned_stable_and_never_shared() {
    let svc = service(WEB);
    let web = assign(&svc, None, &[]).unwrap();
    let ip = services::cluster_ip(&web).unwrap();
    assert!(services::service_cidr().contains(&ip) && ip != Ipv4Addr::new(10, 96, 0, 1));
    let ports = web.spec.as_ref().unwrap().ports.clone().unwrap();
    for p in &ports {
        let np = p.node_port.unwrap();
        assert!(
            (services::NODE_PORT_MIN..=services::NODE_PORT_MAX).contains(&np),
            "{np}"
        );
    }
    assert_ne!(ports[0].node_port, ports[1].node_port);
    // Re-applied (as written, without addresses): the same addresses.
    assert_eq!(assign(&svc, Some(&web), &[]).unwrap(), web);
    // A port added later keeps the old ones' nodePorts.
    let grown = service(&format!("{WEB}  - {{name: metrics, port: 9090}}\n"));
    let grown_web = assign(&grown, Some(&web), &[]).unwrap();
    let gp = grown_web.spec.as_ref().unwrap().ports.clone().unwrap();
    assert_eq!(gp[0].node_port, ports[0].node_port);
    assert_eq!(gp[1].node_port, ports[1].node_port);
    assert!(gp[2].node_port.is_some() && gp[2].node_port != gp[0].node_port);
    assert_eq!(services::cluster_ip(&grown_web), Some(ip));

    // Another service gets other addresses, and may not take these.
    let other = service(&WEB.replace("name: web,", "name: api,"));
    let api = assign(&other, None, std::slice::from_ref(&web)).unwrap();
    assert_ne!(services::cluster_ip(&api), Some(ip));
    let taken_port = ports[0].node_port.unwrap();
    let clash = service(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec: {{type: NodePort, ports: [{{port: 80, nodePort: {taken_port}}}]}}\n"
    ));
    let e = assign(&clash, None, std::slice::from_ref(&web))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nodePort")
            && e.contains(&taken_port.to_string())
            && e.contains("shop/web has it"),
        "{e}"
    );
    let clash = service(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    ));
    let e = assign(&clash, None, std::slice::from_ref(&web))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.clusterIP") && e.contains("shop/web has it"),
        "{e}"
    );
    // A ClusterIP service gets no nodePorts; a given clusterIP is kept.
    let given = service("apiVersion: v1\nkind: Service\nmetadata: {name: d}\nspec: {clusterIP: 10.96.7.7, ports: [{port: 80}]}\n");
    let fixed = assign(&given, None, &[]).unwrap();
    assert_eq!(
        services::cluster_ip(&fixed),
        Some(Ipv4Addr::new(10, 96, 7, 7))
    );
    assert!(fixed.spec.unwrap().ports.unwrap()[0].node_port.is_none());
}

/// An endpoint as seen: address, node, (ready, serving, terminating).
type Seen = (String, Option<String>, (bool, bool, bool));

fn pod(
    name: &str,
    node: &str,
    ip: [u8; 4],
    labels: &str,
    condition: PodCondition,
) -> ciliate_store::Pod {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {labels}}}\n\
         spec:\n  containers:\n  - name: c\n    command: [sleep, infinity]\n    ports: [{{name: web, containerPort: 8081}}]\n"
    );
    let m = manifest::parse(&yaml).unwrap();
    let manifest = m.pods().next().unwrap();
    let info = PodInfo {
        namespace: "shop".into(),
        name: name.into(),
        node: node.into(),
        netns: "x".into(),
        netns_path: "/x".into(),
        container_id: "id".into(),
        ip: Ipv4Addr::from(ip),
        host_network: false,
        cni_result: None,
        spec_hash: manifest.spec_hash.clone(),
        dir: "/x".into(),
        containers: vec![],
        condition,
    };
    pod_object(manifest, &info, Ipv4Addr::new(192, 168, 10, 100))
}

#[test]
fn endpoint_slices_follow_the_matching_pods_and_their_conditions() {
    let svc = assign(&service(WEB), None, &[]).unwrap();
    let pods = vec![
        pod(
            "b",
            "node1",
            [172, 20, 1, 5],
            "{app: web}",
            PodCondition::Ready,
        ),
        pod(
            "a",
            "node0",
            [172, 20, 0, 5],
            "{app: web, x: y}",
            PodCondition::Terminating,
        ),
        pod(
            "c",
            "node0",
            [172, 20, 0, 6],
            "{app: web}",
            PodCondition::NotReady,
        ),
        pod(
            "other",
            "node0",
            [172, 20, 0, 7],
            "{app: db}",
            PodCondition::Ready,
        ),
    ];
    let slices = endpoint_slices(&svc, &pods);
    assert_eq!(slices.len(), 1, "{slices:#?}");
    let s = &slices[0];
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels[services::LABEL_SERVICE_NAME], "web");
    assert_eq!(s.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(s.address_type, "IPv4");
    let seen: Vec<Seen> = s
        .endpoints
        .iter()
        .map(|e| {
            let c = e.conditions.clone().unwrap();
            (
                e.addresses[0].clone(),
                e.node_name.clone(),
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "172.20.0.5".into(),
                Some("node0".into()),
                (false, true, true)
            ),
            (
                "172.20.1.5".into(),
                Some("node1".into()),
                (true, true, false)
            ),
            (
                "172.20.0.6".into(),
                Some("node0".into()),
                (false, false, false)
            ),
        ]
    );
    let ports: Vec<(String, i32, String)> = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap(),
                p.port.unwrap(),
                p.protocol.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("http".into(), 8080, "TCP".into()),
            ("dns".into(), 53, "UDP".into())
        ]
    );

    // What the agents must program: both frontends of each port; the ready
    // pod active, the terminating one terminating, the not-ready one absent.
    let want = expected_frontends(&svc, &slices);
    let http_np = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .node_port
        .unwrap();
    let ip = services::cluster_ip(&svc).unwrap();
    let fronts: Vec<&str> = want.iter().map(|w| w.frontend.as_str()).collect();
    let np_front = format!("0.0.0.0:{http_np}/TCP");
    let cluster_front = format!("{ip}:80/TCP");
    assert!(fronts.contains(&cluster_front.as_str()), "{fronts:?}");
    assert!(fronts.contains(&np_front.as_str()), "{fronts:?}");
    assert_eq!(fronts.len(), 4, "{fronts:?}");
    let http = want.iter().find(|w| w.frontend == cluster_front).unwrap();
    assert_eq!(
        http.active.iter().collect::<Vec<_>>(),
        ["172.20.1.5:8080/TCP"]
    );
    assert_eq!(
        http.terminating.iter().collect::<Vec<_>>(),
        ["172.20.0.5:8080/TCP"]
    );
    let entry = |backends: &[(&str, &str)]| ciliate_api::ServiceEntry {
        id: 1,
        frontend: cluster_front.clone(),
        kind: "ClusterIP".into(),
        service: "shop/web".into(),
        traffic_policy: "Cluster".into(),
        session_affinity: false,
        backends: backends
            .iter()
            .map(|(a, s)| ciliate_api::BackendEntry {
                id: 1,
                address: (*a).into(),
                state: (*s).into(),
                node_name: None,
            })
            .collect(),
    };
    let only_http = [http.clone()];
    let good = entry(&[
        ("172.20.1.5:8080/TCP", "active"),
        ("172.20.0.5:8080/TCP", "terminating"),
    ]);
    assert!(services::service_differences(&only_http, &[good]).is_empty());
    let stale = entry(&[
        ("172.20.1.5:8080/TCP", "active"),
        ("172.20.0.5:8080/TCP", "active"),
    ]);
    let d = services::service_differences(&only_http, &[stale]);
    assert!(d.len() == 1 && d[0].contains("172.20.0.5"), "{d:?}");
    let d = services::service_differences(&only_http, &[]);
    assert!(d[0].contains("no such frontend"), "{d:?}");

    // A named targetPort resolves per pod; no pods: the empty placeholder.
    let named = service(
        "apiVersion: v1\nkind: Service\nmetadata: {name: n, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: web}]}\n",
    );
    let s = endpoint_slices(&named, &pods[..1]);
    assert_eq!(s[0].ports.as_ref().unwrap()[0].port, Some(8081));
    let empty = endpoint_slices(&named, &[]);
    assert!(
        empty.len() == 1 && empty[0].endpoints.is_empty(),
        "{empty:?}"
    );
    // Without a selector the lab writes none (they are written by hand).
    let manual = service(
        "apiVersion: v1\nkind: Service\nmetadata: {name: m}\nspec: {ports: [{port: 80}]}\n",
    );
    assert!(endpoint_slices(&manual, &pods).is_empty());

    // Back to ready: no deletion timestamp, condition Ready True.
    let mut p = pods[1].clone();
    set_condition(&mut p, PodCondition::Ready);
    assert!(p.metadata.deletion_timestamp.is_none());
    let again = endpoint_slices(&svc, &[p]);
    let c = again[0].endpoints[0].conditions.clone().unwrap();
    assert_eq!(
        (c.ready, c.serving, c.terminating),
        (Some(true), Some(true), Some(false))
    );
}

#[test]
fn endpoint_slices_written_by_hand_are_checked() {
    let ok = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: m-1, labels: {kubernetes.io/service-name: m}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.5], conditions: {ready: true}}]
ports: [{name: '', port: 80, protocol: TCP}]
";
    let m = manifest::parse(ok).unwrap();
    assert_eq!(m.endpoint_slices().count(), 1);
    let e = parse_err(&ok.replace("10.0.0.5", "nope"));
    assert!(
        e.contains("endpoints[0].addresses[0]") && e.contains("nope"),
        "{e}"
    );
    let e = parse_err(&ok.replace("addressType: IPv4", "addressType: IPv6"));
    assert!(e.contains("addressType") && e.contains("IPv4"), "{e}");
    let e = parse_err(&ok.replace(", labels: {kubernetes.io/service-name: m}", ""));
    assert!(e.contains("kubernetes.io/service-name"), "{e}");
    let e = parse_err(&ok.replace("discovery.k8s.io/v1", "v1"));
    assert!(e.contains("discovery.k8s.io/v1"), "{e}");
}
