//! ctnetlink on a real kernel (needs root): a client namespace sends UDP over a
//! veth to a "node" namespace whose nftables DNATs Service VIPs to endpoint
//! addresses on the node. Conntrack in the node then holds real entries, DNATed
//! and direct; `list` must show their tuples, `delete` must remove exactly the
//! entries DNATed to a given endpoint, and a running UDP flow must stick to its
//! old endpoint after the NAT map changed until its entry is deleted.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use nft::conntrack::{Conntrack, Entry, Filter, IpFamily, Proto};
use nft::netlink::{replace_table_batch, Conn};
use nft::testing::NetNs;
use nft::*;

/// Addresses of one family: client and node on a veth, two endpoint addresses
/// on the node, VIPs routed from the client to the node.
struct Plan {
    family: IpFamily,
    client: &'static str,
    node: &'static str,
    old: &'static str,
    new: &'static str,
    vips: [&'static str; 3],
    prefix: &'static str,
    svc_net: &'static str,
}

const V4: Plan = Plan {
    family: IpFamily::V4,
    client: "10.77.0.1",
    node: "10.77.0.2",
    old: "10.77.0.3",
    new: "10.77.0.4",
    vips: ["10.96.0.10", "10.96.0.11", "10.96.0.12"],
    prefix: "24",
    svc_net: "10.96.0.0/16",
};

const V6: Plan = Plan {
    family: IpFamily::V6,
    client: "fd77::1",
    node: "fd77::2",
    old: "fd77::3",
    new: "fd77::4",
    vips: ["fd96::10", "fd96::11", "fd96::12"],
    prefix: "64",
    svc_net: "fd96::/64",
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(a: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(a), port)
}

fn value(a: IpAddr) -> Value {
    match a {
        IpAddr::V4(a) => Value::Ipv4(a),
        IpAddr::V6(a) => Value::Ipv6(a),
    }
}

fn key(to: SocketAddr) -> ElemKey {
    vec![
        KeyPart::Value(value(to.ip())),
        KeyPart::Value(Value::Port(to.port())),
    ]
}

fn to(ep: SocketAddr) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Values(vec![
            value(ep.ip()),
            Value::Port(ep.port()),
        ])),
        ..Default::default()
    }
}

const TABLE: &str = "svc";
const MAP: &str = "vips";

/// `udp: dnat to ip daddr . udp dport map @vips` in nat prerouting, with
/// VIP0:53 → old:5353, VIP1:53 → new:5353, VIP2:54 → old:5354.
fn nat_table(p: &Plan) -> Table {
    let (family, nat, addr_type, daddr) = match p.family {
        IpFamily::V4 => (
            Family::Ip,
            NatFamily::Ip,
            DataType::Ipv4Addr,
            Field::IpDaddr,
        ),
        IpFamily::V6 => (
            Family::Ip6,
            NatFamily::Ip6,
            DataType::Ipv6Addr,
            Field::Ip6Daddr,
        ),
    };
    let mut t = Table::new(family, TABLE);
    let mut map = Set {
        name: MAP.into(),
        key: vec![addr_type, DataType::InetService],
        data: Some(SetData::Values(vec![addr_type, DataType::InetService])),
        ..Default::default()
    };
    for (vip, port, ep) in [
        (p.vips[0], 53, sa(p.old, 5353)),
        (p.vips[1], 53, sa(p.new, 5353)),
        (p.vips[2], 54, sa(p.old, 5354)),
    ] {
        map.elements.insert(key(sa(vip, port)), to(ep));
    }
    t.add_set(map);
    t.add_chain(Chain {
        name: "prerouting".into(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Prerouting,
            priority: -100,
            policy: ChainPolicy::Accept,
        }),
        rules: vec![Rule::new(vec![
            Expr::Match {
                left: vec![Field::L4Proto],
                op: MatchOp::Eq,
                right: Rhs::Value(vec![Value::Proto(proto::UDP)]),
            },
            Expr::Dnat {
                family: nat,
                to: NatTarget::Map {
                    key: MapKey::Fields(vec![daddr, Field::ThDport]),
                    map: MAP.into(),
                },
            },
        ])],
        ..Default::default()
    });
    assert_eq!(nft::render::validate(&t), vec![]);
    t
}

/// Two namespaces joined by a veth (created inside the client namespace with
/// its peer directly in the node's, so the root namespace is never touched),
/// the NAT table loaded in the node, and sockets: one ctnetlink socket and
/// one nf_tables connection in the node.
struct Lab {
    client: NetNs,
    node: NetNs,
    nft: Conn,
    ct: Conntrack,
}

impl Lab {
    fn new(p: &Plan, purpose: &str) -> Lab {
        let client = NetNs::new(&format!("{purpose}-c")).unwrap();
        let node = NetNs::new(&format!("{purpose}-n")).unwrap();
        let ip_ = |ns: &NetNs, args: &[&str]| {
            ns.exec("ip", args).unwrap();
        };
        ip_(
            &client,
            &[
                "link",
                "add",
                "ct-c",
                "type",
                "veth",
                "peer",
                "name",
                "ct-n",
                "netns",
                node.name(),
            ],
        );
        // nodad: IPv6 addresses usable at once, without duplicate detection.
        let add = |ns: &NetNs, a: &str, dev: &str| {
            let cidr = format!("{a}/{}", p.prefix);
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", dev];
            if p.family == IpFamily::V6 {
                args.push("nodad");
            }
            ip_(ns, &args);
        };
        add(&client, p.client, "ct-c");
        ip_(&client, &["link", "set", "ct-c", "up"]);
        ip_(&client, &["route", "add", p.svc_net, "via", p.node]);
        for a in [p.node, p.old, p.new] {
            add(&node, a, "ct-n");
        }
        ip_(&node, &["link", "set", "ct-n", "up"]);

        let mut nft = node.conn().unwrap();
        nft.apply(&replace_table_batch(&nat_table(p)))
            .unwrap_or_else(|e| panic!("load NAT table: {e}"));
        let ct = open_ctnetlink(&node);
        Lab {
            client,
            node,
            nft,
            ct,
        }
    }

    /// A UDP socket of the client at `port`.
    fn client_socket(&self, p: &Plan, port: u16) -> UdpSocket {
        let at = sa(p.client, port);
        self.client.run(move || UdpSocket::bind(at)).unwrap()
    }

    /// An endpoint: a UDP socket of the node.
    fn server(&self, at: SocketAddr) -> UdpSocket {
        let s = self.node.run(move || UdpSocket::bind(at)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn udp(&mut self, family: IpFamily) -> Vec<Entry> {
        self.ct.list(&Filter::new(Proto::Udp, family)).unwrap()
    }
}

/// A ctnetlink socket in `ns`. The kernel loads `nf_conntrack_netlink` on the
/// first request by itself; where module autoloading is off the subsystem is
/// missing (nfnetlink answers EINVAL) and loading it explicitly is the fix.
fn open_ctnetlink(ns: &NetNs) -> Conntrack {
    let mut ct = Conntrack::open_in_netns(ns.path()).unwrap();
    let probe = Filter::new(Proto::Udp, IpFamily::V4);
    if let Err(e) = ct.list(&probe) {
        assert_eq!(e.errno(), Some(libc::EINVAL), "ctnetlink dump: {e}");
        eprintln!("ctnetlink missing ({e}); trying modprobe nf_conntrack_netlink");
        let _ = std::process::Command::new("modprobe")
            .arg("nf_conntrack_netlink")
            .status();
        ct.list(&probe)
            .unwrap_or_else(|e| panic!("ctnetlink after modprobe: {e}"));
    }
    ct
}

fn send(from: &UdpSocket, to: SocketAddr, msg: &str) {
    from.send_to(msg.as_bytes(), to).unwrap();
}

/// `server` receives `msg` next (within its read timeout).
fn expect(server: &UdpSocket, msg: &str) {
    let mut buf = [0u8; 64];
    let (n, _) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("expected {msg:?} at {}: {e}", server.local_addr().unwrap()));
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), msg);
}

/// Nothing is queued at `server`.
fn expect_nothing(server: &UdpSocket) {
    server.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let r = server.recv_from(&mut buf);
    server.set_nonblocking(false).unwrap();
    match r {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => panic!("recv: {e}"),
        Ok((n, from)) => panic!(
            "{} got {:?} from {from}",
            server.local_addr().unwrap(),
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// (original src, original dst, reply src, reply dst, DNATed) of an entry.
type Shape = (SocketAddr, SocketAddr, SocketAddr, SocketAddr, bool);

fn shape(e: &Entry) -> Shape {
    (
        e.orig.src,
        e.orig.dst,
        e.reply.src,
        e.reply.dst,
        e.is_dnat(),
    )
}

fn shapes(es: &[Entry]) -> BTreeSet<Shape> {
    es.iter().map(shape).collect()
}

/// Four flows: three DNATed (two to the old endpoint address, one to the new)
/// and one straight to the old endpoint. Lists show them with their tuples;
/// endpoint filters pick and delete only the DNATed ones.
fn list_and_delete(p: &Plan, purpose: &str) {
    let mut lab = Lab::new(p, purpose);
    let c = sa(p.client, 0);
    let (old, new, old2) = (sa(p.old, 5353), sa(p.new, 5353), sa(p.old, 5354));
    let servers = [lab.server(old), lab.server(new), lab.server(old2)];
    // (client port, destination, DNATed to, server index)
    let flows = [
        (40001, sa(p.vips[0], 53), old, 0),
        (40002, sa(p.vips[1], 53), new, 1),
        (40003, sa(p.vips[2], 54), old2, 2),
        (40004, old, old, 0),
    ];
    let mut want = BTreeSet::new();
    for (port, dst, ep, server) in flows {
        let from = SocketAddr::new(c.ip(), port);
        send(&lab.client_socket(p, port), dst, "hello");
        expect(&servers[server], "hello");
        want.insert((from, dst, ep, from, dst != ep));
    }
    let all = lab.udp(p.family);
    assert_eq!(shapes(&all), want, "{all:#?}");
    for e in &all {
        assert_eq!(e.zone, 0);
        assert!(e.id.is_some() && e.timeout_secs.is_some(), "{e:?}");
    }
    let shape_of = |port: u16| *want.iter().find(|s| s.0.port() == port).unwrap();
    let only = |ports: &[u16]| ports.iter().map(|p| shape_of(*p)).collect::<BTreeSet<_>>();

    let f = || Filter::new(Proto::Udp, p.family);
    let list = |lab: &mut Lab, filter: Filter| shapes(&lab.ct.list(&filter).unwrap());
    assert_eq!(list(&mut lab, f().dnat_to(old)), only(&[40001]));
    assert_eq!(
        list(&mut lab, f().dnat_to_addr(old.ip())),
        only(&[40001, 40003])
    );
    assert_eq!(
        list(&mut lab, f().orig_dst(sa(p.vips[0], 53))),
        only(&[40001])
    );
    assert_eq!(list(&mut lab, f().orig_dst_port(5353)), only(&[40004]));
    assert_eq!(list(&mut lab, Filter::new(Proto::Tcp, p.family)), only(&[]));

    let gone = all
        .iter()
        .find(|e| e.orig.src.port() == 40001)
        .unwrap()
        .clone();
    assert_eq!(lab.ct.delete(&f().dnat_to(old)).unwrap(), 1);
    assert_eq!(shapes(&lab.udp(p.family)), only(&[40002, 40003, 40004]));
    assert_eq!(lab.ct.delete(&f().dnat_to(old)).unwrap(), 0);
    // Deleting an entry that is gone is ENOENT from the kernel: not an error.
    assert!(!lab.ct.delete_entry(&gone).unwrap());
    // NodePort-style: by original port and endpoint address only.
    assert_eq!(
        lab.ct
            .delete(&f().orig_dst_port(54).dnat_to_addr(old.ip()))
            .unwrap(),
        1
    );
    assert_eq!(shapes(&lab.udp(p.family)), only(&[40002, 40004]));
    let other = match p.family {
        IpFamily::V4 => IpFamily::V6,
        IpFamily::V6 => IpFamily::V4,
    };
    assert_eq!(lab.udp(other), vec![], "dump filtered by family");
    assert!(lab
        .ct
        .list(&Filter::new(Proto::Udp, other).dnat_to(old))
        .is_err());
}

/// A flow keeps its DNAT target after the map changed, until its entry is
/// deleted; then its next datagram reaches the new endpoint.
fn flow_moves_after_delete(p: &Plan, purpose: &str) {
    let mut lab = Lab::new(p, purpose);
    let vip = sa(p.vips[0], 53);
    let (old_ep, new_ep) = (sa(p.old, 5353), sa(p.new, 5353));
    let (old, new) = (lab.server(old_ep), lab.server(new_ep));
    let client = lab.client_socket(p, 40000);
    for i in 0..2 {
        let m = format!("before {i}");
        send(&client, vip, &m);
        expect(&old, &m);
    }

    // The endpoint behind the VIP changes.
    let mut swap = Batch::new(nat_table(p).family, TABLE);
    swap.ops.push(Op::DeleteElements {
        set: MAP.into(),
        keys: vec![key(vip)],
    });
    swap.ops.push(Op::AddElements {
        set: MAP.into(),
        elements: vec![(key(vip), to(new_ep))],
    });
    lab.nft.apply(&swap).unwrap();
    // A new flow sees the new map...
    send(&lab.client_socket(p, 40010), vip, "fresh");
    expect(&new, "fresh");
    // ...the running one does not: its entry still says "old".
    for i in 0..3 {
        let m = format!("stale {i}");
        send(&client, vip, &m);
        expect(&old, &m);
    }
    expect_nothing(&new);

    let f = Filter::new(Proto::Udp, p.family).orig_dst(vip);
    let stale = lab.ct.list(&f.clone().dnat_to(old_ep)).unwrap();
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert_eq!(stale[0].orig.src, sa(p.client, 40000));
    assert_eq!(lab.ct.delete(&f.clone().dnat_to(old_ep)).unwrap(), 1);

    for i in 0..3 {
        let m = format!("moved {i}");
        send(&client, vip, &m);
        expect(&new, &m);
    }
    expect_nothing(&old);
    let now = lab.ct.list(&f).unwrap();
    let mut srcs: Vec<_> = now.iter().map(|e| e.orig.src.port()).collect();
    srcs.sort();
    assert_eq!(srcs, [40000, 40010]);
    assert!(now.iter().all(|e| e.reply.src == new_ep), "{now:#?}");
}

#[test]
fn list_and_delete_v4() {
    list_and_delete(&V4, "ct-list4");
}

#[test]
fn list_and_delete_v6() {
    list_and_delete(&V6, "ct-list6");
}

#[test]
fn udp_flow_moves_after_delete_v4() {
    flow_moves_after_delete(&V4, "ct-flow4");
}

#[test]
fn udp_flow_moves_after_delete_v6() {
    flow_moves_after_delete(&V6, "ct-flow6");
}
