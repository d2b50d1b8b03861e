//! Has the control plane caught up with a change? (pure)
//!
//! The operator has when every lab node's NodePolicyShare holds exactly the
//! lab's own compile of the same objects, and the address sets those shares
//! name reassemble from the AddressSetShards to the lab's sets. An agent has
//! when its share's status says the current generation is enforced
//! (`status.enforcedGeneration == metadata.generation`, `Enforced=True`).
//! Each gap is one sentence naming the object, for the timeout message.

use std::collections::BTreeSet;

use kube_nft_crds::ir::{CompiledPolicy, NodePolicy};
use kube_nft_crds::resources::{
    referenced_sets, AddressSetShard, NodePolicyShare, ENFORCED_CONDITION,
};
use kube_nft_crds::shard;

/// Every gap between the API's shares and shards and `compiled`, for `nodes`.
pub fn gaps(
    compiled: &CompiledPolicy,
    nodes: &[String],
    shares: &[NodePolicyShare],
    shards: &[AddressSetShard],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut sets: BTreeSet<&str> = BTreeSet::new();
    for node in nodes {
        let want = compiled.nodes.get(node).cloned().unwrap_or(NodePolicy {
            node: node.clone(),
            ..Default::default()
        });
        sets.extend(referenced_sets(&want).into_iter().filter_map(|s| {
            compiled
                .address_sets
                .get_key_value(s)
                .map(|(k, _)| k.as_str())
        }));
        let Some(share) = shares
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(node.as_str()))
        else {
            out.push(format!(
                "NodePolicyShare {node}: not written by the operator yet"
            ));
            continue;
        };
        if share.spec.policy != want {
            out.push(format!(
                "NodePolicyShare {node}: the operator's spec differs from the lab's compile ({})",
                policy_difference(&share.spec.policy, &want)
            ));
            continue;
        }
        if let Some(gap) = status_gap(share) {
            out.push(format!("NodePolicyShare {node}: {gap}"));
        }
    }
    let assembled = shard::reassemble(shards);
    for name in sets {
        let want = &compiled.address_sets[name];
        match assembled.get(name) {
            None => out.push(format!(
                "address set {name}: no AddressSetShard written by the operator yet"
            )),
            Some(Err(e)) => out.push(format!("address set {name}: {e}")),
            Some(Ok(got)) if got.elements != want.elements => out.push(format!(
                "address set {name}: the shards hold {} elements, the lab's compile {}",
                got.elements.len(),
                want.elements.len()
            )),
            Some(Ok(_)) => {}
        }
    }
    out
}

/// Why the agent's report on `share` does not say "this generation is in
/// the kernel"; `None` when it does.
pub fn status_gap(share: &NodePolicyShare) -> Option<String> {
    let generation = share.metadata.generation;
    let status = share.status.as_ref();
    let enforced = status.and_then(|s| s.enforced_generation);
    let condition = status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == ENFORCED_CONDITION);
    let is_true = condition.is_some_and(|c| c.status == "True");
    if enforced == generation && generation.is_some() && is_true {
        return None;
    }
    let said = match condition {
        Some(c) => format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message),
        None => format!("no {ENFORCED_CONDITION} condition"),
    };
    Some(format!(
        "the agent reports generation {} enforced of {}, {said}",
        enforced.map_or("none".to_string(), |g| g.to_string()),
        generation.map_or("none".to_string(), |g| g.to_string()),
    ))
}

/// Which part of two node policies differs, briefly.
fn policy_difference(got: &NodePolicy, want: &NodePolicy) -> String {
    if got.node_addresses != want.node_addresses {
        return format!(
            "nodeAddresses {:?}, expected {:?}",
            got.node_addresses, want.node_addresses
        );
    }
    let names = |p: &NodePolicy| -> Vec<String> {
        p.pods
            .iter()
            .map(|x| format!("{}/{}", x.namespace, x.name))
            .collect()
    };
    let (g, w) = (names(got), names(want));
    if g != w {
        return format!("isolated pods {g:?}, expected {w:?}");
    }
    let differing: Vec<String> = got
        .pods
        .iter()
        .zip(&want.pods)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| format!("{}/{}", a.namespace, a.name))
        .collect();
    format!("rules of {}", differing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kube_nft_crds::ir::{AddressSet, AddressSetElement, IrPeer, IrRule, PodPolicy};
    use kube_nft_crds::resources::NodePolicyShareStatus;
    use std::collections::BTreeMap;

    fn compiled() -> CompiledPolicy {
        let rule = IrRule {
            policy: "x/p".into(),
            rule_index: 0,
            peers: vec![IrPeer::AddressSet {
                name: "peer-a".into(),
            }],
            ports: vec![],
            named_ports: vec![],
        };
        let pod = PodPolicy {
            namespace: "x".into(),
            name: "b".into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            ingress_isolated: true,
            ingress: vec![rule],
            ..Default::default()
        };
        let set = AddressSet {
            name: "peer-a".into(),
            selector: "pods app=a".into(),
            elements: vec![AddressSetElement {
                ip: "10.0.0.1".parse().unwrap(),
                protocol: None,
                port: None,
            }],
        };
        CompiledPolicy {
            address_sets: BTreeMap::from([("peer-a".to_string(), set)]),
            nodes: BTreeMap::from([
                (
                    "n1".to_string(),
                    NodePolicy {
                        node: "n1".into(),
                        node_addresses: vec![],
                        pods: vec![pod],
                    },
                ),
                (
                    "n2".to_string(),
                    NodePolicy {
                        node: "n2".into(),
                        ..Default::default()
                    },
                ),
            ]),
        }
    }

    fn enforced(mut share: NodePolicyShare, generation: i64, status: &str) -> NodePolicyShare {
        share.metadata.generation = Some(generation);
        share.status = Some(NodePolicyShareStatus {
            observed_generation: Some(generation),
            enforced_generation: Some(generation),
            enforced_time: None,
            conditions: vec![Condition {
                type_: ENFORCED_CONDITION.into(),
                status: status.into(),
                reason: "Synced".into(),
                message: "in the kernel".into(),
                observed_generation: Some(generation),
                last_transition_time: Time(Default::default()),
            }],
        });
        share
    }

    fn nodes() -> Vec<String> {
        vec!["n1".into(), "n2".into()]
    }

    #[test]
    fn caught_up_when_shares_sets_and_statuses_agree() {
        let c = compiled();
        let shares: Vec<NodePolicyShare> = c
            .nodes
            .values()
            .map(|p| enforced(NodePolicyShare::for_node(p.clone()), 3, "True"))
            .collect();
        let shards = shard::shard(&c.address_sets, 100);
        assert_eq!(gaps(&c, &nodes(), &shares, &shards), Vec::<String>::new());
    }

    #[test]
    fn each_gap_names_its_object() {
        let c = compiled();
        let mut stale = c.nodes["n1"].clone();
        stale.pods.clear();
        let shares = vec![
            enforced(NodePolicyShare::for_node(stale), 2, "True"),
            // n2's agent has not caught up.
            {
                let mut s = enforced(NodePolicyShare::for_node(c.nodes["n2"].clone()), 5, "False");
                s.status.as_mut().unwrap().enforced_generation = Some(4);
                s
            },
        ];
        let gaps = gaps(&c, &nodes(), &shares, &[]);
        assert_eq!(gaps.len(), 3, "{gaps:#?}");
        assert!(
            gaps[0].starts_with("NodePolicyShare n1: the operator's spec differs")
                && gaps[0].contains("isolated pods [], expected [\"x/b\"]"),
            "{gaps:#?}"
        );
        assert!(
            gaps[1].contains("NodePolicyShare n2: the agent reports generation 4 enforced of 5, Enforced=False (Synced: in the kernel)"),
            "{gaps:#?}"
        );
        assert!(
            gaps[2].contains("address set peer-a: no AddressSetShard"),
            "{gaps:#?}"
        );
        let none = super::gaps(&c, &nodes(), &[], &[]);
        assert!(none[0].contains("NodePolicyShare n1: not written by the operator yet"));
    }

    #[test]
    fn a_set_with_other_elements_is_a_gap() {
        let c = compiled();
        let shares: Vec<NodePolicyShare> = c
            .nodes
            .values()
            .map(|p| enforced(NodePolicyShare::for_node(p.clone()), 1, "True"))
            .collect();
        let mut old = c.address_sets.clone();
        old.get_mut("peer-a").unwrap().elements.clear();
        let gaps = gaps(&c, &nodes(), &shares, &shard::shard(&old, 100));
        assert_eq!(
            gaps,
            ["address set peer-a: the shards hold 0 elements, the lab's compile 1"]
        );
    }
}
