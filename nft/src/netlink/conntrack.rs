//! Conntrack over netlink (ctnetlink): list entries and delete the stale ones.
//!
//! When a Service endpoint goes away, UDP flows that were DNATed to it keep
//! their conntrack entry, so every later datagram of the flow still goes to the
//! dead endpoint; nothing re-runs the NAT rules until the entry is gone. Deleting
//! the entries (what kube-proxy does with `conntrack -D`) makes the next
//! datagram a new connection that the current NAT map sends to a live endpoint.
//!
//! ```no_run
//! use nft::conntrack::{Conntrack, Filter, IpFamily, Proto};
//! let mut ct = Conntrack::open().unwrap();
//! let gone = Filter::new(Proto::Udp, IpFamily::V4)
//!     .orig_dst("10.96.0.10:53".parse().unwrap())
//!     .dnat_to("10.244.1.7:5353".parse().unwrap());
//! let deleted = ct.delete(&gone).unwrap();
//! # let _ = deleted;
//! ```
//!
//! Needs CAP_NET_ADMIN and ctnetlink in the kernel (`nf_conntrack_netlink`,
//! which the kernel loads on the first request when it is a module).

use std::io;
use std::path::Path;

use super::conntrack_msg::{
    delete_request, dump_request, parse_entry, CT_NEW, NLMSG_DONE, NLMSG_ERROR,
};
pub use super::conntrack_types::{Entry, Filter, IpFamily, Proto, Tuple};
use super::socket::{in_netns, io_err, messages};
use super::Error;

/// Receive buffer: the kernel fills dump skbs up to 32 KiB.
const RECV_BUF: usize = 64 * 1024;

/// A ctnetlink socket in one network namespace.
///
/// `!Send` (it owns an `mnl::Socket`), like [`super::Conn`]: keep it on the
/// thread that uses it.
pub struct Conntrack {
    sock: mnl::Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Conntrack {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Conntrack, Error> {
        let sock =
            mnl::Socket::new(mnl::Bus::Netfilter).map_err(io_err("open ctnetlink socket"))?;
        Ok(Conntrack {
            sock,
            // 3 spare bytes so a 4-byte aligned window always fits (see recv).
            buf: vec![0u8; RECV_BUF + 3],
            // Any start will do; replies are matched by sequence number.
            seq: std::process::id(),
        })
    }

    /// Open a socket in the network namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`). As with [`super::Conn::open_in_netns`], the calling
    /// thread enters the namespace only while the socket is created; the socket
    /// stays bound to that namespace.
    pub fn open_in_netns(path: impl AsRef<Path>) -> Result<Conntrack, Error> {
        in_netns(path.as_ref(), Conntrack::open)
    }

    /// The entries of `filter.family` and `filter.proto` that match `filter`.
    pub fn list(&mut self, filter: &Filter) -> Result<Vec<Entry>, Error> {
        filter.check().map_err(|m| Error::Io {
            context: "conntrack filter".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, m),
        })?;
        let seq = self.next_seq();
        let mut out = Vec::new();
        let mut bad = None;
        self.exchange(
            &dump_request(filter.family, seq),
            seq,
            true,
            |msg| match parse_entry(msg) {
                Ok(Some(e)) if filter.matches(&e) => out.push(e),
                Ok(_) => {}
                Err(m) => {
                    bad.get_or_insert(m);
                }
            },
        )
        .map_err(with_hint)?;
        // A malformed entry might be one the caller wants deleted: say so
        // rather than return a partial list.
        match bad {
            Some(m) => Err(Error::Decode(m)),
            None => Ok(out),
        }
    }

    /// Delete the entries matching `filter`; returns how many were deleted.
    /// Entries that expired or were deleted by someone else between the dump and
    /// the delete are not counted and not an error.
    pub fn delete(&mut self, filter: &Filter) -> Result<usize, Error> {
        // The whole dump is read before the first delete: a netlink socket
        // cannot take requests while a dump is in progress.
        let mut n = 0;
        for e in self.list(filter)? {
            if self.delete_entry(&e)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Delete one listed entry. `Ok(false)` if it is gone already, or its tuple
    /// now belongs to a newer connection (the id differs), which is kept.
    pub fn delete_entry(&mut self, e: &Entry) -> Result<bool, Error> {
        let seq = self.next_seq();
        match self.exchange(&delete_request(e, seq), seq, false, |_| {}) {
            Ok(()) => Ok(true),
            Err(err) if err.errno() == Some(libc::ENOENT) => Ok(false),
            Err(Error::Io { context, source }) => Err(Error::Io {
                context: format!("{context}: delete {e}"),
                source,
            }),
            Err(other) => Err(other),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send `req` and feed the replies carrying `seq` to `f` until the kernel
    /// ends them: NLMSG_DONE for a dump, the ACK for a request. Messages of
    /// other sequence numbers are leftovers of an interrupted earlier call and
    /// are skipped.
    fn exchange(
        &mut self,
        req: &[u8],
        seq: u32,
        dump: bool,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let sent = self
            .sock
            .send(req)
            .map_err(io_err("send ctnetlink request"))?;
        if sent != req.len() {
            return Err(io_err("send ctnetlink request")(io::Error::other(
                "short send",
            )));
        }
        loop {
            // mnl wants a buffer aligned for nlmsghdr: take the aligned window.
            let off = self.buf.as_ptr().align_offset(4);
            let buf = &mut self.buf[off..off + RECV_BUF];
            let n = match self.sock.recv_raw(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("recv ctnetlink reply")(e)),
            };
            if n == 0 {
                return Err(Error::Decode("ctnetlink socket closed".into()));
            }
            for (hdr, payload) in messages(&buf[..n]) {
                if hdr.seq != seq {
                    continue;
                }
                match hdr.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        // Both start with an int: 0 or a negative errno (a
                        // dump that failed midway reports it in DONE).
                        let errno = payload
                            .get(0..4)
                            .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if errno != 0 {
                            return Err(io_err("ctnetlink")(io::Error::from_raw_os_error(errno)));
                        }
                        if hdr.ty == NLMSG_DONE || !dump {
                            return Ok(());
                        }
                    }
                    CT_NEW if dump => f(hdr.whole),
                    _ => {}
                }
            }
        }
    }
}

/// Name the usual cause of EINVAL: nfnetlink answers it for a subsystem that
/// is not registered (ctnetlink not built in, and its module neither loaded
/// nor autoloadable).
fn with_hint(e: Error) -> Error {
    match e {
        Error::Io { context, source } if source.raw_os_error() == Some(libc::EINVAL) => Error::Io {
            context: format!("{context} (is nf_conntrack_netlink loaded?)"),
            source,
        },
        other => other,
    }
}
