//! The agent answers load balancers' health checks of `externalTrafficPolicy:
//! Local` Services on their `healthCheckNodePort`, inside the network
//! namespace it programs: 200 with local endpoints, 503 without, and the port
//! closes when the Service goes.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use kube_nft::agent::{Agent, AgentInput};
use kube_nft::cluster::ObjectKey;
use kube_nft::service::{HealthCheck, NodeServices};
use nix::sched::{setns, CloneFlags};

const PORT: u16 = 31999;

fn input(checks: Vec<HealthCheck>) -> AgentInput {
    AgentInput {
        services: Some(NodeServices {
            node: "n1".into(),
            health_checks: checks,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check(local_endpoints: usize) -> HealthCheck {
    HealthCheck {
        service: ObjectKey::new("demo", "web"),
        node_port: Some(PORT),
        local_endpoints,
    }
}

/// `GET /healthz` from inside the namespace at `netns`: the response, or the
/// connect error.
fn get(netns: &Path) -> Result<String, std::io::Error> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let handle = File::open(&netns)?;
        setns(&handle, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let mut s = TcpStream::connect(("127.0.0.1", PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .expect("client thread")
}

#[test]
fn health_checks_follow_local_endpoints() {
    nft::testing::require_root();
    let ns = nft::testing::NetNs::new("health").unwrap();
    let mut agent = Agent::open("n1", Some(ns.path())).unwrap();

    agent.sync(&input(vec![check(2)])).unwrap();
    assert_eq!(agent.health_check_ports(), [PORT]);
    let ok = get(ns.path()).unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    assert!(
        ok.contains(r#""localEndpoints":2"#) && ok.contains(r#""name":"web""#),
        "{ok}"
    );

    agent.sync(&input(vec![check(0)])).unwrap();
    let unavailable = get(ns.path()).unwrap();
    assert!(
        unavailable.starts_with("HTTP/1.1 503 Service Unavailable"),
        "{unavailable}"
    );

    // The Service goes: the port closes (within the listener's poll).
    agent.sync(&input(vec![])).unwrap();
    assert!(agent.health_check_ports().is_empty());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match get(ns.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other if Instant::now() > deadline => panic!("port still open: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // Nothing leaked into this (the test's) namespace.
    assert!(TcpStream::connect(("127.0.0.1", PORT)).is_err());
}
