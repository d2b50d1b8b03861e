//! Client — router — server, each a throwaway network namespace, joined by veths;
//! and a sequence-checked TCP ping-pong stream across the router, to show that
//! ruleset changes on the router do not break or stall established traffic.
//!
//! Everything lives inside the namespaces: the root namespace's routes and
//! nftables are never touched.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nft::testing::NetNs;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 2);
pub const ROUTER_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 1);

/// Three namespaces; dropped (and deleted) together.
pub struct Topology {
    pub client: NetNs,
    pub router: NetNs,
    pub server: NetNs,
}

impl Topology {
    pub fn new(purpose: &str) -> io::Result<Topology> {
        let t = Topology {
            client: NetNs::new(&format!("{purpose}-c"))?,
            router: NetNs::new(&format!("{purpose}-r"))?,
            server: NetNs::new(&format!("{purpose}-s"))?,
        };
        // Both veth ends are created directly inside their namespaces.
        for (peer, dev, rdev) in [(&t.client, "c0", "r0"), (&t.server, "s0", "r1")] {
            run(
                "ip",
                &[
                    "link",
                    "add",
                    dev,
                    "netns",
                    peer.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    rdev,
                    "netns",
                    t.router.name(),
                ],
            )?;
        }
        let ip = |ns: &NetNs, args: &[&str]| ns.exec("ip", args).map(drop);
        ip(&t.client, &["addr", "add", "10.10.1.2/24", "dev", "c0"])?;
        ip(&t.client, &["link", "set", "c0", "up"])?;
        ip(&t.client, &["route", "add", "default", "via", "10.10.1.1"])?;
        ip(&t.server, &["addr", "add", "10.10.2.2/24", "dev", "s0"])?;
        ip(&t.server, &["link", "set", "s0", "up"])?;
        ip(&t.server, &["route", "add", "default", "via", "10.10.2.1"])?;
        ip(&t.router, &["addr", "add", "10.10.1.1/24", "dev", "r0"])?;
        ip(&t.router, &["addr", "add", "10.10.2.1/24", "dev", "r1"])?;
        ip(&t.router, &["link", "set", "r0", "up"])?;
        ip(&t.router, &["link", "set", "r1", "up"])?;
        t.router
            .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        Ok(t)
    }
}

fn run(cmd: &str, args: &[&str]) -> io::Result<()> {
    let out = std::process::Command::new(cmd).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Spawn a thread that runs `f` inside the namespace at `path`.
pub fn spawn_in<T, F>(path: PathBuf, f: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns file");
        nft::netlink::enter_netns(file.as_fd()).expect("setns");
        f()
    })
}

/// Bytes per ping-pong message: an 8-byte sequence number and a fill pattern.
const MSG: usize = 64;

/// A running ping-pong stream: the client sends numbered messages, the server
/// echoes them, the client checks each echo and timestamps it.
pub struct Stream {
    stop: Arc<AtomicBool>,
    client: JoinHandle<Result<Vec<Instant>, String>>,
    server: JoinHandle<Result<u64, String>>,
}

impl Stream {
    /// Start a server in `server`, connect from `client`, begin exchanging.
    pub fn start(topo: &Topology, port: u16) -> io::Result<Stream> {
        let (tx, rx) = mpsc::channel();
        let server = spawn_in(topo.server.path().to_path_buf(), move || {
            let l = TcpListener::bind((SERVER, port)).map_err(|e| e.to_string())?;
            tx.send(()).map_err(|e| e.to_string())?;
            let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
            let mut buf = [0u8; MSG];
            let mut n = 0u64;
            loop {
                match s.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
                    Err(e) => return Err(format!("server read after {n}: {e}")),
                }
                s.write_all(&buf)
                    .map_err(|e| format!("server write after {n}: {e}"))?;
                n += 1;
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("server did not start"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ctx, crx) = mpsc::channel();
        let client = spawn_in(topo.client.path().to_path_buf(), move || {
            let addr = SocketAddr::from((SERVER, port));
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let _ = ctx.send(());
            let mut seen = Vec::new();
            let mut seq = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let mut msg = [(seq % 251) as u8; MSG];
                msg[..8].copy_from_slice(&seq.to_be_bytes());
                s.write_all(&msg)
                    .map_err(|e| format!("client write {seq}: {e}"))?;
                let mut back = [0u8; MSG];
                s.read_exact(&mut back)
                    .map_err(|e| format!("client read {seq}: {e}"))?;
                if back != msg {
                    return Err(format!("echo {seq} corrupted or out of order"));
                }
                seen.push(Instant::now());
                seq += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(seen)
        });
        crx.recv_timeout(Duration::from_secs(6))
            .map_err(|_| io::Error::other("client did not connect"))?;
        Ok(Stream {
            stop,
            client,
            server,
        })
    }

    /// Stop, close, and return the echo timestamps (every one checked).
    pub fn finish(self) -> Result<Vec<Instant>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.client.join().map_err(|_| "client panicked")??;
        let echoed = self.server.join().map_err(|_| "server panicked")??;
        if echoed != seen.len() as u64 {
            return Err(format!("server echoed {echoed}, client saw {}", seen.len()));
        }
        Ok(seen)
    }
}

/// Longest gap between consecutive timestamps that overlaps `[from, to]`.
pub fn max_gap(seen: &[Instant], from: Instant, to: Instant) -> Duration {
    seen.windows(2)
        .filter(|w| w[1] > from && w[0] < to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// Whether a new TCP connection from the client to `SERVER:port` succeeds within
/// `timeout` (the router's policy decides).
pub fn can_connect(topo: &Topology, port: u16, timeout: Duration) -> bool {
    // A listener, so that only the router can make the connection fail.
    let (tx, rx) = mpsc::channel();
    let server = spawn_in(topo.server.path().to_path_buf(), move || {
        let l = TcpListener::bind((SERVER, port)).expect("bind probe listener");
        l.set_nonblocking(true).expect("nonblocking");
        tx.send(()).expect("signal");
        let until = Instant::now() + timeout + Duration::from_millis(200);
        while Instant::now() < until {
            if l.accept().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    rx.recv().expect("probe listener up");
    let ok = spawn_in(topo.client.path().to_path_buf(), move || {
        TcpStream::connect_timeout(&SocketAddr::from((SERVER, port)), timeout).is_ok()
    })
    .join()
    .expect("probe thread");
    server.join().expect("probe listener thread");
    ok
}
