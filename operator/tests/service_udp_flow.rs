//! A running UDP flow through a Service moves when its endpoint goes away
//! (real kernel, lab namespaces; needs root).
//!
//! UDP has no connection end: once conntrack DNATed a flow to an endpoint,
//! every later datagram of the same 5-tuple follows that entry, whatever the
//! NAT map says now. So after the EndpointSlice drops an endpoint, the agent
//! must delete the conntrack entries DNATed to it (`stale_flows_cleared`),
//! or the client keeps talking to the old pod. Here the old pod keeps
//! listening, so only the conntrack deletion can make the flow move.

mod service_lab;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kube_nft::lab::listen::parse_answer;
use kube_nft::lab::{LabPod, Protocol};
use nft::conntrack::{self, Conntrack, Filter, Proto};
use serde_json::json;
use service_lab::{service, slice, ServiceLab, UDP_TARGET};

const VIP: &str = "10.96.0.53";
const PORT: u16 = 53;
/// The client's one socket: a fixed source port keeps every datagram in
/// the same conntrack entry (one flow), as a long-lived DNS client would.
const CLIENT_PORT: u16 = 40053;
const INTERVAL: Duration = Duration::from_millis(50);
/// Far above a round trip inside one machine, even a loaded one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// One datagram of the flow and what came back.
#[derive(Debug, Clone)]
struct Exchange {
    sent: Instant,
    /// `namespace/name` of the responder and the source it saw, or why
    /// nothing came back.
    answer: Result<(String, Option<IpAddr>), String>,
}

/// The client: sends a datagram every [`INTERVAL`] from one socket and waits
/// for its answer before the next, until stopped.
struct Flow {
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Flow {
    fn start(client: &LabPod, to: SocketAddr) -> Flow {
        let bind = SocketAddr::new(IpAddr::V4(client.ip), CLIENT_PORT);
        // Created inside the client's namespace; usable from any thread.
        let socket = client
            .netns
            .run(move || -> std::io::Result<UdpSocket> {
                let s = UdpSocket::bind(bind)?;
                // Connected: the kernel keeps only datagrams from `to`, so a
                // stray un-NATed answer cannot pass for an answer of the flow.
                s.connect(to)?;
                Ok(s)
            })
            .expect("entering the client namespace")
            .expect("client socket");
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (exchanges, stop) = (exchanges.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = exchange(&socket);
                    exchanges.lock().unwrap().push(Exchange { sent, answer });
                    thread::sleep(INTERVAL.saturating_sub(sent.elapsed()));
                }
            })
        };
        Flow {
            exchanges,
            stop,
            thread: Some(thread),
        }
    }

    /// The exchanges sent at or after `since`, once `count` of them are done.
    fn wait_for(&self, since: Instant, count: usize) -> Vec<Exchange> {
        let deadline = Instant::now() + ANSWER_TIMEOUT * (count as u32 + 2);
        loop {
            let done: Vec<Exchange> = self
                .exchanges
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.sent >= since)
                .cloned()
                .collect();
            if done.len() >= count {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "the flow stalled: {} of {count} exchanges: {done:?}",
                done.len()
            );
            thread::sleep(INTERVAL);
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A panic of the client thread shows as stalled exchanges above.
            let _ = t.join();
        }
    }
}

/// One datagram and its answer.
fn exchange(socket: &UdpSocket) -> Result<(String, Option<IpAddr>), String> {
    // An answer that came after its exchange gave up must not be taken for
    // the answer to this one.
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    while socket.recv(&mut buf).is_ok() {}
    socket.set_nonblocking(false).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    socket.send(b"query\n").map_err(|e| e.to_string())?;
    let n = socket.recv(&mut buf).map_err(|e| e.to_string())?;
    let answer = parse_answer(&String::from_utf8_lossy(&buf[..n]));
    Ok((answer.responder, answer.seen_source))
}

/// The node's conntrack entries of UDP flows to the Service.
fn flows_to_vip(ct: &mut Conntrack) -> Vec<conntrack::Entry> {
    let filter = Filter::new(Proto::Udp, conntrack::IpFamily::V4)
        .orig_dst(SocketAddr::new(VIP.parse().unwrap(), PORT));
    ct.list(&filter).expect("listing conntrack")
}

fn responders(exchanges: &[Exchange]) -> Vec<String> {
    exchanges
        .iter()
        .map(|e| match &e.answer {
            Ok((who, _)) => who.clone(),
            Err(why) => format!("no answer: {why}"),
        })
        .collect()
}

#[test]
fn a_running_udp_flow_moves_to_the_new_endpoint_when_its_endpoint_is_removed() {
    let started = Instant::now();
    let lab = ServiceLab::start();
    let (client, ep_a, ep_b) = (lab.pod("client"), lab.pod("ep-a"), lab.pod("ep-b"));
    let vip = SocketAddr::new(VIP.parse().unwrap(), PORT);
    let mut cluster = lab.cluster();
    cluster
        .insert(service("dns", VIP, Protocol::Udp, PORT, json!({})))
        .unwrap();
    cluster.insert(slice("dns", UDP_TARGET, &[ep_a])).unwrap();
    let mut agent = lab.agent();
    let first = lab.sync(&mut agent, &cluster);
    assert_eq!(first.stale_flows_cleared, 0, "nothing ran before");

    // The flow runs on ep-a, seen with the client's own address (pod to
    // pod through a ClusterIP is not masqueraded).
    let flow = Flow::start(client, vip);
    let before = flow.wait_for(started, 5);
    let expected = (ep_a.label(), Some(IpAddr::V4(client.ip)));
    assert!(
        before.iter().all(|e| e.answer.as_ref() == Ok(&expected)),
        "{before:?}"
    );
    let mut ct = Conntrack::open_in_netns(lab.node().netns.path()).expect("ctnetlink in the node");
    let entries = flows_to_vip(&mut ct);
    assert_eq!(entries.len(), 1, "one flow, one entry: {entries:?}");
    let old_entry = entries[0].clone();
    let client_addr = SocketAddr::new(IpAddr::V4(client.ip), CLIENT_PORT);
    let ep_a_addr = SocketAddr::new(IpAddr::V4(ep_a.ip), UDP_TARGET.port);
    assert_eq!(old_entry.orig.src, client_addr);
    assert!(old_entry.is_dnat(), "{old_entry}");
    assert_eq!(old_entry.reply.src, ep_a_addr, "{old_entry}");

    // Controls: a sync that changes nothing, and one that changes the model
    // (another Service, so the agent does look for stale flows) but keeps
    // ep-a behind `dns`: neither may touch the running flow's entry.
    let same = lab.sync(&mut agent, &cluster);
    assert_eq!((same.ops, same.stale_flows_cleared), (0, 0), "{same:?}");
    cluster
        .insert(service(
            "other",
            "10.96.0.54",
            Protocol::Udp,
            PORT,
            json!({}),
        ))
        .unwrap();
    cluster.insert(slice("other", UDP_TARGET, &[ep_b])).unwrap();
    let unrelated = lab.sync(&mut agent, &cluster);
    assert!(unrelated.ops > 0, "{unrelated:?}");
    assert_eq!(unrelated.stale_flows_cleared, 0, "{unrelated:?}");
    let after_control = Instant::now();
    let still = flow.wait_for(after_control, 3);
    assert!(
        still.iter().all(|e| e.answer.as_ref() == Ok(&expected)),
        "{still:?}"
    );
    // (Entry ids cannot tell a kept entry from a recreated one: the kernel
    // derives them from the entry's address and original tuple, and a new
    // entry of the same flow usually reuses the freed memory. The count
    // above is the check; the entry is still ep-a's.)
    let entries = flows_to_vip(&mut ct);
    assert_eq!(
        entries.iter().map(|e| e.reply.src).collect::<Vec<_>>(),
        vec![ep_a_addr],
        "{entries:?}"
    );

    // ep-a leaves the Service (but keeps listening).
    cluster.insert(slice("dns", UDP_TARGET, &[ep_b])).unwrap();
    let moved = lab.sync(&mut agent, &cluster);
    let synced = Instant::now();
    assert_eq!(
        moved.stale_flows_cleared, 1,
        "the flow's entry DNATed to ep-a: {moved:?}"
    );

    // Every datagram sent after the sync is answered by ep-b, and from the
    // first answer of ep-b on, ep-a never answers again (a datagram already
    // on its way during the sync may still reach ep-a, but its answer
    // could only come before ep-b's).
    let after = flow.wait_for(synced, 5);
    let expected = (ep_b.label(), Some(IpAddr::V4(client.ip)));
    assert!(
        after.iter().all(|e| e.answer.as_ref() == Ok(&expected)),
        "after the sync: {:?}",
        responders(&after)
    );
    let all = flow.exchanges.lock().unwrap().clone();
    let first_b = all
        .iter()
        .position(|e| e.answer.as_ref() == Ok(&expected))
        .expect("ep-b answered");
    assert!(
        all[first_b..]
            .iter()
            .all(|e| e.answer.as_ref() == Ok(&expected)),
        "{:?}",
        responders(&all)
    );
    // The same 5-tuple now has a new entry (an entry's NAT never changes),
    // DNATed to ep-b.
    let entries = flows_to_vip(&mut ct);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let new_entry = &entries[0];
    assert_eq!(new_entry.orig.src, client_addr);
    assert!(new_entry.is_dnat(), "{new_entry}");
    assert_eq!(
        new_entry.reply.src,
        SocketAddr::new(IpAddr::V4(ep_b.ip), UDP_TARGET.port),
        "{new_entry}"
    );
    drop(flow);
    eprintln!(
        "{} exchanges, {} before ep-b answered; test took {:?}",
        all.len(),
        first_b,
        started.elapsed()
    );
}
