//! The operator's and the agent's HTTP endpoints: `/metrics` (Prometheus text
//! format), `/healthz` (liveness: the process serves) and `/readyz` (readiness:
//! set by the control loop, e.g. after the agent's first complete sync or while
//! the operator holds, or stands by for, its lease).
//!
//! A deliberately small HTTP/1.1 server on tokio: GET only, one request per
//! connection, bounded request size. Pulling in a web framework for three fixed
//! paths would add more than it saves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints report. Shared between the control loop (which sets
/// readiness and records metrics) and the server.
pub struct Status {
    registry: Registry,
    ready: AtomicBool,
    /// Why the process is not ready, for `/readyz`'s body.
    not_ready_reason: Mutex<String>,
}

impl Status {
    /// Endpoints serving the metrics registered in `registry`, not yet ready.
    pub fn new(registry: Registry) -> Arc<Status> {
        Arc::new(Status {
            registry,
            ready: AtomicBool::new(false),
            not_ready_reason: Mutex::new("starting".into()),
        })
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self
            .not_ready_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reason.into();
        self.ready.store(false, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn answer(&self, path: &str) -> (u16, &'static str, String) {
        match path {
            "/metrics" => {
                let mut body = String::new();
                match encode(&mut body, &self.registry) {
                    Ok(()) => (
                        200,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    ),
                    Err(e) => (500, "text/plain", format!("encoding metrics: {e}\n")),
                }
            }
            "/healthz" | "/livez" => (200, "text/plain", "ok\n".into()),
            "/readyz" if self.is_ready() => (200, "text/plain", "ok\n".into()),
            "/readyz" => {
                let why = self
                    .not_ready_reason
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                (503, "text/plain", format!("not ready: {why}\n"))
            }
            _ => (404, "text/plain", "not found\n".into()),
        }
    }
}

/// Binds `addr` and serves `status` on a background task; returns the bound
/// address (useful with port 0).
pub async fn serve(addr: SocketAddr, status: Arc<Status>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let status = status.clone();
            tokio::spawn(async move {
                let _ = handle(stream, &status).await;
            });
        }
    });
    Ok(local)
}

async fn handle(mut stream: TcpStream, status: &Status) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (code, content_type, body) = match (words.next(), words.next()) {
        (Some("GET"), Some(target)) => {
            let path = target.split('?').next().unwrap_or(target);
            status.answer(path)
        }
        _ => (405, "text/plain", "only GET\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (code, body)
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let mut registry = Registry::with_prefix("kube_nft");
        let writes = Counter::<u64>::default();
        registry.register("writes", "Objects written", writes.clone());
        let status = Status::new(registry);
        let addr = serve("127.0.0.1:0".parse().unwrap(), status.clone())
            .await
            .unwrap();
        writes.inc_by(3);

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!((code, body.as_str()), (503, "not ready: starting\n"));
        status.set_ready();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("kube_nft_writes_total 3"), "{body}");
        assert_eq!(get(addr, "/nope").await.0, 404);
    }
}
