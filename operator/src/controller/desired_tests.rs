use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::Event as WatchEvent;
use kube_nft_crds::ir::AddressSetElement;
use serde_json::{json, Value};

use super::*;
use crate::cluster::{Cluster, Object};
use crate::controller::index::{Input, State};
use crate::policy::compile;

fn pod(name: &str, node: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app},
                     "resourceVersion": format!("{name}-{app}")},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip}
    })
}

fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": format!("{name}-{ip}")},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    })
}

/// `selected` pods admit ingress only from pods labelled `app=from`.
fn ingress_from(name: &str, selected: &str, from: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
        "spec": {
            "podSelector": {"matchLabels": {"app": selected}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}]}]
        }
    })
}

/// Three nodes (n3 without pods), a database that admits the web tier, a web
/// tier that admits the load balancer.
fn objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "resourceVersion": "1"}}),
        node("n1", "172.18.0.1"),
        node("n2", "172.18.0.2"),
        node("n3", "172.18.0.3"),
        pod("web", "n1", "web", "10.0.1.1"),
        pod("x", "n1", "other", "10.0.1.2"),
        pod("lb", "n1", "lb", "10.0.1.3"),
        pod("db", "n2", "db", "10.0.2.1"),
        ingress_from("db-ingress", "db", "web"),
        ingress_from("web-ingress", "web", "lb"),
    ]
}

fn full_cluster(objects: &[Value]) -> Cluster {
    let mut c = Cluster::new();
    for o in objects {
        let object = match o["kind"].as_str().unwrap() {
            "Namespace" => Object::Namespace(serde_json::from_value(o.clone()).unwrap()),
            "Node" => Object::Node(serde_json::from_value(o.clone()).unwrap()),
            "Pod" => Object::Pod(serde_json::from_value(o.clone()).unwrap()),
            "NetworkPolicy" => Object::NetworkPolicy(serde_json::from_value(o.clone()).unwrap()),
            k => panic!("{k}"),
        };
        c.insert(object).unwrap();
    }
    c
}

/// A live [`State`] fed the objects as the watchers would list them.
fn live(objects: &[Value]) -> State {
    let mut s = State::new();
    let of = |kind: &'static str| objects.iter().filter(move |o| o["kind"] == kind).cloned();
    let inputs: Vec<Input> = [
        Input::Namespace(WatchEvent::Init),
        Input::Node(WatchEvent::Init),
        Input::Pod(WatchEvent::Init),
        Input::NetworkPolicy(WatchEvent::Init),
    ]
    .into_iter()
    .chain(of("Namespace").map(|o| Input::Namespace(WatchEvent::InitApply(de::<Namespace>(o)))))
    .chain(of("Node").map(|o| Input::Node(WatchEvent::InitApply(de::<Node>(o)))))
    .chain(of("Pod").map(|o| Input::Pod(WatchEvent::InitApply(de::<Pod>(o)))))
    .chain(
        of("NetworkPolicy")
            .map(|o| Input::NetworkPolicy(WatchEvent::InitApply(de::<NetworkPolicy>(o)))),
    )
    .chain([
        Input::Namespace(WatchEvent::InitDone),
        Input::Node(WatchEvent::InitDone),
        Input::Pod(WatchEvent::InitDone),
    ])
    .collect();
    for i in inputs {
        assert!(
            s.ingest(i).is_empty(),
            "nothing is dirty before every kind is listed"
        );
    }
    assert!(!s.is_live());
    assert_eq!(
        s.ingest(Input::NetworkPolicy(WatchEvent::InitDone)),
        Dirty::all()
    );
    assert!(s.is_live());
    s
}

fn de<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn inputs<'a>(s: &'a State, max: usize) -> Inputs<'a> {
    Inputs {
        ir: s.ir().unwrap(),
        node_addresses: s.node_addresses(),
        max_elements: max,
    }
}

/// `applied` after every write of `plan` succeeded.
fn record(applied: &mut Applied, plan: &Plan) {
    for (_, shards) in &plan.shard_applies {
        for s in shards {
            applied.put_shard(s.metadata.name.clone().unwrap(), s.spec.clone());
        }
    }
    for s in &plan.share_applies {
        applied.put_share(s.metadata.name.clone().unwrap(), s.spec.clone());
    }
    for d in &plan.shard_deletes {
        for n in &d.names {
            applied.remove_shard(n);
        }
    }
    for n in &plan.share_deletes {
        applied.remove_share(n);
    }
}

fn names<'a>(shards: impl IntoIterator<Item = &'a AddressSetShard>) -> Vec<String> {
    shards
        .into_iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect()
}

#[test]
fn desired_objects_are_what_the_compiler_gives_with_labels() {
    let s = live(&objects());
    let expected = compile(&full_cluster(&objects()));
    let plan = plan(&inputs(&s, 1000), &Dirty::all(), &Applied::default());

    // One share per Node, n3's empty, each equal to the full compile's.
    let shares: BTreeMap<String, &NodePolicyShare> = plan
        .share_applies
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s))
        .collect();
    assert_eq!(shares.keys().collect::<Vec<_>>(), vec!["n1", "n2", "n3"]);
    for (name, share) in &shares {
        let want = NodePolicyShareSpec::new(expected.nodes[name].clone());
        assert_eq!(share.spec, want, "{name}");
        assert_eq!(
            share.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
            MANAGER
        );
    }
    assert!(shares["n3"].spec.policy.pods.is_empty());
    assert_eq!(
        shares["n1"].spec.policy.node_addresses,
        vec!["172.18.0.1".parse::<std::net::IpAddr>().unwrap()]
    );

    // The shards are crds::shard's, plus the managed-by label.
    let want = shard::shard(&expected.address_sets, 1000);
    let got: Vec<&AddressSetShard> = plan.shard_applies.iter().flat_map(|(_, s)| s).collect();
    assert_eq!(got.len(), want.len());
    for w in &want {
        let g = got
            .iter()
            .find(|g| g.metadata.name == w.metadata.name)
            .unwrap();
        assert_eq!(g.spec, w.spec);
        let labels = g.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGER);
        assert_eq!(
            labels[shard::SET_LABEL],
            w.metadata.labels.as_ref().unwrap()[shard::SET_LABEL]
        );
    }
    assert!(plan.shard_deletes.is_empty() && plan.share_deletes.is_empty());
}

#[test]
fn chains_are_written_last_to_first_and_nothing_twice() {
    // Many web pods and shards of at most 2 elements: long chains.
    let mut objs = objects();
    for i in 0..40 {
        objs.push(pod(&format!("w{i}"), "n1", "web", &format!("10.0.3.{i}")));
    }
    let s = live(&objs);
    let inputs = inputs(&s, 2);
    let mut applied = Applied::default();
    let plan = plan(&inputs, &Dirty::all(), &applied);
    let mut longest = 0;
    for (_, shards) in &plan.shard_applies {
        longest = longest.max(shards.len());
        // Every shard names (spec.next) only shards written before it.
        let mut written = BTreeSet::new();
        for s in shards {
            if let Some(next) = &s.spec.next {
                assert!(
                    written.contains(next),
                    "{next} written after its predecessor"
                );
            }
            written.insert(s.metadata.name.clone().unwrap());
        }
    }
    assert!(longest > 3, "the test needs multi-shard chains ({longest})");
    record(&mut applied, &plan);
    let again = super::plan(&inputs, &Dirty::all(), &applied);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_relabel_rewrites_one_set_and_one_share() {
    let mut s = live(&objects());
    let mut applied = Applied::default();
    let first = plan(&inputs(&s, 1000), &Dirty::all(), &applied);
    record(&mut applied, &first);
    let before = applied.clone();

    // x joins the web tier: it enters db-ingress's peer set (app=web) and is
    // now isolated by web-ingress itself, on n1. The set of app=lb and n2's
    // share are untouched.
    let dirty = s.ingest(Input::Pod(WatchEvent::Apply(de(pod(
        "x", "n1", "web", "10.0.1.2",
    )))));
    assert_eq!(dirty.nodes, BTreeSet::from(["n1".to_string()]));
    assert_eq!(dirty.sets.len(), 1, "{dirty:?}");
    let web_set = dirty.sets.iter().next().unwrap().clone();
    assert!(s.ir().unwrap().address_sets[&web_set]
        .selector
        .contains("app=web"));

    let p = plan(&inputs(&s, 1000), &dirty, &applied);
    assert_eq!(p.shard_applies.len(), 1);
    assert_eq!(p.shard_applies[0].0, web_set);
    assert_eq!(names(&p.shard_applies[0].1), vec![shard::set_key(&web_set)]);
    assert!(p.shard_applies[0].1[0]
        .spec
        .elements
        .contains(&AddressSetElement {
            ip: "10.0.1.2".parse().unwrap(),
            protocol: None,
            port: None,
        }));
    assert_eq!(names_of_shares(&p), vec!["n1"]);
    assert!(p.shard_deletes.is_empty() && p.share_deletes.is_empty());

    // The incremental result is the full one.
    record(&mut applied, &p);
    assert_ne!(applied, before);
    let full = plan(&inputs(&s, 1000), &Dirty::all(), &applied);
    assert!(full.is_empty(), "{full:?}");
}

fn names_of_shares(p: &Plan) -> Vec<String> {
    p.share_applies
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect()
}

#[test]
fn what_has_no_source_is_deleted_after_the_writes() {
    let mut s = live(&objects());
    let mut applied = Applied::default();
    let first = plan(&inputs(&s, 1000), &Dirty::all(), &applied);
    record(&mut applied, &first);
    // Left over from an earlier run: a share of a node long gone, a set no
    // rule names, and a shard that fell off a chain.
    let leftover = applied
        .shards
        .values()
        .find(|s| s.selector.contains("app=web"))
        .unwrap()
        .clone();
    applied.put_share("gone".into(), NodePolicyShareSpec::new(Default::default()));
    applied.put_shard(
        "peer-0000000000000000".into(),
        AddressSetShardSpec {
            set: "peer-0000000000000000".into(),
            ..leftover.clone()
        },
    );
    let dropped_link = format!("{}.00000000000000ff", shard::set_key(&leftover.set));
    applied.put_shard(dropped_link.clone(), leftover.clone());

    // Meanwhile web-ingress is deleted: the app=lb set goes, n1's share
    // changes; and node n3 goes.
    let key = crate::cluster::ObjectKey::new("shop", "web-ingress");
    let policy: NetworkPolicy = de(ingress_from("web-ingress", "web", "lb"));
    let mut dirty = s.ingest(Input::NetworkPolicy(WatchEvent::Delete(policy)));
    assert!(s.cluster().policies().get(&key).is_none());
    dirty.merge(s.ingest(Input::Node(WatchEvent::Delete(de(node(
        "n3",
        "172.18.0.3",
    ))))));
    assert!(dirty.nodes.contains("n3"));
    let lb_set = dirty.sets.iter().next().unwrap().clone();

    let p = plan(&inputs(&s, 1000), &Dirty::all(), &applied);
    assert_eq!(names_of_shares(&p), vec!["n1"]);
    assert!(p.shard_applies.is_empty(), "{:?}", p.shard_applies);
    let mut deletes: Vec<(String, bool, Vec<String>)> = p
        .shard_deletes
        .iter()
        .map(|d| (d.set.clone(), d.whole_set, d.names.clone()))
        .collect();
    deletes.sort();
    let mut want = vec![
        (lb_set.clone(), true, vec![shard::set_key(&lb_set)]),
        (
            "peer-0000000000000000".to_string(),
            true,
            vec!["peer-0000000000000000".to_string()],
        ),
        (leftover.set.clone(), false, vec![dropped_link]),
    ];
    want.sort();
    assert_eq!(deletes, want);
    let mut gone = p.share_deletes.clone();
    gone.sort();
    assert_eq!(gone, vec!["gone", "n3"]);

    record(&mut applied, &p);
    assert!(plan(&inputs(&s, 1000), &Dirty::all(), &applied).is_empty());
}

#[test]
fn dirty_merges() {
    let mut d = Dirty::default();
    assert!(d.is_empty());
    d.merge(Dirty {
        all: false,
        nodes: BTreeSet::from(["a".into()]),
        sets: BTreeSet::new(),
    });
    assert!(!d.is_empty() && !d.all);
    d.merge(Dirty::all());
    assert!(d.all && d.nodes.contains("a"));
    assert_eq!(
        managed_selector(),
        "app.kubernetes.io/managed-by=kube-nft-operator"
    );
}
