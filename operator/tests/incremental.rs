//! Incremental compile and render against their full counterparts: after any
//! random sequence of pod, namespace and policy events, the incrementally kept
//! IR equals a fresh `compile_node`, and the committed table advanced by the
//! delta batches equals a fresh `render_policy` (in memory, and once in the
//! kernel inside a throwaway network namespace).

use kube_nft::cluster::{Cluster, Object, ObjectKey};
use kube_nft::policy::incremental::{Event, Index};
use kube_nft::policy::{compile, compile_node};
use kube_nft::render::delta::DeltaRenderer;
use kube_nft::render::render_policy;
use kube_nft_crds::ir::{CompiledPolicy, NodePolicy};
use proptest::prelude::*;
use serde_json::{json, Value};

/// xorshift64*: the cases come from proptest's seed, the structure from here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
const APPS: [&str; 3] = ["web", "api", "db"];
const NODES: [&str; 2] = ["node-1", "node-2"];

fn labels(r: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    if r.chance(85) {
        m.insert("app".into(), json!(r.pick(&APPS)));
    }
    if r.chance(50) {
        m.insert("tier".into(), json!(r.pick(&["fe", "be"])));
    }
    Value::Object(m)
}

fn pod(r: &mut Rng, ns_i: usize, i: usize) -> Object {
    let ns = NAMESPACES[ns_i];
    let mut ports = Vec::new();
    for name in ["http", "db"] {
        if r.chance(60) {
            let proto = if r.chance(80) { "TCP" } else { "UDP" };
            let port = [80, 8080, 5432][r.below(3)];
            ports.push(json!({"name": name, "protocol": proto, "containerPort": port}));
        }
    }
    let mut ips = vec![json!({"ip": format!("10.{ns_i}.0.{}", i + 1)})];
    if i.is_multiple_of(3) {
        ips.push(json!({"ip": format!("fd00::{ns_i}:{}", i + 1)}));
    }
    let phase = if r.chance(8) { "Succeeded" } else { "Running" };
    let spread = if r.chance(80) { 1 } else { 2 };
    let node_name = NODES[r.below(spread)];
    let v = json!({
        "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": labels(r)},
        "spec": {
            "nodeName": node_name,
            "hostNetwork": r.chance(4),
            "containers": [{"name": "c", "ports": ports}]
        },
        "status": {"phase": phase, "podIPs": ips}
    });
    Object::Pod(serde_json::from_value(v).unwrap())
}

fn namespace(r: &mut Rng, ns: &str) -> Object {
    let mut m = serde_json::Map::new();
    if r.chance(70) {
        m.insert("team".into(), json!(r.pick(&["a", "b"])));
    }
    let v = json!({"metadata": {"name": ns, "labels": Value::Object(m)}});
    Object::Namespace(serde_json::from_value(v).unwrap())
}

fn selector(r: &mut Rng, key: &str, values: &[&str]) -> Value {
    match r.below(4) {
        0 => json!({}),
        1 | 2 => json!({"matchLabels": {key: r.pick(values)}}),
        _ => {
            json!({"matchExpressions": [{"key": key, "operator": "NotIn", "values": [r.pick(values)]}]})
        }
    }
}

fn peer(r: &mut Rng) -> Value {
    match r.below(5) {
        0 => json!({"podSelector": selector(r, "app", &APPS)}),
        1 => json!({"namespaceSelector": selector(r, "team", &["a", "b"])}),
        2 => json!({
            "namespaceSelector": selector(r, "team", &["a", "b"]),
            "podSelector": selector(r, "tier", &["fe", "be"])
        }),
        3 => json!({"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.0.0/30"]}}),
        _ => json!({"podSelector": selector(r, "tier", &["fe", "be"])}),
    }
}

fn ports(r: &mut Rng) -> Value {
    let mut out = Vec::new();
    for _ in 0..r.below(3) {
        out.push(match r.below(4) {
            0 => json!({"port": 80}),
            1 => json!({"protocol": "UDP", "port": 53}),
            2 => json!({"port": "http"}),
            _ => json!({"port": "db", "protocol": r.pick(&["TCP", "UDP"])}),
        });
    }
    Value::Array(out)
}

fn rules(r: &mut Rng, peers_key: &str) -> Value {
    let mut out = Vec::new();
    for _ in 0..r.below(3) {
        let mut rule = serde_json::Map::new();
        if r.chance(80) {
            let peers: Vec<Value> = (0..1 + r.below(2)).map(|_| peer(r)).collect();
            rule.insert(peers_key.into(), Value::Array(peers));
        }
        if r.chance(70) {
            rule.insert("ports".into(), ports(r));
        }
        out.push(Value::Object(rule));
    }
    Value::Array(out)
}

fn policy(r: &mut Rng, ns_i: usize, i: usize) -> Object {
    let types = match r.below(4) {
        0 => json!(["Ingress"]),
        1 => json!(["Egress"]),
        2 => json!(["Ingress", "Egress"]),
        _ => Value::Null,
    };
    let mut spec = json!({
        "podSelector": selector(r, "app", &APPS),
        "ingress": rules(r, "from"),
        "egress": rules(r, "to"),
    });
    if !types.is_null() {
        spec["policyTypes"] = types;
    }
    let v = json!({
        "metadata": {"name": format!("np{i}"), "namespace": NAMESPACES[ns_i]},
        "spec": spec
    });
    Object::NetworkPolicy(serde_json::from_value(v).unwrap())
}

fn node(name: &str, ip: &str) -> Object {
    let v = json!({
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    });
    Object::Node(serde_json::from_value(v).unwrap())
}

fn cluster(r: &mut Rng) -> Cluster {
    let mut c = Cluster::new();
    c.insert(node("node-1", "172.18.0.2")).unwrap();
    c.insert(node("node-2", "172.18.0.3")).unwrap();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        c.insert(namespace(r, ns)).unwrap();
        for p in 0..5 {
            c.insert(pod(r, i, p)).unwrap();
        }
        for p in 0..2 {
            c.insert(policy(r, i, p)).unwrap();
        }
    }
    c
}

fn event(r: &mut Rng) -> Event {
    let ns_i = r.below(NAMESPACES.len());
    let ns = NAMESPACES[ns_i];
    match r.below(10) {
        0..=3 => {
            let i = r.below(7);
            match pod(r, ns_i, i) {
                Object::Pod(p) => Event::PodUpsert(p),
                _ => unreachable!(),
            }
        }
        4 => Event::PodRemove(ObjectKey::new(ns, format!("p{}", r.below(7)))),
        5 => match namespace(r, ns) {
            Object::Namespace(n) => Event::NamespaceUpsert(n),
            _ => unreachable!(),
        },
        6 => Event::NamespaceRemove(ns.to_string()),
        7 | 8 => {
            let i = r.below(3);
            match policy(r, ns_i, i) {
                Object::NetworkPolicy(p) => Event::PolicyUpsert(p),
                _ => unreachable!(),
            }
        }
        _ => Event::PolicyRemove(ObjectKey::new(ns, format!("np{}", r.below(3)))),
    }
}

fn share(ir: &CompiledPolicy, node: &str) -> NodePolicy {
    ir.nodes.get(node).cloned().unwrap_or_default()
}

fn check_sequence(seed: u64, steps: usize) {
    let mut r = Rng(seed | 1);
    let c = cluster(&mut r);
    let mut one = Index::new(c.clone(), Some("node-1"));
    let mut all = Index::new(c, None);
    let mut committed = Some(render_policy(
        &share(one.ir(), "node-1"),
        &one.ir().address_sets,
    ));
    let mut renderer = DeltaRenderer::new(committed.as_ref().unwrap());
    for step in 0..steps {
        let ev = event(&mut r);
        let delta = one.apply(ev.clone()).unwrap();
        all.apply(ev.clone()).unwrap();
        let want = compile_node(one.cluster(), "node-1");
        assert_eq!(one.ir(), &want, "seed {seed} step {step} after {ev:?}");
        assert_eq!(
            all.ir(),
            &compile(all.cluster()),
            "seed {seed} step {step} (all nodes)"
        );
        let batch = renderer
            .render(
                committed.as_ref().unwrap(),
                "node-1",
                &delta,
                &one.ir().address_sets,
            )
            .unwrap();
        nft::diff::apply(&mut committed, &batch)
            .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}\n{batch:#?}"));
        let full = render_policy(&share(&want, "node-1"), &want.address_sets);
        assert_eq!(
            committed.as_ref(),
            Some(&full),
            "seed {seed} step {step}: committed + delta != full render after {ev:?}\n{batch:#?}"
        );
        // The delta is small: a relabel never rewrites the table.
        assert!(nft::diff::diff(committed.as_ref(), &full).is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full(seed in any::<u64>()) {
        check_sequence(seed, 25);
    }
}

#[test]
fn a_relabel_only_touches_elements_and_class_maps() {
    // Two namespaces; one policy lets app=web in from app=api. Relabelling a
    // pod from api to db moves it out of the peer set, and because no policy
    // selects api or db differently, its own chain stays.
    let mut c = Cluster::new();
    c.insert(node("node-1", "172.18.0.2")).unwrap();
    let mut r = Rng(7);
    for p in 0..4 {
        c.insert(pod(&mut r, 0, p)).unwrap();
    }
    let deny = json!({"metadata": {"name": "deny", "namespace": "ns0"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let allow = json!({"metadata": {"name": "allow", "namespace": "ns0"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}});
    for p in [deny, allow] {
        c.insert(Object::NetworkPolicy(serde_json::from_value(p).unwrap()))
            .unwrap();
    }
    let relabel = |app: &str| {
        let v = json!({
            "metadata": {"name": "p9", "namespace": "ns0", "labels": {"app": app}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.99"}
        });
        Event::PodUpsert(serde_json::from_value(v).unwrap())
    };
    let mut index = Index::new(c, Some("node-1"));
    let mut committed = Some(render_policy(
        &share(index.ir(), "node-1"),
        &index.ir().address_sets,
    ));
    let mut renderer = DeltaRenderer::new(committed.as_ref().unwrap());
    let mut step = |ev: Event| {
        let delta = index.apply(ev).unwrap();
        let b = renderer
            .render(
                committed.as_ref().unwrap(),
                "node-1",
                &delta,
                &index.ir().address_sets,
            )
            .unwrap();
        nft::diff::apply(&mut committed, &b).unwrap();
        let ir = index.ir();
        assert_eq!(
            committed.as_ref(),
            Some(&render_policy(&share(ir, "node-1"), &ir.address_sets))
        );
        b
    };
    let added = step(relabel("api"));
    // New pod: one element into the peer set, one class-map element.
    assert!(
        added
            .ops
            .iter()
            .all(|op| matches!(op, nft::Op::AddElements { .. })),
        "{added:#?}"
    );
    let moved = step(relabel("db"));
    let kinds: Vec<String> = moved
        .ops
        .iter()
        .map(|op| match op {
            nft::Op::DeleteElements { set, .. } => format!("del {set}"),
            nft::Op::AddElements { set, .. } => format!("add {set}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds.len(), 1, "{kinds:?}");
    assert!(kinds[0].starts_with("del as-peer-"), "{kinds:?}");
}

/// A class id that the committed table gives another chain (what a full
/// render does after an id collision) cannot be reproduced incrementally: the
/// delta renderer asks for a full sync instead of dispatching into that chain.
#[test]
fn class_id_owned_by_another_chain_needs_a_full_sync() {
    let mut c = Cluster::new();
    c.insert(node("node-1", "172.18.0.2")).unwrap();
    let deny = json!({"metadata": {"name": "deny", "namespace": "ns0"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    c.insert(Object::NetworkPolicy(serde_json::from_value(deny).unwrap()))
        .unwrap();
    let pod = |name: &str, ip: &str| {
        let v = json!({
            "metadata": {"name": name, "namespace": "ns0"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip}
        });
        Event::PodUpsert(serde_json::from_value(v).unwrap())
    };
    let mut index = Index::new(c, Some("node-1"));
    index.apply(pod("p9", "10.0.0.99")).unwrap();
    let mut committed = render_policy(&share(index.ir(), "node-1"), &index.ir().address_sets);
    // The pod's chain's id now names another chain.
    let chains = committed.sets.get_mut("ingress-chains").unwrap();
    assert_eq!(chains.elements.len(), 1);
    let v = chains.elements.values_mut().next().unwrap();
    v.data = Some(nft::ElemData::Verdict(nft::Verdict::Jump(
        "in-other".into(),
    )));
    let mut renderer = DeltaRenderer::new(&committed);
    // A second pod joins the same (deny) chain.
    let delta = index.apply(pod("p10", "10.0.0.100")).unwrap();
    let err = renderer
        .render(&committed, "node-1", &delta, &index.ir().address_sets)
        .unwrap_err();
    assert!(
        matches!(err, kube_nft::render::delta::DeltaError::ClassCollision(_)),
        "{err}"
    );
}

#[test]
fn unknown_objects_are_rejected_without_change() {
    let mut index = Index::new(Cluster::new(), None);
    let bad: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "x", "namespace": "ns0"},
        "status": {"podIP": "not-an-ip"}
    }))
    .unwrap();
    assert!(index.apply(Event::PodUpsert(bad)).is_err());
    assert_eq!(index.ir(), &compile(&Cluster::new()));
}

/// The same property against the kernel: a delta batch the in-memory model
/// accepts, the kernel accepts, and the table read back equals the full render.
#[test]
fn kernel_follows_deltas() {
    let ns = nft::testing::NetNs::new("incremental").unwrap();
    let mut r = Rng(0x5eed_1234);
    let c = cluster(&mut r);
    let mut index = Index::new(c, Some("node-1"));
    let full = render_policy(&share(index.ir(), "node-1"), &index.ir().address_sets);
    let conn = ns.conn().unwrap();
    let mut dp = nft::dataplane::Dataplane::open(conn, full.family, &full.name).unwrap();
    dp.sync(&full).unwrap();
    let mut renderer = DeltaRenderer::new(dp.committed().unwrap());
    for step in 0..150 {
        let ev = event(&mut r);
        let delta = index.apply(ev.clone()).unwrap();
        let batch = renderer
            .render(
                dp.committed().unwrap(),
                "node-1",
                &delta,
                &index.ir().address_sets,
            )
            .unwrap();
        dp.apply_batch(&batch)
            .unwrap_or_else(|e| panic!("step {step} {ev:?}: {e}\n{batch:#?}"));
    }
    let ir = index.ir();
    let want = render_policy(&share(ir, "node-1"), &ir.address_sets);
    assert_eq!(dp.committed(), Some(&want));
    let family = want.family;
    let back = dp.conn().read_table(family, &want.name).unwrap();
    assert_eq!(back.as_ref(), Some(&want));
}
