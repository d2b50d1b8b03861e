//! The connection: one netlink socket per network namespace, transaction sending
//! with full ACK accounting, and request/dump plumbing for read-back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use nftnl::nftnl_sys as sys;

use super::consts::*;
use super::encode::{encode, EncodedBatch, SetChange};
use super::encode_expr::SetShapes;
use super::sys::{parse_gen, AlignedMsg, MsgWriter, Payload};
use super::Error;
use crate::batch::Batch;
use crate::model::{Family, Set};

/// Receive buffer for one `recv`: dumps come in skbs of up to 32 KiB (more with
/// large rules); 256 KiB never truncates.
const RECV_BUF: usize = 256 * 1024;
/// Floor for SO_RCVBUFFORCE: every message of a batch is acknowledged, and losing
/// ACKs (ENOBUFS) makes the outcome uncertain.
const MIN_RCVBUF: usize = 8 * 1024 * 1024;

/// What a committed transaction cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Netlink messages in the transaction (without BATCH_BEGIN/END).
    pub messages: usize,
    /// Bytes sent in the one `sendmsg`.
    pub bytes: usize,
}

/// A netlink connection to nf_tables in one network namespace.
///
/// `!Send` (it owns an `mnl::Socket`): keep it on one thread (e.g. a dedicated
/// netlink thread) and send it [`EncodedBatch`]es, which are `Send`, or [`Batch`]es.
/// It remembers set headers of the tables it wrote or read, so later batches can add
/// elements to sets and use NAT maps they do not (re)declare.
pub struct Conn {
    sock: mnl::Socket,
    recv: Vec<u64>,
    rcvbuf: usize,
    sndbuf: usize,
    sets: HashMap<(Family, String), BTreeMap<String, Set>>,
}

struct Known<'a>(Option<&'a BTreeMap<String, Set>>);

impl SetShapes for Known<'_> {
    fn header(&self, name: &str) -> Option<&Set> {
        self.0?.get(name)
    }
}

impl Conn {
    /// Open a connection in the calling thread's network namespace.
    pub fn open() -> Result<Conn, Error> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(io_err("open netlink socket"))?;
        let fd = sock.as_raw_fd();
        // Extended ACKs carry the kernel's error text; capped ACKs keep every ACK
        // small (no echo of the request).
        setsockopt_int(fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1)
            .map_err(io_err("NETLINK_EXT_ACK"))?;
        setsockopt_int(fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)
            .map_err(io_err("NETLINK_CAP_ACK"))?;
        let mut c = Conn {
            sock,
            recv: vec![0u64; RECV_BUF / 8],
            rcvbuf: 0,
            sndbuf: 0,
            sets: HashMap::new(),
        };
        c.ensure_rcvbuf(MIN_RCVBUF)?;
        Ok(c)
    }

    /// Open a connection in the network namespace at `path` (e.g.
    /// `/run/netns/NAME` or `/proc/PID/ns/net`). The calling thread enters the
    /// namespace only while the socket is created and returns to its own right
    /// after; the socket stays bound to the target namespace.
    pub fn open_in_netns(path: impl AsRef<Path>) -> Result<Conn, Error> {
        in_netns(path.as_ref(), Conn::open)
    }

    /// Encode and apply `batch` as one atomic transaction.
    ///
    /// Sets the batch references but does not declare are looked up in what this
    /// connection wrote or read before, then in the kernel.
    pub fn apply(&mut self, batch: &Batch) -> Result<Applied, Error> {
        let key = (batch.family, batch.table.clone());
        let mut fetched = HashSet::new();
        loop {
            let err = match encode(batch, &Known(self.sets.get(&key))) {
                Ok(e) => return self.send(&e),
                Err(e) => e,
            };
            let Some(name) = err.unknown_set() else {
                return Err(err);
            };
            if !fetched.insert(name.clone()) {
                return Err(err);
            }
            // Unknown to us: ask the kernel (the table may predate this
            // connection). Absent there too, the retry reports the error.
            if let Some(set) = self.get_set(batch.family, &batch.table, &name)? {
                self.sets.entry(key.clone()).or_default().insert(name, set);
            }
        }
    }

    /// Send an encoded transaction in one `sendmsg` and collect every ACK.
    ///
    /// Errors name the op that failed; the kernel then applied nothing. A batch the
    /// kernel committed is never reported as failed: if ACKs were lost (ENOBUFS),
    /// the ruleset generation decides.
    pub fn send(&mut self, b: &EncodedBatch) -> Result<Applied, Error> {
        self.ensure_sndbuf(b.buf.len() + 4096)?;
        // Every message gets an ACK; ~1 KiB of receive-buffer accounting each.
        self.ensure_rcvbuf((b.msg_ops.len() + 16) * 1024)?;
        self.drain_stale()?;
        let gen_before = self.generation()?;
        let sent = self.sock.send(&b.buf).map_err(io_err("sendmsg batch"))?;
        if sent != b.buf.len() {
            return Err(Error::Io {
                context: "sendmsg batch".into(),
                source: io::Error::other(format!("short send: {sent} of {}", b.buf.len())),
            });
        }
        // nfnetlink processes the batch synchronously inside sendmsg, so every ACK
        // is queued by now: read without blocking until the queue is empty.
        let mut acked = 0usize;
        let mut first_err: Option<Error> = None;
        let mut lost = false;
        let end_seq = b.begin_seq.wrapping_add(b.msg_ops.len() as u32 + 1);
        loop {
            let n = match self.recv_nonblocking() {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    lost = true;
                    continue;
                }
                Err(e) => return Err(io_err("recv ACKs")(e)),
            };
            for (hdr, payload) in messages(self.recv_bytes(n)) {
                if hdr.ty != NLMSG_ERROR {
                    continue;
                }
                let (errno, text) = parse_err(hdr.flags, payload);
                if errno == 0 {
                    acked += 1;
                    continue;
                }
                if first_err.is_some() {
                    continue;
                }
                let os = io::Error::from_raw_os_error(errno);
                let err = match b.op_of_seq(hdr.seq) {
                    Some((op, what)) => Error::Rejected {
                        op,
                        what: what.to_string(),
                        errno,
                        message: with_text(os, text),
                    },
                    None if hdr.seq == b.begin_seq || hdr.seq == end_seq => Error::Commit {
                        errno,
                        message: with_text(os, text),
                    },
                    None => continue,
                };
                first_err = Some(err);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if lost || acked < b.msg_ops.len() {
            // Some ACKs are missing: the generation moves exactly when a
            // transaction commits.
            let gen_after = self.generation()?;
            if gen_after == gen_before {
                return Err(Error::Uncertain(format!(
                    "{} of {} ACKs received and the ruleset generation did not change: not applied",
                    acked,
                    b.msg_ops.len()
                )));
            }
        }
        self.note_commit(b);
        Ok(Applied {
            messages: b.msg_ops.len(),
            bytes: b.buf.len(),
        })
    }

    /// The ruleset generation id: changes with every committed transaction in this
    /// namespace (by anyone), a cheap drift check.
    pub fn generation(&mut self) -> Result<u32, Error> {
        let mut w = MsgWriter::new();
        w.push(
            NFT_MSG_GETGEN,
            0,
            NLM_F_REQUEST | NLM_F_ACK,
            0,
            Payload::Gen,
        );
        let mut gen = None;
        self.request(&w.out, false, |msg| {
            if let Some(g) = AlignedMsg::new(msg).and_then(|m| parse_gen(&m)) {
                gen = g.get_u32(sys::NFTNL_GEN_ID);
            }
        })?;
        gen.ok_or_else(|| Error::Decode("no generation id in reply".into()))
    }

    /// Forget cached set headers (after someone else changed the table).
    pub fn forget(&mut self, family: Family, table: &str) {
        self.sets.remove(&(family, table.to_string()));
    }

    pub(crate) fn remember_sets(
        &mut self,
        family: Family,
        table: &str,
        sets: BTreeMap<String, Set>,
    ) {
        self.sets.insert((family, table.to_string()), sets);
    }

    fn note_commit(&mut self, b: &EncodedBatch) {
        let entry = self.sets.entry((b.family, b.table.clone())).or_default();
        for ch in &b.set_changes {
            match ch {
                SetChange::Add(s) => {
                    entry.insert(s.name.clone(), s.clone());
                }
                SetChange::Delete(n) => {
                    entry.remove(n);
                }
                SetChange::DeleteTable => entry.clear(),
            }
        }
    }

    /// Send one request (or dump) and feed each reply message to `f` until the
    /// kernel says done. `Ok(false)` when the kernel answered ENOENT.
    pub(crate) fn request(
        &mut self,
        req: &[u8],
        dump: bool,
        mut f: impl FnMut(&[u8]),
    ) -> Result<bool, Error> {
        self.drain_stale()?;
        self.sock.send(req).map_err(io_err("send request"))?;
        loop {
            let len = self.recv.len() * 8;
            let n = self
                .sock
                .recv_raw(u64s_as_bytes_mut(&mut self.recv, len))
                .map_err(io_err("recv reply"))?;
            if n == 0 {
                return Err(Error::Decode("netlink socket closed".into()));
            }
            // Copy out so `f` may borrow nothing of `self`.
            let buf: Vec<u64> = self.recv[..n.div_ceil(8)].to_vec();
            // SAFETY-free view: reinterpret the aligned u64 copy as bytes.
            let bytes = u64s_as_bytes(&buf, n);
            for (hdr, payload) in messages(bytes) {
                match hdr.ty {
                    NLMSG_DONE => return Ok(true),
                    NLMSG_ERROR => {
                        let (errno, text) = parse_err(hdr.flags, payload);
                        if errno == libc::ENOENT {
                            return Ok(false);
                        }
                        if errno != 0 {
                            return Err(Error::Io {
                                context: "netlink request".into(),
                                source: with_text(io::Error::from_raw_os_error(errno), text),
                            });
                        }
                        if !dump {
                            return Ok(true);
                        }
                    }
                    _ => f(hdr.whole),
                }
            }
        }
    }

    fn recv_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.recv.len() * 8;
        // Viewing initialised u64s as bytes is always valid; see u64s_as_bytes.
        u64s_as_bytes_mut(&mut self.recv, len)
    }

    fn recv_bytes(&self, n: usize) -> &[u8] {
        u64s_as_bytes(&self.recv, n)
    }

    fn recv_nonblocking(&mut self) -> io::Result<Option<usize>> {
        let fd = self.sock.as_raw_fd();
        let buf = self.recv_bytes_mut();
        loop {
            // SAFETY: `buf` is a valid writable buffer of its length for the call.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Discard anything left in the queue (an earlier call interrupted mid-read).
    fn drain_stale(&mut self) -> Result<(), Error> {
        loop {
            match self.recv_nonblocking() {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(io_err("drain socket")(e)),
            }
        }
    }

    fn ensure_sndbuf(&mut self, want: usize) -> Result<(), Error> {
        if want > self.sndbuf {
            let v = want.max(1 << 20);
            setsockopt_int(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                v as i32,
            )
            .map_err(io_err("SO_SNDBUFFORCE (needs CAP_NET_ADMIN)"))?;
            self.sndbuf = v;
        }
        Ok(())
    }

    fn ensure_rcvbuf(&mut self, want: usize) -> Result<(), Error> {
        if want > self.rcvbuf {
            let v = want.max(MIN_RCVBUF).min(i32::MAX as usize / 2);
            setsockopt_int(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                v as i32,
            )
            .map_err(io_err("SO_RCVBUFFORCE (needs CAP_NET_ADMIN)"))?;
            self.rcvbuf = v;
        }
        Ok(())
    }
}

fn u64s_as_bytes(v: &[u64], n: usize) -> &[u8] {
    let n = n.min(v.len() * 8);
    // SAFETY: u64 has no padding or invalid bit patterns; u8 has alignment 1; the
    // byte slice covers at most the u64 slice's memory and borrows it.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), n) }
}

fn u64s_as_bytes_mut(v: &mut [u64], n: usize) -> &mut [u8] {
    let n = n.min(v.len() * 8);
    // SAFETY: as above, with the unique borrow of `v` carried over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), n) }
}

pub(crate) struct Hdr<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included (4-byte aligned within the buffer).
    pub whole: &'a [u8],
}

/// Split a receive buffer into messages; stops at a malformed header.
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = (Hdr<'_>, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let h = buf.get(off..off + 16)?;
        let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let whole = &buf[off..off + len];
        let hdr = Hdr {
            ty: u16::from_ne_bytes(h[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(h[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(h[8..12].try_into().ok()?),
            whole,
        };
        off += len.div_ceil(4) * 4;
        Some((hdr, &whole[16..]))
    })
}

/// errno and extended-ACK message of an NLMSG_ERROR payload.
fn parse_err(flags: u16, payload: &[u8]) -> (i32, Option<String>) {
    let Some(e) = payload.get(0..4) else {
        return (libc::EPROTO, None);
    };
    let errno = -i32::from_ne_bytes(e.try_into().unwrap_or([0; 4]));
    let mut text = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request header (and body unless capped) precedes the TLVs.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            payload
                .get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or([0; 4])) as usize)
                .unwrap_or(16)
        };
        let mut off = 4 + echoed.div_ceil(4) * 4;
        while let Some(a) = payload.get(off..off + 4) {
            let alen = u16::from_ne_bytes([a[0], a[1]]) as usize;
            let aty = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
            if alen < 4 {
                break;
            }
            if aty == NLMSGERR_ATTR_MSG {
                if let Some(v) = payload.get(off + 4..off + alen) {
                    let end = v.iter().position(|c| *c == 0).unwrap_or(v.len());
                    text = Some(String::from_utf8_lossy(&v[..end]).into_owned());
                }
            }
            off += alen.div_ceil(4) * 4;
        }
    }
    (errno, text)
}

fn with_text(e: io::Error, text: Option<String>) -> io::Error {
    match text {
        Some(t) => io::Error::new(e.kind(), format!("{e}: {t}")),
        None => e,
    }
}

pub(crate) fn io_err<C: Into<String>>(context: C) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn setsockopt_int(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` lives across the call and its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `open` with the calling thread in the network namespace at `path`,
/// then returns the thread to its own namespace; a socket `open` creates stays
/// bound to the target namespace.
pub(crate) fn in_netns<T>(
    path: &Path,
    open: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let target = std::fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let home = std::fs::File::open("/proc/thread-self/ns/net").map_err(io_err("open own netns"))?;
    setns(target.as_fd()).map_err(io_err(format!("setns {}", path.display())))?;
    let opened = open();
    if let Err(e) = setns(home.as_fd()) {
        // Continuing would run the caller's I/O in the wrong namespace.
        panic!("cannot return to the original network namespace: {e}");
    }
    opened
}

pub(crate) fn setns(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is an open namespace file descriptor; setns only affects the
    // calling thread.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
