//! The lab's plumbing on the real kernel (needs root): namespaces, routing,
//! listeners, probes and cleanup. Every test owns its own run prefix, and its
//! `LabGuard` removes the namespaces even when an assertion panics.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_nft::lab::{
    self, cleanup_stale, naming, netns, probe, probe_many, LabGuard, LabSpec, Listeners, NodeSpec,
    PodPort, PodSpec, ProbeError, ProbeSpec, Protocol, Topology,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const HTTP: PodPort = PodPort {
    protocol: Protocol::Tcp,
    port: 80,
};
const DNS: PodPort = PodPort {
    protocol: Protocol::Udp,
    port: 53,
};

/// Two nodes with three pods each, all serving TCP 80 and UDP 53.
fn two_nodes_three_pods(dual_stack: bool) -> LabSpec {
    let node = |name: &str, i: u8| NodeSpec {
        name: name.into(),
        pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
        pod_cidr_v6: dual_stack.then(|| format!("fd00:10:244:{i}::/64").parse().unwrap()),
    };
    let pod = |namespace: &str, name: &str, node: &str| PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        node: node.into(),
        ip: None,
        ipv6: None,
        ports: vec![HTTP, DNS],
    };
    let mut pinned = pod("prod", "db", "worker-b");
    pinned.ip = Some("10.244.1.77".parse().unwrap());
    LabSpec {
        nodes: vec![node("worker-a", 0), node("worker-b", 1)],
        pods: vec![
            pod("default", "web", "worker-a"),
            pod("default", "api", "worker-a"),
            pod("prod", "cache", "worker-a"),
            pod("default", "client", "worker-b"),
            pinned,
            pod("prod", "queue", "worker-b"),
        ],
    }
}

fn build(spec: &LabSpec) -> (LabGuard, Topology) {
    nft::testing::require_root();
    let guard = LabGuard::new().expect("lab guard");
    let started = Instant::now();
    let topology = lab::build(spec, &guard).expect("lab topology");
    eprintln!(
        "built {} nodes + {} pods under {} in {:?}",
        topology.nodes.len(),
        topology.pods.len(),
        guard.prefix(),
        started.elapsed()
    );
    (guard, topology)
}

/// Probes from every pod to every other pod on every address family it has.
fn all_pairs(topology: &Topology, v6: bool) -> Vec<(usize, usize, ProbeSpec)> {
    let mut probes = Vec::new();
    for (from, source) in topology.pods.iter().enumerate() {
        for (to, target) in topology.pods.iter().enumerate() {
            if from == to {
                continue;
            }
            let ip = if v6 {
                IpAddr::V6(target.ipv6.expect("dual-stack pod"))
            } else {
                IpAddr::V4(target.ip)
            };
            for port in [HTTP, DNS] {
                probes.push((
                    from,
                    to,
                    ProbeSpec {
                        from: source.netns.clone(),
                        to: SocketAddr::new(ip, port.port),
                        protocol: port.protocol,
                        timeout: TIMEOUT,
                    },
                ));
            }
        }
    }
    probes
}

async fn assert_all_pairs_answer(topology: &Topology, v6: bool) {
    let probes = all_pairs(topology, v6);
    let specs: Vec<ProbeSpec> = probes.iter().map(|(_, _, spec)| spec.clone()).collect();
    let started = Instant::now();
    let results = probe_many(&specs).await;
    eprintln!("{} probes in {:?}", specs.len(), started.elapsed());
    let mut failures = Vec::new();
    for ((from, to, spec), result) in probes.iter().zip(&results) {
        let (source, target) = (&topology.pods[*from], &topology.pods[*to]);
        let expected_source = if v6 {
            IpAddr::V6(source.ipv6.unwrap())
        } else {
            IpAddr::V4(source.ip)
        };
        let answer = result.answer.as_ref();
        let right = result.connected
            && answer.map(|a| a.responder.as_str()) == Some(target.label().as_str())
            && answer.and_then(|a| a.seen_source) == Some(expected_source);
        if !right {
            failures.push(format!(
                "{} -> {} {} {}: {result:?}",
                source.label(),
                target.label(),
                spec.protocol,
                spec.to
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "failed probes:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_pod_reaches_every_other_pod_over_tcp_and_udp() {
    let (_guard, topology) = build(&two_nodes_three_pods(false));
    assert_eq!(
        topology.pod("prod", "db").unwrap().ip.to_string(),
        "10.244.1.77"
    );
    let listeners = Listeners::serve_pods(&topology).await.unwrap();
    assert_all_pairs_answer(&topology, false).await;
    drop(listeners);
}

#[tokio::test]
async fn dual_stack_pods_reach_each_other_over_ipv6() {
    let (_guard, topology) = build(&two_nodes_three_pods(true));
    assert!(topology.pods.iter().all(|p| p.ipv6.is_some()));
    let listeners = Listeners::serve_pods(&topology).await.unwrap();
    assert_all_pairs_answer(&topology, true).await;
    drop(listeners);
}

#[tokio::test]
async fn outside_host_reaches_nodes_and_pods_reach_outside() {
    let (_guard, topology) = build(&two_nodes_three_pods(false));
    let mut listeners = Listeners::serve_pods(&topology).await.unwrap();
    let node_port = PodPort {
        protocol: Protocol::Tcp,
        port: 30080,
    };
    for node in &topology.nodes {
        let who = format!("node/{}", node.name);
        let ips = [IpAddr::V4(node.internal_ip), IpAddr::V6(node.internal_ipv6)];
        listeners
            .serve(&node.netns, &who, &ips, &[node_port])
            .await
            .unwrap();
    }
    listeners
        .serve(
            &topology.outside.netns,
            "outside",
            &[IpAddr::V4(topology.outside.ip)],
            &[HTTP],
        )
        .await
        .unwrap();

    for node in &topology.nodes {
        for ip in [IpAddr::V4(node.internal_ip), IpAddr::V6(node.internal_ipv6)] {
            let to = SocketAddr::new(ip, node_port.port);
            let result = probe(&topology.outside, to, Protocol::Tcp, TIMEOUT).await;
            let answer = result
                .answer
                .as_ref()
                .unwrap_or_else(|| panic!("{to}: {result:?}"));
            assert_eq!(answer.responder, format!("node/{}", node.name));
            let outside_ip = match ip {
                IpAddr::V4(_) => IpAddr::V4(topology.outside.ip),
                IpAddr::V6(_) => IpAddr::V6(topology.outside.ipv6),
            };
            assert_eq!(answer.seen_source, Some(outside_ip));
        }
    }
    // Pods leave the cluster unmasqueraded for now (no nftables yet).
    let web = topology.pod("default", "web").unwrap();
    let to = SocketAddr::new(IpAddr::V4(topology.outside.ip), 80);
    let result = probe(web, to, Protocol::Tcp, TIMEOUT).await;
    let answer = result.answer.expect("outside answers");
    assert_eq!(answer.responder, "outside");
    assert_eq!(answer.seen_source, Some(IpAddr::V4(web.ip)));
    // And the outside host reaches pods through the underlay's per-node routes.
    let db = topology.pod("prod", "db").unwrap();
    let to = SocketAddr::new(IpAddr::V4(db.ip), 80);
    let result = probe(&topology.outside, to, Protocol::Tcp, TIMEOUT).await;
    assert_eq!(result.answer.expect("db answers").responder, "prod/db");
}

#[tokio::test]
async fn closed_ports_are_refused_quickly_and_sctp_is_reported() {
    let mut spec = two_nodes_three_pods(false);
    spec.pods[0].ports.push(PodPort {
        protocol: Protocol::Sctp,
        port: 3868,
    });
    let (_guard, topology) = build(&spec);
    let listeners = Listeners::serve_pods(&topology).await.unwrap();
    let not_servable = listeners.not_servable();
    assert_eq!(not_servable.len(), 1, "{not_servable:?}");
    assert_eq!(not_servable[0].who, "default/web");
    assert!(not_servable[0].reason.contains("SCTP"), "{not_servable:?}");

    let client = topology.pod("default", "client").unwrap();
    let web = topology.pod("default", "web").unwrap();
    let slow = Duration::from_secs(10);
    let specs: Vec<ProbeSpec> = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .map(|protocol| ProbeSpec {
            from: client.netns.clone(),
            to: SocketAddr::new(IpAddr::V4(web.ip), 8081),
            protocol,
            timeout: slow,
        })
        .collect();
    let results = probe_many(&specs).await;
    for result in &results[..2] {
        assert!(!result.connected, "{result:?}");
        assert_eq!(result.error, Some(ProbeError::Refused), "{result:?}");
        assert!(result.elapsed < Duration::from_secs(1), "{result:?}");
    }
    assert!(!results[2].connected);
    assert!(
        matches!(&results[2].error, Some(ProbeError::NotProbeable(why)) if why.contains("SCTP")),
        "{:?}",
        results[2]
    );
    drop(listeners);
}

fn listed_namespaces() -> String {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn dropping_the_guard_removes_every_namespace() {
    let (guard, topology) = build(&two_nodes_three_pods(false));
    let prefix = guard.prefix().to_string();
    let listeners = Listeners::serve_pods(&topology).await.unwrap();
    let before = listed_namespaces();
    for netns in topology.namespaces() {
        assert!(before.contains(&netns.name), "{} missing", netns.name);
    }
    assert_eq!(guard.namespaces().unwrap().len(), 2 + 2 + 6);
    drop(listeners);
    drop(guard);
    assert!(
        !listed_namespaces().contains(&prefix),
        "{}",
        listed_namespaces()
    );
}

#[test]
fn a_panicking_test_still_cleans_up() {
    nft::testing::require_root();
    let mut prefix = String::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let guard = LabGuard::new().unwrap();
        prefix = guard.prefix().to_string();
        lab::build(&two_nodes_three_pods(false), &guard).unwrap();
        panic!("assertion failed mid-test");
    }));
    assert!(outcome.is_err());
    assert!(!prefix.is_empty());
    assert!(!listed_namespaces().contains(&prefix));
}

#[test]
fn a_bad_spec_names_the_pod_and_creates_nothing() {
    nft::testing::require_root();
    let guard = LabGuard::new().unwrap();
    let mut spec = two_nodes_three_pods(false);
    spec.pods[1].ip = Some("10.244.9.9".parse().unwrap());
    let error = lab::build(&spec, &guard).unwrap_err().to_string();
    assert!(error.contains("pod default/api"), "{error}");
    assert!(guard.namespaces().unwrap().is_empty());
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_runs_only() {
    nft::testing::require_root();
    let live = LabGuard::new().unwrap();
    let live_ns = format!("{}-n0-alive", live.prefix());
    Command::new("ip")
        .args(["netns", "add", &live_ns])
        .status()
        .unwrap();

    // A crashed run: its owner was alive when it claimed the prefix, then died.
    let mut owner = Command::new("sleep").arg("30").spawn().unwrap();
    let random = std::process::id().to_be_bytes();
    let mut stale_prefix = None;
    for salt in 0..=255u8 {
        let prefix = naming::run_prefix([random[2], random[3], salt]);
        if netns::claim_prefix(&prefix, owner.id()).unwrap() {
            stale_prefix = Some(prefix);
            break;
        }
    }
    let stale_prefix = stale_prefix.expect("a free prefix");
    let stale_ns = format!("{stale_prefix}-n0-crashed");
    let status = Command::new("ip")
        .args(["netns", "add", &stale_ns])
        .status()
        .unwrap();
    assert!(status.success());
    owner.kill().unwrap();
    owner.wait().unwrap();

    cleanup_stale().unwrap();
    let listed = listed_namespaces();
    assert!(!listed.contains(&stale_ns), "{listed}");
    assert!(
        listed.contains(&live_ns),
        "a live run was cleaned up: {listed}"
    );
    drop(live);
    assert!(!listed_namespaces().contains(&live_ns));
}

#[tokio::test]
async fn hundreds_of_unanswered_probes_wait_their_timeouts_in_parallel() {
    // Ten pods over two nodes, the size the lab usually runs at.
    let mut spec = two_nodes_three_pods(false);
    for i in 0..4 {
        let mut extra = spec.pods[0].clone();
        extra.name = format!("extra-{i}");
        extra.node = spec.nodes[i % 2].name.clone();
        spec.pods.push(extra);
    }
    let (_guard, topology) = build(&spec);
    assert_eq!(topology.pods.len(), 10);

    // A UDP socket that never answers stands in for a policy that drops.
    let target = topology.pod("prod", "queue").unwrap();
    let silent_at = SocketAddr::new(IpAddr::V4(target.ip), 5353);
    let _silent = target
        .netns
        .run(move || std::net::UdpSocket::bind(silent_at))
        .unwrap()
        .unwrap();
    let timeout = Duration::from_millis(800);
    let specs: Vec<ProbeSpec> = topology
        .pods
        .iter()
        .filter(|p| p.name != "queue")
        .flat_map(|p| std::iter::repeat_n(p, 30))
        .map(|p| ProbeSpec {
            from: p.netns.clone(),
            to: silent_at,
            protocol: Protocol::Udp,
            timeout,
        })
        .collect();
    let started = Instant::now();
    let results = probe_many(&specs).await;
    let took = started.elapsed();
    eprintln!("{} unanswered probes in {took:?}", specs.len());
    assert_eq!(results.len(), 270);
    assert!(results
        .iter()
        .all(|r| !r.connected && r.error == Some(ProbeError::Timeout) && r.elapsed >= timeout));
    assert!(took < 4 * timeout, "probes ran one after another: {took:?}");
}

/// Set in the child process of [`ctrl_c_removes_the_lab`]: where to report its prefix.
const CHILD_PREFIX_FILE: &str = "KUBE_NFT_LAB_TEST_PREFIX_FILE";

/// Not a test on its own: the lab process that [`ctrl_c_removes_the_lab`]
/// interrupts. Returns at once unless started by it.
#[test]
#[ignore = "helper process for ctrl_c_removes_the_lab"]
fn lab_process_waiting_for_ctrl_c() {
    let Ok(report_to) = std::env::var(CHILD_PREFIX_FILE) else {
        return;
    };
    let guard = LabGuard::new().unwrap();
    lab::build(&two_nodes_three_pods(false), &guard).unwrap();
    std::fs::write(report_to, guard.prefix()).unwrap();
    std::thread::sleep(Duration::from_secs(30));
    panic!("no Ctrl-C arrived");
}

#[test]
fn ctrl_c_removes_the_lab() {
    nft::testing::require_root();
    let report = std::env::temp_dir().join(format!("kube-nft-lab-ctrl-c-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "lab_process_waiting_for_ctrl_c"])
        .env(CHILD_PREFIX_FILE, &report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let prefix = loop {
        // The file may exist before its content does.
        let written = std::fs::read_to_string(&report).unwrap_or_default();
        if naming::prefix_of(&format!("{written}-")).is_some() {
            break written;
        }
        assert!(
            Instant::now() < deadline,
            "the lab process never built its lab"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&report);
    assert!(listed_namespaces().contains(&prefix));

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        !listed_namespaces().contains(&prefix),
        "{}",
        listed_namespaces()
    );
}
