use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::*;
use crate::ir::{AddressSet, IrNamedPort, IrPort, IrRule, PodPolicy, Protocol};
use crate::shard::shard;
use crate::structural_check::{schema_at, validate, violations};

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    let schema = version.schema.as_ref().unwrap().open_api_v3_schema.as_ref();
    serde_json::to_value(schema.unwrap()).unwrap()
}

fn crd(name: &str) -> CustomResourceDefinition {
    let all = crds();
    all.into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap()
}

/// A node share using every field and every peer kind.
fn full_node_policy() -> NodePolicy {
    let rule = |peers| IrRule {
        policy: "shop/allow".into(),
        rule_index: 1,
        peers,
        ports: vec![
            IrPort {
                protocol: Protocol::Tcp,
                port: Some(80),
                end_port: Some(90),
            },
            IrPort {
                protocol: Protocol::Sctp,
                port: None,
                end_port: None,
            },
        ],
        named_ports: vec![IrNamedPort {
            protocol: Protocol::Udp,
            name: "dns".into(),
            port: 53,
        }],
    };
    NodePolicy {
        node: "worker-1".into(),
        node_addresses: vec!["172.18.0.2".parse().unwrap(), "fc00::2".parse().unwrap()],
        pods: vec![PodPolicy {
            namespace: "shop".into(),
            name: "backend".into(),
            ips: vec!["10.244.1.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            ingress_isolated: true,
            egress_isolated: true,
            ingress: vec![rule(vec![
                IrPeer::Any,
                IrPeer::AddressSet {
                    name: "peer-1".into(),
                },
                IrPeer::Cidr {
                    cidr: "10.0.0.0/8".into(),
                    except: vec!["10.1.0.0/16".into()],
                },
            ])],
            egress: vec![rule(vec![
                IrPeer::AddressPortSet {
                    name: "ports-2".into(),
                },
                IrPeer::AddressSet {
                    name: "peer-1".into(),
                },
            ])],
        }],
    }
}

#[test]
fn crds_are_structural() {
    for crd in crds() {
        let problems = violations(&schema_of(&crd));
        assert!(
            problems.is_empty(),
            "{:?}:\n{}",
            crd.metadata.name,
            problems.join("\n")
        );
    }
}

#[test]
fn names_scope_and_subresources() {
    let names: Vec<_> = crds()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["addresssetshards.kubenft.io", "nodepolicyshares.kubenft.io"]
    );
    for crd in crds() {
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, VERSION);
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["kube-nft".to_string()])
        );
        assert!(
            crd.spec.versions[0].selectable_fields.is_none(),
            "not in v1.20"
        );
    }
    let nps = crd("nodepolicyshares.kubenft.io");
    assert_eq!(nps.spec.names.short_names, Some(vec!["nps".to_string()]));
    let status = nps.spec.versions[0]
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref());
    assert!(status.is_some(), "status subresource");
    let shard = crd("addresssetshards.kubenft.io");
    assert_eq!(
        shard.spec.names.short_names,
        Some(vec!["ashard".to_string()])
    );
}

/// A printer column pointing at a field the schema does not have shows
/// nothing, silently; its type must match the field too.
#[test]
fn printer_columns_point_at_schema_fields() {
    for crd in crds() {
        let schema = schema_of(&crd);
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap();
        let names: Vec<_> = columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"Age"), "{names:?}");
        for column in columns {
            if column.json_path.starts_with(".metadata.") {
                continue;
            }
            let field = schema_at(&schema, &column.json_path)
                .unwrap_or_else(|| panic!("{}: no field {}", column.name, column.json_path));
            assert_eq!(field["type"], column.type_.as_str(), "{}", column.name);
        }
    }
}

#[test]
fn full_objects_are_valid_and_nothing_is_pruned() {
    let mut share = NodePolicyShare::for_node(full_node_policy());
    share.status = Some(NodePolicyShareStatus {
        observed_generation: Some(3),
        enforced_generation: Some(2),
        enforced_time: Some(Time(Timestamp::from_second(1_700_000_000).unwrap())),
        conditions: vec![Condition {
            type_: ENFORCED_CONDITION.into(),
            status: "False".into(),
            reason: "NetlinkError".into(),
            message: "EBUSY".into(),
            last_transition_time: Time(Timestamp::from_second(1_700_000_000).unwrap()),
            observed_generation: Some(3),
        }],
    });
    let value = serde_json::to_value(&share).unwrap();
    let problems = validate(&value, &schema_of(&crd("nodepolicyshares.kubenft.io")));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let back: NodePolicyShare = serde_json::from_value(value).unwrap();
    assert_eq!(back, share);

    let elements = (0..300u32)
        .map(|i| crate::ir::AddressSetElement {
            ip: std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            protocol: (i % 2 == 0).then_some(Protocol::Tcp),
            port: (i % 2 == 0).then_some(8080),
        })
        .collect();
    let set = AddressSet {
        name: "ports-2".into(),
        selector: "any".into(),
        elements,
    };
    let shards = shard(&BTreeMap::from([("ports-2".to_string(), set)]), 100);
    assert!(shards.iter().any(|s| s.spec.next.is_some()));
    let schema = schema_of(&crd("addresssetshards.kubenft.io"));
    for s in &shards {
        let problems = validate(&serde_json::to_value(s).unwrap(), &schema);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
fn node_share_is_named_after_the_node_and_counts() {
    let share = NodePolicyShare::for_node(full_node_policy());
    assert_eq!(share.metadata.name.as_deref(), Some("worker-1"));
    let summary = &share.spec.summary;
    assert_eq!(
        (summary.pods, summary.rules, summary.address_sets),
        (1, 2, 2)
    );
    let sets: Vec<_> = referenced_sets(&share.spec.policy).into_iter().collect();
    assert_eq!(sets, ["peer-1", "ports-2"]);
    // The IR fields sit directly in the spec.
    let spec = serde_json::to_value(&share.spec).unwrap();
    assert_eq!(spec["node"], "worker-1");
    assert_eq!(spec["pods"][0]["ingress"][0]["peers"][2]["kind"], "cidr");
}

/// The checker itself: each of these is something a v1.20 server refuses.
#[test]
fn checker_flags_non_structural_schemas() {
    let bad = [
        json!({"type": "object", "properties": {"a": {}}}),
        json!({"type": "object", "properties": {"a": {"type": ["string", "null"]}}}),
        json!({"type": "object", "oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}}]}),
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
        json!({"type": "object", "properties": {"a": {"type": "string", "enum": ["x", null]}}}),
        json!({"type": "object", "properties": {"a": {"type": "string", "const": "x"}}}),
        json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}}),
        json!({"type": "object", "x-kubernetes-validations": [{"rule": "true"}]}),
        json!({"type": "object", "properties": {"a": {"type": "string", "format": "ip"}}}),
        json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}}}),
        json!({"type": "object", "required": ["a"]}),
        json!({"type": "object", "properties": {"l": {"type": "array", "x-kubernetes-list-type": "map",
               "items": {"type": "object", "properties": {"k": {"type": "string"}}}}}}),
        json!({"type": "object", "anyOf": [{"properties": {"b": {"enum": ["x"]}}}]}),
    ];
    for schema in bad {
        assert!(!violations(&schema).is_empty(), "accepted {schema}");
    }
    let good = json!({"type": "object", "required": ["kind"],
        "properties": {"kind": {"type": "string", "enum": ["a", "b"]}, "n": {"type": "integer"}},
        "anyOf": [{"required": ["n"]}, {"properties": {"kind": {"enum": ["a"]}}}]});
    assert_eq!(violations(&good), Vec::<String>::new());

    let pruned = validate(
        &json!({"spec": {"kind": "a", "extra": 1}}),
        &json!({
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {"kind": {"type": "string"}}}}
        }),
    );
    assert_eq!(pruned, [".spec.extra: not in the schema, would be pruned"]);
}
