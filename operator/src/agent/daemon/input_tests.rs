use std::collections::BTreeMap;

use kube::runtime::watcher::Event;

use super::super::fixtures::*;
use super::super::state::Update;
use super::*;

#[test]
fn no_share_is_an_empty_policy_for_this_node() {
    let state = complete_state(None, vec![], vec![], vec![]);
    let built = build(&state, &BTreeMap::new(), None);
    assert_eq!(built.input.policy.node, NODE);
    assert!(built.input.policy.pods.is_empty());
    assert!(built.input.address_sets.is_empty());
    assert_eq!(built.generation, None);
    assert!(built.input.services.is_none());
    assert!(built.incomplete.is_empty());
}

#[test]
fn referenced_sets_are_reassembled_from_their_shards() {
    let a = set("peer-a", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    let state = complete_state(Some(share(4, &["peer-a"])), shards(&a, 1), vec![], vec![]);
    assert!(state.shards().count() > 1, "several shards");
    let built = build(&state, &BTreeMap::new(), None);
    assert_eq!(built.input.address_sets["peer-a"].elements, a.elements);
    assert_eq!(built.sets, built.input.address_sets);
    assert_eq!(built.generation, Some(4));
    assert!(built.incomplete.is_empty(), "{:?}", built.incomplete);
    assert_eq!(built.input.policy.pods.len(), 1);
}

#[test]
fn an_incomplete_chain_keeps_the_last_good_members() {
    let a = set("peer-a", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    let list = shards(&a, 1);
    let mut state = complete_state(Some(share(1, &["peer-a"])), list.clone(), vec![], vec![]);
    let good = build(&state, &BTreeMap::new(), None);

    // The middle shard goes away (the operator is rewriting the set).
    state.apply(Update::Shards {
        epoch: state.shard_watch().epoch,
        event: Event::Delete(list[1].clone()),
    });
    let built = build(&state, &good.sets, None);
    assert_eq!(built.input.address_sets["peer-a"].elements, a.elements);
    assert_eq!(built.incomplete.len(), 1);
    assert!(
        built.incomplete[0].contains("missing"),
        "{}",
        built.incomplete[0]
    );
    assert!(
        built.incomplete[0].contains("keeping"),
        "{}",
        built.incomplete[0]
    );

    // Never seen complete: enforced empty, and said so.
    let fresh = build(&state, &BTreeMap::new(), None);
    assert!(!fresh.input.address_sets.contains_key("peer-a"));
    assert!(
        fresh.incomplete[0].contains("empty"),
        "{}",
        fresh.incomplete[0]
    );
}

#[test]
fn a_set_without_any_shard_is_incomplete() {
    let state = complete_state(Some(share(1, &["peer-a"])), vec![], vec![], vec![]);
    let built = build(&state, &BTreeMap::new(), None);
    assert_eq!(built.incomplete.len(), 1);
    assert!(
        built.incomplete[0].contains("peer-a"),
        "{}",
        built.incomplete[0]
    );
}

#[test]
fn services_are_computed_with_the_node_addresses_of_the_node_object() {
    let state = complete_state(
        None,
        vec![],
        vec![service("x", "web", "10.96.0.10")],
        vec![slice("x", "web", "10.244.0.5")],
    );
    let config = ServiceConfig::default();
    let built = build(&state, &BTreeMap::new(), Some(&config));
    let services = built.input.services.clone().expect("Service NAT on");
    assert_eq!(
        services.node_addresses,
        vec!["172.31.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(services.errors.is_empty(), "{:?}", services.errors);
    assert!(
        services
            .entries
            .iter()
            .any(|e| e.frontend.addr == Some("10.96.0.10".parse().unwrap())),
        "{:?}",
        services.entries
    );
    // The table renders with the ClusterIP in it.
    let table = nft::render::render_text(&built.input.render());
    assert!(table.contains("10.96.0.10"), "{table}");
}
