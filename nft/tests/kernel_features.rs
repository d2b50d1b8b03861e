//! Every model feature loads through netlink and reads back equal; incremental
//! element changes; failing batches name their op and change nothing; generation
//! ids; and the netlink path lists exactly like `nft -f` of the rendered text.

use std::time::Duration;

use nft::netlink::{replace_table_batch, Conn, Error};
use nft::testing::NetNs;
use nft::*;

fn ip(s: &str) -> Value {
    Value::Ipv4(s.parse().unwrap())
}
fn ip6(s: &str) -> Value {
    Value::Ipv6(s.parse().unwrap())
}
fn m(left: Vec<Field>, op: MatchOp, right: Rhs) -> Expr {
    Expr::Match { left, op, right }
}
fn val(v: Value) -> KeyPart {
    KeyPart::Value(v)
}
fn plain() -> ElemValue {
    ElemValue::default()
}
fn base(kind: ChainType, hook: Hook, priority: i32, policy: ChainPolicy) -> Option<BaseChain> {
    Some(BaseChain {
        kind,
        hook,
        priority,
        policy,
    })
}

fn load(conn: &mut Conn, t: &Table) {
    conn.apply(&replace_table_batch(t))
        .unwrap_or_else(|e| panic!("load failed: {e}"));
}

fn read(conn: &mut Conn, t: &Table) -> Table {
    conn.read_table(t.family, &t.name)
        .unwrap()
        .expect("table exists")
}

/// A table using every expression and set kind of the model.
fn full_table() -> Table {
    let mut t = Table::new(Family::Inet, "kube-nft");
    t.comment = Some("managed by kube-nft".into());

    let mut cidrs = Set {
        name: "peers-v4".into(),
        key: vec![DataType::Ipv4Addr],
        flags: SetFlags {
            interval: true,
            ..Default::default()
        },
        comment: Some("policy ns/p peers".into()),
        ..Default::default()
    };
    for (a, l) in [("10.0.0.0", 8), ("192.168.1.0", 24), ("255.255.255.0", 24)] {
        cidrs
            .elements
            .insert(vec![KeyPart::prefix_v4(a.parse().unwrap(), l)], plain());
    }
    cidrs.elements.insert(
        vec![val(ip("172.16.0.1"))],
        ElemValue {
            comment: Some("single".into()),
            ..plain()
        },
    );
    // Adjacent ranges stay apart (no auto-merge).
    cidrs.elements.insert(
        vec![KeyPart::prefix_v4("11.0.0.0".parse().unwrap(), 8)],
        plain(),
    );
    t.add_set(cidrs);

    let mut v6 = Set {
        name: "peers-v6".into(),
        key: vec![DataType::Ipv6Addr],
        flags: SetFlags {
            interval: true,
            ..Default::default()
        },
        ..Default::default()
    };
    v6.elements.insert(
        vec![KeyPart::prefix_v6("fd00::".parse().unwrap(), 64)],
        plain(),
    );
    v6.elements.insert(vec![val(ip6("2001:db8::1"))], plain());
    t.add_set(v6);

    let mut ports = Set {
        name: "ports".into(),
        key: vec![DataType::InetService],
        ..Default::default()
    };
    ports.elements.insert(vec![val(Value::Port(80))], plain());
    ports.elements.insert(vec![val(Value::Port(443))], plain());
    t.add_set(ports);

    let mut ifs = Set {
        name: "ifaces".into(),
        key: vec![DataType::IfName],
        ..Default::default()
    };
    ifs.elements
        .insert(vec![val(Value::IfName("eth0".into()))], plain());
    t.add_set(ifs);

    // Concatenated interval set (pipapo): addr-range . proto . port.
    let mut pairs = Set {
        name: "allow-pairs".into(),
        key: vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        flags: SetFlags {
            interval: true,
            ..Default::default()
        },
        ..Default::default()
    };
    pairs.elements.insert(
        vec![
            KeyPart::prefix_v4("10.1.0.0".parse().unwrap(), 16),
            val(Value::Proto(proto::TCP)),
            KeyPart::Range(Value::Port(8000), Value::Port(8080)),
        ],
        plain(),
    );
    pairs.elements.insert(
        vec![
            val(ip("10.2.0.5")),
            val(Value::Proto(proto::UDP)),
            val(Value::Port(53)),
        ],
        ElemValue {
            comment: Some("dns".into()),
            ..plain()
        },
    );
    t.add_set(pairs);

    // Services: vip . proto . port : verdict.
    let mut svc = Set {
        name: "services".into(),
        key: vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        data: Some(SetData::Verdict),
        comment: Some("service dispatch".into()),
        ..Default::default()
    };
    svc.elements.insert(
        vec![
            val(ip("10.96.0.10")),
            val(Value::Proto(proto::TCP)),
            val(Value::Port(80)),
        ],
        ElemValue {
            data: Some(ElemData::Verdict(Verdict::Goto("svc-a".into()))),
            comment: Some("default/web:http".into()),
            ..plain()
        },
    );
    svc.elements.insert(
        vec![
            val(ip("10.96.0.11")),
            val(Value::Proto(proto::UDP)),
            val(Value::Port(53)),
        ],
        ElemValue {
            data: Some(ElemData::Verdict(Verdict::Drop)),
            ..plain()
        },
    );
    t.add_set(svc);

    // Endpoints: numgen index → addr . port.
    let mut eps = Set {
        name: "svc-a-eps".into(),
        key: vec![DataType::Mark],
        data: Some(SetData::Values(vec![
            DataType::Ipv4Addr,
            DataType::InetService,
        ])),
        ..Default::default()
    };
    for (i, a) in ["10.244.1.2", "10.244.2.3"].iter().enumerate() {
        eps.elements.insert(
            vec![val(Value::Mark(i as u32))],
            ElemValue {
                data: Some(ElemData::Values(vec![ip(a), Value::Port(8080)])),
                ..plain()
            },
        );
    }
    t.add_set(eps);

    // Address-only map, v6.
    let mut snat6 = Set {
        name: "snat6".into(),
        key: vec![DataType::Ipv6Addr],
        data: Some(SetData::Values(vec![DataType::Ipv6Addr])),
        ..Default::default()
    };
    snat6.elements.insert(
        vec![val(ip6("fd00::1"))],
        ElemValue {
            data: Some(ElemData::Values(vec![ip6("2001:db8::5")])),
            ..plain()
        },
    );
    t.add_set(snat6);

    // Verdict map keyed by numgen.
    let mut pick = Set {
        name: "svc-b-pick".into(),
        key: vec![DataType::Mark],
        data: Some(SetData::Verdict),
        ..Default::default()
    };
    for i in 0..2u32 {
        pick.elements.insert(
            vec![val(Value::Mark(i))],
            ElemValue {
                data: Some(ElemData::Verdict(Verdict::Jump(format!("ep-{i}")))),
                ..plain()
            },
        );
    }
    t.add_set(pick);

    // Pod dispatch: ip daddr : verdict, with an interval key.
    let mut pods = Set {
        name: "pods".into(),
        key: vec![DataType::Ipv4Addr],
        data: Some(SetData::Verdict),
        flags: SetFlags {
            interval: true,
            ..Default::default()
        },
        ..Default::default()
    };
    pods.elements.insert(
        vec![KeyPart::prefix_v4("10.244.1.0".parse().unwrap(), 24)],
        ElemValue {
            data: Some(ElemData::Verdict(Verdict::Jump("pod-a".into()))),
            ..plain()
        },
    );
    t.add_set(pods);
    t.add_chain(Chain {
        name: "pod-a".into(),
        comment: Some("ns/pod-a".into()),
        rules: vec![Rule::new(vec![
            Expr::Counter,
            Expr::Verdict(Verdict::Accept),
        ])],
        ..Default::default()
    });

    // Dynamic set with timeouts.
    let mut seen = Set {
        name: "seen".into(),
        key: vec![DataType::Ipv4Addr, DataType::InetService],
        flags: SetFlags {
            timeout: true,
            dynamic: true,
            ..Default::default()
        },
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    seen.elements.insert(
        vec![val(ip("10.0.0.9")), val(Value::Port(22))],
        ElemValue {
            timeout: Some(Duration::from_secs(3600)),
            ..plain()
        },
    );
    t.add_set(seen);

    let accept = Expr::Verdict(Verdict::Accept);
    t.add_chain(Chain {
        name: "filter-forward".into(),
        base: base(ChainType::Filter, Hook::Forward, 0, ChainPolicy::Drop),
        comment: Some("policy enforcement".into()),
        rules: vec![
            Rule::new(vec![
                m(
                    vec![Field::CtState],
                    MatchOp::Eq,
                    Rhs::Bits(ct_state::ESTABLISHED | ct_state::RELATED),
                ),
                accept.clone(),
            ]),
            Rule::new(vec![
                m(
                    vec![Field::CtState],
                    MatchOp::Eq,
                    Rhs::Bits(ct_state::INVALID),
                ),
                Expr::Verdict(Verdict::Drop),
            ]),
            Rule::new(vec![
                m(
                    vec![Field::IpSaddr],
                    MatchOp::Neq,
                    Rhs::Set("peers-v4".into()),
                ),
                m(vec![Field::ThDport], MatchOp::Eq, Rhs::Set("ports".into())),
                Expr::Log {
                    prefix: Some("kn-deny ".into()),
                    group: None,
                },
                Expr::Reject(RejectKind::IcmpxAdminProhibited),
            ])
            .with_comment("default/deny-all"),
            Rule::new(vec![
                m(
                    vec![Field::L4Proto],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::Proto(proto::TCP)]),
                ),
                m(
                    vec![Field::ThDport],
                    MatchOp::Eq,
                    Rhs::Range(Value::Port(8000), Value::Port(8080)),
                ),
                Expr::Reject(RejectKind::TcpReset),
            ]),
            Rule::new(vec![
                m(
                    vec![Field::IpSaddr, Field::L4Proto, Field::ThDport],
                    MatchOp::Eq,
                    Rhs::Set("allow-pairs".into()),
                ),
                Expr::Counter,
                accept.clone(),
            ]),
            Rule::new(vec![
                m(
                    vec![Field::Ip6Saddr],
                    MatchOp::Eq,
                    Rhs::Set("peers-v6".into()),
                ),
                m(
                    vec![Field::ThSport],
                    MatchOp::Neq,
                    Rhs::Value(vec![Value::Port(1)]),
                ),
                Expr::Log {
                    prefix: None,
                    group: Some(3),
                },
                accept.clone(),
            ]),
            Rule::new(vec![
                m(vec![Field::IifName], MatchOp::Eq, Rhs::Set("ifaces".into())),
                m(
                    vec![Field::OifName],
                    MatchOp::Neq,
                    Rhs::Value(vec![Value::IfName("veth*".into())]),
                ),
                m(vec![Field::Mark], MatchOp::Eq, Rhs::Bits(0x4000)),
                m(
                    vec![Field::CtMark],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::Mark(7)]),
                ),
                m(
                    vec![Field::CtStatus],
                    MatchOp::Eq,
                    Rhs::Bits(ct_status::DNAT),
                ),
                Expr::Verdict(Verdict::Continue),
            ]),
            Rule::new(vec![
                m(
                    vec![Field::IpDaddr, Field::ThDport],
                    MatchOp::Eq,
                    Rhs::Value(vec![ip("10.0.0.1"), Value::Port(53)]),
                ),
                m(
                    vec![Field::NfProto],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::NfProto(2)]),
                ),
                m(
                    vec![Field::Mark],
                    MatchOp::Neq,
                    Rhs::Range(Value::Mark(10), Value::Mark(20)),
                ),
                Expr::SetUpdate {
                    op: SetUpdateOp::Update,
                    set: "seen".into(),
                    key: vec![Field::IpSaddr, Field::ThDport],
                    timeout: Some(Duration::from_secs(30)),
                },
                Expr::SetUpdate {
                    op: SetUpdateOp::Add,
                    set: "seen".into(),
                    key: vec![Field::IpDaddr, Field::ThSport],
                    timeout: None,
                },
            ]),
            Rule::new(vec![Expr::Vmap {
                key: MapKey::Fields(vec![Field::IpDaddr]),
                map: "pods".into(),
            }]),
            Rule::new(vec![
                m(
                    vec![Field::FibDaddrType],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::AddrType(addr_type::LOCAL)]),
                ),
                Expr::Verdict(Verdict::Return),
            ]),
        ],
    });
    t.add_chain(Chain {
        name: "nat-prerouting".into(),
        base: base(ChainType::Nat, Hook::Prerouting, -100, ChainPolicy::Accept),
        rules: vec![Rule::new(vec![Expr::Vmap {
            key: MapKey::Fields(vec![Field::IpDaddr, Field::L4Proto, Field::ThDport]),
            map: "services".into(),
        }])],
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "svc-a".into(),
        comment: Some("default/web".into()),
        rules: vec![Rule::new(vec![
            Expr::SetMarkBits(0x4000),
            m(
                vec![Field::L4Proto],
                MatchOp::Eq,
                Rhs::Value(vec![Value::Proto(proto::TCP)]),
            ),
            Expr::Dnat {
                family: NatFamily::Ip,
                to: NatTarget::Map {
                    key: MapKey::NumgenRandom { modulus: 2 },
                    map: "svc-a-eps".into(),
                },
            },
        ])],
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "svc-b".into(),
        rules: vec![Rule::new(vec![Expr::Vmap {
            key: MapKey::NumgenRandom { modulus: 2 },
            map: "svc-b-pick".into(),
        }])],
        ..Default::default()
    });
    for i in 0..2 {
        t.add_chain(Chain {
            name: format!("ep-{i}"),
            rules: vec![Rule::new(vec![
                m(
                    vec![Field::L4Proto],
                    MatchOp::Eq,
                    Rhs::Value(vec![Value::Proto(proto::TCP)]),
                ),
                Expr::Dnat {
                    family: NatFamily::Ip,
                    to: NatTarget::Addr {
                        addr: ip(&format!("10.244.{i}.9")),
                        port: Some(8080),
                    },
                },
            ])],
            ..Default::default()
        });
    }
    t.add_chain(Chain {
        name: "nat-postrouting".into(),
        base: base(ChainType::Nat, Hook::Postrouting, 100, ChainPolicy::Accept),
        rules: vec![
            Rule::new(vec![
                m(vec![Field::Mark], MatchOp::Eq, Rhs::Bits(0x4000)),
                Expr::Masquerade { fully_random: true },
            ]),
            Rule::new(vec![
                m(
                    vec![Field::IpSaddr],
                    MatchOp::Eq,
                    Rhs::Set("peers-v4".into()),
                ),
                Expr::Masquerade {
                    fully_random: false,
                },
            ]),
            Rule::new(vec![Expr::Snat {
                family: NatFamily::Ip6,
                to: NatTarget::Map {
                    key: MapKey::Fields(vec![Field::Ip6Saddr]),
                    map: "snat6".into(),
                },
            }]),
            Rule::new(vec![Expr::Snat {
                family: NatFamily::Ip,
                to: NatTarget::Addr {
                    addr: ip("192.0.2.1"),
                    port: None,
                },
            }]),
        ],
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "input".into(),
        base: base(ChainType::Filter, Hook::Input, -10, ChainPolicy::Accept),
        rules: vec![Rule::new(vec![
            m(
                vec![Field::ThDport],
                MatchOp::Eq,
                Rhs::Value(vec![Value::Port(9)]),
            ),
            Expr::Reject(RejectKind::IcmpxPortUnreachable),
        ])],
        ..Default::default()
    });
    t
}

#[test]
fn every_feature_roundtrips() {
    let ns = NetNs::new("features").unwrap();
    let mut conn = ns.conn().unwrap();
    let t = full_table();
    load(&mut conn, &t);
    let got = read(&mut conn, &t);
    for (name, s) in &t.sets {
        assert_eq!(got.sets.get(name), Some(s), "set {name}");
    }
    for (name, c) in &t.chains {
        assert_eq!(got.chains.get(name), Some(c), "chain {name}");
    }
    assert_eq!(got, t);
}

#[test]
fn ip_family_tables_roundtrip() {
    let ns = NetNs::new("ipfam").unwrap();
    let mut conn = ns.conn().unwrap();
    let mut t = Table::new(Family::Ip, "kn4");
    t.add_chain(Chain {
        name: "out".into(),
        base: base(ChainType::Filter, Hook::Output, 0, ChainPolicy::Accept),
        rules: vec![Rule::new(vec![
            m(
                vec![Field::IpDaddr],
                MatchOp::Eq,
                Rhs::Value(vec![ip("10.0.0.1")]),
            ),
            Expr::Verdict(Verdict::Drop),
        ])],
        ..Default::default()
    });
    load(&mut conn, &t);
    assert_eq!(read(&mut conn, &t), t);
    let mut t6 = Table::new(Family::Ip6, "kn6");
    t6.add_chain(Chain {
        name: "out".into(),
        base: base(ChainType::Filter, Hook::Output, 0, ChainPolicy::Accept),
        rules: vec![Rule::new(vec![
            m(
                vec![Field::Ip6Daddr],
                MatchOp::Eq,
                Rhs::Value(vec![ip6("fd00::1")]),
            ),
            Expr::Verdict(Verdict::Drop),
        ])],
        ..Default::default()
    });
    load(&mut conn, &t6);
    assert_eq!(read(&mut conn, &t6), t6);
}

#[test]
fn incremental_elements_and_flush() {
    let ns = NetNs::new("incr").unwrap();
    let mut conn = ns.conn().unwrap();
    let mut t = full_table();
    load(&mut conn, &t);

    let mut b = Batch::new(t.family, t.name.clone());
    let new_cidr = vec![KeyPart::prefix_v4("100.64.0.0".parse().unwrap(), 10)];
    let gone = vec![KeyPart::prefix_v4("192.168.1.0".parse().unwrap(), 24)];
    let new_pair = vec![
        val(ip("10.3.0.1")),
        val(Value::Proto(proto::TCP)),
        KeyPart::Range(Value::Port(1), Value::Port(1024)),
    ];
    let new_svc = vec![
        val(ip("10.96.0.12")),
        val(Value::Proto(proto::TCP)),
        val(Value::Port(443)),
    ];
    let svc_value = ElemValue {
        data: Some(ElemData::Verdict(Verdict::Jump("svc-b".into()))),
        ..plain()
    };
    b.ops.push(Op::AddElements {
        set: "peers-v4".into(),
        elements: vec![(new_cidr.clone(), plain())],
    });
    b.ops.push(Op::DeleteElements {
        set: "peers-v4".into(),
        keys: vec![gone.clone()],
    });
    b.ops.push(Op::AddElements {
        set: "allow-pairs".into(),
        elements: vec![(new_pair.clone(), plain())],
    });
    b.ops.push(Op::AddElements {
        set: "services".into(),
        elements: vec![(new_svc.clone(), svc_value.clone())],
    });
    b.ops.push(Op::FlushSet("ports".into()));
    // A fresh connection knows no set headers: it must fetch them from the kernel.
    let mut fresh = ns.conn().unwrap();
    fresh.apply(&b).unwrap();

    let sets = &mut t.sets;
    let v4 = sets.get_mut("peers-v4").unwrap();
    v4.elements.insert(new_cidr, plain());
    v4.elements.remove(&gone);
    sets.get_mut("allow-pairs")
        .unwrap()
        .elements
        .insert(new_pair.clone(), plain());
    sets.get_mut("services")
        .unwrap()
        .elements
        .insert(new_svc, svc_value);
    sets.get_mut("ports").unwrap().elements.clear();
    assert_eq!(read(&mut conn, &t), t);

    // Delete a concatenated-interval element and a chain's rules.
    let mut b = Batch::new(t.family, t.name.clone());
    b.ops.push(Op::DeleteElements {
        set: "allow-pairs".into(),
        keys: vec![new_pair.clone()],
    });
    b.ops.push(Op::FlushChain("nat-postrouting".into()));
    conn.apply(&b).unwrap();
    t.sets
        .get_mut("allow-pairs")
        .unwrap()
        .elements
        .remove(&new_pair);
    t.chains.get_mut("nat-postrouting").unwrap().rules.clear();
    assert_eq!(read(&mut conn, &t), t);
}

#[test]
fn failed_batch_names_op_and_changes_nothing() {
    let ns = NetNs::new("atomic").unwrap();
    let mut conn = ns.conn().unwrap();
    let t = full_table();
    load(&mut conn, &t);
    let gen = conn.generation().unwrap();

    // Valid ops, then a jump to a missing chain.
    let mut b = Batch::new(t.family, t.name.clone());
    b.ops.push(Op::AddElements {
        set: "ports".into(),
        elements: vec![(vec![val(Value::Port(8443))], plain())],
    });
    b.ops.push(Op::AddRule {
        chain: "svc-a".into(),
        rule: Rule::new(vec![Expr::Counter]),
    });
    b.ops.push(Op::AddRule {
        chain: "input".into(),
        rule: Rule::new(vec![Expr::Verdict(Verdict::Jump("no-such-chain".into()))]),
    });
    let err = conn.apply(&b).unwrap_err();
    assert_eq!(err.op_index(), Some(2), "{err}");
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("add rule to chain input"), "{text}");
    assert_eq!(read(&mut conn, &t), t);
    assert_eq!(conn.generation().unwrap(), gen, "nothing committed");

    // An element for a missing set, after valid ops.
    let mut b = Batch::new(t.family, t.name.clone());
    b.ops.push(Op::FlushSet("ports".into()));
    b.ops.push(Op::AddSet(Set {
        name: "late".into(),
        key: vec![DataType::Ipv4Addr],
        ..Default::default()
    }));
    let mut enc = nft::netlink::encode_batch(&b, Some(&t)).unwrap();
    // Encoded against a stale view: the set exists for the encoder, not the kernel.
    let mut stale = t.clone();
    stale.add_set(Set {
        name: "ghost".into(),
        key: vec![DataType::Ipv4Addr],
        ..Default::default()
    });
    b.ops.push(Op::AddElements {
        set: "ghost".into(),
        elements: vec![(vec![val(ip("1.1.1.1"))], plain())],
    });
    enc = nft::netlink::encode_batch(&b, Some(&stale)).unwrap_or(enc);
    let err = conn.send(&enc).unwrap_err();
    assert_eq!(err.op_index(), Some(2), "{err}");
    assert_eq!(err.errno(), Some(libc_enoent()), "{err}");
    assert!(err.to_string().contains("set ghost"), "{err}");
    assert_eq!(read(&mut conn, &t), t);

    // The encoder refuses data that cannot be right, naming the op.
    let mut b = Batch::new(t.family, t.name.clone());
    b.ops.push(Op::AddRule {
        chain: "input".into(),
        rule: Rule::new(vec![m(
            vec![Field::ThDport],
            MatchOp::Eq,
            Rhs::Value(vec![ip("1.2.3.4")]),
        )]),
    });
    let err = conn.apply(&b).unwrap_err();
    assert!(matches!(err, Error::Encode { op: 0, .. }), "{err}");
}

fn libc_enoent() -> i32 {
    2
}

#[test]
fn generation_moves_on_commit_only() {
    let ns = NetNs::new("gen").unwrap();
    let mut conn = ns.conn().unwrap();
    let g0 = conn.generation().unwrap();
    let t = full_table();
    load(&mut conn, &t);
    let g1 = conn.generation().unwrap();
    assert_ne!(g0, g1);
    assert_eq!(conn.generation().unwrap(), g1, "reads do not move it");
    let _ = read(&mut conn, &t);
    assert_eq!(conn.generation().unwrap(), g1);
    ns.nft(&["add", "table", "ip", "other"]).unwrap();
    assert_ne!(conn.generation().unwrap(), g1, "another writer moves it");
    // Absent tables read back as None.
    assert_eq!(conn.read_table(Family::Ip, "absent").unwrap(), None);
}

#[test]
fn conn_works_from_a_dedicated_thread() {
    let ns = NetNs::new("thread").unwrap();
    let t = full_table();
    // Batches are Send: encode here, send from the thread that owns the Conn.
    let enc = nft::netlink::encode_batch(&replace_table_batch(&t), None).unwrap();
    let path = ns.path().to_path_buf();
    let got = std::thread::spawn(move || {
        let mut conn = Conn::open_in_netns(&path).unwrap();
        conn.send(&enc).unwrap();
        conn.read_table(Family::Inet, "kube-nft").unwrap().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(got, t);
    // The root namespace was not touched: this thread's own netns has no such table.
    let own = Conn::open()
        .unwrap()
        .read_table(
            Family::Inet,
            &format!("kube-nft-absent-{}", std::process::id()),
        )
        .unwrap();
    assert_eq!(own, None);
}

#[test]
fn netlink_lists_like_nft_f_of_rendered_text() {
    let a = NetNs::new("cmp-nl").unwrap();
    let b = NetNs::new("cmp-text").unwrap();
    let t = comparable_table();
    load(&mut a.conn().unwrap(), &t);
    b.nft_load(&nft::render::render_text(&t)).unwrap();
    let la = without_expiry(&a.nft(&["list", "table", "inet", "kube-nft"]).unwrap());
    let lb = without_expiry(&b.nft(&["list", "table", "inet", "kube-nft"]).unwrap());
    if la != lb {
        let diff: Vec<String> = la
            .lines()
            .zip(lb.lines())
            .filter(|(x, y)| x != y)
            .map(|(x, y)| format!("netlink: {x}\nnft -f:  {y}"))
            .collect();
        panic!(
            "listings differ ({} vs {} lines):\n{}\n--- netlink ---\n{la}\n--- nft -f ---\n{lb}",
            la.lines().count(),
            lb.lines().count(),
            diff.join("\n")
        );
    }
}

/// Element expiry counts down between the two listings.
fn without_expiry(s: &str) -> String {
    s.split(' ')
        .scan(false, |skip, w| {
            let out = if *skip { None } else { Some(w) };
            *skip = w == "expires";
            Some(if w == "expires" { None } else { out })
        })
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `full_table` minus what `nft -f` cannot express the same way (known gaps):
/// - maps keyed by numgen: nft text needs `typeof numgen …` (key type integer plus
///   typeof userdata), the model says `mark`;
/// - a concatenated literal (`ip daddr . th dport 10.0.0.1 . 53`): nft 1.0.6 only
///   accepts it as an anonymous set, netlink sends a plain compare.
fn comparable_table() -> Table {
    let mut t = full_table();
    for n in ["svc-a-eps", "svc-b-pick"] {
        t.sets.remove(n);
    }
    for n in ["svc-a", "svc-b"] {
        t.chains.get_mut(n).unwrap().rules.clear();
    }
    if let Some(ElemValue {
        data: Some(ElemData::Verdict(v)),
        ..
    }) = t
        .sets
        .get_mut("services")
        .unwrap()
        .elements
        .values_mut()
        .next()
    {
        *v = Verdict::Accept;
    }
    for r in &mut t.chains.get_mut("filter-forward").unwrap().rules {
        r.exprs.retain(
            |e| !matches!(e, Expr::Match { left, right: Rhs::Value(_), .. } if left.len() > 1),
        );
    }
    t
}

#[test]
fn diff_batches_apply_and_read_back() {
    let ns = NetNs::new("diff").unwrap();
    let mut conn = ns.conn().unwrap();
    let mut t = full_table();
    // diff leaves elements of dynamic sets to the kernel (model docs).
    t.sets.get_mut("seen").unwrap().elements.clear();
    conn.apply(&nft::diff::full_load(&t))
        .unwrap_or_else(|e| panic!("full_load: {e}"));
    assert_eq!(read(&mut conn, &t), t);
    let mut t2 = t.clone();
    t2.sets
        .get_mut("ports")
        .unwrap()
        .elements
        .insert(vec![val(Value::Port(8443))], plain());
    t2.chains.remove("input");
    conn.apply(&nft::diff::diff(Some(&t), &t2))
        .unwrap_or_else(|e| panic!("diff: {e}"));
    assert_eq!(read(&mut conn, &t2), t2);
}

/// Services grouped by endpoint count: a map keyed `ip daddr . meta l4proto .
/// th dport . numgen random mod N`, one DNAT rule per N. Netlink load reads back
/// equal; `nft -f` of the rendered text loads too and lists the same rule; the
/// netlink-loaded rule uses the registers nft uses (fields in 1/9/10, numgen 11).
#[test]
fn fields_and_numgen_map_roundtrips() {
    let key = |vip: &str, i: u32| {
        vec![
            val(ip(vip)),
            val(Value::Proto(proto::TCP)),
            val(Value::Port(80)),
            val(Value::Mark(i)),
        ]
    };
    let to = |ep: &str| ElemValue {
        data: Some(ElemData::Values(vec![ip(ep), Value::Port(8080)])),
        ..plain()
    };
    let mut t = Table::new(Family::Ip, "kube-nft");
    let mut rules = Vec::new();
    for n in [3u32, 1] {
        let mut s = Set {
            name: format!("eps-{n}"),
            key: vec![
                DataType::Ipv4Addr,
                DataType::InetProto,
                DataType::InetService,
                DataType::Mark,
            ],
            data: Some(SetData::Values(vec![
                DataType::Ipv4Addr,
                DataType::InetService,
            ])),
            comment: Some(format!("{n} endpoints")),
            ..Default::default()
        };
        for i in 0..n {
            s.elements
                .insert(key("10.96.0.1", i + 10 * n), to(&format!("10.128.0.{i}")));
            s.elements.insert(key("10.96.0.2", i), to("10.128.1.1"));
        }
        t.add_set(s);
        rules.push(Rule::new(vec![
            m(
                vec![Field::L4Proto],
                MatchOp::Eq,
                Rhs::Value(vec![Value::Proto(proto::TCP)]),
            ),
            Expr::Dnat {
                family: NatFamily::Ip,
                to: NatTarget::Map {
                    key: MapKey::FieldsAndNumgen {
                        fields: vec![Field::IpDaddr, Field::L4Proto, Field::ThDport],
                        modulus: n,
                    },
                    map: format!("eps-{n}"),
                },
            },
        ]));
    }
    t.add_chain(Chain {
        name: "services".into(),
        rules,
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "nat-prerouting".into(),
        base: base(ChainType::Nat, Hook::Prerouting, -100, ChainPolicy::Accept),
        rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Jump(
            "services".into(),
        ))])],
        ..Default::default()
    });
    assert!(nft::render::validate(&t).is_empty());

    let a = NetNs::new("ngkey-nl").unwrap();
    let mut conn = a.conn().unwrap();
    load(&mut conn, &t);
    assert_eq!(read(&mut conn, &t), t);
    let debug = a
        .nft(&[
            "--debug=netlink",
            "list",
            "chain",
            "ip",
            "kube-nft",
            "services",
        ])
        .unwrap();
    assert!(
        debug.contains("[ numgen reg 11 = random mod 3 ]"),
        "{debug}"
    );
    assert!(debug.contains("[ lookup reg 1 set eps-3 dreg 1"), "{debug}");
    assert!(debug.contains("proto_min reg 9 proto_max reg 9"), "{debug}");

    let text = nft::render::render_text(&t);
    assert!(
        text.contains(
            "typeof ip daddr . meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport"
        ),
        "{text}"
    );
    let b = NetNs::new("ngkey-text").unwrap();
    b.nft_load(&text).unwrap();
    let listed = b
        .nft(&["list", "chain", "ip", "kube-nft", "services"])
        .unwrap();
    assert!(
        listed.contains(
            "dnat ip to ip daddr . meta l4proto . tcp dport . numgen random mod 3 map @eps-3"
        ),
        "{listed}"
    );
    let listed_nl = a
        .nft(&["list", "chain", "ip", "kube-nft", "services"])
        .unwrap();
    assert_eq!(listed_nl, listed, "netlink and nft -f list the same rules");
}

/// Class dispatch as the policy renderer uses it: `ct mark set ip saddr map
/// @class` (data map `ipv4_addr : mark`, and `meta mark set … map` for the packet
/// mark) then `ct mark vmap @chains`. Netlink load reads back equal to the model;
/// `nft -f` of the rendered text loads and lists the same as the netlink load.
#[test]
fn ct_mark_set_from_map_and_ct_mark_vmap_roundtrip() {
    let mut t = Table::new(Family::Inet, "kube-nft");
    let mark_of = |v: u32| ElemValue {
        data: Some(ElemData::Values(vec![Value::Mark(v)])),
        comment: Some("ns/pod".into()),
        ..plain()
    };
    t.add_set(Set {
        name: "egress-class-v4".into(),
        key: vec![DataType::Ipv4Addr],
        data: Some(SetData::Values(vec![DataType::Mark])),
        elements: [(vec![val(ip("10.0.0.2"))], mark_of(0x8000_0001))].into(),
        ..Default::default()
    });
    t.add_set(Set {
        name: "egress-class-v6".into(),
        key: vec![DataType::Ipv6Addr],
        data: Some(SetData::Values(vec![DataType::Mark])),
        elements: [(vec![val(ip6("fd00::2"))], mark_of(0x8000_0001))].into(),
        ..Default::default()
    });
    t.add_set(Set {
        name: "egress-chains".into(),
        key: vec![DataType::Mark],
        data: Some(SetData::Verdict),
        elements: [(
            vec![val(Value::Mark(0x8000_0001))],
            ElemValue {
                data: Some(ElemData::Verdict(Verdict::Jump("eg-a".into()))),
                comment: Some("eg-a".into()),
                ..plain()
            },
        )]
        .into(),
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "eg-a".into(),
        rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Drop)])],
        ..Default::default()
    });
    let dispatch = |f: Field, map: &str| {
        Rule::new(vec![
            Expr::SetFromMap {
                target: Field::CtMark,
                key: MapKey::Fields(vec![f]),
                map: map.into(),
            },
            Expr::Vmap {
                key: MapKey::Fields(vec![Field::CtMark]),
                map: "egress-chains".into(),
            },
        ])
    };
    t.add_chain(Chain {
        name: "forward".into(),
        base: base(ChainType::Filter, Hook::Forward, 0, ChainPolicy::Accept),
        rules: vec![
            dispatch(Field::IpSaddr, "egress-class-v4"),
            dispatch(Field::Ip6Saddr, "egress-class-v6"),
            Rule::new(vec![Expr::SetFromMap {
                target: Field::Mark,
                key: MapKey::Fields(vec![Field::IpDaddr]),
                map: "egress-class-v4".into(),
            }])
            .with_comment("meta mark from a map"),
        ],
        ..Default::default()
    });
    assert!(nft::render::validate(&t).is_empty());
    let text = nft::render::render_text(&t);
    assert!(
        text.contains("ct mark set ip saddr map @egress-class-v4 ct mark vmap @egress-chains"),
        "{text}"
    );

    let a = NetNs::new("ctmap-nl").unwrap();
    let mut conn = a.conn().unwrap();
    load(&mut conn, &t);
    assert_eq!(read(&mut conn, &t), t);

    let b = NetNs::new("ctmap-text").unwrap();
    b.nft_load(&text).unwrap();
    let la = a.nft(&["list", "table", "inet", "kube-nft"]).unwrap();
    let lb = b.nft(&["list", "table", "inet", "kube-nft"]).unwrap();
    assert_eq!(la, lb, "netlink load and nft -f list differently");
    assert!(
        la.contains("ct mark set ip saddr map @egress-class-v4"),
        "{la}"
    );
    assert!(la.contains("ct mark vmap @egress-chains"), "{la}");
    assert!(
        la.contains("meta mark set ip daddr map @egress-class-v4"),
        "{la}"
    );
}
