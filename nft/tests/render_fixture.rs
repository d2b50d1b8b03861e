//! Shared by the render and diff tests (included with `#[path]`): a representative
//! table using every statement kind, and `nft -c -f` validation.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nft::*;

pub fn v4(s: &str) -> Value {
    Value::Ipv4(s.parse::<Ipv4Addr>().unwrap())
}

pub fn v6(s: &str) -> Value {
    Value::Ipv6(s.parse::<Ipv6Addr>().unwrap())
}

pub fn key(parts: &[KeyPart]) -> ElemKey {
    parts.to_vec()
}

pub fn val(v: Value) -> KeyPart {
    KeyPart::Value(v)
}

pub fn plain() -> ElemValue {
    ElemValue::default()
}

pub fn verdict(v: Verdict) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Verdict(v)),
        ..Default::default()
    }
}

pub fn m(left: &[Field], op: MatchOp, right: Rhs) -> Expr {
    Expr::Match {
        left: left.to_vec(),
        op,
        right,
    }
}

pub fn set(name: &str, key: &[DataType], data: Option<SetData>) -> Set {
    Set {
        name: name.into(),
        key: key.to_vec(),
        data,
        ..Default::default()
    }
}

pub fn chain(name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        rules,
        ..Default::default()
    }
}

pub fn base(name: &str, kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: Some(BaseChain {
            kind,
            hook,
            priority,
            policy: ChainPolicy::Accept,
        }),
        rules,
        ..Default::default()
    }
}

/// A table shaped like kube-nft's, touching every Expr, Rhs, Value, Field,
/// DataType, MapKey, NatTarget, Verdict and set flag.
pub fn representative() -> Table {
    use DataType as D;
    use Field::*;
    use MatchOp::*;
    let mut t = Table::new(Family::Inet, "kube-nft");
    t.comment = Some("managed by kube-nft; do not edit".into());

    let mut peers = set("peers-1", &[D::Ipv4Addr], None);
    peers.flags.interval = true;
    peers.comment = Some("policy default/allow-web peers".into());
    peers.elements = BTreeMap::from([
        (
            vec![KeyPart::prefix_v4("10.0.0.0".parse().unwrap(), 8)],
            plain(),
        ),
        (vec![val(v4("192.168.1.1"))], plain()),
        (
            vec![KeyPart::range(v4("172.16.0.1"), v4("172.16.0.9"))],
            ElemValue {
                comment: Some("default/db-0".into()),
                ..plain()
            },
        ),
    ]);
    t.add_set(peers);

    let mut peers6 = set("peers6", &[D::Ipv6Addr], None);
    peers6.flags.interval = true;
    peers6.elements = BTreeMap::from([
        (
            vec![KeyPart::prefix_v6("fd00::".parse().unwrap(), 64)],
            plain(),
        ),
        (vec![val(v6("2001:db8::1"))], plain()),
    ]);
    t.add_set(peers6);

    // Named ports: addr . proto . port, with port ranges (interval concatenation).
    let mut ports = set(
        "peer-ports",
        &[D::Ipv4Addr, D::InetProto, D::InetService],
        None,
    );
    ports.flags.interval = true;
    ports.elements = BTreeMap::from([
        (
            vec![
                KeyPart::prefix_v4("10.244.0.0".parse().unwrap(), 16),
                val(Value::Proto(proto::TCP)),
                KeyPart::range(Value::Port(8000), Value::Port(8080)),
            ],
            plain(),
        ),
        (
            vec![
                val(v4("10.244.1.2")),
                val(Value::Proto(proto::UDP)),
                val(Value::Port(53)),
            ],
            plain(),
        ),
    ]);
    t.add_set(ports);

    let mut ifs = set("uplinks", &[D::IfName], None);
    ifs.elements = BTreeMap::from([(vec![val(Value::IfName("eth0".into()))], plain())]);
    t.add_set(ifs);

    let mut marks = set("marks", &[D::Mark], None);
    marks.elements = BTreeMap::from([(vec![val(Value::Mark(0x4000))], plain())]);
    t.add_set(marks);

    // Class dispatch: pod IP → class id (`mark`), class id → chain.
    let mut class = set(
        "pod-class",
        &[D::Ipv4Addr],
        Some(SetData::Values(vec![D::Mark])),
    );
    class.elements = BTreeMap::from([(
        vec![val(v4("10.244.1.2"))],
        ElemValue {
            data: Some(ElemData::Values(vec![Value::Mark(0x8000_0001)])),
            timeout: None,
            comment: Some("default/web-0".into()),
        },
    )]);
    t.add_set(class);
    let mut class_chains = set("class-chains", &[D::Mark], Some(SetData::Verdict));
    class_chains.elements = BTreeMap::from([(
        vec![val(Value::Mark(0x8000_0001))],
        verdict(Verdict::Jump("pod-default-web".into())),
    )]);
    t.add_set(class_chains);

    let mut pods = set("pod-ingress", &[D::Ipv4Addr], Some(SetData::Verdict));
    pods.flags.timeout = true;
    pods.timeout = Some(Duration::from_secs(3 * 3600));
    pods.elements = BTreeMap::from([
        (
            vec![val(v4("10.244.1.2"))],
            ElemValue {
                data: Some(ElemData::Verdict(Verdict::Jump("pod-default-web".into()))),
                timeout: Some(Duration::from_secs(5400)),
                comment: Some("default/web-0".into()),
            },
        ),
        (
            vec![val(v4("10.244.1.3"))],
            verdict(Verdict::Goto("pod-default-web".into())),
        ),
        (vec![val(v4("10.244.1.4"))], verdict(Verdict::Accept)),
        (vec![val(v4("10.244.1.5"))], verdict(Verdict::Drop)),
    ]);
    t.add_set(pods);

    let mut svcs = set(
        "services",
        &[D::Ipv4Addr, D::InetProto, D::InetService],
        Some(SetData::Verdict),
    );
    svcs.elements = BTreeMap::from([(
        vec![
            val(v4("10.96.0.10")),
            val(Value::Proto(proto::TCP)),
            val(Value::Port(80)),
        ],
        verdict(Verdict::Goto("svc-default-web".into())),
    )]);
    t.add_set(svcs);

    // Services grouped by endpoint count: `vip . proto . port . numgen` keys.
    let mut grouped = set(
        "eps-2",
        &[D::Ipv4Addr, D::InetProto, D::InetService, D::Mark],
        Some(SetData::Values(vec![D::Ipv4Addr, D::InetService])),
    );
    grouped.elements = (0..2u32)
        .map(|i| {
            (
                vec![
                    val(v4("10.96.0.11")),
                    val(Value::Proto(proto::TCP)),
                    val(Value::Port(443)),
                    val(Value::Mark(i)),
                ],
                ElemValue {
                    data: Some(ElemData::Values(vec![
                        v4(&format!("10.244.2.{}", i + 1)),
                        Value::Port(8443),
                    ])),
                    ..plain()
                },
            )
        })
        .collect();
    t.add_set(grouped);
    t.add_chain(chain(
        "services-by-count",
        vec![Rule::new(vec![
            m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
            Expr::Dnat {
                family: NatFamily::Ip,
                to: NatTarget::Map {
                    key: MapKey::FieldsAndNumgen {
                        fields: vec![IpDaddr, L4Proto, ThDport],
                        modulus: 2,
                    },
                    map: "eps-2".into(),
                },
            },
        ])
        .with_comment("services with 2 endpoints")],
    ));

    let mut eps = set(
        "svc-default-web-eps",
        &[D::Mark],
        Some(SetData::Values(vec![D::Ipv4Addr, D::InetService])),
    );
    eps.elements = BTreeMap::from([
        (
            vec![val(Value::Mark(0))],
            ElemValue {
                data: Some(ElemData::Values(vec![v4("10.244.1.2"), Value::Port(8080)])),
                ..plain()
            },
        ),
        (
            vec![val(Value::Mark(1))],
            ElemValue {
                data: Some(ElemData::Values(vec![v4("10.244.2.2"), Value::Port(8080)])),
                ..plain()
            },
        ),
    ]);
    t.add_set(eps);

    let mut eps_vm = set("svc-udp-eps", &[D::Mark], Some(SetData::Verdict));
    eps_vm.elements = BTreeMap::from([(vec![val(Value::Mark(0))], verdict(Verdict::Accept))]);
    t.add_set(eps_vm);

    let mut nat6 = set(
        "nat6",
        &[D::Ipv6Addr, D::InetService],
        Some(SetData::Values(vec![D::Ipv6Addr, D::InetService])),
    );
    nat6.elements = BTreeMap::from([(
        vec![val(v6("fd00::10")), val(Value::Port(80))],
        ElemValue {
            data: Some(ElemData::Values(vec![v6("fd00::1:2"), Value::Port(8080)])),
            ..plain()
        },
    )]);
    t.add_set(nat6);

    let mut seen = set("seen", &[D::Ipv4Addr, D::Ipv4Addr], None);
    seen.flags = SetFlags {
        interval: false,
        timeout: true,
        dynamic: true,
    };
    seen.timeout = Some(Duration::from_secs(10800));
    t.add_set(seen);

    // Session affinity: client . original VIP . proto . original port → endpoint.
    let mut sticky = set(
        "sticky",
        &[D::Ipv4Addr, D::Ipv4Addr, D::InetProto, D::InetService],
        Some(SetData::Values(vec![D::Ipv4Addr, D::InetService])),
    );
    sticky.flags = SetFlags {
        interval: false,
        timeout: true,
        dynamic: true,
    };
    t.add_set(sticky);
    t.add_set(set("vips6", &[D::Ipv6Addr], None));

    let mut fwd = base("forward", ChainType::Filter, Hook::Forward, 0, vec![]);
    fwd.comment = Some("kube-nft policy".into());
    fwd.rules = vec![
        Rule::new(vec![
            m(
                &[CtState],
                Eq,
                Rhs::Bits(ct_state::ESTABLISHED | ct_state::RELATED),
            ),
            Expr::Verdict(Verdict::Accept),
        ]),
        Rule::new(vec![
            m(
                &[CtState],
                Eq,
                Rhs::Value(vec![Value::CtState(ct_state::INVALID)]),
            ),
            Expr::Counter,
            Expr::Verdict(Verdict::Drop),
        ]),
        Rule::new(vec![
            m(
                &[CtState],
                Neq,
                Rhs::Bits(ct_state::NEW | ct_state::UNTRACKED),
            ),
            Expr::Verdict(Verdict::Continue),
        ]),
        Rule::new(vec![Expr::Vmap {
            key: MapKey::Fields(vec![IpDaddr]),
            map: "pod-ingress".into(),
        }])
        .with_comment("dispatch to per-pod ingress chains"),
        Rule::new(vec![
            Expr::SetFromMap {
                target: CtMark,
                key: MapKey::Fields(vec![IpSaddr]),
                map: "pod-class".into(),
            },
            Expr::Vmap {
                key: MapKey::Fields(vec![CtMark]),
                map: "class-chains".into(),
            },
        ])
        .with_comment("dispatch by class id"),
        Rule::new(vec![Expr::SetFromMap {
            target: Mark,
            key: MapKey::Fields(vec![IpDaddr]),
            map: "pod-class".into(),
        }]),
        Rule::new(vec![
            m(&[Mark], Eq, Rhs::Bits(0x4000)),
            Expr::Verdict(Verdict::Accept),
        ]),
        Rule::new(vec![
            m(&[CtMark], Neq, Rhs::Bits(0x1)),
            Expr::Verdict(Verdict::Return),
        ]),
        Rule::new(vec![
            m(&[Mark], Eq, Rhs::Set("marks".into())),
            Expr::Verdict(Verdict::Accept),
        ]),
        Rule::new(vec![m(&[CtMark], Eq, Rhs::Value(vec![Value::Mark(7)]))]),
    ];
    t.add_chain(fwd);

    t.add_chain(chain(
        "pod-default-web",
        vec![
            Rule::new(vec![
                m(&[IpSaddr], Eq, Rhs::Set("peers-1".into())),
                Expr::Verdict(Verdict::Accept),
            ])
            .with_comment("default/allow-web ingress[0]"),
            Rule::new(vec![
                m(&[IpSaddr], Neq, Rhs::Set("peers-1".into())),
                Expr::Verdict(Verdict::Drop),
            ]),
            Rule::new(vec![
                m(&[Ip6Saddr], Eq, Rhs::Set("peers6".into())),
                m(&[Ip6Daddr], Neq, Rhs::Range(v6("fd00::1"), v6("fd00::9"))),
                m(&[Ip6Saddr], Neq, Rhs::Value(vec![v6("fd00::5")])),
                Expr::Verdict(Verdict::Accept),
            ]),
            Rule::new(vec![
                m(
                    &[IpSaddr, L4Proto, ThDport],
                    Eq,
                    Rhs::Set("peer-ports".into()),
                ),
                Expr::Verdict(Verdict::Accept),
            ]),
            Rule::new(vec![
                m(
                    &[IpSaddr, ThDport],
                    Eq,
                    Rhs::Value(vec![v4("10.0.0.1"), Value::Port(80)]),
                ),
                Expr::Verdict(Verdict::Accept),
            ]),
            Rule::new(vec![
                m(
                    &[IpSaddr],
                    Eq,
                    Rhs::Range(v4("10.1.0.0"), v4("10.1.255.255")),
                ),
                m(&[IpDaddr], Neq, Rhs::Value(vec![v4("10.1.2.3")])),
            ]),
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
                m(
                    &[ThDport],
                    Eq,
                    Rhs::Range(Value::Port(8000), Value::Port(8080)),
                ),
                m(&[ThSport], Neq, Rhs::Value(vec![Value::Port(22)])),
                Expr::Verdict(Verdict::Accept),
            ]),
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
                Expr::Reject(RejectKind::TcpReset),
            ]),
            Rule::new(vec![
                m(
                    &[L4Proto],
                    Neq,
                    Rhs::Value(vec![Value::Proto(proto::ICMPV6)]),
                ),
                m(&[L4Proto], Neq, Rhs::Value(vec![Value::Proto(200)])),
                Expr::Reject(RejectKind::IcmpxPortUnreachable),
            ]),
            Rule::new(vec![
                Expr::Log {
                    prefix: Some("kube-nft drop: ".into()),
                    group: Some(2),
                },
                Expr::Log {
                    prefix: None,
                    group: None,
                },
                Expr::Reject(RejectKind::IcmpxAdminProhibited),
            ]),
        ],
    ));

    t.add_chain(chain(
        "misc",
        vec![
            Rule::new(vec![
                m(&[NfProto], Eq, Rhs::Value(vec![Value::NfProto(2)])),
                m(
                    &[IifName],
                    Eq,
                    Rhs::Value(vec![Value::IfName("eth0".into())]),
                ),
                m(&[OifName], Neq, Rhs::Set("uplinks".into())),
                Expr::Verdict(Verdict::Jump("pod-default-web".into())),
            ]),
            Rule::new(vec![
                m(
                    &[FibDaddrType],
                    Eq,
                    Rhs::Value(vec![Value::AddrType(addr_type::LOCAL)]),
                ),
                m(&[CtStatus], Eq, Rhs::Bits(ct_status::DNAT)),
                m(
                    &[CtStatus],
                    Neq,
                    Rhs::Value(vec![Value::CtStatus(ct_status::SNAT)]),
                ),
                Expr::SetMarkBits(0x4000),
            ]),
            Rule::new(vec![
                m(&[NfProto], Eq, Rhs::Value(vec![Value::NfProto(10)])),
                m(
                    &[FibDaddrType],
                    Neq,
                    Rhs::Value(vec![Value::AddrType(addr_type::MULTICAST)]),
                ),
                Expr::Verdict(Verdict::Goto("pod-default-web".into())),
            ]),
            Rule::new(vec![Expr::SetUpdate {
                op: SetUpdateOp::Update,
                set: "seen".into(),
                key: vec![IpSaddr, IpDaddr],
                timeout: Some(Duration::from_secs(60)),
            }]),
            Rule::new(vec![Expr::SetUpdate {
                op: SetUpdateOp::Add,
                set: "seen".into(),
                key: vec![IpSaddr, IpDaddr],
                timeout: None,
            }]),
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
                m(&[CtStatus], Eq, Rhs::Bits(ct_status::DNAT)),
                Expr::MapUpdate {
                    op: SetUpdateOp::Update,
                    map: "sticky".into(),
                    key: vec![IpSaddr, CtOriginalIpDaddr, L4Proto, CtOriginalProtoDst],
                    data: vec![IpDaddr, ThDport],
                    timeout: Some(Duration::from_secs(10800)),
                },
            ]),
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::UDP)])),
                Expr::MapUpdate {
                    op: SetUpdateOp::Add,
                    map: "sticky".into(),
                    key: vec![IpSaddr, IpDaddr, L4Proto, CtOriginalProtoDst],
                    data: vec![IpDaddr, ThDport],
                    timeout: None,
                },
            ]),
            Rule::new(vec![
                m(&[CtOriginalIp6Daddr], Eq, Rhs::Set("vips6".into())),
                Expr::Verdict(Verdict::Accept),
            ]),
        ],
    ));

    let mut pre = base("prerouting", ChainType::Nat, Hook::Prerouting, -100, vec![]);
    pre.rules = vec![Rule::new(vec![Expr::Vmap {
        key: MapKey::Fields(vec![IpDaddr, L4Proto, ThDport]),
        map: "services".into(),
    }])];
    t.add_chain(pre);

    t.add_chain(chain(
        "svc-default-web",
        vec![
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
                Expr::Dnat {
                    family: NatFamily::Ip,
                    to: NatTarget::Map {
                        key: MapKey::NumgenRandom { modulus: 2 },
                        map: "svc-default-web-eps".into(),
                    },
                },
            ])
            .with_comment("default/web"),
            Rule::new(vec![Expr::Vmap {
                key: MapKey::NumgenRandom { modulus: 1 },
                map: "svc-udp-eps".into(),
            }]),
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
                Expr::Dnat {
                    family: NatFamily::Ip,
                    to: NatTarget::Addr {
                        addr: v4("10.244.1.2"),
                        port: Some(8080),
                    },
                },
            ]),
            Rule::new(vec![Expr::Dnat {
                family: NatFamily::Ip,
                to: NatTarget::Addr {
                    addr: v4("10.244.1.2"),
                    port: None,
                },
            }]),
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::UDP)])),
                Expr::Dnat {
                    family: NatFamily::Ip6,
                    to: NatTarget::Addr {
                        addr: v6("fd00::1"),
                        port: Some(53),
                    },
                },
            ]),
            Rule::new(vec![
                m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
                Expr::Dnat {
                    family: NatFamily::Ip6,
                    to: NatTarget::Map {
                        key: MapKey::Fields(vec![Ip6Daddr, ThDport]),
                        map: "nat6".into(),
                    },
                },
            ]),
        ],
    ));

    let mut post = base(
        "postrouting",
        ChainType::Nat,
        Hook::Postrouting,
        100,
        vec![],
    );
    post.rules = vec![
        Rule::new(vec![
            m(&[Mark], Eq, Rhs::Bits(0x4000)),
            Expr::Masquerade { fully_random: true },
        ]),
        Rule::new(vec![
            m(&[CtStatus], Eq, Rhs::Bits(ct_status::DNAT)),
            Expr::Masquerade {
                fully_random: false,
            },
        ]),
        Rule::new(vec![
            m(&[IpSaddr], Eq, Rhs::Value(vec![v4("10.244.0.5")])),
            Expr::Snat {
                family: NatFamily::Ip,
                to: NatTarget::Addr {
                    addr: v4("192.168.0.1"),
                    port: None,
                },
            },
        ]),
        Rule::new(vec![
            m(&[L4Proto], Eq, Rhs::Value(vec![Value::Proto(proto::TCP)])),
            Expr::Snat {
                family: NatFamily::Ip,
                to: NatTarget::Map {
                    key: MapKey::Fields(vec![IpDaddr]),
                    map: "snat-map".into(),
                },
            },
        ]),
    ];
    t.add_chain(post);
    let mut snat = set(
        "snat-map",
        &[D::Ipv4Addr],
        Some(SetData::Values(vec![D::Ipv4Addr])),
    );
    snat.elements = BTreeMap::from([(
        vec![val(v4("10.0.0.1"))],
        ElemValue {
            data: Some(ElemData::Values(vec![v4("192.168.0.2")])),
            ..plain()
        },
    )]);
    t.add_set(snat);

    let mut out = base("output", ChainType::Route, Hook::Output, -150, vec![]);
    out.base.as_mut().unwrap().policy = ChainPolicy::Accept;
    out.rules = vec![Rule::new(vec![Expr::Counter])];
    t.add_chain(out);
    let mut input = base("input", ChainType::Filter, Hook::Input, 0, vec![]);
    input.base.as_mut().unwrap().policy = ChainPolicy::Drop;
    input.rules = vec![Rule::new(vec![Expr::Verdict(Verdict::Accept)])];
    t.add_chain(input);
    t
}

/// Whether `nft -c` can run here (the CLI exists and we are root). `-c` only
/// checks: the kernel validates the transaction and aborts it, so it is safe in
/// the root namespace.
pub fn nft_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && Command::new("nft").arg("--version").output().is_ok()
}

/// `nft -c -f` on `text`; `Ok` when nft is unavailable (the test says so).
pub fn nft_check(text: &str) -> Result<(), String> {
    if !nft_available() {
        eprintln!("skipping nft -c: nft CLI or root not available");
        return Ok(());
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "kube-nft-render-{}-{}.nft",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    let out = Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&path);
    let out = out?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -c rejected:\n{}\n--- text ---\n{text}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
