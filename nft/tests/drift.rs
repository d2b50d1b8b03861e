//! Kernel tests of the drift check (`Dataplane::check_drift`) and of taking
//! over a table after a restart, each in its own network namespace (deleted on
//! drop, also on panic). Need root; fail loudly without.

use nft::dataplane::{Dataplane, Drift};
use nft::testing::NetNs;
use nft::*;

const TABLE: &str = "kn-drift";

fn ip(s: &str) -> KeyPart {
    KeyPart::Value(Value::Ipv4(s.parse().unwrap()))
}

/// A base chain dropping what a set names, and a dynamic set the kernel fills
/// (its elements are the kernel's, never drift).
fn table(peers: &[&str]) -> Table {
    let mut t = Table::new(Family::Inet, TABLE);
    let mut set = Set {
        name: "blocked".into(),
        key: vec![DataType::Ipv4Addr],
        comment: Some("blocked peers".into()),
        ..Default::default()
    };
    for p in peers {
        set.elements.insert(vec![ip(p)], ElemValue::default());
    }
    t.add_set(set);
    t.add_set(Set {
        name: "seen".into(),
        key: vec![DataType::Ipv4Addr],
        flags: SetFlags {
            dynamic: true,
            timeout: true,
            ..Default::default()
        },
        timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "input".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority: 0,
            policy: ChainPolicy::Accept,
        }),
        rules: vec![Rule::new(vec![
            Expr::Match {
                left: vec![Field::IpSaddr],
                op: MatchOp::Eq,
                right: Rhs::Set("blocked".into()),
            },
            Expr::Verdict(Verdict::Drop),
        ])],
        ..Default::default()
    });
    t
}

fn open(ns: &NetNs) -> Dataplane {
    Dataplane::open(ns.conn().unwrap(), Family::Inet, TABLE).unwrap()
}

fn kernel(ns: &NetNs) -> Option<Table> {
    ns.conn().unwrap().read_table(Family::Inet, TABLE).unwrap()
}

#[test]
fn nothing_happened_reads_nothing_and_other_tables_are_not_drift() {
    let ns = NetNs::new("drift-clean").unwrap();
    let mut dp = open(&ns);
    let want = table(&["10.0.0.1"]);
    dp.sync(&want).unwrap();
    assert_eq!(dp.check_drift().unwrap(), Drift::Unchanged);
    // Syncs of our own keep the generation verified.
    dp.sync(&table(&["10.0.0.1", "10.0.0.2"])).unwrap();
    assert_eq!(dp.check_drift().unwrap(), Drift::Unchanged);

    // Someone else's table moves the generation; ours is untouched.
    ns.nft(&["add", "table", "ip", "someone-else"]).unwrap();
    assert_eq!(dp.check_drift().unwrap(), Drift::Clean);
    assert_eq!(dp.check_drift().unwrap(), Drift::Unchanged);
}

#[test]
fn a_flushed_or_deleted_table_is_restored() {
    let ns = NetNs::new("drift-repair").unwrap();
    let mut dp = open(&ns);
    let want = table(&["10.0.0.1", "10.0.0.2"]);
    dp.sync(&want).unwrap();

    ns.nft(&["flush", "table", "inet", TABLE]).unwrap();
    let flushed = kernel(&ns).unwrap();
    assert!(flushed.chains["input"].rules.is_empty());
    match dp.check_drift().unwrap() {
        Drift::Repaired(report) => assert!(report.changes > 0, "{report:?}"),
        other => panic!("expected a repair, got {other:?}"),
    }
    assert_eq!(kernel(&ns).as_ref(), Some(&want));
    assert_eq!(dp.check_drift().unwrap(), Drift::Unchanged);

    ns.nft(&["delete", "table", "inet", TABLE]).unwrap();
    assert!(matches!(dp.check_drift().unwrap(), Drift::Repaired(_)));
    assert_eq!(kernel(&ns).as_ref(), Some(&want));

    // A hand-added element is drift too, and goes away.
    ns.nft(&[
        "add", "element", "inet", TABLE, "blocked", "{", "10.9.9.9", "}",
    ])
    .unwrap();
    assert!(matches!(dp.check_drift().unwrap(), Drift::Repaired(_)));
    assert_eq!(kernel(&ns).as_ref(), Some(&want));
    // Later syncs diff against the restored copy.
    let next = table(&["10.0.0.3"]);
    dp.sync(&next).unwrap();
    assert_eq!(kernel(&ns).as_ref(), Some(&next));
}

#[test]
fn elements_the_kernel_adds_to_dynamic_sets_are_not_drift() {
    let ns = NetNs::new("drift-dynamic").unwrap();
    let mut dp = open(&ns);
    dp.sync(&table(&["10.0.0.1"])).unwrap();
    // What a packet-path `update @seen { ip saddr }` would leave behind.
    ns.nft(&[
        "add", "element", "inet", TABLE, "seen", "{", "10.1.1.1", "}",
    ])
    .unwrap();
    assert_eq!(dp.check_drift().unwrap(), Drift::Clean);
}

#[test]
fn a_restarted_dataplane_takes_the_table_over_without_changing_it() {
    let ns = NetNs::new("drift-restart").unwrap();
    let want = table(&["10.0.0.1", "10.0.0.2"]);
    let first = open(&ns).sync(&want).unwrap();
    assert!(first.changes > 0);
    // A new process: reads what the kernel holds and finds nothing to do.
    let mut again = open(&ns);
    let report = again.sync(&want).unwrap();
    assert_eq!((report.changes, report.transactions), (0, 0), "{report:?}");
    assert_eq!(again.check_drift().unwrap(), Drift::Unchanged);
}
