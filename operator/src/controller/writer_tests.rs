use std::collections::BTreeMap;
use std::sync::Mutex;

use kube_nft_crds::ir::{
    AddressSet, AddressSetElement, CompiledPolicy, IrPeer, IrRule, NodePolicy, PodPolicy,
};
use kube_nft_crds::shard;

use super::*;
use crate::controller::desired::{self, Inputs, ShardDeletes};

/// Records writes; fails the names in `fail` (retryable or not).
#[derive(Default)]
struct Fake {
    log: Mutex<Vec<String>>,
    fail: BTreeMap<String, bool>,
}

impl Store for Fake {
    async fn write(&self, op: Op<'_>) -> Result<(), WriteError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {} {}", op.verb(), op.kind(), op.name()));
        match self.fail.get(op.name()) {
            Some(&retryable) => Err(WriteError {
                retryable,
                message: "injected".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Fake {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn el(i: u8) -> AddressSetElement {
    AddressSetElement {
        ip: format!("10.0.0.{i}").parse().unwrap(),
        protocol: None,
        port: None,
    }
}

/// Sets `peer-a` (many elements) and `peer-b`; node n1's pod names peer-a,
/// n2's names peer-b.
fn ir() -> CompiledPolicy {
    let set = |name: &str, n: u8| AddressSet {
        name: name.into(),
        selector: name.into(),
        elements: (1..=n).map(el).collect(),
    };
    let node = |node: &str, set: &str| NodePolicy {
        node: node.into(),
        node_addresses: vec![],
        pods: vec![PodPolicy {
            namespace: "x".into(),
            name: format!("pod-{node}"),
            ips: vec![],
            ingress_isolated: true,
            egress_isolated: false,
            ingress: vec![IrRule {
                policy: "x/p".into(),
                rule_index: 0,
                peers: vec![IrPeer::AddressSet { name: set.into() }],
                ports: vec![],
                named_ports: vec![],
            }],
            egress: vec![],
        }],
    };
    CompiledPolicy {
        address_sets: BTreeMap::from([
            ("peer-a".to_string(), set("peer-a", 60)),
            ("peer-b".to_string(), set("peer-b", 3)),
        ]),
        nodes: BTreeMap::from([
            ("n1".to_string(), node("n1", "peer-a")),
            ("n2".to_string(), node("n2", "peer-b")),
        ]),
    }
}

fn nodes() -> BTreeMap<String, Vec<std::net::IpAddr>> {
    BTreeMap::from([("n1".to_string(), vec![]), ("n2".to_string(), vec![])])
}

const MAX: usize = 4;

fn full_plan(ir: &CompiledPolicy, nodes: &BTreeMap<String, Vec<std::net::IpAddr>>) -> Plan {
    let inputs = Inputs {
        ir,
        node_addresses: nodes,
        max_elements: MAX,
    };
    desired::plan(&inputs, &Dirty::all(), &Applied::default())
}

fn metrics() -> Metrics {
    Metrics::new().0
}

#[tokio::test]
async fn writes_in_plan_order_and_records_them() {
    let (ir, nodes) = (ir(), nodes());
    let plan = full_plan(&ir, &nodes);
    let chain_a = shard::shard(
        &BTreeMap::from([("peer-a".into(), ir.address_sets["peer-a"].clone())]),
        MAX,
    );
    assert!(chain_a.len() > 2, "peer-a needs a chain");
    let store = Fake::default();
    let mut applied = Applied::default();
    let out = execute(&store, plan.clone(), &mut applied, &metrics(), &|| true).await;
    assert_eq!(out.written, plan.len());
    assert!(out.retry.is_empty() && !out.interrupted && out.failed == 0);

    let log = store.log();
    let first_share = log
        .iter()
        .position(|l| l.contains("NodePolicyShare"))
        .unwrap();
    assert!(log[..first_share]
        .iter()
        .all(|l| l.starts_with("apply AddressSetShard")));
    // peer-a's chain, last shard first.
    let a: Vec<&String> = log.iter().filter(|l| l.contains(" peer-a")).collect();
    let want: Vec<String> = chain_a
        .iter()
        .rev()
        .map(|s| {
            format!(
                "apply AddressSetShard {}",
                s.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(a, want.iter().collect::<Vec<_>>());
    let shards: usize = plan.shard_applies.iter().map(|(_, s)| s.len()).sum();
    assert!(shards > chain_a.len());
    assert_eq!(applied.shards.len(), shards);
    assert_eq!(applied.shares.len(), 2);
}

#[tokio::test]
async fn a_failed_shard_holds_back_its_set_and_the_share_naming_it_only() {
    let (ir, nodes) = (ir(), nodes());
    let plan = full_plan(&ir, &nodes);
    // The second shard written for peer-a (the one before the last) fails.
    let (_, a_shards) = plan
        .shard_applies
        .iter()
        .find(|(s, _)| s == "peer-a")
        .unwrap();
    let failing = a_shards[1].metadata.name.clone().unwrap();
    let store = Fake {
        fail: BTreeMap::from([(failing.clone(), false)]),
        ..Fake::default()
    };
    let mut applied = Applied::default();
    let m = metrics();
    let out = execute(&store, plan.clone(), &mut applied, &m, &|| true).await;

    let log = store.log();
    // Not retried (not retryable), and nothing before it in peer-a's chain
    // was written: those shards would name it.
    assert_eq!(log.iter().filter(|l| l.ends_with(&failing)).count(), 1);
    for s in &a_shards[2..] {
        let name = s.metadata.name.as_deref().unwrap();
        assert!(!log.iter().any(|l| l.ends_with(name)), "{name} written");
    }
    // peer-b and n2 went on; n1 (naming peer-a) waits.
    assert!(log.contains(&"apply AddressSetShard peer-b".to_string()));
    assert!(log.contains(&"apply NodePolicyShare n2".to_string()));
    assert!(!log.contains(&"apply NodePolicyShare n1".to_string()));
    assert_eq!(out.failed, 1);
    assert_eq!(out.retry.sets, BTreeSet::from(["peer-a".to_string()]));
    assert_eq!(out.retry.nodes, BTreeSet::from(["n1".to_string()]));
    assert!(applied.shares.contains_key("n2") && !applied.shares.contains_key("n1"));

    // The next pass (everything healthy) completes it.
    let inputs = Inputs {
        ir: &ir,
        node_addresses: &nodes,
        max_elements: MAX,
    };
    let next = desired::plan(&inputs, &out.retry, &applied);
    let out = execute(&Fake::default(), next, &mut applied, &m, &|| true).await;
    assert!(out.retry.is_empty());
    assert!(desired::plan(&inputs, &Dirty::all(), &applied).is_empty());
}

#[tokio::test]
async fn retryable_errors_are_tried_again() {
    let (ir, nodes) = (ir(), nodes());
    let mut plan = full_plan(&ir, &nodes);
    plan.shard_applies.clear();
    plan.share_applies
        .retain(|s| s.metadata.name.as_deref() == Some("n2"));
    let store = Fake {
        fail: BTreeMap::from([("n2".to_string(), true)]),
        ..Fake::default()
    };
    let out = execute(&store, plan, &mut Applied::default(), &metrics(), &|| true).await;
    assert_eq!(store.log().len(), ATTEMPTS as usize);
    assert_eq!(out.retry.nodes, BTreeSet::from(["n2".to_string()]));
}

#[tokio::test]
async fn a_gone_set_still_named_by_an_applied_share_is_kept() {
    let (ir, nodes) = (ir(), nodes());
    let mut applied = Applied::default();
    execute(
        &Fake::default(),
        full_plan(&ir, &nodes),
        &mut applied,
        &metrics(),
        &|| true,
    )
    .await;
    // A plan that deletes peer-b while n2's applied share names it (its
    // rewrite failed or was held back).
    let plan = Plan {
        shard_deletes: vec![ShardDeletes {
            set: "peer-b".into(),
            whole_set: true,
            names: vec!["peer-b".into()],
        }],
        ..Plan::default()
    };
    let store = Fake::default();
    let out = execute(&store, plan, &mut applied, &metrics(), &|| true).await;
    assert!(store.log().is_empty());
    assert_eq!(out.retry.sets, BTreeSet::from(["peer-b".to_string()]));
    assert!(applied.shards.contains_key("peer-b"));
}

#[tokio::test]
async fn stops_between_writes_when_told() {
    let (ir, nodes) = (ir(), nodes());
    let plan = full_plan(&ir, &nodes);
    let store = Fake::default();
    let budget = std::sync::atomic::AtomicUsize::new(2);
    let go_on = || {
        budget
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    };
    let mut applied = Applied::default();
    let out = execute(&store, plan, &mut applied, &metrics(), &go_on).await;
    assert!(out.interrupted);
    assert_eq!(store.log().len(), 2);
    assert_eq!(applied.shards.len(), 2);
}

#[test]
fn kube_errors_classify() {
    let api = |code| {
        WriteError::from(kube::Error::Api(Box::new(
            kube::core::Status::failure("x", "y").with_code(code),
        )))
    };
    assert!(api(500).retryable && api(429).retryable && api(409).retryable);
    assert!(!api(422).retryable && !api(403).retryable);
}
