use kube::runtime::watcher::Event as WatchEvent;
use serde_json::{json, Value};

use super::*;

fn de<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pod(name: &str, app: &str, rv: &str) -> Pod {
    de(json!({
        "metadata": {"name": name, "namespace": "x", "labels": {"app": app}, "resourceVersion": rv},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": format!("10.0.0.{}", name.len())}
    }))
}

fn policy(rv: &str, cidr: &str, except: &str) -> NetworkPolicy {
    de(json!({
        "metadata": {"name": "p", "namespace": "x", "resourceVersion": rv, "uid": "u-p"},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": [except]}}]}]
        }
    }))
}

fn node(name: &str, ip: &str, rv: &str) -> Node {
    de(json!({
        "metadata": {"name": name, "resourceVersion": rv},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    }))
}

/// Every kind listed once, with the given pods and no other objects.
fn live_with(pods: Vec<Pod>, policies: Vec<NetworkPolicy>) -> State {
    let mut s = State::new();
    s.ingest(Input::Pod(WatchEvent::Init));
    for p in pods {
        s.ingest(Input::Pod(WatchEvent::InitApply(p)));
    }
    s.ingest(Input::NetworkPolicy(WatchEvent::Init));
    for p in policies {
        s.ingest(Input::NetworkPolicy(WatchEvent::InitApply(p)));
    }
    for input in [
        Input::Pod(WatchEvent::InitDone),
        Input::NetworkPolicy(WatchEvent::InitDone),
        Input::Namespace(WatchEvent::Init),
        Input::Namespace(WatchEvent::InitDone),
        Input::Node(WatchEvent::Init),
    ] {
        assert!(s.ingest(input).is_empty());
    }
    assert_eq!(s.unsynced(), vec![Kind::Node]);
    assert_eq!(s.ingest(Input::Node(WatchEvent::InitDone)), Dirty::all());
    s
}

#[test]
fn a_broken_update_keeps_the_previous_version_and_is_remembered_once() {
    let mut s = live_with(
        vec![pod("a", "a", "1")],
        vec![policy("1", "10.0.0.0/16", "10.0.1.0/24")],
    );
    let key = (Kind::NetworkPolicy, ObjectKey::new("x", "p"));
    let enforced = s.ir().unwrap().clone();
    assert_eq!(enforced.nodes["n1"].pods.len(), 1);

    // The API server (v1.20) accepts an IPv4-mapped `except` inside an IPv4
    // cidr; the engine does not.
    let dirty = s.ingest(Input::NetworkPolicy(WatchEvent::Apply(policy(
        "2",
        "10.0.0.0/16",
        "::ffff:10.0.1.0/120",
    ))));
    assert!(dirty.is_empty());
    assert_eq!(s.ir().unwrap(), &enforced);
    let r = &s.rejected()[&key];
    assert_eq!(r.error.field, "spec.ingress[0].from[0].ipBlock.except[0]");
    assert!(r.kept_previous);
    assert_eq!(r.resource_version(), Some("2"));
    assert_eq!(r.reference.kind.as_deref(), Some("NetworkPolicy"));
    assert_eq!(
        r.reference.api_version.as_deref(),
        Some("networking.k8s.io/v1")
    );
    assert_eq!(r.reference.uid.as_deref(), Some("u-p"));

    // A relist delivers the same broken version: still rejected at "2".
    s.ingest(Input::NetworkPolicy(WatchEvent::Init));
    s.ingest(Input::NetworkPolicy(WatchEvent::InitApply(policy(
        "2",
        "10.0.0.0/16",
        "::ffff:10.0.1.0/120",
    ))));
    s.ingest(Input::NetworkPolicy(WatchEvent::InitDone));
    assert_eq!(s.rejected()[&key].resource_version(), Some("2"));
    assert_eq!(
        s.ir().unwrap(),
        &enforced,
        "the relist did not drop the kept version"
    );

    // Fixed: the rejection is gone and the new version compiles.
    let dirty = s.ingest(Input::NetworkPolicy(WatchEvent::Apply(policy(
        "3",
        "10.0.0.0/16",
        "10.0.2.0/24",
    ))));
    assert!(s.rejected().is_empty());
    assert_eq!(dirty.nodes, BTreeSet::from(["n1".to_string()]));
}

#[test]
fn a_policy_broken_from_the_start_is_not_enforced() {
    let s = live_with(
        vec![pod("a", "a", "1")],
        vec![policy("1", "10.0.0.0/16", "10.0.0.0/8")],
    );
    let r = &s.rejected()[&(Kind::NetworkPolicy, ObjectKey::new("x", "p"))];
    assert!(!r.kept_previous);
    assert!(s.ir().unwrap().nodes.is_empty());
}

#[test]
fn unchanged_versions_are_skipped_and_relists_remove_what_is_gone() {
    let mut s = live_with(
        vec![pod("a", "a", "1"), pod("bb", "b", "1")],
        vec![policy("1", "10.0.0.0/16", "10.0.1.0/24")],
    );
    // Same resourceVersion: nothing to do, even if the content differed.
    assert!(s
        .ingest(Input::Pod(WatchEvent::Apply(pod("a", "other", "1"))))
        .is_empty());
    // The watch expired and pod bb was deleted meanwhile.
    s.ingest(Input::Pod(WatchEvent::Init));
    s.ingest(Input::Pod(WatchEvent::InitApply(pod("a", "a", "1"))));
    let dirty = s.ingest(Input::Pod(WatchEvent::InitDone));
    assert!(s.cluster().pod(&ObjectKey::new("x", "bb")).is_none());
    assert!(s.cluster().pod(&ObjectKey::new("x", "a")).is_some());
    assert_eq!(dirty.nodes, BTreeSet::from(["n1".to_string()]));
    assert_eq!(s.counts()[1], (Kind::Pod, 1));
}

#[test]
fn nodes_touch_only_their_share_and_only_when_addresses_change() {
    let mut s = live_with(vec![], vec![]);
    let d = s.ingest(Input::Node(WatchEvent::Apply(node(
        "n1",
        "172.18.0.1",
        "1",
    ))));
    assert_eq!(d.nodes, BTreeSet::from(["n1".to_string()]));
    assert!(d.sets.is_empty());
    assert_eq!(
        s.node_addresses()["n1"],
        vec!["172.18.0.1".parse::<IpAddr>().unwrap()]
    );
    // A status heartbeat: new version, same addresses.
    assert!(s
        .ingest(Input::Node(WatchEvent::Apply(node(
            "n1",
            "172.18.0.1",
            "2"
        ))))
        .is_empty());
    let d = s.ingest(Input::Node(WatchEvent::Apply(node(
        "n1",
        "172.18.0.9",
        "3",
    ))));
    assert_eq!(d.nodes.len(), 1);
    // A bad address is rejected; the node keeps its last good addresses.
    assert!(s
        .ingest(Input::Node(WatchEvent::Apply(node("n1", "not-an-ip", "4"))))
        .is_empty());
    assert!(s.rejected()[&(Kind::Node, ObjectKey::new("", "n1"))].kept_previous);
    assert_eq!(
        s.node_addresses()["n1"],
        vec!["172.18.0.9".parse::<IpAddr>().unwrap()]
    );
    let d = s.ingest(Input::Node(WatchEvent::Delete(node(
        "n1",
        "172.18.0.9",
        "5",
    ))));
    assert_eq!(d.nodes, BTreeSet::from(["n1".to_string()]));
    assert!(s.node_addresses().is_empty() && s.rejected().is_empty());
}

#[test]
fn pod_moves_dirty_both_nodes() {
    let mut s = live_with(
        vec![pod("a", "a", "1")],
        vec![policy("1", "10.0.0.0/16", "10.0.1.0/24")],
    );
    let mut moved = pod("a", "a", "2");
    moved.spec.as_mut().unwrap().node_name = Some("n2".into());
    let d = s.ingest(Input::Pod(WatchEvent::Apply(moved)));
    assert_eq!(
        d.nodes,
        BTreeSet::from(["n1".to_string(), "n2".to_string()])
    );
}
