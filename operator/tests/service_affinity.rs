//! `sessionAffinity: ClientIP` on a real kernel, through the node's Agent
//! (lab namespaces; needs root): a client sticks to one endpoint, its entry
//! in the kernel's affinity map expires after `timeoutSeconds` without
//! traffic, and when the sticky endpoint leaves the Service the agent
//! deletes the entry naming it, so the client moves at once instead of
//! being steered to the gone pod until the timeout.

mod service_lab;

use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use kube_nft::lab::{probe, LabPod, Protocol};
use serde_json::json;
use service_lab::{service, slice, Affinity, ServiceLab, TCP_TARGET};

const PORT: u16 = 80;
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn sticky(name: &str, vip: &str, timeout_seconds: u32) -> kube_nft::cluster::Object {
    service(
        name,
        vip,
        Protocol::Tcp,
        PORT,
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout_seconds}}}),
    )
}

/// `count` TCP connections, one after another, from `client` to `to`: the
/// responder of each (`namespace/name`).
fn connect(lab: &ServiceLab, client: &LabPod, to: SocketAddr, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let result = lab
                .rt
                .block_on(probe(client, to, Protocol::Tcp, PROBE_TIMEOUT));
            let answer = result
                .answer
                .unwrap_or_else(|| panic!("{to}: no answer: {:?}", result.error));
            assert_eq!(
                answer.seen_source,
                Some(IpAddr::V4(client.ip)),
                "pod to pod through a ClusterIP keeps the client's address"
            );
            answer.responder
        })
        .collect()
}

/// The one endpoint all of `responders` name.
fn all_same(responders: &[String]) -> String {
    let first = responders[0].clone();
    assert!(
        responders.iter().all(|r| *r == first),
        "affinity broken: {responders:?}"
    );
    first
}

fn endpoint_of<'a>(lab: &'a ServiceLab, responder: &str) -> &'a LabPod {
    ["ep-a", "ep-b"]
        .into_iter()
        .map(|name| lab.pod(name))
        .find(|p| p.label() == responder)
        .unwrap_or_else(|| panic!("unknown responder {responder}"))
}

fn target(pod: &LabPod) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.ip), TCP_TARGET.port)
}

/// The affinity entries of `client` for `frontend`.
fn entries_for(lab: &ServiceLab, client: &LabPod, frontend: SocketAddr) -> Vec<Affinity> {
    lab.affinity()
        .into_iter()
        .filter(|a| a.client == IpAddr::V4(client.ip) && a.frontend == frontend)
        .collect()
}

#[test]
fn affinity_entries_expire_after_the_timeout() {
    let started = Instant::now();
    let lab = ServiceLab::start();
    let (client, ep_a, ep_b) = (lab.pod("client"), lab.pod("ep-a"), lab.pod("ep-b"));
    let vip = SocketAddr::new("10.96.0.80".parse().unwrap(), PORT);
    let timeout = Duration::from_secs(2);
    let mut cluster = lab.cluster();
    cluster.insert(sticky("sticky", "10.96.0.80", 2)).unwrap();
    cluster
        .insert(slice("sticky", TCP_TARGET, &[ep_a, ep_b]))
        .unwrap();
    let mut agent = lab.agent();
    lab.sync(&mut agent, &cluster);

    // Many connections, one endpoint: the first chose it at random, the
    // kernel recorded it, the rest followed the record.
    let got = connect(&lab, client, vip, 11);
    let last_connection = Instant::now();
    let got = [got, connect(&lab, client, vip, 1)].concat();
    let sticky_ep = endpoint_of(&lab, &all_same(&got));
    let recorded = entries_for(&lab, client, vip);
    assert_eq!(
        recorded.iter().map(|a| a.endpoint).collect::<Vec<_>>(),
        vec![target(sticky_ep)],
        "{recorded:?}"
    );
    assert_eq!(recorded[0].timeout, Some(timeout), "{recorded:?}");

    // No traffic: the entry disappears once `timeoutSeconds` passed since
    // the last connection refreshed it, not before.
    let expired_at = loop {
        thread::sleep(Duration::from_millis(100));
        let left = entries_for(&lab, client, vip);
        let waited = last_connection.elapsed();
        if left.is_empty() {
            break waited;
        }
        assert!(
            waited < timeout + Duration::from_secs(3),
            "still there after {waited:?}: {left:?}"
        );
    };
    // A jiffy of slack: the kernel counts the timeout in jiffies.
    assert!(
        expired_at >= timeout - Duration::from_millis(20),
        "expired after {expired_at:?}, before its {timeout:?}"
    );
    // Nothing named the entry stale: it expired on its own (a sync that
    // changes nothing does not touch the map either).
    let same = lab.sync(&mut agent, &cluster);
    assert_eq!((same.ops, same.stale_flows_cleared), (0, 0));

    // The next client is chosen afresh and recorded anew, with a full timeout.
    let again = all_same(&connect(&lab, client, vip, 3));
    let recorded = entries_for(&lab, client, vip);
    assert_eq!(
        recorded.iter().map(|a| a.endpoint).collect::<Vec<_>>(),
        vec![target(endpoint_of(&lab, &again))],
        "{recorded:?}"
    );
    eprintln!(
        "sticky to {} ({} connections), expired {expired_at:?} after the last; test took {:?}",
        sticky_ep.label(),
        got.len(),
        started.elapsed()
    );
}

#[test]
fn removing_the_sticky_endpoint_deletes_its_affinity_entry() {
    let started = Instant::now();
    let lab = ServiceLab::start();
    let (client, ep_a, ep_b) = (lab.pod("client"), lab.pod("ep-a"), lab.pod("ep-b"));
    // A long timeout: without the agent, the client would stay stuck to a
    // removed endpoint for minutes, so moving at once is the agent's doing.
    let vip = SocketAddr::new("10.96.0.81".parse().unwrap(), PORT);
    let mut cluster = lab.cluster();
    cluster.insert(sticky("sticky", "10.96.0.81", 300)).unwrap();
    cluster
        .insert(slice("sticky", TCP_TARGET, &[ep_a, ep_b]))
        .unwrap();
    let mut agent = lab.agent();
    lab.sync(&mut agent, &cluster);

    let sticky_ep = endpoint_of(&lab, &all_same(&connect(&lab, client, vip, 8)));
    let remaining = if sticky_ep == ep_a { ep_b } else { ep_a };
    let recorded = entries_for(&lab, client, vip);
    assert_eq!(
        recorded.iter().map(|a| a.endpoint).collect::<Vec<_>>(),
        vec![target(sticky_ep)],
        "{recorded:?}"
    );

    // Control: a model change that keeps both endpoints (another Service)
    // makes the agent look for stale entries; this one is not.
    cluster
        .insert(service(
            "other",
            "10.96.0.82",
            Protocol::Tcp,
            PORT,
            json!({}),
        ))
        .unwrap();
    cluster
        .insert(slice("other", TCP_TARGET, &[remaining]))
        .unwrap();
    let unrelated = lab.sync(&mut agent, &cluster);
    assert!(unrelated.ops > 0, "{unrelated:?}");
    assert_eq!(unrelated.stale_flows_cleared, 0, "{unrelated:?}");
    assert_eq!(entries_for(&lab, client, vip), recorded);
    assert_eq!(
        all_same(&connect(&lab, client, vip, 3)),
        sticky_ep.label(),
        "still sticky after the unrelated change"
    );

    // The sticky endpoint leaves the Service (it keeps listening: only the
    // affinity entry could still send the client there).
    cluster
        .insert(slice("sticky", TCP_TARGET, &[remaining]))
        .unwrap();
    let removed = lab.sync(&mut agent, &cluster);
    assert_eq!(
        removed.stale_flows_cleared,
        1,
        "the one entry naming {}: {removed:?}",
        sticky_ep.label()
    );
    assert!(
        entries_for(&lab, client, vip)
            .iter()
            .all(|a| a.endpoint != target(sticky_ep)),
        "{:?}",
        lab.affinity()
    );
    // The very next connection goes to the remaining endpoint, and sticks.
    let after = connect(&lab, client, vip, 4);
    assert_eq!(all_same(&after), remaining.label(), "{after:?}");
    assert_eq!(
        entries_for(&lab, client, vip)
            .iter()
            .map(|a| a.endpoint)
            .collect::<Vec<_>>(),
        vec![target(remaining)]
    );
    eprintln!(
        "moved from {} to {}; test took {:?}",
        sticky_ep.label(),
        remaining.label(),
        started.elapsed()
    );
}
