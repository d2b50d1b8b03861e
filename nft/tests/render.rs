//! Rendering: golden text, `nft -c -f` acceptance, coverage of every statement.
//!
//! Regenerate golden files with `UPDATE_GOLDEN=1 cargo test -p nft --test render`.

#[path = "render_fixture.rs"]
mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use fixture::*;
use nft::diff::full_load;
use nft::render::{render_batch, render_rule, render_text, validate};
use nft::*;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        expected,
        actual,
        "{} differs (UPDATE_GOLDEN=1 to accept)",
        path.display()
    );
}

#[test]
fn representative_table_matches_golden() {
    golden("representative.nft", &render_text(&representative()));
}

#[test]
fn representative_full_load_batch_matches_golden() {
    golden(
        "representative.batch.nft",
        &render_batch(&full_load(&representative())),
    );
}

#[test]
fn representative_table_is_accepted_by_nft() {
    nft_check(&render_text(&representative())).unwrap();
}

#[test]
fn full_load_script_is_accepted_by_nft() {
    nft_check(&render_batch(&full_load(&representative()))).unwrap();
}

#[test]
fn representative_table_validates_clean() {
    assert_eq!(validate(&representative()), vec![]);
}

#[test]
fn display_equals_render_text() {
    let t = representative();
    assert_eq!(t.to_string(), render_text(&t));
    let b = full_load(&t);
    assert_eq!(b.to_string(), render_batch(&b));
}

/// A name per variant; the exhaustive matches make a new variant fail to compile
/// here until the fixture covers it.
fn expr_kinds(e: &Expr, out: &mut BTreeSet<&'static str>) {
    let name = match e {
        Expr::Match { left, right, .. } => {
            for f in left {
                out.insert(field_kind(*f));
            }
            match right {
                Rhs::Value(vs) => {
                    for v in vs {
                        out.insert(value_kind(v));
                    }
                    "Rhs::Value"
                }
                Rhs::Range(..) => "Rhs::Range",
                Rhs::Set(_) => "Rhs::Set",
                Rhs::Bits(_) => "Rhs::Bits",
            }
        }
        Expr::Vmap { key, .. } => {
            out.insert(map_key_kind(key));
            "Vmap"
        }
        Expr::Counter => "Counter",
        Expr::Log { .. } => "Log",
        Expr::SetMarkBits(_) => "SetMarkBits",
        Expr::SetFromMap { target, key, .. } => {
            out.insert(field_kind(*target));
            out.insert(map_key_kind(key));
            "SetFromMap"
        }
        Expr::Dnat { to, .. } | Expr::Snat { to, .. } => {
            let target = match to {
                NatTarget::Addr { .. } => "NatTarget::Addr",
                NatTarget::Map { key, .. } => {
                    out.insert(map_key_kind(key));
                    "NatTarget::Map"
                }
            };
            out.insert(target);
            if matches!(e, Expr::Dnat { .. }) {
                "Dnat"
            } else {
                "Snat"
            }
        }
        Expr::Masquerade { .. } => "Masquerade",
        Expr::Reject(k) => match k {
            RejectKind::TcpReset => "Reject::TcpReset",
            RejectKind::IcmpxPortUnreachable => "Reject::IcmpxPortUnreachable",
            RejectKind::IcmpxAdminProhibited => "Reject::IcmpxAdminProhibited",
        },
        Expr::SetUpdate { op, .. } => match op {
            SetUpdateOp::Add => "SetUpdate::Add",
            SetUpdateOp::Update => "SetUpdate::Update",
        },
        Expr::MapUpdate { op, key, data, .. } => {
            for f in key.iter().chain(data) {
                out.insert(field_kind(*f));
            }
            match op {
                SetUpdateOp::Add => "MapUpdate::Add",
                SetUpdateOp::Update => "MapUpdate::Update",
            }
        }
        Expr::Verdict(v) => verdict_kind(v),
    };
    out.insert(name);
}

fn verdict_kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Accept => "Verdict::Accept",
        Verdict::Drop => "Verdict::Drop",
        Verdict::Continue => "Verdict::Continue",
        Verdict::Return => "Verdict::Return",
        Verdict::Jump(_) => "Verdict::Jump",
        Verdict::Goto(_) => "Verdict::Goto",
    }
}

fn map_key_kind(k: &MapKey) -> &'static str {
    match k {
        MapKey::Fields(_) => "MapKey::Fields",
        MapKey::NumgenRandom { .. } => "MapKey::NumgenRandom",
        MapKey::FieldsAndNumgen { .. } => "MapKey::FieldsAndNumgen",
    }
}

fn field_kind(f: Field) -> &'static str {
    match f {
        Field::IpSaddr => "IpSaddr",
        Field::IpDaddr => "IpDaddr",
        Field::Ip6Saddr => "Ip6Saddr",
        Field::Ip6Daddr => "Ip6Daddr",
        Field::L4Proto => "L4Proto",
        Field::ThSport => "ThSport",
        Field::ThDport => "ThDport",
        Field::NfProto => "NfProto",
        Field::IifName => "IifName",
        Field::OifName => "OifName",
        Field::Mark => "Mark",
        Field::CtState => "CtState",
        Field::CtStatus => "CtStatus",
        Field::CtMark => "CtMark",
        Field::FibDaddrType => "FibDaddrType",
        Field::CtOriginalIpDaddr => "CtOriginalIpDaddr",
        Field::CtOriginalIp6Daddr => "CtOriginalIp6Daddr",
        Field::CtOriginalProtoDst => "CtOriginalProtoDst",
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Ipv4(_) => "Value::Ipv4",
        Value::Ipv6(_) => "Value::Ipv6",
        Value::Proto(_) => "Value::Proto",
        Value::Port(_) => "Value::Port",
        Value::Mark(_) => "Value::Mark",
        Value::IfName(_) => "Value::IfName",
        Value::NfProto(_) => "Value::NfProto",
        Value::CtState(_) => "Value::CtState",
        Value::CtStatus(_) => "Value::CtStatus",
        Value::AddrType(_) => "Value::AddrType",
    }
}

fn data_type_kind(t: DataType) -> &'static str {
    match t {
        DataType::Ipv4Addr => "DataType::Ipv4Addr",
        DataType::Ipv6Addr => "DataType::Ipv6Addr",
        DataType::InetProto => "DataType::InetProto",
        DataType::InetService => "DataType::InetService",
        DataType::Mark => "DataType::Mark",
        DataType::IfName => "DataType::IfName",
    }
}

#[test]
fn fixture_covers_every_kind() {
    let t = representative();
    let mut seen = BTreeSet::new();
    for c in t.chains.values() {
        for r in &c.rules {
            for e in &r.exprs {
                expr_kinds(e, &mut seen);
            }
        }
    }
    for s in t.sets.values() {
        for d in &s.key {
            seen.insert(data_type_kind(*d));
        }
        match &s.data {
            Some(SetData::Verdict) => {
                seen.insert("SetData::Verdict");
            }
            Some(SetData::Values(v)) => {
                seen.insert("SetData::Values");
                for d in v {
                    seen.insert(data_type_kind(*d));
                }
            }
            None => {}
        }
        for (k, v) in &s.elements {
            for p in k {
                if let KeyPart::Range(..) = p {
                    seen.insert("KeyPart::Range");
                }
            }
            if let Some(ElemData::Verdict(vd)) = &v.data {
                seen.insert(verdict_kind(vd));
            }
        }
    }
    let all = [
        "Rhs::Value",
        "Rhs::Range",
        "Rhs::Set",
        "Rhs::Bits",
        "Vmap",
        "Counter",
        "Log",
        "SetMarkBits",
        "SetFromMap",
        "Dnat",
        "Snat",
        "Masquerade",
        "Reject::TcpReset",
        "Reject::IcmpxPortUnreachable",
        "Reject::IcmpxAdminProhibited",
        "SetUpdate::Add",
        "SetUpdate::Update",
        "MapUpdate::Add",
        "MapUpdate::Update",
        "Verdict::Accept",
        "Verdict::Drop",
        "Verdict::Continue",
        "Verdict::Return",
        "Verdict::Jump",
        "Verdict::Goto",
        "MapKey::Fields",
        "MapKey::NumgenRandom",
        "MapKey::FieldsAndNumgen",
        "NatTarget::Addr",
        "NatTarget::Map",
        "IpSaddr",
        "IpDaddr",
        "Ip6Saddr",
        "Ip6Daddr",
        "L4Proto",
        "ThSport",
        "ThDport",
        "NfProto",
        "IifName",
        "OifName",
        "Mark",
        "CtState",
        "CtStatus",
        "CtMark",
        "FibDaddrType",
        "CtOriginalIpDaddr",
        "CtOriginalIp6Daddr",
        "CtOriginalProtoDst",
        "Value::Ipv4",
        "Value::Ipv6",
        "Value::Proto",
        "Value::Port",
        "Value::Mark",
        "Value::IfName",
        "Value::NfProto",
        "Value::CtState",
        "Value::CtStatus",
        "Value::AddrType",
        "DataType::Ipv4Addr",
        "DataType::Ipv6Addr",
        "DataType::InetProto",
        "DataType::InetService",
        "DataType::Mark",
        "DataType::IfName",
        "SetData::Verdict",
        "SetData::Values",
        "KeyPart::Range",
    ];
    let missing: Vec<_> = all.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(missing.is_empty(), "fixture lacks {missing:?}");
}

#[test]
fn rules_render_as_nft_writes_them() {
    use Field::*;
    use MatchOp::*;
    let r = |exprs| render_rule(Family::Inet, &Rule::new(exprs));
    assert_eq!(
        r(vec![
            m(
                &[CtState],
                Eq,
                Rhs::Bits(ct_state::ESTABLISHED | ct_state::RELATED)
            ),
            Expr::Verdict(Verdict::Accept)
        ]),
        "ct state established,related accept"
    );
    assert_eq!(
        r(vec![m(&[CtState], Neq, Rhs::Bits(6))]),
        "ct state & (established|related) == 0"
    );
    assert_eq!(
        r(vec![m(&[CtState], Eq, Rhs::Value(vec![Value::CtState(2)]))]),
        "ct state == established"
    );
    assert_eq!(
        r(vec![m(&[Mark], Eq, Rhs::Bits(0x4000))]),
        "meta mark & 0x00004000 != 0"
    );
    assert_eq!(
        r(vec![m(
            &[FibDaddrType],
            Eq,
            Rhs::Value(vec![Value::AddrType(addr_type::LOCAL)])
        )]),
        "fib daddr type local"
    );
    assert_eq!(
        r(vec![m(
            &[IpSaddr, ThDport],
            Neq,
            Rhs::Value(vec![v4("1.2.3.4"), Value::Port(80)])
        )]),
        "ip saddr . th dport != { 1.2.3.4 . 80 }"
    );
    assert_eq!(
        r(vec![m(
            &[IpSaddr],
            Eq,
            Rhs::Range(v4("10.0.0.0"), v4("10.0.255.255"))
        )]),
        "ip saddr 10.0.0.0/16"
    );
    assert_eq!(
        r(vec![Expr::SetMarkBits(0x4000)]),
        "meta mark set meta mark | 0x00004000"
    );
    assert_eq!(
        render_rule(
            Family::Ip,
            &Rule::new(vec![Expr::Reject(RejectKind::IcmpxPortUnreachable)])
                .with_comment("say \"no\"")
        ),
        "reject with icmp port-unreachable comment \"say 'no'\""
    );
}

#[test]
fn ip_and_ip6_tables_are_accepted_by_nft() {
    for family in [Family::Ip, Family::Ip6] {
        let mut t = Table::new(family, "kube-nft-fam");
        t.add_chain(base(
            "input",
            ChainType::Filter,
            Hook::Input,
            0,
            vec![
                Rule::new(vec![Expr::Reject(RejectKind::IcmpxPortUnreachable)]),
                Rule::new(vec![Expr::Reject(RejectKind::IcmpxAdminProhibited)]),
            ],
        ));
        nft_check(&render_text(&t)).unwrap();
    }
}

#[test]
fn validate_reports_unrenderable_input() {
    let mut t = Table::new(Family::Inet, "kube-nft");
    t.add_set(set("counter", &[DataType::Ipv4Addr], None));
    let mut c = chain(
        "1bad",
        vec![Rule::new(vec![Expr::Dnat {
            family: NatFamily::Ip,
            to: NatTarget::Addr {
                addr: v4("1.2.3.4"),
                port: Some(80),
            },
        }])],
    );
    c.comment = Some("x".repeat(200));
    t.add_chain(c);
    let problems: Vec<String> = validate(&t).iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("keyword"));
    assert!(problems.iter().any(|p| p.contains("meta l4proto")));
}

#[test]
fn large_table_renders() {
    let mut t = Table::new(Family::Inet, "kube-nft");
    let mut s = set("big", &[DataType::Ipv4Addr, DataType::InetService], None);
    s.elements = (0..250_000u32)
        .map(|i| {
            (
                vec![
                    val(Value::Ipv4((0x0a00_0000 + i).into())),
                    val(Value::Port((i % 60000) as u16 + 1)),
                ],
                plain(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    t.add_set(s);
    let text = render_text(&t);
    assert_eq!(text.lines().count(), 250_000 + 7);
    let b = render_batch(&full_load(&t));
    assert_eq!(b.lines().count(), 3);
}

#[test]
fn validate_wants_one_protocol_before_ct_original_proto_dst() {
    use Field::*;
    let update = Expr::MapUpdate {
        op: SetUpdateOp::Update,
        map: "sticky".into(),
        key: vec![IpSaddr, CtOriginalIpDaddr, L4Proto, CtOriginalProtoDst],
        data: vec![IpDaddr, ThDport],
        timeout: None,
    };
    let table = |exprs: Vec<Expr>| {
        let mut t = Table::new(Family::Inet, "kube-nft");
        t.add_chain(chain("c", vec![Rule::new(exprs)]));
        validate(&t)
    };
    let problems = table(vec![update.clone()]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("ct original proto-dst"));
    // A set of protocols is not enough for nft to type the port.
    let any = m(&[L4Proto], MatchOp::Eq, Rhs::Set("protos".into()));
    assert_eq!(table(vec![any, update.clone()]).len(), 1);
    let tcp = m(
        &[L4Proto],
        MatchOp::Eq,
        Rhs::Value(vec![Value::Proto(proto::TCP)]),
    );
    assert_eq!(table(vec![tcp, update]), vec![]);
}
