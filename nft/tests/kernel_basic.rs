//! Kernel tests: load through netlink, read back, compare. Each test runs in its
//! own network namespace (deleted on drop); they need root and fail loudly without.

use std::collections::BTreeMap;
use std::time::Duration;

use nft::netlink::{replace_table_batch, Conn};
use nft::testing::NetNs;
use nft::*;

fn ip(s: &str) -> Value {
    Value::Ipv4(s.parse().unwrap())
}

fn m(left: Vec<Field>, op: MatchOp, right: Rhs) -> Expr {
    Expr::Match { left, op, right }
}

fn load_and_read(conn: &mut Conn, t: &Table) -> Table {
    conn.apply(&replace_table_batch(t))
        .unwrap_or_else(|e| panic!("load failed: {e}"));
    conn.read_table(t.family, &t.name)
        .unwrap()
        .expect("table exists")
}

fn basic_table() -> Table {
    let mut t = Table::new(Family::Inet, "kn");
    t.comment = Some("kube-nft test".into());
    let mut peers = Set {
        name: "peers".into(),
        key: vec![DataType::Ipv4Addr],
        comment: Some("peer pods".into()),
        ..Default::default()
    };
    for a in ["10.0.0.1", "10.0.0.2"] {
        peers
            .elements
            .insert(vec![KeyPart::Value(ip(a))], ElemValue::default());
    }
    t.add_set(peers);
    t.add_chain(Chain {
        name: "input".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority: 0,
            policy: ChainPolicy::Accept,
        }),
        comment: Some("base".into()),
        rules: vec![
            Rule::new(vec![
                m(
                    vec![Field::CtState],
                    MatchOp::Eq,
                    Rhs::Bits(ct_state::ESTABLISHED | ct_state::RELATED),
                ),
                Expr::Verdict(Verdict::Accept),
            ]),
            Rule::new(vec![
                m(vec![Field::IpSaddr], MatchOp::Eq, Rhs::Set("peers".into())),
                Expr::Counter,
                Expr::Verdict(Verdict::Jump("allow".into())),
            ])
            .with_comment("ns/pod"),
        ],
    });
    t.add_chain(Chain {
        name: "allow".into(),
        rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Accept)])],
        ..Default::default()
    });
    t
}

#[test]
fn basic_table_roundtrips() {
    let ns = NetNs::new("basic").unwrap();
    let mut conn = ns.conn().unwrap();
    let t = basic_table();
    let got = load_and_read(&mut conn, &t);
    assert_eq!(got, t);
    // Reloading the same table replaces it atomically.
    assert_eq!(load_and_read(&mut conn, &t), t);
    let _ = BTreeMap::<u8, u8>::new();
    let _ = Duration::from_secs(1);
}
