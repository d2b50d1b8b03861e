use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::ir::Protocol;

fn v4(i: u32) -> AddressSetElement {
    AddressSetElement {
        ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        protocol: None,
        port: None,
    }
}

/// The longest JSON an element can have: a full-length IPv6 address with SCTP
/// and a five-digit port.
fn worst_element(i: u32) -> AddressSetElement {
    let (hi, lo) = ((0x1000 + (i >> 12)) as u16, (0x1000 + (i & 0xfff)) as u16);
    let ip = Ipv6Addr::new(0xfd00, 0xaaaa, 0xbbbb, 0xcccc, 0xdddd, 0xeeee, hi, lo);
    AddressSetElement {
        ip: IpAddr::V6(ip),
        protocol: Some(Protocol::Sctp),
        port: Some(65535),
    }
}

fn set(name: &str, elements: Vec<AddressSetElement>) -> AddressSet {
    let mut elements = elements;
    elements.sort();
    elements.dedup();
    AddressSet {
        name: name.into(),
        selector: format!("namespace=ns;pods=app={name}"),
        elements,
    }
}

fn sets(list: Vec<AddressSet>) -> BTreeMap<String, AddressSet> {
    list.into_iter().map(|s| (s.name.clone(), s)).collect()
}

fn by_name(shards: &[AddressSetShard]) -> BTreeMap<String, &AddressSetShard> {
    shards
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s))
        .collect()
}

/// Several sizes around the limit, both families, port elements, an empty set
/// and a name that is not a DNS label.
fn sample() -> BTreeMap<String, AddressSet> {
    sets(vec![
        set("peer-0000000000000001", vec![]),
        set("peer-0000000000000002", vec![v4(7)]),
        set("peer-0000000000000003", (0..999).map(v4).collect()),
        set("peer-0000000000000004", (0..1000).map(v4).collect()),
        set("peer-0000000000000005", (0..1001).map(v4).collect()),
        set(
            "ports-0000000000000006",
            (0..25_000).map(worst_element).collect(),
        ),
        set("Not A Label/..", (0..3000).map(|i| v4(i * 7)).collect()),
    ])
}

#[test]
fn every_set_comes_back_exactly_once_within_the_bound() {
    let input = sample();
    let shards = shard(&input, DEFAULT_MAX_ELEMENTS);
    let names = by_name(&shards);
    assert_eq!(names.len(), shards.len(), "shard names are unique");
    for s in &shards {
        assert!(s.spec.elements.len() <= DEFAULT_MAX_ELEMENTS);
        assert_eq!(s.spec.element_count as usize, s.spec.elements.len());
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SET_LABEL], set_key(&s.spec.set));
        assert!(is_dns_label(&labels[SET_LABEL]), "{labels:?}");
    }
    for (name, set) in &input {
        let mine: Vec<_> = shards.iter().filter(|s| &s.spec.set == name).collect();
        let total: usize = mine.iter().map(|s| s.spec.elements.len()).sum();
        assert_eq!(
            total,
            set.elements.len(),
            "{name}: each element in one shard"
        );
    }
    let back: BTreeMap<String, AddressSet> = reassemble(&shards)
        .into_iter()
        .map(|(name, set)| (name, set.unwrap()))
        .collect();
    assert_eq!(back, input);
}

#[test]
fn small_sets_are_one_shard_named_after_the_set() {
    let input = sample();
    let shards = shard(&input, DEFAULT_MAX_ELEMENTS);
    for name in ["peer-0000000000000001", "peer-0000000000000002"] {
        let mine: Vec<_> = shards.iter().filter(|s| s.spec.set == name).collect();
        assert_eq!(mine.len(), 1, "{name}");
        assert_eq!(mine[0].metadata.name.as_deref(), Some(name));
        assert_eq!(mine[0].spec.next, None);
    }
    let big = shards
        .iter()
        .filter(|s| s.spec.set == "ports-0000000000000006")
        .count();
    // ~25000 / (1000 / 8) chunks on average.
    assert!((100..=400).contains(&big), "{big} shards");
}

#[test]
fn output_is_deterministic_and_per_set() {
    let input = sample();
    assert_eq!(shard(&input, 100), shard(&input, 100));
    let one = sets(vec![input["peer-0000000000000005"].clone()]);
    let alone = shard(&one, 100);
    let together = shard(&input, 100);
    for s in &alone {
        assert!(together.contains(s), "{:?}", s.metadata.name);
    }
}

/// What a writer has to send when a set changes: shards that are new,
/// changed or gone.
fn changed_shards(before: &[AddressSetShard], after: &[AddressSetShard]) -> usize {
    let (b, a) = (by_name(before), by_name(after));
    let changed = a.iter().filter(|(n, s)| b.get(*n) != Some(*s)).count();
    changed + b.keys().filter(|n| !a.contains_key(*n)).count()
}

#[test]
fn one_element_more_or_less_touches_at_most_two_shards() {
    let base: Vec<_> = (0..20_000).map(|i| v4(i * 2)).collect();
    let before = shard(
        &sets(vec![set("peer-1", base.clone())]),
        DEFAULT_MAX_ELEMENTS,
    );
    for probe in [1, 9_999, 20_001, 39_999, 40_001] {
        let mut added = base.clone();
        added.push(v4(probe));
        let after = shard(&sets(vec![set("peer-1", added)]), DEFAULT_MAX_ELEMENTS);
        assert!(changed_shards(&before, &after) <= 2, "adding {probe}");
    }
    for index in [0, 5_000, 19_999] {
        let mut removed = base.clone();
        removed.remove(index);
        let after = shard(&sets(vec![set("peer-1", removed)]), DEFAULT_MAX_ELEMENTS);
        assert!(changed_shards(&before, &after) <= 2, "removing #{index}");
    }
}

#[test]
fn worst_case_shard_is_far_below_the_etcd_limit() {
    let name = format!("peer-{}", "a".repeat(58));
    assert_eq!(name.len(), 63);
    let mut input = set(&name, (0..20_000).map(worst_element).collect());
    // A long selector is copied into every shard.
    input.selector = format!("namespaces={};pods=", "x".repeat(4096));
    let shards = shard(&sets(vec![input]), DEFAULT_MAX_ELEMENTS);
    let largest = shards
        .iter()
        .map(|s| serde_json::to_vec(s).unwrap().len())
        .max()
        .unwrap();
    let full = shards.iter().map(|s| s.spec.elements.len()).max().unwrap();
    assert!(full > DEFAULT_MAX_ELEMENTS / 8, "{full}");
    // The bound itself: a shard filled to the maximum.
    let packed = AddressSetShard::new(
        &format!("{name}.0123456789abcdef-99"),
        AddressSetShardSpec {
            set: name.clone(),
            selector: shards[0].spec.selector.clone(),
            next: Some(format!("{name}.fedcba9876543210-99")),
            element_count: DEFAULT_MAX_ELEMENTS as u32,
            elements: (0..DEFAULT_MAX_ELEMENTS as u32)
                .map(worst_element)
                .collect(),
        },
    );
    let bound = serde_json::to_vec(&packed).unwrap().len();
    assert!(largest <= bound, "{largest} > {bound}");
    assert!(bound < 128 * 1024, "a full shard is {bound} bytes of JSON");
}

#[test]
fn tiny_limits_still_round_trip() {
    let input = sets(vec![set("peer-1", (0..50).map(v4).collect())]);
    for max in [0, 1, 2, 7] {
        let shards = shard(&input, max);
        assert!(shards.iter().all(|s| s.spec.elements.len() <= max.max(1)));
        assert_eq!(
            reassemble(&shards)["peer-1"].as_ref().unwrap(),
            &input["peer-1"]
        );
    }
}

#[test]
fn incomplete_chains_are_reported_and_leftovers_ignored() {
    let input = sets(vec![set("peer-1", (0..5000).map(v4).collect())]);
    let shards = shard(&input, 100);
    assert!(shards.len() > 3);

    let mut missing_middle = shards.clone();
    let gone = missing_middle.remove(2);
    let err = reassemble(&missing_middle)["peer-1"].clone().unwrap_err();
    let want = ShardError::MissingNext {
        shard: shards[1].metadata.name.clone().unwrap(),
        next: gone.metadata.name.clone().unwrap(),
    };
    assert_eq!(err, want);
    assert!(err.to_string().contains("is missing"), "{err}");

    let err = reassemble(&shards[1..])["peer-1"].clone().unwrap_err();
    assert!(matches!(err, ShardError::MissingHead { .. }), "{err:?}");

    let mut looped = shards.clone();
    let last = looped.len() - 1;
    looped[last].spec.next = shards[1].metadata.name.clone();
    let err = reassemble(&looped)["peer-1"].clone().unwrap_err();
    assert!(matches!(err, ShardError::Loop { .. }), "{err:?}");

    let mut leftover = shards.clone();
    let mut stale = shards[3].clone();
    stale.metadata.name = Some("peer-1.stale".into());
    stale.spec.elements = vec![v4(999_999)];
    leftover.push(stale);
    assert_eq!(
        reassemble(&leftover)["peer-1"].as_ref().unwrap(),
        &input["peer-1"]
    );
}

#[test]
fn keys_and_selectors() {
    assert_eq!(set_key("peer-00ff"), "peer-00ff");
    for odd in ["Peer", "a.b", "", "-a", &"a".repeat(64)] {
        let key = set_key(odd);
        assert!(
            key.starts_with("set-") && is_dns_label(&key),
            "{odd:?} → {key}"
        );
    }
    assert_eq!(set_selector([]), None);
    assert_eq!(
        set_selector(["ports-2", "peer-1", "peer-1"]).unwrap(),
        "kubenft.io/address-set in (peer-1,ports-2)"
    );
}
