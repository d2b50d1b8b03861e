//! The model features Service NAT added, on a real kernel (needs root): map
//! updates from the packet path with `ct original` keys, for both families,
//! load through netlink and read back equal; the IPv4 form also loads from
//! the rendered text and lists the same as the netlink-loaded rule.

use std::time::Duration;

use nft::netlink::replace_table_batch;
use nft::testing::NetNs;
use nft::*;

fn m(left: Vec<Field>, op: MatchOp, right: Rhs) -> Expr {
    Expr::Match { left, op, right }
}

/// An affinity map and its record rule for one family.
fn affinity(t: &mut Table, v6: bool) {
    let (a, sfx, saddr, daddr, orig) = if v6 {
        (
            DataType::Ipv6Addr,
            "v6",
            Field::Ip6Saddr,
            Field::Ip6Daddr,
            Field::CtOriginalIp6Daddr,
        )
    } else {
        (
            DataType::Ipv4Addr,
            "v4",
            Field::IpSaddr,
            Field::IpDaddr,
            Field::CtOriginalIpDaddr,
        )
    };
    t.add_set(Set {
        name: format!("aff-{sfx}"),
        key: vec![a, a, DataType::InetProto, DataType::InetService],
        data: Some(SetData::Values(vec![a, DataType::InetService])),
        flags: SetFlags {
            timeout: true,
            dynamic: true,
            ..Default::default()
        },
        comment: Some("client . frontend -> endpoint".into()),
        ..Default::default()
    });
    t.add_set(Set {
        name: format!("frontends-{sfx}"),
        key: vec![a, DataType::InetProto, DataType::InetService],
        ..Default::default()
    });
    let original = vec![orig, Field::L4Proto, Field::CtOriginalProtoDst];
    t.chains.get_mut("post").unwrap().rules.push(
        Rule::new(vec![
            m(
                vec![Field::L4Proto],
                MatchOp::Eq,
                Rhs::Value(vec![Value::Proto(proto::UDP)]),
            ),
            m(
                vec![Field::CtStatus],
                MatchOp::Eq,
                Rhs::Bits(ct_status::DNAT),
            ),
            m(
                original.clone(),
                MatchOp::Eq,
                Rhs::Set(format!("frontends-{sfx}")),
            ),
            Expr::MapUpdate {
                op: SetUpdateOp::Update,
                map: format!("aff-{sfx}"),
                key: std::iter::once(saddr).chain(original).collect(),
                data: vec![daddr, Field::ThDport],
                timeout: Some(Duration::from_secs(10800)),
            },
        ])
        .with_comment(format!("record {sfx}")),
    );
}

fn table(with_v6: bool) -> Table {
    let mut t = Table::new(Family::Inet, "kube-nft");
    t.add_chain(Chain {
        name: "post".into(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: 100,
            policy: ChainPolicy::Accept,
        }),
        ..Default::default()
    });
    affinity(&mut t, false);
    if with_v6 {
        affinity(&mut t, true);
    }
    assert_eq!(nft::render::validate(&t), vec![]);
    t
}

#[test]
fn map_updates_with_ct_original_keys_roundtrip() {
    let ns = NetNs::new("svc-mapupd").unwrap();
    let mut conn = ns.conn().unwrap();
    let t = table(true);
    conn.apply(&replace_table_batch(&t)).unwrap();
    assert_eq!(
        conn.read_table(Family::Inet, "kube-nft").unwrap(),
        Some(t.clone())
    );
    let set = conn
        .read_set(Family::Inet, "kube-nft", "aff-v6")
        .unwrap()
        .unwrap();
    assert_eq!(&set, &t.sets["aff-v6"]);
    assert_eq!(
        conn.read_set(Family::Inet, "kube-nft", "absent").unwrap(),
        None
    );
}

#[test]
fn ipv4_map_update_lists_like_nft_f_of_the_text() {
    let a = NetNs::new("svc-mapupd-nl").unwrap();
    let b = NetNs::new("svc-mapupd-text").unwrap();
    let t = table(false);
    a.conn().unwrap().apply(&replace_table_batch(&t)).unwrap();
    b.nft_load(&nft::render::render_text(&t)).unwrap();
    let list = |ns: &NetNs| ns.nft(&["list", "table", "inet", "kube-nft"]).unwrap();
    assert_eq!(list(&a), list(&b));
}
