//! Health checks for load balancers: for every `externalTrafficPolicy: Local`
//! LoadBalancer Service, the agent answers HTTP on its `healthCheckNodePort`
//! with 200 when this node has local endpoints and 503 when it has none, so
//! a load balancer sends traffic only to nodes that can serve it (traffic
//! arriving at another node would be dropped, the client address being kept).
//! The body is kube-proxy's:
//! `{"service":{"namespace":"x","name":"y"},"localEndpoints":1,"serviceProxyHealthy":true}`.
//!
//! One small thread per port, in the agent's network namespace. Each accepts
//! with a short poll, so a port whose Service went away is closed within
//! `POLL`; the answer always reflects the last committed sync.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::cluster::ObjectKey;
use crate::service::HealthCheck;

/// How long a closed port may keep listening.
const POLL: Duration = Duration::from_millis(100);

/// What a port answers: the Service and its local endpoint count.
type Answers = Arc<Mutex<BTreeMap<u16, (ObjectKey, usize)>>>;

/// The health-check listeners of one agent.
pub struct HealthServer {
    netns: Option<PathBuf>,
    answers: Answers,
    listeners: BTreeMap<u16, Arc<AtomicBool>>,
}

impl HealthServer {
    pub fn new(netns: Option<&Path>) -> HealthServer {
        HealthServer {
            netns: netns.map(Path::to_path_buf),
            answers: Arc::default(),
            listeners: BTreeMap::new(),
        }
    }

    /// Serves exactly the health checks in `checks` (those with a port):
    /// opens new ports, closes gone ones, updates the counts. A port that
    /// cannot be opened is reported and skipped; the others are served.
    pub fn update(&mut self, checks: &[HealthCheck]) -> Vec<(u16, io::Error)> {
        let want: BTreeMap<u16, (ObjectKey, usize)> = checks
            .iter()
            .filter_map(|c| Some((c.node_port?, (c.service.clone(), c.local_endpoints))))
            .collect();
        *self.answers.lock().unwrap_or_else(|p| p.into_inner()) = want.clone();
        self.listeners.retain(|port, stop| {
            let keep = want.contains_key(port);
            if !keep {
                stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        let mut failed = Vec::new();
        for port in want.keys() {
            if self.listeners.contains_key(port) {
                continue;
            }
            match self.listen(*port) {
                Ok(stop) => {
                    self.listeners.insert(*port, stop);
                }
                Err(e) => failed.push((*port, e)),
            }
        }
        failed
    }

    /// Ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    fn listen(&self, port: u16) -> io::Result<Arc<AtomicBool>> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound, result) = std::sync::mpsc::channel();
        let netns = self.netns.clone();
        let answers = Arc::clone(&self.answers);
        let stopped = Arc::clone(&stop);
        thread::Builder::new()
            .name(format!("health-{port}"))
            .spawn(move || {
                let listener = match bind(netns.as_deref(), port) {
                    Ok(l) => {
                        let _ = bound.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = bound.send(Err(e));
                        return;
                    }
                };
                serve(listener, port, &answers, &stopped);
            })?;
        result
            .recv()
            .map_err(|_| io::Error::other("health-check thread ended while binding"))??;
        Ok(stop)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        for stop in self.listeners.values() {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Binds `[::]:port` (IPv4 too: v6-only is off by default) in the namespace
/// at `netns`; this thread stays in that namespace.
fn bind(netns: Option<&Path>, port: u16) -> io::Result<TcpListener> {
    if let Some(path) = netns {
        let handle = File::open(path)?;
        setns(&handle, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn serve(listener: TcpListener, port: u16, answers: &Answers, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let answer = answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&port)
                    .cloned();
                if let Err(e) = respond(stream, answer) {
                    tracing::debug!(port, error = %e, "health check answer not sent");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) => {
                tracing::warn!(port, error = %e, "health check accept failed");
                thread::sleep(POLL);
            }
        }
    }
}

/// Reads the request (whatever it is: load balancers probe various paths)
/// and answers with the status and kube-proxy's body.
fn respond(mut stream: TcpStream, answer: Option<(ObjectKey, usize)>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request)?;
    let (status, body) = match answer {
        Some((key, count)) => {
            let body = serde_json::json!({
                "service": {"namespace": key.namespace, "name": key.name},
                "localEndpoints": count,
                "serviceProxyHealthy": true,
            });
            let status = if count > 0 {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, body.to_string())
        }
        None => ("404 Not Found", "{}".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
