//! Service changes are incremental: the diff of the node's table after one
//! endpoint goes away (or comes) touches only elements of that Service's
//! frontends and of the endpoint itself — no chain, rule or other Service's
//! element, so the kernel never re-validates the table for it.

use kube_nft::cluster::load::{load_str, Loaded};
use kube_nft::cluster::{Cluster, ObjectKey};
use kube_nft::render::{render, RenderInput};
use kube_nft::service::{compute, with_synthesized_slices, ServiceConfig};
use kube_nft_crds::ir::NodePolicy;
use nft::{KeyPart, Op, Table, Value};

fn pod(name: &str, app: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: n1, containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]}}\n\
         status: {{phase: Running, podIP: {ip}}}\n"
    )
}

fn cluster(pods: &[(&str, &str, &str)]) -> Cluster {
    let mut yaml = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 172.31.0.10}]}\n".to_string();
    yaml += "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}, {name: dns, port: 53, protocol: UDP, targetPort: 8080}]}\n";
    yaml += "---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: demo}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.11, selector: {app: api}, ports: [{port: 80, targetPort: 8080, nodePort: 30081}]}\n";
    yaml += "---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: demo}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.12, selector: {app: db}, ports: [{port: 80, targetPort: 8080, nodePort: 30082}]}\n";
    for (name, app, ip) in pods {
        yaml += &pod(name, app, ip);
    }
    let mut loaded = Loaded::default();
    load_str(&mut loaded, std::path::Path::new("t.yaml"), &yaml);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    with_synthesized_slices(&loaded.cluster)
}

fn table(c: &Cluster) -> Table {
    let config = ServiceConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let services = compute(c, "n1", &config);
    assert!(services.errors.is_empty(), "{:?}", services.errors);
    render(&RenderInput {
        policy: &NodePolicy::default(),
        address_sets: &Default::default(),
        services: Some((&services, &config)),
    })
}

fn mentions(key: &[KeyPart], ip: &str) -> bool {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    key.iter().any(|k| match k {
        KeyPart::Value(Value::Ipv4(a)) => std::net::IpAddr::V4(*a) == ip,
        _ => false,
    })
}

#[test]
fn one_endpoint_change_touches_only_its_service_and_endpoint() {
    // web has 3 endpoints, api 2 and db 3: both endpoint counts exist
    // before and after web loses one (the common case; a count no Service
    // had before adds one map and one rule).
    let before = cluster(&[
        ("web-1", "web", "10.244.0.11"),
        ("web-2", "web", "10.244.0.12"),
        ("web-3", "web", "10.244.0.13"),
        ("api-1", "api", "10.244.0.21"),
        ("api-2", "api", "10.244.0.22"),
        ("db-1", "db", "10.244.0.31"),
        ("db-2", "db", "10.244.0.32"),
        ("db-3", "db", "10.244.0.33"),
    ]);
    let mut after = before.clone();
    after.remove_pod(&ObjectKey::new("demo", "web-3"));
    let after = with_synthesized_slices(&{
        let mut c = after;
        for k in c.endpoint_slices().keys().cloned().collect::<Vec<_>>() {
            c.remove_endpoint_slice(&k);
        }
        c
    });
    let (old, new) = (table(&before), table(&after));
    let batch = nft::diff::diff(Some(&old), &new);
    assert!(!batch.ops.is_empty());
    for op in &batch.ops {
        let keys: Vec<&Vec<KeyPart>> = match op {
            Op::AddElements { elements, .. } => elements.iter().map(|(k, _)| k).collect(),
            Op::DeleteElements { keys, .. } => keys.iter().collect(),
            other => panic!("not an element change: {other:?}\n{batch:#?}"),
        };
        for key in keys {
            // A frontend of web (its VIP, or its NodePort), or the endpoint
            // that went (hairpin pair).
            let web_vip = mentions(key, "10.96.0.10");
            let web_nodeport = key.contains(&KeyPart::Value(Value::Port(30080)));
            let gone = mentions(key, "10.244.0.13");
            assert!(web_vip || web_nodeport || gone, "{op:?}");
        }
    }
    let deleted_gone = batch.ops.iter().any(|op| match op {
        Op::DeleteElements { keys, .. } => keys.iter().any(|k| mentions(k, "10.244.0.13")),
        _ => false,
    });
    assert!(deleted_gone, "the gone endpoint's elements go: {batch:#?}");
    // And back: the endpoint returns, again elements only.
    let back = nft::diff::diff(Some(&new), &old);
    assert!(back
        .ops
        .iter()
        .all(|op| matches!(op, Op::AddElements { .. } | Op::DeleteElements { .. })));
}
