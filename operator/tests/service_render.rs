//! Service NAT rendering: golden text of a small example, structure checks that
//! hold for any input (names, validity, no verdicts), and the element-only
//! nature of Service changes.
//!
//! Regenerate the golden file with
//! `UPDATE_GOLDEN=1 cargo test -p kube-nft --test service_render`.

#[path = "service_support.rs"]
mod support;

use std::path::PathBuf;

use kube_nft::render::service::{contribute, stale_affinity, GROUPS, SERVICES};
use kube_nft::service::{compute, ServiceConfig};
use nft::{ElemData, ElemValue, Expr, KeyPart, SetData, Table, Value};
use support::*;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(expected, actual, "{} differs", path.display());
}

#[test]
fn small_example_matches_golden_and_validates() {
    let t = render_example(&example_cluster(), &config());
    golden("service_render.golden.nft", &nft::render::render_text(&t));
    assert_eq!(nft::render::validate(&t), vec![]);
}

/// Verdicts only in `svc-groups`, one per endpoint-count group (never per
/// Service or endpoint); chains: the fixed ones plus one per group.
#[test]
fn verdicts_and_chains_per_group_never_per_service() {
    let t = render_example(&example_cluster(), &config());
    for s in t.sets.values() {
        if s.name != GROUPS {
            assert_ne!(s.data, Some(SetData::Verdict), "set {}", s.name);
        }
        assert!(
            s.name.starts_with("svc-"),
            "set {} lacks the svc- prefix",
            s.name
        );
    }
    // The example: IPv4 groups of 1 and 2 endpoints, a NodePort group of 2,
    // an IPv6 group of 1.
    let groups = &t.sets[GROUPS];
    assert_eq!(groups.elements.len(), 4, "{groups:?}");
    let chains: Vec<&str> = t.chains.keys().map(String::as_str).collect();
    assert_eq!(
        chains,
        vec![
            "nat-output",
            "nat-postrouting",
            "nat-prerouting",
            "services",
            "svc-filter-forward",
            "svc-filter-input",
            "svc-filter-output",
            "svc-firewall-output",
            "svc-firewall-prerouting",
            "svc-group-eps-v4-1",
            "svc-group-eps-v4-2",
            "svc-group-eps-v6-1",
            "svc-group-np-v4-2",
        ]
    );
    for c in t.chains.values() {
        assert!(c.comment.is_some(), "chain {}", c.name);
        for r in &c.rules {
            assert!(r.comment.is_some(), "rule of {}", c.name);
        }
    }
}

/// Adding a Service whose endpoint count already has a group changes
/// elements only: same chains, same set headers.
#[test]
fn a_new_service_with_a_known_endpoint_count_is_element_changes_only() {
    let mut c = example_cluster();
    let before = render_example(&c, &config());
    add_service(&mut c, "extra", "10.96.0.99", &["10.0.2.7", "10.0.2.8"]);
    let after = render_example(&c, &config());
    assert_eq!(before.chains, after.chains);
    let headers = |t: &Table| {
        t.sets
            .values()
            .map(|s| {
                let mut h = s.clone();
                h.elements.clear();
                h
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(headers(&before), headers(&after));
    let eps2 = &after.sets["svc-eps-v4-2"];
    assert_eq!(
        eps2.elements.len(),
        before.sets["svc-eps-v4-2"].elements.len() + 2
    );
    // The elements name their Service port.
    assert!(eps2
        .elements
        .values()
        .any(|v| v.comment.as_deref() == Some("demo/extra:http")));
}

#[test]
fn the_policy_part_and_the_nat_part_do_not_share_names() {
    let mut nat = Table::new(nft::Family::Inet, "kube-nft");
    let s = compute(&example_cluster(), NODE, &config());
    contribute(&mut nat, &s, &config());
    let policy = kube_nft::render::render_policy(&Default::default(), &Default::default());
    for name in nat.chains.keys() {
        assert!(!policy.chains.contains_key(name), "chain {name}");
    }
    for name in nat.sets.keys() {
        assert!(!policy.sets.contains_key(name), "set {name}");
    }
}

#[test]
fn masquerade_rules_follow_the_configured_cidrs() {
    let t = render_example(&example_cluster(), &ServiceConfig::default());
    let text = nft::render::render_text(&t);
    assert!(!text.contains("@svc-cluster-ips-v4 meta mark"), "{text}");
    assert!(!text.contains("pod traffic leaving the cluster"), "{text}");
    let t = render_example(&example_cluster(), &config());
    let text = nft::render::render_text(&t);
    assert!(text.contains("ip saddr != @svc-cluster-cidrs-v4 ip daddr . meta l4proto . th dport @svc-cluster-ips-v4 meta mark set meta mark | 0x00004000"), "{text}");
    assert!(
        text.contains(
            "ip saddr @svc-cluster-cidrs-v4 ip daddr != @svc-no-masq-v4 masquerade fully-random"
        ),
        "{text}"
    );
    // 10.0.0.0/16 and 10.1.0.0/16 merge; 192.168.0.0/16 stays apart.
    let no_masq: Vec<String> = t.sets["svc-no-masq-v4"]
        .elements
        .keys()
        .map(|k| format!("{k:?}"))
        .collect();
    assert_eq!(no_masq.len(), 2, "{no_masq:?}");
}

#[test]
fn stale_affinity_entries_are_those_whose_endpoint_left() {
    let c = example_cluster();
    let s = compute(&c, NODE, &config());
    let t = render_example(&c, &config());
    let mut map = t.sets["svc-affinity-v4"].clone();
    let entry = |client: &str, vip: &str, ep: &str| {
        (
            vec![
                KeyPart::Value(Value::Ipv4(client.parse().unwrap())),
                KeyPart::Value(Value::Ipv4(vip.parse().unwrap())),
                KeyPart::Value(Value::Proto(nft::proto::TCP)),
                KeyPart::Value(Value::Port(80)),
            ],
            ElemValue {
                data: Some(ElemData::Values(vec![
                    Value::Ipv4(ep.parse().unwrap()),
                    Value::Port(8080),
                ])),
                ..Default::default()
            },
        )
    };
    let (live, v1) = entry("10.0.9.9", STICKY_VIP, "10.0.1.21");
    let (gone, v2) = entry("10.0.9.9", STICKY_VIP, "10.0.1.99");
    let (not_sticky, v3) = entry("10.0.9.9", WEB_VIP, "10.0.1.11");
    map.elements.insert(live, v1);
    map.elements.insert(gone.clone(), v2);
    map.elements.insert(not_sticky.clone(), v3);
    // In key order: the non-sticky frontend's VIP sorts first.
    assert_eq!(stale_affinity(&map, &s), vec![not_sticky, gone]);
}

/// Per new connection the services chain costs the same however many groups
/// exist: a fixed list of rules (marks, affinity, two count lookups per
/// family, one verdict-map lookup); the DNAT rule of each group sits in the
/// group's own chain.
#[test]
fn the_services_chain_dispatches_by_group_in_constant_rules() {
    let t = render_example(&example_cluster(), &config());
    let rules = &t.chains[SERVICES].rules;
    let vmaps: Vec<&nft::Rule> = rules
        .iter()
        .filter(|r| r.exprs.iter().any(|e| matches!(e, Expr::Vmap { .. })))
        .collect();
    assert_eq!(vmaps.len(), 1, "{rules:?}");
    assert!(
        !rules.iter().any(|r| r
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Dnat { to: nft::NatTarget::Map { map, .. }, .. } if map.starts_with("svc-eps") || map.starts_with("svc-np")))),
        "no group DNAT in the services chain: {rules:?}"
    );
    // More groups do not lengthen the services chain.
    let mut bigger = example_cluster();
    let eps: Vec<String> = (1..=7).map(|i| format!("10.0.7.{i}")).collect();
    let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
    add_service(&mut bigger, "many", "10.96.0.77", &eps);
    let t2 = render_example(&bigger, &config());
    assert_eq!(t2.chains[SERVICES].rules.len(), rules.len());
    assert!(t2.chains.contains_key("svc-group-eps-v4-7"));
}
