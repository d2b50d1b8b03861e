use kube::runtime::watcher::Event;

use super::super::fixtures::*;
use super::*;
use crate::cluster::ObjectKey;

fn apply_all<K>(
    state: &mut State,
    events: Vec<Event<K>>,
    wrap: impl Fn(Event<K>) -> Update,
) -> Effect {
    let mut last = Effect::default();
    for e in events {
        let effect = state.apply(wrap(e));
        last.changed |= effect.changed;
        last.problems.extend(effect.problems);
        if effect.restart_shards.is_some() {
            last.restart_shards = effect.restart_shards;
        }
    }
    last
}

#[test]
fn nothing_is_complete_before_every_watcher_listed_and_a_missing_share_is_no_policy() {
    let mut state = State::new(NODE, true);
    assert!(!state.is_complete());
    apply_all(&mut state, listed(vec![]), Update::Share);
    apply_all(&mut state, listed(vec![]), Update::Service);
    apply_all(&mut state, listed(vec![]), Update::Node);
    assert_eq!(state.waiting_for(), vec![Kind::EndpointSlices]);
    // A list in progress does not count.
    state.apply(Update::EndpointSlice(Event::Init));
    assert!(!state.is_complete());
    state.apply(Update::EndpointSlice(Event::InitDone));
    assert!(state.is_complete());
    assert!(state.share().is_none());
    assert_eq!(state.shard_watch().selector, None);
}

#[test]
fn without_services_only_the_share_shards_and_node_are_awaited() {
    let mut state = State::new(NODE, false);
    apply_all(&mut state, listed(vec![]), Update::Share);
    assert_eq!(state.waiting_for(), vec![Kind::Node]);
}

#[test]
fn the_shard_watch_follows_the_sets_the_share_references() {
    let mut state = State::new(NODE, true);
    let effect = apply_all(
        &mut state,
        listed(vec![share(1, &["peer-a"])]),
        Update::Share,
    );
    let watch = effect.restart_shards.expect("a shard watcher");
    assert_eq!(watch.epoch, 1);
    assert_eq!(
        watch.selector.as_deref(),
        Some("kubenft.io/address-set in (peer-a)")
    );
    assert!(state.waiting_for().contains(&Kind::Shards));

    let a = shards(&set("peer-a", &["10.0.0.1"]), 10);
    apply_all(&mut state, listed(a.clone()), |event| Update::Shards {
        epoch: 1,
        event,
    });
    assert!(!state.waiting_for().contains(&Kind::Shards));
    assert_eq!(state.shards().count(), 1);

    // The share now references another set too: a new watcher; the old
    // members stay until its list is complete.
    let effect = state.apply(Update::Share(Event::Apply(share(2, &["peer-a", "peer-b"]))));
    let watch = effect.restart_shards.expect("restarted");
    assert_eq!(watch.epoch, 2);
    assert!(state.waiting_for().contains(&Kind::Shards));
    assert_eq!(state.shards().count(), 1);
    // A late event of the old watcher is ignored.
    let late = shards(&set("peer-a", &["10.0.0.9"]), 10);
    let effect = state.apply(Update::Shards {
        epoch: 1,
        event: Event::Apply(late[0].clone()),
    });
    assert!(!effect.changed);
    let b = shards(&set("peer-b", &["10.0.0.2"]), 10);
    state.apply(Update::Shards {
        epoch: 2,
        event: Event::Init,
    });
    assert_eq!(
        state.shards().count(),
        1,
        "the old members stay while listing"
    );
    for s in a.iter().chain(&b) {
        state.apply(Update::Shards {
            epoch: 2,
            event: Event::InitApply(s.clone()),
        });
    }
    state.apply(Update::Shards {
        epoch: 2,
        event: Event::InitDone,
    });
    assert_eq!(state.shards().count(), 2);
    assert!(!state.waiting_for().contains(&Kind::Shards));

    // No set referenced any more: no watcher, no shards, nothing to wait for.
    let effect = state.apply(Update::Share(Event::Apply(share(3, &[]))));
    assert_eq!(effect.restart_shards.unwrap().selector, None);
    assert_eq!(state.shards().count(), 0);
    assert!(!state.waiting_for().contains(&Kind::Shards));
}

#[test]
fn a_status_update_of_the_share_is_not_a_change() {
    let mut state = complete_state(Some(share(1, &[])), vec![], vec![], vec![]);
    let mut written = share(1, &[]);
    written.status = Some(Default::default());
    written.metadata.resource_version = Some("99".into());
    let effect = state.apply(Update::Share(Event::Apply(written)));
    assert_eq!(effect, Effect::default());
    let effect = state.apply(Update::Share(Event::Apply(share(2, &[]))));
    assert!(effect.changed);
    let effect = state.apply(Update::Share(Event::Delete(share(2, &[]))));
    assert!(effect.changed);
    assert!(state.share().is_none());
}

#[test]
fn a_relist_replaces_the_store_and_drops_what_was_deleted_meanwhile() {
    let mut state = complete_state(
        None,
        vec![],
        vec![
            service("x", "a", "10.96.0.1"),
            service("x", "b", "10.96.0.2"),
        ],
        vec![slice("x", "a", "10.244.0.5"), slice("x", "b", "10.244.0.6")],
    );
    assert_eq!(state.cluster().services().len(), 2);
    // Reconnect: a new list, in which b is gone and c is new.
    state.apply(Update::Service(Event::Init));
    state.apply(Update::Service(Event::InitApply(service(
        "x",
        "a",
        "10.96.0.1",
    ))));
    state.apply(Update::Service(Event::InitApply(service(
        "x",
        "c",
        "10.96.0.3",
    ))));
    assert_eq!(
        state.cluster().services().len(),
        2,
        "nothing changes before the list is complete"
    );
    assert!(state.apply(Update::Service(Event::InitDone)).changed);
    let keys: Vec<String> = state
        .cluster()
        .services()
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys, ["x/a", "x/c"]);

    apply_all(
        &mut state,
        listed(vec![slice("x", "a", "10.244.0.5")]),
        Update::EndpointSlice,
    );
    assert_eq!(state.cluster().endpoint_slices().len(), 1);
    assert!(state
        .cluster()
        .endpoint_slices()
        .contains_key(&ObjectKey::new("x", "a-abc")));

    let shard_list = shards(&set("peer-a", &["10.0.0.1", "10.0.0.2"]), 1);
    let mut state = complete_state(
        Some(share(1, &["peer-a"])),
        shard_list.clone(),
        vec![],
        vec![],
    );
    assert_eq!(state.shards().count(), 2);
    apply_all(&mut state, listed(shard_list[..1].to_vec()), |event| {
        Update::Shards { epoch: 1, event }
    });
    assert_eq!(state.shards().count(), 1);
}

#[test]
fn only_the_node_addresses_matter_and_a_bad_node_keeps_the_previous_ones() {
    let mut state = complete_state(None, vec![], vec![], vec![]);
    let heartbeat = node(&["172.31.0.10"]);
    assert!(!state.apply(Update::Node(Event::Apply(heartbeat))).changed);
    assert!(
        state
            .apply(Update::Node(Event::Apply(node(&["172.31.0.11"]))))
            .changed
    );
    let effect = state.apply(Update::Node(Event::Apply(node(&["not-an-ip"]))));
    assert!(!effect.changed);
    assert_eq!(effect.problems.len(), 1, "{:?}", effect.problems);
    assert!(
        effect.problems[0].contains("status.addresses[0].address"),
        "{:?}",
        effect.problems
    );
    assert_eq!(
        state.cluster().node_addresses(NODE),
        vec!["172.31.0.11".parse::<std::net::IpAddr>().unwrap()]
    );
    // Another node's events (the watch selects ours by name) are ignored.
    let mut other = node(&["172.31.0.99"]);
    other.metadata.name = Some("n2".into());
    assert!(!state.apply(Update::Node(Event::Apply(other))).changed);
}
