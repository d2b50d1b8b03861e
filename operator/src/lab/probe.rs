//! Probes: real TCP connections and UDP exchanges from inside a namespace.
//!
//! Sockets are created inside the source namespace (one helper thread per
//! source namespace per call) and driven on the caller's tokio runtime, so
//! hundreds of probes run at once and a dropped one costs only its own timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::time::{timeout_at, Instant};

use super::listen::{parse_answer, Answer};
use super::netns::Netns;
use super::{sctp, Protocol};

/// The most a probe reads of an answer.
const MAX_ANSWER_BYTES: u64 = 4096;
/// What a UDP probe sends; listeners answer any datagram.
const UDP_PROBE_PAYLOAD: &[u8] = b"probe\n";

/// One connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The namespace the connection starts in (a pod's, a node's, the outside host's).
    pub from: Netns,
    pub to: SocketAddr,
    pub protocol: Protocol,
    /// For the whole exchange: connect and answer.
    pub timeout: Duration,
}

/// What happened. `connected`: the TCP handshake completed, or a UDP answer came
/// back (UDP has no handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub connected: bool,
    pub answer: Option<Answer>,
    pub error: Option<ProbeError>,
    pub elapsed: Duration,
}

impl ProbeResult {
    /// Connected and answered: the flow works end to end.
    pub fn answered(&self) -> bool {
        self.connected && self.answer.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// RST or ICMP port unreachable: nobody listens, or a reject rule.
    Refused,
    /// Nothing came back in time: a drop rule, or no route somewhere.
    Timeout,
    /// ICMP host/network unreachable.
    Unreachable(String),
    /// The lab cannot probe this (SCTP); never counted as a pass.
    NotProbeable(String),
    Io(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Refused => f.write_str("refused"),
            ProbeError::Timeout => f.write_str("timed out"),
            ProbeError::Unreachable(why) => write!(f, "unreachable: {why}"),
            ProbeError::NotProbeable(why) => write!(f, "not probeable: {why}"),
            ProbeError::Io(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// One probe. Must run inside a tokio runtime.
pub async fn probe(
    from: impl AsRef<Netns>,
    to: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> ProbeResult {
    let spec = ProbeSpec {
        from: from.as_ref().clone(),
        to,
        protocol,
        timeout,
    };
    probe_many(std::slice::from_ref(&spec))
        .await
        .pop()
        .expect("one result per probe")
}

/// Runs all probes concurrently; results are in `specs` order.
pub async fn probe_many(specs: &[ProbeSpec]) -> Vec<ProbeResult> {
    let mut by_source: BTreeMap<&Netns, Vec<usize>> = BTreeMap::new();
    for (i, spec) in specs.iter().enumerate() {
        by_source.entry(&spec.from).or_default().push(i);
    }
    // Create every source's sockets at once, each group inside its namespace.
    let creations: Vec<_> = by_source
        .into_iter()
        .map(|(netns, indexes)| {
            let netns = netns.clone();
            let wanted: Vec<(Protocol, SocketAddr)> = indexes
                .iter()
                .map(|&i| (specs[i].protocol, specs[i].to))
                .collect();
            let creation = tokio::spawn(async move {
                let context = format!("in namespace {}", netns.name);
                netns
                    .run_async(move || wanted.iter().map(|&(p, to)| create_socket(p, to)).collect())
                    .await
                    .map_err(|e| format!("{context}: {e}"))
            });
            (indexes, creation)
        })
        .collect();

    let mut running: Vec<Option<tokio::task::JoinHandle<ProbeResult>>> =
        (0..specs.len()).map(|_| None).collect();
    for (indexes, creation) in creations {
        let sockets: Result<Vec<io::Result<ProbeSocket>>, String> = creation
            .await
            .unwrap_or_else(|e| Err(format!("socket creation task failed: {e}")));
        let sockets: Vec<Result<ProbeSocket, String>> = match sockets {
            Ok(sockets) => sockets
                .into_iter()
                .map(|s| s.map_err(|e| e.to_string()))
                .collect(),
            Err(e) => indexes.iter().map(|_| Err(e.clone())).collect(),
        };
        for (i, socket) in indexes.into_iter().zip(sockets) {
            let (to, timeout) = (specs[i].to, specs[i].timeout);
            running[i] = Some(tokio::spawn(run_probe(socket, to, timeout)));
        }
    }
    let mut results = Vec::with_capacity(specs.len());
    for task in running {
        let task = task.expect("every probe was started");
        results.push(task.await.unwrap_or_else(|e| ProbeResult {
            connected: false,
            answer: None,
            error: Some(ProbeError::Io(format!("probe task failed: {e}"))),
            elapsed: Duration::ZERO,
        }));
    }
    results
}

/// A socket made inside the source namespace, not yet connected.
enum ProbeSocket {
    Tcp(TcpSocket),
    Udp(std::net::UdpSocket),
    NotProbeable(String),
}

fn create_socket(protocol: Protocol, to: SocketAddr) -> io::Result<ProbeSocket> {
    Ok(match protocol {
        Protocol::Tcp if to.is_ipv4() => ProbeSocket::Tcp(TcpSocket::new_v4()?),
        Protocol::Tcp => ProbeSocket::Tcp(TcpSocket::new_v6()?),
        Protocol::Udp => {
            let any: SocketAddr = if to.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = std::net::UdpSocket::bind(any)?;
            socket.set_nonblocking(true)?;
            ProbeSocket::Udp(socket)
        }
        Protocol::Sctp => ProbeSocket::NotProbeable(sctp::unsupported_reason().to_string()),
    })
}

async fn run_probe(
    socket: Result<ProbeSocket, String>,
    to: SocketAddr,
    timeout: Duration,
) -> ProbeResult {
    let started = Instant::now();
    let deadline = started + timeout;
    let (connected, answer, error) = match socket {
        Err(e) => (false, None, Some(ProbeError::Io(e))),
        Ok(ProbeSocket::NotProbeable(why)) => (false, None, Some(ProbeError::NotProbeable(why))),
        Ok(ProbeSocket::Tcp(socket)) => probe_tcp(socket, to, deadline).await,
        Ok(ProbeSocket::Udp(socket)) => probe_udp(socket, to, deadline).await,
    };
    ProbeResult {
        connected,
        answer,
        error,
        elapsed: started.elapsed(),
    }
}

type Outcome = (bool, Option<Answer>, Option<ProbeError>);

async fn probe_tcp(socket: TcpSocket, to: SocketAddr, deadline: Instant) -> Outcome {
    let stream = match timeout_at(deadline, socket.connect(to)).await {
        Err(_) => return (false, None, Some(ProbeError::Timeout)),
        Ok(Err(e)) => return (false, None, Some(classify(&e))),
        Ok(Ok(stream)) => stream,
    };
    let mut received = Vec::new();
    let mut limited = stream.take(MAX_ANSWER_BYTES);
    let read = limited.read_to_end(&mut received);
    match timeout_at(deadline, read).await {
        Err(_) => (true, None, Some(ProbeError::Timeout)),
        Ok(Err(e)) => (true, None, Some(classify(&e))),
        Ok(Ok(0)) => (
            true,
            None,
            Some(ProbeError::Io("closed without an answer".into())),
        ),
        Ok(Ok(_)) => (
            true,
            Some(parse_answer(&String::from_utf8_lossy(&received))),
            None,
        ),
    }
}

async fn probe_udp(socket: std::net::UdpSocket, to: SocketAddr, deadline: Instant) -> Outcome {
    let socket = match tokio::net::UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => return (false, None, Some(ProbeError::Io(e.to_string()))),
    };
    // A connected UDP socket reports ICMP errors (port unreachable → refused).
    if let Err(e) = socket.connect(to).await {
        return (false, None, Some(classify(&e)));
    }
    if let Err(e) = socket.send(UDP_PROBE_PAYLOAD).await {
        return (false, None, Some(classify(&e)));
    }
    let mut buf = [0u8; MAX_ANSWER_BYTES as usize];
    match timeout_at(deadline, socket.recv(&mut buf)).await {
        Err(_) => (false, None, Some(ProbeError::Timeout)),
        Ok(Err(e)) => (false, None, Some(classify(&e))),
        Ok(Ok(n)) => (
            true,
            Some(parse_answer(&String::from_utf8_lossy(&buf[..n]))),
            None,
        ),
    }
}

fn classify(e: &io::Error) -> ProbeError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        io::ErrorKind::TimedOut => ProbeError::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ProbeError::Unreachable(e.to_string())
        }
        _ => ProbeError::Io(e.to_string()),
    }
}
