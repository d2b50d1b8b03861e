//! Test support: throwaway network namespaces, so tests that talk to the kernel
//! never touch the root namespace's nftables.
//!
//! ```no_run
//! let ns = nft::testing::NetNs::new("demo").unwrap();
//! let mut conn = ns.conn().unwrap();          // netlink socket inside `ns`
//! let listing = ns.nft(&["list", "ruleset"]).unwrap();
//! let id = ns.run(|| std::process::id());     // closure on a thread inside `ns`
//! # let _ = (&mut conn, listing, id);
//! // dropped → `ip netns delete`, also when the test panics
//! ```
//!
//! Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2's `ip`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netlink::Conn;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace `kn-<purpose>-<pid>-<n>`, deleted on drop.
pub struct NetNs {
    name: String,
    path: PathBuf,
}

/// Panic with a clear message unless running as root: kernel tests must not be
/// skipped silently.
pub fn require_root() {
    // Effective uid from /proc keeps this module free of `unsafe`.
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .and_then(|u| u.parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces + nftables); run it as root, as CI does"
    );
}

impl NetNs {
    /// Create a fresh namespace. Also removes namespaces this helper left behind in
    /// earlier runs whose process is gone (recorded under `/run/kube-nft-testing`).
    pub fn new(purpose: &str) -> io::Result<NetNs> {
        require_root();
        remove_stale();
        let purpose: String = purpose
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let name = format!(
            "kn-{purpose}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        std::fs::create_dir_all(MARKERS)?;
        std::fs::write(marker(&name), std::process::id().to_string())?;
        if let Err(e) = run_ok(Command::new("ip").args(["netns", "add", &name])) {
            let _ = std::fs::remove_file(marker(&name));
            return Err(e);
        }
        let ns = NetNs {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        // Loopback up: probes and listeners inside expect it.
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `setns` or [`Conn::open_in_netns`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A netlink connection inside the namespace.
    pub fn conn(&self) -> Result<Conn, crate::netlink::Error> {
        Conn::open_in_netns(&self.path)
    }

    /// Run `f` on a new thread that has entered the namespace; panics propagate.
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let file = File::open(&self.path).expect("open netns file");
        std::thread::scope(|s| {
            s.spawn(move || {
                crate::netlink::enter_netns(file.as_fd()).expect("setns into test namespace");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Run a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> io::Result<Output> {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name, cmd])
                .args(args),
        )
    }

    /// Run `nft ARGS` inside the namespace; stdout on success.
    pub fn nft(&self, args: &[&str]) -> io::Result<String> {
        let out = self.exec("nft", args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Load nft text with `nft -f -` inside the namespace.
    pub fn nft_load(&self, text: &str) -> io::Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "nft -f failed: {}\n--- input ---\n{text}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_ok(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
            return;
        }
        let _ = std::fs::remove_file(marker(&self.name));
    }
}

fn run_ok(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Where each guard records the namespace it created, so stale cleanup only ever
/// touches namespaces this helper made (the lab and others use `kn-` names too).
const MARKERS: &str = "/run/kube-nft-testing";

fn marker(name: &str) -> PathBuf {
    Path::new(MARKERS).join(name)
}

/// Delete namespaces this helper created in processes that no longer exist.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir(MARKERS) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
