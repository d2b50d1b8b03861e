//! Service NAT on a real kernel, in throwaway network namespaces (needs root):
//! the rendered table loads through netlink and reads back equal to the
//! model, `nft -c -f` accepts its text, and DNAT, reject and session affinity
//! work on real TCP connections.

#[path = "service_support.rs"]
mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use kube_nft::cluster::Cluster;
use kube_nft::render::service::affinity_map;
use kube_nft::service::{IpFamily, ServiceConfig};
use nft::netlink::replace_table_batch;
use nft::testing::NetNs;
use nft::{ElemData, Family, KeyPart, Table, Value};
use serde_json::json;
use support::*;

fn load_and_read_back(ns: &NetNs, t: &Table) -> Table {
    let mut conn = ns.conn().unwrap();
    conn.apply(&replace_table_batch(t))
        .unwrap_or_else(|e| panic!("load failed: {e}"));
    conn.read_table(Family::Inet, &t.name).unwrap().unwrap()
}

fn assert_same(got: &Table, want: &Table) {
    for (name, s) in &want.sets {
        assert_eq!(got.sets.get(name), Some(s), "set {name}");
    }
    for (name, c) in &want.chains {
        assert_eq!(got.chains.get(name), Some(c), "chain {name}");
    }
    assert_eq!(got, want);
}

#[test]
fn rendered_table_loads_reads_back_equal_and_nft_accepts_its_text() {
    let t = render_example(&example_cluster(), &config());
    let ns = NetNs::new("svc-load").unwrap();
    assert_same(&load_and_read_back(&ns, &t), &t);

    let text = nft::render::render_text(&t);
    let check = NetNs::new("svc-text").unwrap();
    check.nft_load(&text).unwrap_or_else(|e| panic!("{e}"));
    // Loaded from text, the kernel holds the same rules (listing compared).
    let listed = |ns: &NetNs| {
        ns.nft(&["list", "chain", "inet", "kube-nft", "services"])
            .unwrap()
    };
    assert_eq!(listed(&ns), listed(&check));
}

/// IPv6 session affinity: the kernel takes the record rule (40-byte key and
/// 20-byte data in 4-byte registers) and reads it back; `nft` 1.0.6 text
/// cannot (see `render::service`), so only netlink is checked here.
#[test]
fn ipv6_affinity_loads_through_netlink() {
    let mut c = example_cluster();
    add_service_with(
        &mut c,
        "sticky6",
        "fd00:96::20",
        &["fd00:10::21"],
        json!({"sessionAffinity": "ClientIP"}),
    );
    let t = render_example(&c, &config());
    assert!(t.sets.contains_key("svc-aff-v6-10800"));
    let ns = NetNs::new("svc-aff6").unwrap();
    assert_same(&load_and_read_back(&ns, &t), &t);
}

/// The node is a namespace with the endpoints' addresses on its loopback and
/// a route to the Service range (from the node address 10.0.9.1);
/// connections come from the node itself (nat output), so one namespace is
/// enough.
struct Node {
    ns: NetNs,
}

impl Node {
    fn new(purpose: &str) -> Node {
        let ns = NetNs::new(purpose).unwrap();
        for a in ["10.0.1.11/32", "10.0.1.12/32", "10.0.9.1/32"] {
            ns.exec("ip", &["addr", "add", a, "dev", "lo"]).unwrap();
        }
        ns.exec(
            "ip",
            &[
                "route",
                "add",
                "10.96.0.0/16",
                "dev",
                "lo",
                "src",
                "10.0.9.1",
            ],
        )
        .unwrap();
        Node { ns }
    }

    /// Connects to `to` from inside the node `count` times, each time
    /// reporting which listener address accepted (`Err` for a refused or
    /// timed-out connection).
    fn connect(&self, to: &str, count: usize, listen: &[&str]) -> Vec<Result<String, ErrorKind>> {
        let to: SocketAddr = to.parse().unwrap();
        let listen: Vec<String> = listen.iter().map(|s| s.to_string()).collect();
        self.ns.run(move || {
            let listeners: Vec<TcpListener> = listen
                .iter()
                .map(|a| {
                    let l = TcpListener::bind(a.as_str()).unwrap();
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            (0..count)
                .map(|_| {
                    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        .map_err(|e| e.kind())?;
                    drop(s);
                    // Which listener got it: the endpoint DNAT chose.
                    for _ in 0..200 {
                        for l in &listeners {
                            if let Ok((conn, _)) = l.accept() {
                                return Ok(conn.local_addr().unwrap().to_string());
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(ErrorKind::TimedOut)
                })
                .collect()
        })
    }
}

fn packet_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.add_node_address(NODE, "10.0.9.1".parse().unwrap());
    add_service(&mut c, "web", WEB_VIP, &["10.0.1.11", "10.0.1.12"]);
    add_service(&mut c, "empty", EMPTY_VIP, &[]);
    add_service_with(
        &mut c,
        "sticky",
        STICKY_VIP,
        &["10.0.1.11", "10.0.1.12"],
        json!({"sessionAffinity": "ClientIP"}),
    );
    c
}

#[test]
fn dnat_reject_and_affinity_on_real_connections() {
    let node = Node::new("svc-pkt");
    let t = render_example(&packet_cluster(), &ServiceConfig::default());
    assert_same(&load_and_read_back(&node.ns, &t), &t);
    let eps = ["10.0.1.11:8080", "10.0.1.12:8080"];

    // DNAT: every connection reaches one of the endpoints, both get some.
    let got = node.connect(&format!("{WEB_VIP}:80"), 24, &eps);
    let mut seen: Vec<String> = got.into_iter().map(|r| r.unwrap()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, eps, "random choice over both endpoints");

    // No endpoints: refused at once (TCP reset), where an address no Service
    // has goes unanswered (the control: the reset is the reject rule's).
    let got = node.connect(&format!("{EMPTY_VIP}:80"), 1, &[]);
    assert_eq!(got, vec![Err(ErrorKind::ConnectionRefused)]);
    let got = node.connect("10.96.0.99:80", 1, &[]);
    assert_eq!(got, vec![Err(ErrorKind::TimedOut)]);

    // Affinity: the first connection picks an endpoint, the rest follow it,
    // and the kernel recorded client . VIP . tcp . 80 -> that endpoint.
    let got = node.connect(&format!("{STICKY_VIP}:80"), 12, &eps);
    let first = got[0].clone().unwrap();
    assert!(got.iter().all(|r| r.as_ref() == Ok(&first)), "{got:?}");
    let mut conn = node.ns.conn().unwrap();
    let map = conn
        .read_set(Family::Inet, "kube-nft", &affinity_map(IpFamily::V4))
        .unwrap()
        .unwrap();
    let entries: Vec<(Vec<KeyPart>, Option<ElemData>)> =
        map.elements.into_iter().map(|(k, v)| (k, v.data)).collect();
    let (ep_addr, ep_port) = first.split_once(':').unwrap();
    assert_eq!(
        entries,
        vec![(
            vec![
                KeyPart::Value(Value::Ipv4("10.0.9.1".parse().unwrap())),
                KeyPart::Value(Value::Ipv4(STICKY_VIP.parse().unwrap())),
                KeyPart::Value(Value::Proto(nft::proto::TCP)),
                KeyPart::Value(Value::Port(80)),
            ],
            Some(ElemData::Values(vec![
                Value::Ipv4(ep_addr.parse().unwrap()),
                Value::Port(ep_port.parse().unwrap()),
            ]))
        )]
    );
}
