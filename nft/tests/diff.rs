//! Diff: smallest batches, safe ordering (checked by the in-memory `apply`, which
//! refuses what the kernel refuses, and by `nft -c`), chunking.

#[path = "render_fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use fixture::*;
use nft::diff::{apply, diff, full_load, split, SplitError};
use nft::render::render_batch;
use nft::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// Dynamic sets' elements belong to the kernel: compare without them.
fn normalize(mut t: Table) -> Table {
    for s in t.sets.values_mut() {
        if s.flags.dynamic {
            s.elements.clear();
        }
    }
    t
}

/// Apply `diff(committed, desired)` in memory and check it reaches `desired`.
fn roundtrip(committed: &Table, desired: &Table) -> Batch {
    let b = diff(Some(committed), desired);
    let mut state = Some(committed.clone());
    apply(&mut state, &b).unwrap_or_else(|e| panic!("{e}\n{}", render_batch(&b)));
    assert_eq!(
        normalize(state.unwrap()),
        normalize(desired.clone()),
        "{}",
        render_batch(&b)
    );
    b
}

/// `nft -c` on the committed table's load followed by the diff, in one
/// transaction: the kernel checks every step of the diff against real state.
fn nft_check_diff(committed: &Table, desired: &Table) {
    let mut script = render_batch(&full_load(committed));
    script.push_str(&render_batch(&diff(Some(committed), desired)));
    nft_check(&script).unwrap();
}

fn op_index(b: &Batch, pred: impl Fn(&Op) -> bool) -> usize {
    b.ops
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("op not found in\n{}", render_batch(b)))
}

#[test]
fn no_op_diff_is_empty() {
    let t = representative();
    assert!(diff(Some(&t), &t).is_empty());
}

#[test]
fn full_load_reaches_desired() {
    let t = representative();
    let mut state = None;
    apply(&mut state, &full_load(&t)).unwrap();
    assert_eq!(state.unwrap(), normalize(t));
}

#[test]
fn element_add_and_remove_touch_only_elements() {
    let committed = representative();
    let mut desired = committed.clone();
    let peers = desired.sets.get_mut("peers-1").unwrap();
    peers.elements.remove(&key(&[val(v4("192.168.1.1"))]));
    peers
        .elements
        .insert(key(&[val(v4("192.168.1.7"))]), plain());
    let b = roundtrip(&committed, &desired);
    assert_eq!(
        b.ops,
        vec![
            Op::DeleteElements {
                set: "peers-1".into(),
                keys: vec![key(&[val(v4("192.168.1.1"))])],
            },
            Op::AddElements {
                set: "peers-1".into(),
                elements: vec![(key(&[val(v4("192.168.1.7"))]), plain())],
            },
        ]
    );
    nft_check_diff(&committed, &desired);
}

#[test]
fn map_value_change_is_delete_then_add_of_the_key() {
    let committed = representative();
    let mut desired = committed.clone();
    let k = key(&[val(Value::Mark(1))]);
    let new = ElemValue {
        data: Some(ElemData::Values(vec![v4("10.244.3.3"), Value::Port(8080)])),
        ..plain()
    };
    desired
        .sets
        .get_mut("svc-default-web-eps")
        .unwrap()
        .elements
        .insert(k.clone(), new.clone());
    let b = roundtrip(&committed, &desired);
    assert_eq!(
        b.ops,
        vec![
            Op::DeleteElements {
                set: "svc-default-web-eps".into(),
                keys: vec![k.clone()],
            },
            Op::AddElements {
                set: "svc-default-web-eps".into(),
                elements: vec![(k, new)],
            },
        ]
    );
    nft_check_diff(&committed, &desired);
}

#[test]
fn chain_change_rewrites_only_that_chain() {
    let committed = representative();
    let mut desired = committed.clone();
    desired.chains.get_mut("misc").unwrap().rules.pop();
    let b = roundtrip(&committed, &desired);
    assert_eq!(b.ops[0], Op::FlushChain("misc".into()));
    assert!(b.ops[1..]
        .iter()
        .all(|op| matches!(op, Op::AddRule { chain, .. } if chain == "misc")));
    assert_eq!(b.ops.len(), 1 + desired.chains["misc"].rules.len());
    nft_check_diff(&committed, &desired);
}

#[test]
fn new_chain_is_created_before_the_vmap_element_naming_it() {
    let committed = representative();
    let mut desired = committed.clone();
    desired.add_chain(chain(
        "pod-default-db",
        vec![Rule::new(vec![Expr::Verdict(Verdict::Accept)])],
    ));
    desired
        .sets
        .get_mut("pod-ingress")
        .unwrap()
        .elements
        .insert(
            key(&[val(v4("10.244.1.9"))]),
            verdict(Verdict::Jump("pod-default-db".into())),
        );
    let b = roundtrip(&committed, &desired);
    let chain_at = op_index(
        &b,
        |op| matches!(op, Op::AddChain(c) if c.name == "pod-default-db"),
    );
    let elem_at = op_index(
        &b,
        |op| matches!(op, Op::AddElements { set, .. } if set == "pod-ingress"),
    );
    assert!(chain_at < elem_at);
    assert!(!b.ops.iter().any(|op| matches!(op, Op::FlushChain(_))));
    nft_check_diff(&committed, &desired);
}

#[test]
fn removal_unreferences_before_deleting() {
    let committed = representative();
    let mut desired = committed.clone();
    // pod-default-web is named by vmap elements (`pod-ingress`, `class-chains`),
    // jumps in `misc` and uses peers-1.
    desired.chains.remove("pod-default-web");
    desired.sets.remove("peers-1");
    desired.sets.remove("peer-ports");
    desired.sets.remove("peers6");
    desired
        .sets
        .get_mut("pod-ingress")
        .unwrap()
        .elements
        .retain(|_, v| {
            !matches!(
                &v.data,
                Some(ElemData::Verdict(Verdict::Jump(_) | Verdict::Goto(_)))
            )
        });
    desired.chains.get_mut("misc").unwrap().rules.retain(|r| {
        !r.exprs
            .iter()
            .any(|e| matches!(e, Expr::Verdict(Verdict::Jump(_) | Verdict::Goto(_))))
    });
    // Its class-dispatch element goes too.
    desired
        .sets
        .get_mut("class-chains")
        .unwrap()
        .elements
        .clear();
    let b = roundtrip(&committed, &desired);
    let flush_misc = op_index(&b, |op| *op == Op::FlushChain("misc".into()));
    let del_elems = op_index(
        &b,
        |op| matches!(op, Op::DeleteElements { set, .. } if set == "pod-ingress"),
    );
    let del_set = op_index(&b, |op| *op == Op::DeleteSet("peers-1".into()));
    let del_chain = op_index(&b, |op| *op == Op::DeleteChain("pod-default-web".into()));
    assert!(flush_misc < del_chain && del_elems < del_chain && del_set < del_chain);
    nft_check_diff(&committed, &desired);
}

#[test]
fn set_header_change_recreates_set_and_rewrites_its_users() {
    let committed = representative();
    let mut desired = committed.clone();
    desired.sets.get_mut("peers-1").unwrap().comment = Some("renamed policy".into());
    let b = roundtrip(&committed, &desired);
    let flush = op_index(&b, |op| *op == Op::FlushChain("pod-default-web".into()));
    let del = op_index(&b, |op| *op == Op::DeleteSet("peers-1".into()));
    let add = op_index(&b, |op| matches!(op, Op::AddSet(s) if s.name == "peers-1"));
    let elems = op_index(
        &b,
        |op| matches!(op, Op::AddElements { set, .. } if set == "peers-1"),
    );
    let rule = op_index(
        &b,
        |op| matches!(op, Op::AddRule { chain, .. } if chain == "pod-default-web"),
    );
    assert!(flush < del && del < add && add < elems && elems < rule);
    // Chains that do not use the set are untouched.
    assert!(!b
        .ops
        .iter()
        .any(|op| *op == Op::FlushChain("forward".into())));
    nft_check_diff(&committed, &desired);
}

#[test]
fn regular_chain_header_change_recreates_it_and_its_referrers() {
    let committed = representative();
    let mut desired = committed.clone();
    desired.chains.get_mut("pod-default-web").unwrap().comment = Some("new".into());
    let b = roundtrip(&committed, &desired);
    // Named by pod-ingress elements: they are removed and re-added around it.
    assert!(b
        .ops
        .iter()
        .any(|op| matches!(op, Op::DeleteElements { set, .. } if set == "pod-ingress")));
    assert!(b.ops.iter().any(|op| *op == Op::FlushChain("misc".into())));
    nft_check_diff(&committed, &desired);
}

#[test]
fn base_chain_header_change_recreates_only_it() {
    let committed = representative();
    let mut desired = committed.clone();
    desired
        .chains
        .get_mut("input")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .priority = 10;
    let b = roundtrip(&committed, &desired);
    assert_eq!(b.ops[0], Op::FlushChain("input".into()));
    assert_eq!(b.ops[1], Op::DeleteChain("input".into()));
    assert!(matches!(&b.ops[2], Op::AddChain(c) if c.name == "input"));
    assert_eq!(b.ops.len(), 4);
    nft_check_diff(&committed, &desired);
}

#[test]
fn table_comment_change_reloads_the_table() {
    let committed = representative();
    let mut desired = committed.clone();
    desired.comment = Some("new comment".into());
    let b = roundtrip(&committed, &desired);
    assert_eq!(b.ops[0], Op::DeleteTable);
    assert!(matches!(b.ops[1], Op::AddTable { .. }));
    nft_check_diff(&committed, &desired);
}

#[test]
fn dynamic_set_elements_are_not_diffed() {
    let mut committed = representative();
    committed.sets.get_mut("seen").unwrap().elements.insert(
        key(&[val(v4("1.1.1.1")), val(v4("2.2.2.2"))]),
        ElemValue {
            timeout: Some(Duration::from_secs(10)),
            ..plain()
        },
    );
    assert!(diff(Some(&committed), &representative()).is_empty());
}

#[test]
fn split_chunks_an_add_only_load() {
    let t = representative();
    let whole = full_load(&t);
    let chunks = split(whole.clone(), 5).unwrap();
    let (last, rest) = chunks.split_last().unwrap();
    assert!(rest.iter().all(|c| c.message_count() <= 5));
    // Base chains and their rules wait for the final chunk.
    assert!(rest
        .iter()
        .flat_map(|c| &c.ops)
        .all(|op| !matches!(op, Op::AddChain(c) if c.base.is_some())));
    assert!(last
        .ops
        .iter()
        .all(|op| matches!(op, Op::AddChain(c) if c.base.is_some())
            || matches!(op, Op::AddRule { chain, .. } if t.chains[chain].base.is_some())));
    let mut state = None;
    for c in &chunks {
        apply(&mut state, c).unwrap();
    }
    assert_eq!(state.unwrap(), normalize(t));
    assert_eq!(
        chunks.iter().map(Batch::message_count).sum::<usize>(),
        whole.message_count()
    );
}

#[test]
fn split_refuses_deletions() {
    let committed = representative();
    let mut desired = committed.clone();
    desired.sets.remove("marks");
    desired.chains.get_mut("forward").unwrap().rules.remove(6);
    let b = diff(Some(&committed), &desired);
    assert!(matches!(split(b, 10), Err(SplitError::NotAddOnly { .. })));
}

// ---------------------------------------------------------------------------
// Property: diff + apply reaches desired, from any committed state.
// ---------------------------------------------------------------------------

const SETS: usize = 4;
const CHAINS: usize = 3;

/// One set slot: absent, or present with a header variant and elements.
fn set_strategy(i: usize) -> impl Strategy<Value = Option<Set>> {
    let elems = prop::collection::btree_map(0u8..8, 0u8..4, 0..6);
    (any::<bool>(), 0u8..2, elems).prop_map(move |(present, hdr, elems)| {
        if !present {
            return None;
        }
        let name = format!("s{i}");
        let mut s = match i {
            0 => set(&name, &[DataType::Ipv4Addr], None),
            1 => set(&name, &[DataType::Ipv4Addr], Some(SetData::Verdict)),
            2 => set(
                &name,
                &[DataType::Mark],
                Some(SetData::Values(vec![
                    DataType::Ipv4Addr,
                    DataType::InetService,
                ])),
            ),
            _ => {
                let mut s = set(&name, &[DataType::Ipv4Addr], None);
                s.flags.dynamic = true;
                s.flags.timeout = true;
                s
            }
        };
        // Header variants: interval flag on plain sets, a comment on the others.
        if hdr == 1 {
            if i == 0 {
                s.flags.interval = true;
            } else {
                s.comment = Some("v1".into());
            }
        }
        s.elements = elems
            .into_iter()
            .map(|(k, v)| {
                let ip = Value::Ipv4([10, 0, 0, k].into());
                let key = match i {
                    0 if s.flags.interval && k % 2 == 0 => {
                        KeyPart::prefix_v4([10, 1, k, 0].into(), 24)
                    }
                    2 => val(Value::Mark(u32::from(k))),
                    _ => val(ip.clone()),
                };
                let value = match i {
                    1 => verdict(match v {
                        0 => Verdict::Accept,
                        1 => Verdict::Drop,
                        n => Verdict::Jump(format!("c{}", n % 2)),
                    }),
                    2 => ElemValue {
                        data: Some(ElemData::Values(vec![ip, Value::Port(8000 + u16::from(v))])),
                        ..plain()
                    },
                    _ => ElemValue {
                        comment: (v == 3).then(|| "e".into()),
                        ..plain()
                    },
                };
                (vec![key], value)
            })
            .collect();
        Some(s)
    })
}

fn expr_strategy() -> impl Strategy<Value = Expr> {
    prop_oneof![
        // Type-correct references only, so that `nft -c` accepts the tables: s0 and
        // s3 hold addresses, s1 is a vmap; s2 (a NAT map) is used by no rule here.
        prop_oneof![Just("s0"), Just("s3")].prop_map(|s| m(
            &[Field::IpSaddr],
            MatchOp::Eq,
            Rhs::Set(s.into())
        )),
        Just(Expr::Vmap {
            key: MapKey::Fields(vec![Field::IpDaddr]),
            map: "s1".into()
        }),
        Just(Expr::SetUpdate {
            op: SetUpdateOp::Update,
            set: "s3".into(),
            key: vec![Field::IpSaddr],
            timeout: None
        }),
        (0..CHAINS).prop_map(|i| Expr::Verdict(Verdict::Jump(format!("c{i}")))),
        Just(Expr::Counter),
        Just(Expr::Verdict(Verdict::Accept)),
    ]
}

fn rules_strategy() -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec(
        (prop::collection::vec(expr_strategy(), 1..3), any::<bool>()).prop_map(|(exprs, c)| {
            let r = Rule::new(exprs);
            if c {
                r.with_comment("r")
            } else {
                r
            }
        }),
        0..3,
    )
}

/// Chains c0..c2 (regular) and `input` (base), with header variants.
fn chain_strategy(name: &'static str) -> impl Strategy<Value = Option<Chain>> {
    (any::<bool>(), 0u8..2, rules_strategy()).prop_map(move |(present, hdr, rules)| {
        if !present && name != "input" {
            return None;
        }
        let mut c = if name == "input" {
            base(name, ChainType::Filter, Hook::Input, i32::from(hdr), vec![])
        } else {
            let mut c = chain(name, vec![]);
            c.comment = (hdr == 1).then(|| "v1".into());
            c
        };
        c.rules = rules;
        Some(c)
    })
}

fn table_strategy() -> impl Strategy<Value = Table> {
    let sets: Vec<_> = (0..SETS).map(set_strategy).collect();
    let chains = vec![
        chain_strategy("c0"),
        chain_strategy("c1"),
        chain_strategy("c2"),
        chain_strategy("input"),
    ];
    (sets, chains, any::<bool>()).prop_map(|(sets, chains, comment)| {
        let mut t = Table::new(Family::Inet, "kube-nft");
        t.comment = comment.then(|| "t".into());
        for s in sets.into_iter().flatten() {
            t.add_set(s);
        }
        for c in chains.into_iter().flatten() {
            t.add_chain(c);
        }
        repair(t)
    })
}

/// Drop dangling references so the table is loadable: rules naming missing sets
/// or chains, jumps into a later chain (no loops: only jumps to a higher index),
/// and vmap elements naming missing chains.
fn repair(mut t: Table) -> Table {
    let sets: Vec<String> = t.sets.keys().cloned().collect();
    let chains: Vec<String> = t
        .chains
        .values()
        .filter(|c| c.base.is_none())
        .map(|c| c.name.clone())
        .collect();
    for (name, c) in t.chains.iter_mut() {
        for r in c.rules.iter_mut() {
            // nft refuses statements after a verdict.
            if let Some(i) = r
                .exprs
                .iter()
                .position(|e| matches!(e, Expr::Verdict(_) | Expr::Vmap { .. }))
            {
                r.exprs.truncate(i + 1);
            }
        }
        c.rules.retain(|r| {
            let refs = nft::diff::rule_refs(r);
            refs.sets.iter().all(|s| sets.iter().any(|x| x == s))
                && refs.chains.iter().all(|j| {
                    chains.iter().any(|x| x == j) && (name == "input" || *j > name.as_str())
                })
        });
    }
    for s in t.sets.values_mut() {
        s.elements.retain(|_, v| {
            nft::diff::elem_chain_ref(v).is_none_or(|c| chains.iter().any(|x| x == c))
        });
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn diff_then_apply_reaches_desired(committed in table_strategy(), desired in table_strategy()) {
        roundtrip(&committed, &desired);
        prop_assert!(diff(Some(&desired), &desired).is_empty());
    }

    #[test]
    fn split_full_load_reaches_desired(t in table_strategy(), max in 1usize..6) {
        let mut state = None;
        for c in split(full_load(&t), max).unwrap() {
            apply(&mut state, &c).unwrap();
        }
        prop_assert_eq!(state.unwrap(), normalize(t));
    }
}

#[test]
fn random_diffs_are_accepted_by_nft() {
    // A few proptest-shaped pairs through the real kernel checker (slow: a process each).
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..48 {
        let c = table_strategy().new_tree(&mut runner).unwrap().current();
        let d = table_strategy().new_tree(&mut runner).unwrap().current();
        nft_check_diff(&c, &d);
    }
}

#[test]
fn large_element_diff_is_linear_and_small() {
    let mut committed = Table::new(Family::Inet, "kube-nft");
    let mut s = set("big", &[DataType::Ipv4Addr], None);
    s.elements = (0..250_000u32)
        .map(|i| (vec![val(Value::Ipv4((0x0a00_0000 + i).into()))], plain()))
        .collect::<BTreeMap<_, _>>();
    committed.add_set(s);
    let mut desired = committed.clone();
    let big = desired.sets.get_mut("big").unwrap();
    big.elements
        .remove(&vec![val(Value::Ipv4(0x0a00_0005.into()))]);
    big.elements.insert(vec![val(v4("11.0.0.1"))], plain());
    let b = diff(Some(&committed), &desired);
    assert_eq!(b.message_count(), 2);
}

/// `apply` refuses to delete a chain that a rule still jumps to, as the kernel
/// would; `apply_acknowledged` is for batches the kernel already committed and
/// skips that whole-table scan, so it must not second-guess the same batch.
#[test]
fn acknowledged_apply_skips_the_reference_scan_only() {
    let mut t = Table::new(Family::Inet, "t");
    t.add_chain(Chain {
        name: "target".into(),
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "caller".into(),
        rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Jump(
            "target".into(),
        ))])],
        ..Default::default()
    });
    let mut b = Batch::new(Family::Inet, "t");
    b.ops.push(Op::DeleteChain("target".into()));

    let mut checked = Some(t.clone());
    let err = apply(&mut checked, &b).unwrap_err();
    assert!(err.to_string().contains("jump target"), "{err}");

    let mut acknowledged = Some(t);
    nft::diff::apply_acknowledged(&mut acknowledged, &b).unwrap();
    assert!(!acknowledged.unwrap().chains.contains_key("target"));

    // Everything else is still checked: deleting a missing chain fails.
    let mut missing = Some(Table::new(Family::Inet, "t"));
    assert!(nft::diff::apply_acknowledged(&mut missing, &b).is_err());
}
