//! Pod listeners: every pod answers on each of its ports, TCP and UDP, with its
//! `namespace/name` and the source address it saw (`default/web from 10.244.1.5`),
//! so a probe tells who answered and whether NAT rewrote the source.
//!
//! Sockets are bound inside the pod's namespace on a helper thread and served by
//! tasks on the caller's tokio runtime; dropping [`Listeners`] stops them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::netns::Netns;
use super::topology::{PodPort, Topology};
use super::{sctp, LabError, Protocol, Result};

/// A declared port the lab cannot serve (SCTP), reported instead of skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotServable {
    /// `namespace/name` of the pod (or the label given to [`Listeners::serve`]).
    pub who: String,
    pub port: PodPort,
    pub reason: String,
}

/// What a listener answered, as read back by a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `namespace/name` of the pod that answered.
    pub responder: String,
    /// The source address the responder saw.
    pub seen_source: Option<IpAddr>,
    /// The raw line (for reports).
    pub raw: String,
}

/// The line a listener sends back.
pub fn answer_line(responder: &str, seen_source: IpAddr) -> String {
    format!("{responder} from {seen_source}\n")
}

/// Reads back an [`answer_line`]; anything else is kept as the responder.
pub fn parse_answer(raw: &str) -> Answer {
    let line = raw.lines().next().unwrap_or("").trim();
    let (responder, seen_source) = match line.rsplit_once(" from ") {
        Some((who, source)) => match source.parse() {
            Ok(ip) => (who, Some(ip)),
            Err(_) => (line, None),
        },
        None => (line, None),
    };
    Answer {
        responder: responder.to_string(),
        seen_source,
        raw: raw.to_string(),
    }
}

/// Running listeners; dropping this stops them (and closes their sockets).
#[derive(Debug, Default)]
pub struct Listeners {
    tasks: Vec<JoinHandle<()>>,
    serving: Vec<(String, Protocol, SocketAddr)>,
    not_servable: Vec<NotServable>,
}

enum BoundSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Listeners {
    pub fn new() -> Listeners {
        Listeners::default()
    }

    /// Starts every pod's listeners. Must run inside a tokio runtime.
    pub async fn serve_pods(topology: &Topology) -> Result<Listeners> {
        let mut listeners = Listeners::new();
        for pod in &topology.pods {
            listeners
                .serve(&pod.netns, &pod.label(), &pod.ips(), &pod.ports)
                .await?;
        }
        Ok(listeners)
    }

    /// Listens on `ports` of each of `ips` inside `netns`, answering as `who`
    /// (also for nodes or the outside host, e.g. as NodePort or egress targets).
    pub async fn serve(
        &mut self,
        netns: &Netns,
        who: &str,
        ips: &[IpAddr],
        ports: &[PodPort],
    ) -> Result<()> {
        let (servable, sctp): (Vec<PodPort>, Vec<PodPort>) =
            ports.iter().partition(|p| p.protocol != Protocol::Sctp);
        self.not_servable
            .extend(sctp.into_iter().map(|port| NotServable {
                who: who.to_string(),
                port,
                reason: sctp::unsupported_reason().to_string(),
            }));
        let addresses: Vec<(Protocol, SocketAddr)> = ips
            .iter()
            .flat_map(|ip| {
                servable
                    .iter()
                    .map(move |p| (p.protocol, SocketAddr::new(*ip, p.port)))
            })
            .collect();
        let to_bind = addresses.clone();
        let context = format!("listening as {who} in namespace {}", netns.name);
        let bound = netns
            .run_async(move || bind_all(&to_bind))
            .await?
            .map_err(|e| LabError::io(context, e))?;
        for ((protocol, address), socket) in addresses.into_iter().zip(bound) {
            let task = match socket {
                BoundSocket::Tcp(listener) => {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .map_err(|e| LabError::io("registering a TCP listener", e))?;
                    tokio::spawn(serve_tcp(listener, who.to_string()))
                }
                BoundSocket::Udp(socket) => {
                    let socket = tokio::net::UdpSocket::from_std(socket)
                        .map_err(|e| LabError::io("registering a UDP listener", e))?;
                    tokio::spawn(serve_udp(socket, who.to_string()))
                }
            };
            self.tasks.push(task);
            self.serving.push((who.to_string(), protocol, address));
        }
        Ok(())
    }

    /// `(who, protocol, address)` of every running listener.
    pub fn serving(&self) -> &[(String, Protocol, SocketAddr)] {
        &self.serving
    }

    /// Declared ports nobody listens on, with the reason.
    pub fn not_servable(&self) -> &[NotServable] {
        &self.not_servable
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Runs on the helper thread inside the namespace.
fn bind_all(addresses: &[(Protocol, SocketAddr)]) -> std::io::Result<Vec<BoundSocket>> {
    addresses
        .iter()
        .map(|(protocol, address)| {
            let with_address = |e: std::io::Error| {
                std::io::Error::new(e.kind(), format!("{protocol} {address}: {e}"))
            };
            let socket = match protocol {
                Protocol::Udp => {
                    let socket = std::net::UdpSocket::bind(address).map_err(with_address)?;
                    socket.set_nonblocking(true)?;
                    BoundSocket::Udp(socket)
                }
                // SCTP never reaches here (partitioned out above).
                Protocol::Tcp | Protocol::Sctp => {
                    let listener = std::net::TcpListener::bind(address).map_err(with_address)?;
                    listener.set_nonblocking(true)?;
                    BoundSocket::Tcp(listener)
                }
            };
            Ok(socket)
        })
        .collect()
}

async fn serve_tcp(listener: tokio::net::TcpListener, who: String) {
    loop {
        match listener.accept().await {
            Ok((mut stream, peer)) => {
                let answer = answer_line(&who, peer.ip());
                tokio::spawn(async move {
                    // A peer that went away needs no answer.
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(%who, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_udp(socket: tokio::net::UdpSocket, who: String) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                let answer = answer_line(&who, peer.ip());
                if let Err(e) = socket.send_to(answer.as_bytes(), peer).await {
                    tracing::debug!(%who, %peer, error = %e, "UDP answer not sent");
                }
            }
            // ICMP errors from earlier answers surface here; they end nothing.
            Err(e) => tracing::debug!(%who, error = %e, "UDP receive failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_back() {
        let line = answer_line("default/web", "10.244.1.5".parse().unwrap());
        assert_eq!(line, "default/web from 10.244.1.5\n");
        let answer = parse_answer(&line);
        assert_eq!(answer.responder, "default/web");
        assert_eq!(answer.seen_source, Some("10.244.1.5".parse().unwrap()));
        let v6 = parse_answer(&answer_line("a/b", "fd00::5".parse().unwrap()));
        assert_eq!(v6.seen_source, Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn foreign_answers_keep_their_text() {
        let answer = parse_answer("hello world\n");
        assert_eq!(answer.responder, "hello world");
        assert_eq!(answer.seen_source, None);
    }
}
