//! Kernel tests of `nft::dataplane::Dataplane`, each in its own throwaway network
//! namespaces (deleted on drop, also on panic). Need root; fail loudly without.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use e2e::ruleset::{
    default_endpoints, endpoint, service_vip, Endpoint, ServiceRuleset, ServiceState, SERVICE_PORT,
    TABLE,
};
use e2e::topo::{can_connect, max_gap, spawn_in, Stream, Topology, SERVER};
use nft::dataplane::{Dataplane, Leftovers, SyncError};
use nft::diff::Delta;
use nft::testing::NetNs;
use nft::*;

const PORT: u16 = 5001;

fn m(left: Vec<Field>, right: Rhs) -> Expr {
    Expr::Match {
        left,
        op: MatchOp::Eq,
        right,
    }
}

/// A router firewall: forward policy drop, established first, then new TCP to
/// the server's allowed ports (a set) through a regular chain. `tag` changes every
/// comment, so going from one tag to another rewrites every chain and set;
/// `table_tag` changes the table comment, which replaces the whole table.
fn firewall(tag: &str, table_tag: &str) -> Table {
    let mut t = Table::new(Family::Inet, "kn-fw");
    t.comment = Some(format!("fw {table_tag}"));
    let mut ports = Set {
        name: "allowed".into(),
        key: vec![DataType::Ipv4Addr, DataType::InetService],
        comment: Some(format!("allowed {tag}")),
        ..Default::default()
    };
    ports.elements.insert(
        vec![
            KeyPart::Value(Value::Ipv4(SERVER)),
            KeyPart::Value(Value::Port(PORT)),
        ],
        ElemValue::default(),
    );
    t.add_set(ports);
    t.add_chain(Chain {
        name: "allow".into(),
        comment: Some(format!("allow {tag}")),
        rules: vec![Rule::new(vec![
            Expr::Counter,
            Expr::Verdict(Verdict::Accept),
        ])],
        ..Default::default()
    });
    t.add_chain(Chain {
        name: "forward".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: 0,
            policy: ChainPolicy::Drop,
        }),
        comment: Some(format!("forward {tag}")),
        rules: vec![
            Rule::new(vec![
                m(
                    vec![Field::CtState],
                    Rhs::Bits(ct_state::ESTABLISHED | ct_state::RELATED),
                ),
                Expr::Verdict(Verdict::Accept),
            ]),
            Rule::new(vec![
                m(
                    vec![Field::L4Proto],
                    Rhs::Value(vec![Value::Proto(proto::TCP)]),
                ),
                m(
                    vec![Field::IpDaddr, Field::ThDport],
                    Rhs::Set("allowed".into()),
                ),
                Expr::Verdict(Verdict::Jump("allow".into())),
            ])
            .with_comment(format!("policy {tag}")),
        ],
    });
    t
}

fn open(ns: &NetNs, t: &Table) -> Dataplane {
    Dataplane::open(ns.conn().unwrap(), t.family, &t.name).unwrap()
}

#[test]
fn atomic_replace_keeps_established_connection() {
    let topo = Topology::new("swap").unwrap();
    let variants = [firewall("a", "1"), firewall("b", "1"), firewall("b", "2")];
    let mut dp = open(&topo.router, &variants[0]);
    dp.sync(&variants[0]).unwrap();
    // The policy enforces: an unlisted port is dropped.
    assert!(!can_connect(&topo, 5002, Duration::from_millis(300)));

    let stream = Stream::start(&topo, PORT).unwrap();
    let mut kinds = [0usize; 2];
    for i in 1..=60 {
        let next = &variants[i % 3];
        let r = dp.sync(next).unwrap();
        assert_eq!(r.transactions, 1, "each swap is one atomic transaction");
        // a→b rewrites every chain and set; b→c and c→a replace the table.
        kinds[usize::from(i % 3 != 1)] += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = stream.finish().expect("stream survived every swap");
    assert!(seen.len() > 50, "too few exchanges: {}", seen.len());
    assert_eq!(kinds, [20, 40]);
    let back = dp.conn().read_table(Family::Inet, "kn-fw").unwrap();
    assert_eq!(back.as_ref(), dp.committed());
    eprintln!("{} echoes across 60 swaps", seen.len());
}

#[test]
fn stream_keeps_flowing_during_cold_load() {
    let topo = Topology::new("coldload").unwrap();
    let table = ServiceRuleset::kube_proxy_sized().build();
    let stream = Stream::start(&topo, PORT).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before_start = Instant::now() - Duration::from_millis(450);
    let load_start = Instant::now();
    let mut dp = Dataplane::open(topo.router.conn().unwrap(), Family::Ip, TABLE).unwrap();
    let report = dp.sync(&table).unwrap();
    let load_end = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let seen = stream.finish().expect("stream survived the load");
    let before = max_gap(&seen, before_start, load_start);
    let during = max_gap(&seen, load_start, load_end);
    eprintln!(
        "cold load {:?} in {} transactions (longest {:?}): longest gap before {:?}, during {:?}",
        report.elapsed, report.transactions, report.longest_transaction, before, during
    );
    assert!(report.staged);
    assert!(
        during < Duration::from_millis(200),
        "stream stalled {during:?} during the load"
    );
    let counts = ServiceRuleset::element_counts(&table);
    let back = dp.conn().read_table(Family::Ip, TABLE).unwrap().unwrap();
    assert_eq!(ServiceRuleset::element_counts(&back), counts);
}

#[test]
fn restart_reads_back_and_next_sync_is_empty() {
    let ns = NetNs::new("restart").unwrap();
    let g = ServiceRuleset {
        services: 20,
        endpoints: 5,
        policy_elements: 30,
        ..ServiceRuleset::kube_proxy_sized()
    };
    let table = g.build();
    {
        let mut dp = open(&ns, &table).with_chunk_messages(40);
        let r = dp.sync(&table).unwrap();
        assert!(r.staged && r.transactions > 2, "{r:?}");
    }
    // A new process: the committed state comes from the kernel.
    let mut dp = open(&ns, &table);
    assert_eq!(dp.committed(), Some(&table));
    let r = dp.sync(&table).unwrap();
    assert_eq!((r.ops, r.transactions), (0, 0));
    // And it continues incrementally from there.
    let mut next = table.clone();
    g.add_service(&mut next, 20);
    g.change_endpoints(&mut next, 3, 1);
    let r = dp.sync(&next).unwrap();
    assert_eq!(r.transactions, 1);
    let back = dp.conn().read_table(Family::Ip, TABLE).unwrap();
    assert_eq!(back.as_ref(), Some(&next));
}

/// A rule the kernel refuses at commit time: NAT in a filter chain.
fn with_bad_rule(t: &Table, chain: &str) -> Table {
    let mut bad = t.clone();
    let c = bad
        .chains
        .entry(chain.to_string())
        .or_insert_with(|| Chain {
            name: chain.to_string(),
            ..Default::default()
        });
    c.rules.push(
        Rule::new(vec![
            m(
                vec![Field::L4Proto],
                Rhs::Value(vec![Value::Proto(proto::TCP)]),
            ),
            Expr::Dnat {
                family: NatFamily::Ip,
                to: NatTarget::Addr {
                    addr: Value::Ipv4(SERVER),
                    port: Some(1),
                },
            },
        ])
        .with_comment("the bad one"),
    );
    bad
}

#[test]
fn rejected_change_keeps_committed_state() {
    let ns = NetNs::new("reject").unwrap();
    let good = firewall("a", "1");
    let mut dp = open(&ns, &good);
    dp.sync(&good).unwrap();
    let gen = dp.conn().generation().unwrap();

    let err = dp.sync(&with_bad_rule(&good, "forward")).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(
            err,
            SyncError::Kernel {
                leftovers: Leftovers::None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("forward"), "error names the op: {msg}");
    assert_eq!(dp.committed(), Some(&good));
    assert_eq!(dp.conn().generation().unwrap(), gen, "nothing committed");
    let back = dp.conn().read_table(Family::Inet, "kn-fw").unwrap();
    assert_eq!(back.as_ref(), Some(&good));
    // Still usable: the good table syncs as a no-op.
    assert_eq!(dp.sync(&good).unwrap().transactions, 0);
}

#[test]
fn failed_flip_after_staged_chunks_removes_leftovers() {
    let ns = NetNs::new("staged-fail").unwrap();
    let g = ServiceRuleset {
        services: 10,
        endpoints: 4,
        policy_elements: 10,
        ..ServiceRuleset::kube_proxy_sized()
    };
    let small = g.build();
    let mut dp = open(&ns, &small).with_chunk_messages(20);
    dp.sync(&small).unwrap();

    // Grow by 30 services with a new endpoint count (staged: chunks of the new
    // group map's elements) and break a base chain, which only the final
    // transaction touches.
    let g6 = ServiceRuleset { endpoints: 6, ..g };
    let mut big = small.clone();
    for s in 10..40 {
        g6.add_service(&mut big, s);
    }
    let bad = with_bad_rule(&big, "forward");
    let err = dp.sync(&bad).unwrap_err();
    eprintln!("{err}");
    match &err {
        SyncError::Kernel {
            transaction,
            transactions,
            leftovers,
            ..
        } => {
            assert!(*transactions > 2 && transaction == transactions, "{err:?}");
            assert_eq!(*leftovers, Leftovers::Removed);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(dp.committed(), Some(&small));
    let back = dp.conn().read_table(Family::Ip, TABLE).unwrap();
    assert_eq!(back.as_ref(), Some(&small), "staged objects were removed");
    // The good version of the same change goes through.
    let r = dp.sync(&big).unwrap();
    assert!(r.staged, "{r:?}");
    let back = dp.conn().read_table(Family::Ip, TABLE).unwrap();
    assert_eq!(back.as_ref(), Some(&big));
}

/// Event-driven batches (`Delta` + `apply_batch`) keep the committed copy equal
/// to a full render of the same state, and to the kernel.
#[test]
fn delta_batches_match_full_render_and_kernel() {
    let ns = NetNs::new("delta").unwrap();
    let g = ServiceRuleset {
        services: 50,
        endpoints: 4,
        policy_elements: 10,
        ..ServiceRuleset::kube_proxy_sized()
    };
    let mut st = ServiceState::new(g);
    let mut dp = open(&ns, &st.table());
    dp.sync(&st.table()).unwrap();
    let gen0 = dp.conn().generation().unwrap();
    let mut steps: Vec<Vec<(u32, Vec<Endpoint>)>> = vec![
        // A new Service of an existing group; of a new group (map + rule).
        vec![(50, default_endpoints(50, 4, 0))],
        vec![(51, default_endpoints(51, 7, 0))],
        // Endpoint count changes: the Service moves between groups.
        vec![
            (3, default_endpoints(3, 7, 1)),
            (4, default_endpoints(4, 2, 1)),
        ],
        // A Service goes away; its group stays (empty maps are harmless).
        vec![(51, vec![])],
        // The same endpoint moved twice in one batch.
        vec![
            (5, default_endpoints(5, 4, 2)),
            (5, default_endpoints(5, 4, 3)),
        ],
    ];
    // 100 endpoints moved in one batch.
    let mut moves: BTreeMap<u32, Vec<Endpoint>> = BTreeMap::new();
    for (svc, ep) in st.moved(100, 9) {
        let eps = moves
            .entry(svc)
            .or_insert_with(|| st.services[&svc].clone());
        if let Some(e) = eps.get_mut(ep as usize) {
            *e = endpoint(svc, ep, 9);
        }
    }
    steps.push(moves.into_iter().collect());
    for (i, step) in steps.into_iter().enumerate() {
        let mut d = Delta::new(g.family, TABLE);
        for (svc, eps) in step {
            st.set_endpoints(&mut d, svc, eps);
        }
        let batch = d.into_batch();
        let r = dp.apply_batch(&batch).unwrap();
        assert_eq!(r.transactions, 1);
        assert!(
            batch.ops.iter().all(|op| matches!(
                op,
                Op::AddSet(_)
                    | Op::AddRule { .. }
                    | Op::AddElements { .. }
                    | Op::DeleteElements { .. }
            )),
            "step {i}: {batch:?}"
        );
        assert_eq!(dp.committed(), Some(&st.table()), "step {i}");
    }
    assert!(dp.conn().generation().unwrap() != gen0);
    let back = dp.conn().read_table(Family::Ip, TABLE).unwrap();
    assert_eq!(back.as_ref(), Some(&st.table()));
    assert_eq!(dp.sync(&st.table()).unwrap().transactions, 0);
}

/// Real packets through the grouped shape: a client connects to Service VIPs
/// through the router, whose NAT rules (loaded as deltas) pick one of the
/// backends on the server; connections spread over the backends.
#[test]
fn services_dnat_spreads_over_backends() {
    let topo = Topology::new("svcnat").unwrap();
    let backends: Vec<Ipv4Addr> = (10..14).map(|i| Ipv4Addr::new(10, 10, 2, i)).collect();
    for b in &backends {
        topo.server
            .exec("ip", &["addr", "add", &format!("{b}/24"), "dev", "s0"])
            .unwrap();
    }
    const BACKEND_PORT: u16 = 8080;
    let g = ServiceRuleset {
        services: 0,
        endpoints: 0,
        policy_elements: 0,
        ..ServiceRuleset::kube_proxy_sized()
    };
    let mut st = ServiceState::new(g);
    let mut dp = Dataplane::open(topo.router.conn().unwrap(), Family::Ip, TABLE).unwrap();
    dp.sync(&st.table()).unwrap();
    // Service 1 (one endpoint: the server's main address) first, so that packets
    // for Service 0 miss the eps-1 rule before they reach eps-4.
    let mut d = Delta::new(Family::Ip, TABLE);
    st.set_endpoints(
        &mut d,
        1,
        vec![Endpoint {
            addr: SERVER,
            port: BACKEND_PORT,
        }],
    );
    dp.apply_batch(&d.into_batch()).unwrap();
    let mut d = Delta::new(Family::Ip, TABLE);
    st.set_endpoints(
        &mut d,
        0,
        backends
            .iter()
            .map(|a| Endpoint {
                addr: *a,
                port: BACKEND_PORT,
            })
            .collect(),
    );
    dp.apply_batch(&d.into_batch()).unwrap();
    assert_eq!(dp.committed(), Some(&st.table()));
    assert_eq!(st.groups, vec![1, 4]);

    const CONNS: usize = 40;
    let total = CONNS + 1;
    let (tx, rx) = std::sync::mpsc::channel();
    let server = spawn_in(topo.server.path().to_path_buf(), move || {
        let l = TcpListener::bind(("0.0.0.0", BACKEND_PORT)).expect("bind backends");
        tx.send(()).expect("signal");
        let mut hits = Vec::new();
        while hits.len() < total {
            let (s, _) = l.accept().expect("accept");
            hits.push(s.local_addr().expect("local addr"));
        }
        hits
    });
    rx.recv().unwrap();
    let client = spawn_in(topo.client.path().to_path_buf(), move || {
        let mut ok = 0;
        for i in 0..total {
            let svc = if i == 0 { 1 } else { 0 };
            let vip = SocketAddr::from((service_vip(svc), SERVICE_PORT));
            if TcpStream::connect_timeout(&vip, Duration::from_secs(3)).is_ok() {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(
        client.join().unwrap(),
        total,
        "every connection reached a backend"
    );
    let hits = server.join().unwrap();
    assert_eq!(hits[0], SocketAddr::from((SERVER, BACKEND_PORT)));
    let mut per_backend: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for h in &hits[1..] {
        let SocketAddr::V4(a) = h else { panic!("{h}") };
        assert!(
            backends.contains(a.ip()),
            "{h} is not a backend of service 0"
        );
        *per_backend.entry(*a.ip()).or_default() += 1;
    }
    eprintln!("connections per backend: {per_backend:?}");
    assert!(
        per_backend.len() >= 3,
        "{CONNS} connections should spread over the 4 backends: {per_backend:?}"
    );
}
